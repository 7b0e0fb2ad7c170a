"""Eviction policies of the block-level prefix cache.

A policy owns the set of cached block keys and their eviction order; the
:class:`~kvsim.cache.PrefixCache` owns the capacity and drives a policy with
three calls per served request:

1. :meth:`~EvictionPolicy.acquire` looks the request up and pins its cached blocks,
2. :meth:`~EvictionPolicy.evict` removes unpinned victims (only if room is needed),
3. :meth:`~EvictionPolicy.release` touches the hit prefix, (re)inserts the rest
   and unpins everything.

Ordering: a request's blocks are updated at the same instant, the tail (deepest)
block ranking as the oldest of them. The block at depth ``j`` of the ``s``-th
served request therefore has the age ``(s, -j)``; smaller is evicted first.

* :class:`LRUPolicy` -- age of the last access.
* :class:`FIFOPolicy` -- age of the insertion; a hit does not refresh it.
* :class:`LFUPolicy` -- (access count, age of the last access); an insertion
  counts 1, each hit adds 1.

Adding a policy (S3-FIFO, ARC, ...) is one new class here; the cache and the
engine do not change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from heapq import heappop, heappush
from typing import Protocol, runtime_checkable

__all__ = [
    "EvictionPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "POLICIES",
    "make_policy",
]


@runtime_checkable
class EvictionPolicy(Protocol):
    """What the prefix cache needs from an eviction policy.

    Keys are distinct hashables; ``keys[j]`` is the block at depth ``j`` of a
    request. Between requests the policy holds exactly the cached keys
    (``len``, ``in`` and iteration see them); between :meth:`acquire` and
    :meth:`release` its contents are its own business.
    """

    name: str

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def __iter__(self) -> Iterator[Hashable]: ...

    def acquire(self, keys: Sequence[Hashable], max_hit_blocks: int) -> tuple[int, int]:
        """Look a request up and pin its cached blocks until :meth:`release`.

        Returns ``(hit_blocks, own_blocks)``: the length of the leading run of
        ``keys[:max_hit_blocks]`` that is cached, and how many of ``keys`` are
        cached (the hits plus stale copies of later blocks).
        """
        ...

    def evict(self, n: int) -> list[Hashable]:
        """Remove and return ``n`` victims, none of them pinned.

        The caller guarantees that at least ``n`` unpinned blocks are cached.
        """
        ...

    def release(self, keys: Sequence[Hashable], hit_blocks: int) -> None:
        """Finish the request of the last :meth:`acquire`.

        ``keys[:hit_blocks]`` are touched, ``keys[hit_blocks:]`` are inserted
        (a stale copy is replaced by a fresh one), and nothing stays pinned.
        """
        ...


class LRUPolicy:
    """Least recently used: evict the block whose last access is oldest."""

    name = "lru"

    def __init__(self) -> None:
        # Front = least recent. Values are unused: the order is the state.
        self._blocks: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._blocks)

    def acquire(self, keys: Sequence[Hashable], max_hit_blocks: int) -> tuple[int, int]:
        blocks = self._blocks
        move_to_end = blocks.move_to_end
        # Moving a hit to the MRU end both looks it up (KeyError = miss) and
        # pins it: evict() takes at most the unpinned blocks, all in front of it.
        hit = 0
        for key in keys[:max_hit_blocks]:
            try:
                move_to_end(key)
            except KeyError:
                break
            hit += 1
        # Stale copies are dropped now; release() re-inserts them fresh anyway.
        size = len(blocks)
        for key in keys[hit:]:
            if key in blocks:
                del blocks[key]
        return hit, hit + size - len(blocks)

    def evict(self, n: int) -> list[Hashable]:
        popitem = self._blocks.popitem
        return [popitem(False)[0] for _ in range(n)]

    def release(self, keys: Sequence[Hashable], hit_blocks: int) -> None:
        blocks = self._blocks
        # Tail first, so that the request's deepest block is its least recent;
        # the hits go last because they are the shallowest.
        for key in reversed(keys[hit_blocks:]):
            blocks[key] = None
        move_to_end = blocks.move_to_end
        for key in reversed(keys[:hit_blocks]):
            move_to_end(key)


class FIFOPolicy:
    """First in, first out: evict the block inserted longest ago."""

    name = "fifo"

    def __init__(self) -> None:
        # Front = oldest insertion. Insertions only ever append, so the order
        # of an OrderedDict is the FIFO order without any heap.
        self._blocks: OrderedDict[Hashable, None] = OrderedDict()
        self._keys: Sequence[Hashable] = ()
        self._hit = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._blocks)

    def acquire(self, keys: Sequence[Hashable], max_hit_blocks: int) -> tuple[int, int]:
        blocks = self._blocks
        hit = 0
        for key in keys[:max_hit_blocks]:
            if key not in blocks:
                break
            hit += 1
        size = len(blocks)
        for key in keys[hit:]:
            if key in blocks:
                del blocks[key]
        # Hits keep their place in the queue, so they stay cached and are
        # pinned in evict() only; remembering the request is enough here.
        self._keys = keys
        self._hit = hit
        return hit, hit + size - len(blocks)

    def evict(self, n: int) -> list[Hashable]:
        blocks = self._blocks
        popitem = blocks.popitem
        if not self._hit:
            return [popitem(False)[0] for _ in range(n)]
        # A returning conversation's hits are typically the oldest blocks, at
        # the front: park each one once instead of skipping it on every pop.
        pinned = set(self._keys[: self._hit])
        victims: list[Hashable] = []
        parked: list[Hashable] = []
        while n:
            batch = [popitem(False)[0] for _ in range(n)]
            if pinned.isdisjoint(batch):
                victims += batch
                break
            kept = [key for key in batch if key not in pinned]
            parked += [key for key in batch if key in pinned]
            victims += kept
            n -= len(kept)
        move_to_end = blocks.move_to_end
        for key in reversed(parked):
            blocks[key] = None
            move_to_end(key, False)
        return victims

    def release(self, keys: Sequence[Hashable], hit_blocks: int) -> None:
        blocks = self._blocks
        for key in reversed(keys[hit_blocks:]):
            blocks[key] = None
        self._keys = ()
        self._hit = 0


class LFUPolicy:
    """Least frequently used: evict the block with the fewest accesses.

    An insertion counts 1 and each hit adds 1; a re-inserted stale copy starts
    again at 1. Ties go to the least recently used block.
    """

    name = "lfu"

    def __init__(self) -> None:
        # One LRU-ordered bucket per access count (O(1) LFU): a victim is the
        # front of the lowest non-empty bucket, no heap of blocks needed.
        self._count: dict[Hashable, int] = {}
        self._buckets: dict[int, OrderedDict[Hashable, None]] = {}
        # Counts that have a bucket, one heap entry per bucket.
        self._bucket_counts: list[int] = []
        self._hit_counts: list[int] = []

    def __len__(self) -> int:
        return len(self._count)

    def __contains__(self, key: object) -> bool:
        return key in self._count

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._count)

    def _new_bucket(self, count: int) -> OrderedDict[Hashable, None]:
        bucket = self._buckets[count] = OrderedDict()
        heappush(self._bucket_counts, count)
        return bucket

    def acquire(self, keys: Sequence[Hashable], max_hit_blocks: int) -> tuple[int, int]:
        count = self._count
        hit = 0
        for key in keys[:max_hit_blocks]:
            if key not in count:
                break
            hit += 1
        # Taking the request's cached blocks out of their buckets pins them;
        # release() puts them in new buckets anyway. Emptied buckets are
        # dropped lazily by evict().
        buckets = self._buckets
        pop = count.pop
        hit_counts = self._hit_counts = [pop(key) for key in keys[:hit]]
        for key, c in zip(keys, hit_counts):
            del buckets[c][key]
        size = len(count)
        for key in keys[hit:]:
            if key in count:
                del buckets[pop(key)][key]
        return hit, hit + size - len(count)

    def evict(self, n: int) -> list[Hashable]:
        count = self._count
        buckets = self._buckets
        bucket_counts = self._bucket_counts
        victims: list[Hashable] = []
        while n:
            lowest = bucket_counts[0]
            bucket = buckets[lowest]
            if not bucket:
                heappop(bucket_counts)
                del buckets[lowest]
                continue
            popitem = bucket.popitem
            batch = [popitem(False)[0] for _ in range(min(n, len(bucket)))]
            for key in batch:
                del count[key]
            victims += batch
            n -= len(batch)
        return victims

    def release(self, keys: Sequence[Hashable], hit_blocks: int) -> None:
        count = self._count
        hit_counts = self._hit_counts
        # Tail first within each bucket, so that the deepest block of the
        # request is its least recent.
        bucket_of = self._buckets.get
        for j in range(hit_blocks - 1, -1, -1):
            c = hit_counts[j] + 1
            key = keys[j]
            bucket = bucket_of(c)
            if bucket is None:
                bucket = self._new_bucket(c)
            bucket[key] = None
            count[key] = c
        if hit_blocks < len(keys):
            bucket = bucket_of(1)
            if bucket is None:
                bucket = self._new_bucket(1)
            for key in reversed(keys[hit_blocks:]):
                bucket[key] = None
                count[key] = 1
        self._hit_counts = []


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "lfu": LFUPolicy,
}
"""Policy classes by name."""


def make_policy(name: str) -> EvictionPolicy:
    """Return a new, empty policy called ``name`` (one of :data:`POLICIES`)."""
    cls = POLICIES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)} (got {name!r})")
    return cls()
