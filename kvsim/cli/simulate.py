"""``kvsim simulate``: the discrete-event simulation, one instance or a fleet behind routers."""

from __future__ import annotations

import argparse
import json

from analytic.scenario import MAMBA_PREFIX_CACHE_MODES, Scenario, inputs_summary
from kvsim.cli.args import (SimulationSettings, UsageError, add_fleet_args, add_json_arg, add_offload_args,
                            add_scenario_args, add_simulation_args, load_templates, scenario_from_values, simulation_from_values)
from kvsim.cli.engine_args import add_engine_args
from kvsim.cli.parser import output_file
from kvsim.cli.text import add_tier_bytes, ci, describe, offload_line, offload_summary, seconds
from kvsim.defaults import ROUTER_NAMES
from kvsim.policies import POLICIES


def configure(p: argparse.ArgumentParser) -> None:
    add_scenario_args(p)
    p.add_argument("--policy", default="lru", choices=[*POLICIES, "all"], help="eviction policy (default lru)")
    add_fleet_args(p, simulation=True)
    add_engine_args(p)
    add_offload_args(p)
    add_hybrid_cache_args(p)
    add_simulation_args(p)
    add_json_arg(p)
    p.set_defaults(func=cmd)


def add_hybrid_cache_args(p: argparse.ArgumentParser, vllm: bool = True) -> None:
    """``--vllm`` (``kvsim replay`` has its own) and ``--mamba-cache-mode``."""
    g = p.add_argument_group("vLLM's hybrid KV cache manager (models with sliding-window or Mamba layers)")
    if vllm:
        g.add_argument("--vllm", action="store_true",
                       help="serve a hybrid model through vLLM's hybrid KV cache manager: its KV cache groups, their "
                            "hit rules and one pool of blocks, sized as kvsim calc sizes it (default: one group in "
                            "which every layer caches every token, the upper bound); other models are unchanged")
    g.add_argument("--mamba-cache-mode", choices=MAMBA_PREFIX_CACHE_MODES,
                   help="with --vllm: where Mamba states are cached: align (vLLM 0.33, the default: where a prefill "
                        "chunk ends and at the decode's block boundaries) or all (older vLLM: at every block boundary)")


def cmd(a) -> int:
    requests_out = output_file("--requests-out", a.requests_out)
    scenario = scenario_from_values(vars(a))
    settings = simulation_from_values(vars(a))
    if requests_out and (settings.replications != 1 or a.policy == "all" or scenario.fleet.router == "all"):
        raise UsageError("--requests-out writes the requests of one run: give --replications 1 and one --policy "
                         "and --router")
    record, lines = simulate_record(scenario, a.policy, settings, progress=None, requests_out=requests_out)
    if a.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(lines))
    return 0


def simulate_record(scenario: Scenario, policy: str, settings: SimulationSettings,
                    progress: bool | None = None, requests_out: str | None = None) -> tuple[dict, list[str]]:
    """``kvsim simulate``'s JSON record and its text: one result per policy (and router), under
    ``results`` when there are several. ``requests_out``: write the requests of the (one) run
    there, one row each (:data:`kvsim.step_engine.REQUEST_COLUMNS`)."""
    from kvsim.engine import run_window, simulate

    s = scenario
    capacity = s.capacity()
    hybrid = hybrid_layout(s, policy, requests_out)
    source = None
    if s.conversations is not None:
        from kvsim.templates import template_source

        source, _ = template_source(load_templates(s.conversations, s.block_size))
    duration, warmup = run_window(s.workload, settings.duration, settings.warmup, source)
    window = SimulationSettings(duration, warmup, settings.replications, settings.seed, settings.max_events)
    policies = tuple(POLICIES) if policy == "all" else (policy,)
    inputs = inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype,
                            duration=duration, warmup=warmup, seed=settings.seed,
                            capacity_tokens=capacity.capacity_tokens,
                            conversations=list(s.conversations) if s.conversations else None)
    header = describe(s.model, capacity.as_dict(), s.workload, s.kv_dtype)
    if hybrid is not None:
        plan = s.hybrid_plan()  # vLLM's pool for the same KV memory, as kvsim calc sizes it
        pool = plan.pool_blocks
        inputs["hybrid_cache"] = {**hybrid.as_dict(), "capacity_blocks": pool, "plan": plan.as_dict()}
        header += [f"cache     vLLM's hybrid KV cache manager: {hybrid.describe()}",
                   f"          {pool:,} blocks of {hybrid.block_size} tokens (vLLM's num_gpu_blocks, {plan.num_blocks:,}, "
                   "less its null block) instead of the capacity above"]
    if s.conversations is not None:
        header[-1] = (f"workload  {s.workload.arrival_rate:g} conversations/s, each replaying one of "
                      f"{len(load_templates(s.conversations, s.block_size).templates):,} template conversations "
                      f"({', '.join(s.conversations)})")
    tiers = s.tiers()
    if tiers is not None:
        inputs["offload"] = offload_summary(tiers, capacity.bytes_per_token, s.block_size)
        header.append(offload_line(tiers, capacity.bytes_per_token, s.block_size))
    engine = s.engine_spec() if s.engine.enabled else None
    if engine is not None:
        inputs["engine"] = engine.as_dict()
        header.append(engine_line(engine))
    if s.fleet.simulated or engine is not None or requests_out:
        results = _fleet_results(s, source, policies, window, progress, tiers, engine, requests_out)
    elif hybrid is not None:
        results = [simulate(s.workload, inputs["hybrid_cache"]["capacity_blocks"], policy, block_size=hybrid.block_size,
                            duration=duration, warmup=warmup, replications=settings.replications, seed=settings.seed,
                            progress=progress, max_events=settings.max_events, hybrid=hybrid).as_dict()]
    else:
        results = [simulate(s.workload, capacity.capacity_blocks, p, block_size=s.block_size, duration=duration,
                            warmup=warmup, replications=settings.replications, seed=settings.seed, source=source,
                            progress=progress, max_events=settings.max_events, tiers=tiers).as_dict()
                   for p in policies]
    if tiers is not None:
        for r in results:
            add_tier_bytes(r["tiers"], s.block_size, capacity.bytes_per_token)
    record = {"inputs": inputs, **results[0]} if len(results) == 1 else {"inputs": inputs, "results": results}
    lines = header + (_fleet_lines(s, results, window) if s.fleet.simulated or engine is not None or requests_out
                      else _lines(results, window))
    if requests_out:
        lines.append(f"\nrequests: {requests_out}")
    return record, lines


def hybrid_layout(s: Scenario, policy: str, requests_out: str | None = None):
    """vLLM's KV cache groups (:func:`kvsim.hybrid_cache.vllm_layout`) when the scenario asks for its
    hybrid KV cache manager (--vllm on a hybrid model), else None: today's single pool."""
    mamba = any(g.kind == "mamba" for g in s.model.groups)
    if s.mamba_cache_mode != "align" and not (s.vllm and mamba):
        raise UsageError("--mamba-cache-mode applies with --vllm to models with Mamba / linear-attention layers")
    if s.vllm and mamba and not s.hybrid_allocator:
        try:
            s.hybrid_plan()  # refuses, as vLLM does
        except ValueError as e:
            raise UsageError(f"--{e}") from None
    if not s.hybrid_cache:
        return None
    unsupported = [flag for flag, given in (("--instances/--router", s.fleet.simulated), ("--engine", s.engine.enabled),
                                            ("the offload tiers", s.offload.asked),
                                            ("--conversations", s.conversations is not None),
                                            ("--requests-out", bool(requests_out))) if given]
    if unsupported:
        raise UsageError(f"{unsupported[0]}: vLLM's hybrid KV cache manager (--vllm on a hybrid model) is simulated "
                         "on one instance of the synthetic workload, without the engine or offload tiers (leave out "
                         "--vllm for the upper bound)")
    from kvsim.hybrid_cache import POLICIES as HYBRID_POLICIES, vllm_layout

    if policy not in HYBRID_POLICIES:
        raise UsageError(f"--policy: vLLM's hybrid KV cache manager evicts LRU; kvsim also runs its pool FIFO "
                         f"(one of {', '.join(HYBRID_POLICIES)}; got {policy})")
    return vllm_layout(s.model, s.block_size, kv_dtype=s.kv_dtype, tp=s.hardware.gpus if s.hardware else 1,
                       mamba_cache_mode=s.mamba_cache_mode, policy=policy)


def engine_line(engine) -> str:
    return (f"engine    vLLM scheduler: {engine.max_num_batched_tokens:,} tokens and {engine.max_num_seqs:,} requests "
            f"per step, prefix caching {'on' if engine.prefix_caching else 'off'}; step time "
            f"{engine.step_time.describe()}")


def write_requests(path: str, requests) -> None:
    """One row per request (:data:`kvsim.step_engine.REQUEST_COLUMNS`), written atomically."""
    import csv
    import io

    from kvsim.batch import write_atomic
    from kvsim.step_engine import REQUEST_COLUMNS, request_rows

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(REQUEST_COLUMNS)
    w.writerows(request_rows(requests))
    write_atomic(path, out.getvalue())


def tier_cell(r: dict) -> str:
    """The token hit rate of each tier, GPU first: "0.497 + 0.330"."""
    return " + ".join(f"{t['token_hit_rate']['mean']:.3f}" for t in r["tiers"].values())


def check_size(scenario: Scenario, settings: SimulationSettings) -> None:
    """Refuse, before any work, a synthetic simulation above ``settings.max_events`` requests
    (what ``simulate_record`` would refuse when it starts)."""
    from kvsim.engine import checked_source, run_window

    if scenario.conversations is None:
        duration, warmup = run_window(scenario.workload, settings.duration, settings.warmup, None)
        checked_source(scenario.workload, None, scenario.block_size, duration, warmup, settings.replications,
                       settings.seed, settings.max_events)


def _window_line(w: SimulationSettings) -> str:
    return (f"simulated {w.duration:g} s of arrivals, warm-up {w.warmup:g} s, {w.replications} replications, "
            f"seed {w.seed}; mean [95% CI]\n")


def _policy_width(results: list[dict]) -> int:
    return max(6, *(len(r["policy"]) for r in results))


def _lines(results: list[dict], window: SimulationSettings) -> list[str]:
    pw = _policy_width(results)
    tiered = "tiers" in results[0]
    names = " + ".join(results[0]["tiers"]) if tiered else ""
    tier_head = f" {'token hits ' + names:>{max(22, len(names) + 11)}}" if tiered else ""
    lines = [_window_line(window),
             f"{'policy':{pw}} {'token_hit_rate':>26}{tier_head} {'request_hit_rate':>26} {'evictions':>10} "
             f"{'oversized':>9} {'requests':>9}"]
    for r in results:
        cells = f" {tier_cell(r):>{max(22, len(names) + 11)}}" if tiered else ""
        lines.append(f"{r['policy']:{pw}} {ci(r['token_hit_rate']):>26}{cells} {ci(r['request_hit_rate']):>26} "
                     f"{r['evictions']:>10,} {r['oversized']:>9,} {r['requests_measured']:>9,}")
    lines.append("\nhit probability by turn:")
    for r in results:
        turns = "  ".join(f"{k}:{p:.3f}" for k, p in list(r["per_turn_hit"].items())[:12])
        lines.append(f"{r['policy']:{pw}} {turns}")
    return lines


# ----------------------------------------------------------------------------- fleets


def _fleet_results(s: Scenario, source, policies, w: SimulationSettings, progress, tiers=None, engine=None,
                   requests_out: str | None = None) -> list[dict]:
    """``--instances`` / ``--router`` / engine flags: the fleet simulator, with its model beside."""
    from kvsim.fleet import simulate_fleet

    capacities = s.instance_capacities()
    routers = ROUTER_NAMES if s.fleet.router == "all" else (s.fleet.router or "affinity",)
    options = s.fleet.router_options()
    if options and "cache-aware" not in routers:
        raise UsageError("--cache-threshold, --balance-abs and --balance-rel apply to --router cache-aware only")
    results = []
    for policy in policies:
        for router in routers:
            result = simulate_fleet(s.workload, capacities, router=router, policy=policy,
                                    block_size=s.block_size, duration=w.duration, warmup=w.warmup,
                                    replications=w.replications, seed=w.seed, source=source,
                                    router_options=options if router == "cache-aware" else None, progress=progress,
                                    max_events=w.max_events, tiers=tiers, engine=engine,
                                    keep_requests=bool(requests_out))
            if requests_out:
                write_requests(requests_out, _all_requests(result))
            record = result.as_dict()
            record["model"] = _fleet_prediction(s, capacities, router, policy, source)
            results.append(record)
    return results


def _all_requests(result) -> list:
    if result.serving is not None:
        return [q for stats in result.serving[0] for q in stats.requests]
    return result.requests


def _fleet_prediction(s: Scenario, capacities, router, policy, source) -> dict | None:
    """The fleet model of this router and policy, if there is one (synthetic workloads: affinity
    with LRU or FIFO, random with LRU; the models take no load into account)."""
    from analytic.fleet import FLEET_ROUTERS, fleet_model

    if source is not None or router not in FLEET_ROUTERS or policy not in ("lru", "fifo") or (
            router == "random" and policy != "lru"):
        return None
    m = fleet_model(s.workload, capacities, router, policy, s.block_size)
    return {"token_hit_rate": m.token_hit_rate, "request_hit_rate": m.request_hit_rate, "variant": m.variant}


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"  # None: an instance that served no measured request


def _fleet_lines(s: Scenario, results: list[dict], window: SimulationSettings) -> list[str]:
    capacities = s.instance_capacities()
    same = len(set(capacities)) == 1
    fleet = (f"{len(capacities)} instance{'s' if len(capacities) > 1 else ''} x {capacities[0]:,} blocks" if same
             else f"{len(capacities)} instances of {', '.join(f'{c:,}' for c in capacities)} blocks")
    lines = [f"fleet     {fleet}; " + ("served by the engine above" if results[0].get("engine") else
                                        "no service time (requests take no time)"),
             _window_line(window),
             f"{'policy':6} {'router':12} {'token_hit_rate':>26} {'request_hit_rate':>26} {'imbalance':>9} "
             f"{'model token / request':>22}"]
    for r in results:
        m = r["model"]
        predicted = f"{m['token_hit_rate']:.4f} / {m['request_hit_rate']:.4f}" if m else "-"
        lines.append(f"{r['policy']:6} {r['router']:12} {ci(r['token_hit_rate']):>26} "
                     f"{ci(r['request_hit_rate']):>26} {r['load_imbalance']['mean']:>9.3f} {predicted:>22}")
    lines.append("\ntoken hit rate by instance (share of requests):")
    for r in results:
        parts = "  ".join(f"{_rate(i['token_hit_rate']['mean'])} ({i['request_share']:.2f})"
                          for i in r["per_instance"][:8])
        more = " ..." if len(r["per_instance"]) > 8 else ""
        lines.append(f"{r['policy']:6} {r['router']:12} {parts}{more}")
    if results[0].get("serving"):
        lines += serving_lines(results)
    return lines


def serving_lines(results: list[dict], label=lambda r: f"{r['policy']:6} {r['router']:12}") -> list[str]:
    """The engine's figures of each result: latencies (mean, p50, p90, p99), throughput, KV usage."""
    lines = [f"\nlatency (s)              {'mean':>9} {'p50':>9} {'p90':>9} {'p99':>9}"]
    names = {"ttft_s": "TTFT", "tpot_s": "TPOT", "itl_s": "ITL", "e2e_s": "E2E", "queue_s": "queue"}
    for r in results:
        for key, name in names.items():
            m = r["serving"][key]
            lines.append(f"{label(r)[:19]:19} {name:5} " + " ".join(seconds(x) for x in
                                                                (m["mean"]["mean"], m["p50"], m["p90"], m["p99"])))
    lines.append(f"\n{'':19} {'requests/s':>10} {'input tok/s':>12} {'output tok/s':>13} {'preemptions':>11} "
                 f"{'KV usage mean/peak':>19} {'cached':>7} {'waiting at end':>14}")
    for r in results:
        v = r["serving"]
        t, kv = v["throughput"], v["kv_usage"]
        lines.append(f"{label(r)[:19]:19} {t['requests_per_s']['mean']:>10.3f} {t['input_tokens_per_s']['mean']:>12,.0f} "
                     f"{t['output_tokens_per_s']['mean']:>13,.0f} {v['preemptions']:>11,} "
                     f"{kv['mean']['mean']:>10.3f} / {kv['peak']:.3f} {kv['cached_mean']['mean']:>7.3f} "
                     f"{v['waiting_at_end']:>14,}")
    return lines
