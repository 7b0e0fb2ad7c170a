"""The scenario: everything one question needs, as a value.

A :class:`Scenario` is the model, the memory (GPUs, or the cache capacity directly), the
workload (synthetic, or template conversations), the cache configuration and the fleet. The
command line, the calculator page and ``kvsim sweep`` each build one from their inputs with the
same function (``kvsim.cli.args.scenario_from_values``); the models, the advice, the sensitivity
analysis and the simulator's commands take it. Frozen and validated: a bad value raises
``ValueError`` naming the field by its flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from analytic.serving import EngineOptions, EngineSpec
from analytic.sizing import GIB, Capacity, capacity_from_gib, capacity_from_memory, capacity_from_tokens
from analytic.offload import (DEFAULT_CPU_BANDWIDTH_GBPS, DEFAULT_DISK_BANDWIDTH_GBPS, GB, MAX_TIER_BLOCKS,
                              OFFLOAD_MODES, Tiers)
from analytic.specs import DEFAULT_BLOCK_SIZE, DTYPE_BYTES, Hardware, ModelSpec, Workload, check_dtype, check_positive

if TYPE_CHECKING:
    from analytic.hybrid import HybridPlan
    from analytic.ttl import ModelResult

Evaluate = Callable[[Workload, int, int, str], "ModelResult"]

MAX_INSTANCES = 10_000  # a fleet simulation keeps a cache per instance: beyond this it is a typo
MODEL_POLICIES = ("lru", "fifo")  # the eviction policies the analytic models know
# How vLLM caches Mamba states for prefix caching, as the simulator's hybrid cache knows it
# (kvsim.hybrid_cache): align (0.33: at prefill-chunk ends) and all (before 0.33: at every block
# boundary). Not analytic.hybrid.MAMBA_CACHE_MODES, the sizing's: align (prefix caching on), none.
MAMBA_PREFIX_CACHE_MODES = ("align", "all")
METHODS = ("seed", *MODEL_POLICIES)  # what kvsim calc computes: the original calculator and the models


def default_evaluate(workload: Workload, capacity_blocks: int, block_size: int, method: str) -> ModelResult:
    """``analytic.plan.model``: what ``Scenario.evaluate`` calls unless given a cached one."""
    from analytic.plan import model  # scipy-heavy: imported when a model is evaluated, not to build a scenario

    return model(workload, capacity_blocks, block_size, method)


@dataclass(frozen=True)
class Fleet:
    """Serving instances behind a router.

    ``None`` means "not asked for": one instance, and the default router (affinity) if a fleet
    is asked for at all. ``instance_capacity_tokens`` gives instances of different sizes; the
    cache-aware router's thresholds are ``cache_threshold``, ``balance_abs``, ``balance_rel``.
    """

    instances: int | None = None
    router: str | None = None
    instance_capacity_tokens: tuple[int, ...] | None = None
    cache_threshold: float | None = None
    balance_abs: int | None = None
    balance_rel: float | None = None

    def __post_init__(self) -> None:
        if self.instances is not None:
            check_positive("instances", self.instances, integer=True, at_most=MAX_INSTANCES)
        if self.instance_capacity_tokens is not None:
            if not 1 <= len(self.instance_capacity_tokens) <= MAX_INSTANCES:
                raise ValueError(f"instance-capacity-tokens must list 1 to {MAX_INSTANCES:,} capacities "
                                 f"(got {len(self.instance_capacity_tokens):,})")
            if self.instances is not None and self.instances != len(self.instance_capacity_tokens):
                raise ValueError(f"--instances must equal the number of --instance-capacity-tokens "
                                 f"({len(self.instance_capacity_tokens)}) (got {self.instances})")
            for tokens in self.instance_capacity_tokens:
                check_positive("instance-capacity-tokens", tokens, integer=True, allow_zero=True)

    @property
    def routed(self) -> bool:
        """Whether instances or a router were asked for (the fleet models apply)."""
        return self.instances is not None or self.router is not None

    @property
    def simulated(self) -> bool:
        """Whether the fleet simulator is needed (a fleet, or instances of their own sizes)."""
        return self.routed or self.instance_capacity_tokens is not None

    @property
    def size(self) -> int:
        if self.instance_capacity_tokens is not None:
            return len(self.instance_capacity_tokens)
        return 1 if self.instances is None else self.instances

    def router_options(self) -> dict:
        """The cache-aware router's keyword arguments that were given."""
        names = ("cache_threshold", "balance_abs", "balance_rel")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class Offload:
    """Tiers below the GPU (CPU DRAM, local disk) as asked: each tier's size in GiB (sized with the
    model's KV bytes per token, as vLLM's ``--kv-offloading-size``), in tokens or in blocks (at most
    one of the three per tier; none: no such tier), how they are filled (``mode``, see
    :class:`~analytic.specs.Tiers`) and their bandwidth to the GPU (decimal GB/s)."""

    cpu_gib: float | None = None
    cpu_tokens: int | None = None
    cpu_blocks: int | None = None
    disk_gib: float | None = None
    disk_tokens: int | None = None
    disk_blocks: int | None = None
    mode: str = OFFLOAD_MODES[0]
    cpu_bandwidth_gbps: float = DEFAULT_CPU_BANDWIDTH_GBPS
    disk_bandwidth_gbps: float = DEFAULT_DISK_BANDWIDTH_GBPS

    def __post_init__(self) -> None:
        for tier in ("cpu", "disk"):
            sizes = {f"{tier}-offload-gib": self.__dict__[f"{tier}_gib"],
                     f"{tier}-capacity-tokens": self.__dict__[f"{tier}_tokens"],
                     f"{tier}-capacity-blocks": self.__dict__[f"{tier}_blocks"]}
            given = [name for name, v in sizes.items() if v is not None]
            if len(given) > 1:
                raise ValueError(f"give one of {', '.join(given)}, not both")
            for name, v in sizes.items():
                if v is not None:
                    check_positive(name, v, integer=not name.endswith("gib"), allow_zero=True,
                                   at_most=MAX_TIER_BLOCKS * 1024)
        if self.mode not in OFFLOAD_MODES:
            raise ValueError(f"offload-mode must be one of {', '.join(OFFLOAD_MODES)} (got {self.mode!r})")
        check_positive("cpu-bandwidth-gbps", self.cpu_bandwidth_gbps, at_most=1e5)
        check_positive("disk-bandwidth-gbps", self.disk_bandwidth_gbps, at_most=1e5)

    @property
    def asked(self) -> bool:
        """Whether any tier below the GPU was asked for (even of size 0)."""
        return any(v is not None for v in (self.cpu_gib, self.cpu_tokens, self.cpu_blocks,
                                           self.disk_gib, self.disk_tokens, self.disk_blocks))

    def tier_blocks(self, tier: str, bytes_per_token: float, block_size: int) -> int:
        """The size of ``tier`` (cpu or disk) in blocks (0 if not asked for)."""
        gib, tokens, blocks = (self.__dict__[f"{tier}_{unit}"] for unit in ("gib", "tokens", "blocks"))
        if blocks is not None:
            return int(blocks)
        if gib is not None:
            tokens = int(gib * GIB / bytes_per_token)
        return 0 if tokens is None else int(tokens) // block_size

    def tiers(self, bytes_per_token: float, block_size: int) -> Tiers:
        """The :class:`~analytic.specs.Tiers` the simulator and the models take."""
        return Tiers(self.tier_blocks("cpu", bytes_per_token, block_size),
                     self.tier_blocks("disk", bytes_per_token, block_size), self.mode,
                     bytes_per_token / (self.cpu_bandwidth_gbps * GB),
                     bytes_per_token / (self.disk_bandwidth_gbps * GB))


@dataclass(frozen=True)
class Scenario:
    """One deployment and its workload: the inputs of ``kvsim calc`` and ``kvsim simulate`` as values.

    The memory is ``hardware`` (GPU memory -> capacity) or the capacity directly
    (``capacity_tokens`` or ``capacity_gib``): exactly one of the three. ``policy`` is the
    engine's eviction policy for the models and the advice (lru or fifo; vLLM's prefix cache is
    LRU). ``conversations`` are template conversation files that replace the synthetic turns
    (then ``block_size`` is the templates' own unless given).
    """

    model: ModelSpec
    workload: Workload
    hardware: Hardware | None = None
    kv_dtype: str = "bf16"
    weight_dtype: str = "bf16"
    block_size: int = DEFAULT_BLOCK_SIZE
    model_size_gib: float | None = None
    capacity_tokens: int | None = None
    capacity_gib: float | None = None
    policy: str = "lru"
    fleet: Fleet = field(default_factory=Fleet)
    conversations: tuple[str, ...] | None = None
    offload: Offload = field(default_factory=Offload)
    engine: EngineOptions = field(default_factory=EngineOptions)
    # The simulator's cache is vLLM's KV cache manager (``vllm``): a hybrid model gets its hybrid
    # manager, unless ``hybrid_allocator`` is False (vLLM's --disable-hybrid-kv-cache-manager: the
    # upper bound); Mamba states are cached as ``mamba_cache_mode`` says.
    vllm: bool = False
    hybrid_allocator: bool = True
    mamba_cache_mode: str = "align"

    def __post_init__(self) -> None:
        check_dtype("kv-dtype", self.kv_dtype)
        check_dtype("weight-dtype", self.weight_dtype)
        if self.mamba_cache_mode not in MAMBA_PREFIX_CACHE_MODES:
            raise ValueError(f"mamba-cache-mode must be one of {', '.join(MAMBA_PREFIX_CACHE_MODES)} "
                             f"(got {self.mamba_cache_mode!r})")
        given = [x is not None for x in (self.hardware, self.capacity_tokens, self.capacity_gib)]
        if sum(given) != 1:
            raise ValueError("give exactly one of GPU memory (hardware), capacity-tokens and capacity-gib")
        if self.policy not in MODEL_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(MODEL_POLICIES)} (got {self.policy!r})")

    @property
    def hybrid_cache(self) -> bool:
        """Whether the simulator serves this scenario through vLLM's hybrid KV cache manager
        (kvsim.hybrid_cache): ``vllm``, a hybrid model and the hybrid allocator."""
        return self.vllm and self.hybrid_allocator and self.model.is_hybrid

    def engine_spec(self) -> EngineSpec:
        """The step engine of this deployment: its step time from the model on the GPUs (the
        roofline needs a GPU preset), vLLM's limits for that GPU unless given."""
        hw = self.hardware
        gpu = hw.gpu if hw is not None and hw.gpu != "custom" else None
        return self.engine.spec(self.model, gpu, hw.gpu_memory_gib if hw else None, hw.gpus if hw else 1,
                                self.weight_dtype, self.kv_dtype)

    def capacity(self) -> Capacity:
        if self.hardware is not None:
            return capacity_from_memory(self.model, self.hardware, self.kv_dtype, self.weight_dtype,
                                        self.block_size, model_size_gib=self.model_size_gib)
        if self.capacity_tokens is not None:
            return capacity_from_tokens(self.model, self.capacity_tokens, self.kv_dtype, self.block_size)
        return capacity_from_gib(self.model, self.capacity_gib, self.kv_dtype, self.block_size)

    def kv_cache_bytes(self) -> float:
        """The KV cache memory of one instance, in bytes over its GPUs: what :meth:`capacity` fills
        with every layer caching every token (GPU memory - weights - activations, or given)."""
        capacity = self.capacity()
        if capacity.source == "gpu-memory":
            return (capacity.usable_gib - capacity.weights_gib - capacity.activation_reserve_gib) * GIB
        return capacity.kv_cache_gib * GIB

    def hybrid_plan(self) -> HybridPlan:
        """vLLM's KV cache configuration for this scenario's model and KV memory
        (:func:`analytic.hybrid.plan`): its groups, block size and pool of blocks (vLLM's
        ``--disable-hybrid-kv-cache-manager`` without ``hybrid_allocator``)."""
        from analytic.hybrid import plan

        return plan(self.model, self.kv_cache_bytes(), kv_dtype=self.kv_dtype, block_size=self.block_size,
                    tp=self.hardware.gpus if self.hardware is not None else 1, hybrid_allocator=self.hybrid_allocator)

    def weights_gib(self) -> float:
        """Weights in GiB: given, or parameters x weight-dtype bytes (the original tool's convention)."""
        if self.model_size_gib is not None:
            return self.model_size_gib
        if self.model.params_b is None:
            raise ValueError("--params-b or --model-size-gb is required with a custom model")
        return self.model.params_b * DTYPE_BYTES[self.weight_dtype]

    def instance_capacities(self) -> list[int]:
        """Cache blocks of each instance: the memory's capacity on every instance, or the
        per-instance token capacities."""
        if self.fleet.instance_capacity_tokens is None:
            return [self.capacity().capacity_blocks] * self.fleet.size
        return [capacity_from_tokens(self.model, t, self.kv_dtype, self.block_size).capacity_blocks
                for t in self.fleet.instance_capacity_tokens]

    def tiers(self) -> Tiers | None:
        """The tiers below the GPU, in blocks of this scenario's model (None: none asked for)."""
        if not self.offload.asked:
            return None
        return self.offload.tiers(self.capacity().bytes_per_token, self.block_size)

    def evaluate(self, method: str | None = None, evaluate: Evaluate | None = None) -> ModelResult:
        """The model (``method``, default the scenario's policy) at this scenario's capacity."""
        capacity = self.capacity()
        return (evaluate or default_evaluate)(self.workload, capacity.capacity_blocks, self.block_size, method or self.policy)


def inputs_summary(model: ModelSpec, workload: Workload, **extra) -> dict:
    """Every input, JSON-ready, so a result can be reproduced from its own record."""
    model_dict = asdict(model)
    if not model.layer_groups:  # a model described by its fields alone: its record as before hybrid models
        del model_dict["layer_groups"]
    return {"model": model_dict, "workload": workload_dict(workload), **extra}


def workload_dict(workload: Workload) -> dict:
    def dist(d) -> dict:
        out = {k: v for k, v in asdict(d).items() if k not in ("samples", "pmf_pairs", "name")}
        if getattr(d, "samples", ()):
            out["samples"] = len(d.samples)
        if getattr(d, "pmf_pairs", ()):
            out["pmf"] = {str(v): p for v, p in d.pmf_pairs}
        return out

    return {
        "arrival_rate": workload.arrival_rate,
        "turns": dist(workload.turns),
        "think_time": dist(workload.think_time),
        "input_tokens": dist(workload.input_tokens),
        "output_tokens": dist(workload.output_tokens),
        "system_prompt_tokens": workload.system_prompt_tokens,
    }
