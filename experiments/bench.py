"""Simulator speed: the run-based caches against the per-block ones, the simulation, the LRU curve,
start-up, trace reading against libCacheSim, and the analytic models.

    python experiments/bench.py [--json] [--profile] [--traces DIR] [--only SECTION,...]

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
* ``startup``: whole processes, interleaved (``STARTUP_RUNS`` of each in turn), medians:
  ``python -c "import numpy, simpy"`` (the floor any simulator command pays), ``kvsim --help``
  and ``kvsim calc``, as ratios to that floor (targets: ``--help`` <= 1.5x, ``calc`` <= 3x); also
  ``python -c "import numpy, scipy.optimize"``, the floor of any command that runs a model (its
  root finding is scipy.optimize.brentq, and importing scipy.optimize loads scipy.linalg and
  scipy.sparse), to show how much of ``calc`` is that import.
* ``reading``: ``kvsim replay`` of the Mooncake conversation trace at one LRU capacity (20,000
  blocks) against libCacheSim's ``process_trace`` (LRU, 20,000 objects) on the CSV that
  ``kvsim export-trace`` writes for it (288,500 accesses), both whole processes, interleaved:
  ``replay_vs_libcachesim`` (CPU time; target <= 1.5x), and the peak RSS of the replay at the
  full trace and at a copy of its first half (streaming: the peak must not grow with length).
  Skipped when libcachesim or the trace is absent.
* ``models``: the wall-clock checks tests used to make, as figures: one LRU / FIFO model
  evaluation (median over 5 capacities; target < 50 ms) and the fleet model of 8 instances
  (geometric conversations of mean 10 turns; target < 0.5 s).

Whole processes are timed with ``os.wait4``: the counters of ``getrusage(RUSAGE_CHILDREN)``,
but per child, so that ``ru_maxrss`` is that process's own peak; each is started from a small
launcher process, as a child's ``ru_maxrss`` starts from its parent's (this one is large).
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
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
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
TRACES = Path(__file__).resolve().parents[2] / "shared/traces"
MOONCAKE_NAME = "mooncake/conversation_trace.jsonl"
MOONCAKE_BLOCK = 512
MOONCAKE_CAPACITY = 20_000
CURVE_POINTS = 50
STARTUP_RUNS = 7
READING_RUNS = 5
STARTUP_TARGETS = {"help": 1.5, "calc": 3.0}  # times the numpy + simpy floor
READING_TARGET = 1.5  # kvsim replay / libCacheSim process_trace
MODEL_TARGET_S = 0.05
FLEET_TARGET_S = 0.5
SECTIONS = ("simulation", "streams", "mooncake", "startup", "reading", "models", "engine")

# libCacheSim's LRU over the exported CSV, as one process: argv = csv, capacity in objects.
LIBCACHESIM_SCRIPT = """
import sys
import libcachesim as lcs
params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                             obj_id_is_num_set=True, ignore_obj_size=True)
params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
reader = lcs.TraceReader(sys.argv[1], lcs.TraceType.CSV_TRACE, params)
print(lcs.LRU(cache_size=int(sys.argv[2])).process_trace(reader))
"""


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


def engine(duration: float = 1800.0) -> dict:
    """The default workload with and without the step engine (roofline on the default GPU), one
    replication each, CPU time side by side; and the engine's plain stepper, for the fast path's gain."""
    from analytic.steptime import roofline
    from analytic.serving import EngineSpec
    from kvsim.engine import simulate
    from kvsim.fleet import simulate_fleet

    from analytic import presets

    spec = EngineSpec(roofline(presets.model("llama-3.1-8b"), "a100-40gb"), 2048, 256)
    window = dict(duration=duration, warmup=300.0, replications=1, progress=False)
    results = {}

    def timed(name, fn):
        out = []
        results[name] = cpu_seconds(lambda: out.append(fn()), repeat=1)
        return out[-1]

    timed("instant", lambda: simulate(DEFAULT, DEFAULT_CAPACITY, **window))
    fast = timed("engine", lambda: simulate_fleet(DEFAULT, DEFAULT_CAPACITY, 1, engine=spec, **window))
    timed("plain", lambda: simulate_fleet(DEFAULT, DEFAULT_CAPACITY, 1, engine=spec, fast=False, **window))
    return {"cpu_s": results, "steps": fast.as_dict()["serving"]["steps"],
            "engine_vs_instant": results["engine"] / results["instant"],
            "plain_vs_fast": results["plain"] / results["engine"]}


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


# Runs argv[1:] and prints its wall time, CPU time, peak RSS and output as one JSON line. The
# bench process is large (numpy, simpy, the Mooncake requests), and a child's ru_maxrss starts
# from its parent's at the fork, so every timed process is started from this small one instead.
LAUNCHER = """
import json, os, subprocess, sys, tempfile, time
with tempfile.TemporaryFile() as err:
    start = time.perf_counter()
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=err)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err.seek(0)
    print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "max_rss_mib": usage.ru_maxrss / 1024, "status": os.waitstatus_to_exitcode(status),
                      "stdout": out.decode(errors="replace"), "stderr": err.read().decode(errors="replace")}))
"""


def run_process(cmd: list[str]) -> dict:
    """Run ``cmd`` to completion: wall s, CPU s (user + system) and peak RSS (MiB) of that
    process alone (``os.wait4``, in :data:`LAUNCHER`), and its standard output."""
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True)
    result = json.loads(launched.stdout)
    if result["status"]:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result['status']}): {result['stderr'].strip()[-500:]}")
    return result


def interleaved(commands: dict[str, list[str]], runs: int, inner: dict | None = None) -> dict[str, dict]:
    """Each command ``runs`` times, in turn (a, b, c, a, b, c, ...: the machine's load falls on
    all alike); the median wall and CPU time and the peak RSS of each. ``inner``: name -> a
    function of a run's output giving a time it reports itself (its median is ``inner_s``)."""
    samples: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            samples[name].append(run_process(cmd))
    out = {}
    for name, rs in samples.items():
        out[name] = {"runs": runs, "wall_s": statistics.median(r["wall_s"] for r in rs),
                     "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                     "max_rss_mib": max(r["max_rss_mib"] for r in rs)}
        if inner and name in inner:
            out[name]["inner_s"] = statistics.median(inner[name](r["stdout"]) for r in rs)
    return out


def kvsim_command() -> list[str]:
    """The ``kvsim`` console script beside this interpreter, else ``python -m kvsim.cli``."""
    script = Path(sys.executable).with_name("kvsim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kvsim.cli"]


def startup() -> dict:
    kvsim = kvsim_command()
    out = interleaved({"numpy_simpy": [sys.executable, "-c", "import numpy, simpy"],
                       "numpy_scipy_optimize": [sys.executable, "-c", "import numpy, scipy.optimize"],
                       "help": kvsim + ["--help"], "calc": kvsim + ["calc"]}, STARTUP_RUNS)
    base = out["numpy_simpy"]
    out["numpy_scipy_optimize"]["ratio_cpu"] = out["numpy_scipy_optimize"]["cpu_s"] / base["cpu_s"]
    for name, target in STARTUP_TARGETS.items():
        out[name].update(ratio_cpu=out[name]["cpu_s"] / base["cpu_s"], ratio_wall=out[name]["wall_s"] / base["wall_s"],
                         target=target)
    return out


def reading(trace: Path) -> dict:
    """``kvsim replay`` vs libCacheSim's ``process_trace``, whole processes; the replay's peak RSS
    at the full trace and at its first half."""
    if not trace.exists():
        return {"skipped": f"{trace} is absent"}
    if find_spec("libcachesim") is None:
        return {"skipped": "libcachesim is not installed (pip install libcachesim)"}
    from kvsim.export import export_libcachesim_csv

    kvsim = kvsim_command()
    with tempfile.TemporaryDirectory(prefix="kvsim-bench-") as tmp:
        csv = Path(tmp) / "mooncake.csv"
        rows = export_libcachesim_csv(trace, csv)["rows"]
        half = Path(tmp) / "half.jsonl"  # a jsonl trace: its first half of the lines
        with open(trace) as f:
            lines = f.readlines()
        half.write_text("".join(lines[:len(lines) // 2]))
        del lines
        capacity = str(MOONCAKE_CAPACITY)

        def elapsed(stdout: str) -> float:  # the replay itself, as kvsim replay --json reports it
            return json.loads(stdout)["elapsed_s"]

        out = interleaved({
            "replay": kvsim + ["replay", str(trace), "--capacity-blocks", capacity, "--json"],
            "libcachesim": [sys.executable, "-c", LIBCACHESIM_SCRIPT, str(csv), capacity],
            "replay_half": kvsim + ["replay", str(half), "--capacity-blocks", capacity, "--json"],
        }, READING_RUNS, inner={"replay": elapsed, "replay_half": elapsed})
    out.update(rows=rows, capacity_blocks=MOONCAKE_CAPACITY, target=READING_TARGET,
               ratio_cpu=out["replay"]["cpu_s"] / out["libcachesim"]["cpu_s"],
               ratio_wall=out["replay"]["wall_s"] / out["libcachesim"]["wall_s"],
               rss_growth=out["replay"]["max_rss_mib"] / out["replay_half"]["max_rss_mib"])
    return out


def models() -> dict:
    """CPU time of one LRU / FIFO model evaluation and of the fleet model of 8 instances (the
    figures tests/test_ttl.py and tests/test_analytic_fleet.py used to assert)."""
    from analytic.fifo import fifo_model
    from analytic.fleet import fleet_model
    from analytic.lru import lru_model

    w = Workload(turns=TurnCount("geometric", 5))
    out = {}
    for name, model in (("lru", lru_model), ("fifo", fifo_model)):
        model(w, 5000)  # the workload's tables, once
        times = []
        for capacity in (3000, 6000, 9000, 12000, 15000):
            start = time.process_time()
            model(w, capacity)
            times.append(time.process_time() - start)
        out[name] = {"median_s": statistics.median(times), "target_s": MODEL_TARGET_S}
    fw = Workload(turns=TurnCount("geometric", 10), think_time=ThinkTime("lognormal", 30.0, 1.5),
                  input_tokens=TokenCount("lognormal", 200, 1.0, name="input-tokens"),
                  output_tokens=TokenCount("lognormal", 300, 0.7, name="output-tokens"))
    fleet_model(fw, [20000], "random")  # draws the size paths once
    start = time.process_time()
    fleet = fleet_model(fw, [20000, 40000] * 4, "random")
    out["fleet"] = {"instances": 8, "seconds": time.process_time() - start, "target_s": FLEET_TARGET_S,
                    "token_hit_rate": fleet.token_hit_rate}
    return out


def profile(fn, lines: int = 14) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]  # an empty item (a,,b) is refused, not dropped
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)} (got {text!r})")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--traces", type=Path, default=TRACES, help=f"the shared traces (default {TRACES})")
    ap.add_argument("--trace", type=Path, help=f"the Mooncake trace (default TRACES/{MOONCAKE_NAME})")
    ap.add_argument("--only", type=sections, default=list(SECTIONS), metavar="SECTION,...",
                    help=f"run only these sections ({', '.join(SECTIONS)}; default all)")
    ap.add_argument("--profile", action="store_true",
                    help="also print where the time goes (cProfile) in the simulation and the curve")
    args = ap.parse_args(argv)
    trace = args.trace or args.traces / MOONCAKE_NAME
    run = set(args.only)
    out = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}, "
                      f"{platform.python_implementation()} {platform.python_version()}",
           "load_average": os.getloadavg()}
    if "simulation" in run:
        out["default"] = [simulation(DEFAULT, DEFAULT_CAPACITY, p, per_block, 3600.0)
                          for p in POLICIES for per_block in (False, True)]
        out["long_context"] = [simulation(LONG, LONG_CAPACITY, p, False, 3600.0) for p in POLICIES]
        out["long_context"].append(simulation(LONG, LONG_CAPACITY, "lru", True, 3600.0))
        out["default_turns_per_s"] = out["default"][0]["turns_per_s"]
        out["long_context_turns_per_s"] = out["long_context"][0]["turns_per_s"]
    if "streams" in run:
        out["default_stream"] = fast_vs_per_block(request_stream(DEFAULT, 3000), DEFAULT_CAPACITY)
        out["long_context_stream"] = fast_vs_per_block(request_stream(LONG, 24), LONG_STREAM_CAPACITY)
        out["reference"] = reference(request_stream(DEFAULT, 60), 600)
        out["default_speedup"] = out["default_stream"]["lru"]["speedup"]
        out["long_context_speedup"] = out["long_context_stream"]["lru"]["speedup"]
    requests = None
    if "mooncake" in run:
        requests = mooncake_requests(trace) if trace.exists() else None
        out["mooncake"] = mooncake(requests) if requests else None
        out["curve"] = curve(requests) if requests else None
        out["trace_blocks_per_s"] = out["mooncake"]["lru"]["fast_lists_blocks_per_s"] if requests else None
        out["curve_cost_ratio"] = out["curve"]["cost_ratio"] if requests else None
    if "startup" in run:
        out["startup"] = startup()
        out["startup_help_ratio"] = out["startup"]["help"]["ratio_cpu"]
        out["startup_calc_ratio"] = out["startup"]["calc"]["ratio_cpu"]
    if "reading" in run:
        out["reading"] = reading(trace)
        ok = "skipped" not in out["reading"]
        out["replay_vs_libcachesim"] = out["reading"]["ratio_cpu"] if ok else None
        out["replay_max_rss_mib"] = out["reading"]["replay"]["max_rss_mib"] if ok else None
        out["replay_half_max_rss_mib"] = out["reading"]["replay_half"]["max_rss_mib"] if ok else None
    if "models" in run:
        out["models"] = models()
        out["model_evaluation_s"] = max(out["models"]["lru"]["median_s"], out["models"]["fifo"]["median_s"])
        out["fleet_model_s"] = out["models"]["fleet"]["seconds"]
    if "engine" in run:
        out["engine"] = engine()
        out["engine_vs_instant"] = out["engine"]["engine_vs_instant"]
    if args.profile:
        if "simulation" in run:
            out["profile_default_simulation"] = profile(
                lambda: simulation(DEFAULT, DEFAULT_CAPACITY, "lru", False, 3600.0))
        if requests:
            stream = [(runs_of(ids), h, a, p) for ids, h, a, p in requests]
            caps = [out["curve"]["max_capacity"] * (i + 1) // CURVE_POINTS for i in range(CURVE_POINTS)]
            out["profile_curve"] = profile(lambda: lru_curve(stream, caps, MOONCAKE_BLOCK))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    report(out, trace)
    return 0


def report(out: dict, trace: Path) -> None:
    print(f"{out['machine']}; load average {', '.join(f'{x:.1f}' for x in out['load_average'])}; CPU time")
    if "engine" in out:
        e = out["engine"]
        t = e["cpu_s"]
        print(f"engine     default workload, 1800 s: instant {t['instant']:.2f} s, engine {t['engine']:.2f} s "
              f"({e['steps']:,} steps) = {e['engine_vs_instant']:.1f}x the instant simulation (target 3x); plain "
              f"stepper {t['plain']:.2f} s = {e['plain_vs_fast']:.1f}x the fast path")
    for name in ("default", "long_context"):
        for r in out.get(name, ()):
            kind = "per-block" if r["per_block"] else "run-based"
            print(f"simulation {name:12} {r['policy']:4} {kind:9} {r['turns']:>7,} turns in {r['cpu_s']:6.2f} s = "
                  f"{r['turns_per_s']:>9,.0f} turns/s  (token hit rate {r['token_hit_rate']:.3f})")
    for name in ("default_stream", "long_context_stream"):
        if name not in out:
            continue
        s = out[name]
        for p in POLICIES:
            r = s[p]
            print(f"cache alone {name:19} {p:4} {s['requests']:>6,} requests, {s['blocks']:>11,} blocks: "
                  f"run-based {r['fast_s']:.3f} s, per-block {r['per_block_s']:.3f} s = {r['speedup']:,.1f}x")
    if "reference" in out:
        r = out["reference"]
        print(f"ReferenceCache (min scan) lru, {r['requests']} default requests at {r['capacity_blocks']} blocks: "
              f"{r['reference_s']:.2f} s vs run-based {r['fast_s']:.4f} s = {r['speedup']:,.0f}x")
    if "mooncake" in out:
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
    if "startup" in out:
        st = out["startup"]
        base = st["numpy_simpy"]
        print(f"start-up, median of {base['runs']} interleaved processes: import numpy, simpy "
              f"{base['cpu_s']:.3f} s CPU ({base['wall_s']:.3f} s wall)")
        for name, label in (("help", "kvsim --help"), ("calc", "kvsim calc")):
            r = st[name]
            print(f"start-up {label:12} {r['cpu_s']:.3f} s CPU ({r['wall_s']:.3f} s wall) = {r['ratio_cpu']:.2f}x "
                  f"the numpy+simpy floor ({r['ratio_wall']:.2f}x wall); target <= {r['target']:g}x")
        opt = st["numpy_scipy_optimize"]
        print(f"start-up of import numpy, scipy.optimize alone (every model command's floor): {opt['cpu_s']:.3f} s "
              f"CPU = {opt['ratio_cpu']:.2f}x the numpy+simpy floor")
    if "reading" in out:
        rd = out["reading"]
        if "skipped" in rd:
            print(f"trace reading: skipped, {rd['skipped']}")
        else:
            kv, lc, half = rd["replay"], rd["libcachesim"], rd["replay_half"]
            print(f"trace reading, median of {kv['runs']} interleaved processes, {rd['capacity_blocks']:,}-block LRU: "
                  f"kvsim replay {kv['cpu_s']:.2f} s CPU ({kv['wall_s']:.2f} s wall), libCacheSim process_trace "
                  f"on the exported CSV ({rd['rows']:,} rows) {lc['cpu_s']:.2f} s CPU ({lc['wall_s']:.2f} s wall) "
                  f"= {rd['ratio_cpu']:.2f}x ({rd['ratio_wall']:.2f}x wall); target <= {rd['target']:g}x")
            print(f"trace reading: of the replay's {kv['wall_s']:.2f} s, the replay itself (its elapsed_s) "
                  f"{kv['inner_s']:.2f} s, start-up and output {kv['wall_s'] - kv['inner_s']:.2f} s")
            print(f"trace reading peak RSS of kvsim replay: {kv['max_rss_mib']:.1f} MiB (full trace), "
                  f"{half['max_rss_mib']:.1f} MiB (its first half) = {rd['rss_growth']:.2f}x")
    if "models" in out:
        md = out["models"]
        print(f"models: one evaluation (median of 5 capacities) lru {md['lru']['median_s'] * 1e3:.1f} ms, "
              f"fifo {md['fifo']['median_s'] * 1e3:.1f} ms (target < {MODEL_TARGET_S * 1e3:g} ms); fleet model of "
              f"{md['fleet']['instances']} instances {md['fleet']['seconds']:.3f} s (target < {FLEET_TARGET_S:g} s)")
    summary = [("default_turns_per_s", "{:,.0f}"), ("default_speedup", "{:.1f}x"), ("long_context_speedup", "{:.1f}x"),
               ("trace_blocks_per_s", "{:,.0f}"), ("curve_cost_ratio", "{:.2f}"), ("startup_help_ratio", "{:.2f}x"),
               ("startup_calc_ratio", "{:.2f}x"), ("replay_vs_libcachesim", "{:.2f}x"),
               ("replay_max_rss_mib", "{:.1f}"), ("replay_half_max_rss_mib", "{:.1f}"),
               ("model_evaluation_s", "{:.4f}"), ("fleet_model_s", "{:.3f}")]
    print("  ".join(f"{key} " + ("-" if out[key] is None else fmt.format(out[key]))
                    for key, fmt in summary if key in out))
    for key in ("profile_default_simulation", "profile_curve"):
        if key in out:
            print(f"\n{key}:\n{out[key]}")


if __name__ == "__main__":
    raise SystemExit(main())
