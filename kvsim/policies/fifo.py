"""FIFO, run-based: one group per request (its inserted blocks), oldest first; hits stay in place."""

from __future__ import annotations

from collections import OrderedDict

from kvsim.policies.base import Runs, _Group, _RunPolicy

__all__ = ["FIFOPolicy"]


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
