"""Eviction policies of the block-level prefix cache.

A policy owns the set of cached block keys and their eviction order; the
:class:`~kvsim.cache.PrefixCache` owns the capacity and drives a policy with
three calls per served request:

1. :meth:`~EvictionPolicy.acquire` looks the request up and pins its cached blocks,
2. :meth:`~EvictionPolicy.evict` removes unpinned victims (only if room is needed),
3. :meth:`~EvictionPolicy.release` touches the hit prefix, (re)inserts the rest
   and unpins everything.

Keys are ints. A request is given as *runs*: ``(first_key, count)`` pairs for
the keys ``first_key .. first_key + count - 1``, head first; the key at depth
``j`` of the request is its ``j``-th key in that order.

Ordering: a request's blocks are updated at the same instant, the tail (deepest)
block ranking as the oldest of them. The block at depth ``j`` of the ``s``-th
served request therefore has the age ``(s, -j)``; smaller is evicted first.

* LRU -- age of the last access.
* FIFO -- age of the insertion; a hit does not refresh it.
* LFU -- (access count, age of the last access); an insertion counts 1, each
  hit adds 1.

Two implementations of each, with identical results:

* :class:`LRUPolicy`, :class:`FIFOPolicy`, :class:`LFUPolicy` (the default,
  :data:`POLICIES`) work per run: the cached keys are *pieces*, runs of
  consecutive keys of one request that share an eviction rank, and each
  request costs O(log n) per piece it meets, whatever the number of blocks.
* :class:`BlockLRU`, :class:`BlockFIFO`, :class:`BlockLFU`
  (:data:`BLOCK_POLICIES`) work per block, with ordered dicts: simple, and the
  oracle the run-based ones are tested against.

Adding a policy (S3-FIFO, ARC, ...) is one new class here; the cache and the
engine do not change.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from heapq import heappop, heappush
from typing import Protocol, runtime_checkable

__all__ = [
    "BLOCK_POLICIES",
    "BlockFIFO",
    "BlockLFU",
    "BlockLRU",
    "EvictionPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "POLICIES",
    "Pinned",
    "Runs",
    "make_policy",
]

Runs = Sequence[tuple[int, int]]
"""A request's keys as ``(first_key, count)`` runs of consecutive ints, head first."""

Pinned = Sequence[tuple[int, int]]
"""Keys that must not be evicted, as sorted, disjoint ``(lo, hi)`` ranges (``lo .. hi - 1``)."""


def pinned_parts(pinned: Pinned, lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of ``lo .. hi - 1`` in ``pinned``, as ``(a, b)`` ranges in key order."""
    i = bisect_right(pinned, (lo,))
    if i and pinned[i - 1][1] > lo:
        i -= 1
    parts = []
    for a, b in pinned[i:]:
        if a >= hi:
            break
        parts.append((max(a, lo), min(b, hi)))
    return parts


def _free_parts(pinned: Pinned, lo: int, hi: int) -> list[tuple[int, int]]:
    """The parts of ``lo .. hi - 1`` not in ``pinned``, deepest (highest keys) first."""
    free = []
    top = hi
    for a, b in reversed(pinned_parts(pinned, lo, hi)):
        if b < top:
            free.append((b, top))
        top = a
    if lo < top:
        free.append((lo, top))
    return free


def _is_pinned(pinned: Pinned, key: int) -> bool:
    i = bisect_right(pinned, (key, float("inf")))
    return i > 0 and pinned[i - 1][1] > key


def _prefix_by_key(policy, runs: Runs, max_hit_blocks: int) -> int:
    """cached_prefix() for a per-block policy: one membership test per block."""
    hit = 0
    for first, count in runs:
        for key in range(first, first + count):
            if hit >= max_hit_blocks or key not in policy:
                return hit
            hit += 1
    return hit


@runtime_checkable
class EvictionPolicy(Protocol):
    """What the prefix cache needs from an eviction policy.

    A request's keys are distinct. Between requests the policy holds exactly
    the cached keys (``len``, ``in`` and iteration see them); between
    :meth:`acquire` and :meth:`release` its contents are its own business.
    """

    name: str

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def __iter__(self) -> Iterator[int]: ...

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        """Look a request up and pin its cached blocks until :meth:`release`.

        Returns ``(hit_blocks, own_blocks)``: the length of the leading run of
        the first ``max_hit_blocks`` keys that is cached, and how many of the
        request's keys are cached (the hits plus stale copies of later blocks).
        """
        ...

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        """Remove ``n`` victims, none of them pinned by the current request nor in ``pinned``
        (keys held by requests still in service, see :meth:`PrefixCache.begin`).

        The caller guarantees that at least ``n`` such blocks are cached.
        """
        ...

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        """The hit :meth:`acquire` would find, without changing anything (a router's look)."""
        ...

    def release(self, runs: Runs, hit_blocks: int) -> None:
        """Finish the request of the last :meth:`acquire`.

        Its first ``hit_blocks`` keys are touched, the others are inserted
        (a stale copy is replaced by a fresh one), and nothing stays pinned.
        """
        ...


# ---------------------------------------------------------------- per run


class _Group:
    """Cached blocks one request left with the same rank (for LFU: the same count).

    ``pieces`` lists them in depth order, deepest (first victim) last; a piece
    is ``[lo, hi, group]``, the keys ``lo .. hi - 1`` at increasing depths.
    ``order`` is the ordered dict of groups, first victim first, that holds it.
    """

    __slots__ = ("id", "pieces", "order", "count")

    def __init__(self, gid: int, order: OrderedDict, count: int = 0) -> None:
        self.id = gid
        self.pieces: list[list] = []
        self.order = order
        self.count = count


class _RunPolicy:
    """Pieces, groups and the key index shared by the run-based policies.

    The key index is a sorted list of piece starts and a dict from start to
    piece: finding the pieces a run meets is a bisection. A piece is only
    created or dropped when a request or an eviction splits or empties one
    (then the list moves its tail: O(n), but a memmove of n pointers).
    """

    name: str

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._piece_at: dict[int, list] = {}
        self._seq = 0
        # id() of the pieces the current request keeps in place (FIFO's hits).
        self._pinned: set[int] = set()

    def __len__(self) -> int:
        return sum(p[1] - p[0] for p in self._piece_at.values())

    def __contains__(self, key: object) -> bool:
        starts = self._starts
        try:
            i = bisect_right(starts, key)
        except TypeError:
            return False
        return i > 0 and self._piece_at[starts[i - 1]][1] > key

    def __iter__(self) -> Iterator[int]:
        piece_at = self._piece_at
        for lo in self._starts:
            yield from range(lo, piece_at[lo][1])

    def _overlapping(self, lo: int, hi: int) -> list[list]:
        """The pieces holding keys of ``lo .. hi - 1``, in key order."""
        starts = self._starts
        piece_at = self._piece_at
        i = bisect_right(starts, lo)
        if i and piece_at[starts[i - 1]][1] > lo:
            i -= 1
        return [piece_at[s] for s in starts[i:bisect_left(starts, hi, i)]]

    def _new_piece(self, lo: int, hi: int, group: _Group) -> list:
        """Index a new piece; the caller puts it in ``group.pieces``."""
        piece = [lo, hi, group]
        insort(self._starts, lo)
        self._piece_at[lo] = piece
        return piece

    def _cut(self, piece: list, a: int, b: int) -> None:
        """Remove the keys ``a .. b - 1`` (a part of ``piece``) from the cache."""
        lo, hi = piece[0], piece[1]
        if a > lo:
            piece[1] = a
            if b < hi:  # the part above the hole keeps its rank, just before the rest
                pieces = piece[2].pieces
                pieces.insert(pieces.index(piece) + 1, self._new_piece(b, hi, piece[2]))
            return
        starts = self._starts
        i = bisect_left(starts, lo)
        del self._piece_at[lo]
        if b < hi:
            # The same slot of the sorted index: no other piece starts in lo .. b.
            starts[i] = b
            self._piece_at[b] = piece
            piece[0] = b
            return
        del starts[i]
        group = piece[2]
        group.pieces.remove(piece)
        if not group.pieces:
            del group.order[group.id]

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        hit = depth = 0
        for first, count in runs:
            end = first + count
            for piece in self._overlapping(first, end):
                a = piece[0] if piece[0] > first else first
                if a - first + depth != hit:
                    return hit
                hit = min((piece[1] if piece[1] < end else end) - first + depth, max_hit_blocks)
                if hit == max_hit_blocks:
                    return hit
            depth += count
            if hit < depth:
                return hit
        return hit

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        # LRU and FIFO keep their groups in one ordered dict, ``_groups``; LFU overrides this.
        if pinned:
            self._evict_unpinned(self._groups, n, pinned)
        else:
            self._evict_from(self._groups, n)

    def _evict_unpinned(self, order: OrderedDict, n: int, pinned: Pinned) -> int:
        """As :meth:`_evict_from`, also sparing the keys in ``pinned``: slower (the groups are
        copied, pinned pieces split), so only used while requests are in service."""
        own = self._pinned
        for group in list(order.values()):
            for piece in reversed(list(group.pieces)):
                if own and id(piece) in own:
                    continue
                # Deepest free part first; _cut() keeps ``piece`` as the part below each hole.
                for a, b in _free_parts(pinned, piece[0], piece[1]):
                    m = min(n, b - a)
                    self._cut(piece, b - m, b)
                    n -= m
                    if not n:
                        return 0
        return n

    def _evict_from(self, order: OrderedDict, n: int) -> int:
        """Evict up to ``n`` unpinned blocks of the groups of ``order``, first
        group first and its deepest piece first; return how many are left to evict."""
        pinned = self._pinned
        starts = self._starts
        piece_at = self._piece_at
        emptied = []
        for group in order.values():
            pieces = group.pieces
            j = len(pieces)
            while j:
                j -= 1
                piece = pieces[j]
                if pinned and id(piece) in pinned:
                    continue
                lo = piece[0]
                size = piece[1] - lo
                if size > n:
                    piece[1] -= n
                    n = 0
                    break
                n -= size
                del starts[bisect_left(starts, lo)]
                del piece_at[lo]
                del pieces[j]
                if not n:
                    break
            if not pieces:
                emptied.append(group.id)
            if not n:
                break
        for gid in emptied:
            del order[gid]
        return n


class LRUPolicy(_RunPolicy):
    """Least recently used: evict the block whose last access is oldest."""

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        # One group per request, oldest first: touched blocks leave their old group.
        self._groups: OrderedDict[int, _Group] = OrderedDict()
        self._claims: list[list | None] = []  # per run of the current request

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        hit = own = depth = 0
        claims = self._claims
        # Every cached key of the request leaves the cache for now (that pins
        # it); release() puts all of them back in a new group.
        for first, count in runs:
            end = first + count
            pieces = self._overlapping(first, end)
            for piece in pieces:
                a = piece[0] if piece[0] > first else first
                b = piece[1] if piece[1] < end else end
                own += b - a
                if a - first + depth == hit < max_hit_blocks:
                    hit = min(b - first + depth, max_hit_blocks)
            claims.append(self._take_run(pieces, first, end) if pieces else None)
            depth += count
        return hit, own

    def _take_run(self, pieces: list[list], first: int, end: int) -> list | None:
        """Take the keys ``first .. end - 1`` out of ``pieces`` (those of the run, in key
        order); return the piece kept to hold the whole run in release(), if any."""
        claim = None
        for piece in pieces:
            lo, hi = piece[0], piece[1]
            if claim is not None or lo < first:
                self._cut(piece, lo if lo > first else first, hi if hi < end else end)
                continue
            # The first piece starting inside the run keeps its slot of the sorted index
            # (moved down to ``first``: no piece starts in between) and becomes the run's.
            claim = piece
            group = piece[2]
            pieces_of_group = group.pieces
            if hi > end:  # the part above the run stays where the piece was
                pieces_of_group[pieces_of_group.index(piece)] = self._new_piece(end, hi, group)
                piece[1] = end
            else:
                pieces_of_group.remove(piece)
                if not pieces_of_group:
                    del group.order[group.id]
            if lo > first:
                starts = self._starts
                starts[bisect_left(starts, lo)] = first
                del self._piece_at[lo]
                self._piece_at[first] = piece
                piece[0] = first
        return claim

    def release(self, runs: Runs, hit_blocks: int) -> None:
        self._seq += 1
        group = _Group(self._seq, self._groups)
        pieces = group.pieces
        for (first, count), claim in zip(runs, self._claims):
            if claim is None:
                pieces.append(self._new_piece(first, first + count, group))
            else:
                claim[1] = first + count
                claim[2] = group
                pieces.append(claim)
        self._claims = []
        if pieces:
            self._groups[group.id] = group


class FIFOPolicy(_RunPolicy):
    """First in, first out: evict the block inserted longest ago."""

    name = "fifo"

    def __init__(self) -> None:
        super().__init__()
        # One group per request (its inserted blocks), oldest first.
        self._groups: OrderedDict[int, _Group] = OrderedDict()

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        hit = own = depth = 0
        pinned = self._pinned
        for first, count in runs:
            end = first + count
            pieces = self._overlapping(first, end)
            if pieces:
                for piece in pieces:
                    a = piece[0] if piece[0] > first else first
                    b = piece[1] if piece[1] < end else end
                    own += b - a
                    if a - first + depth == hit < max_hit_blocks:
                        hit = min(b - first + depth, max_hit_blocks)
                # Hits keep their place in the queue, pinned; stale copies
                # leave, release() inserts them fresh.
                hit_end = first + min(max(hit - depth, 0), count)
                for piece in pieces:
                    a = piece[0] if piece[0] > first else first
                    b = piece[1] if piece[1] < end else end
                    if b > hit_end:
                        self._cut(piece, max(a, hit_end), b)
                    if a < hit_end:
                        pinned.add(id(self._isolate(piece, a, min(b, hit_end))))
            depth += count
        return hit, own

    def _isolate(self, piece: list, a: int, b: int) -> list:
        """Split ``piece`` so that the keys ``a .. b - 1`` form one piece; return it."""
        group = piece[2]
        pieces = group.pieces
        if b < piece[1]:
            pieces.insert(pieces.index(piece) + 1, self._new_piece(b, piece[1], group))
            piece[1] = b
        if a > piece[0]:
            part = self._new_piece(a, b, group)
            pieces.insert(pieces.index(piece) + 1, part)
            piece[1] = a
            return part
        return piece

    def release(self, runs: Runs, hit_blocks: int) -> None:
        self._pinned.clear()
        self._seq += 1
        group = _Group(self._seq, self._groups)
        depth = 0
        for first, count in runs:
            hits = hit_blocks - depth
            if hits < count:
                group.pieces.append(self._new_piece(first + max(hits, 0), first + count, group))
            depth += count
        if group.pieces:
            self._groups[group.id] = group


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

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        counts = self._counts
        buckets = self._buckets
        if pinned:  # the lowest bucket may be all pinned: go up the counts
            for count in sorted(buckets):
                n = self._evict_unpinned(buckets[count], n, pinned)
                if not n:
                    return
        while n:
            lowest = counts[0]
            bucket = buckets[lowest]
            if not bucket:
                heappop(counts)
                del buckets[lowest]
                continue
            n = self._evict_from(bucket, n)

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


# ---------------------------------------------------------------- per block


def _keys(runs: Runs) -> list[int]:
    keys: list[int] = []
    for first, count in runs:
        keys.extend(range(first, first + count))
    return keys


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

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        if pinned:
            _drop_unpinned(self._blocks, n, pinned)
            return
        popitem = self._blocks.popitem
        for _ in range(n):
            popitem(False)

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

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        blocks = self._blocks
        if pinned:
            _drop_unpinned(blocks, n, pinned, set(self._keys[: self._hit]))
            return
        popitem = blocks.popitem
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

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        count = self._count
        buckets = self._buckets
        if pinned:
            for c in sorted(buckets):
                for key in _drop_unpinned(buckets[c], n, pinned):
                    del count[key]
                    n -= 1
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
                del count[popitem(False)[0]]
                n -= 1

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


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "lfu": LFUPolicy,
}
"""Policy classes by name: the run-based ones, the default."""

BLOCK_POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": BlockLRU,
    "fifo": BlockFIFO,
    "lfu": BlockLFU,
}
"""The per-block implementations of the same policies, by name."""


def make_policy(name: str, per_block: bool = False) -> EvictionPolicy:
    """Return a new, empty policy called ``name`` (one of :data:`POLICIES`);
    ``per_block`` picks the per-block implementation."""
    cls = (BLOCK_POLICIES if per_block else POLICIES).get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)} (got {name!r})")
    return cls()
