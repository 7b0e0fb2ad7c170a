"""``kvsim sensitivity``: each input moved +/-50%, its effect on the token hit rate (a tornado)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from analytic.scenario import MODEL_POLICIES
from analytic.sensitivity import DEFAULT_STEP, sensitivity
from kvsim.batch import write_atomic
from kvsim.cli.args import UsageError, add_json_arg, add_scenario_args, scenario_from_values
from kvsim.cli.parser import output_file
from kvsim.cli.text import describe


# ----------------------------------------------------------------------------- kvsim sensitivity


def configure(p: argparse.ArgumentParser) -> None:
    """The flags of ``kvsim sensitivity``: the scenario flags plus its own."""
    add_scenario_args(p)
    g = p.add_argument_group("sensitivity")
    g.add_argument("--step", type=float, default=DEFAULT_STEP,
                   help=f"relative move of each parameter, both ways (default {DEFAULT_STEP:g} = +/-50%%)")
    g.add_argument("--method", default="lru", choices=list(MODEL_POLICIES), help="model to evaluate (default lru)")
    g.add_argument("--figure", metavar="PNG", help="also draw the tornado chart to this file")
    add_json_arg(p)
    p.set_defaults(func=cmd)


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


def cmd(a) -> int:
    if a.conversations:  # before the templates are read: there is nothing to move in them
        raise UsageError("--conversations: sensitivity and advice work on synthetic workloads only")
    figure = output_file("--figure", a.figure, figure=True)
    scenario = scenario_from_values(vars(a))
    result = sensitivity(scenario, step=a.step, method=a.method)
    capacity = scenario.capacity()
    if figure:
        w = scenario.workload
        tornado_figure(figure, result,
                       title=f"{scenario.model.name}, KV {scenario.kv_dtype}, {capacity.capacity_tokens:,} tokens of "
                             f"cache; {w.arrival_rate:g} conv/s, {w.turns.mean:g} turns, think {w.think_time.mean:g} s")
    if a.json:
        print(json.dumps({"memory": capacity.as_dict(), **result}, indent=2))
        return 0
    print("\n".join(describe(scenario.model, capacity.as_dict(), scenario.workload, scenario.kv_dtype)))
    print()
    print("\n".join(sensitivity_lines(result)))
    if figure:
        print(f"figure: {figure}")
    return 0


# ----------------------------------------------------------------------------- figures


def save_figure_atomically(fig, path) -> None:
    """Write a matplotlib figure to ``path`` through a temporary file in the same directory and a
    rename, so that a reader never sees a half-written file."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=100)
    write_atomic(path, buf.getvalue())


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
