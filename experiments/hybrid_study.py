"""Hybrid models: capacity and hit rate by the upper bound, by vLLM's hybrid allocator and by
simulation, with the original calculator's answer beside them (the README's hybrid study).

    .venv/bin/python experiments/hybrid_study.py [--kv-gib 8] [--arrival-rate 4] [--out out/hybrid_study.csv]

Every hybrid preset gets the same KV cache memory (``--kv-gib`` on one GPU, bf16) and the default
chat workload (5 turns of 200 + 300 tokens, 30 s exponential think time) at ``--arrival-rate``
conversations/s. Per preset:

* **seed**: the original calculator (bytes per token by its formula, every layer caching every
  token; its request hit rate);
* **upper bound**: the same bytes per token as the capacity (vLLM's
  ``--disable-hybrid-kv-cache-manager``), the LRU model's token hit rate at it;
* **vLLM's allocator**: the pool of blocks vLLM's hybrid KV cache manager makes of the memory
  (``analytic.hybrid.plan``), the pool's LRU model (``analytic.hybrid_lru``);
* **simulated**: the pool served by ``kvsim.hybrid_cache`` (vLLM's rules per group; LRU), 2
  replications of 1,800 s after 900 s of warm-up, token hit rate with its 95% CI.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytic import hybrid, presets, seed  # noqa: E402
from analytic.hybrid_lru import hybrid_lru_model  # noqa: E402
from analytic.lru import lru_model  # noqa: E402
from analytic.sizing import GIB, bytes_per_token  # noqa: E402
from analytic.specs import DTYPE_BYTES, Workload  # noqa: E402
from kvsim.batch import write_atomic  # noqa: E402
from kvsim.engine import simulate  # noqa: E402
from kvsim.hybrid_cache import vllm_layout  # noqa: E402

PRESETS = ("gemma-3-12b", "gemma-3-27b", "gpt-oss-20b", "gpt-oss-120b", "qwen3-next-80b-a3b", "jamba-v0.1",
           "nemotronh-v0.1", "granite-4.0-h-tiny", "falcon-h1-7b")
BLOCK_SIZE = 16


def study(name: str, kv_gib: float, workload: Workload, duration: float, warmup: float) -> dict:
    model = presets.model(name)
    kv_bytes = kv_gib * GIB
    upper_tokens = int(kv_bytes // bytes_per_token(model, "bf16"))
    seed_bpt = seed.memory_per_token(model.layers, model.kv_heads, model.head_dim, DTYPE_BYTES["bf16"])
    seed_out = seed.seed_model(memory_per_token_bytes=seed_bpt, model_size_gb=0, turns=workload.turns.mean,
                               arrival_rate=workload.arrival_rate, interval=workload.think_time.mean,
                               seq_len=workload.tokens_per_turn, cached_tokens=int(kv_bytes // seed_bpt))
    p = hybrid.plan(model, kv_bytes)
    layout = vllm_layout(model, BLOCK_SIZE)
    assert layout.block_size == p.block_size
    pool = p.pool_blocks
    row = {"preset": name, "kinds": " + ".join(f"{g.groups}x{g.kind}{g.window or ''}" for g in p.groups),
           "seed_request_hit_rate": seed_out["hit_rate"], "upper_bound_tokens": upper_tokens,
           "upper_bound_lru_token_hit_rate": (lru_model(workload, upper_tokens // BLOCK_SIZE, BLOCK_SIZE)
                                              .token_hit_rate if upper_tokens >= BLOCK_SIZE else 0.0),
           "pool_blocks": pool, "block_size": p.block_size, "pool_block_tokens": pool * p.block_size,
           "pool_lru_token_hit_rate": hybrid_lru_model(workload, p.group_kinds, pool, p.block_size).token_hit_rate}
    sim = simulate(workload, pool, "lru", block_size=p.block_size, duration=warmup + duration, warmup=warmup,
                   replications=2, seed=0, progress=False, hybrid=layout)
    lo, hi = sim.token_hit_rate.ci95 or (float("nan"), float("nan"))
    row.update(simulated_token_hit_rate=sim.token_hit_rate.mean, simulated_ci_lo=lo, simulated_ci_hi=hi,
               simulated_request_hit_rate=sim.request_hit_rate.mean)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kv-gib", type=float, default=8.0, help="KV cache memory of every preset (default 8 GiB)")
    ap.add_argument("--arrival-rate", type=float, default=4.0, help="conversations/s (default 4)")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--duration", type=float, default=1800.0)
    ap.add_argument("--warmup", type=float, default=900.0)
    ap.add_argument("--out", default="out/hybrid_study.csv")
    a = ap.parse_args()
    workload = Workload(arrival_rate=a.arrival_rate)
    rows = []
    print(f"{'preset':20} {'groups':26} {'seed req':>8} {'upper bound tokens':>18} {'LRU':>6} {'pool blocks':>14} "
          f"{'pool LRU':>8} {'simulated [95% CI]':>24}")
    for name in a.presets.split(","):
        r = study(name, a.kv_gib, workload, a.duration, a.warmup)
        rows.append(r)
        print(f"{r['preset']:20} {r['kinds']:26} {r['seed_request_hit_rate']:>8.3f} {r['upper_bound_tokens']:>18,} "
              f"{r['upper_bound_lru_token_hit_rate']:>6.3f} {r['pool_blocks']:>8,} x {r['block_size']:<3} "
              f"{r['pool_lru_token_hit_rate']:>8.3f} {r['simulated_token_hit_rate']:>8.3f} "
              f"[{r['simulated_ci_lo']:.3f}, {r['simulated_ci_hi']:.3f}]", flush=True)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(a.out, text.getvalue())
    print(f"table: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
