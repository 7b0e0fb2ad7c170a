"""Service time of a request on one serving instance: the simulator's optional service model.

A spec like the model, hardware and workload ones: the fleet simulator charges it
(``kvsim.fleet``), and the scenario carries it (``analytic.scenario``).
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
# Requests in service per instance: vLLM's max_num_seqs default (EngineArgs.get_batch_defaults)
# below 70 GiB and on A100s; H100-class GPUs get 1024 there, but a step of 1024 decodes is far
# slower than the weight read this model charges, so the smaller batch stays the default.
DEFAULT_MAX_RUNNING = 256


@dataclass(frozen=True)
class ServiceModel:
    """Time a request spends in service on one instance:
    ``prefill_base + prefill_per_token * uncached_prompt_tokens + decode_per_token * output_tokens``,
    of which the first two are its time to first token after it starts."""

    prefill_per_token: float = DEFAULT_PREFILL_PER_TOKEN
    decode_per_token: float = DEFAULT_DECODE_PER_TOKEN
    prefill_base: float = 0.0
    max_running: int = DEFAULT_MAX_RUNNING

    def __post_init__(self) -> None:
        # Bounds that catch typos: a second per token is a thousand times today's slowest GPUs.
        check_positive("prefill-per-token", self.prefill_per_token, allow_zero=True, at_most=1.0)
        check_positive("decode-per-token", self.decode_per_token, allow_zero=True, at_most=1.0)
        check_positive("prefill-base", self.prefill_base, allow_zero=True, at_most=3600.0)
        check_positive("max-running", self.max_running, integer=True, at_most=1_000_000)

    def prefill(self, uncached_tokens: int) -> float:
        return self.prefill_base + self.prefill_per_token * uncached_tokens

    def decode(self, output_tokens: int) -> float:
        return self.decode_per_token * output_tokens
