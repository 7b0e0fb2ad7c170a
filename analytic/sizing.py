"""KV bytes per token and cache capacity from GPU memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from analytic.distributions import MAX_TOKENS
from analytic.specs import DEFAULT_BLOCK_SIZE, DTYPE_BYTES, Hardware, ModelSpec, check_dtype, check_positive

GIB = 1024**3
# A trillion tokens (~100 PiB of KV at Llama-3.1-8B's 131 KB/token) is more than any deployment
# holds: a capacity beyond it is a typo, and would overflow the simulator's integer block counts.
MAX_CAPACITY_TOKENS = 10**12
# A block longer than the longest context of any model is a typo (and a cache of zero blocks).
MAX_BLOCK_SIZE = MAX_TOKENS
# Model geometry: the largest real models have ~130 layers, 128 KV heads of 256 dims and an MLA
# rank of 512; beyond these bounds a value is a typo (a huge one makes a cache of zero tokens).
GEOMETRY_LIMITS = {"layers": 10_000, "kv_heads": 10_000, "head_dim": 100_000, "kv_lora_rank": 100_000,
                   "qk_rope_head_dim": 100_000, "sliding_window": MAX_CAPACITY_TOKENS}
# Weights: the largest models have ~2 trillion parameters; 100 trillion (or a million GiB) is a typo.
MAX_PARAMS_B = 100_000.0
MAX_MODEL_SIZE_GIB = 1e6
SOURCE_FLAGS = {"gpu-memory": "gpu-memory-gb", "capacity-tokens": "capacity-tokens", "capacity-gib": "capacity-gib"}


def bytes_per_token(model: ModelSpec, kv_dtype: str = "bf16") -> float:
    """KV bytes one token takes when every attention layer caches every token (no sliding window).

    Full attention: 2 (K and V) x layers x kv_heads x head_dim x dtype bytes.
    MLA: layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes (the latent and the rope key).
    Layers with a recurrent state (Mamba, linear attention) cache nothing per token and are not
    counted (:attr:`~analytic.specs.ModelSpec.kv_layers`); their state is per request
    (:mod:`analytic.hybrid`).
    """
    check_dtype("kv-dtype", kv_dtype)
    check_geometry(model)
    if model.is_mla:
        return model.kv_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * DTYPE_BYTES[kv_dtype]
    return 2 * model.kv_layers * model.kv_heads * model.head_dim * DTYPE_BYTES[kv_dtype]


def check_geometry(model: ModelSpec) -> None:
    """Every dimension of the model within :data:`GEOMETRY_LIMITS` (ValueError naming the flag)."""
    for field, limit in GEOMETRY_LIMITS.items():
        check_positive(field.replace("_", "-"), getattr(model, field), integer=True, allow_zero=True, at_most=limit)


def check_block_size(block_size) -> None:
    check_positive("block-size", block_size, integer=True, at_most=MAX_BLOCK_SIZE)


def bytes_for_sequence(model: ModelSpec, tokens: int, kv_dtype: str = "bf16") -> float:
    """Exact KV bytes of one sequence of ``tokens`` tokens: sliding layers keep only their window."""
    check_positive("tokens", tokens, integer=True, allow_zero=True)
    per_layer = bytes_per_token(model, kv_dtype) / model.kv_layers
    full_layers = model.kv_layers - model.sliding_layers
    return per_layer * (full_layers * tokens + model.sliding_layers * min(tokens, model.sliding_window))


def weights_bytes(params_b: float, weight_dtype: str = "bf16") -> float:
    check_dtype("weight-dtype", weight_dtype)
    check_positive("params-b", params_b, at_most=MAX_PARAMS_B)
    return params_b * 1e9 * DTYPE_BYTES[weight_dtype]


@dataclass(frozen=True)
class Capacity:
    """How much KV cache a deployment has, and how it was obtained."""

    bytes_per_token: float
    capacity_tokens: int
    capacity_blocks: int
    block_size: int
    kv_cache_gib: float
    source: str  # "gpu-memory", "capacity-tokens" or "capacity-gib"
    gpu_memory_gib: float | None = None  # total over the GPUs
    usable_gib: float | None = None  # after the memory-utilisation fraction
    weights_gib: float | None = None
    activation_reserve_gib: float | None = None
    hybrid: dict | None = None  # vLLM's hybrid KV cache manager's plan (analytic.hybrid), for hybrid models

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _from_tokens(bpt: float, tokens: float, block_size: int, source: str, **extra) -> Capacity:
    """``tokens`` (a float from memory sizes is floored) in blocks of ``block_size``."""
    if not tokens <= MAX_CAPACITY_TOKENS:
        raise ValueError(f"{SOURCE_FLAGS[source]}: a cache of {tokens:.3g} tokens is more than the "
                         f"{MAX_CAPACITY_TOKENS:.0e} kvsim takes")
    tokens = int(tokens)
    blocks = tokens // block_size
    return Capacity(bpt, tokens, blocks, block_size, tokens * bpt / GIB, source, **extra)


def capacity_from_memory(
    model: ModelSpec,
    hardware: Hardware,
    kv_dtype: str = "bf16",
    weight_dtype: str = "bf16",
    block_size: int = DEFAULT_BLOCK_SIZE,
    model_size_gib: float | None = None,
) -> Capacity:
    """GPU memory x GPUs x utilisation - weights - activation reserve -> KV bytes -> tokens -> blocks.

    Weights are ``model_size_gib`` when given, else parameters x weight-dtype bytes.
    """
    check_block_size(block_size)
    if model_size_gib is not None:
        check_positive("model-size-gb", model_size_gib, at_most=MAX_MODEL_SIZE_GIB)
        weights = model_size_gib * GIB
    elif model.params_b is None:
        raise ValueError("params-b or model-size-gb is required to size the cache from GPU memory")
    else:
        weights = weights_bytes(model.params_b, weight_dtype)
    bpt = bytes_per_token(model, kv_dtype)
    total = hardware.gpu_memory_gib * hardware.gpus * GIB
    usable = total * hardware.memory_utilization
    reserve = hardware.activation_reserve_gib * GIB
    kv_bytes = usable - weights - reserve
    if kv_bytes <= 0:
        raise ValueError(
            f"gpu-memory-gb: {usable / GIB:.1f} GiB usable ({hardware.gpus} x {hardware.gpu_memory_gib} GiB x "
            f"{hardware.memory_utilization}) does not hold the weights ({weights / GIB:.1f} GiB) and the "
            f"activation reserve ({hardware.activation_reserve_gib} GiB); use more or larger GPUs"
        )
    return _from_tokens(
        bpt, kv_bytes // bpt, block_size, "gpu-memory",
        gpu_memory_gib=total / GIB, usable_gib=usable / GIB, weights_gib=weights / GIB,
        activation_reserve_gib=hardware.activation_reserve_gib,
    )


def capacity_from_tokens(model: ModelSpec, tokens: int, kv_dtype: str = "bf16",
                         block_size: int = DEFAULT_BLOCK_SIZE) -> Capacity:
    check_positive("capacity-tokens", tokens, integer=True)
    check_block_size(block_size)
    return _from_tokens(bytes_per_token(model, kv_dtype), tokens, block_size, "capacity-tokens")


def capacity_from_gib(model: ModelSpec, gib: float, kv_dtype: str = "bf16",
                      block_size: int = DEFAULT_BLOCK_SIZE) -> Capacity:
    check_positive("capacity-gib", gib)
    check_block_size(block_size)
    bpt = bytes_per_token(model, kv_dtype)
    return _from_tokens(bpt, gib * GIB / bpt, block_size, "capacity-gib")


def memory_for_tokens(model: ModelSpec, tokens: int, kv_dtype: str = "bf16", weight_dtype: str = "bf16",
                      memory_utilization: float = 0.9, activation_reserve_gib: float = 0.0,
                      model_size_gib: float | None = None) -> float:
    """Total GPU memory (GiB, over all GPUs) whose KV share holds ``tokens``: the inverse of
    ``capacity_from_memory``."""
    check_positive("tokens", tokens, allow_zero=True)
    if model_size_gib is not None:
        weights = model_size_gib * GIB
    elif model.params_b is None:
        raise ValueError("params-b or model-size-gb is required to size GPU memory")
    else:
        weights = weights_bytes(model.params_b, weight_dtype)
    kv = tokens * bytes_per_token(model, kv_dtype)
    return (kv + weights + activation_reserve_gib * GIB) / memory_utilization / GIB
