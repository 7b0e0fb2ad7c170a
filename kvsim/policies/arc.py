"""ARC (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST'03), per
block: :class:`ARCPolicy`.

Four LRU lists: T1 (blocks seen once recently) and T2 (seen at least twice) hold the cached
blocks; B1 and B2 hold the keys recently evicted from T1 and T2 (ghosts, no data). The target
size ``p`` of T1 adapts, between 0 and the capacity ``c``:

* a hit moves the block to the MRU end of T2;
* a missing key found in B1 raises ``p`` by ``max(|B2| / |B1|, 1)`` (capped at ``c``), one found
  in B2 lowers it by ``max(|B1| / |B2|, 1)`` (floored at 0); the key leaves its ghost list and is
  inserted at the MRU end of T2. Any other new key goes to the MRU end of T1;
* REPLACE evicts the LRU block of T1 into B1 if T1 is not empty and ``|T1| > p`` (or
  ``|T1| == p`` and the key that needs room came from B2), or if T2 is empty; else the LRU block
  of T2 into B2;
* an eviction for a key found in a ghost list is a REPLACE. One for a new key (case IV of the
  paper) first trims the ghosts: if ``|T1| + |B1| + 1 > c``, it drops the LRU key of B1 and
  REPLACEs, or, B1 being empty, evicts the LRU block of T1 with no ghost; else, if the four lists
  hold ``2c`` keys or more, it drops the LRU key of B2, then REPLACEs.

This is libCacheSim's ``ARC.c`` (``p`` and the deltas are floats there too, and evictions happen
only when room is needed, not on every ghost hit as in the paper's pseudo-code, where the cache is
always full): on a stream of single-block requests the two give the same hits
(``tests/test_policies_modern.py``).

Choices for a prefix cache (where the paper and libCacheSim have nothing to say):

* A request's hits move to T2's MRU end when it is looked up, deepest first (so its head is the
  most recent); its other keys are inserted, deepest first, when it is released, and the hits are
  then moved to T2's MRU end again, so that the request's blocks in T2 rank deepest-oldest.
* The keys a request finds in B1 or B2 adapt ``p`` when it is looked up, head first, each with the
  sizes left by the previous one, and leave their ghost list then.
* A *stale copy* (a cached key after the first miss) is removed without becoming a ghost and
  inserted again as a new key (T1).
* ``evict(n)`` is n eviction steps; the j-th is charged to the request's j-th missing key (head
  first): a REPLACE if that key came from a ghost list (the tie rule using its list), a case-IV
  step if it is new or if the request has fewer missing keys (room for the partial block).
* A pinned block (one of the current request's own, or in ``pinned``) is passed over: the victim
  of a list is its least recent unpinned block; if the list REPLACE picked holds only pinned
  blocks, the victim comes from the other one (and the case-IV T1-only eviction falls back to
  REPLACE).
* After a request, the paper's invariants ``|T1| + |B1| <= c`` and ``|T1| + |T2| + |B1| + |B2| <=
  2c`` are restored by dropping the LRU keys of B1, then B2: a request can insert more blocks
  than it evicted for (the cache had free blocks, e.g. a request's partial block was freed).
  Single-block requests never need this.

Implementation: the four lists are ordered dicts, LRU first. Pinned blocks met at the LRU end of
T1 or T2 are set aside for the rest of the ``evict`` call and put back, in their order: the same as
passing over them in place, at O(1) each. Every step is O(1) amortised. The tests check it against
a naive list-based model of the same rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from itertools import chain

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["ARCPolicy"]


class ARCPolicy:
    """ARC for a cache of ``capacity_blocks`` blocks (see the module docstring)."""

    name = "arc"
    needs_capacity = True

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.p = 0.0
        """The target size of T1."""
        self._t1: OrderedDict[int, None] = OrderedDict()
        self._t2: OrderedDict[int, None] = OrderedDict()
        self._b1: OrderedDict[int, None] = OrderedDict()
        self._b2: OrderedDict[int, None] = OrderedDict()
        self._keys: list[int] = []
        self._hits: set[int] = set()
        self._hit = 0
        # The ghost list (1 or 2) of each missing key of the request, 0 for a new one, head first.
        self._kinds: list[int] = []

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    def __iter__(self) -> Iterator[int]:
        return chain(self._t1, self._t2)

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = [k for first, count in runs for k in range(first, first + count)]
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        hit = 0
        for key in keys[:max_hit_blocks]:
            if not (key in t1 or key in t2):
                break
            hit += 1
        self._hit = hit
        self._hits = set(keys[:hit])
        for key in reversed(keys[:hit]):
            if key in t1:
                del t1[key]
                t2[key] = None
            else:
                t2.move_to_end(key)
        c = self.capacity_blocks
        kinds = self._kinds = []
        stale = 0
        for key in keys[hit:]:
            if key in t1:
                del t1[key]
                stale += 1
                kinds.append(0)
            elif key in t2:
                del t2[key]
                stale += 1
                kinds.append(0)
            elif key in b1:
                self.p = min(self.p + max(len(b2) / len(b1), 1), c)
                del b1[key]
                kinds.append(1)
            elif key in b2:
                self.p = max(self.p - max(len(b1) / len(b2), 1), 0)
                del b2[key]
                kinds.append(2)
            else:
                kinds.append(0)
        return hit, hit + stale

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        c = self.capacity_blocks
        p = self.p
        hits = self._hits
        parked1: list[int] = []  # pinned blocks taken off the LRU end of T1 / T2, LRU first
        parked2: list[int] = []

        def take_unpinned(lru: OrderedDict, parked: list) -> int | None:
            """Remove and return the least recent unpinned key of ``lru`` (None if none)."""
            while lru:
                key = lru.popitem(False)[0]
                if (hits and key in hits) or (pinned and _is_pinned(pinned, key)):
                    parked.append(key)
                else:
                    return key
            return None

        def take_any(lru: OrderedDict, parked: list) -> int | None:
            return lru.popitem(False)[0] if lru else None

        take = take_unpinned if hits or pinned else take_any

        kinds = self._kinds
        n_kinds = len(kinds)
        for j in range(n):
            kind = kinds[j] if j < n_kinds else 0
            size1 = len(t1) + len(parked1)
            if not kind:  # case IV: trim the ghosts first
                if size1 + len(b1) >= c:
                    if b1:
                        b1.popitem(False)
                    elif take(t1, parked1) is not None:  # T1 holds the whole cache: no ghost
                        continue
                elif b2 and size1 + len(t2) + len(parked2) + len(b1) + len(b2) >= 2 * c:
                    b2.popitem(False)
            # REPLACE
            if (size1 and (size1 > p or (size1 == p and kind == 2))) or not (t2 or parked2):
                key = take(t1, parked1)
                if key is not None:
                    b1[key] = None
                else:
                    b2[take(t2, parked2)] = None
            else:
                key = take(t2, parked2)
                if key is not None:
                    b2[key] = None
                else:
                    b1[take(t1, parked1)] = None
        for lru, parked in ((t1, parked1), (t2, parked2)):
            for key in reversed(parked):
                lru[key] = None
                lru.move_to_end(key, False)

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        kinds = self._kinds
        to_t2 = False
        for key, kind in zip(reversed(keys[hit_blocks:]), reversed(kinds)):
            if kind:
                t2[key] = None
                to_t2 = True
            else:
                t1[key] = None
        if to_t2:
            for key in reversed(keys[:hit_blocks]):
                t2.move_to_end(key)
        c = self.capacity_blocks
        while len(t1) + len(b1) > c and b1:
            b1.popitem(False)
        while len(t1) + len(t2) + len(b1) + len(b2) > 2 * c and b2:
            b2.popitem(False)
        self._hits = set()
        self._kinds = []

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        hit = 0
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or not (key in self._t1 or key in self._t2):
                    return hit
                hit += 1
        return hit
