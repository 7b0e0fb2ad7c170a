"""Fleet study: routers over N instances at a fixed total cache, and the fleet models' accuracy.

    python experiments/fleet.py [--quick] [--out out/fleet] [--workers N]

1. **Routers vs N.** One chat workload over N = 1, 2, 4, 8, 16 instances sharing a fixed total
   cache (each instance gets total / N blocks), every router, simulated with zero service time
   (the cache effect alone) and with the serving engine (vLLM's scheduler, roofline step time of
   Llama-3.1-8B on one H100 per instance: time to first token), next to the affinity and
   random-routing LRU models.
2. **The memory random routing needs** to reach affinity's hit rate at each N (the random model
   inverted with ``capacity_to_match``; checked by simulating random routing at that capacity).
3. **Validation** of the two fleet models against the simulator over a grid of workloads
   (N, think-time law, turn law, capacity), like ``validate.py`` for one instance.

Writes ``routers.csv``, ``match.csv``, ``validation.csv``, ``summary.txt`` and ``fleet.png`` to
the output folder and prints the summary. Every finished simulation is written atomically to
``<out>/points/``: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate import point_id, write_csv  # noqa: E402

from analytic.distributions import ThinkTime, TokenCount, TurnCount  # noqa: E402
from analytic.fleet import capacity_to_match, fleet_model  # noqa: E402
from analytic.plan import capacity_for_target  # noqa: E402
from analytic.specs import Workload  # noqa: E402
from analytic.ttl import no_eviction_ceiling  # noqa: E402
from kvsim.batch import executor, write_atomic  # noqa: E402
from kvsim.cli.parser import UsageError, output_file, output_folder  # noqa: E402

BLOCK_SIZE = 16
ROUTERS = ("random", "round-robin", "least-loaded", "affinity", "cache-aware")
MODELLED = ("affinity", "random")
# The routers-vs-N workload: chat with a shared system prompt.
CHAT = Workload(arrival_rate=2.0, turns=TurnCount("geometric", 6), think_time=ThinkTime("exp", 60.0),
                input_tokens=TokenCount("lognormal", 200, 1.0), output_tokens=TokenCount("lognormal", 300, 1.0),
                system_prompt_tokens=1000)
CHAT_TARGET = 0.7  # the total cache: one instance reaches this share of the no-eviction ceiling (LRU model)


def workload_of(p: dict) -> Workload:
    return Workload(arrival_rate=p["arrival_rate"], turns=TurnCount(p["turns_dist"], p["turns"]),
                    think_time=ThinkTime(p["think_dist"], p["think_time"], p["think_cv"]),
                    input_tokens=TokenCount("fixed", 200), output_tokens=TokenCount("fixed", 300),
                    system_prompt_tokens=p["system_prompt_tokens"])


def chat_total_blocks() -> int:
    ceiling = no_eviction_ceiling(CHAT, BLOCK_SIZE).token_hit_rate
    return capacity_for_target(CHAT, CHAT_TARGET * ceiling, "token", BLOCK_SIZE)


def simulate_point(p: dict) -> dict:
    """One fleet simulation (in a worker)."""
    from kvsim.fleet import simulate_fleet

    workload = CHAT if p["workload"] == "chat" else workload_of(p["workload"])
    engine = engine_spec() if p["engine"] else None
    # Warm-up: five conversation lifetimes; measured: enough requests for a tight estimate.
    warmup = 5 * workload.turns.mean * workload.think_time.mean
    window = p["requests"] / (workload.arrival_rate * workload.turns.mean)
    r = simulate_fleet(workload, p["capacity_blocks"], p["instances"], p["router"], "lru", engine=engine,
                       block_size=BLOCK_SIZE, duration=warmup + window, warmup=warmup,
                       replications=p["replications"], seed=p["seed"], progress=False)
    d = r.as_dict()
    lo, hi = d["token_hit_rate"]["ci95"] or (math.nan, math.nan)
    row = {"simulated": d["token_hit_rate"]["mean"], "ci_lo": lo, "ci_hi": hi,
           "request_hit_rate": d["request_hit_rate"]["mean"], "load_imbalance": d["load_imbalance"]["mean"],
           "requests": d["requests_measured"]}
    if engine is not None:
        v = d["serving"]
        row.update(ttft_mean=v["ttft_s"]["mean"]["mean"], ttft_p50=v["ttft_s"]["p50"], ttft_p99=v["ttft_s"]["p99"],
                   queue_delay_mean=v["queue_s"]["mean"]["mean"], preemptions=v["preemptions"])
    return row


def engine_spec():
    """The engine of every instance with service time: Llama-3.1-8B in bf16 on one H100, roofline
    step time, vLLM serve's limits for that GPU."""
    from analytic import presets
    from analytic.serving import EngineSpec
    from analytic.steptime import default_engine_limits, roofline

    gpu = "h100-80gb"
    return EngineSpec(roofline(presets.model("llama-3.1-8b"), gpu),
                      *default_engine_limits(presets.gpu_memory_gib(gpu), gpu))


def run_points(points: list[dict], out: Path, workers: int, desc: str) -> list[dict]:
    """Simulate every point not already on disk; return each point with its result."""
    from tqdm import tqdm

    folder = out / "points"
    todo = [p for p in points if not (folder / f"{point_id(p)}.json").exists()]
    if todo:
        with executor(workers) as pool, tqdm(total=len(todo), desc=desc, file=sys.stderr) as bar:
            futures = {pool.submit(simulate_point, p): p for p in todo}
            for future in as_completed(futures):
                write_atomic(folder / f"{point_id(futures[future])}.json", json.dumps(future.result()))
                bar.update()
    return [{**p, **json.loads((folder / f"{point_id(p)}.json").read_text())} for p in points]


# ---------------------------------------------------------------------------- 1 + 2: routers vs N


def routers_vs_n(args, total: int) -> list[dict]:
    points = [{"workload": "chat", "instances": n, "capacity_blocks": total // n, "router": router, "engine": engine,
               "requests": args.requests, "replications": args.replications, "seed": args.seed}
              for n in args.instances for router in ROUTERS for engine in (False, True)]
    rows = run_points(points, Path(args.out), args.workers, "routers")
    for row in rows:
        row["model"] = (fleet_model(CHAT, [row["capacity_blocks"]] * row["instances"], row["router"]).token_hit_rate
                        if row["router"] in MODELLED else None)
    return rows


def memory_to_match(args, total: int) -> list[dict]:
    """Per N: the capacity per instance random routing needs for affinity's hit rate (model), and
    random routing simulated there."""
    rows, points = [], []
    for n in args.instances:
        if n == 1:
            continue
        affinity = fleet_model(CHAT, [total // n] * n, "affinity").token_hit_rate
        try:
            needed = capacity_to_match(CHAT, affinity, n, "random", block_size=BLOCK_SIZE)
        except ValueError as e:  # above what random routing can reach with any memory
            rows.append({"instances": n, "affinity_model": affinity, "random_blocks": None, "memory_factor": None,
                         "note": str(e)})
            continue
        rows.append({"instances": n, "affinity_model": affinity, "random_blocks": needed,
                     "memory_factor": needed * n / total, "note": ""})
        points.append({"workload": "chat", "instances": n, "capacity_blocks": needed, "router": "random",
                       "engine": False, "requests": args.requests, "replications": args.replications,
                       "seed": args.seed})
    simulated = {p["instances"]: p for p in run_points(points, Path(args.out), args.workers, "match")}
    for row in rows:
        sim = simulated.get(row["instances"])
        row["random_simulated"] = sim["simulated"] if sim else None
    return rows


# ---------------------------------------------------------------------------- 3: validation


def validation_grid(quick: bool) -> list[dict]:
    thinks = [("exp", 1.0), ("lognormal", 1.5), ("gamma", 0.5), ("det", 0.0)]
    turns = [("fixed", 5), ("geometric", 5)]
    ns = [2, 8] if quick else [2, 4, 8]
    shares = [0.5] if quick else [0.3, 0.6, 0.9]  # of affinity's no-eviction ceiling, at each instance
    if quick:
        thinks, turns = thinks[:2], turns[:1]
    points = []
    for (think, cv), (turns_dist, n_turns), n, share in ((t, l, n, s) for t in thinks for l in turns for n in ns
                                                         for s in shares):
        base = {"arrival_rate": 1.0 * n, "turns_dist": turns_dist, "turns": n_turns, "think_dist": think,
                "think_time": 30.0, "think_cv": cv, "system_prompt_tokens": 200}
        w = workload_of(base)
        ceiling = no_eviction_ceiling(w, BLOCK_SIZE).token_hit_rate
        # Each instance of an affinity fleet sees arrival rate lambda / N = 1 conversation/s.
        capacity = capacity_for_target(dataclasses.replace(w, arrival_rate=1.0), share * ceiling, "token", BLOCK_SIZE)
        points.append({"workload": base, "instances": n, "capacity_blocks": capacity, "share": share})
    return points


def validation(args) -> list[dict]:
    grid = validation_grid(args.quick)
    points = [{**{k: v for k, v in g.items() if k != "share"}, "router": router, "engine": False,
               "requests": args.validation_requests, "replications": args.replications, "seed": args.seed}
              for g in grid for router in MODELLED]
    rows = run_points(points, Path(args.out), args.workers, "validate")
    out = []
    for row in rows:
        w = workload_of(row["workload"])
        predicted = fleet_model(w, [row["capacity_blocks"]] * row["instances"], row["router"]).token_hit_rate
        flat = {k: v for k, v in row.items() if k != "workload"}
        out.append({**row["workload"], **flat, "predicted": predicted, "abs_err": abs(predicted - row["simulated"]),
                    "inside_ci": row["ci_lo"] <= predicted <= row["ci_hi"]})
    return out


# ---------------------------------------------------------------------------- report


def figure(rows: list[dict], match: list[dict], total: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0))
    ns = sorted({r["instances"] for r in rows})
    colours = dict(zip(ROUTERS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for router in ROUTERS:
        sims = sorted((r for r in rows if r["router"] == router and not r["engine"]), key=lambda r: r["instances"])
        x = [r["instances"] for r in sims]
        y = np.array([r["simulated"] for r in sims])
        err = np.array([[r["simulated"] - r["ci_lo"], r["ci_hi"] - r["simulated"]] for r in sims]).T
        axes[0].errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", ms=4, capsize=2, color=colours[router],
                         label=f"{router} (sim)")
        if router in MODELLED:
            axes[0].plot(x, [r["model"] for r in sims], "-", color=colours[router], lw=1, label=f"{router} (model)")
        served = sorted((r for r in rows if r["router"] == router and r["engine"]), key=lambda r: r["instances"])
        axes[1].plot([r["instances"] for r in served], [1000 * r["ttft_mean"] for r in served], "o-", ms=4,
                     color=colours[router], label=router)
    axes[0].set(xscale="log", xlabel="instances N (total cache fixed)", ylabel="fleet token hit rate",
                title=f"hit rate vs N ({total:,} blocks in all)")
    axes[1].set(xscale="log", yscale="log", xlabel="instances N", ylabel="mean time to first token (ms)",
                title="served by the engine (Llama-3.1-8B, H100)")
    for ax in axes[:2]:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    labels = [str(m["instances"]) for m in match]
    axes[2].bar(labels, [m["memory_factor"] or 0.0 for m in match], color=colours["random"])
    for label, m in zip(labels, match):
        if m["memory_factor"] is None:
            axes[2].text(label, 0.1, "out of reach", rotation=90, ha="center", va="bottom", fontsize=8)
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set(xlabel="instances N", ylabel="cache random routing needs / affinity's",
                title="memory to match affinity (random model)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary(rows: list[dict], match: list[dict], validation_rows: list[dict], total: int) -> list[str]:
    lines = [f"routers vs N: total cache {total:,} blocks, zero service time; token hit rate simulated (model)"]
    ns = sorted({r["instances"] for r in rows})
    lines.append(f"{'router':13}" + "".join(f"{f'N={n}':>17}" for n in ns))
    for router in ROUTERS:
        cells = []
        for n in ns:
            r = next(r for r in rows if r["router"] == router and r["instances"] == n and not r["engine"])
            cells.append(f"{r['simulated']:.3f}" + (f" ({r['model']:.3f})" if r["model"] is not None else ""))
        lines.append(f"{router:13}" + "".join(f"{c:>17}" for c in cells))
    lines.append("\nserved by the engine (vLLM's scheduler, Llama-3.1-8B on one H100 each): mean TTFT ms (token hit rate)")
    for router in ROUTERS:
        cells = []
        for n in ns:
            r = next(r for r in rows if r["router"] == router and r["instances"] == n and r["engine"])
            cells.append(f"{1000 * r['ttft_mean']:.0f} ({r['simulated']:.3f})")
        lines.append(f"{router:13}" + "".join(f"{c:>17}" for c in cells))
    lines.append("\nmemory random routing needs to match affinity (per instance; model, then simulated hit rate)")
    for m in match:
        if m["memory_factor"] is None:
            lines.append(f"N={m['instances']:<3} affinity {m['affinity_model']:.3f}: {m['note']}")
        else:
            lines.append(f"N={m['instances']:<3} affinity {m['affinity_model']:.3f}: random needs {m['random_blocks']:,} "
                         f"blocks per instance = {m['memory_factor']:.2f}x the memory; simulated there "
                         f"{m['random_simulated']:.3f}")
    lines.append("")
    for router in MODELLED:
        errs = [r["abs_err"] for r in validation_rows if r["router"] == router]
        inside = np.mean([r["inside_ci"] for r in validation_rows if r["router"] == router])
        lines.append(f"{router}: mean_abs_err={np.mean(errs):.4f} max_abs_err={np.max(errs):.4f} n={len(errs)} "
                     f"inside_ci={inside:.0%}")
    for router in MODELLED:
        for think in sorted({r["think_dist"] for r in validation_rows}):
            errs = [r["abs_err"] for r in validation_rows if r["router"] == router and r["think_dist"] == think]
            lines.append(f"  {router:8} {think:9} mean {100 * np.mean(errs):.2f} max {100 * np.max(errs):.2f} points")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer instances, replications and requests (a few minutes)")
    ap.add_argument("--out", default="out/fleet", help="output folder (default out/fleet)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="local worker processes")
    ap.add_argument("--replications", type=int, default=None, help="per simulation (default 3, quick 2)")
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests per replication, routers vs N (default 40000, quick 10000)")
    ap.add_argument("--validation-requests", type=int, default=None,
                    help="measured requests per replication, validation (default 20000, quick 6000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", help="also copy the figure here (e.g. docs/fleet.png)")
    args = ap.parse_args(argv)
    try:  # output paths checked before any work (kvsim.cli.parser)
        output_folder("--out", args.out)
        args.figure = output_file("--figure", args.figure, figure=True)
    except UsageError as e:
        print(f"fleet: error: {e}", file=sys.stderr)
        return 2
    args.replications = args.replications or (2 if args.quick else 3)
    args.requests = args.requests or (10000 if args.quick else 40000)
    args.validation_requests = args.validation_requests or (6000 if args.quick else 20000)
    args.instances = [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16]
    if args.quick and args.out == "out/fleet":
        args.out = "out/fleet-quick"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = chat_total_blocks()
    rows = routers_vs_n(args, total)
    match = memory_to_match(args, total)
    checks = validation(args)
    for name, table in (("routers", rows), ("match", match), ("validation", checks)):
        fields = list(dict.fromkeys(k for row in table for k in row))  # engine rows have more columns
        write_csv([{k: row.get(k) for k in fields} for row in table], out / f"{name}.csv")
    lines = summary(rows, match, checks, total)
    write_atomic(out / "summary.txt", "\n".join(lines) + "\n")
    figure(rows, match, total, out / "fleet.png")
    if args.figure:
        figure(rows, match, total, Path(args.figure))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
