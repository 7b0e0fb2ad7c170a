"""Validation study: the analytic models against the simulator over a grid of configurations.

    python experiments/validate.py [--quick] [--out out/validate] [--workers N] [--dask ADDRESS]
                                   [--no-tiered] [--no-loaded] [--tiered-only | --loaded-only]

Each configuration (a workload and a cache capacity) is simulated with LRU and FIFO eviction
(independent replications) and predicted by the LRU and FIFO characteristic-time models and by
the seed model. Writes ``validation.csv`` (one row per configuration x method), figures, and
prints one summary line per method::

    <method>: mean_abs_err=<x> max_abs_err=<y> n=<configs>

``lru`` and ``fifo`` are scored on token hit rate against the simulated policy of the same name;
``seed`` on its own quantity, the request hit rate, against simulated LRU. Every finished
configuration is written atomically to ``<out>/points/``, so an interrupted run resumes where it
stopped.

Tiered section (``--no-tiered`` skips it, ``--tiered-only`` runs only it): a few of the grid's
workloads with the GPU where the LRU model gets ``TIER_GPU_FRACTION`` of the no-eviction ceiling,
a CPU tier of 0.5-8x the GPU, inclusive and exclusive, each simulated with LRU and FIFO on every
tier (``kvsim.engine.simulate(..., tiers=Tiers(...))``) and predicted by
``analytic.tiers.tiered_model``. Writes ``tiered.csv`` (a row per configuration x method x tier:
gpu, cpu and their total) and ``tiered_summary.txt``, and prints one line per method x mode x
tier::

    tiered <method> <mode> <tier>: mean_abs_err=<x> max_abs_err=<y> n=<configs>

Its points are ``<out>/points/tiered-<id>.json`` (resumed the same way).

Loaded section (``--no-loaded`` skips it, ``--loaded-only`` runs only it): one instance stepping
like vLLM's scheduler (``kvsim simulate --engine``: llama-3.1-8b on an a100-40gb, roofline step
time) serving a few workloads (caching on and off, half the KV cache, long prompts with
a system prompt, short think times) at 25-90% of the largest rate the models under load
(``analytic.load``) say it sustains, against those models: token hit rate and KV usage (absolute
error), mean TPOT and TTFT (relative error). Writes ``loaded.csv`` and ``loaded_summary.txt`` and
prints one line per metric::

    loaded <metric>: mean_abs_err=<x> max=<y> n=<configs>     (mean_rel_err for latencies)

Its points are ``<out>/points/loaded-<id>.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
import tempfile
from concurrent.futures import as_completed
from functools import partial
from pathlib import Path

import numpy as np

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.fifo import fifo_model
from analytic.lru import lru_model
from analytic.plan import capacity_for_target
from analytic.seed import seed_model
from analytic.offload import Tiers
from analytic.specs import Workload
from analytic.tiers import tiered_model
from analytic.ttl import no_eviction_ceiling
from kvsim.batch import executor, write_atomic
from kvsim.cli.parser import UsageError, output_folder

BLOCK_SIZE = 16
INPUT_TOKENS, OUTPUT_TOKENS = 200, 300
METHODS = ("lru", "fifo", "seed")


def make_workload(p: dict) -> Workload:
    return Workload(
        arrival_rate=p["arrival_rate"],
        turns=TurnCount(p["turns_dist"], p["turns"]),
        think_time=ThinkTime(p["think_dist"], p["think_time"], p["think_cv"]),
        input_tokens=TokenCount("fixed", INPUT_TOKENS),
        output_tokens=TokenCount("fixed", OUTPUT_TOKENS),
        system_prompt_tokens=p["system_prompt_tokens"],
    )


THINK = {"exp": 1.0, "lognormal": 1.5, "gamma": 0.5, "det": 0.0}


def grid(quick: bool) -> list[dict]:
    """Workloads x capacities; capacities placed where the LRU model predicts given fractions of
    the no-eviction ceiling, so that every workload spans low to high hit rates."""
    if quick:
        workloads = [
            dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist=d,
                 system_prompt_tokens=s) for d, s in (("exp", 0), ("lognormal", 1000), ("det", 0))
        ]
        fractions = (0.15, 0.5, 0.85, 0.98)
    else:
        workloads = [
            dict(arrival_rate=rate, turns_dist=td, turns=turns, think_time=think, think_dist=d,
                 system_prompt_tokens=s)
            for rate, (td, turns), think, d, s in itertools.product(
                (0.5, 2.0), (("fixed", 5), ("geometric", 8)), (10.0, 60.0), THINK, (0, 2000))
        ]
        fractions = (0.1, 0.4, 0.75, 0.97)
    points = []
    for w in workloads:
        w["think_cv"] = THINK[w["think_dist"]]
        workload = make_workload(w)
        ceiling = no_eviction_ceiling(workload, BLOCK_SIZE).token_hit_rate
        for f in fractions:
            capacity = capacity_for_target(workload, f * ceiling, "token", block_size=BLOCK_SIZE)
            points.append({**w, "capacity_blocks": int(capacity), "target_fraction": f})
    return points


def point_id(p: dict) -> str:
    return hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:16]


def run_point(p: dict, replications: int, requests_per_replication: int, seed: int) -> list[dict]:
    """Simulate one configuration with LRU and FIFO and evaluate every model on it."""
    from kvsim.engine import simulate  # imported in the worker

    workload = make_workload(p)
    models = predictions(p)
    # Warm-up: a few conversation lifetimes plus twice the time a block can stay unused (the
    # cache needs about that long to fill from empty); an experiment design choice, not a fit.
    span = workload.turns.mean * workload.think_time.mean
    times = [models[m].characteristic_time for m in ("lru", "fifo")]
    longest = max((t for t in times if math.isfinite(t)), default=0)
    warmup = 5 * span + 2 * longest
    window = requests_per_replication / workload.requests_per_second
    sims = {policy: simulate(workload, p["capacity_blocks"], policy, block_size=BLOCK_SIZE,
                             duration=warmup + window, warmup=warmup, replications=replications,
                             seed=seed, progress=False)
            for policy in ("lru", "fifo")}
    rows = []
    for method in METHODS:
        if method == "seed":
            metric, sim = "request_hit_rate", sims["lru"].request_hit_rate
        else:
            metric, sim = "token_hit_rate", sims[method].token_hit_rate
        lo, hi = sim.ci95 or (np.nan, np.nan)
        rows.append(score({**p, "method": method, "metric": metric, "simulated": sim.mean, "ci_lo": lo, "ci_hi": hi,
                           "requests": sims["lru" if method == "seed" else method].total("requests"),
                           "replications": replications}, models))
    return rows


def predictions(p: dict) -> dict:
    """Every model's prediction for one configuration (the seed model at the same capacity)."""
    workload = make_workload(p)
    seed_out = seed_model(memory_per_token_bytes=1, model_size_gb=0, turns=workload.turns.mean,
                          arrival_rate=workload.arrival_rate, interval=workload.think_time.mean,
                          seq_len=workload.tokens_per_turn, cached_tokens=p["capacity_blocks"] * BLOCK_SIZE)
    return {"lru": lru_model(workload, p["capacity_blocks"], BLOCK_SIZE),
            "fifo": fifo_model(workload, p["capacity_blocks"], BLOCK_SIZE), "seed": seed_out}


def score(row: dict, models: dict) -> dict:
    """Fill a row's prediction and error from ``predictions``."""
    method = row["method"]
    if method == "seed":
        predicted, variant = models["seed"]["hit_rate"], "seed"
    else:
        predicted, variant = models[method].token_hit_rate, models[method].variant
    return {**row, "variant": variant, "predicted": predicted, "abs_err": abs(predicted - row["simulated"])}


def run_missing(points: list[dict], path_of, run_one, args, what: str, desc: str) -> None:
    """Run ``run_one(point, replications, requests, seed)`` for the points whose file
    (``path_of(point)``) is missing, on the executor, writing each result atomically as it ends."""
    todo = [p for p in points if not path_of(p).exists()]
    print(f"{len(points)} {what}, {len(points) - len(todo)} already done", file=sys.stderr)
    if not todo:
        return
    from tqdm import tqdm

    with executor(args.workers, args.dask) as pool, tqdm(total=len(todo), file=sys.stderr, disable=args.no_progress,
                                                         desc=desc) as bar:
        futures = {pool.submit(run_one, p, args.replications, args.requests, args.seed): p for p in todo}
        for future in as_completed(futures):
            write_atomic(path_of(futures[future]), json.dumps(future.result()))
            bar.update()


def run(args) -> list[dict]:
    out = Path(args.out)
    points_dir = out / "points"
    points = grid(args.quick)
    run_missing(points, lambda p: points_dir / f"{point_id(p)}.json", run_point, args, "configurations", "validate")
    rows = []
    for p in points:
        point_rows = json.loads((points_dir / f"{point_id(p)}.json").read_text())
        if args.rescore:  # the models changed, the simulations did not: predict again
            models = predictions(p)
            point_rows = [score(r, models) for r in point_rows]
        rows.extend(point_rows)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(rows[0])
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, newline="", suffix=".tmp") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(f.name, path)


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for method in METHODS:
        errs = [r["abs_err"] for r in rows if r["method"] == method]
        lines.append(f"{method}: mean_abs_err={np.mean(errs):.4f} max_abs_err={np.max(errs):.4f} n={len(errs)}")
    return lines


def breakdown(rows: list[dict]) -> list[str]:
    """Errors per method and think-time distribution (the targets are stated that way), with the
    simulation's own uncertainty: the mean 95% CI half-width, the share of configurations whose
    prediction falls inside the CI, and the mean error beyond the CI."""
    lines = ["method  think_dist  mean_abs_err  max_abs_err  ci_halfwidth  inside_ci  err_beyond_ci    n"]
    for method in METHODS:
        for dist in THINK:
            sel = [r for r in rows if r["method"] == method and r["think_dist"] == dist]
            if not sel:
                continue
            errs = np.array([r["abs_err"] for r in sel])
            half = np.array([(r["ci_hi"] - r["ci_lo"]) / 2 for r in sel])
            inside = np.mean([r["ci_lo"] <= r["predicted"] <= r["ci_hi"] for r in sel])
            beyond = np.maximum(errs - half, 0).mean()
            lines.append(f"{method:7} {dist:10} {errs.mean():12.4f} {errs.max():12.4f} {np.nanmean(half):13.4f} "
                         f"{inside:9.0%} {beyond:14.4f} {len(sel):4}")
    return lines


def figures(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # 1. predicted vs simulated, per method
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharex=True, sharey=True)
    for ax, method in zip(axes, METHODS):
        sel = [r for r in rows if r["method"] == method]
        for dist, marker in zip(THINK, "osd^"):
            s = [r for r in sel if r["think_dist"] == dist]
            ax.scatter([r["simulated"] for r in s], [r["predicted"] for r in s], s=14, marker=marker,
                       label=f"{dist} think", alpha=0.75)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        metric = sel[0]["metric"].replace("_", " ") if sel else ""
        ax.set_title(f"{method}: {metric}")
        ax.set_xlabel("simulated")
    axes[0].set_ylabel("predicted")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "predicted_vs_simulated.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # 2. error by region: absolute error against the simulated hit rate
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, 1, 11)
    for method in METHODS:
        sel = [r for r in rows if r["method"] == method]
        sim = np.array([r["simulated"] for r in sel])
        err = np.array([r["predicted"] - r["simulated"] for r in sel])
        idx = np.digitize(sim, bins) - 1
        centers = [(bins[i] + bins[i + 1]) / 2 for i in range(10) if (idx == i).any()]
        mean_abs = [np.abs(err[idx == i]).mean() for i in range(10) if (idx == i).any()]
        ax.plot(centers, mean_abs, "o-", label=method)
    ax.set_xlabel("simulated hit rate (bin)")
    ax.set_ylabel("mean |predicted - simulated|")
    ax.legend()
    ax.set_title("error by region")
    fig.tight_layout()
    paths.append(out / "error_by_region.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def curve_figure(out: Path, replications: int, requests: int, seed: int) -> Path:
    """Hit rate vs capacity for one workload: models as lines, simulation as points with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kvsim.engine import simulate

    p = dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp", think_cv=1.0,
             system_prompt_tokens=0)
    workload = make_workload(p)
    caps = np.unique(np.geomspace(300, 40000, 40).astype(int))
    lru = [lru_model(workload, int(c), BLOCK_SIZE) for c in caps]
    fifo = [fifo_model(workload, int(c), BLOCK_SIZE) for c in caps]
    seed_hits = [seed_model(memory_per_token_bytes=1, model_size_gb=0, turns=5, arrival_rate=1.0, interval=30.0,
                            seq_len=INPUT_TOKENS + OUTPUT_TOKENS, cached_tokens=int(c) * BLOCK_SIZE)["hit_rate"]
                 for c in caps]
    tokens = caps * BLOCK_SIZE / 1000
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.3))
    ax1.plot(tokens, [m.token_hit_rate for m in lru], "C0-", label="LRU model")
    ax1.plot(tokens, [m.token_hit_rate for m in fifo], "C1-", label="FIFO model")
    ax2.plot(tokens, [m.request_hit_rate for m in lru], "C0-", label="LRU model")
    ax2.plot(tokens, seed_hits, "C3-", label="seed model")
    span = 5 * 30.0
    for c in np.geomspace(400, 30000, 9).astype(int):
        for policy, color in (("lru", "C0"), ("fifo", "C1")):
            r = simulate(workload, int(c), policy, block_size=BLOCK_SIZE, duration=5 * span + requests / 5,
                         warmup=5 * span, replications=replications, seed=seed, progress=False)
            for ax, est in ((ax1, r.token_hit_rate), (ax2, r.request_hit_rate)):
                if ax is ax2 and policy == "fifo":
                    continue
                lo, hi = est.ci95
                ax.errorbar(c * BLOCK_SIZE / 1000, est.mean, yerr=[[est.mean - lo], [hi - est.mean]], fmt="o",
                            color=color, ms=4, capsize=2,
                            label=f"simulated {policy.upper()}" if c == 400 else None)
    for ax, title in ((ax1, "token hit rate"), (ax2, "request hit rate")):
        ax.set_xscale("log")
        ax.set_xlabel("cache capacity (thousand tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("λ=1 conversation/s, 5 turns, exp think 30 s, 200 in + 300 out tokens, block 16", fontsize=10)
    fig.tight_layout()
    path = out / "hit_rate_vs_capacity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Tiered prefix cache (GPU -> CPU): analytic.tiers.tiered_model against the tiered simulator.

TIER_RATIOS = (0.5, 1, 2, 4, 8)  # CPU capacity / GPU capacity
TIER_MODES = ("inclusive", "exclusive")
TIER_METHODS = ("lru", "fifo")
TIER_PARTS = ("gpu", "cpu", "total")
TIER_GPU_FRACTION = 0.45  # the GPU where the LRU model gets this share of the no-eviction ceiling


def tiered_grid(quick: bool) -> list[dict]:
    """Workloads x CPU:GPU ratios x modes; one GPU capacity per workload."""
    if quick:
        workloads = [dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp",
                          system_prompt_tokens=0)]
        ratios = (0.5, 2, 8)
    else:
        workloads = [
            dict(arrival_rate=rate, turns_dist=td, turns=turns, think_time=think, think_dist=d,
                 system_prompt_tokens=s)
            for rate, td, turns, think, d, s in (
                (2.0, "fixed", 5, 60.0, "exp", 0),
                (2.0, "fixed", 5, 10.0, "det", 0),
                (0.5, "geometric", 8, 60.0, "exp", 0),
                (0.5, "geometric", 8, 10.0, "det", 0),
                (2.0, "fixed", 5, 10.0, "lognormal", 2000),
            )
        ]
        ratios = TIER_RATIOS
    points = []
    for w in workloads:
        w["think_cv"] = THINK[w["think_dist"]]
        workload = make_workload(w)
        ceiling = no_eviction_ceiling(workload, BLOCK_SIZE).token_hit_rate
        gpu = int(capacity_for_target(workload, TIER_GPU_FRACTION * ceiling, "token", block_size=BLOCK_SIZE))
        for ratio, mode in itertools.product(ratios, TIER_MODES):
            points.append({**w, "capacity_blocks": gpu, "cpu_blocks": int(round(ratio * gpu)), "cpu_ratio": ratio,
                           "tier_mode": mode, "target_fraction": TIER_GPU_FRACTION})
    return points


def tiered_point_file(points_dir: Path, p: dict) -> Path:
    return points_dir / f"tiered-{point_id(p)}.json"


def tiered_predictions(p: dict) -> dict:
    workload = make_workload(p)
    return {method: tiered_model(workload, (p["capacity_blocks"], p["cpu_blocks"]), BLOCK_SIZE, method, p["tier_mode"])
            for method in TIER_METHODS}


def tiered_score(row: dict, models: dict) -> dict:
    """Fill a tiered row's prediction and error from ``tiered_predictions``."""
    m = models[row["method"]]
    predicted = m.token_hit_rate if row["tier"] == "total" else m.tiers[row["tier"]]["token_hit_rate"]
    return {**row, "predicted": predicted, "signed_err": predicted - row["simulated"],
            "abs_err": abs(predicted - row["simulated"])}


def run_tiered_point(p: dict, replications: int, requests_per_replication: int, seed: int) -> list[dict]:
    """Simulate one tiered configuration with LRU and FIFO (on every tier) and predict it."""
    from kvsim.engine import simulate  # imported in the worker

    workload = make_workload(p)
    models = tiered_predictions(p)
    # Warm-up as run_point's, with the characteristic time of one cache as large as both tiers
    # (the longest a block can stay anywhere unused; inclusive tiers keep less).
    span = workload.turns.mean * workload.think_time.mean
    union = p["capacity_blocks"] + p["cpu_blocks"]
    times = [lru_model(workload, union, BLOCK_SIZE).characteristic_time,
             fifo_model(workload, union, BLOCK_SIZE).characteristic_time]
    longest = max((t for t in times if math.isfinite(t)), default=0)
    warmup = 5 * span + 2 * longest
    window = requests_per_replication / workload.requests_per_second
    tiers = Tiers(p["cpu_blocks"], 0, p["tier_mode"])
    rows = []
    for method in TIER_METHODS:
        sim = simulate(workload, p["capacity_blocks"], method, block_size=BLOCK_SIZE, duration=warmup + window,
                       warmup=warmup, replications=replications, seed=seed, progress=False, tiers=tiers)
        per_tier = sim.as_dict()["tiers"]
        for part in TIER_PARTS:
            if part == "total":
                mean, ci = sim.token_hit_rate.mean, sim.token_hit_rate.ci95
            else:
                mean, ci = per_tier[part]["token_hit_rate"]["mean"], per_tier[part]["token_hit_rate"]["ci95"]
            lo, hi = ci or (np.nan, np.nan)
            rows.append(tiered_score({**p, "method": method, "tier": part, "simulated": mean, "ci_lo": lo,
                                      "ci_hi": hi, "requests": sim.total("requests"), "replications": replications,
                                      "warmup_s": warmup}, models))
    return rows


def run_tiered(args) -> list[dict]:
    points_dir = Path(args.out) / "points"
    points = tiered_grid(args.quick)
    run_missing(points, lambda p: tiered_point_file(points_dir, p), run_tiered_point, args, "tiered configurations",
                "validate tiered")
    rows = []
    for p in points:
        point_rows = json.loads(tiered_point_file(points_dir, p).read_text())
        if args.rescore:
            models = tiered_predictions(p)
            point_rows = [tiered_score(r, models) for r in point_rows]
        rows.extend(point_rows)
    return rows


# ----------------------------------------------------------------------------- loaded section

LOADED_FRACTIONS = (0.25, 0.5, 0.75, 0.9)  # arrival rates as shares of the model's largest sustainable rate
LOADED_METRICS = (  # (metric, simulated key, model attribute, relative error?)
    ("token_hit_rate", "token_hit_rate", "token_hit_rate", False),
    ("kv_usage", "kv_usage", "kv_usage", False),
    ("tpot_mean", "tpot_mean_s", "tpot_s", True),
    ("ttft_mean", "ttft_mean_s", "ttft_s", True),
)
LOADED_DURATION_S, LOADED_QUICK_DURATION_S = 1800.0, 900.0  # measured simulated seconds per replication


def loaded_grid(quick: bool) -> list[dict]:
    """Workloads served by one engine instance (the default model and GPU: llama-3.1-8b on an
    a100-40gb, roofline step time), at shares of the rate the models say it sustains.
    ``memory_utilization`` below vLLM's 0.9 leaves a smaller KV cache (the cache the bottleneck)."""
    base = dict(turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp", input_tokens=200, output_tokens=300,
                system_prompt_tokens=0, memory_utilization=0.9, prefix_caching=True)
    if quick:
        workloads, fractions = [base], (0.5, 0.9)
    else:
        workloads = [
            base,
            {**base, "prefix_caching": False},
            {**base, "memory_utilization": 0.65},  # 9.1 GiB of KV cache instead of 19.1: the held blocks matter
            {**base, "turns": 4, "input_tokens": 1000, "output_tokens": 150, "system_prompt_tokens": 2000},
            {**base, "turns_dist": "geometric", "turns": 8, "think_time": 10.0, "think_dist": "det",
             "output_tokens": 100},
        ]
        fractions = LOADED_FRACTIONS
    return [{**w, "rate_fraction": f} for w in workloads for f in fractions]


def loaded_scenario(p: dict, rate: float):
    """The point's Scenario through the command line's own parser (``kvsim simulate --engine``)."""
    from kvsim.cli.args import scenario_from_values
    from kvsim.cli.main import build_parser

    argv = ["simulate", "--engine", "--arrival-rate", repr(rate), "--turns", str(p["turns"]), "--turns-dist",
            p["turns_dist"], "--think-time", str(p["think_time"]), "--think-dist", p["think_dist"],
            "--input-tokens", str(p["input_tokens"]), "--output-tokens", str(p["output_tokens"]),
            "--system-prompt-tokens", str(p["system_prompt_tokens"])]
    argv += ["--memory-utilization", str(p["memory_utilization"])]
    if not p["prefix_caching"]:
        argv.append("--no-prefix-caching")
    return scenario_from_values(vars(build_parser().parse_args(argv)))


def loaded_predictions(p: dict) -> tuple[float, dict]:
    """The rate of the point (its share of the models' largest sustainable rate) and the models
    under load (``analytic.load``) at it."""
    from analytic.load import saturation_rate, under_load
    from analytic.scenario import default_evaluate

    s = loaded_scenario(p, 1.0)
    blocks = s.capacity().capacity_blocks
    sustainable = saturation_rate(s.workload, blocks, s.block_size, s.engine_spec(), default_evaluate)
    rate = p["rate_fraction"] * sustainable
    s = loaded_scenario(p, rate)
    m = under_load(s.workload, blocks, s.block_size, s.engine_spec(), default_evaluate)
    return rate, {"token_hit_rate": m.token_hit_rate, "tpot_s": m.tpot_s, "ttft_s": m.ttft_s,
                  "kv_usage": None if m.held_blocks is None else m.held_blocks / blocks,
                  "sustainable_rate": sustainable, "saturated": m.saturated}


def loaded_simulation(s, replications: int, seed: int, duration: float) -> dict:
    """One engine simulation of scenario ``s`` (``kvsim simulate --engine``): the figures the
    models predict, with their 95% CIs over the replications."""
    from kvsim.cli.args import SimulationSettings
    from kvsim.cli.simulate import simulate_record

    # Warm-up: three conversation lifetimes (the cache and the batch fill from empty), 10 min at least.
    span = s.workload.turns.mean * s.workload.think_time.mean
    warmup = max(600.0, 3 * span)
    record, _ = simulate_record(s, "lru", SimulationSettings(duration=warmup + duration, warmup=warmup,
                                                             replications=replications, seed=seed))
    v = record["serving"]
    return {"token_hit_rate": record["token_hit_rate"], "kv_usage": v["kv_usage"]["mean"],
            "tpot_mean_s": v["tpot_s"]["mean"], "ttft_mean_s": v["ttft_s"]["mean"],
            "ttft_p99_s": v["ttft_s"]["p99"], "queue_mean_s": v["queue_s"]["mean"]["mean"],
            "requests": record["requests_measured"], "warmup_s": warmup}


def loaded_point_file(points_dir: Path, p: dict) -> Path:
    return points_dir / f"loaded-{point_id(p)}.json"


def loaded_score(row: dict, models: dict) -> dict:
    """Fill a loaded row's prediction and error (absolute for rates, relative for latencies; None
    when the model finds the instance saturated)."""
    _, _, attr, relative = next(m for m in LOADED_METRICS if m[0] == row["metric"])
    predicted = models[attr]
    err = None if predicted is None else (abs(predicted / row["simulated"] - 1) if relative
                                          else abs(predicted - row["simulated"]))
    return {**row, "predicted": predicted, "relative": relative, "err": err, "model_saturated": models["saturated"]}


def run_loaded_point(p: dict, replications: int, requests_per_replication: int, seed: int,
                     duration: float = LOADED_DURATION_S) -> list[dict]:
    """Simulate one loaded configuration with the step engine and predict it with the models
    under load (``requests_per_replication`` is unused: the window is ``duration`` seconds)."""
    rate, models = loaded_predictions(p)
    sim = loaded_simulation(loaded_scenario(p, rate), replications, seed, duration)
    rows = []
    for metric, key, _, _ in LOADED_METRICS:
        lo, hi = sim[key]["ci95"] or (np.nan, np.nan)
        rows.append(loaded_score({**p, "arrival_rate": rate, "sustainable_rate": models["sustainable_rate"],
                                  "metric": metric, "simulated": sim[key]["mean"], "ci_lo": lo, "ci_hi": hi,
                                  "ttft_p99_s": sim["ttft_p99_s"], "queue_mean_s": sim["queue_mean_s"],
                                  "requests": sim["requests"], "replications": replications,
                                  "warmup_s": sim["warmup_s"]}, models))
    return rows


def run_loaded(args) -> list[dict]:
    points_dir = Path(args.out) / "points"
    points = loaded_grid(args.quick)
    duration = LOADED_QUICK_DURATION_S if args.quick else LOADED_DURATION_S
    run_missing(points, lambda p: loaded_point_file(points_dir, p), partial(run_loaded_point, duration=duration),
                args, "loaded configurations", "validate loaded")
    rows = []
    for p in points:
        point_rows = json.loads(loaded_point_file(points_dir, p).read_text())
        if args.rescore:
            _, models = loaded_predictions(p)
            point_rows = [loaded_score(r, models) for r in point_rows]
        rows.extend(point_rows)
    return rows


def loaded_label(r: dict) -> str:
    tags = [f"{'geo' if r['turns_dist'] == 'geometric' else ''}{float(r['turns']):g}x"
            f"{int(float(r['input_tokens']))}+{int(float(r['output_tokens']))}"]
    if int(float(r["system_prompt_tokens"] or 0)):
        tags.append(f"sys{int(float(r['system_prompt_tokens']))}")
    tags.append(f"{r['think_dist']}{float(r['think_time']):g}s")
    if float(r["memory_utilization"]) != 0.9:
        tags.append(f"util{float(r['memory_utilization']):g}")
    if not r["prefix_caching"]:
        tags.append("no-caching")
    return "/".join(tags)


def loaded_summary(rows: list[dict]) -> list[str]:
    lines = []
    for metric, _, _, relative in LOADED_METRICS:
        errs = [r["err"] for r in rows if r["metric"] == metric and r["err"] is not None]
        kind = "mean_rel_err" if relative else "mean_abs_err"
        lines.append(f"loaded {metric}: {kind}={np.mean(errs):.4f} max={np.max(errs):.4f} n={len(errs)}"
                     if errs else f"loaded {metric}: n=0")
    return lines


def loaded_breakdown(rows: list[dict]) -> list[str]:
    """Per workload and rate: simulated / model for each metric (latencies in ms)."""
    lines = [f"{'workload':38} {'share':>5} {'rate/s':>7} " + " ".join(f"{m:>17}" for m, *_ in LOADED_METRICS)]
    by_point: dict = {}
    for r in rows:
        by_point.setdefault((loaded_label(r), float(r["rate_fraction"])), {})[r["metric"]] = r
    for (label, share), metrics in by_point.items():
        cells = []
        for metric, _, _, relative in LOADED_METRICS:
            r = metrics[metric]
            scale, digits = (1000, 1) if relative else (1, 3)
            model = "-" if r["predicted"] in (None, "") else f"{float(r['predicted']) * scale:.{digits}f}"
            cells.append(f"{float(r['simulated']) * scale:.{digits}f} / {model}")
        rate = float(next(iter(metrics.values()))["arrival_rate"])
        lines.append(f"{label:38} {share:5.2f} {rate:7.3f} " + " ".join(f"{c:>17}" for c in cells))
    lines += ["", "mean error by share of the models' sustainable rate (absolute for rates, relative for latencies)",
              f"{'share':>5} " + " ".join(f"{m:>17}" for m, *_ in LOADED_METRICS)]
    for share in sorted({float(r["rate_fraction"]) for r in rows}):
        cells = []
        for metric, *_ in LOADED_METRICS:
            errs = [r["err"] for r in rows if r["metric"] == metric and float(r["rate_fraction"]) == share
                    and r["err"] not in (None, "")]
            cells.append(f"{np.mean(errs):17.3f}" if errs else f"{'-':>17}")
        lines.append(f"{share:5.2f} " + " ".join(cells))
    return lines



# ----------------------------------------------------------------------------- hybrid section

HYBRID_PRESETS = ("gpt-oss-20b", "gemma-3-12b", "qwen3-next-80b-a3b", "jamba-v0.1")
HYBRID_FRACTIONS = (0.15, 0.5, 0.85)  # of the no-eviction ceiling, where the pool model puts the capacity
HYBRID_MIN_CONVERSATIONS = 4


def hybrid_grid(quick: bool) -> list[dict]:
    """Hybrid presets x workloads x pools placed where the pool model predicts given fractions of
    the no-eviction ceiling."""
    from analytic import hybrid, presets
    from analytic.hybrid_lru import hybrid_lru_model
    from kvsim.hybrid_cache import vllm_layout

    base = dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp", think_cv=1.0,
                system_prompt_tokens=0)
    workloads = [base] if quick else [base, {**base, "system_prompt_tokens": 2000},
                                      {**base, "turns_dist": "geometric", "turns": 8, "think_time": 10.0}]
    names = HYBRID_PRESETS[:2] if quick else HYBRID_PRESETS
    points = []
    for name in names:
        layout = vllm_layout(presets.model(name))
        groups = hybrid.plan(presets.model(name), 1.0).group_kinds  # any memory will do

        def evaluate(w, blocks, bs, method, groups=groups):
            return hybrid_lru_model(w, groups, blocks, bs)

        for w in workloads:
            workload = make_workload(w)
            ceiling = evaluate(workload, 10**9, layout.block_size, "lru").token_hit_rate
            # At least HYBRID_MIN_CONVERSATIONS mean conversations in every group: below, a long system
            # prompt puts the low targets where the pool holds less than one conversation.
            mean = workload.system_prompt_tokens + workload.turns.mean * workload.tokens_per_turn
            least = HYBRID_MIN_CONVERSATIONS * len(layout.groups) * -(-int(mean) // layout.block_size)
            for f in HYBRID_FRACTIONS[::2] if quick else HYBRID_FRACTIONS:
                blocks = max(least, capacity_for_target(workload, f * ceiling, "token", block_size=layout.block_size,
                                                        evaluate=evaluate))
                if points and points[-2]["capacity_blocks"] == blocks and points[-2]["preset"] == name:
                    continue  # two targets below the least pool: one point (points come in LRU, FIFO pairs)
                groups_only = {k: v for k, v in layout.as_dict().items() if k != "policy"}  # the point's own
                point = {**w, "preset": name, "block_size": layout.block_size, "capacity_blocks": int(blocks),
                         "target_fraction": f, "layout": groups_only}
                # the same pool evicted FIFO ("policy" only on these: the LRU points keep their ids)
                points += [point, {**point, "policy": "fifo"}]
    return points


def hybrid_predictions(p: dict) -> dict:
    """The pool model of the point's policy (LRU or FIFO), and the single-group model of that
    policy at the pool in tokens of context at the mean prompt (analytic.hybrid.HybridPlan.effective_tokens)."""
    from analytic import hybrid, presets
    from analytic.calc import mean_prompt_tokens
    from analytic.hybrid_fifo import hybrid_fifo_model
    from analytic.hybrid_lru import hybrid_lru_model
    from kvsim.hybrid_cache import HybridLayout

    workload = make_workload(p)
    bs = HybridLayout.from_dict(p["layout"]).block_size
    plan = hybrid.plan(presets.model(p["preset"]), 1.0)  # the groups and block size (any memory will do)
    fifo = p.get("policy", "lru") == "fifo"
    pool = (hybrid_fifo_model if fifo else hybrid_lru_model)(workload, plan.group_kinds, p["capacity_blocks"], bs)
    ctx = max(1, round(mean_prompt_tokens(workload)))
    effective = p["capacity_blocks"] * ctx // plan.blocks_per_sequence(ctx) // bs
    single = fifo_model(workload, effective, bs) if fifo else lru_model(workload, effective, bs)
    return {"pool": pool.token_hit_rate, "effective": single.token_hit_rate}


def run_hybrid_point(p: dict, replications: int, requests_per_replication: int, seed: int) -> list[dict]:
    """Simulate one hybrid configuration (kvsim.hybrid_cache, vLLM's rules) and predict it."""
    from kvsim.engine import simulate  # imported in the worker
    from kvsim.hybrid_cache import HybridLayout

    policy = p.get("policy", "lru")
    layout = HybridLayout.from_dict({**p["layout"], "policy": policy})
    workload = make_workload(p)
    models = hybrid_predictions(p)
    span = workload.turns.mean * workload.think_time.mean
    warmup = 5 * span + 600
    window = requests_per_replication / workload.requests_per_second
    sim = simulate(workload, p["capacity_blocks"], policy, block_size=layout.block_size, duration=warmup + window,
                   warmup=warmup, replications=replications, seed=seed, progress=False, hybrid=layout)
    lo, hi = sim.token_hit_rate.ci95 or (np.nan, np.nan)
    return [hybrid_score({**{k: v for k, v in p.items() if k != "layout"}, "policy": policy, "method": method,
                          "simulated": sim.token_hit_rate.mean, "ci_lo": lo, "ci_hi": hi,
                          "requests": sim.total("requests"), "replications": replications}, models)
            for method in ("pool", "effective")]


def hybrid_score(row: dict, models: dict) -> dict:
    predicted = models[row["method"]]
    return {**row, "predicted": predicted, "signed_err": predicted - row["simulated"],
            "abs_err": abs(predicted - row["simulated"])}


def run_hybrid(args) -> list[dict]:
    points_dir = Path(args.out) / "points"
    points = hybrid_grid(args.quick)
    run_missing(points, lambda p: points_dir / f"hybrid-{point_id(p)}.json", run_hybrid_point, args,
                "hybrid configurations", "validate hybrid")
    rows = []
    for p in points:
        point_rows = json.loads((points_dir / f"hybrid-{point_id(p)}.json").read_text())
        if args.rescore:
            models = hybrid_predictions(p)
            point_rows = [hybrid_score(r, models) for r in point_rows]
        rows.extend(point_rows)
    return rows


def hybrid_summary(rows: list[dict]) -> list[str]:
    lines = []
    for policy in ("lru", "fifo"):
        for method in ("pool", "effective"):
            errs = [r["abs_err"] for r in rows if r["method"] == method and r.get("policy", "lru") == policy]
            if errs:
                lines.append(f"hybrid {policy} {method}: mean_abs_err={np.mean(errs):.4f} "
                             f"max_abs_err={np.max(errs):.4f} n={len(errs)}")
    return lines


def hybrid_breakdown(rows: list[dict]) -> list[str]:
    """Per preset and configuration: the block size, the pool, simulated [95% CI] and both models."""
    lines = [f"{'preset':20} {'workload':22} {'bs':>4} {'pool blocks':>11} {'policy':>6} {'simulated':>20} "
             f"{'pool model':>10} {'effective':>10}"]
    by: dict = {}
    for r in rows:
        by.setdefault((r["preset"], workload_label(r), int(r["block_size"]), int(r["capacity_blocks"]),
                       r.get("policy", "lru")), {})[r["method"]] = r
    for (preset, label, bs, blocks, policy), m in by.items():
        sim = m["pool"]
        lines.append(f"{preset:20} {label:22} {bs:>4} {blocks:>11,} {policy:>6} {float(sim['simulated']):>7.3f} "
                     f"[{float(sim['ci_lo']):.3f}, {float(sim['ci_hi']):.3f}] {float(m['pool']['predicted']):>10.3f} "
                     f"{float(m['effective']['predicted']):>10.3f}")
    return lines

def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _stats(sel: list[dict]) -> tuple:
    errs = np.array([r["abs_err"] for r in sel])
    signed = np.array([r["signed_err"] for r in sel])
    half = np.array([(r["ci_hi"] - r["ci_lo"]) / 2 for r in sel])
    # A degenerate CI (every replication equal, e.g. no CPU hits at all) holds a prediction within
    # rounding of it.
    inside = np.mean([r["ci_lo"] - 1e-9 <= r["predicted"] <= r["ci_hi"] + 1e-9 for r in sel])
    beyond = np.maximum(errs - half, 0).mean()
    return errs, signed, half, inside, beyond


def tiered_summary(rows: list[dict]) -> list[str]:
    lines = []
    for method, mode, part in itertools.product(TIER_METHODS, TIER_MODES, TIER_PARTS):
        errs = [r["abs_err"] for r in rows if (r["method"], r["tier_mode"], r["tier"]) == (method, mode, part)]
        if errs:
            lines.append(f"tiered {method} {mode} {part}: mean_abs_err={np.mean(errs):.4f} "
                         f"max_abs_err={np.max(errs):.4f} n={len(errs)}")
    return lines


def tiered_breakdown(rows: list[dict]) -> list[str]:
    """Token hit rate errors per method x mode x tier, as ``breakdown``, with the mean signed error
    (predicted - simulated); then the total's signed error per CPU:GPU ratio."""
    lines = ["method  mode       tier   mean_abs_err  max_abs_err  mean_signed  ci_halfwidth  inside_ci  "
             "err_beyond_ci    n"]
    for method, mode, part in itertools.product(TIER_METHODS, TIER_MODES, TIER_PARTS):
        sel = [r for r in rows if (r["method"], r["tier_mode"], r["tier"]) == (method, mode, part)]
        if not sel:
            continue
        errs, signed, half, inside, beyond = _stats(sel)
        lines.append(f"{method:7} {mode:10} {part:6} {errs.mean():12.4f} {errs.max():12.4f} {signed.mean():+12.4f} "
                     f"{np.nanmean(half):13.4f} {inside:10.0%} {beyond:14.4f} {len(sel):4}")
    ratios = sorted({r["cpu_ratio"] for r in rows})
    lines += ["", "total: mean signed error (predicted - simulated) by CPU:GPU ratio",
              "method  mode      " + "".join(f"{f'x{ratio:g}':>9}" for ratio in ratios)]
    for method, mode in itertools.product(TIER_METHODS, TIER_MODES):
        cells = []
        for ratio in ratios:
            sel = [r["signed_err"] for r in rows if (r["method"], r["tier_mode"], r["tier"], r["cpu_ratio"])
                   == (method, mode, "total", ratio)]
            cells.append(f"{np.mean(sel):+9.4f}" if sel else f"{'':9}")
        lines.append(f"{method:7} {mode:10}" + "".join(cells))
    labels = {}
    for r in rows:
        labels.setdefault(workload_label(r), None)
    lines += ["", "total: mean signed error (predicted - simulated) by workload (rate/turns/think/system prompt)",
              "method  mode      " + "".join(f"{label:>22}" for label in labels)]
    for method, mode in itertools.product(TIER_METHODS, TIER_MODES):
        cells = []
        for label in labels:
            sel = [r["signed_err"] for r in rows if (r["method"], r["tier_mode"], r["tier"]) == (method, mode, "total")
                   and workload_label(r) == label]
            cells.append(f"{np.mean(sel):+22.4f}" if sel else f"{'':22}")
        lines.append(f"{method:7} {mode:10}" + "".join(cells))
    return lines


def workload_label(r: dict) -> str:
    turns = f"{'geo' if r['turns_dist'] == 'geometric' else ''}{float(r['turns']):g}"
    return (f"{float(r['arrival_rate']):g}/{turns}/{r['think_dist']}{float(r['think_time']):g}/"
            f"{int(float(r['system_prompt_tokens']))}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a representative subset, under 2 minutes (the tiered section: 6 more, about 20 s)")
    ap.add_argument("--out", default="out/validate", help="output folder (default out/validate)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="local worker processes")
    ap.add_argument("--dask", metavar="ADDRESS", help="run on an existing Dask cluster (optional extra)")
    ap.add_argument("--replications", type=int, default=None, help="per configuration (default 3, quick 2)")
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests per replication (default 20000, quick 6000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the models' predictions for finished points (after a model change)")
    ap.add_argument("--no-curve", action="store_true", help="skip the hit-rate-vs-capacity figure")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--tiered-only", action="store_true", help="run only the tiered section")
    only.add_argument("--loaded-only", action="store_true", help="run only the loaded section")
    only.add_argument("--hybrid-only", action="store_true", help="run only the hybrid section")
    ap.add_argument("--no-tiered", action="store_true", help="skip the tiered (GPU -> CPU) section")
    ap.add_argument("--no-loaded", action="store_true", help="skip the loaded section (the engine under load)")
    ap.add_argument("--no-hybrid", action="store_true", help="skip the hybrid section (hybrid models' pools)")
    args = ap.parse_args(argv)
    args.replications = args.replications or (2 if args.quick else 3)
    args.requests = args.requests or (6000 if args.quick else 20000)
    if args.quick and args.out == "out/validate":
        args.out = "out/validate-quick"
    try:  # output paths checked before any work (kvsim.cli.parser)
        output_folder("--out", args.out)
    except UsageError as e:
        print(f"validate: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (args.tiered_only or args.loaded_only or args.hybrid_only):
        try:
            rows = run(args)
        except ValueError as e:  # e.g. --dask without the extra
            sys.exit(f"validate: error: {e}")
        write_csv(rows, out / "validation.csv")
        lines = summary(rows)
        write_atomic(out / "summary.txt", "\n".join(lines + [""] + breakdown(rows)) + "\n")
        figures(rows, out)
        if not args.quick and not args.no_curve:
            curve_figure(out, args.replications, args.requests, args.seed)
        print("\n".join(breakdown(rows)), file=sys.stderr)
        print("\n".join(lines), flush=True)
    sections = [("tiered", run_tiered, tiered_summary, tiered_breakdown, args.no_tiered or args.loaded_only
                 or args.hybrid_only),
                ("loaded", run_loaded, loaded_summary, loaded_breakdown, args.no_loaded or args.tiered_only
                 or args.hybrid_only),
                ("hybrid", run_hybrid, hybrid_summary, hybrid_breakdown, args.no_hybrid or args.tiered_only
                 or args.loaded_only)]
    for name, run_section, summarise, tabulate, skip in sections:
        if skip:
            continue
        try:
            section_rows = run_section(args)
        except ValueError as e:
            sys.exit(f"validate: error: {e}")
        write_atomic(out / f"{name}.csv", csv_text(section_rows))
        section_lines = summarise(section_rows)
        table = tabulate(section_rows)
        write_atomic(out / f"{name}_summary.txt", "\n".join(section_lines + [""] + table) + "\n")
        print("\n".join(table), file=sys.stderr)
        print("\n".join(section_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
