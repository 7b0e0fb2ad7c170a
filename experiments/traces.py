"""Real traces: hit rate vs capacity, replayed or simulated, next to the models and the ideal.

    python experiments/traces.py [--traces ../shared/traces] [--out out/traces] [--quick]
                                 [--no-tiers | --tiers-only]

* Mooncake traces (one request stream each): every request is replayed in time order through
  LRU and FIFO caches at a range of capacities; the models are the template-fed LRU and FIFO
  models (``analytic.empirical``) applied to the whole trace as one "conversation" that happens
  once over the trace's duration, i.e. characteristic-time caches over the real block accesses.
* Agentic-coding sessions (conversation files): sessions start as a Poisson process, each
  replaying one session drawn uniformly (``kvsim simulate --conversations``); the models are
  the same template-fed ones with that arrival rate. Sessions longer than
  ``--max-session-hours`` are left out: a steady state with multi-day sessions would need a
  warm-up of days.

* Tiers (``--no-tiers`` skips them, ``--tiers-only`` runs only them): the Mooncake conversation
  trace replayed through a GPU of ``TIER_GPU_BLOCKS`` and an LRU CPU tier of increasing size,
  inclusive and exclusive (``replay(..., tiers=Tiers(...))``), with the hit rate split by tier;
  beside them single-tier LRU replays at GPU + CPU blocks (what the exclusive union must match
  on a prefix-closed stream) and at max(GPU, CPU) (the inclusive union). There is no model line:
  the template-fed models are single-tier. Writes ``mooncake-tiers.csv``, ``mooncake-tiers.png``
  and ``mooncake-tiers.txt`` (the table it prints).

Writes ``<trace>.csv`` (capacity, method, block/token hit rates) and ``<trace>.png`` per trace,
atomically, and prints one line per trace and policy with the model's error.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import sys
from pathlib import Path

import numpy as np

from analytic.empirical import (
    TemplateProfile,
    TemplateRequest,
    ceiling_from_templates,
    fifo_model_from_templates,
    lru_model_from_templates,
)
from analytic.offload import Tiers
from analytic.specs import Workload
from kvsim.batch import write_atomic, write_figure
from kvsim.cli.parser import UsageError, output_folder
from kvsim.engine import simulate
from kvsim.replay import replay, request_blocks
from kvsim.templates import load_templates, template_profile, template_source
from kvsim.traces import read_jsonl


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))  # model rows carry no CI
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def stream_profile(path: Path) -> tuple[TemplateProfile, float]:
    """The whole trace as one template (listed-blocks semantics, as ``kvsim replay``), and its
    duration: the model's arrival rate is one such "conversation" per duration."""
    requests, block_size = [], None
    for r in read_jsonl(path):
        block_size = r.block_size
        keys, max_hit, _, _ = request_blocks(r.block_ids, r.input_tokens, r.output_tokens, r.block_size,
                                             r.block_size, False)
        requests.append(TemplateRequest(r.time, keys, max_hit, r.input_tokens))
    return TemplateProfile([requests], block_size), requests[-1].time - requests[0].time


def mooncake(path: Path, capacities: list[int]) -> list[dict]:
    record = replay(str(path), ("lru", "fifo"), capacities, progress=False)
    profile, duration = stream_profile(path)
    rows = [{"capacity_blocks": r["capacity_blocks"], "method": f"replay-{r['policy']}",
             "block_hit_rate": r["block_hit_rate"], "token_hit_rate": r["token_hit_rate"]}
            for r in record["results"]]
    for c in capacities:
        for name, model in (("model-lru", lru_model_from_templates), ("model-fifo", fifo_model_from_templates)):
            rows.append({"capacity_blocks": c, "method": name, "block_hit_rate": None,
                         "token_hit_rate": model(profile, 1.0 / duration, c).token_hit_rate})
    ideal = ceiling_from_templates(profile)
    rows.append({"capacity_blocks": None, "method": "ideal", "block_hit_rate": record["ideal_block_hit_rate"],
                 "token_hit_rate": record["ideal_token_hit_rate"]})
    assert abs(ideal.token_hit_rate - record["ideal_token_hit_rate"]) < 1e-9  # same blocks, same semantics
    return rows


def agentic(folder: Path, capacities_tokens: list[int], max_hours: float, sessions: int, rate: float,
            replications: int, seed: int) -> tuple[list[dict], dict]:
    files = sorted(folder.glob("*.json*"))
    templates = load_templates([str(f) for f in files[: sessions * 3]])
    keep = [t for t in templates.templates if t.times[-1] - t.times[0] <= max_hours * 3600][:sessions]
    templates.templates = keep
    bs = templates.block_size
    source, info = template_source(templates)
    profile = template_profile(templates)
    longest = max(t.times[-1] - t.times[0] for t in keep)
    warmup = 2 * longest
    window = 2 * longest
    rows = []
    for tokens in capacities_tokens:
        c = tokens // bs
        for name, model in (("model-lru", lru_model_from_templates), ("model-fifo", fifo_model_from_templates)):
            rows.append({"capacity_blocks": c, "method": name, "block_hit_rate": None,
                         "token_hit_rate": model(profile, rate, c).token_hit_rate})
        for policy in ("lru", "fifo"):
            r = simulate(Workload(arrival_rate=rate), c, policy, block_size=bs, duration=warmup + window,
                         warmup=warmup, replications=replications, seed=seed, source=source, progress=False)
            lo, hi = r.token_hit_rate.ci95 or (np.nan, np.nan)
            rows.append({"capacity_blocks": c, "method": f"simulated-{policy}", "block_hit_rate": r.block_hit_rate.mean,
                         "token_hit_rate": r.token_hit_rate.mean, "ci_lo": lo, "ci_hi": hi})
    ideal = ceiling_from_templates(profile)
    rows.append({"capacity_blocks": None, "method": "ideal", "block_hit_rate": None,
                 "token_hit_rate": ideal.token_hit_rate})
    return rows, {"templates": len(keep), "block_size": bs, "arrival_rate": rate, "warmup_s": warmup,
                  "window_s": window, "longest_session_s": longest}


def figure(path: Path, rows: list[dict], title: str, block_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"replay-lru": ("C0", "o", "replayed LRU"), "replay-fifo": ("C1", "s", "replayed FIFO"),
              "simulated-lru": ("C0", "o", "simulated LRU (95% CI)"),
              "simulated-fifo": ("C1", "s", "simulated FIFO (95% CI)")}
    for method, (color, marker, label) in styles.items():
        sel = [r for r in rows if r["method"] == method]
        if not sel:
            continue
        x = [r["capacity_blocks"] * block_size / 1e6 for r in sel]
        y = [r["token_hit_rate"] for r in sel]
        if "ci_lo" in sel[0] and not np.isnan(sel[0]["ci_lo"]):
            err = [[r["token_hit_rate"] - r["ci_lo"] for r in sel], [r["ci_hi"] - r["token_hit_rate"] for r in sel]]
            ax.errorbar(x, y, yerr=err, fmt=marker, color=color, label=label, ms=5, capsize=2)
        else:
            ax.plot(x, y, marker, color=color, label=label, ms=5)
    for method, style, label in (("model-lru", "C0-", "LRU model (from the trace)"),
                                 ("model-fifo", "C1--", "FIFO model (from the trace)")):
        model = [r for r in rows if r["method"] == method]
        ax.plot([r["capacity_blocks"] * block_size / 1e6 for r in model], [r["token_hit_rate"] for r in model],
                style, label=label)
    ideal = [r for r in rows if r["method"] == "ideal"][0]["token_hit_rate"]
    ax.axhline(ideal, color="grey", ls="--", lw=1, label=f"ideal (infinite cache) {ideal:.1%}")
    ax.set_xscale("log")
    ax.set_xlabel("cache capacity (million tokens)")
    ax.set_ylabel("token hit rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    write_figure(path, fig, dpi=100)


def summary_line(name: str, rows: list[dict], reference: str) -> str:
    policy = reference.split("-")[1]
    model = {r["capacity_blocks"]: r["token_hit_rate"] for r in rows if r["method"] == f"model-{policy}"}
    ref = {r["capacity_blocks"]: r["token_hit_rate"] for r in rows if r["method"] == reference}
    errs = [abs(model[c] - ref[c]) for c in ref]
    signed = [model[c] - ref[c] for c in ref]
    return (f"{name}: model vs {reference}: mean_abs_err={np.mean(errs):.4f} max_abs_err={np.max(errs):.4f} "
            f"mean_signed_err={np.mean(signed):+.4f} n={len(errs)}")


TIER_GPU_BLOCKS = 5000  # of 512 tokens: LRU alone gets 11% of the conversation trace's 37% ideal
TIER_CPU_POINTS = 8


def replay_has_tiers() -> bool:
    return "tiers" in inspect.signature(replay).parameters


def tier_capacities(distinct_blocks: int, quick: bool) -> list[int]:
    """CPU capacities from half the GPU to the trace's distinct blocks (geometric)."""
    n = 4 if quick else TIER_CPU_POINTS
    return sorted({int(round(c)) for c in np.geomspace(TIER_GPU_BLOCKS / 2, distinct_blocks, n)})


def mooncake_tiers(path: Path, gpu: int, quick: bool) -> tuple[list[dict], dict]:
    """Per-tier replays of ``path`` (LRU on both tiers), GPU ``gpu`` blocks, CPU swept; and the
    single-tier references."""
    base = replay(str(path), ("lru",), [gpu], progress=False)
    distinct = base["trace"]["distinct_blocks"]
    cpus = tier_capacities(distinct, quick)
    gpu_alone = base["results"][0]
    rows = [{"cpu_blocks": 0, "method": "gpu-alone", "mode": None, "gpu_blocks": gpu,
             "gpu_token_hit_rate": gpu_alone["token_hit_rate"], "cpu_token_hit_rate": 0.0,
             "token_hit_rate": gpu_alone["token_hit_rate"], "gpu_block_hit_rate": gpu_alone["block_hit_rate"],
             "cpu_block_hit_rate": 0.0, "block_hit_rate": gpu_alone["block_hit_rate"]}]
    for cpu in cpus:
        for mode in ("inclusive", "exclusive"):
            r = replay(str(path), ("lru",), [gpu], tiers=Tiers(cpu, 0, mode), progress=False)["results"][0]
            tiers = r["tiers"]
            rows.append({"cpu_blocks": cpu, "method": f"replay-lru-{mode}", "mode": mode, "gpu_blocks": gpu,
                         "gpu_token_hit_rate": tiers["gpu"]["token_hit_rate"],
                         "cpu_token_hit_rate": tiers["cpu"]["token_hit_rate"], "token_hit_rate": r["token_hit_rate"],
                         "gpu_block_hit_rate": tiers["gpu"]["block_hit_rate"],
                         "cpu_block_hit_rate": tiers["cpu"]["block_hit_rate"], "block_hit_rate": r["block_hit_rate"]})
    # Single-tier LRU at the unions' sizes: GPU + CPU (exclusive) and max(GPU, CPU) (inclusive).
    sizes = sorted({gpu + c for c in cpus} | {max(gpu, c) for c in cpus})
    single = {r["capacity_blocks"]: r for r in replay(str(path), ("lru",), sizes, progress=False)["results"]}
    for cpu in cpus:
        for name, size in (("single-lru-sum", gpu + cpu), ("single-lru-max", max(gpu, cpu))):
            rows.append({"cpu_blocks": cpu, "method": name, "mode": None, "gpu_blocks": size,
                         "token_hit_rate": single[size]["token_hit_rate"],
                         "block_hit_rate": single[size]["block_hit_rate"]})
    rows.append({"cpu_blocks": None, "method": "ideal", "mode": None, "token_hit_rate": base["ideal_token_hit_rate"],
                 "block_hit_rate": base["ideal_block_hit_rate"]})
    return rows, {"distinct_blocks": distinct, "block_size": base["inputs"]["block_size"], "gpu_blocks": gpu}


def tiers_table(rows: list[dict]) -> list[str]:
    """One line per CPU capacity: token hit rates by tier per mode, and the single-tier references."""
    by = {(r["method"], r["cpu_blocks"]): r for r in rows}
    cpus = sorted({r["cpu_blocks"] for r in rows if r["method"].startswith("replay-lru-")})
    gpu = by["gpu-alone", 0]
    ideal = by["ideal", None]["token_hit_rate"]
    lines = [f"GPU {gpu['gpu_blocks']} blocks alone: token_hit_rate={gpu['token_hit_rate']:.4f} (ideal {ideal:.4f})",
             "cpu_blocks   incl_gpu  incl_cpu incl_total  single_max   excl_gpu  excl_cpu excl_total  single_sum  "
             "excl-single"]
    for c in cpus:
        inc, exc = by["replay-lru-inclusive", c], by["replay-lru-exclusive", c]
        s_max, s_sum = by["single-lru-max", c]["token_hit_rate"], by["single-lru-sum", c]["token_hit_rate"]
        lines.append(f"{c:10d} {inc['gpu_token_hit_rate']:10.4f}{inc['cpu_token_hit_rate']:10.4f}"
                     f"{inc['token_hit_rate']:11.4f} {s_max:11.4f} {exc['gpu_token_hit_rate']:10.4f}"
                     f"{exc['cpu_token_hit_rate']:10.4f}{exc['token_hit_rate']:11.4f} {s_sum:11.4f} "
                     f"{exc['token_hit_rate'] - s_sum:+12.4f}")
    return lines


def tiers_figure(path: Path, rows: list[dict], info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["method"], r["cpu_blocks"]): r for r in rows}
    cpus = sorted({r["cpu_blocks"] for r in rows if r["method"].startswith("replay-lru-")})
    bs, gpu = info["block_size"], info["gpu_blocks"]
    x = np.arange(len(cpus))
    labels = [f"{c * bs / 1e6:.3g}" for c in cpus]
    ideal = by["ideal", None]["token_hit_rate"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, mode, ref, ref_label in ((axes[0], "inclusive", "single-lru-max", "single LRU of max(GPU, CPU)"),
                                     (axes[1], "exclusive", "single-lru-sum", "single LRU of GPU + CPU")):
        sel = [by[f"replay-lru-{mode}", c] for c in cpus]
        g = np.array([r["gpu_token_hit_rate"] for r in sel])
        c_ = np.array([r["cpu_token_hit_rate"] for r in sel])
        ax.bar(x, g, 0.7, color="C0", label="GPU tier (replayed)")
        ax.bar(x, c_, 0.7, bottom=g, color="C2", label="CPU tier (replayed)")
        ax.plot(x, [by[ref, c]["token_hit_rate"] for c in cpus], "k_", ms=22, mew=2, label=ref_label)
        if mode == "inclusive":  # the other reference too, for comparison
            ax.plot(x, [by["single-lru-sum", c]["token_hit_rate"] for c in cpus], "_", color="grey", ms=22, mew=1.5,
                    label="single LRU of GPU + CPU")
        ax.axhline(by["gpu-alone", 0]["token_hit_rate"], color="C0", ls=":", lw=1, label="GPU alone")
        ax.axhline(ideal, color="grey", ls="--", lw=1, label=f"ideal (infinite cache) {ideal:.1%}")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("CPU tier capacity (million tokens)")
        ax.set_title(f"{mode} LRU, GPU {gpu:,} blocks ({gpu * bs / 1e6:.2g}M tokens)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("token hit rate")
    axes[0].set_ylim(0, max(0.5, ideal * 1.25))
    fig.suptitle(f"Mooncake conversation trace, replayed through GPU -> CPU tiers ({bs}-token blocks)", fontsize=10)
    fig.tight_layout()
    write_figure(path, fig, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", type=Path, default=default, help=f"folder of the shared traces (default {default})")
    ap.add_argument("--out", default="out/traces")
    ap.add_argument("--quick", action="store_true", help="fewer capacities and sessions")
    ap.add_argument("--sessions", type=int, default=40, help="agentic sessions used as templates (default 40)")
    ap.add_argument("--max-session-hours", type=float, default=3.0)
    ap.add_argument("--agentic-rate", type=float, default=0.01, help="sessions started per second (default 0.01)")
    ap.add_argument("--replications", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    tiers = ap.add_mutually_exclusive_group()
    tiers.add_argument("--no-tiers", action="store_true", help="skip the tiered (GPU -> CPU) replays")
    tiers.add_argument("--tiers-only", action="store_true", help="run only the tiered replays")
    args = ap.parse_args(argv)
    if not args.traces.is_dir():
        print(f"traces: error: no trace folder at {args.traces} (give --traces)", file=sys.stderr)
        return 2
    try:  # output paths checked before any work (kvsim.cli.parser)
        args.out = Path(output_folder("--out", args.out))
    except UsageError as e:
        print(f"traces: error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in () if args.tiers_only else ("conversation_trace", "synthetic_trace"):
        path = args.traces / "mooncake" / f"{name}.jsonl"
        if not path.exists():
            print(f"traces: {path} missing, skipped", file=sys.stderr)
            continue
        caps = [int(c) for c in np.geomspace(500, 200_000, 6 if args.quick else 14)]
        rows = mooncake(path, caps)
        write_csv(args.out / f"mooncake-{name}.csv", rows)
        figure(args.out / f"mooncake-{name}.png", rows, f"Mooncake {name.replace('_', ' ')} (512-token blocks)", 512)
        for reference in ("replay-lru", "replay-fifo"):
            lines.append(summary_line(f"mooncake {name}", rows, reference))
            print(lines[-1], flush=True)
    path = args.traces / "mooncake" / "conversation_trace.jsonl"
    if args.no_tiers:
        pass
    elif not path.exists():
        print(f"traces: {path} missing, tiers skipped", file=sys.stderr)
    elif not replay_has_tiers():
        print("traces: kvsim.replay.replay takes no tiers= yet, tiers skipped", file=sys.stderr)
    else:
        rows, info = mooncake_tiers(path, TIER_GPU_BLOCKS, args.quick)
        write_csv(args.out / "mooncake-tiers.csv", rows)
        tiers_figure(args.out / "mooncake-tiers.png", rows, info)
        table = ["mooncake conversation_trace tiers (token hit rates, LRU):"] + tiers_table(rows)
        write_atomic(args.out / "mooncake-tiers.txt", ("\n".join(table) + "\n").encode())
        lines += table
        print("\n".join(table), flush=True)
    folder = args.traces / "agentic-coding"
    if folder.is_dir() and not args.tiers_only:
        sessions = 12 if args.quick else args.sessions
        caps = [int(c) for c in np.geomspace(2e5, 2e7, 4 if args.quick else 8)]
        rows, info = agentic(folder, caps, args.max_session_hours, sessions, args.agentic_rate,
                             1 if args.quick else args.replications, args.seed)
        write_csv(args.out / "agentic-coding.csv", rows)
        figure(args.out / "agentic-coding.png", rows,
               f"agentic coding: {info['templates']} sessions (<= {args.max_session_hours:g} h) started at "
               f"{info['arrival_rate']:g}/s (64-token blocks)", info["block_size"])
        for reference in ("simulated-lru", "simulated-fifo"):
            lines.append(summary_line("agentic-coding", rows, reference) + f" ({info})")
            print(lines[-1], flush=True)
    if not args.tiers_only:  # a tiers-only run leaves the full run's summary alone
        write_atomic(args.out / "summary.txt", ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
