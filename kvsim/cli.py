"""The ``kvsim`` command line: a thin layer over ``analytic`` and ``kvsim``.

Bad input gets one line on stderr naming the flag and what is allowed, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from analytic import presets
from analytic.calc import METHODS, calculate, inputs_summary, seed_inputs
from analytic.distributions import THINK_KINDS, ThinkTime, TokenCount, TurnCount
from analytic.sizing import (
    GIB,
    bytes_per_token,
    capacity_from_gib,
    capacity_from_memory,
    capacity_from_tokens,
)
from analytic.specs import (
    DEFAULT_ACTIVATION_RESERVE_GIB,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MEMORY_UTILIZATION,
    DTYPE_BYTES,
    Hardware,
    ModelSpec,
    Workload,
    check_positive,
)
from kvsim.fleet_cli import (add_fleet_args, calc_requested, cmd_calc_fleet, cmd_plan_fleet, cmd_simulate_fleet,
                             fleet_requested)
from kvsim.policies import POLICIES
from kvsim.replay import configure_export_parser, configure_replay_parser

DEFAULT_PRESET = "llama-3.1-8b"
DEFAULT_GPU = "a100-40gb"


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is enough
        raise UsageError(message)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", help=f"model preset (see `kvsim presets`; default {DEFAULT_PRESET} "
                                    "when no --layers is given)")
    g.add_argument("--layers", type=int)
    g.add_argument("--kv-heads", type=int)
    g.add_argument("--head-dim", type=int)
    g.add_argument("--kv-lora-rank", type=int, help="MLA latent rank (DeepSeek-V3: 512)")
    g.add_argument("--qk-rope-head-dim", type=int, help="MLA rope key dim (DeepSeek-V3: 64)")
    g.add_argument("--sliding-window", type=int, help="tokens kept by sliding-window layers")
    g.add_argument("--sliding-layers", type=int, help="how many layers use the sliding window")
    g.add_argument("--params-b", type=float, help="parameters in billions (weights = params x weight dtype)")
    g.add_argument("--model-size-gb", type=float, help="weights in GiB, instead of --params-b")
    g.add_argument("--kv-dtype", default="bf16", choices=list(DTYPE_BYTES), metavar="DTYPE",
                   help=f"KV cache dtype: {', '.join(DTYPE_BYTES)} (default bf16)")
    g.add_argument("--weight-dtype", default="bf16", choices=list(DTYPE_BYTES), metavar="DTYPE",
                   help="weight dtype (default bf16)")


def add_memory_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory (GPU memory, or the cache capacity directly)")
    g.add_argument("--gpu", help=f"GPU preset: {', '.join(presets.GPUS)} (default {DEFAULT_GPU})")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per instance (tensor parallel; default 1)")
    g.add_argument("--gpu-memory-gb", type=float, help="memory per GPU in GiB, instead of --gpu")
    g.add_argument("--memory-utilization", type=float, default=DEFAULT_MEMORY_UTILIZATION,
                   help=f"fraction of GPU memory the engine may use (default {DEFAULT_MEMORY_UTILIZATION}, as vLLM)")
    g.add_argument("--activation-reserve-gib", type=float, default=DEFAULT_ACTIVATION_RESERVE_GIB,
                   help=f"memory kept for activations (default {DEFAULT_ACTIVATION_RESERVE_GIB} GiB)")
    g.add_argument("--capacity-tokens", type=int, help="KV cache capacity in tokens")
    g.add_argument("--capacity-gib", type=float, help="KV cache capacity in GiB")
    g.add_argument("--block-size", type=int,
                   help=f"tokens per KV block (default {DEFAULT_BLOCK_SIZE}, as vLLM; with --conversations, "
                        "the templates' own)")


def add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload (multi-turn conversations)")
    g.add_argument("--arrival-rate", type=float, default=1.0, help="new conversations per second (default 1)")
    g.add_argument("--turns", type=float, default=5, help="turns per conversation, or their mean (default 5)")
    g.add_argument("--turns-dist", default="fixed", choices=["fixed", "geometric"])
    g.add_argument("--think-time", type=float, default=30.0, help="mean think time in s (default 30)")
    g.add_argument("--think-dist", default="exp", choices=[k for k in THINK_KINDS if k != "empirical"])
    g.add_argument("--think-cv", type=float, default=1.0, help="think-time CV for lognormal and gamma (default 1)")
    g.add_argument("--input-tokens", type=int, default=200, help="new user tokens per turn (default 200)")
    g.add_argument("--output-tokens", type=int, default=300, help="response tokens per turn (default 300)")
    g.add_argument("--input-cv", type=float, default=0.0, help="CV of input tokens (> 0: lognormal; default fixed)")
    g.add_argument("--output-cv", type=float, default=0.0, help="CV of output tokens (> 0: lognormal)")
    g.add_argument("--tokens-per-turn", type=int,
                   help="the original tool's sequence length: same as --input-tokens N --output-tokens 0")
    g.add_argument("--system-prompt-tokens", type=int, default=0, help="system prompt shared by all (default 0)")
    g.add_argument("--conversations", metavar="PATH", nargs="+",
                   help="template conversations (agentic-coding files, or Bailian jsonl chat chains; files or "
                        "folders): each conversation replays one, drawn uniformly, instead of the synthetic "
                        "turns, sizes and think times; --arrival-rate still sets how often they start")


def model_from_args(a) -> ModelSpec:
    custom = [a.layers, a.kv_heads, a.head_dim]
    if a.preset and any(v is not None for v in custom):
        raise UsageError("--preset cannot be combined with --layers/--kv-heads/--head-dim")
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            raise UsageError("--layers, --kv-heads and --head-dim must be given together")
        return ModelSpec(
            layers=a.layers, kv_heads=a.kv_heads, head_dim=a.head_dim, params_b=a.params_b,
            kv_lora_rank=a.kv_lora_rank or 0, qk_rope_head_dim=a.qk_rope_head_dim or 0,
            sliding_window=a.sliding_window or 0, sliding_layers=a.sliding_layers or 0,
        )
    model = presets.model(a.preset or DEFAULT_PRESET)
    if a.params_b is not None:
        model = ModelSpec(**{**model.__dict__, "params_b": a.params_b})
    return model


def model_size_gb(a, model: ModelSpec) -> float:
    """Weights in GiB: given, or params x weight-dtype bytes (the original tool's convention)."""
    if a.model_size_gb is not None:
        return a.model_size_gb
    if model.params_b is None:
        raise UsageError("--params-b or --model-size-gb is required with a custom model")
    return model.params_b * DTYPE_BYTES[a.weight_dtype]


def hardware_from_args(a) -> Hardware | None:
    """The GPUs, or None when the capacity is given directly."""
    direct = [x for x in ("capacity_tokens", "capacity_gib") if getattr(a, x) is not None]
    if len(direct) > 1:
        raise UsageError("give only one of --capacity-tokens and --capacity-gib")
    if direct and (a.gpu or a.gpu_memory_gb is not None):
        raise UsageError("give either GPU memory (--gpu/--gpu-memory-gb) or the capacity, not both")
    if direct:
        return None
    if a.gpu and a.gpu_memory_gb is not None:
        raise UsageError("give either --gpu or --gpu-memory-gb, not both")
    if a.gpu_memory_gb is not None:
        return Hardware(a.gpu_memory_gb, a.gpus, a.memory_utilization, a.activation_reserve_gib)
    gpu = a.gpu or DEFAULT_GPU
    return Hardware(presets.gpu_memory_gib(gpu), a.gpus, a.memory_utilization, a.activation_reserve_gib, gpu=gpu)


def templates_from_args(a):
    """Template conversations (and the block size they impose), or None."""
    if not a.conversations:
        if a.block_size is None:
            a.block_size = DEFAULT_BLOCK_SIZE
        return None
    from kvsim.replay import load_templates

    templates = load_templates(a.conversations, a.block_size)
    a.block_size = templates.block_size
    return templates


def synthetic_only(a, command: str) -> None:
    if templates_from_args(a) is not None:
        raise UsageError(f"--conversations: kvsim {command} works on synthetic workloads only; use kvsim calc "
                         "or kvsim simulate with templates")


def capacity_from_args(a, model: ModelSpec):
    hardware = hardware_from_args(a)
    if hardware is not None:
        return capacity_from_memory(model, hardware, a.kv_dtype, a.weight_dtype, a.block_size,
                                    model_size_gib=a.model_size_gb)
    if a.capacity_tokens is not None:
        return capacity_from_tokens(model, a.capacity_tokens, a.kv_dtype, a.block_size)
    return capacity_from_gib(model, a.capacity_gib, a.kv_dtype, a.block_size)


def _tokens(name: str, mean: int, cv: float) -> TokenCount:
    if cv < 0:
        raise UsageError(f"--{name}-cv must be >= 0 (got {cv})")
    return TokenCount("lognormal", mean, cv, name=f"{name}-tokens") if cv > 0 else TokenCount(
        "fixed", mean, name=f"{name}-tokens")


def workload_from_args(a) -> Workload:
    inp, out = a.input_tokens, a.output_tokens
    if a.tokens_per_turn is not None:
        inp, out = a.tokens_per_turn, 0
    return Workload(
        arrival_rate=a.arrival_rate,
        turns=TurnCount(a.turns_dist, a.turns),
        think_time=ThinkTime(a.think_dist, a.think_time, a.think_cv),
        input_tokens=_tokens("input", inp, a.input_cv),
        output_tokens=_tokens("output", out, a.output_cv),
        system_prompt_tokens=a.system_prompt_tokens,
    )


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def describe(model: ModelSpec, memory: dict, workload: Workload, kv_dtype: str) -> list[str]:
    lines = [f"model     {model.name}: {model.attention}, KV {kv_dtype}: {memory['bytes_per_token']:,.0f} B/token"]
    if memory["source"] == "gpu-memory":
        lines.append(
            f"memory    {memory['gpu_memory_gib']:.1f} GiB x {memory.get('usable_gib', 0) / memory['gpu_memory_gib']:.2f}"
            f" - weights {memory['weights_gib']:.1f} GiB - activations {memory['activation_reserve_gib']:.1f} GiB"
            f" = {memory['kv_cache_gib']:.1f} GiB of KV cache")
    lines.append(f"capacity  {memory['capacity_tokens']:,} tokens = {memory['capacity_blocks']:,} blocks "
                 f"of {memory['block_size']} tokens")
    if "bytes_per_token_note" in memory:
        lines.append(f"note      {memory['bytes_per_token_note']}")
    w = workload
    think = f"{w.think_time.kind} think {w.think_time.mean:g} s" + (
        f" (cv {w.think_time.cv:g})" if w.think_time.kind in ("lognormal", "gamma") else "")
    lines.append(f"workload  {w.arrival_rate:g} conversations/s, {w.turns.mean:g} turns ({w.turns.kind}), {think}, "
                 f"{w.input_tokens.mean:g} in + {w.output_tokens.mean:g} out tokens/turn, "
                 f"system prompt {w.system_prompt_tokens}")
    return lines


def cmd_calc(a) -> int:
    model = model_from_args(a)
    templates = templates_from_args(a)
    if templates is not None:
        if a.advise:
            raise UsageError("--advise works on synthetic workloads only, not with --conversations")
        if calc_requested(a):
            raise UsageError("--instances/--router: the fleet models work on synthetic workloads only; "
                             "use kvsim simulate --instances with --conversations")
        return calc_templates(a, model, templates)
    workload = workload_from_args(a)
    capacity = capacity_from_args(a, model)
    if calc_requested(a):
        return cmd_calc_fleet(a, model, workload, capacity, describe(model, capacity.as_dict(), workload, a.kv_dtype),
                              UsageError)
    methods = METHODS if a.method == "all" else (a.method,)
    result = calculate(model, capacity, workload, kv_dtype=a.kv_dtype,
                       model_size_gb=model_size_gb(a, model), methods=methods)
    record = {"inputs": inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype),
              **result}
    if a.advise:
        from kvsim.report import advice_from_args

        record["advice"] = advice_from_args(a)
    if a.json:
        print(json.dumps(record, indent=2))
        return 0
    print("\n".join(describe(model, result["memory"], workload, a.kv_dtype)))
    print()
    print(f"{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17}")
    for name, m in result["methods"].items():
        print(f"{name:8} {_fmt(m['token_hit_rate']):>15} {_fmt(m['request_hit_rate']):>17}")
    if "seed" in result["methods"]:
        print("\nseed model (the original calculator's outputs):")
        for key, value in result["methods"]["seed"].items():
            if key not in ("token_hit_rate", "request_hit_rate"):
                print(f"  {key:26} {_fmt(value)}")
    if a.advise:
        from kvsim.report import advice_lines

        print()
        print("\n".join(advice_lines(a, record["advice"])))
    return 0


def calc_templates(a, model: ModelSpec, templates) -> int:
    """calc --conversations: the LRU model fed from the templates, and the no-eviction ceiling."""
    from analytic.empirical import ceiling_from_templates, fifo_model_from_templates, lru_model_from_templates
    from kvsim.replay import template_profile

    if a.method not in ("lru", "fifo", "all"):
        raise UsageError("with --conversations only --method lru, fifo or all is available: the seed model "
                         "needs a parametric workload")
    check_positive("arrival-rate", a.arrival_rate)
    capacity = capacity_from_args(a, model)
    profile = template_profile(templates)
    solvers = {"lru": lru_model_from_templates, "fifo": fifo_model_from_templates}
    methods = {name: solve(profile, a.arrival_rate, capacity.capacity_blocks).as_dict()
               for name, solve in solvers.items() if a.method in (name, "all")}
    methods["ceiling"] = ceiling_from_templates(profile).as_dict()
    record = {"inputs": {"model": model.__dict__, "conversations": a.conversations, "templates": profile.templates,
                         "arrival_rate": a.arrival_rate, "kv_dtype": a.kv_dtype},
              "memory": capacity.as_dict(), "methods": methods}
    if a.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"templates {profile.templates:,} conversations, {profile.requests:,} requests, block size "
          f"{templates.block_size}; starting at {a.arrival_rate:g}/s (Poisson)")
    print(f"capacity  {capacity.capacity_tokens:,} tokens = {capacity.capacity_blocks:,} blocks")
    print(f"\n{'method':8} {'token_hit_rate':>15} {'request_hit_rate':>17} {'T (s)':>10}")
    for name, m in methods.items():
        T = m["characteristic_time"]
        print(f"{name:8} {m['token_hit_rate']:>15.4f} {m['request_hit_rate']:>17.4f} "
              f"{'inf' if T is None else f'{T:,.1f}':>10}")
    return 0


def cmd_presets(a) -> int:
    models = presets.models()
    if a.json:
        print(json.dumps({
            "models": {n: {**m.__dict__, "bytes_per_token_bf16": bytes_per_token(m)} for n, m in models.items()},
            "gpus": {n: {"memory_gib": g} for n, g in presets.GPUS.items()},
        }, indent=2))
        return 0
    print(f"{'model':24} {'layers':>6} {'kv_heads':>8} {'head_dim':>8} {'params_b':>8} {'B/token bf16':>13}  attention")
    for name, m in models.items():
        print(f"{name:24} {m.layers:>6} {m.kv_heads:>8} {m.head_dim:>8} {m.params_b:>8g} "
              f"{bytes_per_token(m):>13,.0f}  {m.attention}")
    print(f"\n{'gpu':24} {'memory (GiB)':>12}")
    for name, gib in presets.GPUS.items():
        print(f"{name:24} {gib:>12g}")
    return 0


def _ci(estimate: dict) -> str:
    if estimate["mean"] is None:
        return "-"
    if not estimate["ci95"]:
        return f"{estimate['mean']:.4f}"
    lo, hi = estimate["ci95"]
    return f"{estimate['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def cmd_simulate(a) -> int:
    from kvsim.engine import run_window, simulate

    model = model_from_args(a)
    templates = templates_from_args(a)
    workload = workload_from_args(a)
    capacity = capacity_from_args(a, model)
    source = None
    if templates is not None:
        from kvsim.replay import template_source

        source, _ = template_source(templates)
    a.duration, a.warmup = run_window(workload, a.duration, a.warmup, source)
    policies = tuple(POLICIES) if a.policy == "all" else (a.policy,)
    inputs = inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype,
                            duration=a.duration, warmup=a.warmup, seed=a.seed,
                            capacity_tokens=capacity.capacity_tokens, conversations=a.conversations)
    lines = describe(model, capacity.as_dict(), workload, a.kv_dtype)
    if templates is not None:
        lines[-1] = (f"workload  {a.arrival_rate:g} conversations/s, each replaying one of {len(templates.templates):,} "
                     f"template conversations ({', '.join(a.conversations)})")
    if fleet_requested(a):
        return cmd_simulate_fleet(a, model, workload, capacity, source, policies, inputs, lines, UsageError)
    results = [
        simulate(workload, capacity.capacity_blocks, policy, block_size=a.block_size, duration=a.duration,
                 warmup=a.warmup, replications=a.replications, seed=a.seed, source=source).as_dict()
        for policy in policies
    ]
    if a.json:
        record = {"inputs": inputs, **results[0]} if len(results) == 1 else {"inputs": inputs, "results": results}
        print(json.dumps(record, indent=2))
        return 0
    print("\n".join(lines))
    print(f"simulated {a.duration:g} s of arrivals, warm-up {a.warmup:g} s, {a.replications} replications, "
          f"seed {a.seed}; mean [95% CI]\n")
    print(f"{'policy':6} {'token_hit_rate':>26} {'request_hit_rate':>26} {'evictions':>10} {'oversized':>9} "
          f"{'requests':>9}")
    for r in results:
        print(f"{r['policy']:6} {_ci(r['token_hit_rate']):>26} {_ci(r['request_hit_rate']):>26} "
              f"{r['evictions']:>10,} {r['oversized']:>9,} {r['requests_measured']:>9,}")
    print("\nhit probability by turn:")
    for r in results:
        turns = "  ".join(f"{k}:{p:.3f}" for k, p in list(r["per_turn_hit"].items())[:12])
        print(f"{r['policy']:6} {turns}")
    return 0


def cmd_compare(a) -> int:
    from kvsim.compare import SIM_POLICIES, compare, memory_figure
    from kvsim.engine import run_window

    model = model_from_args(a)
    synthetic_only(a, "compare")
    workload = workload_from_args(a)
    capacity = capacity_from_args(a, model)
    size_gb = model_size_gb(a, model)
    a.duration, a.warmup = run_window(workload, a.duration, a.warmup, None)
    sim = dict(duration=a.duration, warmup=a.warmup, replications=a.replications, seed=a.seed)
    result = compare(model, capacity, workload, kv_dtype=a.kv_dtype, model_size_gb=size_gb, **sim)
    if a.figure:
        memory_figure(a.figure, model, capacity, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype,
                      hardware=hardware_from_args(a), model_size_gb=size_gb, **sim)
    if a.json:
        inputs = inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype, **sim)
        print(json.dumps({"inputs": inputs, **result}, indent=2))
        return 0
    print("\n".join(describe(model, result["memory"], workload, a.kv_dtype)))
    print(f"simulation: {a.duration:g} s of arrivals, warm-up {a.warmup:g} s, {a.replications} replications, "
          f"seed {a.seed}; mean [95% CI]\n")
    print(f"{'':16} {'token_hit_rate':>26} {'request_hit_rate':>26}")
    for name, m in result["methods"].items():
        label = "seed model" if name == "seed" else f"{name.upper()} model"
        print(f"{label:16} {_fmt(m['token_hit_rate']):>26} {_fmt(m['request_hit_rate']):>26}")
    for policy in SIM_POLICIES:
        r = result["simulated"][policy]
        print(f"{policy.upper() + ' simulated':16} {_ci(r['token_hit_rate']):>26} {_ci(r['request_hit_rate']):>26}")
    print("\nThe seed model sizes its own cache (1.2 x weights, no utilisation fraction): "
          f"{result['methods']['seed']['max_cached_tokens']:,} tokens.")
    if a.figure:
        print(f"figure: {a.figure}")
    return 0


def cmd_plan(a) -> int:
    from analytic.plan import capacity_for_target, hit_rate_curve
    from analytic.seed import seed_recommendation
    from analytic.sizing import memory_for_tokens

    model = model_from_args(a)
    synthetic_only(a, "plan")
    workload = workload_from_args(a)
    hardware = hardware_from_args(a)
    capacity = capacity_from_args(a, model)
    if calc_requested(a):
        header = describe(model, capacity.as_dict(), workload, a.kv_dtype)
        return cmd_plan_fleet(a, model, workload, hardware, capacity, header[:1] + header[-1:], UsageError)
    bs = a.block_size
    blocks = capacity_for_target(workload, a.target_hit_rate, a.metric, bs, a.method)
    tokens = blocks * bs
    plan = {"target_hit_rate": a.target_hit_rate, "metric": a.metric, "method": a.method,
            "capacity_blocks": blocks, "capacity_tokens": tokens,
            "kv_cache_gib": tokens * capacity.bytes_per_token / GIB}
    if hardware is not None:
        total = memory_for_tokens(model, tokens, a.kv_dtype, a.weight_dtype, hardware.memory_utilization,
                                  hardware.activation_reserve_gib, a.model_size_gb)
        plan["gpu_memory_gib_total"] = total
        plan["gpu_memory_gib_per_gpu"] = total / hardware.gpus
        if hardware.gpu != "custom":
            plan["gpus_needed"] = math.ceil(total / hardware.gpu_memory_gib)
            plan["gpu"] = hardware.gpu
        seed_inputs_ = seed_inputs(model, workload, a.kv_dtype, model_size_gb(a, model))
        plan["seed_recommendation"] = seed_recommendation(
            memory_gb=hardware.gpu_memory_gib * hardware.gpus, target_hit_rate=a.target_hit_rate, **seed_inputs_)
    scale = np.geomspace(0.1, 3, 12)
    capacities = sorted({max(1, int(blocks * f)) for f in scale} | {blocks})
    curve = hit_rate_curve(workload, capacities, bs, methods=(a.method,))
    if a.check:  # simulated LRU at every capacity of the curve, from one pass per replication
        from kvsim.curve import simulate_curve

        simulated = simulate_curve(workload, capacities, block_size=bs, duration=a.duration, warmup=a.warmup,
                                   replications=a.replications, seed=a.seed)
        for row, sim in zip(curve, simulated):
            row["simulated_lru"] = {"token_hit_rate": sim["token_hit_rate"],
                                    "request_hit_rate": sim["request_hit_rate"]}
    if a.json:
        inputs = inputs_summary(model, workload, kv_dtype=a.kv_dtype, weight_dtype=a.weight_dtype)
        print(json.dumps({"inputs": inputs, "plan": plan, "curve": curve}, indent=2))
        return 0
    print("\n".join(describe(model, capacity.as_dict(), workload, a.kv_dtype)[:1]
                    + describe(model, capacity.as_dict(), workload, a.kv_dtype)[-1:]))
    print(f"\ntarget: {a.metric} hit rate >= {a.target_hit_rate:g} ({a.method.upper()} model)")
    print(f"needs   {tokens:,} tokens = {blocks:,} blocks of KV cache = {plan['kv_cache_gib']:.1f} GiB")
    if hardware is not None:
        line = (f"        {plan['gpu_memory_gib_total']:.1f} GiB of GPU memory in all "
                f"(weights, {hardware.activation_reserve_gib:g} GiB activations, utilisation {hardware.memory_utilization:g})")
        if "gpus_needed" in plan:
            line += f": {plan['gpus_needed']} x {hardware.gpu}"
        print(line)
        rec = plan["seed_recommendation"]
        print(f"seed    the original calculator recommends {rec['recommended_memory_gb']:.1f} GB"
              f" (its request hit rate now: {rec['current_hit_rate']:.3f})")
    print(f"\n{'capacity_tokens':>16} {'token_hit_rate':>15} {'request_hit_rate':>17}"
          + (f" {'simulated LRU token_hit_rate':>32}" if a.check else ""))
    for row in curve:
        mark = " <- plan" if row["capacity_blocks"] == blocks else ""
        sim = f" {_ci(row['simulated_lru']['token_hit_rate']):>32}" if a.check else ""
        print(f"{row['capacity_tokens']:>16,} {row['token_hit_rate']:>15.4f} {row['request_hit_rate']:>17.4f}"
              f"{sim}{mark}")
    return 0


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulation")
    g.add_argument("--duration", type=float,
                   help="seconds of arrivals (default: the warm-up + 3000 s measured)")
    g.add_argument("--warmup", type=float,
                   help="seconds not measured at the start (default: 5 mean conversation lifetimes, at least "
                        "600 s; 600 s with --conversations)")
    g.add_argument("--replications", type=int, default=5, help="independent runs (default 5)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> Parser:
    from kvsim.report import add_advise_args, add_sensitivity_args, cmd_sensitivity  # report imports cli
    from kvsim.serve import add_serve_args, cmd_serve

    p = Parser(prog="kvsim", description="Prefix-cache hit rates of LLM serving: models and simulation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    calc = sub.add_parser("calc", help="sizing and the analytic hit-rate models")
    add_model_args(calc)
    add_memory_args(calc)
    add_workload_args(calc)
    calc.add_argument("--method", default="all", choices=[*METHODS, "all"],
                      help="seed (the original calculator), lru, fifo (characteristic-time models) or all")
    calc.add_argument("--json", action="store_true", help="print one JSON object")
    add_fleet_args(calc, simulation=False)
    add_advise_args(calc)
    calc.set_defaults(func=cmd_calc)

    sim = sub.add_parser("simulate", help="discrete-event simulation through a block-level prefix cache")
    add_model_args(sim)
    add_memory_args(sim)
    add_workload_args(sim)
    sim.add_argument("--policy", default="lru", choices=[*POLICIES, "all"], help="eviction policy (default lru)")
    add_fleet_args(sim, simulation=True)
    add_simulation_args(sim)
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=cmd_simulate)

    cmp_ = sub.add_parser("compare", help="models and simulation side by side (the main job)")
    add_model_args(cmp_)
    add_memory_args(cmp_)
    add_workload_args(cmp_)
    add_simulation_args(cmp_)
    cmp_.add_argument("--figure", metavar="PNG", help="also draw hit rate vs GPU memory to this file")
    cmp_.add_argument("--json", action="store_true", help="print one JSON object")
    cmp_.set_defaults(func=cmd_compare)

    plan = sub.add_parser("plan", help="memory needed for a target hit rate (inverts the LRU model)")
    add_model_args(plan)
    add_memory_args(plan)
    add_workload_args(plan)
    plan.add_argument("--target-hit-rate", type=float, required=True, help="e.g. 0.8")
    plan.add_argument("--metric", default="token", choices=["token", "request"],
                      help="token_hit_rate (default) or request_hit_rate")
    plan.add_argument("--method", default="lru", choices=["lru", "fifo"], help="model to invert (default lru)")
    plan.add_argument("--check", action="store_true",
                      help="also simulate LRU at every capacity of the curve (one pass per replication)")
    add_fleet_args(plan, simulation=False)
    add_simulation_args(plan)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

    configure_replay_parser(sub.add_parser("replay", help="replay real traces through the prefix cache"))
    configure_export_parser(sub.add_parser("export-trace", help="write a trace's block accesses for libCacheSim"))

    sens = sub.add_parser("sensitivity", help="each input moved +/-50%%: effect on the token hit rate (tornado)")
    add_sensitivity_args(sens)
    sens.set_defaults(func=cmd_sensitivity)
    srv = sub.add_parser("serve", help="the interactive calculator page, on a local web server")
    add_serve_args(srv)
    srv.set_defaults(func=cmd_serve)

    pre = sub.add_parser("presets", help="list model and GPU presets")
    pre.add_argument("--json", action="store_true")
    pre.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"kvsim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"kvsim: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
