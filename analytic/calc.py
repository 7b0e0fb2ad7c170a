"""One calculation as ``kvsim calc`` shows it: sizing, then each requested model."""

from __future__ import annotations

from analytic import seed
from analytic.fifo import fifo_model
from analytic.lru import lru_model
from analytic.scenario import METHODS
from analytic.sizing import GIB, Capacity, bytes_for_sequence
from analytic.specs import DTYPE_BYTES, ModelSpec, Workload



def mean_prompt_tokens(workload: Workload) -> float:
    """Mean prompt length over a conversation's turns (exact for fixed turns and sizes)."""
    mean_turns = workload.turns.mean
    return (workload.system_prompt_tokens + workload.input_tokens.mean
            + (mean_turns - 1) / 2 * workload.tokens_per_turn)


def memory_summary(model: ModelSpec, capacity: Capacity, workload: Workload, kv_dtype: str) -> dict:
    """The capacity, plus what a sliding-window model would need at the workload's prompts."""
    out = capacity.as_dict()
    if model.sliding_layers:
        ctx = max(1, round(mean_prompt_tokens(workload)))
        exact = bytes_for_sequence(model, ctx, kv_dtype) / ctx
        out["bytes_per_token_at_mean_prompt"] = exact
        out["bytes_per_token_note"] = (
            f"upper bound used: every layer caches every token, which is what an engine without a "
            f"hybrid (per-layer-type) KV allocator reserves; the {model.sliding_layers} sliding layers "
            f"need only their {model.sliding_window}-token window, {exact:,.0f} B/token at the mean "
            f"prompt of {ctx} tokens"
        )
    return out


def seed_inputs(model: ModelSpec, workload: Workload, kv_dtype: str, model_size_gb: float) -> dict:
    """The original calculator's inputs for this scenario (its own per-token formula included)."""
    if workload.tokens_per_turn <= 0:  # it divides by the tokens a turn adds
        raise ValueError("input-tokens + output-tokens must be >= 1 for the seed model, which divides by the tokens "
                         "a turn adds; use --method lru or fifo")
    return {
        "memory_per_token_bytes": seed.memory_per_token(model.layers, model.kv_heads, model.head_dim,
                                                        DTYPE_BYTES[kv_dtype]),
        "model_size_gb": model_size_gb,
        "turns": workload.turns.mean,
        "arrival_rate": workload.arrival_rate,
        "interval": workload.think_time.mean,
        "seq_len": workload.tokens_per_turn,
    }


def calculate(
    model: ModelSpec,
    capacity: Capacity,
    workload: Workload,
    *,
    kv_dtype: str = "bf16",
    model_size_gb: float,
    methods: tuple[str, ...] = METHODS,
) -> dict:
    """``{"memory": {...}, "methods": {name: {...}}}``.

    The seed model sizes its own cache from GPU memory when the capacity came from memory (its
    1.2 x model-size rule, no utilisation fraction), and uses the given capacity otherwise.
    """
    out = {"memory": memory_summary(model, capacity, workload, kv_dtype), "methods": {}}
    for method in methods:
        if method == "seed":
            inputs = seed_inputs(model, workload, kv_dtype, model_size_gb)
            if capacity.gpu_memory_gib is not None:
                result = seed.seed_model(memory_gb=capacity.gpu_memory_gib, **inputs)
            else:
                result = seed.seed_model(cached_tokens=capacity.capacity_tokens, **inputs)
            result["request_hit_rate"] = result["hit_rate"]
            result["token_hit_rate"] = None  # the seed model predicts no token-level figure
            out["methods"]["seed"] = result
        elif method in ("lru", "fifo"):
            model_fn = lru_model if method == "lru" else fifo_model
            out["methods"][method] = model_fn(workload, capacity.capacity_blocks, capacity.block_size).as_dict()
        else:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    return out


__all__ = ["calculate", "memory_summary", "GIB"]
