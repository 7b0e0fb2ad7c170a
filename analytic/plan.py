"""Capacity planning: the inverse of the TTL models (capacity for a target hit rate) and the
hit-rate-vs-capacity curve.

The models' hit rates do not decrease with capacity (a larger cache has a larger characteristic
time, and every survival probability grows with it), so the smallest capacity that reaches a
target is found by bisection on whole blocks. (The one exception is at capacities of the order of
a single conversation's context: where one more turn starts to fit, it evicts the other contexts
and the rate can dip by a fraction of a point - as in the real cache. Targets there are moot.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from analytic.fifo import fifo_model
from analytic.lru import lru_model
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from analytic.ttl import ModelResult, no_eviction_ceiling

METHODS = ("lru", "fifo")
METRICS = ("token", "request")
MAX_CAPACITY_BLOCKS = 2**62  # the search gives up beyond this (no finite cache reaches the target)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")


def model(workload: Workload, capacity_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE,
          method: str = "lru", variant: str | None = None) -> ModelResult:  # fmt: skip
    """One model evaluation by name: ``lru_model`` (with ``variant``) or ``fifo_model``."""
    _check_method(method)
    if method == "lru":
        return lru_model(workload, capacity_blocks, block_size, variant)
    return fifo_model(workload, capacity_blocks, block_size)


def _rate(result: ModelResult, metric: str) -> float:
    return result.token_hit_rate if metric == "token" else result.request_hit_rate


def capacity_for_target(
    workload: Workload,
    target: float,
    metric: str = "token",
    block_size: int = DEFAULT_BLOCK_SIZE,
    method: str = "lru",
    variant: str | None = None,
    evaluate: Callable[[Workload, int, int, str], ModelResult] | None = None,
) -> int:
    """Smallest capacity (blocks) whose predicted ``metric`` hit rate is >= ``target``.

    ``metric`` is "token" (token_hit_rate) or "request" (request_hit_rate). A target at or above
    the no-eviction ceiling (what an unlimited cache gets) is out of reach: ValueError. The search
    doubles an upper bound from a first guess, then bisects on whole blocks; it relies on the
    model being non-decreasing in capacity. ``evaluate(workload, capacity_blocks, block_size,
    method)`` replaces :func:`model` (a cached one, one that keeps to a time budget); it takes no
    ``variant``.
    """
    if evaluate is not None and variant is not None:
        raise ValueError("give capacity_for_target a variant or an evaluate, not both")
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be an analytic.specs.Workload (got {type(workload).__name__})")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)} (got {metric!r})")
    _check_method(method)
    check_positive("block-size", block_size, integer=True)
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target <= 1):
        raise ValueError(f"target must be a hit rate in (0, 1] (got {target!r})")
    ceiling = _rate(no_eviction_ceiling(workload, block_size), metric)
    if target >= ceiling:
        raise ValueError(
            f"target {metric} hit rate {target:.4g} is out of reach: even an unlimited cache gets "
            f"{ceiling:.4g} (the no-eviction ceiling) with this workload"
        )

    def reaches(capacity: int) -> bool:
        result = (model(workload, capacity, block_size, method, variant) if evaluate is None
                  else evaluate(workload, capacity, block_size, method))
        return _rate(result, metric) >= target

    # First guess: the blocks touched within one mean think time (the LRU occupancy at T = E[G]).
    mean_context = workload.system_prompt_tokens + workload.turns.mean * workload.tokens_per_turn
    guess = workload.arrival_rate * workload.think_time.mean * workload.turns.mean * mean_context / block_size
    hi = max(1, int(guess) + workload.system_prompt_tokens // block_size)
    return smallest_capacity(reaches, hi, f"{metric} hit rate of {target:.4g}")


def smallest_capacity(reaches, first_guess: int, what: str) -> int:
    """The smallest capacity (blocks) at which ``reaches(capacity)`` holds, for a monotone
    ``reaches`` that is false at 0: doubling from ``first_guess``, then bisection."""
    lo, hi = 0, max(1, first_guess)
    while not reaches(hi):
        lo = hi
        hi *= 2
        if hi > MAX_CAPACITY_BLOCKS:
            raise ValueError(f"no finite capacity reaches a {what} with this workload")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


def hit_rate_curve(
    workload: Workload,
    capacities_blocks,
    block_size: int = DEFAULT_BLOCK_SIZE,
    methods=METHODS,
    variant: str | None = None,
) -> list[dict]:
    """Rows (one per capacity and method) for a hit-rate-vs-capacity figure or table.

    Each row: capacity_blocks, capacity_tokens, method, variant, characteristic_time (s, None if
    infinite), token_hit_rate, request_hit_rate, mean_occupancy_blocks, and the no-eviction
    ceiling's token and request hit rates for reference. ``variant`` applies to LRU.
    """
    if isinstance(methods, str):
        methods = (methods,)
    for method in methods:
        _check_method(method)
    ceiling = no_eviction_ceiling(workload, block_size)
    rows = []
    for capacity in capacities_blocks:
        for method in methods:
            result = model(workload, capacity, block_size, method, variant)
            T = result.characteristic_time
            rows.append(
                {
                    "capacity_blocks": int(capacity),
                    "capacity_tokens": int(capacity) * block_size,
                    "method": method,
                    "variant": result.variant,
                    "characteristic_time": T if math.isfinite(T) else None,
                    "token_hit_rate": result.token_hit_rate,
                    "request_hit_rate": result.request_hit_rate,
                    "mean_occupancy_blocks": result.mean_occupancy_blocks,
                    "ceiling_token_hit_rate": ceiling.token_hit_rate,
                    "ceiling_request_hit_rate": ceiling.request_hit_rate,
                }
            )
    return rows
