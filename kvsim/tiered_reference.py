"""A deliberately simple oracle of :class:`kvsim.tiered.TieredCache` for tests: one ordered dict
per tier (front = least recent), LRU everywhere, one block at a time, both modes, the same
lookup, cap and pinning rules (module docstring of :mod:`kvsim.tiered`). Slow on purpose.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["ReferenceTieredCache"]


class ReferenceTieredCache:
    """Per-block LRU tiers: GPU, CPU and (if ``disk_blocks``) disk."""

    def __init__(self, gpu_blocks: int, cpu_blocks: int, disk_blocks: int = 0, mode: str = "inclusive") -> None:
        if mode not in ("inclusive", "exclusive"):
            raise ValueError(f"mode must be inclusive or exclusive (got {mode!r})")
        self.mode = mode
        self.caps = [gpu_blocks, cpu_blocks] + ([disk_blocks] if disk_blocks else [])
        self.tiers: list[OrderedDict[Hashable, None]] = [OrderedDict() for _ in self.caps]
        n = len(self.caps)
        self.requests = self.oversized = 0
        self.tier_hits = [0] * n
        self.stored_blocks = [0] * n
        self.tier_evictions = [0] * n
        self._in_service: list[tuple[list[Hashable], int]] = []

    @property
    def evictions(self) -> int:
        return self.tier_evictions[0]

    def _hits(self, keys: Sequence[Hashable], max_hit_blocks: int) -> list[int]:
        hits = []
        depth = 0
        for tier in self.tiers:
            h = 0
            while depth < max_hit_blocks and keys[depth] in tier:
                depth += 1
                h += 1
            hits.append(h)
        return hits

    def serve(self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int):
        """``(hit_blocks, evicted, oversized, tier_hits, stored, tier_evicted)``."""
        n = len(self.caps)
        zeros = (0,) * n
        self.requests += 1
        if alloc_blocks > self.caps[0]:
            self.oversized += 1
            return 0, 0, True, zeros, zeros, zeros
        hits = self._hits(keys, max_hit_blocks)
        mine = set(keys)
        gpu = self.tiers[0]
        pinned = {k for held, _ in self._in_service for k in held}
        held = sum(alloc - len(ks) for ks, alloc in self._in_service)
        own = len(mine & gpu.keys())
        victims = []
        while self.caps[0] - held - len(gpu) < alloc_blocks - own:
            victim = next(k for k in gpu if k not in mine and k not in pinned)
            del gpu[victim]
            victims.append(victim)
        for key in reversed(keys):  # the deepest block of the request is its least recent
            gpu[key] = None
            gpu.move_to_end(key)
        stored = [0] * n
        evicted = [len(victims)] + [0] * (n - 1)
        if self.mode == "inclusive":
            for t in range(1, n):
                tier, cap = self.tiers[t], self.caps[t]
                if not 0 < len(keys) <= cap:
                    continue
                own_t = len(mine & tier.keys())
                while cap - len(tier) < len(keys) - own_t:
                    del tier[next(k for k in tier if k not in mine)]
                    evicted[t] += 1
                for key in reversed(keys):
                    tier[key] = None
                    tier.move_to_end(key)
                stored[t] = len(keys) - own_t
        else:
            for tier in self.tiers[1:]:
                for key in keys:
                    tier.pop(key, None)
            incoming = victims
            for t in range(1, n):
                tier, cap = self.tiers[t], self.caps[t]
                out = []
                came = set(incoming)
                for key in incoming:  # first evicted first: it ends the least recent
                    if len(tier) >= cap:
                        if not cap:
                            out.append(key)
                            continue
                        out.append(tier.popitem(last=False)[0])
                    tier[key] = None
                # Incoming blocks pushed out again passed through: neither stored nor evicted here.
                passed = sum(1 for k in out if k in came)
                stored[t] = len(incoming) - passed
                evicted[t] = len(out) - passed
                incoming = out
        for t in range(n):
            self.tier_hits[t] += hits[t]
            self.stored_blocks[t] += stored[t]
            self.tier_evictions[t] += evicted[t]
        return sum(hits), len(victims), False, tuple(hits), tuple(stored), tuple(evicted)

    def fits(self, keys: Sequence[Hashable], alloc_blocks: int) -> bool:
        pinned = {k for held, _ in self._in_service for k in held}
        held = sum(alloc - len(ks) for ks, alloc in self._in_service)
        return alloc_blocks - len(pinned & set(keys)) <= self.caps[0] - held - len(pinned)

    def begin(self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int):
        result = self.serve(keys, max_hit_blocks, alloc_blocks)
        if not result[2]:
            self._in_service.append((list(keys), alloc_blocks))
        return result

    def end(self, keys: Sequence[Hashable], alloc_blocks: int) -> None:
        self._in_service.remove((list(keys), alloc_blocks))

    def lookup_tiers(self, keys: Sequence[Hashable], max_hit_blocks: int) -> tuple[int, ...]:
        return tuple(self._hits(keys, max_hit_blocks))

    def tier_keys(self, t: int) -> set[Hashable]:
        return set(self.tiers[t])
