"""Step time: the seconds one step of a serving engine takes, from what the step computes (DESIGN §9).

The engine (``kvsim.step_engine``) describes a step by four integers:

* ``tokens`` = Σ n_i, the tokens scheduled (n_i new tokens of request i);
* ``attention`` = Σ n_i·c_i + n_i·(n_i+1)/2, the query-key pairs of the step's new tokens (each
  attends to the c_i tokens its request already computed, and to the new ones up to itself);
* ``context`` = Σ (c_i + n_i), the tokens whose KV the step reads;
* ``requests``, the requests in the step.

Two forms: :class:`RooflineStepTime`, from first principles (FLOPs, bytes, all-reduces and a
fixed overhead, every constant sourced below and none fitted to measurements), and
:class:`LinearStepTime`, ``alpha + beta·tokens + gamma·context`` with calibrated coefficients.
:func:`parse_step_time` reads ``--step-time``; :func:`write_step_time` writes the calibration file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from analytic import presets
from analytic.sizing import bytes_per_token
from analytic.specs import DTYPE_BYTES, ModelSpec, check_dtype

# ----------------------------------------------------------------------------- roofline constants

# Share of the peak dense tensor-core FLOPs a step's matmuls sustain. FlashAttention-3 (Shah et
# al. 2024, arXiv:2407.08608) reaches 740 of the H100's 989 BF16 TFLOPS (75%), the best published
# figure for a large, well-shaped kernel; FlashAttention-2 (Dao 2023, arXiv:2307.08691) reaches up
# to 73% of the A100's peak in its forward pass. A roofline takes that best case.
COMPUTE_EFFICIENCY = 0.75
# Share of the peak HBM bandwidth a streaming read sustains. Jia et al. 2018 ("Dissecting the
# NVIDIA Volta GPU Architecture via Microbenchmarking", arXiv:1804.06826) measured 750 of the
# V100's 900 GB/s (83%) with a streaming kernel: DRAM refresh, ECC and page switches take the rest.
MEMORY_EFFICIENCY = 0.83
# Bytes of one activation value: vLLM runs activations (and so the tensor-parallel all-reduces)
# in the model dtype, bf16 for these models, also when the weights are fp8/int8/int4-quantised.
ACTIVATION_BYTES = 2
# All-reduces per layer with tensor parallelism (Megatron-LM, Shoeybi et al. 2019,
# arXiv:1909.08053, §3): one after the attention output projection, one after the MLP.
ALLREDUCES_PER_LAYER = 2
# Fixed time of one all-reduce of a small message, on top of its bytes. First principles: vLLM's
# custom all-reduce (vllm/distributed/device_communicators/custom_all_reduce.py, used for
# messages under 8 MiB on NVLink) is one kernel with two cross-GPU barriers (flag write and poll
# over the link, ~1-2 µs each) plus the kernel floor below: ~5 µs.
ALLREDUCE_LATENCY_S = 5e-6
# Kernels per decoder layer that move too little data to be charged by the roofline: input
# RMSNorm, rotary embedding, KV-cache write, SiLU-and-mul, fused residual-add + RMSNorm, and
# the attention kernel's own floor at short contexts (vllm/model_executor/models/llama.py).
SMALL_KERNELS_PER_LAYER = 6
# Least time of one such kernel even inside a CUDA graph. First principles: launch and block
# scheduling (~1 µs) plus one dependent HBM round trip (~0.5-1 µs) with its tail; NVIDIA's
# "Getting Started with CUDA Graphs" (2019) shows a short kernel costing a few µs back to back.
KERNEL_FLOOR_S = 2e-6
# Fixed GPU work per step outside the layers and the wait for its result: embedding lookup,
# final norm, sampling (softmax, top-k/top-p: ~10 kernels of ~2 µs) and copying the sampled token
# ids to the host (one PCIe round trip, ~10 µs). vLLM 0.33 schedules asynchronously by default
# (vllm/config/vllm.py sets async_scheduling), so scheduling and input preparation on the CPU
# overlap the previous step and add nothing here. ~50 µs.
STEP_FIXED_OVERHEAD_S = 5e-5

# ----------------------------------------------------------------------------- engine limits

# vLLM 0.33's defaults for `vllm serve` (UsageContext.OPENAI_API_SERVER) in
# vllm/engine/arg_utils.py EngineArgs.get_batch_defaults, by the GPU's total memory and name:
# >= 160 GiB (B200, MI300X): 16384 batched tokens, 1024 sequences; >= 70 GiB and not an A100
# (H100, H200): 8192 and 1024; others (A100, L40S): 2048 and 256. (The offline LLM class gets
# larger token budgets; vllm/config/scheduler.py's own fallbacks, 2048 and 128, apply only
# without a usage context.) With chunked prefill, on by default, nothing raises the budget.
LARGE_GPU_LIMITS = (16384, 1024)
HOPPER_LIMITS = (8192, 1024)
SMALL_GPU_LIMITS = (2048, 256)
LARGE_GPU_MIN_GIB = 160
HOPPER_MIN_GIB = 70
# The defaults of `vllm serve` on an H100 80GB (the GPU the step time's defaults describe).
DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS = HOPPER_LIMITS


def default_engine_limits(gpu_memory_gib: float, gpu: str = "") -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that `vllm serve` 0.33 picks on a GPU with
    ``gpu_memory_gib`` GiB named ``gpu`` (an A100 keeps the small defaults whatever its memory)."""
    if gpu_memory_gib >= LARGE_GPU_MIN_GIB:
        return LARGE_GPU_LIMITS
    if gpu_memory_gib >= HOPPER_MIN_GIB and "a100" not in gpu.lower():
        return HOPPER_LIMITS
    return SMALL_GPU_LIMITS


# ----------------------------------------------------------------------------- the forms

STEP_TIME_FORMS = ("roofline (the default), linear:ALPHA,BETA,GAMMA[,LATENCY] (seconds: ALPHA + BETA x tokens + "
                   "GAMMA x context tokens; LATENCY per request outside the steps) or a JSON file written by "
                   "kvsim calibrate (linear, or the roofline with a request latency)")


class StepTime:
    """Seconds of one engine step (see the module's docstring for the four integers)."""

    request_latency_s: float = 0.0
    """Seconds each request spends outside the engine's steps (the API server's HTTP handling,
    tokenisation, detokenisation, streaming back): added to its TTFT and end-to-end time, not to
    its TPOT. The roofline has none (no first-principles value); a calibration fits it."""

    def seconds(self, tokens: int, attention: int, context: int, requests: int) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for a command's header."""
        raise NotImplementedError

    def as_dict(self) -> dict:
        """JSON-ready, enough to rebuild the same step time."""
        raise NotImplementedError


def _check_coefficient(name: str, value) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"step-time {name} must be a finite number >= 0 (got {value!r})")
    return float(value)


@dataclass(frozen=True)
class LinearStepTime(StepTime):
    """``alpha + beta·tokens + gamma·context`` seconds: a fixed cost, a cost per scheduled token
    (weights' FLOPs) and a cost per token of context read (KV bytes); and the request latency
    outside the steps (:attr:`StepTime.request_latency_s`, 0 unless calibrated)."""

    alpha: float
    beta: float
    gamma: float
    request_latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "request_latency_s"):
            object.__setattr__(self, name, _check_coefficient(name, getattr(self, name)))

    def seconds(self, tokens: int, attention: int, context: int, requests: int) -> float:
        return self.alpha + self.beta * tokens + self.gamma * context

    def describe(self) -> str:
        latency = f"; {1000 * self.request_latency_s:.3g} ms per request outside the steps" if self.request_latency_s else ""
        return (f"linear: {self.alpha:.4g} s + {self.beta:.4g} s x tokens + {self.gamma:.4g} s x context tokens"
                + latency)

    def as_dict(self) -> dict:
        out = {"step_time": "linear", "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}
        if self.request_latency_s:
            out["request_latency_s"] = self.request_latency_s
        return out


# Matmul dtype of each weight dtype: fp8 and int8 weights run W8A8 on GPUs that have the unit and
# as weight-only (dequantised to 16 bits in the kernel, as vLLM's Marlin kernels) on those that
# do not; int4 weights are always weight-only (W4A16).
_MATMUL_DTYPE = {"bf16": ("bf16",), "fp16": ("bf16",), "fp32": ("fp32",), "fp8": ("fp8", "bf16"),
                 "int8": ("int8", "bf16"), "int4": ("bf16",)}


@dataclass(frozen=True)
class RooflineStepTime(StepTime):
    """A step's time from first principles on ``tp`` GPUs of one kind (build it with :func:`roofline`).

    compute = (2·P_active·tokens + 4·L·H_q·d·attention) / tp FLOPs at COMPUTE_EFFICIENCY of the
    GPU's peak (the weight dtype's for the linear layers, bf16 for attention);
    memory = (weight bytes + context·KV bytes per token) per GPU at MEMORY_EFFICIENCY of HBM
    bandwidth; step = max(compute, memory) + 2·L tensor-parallel all-reduces of
    hidden·tokens·ACTIVATION_BYTES bytes (ring: 2(tp−1)/tp of them over one link direction, plus
    ALLREDUCE_LATENCY_S; none at tp 1) + a fixed overhead (STEP_FIXED_OVERHEAD_S +
    L·SMALL_KERNELS_PER_LAYER·KERNEL_FLOOR_S).

    Weight bytes: a dense model reads all its weights each step; a MoE model reads its dense part
    and the experts its tokens route to: with k of E experts per token, T tokens touch an expected
    1 − (1 − k/E)^T of them (routing taken as uniform). KV per GPU: the KV heads are split over the
    GPUs (replicated when there are fewer heads than GPUs); an MLA latent is replicated on every
    GPU. Sliding-window layers are charged as full attention (an upper bound).
    """

    model: ModelSpec
    gpu: str
    tp: int = 1
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    request_latency_s: float = 0.0  # outside the steps (StepTime.request_latency_s): 0 unless calibrated
    # Derived in __post_init__: seconds per unit of each term.
    per_token_s: float = field(init=False, repr=False)
    per_pair_s: float = field(init=False, repr=False)
    weights_s: float = field(init=False, repr=False)
    experts_s: float = field(init=False, repr=False)
    expert_miss: float = field(init=False, repr=False)
    per_context_s: float = field(init=False, repr=False)
    fixed_s: float = field(init=False, repr=False)
    allreduce_per_token_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m, spec = self.model, _gpu_spec(self.gpu)
        object.__setattr__(self, "request_latency_s", _check_coefficient("request_latency_s", self.request_latency_s))
        check_dtype("weight-dtype", self.weight_dtype)
        check_dtype("kv-dtype", self.kv_dtype)
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or not 1 <= self.tp <= 1024:
            raise ValueError(f"tp must be a whole number from 1 to 1024 (got {self.tp!r})")
        if m.params_b is None:
            raise ValueError("step-time roofline needs the model's parameters: give --params-b, a --preset or "
                             "--model-config")
        if m.attention_heads is None:
            raise ValueError("step-time roofline needs the model's attention-heads: give a --preset or "
                             "--model-config, or use --step-time linear:ALPHA,BETA,GAMMA")
        if m.attention_heads % self.tp:
            raise ValueError(f"tp must divide the model's {m.attention_heads} attention heads (got {self.tp}), "
                             "as vLLM requires")
        if self.tp > 1 and m.hidden_size is None:
            raise ValueError("step-time roofline needs the model's hidden-size for tensor parallelism: give a "
                             "--preset or --model-config")
        peak = next((f for d in _MATMUL_DTYPE[self.weight_dtype] if (f := spec.peak_flops(d))), None)
        if peak is None:
            raise ValueError(f"step-time roofline: {spec.name} has no {self.weight_dtype} peak FLOPs in the GPU table")
        tp = self.tp
        flops_s = COMPUTE_EFFICIENCY * peak
        hbm_s = MEMORY_EFFICIENCY * spec.hbm_bytes_per_s
        weight_bytes = DTYPE_BYTES[self.weight_dtype] * 1e9 / tp  # per billion parameters, per GPU
        total, active = m.params_b, m.active_params
        if m.experts and m.experts > m.experts_per_token and active < total:
            # total = dense + E·e and active = dense + k·e, so the experts hold (total − active)·E/(E − k).
            expert_b = (total - active) * m.experts / (m.experts - m.experts_per_token)
            miss = 1.0 - m.experts_per_token / m.experts
        else:
            expert_b, miss = 0.0, 1.0
        kv_heads_per_gpu = 1 if m.is_mla else max(1, m.kv_heads // tp)
        kv_share = 1.0 if m.is_mla else kv_heads_per_gpu / m.kv_heads
        if tp > 1:
            ring = 2 * (tp - 1) / tp * m.hidden_size * ACTIVATION_BYTES / spec.link_bytes_per_s
            allreduce_token, allreduce_fixed = ALLREDUCES_PER_LAYER * m.layers * ring, \
                ALLREDUCES_PER_LAYER * m.layers * ALLREDUCE_LATENCY_S
        else:
            allreduce_token = allreduce_fixed = 0.0
        values = {
            "per_token_s": 2 * active * 1e9 / tp / flops_s,
            "per_pair_s": 4 * m.layers * m.attention_heads * m.head_dim / tp / (COMPUTE_EFFICIENCY * spec.bf16_flops),
            "weights_s": (total - expert_b) * weight_bytes / hbm_s,
            "experts_s": expert_b * weight_bytes / hbm_s,
            "expert_miss": miss,
            "per_context_s": bytes_per_token(m, self.kv_dtype) * kv_share / hbm_s,
            "fixed_s": STEP_FIXED_OVERHEAD_S + m.layers * SMALL_KERNELS_PER_LAYER * KERNEL_FLOOR_S + allreduce_fixed,
            "allreduce_per_token_s": allreduce_token,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def seconds(self, tokens: int, attention: int, context: int, requests: int) -> float:
        compute = self.per_token_s * tokens + self.per_pair_s * attention
        memory = self.weights_s + self.per_context_s * context
        if self.experts_s:
            memory += self.experts_s * (1.0 - self.expert_miss ** tokens)
        return (compute if compute > memory else memory) + self.fixed_s + self.allreduce_per_token_s * tokens

    def describe(self) -> str:
        m, spec = self.model, _gpu_spec(self.gpu)
        peak = next(f for d in _MATMUL_DTYPE[self.weight_dtype] if (f := spec.peak_flops(d)))
        moe = f" ({m.active_params:g}B active of {m.params_b:g}B)" if m.active_params != m.params_b else ""
        return (f"roofline: {m.name} {self.weight_dtype} on {self.tp} x {spec.name} (TP {self.tp}): "
                f"{COMPUTE_EFFICIENCY * peak / 1e12:,.0f} TFLOPS and {MEMORY_EFFICIENCY * spec.hbm_bytes_per_s / 1e12:.2f} "
                f"TB/s sustained per GPU{moe}, weights {(self.weights_s + self.experts_s) * 1e3:.2f} ms, "
                f"overhead {self.fixed_s * 1e3:.2f} ms per step"
                + (f"; {1000 * self.request_latency_s:.3g} ms per request outside the steps (calibrated)"
                   if self.request_latency_s else ""))

    def as_dict(self) -> dict:
        latency = {"request_latency_s": self.request_latency_s} if self.request_latency_s else {}
        return {"step_time": "roofline", **latency, "model": asdict(self.model), "gpu": self.gpu, "tp": self.tp,
                "weight_dtype": self.weight_dtype, "kv_dtype": self.kv_dtype,
                "gpu_spec": asdict(_gpu_spec(self.gpu)),
                "constants": {"compute_efficiency": COMPUTE_EFFICIENCY, "memory_efficiency": MEMORY_EFFICIENCY,
                              "activation_bytes": ACTIVATION_BYTES, "allreduces_per_layer": ALLREDUCES_PER_LAYER,
                              "allreduce_latency_s": ALLREDUCE_LATENCY_S,
                              "small_kernels_per_layer": SMALL_KERNELS_PER_LAYER, "kernel_floor_s": KERNEL_FLOOR_S,
                              "step_fixed_overhead_s": STEP_FIXED_OVERHEAD_S}}


def _gpu_spec(name: str) -> presets.GpuSpec:
    try:
        return presets.gpu(name)
    except ValueError:
        raise ValueError(f"step-time roofline needs a GPU preset: --gpu must be one of {', '.join(presets.GPU_SPECS)} "
                         f"(got {name!r}); or give --step-time linear:ALPHA,BETA,GAMMA") from None


def roofline(model: ModelSpec, gpu: str, tp: int = 1, weight_dtype: str = "bf16",
             kv_dtype: str = "bf16") -> RooflineStepTime:
    """The first-principles step time of ``model`` on ``tp`` GPUs named ``gpu`` (a preset)."""
    return RooflineStepTime(model, gpu.lower() if isinstance(gpu, str) else gpu, tp, weight_dtype, kv_dtype)


# ----------------------------------------------------------------------------- reading and writing


def _from_file(path: Path, model: ModelSpec, gpu: str, tp: int, weight_dtype: str, kv_dtype: str) -> StepTime:
    """A calibration file: linear coefficients, or the roofline's request latency alone (the
    roofline itself from the model and GPU of the command)."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"step-time: {path}: cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"step-time: {path}: not JSON ({e})") from None
    if isinstance(data, dict) and data.get("step_time") == "roofline" and "request_latency_s" in data:
        if not gpu:
            raise ValueError(f"step-time: {path} is the roofline with a request latency: it needs the GPU (--gpu NAME)")
        step = roofline(model, gpu, tp, weight_dtype, kv_dtype)
        return replace(step, request_latency_s=data["request_latency_s"])  # checked by RooflineStepTime
    if not isinstance(data, dict) or data.get("step_time") != "linear":
        raise ValueError(f'step-time: {path}: must hold {{"step_time": "linear", "alpha": .., "beta": .., '
                         f'"gamma": ..}} or {{"step_time": "roofline", "request_latency_s": ..}} (as kvsim '
                         f'calibrate writes)')
    for name in ("alpha", "beta", "gamma"):
        if name not in data:
            raise ValueError(f"step-time: {path} lacks {name}")
    return LinearStepTime(data["alpha"], data["beta"], data["gamma"], data.get("request_latency_s", 0.0))


def parse_step_time(text: str | None, model: ModelSpec, gpu: str, tp: int = 1, weight_dtype: str = "bf16",
                    kv_dtype: str = "bf16") -> StepTime:
    """``--step-time``: "roofline" (None: the same), "linear:ALPHA,BETA,GAMMA", or the path of a
    JSON file written by :func:`write_step_time`. The model and GPU matter to the roofline only."""
    if text is None or text.strip().lower() == "roofline":
        return roofline(model, gpu, tp, weight_dtype, kv_dtype)
    text = text.strip()
    if text.lower().startswith("linear:"):
        parts = text[len("linear:"):].split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (3, 4):
            raise ValueError(f"step-time must be {STEP_TIME_FORMS} (got {text!r})")
        return LinearStepTime(*values)
    path = Path(text)
    if text and path.is_file():
        return _from_file(path, model, gpu, tp, weight_dtype, kv_dtype)
    if text and (path.suffix.lower() == ".json" or os.sep in text):
        raise ValueError(f"step-time: {text}: no such file")
    raise ValueError(f"step-time must be {STEP_TIME_FORMS} (got {text!r})")


def write_step_time(path: str | os.PathLike, step: LinearStepTime | RooflineStepTime, extra: dict | None = None) -> None:
    """Write ``step`` as the JSON file ``--step-time PATH`` reads, atomically (a temporary file
    in the same folder, then renamed over ``path``): linear coefficients, or the roofline's request
    latency alone (the roofline is rebuilt from the model and GPU of the command that reads it).
    ``extra`` adds keys the reader ignores (how the coefficients were fitted, say)."""
    path = Path(path)
    own = step.as_dict() if isinstance(step, LinearStepTime) else {"step_time": "roofline",
                                                                   "request_latency_s": step.request_latency_s}
    data = {**(extra or {}), **own}
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
