"""The FIFO model for hybrid models: one pool of blocks shared by KV cache groups of several kinds,
evicted first in, first out (the block cached longest ago goes first, a hit keeps its place: the
single-group FIFO's rule; ``kvsim simulate --vllm --policy fifo``). vLLM's own pool is LRU
(:mod:`analytic.hybrid_lru`); this is the FIFO model of ``kvsim calc`` for a hybrid.

The single-group FIFO model (:func:`analytic.fifo.fifo_model`, "che" variant) with what each kind
of group writes. Under FIFO a block lives T_F after it is written, whatever touches it, so a kind
differs only in what its turns write:

* **full attention** and **sliding window**: a turn that misses computes its whole context and
  writes c'_k blocks (a sliding group keeps the blocks that left its window cached, as vLLM does,
  and nothing refreshes them); one that hits writes its new blocks. Same writes, same overlap
  (a miss rewriting blocks still cached): the single-group occupancy, once per group.
* **Mamba** ``align``: the states a turn creates (one at the prompt's last block boundary when it
  passes a new one, one per boundary the decode crosses: :func:`analytic.hybrid_lru.group_sums`),
  hit or miss, each at a new position, so none is rewritten: ``rate x T_F x E[states created]``.
  ``all`` caches a state at every boundary a turn computes: written as a full group's blocks.

Which hits survive: the next turn needs, in a full group, the whole context, whose head was
written at the conversation's last miss, the oldest of what it needs (a sliding window's last
blocks and a Mamba group's state were written since). So the full groups decide: turn j hits iff
A_j - A_m < T_F, the single-group rule, at the pool's block size. The model needs a full-attention
group (every hybrid preset has one).

The pool holds ``C = system + sum_g n_g occ_g(T_F)`` (the system prompt as in the LRU model: n_S
blocks per full group, ``min(n_S, w)`` per sliding group, a state per Mamba group), solved by
brentq (:func:`analytic.fifo.fifo_characteristic_time`); where the occupancy jumps at the root
(empirical or deterministic gaps) the two sides are mixed as ``fifo_model``'s "che" variant does. Deterministic think times get that variant too, not
the single-group model's horizon law ("che+gaussian").

The system prompt's last window (sliding groups) and its state (Mamba groups) are another matter:
the requests that hold them are those whose hit ends at the system prompt (or, for a window,
within w tokens after it), and FIFO never refreshes them, so they live T_F after a request that
missed them wrote them again. With those requests arriving at rate r_S (Poisson), the blocks are
there for T_F, then gone until the next such request: a renewal, and such a request finds them
with probability ``p_S = r_S T_F / (1 + r_S T_F)``; without them the coordinator's hit is 0. A
full group's system blocks are held by every request, so never evicted (zero service time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from analytic.distributions import ThinkTime
from analytic.fifo import FIFO_MAX_TURNS, _fifo_groups, _fifo_rates, _mix, fifo_characteristic_time
from analytic.hybrid_lru import group_sums
from analytic.specs import Workload
from analytic.ttl import ModelResult, _check, _nothing_served, _table, rates


def hybrid_fifo_model(workload: Workload, groups: Sequence[tuple[str, int, int]], capacity_blocks: int,
                      block_size: int, mamba_cache_mode: str = "align") -> ModelResult:
    """The FIFO model of a pool of ``capacity_blocks`` blocks of ``block_size`` tokens shared by
    ``groups``: (kind, window tokens or 0, number of KV cache groups of that kind), as
    :func:`analytic.hybrid_lru.hybrid_lru_model` takes them. One full-attention group gives
    :func:`analytic.fifo.fifo_model`'s "che" variant."""
    _check(workload, capacity_blocks, block_size)
    groups = [(kind, int(window), int(count)) for kind, window, count in groups]
    if not groups or any(count < 1 for _, _, count in groups):
        raise ValueError(f"groups must be one or more (kind, window, count >= 1) (got {groups!r})")
    full = sum(count for kind, _, count in groups if kind == "full")
    if not full:
        raise ValueError("groups: the hybrid FIFO model needs a full-attention group (its head decides the hits)")
    if workload.turns.longest > FIFO_MAX_TURNS:
        raise ValueError(f"turns: the FIFO model takes conversations of up to {FIFO_MAX_TURNS:,} turns "
                         f"(got {workload.turns.longest:,})")
    think = workload.think_time
    if think.kind == "empirical" and think.deterministic and think.mean > 0:
        think = ThinkTime("det", think.mean)
    # A request larger than the pool is not served: the full groups hold its whole sequence.
    served_below = capacity_blocks // full
    table = _table(workload, block_size, served_below)
    if table.served[0] == 0:
        return _nothing_served("fifo", "che", capacity_blocks, block_size, table)
    rewriting = states = system = 0.0  # groups written as a full one; Mamba states created per conversation
    for kind, window, count in groups:
        _, created, _, s = group_sums(workload, block_size, kind, window, mamba_cache_mode, served_below)
        system += count * s
        if kind == "mamba" and mamba_cache_mode == "align":
            states += count * created
        else:
            rewriting += count
    rate = workload.arrival_rate
    c_conv = capacity_blocks - system
    fgroups = _fifo_groups(table)
    K = table.law.turns
    if c_conv <= 0:
        T, keep, occupancy = 0.0, np.zeros((len(fgroups.first), K)), system
    elif table.sums()[1] <= 0 and states <= 0:
        T, occupancy = math.inf, system
        keep = (np.arange(1, K + 1)[None, :] > fgroups.first[:, None]).astype(float)
    else:
        T, low, high = fifo_characteristic_time(rate, think, table, c_conv, fgroups, rewriting, rate * states)
        keep, occupancy = _mix(low, high, c_conv, system)
    if table.system_blocks and any(kind != "full" for kind, _, _ in groups) and 0 < T < math.inf:
        token, request, per_turn, context = _system_window_rates(workload, groups, table, fgroups, keep, T)
    else:
        token, request, per_turn, context = _fifo_rates(table, fgroups, keep)
    return ModelResult("fifo", "che", T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


def _system_window_rates(workload: Workload, groups, table, fgroups, keep: np.ndarray, T: float):
    """``_fifo_rates`` when the system prompt's window or state is found with probability p_S only
    (see the module docstring): a turn needs it when it does not find its context, or finds one
    that ends within a sliding window of the system prompt (by the mean context: (k - 1) turns)."""
    window = max((w for kind, w, _ in groups if kind == "sliding"), default=0)
    K = table.law.turns
    near = np.arange(K) * workload.tokens_per_turn < window - 1
    found = (keep * fgroups.served).sum(axis=0) / np.maximum(table.served, 1e-300)
    needing = workload.arrival_rate * float(table.law.reach @ (table.served * ((1 - found) + found * near)))
    p_s = needing * T / (1 + needing * T)
    scale = np.where(near, p_s, 1.0)  # a found context near the system prompt needs its window too
    hit_tokens = scale * (found * table.system_tokens + (keep * fgroups.gain_tokens).sum(axis=0)) \
        + p_s * (1 - found) * table.system_tokens
    any_hit = scale * (found * table.system_any + (keep * fgroups.gain_any).sum(axis=0)) \
        + p_s * (1 - found) * table.system_any
    return rates(table, hit_tokens, any_hit, found)
