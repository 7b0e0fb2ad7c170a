"""Quantified recommendations: the levers a serving engineer controls, each priced by the models.

``advise(scenario)`` evaluates every lever that applies to the scenario and returns one dict per
lever: ``id``, ``lever``, ``text`` (one human sentence with the numbers), ``recommended`` (it
gains at least ``MIN_GAIN_POINTS``), ``token_hit_rate`` ``{"now", "then"}`` and ``gain_points``
(percentage points), plus the lever's own numbers. The list is sorted: recommended levers first,
largest gain first. The hit rates come from the model of the scenario's eviction policy (LRU by
default), except for the policy lever, which compares the two.

Levers (only those that apply to the scenario):

* ``kv-dtype-fp8`` / ``kv-dtype-int4``: a smaller KV dtype holds more tokens in the same memory
  (the weights do not change); int4 KV is offered by fewer engines, and both cost some accuracy.
* ``weight-dtype-fp8``: fp8 weights free memory for the KV cache (GPU memory given, weights
  from --params-b).
* ``memory-utilization``: vLLM's --gpu-memory-utilization raised to 0.95.
* ``gpus``: twice the GPUs (tensor parallel: the weights are split, the rest is KV cache).
* ``target``: the memory (and number of GPUs of the scenario's type) for a target token hit rate
  (``analytic.plan.capacity_for_target``), or the ceiling when no cache reaches it, or the memory
  that would do when the scenario is already above it.
* ``block-size``: the best of 8, 16 and 32 tokens per block (only full blocks are cached).
* ``policy``: LRU against FIFO eviction.
* ``offload``: a CPU offload tier (``analytic.tiers``): the size that pays, its hit rates and the
  prefill time (default service model), or why none does (the scenario's own tier if it has one).

For a fleet of N instances, ``routing_lever`` prices session affinity against random routing
with the fleet models (``analytic.fleet``, LRU); with affinity, each instance is one instance at
arrival rate lambda/N, so the levers above apply to it as they are. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import replace

from analytic.plan import capacity_for_target
from analytic.scenario import Evaluate, Scenario, default_evaluate
from analytic.sizing import GIB, memory_for_tokens
from analytic.specs import DEFAULT_TARGET, DTYPE_BYTES
from analytic.ttl import no_eviction_ceiling

MIN_GAIN_POINTS = 0.5  # a lever is recommended when it gains at least this many points
HIGH_UTILIZATION = 0.95
BLOCK_SIZES = (8, 16, 32)
OFFLOAD_MULTIPLES = (1, 2, 4, 8, 16)  # CPU offload sizes tried, in multiples of the GPU's KV cache


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _points(gain: float) -> str:
    return f"{gain:+.1f} points"


def _hit(s: Scenario, evaluate: Evaluate, method: str | None = None) -> float:
    return s.evaluate(method, evaluate).token_hit_rate


def _lever(id_: str, lever: str, text: str, now: float, then: float, **numbers) -> dict:
    gain = 100 * (then - now)
    return {"id": id_, "lever": lever, "text": text, "recommended": gain >= MIN_GAIN_POINTS,
            "token_hit_rate": {"now": now, "then": then}, "gain_points": gain, **numbers}


def _change(label: str, now: float, then: float) -> str:
    return f"{label}: token hit rate {_pct(now)} -> {_pct(then)} ({_points(100 * (then - now))})"


def _same_memory(s: Scenario, **changes) -> Scenario:
    """The scenario with ``changes`` and the same memory: GPUs, or the cache's GiB when the
    capacity was given directly (a KV dtype change then changes the tokens, not the bytes)."""
    if s.hardware is None:
        return replace(s, capacity_tokens=None, capacity_gib=s.capacity().kv_cache_gib, **changes)
    return replace(s, **changes)


def _kv_dtype(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    out = []
    for dtype, note in (("fp8", "check accuracy on your evals"),
                        ("int4", "fewer engines offer it; check accuracy on your evals")):
        if DTYPE_BYTES[dtype] >= DTYPE_BYTES[s.kv_dtype]:
            continue
        moved = _same_memory(s, kv_dtype=dtype)
        cap = moved.capacity()
        then = _hit(moved, evaluate)
        text = (f"{_change(f'{dtype} KV cache', now, then)}; "
                f"{cap.capacity_tokens:,} tokens instead of {s.capacity().capacity_tokens:,} ({note})")
        out.append(_lever(f"kv-dtype-{dtype}", "KV cache dtype", text, now, then, kv_dtype=dtype,
                          capacity_tokens=cap.capacity_tokens))
    return out


def _weight_dtype(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    if s.hardware is None or s.model_size_gib is not None or s.model.params_b is None:
        return []
    if DTYPE_BYTES["fp8"] >= DTYPE_BYTES[s.weight_dtype]:
        return []
    moved = replace(s, weight_dtype="fp8")
    cap, cap0 = moved.capacity(), s.capacity()
    then = _hit(moved, evaluate)
    freed = cap0.weights_gib - cap.weights_gib
    text = f"{_change('fp8 weights', now, then)}; frees {freed:.1f} GiB for the KV cache (check accuracy)"
    return [_lever("weight-dtype-fp8", "weight dtype", text, now, then, weight_dtype="fp8", freed_gib=freed,
                   capacity_tokens=cap.capacity_tokens)]


def _utilization(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    if s.hardware is None or s.hardware.memory_utilization >= HIGH_UTILIZATION:
        return []
    moved = replace(s, hardware=replace(s.hardware, memory_utilization=HIGH_UTILIZATION))
    try:
        then = _hit(moved, evaluate)
    except ValueError:
        return []
    label = f"gpu-memory-utilization {HIGH_UTILIZATION:g} instead of {s.hardware.memory_utilization:g}"
    text = f"{_change(label, now, then)} (leaves less headroom: watch for out-of-memory errors)"
    return [_lever("memory-utilization", "memory utilisation", text, now, then,
                   memory_utilization=HIGH_UTILIZATION, capacity_tokens=moved.capacity().capacity_tokens)]


def _gpu_name(s: Scenario) -> str:
    return s.hardware.gpu if s.hardware.gpu != "custom" else f"{s.hardware.gpu_memory_gib:g} GiB GPU"


def _gpus(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    if s.hardware is None:
        return []
    gpus = 2 * s.hardware.gpus
    moved = replace(s, hardware=replace(s.hardware, gpus=gpus))
    then = _hit(moved, evaluate)
    label = f"{gpus} x {_gpu_name(s)} (tensor parallel) instead of {s.hardware.gpus}"
    return [_lever("gpus", "GPUs per instance", _change(label, now, then), now, then, gpus=gpus,
                   capacity_tokens=moved.capacity().capacity_tokens)]


def _target(s: Scenario, evaluate: Evaluate, target: float, now: float) -> list[dict]:
    method = s.policy
    try:
        blocks = capacity_for_target(s.workload, target, "token", s.block_size, method, evaluate=evaluate)
    except ValueError:
        ceiling = no_eviction_ceiling(s.workload, s.block_size).token_hit_rate
        text = (f"a token hit rate of {_pct(target)} is out of reach for this workload: even an unlimited "
                f"cache gets {_pct(ceiling)} (the rest is each conversation's first prompt and new tokens)")
        out = _lever("target", "memory for a target", text, now, ceiling, target=target, reachable=False,
                     ceiling=ceiling)
        out["recommended"] = False
        return [out]
    cap0 = s.capacity()
    tokens = blocks * s.block_size
    kv_gib = tokens * cap0.bytes_per_token / GIB
    numbers = {"target": target, "reachable": True, "capacity_tokens": tokens, "kv_cache_gib": kv_gib}
    if s.hardware is None:
        where = f"{kv_gib:,.1f} GiB of KV cache ({tokens:,} tokens; now {cap0.kv_cache_gib:,.1f} GiB)"
    else:
        hw = s.hardware
        total = memory_for_tokens(s.model, tokens, s.kv_dtype, s.weight_dtype, hw.memory_utilization,
                                  hw.activation_reserve_gib, s.model_size_gib)
        gpus = max(1, math.ceil(total / hw.gpu_memory_gib - 1e-9))
        numbers.update(gpu_memory_gib_total=total, gpus_needed=gpus, gpu=hw.gpu)
        where = (f"{total:,.0f} GiB of GPU memory in all = {gpus} x {_gpu_name(s)} (now "
                 f"{hw.gpus} x {hw.gpu_memory_gib:g} GiB)")
    if now >= target:
        text = f"already at {_pct(now)} >= {_pct(target)}: {_pct(target)} would need only {where}"
        out = _lever("target", "memory for a target", text, now, now, **numbers)
        out["recommended"] = False
        return [out]
    text = f"memory for {_pct(target)} token hit rate ({method.upper()} model): {where}"
    return [_lever("target", "memory for a target", text, now, target, **numbers)]


def _block_size(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    best = None
    for bs in BLOCK_SIZES:
        if bs == s.block_size:
            continue
        moved = _same_memory(s, block_size=bs)
        then = _hit(moved, evaluate)
        if best is None or then > best[1]:
            best = (bs, then)
    if best is None:
        return []
    bs, then = best
    label = f"block size {bs} instead of {s.block_size}"
    text = _change(label, now, then)
    if abs(then - now) < MIN_GAIN_POINTS / 100:
        text += " - the block size hardly matters here"
    return [_lever("block-size", "block size", text, now, then, block_size=bs)]


def _policy(s: Scenario, evaluate: Evaluate, now: float) -> list[dict]:
    other = "lru" if s.policy == "fifo" else "fifo"
    then = _hit(s, evaluate, other)
    gain = 100 * (then - now)
    if abs(gain) < MIN_GAIN_POINTS:
        text = (f"LRU and FIFO eviction are on a par here: {s.policy.upper()} {_pct(now)}, "
                f"{other.upper()} {_pct(then)} ({_points(gain)})")
    elif gain > 0:
        text = _change(f"{other.upper()} eviction instead of {s.policy.upper()}", now, then)
    else:
        text = (f"{s.policy.upper()} eviction is the better policy here: {other.upper()} would give "
                f"{_pct(then)} ({_points(gain)})")
    return [_lever("policy", "eviction policy", text, now, then, policy=other)]


def _offload(s: Scenario, evaluate: Evaluate) -> list[dict]:
    """CPU offload: the smallest of OFFLOAD_MULTIPLES x the GPU's KV cache (rounded up to a power of
    two GiB) that gets 90% of the largest one's gain, priced by the tiered model of the scenario's
    policy and offload mode (``analytic.tiers``), with the prefill time of the default service
    model; or, if the scenario has a CPU tier, that tier. Against the GPU alone."""
    from analytic.tiers import tiered_model

    capacity = s.capacity()
    gpu, bpt = capacity.capacity_blocks, capacity.bytes_per_token
    mode, bandwidth = s.offload.mode, s.offload.cpu_bandwidth_gbps
    if s.offload.asked:
        sizes = [s.tiers().cpu_blocks]
    else:
        gib = [2 ** math.ceil(math.log2(max(k * gpu * s.block_size * bpt / GIB, 1.0))) for k in OFFLOAD_MULTIPLES]
        sizes = sorted({int(g * GIB / bpt) // s.block_size for g in gib})
    priced = []
    for blocks in sizes:
        m = tiered_model(s.workload, (gpu, blocks), s.block_size, s.policy, mode, bpt, evaluate=evaluate)
        priced.append((blocks, m, m.ttft(None, {"cpu": bandwidth})))
    best = max(m.token_hit_rate for _, m, _ in priced)
    now = priced[0][1].gpu_only.token_hit_rate
    blocks, m, ttft = next(p for p in priced if p[1].token_hit_rate - now >= 0.9 * (best - now))
    gib = blocks * s.block_size * bpt / GIB
    numbers = {"cpu_offload_gib": gib, "cpu_capacity_blocks": blocks, "offload_mode": mode,
               "prefill_s": {"now": ttft["gpu_only"], "then": ttft["tiered"]}}
    then = m.token_hit_rate
    if 100 * (then - now) < MIN_GAIN_POINTS:
        ceiling = no_eviction_ceiling(s.workload, s.block_size).token_hit_rate
        text = (f"CPU offload would not pay: {gib:,.0f} GiB ({mode}) adds {_points(100 * (then - now))} - the GPU "
                f"already gets {_pct(now)} of an unlimited cache's {_pct(ceiling)}, little reuse lies beyond its horizon")
        if mode == "inclusive" and blocks <= gpu:
            text = (f"a CPU tier of {gib:,.0f} GiB adds nothing in inclusive mode: it is no larger than the GPU's "
                    f"{capacity.kv_cache_gib:,.1f} GiB of KV cache, whose blocks it copies")
        return [_lever("offload", "CPU offload", text, now, then, **numbers)]
    change = 100 * (ttft["tiered"] / ttft["gpu_only"] - 1) if ttft["gpu_only"] else 0.0
    what = "your " if s.offload.asked else ""
    text = (f"{what}{gib:,.0f} GiB of CPU offload ({mode}, {bandwidth:g} GB/s): {_pct(now)} -> {_pct(then)} token "
            f"hits ({_points(100 * (then - now))}), prefill time {change:+.0f}% (default service model)")
    return [_lever("offload", "CPU offload", text, now, then, **numbers)]


def routing_lever(workload, capacity_blocks: int, instances: int, router: str, block_size: int) -> dict:
    """Session affinity against random routing over ``instances`` instances of ``capacity_blocks``
    (the LRU fleet models): the lever of a fleet routed by ``router`` (affinity or random)."""
    from analytic.fleet import fleet_model

    other = "random" if router == "affinity" else "affinity"
    now, then = (fleet_model(workload, [capacity_blocks] * instances, r, "lru", block_size).token_hit_rate
                 for r in (router, other))
    gain = 100 * (then - now)
    if router == "random":
        text = _change(f"session affinity (consistent hashing of the conversation) instead of random routing over "
                       f"{instances} instances", now, then)
    else:
        text = (f"keep session affinity: random routing over {instances} instances would give {_pct(then)} "
                f"({_points(gain)})")
    return _lever("routing", "router", text, now, then, router=other)


def advise(scenario: Scenario, *, target: float = DEFAULT_TARGET, evaluate: Evaluate | None = None,
           compare_policies: bool = True) -> list[dict]:
    """The levers that apply to ``scenario``, each quantified; recommended ones first, by gain.

    ``compare_policies=False`` leaves out the policy lever (it evaluates the other policy's model,
    which a caller may find too slow: the FIFO model's cost grows with the square of the turns).
    """
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target < 1):
        raise ValueError(f"target-hit-rate must be in (0, 1) (got {target!r})")
    evaluate = evaluate or default_evaluate
    now = _hit(scenario, evaluate)
    out = [
        *_kv_dtype(scenario, evaluate, now),
        *_weight_dtype(scenario, evaluate, now),
        *_utilization(scenario, evaluate, now),
        *_gpus(scenario, evaluate, now),
        *_target(scenario, evaluate, target, now),
        *_block_size(scenario, evaluate, now),
        *(_policy(scenario, evaluate, now) if compare_policies else []),
        *_offload(scenario, evaluate),
    ]
    out.sort(key=lambda a: (not a["recommended"], -a["gain_points"]))
    return out


def fleet_advise(scenario: Scenario, instances: int, router: str, *, target: float = DEFAULT_TARGET,
                 evaluate: Evaluate | None = None, compare_policies: bool = True) -> list[dict]:
    """The levers of a fleet of ``instances`` instances like ``scenario`` behind ``router``: the
    routing lever and, with affinity, every lever of ``advise`` for one instance at arrival rate
    lambda/N (what each instance sees). Recommended first, by gain."""
    levers = []
    if instances > 1:
        levers.append(routing_lever(scenario.workload, scenario.capacity().capacity_blocks, instances, router,
                                    scenario.block_size))
    if router == "affinity":
        share = replace(scenario, workload=replace(scenario.workload,
                                                   arrival_rate=scenario.workload.arrival_rate / instances))
        levers += advise(share, target=target, evaluate=evaluate, compare_policies=compare_policies)
    levers.sort(key=lambda a: (not a["recommended"], -a["gain_points"]))
    return levers


__all__ = ["advise", "fleet_advise", "routing_lever", "DEFAULT_TARGET", "MIN_GAIN_POINTS"]
