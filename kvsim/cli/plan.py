"""``kvsim plan``: the memory a target hit rate needs (the models inverted), one instance or a fleet."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from analytic.scenario import Scenario, inputs_summary
from analytic.sizing import GIB, memory_for_tokens
from kvsim.cli.args import (SimulationSettings, UsageError, add_fleet_args, add_json_arg, add_offload_args,
                            add_scenario_args, add_simulation_args, scenario_from_values, simulation_from_values, synthetic_only)
from kvsim.cli.engine_args import add_engine_args
from kvsim.cli.text import ci, describe


def configure(p: argparse.ArgumentParser) -> None:
    add_scenario_args(p)
    p.add_argument("--target-hit-rate", type=float, help="e.g. 0.8 (or --slo)")
    p.add_argument("--slo", metavar="TARGETS",
                   help="latency targets instead, e.g. ttft-p99=0.5,tpot-p99=0.05 (ttft, tpot, e2e x mean, p50, p90, "
                        "p99; seconds): the largest arrival rate one instance sustains within them, with prefix "
                        "caching on and off (the models' bound, then the engine simulated)")
    p.add_argument("--solve-for", choices=SOLVE_FOR, default="rate",
                   help="with --slo: the largest arrival rate one instance sustains (default), or what one instance "
                        "needs to serve --arrival-rate: its GPU KV cache (gpu-memory) or a CPU offload tier below its "
                        "GPU as it is (cpu-offload)")
    p.add_argument("--metric", default="token", choices=["token", "request"],
                   help="token_hit_rate (default) or request_hit_rate")
    p.add_argument("--method", default="lru", choices=["lru", "fifo"], help="model to invert (default lru)")
    p.add_argument("--check", action="store_true",
                   help="also simulate LRU at every capacity of the curve (one pass per replication)")
    p.add_argument("--tier", choices=["gpu", "cpu"], default="gpu",
                   help="what to size: the GPU's KV cache (default) or the CPU offload tier below the GPU as "
                        "it is (with --offload-mode, --cpu-bandwidth-gbps)")
    add_fleet_args(p, simulation=False)
    add_engine_args(p, requests_out=False)
    add_offload_args(p)
    add_simulation_args(p)
    add_json_arg(p)
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    if (a.target_hit_rate is None) == (a.slo is None):
        raise UsageError("give one of --target-hit-rate and --slo")
    if a.solve_for != "rate" and a.slo is None:
        raise UsageError("--solve-for goes with --slo (the latency targets)")
    if a.slo is not None:
        scenario = scenario_from_values({**vars(a), "engine": True}, sized_offload=a.solve_for != "cpu-offload")
        if a.solve_for == "rate":
            record, lines = slo_plan_record(scenario, a.slo, simulation_from_values(vars(a)))
        else:
            record, lines = slo_size_record(scenario, a.slo, simulation_from_values(vars(a)), a.solve_for)
        print(json.dumps(record, indent=2) if a.json else "\n".join(lines))
        return 0
    scenario = scenario_from_values(vars(a), sized_offload=a.tier == "gpu")
    check = simulation_from_values(vars(a)) if a.check else None
    if a.tier == "cpu":
        if check is not None:
            raise UsageError("--check simulates the GPU's curve; use kvsim simulate --cpu-offload-gib to check a CPU tier")
        record, lines = cpu_plan_record(scenario, a.target_hit_rate, a.metric, a.method)
    else:
        if scenario.offload.asked:
            raise UsageError("the offload flags size a CPU tier: give them with --tier cpu")
        record, lines = plan_record(scenario, a.target_hit_rate, a.metric, a.method, check)
    if a.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(lines))
    return 0


def plan_record(scenario: Scenario, target: float, metric: str = "token", method: str = "lru",
                check: SimulationSettings | None = None) -> tuple[dict, list[str]]:
    """``kvsim plan``'s JSON record and text. ``check``: also simulate LRU along the curve."""
    from analytic.calc import seed_inputs
    from analytic.plan import capacity_for_target, hit_rate_curve
    from analytic.seed import seed_recommendation

    s = scenario
    synthetic_only(s, "kvsim plan works on synthetic workloads only; use kvsim calc or kvsim simulate with "
                      "templates")
    capacity = s.capacity()
    header = describe(s.model, capacity.as_dict(), s.workload, s.kv_dtype)
    if s.fleet.routed:
        return _fleet_plan(s, target, metric, method, check, header[:1] + header[-1:])
    if s.model.is_hybrid and s.hybrid_allocator:
        return _hybrid_plan(s, target, metric, method, check, header[:1] + header[-1:])
    hardware, bs = s.hardware, s.block_size
    blocks = capacity_for_target(s.workload, target, metric, bs, method)
    tokens = blocks * bs
    plan = {"target_hit_rate": target, "metric": metric, "method": method,
            "capacity_blocks": blocks, "capacity_tokens": tokens,
            "kv_cache_gib": tokens * capacity.bytes_per_token / GIB}
    if hardware is not None:
        total = memory_for_tokens(s.model, tokens, s.kv_dtype, s.weight_dtype, hardware.memory_utilization,
                                  hardware.activation_reserve_gib, s.model_size_gib)
        plan["gpu_memory_gib_total"] = total
        plan["gpu_memory_gib_per_gpu"] = total / hardware.gpus
        if hardware.gpu != "custom":
            plan["gpus_needed"] = math.ceil(total / hardware.gpu_memory_gib)
            plan["gpu"] = hardware.gpu
        plan["seed_recommendation"] = seed_recommendation(
            memory_gb=hardware.gpu_memory_gib * hardware.gpus, target_hit_rate=target,
            **seed_inputs(s.model, s.workload, s.kv_dtype, s.weights_gib()))
    scale = np.geomspace(0.1, 3, 12)
    capacities = sorted({max(1, int(blocks * f)) for f in scale} | {blocks})
    curve = hit_rate_curve(s.workload, capacities, bs, methods=(method,))
    if check is not None:  # simulated LRU at every capacity of the curve, from one pass per replication
        from kvsim.curve import simulate_curve

        simulated = simulate_curve(s.workload, capacities, block_size=bs, duration=check.duration,
                                   warmup=check.warmup, replications=check.replications, seed=check.seed,
                                   max_events=check.max_events)
        for row, sim in zip(curve, simulated):
            row["simulated_lru"] = {"token_hit_rate": sim["token_hit_rate"],
                                    "request_hit_rate": sim["request_hit_rate"]}
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "plan": plan, "curve": curve}
    lines = header[:1] + header[-1:]
    lines.append(f"\ntarget: {metric} hit rate >= {target:g} ({method.upper()} model)")
    lines.append(f"needs   {tokens:,} tokens = {blocks:,} blocks of KV cache = {plan['kv_cache_gib']:.1f} GiB")
    if hardware is not None:
        line = (f"        {plan['gpu_memory_gib_total']:.1f} GiB of GPU memory in all "
                f"(weights, {hardware.activation_reserve_gib:g} GiB activations, utilisation "
                f"{hardware.memory_utilization:g})")
        if "gpus_needed" in plan:
            line += f": {plan['gpus_needed']} x {hardware.gpu}"
        lines.append(line)
        rec = plan["seed_recommendation"]
        lines.append(f"seed    the original calculator recommends {rec['recommended_memory_gb']:.1f} GB"
                     f" (its request hit rate now: {rec['current_hit_rate']:.3f})")
    lines.append(f"\n{'capacity_tokens':>16} {'token_hit_rate':>15} {'request_hit_rate':>17}"
                 + (f" {'simulated LRU token_hit_rate':>32}" if check else ""))
    for row in curve:
        mark = " <- plan" if row["capacity_blocks"] == blocks else ""
        sim = f" {ci(row['simulated_lru']['token_hit_rate']):>32}" if check else ""
        lines.append(f"{row['capacity_tokens']:>16,} {row['token_hit_rate']:>15.4f} {row['request_hit_rate']:>17.4f}"
                     f"{sim}{mark}")
    return record, lines


def _hybrid_plan(s: Scenario, target: float, metric: str, method: str, check, header: list[str]):
    """A hybrid model (sliding-window or Mamba layers): the pool of vLLM's hybrid KV cache manager
    the target needs, by the pool's LRU model (analytic.hybrid_lru; vLLM's pool is LRU) or FIFO model
    (analytic.hybrid_fifo), in blocks of vLLM's size."""
    from analytic import hybrid
    from analytic.hybrid_fifo import hybrid_fifo_model
    from analytic.hybrid_lru import hybrid_lru_model
    from analytic.plan import capacity_for_target
    from analytic.sizing import bytes_per_token

    if check is not None:
        raise UsageError("--check: a hybrid model's pool is checked by kvsim simulate --vllm (leave out --check), or "
                         "give --no-hybrid-allocator for the upper bound")
    pool_model = hybrid_fifo_model if method == "fifo" else hybrid_lru_model
    hardware = s.hardware
    tp = hardware.gpus if hardware is not None else 1
    p = hybrid.plan(s.model, 1.0, kv_dtype=s.kv_dtype, block_size=s.block_size, tp=tp)  # groups and block size
    def evaluate(workload, blocks, block_size, _method):
        return pool_model(workload, p.group_kinds, blocks, block_size, p.mamba_cache_mode)

    blocks = capacity_for_target(s.workload, target, metric, p.block_size, method, evaluate=evaluate)
    kv_bytes = blocks * p.bytes_per_block * tp
    plan = {"target_hit_rate": target, "metric": metric, "method": f"{method} (hybrid pool)", "pool_blocks": blocks,
            "block_size": p.block_size, "groups": [g.__dict__ for g in p.groups], "kv_cache_gib": kv_bytes / GIB}
    lines = [*header, f"\ntarget: {metric} hit rate >= {target:g} (the pool's {method.upper()} model, "
                      f"analytic/hybrid_{method}.py)",
             f"needs   {blocks:,} blocks of {p.block_size} tokens in vLLM's hybrid pool ({p.group_count} KV cache "
             f"groups) = {plan['kv_cache_gib']:.1f} GiB of KV cache"]
    if hardware is not None:
        tokens = kv_bytes / bytes_per_token(s.model, s.kv_dtype)  # the same bytes, as the sizing counts them
        total = memory_for_tokens(s.model, int(tokens), s.kv_dtype, s.weight_dtype, hardware.memory_utilization,
                                  hardware.activation_reserve_gib, s.model_size_gib)
        plan["gpu_memory_gib_total"] = total
        line = (f"        {total:.1f} GiB of GPU memory in all (weights, {hardware.activation_reserve_gib:g} GiB "
                f"activations, utilisation {hardware.memory_utilization:g})")
        if hardware.gpu != "custom":
            plan["gpus_needed"] = math.ceil(total / hardware.gpu_memory_gib)
            line += f": {plan['gpus_needed']} x {hardware.gpu}"
        lines.append(line)
    curve = []
    for f in np.geomspace(0.1, 3, 12):
        n = max(1, int(blocks * f))
        r = evaluate(s.workload, n, p.block_size, method)
        curve.append({"pool_blocks": n, "token_hit_rate": r.token_hit_rate, "request_hit_rate": r.request_hit_rate})
    lines.append(f"\n{'pool_blocks':>12} {'token_hit_rate':>15} {'request_hit_rate':>17}")
    lines += [f"{row['pool_blocks']:>12,} {row['token_hit_rate']:>15.4f} {row['request_hit_rate']:>17.4f}"
              for row in curve]
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "plan": plan, "curve": curve}
    return record, lines


def cpu_plan_record(scenario: Scenario, target: float, metric: str = "token", method: str = "lru") -> tuple[dict, list[str]]:
    """``kvsim plan --tier cpu``: the CPU offload (GiB) that brings the total token hit rate to
    ``target`` with the GPU as it is (``analytic.tiers.capacity_for_tier_target``)."""
    from analytic.tiers import capacity_for_tier_target, tiered_model

    s = scenario
    synthetic_only(s, "kvsim plan works on synthetic workloads only")
    if metric != "token":
        raise UsageError("--tier cpu targets the token hit rate (--metric token)")
    if s.fleet.routed:
        raise UsageError("--tier cpu sizes the CPU tier of one instance: leave out --instances and --router")
    if s.offload.asked:
        raise UsageError("--tier cpu finds the CPU tier's size: leave out the tier sizes (--cpu-offload-gib, ...)")
    capacity = s.capacity()
    gpu, bs, bpt, mode = capacity.capacity_blocks, s.block_size, capacity.bytes_per_token, s.offload.mode
    blocks = capacity_for_tier_target(s.workload, target, gpu, "cpu", block_size=bs, method=method, mode=mode)
    m = tiered_model(s.workload, (gpu, blocks), bs, method, mode, bpt)
    ttft = m.ttft(None, {"cpu": s.offload.cpu_bandwidth_gbps})
    gib = blocks * bs * bpt / GIB
    plan = {"target_hit_rate": target, "metric": metric, "method": method, "tier": "cpu", "offload_mode": mode,
            "gpu_capacity_blocks": gpu, "cpu_capacity_blocks": blocks, "cpu_capacity_tokens": blocks * bs,
            "cpu_offload_gib": gib, "token_hit_rate": m.token_hit_rate,
            "gpu_alone_token_hit_rate": m.gpu_only.token_hit_rate, "tiers": m.tiers, "prefill_s": ttft}
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "memory": capacity.as_dict(), "plan": plan}
    header = describe(s.model, capacity.as_dict(), s.workload, s.kv_dtype)
    lines = [*header, f"\ntarget: token hit rate >= {target:g} over GPU + CPU ({method.upper()} model, {mode})"]
    if blocks == 0:
        lines.append(f"needs   no CPU tier: the GPU alone gets {m.gpu_only.token_hit_rate:.4f}")
    else:
        lines.append(f"needs   {gib:,.1f} GiB of CPU offload = {blocks * bs:,} tokens = {blocks:,} blocks "
                     f"(--cpu-offload-gib {math.ceil(gib)})")
        lines.append(f"then    token hit rate {m.token_hit_rate:.4f} (GPU {m.tiers['gpu']['token_hit_rate']:.4f} + CPU "
                     f"{m.tiers['cpu']['token_hit_rate']:.4f}; GPU alone {m.gpu_only.token_hit_rate:.4f}), prefill "
                     f"{ttft['tiered']:.4f} s (GPU alone {ttft['gpu_only']:.4f} s; default service model)")
    return record, lines


def _fleet_plan(s: Scenario, target: float, metric: str, method: str, check, header: list[str]):
    """``--instances N --router affinity|random``: cache per instance for a target, under both routers."""
    from analytic.fleet import capacity_to_match, fleet_model

    instances, router = s.fleet.size, s.fleet.router or "affinity"
    hardware = s.hardware
    bytes_per_token = s.capacity().bytes_per_token
    if metric != "token":
        raise UsageError("--metric request has no fleet version: the fleet plan targets the token hit rate")
    if check is not None:
        raise UsageError("--check simulates one instance: use kvsim simulate --instances/--router at the planned "
                         "capacity")
    if router == "random" and method == "fifo":
        raise UsageError("--method fifo has no model for --router random: use lru (or --router affinity)")

    def plan_for(r: str) -> dict:
        try:
            blocks = capacity_to_match(s.workload, target, instances, r, method, s.block_size)
        except ValueError as e:
            return {"router": r, "error": str(e)}
        tokens = blocks * s.block_size
        out = {"router": r, "capacity_blocks_per_instance": blocks, "capacity_tokens_per_instance": tokens,
               "kv_cache_gib_per_instance": tokens * bytes_per_token / GIB,
               "token_hit_rate": fleet_model(s.workload, [blocks] * instances, r, method, s.block_size).token_hit_rate}
        if hardware is not None:
            per_instance = memory_for_tokens(s.model, tokens, s.kv_dtype, s.weight_dtype, hardware.memory_utilization,
                                             hardware.activation_reserve_gib, s.model_size_gib)
            out["gpu_memory_gib_per_instance"] = per_instance
            if hardware.gpu != "custom":
                out["gpus_per_instance"] = math.ceil(per_instance / hardware.gpu_memory_gib)
                out["gpu"] = hardware.gpu
        return out

    plans = [plan_for(router)]
    other = "random" if router == "affinity" else "affinity"
    if method == "lru":
        plans.append(plan_for(other))
    if "error" in plans[0]:
        raise UsageError(plans[0]["error"])
    inputs = {**inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "instances": instances}
    record = {"inputs": inputs, "target_hit_rate": target, "metric": "token", "method": method, "plans": plans}
    lines = [*header, f"\ntarget: token hit rate >= {target:g} ({method.upper()} fleet model), {instances} instances"]
    for plan in plans:
        if "error" in plan:
            lines.append(f"{plan['router']:9} {plan['error']}")
            continue
        line = (f"{plan['router']:9} {plan['capacity_tokens_per_instance']:,} tokens = "
                f"{plan['capacity_blocks_per_instance']:,} blocks = {plan['kv_cache_gib_per_instance']:.1f} GiB of KV "
                f"cache per instance ({instances * plan['kv_cache_gib_per_instance']:.1f} GiB in all)")
        if "gpus_per_instance" in plan:
            line += f"; {plan['gpus_per_instance']} x {plan['gpu']} per instance"
        lines.append(line)
    return record, lines


def slo_plan_record(scenario: Scenario, slo: str, settings: SimulationSettings) -> tuple[dict, list[str]]:
    """``kvsim plan --slo``: the largest arrival rate one instance sustains within the latency
    targets, with prefix caching on and off: the models' bound (:mod:`analytic.slo`), then the
    engine simulated (``settings``) at that rate and, if it misses, bisected below it."""
    from dataclasses import replace

    from analytic.scenario import default_evaluate
    from analytic.slo import check_possible, model_rate_bound, parse_slo
    from kvsim.cli.simulate import engine_line

    s = scenario
    synthetic_only(s, "kvsim plan --slo works on synthetic workloads only")
    if s.fleet.routed or s.offload.asked:
        raise UsageError("--slo plans one instance without offload tiers: leave out --instances, --router and the "
                         "offload flags")
    targets = parse_slo(slo)
    capacity = s.capacity()
    blocks, bs = capacity.capacity_blocks, s.block_size
    header = describe(s.model, capacity.as_dict(), s.workload, s.kv_dtype)[:-1]
    results = {}
    for caching in (True, False):
        engine = replace(s.engine_spec(), prefix_caching=caching)
        alone = check_possible(targets, s.workload, engine.step_time, engine.max_num_batched_tokens)
        bound = model_rate_bound(targets, s.workload, blocks, bs, engine, default_evaluate, s.policy)
        tried = []

        def measure(rate: float) -> dict:
            tried.append(_simulate_targets(s, targets, settings, engine, rate, blocks))
            return tried[-1]

        best = None
        if bound > 0 and math.isfinite(bound):
            if measure(bound)["meets"]:
                best = bound
            else:  # bisect below the bound
                lo, hi = 0.0, bound
                for _ in range(SLO_BISECTIONS):
                    mid = (lo + hi) / 2
                    if measure(mid)["meets"]:
                        lo, best = mid, mid
                    else:
                        hi = mid
        results["on" if caching else "off"] = {
            "model_bound_arrival_rate": bound, "simulated_arrival_rate": best,
            "simulated_requests_per_s": None if best is None else best * s.workload.turns.mean,
            # --arrival-rate over instances that each keep their conversations (session affinity)
            "instances_for_arrival_rate": None if not best else math.ceil(s.workload.arrival_rate / best),
            "lone_request_s": alone, "simulations": sorted(tried, key=lambda x: x["arrival_rate"])}
    on, off = results["on"]["simulated_arrival_rate"], results["off"]["simulated_arrival_rate"]
    gain = (on / off - 1) if on and off else None
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "slo": [t.__dict__ for t in targets], "engine": s.engine_spec().as_dict(),
              "prefix_caching": results, "caching_gain": gain}
    lines = [*header, engine_line(s.engine_spec()),
             f"\ntarget: {', '.join(f'{t.name} <= {t.seconds:g} s' for t in targets)} (one instance; simulated "
             f"{settings.replications} x {settings.duration or 'auto'} s per rate)"]
    for key, r in results.items():
        alone = r["lone_request_s"]
        lines.append(f"\nprefix caching {key}: a lone request takes TTFT {alone['ttft']:.3f} s, TPOT "
                     f"{alone['tpot']:.4f} s, E2E {alone['e2e']:.2f} s")
        lines.append(f"  models (means):  at most {r['model_bound_arrival_rate']:.3g} conversations/s")
        for x in r["simulations"]:
            cells = ", ".join(f"{t.name} {x[t.name]:.3f}" if x[t.name] is not None else f"{t.name} -" for t in targets)
            lines.append(f"  simulated {x['arrival_rate']:.3g}/s: {cells}, token hits {x['token_hit_rate']:.3f}"
                         f" -> {'meets' if x['meets'] else 'misses'}")
        best = r["simulated_arrival_rate"]
        lines.append("  answer: " + (f"{best:.3g} conversations/s = {r['simulated_requests_per_s']:.3g} requests/s"
                                     f" per instance: {r['instances_for_arrival_rate']:,} instance"
                                     f"{'s' if r['instances_for_arrival_rate'] > 1 else ''} for "
                                     f"{s.workload.arrival_rate:g} conversations/s (with session affinity)"
                                     if best else "none of the rates tried meets the targets"))
    if gain is not None:
        lines.append(f"\nprefix caching lets the instance take {100 * gain:+.0f}% more load within the targets")
    return record, lines


SLO_BISECTIONS = 5  # simulated rates below the models' bound, when the bound misses: to 1/32 of it
SIZE_DOUBLINGS = 3  # simulated capacities above the models' answer, when it misses: up to 8 times it
SIZE_BISECTIONS = 3  # then between the last that missed and the first that met: to 1/8 of the gap
SOLVE_FOR = ("rate", "gpu-memory", "cpu-offload")


def _simulate_targets(s: Scenario, targets, settings: SimulationSettings, engine, rate: float, blocks: int,
                      tiers=None) -> dict:
    """One instance of ``blocks`` GPU blocks (and ``tiers`` below) simulated at ``rate``: the
    targets' statistics and whether each is met."""
    from dataclasses import replace

    from kvsim.fleet import simulate_fleet

    r = simulate_fleet(replace(s.workload, arrival_rate=rate), blocks, 1, engine=engine, block_size=s.block_size,
                       duration=settings.duration, warmup=settings.warmup, replications=settings.replications,
                       seed=settings.seed, progress=None, max_events=settings.max_events, tiers=tiers).as_dict()
    v = r["serving"]
    got = {t.name: (v[f"{t.metric}_s"]["mean"]["mean"] if t.stat == "mean" else v[f"{t.metric}_s"][t.stat])
           for t in targets}
    meets = all(got[t.name] is not None and got[t.name] <= t.seconds for t in targets)
    return {"arrival_rate": rate, "meets": meets, **got, "token_hit_rate": r["token_hit_rate"]["mean"]}


def slo_size_record(scenario: Scenario, slo: str, settings: SimulationSettings,
                    solve_for: str) -> tuple[dict, list[str]]:
    """``kvsim plan --slo ... --solve-for gpu-memory|cpu-offload``: the KV cache (GPU memory) one
    instance needs, or the CPU offload below its GPU as it is, to serve the workload's
    ``--arrival-rate`` within the latency targets, with prefix caching on and off. The models
    under load give the smallest size whose mean latencies meet the targets
    (:func:`analytic.slo.meets_at_rate`); the engine is simulated at it and, if it misses, at
    doubled sizes, then bisected between the last miss and the first that meets."""
    from dataclasses import replace

    from analytic.offload import Tiers
    from analytic.scenario import default_evaluate
    from analytic.slo import check_possible, meets_at_rate, parse_slo, smallest_blocks
    from kvsim.cli.simulate import engine_line

    s = scenario
    synthetic_only(s, "kvsim plan --slo works on synthetic workloads only")
    if s.fleet.routed or s.offload.asked:
        raise UsageError(f"--solve-for {solve_for} sizes one instance: leave out --instances, --router and the tier "
                         f"sizes (--cpu-offload-gib, ...)")
    targets = parse_slo(slo)
    capacity = s.capacity()
    gpu_blocks, bs, bpt, rate = capacity.capacity_blocks, s.block_size, capacity.bytes_per_token, s.workload.arrival_rate
    cpu = solve_for == "cpu-offload"
    load_s = bpt / (s.offload.cpu_bandwidth_gbps * 1e9)

    def setup(n: int) -> tuple[int, Tiers | None]:  # (GPU blocks, tiers) of a candidate size n
        return (gpu_blocks, Tiers(n, 0, s.offload.mode, load_s) if n else None) if cpu else (n, None)

    results = {}
    for caching in (True, False):
        engine = replace(s.engine_spec(), prefix_caching=caching)
        check_possible(targets, s.workload, engine.step_time, engine.max_num_batched_tokens)

        def model_ok(n: int) -> bool:
            blocks, tiers = setup(n)
            return meets_at_rate(targets, s.workload, blocks, bs, engine, default_evaluate, s.policy, tiers)

        model_n = (0 if model_ok(0) else smallest_blocks(model_ok, gpu_blocks)) if cpu else smallest_blocks(
            model_ok, gpu_blocks)
        tried = []

        def meets(n: int) -> bool:
            tried.append({"blocks": n, **_simulate_targets(s, targets, settings, engine, rate, *setup(n))})
            return tried[-1]["meets"]

        best = None
        if cpu and not caching:  # nothing is reused: a CPU tier cannot help, the GPU alone meets or not
            model_n = 0 if model_ok(0) else None
            best = 0 if meets(0) else None
        elif model_n is not None:
            if meets(model_n):
                best = model_n
            else:
                lo, hi = model_n, None
                for _ in range(SIZE_DOUBLINGS):
                    n = max(2 * lo, gpu_blocks if cpu else 1)  # a CPU tier: from the GPU's size
                    if meets(n):
                        hi = n
                        break
                    lo = n
                if hi is not None:
                    for _ in range(SIZE_BISECTIONS):
                        mid = (lo + hi) // 2
                        if mid <= lo:
                            break
                        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
                    best = hi
        results["on" if caching else "off"] = {
            "model_blocks": model_n, "simulated_blocks": best,
            "simulated_gib": None if best is None else best * bs * bpt / GIB,
            "simulations": sorted(tried, key=lambda x: x["blocks"])}
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              "slo": [t.__dict__ for t in targets], "arrival_rate": rate, "solve_for": solve_for,
              "engine": s.engine_spec().as_dict(), "gpu_capacity_blocks": gpu_blocks, "prefix_caching": results}
    what = "CPU offload below the GPU as it is" if cpu else "KV cache on the GPU"
    lines = [*describe(s.model, capacity.as_dict(), s.workload, s.kv_dtype)[:-1], engine_line(s.engine_spec()),
             f"\ntarget: {', '.join(f'{t.name} <= {t.seconds:g} s' for t in targets)} at {rate:g} conversations/s on "
             f"one instance: the {what} it needs (simulated {settings.replications} x {settings.duration or 'auto'} s "
             f"per size)"]
    hardware = s.hardware
    for key, r in results.items():
        lines.append(f"\nprefix caching {key}:")
        n = r["model_blocks"]
        if cpu and key == "off":
            lines.append("  nothing is reused, so a CPU tier cannot help: the GPU alone")
        else:
            lines.append("  models (means):  " + (f"at least {_size_text(n, bs, bpt)}" if n is not None else
                                                   "no size is enough: the steps cannot keep up with this rate"))
        for x in r["simulations"]:
            cells = ", ".join(f"{t.name} {x[t.name]:.3f}" if x[t.name] is not None else f"{t.name} -" for t in targets)
            lines.append(f"  simulated {_size_text(x['blocks'], bs, bpt)}: {cells}, token hits "
                         f"{x['token_hit_rate']:.3f} -> {'meets' if x['meets'] else 'misses'}")
        best = r["simulated_blocks"]
        if best is None and cpu and key == "off":
            lines.append("  answer: the GPU alone misses: more instances (kvsim plan --slo gives one instance's rate)")
        elif best is None:
            lines.append("  answer: " + (f"none of the sizes tried meets the targets (up to {2 ** SIZE_DOUBLINGS}x the "
                                         f"models' answer): more instances (kvsim plan --slo gives one instance's "
                                         f"rate)" if r["simulations"] else
                                         "more instances (kvsim plan --slo gives one instance's rate)"))
        elif cpu:
            lines.append(f"  answer: " + (f"--cpu-offload-gib {math.ceil(r['simulated_gib'])}" if best else
                                          "no CPU tier: the GPU alone meets the targets"))
        else:
            line = f"  answer: {r['simulated_gib']:.1f} GiB of KV cache"
            if hardware is not None:
                total = memory_for_tokens(s.model, best * bs, s.kv_dtype, s.weight_dtype, hardware.memory_utilization,
                                          hardware.activation_reserve_gib, s.model_size_gib)
                r["gpu_memory_gib_per_gpu"] = per_gpu = total / hardware.gpus
                line += f" = {per_gpu:.1f} GiB of memory per GPU (TP {hardware.gpus})"
                if hardware.gpu != "custom":
                    line += (f": fits the {hardware.gpu}" if per_gpu <= hardware.gpu_memory_gib else
                             f": more than a {hardware.gpu} has (a larger GPU; --tp would also change the step time)")
            lines.append(line)
    return record, lines


def _size_text(blocks: int, block_size: int, bytes_per_token: float) -> str:
    return f"{blocks * block_size:,} tokens ({blocks * block_size * bytes_per_token / GIB:.1f} GiB)"
