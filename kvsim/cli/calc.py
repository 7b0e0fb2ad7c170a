"""``kvsim calc``: sizing and the analytic models (one instance, a fleet, or template conversations)."""

from __future__ import annotations

import argparse
import json

from analytic.scenario import METHODS, MODEL_POLICIES, Scenario, inputs_summary
from analytic.specs import DEFAULT_TARGET
from kvsim.cli.args import (UsageError, add_advise_args, add_fleet_args, add_json_arg, add_offload_args,
                            add_scenario_args, load_templates, scenario_from_values)
from kvsim.cli.engine_args import add_engine_args
from kvsim.cli.text import describe, fmt, offload_line, offload_summary


def configure(p: argparse.ArgumentParser) -> None:
    add_scenario_args(p)
    p.add_argument("--method", default="all", choices=[*METHODS, "all"],
                   help="seed (the original calculator), lru, fifo (characteristic-time models) or all")
    add_json_arg(p)
    add_fleet_args(p, simulation=False)
    add_engine_args(p, requests_out=False)
    add_offload_args(p)
    add_advise_args(p)
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    scenario = scenario_from_values(vars(a))
    record = calc_record(scenario, a.method, advise=a.advise, target=a.target_hit_rate,
                         hybrid_allocator=not getattr(a, "no_hybrid_allocator", False))
    if a.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(calc_lines(scenario, record)))
    return 0


def calc_record(scenario: Scenario, method: str = "all", *, advise: bool = False, target: float | None = None,
                hybrid_allocator: bool = True) -> dict:
    """What ``kvsim calc --json`` prints: ``{"inputs", "memory", "methods": {name: {...}}}`` (+ ``advice``).

    A hybrid model (sliding-window or Mamba / linear-attention layers) on one instance is sized as
    vLLM's hybrid KV cache manager does (:func:`hybrid_capacity`; ``memory.hybrid``) unless
    ``hybrid_allocator`` is False (vLLM's ``--disable-hybrid-kv-cache-manager``: the upper bound)."""
    if scenario.offload.asked and (scenario.conversations is not None or scenario.fleet.routed):
        raise UsageError("the tiered models take one instance of a synthetic workload: use kvsim simulate for "
                         "offload with --conversations, --instances or --router")
    if scenario.conversations is not None:
        if advise:
            raise UsageError("--advise works on synthetic workloads only, not with --conversations")
        if scenario.fleet.routed:
            raise UsageError("--instances/--router: the fleet models work on synthetic workloads only; "
                             "use kvsim simulate --instances with --conversations")
        return _templates_record(scenario, method)
    if scenario.fleet.routed:
        return _fleet_record(scenario, method, advise, target)
    from analytic.calc import calculate

    s = scenario
    capacity = s.capacity()
    if s.model.is_hybrid and s.tiers() is None:
        capacity = hybrid_capacity(s, capacity, hybrid_allocator)
    elif any(g.kind == "mamba" for g in s.model.groups):
        raise UsageError("offload tiers are not modelled for models with Mamba / linear-attention layers")
    methods = METHODS if method == "all" else (method,)
    pool = capacity.hybrid is not None and capacity.hybrid["hybrid_allocator"]
    # A hybrid's pool as it is, group by group (validated against the hybrid cache:
    # experiments/validate.py --hybrid-only), not the pool in tokens at the mean prompt.
    by_pool = ("lru", "fifo") if pool else ()
    result = calculate(s.model, capacity, s.workload, kv_dtype=s.kv_dtype, model_size_gb=s.weights_gib(),
                       methods=tuple(m for m in methods if m not in by_pool))
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
              **result}
    if pool:
        from analytic.hybrid_fifo import hybrid_fifo_model
        from analytic.hybrid_lru import hybrid_lru_model

        record["memory"].pop("bytes_per_token_note", None)  # the hybrid plan replaces the upper bound
        h = capacity.hybrid
        groups = [(g["kind"], g["window"], g["groups"]) for g in h["groups"]]
        computed = record["methods"]
        for name, model in (("lru", hybrid_lru_model), ("fifo", hybrid_fifo_model)):
            if name in methods:  # vLLM's null block left out
                r = model(s.workload, groups, h["pool_blocks"], h["block_size"], h["mamba_cache_mode"])
                computed[name] = {**r.as_dict(), "variant": "hybrid pool"}
        record["methods"] = {name: computed[name] for name in methods}
    if s.tiers() is not None:
        _tiered_methods(s, record)
    if s.engine.enabled:
        if s.tiers() is not None or capacity.hybrid is not None:
            raise UsageError("--engine in kvsim calc: the models under load take one instance of a full-attention "
                             "model without offload tiers (kvsim simulate --engine has them all)")
        record["under_load"] = _under_load(s, capacity.capacity_blocks, [m for m in methods if m in MODEL_POLICIES])
    if advise:
        record["advice"] = scenario_advice(s, target)
    return record


def _under_load(s: Scenario, capacity_blocks: int, methods) -> dict:
    """The models under load (analytic.load): per method, the steady state at the workload's
    arrival rate and the largest sustainable rate, with the engine's step time and limits."""
    from analytic.load import saturation_rate, under_load
    from analytic.scenario import default_evaluate

    engine = s.engine_spec()
    out = {"engine": engine.as_dict(), "methods": {}}
    for name in methods:
        r = under_load(s.workload, capacity_blocks, s.block_size, engine, default_evaluate, name)
        rate = saturation_rate(s.workload, capacity_blocks, s.block_size, engine, default_evaluate, name)
        out["methods"][name] = {**r.as_dict(), "saturation_arrival_rate": rate,
                                "saturation_requests_per_s": rate * s.workload.turns.mean,
                                "kv_usage": None if r.held_blocks is None else r.held_blocks / capacity_blocks}
    return out


def _under_load_lines(s: Scenario, record: dict) -> list[str]:
    u = record["under_load"]
    from kvsim.cli.simulate import engine_line
    lines = ["", engine_line(s.engine_spec()),
             f"under load ({s.workload.arrival_rate:g} conversations/s = {s.workload.requests_per_second:g} "
             "requests/s; mean-value model, analytic/load.py):",
             f"{'method':8} {'token hits':>10} {'(no load)':>9} {'step ms':>8} {'batch':>6} {'KV usage':>8} "
             f"{'TTFT ms':>8} {'TPOT ms':>8} {'sustains up to':>22}"]
    for name, m in u["methods"].items():
        most = f"{m['saturation_arrival_rate']:.3g} conv/s = {m['saturation_requests_per_s']:.3g} req/s"
        if m["saturated"]:
            lines.append(f"{name:8} {'-':>10} {m['instant_token_hit_rate']:>9.4f}  saturated: {m['saturated']}; "
                         f"sustains up to {most}")
            continue
        lines.append(f"{name:8} {m['token_hit_rate']:>10.4f} {m['instant_token_hit_rate']:>9.4f} "
                     f"{1000 * m['step_s']:>8.2f} {m['batch']:>6.1f} {m['kv_usage']:>8.3f} {1000 * m['ttft_s']:>8.1f} "
                     f"{1000 * m['tpot_s']:>8.2f} {most:>22}")
    if "seed" in record["methods"]:
        lines.append(f"(the seed model's qps, {fmt(record['methods']['seed']['derived_qps'])}, is the offered load, "
                     "not what the instance sustains)")
    return lines


def _tiered_methods(s: Scenario, record: dict) -> None:
    """With tiers below the GPU: the LRU and FIFO entries become the tiered models (totals over
    the tiers, ``tiers`` per tier, the prefill time ``ttft`` with and without the lower tiers, and
    the single-tier model as ``gpu_only``); the seed model stays single-tier."""
    from analytic.tiers import tiered_model

    tiers, capacity = s.tiers(), s.capacity()
    record["inputs"]["offload"] = offload_summary(tiers, capacity.bytes_per_token, s.block_size)
    caps = (capacity.capacity_blocks, tiers.cpu_blocks, tiers.disk_blocks)[:len(tiers.names)]
    bandwidths = {"cpu": s.offload.cpu_bandwidth_gbps, "disk": s.offload.disk_bandwidth_gbps}
    for name in [m for m in record["methods"] if m in MODEL_POLICIES]:
        m = tiered_model(s.workload, caps, s.block_size, name, tiers.mode, capacity.bytes_per_token)
        record["methods"][name] = {
            "token_hit_rate": m.token_hit_rate, "request_hit_rate": m.request_hit_rate,
            "block_hit_rate": m.block_hit_rate, "tiers": m.tiers,
            "ttft": m.ttft(None, {k: v for k, v in bandwidths.items() if k in m.tiers}),
            "gpu_only": record["methods"][name]}


def calc_lines(scenario: Scenario, record: dict) -> list[str]:
    if scenario.conversations is not None:
        return _templates_lines(scenario, record)
    if scenario.fleet.routed:
        return _fleet_lines(scenario, record)
    s = scenario
    lines = describe(s.model, record["memory"], s.workload, s.kv_dtype)
    if "hybrid" in record["memory"]:
        lines += hybrid_lines(record["memory"]["hybrid"])
    tiers = s.tiers()
    if tiers is None:
        lines += ["", f"{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17}"]
        for name, m in record["methods"].items():
            lines.append(f"{name:8} {fmt(m['token_hit_rate']):>15} {fmt(m['request_hit_rate']):>17}")
    else:
        lines += _tiered_lines(s, tiers, record)
    if "seed" in record["methods"]:
        lines.append("\nseed model (the original calculator's outputs):")
        for key, value in record["methods"]["seed"].items():
            if key not in ("token_hit_rate", "request_hit_rate"):
                lines.append(f"  {key:26} {fmt(value)}")
    if "under_load" in record:
        lines += _under_load_lines(s, record)
    if "advice" in record:
        lines += ["", *advice_lines(s, record["advice"])]
    return lines


def _tiered_lines(s: Scenario, tiers, record: dict) -> list[str]:
    capacity = s.capacity()
    names = " + ".join(tiers.names)
    head = f"{'token hits ' + names:>{len(names) + 11}}"
    lines = [offload_line(tiers, capacity.bytes_per_token, s.block_size), "",
             f"{'method':8} {'token_hit_rate':>15} {head} {'request_hit_rate':>17} {'GPU alone':>10} "
             f"{'prefill s (GPU alone)':>22}"]
    for name, m in record["methods"].items():
        if "tiers" not in m:
            lines.append(f"{name:8} {fmt(m['token_hit_rate']):>15} {'(single tier)':>{len(head)}} "
                         f"{fmt(m['request_hit_rate']):>17}")
            continue
        cells = " + ".join(f"{t['token_hit_rate']:.3f}" for t in m["tiers"].values())
        ttft = m["ttft"]
        lines.append(f"{name:8} {m['token_hit_rate']:>15.4f} {cells:>{len(head)}} {m['request_hit_rate']:>17.4f} "
                     f"{m['gpu_only']['token_hit_rate']:>10.4f} {ttft['tiered']:>10.4f} ({ttft['gpu_only']:.4f})")
    lines.append("prefill s: the mean time to first token without queueing (the linear prefill rate of analytic.service; "
                 "loads from below the GPU at the tiers' bandwidth, not overlapped with compute)")
    return lines


# ----------------------------------------------------------------------------- hybrid models


def hybrid_capacity(s: Scenario, capacity, hybrid_allocator: bool = True):
    """``capacity`` (the upper bound: every layer caches every token) as vLLM's KV cache manager
    has it for a hybrid model (:func:`analytic.hybrid.plan`): the same KV memory in vLLM's pool of
    blocks, and for the hit-rate models the pool in tokens of context at the workload's mean prompt
    (blocks x prompt / blocks one such sequence keeps over all groups) in blocks of vLLM's size."""
    from dataclasses import replace

    from analytic import hybrid, seed
    from analytic.calc import mean_prompt_tokens
    from analytic.specs import DTYPE_BYTES
    from analytic.steptime import DEFAULT_MAX_NUM_BATCHED_TOKENS, default_engine_limits

    hw = s.hardware
    kv_bytes = s.kv_cache_bytes()
    tp = hw.gpus if hw is not None else 1
    batched = default_engine_limits(hw.gpu_memory_gib, hw.gpu)[0] if hw is not None else DEFAULT_MAX_NUM_BATCHED_TOKENS
    w = s.workload
    ctx = max(1, round(mean_prompt_tokens(w)))
    length = s.model.max_context or max(1, round(w.system_prompt_tokens + w.turns.mean * w.tokens_per_turn))
    try:
        p = hybrid.plan(s.model, kv_bytes, kv_dtype=s.kv_dtype, block_size=s.block_size, tp=tp, max_model_len=length,
                        max_num_batched_tokens=batched, hybrid_allocator=hybrid_allocator)
    except ValueError as e:
        raise UsageError(f"--{e}" if str(e).startswith("no-hybrid") else str(e)) from None
    tokens = p.effective_tokens(ctx)
    m = s.model
    seed_bpt = seed.memory_per_token(m.layers, m.kv_heads, m.head_dim, DTYPE_BYTES[s.kv_dtype])
    held = {"mean_prompt_tokens": ctx, "max_model_len": length, "max_model_len_is_model_context": bool(m.max_context),
            "max_num_batched_tokens": batched, "effective_tokens": tokens,
            "bytes_per_token_at_mean_prompt": p.num_blocks * p.bytes_per_block * tp / max(tokens, 1),
            "seed_bytes_per_token": seed_bpt,
            "per_group": [{"kind": g.kind, "blocks_per_request_at_mean_prompt": g.blocks_for(ctx, p.block_size),
                           "pool_share": g.groups * g.blocks_for(ctx, p.block_size) / p.blocks_per_sequence(ctx)}
                          for g in p.groups]}
    return replace(capacity, capacity_tokens=tokens, capacity_blocks=tokens // p.block_size, block_size=p.block_size,
                   hybrid={**p.as_dict(), **held})


def hybrid_lines(h: dict) -> list[str]:
    """The hybrid plan as text: vLLM's pool, then per kind of layer what a request and the cache hold."""
    how = "hybrid KV cache manager" if h["hybrid_allocator"] else "--disable-hybrid-kv-cache-manager (upper bound)"
    at = f"{h['max_model_len']:,} tokens/request" + ("" if h["max_model_len_is_model_context"] else
                                                       " (the workload's whole conversation: the model's context is unknown)")
    lines = [f"vllm      {how}: {h['group_count']} KV cache group{'s' if h['group_count'] > 1 else ''}, "
             f"block {h['block_size']} tokens, {h['bytes_per_block']:,} B/block per GPU: "
             f"{h['num_blocks']:,} blocks (vLLM's num_gpu_blocks)",
             f"          max concurrency {h['max_concurrency']:.2f}x at {at} = KV cache size "
             f"{h['kv_cache_tokens']:,} tokens, as vLLM logs it",
             f"  {'layers':20} {'groups x layers':>15} {'page B/layer':>13} {'per request: mean prompt':>25} "
             f"{'max':>6} {'cache share':>11}"]
    for g, held in zip(h["groups"], h["per_group"]):
        what = {"full": "full", "sliding": f"sliding {g['window']}", "mamba": g["mixer"] or "mamba"}[g["kind"]]
        unit = "state" if g["kind"] == "mamba" else "blocks"
        lines.append(f"  {str(g['layers']) + ' ' + what:20} {str(g['groups']) + ' x ' + str(g['layers_per_group']):>15} "
                     f"{g['page_bytes']:>13,} {str(held['blocks_per_request_at_mean_prompt']) + ' ' + unit:>25} "
                     f"{g['peak_blocks']:>6,} {held['pool_share']:>11.1%}")
    ratio = h["seed_bytes_per_token"] / h["bytes_per_token_at_mean_prompt"]
    lines.append(f"  per group: a request's blocks (or states) at the mean prompt of {h['mean_prompt_tokens']:,} tokens "
                 "and its peak at max; cache share: the pool's blocks that kind holds")
    lines.append(f"seed      formula 2 x layers x kv_heads x head_dim x dtype = {h['seed_bytes_per_token']:,.0f} B/token; "
                 f"vLLM at the mean prompt: {h['bytes_per_token_at_mean_prompt']:,.0f} B/token (seed x{ratio:.2f})")
    if h["hybrid_allocator"]:
        lines.append("models    the pool's LRU and FIFO models, group by group (analytic/hybrid_lru.py, hybrid_fifo.py)")
    return lines


# ----------------------------------------------------------------------------- advice


def scenario_advice(s: Scenario, target: float | None) -> list[dict]:
    """``analytic.advice.advise`` at the target (default DEFAULT_TARGET)."""
    from analytic.advice import advise

    return advise(s, target=DEFAULT_TARGET if target is None else target)


def advice_lines(s: Scenario, advice: list[dict]) -> list[str]:
    """The recommendations as text: '*' marks the levers worth at least half a point."""
    now = advice[0]["token_hit_rate"]["now"] if advice else None
    head = f"advice ({s.policy.upper()} model, token hit rate now {now:.1%}; each lever alone, the rest held):"
    return [head, *(f"  {'*' if x['recommended'] else '-'} {x['text']}" for x in advice)]


# ----------------------------------------------------------------------------- template conversations


def _templates_record(s: Scenario, method: str) -> dict:
    """The LRU and FIFO models fed from the templates, and the no-eviction ceiling."""
    from analytic.empirical import ceiling_from_templates, fifo_model_from_templates, lru_model_from_templates
    from analytic.specs import check_positive
    from kvsim.templates import template_profile

    if method not in ("lru", "fifo", "all"):
        raise UsageError("with --conversations only --method lru, fifo or all is available: the seed model "
                         "needs a parametric workload")
    check_positive("arrival-rate", s.workload.arrival_rate)
    templates = load_templates(s.conversations, s.block_size)
    capacity = s.capacity()
    profile = template_profile(templates)
    solvers = {"lru": lru_model_from_templates, "fifo": fifo_model_from_templates}
    methods = {name: solve(profile, s.workload.arrival_rate, capacity.capacity_blocks).as_dict()
               for name, solve in solvers.items() if method in (name, "all")}
    methods["ceiling"] = ceiling_from_templates(profile).as_dict()
    return {"inputs": {"model": s.model.__dict__, "conversations": list(s.conversations),
                       "templates": profile.templates, "arrival_rate": s.workload.arrival_rate,
                       "kv_dtype": s.kv_dtype},
            "memory": capacity.as_dict(), "methods": methods}


def _templates_lines(s: Scenario, record: dict) -> list[str]:
    memory = record["memory"]
    requests = sum(len(t) for t in load_templates(s.conversations, s.block_size).templates)
    lines = [f"templates {record['inputs']['templates']:,} conversations, {requests:,} requests, block "
             f"size {s.block_size}; starting at {s.workload.arrival_rate:g}/s (Poisson)",
             f"capacity  {memory['capacity_tokens']:,} tokens = {memory['capacity_blocks']:,} blocks",
             f"\n{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17} {'T (s)':>10}"]
    for name, m in record["methods"].items():
        T = m["characteristic_time"]
        lines.append(f"{name:8} {m['token_hit_rate']:>15.4f} {m['request_hit_rate']:>17.4f} "
                     f"{'inf' if T is None else f'{T:,.1f}':>10}")
    return lines


# ----------------------------------------------------------------------------- fleets


def _fleet_record(s: Scenario, method: str, advise: bool, target: float | None) -> dict:
    """``--instances N --router affinity|random``: the fleet models, and the other router's LRU."""
    from analytic.advice import fleet_advise
    from analytic.fleet import fleet_model

    instances, router = s.fleet.size, s.fleet.router or "affinity"
    if method == "seed":
        raise UsageError("--method seed has no fleet version: use lru or fifo with --instances/--router")
    if router == "random" and method == "fifo":
        raise UsageError("--method fifo has no model for --router random: use lru (or --router affinity)")
    methods = ("lru", "fifo") if method == "all" and router == "affinity" else (
        ("lru",) if method == "all" else (method,))
    capacity = s.capacity()
    capacities = [capacity.capacity_blocks] * instances
    results = {m: fleet_model(s.workload, capacities, router, m, s.block_size) for m in methods}
    other = "random" if router == "affinity" else "affinity"
    contrast = fleet_model(s.workload, capacities, other, "lru", s.block_size)
    record = {"inputs": {**inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype),
                         "instances": instances, "router": router},
              "memory": capacity.as_dict(),
              "methods": {m: r.as_dict() for m, r in results.items()},
              f"lru_{other}": contrast.as_dict()}
    if advise:
        record["advice"] = fleet_advise(s, instances, router, target=target or DEFAULT_TARGET)
    return record


def _fleet_lines(s: Scenario, record: dict) -> list[str]:
    instances, router = record["inputs"]["instances"], record["inputs"]["router"]
    other = "random" if router == "affinity" else "affinity"
    blocks = record["memory"]["capacity_blocks"]
    how = {"affinity": "every turn of a conversation on the same instance (consistent hashing)",
           "random": "each request to an instance at random"}
    lines = describe(s.model, record["memory"], s.workload, s.kv_dtype)
    lines.append(f"fleet     {instances} instance{'s' if instances > 1 else ''} x {blocks:,} blocks, "
                 f"router {router}: {how[router]}")
    lines.append(f"\n{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17} {'T (s)':>10}")
    for name, r in record["methods"].items():
        T = r["per_instance"][0]["characteristic_time"]  # None: infinite (nothing is evicted)
        lines.append(f"{name:8} {r['token_hit_rate']:>15.4f} {r['request_hit_rate']:>17.4f} "
                     f"{'inf' if T is None else f'{T:,.1f}':>10}")
    if "lru" in record["methods"]:
        contrast = record[f"lru_{other}"]["token_hit_rate"]
        gain = contrast - record["methods"]["lru"]["token_hit_rate"]
        lines.append(f"\nwith router {other}, LRU would reach a token hit rate of {contrast:.4f} "
                     f"({100 * gain:+.1f} points)")
    if "advice" in record:
        lines += ["", *advice_lines(s, record["advice"])]
    return lines
