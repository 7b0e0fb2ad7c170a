"""The serving engine's configuration: vLLM v1's scheduler limits, prefix caching and the step time.

A spec like the model, hardware and workload ones: the step engine (:mod:`kvsim.step_engine`)
runs it, the scenario carries it (``analytic.scenario``), the models under load will read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from analytic.checks import check_positive

if TYPE_CHECKING:
    from analytic.steptime import StepTime

MAX_BATCHED_TOKENS = 10_000_000  # a typo beyond this: vLLM's largest budgets are ~1M tokens
MAX_NUM_SEQS = 1_000_000


@dataclass(frozen=True)
class EngineSpec:
    """One instance's scheduler: at most ``max_num_batched_tokens`` tokens and
    ``max_num_seqs`` requests per step (vLLM's ``--max-num-batched-tokens`` and
    ``--max-num-seqs``), prefix caching on or off (``--no-prefix-caching``: vLLM's
    ``--no-enable-prefix-caching``), and the duration of a step (:mod:`analytic.steptime`)."""

    step_time: StepTime
    max_num_batched_tokens: int
    max_num_seqs: int
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        check_positive("max-num-batched-tokens", self.max_num_batched_tokens, integer=True, at_most=MAX_BATCHED_TOKENS)
        check_positive("max-num-seqs", self.max_num_seqs, integer=True, at_most=MAX_NUM_SEQS)
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM refuses it too (SchedulerConfig): a step could not give every running request its token.
            raise ValueError(f"max-num-batched-tokens must be >= max-num-seqs ({self.max_num_seqs:,}) "
                             f"(got {self.max_num_batched_tokens:,})")

    def as_dict(self) -> dict:
        return {"max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "prefix_caching": self.prefix_caching, "step_time": self.step_time.as_dict()}


@dataclass(frozen=True)
class EngineOptions:
    """The engine's flags as given (None: the default): whether the engine runs at all, its
    limits, prefix caching, and ``--step-time`` as text (:func:`analytic.steptime.parse_step_time`)."""

    enabled: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    prefix_caching: bool = True
    step_time: str | None = None

    def spec(self, model, gpu: str | None, gpu_memory_gib: float | None, tp: int = 1, weight_dtype: str = "bf16",
             kv_dtype: str = "bf16") -> EngineSpec:
        """The :class:`EngineSpec` for ``model`` on ``tp`` GPUs named ``gpu`` (a preset, or None
        when the memory was given otherwise: the roofline then cannot run) of ``gpu_memory_gib``
        each (vLLM's default limits depend on it; None: an H100's)."""
        from analytic import steptime

        text = self.step_time
        if (text is None or text.strip().lower() == "roofline") and gpu is None:
            raise ValueError("step-time: the roofline needs the GPU: give --gpu NAME (not --gpu-memory-gb or a "
                             "capacity), or --step-time linear:ALPHA,BETA,GAMMA")
        step_time = steptime.parse_step_time(text, model, gpu or "", tp, weight_dtype, kv_dtype)
        if gpu_memory_gib is None:
            tokens, seqs = steptime.DEFAULT_MAX_NUM_BATCHED_TOKENS, steptime.DEFAULT_MAX_NUM_SEQS
        else:
            tokens, seqs = steptime.default_engine_limits(gpu_memory_gib, gpu or "")
        return EngineSpec(step_time, tokens if self.max_num_batched_tokens is None else self.max_num_batched_tokens,
                          seqs if self.max_num_seqs is None else self.max_num_seqs, self.prefix_caching)
