"""The flags shared by the commands, and the one function that turns them into a Scenario.

Every command's flags are defined here or in its own module; :func:`scenario_from_values` builds
the :class:`~analytic.scenario.Scenario` from parsed flags (``vars(namespace)``), from the
calculator page's fields and from a sweep's grid point alike. Nothing below the command line
sees an argparse namespace.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from analytic import presets
from analytic.distributions import THINK_KINDS, ThinkTime, TokenCount, TurnCount
from analytic.offload import DEFAULT_CPU_BANDWIDTH_GBPS, DEFAULT_DISK_BANDWIDTH_GBPS, OFFLOAD_MODES
from analytic.scenario import MODEL_POLICIES, Fleet, Offload, Scenario
from analytic.specs import (
    DEFAULT_ACTIVATION_RESERVE_GIB,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MEMORY_UTILIZATION,
    DEFAULT_TARGET,
    DTYPE_BYTES,
    Hardware,
    ModelSpec,
    Workload,
)
from kvsim.cli.engine_args import engine_options
from kvsim.cli.parser import UsageError, check_finite
from kvsim.defaults import BALANCE_ABS_THRESHOLD, BALANCE_REL_THRESHOLD, CACHE_THRESHOLD, DEFAULT_MAX_EVENTS, ROUTER_NAMES

DEFAULT_PRESET = "llama-3.1-8b"
DEFAULT_GPU = "a100-40gb"
DEFAULT_PORT = 8765  # kvsim serve
REPLACED_SERVICE_FLAGS = ("--service", "--prefill-per-token", "--decode-per-token", "--prefill-base", "--max-running")
# Geometry flags of a custom model: with a preset they would be ignored, so they are refused.
CUSTOM_MODEL_FLAGS = ("kv_lora_rank", "qk_rope_head_dim", "sliding_window", "sliding_layers")


# ----------------------------------------------------------------------------- flag groups


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", help=f"model preset (see `kvsim presets`; default {DEFAULT_PRESET} "
                                    "when no --layers is given)")
    g.add_argument("--model-config", metavar="PATH",
                   help="a Hugging Face config.json: layers, heads, sizes, experts and parameters read from it "
                        "(instead of --preset or --layers/--kv-heads/--head-dim)")
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
    g.add_argument("--gpus", "--tp", dest="gpus", type=int, default=1,
                   help="GPUs per instance, tensor parallel (--tp N is the same flag; default 1)")
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
    g.add_argument("--no-hybrid-allocator", action="store_true",
                   help="size a sliding-window model as vLLM's --disable-hybrid-kv-cache-manager does: every layer "
                        "caches every token (default: vLLM's hybrid KV cache manager, per layer kind)")


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


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """Model, memory and workload: the flags every scenario command takes."""
    add_model_args(p)
    add_memory_args(p)
    add_workload_args(p)


def add_fleet_args(p: argparse.ArgumentParser, simulation: bool) -> None:
    g = p.add_argument_group("fleet (several instances behind a router)")
    g.add_argument("--instances", type=int, help="serving instances, each with the cache capacity above (default 1)")
    if not simulation:
        g.add_argument("--router", choices=["affinity", "random"],
                       help="affinity (consistent hashing of the conversation) or random (default affinity)")
        return
    g.add_argument("--router", choices=[*ROUTER_NAMES, "all"], help="how requests pick an instance (default affinity)")
    g.add_argument("--instance-capacity-tokens", metavar="T1,T2,...",
                   help="a capacity per instance in tokens (instances of different sizes)")
    g.add_argument("--cache-threshold", type=float,
                   help=f"cache-aware: prefix share above which the best-matching instance wins (default "
                        f"{CACHE_THRESHOLD}, SGLang's)")
    g.add_argument("--balance-abs", type=int,
                   help=f"cache-aware: outstanding-request gap that counts as imbalance (default {BALANCE_ABS_THRESHOLD})")
    g.add_argument("--balance-rel", type=float,
                   help=f"cache-aware: max/min outstanding ratio that counts as imbalance (default {BALANCE_REL_THRESHOLD})")
    # The linear service model these flags set is replaced by the step engine: kept (hidden) to
    # say so in one line rather than "unrecognized arguments".
    for flag in REPLACED_SERVICE_FLAGS:
        p.add_argument(flag, nargs="?", const=True, help=argparse.SUPPRESS)


OFFLOAD_SIZE_FLAGS = tuple(f"{tier}_{unit}" for tier in ("cpu", "disk") for unit in ("gib", "tokens", "blocks"))


def add_offload_args(p: argparse.ArgumentParser) -> None:
    """The tiers below the GPU (``kvsim replay``, which knows no model to size GiB with, has its
    own: tokens and blocks only, in :mod:`kvsim.cli.replay`)."""
    g = p.add_argument_group("CPU / disk offload (tiers below the GPU's prefix cache)")
    for tier, what in (("cpu", "CPU DRAM"), ("disk", "local disk, below the CPU tier")):
        sizes = g.add_mutually_exclusive_group()
        sizes.add_argument(f"--{tier}-offload-gib", dest=f"{tier}_gib", type=float, metavar="GIB",
                           help=f"{what} tier of GIB GiB (sized with the model's KV bytes per token, as "
                                "vLLM's --kv-offloading-size)")
        sizes.add_argument(f"--{tier}-capacity-tokens", dest=f"{tier}_tokens", type=int, metavar="N",
                           help=f"{what} tier of N tokens")
        sizes.add_argument(f"--{tier}-capacity-blocks", dest=f"{tier}_blocks", type=int, metavar="N",
                           help=f"{what} tier of N blocks")
    g.add_argument("--offload-mode", choices=OFFLOAD_MODES,
                   help="inclusive: write-through, every block on the GPU is also stored below (vLLM's native "
                        "offloading, LMCache); exclusive: GPU evictions move down, loads move up (default inclusive)")
    g.add_argument("--cpu-bandwidth-gbps", type=float,
                   help=f"CPU -> GPU load bandwidth, GB/s (default {DEFAULT_CPU_BANDWIDTH_GBPS:g}: PCIe 4.0 x16)")
    g.add_argument("--disk-bandwidth-gbps", type=float,
                   help=f"disk -> GPU load bandwidth, GB/s (default {DEFAULT_DISK_BANDWIDTH_GBPS:g}: one NVMe SSD)")


def offload_from_values(v: Mapping, sized: bool = True) -> Offload:
    """The :class:`~analytic.scenario.Offload` of the offload flags (missing ones: not given).
    ``sized``: the mode and bandwidths need a tier size (``kvsim plan --tier cpu`` finds it)."""
    options = {f: v[f] for f in OFFLOAD_SIZE_FLAGS if v.get(f) is not None}
    for name in ("mode", "cpu_bandwidth_gbps", "disk_bandwidth_gbps"):
        value = v.get("offload_mode" if name == "mode" else name)
        if value is not None:
            options[name] = value
    if sized and not any(f in options for f in OFFLOAD_SIZE_FLAGS) and len(options):
        flags = ", ".join("--" + ("offload-mode" if k == "mode" else k.replace("_", "-")) for k in options)
        raise UsageError(f"{flags}: there is no tier below the GPU to apply to; give --cpu-offload-gib (or "
                         "--cpu-capacity-tokens / --cpu-capacity-blocks)")
    return Offload(**options)


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulation")
    g.add_argument("--duration", type=float,
                   help="seconds of arrivals (default: the warm-up + 3000 s measured)")
    g.add_argument("--warmup", type=float,
                   help="seconds not measured at the start (default: 5 mean conversation lifetimes, at least "
                        "600 s; 600 s with --conversations)")
    g.add_argument("--replications", type=int, default=5, help="independent runs (default 5)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--max-events", type=int, default=DEFAULT_MAX_EVENTS,
                   help=f"refuse a simulation that would serve more requests than this, before it starts (default "
                        f"{DEFAULT_MAX_EVENTS:,}: minutes on one core)")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


# ----------------------------------------------------------------------------- values -> scenario


@dataclass(frozen=True)
class SimulationSettings:
    """The simulation window: None for ``duration``/``warmup`` means the automatic one
    (``kvsim.engine.run_window``)."""

    duration: float | None = None
    warmup: float | None = None
    replications: int = 5
    seed: int = 0
    max_events: int | None = DEFAULT_MAX_EVENTS


def simulation_from_values(v: Mapping) -> SimulationSettings:
    check_finite(v)
    return SimulationSettings(v.get("duration"), v.get("warmup"), v.get("replications", 5), v.get("seed", 0),
                              v.get("max_events", DEFAULT_MAX_EVENTS))


def _named(flag: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise UsageError(f"--{flag} must name one (it is empty); leave the flag out for the default")
    return value


def _model(v: Mapping) -> ModelSpec:
    custom = [v.get("layers"), v.get("kv_heads"), v.get("head_dim")]
    preset = _named("preset", v.get("preset"))
    config = _named("model-config", v.get("model_config"))
    if config:
        given = [f for f in ("preset", "layers", "kv_heads", "head_dim", *CUSTOM_MODEL_FLAGS) if v.get(f) is not None]
        if given:
            raise UsageError(f"--model-config cannot be combined with --{given[0].replace('_', '-')} (the file "
                             "describes the model)")
        from analytic.hfconfig import model_from_config

        return _with_params(model_from_config(config), v.get("params_b"))
    if preset and any(x is not None for x in custom):
        raise UsageError("--preset cannot be combined with --layers/--kv-heads/--head-dim")
    if not any(x is not None for x in custom):
        extra = [f for f in CUSTOM_MODEL_FLAGS if v.get(f) is not None]
        if extra:
            flag = extra[0].replace("_", "-")
            raise UsageError(f"--{flag} describes a custom model: give it with --layers, --kv-heads and --head-dim "
                             "(a preset has its own geometry)")
    if any(x is not None for x in custom):
        if any(x is None for x in custom):
            raise UsageError("--layers, --kv-heads and --head-dim must be given together")
        return ModelSpec(
            layers=v["layers"], kv_heads=v["kv_heads"], head_dim=v["head_dim"], params_b=v.get("params_b"),
            kv_lora_rank=v.get("kv_lora_rank") or 0, qk_rope_head_dim=v.get("qk_rope_head_dim") or 0,
            sliding_window=v.get("sliding_window") or 0, sliding_layers=v.get("sliding_layers") or 0,
        )
    return _with_params(presets.model(preset or DEFAULT_PRESET), v.get("params_b"))


def _with_params(model: ModelSpec, params_b: float | None) -> ModelSpec:
    """``model`` with ``--params-b`` (the weights), if given; active parameters above it are dropped."""
    if params_b is None:
        return model
    active = model.active_params_b
    return replace(model, params_b=params_b,
                   active_params_b=active if active is None or not params_b > 0 or active <= params_b else None)


def _hardware(v: Mapping) -> Hardware | None:
    """The GPUs, or None when the capacity is given directly."""
    direct = [x for x in ("capacity_tokens", "capacity_gib") if v.get(x) is not None]
    if len(direct) > 1:
        raise UsageError("give only one of --capacity-tokens and --capacity-gib")
    if direct and (v.get("gpu") or v.get("gpu_memory_gb") is not None):
        raise UsageError("give either GPU memory (--gpu/--gpu-memory-gb) or the capacity, not both")
    if direct:
        return None
    _named("gpu", v.get("gpu"))
    if v.get("gpu") and v.get("gpu_memory_gb") is not None:
        raise UsageError("give either --gpu or --gpu-memory-gb, not both")
    if v.get("gpu_memory_gb") is not None:
        return Hardware(v["gpu_memory_gb"], v["gpus"], v["memory_utilization"], v["activation_reserve_gib"])
    gpu = v.get("gpu") or DEFAULT_GPU
    return Hardware(presets.gpu_memory_gib(gpu), v["gpus"], v["memory_utilization"], v["activation_reserve_gib"],
                    gpu=gpu)


def _tokens(name: str, mean: int, cv: float) -> TokenCount:
    if cv < 0:
        raise UsageError(f"--{name}-cv must be >= 0 (got {cv})")
    return TokenCount("lognormal", mean, cv, name=f"{name}-tokens") if cv > 0 else TokenCount(
        "fixed", mean, name=f"{name}-tokens")


def _workload(v: Mapping) -> Workload:
    inp, out = v["input_tokens"], v["output_tokens"]
    if v.get("tokens_per_turn") is not None:
        inp, out = v["tokens_per_turn"], 0
    return Workload(
        arrival_rate=v["arrival_rate"],
        turns=TurnCount(v["turns_dist"], v["turns"]),
        think_time=ThinkTime(v["think_dist"], v["think_time"], v["think_cv"]),
        input_tokens=_tokens("input", inp, v["input_cv"]),
        output_tokens=_tokens("output", out, v["output_cv"]),
        system_prompt_tokens=v["system_prompt_tokens"],
    )


def _instance_capacity_tokens(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError(f"--instance-capacity-tokens must be integers separated by commas (got {text!r})") from None


def _fleet(v: Mapping) -> Fleet:
    given = [f for f in REPLACED_SERVICE_FLAGS if v.get(f[2:].replace("-", "_")) is not None]
    if given:
        raise UsageError(f"{given[0]}: the linear service model is replaced by the serving engine: give --engine "
                         "(--max-num-seqs for --max-running; --step-time linear:ALPHA,BETA,GAMMA for a step time of "
                         "your own)")
    return Fleet(instances=v.get("instances"), router=v.get("router"),
                 instance_capacity_tokens=_instance_capacity_tokens(v.get("instance_capacity_tokens")),
                 cache_threshold=v.get("cache_threshold"), balance_abs=v.get("balance_abs"),
                 balance_rel=v.get("balance_rel"))


@lru_cache(maxsize=8)
def load_templates(paths: tuple[str, ...], block_size: int | None):
    """The template conversations of ``--conversations`` (loaded once per process: the scenario
    needs their block size, the command their requests)."""
    from kvsim.templates import load_templates as load  # trace reading: only with --conversations

    return load(list(paths), block_size)


def scenario_from_values(v: Mapping, *, sized_offload: bool = True) -> Scenario:
    """The Scenario of the scenario flags, by argparse dest (``arrival_rate``): ``vars()`` of a
    parsed command line, the page's fields, or a sweep's grid point. Missing optional flags
    count as not given; ``policy`` is the engine's policy for the models when it is one they
    know (lru or fifo), else lru."""
    check_finite(v)
    model = _model(v)
    conversations = tuple(v["conversations"]) if v.get("conversations") else None
    block_size = v.get("block_size")
    if conversations is not None:
        block_size = load_templates(conversations, block_size).block_size
    elif block_size is None:
        block_size = DEFAULT_BLOCK_SIZE
    workload = _workload(v)
    hardware = _hardware(v)
    policy = v.get("policy")
    return Scenario(
        model=model, workload=workload, hardware=hardware, kv_dtype=v["kv_dtype"], weight_dtype=v["weight_dtype"],
        block_size=block_size, model_size_gib=v.get("model_size_gb"),
        capacity_tokens=v.get("capacity_tokens") if hardware is None else None,
        capacity_gib=v.get("capacity_gib") if hardware is None else None,
        policy=policy if policy in MODEL_POLICIES else "lru", fleet=_fleet(v), conversations=conversations,
        offload=offload_from_values(v, sized_offload), engine=engine_options(v),
        vllm=bool(v.get("vllm")), hybrid_allocator=not v.get("no_hybrid_allocator"),
        mamba_cache_mode=v.get("mamba_cache_mode") or "align",
    )


def synthetic_only(scenario: Scenario, what: str) -> None:
    if scenario.conversations is not None:
        raise UsageError(f"--conversations: {what}")


def add_advise_args(p: argparse.ArgumentParser) -> None:
    """``--advise``, ``--target-hit-rate`` and ``--policy`` for ``kvsim calc`` (and the page)."""
    g = p.add_argument_group("advice")
    g.add_argument("--advise", action="store_true",
                   help="also print quantified recommendations (KV dtype, memory, GPUs, block size, policy)")
    g.add_argument("--target-hit-rate", type=float, default=DEFAULT_TARGET,
                   help=f"token hit rate the memory advice aims at (default {DEFAULT_TARGET:g})")
    g.add_argument("--policy", default="lru", choices=list(MODEL_POLICIES),
                   help="your engine's eviction policy, for the advice (default lru, as vLLM)")
