"""The serving engine's flags (``--engine`` and the scheduler's limits), shared by ``kvsim
simulate`` and ``kvsim replay``; light (no numpy), as ``kvsim replay`` starts without it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

ENGINE_FLAGS = ("max_num_batched_tokens", "max_num_seqs", "no_prefix_caching", "step_time")


def add_engine_args(p: argparse.ArgumentParser, requests_out: bool = True) -> None:
    g = p.add_argument_group("serving engine (vLLM's continuous-batching scheduler, step by step)")
    g.add_argument("--engine", action="store_true",
                   help="instances step like vLLM's scheduler: TTFT, TPOT, throughput, preemptions and the hit "
                        "rate under load (any flag below also turns it on)")
    g.add_argument("--max-num-batched-tokens", type=int, metavar="N",
                   help="tokens per step (default: vLLM serve's for the GPU: 2048 on A100/L40S, 8192 on H100/H200, "
                        "16384 from 160 GiB)")
    g.add_argument("--max-num-seqs", type=int, metavar="N",
                   help="requests per step (default: vLLM serve's: 256 on A100/L40S, 1024 above)")
    g.add_argument("--no-prefix-caching", action="store_true",
                   help="no prefix caching (vLLM's --no-enable-prefix-caching): the baseline caching improves on")
    g.add_argument("--step-time", metavar="SPEC",
                   help="roofline (default: from the model and GPU), linear:ALPHA,BETA,GAMMA (s = ALPHA + BETA x "
                        "tokens in the step + GAMMA x context tokens read), or a JSON file of kvsim calibrate")
    if not requests_out:
        return
    g.add_argument("--requests-out", metavar="FILE.csv",
                   help="write one row per request: request, arrival_s, instance, prompt_tokens, output_tokens, "
                        "hit_tokens, first_scheduled_s, ttft_s, e2e_s, preemptions")


def engine_asked(v: Mapping) -> bool:
    return bool(v.get("engine")) or bool(v.get("no_prefix_caching")) or any(
        v.get(f) is not None for f in ENGINE_FLAGS if f != "no_prefix_caching")


def engine_options(v: Mapping):
    """The :class:`~analytic.serving.EngineOptions` of the flags."""
    from analytic.serving import EngineOptions

    return EngineOptions(engine_asked(v), v.get("max_num_batched_tokens"), v.get("max_num_seqs"),
                         not v.get("no_prefix_caching"), v.get("step_time"))
