"""SIEVE (Zhang et al., "SIEVE is Simpler than LRU", NSDI'24), per block: :class:`SievePolicy`.

One FIFO queue of the cached blocks, newest at the head, and one *visited* bit per block. A hit
sets the bit (and does not move the block); a new block enters at the head with the bit clear. To
evict, a *hand* walks from the oldest block toward the newest: a visited block has its bit cleared
and is passed, the first unvisited block is evicted, and the hand stays where it stopped (on the
next newer block) for the next eviction; past the newest block it starts again from the oldest.
This is libCacheSim's ``Sieve.c`` step for step: on a stream of single-block requests the two give
the same hits (``tests/test_policies_modern.py``).

Choices for a prefix cache (where the paper and libCacheSim have nothing to say):

* a request's hits have their bit set; its other keys are inserted at the head, deepest first
  (so the deepest is the oldest of them, the package's ordering rule); a *stale copy* (a cached
  key after the first miss) is removed -- the hand, if on it, moves to the next newer block, as
  libCacheSim's ``remove`` does -- and inserted again as a new block, bit clear;
* a pinned block (one of the current request's own, or in ``pinned``) is passed over by the hand
  without touching its bit: it stays where it is and is simply not a candidate.

Implementation: the queue is split at the hand into two ordered dicts, ``behind`` (blocks the hand
has passed, oldest first) and ``ahead`` (the hand's block first, then every newer one); a key maps
to its visited bit. Passing a block moves it from the front of ``ahead`` to the back of ``behind``,
which keeps the queue order because every passed block is older than every block ahead; when
``ahead`` runs out the hand wraps: ``behind`` becomes ``ahead``. So every operation is O(1)
(amortised), and the single implementation is simple enough to be its own per-block version; the
tests also check it against a naive list-and-index model of the same rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from itertools import chain

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["SievePolicy"]


class SievePolicy:
    """SIEVE: a FIFO queue with visited bits and a hand (see the module docstring)."""

    name = "sieve"

    def __init__(self) -> None:
        # Invariant: ``ahead`` is empty only if ``behind`` is (the hand then starts at the oldest).
        self._behind: OrderedDict[int, bool] = OrderedDict()
        self._ahead: OrderedDict[int, bool] = OrderedDict()
        self._keys: list[int] = []
        self._hits: set[int] = set()

    def __len__(self) -> int:
        return len(self._behind) + len(self._ahead)

    def __contains__(self, key: object) -> bool:
        return key in self._ahead or key in self._behind

    def __iter__(self) -> Iterator[int]:
        return chain(self._behind, self._ahead)

    def _remove(self, key: int) -> None:
        if key in self._behind:
            del self._behind[key]
            return
        del self._ahead[key]
        if not self._ahead:  # the hand was past the newest block: it starts again from the oldest
            self._ahead, self._behind = self._behind, self._ahead

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = [k for first, count in runs for k in range(first, first + count)]
        ahead, behind = self._ahead, self._behind
        hit = 0
        for key in keys[:max_hit_blocks]:
            # Setting the bit now or at release() is the same: the hand passes pinned blocks.
            if key in ahead:
                ahead[key] = True
            elif key in behind:
                behind[key] = True
            else:
                break
            hit += 1
        self._hits = set(keys[:hit])
        stale = 0
        for key in keys[hit:]:
            if key in ahead or key in behind:
                self._remove(key)
                stale += 1
        return hit, hit + stale

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        hits = self._hits
        ahead, behind = self._ahead, self._behind
        while n:
            key, visited = ahead.popitem(False)
            if (hits and key in hits) or (pinned and _is_pinned(pinned, key)):
                behind[key] = visited
            elif visited:
                behind[key] = False
            else:
                n -= 1
            if not ahead:
                ahead, behind = behind, ahead
        self._ahead, self._behind = ahead, behind

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        ahead = self._ahead  # new blocks go to the head, the newest end of ``ahead``
        for key in reversed(keys[hit_blocks:]):
            ahead[key] = False
        self._hits = set()

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        hit = 0
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or not (key in self._ahead or key in self._behind):
                    return hit
                hit += 1
        return hit
