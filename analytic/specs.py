"""Frozen, validated specs shared by the models and the simulator: model, hardware, workload.

A bad value raises ``ValueError`` naming the field (as its CLI flag) and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analytic.checks import check_positive
from analytic.distributions import MAX_TOKENS, ThinkTime, TokenCount, TurnCount

# Bytes per element of each KV-cache / weight dtype; int4 packs two values per byte.
DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}

DEFAULT_BLOCK_SIZE = 16  # vLLM's default block size (tokens per KV block)
DEFAULT_MEMORY_UTILIZATION = 0.9  # vLLM's --gpu-memory-utilization default
# Peak activation memory that vLLM's profiling run sets aside (forward pass at
# max_num_batched_tokens, sampler, CUDA graphs). It is typically 1-3 GiB for 7-70B models at
# vLLM's default batch-token budgets; 2 GiB per deployment is our documented middle value.
DEFAULT_ACTIVATION_RESERVE_GIB = 2.0
# Bounds that catch typos before they overflow: 100 TiB per GPU (a B200 has 180 GiB), 100,000 GPUs.
MAX_GPU_MEMORY_GIB = 100_000.0
MAX_GPUS = 100_000
MAX_ARRIVAL_RATE = 1e6  # conversations per second: a thousand times the busiest public services
DEFAULT_TARGET = 0.8  # token hit rate the advice and the page aim at unless told


def check_dtype(name: str, value: str) -> None:
    if value not in DTYPE_BYTES:
        raise ValueError(f"{name} must be one of {', '.join(DTYPE_BYTES)} (got {value!r})")


# The kinds of layer a KV cache distinguishes (vLLM's KV cache specs): full attention (MHA/GQA/MQA
# or MLA: every token of the context), sliding window (the last ``window`` tokens) and recurrent
# state (Mamba 1/2 SSMs and linear attention such as Qwen3-Next's Gated DeltaNet: one fixed-size
# state per request, whatever the context).
LAYER_KINDS = ("full", "sliding", "mamba")


@dataclass(frozen=True)
class LayerGroup:
    """``layers`` layers of one kind (:data:`LAYER_KINDS`).

    A sliding group keeps ``window`` tokens. A mamba group's state per layer and request is the
    arrays ``state_shapes`` (conv state, SSM / recurrent state, at tensor parallelism 1) of
    ``state_dtypes``; tensor parallelism divides axis ``shard_axes[i]`` of shape i. vLLM's
    prefix caching (``mamba_cache_mode="align"``) keeps 2 + ``checkpoint_blocks`` states per
    request (Mamba2 and Gated DeltaNet mixers export a mid-prefill checkpoint: 1) and aligns
    blocks to ``checkpoint_alignment`` tokens (Gated DeltaNet on FlashInfer: 64).
    """

    kind: str
    layers: int
    window: int = 0
    state_shapes: tuple[tuple[int, ...], ...] = ()
    state_dtypes: tuple[str, ...] = ()
    shard_axes: tuple[int, ...] = ()
    checkpoint_blocks: int = 0
    checkpoint_alignment: int = 1
    mixer: str = ""  # what computes the state, for the output: mamba1, mamba2, gated-deltanet

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"layer-kind must be one of {', '.join(LAYER_KINDS)} (got {self.kind!r})")
        check_positive("layers", self.layers, integer=True)
        object.__setattr__(self, "state_shapes", tuple(tuple(s) for s in self.state_shapes))
        object.__setattr__(self, "state_dtypes", tuple(self.state_dtypes))
        object.__setattr__(self, "shard_axes", tuple(self.shard_axes) or tuple(0 for _ in self.state_shapes))
        if self.kind == "sliding":
            check_positive("sliding-window", self.window, integer=True)
        elif self.window:
            raise ValueError(f"sliding-window applies to sliding layers only (a {self.kind} group got {self.window})")
        if self.kind == "mamba":
            if not self.state_shapes or len(self.state_dtypes) != len(self.state_shapes) \
                    or len(self.shard_axes) != len(self.state_shapes):
                raise ValueError("state-shapes, state-dtypes and shard-axes of a mamba group must be given, one "
                                 "per state array")
            for dtype in self.state_dtypes:
                check_dtype("state-dtype", dtype)
            for shape, axis in zip(self.state_shapes, self.shard_axes):
                for dim in shape:
                    check_positive("state-shape", dim, integer=True, allow_zero=True)
                if not 0 <= axis < len(shape):
                    raise ValueError(f"shard-axes: axis {axis} is not an axis of state shape {shape}")
            if self.state_bytes() <= 0:
                raise ValueError(f"state-shapes: the SSM state of a mamba group must be > 0 bytes (got {self.state_shapes})")
        elif self.state_shapes:
            raise ValueError(f"state-shapes apply to mamba layers only (a {self.kind} group got them)")
        check_positive("checkpoint-blocks", self.checkpoint_blocks, integer=True, allow_zero=True)
        check_positive("checkpoint-alignment", self.checkpoint_alignment, integer=True)

    def state_bytes(self, tp: int = 1) -> int:
        """Bytes of one layer's state for one request on one of ``tp`` tensor-parallel GPUs (vLLM's
        MambaSpec page before padding): each shape with its sharded axis divided by ``tp``."""
        total = 0.0
        for shape, dtype, axis in zip(self.state_shapes, self.state_dtypes, self.shard_axes):
            n = 1
            for i, dim in enumerate(shape):
                n *= dim // tp if i == axis else dim
            total += n * DTYPE_BYTES[dtype]
        return int(total)


@dataclass(frozen=True)
class ModelSpec:
    """Attention geometry and size of a model.

    MLA models (DeepSeek-V3/R1) set ``kv_lora_rank`` and ``qk_rope_head_dim``: their cache holds
    the compressed latent plus the rope key per layer, not per-head K and V. Sliding-window
    models set ``sliding_window`` (tokens) and ``sliding_layers`` (how many layers use it).
    """

    name: str = "custom"
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    params_b: float | None = None
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    sliding_window: int = 0
    sliding_layers: int = 0
    max_context: int | None = None
    # What the step time's roofline needs (analytic.steptime); None: not known. A dense model has
    # no experts, and its active parameters are all its parameters.
    attention_heads: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    experts: int | None = None
    experts_per_token: int | None = None
    active_params_b: float | None = None
    # The layers by kind, for hybrid models with linear-attention / SSM layers (``()``: derived from
    # ``layers``, ``sliding_window`` and ``sliding_layers``, see :attr:`groups`).
    layer_groups: tuple[LayerGroup, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_groups", tuple(
            g if isinstance(g, LayerGroup) else LayerGroup(**g) for g in (self.layer_groups or ())))
        check_positive("layers", self.layers, integer=True)
        check_positive("kv-heads", self.kv_heads, integer=True)
        check_positive("head-dim", self.head_dim, integer=True)
        if self.params_b is not None:
            check_positive("params-b", self.params_b)
        check_positive("kv-lora-rank", self.kv_lora_rank, integer=True, allow_zero=True)
        check_positive("qk-rope-head-dim", self.qk_rope_head_dim, integer=True, allow_zero=True)
        check_positive("sliding-window", self.sliding_window, integer=True, allow_zero=True)
        check_positive("sliding-layers", self.sliding_layers, integer=True, allow_zero=True)
        if self.sliding_layers > self.layers:
            raise ValueError(f"sliding-layers must be <= layers ({self.layers}) (got {self.sliding_layers})")
        if bool(self.sliding_window) != bool(self.sliding_layers):
            raise ValueError("sliding-window and sliding-layers must be given together")
        for name in ("attention_heads", "hidden_size", "intermediate_size", "experts", "experts_per_token"):
            if getattr(self, name) is not None:
                check_positive(name.replace("_", "-"), getattr(self, name), integer=True)
        if (self.experts is None) != (self.experts_per_token is None):
            raise ValueError("experts and experts-per-token must be given together")
        if self.experts is not None and self.experts_per_token > self.experts:
            raise ValueError(f"experts-per-token must be <= experts ({self.experts}) (got {self.experts_per_token})")
        if self.active_params_b is not None:
            check_positive("active-params-b", self.active_params_b)
            if self.params_b is not None and self.active_params_b > self.params_b:
                raise ValueError(f"active-params-b must be <= params-b ({self.params_b:g}) (got {self.active_params_b:g})")
        if self.layer_groups:
            sliding = [g for g in self.layer_groups if g.kind == "sliding"]
            if sum(g.layers for g in sliding) != self.sliding_layers or any(
                    g.window != self.sliding_window for g in sliding):
                raise ValueError("layer-groups: the sliding groups must match sliding-window and sliding-layers")
            if sum(g.layers for g in self.layer_groups if g.kind != "mamba") > self.layers:
                raise ValueError(f"layer-groups: more attention layers than layers ({self.layers})")

    @property
    def active_params(self) -> float | None:
        """Parameters (billions) one token's forward pass uses: all of a dense model's."""
        return self.params_b if self.active_params_b is None else self.active_params_b

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def groups(self) -> tuple[LayerGroup, ...]:
        """The layers by kind: ``layer_groups`` if given, else the full-attention layers and the
        sliding ones (a model without sliding layers: one full-attention group)."""
        if self.layer_groups:
            return self.layer_groups
        full = self.layers - self.sliding_layers
        return tuple(g for g in (LayerGroup("full", full) if full else None,
                                 LayerGroup("sliding", self.sliding_layers, self.sliding_window)
                                 if self.sliding_layers else None) if g is not None)

    @property
    def kv_layers(self) -> int:
        """Layers that cache a K/V (or MLA latent) entry per token: all but the recurrent ones."""
        if not self.layer_groups:
            return self.layers
        return sum(g.layers for g in self.layer_groups if g.kind != "mamba")

    @property
    def is_hybrid(self) -> bool:
        """Some layers keep less than the whole context (sliding window or recurrent state)."""
        return any(g.kind != "full" for g in self.groups)

    @property
    def attention(self) -> str:
        mamba = [g for g in self.layer_groups if g.kind == "mamba"]
        if mamba:
            parts = [f"{g.layers} {'MLA' if self.is_mla else 'full attention'}" if g.kind == "full" else
                     f"{g.layers} sliding window {g.window}" if g.kind == "sliding" else
                     f"{g.layers} {g.mixer or 'SSM'}" for g in self.layer_groups]
            return f"hybrid: {' + '.join(parts)} layers"
        if self.is_mla:
            return "MLA"
        if self.sliding_layers:
            return f"sliding window {self.sliding_window} on {self.sliding_layers}/{self.layers} layers"
        return "full attention (MHA/GQA/MQA)"


@dataclass(frozen=True)
class Hardware:
    """GPU memory of one serving instance (tensor parallel over ``gpus``)."""

    gpu_memory_gib: float = 80.0
    gpus: int = 1
    memory_utilization: float = DEFAULT_MEMORY_UTILIZATION
    activation_reserve_gib: float = DEFAULT_ACTIVATION_RESERVE_GIB
    gpu: str = "custom"

    def __post_init__(self) -> None:
        check_positive("gpu-memory-gb", self.gpu_memory_gib, at_most=MAX_GPU_MEMORY_GIB)
        check_positive("gpus", self.gpus, integer=True, at_most=MAX_GPUS)
        if not (isinstance(self.memory_utilization, (int, float)) and 0 < self.memory_utilization <= 1):
            raise ValueError(f"memory-utilization must be in (0, 1] (got {self.memory_utilization!r})")
        check_positive("activation-reserve-gib", self.activation_reserve_gib, allow_zero=True)


@dataclass(frozen=True)
class Workload:
    """Multi-turn conversations (DESIGN.md §2).

    Conversations arrive as a Poisson process (``arrival_rate`` per second); each has ``turns``
    requests; turn k sends ``input_tokens`` new tokens and receives ``output_tokens``; a think
    time separates a response from the next request. ``system_prompt_tokens`` are shared by all
    conversations and precede each one's context.
    """

    arrival_rate: float = 1.0
    turns: TurnCount = field(default_factory=lambda: TurnCount("fixed", 5))
    think_time: ThinkTime = field(default_factory=lambda: ThinkTime("exp", 30.0))
    input_tokens: TokenCount = field(default_factory=lambda: TokenCount("fixed", 200, name="input-tokens"))
    output_tokens: TokenCount = field(default_factory=lambda: TokenCount("fixed", 300, name="output-tokens"))
    system_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        check_positive("arrival-rate", self.arrival_rate, at_most=MAX_ARRIVAL_RATE)
        check_positive("system-prompt-tokens", self.system_prompt_tokens, integer=True, allow_zero=True,
                       at_most=MAX_TOKENS)
        if self.input_tokens.is_fixed and self.input_tokens.mean < 1 and self.system_prompt_tokens == 0:
            raise ValueError("input-tokens must be >= 1 when there is no system prompt")

    @property
    def tokens_per_turn(self) -> float:
        """Mean tokens a turn adds to the context (u + r): the seed model's sequence length."""
        return self.input_tokens.mean + self.output_tokens.mean

    @property
    def requests_per_second(self) -> float:
        return self.arrival_rate * self.turns.mean
