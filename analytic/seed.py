"""The original KV-cache hit-rate calculator (the *seed model*), reproduced exactly as a baseline.

Formulas (DESIGN.md §5), with GB meaning 2**30 bytes as in the original::

    memory_per_token   = 2 · layers · kv_heads · head_dim · kv_dtype_bytes
    max_cached_tokens  = int((memory_gb − 1.2 · model_size_gb) · 2**30 / memory_per_token)
    max_cached_convs   = max_cached_tokens / (L · seq_len)
    active             = λ · L · interval                      (Little's law)
    hit_rate           = (1 − 1/L) · min(1, max_cached_convs / active)
    derived_qps        = λ · L

Known flaws, kept on purpose so that the baseline is the original:

* The hit rate is a request-level figure (turn 1 can never hit), ignores the time structure of
  eviction (a conversation idle longer than the cache's memory loses its context whatever the
  average occupancy) and assumes every conversation occupies ``L · seq_len`` tokens for its
  whole lifetime, while its context actually grows turn by turn.
* ``1.2 · model_size`` stands in for all non-KV memory; there is no utilisation fraction.
* The per-token formula knows neither MLA (DeepSeek-V3 would count 128 heads × 192) nor
  sliding-window layers.
* Its Llama-3-8B example used 32 KV heads; the model has 8 (GQA), which over-states the KV
  bytes per token four times.
* ``tokens_per_second`` counts ``seq_len`` tokens per request although a prompt carries the
  whole context; the recommendation assumes hit rate grows linearly with cached conversations
  and calls a target "achievable" when it needs at most twice the current memory.
"""

from __future__ import annotations

GB = 1024**3
MODEL_OVERHEAD = 1.2  # the original's "1.2x model memory overhead"


def memory_per_token(layers: int, kv_heads: int, head_dim: int, kv_dtype_bytes: float) -> float:
    return 2 * layers * kv_heads * head_dim * kv_dtype_bytes


def max_cached_tokens(memory_per_token_bytes: float, memory_gb: float, model_size_gb: float) -> int:
    available = memory_gb * GB - model_size_gb * GB * MODEL_OVERHEAD
    return int(available / memory_per_token_bytes) if available > 0 else 0


def seed_model(
    *,
    memory_per_token_bytes: float,
    model_size_gb: float,
    turns: float,
    arrival_rate: float,
    interval: float,
    seq_len: float,
    memory_gb: float | None = None,
    cached_tokens: int | None = None,
) -> dict:
    """Every output of the original ``calculate_detailed_metrics``.

    Give ``memory_gb`` (the original's available memory) or ``cached_tokens`` (a capacity fixed
    elsewhere, so that the seed's hit formula can be compared at equal capacity).
    """
    if cached_tokens is None:
        cached_tokens = max_cached_tokens(memory_per_token_bytes, memory_gb, model_size_gb)
    derived_qps = arrival_rate * turns
    active = arrival_rate * turns * interval
    if cached_tokens <= 0:
        hit_rate = utilization = cached_convs = 0.0
        active = 0  # the original returns early with active_conversations = 0
    else:
        max_convs = cached_tokens / (turns * seq_len)
        within = 1.0 - 1.0 / turns
        hit_rate = within if active <= max_convs else within * (max_convs / active)
        utilization = min(active / max_convs, 1.0) if max_convs > 0 else 0
        cached_convs = min(active, max_convs)
        hit_rate = max(0.0, min(1.0, hit_rate))
    tokens_per_second = derived_qps * seq_len
    return {
        "hit_rate": hit_rate,
        "cache_utilization": utilization,
        "active_conversations": active,
        "avg_cached_conversations": cached_convs,
        "max_cached_tokens": cached_tokens,
        "memory_per_token_bytes": memory_per_token_bytes,
        "model_memory_gb": model_size_gb * MODEL_OVERHEAD,
        "cache_memory_gb": cached_tokens * memory_per_token_bytes / GB,
        "derived_qps": derived_qps,
        "tokens_per_second": tokens_per_second,
        "cache_hits_per_second": tokens_per_second * hit_rate,
    }


def seed_recommendation(
    *,
    memory_per_token_bytes: float,
    model_size_gb: float,
    turns: float,
    arrival_rate: float,
    interval: float,
    seq_len: float,
    memory_gb: float,
    target_hit_rate: float = 0.8,
) -> dict:
    """The original ``optimize_memory_allocation``: memory to reach ``target_hit_rate``."""
    current = seed_model(
        memory_per_token_bytes=memory_per_token_bytes, model_size_gb=model_size_gb, turns=turns,
        arrival_rate=arrival_rate, interval=interval, seq_len=seq_len, memory_gb=memory_gb,
    )["hit_rate"]
    if current >= target_hit_rate:
        return {"recommended_memory_gb": memory_gb, "current_hit_rate": current, "achievable": True}
    active = arrival_rate * turns * interval
    required_tokens = active * target_hit_rate * turns * seq_len
    required = required_tokens * memory_per_token_bytes / GB + model_size_gb * MODEL_OVERHEAD
    return {
        "recommended_memory_gb": required,
        "current_hit_rate": current,
        "target_hit_rate": target_hit_rate,
        "additional_memory_needed_gb": max(0, required - memory_gb),
        "achievable": required <= memory_gb * 2,
    }
