"""Latency targets (``--slo ttft-p99=0.5,tpot-p99=0.05``) and what an instance can promise.

A target names a latency (TTFT, TPOT, E2E: DESIGN.md §9), a statistic (mean, p50, p90, p99) and a
bound in seconds. :func:`lone_request` is the floor no arrival rate can beat: a request alone on
the instance, computing its whole prompt. :func:`model_rate_bound` is what the models under load
(:mod:`analytic.load`) allow: the largest arrival rate whose *mean* latencies meet every target
and that the instance sustains. A percentile is at least the mean, so for percentile targets it
is an upper bound; for mean targets it is the models' answer (optimistic for TTFT, which they
underestimate near saturation). :func:`meets_at_rate` asks the same of one rate and a cache (a GPU
capacity, a CPU tier below it), and :func:`smallest_blocks` finds the smallest cache for which it
holds: the lower bound of ``kvsim plan --slo --solve-for gpu-memory|cpu-offload``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from analytic.specs import Workload

SLO_METRICS = ("ttft", "tpot", "e2e")
SLO_STATS = ("mean", "p50", "p90", "p99")


@dataclass(frozen=True)
class Target:
    metric: str  # ttft, tpot, e2e
    stat: str  # mean, p50, p90, p99
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.metric}-{self.stat}"


def parse_slo(text: str) -> tuple[Target, ...]:
    """``"ttft-p99=0.5,tpot-p99=0.05"`` -> targets; a malformed one raises ValueError naming ``slo``."""
    allowed = ", ".join(f"{m}-{s}" for m in SLO_METRICS for s in SLO_STATS)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"slo must be METRIC-STAT=SECONDS[,...] with METRIC-STAT one of {allowed} (got {text!r})")
    targets = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        metric, _, stat = name.strip().lower().partition("-")
        if not sep or metric not in SLO_METRICS or stat not in SLO_STATS:
            raise ValueError(f"slo: {part.strip()!r} must be METRIC-STAT=SECONDS with METRIC-STAT one of {allowed}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 0 < seconds <= 1e6):
            raise ValueError(f"slo: {name.strip()} must be a number of seconds in (0, 1e6] (got {value.strip()!r})")
        if name in targets:
            raise ValueError(f"slo: {name.strip()} is given twice")
        targets[name] = Target(metric, stat, seconds)
    return tuple(targets.values())


def lone_request(workload: Workload, step_time, max_num_batched_tokens: int) -> dict[str, float]:
    """TTFT, TPOT and E2E (s) of a mean request alone on the instance, nothing cached: its prompt
    in chunks of the token budget, then one decode step per further output token."""
    from analytic.load import mean_prompt

    p = mean_prompt(workload)
    o = max(workload.output_tokens.mean, 1.0)
    ttft = 0.0
    done = 0.0
    while done < p:
        n = min(max_num_batched_tokens, p - done)
        ttft += step_time.seconds(n, n * done + n * (n + 1) / 2, done + n, 1)
        done += n
    ttft += step_time.request_latency_s
    context = p + o / 2
    tpot = step_time.seconds(1, context, context, 1)
    return {"ttft": ttft, "tpot": tpot, "e2e": ttft + (o - 1) * tpot}


def check_possible(targets, workload: Workload, step_time, max_num_batched_tokens: int) -> dict[str, float]:
    """Refuse a target below a lone request's own time (ValueError naming ``slo``)."""
    alone = lone_request(workload, step_time, max_num_batched_tokens)
    for t in targets:
        if t.seconds < alone[t.metric]:
            raise ValueError(f"slo: {t.name}={t.seconds:g} s is below what a lone request takes "
                             f"({alone[t.metric]:.4g} s {t.metric.upper()} with nothing cached): no arrival rate meets it")
    return alone


def model_rate_bound(targets, workload: Workload, capacity_blocks: int, block_size: int, engine, evaluate,
                     method: str = "lru", tolerance: float = 0.005) -> float:
    """The largest arrival rate (conversations/s) at which :func:`analytic.load.under_load`
    finds a steady state whose mean latencies meet every target (bisection)."""
    from analytic.load import saturation_rate, under_load

    def ok(rate: float) -> bool:
        r = under_load(replace(workload, arrival_rate=rate), capacity_blocks, block_size, engine, evaluate, method)
        if r.saturated:
            return False
        means = _means(r, workload)
        return all(means[t.metric] <= t.seconds for t in targets)

    hi = saturation_rate(workload, capacity_blocks, block_size, engine, evaluate, method)
    lo = 0.0
    if ok(hi):
        return hi
    floor = tolerance * hi  # below this share of the sustainable rate: none meets the targets (0)
    while hi - lo > tolerance * hi and hi > floor:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


MAX_PLAN_BLOCKS = 1 << 40  # a capacity search gives up beyond this many blocks


def _means(r, workload: Workload, load_wait_s: float = 0.0) -> dict[str, float]:
    """The mean latencies of a steady state of :func:`analytic.load.under_load` (a request whose
    hit continues below the GPU also waits ``load_wait_s`` for it on average)."""
    ttft = r.ttft_s + load_wait_s
    return {"ttft": ttft, "tpot": r.tpot_s, "e2e": ttft + (workload.output_tokens.mean - 1) * r.tpot_s}


def meets_at_rate(targets, workload: Workload, capacity_blocks: int, block_size: int, engine, evaluate,
                  method: str = "lru", tiers=None) -> bool:
    """Whether the models under load find a steady state at ``workload.arrival_rate`` whose mean
    latencies meet every target. ``tiers`` (:class:`analytic.offload.Tiers`, a CPU tier): the hit
    rate is GPU + CPU (:func:`analytic.tiers.tiered_model`, the GPU's capacity reduced by the held
    blocks) and TTFT adds the mean load of the CPU's hits (their tokens x the tier's seconds per token)."""
    from analytic.load import mean_prompt, under_load

    load_wait = 0.0
    hit_model = evaluate
    if tiers is not None and tiers.cpu_blocks:
        from analytic.tiers import tiered_model

        def hit_model(w, blocks, bs, m):
            return tiered_model(w, (blocks, tiers.cpu_blocks), bs, m, tiers.mode)

        if engine.prefix_caching:
            cpu_share = tiered_model(workload, (capacity_blocks, tiers.cpu_blocks), block_size, method,
                                     tiers.mode).tiers["cpu"]["token_hit_rate"]
            load_wait = cpu_share * mean_prompt(workload) * tiers.cpu_load_s_per_token
    r = under_load(workload, capacity_blocks, block_size, engine, hit_model, method)
    if r.saturated:
        return False
    means = _means(r, workload, load_wait)
    return all(means[t.metric] <= t.seconds for t in targets)


def smallest_blocks(ok, start: int = 1024) -> int | None:
    """The smallest whole number of blocks ``n >= 1`` with ``ok(n)``, for ``ok`` false below some
    n and true from it on: doubling from ``start`` until it holds, then bisection. None when it
    does not hold even at MAX_PLAN_BLOCKS."""
    hi = max(1, int(start))
    while not ok(hi):
        if hi >= MAX_PLAN_BLOCKS:
            return None
        hi *= 2
    lo = 0  # ok(lo) false (or lo = 0)
    if hi > start:
        lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
