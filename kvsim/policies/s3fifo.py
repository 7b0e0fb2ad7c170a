"""S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23), per block:
:class:`S3FIFOPolicy`.

Three FIFO queues: *small* S (10% of the capacity), *main* M (the rest) and a *ghost* G of keys
only (no data). Each cached block has a 2-bit frequency, 0 to 3.

* A hit adds 1 to the block's frequency (capped at 3); the block does not move.
* A missing key found in G leaves G and is inserted in M; any other new key goes to S. Before the
  first eviction, a new key goes to M once S is full (libCacheSim's current ``S3FIFO.c``; the
  paper's version keeps filling S). Inserted blocks start at frequency 0, also when moved to M.
* An eviction evicts from M if M holds more than its share or S is empty, else from S:
  - from S: the oldest block of S leaves it; if its frequency is at least 2 (libCacheSim's
    default ``move-to-main-threshold=2``; the paper's ``freq > 1``) it moves to M (frequency
    reset to 0) and the next oldest is looked at, else it is evicted and its key enters G;
  - from M: the oldest block of M is evicted if its frequency is 0, else it goes back to the
    head of M with its frequency minus 1 (a 2-bit CLOCK) and the next oldest is looked at.
* G holds ``floor(0.9 * capacity)`` keys, the oldest dropped first (libCacheSim's
  ``ghost-size-ratio=0.9``: about M's size).

On a stream of single-block requests this gives the same hits as libCacheSim's ``S3FIFO`` with its
default parameters at capacities of 20 blocks and more (``tests/test_policies_modern.py``).

Where it differs from libCacheSim, and the choices for a prefix cache:

* S holds ``max(1, floor(capacity / 10))`` blocks. libCacheSim sizes S ``floor(capacity / 10)``
  and never admits an object that would fill all of S, so below 20 blocks it caches nothing;
  here every block is admitted.
* A request's hits have their frequency raised; its other keys are inserted deepest first (the
  deepest is the oldest of them and, in S, the first to leave). A *stale copy* (a cached key after
  the first miss) is removed without entering G and inserted again as a new key. The keys a
  request finds in G leave G when the request is looked up (as libCacheSim's ``find``), so the
  request's own evictions cannot push them out before they are inserted in M.
* A pinned block (one of the current request's own, or in ``pinned``) is passed over where it is:
  neither moved, nor evicted, nor its frequency changed; an eviction step that finds only pinned
  blocks in the queue it picked takes its victim from the other queue.
* ``evict(n)`` is n eviction steps; each removes exactly one cached block (moves to M are not
  evictions).

Implementation: S and M are ordered dicts (oldest first) of key -> frequency, G an ordered dict of
keys. Pinned blocks met at the front of S or M are set aside for the rest of the ``evict`` call
and put back in front, in their order: the same as passing over them in place, at O(1) each.
Every step is O(1) amortised. The tests check it against a naive list-based model of the same
rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from itertools import chain

from kvsim.policies.base import Pinned, Runs, _is_pinned

__all__ = ["S3FIFOPolicy"]

MOVE_TO_MAIN_THRESHOLD = 2
"""A block leaving S with at least this frequency moves to M (libCacheSim's default)."""
MAX_FREQ = 3
"""Frequencies are 2-bit counters."""


class S3FIFOPolicy:
    """S3-FIFO for a cache of ``capacity_blocks`` blocks (see the module docstring)."""

    name = "s3fifo"
    needs_capacity = True

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.small_blocks = max(1, int(capacity_blocks * 0.1))
        self.main_blocks = capacity_blocks - self.small_blocks
        self.ghost_keys = int(capacity_blocks * 0.9)
        self._small: OrderedDict[int, int] = OrderedDict()
        self._main: OrderedDict[int, int] = OrderedDict()
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._has_evicted = False
        self._keys: list[int] = []
        self._hits: set[int] = set()
        self._from_ghost: set[int] = set()

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main

    def __iter__(self) -> Iterator[int]:
        return chain(self._small, self._main)

    def acquire(self, runs: Runs, max_hit_blocks: int) -> tuple[int, int]:
        keys = self._keys = [k for first, count in runs for k in range(first, first + count)]
        small, main = self._small, self._main
        hit = 0
        for key in keys[:max_hit_blocks]:
            if key in small:
                queue = small
            elif key in main:
                queue = main
            else:
                break
            f = queue[key]
            if f < MAX_FREQ:
                queue[key] = f + 1
            hit += 1
        self._hits = set(keys[:hit])
        ghost = self._ghost
        from_ghost = self._from_ghost = set()
        stale = 0
        for key in keys[hit:]:
            if key in small:
                del small[key]
                stale += 1
            elif key in main:
                del main[key]
                stale += 1
            elif key in ghost:
                del ghost[key]
                from_ghost.add(key)
        return hit, hit + stale

    def evict(self, n: int, pinned: Pinned = ()) -> None:
        self._has_evicted = True
        small, main = self._small, self._main
        hits = self._hits
        # Pinned blocks taken off the front of S and M during this call, in queue order.
        parked_small: list[tuple[int, int]] = []
        parked_main: list[tuple[int, int]] = []
        ghost = self._ghost
        ghost_keys = self.ghost_keys

        def evict_small() -> bool:
            while small:
                key, f = small.popitem(False)
                if (hits and key in hits) or (pinned and _is_pinned(pinned, key)):
                    parked_small.append((key, f))
                elif f >= MOVE_TO_MAIN_THRESHOLD:
                    main[key] = 0
                else:
                    if ghost_keys:
                        if len(ghost) >= ghost_keys:
                            ghost.popitem(False)
                        ghost[key] = None
                    return True
            return False

        def evict_main() -> bool:
            while main:
                key, f = main.popitem(False)
                if (hits and key in hits) or (pinned and _is_pinned(pinned, key)):
                    parked_main.append((key, f))
                elif f:
                    main[key] = f - 1
                else:
                    return True
            return False

        for _ in range(n):
            if len(main) + len(parked_main) > self.main_blocks or not (small or parked_small):
                first, second = evict_main, evict_small
            else:
                first, second = evict_small, evict_main
            # A failed evict_small() moved its unpinned blocks to M, so this ends.
            while not (first() or second()):
                pass
        for queue, parked in ((small, parked_small), (main, parked_main)):
            for key, f in reversed(parked):
                queue[key] = f
                queue.move_to_end(key, False)

    def release(self, runs: Runs, hit_blocks: int) -> None:
        keys, self._keys = self._keys, []
        small, main = self._small, self._main
        from_ghost = self._from_ghost
        for key in reversed(keys[hit_blocks:]):
            if key in from_ghost or (not self._has_evicted and len(small) >= self.small_blocks):
                main[key] = 0
            else:
                small[key] = 0
        self._hits = set()
        self._from_ghost = set()

    def cached_prefix(self, runs: Runs, max_hit_blocks: int) -> int:
        hit = 0
        for first, count in runs:
            for key in range(first, first + count):
                if hit >= max_hit_blocks or not (key in self._small or key in self._main):
                    return hit
                hit += 1
        return hit
