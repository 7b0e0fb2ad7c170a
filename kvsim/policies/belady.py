"""Belady (OPT, MIN): the clairvoyant reference policy of trace replay.

When room is needed, :class:`BeladyPolicy` evicts the cached, unpinned block whose *next use*
is farthest in the future; a block that is never used again is infinitely far.

* The next use of a key, after the request being served, is the next request (in replay order)
  that lists the key and that the cache serves (a request with more ``alloc_blocks`` than the
  cache has is oversized: it looks nothing up, so it uses no key).
* Ties, tail first: between two blocks whose next use is the same request, the deeper one in
  that request goes first (its hit needs the other one's); between blocks never used again,
  the package's ordering rule: the block at depth ``j`` of the ``s``-th served request has the
  age ``(s, -j)``, smallest first (the oldest request's, and its deepest block, first). Both
  are one order: the position of the next use in the trace, then the age.

A policy cannot know the future online, so belady is not in :data:`kvsim.policies.POLICIES`
(``kvsim simulate`` does not offer it): ``kvsim replay`` (:func:`kvsim.replay.replay`) builds a
:class:`Future` in a first pass over the trace and serves the same requests, in the same order,
through one ``BeladyPolicy(future, capacity_blocks)`` per capacity, all sharing the future.

**Not a proven optimum for a prefix cache.** Belady is optimal for a cache of independent
blocks (e.g. single-block requests). In a prefix cache a block only hits if its whole prefix
is cached, and Belady knows nothing of prefixes: evicting the farthest-next-use block can be
worse than evicting a block behind an already-missing prefix, which cannot hit at its next use
anyway. It is a strong reference, not an upper bound: ``tests/test_belady.py`` has a trace where
LRU beats it (a block listed once without its prefix, and room for output). On traces whose
key lists are prefix-closed -- every request that lists a block lists its whole prefix, as
chained hash ids do -- the tie rule keeps the cached blocks prefix-closed too, and the tests
find it equal to an exhaustive search on small traces and never below LRU, FIFO or LFU; that
is evidence, not a proof.

Cost:

* memory: the future holds 4 bytes per *listed* block of the trace (the position of its next
  use) and 16 per request: O(total listed blocks), unlike the online policies, which hold
  O(capacity); building it also keeps a dict of the distinct keys, dropped once built;
* time: a request costs O(log n) per block it lists (a heap push per block, n = cached
  blocks), a victim O(log n) amortised (a heap of ``(-next_position, age, key)`` with lazy
  deletion, compacted when dead entries outnumber the live ones). A cache smaller than the
  largest request also looks up the requests of the next uses (a bisection per block).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from heapq import heapify, heappop, heappush

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["NEVER", "BeladyPolicy", "Future"]

NEVER = (1 << 31) - 1
"""The next position of a key that no later request lists (and the most blocks a future holds)."""


class Future:
    """Where every listed key of a sequence of requests is listed next, in serving order.

    :meth:`add` each request (its keys as runs, head first, as the cache is given them, and its
    ``alloc_blocks``), then :meth:`seal`. The keys of request ``i`` are at the *positions*
    ``starts[i] .. starts[i + 1] - 1`` (the key at depth ``j`` at ``starts[i] + j``), and
    ``next_pos[p]`` is the position where the key at ``p`` is listed next (:data:`NEVER` if
    it is not). Positions order uses as the requests do, and within a request by depth.
    """

    __slots__ = ("next_pos", "starts", "alloc", "max_alloc", "_last")

    def __init__(self) -> None:
        self.next_pos = array("i")
        self.starts = array("q", [0])
        self.alloc = array("q")
        self.max_alloc = 0
        self._last: dict[int, int] | None = {}  # key -> position of its latest occurrence

    @classmethod
    def of(cls, requests: Iterable[Runs | tuple[Runs, int]]) -> Future:
        """The sealed future of ``requests``, each given as its runs, or as ``(runs, alloc_blocks)``
        (by default its number of keys)."""
        future = cls()
        for req in requests:
            if len(req) == 2 and isinstance(req[1], int):
                future.add(*req)
            else:
                future.add(req)
        future.seal()
        return future

    def __len__(self) -> int:
        """The number of requests."""
        return len(self.alloc)

    def add(self, runs: Runs, alloc_blocks: int | None = None) -> None:
        """Append the next request."""
        last = self._last
        if last is None:
            raise ValueError("the future is sealed")
        next_pos = self.next_pos
        start = p = len(next_pos)
        n = 0
        for _, count in runs:
            n += count
        if start + n >= NEVER:
            raise ValueError(f"a future holds at most {NEVER - 1} listed blocks")
        next_pos.extend(array("i", [NEVER]) * n)
        get = last.get
        for first, count in runs:
            for key in range(first, first + count):
                q = get(key)
                if q is not None:
                    if q >= start:  # listed twice by this request: the first occurrence speaks for it
                        p += 1
                        continue
                    next_pos[q] = p
                last[key] = p
                p += 1
        self.starts.append(p)
        alloc = n if alloc_blocks is None else alloc_blocks
        self.alloc.append(alloc)
        if alloc > self.max_alloc:
            self.max_alloc = alloc

    def seal(self) -> None:
        """Drop the index of the keys: no more requests."""
        self._last = None

    def nbytes(self) -> int:
        """The memory of the arrays (what a sealed future keeps)."""
        return sum(a.itemsize * len(a) for a in (self.next_pos, self.starts, self.alloc))


class BeladyPolicy:
    """Evict the block used farthest in the future (see the module docstring).

    ``future`` is the :class:`Future` of exactly the requests this policy's cache will be
    given, in that order, and ``capacity_blocks`` the cache's: a request with more
    ``alloc_blocks`` is oversized, the cache does not pass it to the policy, and it uses no key.
    """

    name = "belady"
    needs_capacity = True

    def __init__(self, future: Future, capacity_blocks: int) -> None:
        self._future = future
        self._capacity = capacity_blocks
        self._i = 0  # the index of the request being (or next to be) served
        # Cached key -> its live heap entry (-next_position, stamp, key); stamps order ages.
        self._entry: dict[int, tuple[int, int, int]] = {}
        self._heap: list[tuple[int, int, int]] = []
        self._stamp = 0
        self._base = 0

    def __len__(self) -> int:
        return len(self._entry)

    def __contains__(self, key: object) -> bool:
        return key in self._entry

    def __iter__(self) -> Iterator[int]:
        return iter(self._entry)

    def _start(self, runs: Runs) -> int:
        """The position of the request's first key, after checking it against the future."""
        future = self._future
        alloc = future.alloc
        i = self._i
        while i < len(alloc) and alloc[i] > self._capacity:
            i += 1  # oversized: the cache did not serve it
        if i >= len(alloc):
            raise ValueError(f"belady: request {i} is beyond the future's {len(alloc)} requests")
        self._i = i
        base = future.starts[i]
        n = 0
        for _, count in runs:
            n += count
        if future.starts[i + 1] - base != n:
            raise ValueError(f"belady: request {i} lists {n} keys, the future "
                             f"{future.starts[i + 1] - base}: the trace is not replayed as it was read")
        return base

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        self._base = self._start(runs)
        entry = self._entry
        hit = 0
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or key not in entry:
                    break
                hit += 1
            else:
                continue
            break
        # Taking the request's cached blocks out pins them (their heap entries are dead) and
        # counts them; release() puts them all back with their new next use.
        size = len(entry)
        pop = entry.pop
        for first, count in runs:
            for key in range(first, first + count):
                pop(key, None)
        return hit, size - len(entry)

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        entry = self._entry
        heap = self._heap
        kept = []
        while n:
            item = heappop(heap)
            key = item[2]
            if entry.get(key) is not item:
                continue  # stale: the key was touched again, evicted, or belongs to this request
            if pinned and _is_pinned(pinned, key):
                kept.append(item)
                continue
            del entry[key]
            n -= 1
        for item in kept:
            heappush(heap, item)

    def _next_served(self, q: int) -> int:
        """The first of the positions ``q``, ``next_pos[q]``, ... in a request this cache serves."""
        future = self._future
        next_pos, starts, alloc, capacity = future.next_pos, future.starts, future.alloc, self._capacity
        while q != NEVER and alloc[bisect_right(starts, q) - 1] > capacity:
            q = next_pos[q]
        return q

    def release(self, runs: Runs, hit_blocks: int) -> None:
        future = self._future
        next_pos = future.next_pos
        oversized = future.max_alloc > self._capacity  # then skip the uses by oversized requests
        entry = self._entry
        heap = self._heap
        # Tail first: the deepest block gets the smallest stamp, i.e. the oldest age.
        # (A key listed twice ends with its shallowest occurrence: the one the future follows.)
        stamp = self._stamp
        p = self._base
        for _, count in runs:
            p += count
        for first, count in reversed(runs):
            for key in range(first + count - 1, first - 1, -1):
                p -= 1
                stamp += 1
                q = next_pos[p]
                if oversized:
                    q = self._next_served(q)
                item = entry[key] = (-q, stamp, key)
                heappush(heap, item)
        self._stamp = stamp
        self._i += 1
        if len(heap) > 2 * len(entry) + 1024:  # drop the dead entries
            heap[:] = [item for item in heap if entry.get(item[2]) is item]
            heapify(heap)

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        entry = self._entry
        hit = 0
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or key not in entry:
                    return hit
                hit += 1
        return hit
