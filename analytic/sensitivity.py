"""Sensitivity of the token hit rate to each input: a +/-50% tornado and local elasticities.

For a :class:`~analytic.scenario.Scenario`, ``sensitivity`` moves one parameter at a time by
``step`` (default +/-50%) with everything else held, and evaluates the model (LRU by default) at
both ends; the rows are sorted by swing, largest first, as a tornado chart draws them. Each row also carries the
local elasticity, d ln H / d ln x, by a central difference at +/-``eps`` (5%).

Held means held as a serving engineer would hold it: the KV cache capacity is fixed when a
workload parameter moves; moving the GPU memory moves the capacity (weights and the activation
reserve stay). Integer parameters (fixed turns and token counts, tokens of the system prompt)
are rounded; when the 5% step rounds to the base value, the elasticity uses the nearest whole
numbers either side instead (x - 1, x + 1). A moved value the specs reject (e.g. GPU memory
too small to hold the weights) leaves that end empty (None) and says why in ``note``.

Pure: no I/O; ``evaluate`` can be replaced (e.g. by a cached one) - it must behave as
``analytic.plan.model(workload, capacity_blocks, block_size, method)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.scenario import MODEL_POLICIES, Evaluate, Scenario, default_evaluate

DEFAULT_STEP = 0.5
DEFAULT_EPS = 0.05


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Parameter:
    """One input the tornado moves: how to read it from a scenario and how to set it."""

    key: str  # the CLI flag (without --)
    label: str
    unit: str
    get: Callable[[Scenario], float]
    set: Callable[[Scenario, float], Scenario]
    integer: Callable[[Scenario], bool]
    applies: Callable[[Scenario], bool]


def _workload(s: Scenario, **changes) -> Scenario:
    return replace(s, workload=replace(s.workload, **changes))


def _turns(s: Scenario, x: float) -> Scenario:
    return _workload(s, turns=TurnCount(s.workload.turns.kind, x))


def _think(s: Scenario, x: float) -> Scenario:
    t = s.workload.think_time
    return _workload(s, think_time=ThinkTime(t.kind, x, t.cv))


def _think_cv(s: Scenario, x: float) -> Scenario:
    t = s.workload.think_time
    return _workload(s, think_time=ThinkTime(t.kind, t.mean, x))


def _tokens(attr: str, what: str):
    def set_(s: Scenario, x: float) -> Scenario:
        t: TokenCount = getattr(s.workload, attr)
        new = TokenCount(t.kind, x, t.cv, name=t.name) if what == "mean" else TokenCount(t.kind, t.mean, x, name=t.name)
        return _workload(s, **{attr: new})

    return set_


def _gpu_memory(s: Scenario, x: float) -> Scenario:
    return replace(s, hardware=replace(s.hardware, gpu_memory_gib=x))


def _capacity_tokens(s: Scenario, x: float) -> Scenario:
    return replace(s, hardware=None, capacity_gib=None, capacity_tokens=int(x))


def _always(_s: Scenario) -> bool:
    return True


def _never(_s: Scenario) -> bool:
    return False


PARAMETERS = (
    Parameter("arrival-rate", "arrival rate", "conv/s", lambda s: s.workload.arrival_rate,
              lambda s, x: _workload(s, arrival_rate=x), _never, _always),
    Parameter("turns", "turns per conversation", "turns", lambda s: s.workload.turns.mean, _turns,
              lambda s: s.workload.turns.kind == "fixed", lambda s: s.workload.turns.kind in ("fixed", "geometric")),
    Parameter("think-time", "think time", "s", lambda s: s.workload.think_time.mean, _think, _never,
              lambda s: s.workload.think_time.kind != "empirical"),
    Parameter("think-cv", "think-time CV", "", lambda s: s.workload.think_time.cv, _think_cv, _never,
              lambda s: s.workload.think_time.kind in ("lognormal", "gamma")),
    Parameter("input-tokens", "input tokens per turn", "tokens", lambda s: s.workload.input_tokens.mean,
              _tokens("input_tokens", "mean"), lambda s: s.workload.input_tokens.is_fixed,
              lambda s: s.workload.input_tokens.kind != "empirical"),
    Parameter("input-cv", "input-tokens CV", "", lambda s: s.workload.input_tokens.cv,
              _tokens("input_tokens", "cv"), _never, lambda s: s.workload.input_tokens.kind == "lognormal"),
    Parameter("output-tokens", "output tokens per turn", "tokens", lambda s: s.workload.output_tokens.mean,
              _tokens("output_tokens", "mean"), lambda s: s.workload.output_tokens.is_fixed,
              lambda s: s.workload.output_tokens.kind != "empirical"),
    Parameter("output-cv", "output-tokens CV", "", lambda s: s.workload.output_tokens.cv,
              _tokens("output_tokens", "cv"), _never, lambda s: s.workload.output_tokens.kind == "lognormal"),
    Parameter("system-prompt-tokens", "system prompt", "tokens", lambda s: s.workload.system_prompt_tokens,
              lambda s, x: _workload(s, system_prompt_tokens=int(x)), lambda s: True, _always),
    Parameter("gpu-memory-gb", "GPU memory per GPU", "GiB", lambda s: s.hardware.gpu_memory_gib, _gpu_memory,
              _never, lambda s: s.hardware is not None),
    Parameter("capacity-tokens", "KV cache capacity", "tokens", lambda s: s.capacity().capacity_tokens,
              _capacity_tokens, lambda s: True, _always),
)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _value(p: Parameter, s: Scenario, x: float) -> float:
    return float(_round(x)) if p.integer(s) else float(x)


def _hit(p: Parameter, s: Scenario, x: float, method: str, evaluate: Evaluate) -> tuple[float | None, str | None]:
    """Token hit rate with ``p`` set to ``x``, or (None, why) if the specs reject the value."""
    try:
        moved = p.set(s, x)
        return moved.evaluate(method, evaluate).token_hit_rate, None
    except ValueError as e:
        return None, str(e)


def _elasticity(p: Parameter, s: Scenario, base: float, h0: float, eps: float, method: str,
                evaluate: Evaluate) -> float | None:
    """Central difference of ln H against ln x at +/-eps (whole numbers either side for integer
    parameters); one-sided at the base when a side is invalid (e.g. 0 turns)."""
    lo, hi = _value(p, s, base * (1 - eps)), _value(p, s, base * (1 + eps))
    if p.integer(s):
        lo, hi = min(lo, base - 1), max(hi, base + 1)
    points = []
    for x in (lo, hi):
        h = _hit(p, s, x, method, evaluate)[0] if x > 0 else None
        points.append((x, h) if h is not None else (base, h0))
    (x_lo, h_lo), (x_hi, h_hi) = points
    if x_hi <= x_lo or h_lo <= 0 or h_hi <= 0:
        return None
    return (math.log(h_hi) - math.log(h_lo)) / (math.log(x_hi) - math.log(x_lo))


def sensitivity(
    scenario: Scenario,
    *,
    step: float = DEFAULT_STEP,
    eps: float = DEFAULT_EPS,
    method: str = "lru",
    evaluate: Evaluate | None = None,
) -> dict:
    """``{"method", "step", "eps", "base": {...}, "rows": [...]}``, rows sorted by swing (largest first).

    Each row: parameter (the CLI flag), label, unit, base, low, high (the moved values),
    token_hit_rate_low / _high (None if the specs reject the value; ``note`` says why), delta_low /
    delta_high (change from the base, in hit-rate units), swing (|high - low|, 0 when an end is
    missing), elasticity (d ln H / d ln x at the base; None where H or x is 0).
    """
    if not (isinstance(step, (int, float)) and 0 < step < 1):
        raise ValueError(f"step must be in (0, 1) (got {step!r})")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1) (got {eps!r})")
    if method not in MODEL_POLICIES:
        raise ValueError(f"method must be one of {', '.join(MODEL_POLICIES)} (got {method!r})")
    evaluate = evaluate or default_evaluate
    base_result = scenario.evaluate(method, evaluate)
    h0 = base_result.token_hit_rate
    rows = []
    for p in PARAMETERS:
        if not p.applies(scenario):
            continue
        base = float(p.get(scenario))
        row = {"parameter": p.key, "label": p.label, "unit": p.unit, "base": base, "token_hit_rate_base": h0}
        if base == 0:
            row.update(low=base, high=base, token_hit_rate_low=h0, token_hit_rate_high=h0, delta_low=0.0,
                       delta_high=0.0, swing=0.0, elasticity=None,
                       note=f"{p.key} is 0: a relative change moves nothing")
            rows.append(row)
            continue
        low, high = _value(p, scenario, base * (1 - step)), _value(p, scenario, base * (1 + step))
        h_low, why_low = _hit(p, scenario, low, method, evaluate)
        h_high, why_high = _hit(p, scenario, high, method, evaluate)
        notes = [f"{'low' if w is why_low else 'high'}: {w}" for w in (why_low, why_high) if w]
        row.update(
            low=low, high=high, token_hit_rate_low=h_low, token_hit_rate_high=h_high,
            delta_low=None if h_low is None else h_low - h0, delta_high=None if h_high is None else h_high - h0,
            swing=abs((h_high if h_high is not None else h0) - (h_low if h_low is not None else h0)),
            elasticity=_elasticity(p, scenario, base, h0, eps, method, evaluate),
            note="; ".join(notes) or None,
        )
        rows.append(row)
    rows.sort(key=lambda r: -r["swing"])
    return {
        "method": method,
        "step": step,
        "eps": eps,
        "base": {"token_hit_rate": h0, "request_hit_rate": base_result.request_hit_rate},
        "rows": rows,
    }


__all__ = ["PARAMETERS", "Parameter", "sensitivity"]
