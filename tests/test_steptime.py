"""The step time (analytic.steptime): the roofline by hand, its regimes, tensor parallelism, the
linear form, --step-time parsing and the calibration file; the GPU table and the presets' new fields."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError

import pytest

from analytic import presets, service
from analytic.specs import ModelSpec
from analytic.steptime import (
    ALLREDUCE_LATENCY_S, COMPUTE_EFFICIENCY, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, KERNEL_FLOOR_S,
    MEMORY_EFFICIENCY, SMALL_KERNELS_PER_LAYER, STEP_FIXED_OVERHEAD_S, LinearStepTime, RooflineStepTime, StepTime,
    default_engine_limits, parse_step_time, roofline, write_step_time,
)

LLAMA = presets.model("llama-3.1-8b")


def step(requests: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """The engine's four integers for requests given as (new tokens n, computed tokens c)."""
    tokens = sum(n for n, _ in requests)
    attention = sum(n * c + n * (n + 1) // 2 for n, c in requests)
    context = sum(c + n for n, c in requests)
    return tokens, attention, context, len(requests)


# ----------------------------------------------------------------------------- the roofline by hand


def test_roofline_llama_8b_h100_by_hand():
    r = roofline(LLAMA, "h100-80gb")
    flops = 0.75 * 989e12  # sustained: COMPUTE_EFFICIENCY x the H100 SXM's dense BF16 peak
    hbm = 0.83 * 3.35e12  # sustained: MEMORY_EFFICIENCY x HBM3
    per_token = 2 * 8e9 / flops  # 2 FLOPs per parameter per token: 2.157e-5 s
    per_pair = 4 * 32 * 32 * 128 / flops  # 4 x layers x query heads x head dim per q-k pair: 7.07e-10 s
    weights = 8e9 * 2 / hbm  # bf16 weights read once a step: 5.754 ms
    kv = 2 * 32 * 8 * 128 * 2 / hbm  # 131,072 KV bytes per token of context: 4.714e-8 s
    overhead = 50e-6 + 32 * 6 * 2e-6  # fixed + layers x small kernels x kernel floor: 0.434 ms
    assert (COMPUTE_EFFICIENCY, MEMORY_EFFICIENCY) == (0.75, 0.83)
    assert (STEP_FIXED_OVERHEAD_S, SMALL_KERNELS_PER_LAYER, KERNEL_FLOOR_S) == (50e-6, 6, 2e-6)

    # (a) decode: 64 requests, each 1 new token after 1,000 computed: memory-bound.
    tokens, attention, context, n = step([(1, 1000)] * 64)
    assert (tokens, attention, context) == (64, 64 * 1001, 64 * 1001)
    compute = 64 * per_token + 64_064 * per_pair  # 1.426 ms
    memory = weights + 64_064 * kv  # 5.754 + 3.020 = 8.774 ms
    assert memory > compute
    assert r.seconds(tokens, attention, context, n) == pytest.approx(memory + overhead, rel=1e-12)
    assert r.seconds(tokens, attention, context, n) == pytest.approx(9.208e-3, abs=1e-6)

    # (b) a prefill chunk of 2,048 tokens with no context: compute-bound.
    tokens, attention, context, n = step([(2048, 0)])
    assert attention == 2048 * 2049 // 2
    compute = 2048 * per_token + attention * per_pair  # 44.18 + 1.48 = 45.66 ms
    assert compute > weights + 2048 * kv
    assert r.seconds(tokens, attention, context, n) == pytest.approx(compute + overhead, rel=1e-12)
    assert r.seconds(tokens, attention, context, n) == pytest.approx(46.09e-3, abs=1e-5)


def test_regimes():
    r = roofline(LLAMA, "h100-80gb")
    # Memory-bound: one more decode token costs its compute only through max(), i.e. nothing
    # until compute catches up with memory; a token more of context costs its KV bytes.
    base = r.seconds(*step([(1, 100)]))
    assert r.seconds(*step([(1, 100), (1, 100)])) - base == pytest.approx(101 * r.per_context_s)
    # Compute-bound: each token more costs 2 P / sustained FLOPs plus its attention pairs.
    a, b = r.seconds(*step([(4096, 0)])), r.seconds(*step([(4097, 0)]))
    assert b - a == pytest.approx(r.per_token_s + 4097 * r.per_pair_s, rel=1e-6)
    # Where the two meet (the ridge): tokens ~ weight time / per-token compute time, ~267 tokens.
    ridge = r.weights_s / r.per_token_s
    assert 200 < ridge < 300
    assert r.seconds(100, 0, 0, 1) == pytest.approx(r.weights_s + r.fixed_s)
    assert r.seconds(1000, 0, 0, 1) == pytest.approx(1000 * r.per_token_s + r.fixed_s)


def test_tensor_parallel_scaling():
    model = presets.model("llama-3.1-70b")
    one, two, eight = (roofline(model, "h100-80gb", tp) for tp in (1, 2, 8))
    assert two.weights_s == pytest.approx(one.weights_s / 2) and eight.weights_s == pytest.approx(one.weights_s / 8)
    assert two.per_token_s == pytest.approx(one.per_token_s / 2)
    assert two.per_context_s == pytest.approx(one.per_context_s / 2)  # 8 KV heads split over 2 GPUs
    assert eight.per_context_s == pytest.approx(one.per_context_s / 8)
    # Ring all-reduce, 2 per layer: 2(tp-1)/tp x hidden x 2 bytes per token over one NVLink direction.
    link = 900e9 / 2
    assert one.allreduce_per_token_s == 0
    assert two.allreduce_per_token_s == pytest.approx(2 * 80 * (2 * 1 / 2) * 8192 * 2 / link)
    assert eight.allreduce_per_token_s == pytest.approx(2 * 80 * (2 * 7 / 8) * 8192 * 2 / link)
    assert two.fixed_s - one.fixed_s == pytest.approx(2 * 80 * ALLREDUCE_LATENCY_S)
    decode = step([(1, 2000)] * 32)
    assert one.seconds(*decode) > two.seconds(*decode) > eight.seconds(*decode)
    assert two.seconds(*decode) > one.seconds(*decode) / 2  # the all-reduces and overhead do not shrink


def test_kv_heads_replicated_beyond_their_count_and_mla_latent_everywhere():
    qwen = presets.model("qwen3-30b-a3b")  # 4 KV heads
    one, eight = roofline(qwen, "h100-80gb", 1), roofline(qwen, "h100-80gb", 8)
    assert eight.per_context_s == pytest.approx(one.per_context_s / 4)  # one head per GPU, not 1/8
    ds = presets.model("deepseek-v3")
    assert roofline(ds, "h200-141gb", 8, "fp8").per_context_s == pytest.approx(
        roofline(ds, "h200-141gb", 1, "fp8").per_context_s)


def test_moe_reads_the_experts_its_tokens_route_to():
    qwen = presets.model("qwen3-30b-a3b")  # 30B total, 3B active, 128 experts, top-8
    r = roofline(qwen, "h100-80gb")
    expert_b = (30 - 3) * 128 / (128 - 8)  # 28.8B in experts, 1.2B dense
    hbm = 0.83 * 3.35e12
    assert r.experts_s == pytest.approx(expert_b * 2e9 / hbm)
    assert r.weights_s == pytest.approx((30 - expert_b) * 2e9 / hbm)
    # One token touches 8 of 128 experts: it reads the dense part and 1/16 of the experts.
    assert r.seconds(1, 0, 0, 1) == pytest.approx(r.weights_s + r.experts_s * 8 / 128 + r.fixed_s)
    # Many tokens touch them all.
    assert r.seconds(512, 0, 0, 512) == pytest.approx(
        max(r.weights_s + r.experts_s * (1 - (120 / 128) ** 512), 512 * r.per_token_s) + r.fixed_s)
    assert r.per_token_s == pytest.approx(2 * 3e9 / (0.75 * 989e12))  # FLOPs of the active parameters


def test_dtypes_pick_the_peak():
    fp8 = roofline(LLAMA, "h100-80gb", weight_dtype="fp8")
    bf16 = roofline(LLAMA, "h100-80gb")
    assert fp8.per_token_s == pytest.approx(bf16.per_token_s / 2, rel=1e-3)  # FP8: 1,979 vs 989 TFLOPS
    assert fp8.weights_s == pytest.approx(bf16.weights_s / 2)
    assert fp8.per_pair_s == bf16.per_pair_s  # attention stays in 16 bits
    a100 = roofline(LLAMA, "a100-80gb", weight_dtype="fp8")  # no FP8 units: weight-only, at the BF16 peak
    assert a100.per_token_s == pytest.approx(2 * 8e9 / (0.75 * 312e12))
    kv8 = roofline(LLAMA, "h100-80gb", kv_dtype="fp8")
    assert kv8.per_context_s == pytest.approx(bf16.per_context_s / 2)
    with pytest.raises(ValueError, match="b200-180gb has no fp32"):
        roofline(LLAMA, "b200-180gb", weight_dtype="fp32")


@pytest.mark.parametrize("kwargs,match", [
    ({"model": ModelSpec()}, "params"),  # a custom model without --params-b
    ({"model": ModelSpec(params_b=8)}, "attention-heads"),
    ({"gpu": "custom"}, "needs a GPU preset"),
    ({"tp": 3}, "tp must divide the model's 32 attention heads"),
    ({"tp": 0}, "tp must be"),
    ({"weight_dtype": "fp4"}, "weight-dtype"),
    ({"model": ModelSpec(params_b=8, attention_heads=32), "tp": 2}, "hidden-size"),
])
def test_roofline_errors(kwargs, match):
    args = {"model": LLAMA, "gpu": "h100-80gb", "tp": 1, "weight_dtype": "bf16", **kwargs}
    with pytest.raises(ValueError, match=match):
        roofline(**args)


def test_roofline_describe_and_as_dict():
    r = roofline(LLAMA, "H100-80GB")
    assert r.describe().startswith("roofline: llama-3.1-8b bf16 on 1 x h100-80gb (TP 1): 742 TFLOPS and 2.78 TB/s")
    assert "3B active of 30B" in roofline(presets.model("qwen3-30b-a3b"), "h100-80gb").describe()
    d = json.loads(json.dumps(r.as_dict()))
    again = RooflineStepTime(ModelSpec(**d["model"]), d["gpu"], d["tp"], d["weight_dtype"], d["kv_dtype"])
    assert again == r and again.seconds(*step([(1, 500)] * 8)) == r.seconds(*step([(1, 500)] * 8))
    assert d["constants"]["memory_efficiency"] == MEMORY_EFFICIENCY and d["gpu_spec"]["hbm_bytes_per_s"] == 3.35e12
    assert isinstance(r, StepTime) and isinstance(r.seconds(1, 1, 1, 1), float)
    with pytest.raises(FrozenInstanceError):
        r.tp = 2


# ----------------------------------------------------------------------------- the linear form


def test_linear_form():
    lin = LinearStepTime(0.004, 2e-5, 3e-8)
    assert lin.seconds(100, 10**9, 5000, 7) == 0.004 + 2e-5 * 100 + 3e-8 * 5000  # attention and requests unused
    assert lin.describe() == "linear: 0.004 s + 2e-05 s x tokens + 3e-08 s x context tokens"
    assert lin.as_dict() == {"step_time": "linear", "alpha": 0.004, "beta": 2e-5, "gamma": 3e-8}
    assert LinearStepTime(0, 0, 0).seconds(5, 5, 5, 1) == 0.0
    assert isinstance(LinearStepTime(1, 2, 3).alpha, float)
    with pytest.raises(FrozenInstanceError):
        lin.alpha = 1.0


@pytest.mark.parametrize("values,name", [
    ((-1, 0, 0), "alpha"), ((0, math.nan, 0), "beta"), ((0, 0, math.inf), "gamma"), ((True, 0, 0), "alpha"),
    (("1", 0, 0), "alpha"),
])
def test_linear_rejects_negative_or_non_finite(values, name):
    with pytest.raises(ValueError, match=f"step-time {name} must be a finite number >= 0"):
        LinearStepTime(*values)


# ----------------------------------------------------------------------------- parsing and the file


def test_parse_forms(tmp_path):
    for text in (None, "roofline", " Roofline "):
        assert parse_step_time(text, LLAMA, "h100-80gb") == roofline(LLAMA, "h100-80gb")
    assert parse_step_time("roofline", LLAMA, "h100-80gb", 2, "fp8", "fp8") == roofline(LLAMA, "h100-80gb", 2, "fp8", "fp8")
    assert parse_step_time("linear:0.005,2e-5,1e-7", LLAMA, "custom") == LinearStepTime(0.005, 2e-5, 1e-7)
    path = tmp_path / "step.json"
    write_step_time(path, LinearStepTime(0.003, 1.5e-5, 4e-8), {"fitted_to": "a test"})
    assert json.loads(path.read_text())["fitted_to"] == "a test"
    assert parse_step_time(str(path), LLAMA, "custom") == LinearStepTime(0.003, 1.5e-5, 4e-8)
    write_step_time(path, LinearStepTime(1, 2, 3))  # replaces it, leaving no temporary file
    assert parse_step_time(str(path), LLAMA, "custom") == LinearStepTime(1, 2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["step.json"]


@pytest.mark.parametrize("text,match", [
    ("linear:1,2", "step-time must be roofline"), ("linear:a,b,c", "linear:ALPHA,BETA,GAMMA"),
    ("linear:", "step-time must be"), ("fast", "step-time must be roofline .*got 'fast'"), ("", "step-time must be"),
    ("linear:-0.1,0,0", "step-time alpha must be a finite number >= 0"),
    ("linear:0,nan,0", "step-time beta"), ("missing.json", "step-time: missing.json: no such file"),
])
def test_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_step_time(text, LLAMA, "h100-80gb")


@pytest.mark.parametrize("content,match", [
    ("{", "not JSON"), ('{"step_time": "roofline"}', 'must hold {"step_time": "linear"'),
    ('[1, 2]', "must hold"), ('{"step_time": "linear", "alpha": 1, "beta": 2}', "lacks gamma"),
    ('{"step_time": "linear", "alpha": -1, "beta": 2, "gamma": 0}', "step-time alpha"),
])
def test_parse_file_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        parse_step_time(str(path), LLAMA, "h100-80gb")


# ----------------------------------------------------------------------------- engine limits


def test_default_engine_limits_follow_vllm_serve():
    assert (DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS) == (8192, 1024)
    expected = {"h100-80gb": (8192, 1024), "h200-141gb": (8192, 1024), "a100-40gb": (2048, 256),
                "a100-80gb": (2048, 256), "l40s-48gb": (2048, 256), "b200-180gb": (16384, 1024),
                "mi300x-192gb": (16384, 1024)}
    for name, limits in expected.items():
        assert default_engine_limits(presets.gpu_memory_gib(name), name) == limits, name
    assert default_engine_limits(79.6) == (8192, 1024)  # what an H100's driver reports
    assert default_engine_limits(24.0) == (2048, 256)


# ----------------------------------------------------------------------------- the tables


def test_gpu_table():
    assert set(presets.GPU_SPECS) == set(presets.GPUS)
    for name, spec in presets.GPU_SPECS.items():
        assert spec.memory_gib == presets.GPUS[name] == presets.gpu_memory_gib(name)
        assert spec.link_bytes_per_s == spec.interconnect_bytes_per_s / 2
        for dtype in ("fp8", "int8"):
            assert spec.peak_flops(dtype) is None or spec.peak_flops(dtype) == pytest.approx(2 * spec.bf16_flops, rel=0.02)  # L40S: 733 vs 2 x 362.05, as printed
    h100 = presets.gpu("H100-80GB")
    assert (h100.bf16_flops, h100.fp8_flops, h100.hbm_bytes_per_s, h100.interconnect_bytes_per_s) == (
        989e12, 1979e12, 3.35e12, 900e9)
    assert h100.peak_flops("fp16") == h100.bf16_flops and h100.peak_flops("int4") is None
    assert presets.gpu("a100-40gb").fp8_flops is None and presets.gpu("a100-40gb").hbm_bytes_per_s == 1555e9
    assert presets.gpu("a100-80gb").hbm_bytes_per_s == 2039e9
    assert presets.gpu("l40s-48gb").bf16_flops == 362.05e12 and presets.gpu("l40s-48gb").interconnect == "PCIe Gen4 x16"
    assert presets.gpu("b200-180gb").bf16_flops == 2.25e15 and presets.gpu("b200-180gb").hbm_bytes_per_s == 8e12
    assert presets.gpu("mi300x-192gb").bf16_flops == 1307.4e12 and presets.gpu("mi300x-192gb").hbm_bytes_per_s == 5.3e12
    with pytest.raises(ValueError, match="gpu must be one of"):
        presets.gpu("v100")
    # The service model's H100 constants come from the table, unchanged.
    assert (service.H100_BF16_FLOPS, service.H100_HBM_BYTES_PER_S) == (989e12, 3.35e12)


def test_presets_read_heads_hidden_size_and_active_parameters():
    assert (LLAMA.attention_heads, LLAMA.hidden_size, LLAMA.experts, LLAMA.active_params_b) == (32, 4096, None, None)
    assert LLAMA.active_params == 8
    expected = {  # (experts, per token, active B) from the attention column, else the sources column
        "mixtral-8x7b": (8, 2, 12.9),  # "MoE FFN 8 experts top-2"; sources: "46.7B total/12.9B active"
        "qwen3-30b-a3b": (128, 8, 3.0),  # "MoE 128 experts top-8 (3B active)"
        "qwen3-235b-a22b": (128, 8, 22.0),
        "deepseek-v3": (256, 8, 37.0), "deepseek-r1": (256, 8, 37.0),  # "MoE 256 routed+1 shared top-8 (37B active)"
        "gpt-oss-20b": (32, 4, 3.6), "gpt-oss-120b": (128, 4, 5.1),
    }
    for name, model in presets.models().items():
        moe = (model.experts, model.experts_per_token, model.active_params_b)
        assert moe == expected.get(name, (None, None, None)), name
        assert model.attention_heads > 0 and model.hidden_size > 0
    assert presets.model("qwen2.5-7b").attention_heads == 28 and presets.model("qwen2.5-7b").hidden_size == 3584


@pytest.mark.parametrize("kwargs,match", [
    ({"attention_heads": 0}, "attention-heads"), ({"hidden_size": 1.5}, "hidden-size"),
    ({"experts": 8}, "together"), ({"experts": 8, "experts_per_token": 9}, "experts-per-token must be <= experts"),
    ({"params_b": 10, "active_params_b": 20}, "active-params-b must be <= params-b"),
    ({"active_params_b": -1}, "active-params-b"),
])
def test_model_spec_new_fields_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**kwargs)


def test_the_roofline_is_cheap_and_pure_python():
    r = roofline(presets.model("mixtral-8x7b"), "h100-80gb", 2)
    values = {r.seconds(64, 64_000, 64_000, 64) for _ in range(3)}
    assert len(values) == 1 and type(values.pop()) is float


def test_the_request_latency_in_the_forms_and_the_engine(tmp_path):
    """``linear:A,B,G,LATENCY`` and the file carry it; the engine adds it to TTFT and E2E only."""
    import numpy as np
    import simpy

    from analytic.serving import EngineSpec
    from analytic.steptime import LinearStepTime, parse_step_time, write_step_time
    from kvsim.engine import Counters
    from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats

    st = parse_step_time("linear:0.01,2e-5,1e-8,0.02", None, "")
    assert st == LinearStepTime(0.01, 2e-5, 1e-8, 0.02)
    write_step_time(tmp_path / "s.json", st)
    assert parse_step_time(str(tmp_path / "s.json"), None, "") == st
    with pytest.raises(ValueError, match="request_latency_s must be a finite number >= 0"):
        parse_step_time("linear:0.01,2e-5,1e-8,-1", None, "")

    def serve(step_time):
        env = simpy.Environment()
        stats = ServingStats(0.0, float("inf"), requests=[])
        inst = EngineInstance(env, EngineSpec(step_time, 512, 8), 400, 16, stats, Counters())
        for i in range(6):
            req = EngineRequest(i, 0.05 * i, 300 + 50 * i, 20, [])
            env.timeout(req.arrival).callbacks.append(lambda _, r=req: inst.submit(r))
        env.run()
        return stats

    a, b = serve(LinearStepTime(0.01, 2e-5, 1e-8)), serve(st)
    assert a.steps == b.steps and a.tpot == b.tpot
    assert np.allclose(np.subtract(b.ttft, a.ttft), 0.02) and np.allclose(np.subtract(b.e2e, a.e2e), 0.02)
    assert [r.ttft - r.first_token + r.arrival for r in b.requests] == pytest.approx([0.02] * 6)
