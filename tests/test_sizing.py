import csv
from pathlib import Path

import pytest

from analytic import presets
from analytic.sizing import (
    GIB, bytes_for_sequence, bytes_per_token, capacity_from_gib, capacity_from_memory, capacity_from_tokens,
)
from analytic.specs import Hardware, ModelSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "presets.csv"


def rows():
    with presets.PRESETS_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row", rows(), ids=lambda r: r["model"])
def test_every_preset_bytes_per_token_matches_its_source_column(row):
    model = presets.model(row["model"])
    # The CSV's own column was computed by its author from the sourced dimensions (bf16).
    assert bytes_per_token(model, "bf16") == float(row["kv_bytes_per_token_bf16"])


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/presets.csv not present")
def test_packaged_presets_are_the_shared_file():
    assert presets.PRESETS_CSV.read_bytes() == SHARED.read_bytes()


def test_formulas_by_hand():
    llama = presets.model("llama-3.1-8b")
    assert bytes_per_token(llama, "fp16") == 2 * 32 * 8 * 128 * 2
    assert bytes_per_token(llama, "fp8") == 2 * 32 * 8 * 128
    assert bytes_per_token(llama, "int4") == 2 * 32 * 8 * 128 * 0.5
    assert bytes_per_token(llama, "fp32") == 2 * 32 * 8 * 128 * 4
    ds = presets.model("deepseek-v3")
    assert ds.is_mla and bytes_per_token(ds, "bf16") == 61 * (512 + 64) * 2


def test_sliding_window_exact_bytes():
    gemma3 = presets.model("gemma-3-27b")
    assert gemma3.sliding_layers == 52 and gemma3.sliding_window == 1024
    # presets-notes: 8192 x (10*ctx + 52*min(ctx, 1024))
    for ctx in (1, 1000, 1024, 5000, 131072):
        assert bytes_for_sequence(gemma3, ctx) == 8192 * (10 * ctx + 52 * min(ctx, 1024))
    gpt = presets.model("gpt-oss-20b")
    assert bytes_for_sequence(gpt, 4096) == 2048 * (12 * 4096 + 12 * 128)
    phi = presets.model("phi-3-mini-4k")
    assert phi.sliding_layers == 32
    assert bytes_for_sequence(phi, 4096) == 393216 * 2047
    # short sequences: sliding layers keep everything, the upper bound is exact
    assert bytes_for_sequence(gemma3, 512) == 512 * bytes_per_token(gemma3)


def test_capacity_from_memory_arithmetic():
    llama = presets.model("llama-3.1-8b")
    hw = Hardware(gpu_memory_gib=80, gpus=2, memory_utilization=0.9, activation_reserve_gib=2)
    cap = capacity_from_memory(llama, hw, kv_dtype="fp8", weight_dtype="bf16", block_size=32)
    kv = 160 * GIB * 0.9 - 8e9 * 2 - 2 * GIB
    assert cap.capacity_tokens == int(kv // 65536)
    assert cap.capacity_blocks == cap.capacity_tokens // 32
    assert cap.weights_gib == pytest.approx(16e9 / GIB)
    given = capacity_from_memory(llama, hw, model_size_gib=10)
    assert given.capacity_tokens == int((160 * GIB * 0.9 - 10 * GIB - 2 * GIB) // 131072)


def test_capacity_direct():
    llama = presets.model("llama-3.1-8b")
    assert capacity_from_tokens(llama, 1000).capacity_blocks == 62
    cap = capacity_from_gib(llama, 1.0)
    assert cap.capacity_tokens == GIB // 131072 == 8192


def test_memory_smaller_than_weights_is_an_error():
    with pytest.raises(ValueError, match="gpu-memory-gb"):
        capacity_from_memory(presets.model("llama-3.1-70b"), Hardware(gpu_memory_gib=80))


@pytest.mark.parametrize("kwargs,flag", [
    ({"layers": 0}, "layers"), ({"kv_heads": -1}, "kv-heads"), ({"head_dim": 1.5}, "head-dim"),
    ({"sliding_window": 10}, "sliding"),
])
def test_model_spec_validation(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        ModelSpec(**kwargs)


def test_gpu_presets():
    assert presets.gpu_memory_gib("H100-80GB") == 80
    assert set(presets.GPUS) == {"h100-80gb", "h200-141gb", "a100-40gb", "a100-80gb", "l40s-48gb",
                                 "b200-180gb", "mi300x-192gb"}
    with pytest.raises(ValueError, match="gpu must be one of"):
        presets.gpu_memory_gib("v100")
