"""LFU, run-based: groups bucketed by access count, each bucket in LRU order."""

from __future__ import annotations

from collections import OrderedDict
from heapq import heappop, heappush

from kvsim.policies.base import Pinned, Runs, _Group, _RunPolicy

__all__ = ["LFUPolicy"]


class LFUPolicy(_RunPolicy):
    """Least frequently used: evict the block with the fewest accesses.

    An insertion counts 1 and each hit adds 1; a re-inserted stale copy starts
    again at 1. Ties go to the least recently used block.
    """

    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        # Groups by access count, each bucket in LRU order; a victim comes
        # from the lowest non-empty bucket (emptied buckets go lazily).
        self._buckets: dict[int, OrderedDict[int, _Group]] = {}
        self._counts: list[int] = []  # heap of the counts that have a bucket
        self._hits: list[tuple[int, int, int]] = []  # (lo, hi, count) of the current hits

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        hit = own = depth = 0
        cut = self._cut
        hits = self._hits
        for first, count in runs:
            end = first + count
            for piece in self._overlapping(first, end):
                a = piece[0] if piece[0] > first else first
                b = piece[1] if piece[1] < end else end
                own += b - a
                if a - first + depth == hit < max_hit_blocks:
                    new_hit = min(b - first + depth, max_hit_blocks)
                    hits.append((a, a + new_hit - hit, piece[2].count))
                    hit = new_hit
                cut(piece, a, b)
            depth += count
        return hit, own

    def _group(self, count: int) -> _Group:
        """A new group of the current request at the end of bucket ``count``."""
        bucket = self._buckets.get(count)
        if bucket is None:
            bucket = self._buckets[count] = OrderedDict()
            heappush(self._counts, count)
        group = bucket[self._seq] = _Group(self._seq, bucket, count)
        return group

    def evict(self, n: int, pinned: Pinned = (), victims: list | None = None) -> None:
        counts = self._counts
        buckets = self._buckets
        if pinned:  # the lowest bucket may be all pinned: go up the counts
            for count in sorted(buckets):
                n = self._evict_unpinned(buckets[count], n, pinned, victims)
                if not n:
                    return
        while n:
            lowest = counts[0]
            bucket = buckets[lowest]
            if not bucket:
                heappop(counts)
                del buckets[lowest]
                continue
            n = self._evict_from(bucket, n, victims)

    def release(self, runs: Runs, hit_blocks: int) -> None:
        self._seq += 1
        new_piece = self._new_piece
        made: dict[int, _Group] = {}
        for lo, hi, count in self._hits:
            group = made.get(count)
            if group is None:
                group = made[count] = self._group(count + 1)
            pieces = group.pieces
            if pieces and pieces[-1][1] == lo:  # adjacent keys at adjacent depths
                pieces[-1][1] = hi
            else:
                pieces.append(new_piece(lo, hi, group))
        self._hits = []
        group = None
        depth = 0
        for first, count in runs:
            hits = hit_blocks - depth
            if hits < count:
                if group is None:
                    group = self._group(1)
                group.pieces.append(new_piece(first + max(hits, 0), first + count, group))
            depth += count
