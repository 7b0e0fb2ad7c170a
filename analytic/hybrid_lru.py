"""The LRU model for hybrid models: one pool of blocks shared by KV cache groups of several kinds
(full attention, sliding window, Mamba / linear attention), as vLLM's hybrid KV cache manager
keeps it (DESIGN.md §10; the simulator: ``kvsim.hybrid_cache``).

Che's characteristic time, as :func:`analytic.lru.lru_model`, with what each kind of group keeps
per conversation. A request touches the blocks its hit needs and the ones it adds; a block stays
cached for T after its last touch (the pool is one LRU queue). With c'_k the conversation's
blocks after turn k (beyond the system prompt), G the think time and L the turns:

* **full attention**: every block is needed by the next turn's hit and touched by it, so c'_k
  blocks stay min(G, T) between turns and c'_L stay T after the last one:
  ``K1 = E[sum_{k<L} c'_k]``, ``K2 = E[c'_L]`` (the single-group model).
* **sliding window W** (w = cdiv(W - 1, bs) blocks before the hit point are all a hit needs):
  a turn that hits touches the window before its hit point and the blocks it adds; one that
  misses computes its whole prompt in one chunk and touches every block. The next turn touches
  only the last ``min(c'_k, w)``; the others stay T. Summed over a conversation, with
  q = F(T) the chance that a turn finds its context: ``K1 = E[sum_{k<L} min(c'_k, w)]`` and
  ``K2 = E[c'_L] + (1 - q) E[sum_{k<L} (c'_k - min(c'_k, w))]``: the saving is the turns that
  hit, and only the gap between turns (an LRU pool keeps the blocks that left the window as long
  as any other).
* **Mamba**: one state per hit point. ``align`` (vLLM 0.33) caches a state at the prompt's last
  block boundary when the prefill passes a new one (a checkpoint, or a chunk ended there) and one
  at every boundary the decode crosses; the last is the next turn's hit point, touched once
  more: ``K1 = E[L - 1]``, ``K2 = E[states created]``. ``all`` caches a state at every block boundary a request
  computes, superseded as the sequence grows: as a sliding window of one block,
  ``K1 = E[L - 1]``, ``K2 = E[c'_L] + (1 - q) E[sum_{k<L} (c'_k - 1)]``.

The pool holds ``C = rate·Σ_g n_g (K1_g m(T) + K2_g(T) T)`` plus the system prompt (n_S blocks per
full group, ``min(n_S, w)`` per sliding group, one state per Mamba group), where n_g is the
number of groups of each kind. Every block the next turn needs was touched by the turn before,
so the previous context is found iff G < T for every kind together: hits are the single-group
model's at the pool's block size (``F(T)``, contexts kept whole: the "che" variant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scipy import optimize

from analytic.lru import lru_characteristic_time
from analytic.specs import Workload
from analytic.ttl import ModelResult, _check, _metrics, _nothing_served, _table

HYBRID_KINDS = ("full", "sliding", "mamba")
MAMBA_MODES = ("align", "all")


def group_sums(workload: Workload, block_size: int, kind: str, window: int = 0, mamba_cache_mode: str = "align",
               capacity_blocks: int | None = None) -> tuple[float, float, float, float]:
    """(K1, K2 when every turn hits, K2's extra per missed turn share, system blocks) of one group
    of ``kind`` (see the module docstring), in blocks: K2 = K2_hit + (1 - q) extra."""
    if kind not in HYBRID_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HYBRID_KINDS)} (got {kind!r})")
    if mamba_cache_mode not in MAMBA_MODES:
        raise ValueError(f"mamba-cache-mode must be one of {', '.join(MAMBA_MODES)} (got {mamba_cache_mode!r})")
    table = _table(workload, block_size, capacity_blocks)
    law = table.law
    k1, k2 = table.sums()
    n_s = table.system_blocks
    if kind == "full":
        return k1, k2, 0.0, float(n_s)
    followed = np.arange(law.turns)[None, :] + 1 < table.served_turns[:, None]  # sigma_{k+1}, per path
    if kind == "sliding":
        w = -(-(window - 1) // block_size)
        kept = float(law.more @ (np.minimum(table.paths.conv, w) * followed).mean(axis=0))
        return kept, k2, k1 - kept, float(min(n_s, w))
    turns_followed = float(law.more @ followed.mean(axis=0))
    if mamba_cache_mode == "all":
        return turns_followed, k2, k1 - turns_followed, 1.0 if n_s else 0.0
    # align: a state at the prompt's last block boundary when the prefill reaches a new one (past
    # the previous context's, where the hit's state is), and one per boundary the decode crosses
    paths = table.paths
    served = np.arange(law.turns)[None, :] < table.served_turns[:, None]
    full = paths.conv + n_s  # floor(c_k / bs) (turns past the system prompt)
    before = np.concatenate([np.full((full.shape[0], 1), n_s), full[:, :-1]], axis=1)
    prompt_end = np.floor(np.maximum(paths.prompt - 1, 0) / block_size)
    states = (prompt_end > before) + np.maximum(full - np.floor(paths.prompt / block_size), 0)
    created = float(law.reach @ (states * served).mean(axis=0))
    return turns_followed, created, 0.0, 1.0 if n_s else 0.0


def hybrid_lru_model(workload: Workload, groups: Sequence[tuple[str, int, int]], capacity_blocks: int,
                     block_size: int, mamba_cache_mode: str = "align") -> ModelResult:
    """The LRU model of a pool of ``capacity_blocks`` blocks of ``block_size`` tokens shared by
    ``groups``: (kind, window tokens or 0, number of vLLM KV cache groups of that kind), e.g.
    ``[("sliding", 128, 1), ("full", 0, 1)]`` for gpt-oss (``analytic.hybrid.plan``'s groups).
    A single full-attention group gives :func:`analytic.lru.lru_model`'s "che" variant."""
    _check(workload, capacity_blocks, block_size)
    groups = [(kind, int(window), int(count)) for kind, window, count in groups]
    if not groups or any(count < 1 for _, _, count in groups):
        raise ValueError(f"groups must be one or more (kind, window, count >= 1) (got {groups!r})")
    # A request larger than the pool is not served. It holds its whole sequence in each full group,
    # but only a window (sliding) or a few states (Mamba) in the others when it hits: the full
    # groups decide (or the sliding ones, in a model without full attention).
    holding = sum(count for kind, _, count in groups if kind == "full") or sum(
        count for kind, _, count in groups if kind == "sliding") or 1
    served_below = capacity_blocks // holding
    table = _table(workload, block_size, served_below)
    if table.served[0] == 0:
        return _nothing_served("lru", "che", capacity_blocks, block_size, table)
    k1 = k2 = extra = system = 0.0
    for kind, window, count in groups:
        a, b, x, s = group_sums(workload, block_size, kind, window, mamba_cache_mode, served_below)
        k1, k2, extra, system = k1 + count * a, k2 + count * b, extra + count * x, system + count * s
    rate, think = workload.arrival_rate, workload.think_time
    c_conv = capacity_blocks - system
    T = _characteristic_time(rate, think, k1, k2, extra, c_conv)
    if math.isinf(T):
        keep, occupancy = np.ones(table.law.turns), system
    else:
        q = float(think.cdf(T))
        occupancy = system + rate * (k1 * think.limited_mean(T) + (k2 + (1 - q) * extra) * T)
        keep = np.full(table.law.turns, q if c_conv > 0 else 0.0)
    token, request, per_turn, context = _metrics(table, keep)
    return ModelResult("lru", "che", T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


def _characteristic_time(rate: float, think, k1: float, k2: float, extra: float, c_conv: float) -> float:
    """The T at which the pool is full: ``c_conv = rate (K1 m(T) + (K2 + (1 - F(T)) extra) T)``.
    Without ``extra`` it is :func:`analytic.lru.lru_characteristic_time`. With it the right side
    lies between the equation's with ``extra`` left out (all hit) and added in full (none hits),
    which bracket the root; the smallest root in the bracket is taken (a think time with a sharp
    F can make the right side dip)."""
    if extra <= 0 or c_conv <= 0:
        return lru_characteristic_time(rate, think, k1, k2, c_conv)
    lo = lru_characteristic_time(rate, think, k1, k2 + extra, c_conv)
    hi = lru_characteristic_time(rate, think, k1, k2, c_conv)
    if math.isinf(hi) or hi <= lo:
        return hi

    def excess(T: float) -> float:
        return rate * (k1 * think.limited_mean(T) + (k2 + (1 - float(think.cdf(T))) * extra) * T) - c_conv

    if excess(lo) >= 0:
        return lo
    grid = np.linspace(lo, hi, 65)
    values = [excess(x) for x in grid]
    i = next((i for i, v in enumerate(values) if v >= 0), len(grid) - 1)
    if i == 0 or values[i] < 0:
        return float(grid[i])
    return optimize.brentq(excess, grid[i - 1], grid[i], xtol=1e-12 * hi, rtol=1e-12)
