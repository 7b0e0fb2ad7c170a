"""LRU by Che's characteristic time applied to conversations (DESIGN.md §5): ``lru_model``.

A conversation's context stays cached for T after its last access, so turn k+1 reuses turn k's
context iff its think time G_k < T; T solves  C_conv = lambda E[sum_{k<L} c'_k m(T) + c'_L T]
(``lru_characteristic_time``). Whole blocks, size paths, turn law and the closed-form sums
(``closed_form_sums``) are those of ``analytic.ttl``, which holds the pieces shared with the
FIFO model (``analytic.fifo``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from analytic.distributions import ThinkTime
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload
from analytic.ttl import (
    ModelResult,
    _check,
    _metrics,
    _nothing_served,
    _table,
    _Table,
    closed_form_sums,
    normal_survival,
)

LRU_VARIANTS = ("che", "che+gaussian")
GAUSS_NODES = 256  # quantile nodes for E_G[...] in the Gaussian refinement


def _lru_variant(think: ThinkTime, variant) -> str:
    if variant is None:
        # F(T) of a deterministic think time is a step; the Gaussian refinement smooths it.
        return "che+gaussian" if think.deterministic else "che"
    if variant not in LRU_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LRU_VARIANTS)} or None (got {variant!r})")
    return variant


def lru_characteristic_time(rate: float, think: ThinkTime, k1: float, k2: float, c_conv: float) -> float:
    """The root T of  C_conv = rate * (K1 m(T) + K2 T)  (blocks; DESIGN.md §5).

    The right side is 0 at T = 0, continuous and strictly increasing (K2 > 0), and grows without
    bound through K2 T, so the root exists and is unique for C_conv > 0. Since m(T) <= min(T, E[G]),
    it lies in [max(C/(rate (K1+K2)), (C/rate - K1 E[G])/K2), C/(rate K2)] - brentq's bracket.
    """
    if c_conv <= 0:
        return 0.0
    if k2 <= 0:
        return math.inf  # no conversation content: the cache never fills
    target = c_conv / rate
    hi = target / k2
    lo = max(target / (k1 + k2), (target - k1 * think.mean) / k2, 0.0)
    if lo >= hi:
        return hi

    def excess(T):
        return k1 * think.limited_mean(T) + k2 * T - target

    if excess(hi) <= 0:
        return hi
    if excess(lo) >= 0:
        return lo
    return optimize.brentq(excess, lo, hi, xtol=1e-12 * hi, rtol=1e-12)


def _gaussian_keep(rate, think: ThinkTime, table: _Table, c_conv: float):
    """Campbell refinement of LRU survival, per turn: (P(any), expected share, P(all)) of the
    previous context c (blocks) still cached when the next request comes, a gap G later.

    The content the other conversations touched within x is compound Poisson (each contributes
    its current context c'_k for min(G_k, x), resp. x after its last turn) with mean
    mu(x) = rate (K1 m(x) + K2 x) and variance s^2(x) = rate (K1sq m(x) + K2sq x); it is taken as
    normal. LRU evicts a context tail first, so its leading y blocks survive iff X <= C - y:
      P(any)  = E_G[Phi(a)],  a = (C - mu(G)) / s(G)           (DESIGN.md §5)
      share   = E_G[s (psi(a) - psi(a - c/s))] / c,  psi(z) = z Phi(z) + phi(z)  (= E[clip(C-X, 0, c)]/c)
      P(all)  = E_G[Phi(a - c/s)].
    With drawn token counts c is the turn's mean context.
    """
    k1, k2 = table.sums()
    k1sq, k2sq = table.sums(square=True)
    x = think.quantile_points(GAUSS_NODES)
    m = think.limited_means(x)
    mu = rate * (k1 * m + k2 * x)
    sd = np.sqrt(rate * (k1sq * m + k2sq * x))[:, None]
    # The context that turn k+1 hopes to find is c'_k (mean over the paths that serve turn k).
    context = np.concatenate(([0.0], table.conv_served[:-1] / np.maximum(table.served[:-1], 1e-300)))
    any_, kept, full = normal_survival(c_conv, mu[:, None], sd, context[None, :])
    any_ = np.broadcast_to(any_.mean(axis=0), context.shape).copy()
    full = full.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(context > 0, kept.mean(axis=0) / context, any_)
    return any_, np.clip(share, 0.0, 1.0), full


def lru_model(
    workload: Workload,
    capacity_blocks: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    variant: str | None = None,
) -> ModelResult:
    """LRU by Che's characteristic time applied to conversations (DESIGN.md §5).

    Solves  C_conv = lambda * E[ sum_{k=1}^{L-1} c'_k m(T) + c'_L T ]  for T, with
    C_conv = capacity - n_S and c'_k in blocks: a context is touched as a whole by every request
    (hit blocks touched, new ones inserted), so it occupies the cache from its request until the
    next one (G) or until T has passed, and the last one of a conversation for T. Then
    P(turn k+1 reuses turn k's context) = F(T) ("che", whole contexts evicted at once), or the
    Gaussian refinement with partial (tail-first) eviction ("che+gaussian", the default for
    deterministic think times, whose F(T) is a step; see ``_gaussian_keep``).
    Oversized turns end a conversation as far as the cache is concerned (their predecessor's
    context then stays T). The cache is full at the root: mean occupancy = capacity.
    """
    _check(workload, capacity_blocks, block_size)
    think = workload.think_time
    variant = _lru_variant(think, variant)
    table = _table(workload, block_size, capacity_blocks)
    if table.served[0] == 0:
        return _nothing_served("lru", variant, capacity_blocks, block_size, table)
    rate = workload.arrival_rate
    c_conv = capacity_blocks - table.system_blocks
    sums = table.sums()
    if table.served_turns.min() == table.law.turns:  # no oversized turn: the closed form may apply
        sums = closed_form_sums(workload, block_size) or sums
    T = lru_characteristic_time(rate, think, *sums, c_conv)
    K = table.law.turns
    share = full = None
    if math.isinf(T):
        keep, occupancy = np.ones(K), float(table.system_blocks)
    else:
        occupancy = table.system_blocks + rate * (sums[0] * think.limited_mean(T) + sums[1] * T)
        if c_conv <= 0:
            keep = np.zeros(K)
        elif variant == "che":
            keep = np.full(K, float(think.cdf(T)))
        else:
            keep, share, full = _gaussian_keep(rate, think, table, c_conv)
    token, request, per_turn, context = _metrics(table, keep, share, full)
    return ModelResult("lru", variant, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)
