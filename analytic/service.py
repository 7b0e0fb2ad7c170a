"""Prefill and decode time per token of one request alone: what the offload models' TTFT
estimates charge (``analytic.tiers``: a hit saves its prefill, a load costs its transfer).

The simulator's service is the step engine (``kvsim.step_engine``, its step time in
``analytic.steptime``); this linear, unbatched rate is only the closed-form estimate of a prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

from analytic import presets
from analytic.specs import check_positive

# Defaults: Llama-3.1-8B in bf16 on one H100 SXM, from first principles (roofline).
# NVIDIA H100 SXM datasheet (analytic.presets.GPU_SPECS): 989 TFLOPS dense BF16, 3.35 TB/s HBM3.
H100_BF16_FLOPS = presets.gpu("h100-80gb").bf16_flops
H100_HBM_BYTES_PER_S = presets.gpu("h100-80gb").hbm_bytes_per_s
DEFAULT_SERVICE_PRESET = "llama-3.1-8b"
PREFILL_UTILIZATION = 0.4  # assumed share of peak FLOPS prefill reaches (model FLOPs utilisation)
_PARAMS = presets.model(DEFAULT_SERVICE_PRESET).params_b * 1e9
# Prefill is compute-bound: a forward pass costs ~2 FLOPs per parameter per token.
DEFAULT_PREFILL_PER_TOKEN = 2 * _PARAMS / (PREFILL_UTILIZATION * H100_BF16_FLOPS)  # 4.0e-5 s/token
# Decode is memory-bound: each step reads the bf16 weights (2 bytes per parameter) once and gives
# every running request one token, so a request's output takes one step per token.
DEFAULT_DECODE_PER_TOKEN = 2 * _PARAMS / H100_HBM_BYTES_PER_S  # 4.8e-3 s/token


@dataclass(frozen=True)
class ServiceModel:
    """Time a request spends in service on one instance:
    ``prefill_base + prefill_per_token * uncached_prompt_tokens + decode_per_token * output_tokens``,
    of which the first two are its time to first token after it starts."""

    prefill_per_token: float = DEFAULT_PREFILL_PER_TOKEN
    decode_per_token: float = DEFAULT_DECODE_PER_TOKEN
    prefill_base: float = 0.0

    def __post_init__(self) -> None:
        # Bounds that catch typos: a second per token is a thousand times today's slowest GPUs.
        check_positive("prefill-per-token", self.prefill_per_token, allow_zero=True, at_most=1.0)
        check_positive("decode-per-token", self.decode_per_token, allow_zero=True, at_most=1.0)
        check_positive("prefill-base", self.prefill_base, allow_zero=True, at_most=3600.0)

    def prefill(self, uncached_tokens: int) -> float:
        return self.prefill_base + self.prefill_per_token * uncached_tokens

    def decode(self, output_tokens: int) -> float:
        return self.decode_per_token * output_tokens
