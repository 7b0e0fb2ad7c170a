"""LFU with dynamic aging (LFU-DA; Arlitt, Cherkasova, Dilley, Friedrich & Jin, "Evaluating content
management techniques for Web proxy caches", 2000), per block: :class:`LFUAgingPolicy`.

This is what "LFU whose counts decay, so that old conversations' heads stop blocking new ones"
means here. Plain LFU (``lfu``) keeps a block that was hit many times long ago ahead of every
newer block, for ever; LFU-DA adds a cache *age* ``L`` to every priority instead of decaying the
counts, which has the same effect (old counts are worth less and less) at O(1) cost:

* a block's priority is ``count + L``, with ``L`` the value when it was last accessed;
* an insertion counts 1 and each hit adds 1 (as in ``lfu``): on each access the priority is set
  again to ``count + L``;
* the victim is the block of lowest priority, ties to the least recently used one (a request's
  blocks are accessed at the same instant, deepest first, as in ``lfu``);
* ``L`` starts at 0 and is set to the priority of each evicted block (it never decreases).

A request's blocks are all updated when it is released, with ``L`` as its evictions left it. A
*stale copy* (a cached key after the first miss) is inserted again with count 1, as in ``lfu``.
Pinned blocks (the current request's own, or in ``pinned``) are passed over.

**libCacheSim's ``LFUDA`` is not this algorithm** and cannot be matched exactly: (1) a hit there
adds ``L`` to the priority instead of setting it to ``count + 1 + L`` -- before the first eviction
(``L = 0``) hits do not raise priorities at all, and later a hit is worth ``L``, not 1; (2) its
``L`` also rises, without an eviction, when a hit empties the lowest-priority bucket; (3) it
crashes on some streams and at capacity 1. ``tests/test_policies_modern.py`` checks this module
exactly against a naive model of the rules above, and only the closeness of the hit counts to
libCacheSim's.

Implementation: one LRU-ordered dict of keys per priority and a heap of the priorities that have
one (emptied dicts are dropped lazily), as :class:`~kvsim.policies.reference.BlockLFU`: O(1) per
hit or insertion and O(log n) per new priority value. Simple enough to be its own per-block
version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from heapq import heappop, heappush

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["LFUAgingPolicy"]


class LFUAgingPolicy:
    """LFU-DA: LFU with dynamic aging (see the module docstring)."""

    name = "lfu-aging"

    def __init__(self) -> None:
        self.age = 0
        """``L``: the priority of the last evicted block (0 before any)."""
        self._count: dict[int, int] = {}
        self._priority: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._bucket_priorities: list[int] = []  # a heap: one entry per bucket
        self._keys: list[int] = []
        self._hit_counts: list[int] = []

    def __len__(self) -> int:
        return len(self._priority)

    def __contains__(self, key: object) -> bool:
        return key in self._priority

    def __iter__(self) -> Iterator[int]:
        return iter(self._priority)

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = [k for first, count in runs for k in range(first, first + count)]
        priority = self._priority
        hit = 0
        for key in keys[:max_hit_blocks]:
            if key not in priority:
                break
            hit += 1
        # Taking the request's cached blocks out of their buckets pins them; release() puts them
        # in new buckets anyway.
        buckets = self._buckets
        pop_count = self._count.pop
        pop_priority = priority.pop
        self._hit_counts = [pop_count(key) for key in keys[:hit]]
        for key in keys[:hit]:
            del buckets[pop_priority(key)][key]
        stale = 0
        for key in keys[hit:]:
            if key in priority:
                del buckets[pop_priority(key)][key]
                pop_count(key)
                stale += 1
        return hit, hit + stale

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        priority = self._priority
        count = self._count
        buckets = self._buckets
        if pinned:
            for pr in sorted(buckets):
                bucket = buckets[pr]
                victims = []
                for key in bucket:
                    if len(victims) == n:
                        break
                    if not _is_pinned(pinned, key):
                        victims.append(key)
                for key in victims:
                    del bucket[key], priority[key], count[key]
                if victims:
                    self.age = pr
                    n -= len(victims)
                if not n:
                    return
        heap = self._bucket_priorities
        while n:
            lowest = heap[0]
            bucket = buckets[lowest]
            if not bucket:
                heappop(heap)
                del buckets[lowest]
                continue
            popitem = bucket.popitem
            for _ in range(min(n, len(bucket))):
                key = popitem(False)[0]
                del priority[key], count[key]
                n -= 1
            self.age = lowest

    def _bucket(self, pr: int) -> OrderedDict[int, None]:
        bucket = self._buckets.get(pr)
        if bucket is None:
            bucket = self._buckets[pr] = OrderedDict()
            heappush(self._bucket_priorities, pr)
        return bucket

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        count, priority = self._count, self._priority
        age = self.age
        # Deepest first: the misses (deeper than every hit), then the hits.
        if hit_blocks < len(keys):
            bucket = self._bucket(1 + age)
            for key in reversed(keys[hit_blocks:]):
                bucket[key] = None
                count[key] = 1
                priority[key] = 1 + age
        hit_counts, self._hit_counts = self._hit_counts, []
        last = bucket = None  # a request's hits mostly share a count: look its bucket up once
        for j in range(hit_blocks - 1, -1, -1):
            key = keys[j]
            c = count[key] = hit_counts[j] + 1
            pr = priority[key] = c + age
            if pr != last:
                bucket = self._bucket(pr)
                last = pr
            bucket[key] = None

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        hit = 0
        priority = self._priority
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or key not in priority:
                    return hit
                hit += 1
        return hit
