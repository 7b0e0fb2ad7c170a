"""The seed model against values worked out here from the original calculator's formulas."""

import pytest

from analytic import seed

GB = 1024**3
PATTERN = dict(turns=5, arrival_rate=2.0, interval=30.0, seq_len=1000)


def expected(layers, kv_heads, head_dim, model_size_gb, memory_gb=80.0, turns=5, rate=2.0, interval=30.0,
             seq=1000):
    per_token = 2 * layers * kv_heads * head_dim * 2  # fp16
    tokens = int((memory_gb * GB - model_size_gb * GB * 1.2) / per_token)
    max_convs = tokens / (turns * seq)
    active = rate * turns * interval
    hit = (1 - 1 / turns) * (1 if active <= max_convs else max_convs / active)
    return per_token, tokens, max_convs, active, hit


# The original tool's three examples: 80 GB, 5 turns, 2 conversations/s, 30 s, 1000 tokens.
@pytest.mark.parametrize("name,layers,kv_heads,size,hit_by_hand", [
    ("Mistral-Small-24B", 40, 8, 48.0, 0.8 * 146800 / 5000 / 300),
    ("Llama-3-8B (32 KV heads, as the original)", 32, 32, 16.0, 0.8 * 124518 / 5000 / 300),
    ("Qwen3-32B", 64, 8, 64.0, 0.8 * 13107 / 5000 / 300),
])
def test_original_examples(name, layers, kv_heads, size, hit_by_hand):
    per_token, tokens, max_convs, active, hit = expected(layers, kv_heads, 128, size)
    out = seed.seed_model(memory_per_token_bytes=per_token, model_size_gb=size, memory_gb=80.0, **PATTERN)
    assert out["memory_per_token_bytes"] == per_token
    assert out["max_cached_tokens"] == tokens
    assert out["hit_rate"] == pytest.approx(hit) == pytest.approx(hit_by_hand, abs=1e-12)
    if tokens > 0:
        assert out["active_conversations"] == active == 300
        assert out["avg_cached_conversations"] == pytest.approx(min(active, max_convs))
        assert out["cache_utilization"] == 1.0  # 300 active > what fits
    assert out["model_memory_gb"] == pytest.approx(size * 1.2)
    assert out["cache_memory_gb"] == pytest.approx(tokens * per_token / GB)
    assert out["derived_qps"] == 10.0
    assert out["tokens_per_second"] == 10000.0
    assert out["cache_hits_per_second"] == pytest.approx(10000.0 * hit)


def test_qwen3_32b_leaves_no_cache():
    # 80 - 64 * 1.2 = 3.2 GiB > 0, so it does cache: 3.2 GiB / 262144 B = 13107 tokens
    out = seed.seed_model(memory_per_token_bytes=262144, model_size_gb=64.0, memory_gb=80.0, **PATTERN)
    assert out["max_cached_tokens"] == int(3.2 * GB / 262144) == 13107
    assert out["hit_rate"] == pytest.approx(0.8 * (13107 / 5000) / 300)


def test_no_memory_left():
    out = seed.seed_model(memory_per_token_bytes=131072, model_size_gb=70.0, memory_gb=80.0, **PATTERN)
    assert out["max_cached_tokens"] == 0 and out["hit_rate"] == 0 and out["active_conversations"] == 0


def test_cache_sufficient():
    # Llama-3.1-8B with its real 8 KV heads at 80 GB: 451k tokens hold 90 conversations of 5000 tokens
    out = seed.seed_model(memory_per_token_bytes=131072, model_size_gb=16.0, memory_gb=80.0,
                          turns=5, arrival_rate=0.5, interval=30.0, seq_len=1000)
    tokens = int((80 - 19.2) * GB / 131072)
    assert out["max_cached_tokens"] == tokens
    assert out["active_conversations"] == 75.0 and 75 < tokens / 5000
    assert out["hit_rate"] == pytest.approx(0.8)
    assert out["cache_utilization"] == pytest.approx(75 / (tokens / 5000))
    assert out["avg_cached_conversations"] == 75.0


def test_equal_capacity_variant():
    out = seed.seed_model(memory_per_token_bytes=1, model_size_gb=0, cached_tokens=150_000, **PATTERN)
    assert out["hit_rate"] == pytest.approx(0.8 * 30 / 300)


def test_recommendation():
    kw = dict(memory_per_token_bytes=163840, model_size_gb=48.0, memory_gb=80.0, **PATTERN)
    rec = seed.seed_recommendation(target_hit_rate=0.85, **kw)
    required = 300 * 0.85 * 5000 * 163840 / GB + 57.6
    assert rec["recommended_memory_gb"] == pytest.approx(required)
    assert rec["additional_memory_needed_gb"] == pytest.approx(required - 80)
    assert rec["achievable"] is (required <= 160)
    easy = seed.seed_recommendation(target_hit_rate=0.05, **kw)
    assert easy == {"recommended_memory_gb": 80.0, "current_hit_rate": pytest.approx(0.0782933), "achievable": True}
