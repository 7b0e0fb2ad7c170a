"""What every eviction policy shares: the :class:`EvictionPolicy` protocol, the
:data:`Runs` and :data:`Pinned` types and their helpers, and the run machinery
(:class:`_Group`, :class:`_RunPolicy`) of the run-based policies.

The contract (the three calls per request, runs, the ordering of a request's
blocks) is in the package docstring, :mod:`kvsim.policies`. This module imports
no policy: every policy module imports it, and only it.
"""

from __future__ import annotations

import inspect
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["EvictionPolicy", "Pinned", "Runs", "TierPolicy", "Victims", "pinned_parts", "supports_tiers"]

Runs = Sequence[tuple[int, int]]
"""A request's keys as ``(first_key, count)`` runs of consecutive ints, head first."""

Pinned = Sequence[tuple[int, int]]
"""Keys that must not be evicted, as sorted, disjoint ``(lo, hi)`` ranges (``lo .. hi - 1``)."""


Victims = list
"""Where :meth:`TierPolicy.evict` appends what it evicts: ``(lo, hi)`` key ranges in eviction
order, the keys of a range evicted from ``hi - 1`` down to ``lo``."""


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

    def evict(self, n: int, pinned: Pinned = ()) -> int | None:
        """Remove ``n`` victims, none of them pinned by the current request nor in ``pinned``
        (keys held by requests still in service, see :meth:`PrefixCache.begin`).

        The caller guarantees that at least ``n`` such blocks are cached. A policy that evicts
        in larger units (SGLang's whole radix nodes) may remove more than ``n`` and returns how
        many it removed; ``None`` means exactly ``n``. Policies that can tell which keys they
        evicted take an optional third argument, ``victims`` (see :class:`TierPolicy`).
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


@runtime_checkable
class TierPolicy(EvictionPolicy, Protocol):
    """An :class:`EvictionPolicy` with the two optional capabilities a tier of an *exclusive*
    tiered cache (:class:`kvsim.tiered.TieredCache`) needs: telling which keys an eviction
    removed (a GPU victim moves down to the CPU tier) and removing given keys (a block loaded
    back up leaves the lower tier). The run-based and per-block LRU, FIFO and LFU have them;
    :func:`supports_tiers` tells whether a policy does.
    """

    def evict(self, n: int, pinned: Pinned = (), victims: Victims | None = None) -> int | None:
        """As :meth:`EvictionPolicy.evict`; when ``victims`` is a list, also append to it the
        evicted keys as ``(lo, hi)`` ranges, in eviction order (see :data:`Victims`). Without
        it (the default) the cost is at most one test per evicted piece."""
        ...

    def discard(self, runs: Runs) -> int:
        """Remove the cached keys of ``runs`` (keys not cached are ignored); return how many
        were removed. Only between requests (not between :meth:`acquire` and :meth:`release`)."""
        ...


def supports_tiers(policy: object) -> bool:
    """Whether ``policy`` has the capabilities of a :class:`TierPolicy` (``discard``, and an
    ``evict`` that takes ``victims``)."""
    if not callable(getattr(policy, "discard", None)):
        return False
    try:
        return "victims" in inspect.signature(policy.evict).parameters
    except (AttributeError, TypeError, ValueError):
        return False


# ---------------------------------------------------------------- per run (lru, fifo, lfu)


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

    def evict(self, n: int, pinned: Pinned = (), victims: list | None = None) -> None:
        # LRU and FIFO keep their groups in one ordered dict, ``_groups``; LFU overrides this.
        if pinned:
            self._evict_unpinned(self._groups, n, pinned, victims)
        else:
            self._evict_from(self._groups, n, victims)

    def discard(self, runs: Runs) -> int:
        """Remove the cached keys of ``runs``; return how many (see :class:`TierPolicy`). Right
        for state held in pieces and groups only: a subclass with more (ghosts, counters, a
        clock hand) must override it, or :func:`supports_tiers` would wrongly accept it."""
        removed = 0
        for first, count in runs:
            end = first + count
            for piece in self._overlapping(first, end):
                a = piece[0] if piece[0] > first else first
                b = piece[1] if piece[1] < end else end
                self._cut(piece, a, b)
                removed += b - a
        return removed

    def _evict_unpinned(self, order: OrderedDict, n: int, pinned: Pinned, victims: list | None = None) -> int:
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
                    if victims is not None:
                        victims.append((b - m, b))
                    n -= m
                    if not n:
                        return 0
        return n

    def _evict_from(self, order: OrderedDict, n: int, victims: list | None = None) -> int:
        """Evict up to ``n`` unpinned blocks of the groups of ``order``, first
        group first and its deepest piece first; return how many are left to evict
        (appending the evicted ranges to ``victims`` if it is a list)."""
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
                    if victims is not None:
                        victims.append((piece[1], piece[1] + n))
                    n = 0
                    break
                if victims is not None:
                    victims.append((lo, piece[1]))
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
