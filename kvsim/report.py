"""``kvsim sensitivity`` and ``kvsim calc --advise``: the command-line side of
``analytic.sensitivity`` and ``analytic.advice``.

``kvsim.cli`` wires these in (``add_sensitivity_args`` / ``cmd_sensitivity``, ``add_advise_args`` /
``advice_lines`` / ``advice_from_args``); it must import this module lazily (inside functions),
as this module imports ``kvsim.cli`` for its argument helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from analytic.advice import DEFAULT_TARGET, advise
from analytic.sensitivity import DEFAULT_STEP, Scenario, sensitivity
from analytic.specs import DEFAULT_BLOCK_SIZE
from kvsim.cli import (
    UsageError,
    add_memory_args,
    add_model_args,
    add_workload_args,
    describe,
    hardware_from_args,
    model_from_args,
    workload_from_args,
)

ADVICE_POLICIES = ("lru", "fifo")


def scenario_from_args(a) -> Scenario:
    """The Scenario of parsed calc flags (``--policy`` when present, else lru). Synthetic workloads
    only: template conversations (``--conversations``) have no parameters to move."""
    if getattr(a, "conversations", None):
        raise UsageError("--conversations: sensitivity and advice work on synthetic workloads only")
    if getattr(a, "block_size", None) is None:
        a.block_size = DEFAULT_BLOCK_SIZE
    model = model_from_args(a)
    workload = workload_from_args(a)
    hardware = hardware_from_args(a)
    policy = getattr(a, "policy", None) or "lru"
    if policy not in ADVICE_POLICIES:
        policy = "lru"
    return Scenario(
        model=model, workload=workload, hardware=hardware, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype,
        block_size=a.block_size, model_size_gib=a.model_size_gb,
        capacity_tokens=a.capacity_tokens if hardware is None else None,
        capacity_gib=a.capacity_gib if hardware is None else None, policy=policy,
    )


# ----------------------------------------------------------------------------- figures


def save_figure_atomically(fig, path) -> None:
    """Write a matplotlib figure to ``path`` through a temporary file in the same directory and a
    rename, so that a reader never sees a half-written file."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=100)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fmt_value(x: float) -> str:
    if x is None:
        return "-"
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def tornado_figure(path, result: dict, title: str = "") -> None:
    """The tornado chart of ``sensitivity(...)``: one bar per parameter from the base token hit rate
    to its value at -step (blue) and +step (orange), largest swing on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    h0 = result["base"]["token_hit_rate"]
    pct = round(100 * result["step"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        for value, color, label in ((row["token_hit_rate_low"], "C0", f"-{pct}%"),
                                    (row["token_hit_rate_high"], "C1", f"+{pct}%")):
            if value is None:
                continue
            ax.barh(y, value - h0, left=h0, color=color, height=0.6, label=label if i == 0 else None)
    labels = [f"{r['label']} ({_fmt_value(r['base'])}{' ' + r['unit'] if r['unit'] else ''})" for r in rows]
    ax.set_yticks(range(len(rows) - 1, -1, -1), labels, fontsize=8)
    ax.axvline(h0, color="black", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"token hit rate ({result['method'].upper()} model); base {h0:.3f}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"each parameter moved -{pct}% / +{pct}%, the others held", fontsize=9)
    fig.tight_layout()
    save_figure_atomically(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- kvsim sensitivity


def add_sensitivity_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``kvsim sensitivity``: the calc flags plus its own."""
    add_model_args(p)
    add_memory_args(p)
    add_workload_args(p)
    g = p.add_argument_group("sensitivity")
    g.add_argument("--step", type=float, default=DEFAULT_STEP,
                   help=f"relative move of each parameter, both ways (default {DEFAULT_STEP:g} = +/-50%%)")
    g.add_argument("--method", default="lru", choices=list(ADVICE_POLICIES), help="model to evaluate (default lru)")
    g.add_argument("--figure", metavar="PNG", help="also draw the tornado chart to this file")
    g.add_argument("--json", action="store_true", help="print one JSON object")


def sensitivity_from_args(a) -> tuple[Scenario, dict]:
    scenario = scenario_from_args(a)
    return scenario, sensitivity(scenario, step=a.step, method=a.method)


def sensitivity_lines(result: dict) -> list[str]:
    pct = round(100 * result["step"])
    h0 = result["base"]["token_hit_rate"]
    lines = [
        f"token hit rate {h0:.4f} ({result['method'].upper()} model); each parameter moved -{pct}% and +{pct}%, "
        "the others held",
        "",
        f"{'parameter':22} {'base':>10} {f'-{pct}%':>10} {f'+{pct}%':>10} {'hit at -':>9} {'hit at +':>9} "
        f"{'swing':>7} {'elasticity':>10}",
    ]

    def rate(x):
        return "-" if x is None else f"{x:.4f}"

    for r in result["rows"]:
        e = "-" if r["elasticity"] is None else f"{r['elasticity']:+.3f}"
        lines.append(f"{r['parameter']:22} {_fmt_value(r['base']):>10} {_fmt_value(r['low']):>10} "
                     f"{_fmt_value(r['high']):>10} {rate(r['token_hit_rate_low']):>9} "
                     f"{rate(r['token_hit_rate_high']):>9} {r['swing']:>7.4f} {e:>10}")
    lines.append("")
    lines.append("elasticity: relative change of the token hit rate per relative change of the parameter, "
                 f"at the base (+/-{100 * result['eps']:g}%)")
    notes = [f"{r['parameter']}: {r['note']}" for r in result["rows"] if r.get("note")]
    lines.extend(f"note  {n}" for n in notes)
    return lines


def cmd_sensitivity(a) -> int:
    scenario, result = sensitivity_from_args(a)
    capacity = scenario.capacity()
    if a.figure:
        w = scenario.workload
        tornado_figure(a.figure, result,
                       title=f"{scenario.model.name}, KV {scenario.kv_dtype}, {capacity.capacity_tokens:,} tokens of "
                             f"cache; {w.arrival_rate:g} conv/s, {w.turns.mean:g} turns, think {w.think_time.mean:g} s")
    if a.json:
        print(json.dumps({"memory": capacity.as_dict(), **result}, indent=2))
        return 0
    print("\n".join(describe(scenario.model, capacity.as_dict(), scenario.workload, scenario.kv_dtype)))
    print()
    print("\n".join(sensitivity_lines(result)))
    if a.figure:
        print(f"figure: {a.figure}")
    return 0


# ----------------------------------------------------------------------------- kvsim calc --advise


def add_advise_args(p: argparse.ArgumentParser) -> None:
    """``--advise``, ``--target-hit-rate`` and ``--policy`` for ``kvsim calc``."""
    g = p.add_argument_group("advice")
    g.add_argument("--advise", action="store_true",
                   help="also print quantified recommendations (KV dtype, memory, GPUs, block size, policy)")
    g.add_argument("--target-hit-rate", type=float, default=DEFAULT_TARGET,
                   help=f"token hit rate the memory advice aims at (default {DEFAULT_TARGET:g})")
    g.add_argument("--policy", default="lru", choices=list(ADVICE_POLICIES),
                   help="your engine's eviction policy, for the advice (default lru, as vLLM)")


def advice_from_args(a) -> list[dict]:
    return advise(scenario_from_args(a), target=getattr(a, "target_hit_rate", DEFAULT_TARGET))


def advice_lines(a, advice: list[dict] | None = None) -> list[str]:
    """The recommendations as text: '*' marks the levers worth at least half a point."""
    if advice is None:
        advice = advice_from_args(a)
    policy = (getattr(a, "policy", None) or "lru")
    policy = policy if policy in ADVICE_POLICIES else "lru"
    now = advice[0]["token_hit_rate"]["now"] if advice else None
    head = f"advice ({policy.upper()} model, token hit rate now {now:.1%}; each lever alone, the rest held):"
    return [head, *(f"  {'*' if x['recommended'] else '-'} {x['text']}" for x in advice)]


__all__ = [
    "add_advise_args", "add_sensitivity_args", "advice_from_args", "advice_lines", "cmd_sensitivity",
    "save_figure_atomically", "scenario_from_args", "sensitivity_lines", "tornado_figure",
]
