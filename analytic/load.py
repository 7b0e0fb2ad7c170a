"""The hit-rate models under load: a serving instance's batch, step time, held blocks and
latencies in steady state, and the largest arrival rate it sustains (DESIGN.md §9).

A mean-value model of the step engine (``kvsim.step_engine``) for the synthetic workload, at a
token hit rate ``h`` of prompt tokens:

* Requests arrive at λ = arrival rate x mean turns per second; a mean prompt has ``P`` tokens
  (the system prompt, the input, and on average E[L(L-1)/2] / E[L] earlier turns), ``(1 - h)·P``
  of them computed; a mean response has ``O`` tokens: its prefill step gives the first, O - 1
  decode steps the rest.
* Steps last ``s`` on average. Per step the engine decodes ``λ·s·(O - 1)`` requests (each reads
  its context, ``P + O/2`` on average) and ``λ·s`` prefills arrive (each computes ``(1 - h)·P``
  tokens after ``h·P`` cached ones); a share ``min(1, λ·s)`` of the steps carries them. Each kind
  of step is timed with the step time (:func:`step_fixed_point`) and ``s`` is the fixed point of
  their weighted mean (``scipy.optimize``): it exists while the work per second stays below what
  a second of steps can do. ``B = λ·s·O`` requests run (Little's law: each spends O steps).
* Held blocks (Little's law again): ``H = λ·O·s·((P + O/2) / block + 1/2)`` (a request holds its
  context, growing through its decode, and half a partial block on average). The cache the hit
  model sees is ``C - H``; the hit rate under load is the fixed point ``h = model(C - H(h))``
  (more hits, less prefill, shorter steps, fewer held blocks), found by iteration from the
  instant model's ``h`` (the map is increasing, so it converges to the largest fixed point).
* Latencies: TPOT = ``s``; TTFT = the rest of the step in progress when the request arrives
  (the renewal residual ``E[S²]/2E[S]`` of the two kinds of steps: Poisson arrivals see time
  averages) plus its prefill: the step with the prefills arriving in it, or, when ``(1-h)·P``
  exceeds the budget the decodes leave, one step per chunk of that budget; plus the step time's
  request latency outside the steps (0 unless calibrated). No admission queue is modelled: valid
  while the batch stays below ``max_num_seqs`` and the held blocks below the capacity; near
  saturation the waiting queue grows and the simulation is the answer.
* The largest sustainable arrival rate: the rate at which the fixed point ceases to exist, the
  batch reaches ``max_num_seqs``, a step's tokens exceed the budget, or the held blocks fill the
  cache (bisection on the rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from analytic.specs import Workload

MAX_STEP_S = 3600.0  # a step longer than an hour: the root search gives up (saturated)
HIT_ITERATIONS = 40
HIT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class _NoHits:
    token_hit_rate: float = 0.0


_NO_HITS = _NoHits()


@dataclass(frozen=True)
class LoadResult:
    """The steady state of one instance under its load (None fields: saturated)."""

    arrival_rate: float  # conversations/s
    requests_per_s: float
    token_hit_rate: float | None  # under load
    instant_token_hit_rate: float  # the model at the whole capacity (no load)
    step_s: float | None
    batch: float | None
    held_blocks: float | None
    effective_capacity_blocks: float | None
    ttft_s: float | None
    tpot_s: float | None
    saturated: str | None  # why, when saturated
    output_tokens_per_s: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def mean_prompt(workload: Workload) -> float:
    """Mean prompt tokens over requests: S + u + (u + r)·E[L(L-1)/2] / E[L]."""
    values, probs = workload.turns.support
    earlier = float(sum(p * v * (v - 1) / 2 for v, p in zip(values, probs))) / workload.turns.mean
    return workload.system_prompt_tokens + workload.input_tokens.mean + workload.tokens_per_turn * earlier


@dataclass(frozen=True)
class Steps:
    """The steps in steady state: their mean, the two kinds and the share that carries prefills."""

    mean: float
    decode_only: float
    with_prefill: float
    prefill_share: float

    @property
    def mean_residual(self) -> float:
        """E[S²] / 2E[S]: the mean rest of the step in progress at a random instant."""
        square = (1 - self.prefill_share) * self.decode_only ** 2 + self.prefill_share * self.with_prefill ** 2
        return square / (2 * self.mean) if self.mean else 0.0


def step_fixed_point(step_time, workload: Workload, h: float) -> Steps | None:
    """The steps (:class:`Steps`; ``mean`` in seconds) at token hit rate ``h``, or None if the
    work arriving per second exceeds what the steps can do.

    Two kinds of steps: λ·s prefills arrive per step, so a share ``f = min(1, λ·s)`` of the steps
    carries prefill chunks (``λ·s / f`` of them) beside the decodes, the rest decode only. Their
    times differ (a prefill is compute-bound, a decode step memory-bound), so each kind is timed
    on its own and the mean is weighted: timing the mean step instead would miss the difference
    (the maximum of means is not the mean of maxima)."""
    from scipy.optimize import brentq

    lam = workload.requests_per_second
    p = mean_prompt(workload)
    o = workload.output_tokens.mean
    new = (1 - h) * p
    decode_rate = lam * max(o - 1, 0.0)  # decode tokens per second
    context = p + o / 2  # a decode's mean context
    seconds = step_time.seconds

    def kinds(s: float) -> tuple[float, float, float]:
        """(decode-only step, step with prefills, share of steps with prefills) at mean step ``s``."""
        d = decode_rate * s  # decoding requests in a step
        decode_only = seconds(d, d * context, d * context, d) if d else 0.0
        arriving = lam * s
        f = min(1.0, arriving)
        m = arriving / f if f else 0.0  # prefills in a step that has any
        with_prefill = seconds(d + m * new, d * context + m * new * (h * p + new / 2), d * context + m * p, d + m)
        return decode_only, with_prefill, f

    def gap(s: float) -> float:
        decode_only, with_prefill, f = kinds(s)
        return (1 - f) * decode_only + f * with_prefill - s

    if gap(MAX_STEP_S) > 0:
        return None
    s = 1e-9 if gap(1e-9) <= 0 else brentq(gap, 1e-9, MAX_STEP_S, xtol=1e-12, rtol=1e-10)
    return Steps(s, *kinds(s))


def under_load(workload: Workload, capacity_blocks: int, block_size: int, engine, evaluate,
               method: str = "lru") -> LoadResult:
    """One instance of ``capacity_blocks`` blocks serving ``workload`` with ``engine``
    (an :class:`~analytic.serving.EngineSpec`); ``evaluate(workload, capacity_blocks,
    block_size, method)`` is the hit model (``analytic.plan.model``). Without prefix caching
    (``engine.prefix_caching`` False) nothing hits."""
    lam = workload.requests_per_second
    p = mean_prompt(workload)
    o = workload.output_tokens.mean
    if not engine.prefix_caching:
        def evaluate(*_):
            return _NO_HITS
    instant = evaluate(workload, capacity_blocks, block_size, method).token_hit_rate

    def state(h: float):
        steps = step_fixed_point(engine.step_time, workload, h)
        if steps is None:
            return None
        held = lam * max(o, 1.0) * steps.mean * ((p + o / 2) / block_size + 0.5)
        return steps, held

    h = instant
    result = state(h)
    for _ in range(HIT_ITERATIONS):
        if result is None:
            break
        _, held = result
        effective = max(0, int(capacity_blocks - held))
        new_h = evaluate(workload, effective, block_size, method).token_hit_rate if effective else 0.0
        converged = abs(new_h - h) < HIT_TOLERANCE
        h = new_h
        result = state(h)
        if converged:
            break
    none = dict(token_hit_rate=None, step_s=None, batch=None, held_blocks=None, effective_capacity_blocks=None,
                ttft_s=None, tpot_s=None, output_tokens_per_s=None)
    if result is None:
        return LoadResult(workload.arrival_rate, lam, instant_token_hit_rate=instant,
                          saturated="the work per second exceeds what the steps can do", **none)
    steps, held = result
    s = steps.mean
    batch = lam * max(o, 1.0) * s
    tokens = lam * s * (max(o - 1, 0.0) + (1 - h) * p)  # per step, on average
    why = None
    if batch > engine.max_num_seqs:
        why = f"the batch ({batch:,.0f}) exceeds max-num-seqs ({engine.max_num_seqs:,})"
    elif tokens > engine.max_num_batched_tokens:
        why = f"a step's tokens ({tokens:,.0f}) exceed max-num-batched-tokens ({engine.max_num_batched_tokens:,})"
    elif held >= capacity_blocks:
        why = f"running requests hold {held:,.0f} blocks, more than the cache's {capacity_blocks:,}"
    if why:
        return LoadResult(workload.arrival_rate, lam, instant_token_hit_rate=instant, saturated=why, **none)
    return LoadResult(workload.arrival_rate, lam, token_hit_rate=h, instant_token_hit_rate=instant, step_s=s,
                      batch=batch, held_blocks=held, effective_capacity_blocks=capacity_blocks - held,
                      ttft_s=(steps.mean_residual + _prefill_s(engine, workload, h, steps)
                              + engine.step_time.request_latency_s),
                      tpot_s=s, saturated=None,
                      output_tokens_per_s=lam * o)


def _prefill_s(engine, workload: Workload, h: float, steps: Steps) -> float:
    """The steps a mean request's prefill takes at token hit rate ``h`` in ``steps``: one
    step with the prefills arriving in it (:class:`Steps`' ``with_prefill``) when its uncached
    tokens fit in the budget the decodes leave, else one chunk per step, each filling that budget
    beside the decodes."""
    lam = workload.requests_per_second
    p, o = mean_prompt(workload), workload.output_tokens.mean
    decodes = lam * max(o - 1, 0.0) * steps.mean  # decoding requests in a step
    room = max(engine.max_num_batched_tokens - decodes, 1.0)
    left = (1 - h) * p
    if left <= room:
        return steps.with_prefill
    context = decodes * (p + o / 2)
    done, seconds = h * p, 0.0
    while left > 0:
        c = min(room, left)
        seconds += engine.step_time.seconds(decodes + c, context + c * done + c * (c + 1) / 2, context + done + c,
                                            decodes + 1)
        done += c
        left -= c
    return seconds


def saturation_rate(workload: Workload, capacity_blocks: int, block_size: int, engine, evaluate,
                    method: str = "lru", tolerance: float = 0.005) -> float:
    """The largest arrival rate (conversations/s) at which :func:`under_load` finds a steady
    state, by bisection to a relative ``tolerance``."""
    def ok(rate: float) -> bool:
        return under_load(replace(workload, arrival_rate=rate), capacity_blocks, block_size, engine, evaluate,
                          method).saturated is None

    lo, hi = 0.0, max(workload.arrival_rate, 1e-3)
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return math.inf
    while hi - lo > tolerance * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
