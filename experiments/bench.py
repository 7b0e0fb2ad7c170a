"""Simulator speed: the run-based caches against the per-block ones, the simulation, the LRU curve.

    python experiments/bench.py [--json] [--profile]

Everything is measured side by side in one process, as CPU time of the process (the machine is
shared: its load moves wall time by 2x or more, CPU time much less); each figure is the best of
three runs. Compare ratios rather than absolute figures across runs.

* ``default``: the built-in scenario of ``kvsim simulate`` (1 conversation/s, 5 turns, 200 + 300
  tokens per turn, block 16, 9,778-block cache). The whole simulation (3,600 s of arrivals, every
  turn counted), in turns/s, per policy, with the run-based caches (the default) and the
  per-block ones; and the cache alone on one request stream: ``default_speedup`` = per-block
  time / run-based time (LRU).
* ``long_context``: 40 turns of 2,000 + 500 tokens (mean prompt 50,750 tokens, ~3,200 blocks),
  0.05 conversations/s: the same figures (simulation cache of 2M tokens, stream cache of 800k
  tokens); ``long_context_speedup`` (LRU, cache alone).
* ``mooncake``: the Mooncake conversation trace (512-token blocks) in timestamp order through
  caches of 20,000 blocks. ``trace_blocks_per_s``: listed blocks per second of the run-based LRU
  given each request's hash-id list (converted with ``runs_of``, as ``kvsim replay`` would);
  also given runs, the per-block caches, and libCacheSim's LRU (if installed) on the same stream
  of blocks, one request per block (a plain object cache, not a prefix cache: time only).
* ``curve``: the one-pass LRU curve at 50 capacities (up to the trace's distinct blocks) against
  one replay at the median capacity: ``curve_cost_ratio``; also against the largest capacity,
  whose replay does the work of the curve's stack.
* ``reference``: the min()-scan ``ReferenceCache`` oracle on a short default stream, for
  information.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import time
from pathlib import Path

import numpy as np

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.specs import Workload
from kvsim.cache import PrefixCache, ReferenceCache, runs_of
from kvsim.curve import lru_curve
from kvsim.engine import run_replication
from kvsim.policies import make_policy
from kvsim.workload import interleaved_turns, synthetic_conversation

POLICIES = ("lru", "fifo", "lfu")
DEFAULT = Workload()
DEFAULT_CAPACITY = 9778  # blocks: llama-3.1-8b on one A100-40GB (kvsim calc)
LONG = Workload(arrival_rate=0.05, turns=TurnCount("fixed", 40), think_time=ThinkTime("exp", 30.0),
                input_tokens=TokenCount("fixed", 2000), output_tokens=TokenCount("fixed", 500))
LONG_CAPACITY = 2_000_000 // 16
LONG_STREAM_CAPACITY = 800_000 // 16
MOONCAKE = Path(__file__).resolve().parents[2] / "shared/traces/mooncake/conversation_trace.jsonl"
MOONCAKE_BLOCK = 512
MOONCAKE_CAPACITY = 20_000
CURVE_POINTS = 50


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def cpu_seconds(fn, repeat: int = 3) -> float:
    """Best CPU time of ``repeat`` calls of ``fn``."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def cache_of(policy: str, capacity: int, per_block: bool) -> PrefixCache:
    return PrefixCache(capacity, make_policy(policy, per_block))


def simulation(workload: Workload, capacity: int, policy: str, per_block: bool, duration: float) -> dict:
    """The whole simulation of ``duration`` seconds of arrivals, every turn counted."""
    counters = []

    def run():
        source = lambda rng, cid: synthetic_conversation(workload, 16, rng, cid)  # noqa: E731
        counters.append(run_replication(source, workload.arrival_rate, cache_of(policy, capacity, per_block),
                                        16, duration, 0.0, np.random.default_rng([0, 0])))

    seconds = cpu_seconds(run, repeat=1 if per_block else 3)
    c = counters[-1]
    return {"policy": policy, "per_block": per_block, "turns": c.requests, "cpu_s": seconds,
            "turns_per_s": c.requests / seconds, "token_hit_rate": c.token_hit_rate}


def request_stream(workload: Workload, conversations: int, seed: int = 0) -> list[tuple]:
    """(runs, max_hit_blocks, alloc_blocks) of ``conversations`` conversations in arrival order."""
    return [(t.runs, t.max_hit_blocks, t.alloc_blocks) for t in interleaved_turns(workload, conversations, 16, seed)]


def replay_seconds(make_cache, stream, as_runs: bool = True, repeat: int = 3) -> float:
    def run():
        serve = make_cache().serve_runs if as_runs else make_cache().serve
        for keys, max_hit, alloc in stream:
            serve(keys, max_hit, alloc)
    return cpu_seconds(run, repeat)


def fast_vs_per_block(stream, capacity: int) -> dict:
    blocks = sum(count for runs, _, _ in stream for _, count in runs)
    out = {"requests": len(stream), "blocks": blocks, "capacity_blocks": capacity}
    for policy in POLICIES:
        fast = replay_seconds(lambda: cache_of(policy, capacity, False), stream)
        per_block = replay_seconds(lambda: cache_of(policy, capacity, True), stream, repeat=1)
        out[policy] = {"fast_s": fast, "per_block_s": per_block, "speedup": per_block / fast,
                       "fast_blocks_per_s": blocks / fast, "per_block_blocks_per_s": blocks / per_block}
    return out


def mooncake_requests(path: Path) -> list[tuple]:
    """(hash_ids, max_hit_blocks, alloc_blocks, input_tokens) in timestamp order."""
    records = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            ids = r["hash_ids"]
            alloc = -(-(r["input_length"] + r["output_length"]) // MOONCAKE_BLOCK)
            records.append((r["timestamp"], ids, len(ids), alloc, r["input_length"]))
    records.sort(key=lambda r: r[0])  # stable: ties keep the file's order
    return [r[1:] for r in records]


def libcachesim_lru_seconds(block_stream: list[int], capacity: int) -> float | None:
    try:
        import libcachesim
    except ImportError:
        return None

    def run():
        cache = libcachesim.LRU(cache_size=capacity)
        request = libcachesim.Request()
        get = cache.get
        for key in block_stream:
            request.obj_id = key
            get(request)
    return cpu_seconds(run)


def mooncake(requests) -> dict:
    lists = [(ids, max_hit, alloc) for ids, max_hit, alloc, _ in requests]
    runs = [(runs_of(ids), max_hit, alloc) for ids, max_hit, alloc in lists]
    blocks = sum(len(ids) for ids, _, _ in lists)
    out = {"requests": len(lists), "blocks": blocks, "capacity_blocks": MOONCAKE_CAPACITY}
    for policy in POLICIES:
        from_lists = replay_seconds(lambda: cache_of(policy, MOONCAKE_CAPACITY, False), lists, as_runs=False)
        from_runs = replay_seconds(lambda: cache_of(policy, MOONCAKE_CAPACITY, False), runs)
        per_block = replay_seconds(lambda: cache_of(policy, MOONCAKE_CAPACITY, True), runs)
        out[policy] = {"fast_lists_s": from_lists, "fast_runs_s": from_runs, "per_block_s": per_block,
                       "fast_lists_blocks_per_s": blocks / from_lists, "fast_runs_blocks_per_s": blocks / from_runs,
                       "per_block_blocks_per_s": blocks / per_block, "speedup": per_block / from_runs}
    lcs = libcachesim_lru_seconds([key for ids, _, _ in lists for key in ids], MOONCAKE_CAPACITY)
    out["libcachesim_lru"] = None if lcs is None else {"seconds": lcs, "blocks_per_s": blocks / lcs}
    return out


def curve(requests) -> dict:
    stream = [(runs_of(ids), max_hit, alloc, prompt) for ids, max_hit, alloc, prompt in requests]
    distinct = len({key for ids, _, _, _ in requests for key in ids})
    capacities = [distinct * (i + 1) // CURVE_POINTS for i in range(CURVE_POINTS)]
    replays = [(r, h, a) for r, h, a, _ in stream]
    one = {c: replay_seconds(lambda: PrefixCache(c, "lru"), replays) for c in (capacities[24], capacities[-1])}
    seconds = cpu_seconds(lambda: lru_curve(stream, capacities, MOONCAKE_BLOCK))
    return {"capacities": len(capacities), "min_capacity": capacities[0], "max_capacity": capacities[-1],
            "curve_s": seconds, "replay_median_capacity_s": one[capacities[24]],
            "replay_max_capacity_s": one[capacities[-1]], "cost_ratio": seconds / one[capacities[24]],
            "cost_ratio_vs_max_capacity": seconds / one[capacities[-1]]}


def reference(stream, capacity: int) -> dict:
    keys = [([k for first, count in runs for k in range(first, first + count)], h, a) for runs, h, a in stream]
    fast = replay_seconds(lambda: PrefixCache(capacity, "lru"), stream)
    oracle = replay_seconds(lambda: ReferenceCache(capacity, "lru"), keys, as_runs=False, repeat=1)
    return {"requests": len(stream), "capacity_blocks": capacity, "fast_s": fast, "reference_s": oracle,
            "speedup": oracle / fast}


def profile(fn, lines: int = 14) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--trace", type=Path, default=MOONCAKE, help=f"the Mooncake trace (default {MOONCAKE})")
    ap.add_argument("--profile", action="store_true",
                    help="also print where the time goes (cProfile) in the simulation and the curve")
    args = ap.parse_args(argv)
    out = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
                      f"{platform.python_implementation()} {platform.python_version()}",
           "load_average": os.getloadavg()}
    out["default"] = [simulation(DEFAULT, DEFAULT_CAPACITY, p, per_block, 3600.0)
                      for p in POLICIES for per_block in (False, True)]
    out["long_context"] = [simulation(LONG, LONG_CAPACITY, p, False, 3600.0) for p in POLICIES]
    out["long_context"].append(simulation(LONG, LONG_CAPACITY, "lru", True, 3600.0))
    out["default_stream"] = fast_vs_per_block(request_stream(DEFAULT, 3000), DEFAULT_CAPACITY)
    out["long_context_stream"] = fast_vs_per_block(request_stream(LONG, 24), LONG_STREAM_CAPACITY)
    out["reference"] = reference(request_stream(DEFAULT, 60), 600)
    requests = mooncake_requests(args.trace) if args.trace.exists() else None
    out["mooncake"] = mooncake(requests) if requests else None
    out["curve"] = curve(requests) if requests else None

    out["default_turns_per_s"] = out["default"][0]["turns_per_s"]
    out["default_speedup"] = out["default_stream"]["lru"]["speedup"]
    out["long_context_speedup"] = out["long_context_stream"]["lru"]["speedup"]
    out["long_context_turns_per_s"] = out["long_context"][0]["turns_per_s"]
    out["trace_blocks_per_s"] = out["mooncake"]["lru"]["fast_lists_blocks_per_s"] if requests else None
    out["curve_cost_ratio"] = out["curve"]["cost_ratio"] if requests else None
    if args.profile:
        out["profile_default_simulation"] = profile(lambda: simulation(DEFAULT, DEFAULT_CAPACITY, "lru", False, 3600.0))
        if requests:
            stream = [(runs_of(ids), h, a, p) for ids, h, a, p in requests]
            caps = [out["curve"]["max_capacity"] * (i + 1) // CURVE_POINTS for i in range(CURVE_POINTS)]
            out["profile_curve"] = profile(lambda: lru_curve(stream, caps, MOONCAKE_BLOCK))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    report(out, args.trace)
    return 0


def report(out: dict, trace: Path) -> None:
    print(f"{out['machine']}; load average {', '.join(f'{x:.1f}' for x in out['load_average'])}; CPU time")
    for name in ("default", "long_context"):
        for r in out[name]:
            kind = "per-block" if r["per_block"] else "run-based"
            print(f"simulation {name:12} {r['policy']:4} {kind:9} {r['turns']:>7,} turns in {r['cpu_s']:6.2f} s = "
                  f"{r['turns_per_s']:>9,.0f} turns/s  (token hit rate {r['token_hit_rate']:.3f})")
    for name in ("default_stream", "long_context_stream"):
        s = out[name]
        for p in POLICIES:
            r = s[p]
            print(f"cache alone {name:19} {p:4} {s['requests']:>6,} requests, {s['blocks']:>11,} blocks: "
                  f"run-based {r['fast_s']:.3f} s, per-block {r['per_block_s']:.3f} s = {r['speedup']:,.1f}x")
    r = out["reference"]
    print(f"ReferenceCache (min scan) lru, {r['requests']} default requests at {r['capacity_blocks']} blocks: "
          f"{r['reference_s']:.2f} s vs run-based {r['fast_s']:.4f} s = {r['speedup']:,.0f}x")
    m = out["mooncake"]
    if m is None:
        print(f"mooncake: skipped, {trace} is absent")
    else:
        for p in POLICIES:
            r = m[p]
            print(f"mooncake {p:4} {m['requests']:,} requests, {m['blocks']:,} blocks, {m['capacity_blocks']:,}-block "
                  f"cache: run-based {r['fast_lists_blocks_per_s'] / 1e6:.2f} M blocks/s from lists, "
                  f"{r['fast_runs_blocks_per_s'] / 1e6:.2f} M from runs; per-block "
                  f"{r['per_block_blocks_per_s'] / 1e6:.2f} M ({r['speedup']:.1f}x)")
        lcs = m["libcachesim_lru"]
        print("mooncake libCacheSim LRU, one request per block: "
              + (f"{lcs['blocks_per_s'] / 1e6:.2f} M blocks/s" if lcs else "not installed (pip install libcachesim)"))
        c = out["curve"]
        print(f"curve: {c['capacities']} capacities ({c['min_capacity']:,} .. {c['max_capacity']:,} blocks) in "
              f"{c['curve_s']:.3f} s; one replay {c['replay_median_capacity_s']:.3f} s at the median capacity, "
              f"{c['replay_max_capacity_s']:.3f} s at the largest: {c['cost_ratio']:.2f}x, "
              f"{c['cost_ratio_vs_max_capacity']:.2f}x")
    print(f"default_turns_per_s {out['default_turns_per_s']:,.0f}  default_speedup {out['default_speedup']:.1f}x  "
          f"long_context_speedup {out['long_context_speedup']:.1f}x  trace_blocks_per_s "
          + (f"{out['trace_blocks_per_s']:,.0f}  curve_cost_ratio {out['curve_cost_ratio']:.2f}"
             if out["trace_blocks_per_s"] else "-"))
    for key in ("profile_default_simulation", "profile_curve"):
        if key in out:
            print(f"\n{key}:\n{out[key]}")


if __name__ == "__main__":
    raise SystemExit(main())
