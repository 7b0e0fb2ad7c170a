"""Block-level prefix cache (vLLM v1 automatic prefix caching).

A request is served with ``cache.serve(keys, max_hit_blocks, alloc_blocks)``:

* ``keys`` -- distinct keys of the full blocks the request leaves cached, head
  first (``keys[j]`` is the block at depth ``j``);
* ``max_hit_blocks`` -- the lookup considers ``keys[:max_hit_blocks]`` only
  (vLLM computes at least one prompt token);
* ``alloc_blocks`` -- blocks held while served, the partial last one included.

The hit is the leading run of ``keys[:max_hit_blocks]`` that is cached. Every
cached block of ``keys`` (hits and stale copies after a miss or beyond the cap)
belongs to the request and is never evicted to make room for it; victims are
evicted until ``alloc_blocks`` fit. Then the hits are touched, the other keys
are (re)inserted and the partial block is freed. A request with more blocks
than the whole cache is *oversized*: it leaves the cache untouched.

With a service time, a request is split in two: ``begin`` (the lookup, eviction and
touch/insert, when the request starts service) and ``end`` (when it completes). In between
its blocks are *pinned* -- no request evicts them; they stay hits for others -- and its
partial block stays allocated; ``fits`` tells whether a request can begin now (there is
room among the unpinned blocks), ``lookup`` what it would hit, without changing anything.
``serve`` is ``begin`` + ``end`` at the same instant.

Keys that are runs of consecutive ints are what makes the cache fast:
``cache.serve_runs(runs, ...)`` takes them as ``(first_key, count)`` pairs
(:func:`runs_of` makes them from a list) and costs O(log n) per run.

:class:`PrefixCache` is the implementation behind an
:class:`~kvsim.policies.EvictionPolicy`; :class:`ReferenceCache` is a
deliberately naive oracle of the same semantics for tests.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from kvsim.policies import POLICIES, EvictionPolicy, Runs, make_policy, pinned_parts

__all__ = ["PrefixCache", "ReferenceCache", "ServeResult", "runs_of"]

# Int keys at or above this are interned ids of other keys (below: the key itself).
_INTERNED = 1 << 64


class ServeResult(NamedTuple):
    """Outcome of serving one request."""

    hit_blocks: int
    """Leading blocks found in the cache (0 if oversized)."""
    evicted: int
    """Blocks evicted to make room for this request."""
    oversized: bool
    """The request did not fit in the cache and left it unchanged."""


_OVERSIZED = ServeResult(0, 0, True)


def runs_of(keys: Iterable[int]) -> list[tuple[int, int]]:
    """Split int ``keys`` into runs of consecutive ints: ``[(first_key, count), ...]``.

    One pass, no hashing. Raises ``TypeError`` if a key is not an int.
    """
    runs = []
    first = count = 0
    for key in keys:
        if count and key == first + count:
            count += 1
            continue
        if count:
            runs.append((first, count))
        if type(key) is not int:
            raise TypeError(f"keys must be ints (got {key!r})")
        first, count = key, 1
    if count:
        runs.append((first, count))
    return runs


def _check_capacity(capacity_blocks: object) -> int:
    if (
        not isinstance(capacity_blocks, numbers.Integral)
        or isinstance(capacity_blocks, bool)
        or capacity_blocks < 0
    ):
        raise ValueError(f"capacity_blocks must be an int >= 0 (got {capacity_blocks!r})")
    return int(capacity_blocks)


def check_runs(runs: Runs, max_hit_blocks: int, alloc_blocks: int) -> int:
    """The number of keys in ``runs``, after checking the request's arguments."""
    n_keys = 0
    for _, count in runs:
        if count < 1:
            raise ValueError(f"runs must have counts >= 1 (got {count!r})")
        n_keys += count
    if not 0 <= max_hit_blocks <= n_keys <= alloc_blocks:
        _check_request(n_keys, max_hit_blocks, alloc_blocks)
    return n_keys


def _check_request(n_keys: int, max_hit_blocks: int, alloc_blocks: int) -> None:
    if not 0 <= max_hit_blocks <= n_keys:
        raise ValueError(
            f"max_hit_blocks must be in [0, len(keys)] = [0, {n_keys}] (got {max_hit_blocks!r})"
        )
    if not alloc_blocks >= n_keys:
        raise ValueError(f"alloc_blocks must be >= len(keys) = {n_keys} (got {alloc_blocks!r})")


class PrefixCache:
    """Prefix cache of ``capacity_blocks`` blocks evicting by ``policy``.

    ``policy`` is a name from :data:`~kvsim.policies.POLICIES` (``"lru"``,
    ``"fifo"``, ``"lfu"``) or a new, empty :class:`EvictionPolicy` that no
    other cache uses. Counters: :attr:`requests` (every call of :meth:`serve`),
    :attr:`oversized` and :attr:`evictions`.

    Int keys below ``2**64`` go to the policy as they are; other keys
    (strings, tuples, larger ints) are interned to ids from ``2**64`` on, for
    the life of the cache: they work, but are not fast.
    """

    def __init__(self, capacity_blocks: int, policy: str | EvictionPolicy) -> None:
        self.capacity_blocks = _check_capacity(capacity_blocks)
        if isinstance(policy, str):
            policy = make_policy(policy, capacity_blocks=self.capacity_blocks)
        elif not isinstance(policy, EvictionPolicy):
            raise ValueError(
                f"policy must be one of {', '.join(POLICIES)} or an EvictionPolicy (got {policy!r})"
            )
        elif len(policy):
            raise ValueError(f"policy must be empty (got {len(policy)} cached blocks)")
        self.policy: EvictionPolicy = policy
        self.requests = 0
        self.oversized = 0
        self.evictions = 0
        # Kept here rather than asked of the policy: a policy's own size is
        # only meaningful between requests.
        self._size = 0
        self._ids: dict[Hashable, int] = {}
        self._interned: list[Hashable] = []
        # Requests in service: their runs (with multiplicity) and partial blocks.
        self._pins: dict[tuple[int, int], int] = {}
        self._pinned: list[tuple[int, int]] = []  # union of the pinned runs, sorted (lo, hi)
        self._pinned_blocks = 0  # keys in that union
        self._held = 0  # partial blocks held by requests in service
        # A list while a tiered cache wants the keys evicted (kvsim.tiered, exclusive mode).
        self._victims: list | None = None

    def serve(
        self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int
    ) -> ServeResult:
        """Serve one request and return its :class:`ServeResult`."""
        return self.serve_runs(self.runs(keys), max_hit_blocks, alloc_blocks)

    def runs(self, keys: Sequence[Hashable]) -> list[tuple[int, int]]:
        """``keys`` as the runs :meth:`serve_runs` takes (other keys than small ints are interned)."""
        try:
            runs = runs_of(keys)
            if runs and max(first + count for first, count in runs) > _INTERNED:
                raise TypeError
        except TypeError:
            runs = runs_of([self._id(key, True) for key in keys])
        return runs

    def serve_runs(self, runs: Runs, max_hit_blocks: int, alloc_blocks: int) -> ServeResult:
        """Serve the request whose keys are ``runs``, ``(first_key, count)`` pairs of int keys
        below ``2**64``, head first; as :meth:`serve` otherwise."""
        n_keys = check_runs(runs, max_hit_blocks, alloc_blocks)
        self.requests += 1
        if alloc_blocks > self.capacity_blocks:
            self.oversized += 1
            return _OVERSIZED
        policy = self.policy
        hit, own = policy.acquire(runs, max_hit_blocks)
        # The request's own cached blocks are already counted in _size.
        evicted = alloc_blocks - own - (self.capacity_blocks - self._size - self._held)
        if evicted > 0:
            if self._victims is None:
                removed = policy.evict(evicted, self._pinned)
            else:
                removed = policy.evict(evicted, self._pinned, self._victims)
            if removed is not None:  # a policy that evicts whole nodes may remove more
                evicted = removed
            self.evictions += evicted
        else:
            evicted = 0
        policy.release(runs, hit)
        self._size += n_keys - own - evicted
        return ServeResult(hit, evicted, False)

    def fits(self, runs: Runs, alloc_blocks: int) -> bool:
        """Whether the request can :meth:`begin` now: its blocks fit beside the pinned ones
        (the keys it shares with them need no room). Always true when nothing is in service
        and the request is not oversized."""
        shared = sum(b - a for first, count in runs for a, b in pinned_parts(self._pinned, first, first + count))
        return alloc_blocks - shared <= self.capacity_blocks - self._held - self._pinned_blocks

    def begin(self, runs: Runs, max_hit_blocks: int, alloc_blocks: int) -> ServeResult:
        """Start serving a request: as :meth:`serve_runs`, but its blocks stay pinned and its
        partial block held until :meth:`end` (not called for an oversized request, which
        holds nothing). Raises ``ValueError`` if it does not :meth:`fit <fits>`."""
        if alloc_blocks <= self.capacity_blocks and not self.fits(runs, alloc_blocks):
            raise ValueError("the request does not fit beside the requests in service (check fits() first)")
        result = self.serve_runs(runs, max_hit_blocks, alloc_blocks)
        if not result.oversized:
            self._held += alloc_blocks - sum(count for _, count in runs)
            for run in runs:
                self._pins[run] = self._pins.get(run, 0) + 1
            self._update_pins()
        return result

    def end(self, runs: Runs, alloc_blocks: int) -> None:
        """Finish a request started by :meth:`begin`: unpin its blocks, free its partial block."""
        pins = self._pins
        for run in runs:
            left = pins.get(run, 0) - 1
            if left < 0:
                raise ValueError(f"end() of a request that did not begin (run {run} is not pinned)")
            if left:
                pins[run] = left
            else:
                del pins[run]
        self._held -= alloc_blocks - sum(count for _, count in runs)
        self._update_pins()

    def _update_pins(self) -> None:
        union: list[tuple[int, int]] = []
        for first, count in sorted(self._pins):
            end = first + count
            if union and first <= union[-1][1]:
                if end > union[-1][1]:
                    union[-1] = (union[-1][0], end)
            else:
                union.append((first, end))
        self._pinned = union
        self._pinned_blocks = sum(b - a for a, b in union)

    @property
    def in_service_blocks(self) -> int:
        """Blocks held by the requests in service (pinned cached blocks and partial blocks)."""
        return self._pinned_blocks + self._held

    @property
    def free_blocks(self) -> int:
        """Blocks neither cached nor held by a request in service."""
        return self.capacity_blocks - self._size - self._held

    def lookup(self, runs: Runs, max_hit_blocks: int) -> int:
        """The hit a request would find now (``hit_blocks`` of :meth:`serve_runs`), changing nothing."""
        return self.policy.cached_prefix(runs, max_hit_blocks)

    def _id(self, key: Hashable, create: bool) -> int | None:
        """The int the policy knows ``key`` by (None if never interned and not ``create``)."""
        if type(key) is not int:
            try:
                key = operator.index(key)  # numpy ints and bools equal ints as dict keys
            except TypeError:
                pass
        if type(key) is int and key < _INTERNED:
            return key
        i = self._ids.get(key)
        if i is None and create:
            # Consecutive ids for keys first seen together keep their runs.
            i = self._ids[key] = _INTERNED + len(self._interned)
            self._interned.append(key)
        return i

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        i = self._id(key, False)
        return i is not None and i in self.policy

    def keys(self) -> set[Hashable]:
        """Return the set of cached keys."""
        interned = self._interned
        return {k if k < _INTERNED else interned[k - _INTERNED] for k in self.policy}

    def __repr__(self) -> str:
        return (
            f"PrefixCache(capacity_blocks={self.capacity_blocks}, "
            f"policy={self.policy.name!r}, cached={self._size})"
        )


class ReferenceCache:
    """Naive oracle of :class:`PrefixCache`, independent of the policy classes.

    Each cached key maps to its priority tuple; the victim is found by a
    ``min()`` scan, O(cache size) per eviction. For tests only.
    """

    def __init__(self, capacity_blocks: int, policy: str) -> None:
        self.capacity_blocks = _check_capacity(capacity_blocks)
        name = policy.lower() if isinstance(policy, str) else None
        if name not in ("lru", "fifo", "lfu"):
            raise ValueError(f"policy must be one of lru, fifo, lfu (got {policy!r})")
        self.policy_name = name
        self.requests = 0
        self.oversized = 0
        self.evictions = 0
        self._seq = 0
        self._priority: dict[Hashable, tuple[int, ...]] = {}
        self._in_service: list[tuple[list[Hashable], int]] = []  # (keys, alloc) begun, not ended

    def _touched(self, old: tuple[int, ...], seq: int, depth: int) -> tuple[int, ...]:
        if self.policy_name == "lru":
            return (seq, -depth)
        if self.policy_name == "fifo":
            return old
        return (old[0] + 1, seq, -depth)

    def _inserted(self, seq: int, depth: int) -> tuple[int, ...]:
        if self.policy_name == "lfu":
            return (1, seq, -depth)
        return (seq, -depth)

    def serve(
        self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int
    ) -> ServeResult:
        """Serve one request and return its :class:`ServeResult`."""
        _check_request(len(keys), max_hit_blocks, alloc_blocks)
        self.requests += 1
        if alloc_blocks > self.capacity_blocks:
            self.oversized += 1
            return ServeResult(0, 0, True)
        self._seq += 1
        priority = self._priority
        hit = 0
        while hit < max_hit_blocks and keys[hit] in priority:
            hit += 1
        mine = set(keys)
        own = sum(1 for key in mine if key in priority)
        pinned = {key for held, _ in self._in_service for key in held}
        held = sum(alloc - len(held) for held, alloc in self._in_service)
        evicted = 0
        while self.capacity_blocks - held - len(priority) < alloc_blocks - own:
            victim = min((k for k in priority if k not in mine and k not in pinned), key=priority.__getitem__)
            del priority[victim]
            evicted += 1
        self.evictions += evicted
        for depth, key in enumerate(keys):
            if depth < hit:
                priority[key] = self._touched(priority[key], self._seq, depth)
            else:
                priority[key] = self._inserted(self._seq, depth)
        return ServeResult(hit, evicted, False)

    def fits(self, keys: Sequence[Hashable], alloc_blocks: int) -> bool:
        pinned = {key for held, _ in self._in_service for key in held}
        held = sum(alloc - len(held) for held, alloc in self._in_service)
        return alloc_blocks - len(pinned & set(keys)) <= self.capacity_blocks - held - len(pinned)

    def begin(self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int) -> ServeResult:
        result = self.serve(keys, max_hit_blocks, alloc_blocks)
        if not result.oversized:
            self._in_service.append((list(keys), alloc_blocks))
        return result

    def end(self, keys: Sequence[Hashable], alloc_blocks: int) -> None:
        self._in_service.remove((list(keys), alloc_blocks))

    def lookup(self, keys: Sequence[Hashable], max_hit_blocks: int) -> int:
        hit = 0
        while hit < max_hit_blocks and keys[hit] in self._priority:
            hit += 1
        return hit

    def __len__(self) -> int:
        return len(self._priority)

    def __contains__(self, key: object) -> bool:
        return key in self._priority

    def keys(self) -> set[Hashable]:
        """Return the set of cached keys."""
        return set(self._priority)
