"""The per-block policies :class:`BlockLRU`, :class:`BlockFIFO`, :class:`BlockLFU`:
ordered dicts of single keys, simple, and the oracle the run-based policies are
tested against (same results, slower).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from heapq import heappop, heappush

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["BlockFIFO", "BlockLFU", "BlockLRU"]


def _keys(runs: Runs) -> list[int]:
    keys: list[int] = []
    for first, count in runs:
        keys.extend(range(first, first + count))
    return keys


def _prefix_by_key(policy, runs: Runs, max_hit_blocks: int) -> int:
    """cached_prefix() for a per-block policy: one membership test per block."""
    hit = 0
    for first, count in runs:
        for key in range(first, first + count):
            if hit >= max_hit_blocks or key not in policy:
                return hit
            hit += 1
    return hit


def _note(victims: list, key: int) -> None:
    """Append the evicted ``key`` to ``victims``, joining a range evicted just above it."""
    if victims and victims[-1][0] == key + 1:
        victims[-1] = (key, victims[-1][1])
    else:
        victims.append((key, key + 1))


def _discard(blocks: dict, runs: Runs) -> list[int]:
    """Delete the keys of ``runs`` that ``blocks`` holds; return them."""
    gone = [key for key in _keys(runs) if key in blocks]
    for key in gone:
        del blocks[key]
    return gone


def _drop_unpinned(blocks: OrderedDict, n: int, pinned: Pinned, spared: set = frozenset()) -> list[int]:
    """Delete the first ``n`` keys of ``blocks`` neither in ``pinned`` nor ``spared``; return them."""
    victims = []
    for key in blocks:
        if len(victims) == n:
            break
        if key not in spared and not _is_pinned(pinned, key):
            victims.append(key)
    for key in victims:
        del blocks[key]
    return victims


class BlockLRU:
    """Per-block LRU: one ordered dict of the cached keys."""

    name = "lru"

    def __init__(self) -> None:
        # Front = least recent. Values are unused: the order is the state.
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._keys: list[int] = []

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def __iter__(self) -> Iterator[int]:
        return iter(self._blocks)

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = _keys(runs)
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

    def evict(self, n: int, pinned: Pinned = (), victims: list | None = None) -> None:
        if pinned:
            dropped = _drop_unpinned(self._blocks, n, pinned)
            if victims is not None:
                for key in dropped:
                    _note(victims, key)
            return
        popitem = self._blocks.popitem
        if victims is not None:
            for _ in range(n):
                _note(victims, popitem(False)[0])
            return
        for _ in range(n):
            popitem(False)

    def discard(self, runs: Runs) -> int:
        return len(_discard(self._blocks, runs))

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        return _prefix_by_key(self, runs, max_hit_blocks)

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        blocks = self._blocks
        # Tail first, so that the request's deepest block is its least recent;
        # the hits go last because they are the shallowest.
        for key in reversed(keys[hit_blocks:]):
            blocks[key] = None
        move_to_end = blocks.move_to_end
        for key in reversed(keys[:hit_blocks]):
            move_to_end(key)


class BlockFIFO:
    """Per-block FIFO: one ordered dict of the cached keys in insertion order."""

    name = "fifo"

    def __init__(self) -> None:
        # Front = oldest insertion. Insertions only ever append, so the order
        # of an OrderedDict is the FIFO order without any heap.
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._keys: list[int] = []
        self._hit = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def __iter__(self) -> Iterator[int]:
        return iter(self._blocks)

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = _keys(runs)
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
        self._hit = hit
        return hit, hit + size - len(blocks)

    def evict(self, n: int, pinned: Pinned = (), victims: list | None = None) -> None:
        blocks = self._blocks
        if pinned:
            dropped = _drop_unpinned(blocks, n, pinned, set(self._keys[: self._hit]))
            if victims is not None:
                for key in dropped:
                    _note(victims, key)
            return
        popitem = blocks.popitem
        if victims is not None:
            # Simple rather than fast: the first n keys of the queue that are not hits.
            for key in _drop_unpinned(blocks, n, (), set(self._keys[: self._hit])):
                _note(victims, key)
            return
        if not self._hit:
            for _ in range(n):
                popitem(False)
            return
        # A returning conversation's hits are typically the oldest blocks, at
        # the front: park each one once instead of skipping it on every pop.
        pinned = set(self._keys[: self._hit])
        parked: list[int] = []
        while n:
            batch = [popitem(False)[0] for _ in range(n)]
            if pinned.isdisjoint(batch):
                break
            hits = [key for key in batch if key in pinned]
            parked += hits
            n = len(hits)  # the others were victims
        move_to_end = blocks.move_to_end
        for key in reversed(parked):
            blocks[key] = None
            move_to_end(key, False)

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        blocks = self._blocks
        for key in reversed(keys[hit_blocks:]):
            blocks[key] = None
        self._hit = 0

    def discard(self, runs: Runs) -> int:
        return len(_discard(self._blocks, runs))

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        return _prefix_by_key(self, runs, max_hit_blocks)


class BlockLFU:
    """Per-block LFU: one LRU-ordered dict of keys per access count.

    An insertion counts 1 and each hit adds 1; a re-inserted stale copy starts
    again at 1. Ties go to the least recently used block.
    """

    name = "lfu"

    def __init__(self) -> None:
        # One LRU-ordered bucket per access count (O(1) LFU): a victim is the
        # front of the lowest non-empty bucket, no heap of blocks needed.
        self._count: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        # Counts that have a bucket, one heap entry per bucket.
        self._bucket_counts: list[int] = []
        self._keys: list[int] = []
        self._hit_counts: list[int] = []

    def __len__(self) -> int:
        return len(self._count)

    def __contains__(self, key: object) -> bool:
        return key in self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self._count)

    def _new_bucket(self, count: int) -> OrderedDict[int, None]:
        bucket = self._buckets[count] = OrderedDict()
        heappush(self._bucket_counts, count)
        return bucket

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = _keys(runs)
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

    def evict(self, n: int, pinned: Pinned = (), victims: list | None = None) -> None:
        count = self._count
        buckets = self._buckets
        if pinned:
            for c in sorted(buckets):
                for key in _drop_unpinned(buckets[c], n, pinned):
                    del count[key]
                    n -= 1
                    if victims is not None:
                        _note(victims, key)
                if not n:
                    return
        bucket_counts = self._bucket_counts
        while n:
            lowest = bucket_counts[0]
            bucket = buckets[lowest]
            if not bucket:
                heappop(bucket_counts)
                del buckets[lowest]
                continue
            popitem = bucket.popitem
            for _ in range(min(n, len(bucket))):
                key = popitem(False)[0]
                del count[key]
                n -= 1
                if victims is not None:
                    _note(victims, key)

    def discard(self, runs: Runs) -> int:
        count = self._count
        removed = 0
        for key in _keys(runs):
            c = count.pop(key, None)
            if c is not None:
                del self._buckets[c][key]
                removed += 1
        return removed

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
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

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        return _prefix_by_key(self, runs, max_hit_blocks)
