"""The fleet flags of ``kvsim simulate`` and ``kvsim calc``: instances, router, service time."""

from __future__ import annotations

import argparse
import json
import math

from analytic.advice import DEFAULT_TARGET
from analytic.specs import check_positive
from kvsim.fleet import (BALANCE_ABS_THRESHOLD, BALANCE_REL_THRESHOLD, CACHE_THRESHOLD, DEFAULT_DECODE_PER_TOKEN,
                         DEFAULT_MAX_RUNNING, DEFAULT_PREFILL_PER_TOKEN, DEFAULT_SERVICE_PRESET, ROUTERS, ServiceModel,
                         simulate_fleet)

SERVICE_FLAGS = ("prefill_per_token", "decode_per_token", "prefill_base", "max_running")
ROUTER_OPTIONS = ("cache_threshold", "balance_abs", "balance_rel")  # the cache-aware router's keyword arguments


def add_fleet_args(p: argparse.ArgumentParser, simulation: bool) -> None:
    g = p.add_argument_group("fleet (several instances behind a router)")
    g.add_argument("--instances", type=int, help="serving instances, each with the cache capacity above (default 1)")
    if not simulation:
        g.add_argument("--router", choices=["affinity", "random"],
                       help="affinity (consistent hashing of the conversation) or random (default affinity)")
        return
    g.add_argument("--router", choices=[*ROUTERS, "all"], help="how requests pick an instance (default affinity)")
    g.add_argument("--instance-capacity-tokens", metavar="T1,T2,...",
                   help="a capacity per instance in tokens (instances of different sizes)")
    g.add_argument("--cache-threshold", type=float,
                   help=f"cache-aware: prefix share above which the best-matching instance wins (default "
                        f"{CACHE_THRESHOLD}, SGLang's)")
    g.add_argument("--balance-abs", type=int,
                   help=f"cache-aware: outstanding-request gap that counts as imbalance (default {BALANCE_ABS_THRESHOLD})")
    g.add_argument("--balance-rel", type=float,
                   help=f"cache-aware: max/min outstanding ratio that counts as imbalance (default {BALANCE_REL_THRESHOLD})")
    s = p.add_argument_group("service time (off by default: requests take no time)")
    s.add_argument("--service", action="store_true",
                   help=f"requests take time (defaults: {DEFAULT_SERVICE_PRESET} bf16 on one H100; any flag below "
                        "also turns it on)")
    s.add_argument("--prefill-per-token", type=float,
                   help=f"s per uncached prompt token (default {DEFAULT_PREFILL_PER_TOKEN:.3g})")
    s.add_argument("--decode-per-token", type=float, help=f"s per output token (default {DEFAULT_DECODE_PER_TOKEN:.3g})")
    s.add_argument("--prefill-base", type=float, help="s per request on top (default 0)")
    s.add_argument("--max-running", type=int,
                   help=f"requests served at once per instance; the rest queue (default {DEFAULT_MAX_RUNNING})")


def fleet_requested(a) -> bool:
    """Whether ``kvsim simulate`` was asked for a fleet or a service time."""
    return (a.instances is not None or a.router is not None or a.instance_capacity_tokens is not None
            or a.service or any(getattr(a, f) is not None for f in SERVICE_FLAGS))


def _capacities(a, model, capacity, error) -> list[int]:
    from analytic.sizing import capacity_from_tokens

    if a.instances is not None:
        check_positive("instances", a.instances, integer=True)
    if a.instance_capacity_tokens is None:
        return [capacity.capacity_blocks] * (1 if a.instances is None else a.instances)
    try:
        tokens = [int(t) for t in a.instance_capacity_tokens.split(",")]
    except ValueError:
        raise error(f"--instance-capacity-tokens must be integers separated by commas "
                    f"(got {a.instance_capacity_tokens!r})") from None
    if a.instances is not None and a.instances != len(tokens):
        raise error(f"--instances must equal the number of --instance-capacity-tokens ({len(tokens)}) "
                    f"(got {a.instances})")
    return [capacity_from_tokens(model, t, a.kv_dtype, a.block_size).capacity_blocks for t in tokens]


def _service(a) -> ServiceModel | None:
    values = {f: getattr(a, f) for f in SERVICE_FLAGS if getattr(a, f) is not None}
    if not (a.service or values):
        return None
    return ServiceModel(**values)


def cmd_simulate_fleet(a, model, workload, capacity, source, policies, inputs: dict, header: list[str], error) -> int:
    """``kvsim simulate`` with --instances / --router / service flags."""
    from kvsim.cli import _ci  # kvsim.cli imports this module

    capacities = _capacities(a, model, capacity, error)
    routers = tuple(ROUTERS) if a.router == "all" else (a.router or "affinity",)
    options = {name: getattr(a, name) for name in ROUTER_OPTIONS if getattr(a, name) is not None}
    if options and "cache-aware" not in routers:
        raise error("--cache-threshold, --balance-abs and --balance-rel apply to --router cache-aware only")
    service = _service(a)
    results = []
    for policy in policies:
        for router in routers:
            result = simulate_fleet(workload, capacities, router=router, policy=policy, service=service,
                                    block_size=a.block_size, duration=a.duration, warmup=a.warmup,
                                    replications=a.replications, seed=a.seed, source=source,
                                    router_options=options if router == "cache-aware" else None)
            record = result.as_dict()
            record["model"] = _fleet_prediction(workload, capacities, router, policy, a.block_size, source)
            results.append(record)
    if a.json:
        record = {"inputs": inputs, **results[0]} if len(results) == 1 else {"inputs": inputs, "results": results}
        print(json.dumps(record, indent=2))
        return 0
    same = len(set(capacities)) == 1
    fleet = (f"{len(capacities)} instance{'s' if len(capacities) > 1 else ''} x {capacities[0]:,} blocks" if same
             else f"{len(capacities)} instances of {', '.join(f'{c:,}' for c in capacities)} blocks")
    print("\n".join(header))
    print(f"fleet     {fleet}; " + ("no service time (requests take no time)" if service is None else
          f"service {service.prefill_per_token:.3g} s/uncached prompt token + {service.decode_per_token:.3g} s/output "
          f"token, {service.max_running} at once per instance"))
    print(f"simulated {a.duration:g} s of arrivals, warm-up {a.warmup:g} s, {a.replications} replications, "
          f"seed {a.seed}; mean [95% CI]\n")
    print(f"{'policy':6} {'router':12} {'token_hit_rate':>26} {'request_hit_rate':>26} {'imbalance':>9} "
          f"{'model token / request':>22}")
    for r in results:
        m = r["model"]
        predicted = f"{m['token_hit_rate']:.4f} / {m['request_hit_rate']:.4f}" if m else "-"
        print(f"{r['policy']:6} {r['router']:12} {_ci(r['token_hit_rate']):>26} {_ci(r['request_hit_rate']):>26} "
              f"{r['load_imbalance']['mean']:>9.3f} {predicted:>22}")
    print("\ntoken hit rate by instance (share of requests):")
    for r in results:
        parts = "  ".join(f"{i['token_hit_rate']['mean']:.3f} ({i['request_share']:.2f})" for i in r["per_instance"][:8])
        more = " ..." if len(r["per_instance"]) > 8 else ""
        print(f"{r['policy']:6} {r['router']:12} {parts}{more}")
    if service is not None:
        print(f"\nlatency (s)         {'queue mean':>10} {'queue p99':>10} {'TTFT mean':>10} {'TTFT p50':>10} "
              f"{'TTFT p99':>10} {'waiting at end':>15}")
        for r in results:
            q, t = r["queue_delay_s"], r["ttft_s"]
            cells = (q["mean"]["mean"], q["p99"], t["mean"]["mean"], t["p50"], t["p99"])
            print(f"{r['policy']:6} {r['router']:12} " + " ".join(_seconds(x) for x in cells)
                  + f" {r['waiting_at_end']:>15,}")
    return 0


def _fleet_prediction(workload, capacities, router, policy, block_size, source) -> dict | None:
    """The fleet model of this router and policy, if there is one (synthetic workloads: affinity
    with LRU or FIFO, random with LRU; the models take no service time)."""
    from analytic.fleet import FLEET_ROUTERS, fleet_model

    if source is not None or router not in FLEET_ROUTERS or policy not in ("lru", "fifo") or (
            router == "random" and policy != "lru"):
        return None
    m = fleet_model(workload, capacities, router, policy, block_size)
    return {"token_hit_rate": m.token_hit_rate, "request_hit_rate": m.request_hit_rate, "variant": m.variant}


def _seconds(x) -> str:
    return f"{'-':>10}" if x is None else f"{x:>10.4f}"



def calc_requested(a) -> bool:
    return a.instances is not None or a.router is not None


def cmd_calc_fleet(a, model, workload, capacity, header: list[str], error) -> int:
    """``kvsim calc --instances N --router affinity|random``: the fleet models."""
    from analytic.calc import inputs_summary
    from analytic.fleet import fleet_model

    instances = 1 if a.instances is None else a.instances
    check_positive("instances", instances, integer=True)
    router = a.router or "affinity"
    if a.method == "seed":
        raise error("--method seed has no fleet version: use lru or fifo with --instances/--router")
    if router == "random" and a.method == "fifo":
        raise error("--method fifo has no model for --router random: use lru (or --router affinity)")
    methods = ("lru", "fifo") if a.method == "all" and router == "affinity" else (
        ("lru",) if a.method == "all" else (a.method,))
    capacities = [capacity.capacity_blocks] * instances
    results = {m: fleet_model(workload, capacities, router, m, a.block_size) for m in methods}
    # The other router, for comparison (LRU: the one model both have).
    other = "random" if router == "affinity" else "affinity"
    contrast = fleet_model(workload, capacities, other, "lru", a.block_size)
    advice = fleet_advice(a, instances, router) if a.advise else None
    if a.json:
        record = {"inputs": {**inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype),
                             "instances": instances, "router": router},
                  "memory": capacity.as_dict(),
                  "methods": {m: r.as_dict() for m, r in results.items()},
                  f"lru_{other}": contrast.as_dict()}
        if advice is not None:
            record["advice"] = advice
        print(json.dumps(record, indent=2))
        return 0
    print("\n".join(header))
    how = {"affinity": "every turn of a conversation on the same instance (consistent hashing)",
           "random": "each request to an instance at random"}
    print(f"fleet     {instances} instance{'s' if instances > 1 else ''} x {capacity.capacity_blocks:,} blocks, "
          f"router {router}: {how[router]}")
    print(f"\n{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17} {'T (s)':>10}")
    for name, r in results.items():
        T = r.per_instance[0].characteristic_time
        print(f"{name:8} {r.token_hit_rate:>15.4f} {r.request_hit_rate:>17.4f} {T:>10,.1f}")
    if "lru" in results:
        gain = contrast.token_hit_rate - results["lru"].token_hit_rate
        print(f"\nwith router {other}, LRU would reach a token hit rate of {contrast.token_hit_rate:.4f} "
              f"({100 * gain:+.1f} points)")
    if advice is not None:
        from kvsim.report import advice_lines

        print()
        print("\n".join(advice_lines(a, advice)))
    return 0


def fleet_advice(a, instances: int, router: str) -> list[dict]:
    """``analytic.advice.fleet_advise`` for the command line's scenario."""
    from analytic.advice import fleet_advise
    from kvsim.report import scenario_from_args

    return fleet_advise(scenario_from_args(a), instances, router,
                        target=getattr(a, "target_hit_rate", None) or DEFAULT_TARGET)


def cmd_plan_fleet(a, model, workload, hardware, capacity, header: list[str], error) -> int:
    """``kvsim plan --instances N --router affinity|random``: cache per instance for a target."""
    from analytic.calc import inputs_summary
    from analytic.fleet import capacity_to_match, fleet_model
    from analytic.sizing import GIB, memory_for_tokens

    instances = 1 if a.instances is None else a.instances
    check_positive("instances", instances, integer=True)
    router = a.router or "affinity"
    if a.metric != "token":
        raise error("--metric request has no fleet version: the fleet plan targets the token hit rate")
    if a.check:
        raise error("--check simulates one instance: use kvsim simulate --instances/--router at the planned capacity")
    if router == "random" and a.method == "fifo":
        raise error("--method fifo has no model for --router random: use lru (or --router affinity)")

    def plan_for(r: str) -> dict:
        try:
            blocks = capacity_to_match(workload, a.target_hit_rate, instances, r, a.method, a.block_size)
        except ValueError as e:
            return {"router": r, "error": str(e)}
        tokens = blocks * a.block_size
        out = {"router": r, "capacity_blocks_per_instance": blocks, "capacity_tokens_per_instance": tokens,
               "kv_cache_gib_per_instance": tokens * capacity.bytes_per_token / GIB,
               "token_hit_rate": fleet_model(workload, [blocks] * instances, r, a.method, a.block_size).token_hit_rate}
        if hardware is not None:
            per_instance = memory_for_tokens(model, tokens, a.kv_dtype, a.weight_dtype, hardware.memory_utilization,
                                             hardware.activation_reserve_gib, a.model_size_gb)
            out["gpu_memory_gib_per_instance"] = per_instance
            if hardware.gpu != "custom":
                out["gpus_per_instance"] = math.ceil(per_instance / hardware.gpu_memory_gib)
                out["gpu"] = hardware.gpu
        return out

    plans = [plan_for(router)]
    other = "random" if router == "affinity" else "affinity"
    if a.method == "lru":
        plans.append(plan_for(other))
    if "error" in plans[0]:
        raise error(plans[0]["error"])
    if a.json:
        inputs = {**inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype),
                  "instances": instances}
        print(json.dumps({"inputs": inputs, "target_hit_rate": a.target_hit_rate, "metric": "token",
                          "method": a.method, "plans": plans}, indent=2))
        return 0
    print("\n".join(header))
    print(f"\ntarget: token hit rate >= {a.target_hit_rate:g} ({a.method.upper()} fleet model), {instances} instances")
    for plan in plans:
        if "error" in plan:
            print(f"{plan['router']:9} {plan['error']}")
            continue
        line = (f"{plan['router']:9} {plan['capacity_tokens_per_instance']:,} tokens = "
                f"{plan['capacity_blocks_per_instance']:,} blocks = {plan['kv_cache_gib_per_instance']:.1f} GiB of KV "
                f"cache per instance ({instances * plan['kv_cache_gib_per_instance']:.1f} GiB in all)")
        if "gpus_per_instance" in plan:
            line += f"; {plan['gpus_per_instance']} x {plan['gpu']} per instance"
        print(line)
    return 0
