"""Simulator speed: turns simulated per second, and the fast cache against the reference oracle.

    python experiments/bench.py [--json]

Everything is measured side by side in one process (this machine is shared and noisy: compare
the ratios, not the absolute figures across runs).

* ``default``: the built-in scenario of ``kvsim simulate`` (1 conversation/s, 5 turns, 200 + 300
  tokens per turn, block 16, 156k-token cache), whole simulation, per policy.
* ``long_context``: 20 turns of 2,000 + 1,000 tokens (mean prompt ~30k tokens, ~1,900 blocks per
  turn), cache of 2M tokens.
* ``reference``: the same request stream through ``PrefixCache`` and ``ReferenceCache`` (the
  oracle), short enough for the oracle to finish.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.specs import Workload
from kvsim.cache import PrefixCache, ReferenceCache
from kvsim.engine import simulate
from kvsim.workload import synthetic_conversation

DEFAULT = Workload()
DEFAULT_CAPACITY = 9778  # blocks: llama-3.1-8b on one A100-40GB (kvsim calc)
LONG = Workload(arrival_rate=0.2, turns=TurnCount("fixed", 20), think_time=ThinkTime("exp", 30.0),
                input_tokens=TokenCount("fixed", 2000), output_tokens=TokenCount("fixed", 1000))
LONG_CAPACITY = 2_000_000 // 16


def turns_per_second(workload: Workload, capacity: int, policy: str, duration: float) -> dict:
    start = time.perf_counter()
    r = simulate(workload, capacity, policy, duration=duration, warmup=duration / 5, replications=1, progress=False)
    elapsed = time.perf_counter() - start
    turns = r.replications[0].requests * duration / (duration - duration / 5)  # warm-up turns ran too
    return {"policy": policy, "turns": round(turns), "seconds": elapsed, "turns_per_s": turns / elapsed,
            "token_hit_rate": r.token_hit_rate.mean}


def request_stream(workload: Workload, conversations: int, seed: int = 0):
    """Requests of ``conversations`` conversations interleaved by arrival time (no SimPy)."""
    rng = np.random.default_rng(seed)
    events = []
    t = 0.0
    for cid in range(1, conversations + 1):
        t += rng.exponential(1 / workload.arrival_rate)
        at = t
        for turn in synthetic_conversation(workload, 16, rng, cid):
            at += turn.delay
            events.append((at, cid, turn.index, list(turn.keys), turn.max_hit_blocks, turn.alloc_blocks))
    events.sort(key=lambda e: e[:3])
    return [e[3:] for e in events]


def cache_speed(cls, stream, capacity: int, policy: str) -> float:
    cache = cls(capacity, policy)
    start = time.perf_counter()
    for keys, max_hit, alloc in stream:
        cache.serve(keys, max_hit, alloc)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"}
    out["default"] = [turns_per_second(DEFAULT, DEFAULT_CAPACITY, p, 3600) for p in ("lru", "fifo", "lfu")]
    out["long_context"] = [turns_per_second(LONG, LONG_CAPACITY, p, 1200) for p in ("lru", "fifo", "lfu")]
    ratios = {}
    for name, workload, capacity, conversations in (("default", DEFAULT, 600, 300), ("long_context", LONG, 4000, 12)):
        stream = request_stream(workload, conversations)
        for policy in ("lru", "fifo", "lfu"):
            fast = cache_speed(PrefixCache, stream, capacity, policy)
            ref = cache_speed(ReferenceCache, stream, capacity, policy)
            ratios[f"{name}_{policy}"] = {"requests": len(stream), "fast_s": fast, "reference_s": ref,
                                         "speedup": ref / fast}
    out["fast_vs_reference"] = ratios
    out["default_turns_per_s"] = out["default"][0]["turns_per_s"]
    out["long_context_turns_per_s"] = out["long_context"][0]["turns_per_s"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(out["machine"])
    for name in ("default", "long_context"):
        for r in out[name]:
            print(f"{name:13} {r['policy']:5} {r['turns']:>8,} turns in {r['seconds']:6.2f} s = "
                  f"{r['turns_per_s']:>9,.0f} turns/s  (token hit rate {r['token_hit_rate']:.3f})")
    for key, r in ratios.items():
        print(f"fast vs reference {key:20} {r['requests']:>5} requests: {r['fast_s']:.3f} s vs "
              f"{r['reference_s']:.2f} s = {r['speedup']:,.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
