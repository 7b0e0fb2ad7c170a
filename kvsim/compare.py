"""The side-by-side comparison (``kvsim compare``, the main job of ``make demo``).

For one scenario: the seed, LRU and FIFO models next to simulated LRU, FIFO and LFU with 95%
confidence intervals, and a figure of hit rate against GPU memory (or cache size).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from analytic.calc import calculate
from analytic.fifo import fifo_model
from analytic.lru import lru_model
from analytic.seed import seed_model
from analytic.sizing import GIB, Capacity, capacity_from_memory, capacity_from_tokens
from analytic.specs import Hardware, ModelSpec, Workload
from kvsim.defaults import DEFAULT_MAX_EVENTS
from kvsim.engine import simulate

SIM_POLICIES = ("lru", "fifo", "lfu")


def compare(model: ModelSpec, capacity: Capacity, workload: Workload, *, kv_dtype: str, model_size_gb: float,
            duration: float, warmup: float, replications: int, seed: int,
            max_events: int | None = DEFAULT_MAX_EVENTS) -> dict:
    out = calculate(model, capacity, workload, kv_dtype=kv_dtype, model_size_gb=model_size_gb)
    out["simulated"] = {
        policy: simulate(workload, capacity.capacity_blocks, policy, block_size=capacity.block_size,
                         duration=duration, warmup=warmup, replications=replications, seed=seed,
                         max_events=max_events).as_dict()
        for policy in SIM_POLICIES
    }
    return out


def memory_figure(path, model: ModelSpec, capacity: Capacity, workload: Workload, *, kv_dtype: str,
                  weight_dtype: str, hardware: Hardware | None, model_size_gb: float, duration: float,
                  warmup: float, replications: int, seed: int, sim_points: int = 5,
                  max_events: int | None = DEFAULT_MAX_EVENTS) -> None:
    """Token and request hit rate against GPU memory per GPU (or KV cache GiB when the capacity was
    given directly): models as lines, simulated LRU and FIFO as points with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = capacity.block_size
    if hardware is not None:
        # from just above what weights + reserve need, to twice the scenario's memory
        floor = (capacity.weights_gib + hardware.activation_reserve_gib) / hardware.memory_utilization / hardware.gpus
        xs = np.linspace(floor * 1.02, 2 * hardware.gpu_memory_gib, 60)

        def cap_at(x):
            return capacity_from_memory(model, replace(hardware, gpu_memory_gib=float(x)), kv_dtype, weight_dtype,
                                        bs, model_size_gib=capacity.weights_gib)

        xlabel = f"GPU memory per GPU (GiB), {hardware.gpus} GPU(s)"
        here = hardware.gpu_memory_gib
    else:
        xs = np.linspace(0.02, 2, 60) * capacity.kv_cache_gib

        def cap_at(x):
            return capacity_from_tokens(model, max(1, int(x * GIB / capacity.bytes_per_token)), kv_dtype, bs)

        xlabel = "KV cache (GiB)"
        here = capacity.kv_cache_gib
    caps = [cap_at(x) for x in xs]
    lru = [lru_model(workload, c.capacity_blocks, bs) for c in caps]
    fifo = [fifo_model(workload, c.capacity_blocks, bs) for c in caps]
    seed_kw = dict(memory_per_token_bytes=capacity.bytes_per_token, model_size_gb=model_size_gb,
                   turns=workload.turns.mean, arrival_rate=workload.arrival_rate,
                   interval=workload.think_time.mean, seq_len=workload.tokens_per_turn)
    seed_hits = [seed_model(cached_tokens=c.capacity_tokens, **seed_kw)["hit_rate"] for c in caps]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(xs, [m.token_hit_rate for m in lru], "C0-", label="LRU model")
    ax1.plot(xs, [m.token_hit_rate for m in fifo], "C1-", label="FIFO model")
    ax2.plot(xs, [m.request_hit_rate for m in lru], "C0-", label="LRU model")
    ax2.plot(xs, [m.request_hit_rate for m in fifo], "C1-", label="FIFO model")
    ax2.plot(xs, seed_hits, "C3--", label="seed model (same capacity)")
    for i, x in enumerate(np.linspace(xs[0], xs[-1], sim_points + 2)[1:-1]):
        c = cap_at(x)
        for policy, color in (("lru", "C0"), ("fifo", "C1")):
            r = simulate(workload, c.capacity_blocks, policy, block_size=bs, duration=duration, warmup=warmup,
                         replications=replications, seed=seed, progress=False, max_events=max_events)
            for ax, est in ((ax1, r.token_hit_rate), (ax2, r.request_hit_rate)):
                lo, hi = est.ci95 or (est.mean, est.mean)
                ax.errorbar(x, est.mean, yerr=[[est.mean - lo], [hi - est.mean]], fmt="o", color=color, ms=4,
                            capsize=2, label=f"simulated {policy.upper()} (95% CI)" if i == 0 else None)
    for ax, title in ((ax1, "token hit rate"), (ax2, "request hit rate")):
        ax.axvline(here, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    w = workload
    fig.suptitle(f"{model.name}, KV {kv_dtype}: {w.arrival_rate:g} conv/s, {w.turns.mean:g} turns ({w.turns.kind}), "
                 f"{w.think_time.kind} think {w.think_time.mean:g} s, {w.input_tokens.mean:g}+{w.output_tokens.mean:g}"
                 f" tokens/turn, system prompt {w.system_prompt_tokens}, block {bs}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
