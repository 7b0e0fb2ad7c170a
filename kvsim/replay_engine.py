"""Real traces through the serving engine (``kvsim replay --engine``).

Each request of the traces arrives at its recorded time (divided by ``rate_scale`` from the
first one: ``rate_scale`` 2 replays the same requests twice as fast) with its input and output
lengths, and is served by one step engine (:mod:`kvsim.step_engine`) with vLLM's semantics: a
request's keys are its full prompt blocks (its output blocks get keys no other request has,
since a trace does not say what they hash to), the hit is capped at ``input - 1`` tokens. Every
request is measured; throughput is over the time from the first arrival to the last finish.
"""

from __future__ import annotations

import math
import time

import simpy

from analytic.serving import EngineSpec
from kvsim.engine import Counters
from kvsim.replay import check_block_size, request_runs, resolve_block_size
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats, serving_summary
from kvsim.traces import iter_requests

__all__ = ["replay_engine"]

MAX_RATE_SCALE = 1e6


def replay_engine(traces, engine: EngineSpec, capacity_blocks: int | None = None, *,
                  capacity_tokens: int | None = None, block_size: int | None = None,
                  trace_block_size: int | None = None, time_unit: str = "auto", arrival_rate: float | None = None,
                  seed: int = 0, skip_bad: bool = False, max_requests: int | None = None, rate_scale: float = 1.0,
                  keep_requests: bool = False, fast: bool = True, capacity_for_block_size=None,
                  tiers=None, tier_tokens: tuple[int, int] | None = None) -> tuple[dict, list]:
    """Replay ``traces`` (as :func:`kvsim.replay.replay` reads them) through one engine of
    ``capacity_blocks`` blocks (or ``capacity_tokens``, or ``capacity_for_block_size(bs)``
    once the block size is known); return ``(record, requests)``: the JSON record and, with
    ``keep_requests``, the :class:`~kvsim.step_engine.EngineRequest` of every request.
    ``tiers`` (:class:`analytic.offload.Tiers`, inclusive): CPU (and disk) tiers below the GPU,
    sized in ``tier_tokens`` ``(cpu, disk)`` instead of blocks if given."""
    if not (isinstance(rate_scale, (int, float)) and math.isfinite(rate_scale) and 0 < rate_scale <= MAX_RATE_SCALE):
        raise ValueError(f"rate-scale must be a number in (0, {MAX_RATE_SCALE:g}] (got {rate_scale!r})")
    reading = dict(trace_block_size=trace_block_size, time_unit=time_unit, arrival_rate=arrival_rate, seed=seed,
                   skip_bad=skip_bad)
    stream, tstats = iter_requests(traces, block_ids=False, **reading)
    stream = iter(stream)
    first = next(stream, None)
    bs = resolve_block_size(block_size, tstats.files)
    if bs is None:
        bs = first.block_size if first is not None else 1
    if capacity_blocks is None:
        capacity_blocks = capacity_tokens // bs if capacity_tokens is not None else capacity_for_block_size(bs)
    if tier_tokens is not None:
        from dataclasses import replace

        tiers = replace(tiers, cpu_blocks=tier_tokens[0] // bs, disk_blocks=tier_tokens[1] // bs)
    # Read every request first: the engine needs them as arrivals, and the largest must fit.
    requests: list[tuple[float, list, int, int, str]] = []
    req = first
    while req is not None and (max_requests is None or len(requests) < max_requests):
        if req.block_size != bs:
            check_block_size(bs, req.block_size, req.where or "a trace")
        runs, _, _, _ = request_runs(req, bs, vllm=True)
        keys = [k for start, n in runs for k in range(start, start + n)]
        requests.append((req.time, keys, req.input_tokens, req.output_tokens, req.where))
        req = next(stream, None)
    if not requests:
        raise ValueError("traces: no request to replay")
    largest = max(requests, key=lambda r: r[2] + r[3])
    need = -(-(largest[2] + largest[3]) // bs)
    if need > capacity_blocks:
        raise ValueError(f"capacity: the largest request ({largest[2]:,} input + {largest[3]:,} output tokens = "
                         f"{need:,} blocks of {bs}{', ' + largest[4] if largest[4] else ''}) cannot fit a KV cache "
                         f"of {capacity_blocks:,} blocks: give a larger capacity (or fewer requests: --max-requests)")

    env = simpy.Environment()
    start = requests[0][0]
    stats = ServingStats(0.0, math.inf, requests=[] if keep_requests else None)
    counters = Counters()
    instance = EngineInstance(env, engine, capacity_blocks, bs, stats, counters, fast=fast, tiers=tiers)
    submit = instance.submit
    served = []
    for i, (t, keys, inp, out, _) in enumerate(requests):
        r = EngineRequest(i, (t - start) / rate_scale, inp, out, keys)
        served.append(r)
        env.timeout(r.arrival).callbacks.append(lambda _, r=r: submit(r))
    began = time.perf_counter()
    env.run()
    elapsed = time.perf_counter() - began
    stats.end = env.now if env.now > 0 else math.inf  # the makespan: first arrival to the last finish
    counters.evictions = instance.pool.evictions
    prompt = sum(r[2] for r in requests)
    record = {
        "inputs": {"traces": [str(t) for t in traces] if isinstance(traces, (list, tuple)) else str(traces),
                   "block_size": bs, "capacity_blocks": capacity_blocks, "rate_scale": rate_scale,
                   "engine": engine.as_dict(), "semantics": "vllm"},
        "requests": len(requests),
        "makespan_s": env.now,
        "token_hit_rate": counters.hit_tokens / prompt if prompt else None,
        "request_hit_rate": counters.requests_hit / counters.requests if counters.requests else None,
        "block_hit_rate": counters.hit_blocks / counters.prompt_blocks if counters.prompt_blocks else None,
        "evictions": counters.evictions,
        **({"tiers": {name: {"token_hit_rate": t / prompt if prompt else None, "hit_blocks": h, "stored_blocks": st}
                      for name, t, h, st in zip(tiers.names, counters.tier_hit_tokens, counters.tier_hit_blocks,
                                                counters.tier_stored_blocks)}}
           if counters.tier_hit_blocks else {}),
        "serving": serving_summary([stats]),
        "elapsed_s": elapsed,
        "skipped": tstats.skipped,
        "skipped_files": tstats.skipped_files,
    }
    return record, served
