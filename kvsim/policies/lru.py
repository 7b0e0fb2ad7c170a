"""LRU, run-based: one group per request, oldest first; a hit moves its blocks to the newest group."""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict

from kvsim.policies.base import Runs, _Group, _RunPolicy

__all__ = ["LRUPolicy"]


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
