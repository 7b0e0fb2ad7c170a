"""README figure: token hit rate by tier against the size of a CPU offload tier.

    python experiments/tiers_figure.py [--out docs/tiers.png] [--replications 3] [--requests 20000]

The default synthetic workload (``Workload()``: 1 conversation/s, 5 turns, exponential think
time of 30 s, 200 + 300 tokens per turn) on the default GPU cache of ``kvsim calc`` (9,778
blocks of 16 tokens), with an inclusive LRU CPU tier from 0 to 16x the GPU. Lines: the tiered
model (``analytic.tiers.tiered_model``), its GPU part and its total; points: the simulator
(``kvsim.engine.simulate(..., tiers=Tiers(...))``), the GPU part and the total with their 95%
CIs. The x axis is the CPU tier in GiB of KV cache (131,072 bytes per token: Llama-3.1-8B in
bf16, ``analytic.sizing.bytes_per_token``). Prints the numbers it plots; under 3 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from analytic import presets
from analytic.lru import lru_model
from analytic.sizing import bytes_per_token
from analytic.offload import Tiers
from analytic.specs import Workload
from analytic.tiers import tiered_model
from analytic.ttl import no_eviction_ceiling
from kvsim.batch import write_figure
from kvsim.cli.parser import UsageError, output_file

GPU_BLOCKS = 9778  # kvsim calc's default capacity
BLOCK_SIZE = 16
MODE = "inclusive"
POLICY = "lru"
SIM_RATIOS = (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16)  # CPU blocks / GPU blocks
BYTES_PER_TOKEN = bytes_per_token(presets.model("llama-3.1-8b"), "bf16")
GIB = 2**30


def gib(blocks: int) -> float:
    return blocks * BLOCK_SIZE * BYTES_PER_TOKEN / GIB


def model_point(workload: Workload, cpu: int) -> tuple[float, float]:
    m = tiered_model(workload, (GPU_BLOCKS, cpu), BLOCK_SIZE, POLICY, MODE)
    return m.tiers["gpu"]["token_hit_rate"], m.token_hit_rate


def simulate_point(workload: Workload, cpu: int, replications: int, requests: int, seed: int) -> dict:
    from kvsim.engine import simulate

    # Warm-up as experiments/validate.py: 5 conversation lifetimes plus twice the characteristic
    # time of the largest cache the tiers amount to.
    t = lru_model(workload, GPU_BLOCKS + cpu, BLOCK_SIZE).characteristic_time
    warmup = 5 * workload.turns.mean * workload.think_time.mean + (2 * t if math.isfinite(t) else 0)
    window = requests / workload.requests_per_second
    r = simulate(workload, GPU_BLOCKS, POLICY, block_size=BLOCK_SIZE, duration=warmup + window, warmup=warmup,
                 replications=replications, seed=seed, progress=False, tiers=Tiers(cpu, 0, MODE) if cpu else None)
    total = r.token_hit_rate
    if cpu:
        g = r.as_dict()["tiers"]["gpu"]["token_hit_rate"]
        gpu_mean, gpu_ci = g["mean"], tuple(g["ci95"]) if g["ci95"] else (math.nan, math.nan)
    else:
        gpu_mean, gpu_ci = total.mean, total.ci95 or (math.nan, math.nan)
    return {"gpu": gpu_mean, "gpu_ci": gpu_ci, "total": total.mean, "total_ci": total.ci95 or (math.nan, math.nan)}


def figure(path: Path, curve: dict, sims: dict, ceiling: float, workload: Workload) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    x = [gib(c) for c in curve["cpu"]]
    ax.fill_between(x, 0, curve["gpu"], color="C0", alpha=0.18, lw=0)
    ax.fill_between(x, curve["gpu"], curve["total"], color="C2", alpha=0.18, lw=0)
    ax.plot(x, curve["total"], "C2-", label="model: total (GPU + CPU)")
    ax.plot(x, curve["gpu"], "C0-", label="model: GPU tier")
    sx = [gib(c) for c in sims]
    for key, color, label in (("total", "C2", "simulated total (95% CI)"),
                              ("gpu", "C0", "simulated GPU tier (95% CI)")):
        y = np.array([s[key] for s in sims.values()])
        lo = np.array([s[f"{key}_ci"][0] for s in sims.values()])
        hi = np.array([s[f"{key}_ci"][1] for s in sims.values()])
        ax.errorbar(sx, y, yerr=[y - lo, hi - y], fmt="o", color=color, ms=4, capsize=2, label=label,
                    mfc="white" if key == "gpu" else color)
    ax.axhline(ceiling, color="grey", ls="--", lw=1, label=f"no-eviction ceiling {ceiling:.1%}")
    top = ax.secondary_xaxis("top", functions=(lambda g: g / gib(GPU_BLOCKS), lambda r: r * gib(GPU_BLOCKS)))
    top.set_xlabel("CPU tier / GPU cache", fontsize=8)
    top.tick_params(labelsize=8)
    ax.set_xlabel(f"CPU offload tier (GiB of KV, Llama-3.1-8B bf16); GPU cache {gib(GPU_BLOCKS):.1f} GiB")
    ax.set_ylabel("token hit rate")
    ax.set_ylim(0, 1)
    ax.set_xlim(-5, x[-1] * 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    w = workload
    ax.set_title(f"inclusive LRU CPU tier; λ={w.arrival_rate:g} conv/s, {w.turns.mean:g} turns, "
                 f"exp think {w.think_time.mean:g} s, 200+300 tokens", fontsize=8)
    fig.tight_layout()
    write_figure(path, fig, dpi=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "tiers.png"),
                    help="the figure to write (default docs/tiers.png)")
    ap.add_argument("--replications", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20000, help="measured requests per replication")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:  # output paths checked before any work (kvsim.cli.parser)
        args.out = Path(output_file("--out", args.out, figure=True))
    except UsageError as e:
        print(f"tiers_figure: error: {e}", file=sys.stderr)
        return 2
    workload = Workload()
    ceiling = no_eviction_ceiling(workload, BLOCK_SIZE).token_hit_rate
    cpus = sorted({int(round(r * GPU_BLOCKS)) for r in np.linspace(0, 16, 129)} |
                  {int(round(r * GPU_BLOCKS)) for r in SIM_RATIOS})
    curve = {"cpu": cpus, "gpu": [], "total": []}
    for c in cpus:
        g, t = model_point(workload, c)
        curve["gpu"].append(g)
        curve["total"].append(t)
    sims = {}
    for r in SIM_RATIOS:
        c = int(round(r * GPU_BLOCKS))
        sims[c] = simulate_point(workload, c, args.replications, args.requests, args.seed)
    figure(args.out, curve, sims, ceiling, workload)
    model = {c: (g, t) for c, g, t in zip(curve["cpu"], curve["gpu"], curve["total"])}
    print(f"Workload() at GPU {GPU_BLOCKS} blocks x {BLOCK_SIZE} tokens ({gib(GPU_BLOCKS):.2f} GiB), {MODE} "
          f"{POLICY.upper()}, ceiling {ceiling:.4f}; simulated {args.replications} x {args.requests} requests")
    print("cpu/gpu  cpu_blocks  cpu_GiB  model_gpu  model_total  sim_gpu [95% CI]          sim_total [95% CI]")
    for r, (c, s) in zip(SIM_RATIOS, sims.items()):
        g, t = model[c]
        print(f"{r:7g} {c:11d} {gib(c):8.1f} {g:10.4f} {t:12.4f}  {s['gpu']:.4f} [{s['gpu_ci'][0]:.4f}, "
              f"{s['gpu_ci'][1]:.4f}]  {s['total']:.4f} [{s['total_ci'][0]:.4f}, {s['total_ci'][1]:.4f}]")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
