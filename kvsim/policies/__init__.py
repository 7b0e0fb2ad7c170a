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

Two implementations of each of these three, with identical results:

* :class:`LRUPolicy`, :class:`FIFOPolicy`, :class:`LFUPolicy` (the default,
  :data:`POLICIES`) work per run: the cached keys are *pieces*, runs of
  consecutive keys of one request that share an eviction rank, and each
  request costs O(log n) per piece it meets, whatever the number of blocks.
* :class:`BlockLRU`, :class:`BlockFIFO`, :class:`BlockLFU`
  (:data:`BLOCK_POLICIES`) work per block, with ordered dicts: simple, and the
  oracle the run-based ones are tested against.

Four more policies, per block only (one class each, in both tables), from the
caching literature; each module's docstring states its rules, where it follows
libCacheSim and where it departs from it or from the paper:

* ``s3fifo`` -- :class:`S3FIFOPolicy`, S3-FIFO (Yang et al., SOSP'23): a small
  FIFO of 10% of the capacity, a main FIFO with 2-bit CLOCK reinsertion and a
  ghost FIFO of keys; needs the capacity.
* ``sieve`` -- :class:`SievePolicy`, SIEVE (Zhang et al., NSDI'24): one FIFO,
  visited bits and a hand that keeps its place between evictions.
* ``arc`` -- :class:`ARCPolicy`, ARC (Megiddo & Modha, FAST'03): LRU lists T1
  and T2, ghost lists B1 and B2 and an adaptive target; needs the capacity.
* ``lfu-aging`` -- :class:`LFUAgingPolicy`, LFU with dynamic aging (LFU-DA):
  priority = count + L, L being the priority of the last victim, so that old
  counts stop protecting old blocks (a conversation's head hit long ago).

Modules:

* :mod:`~kvsim.policies.base` -- the :class:`EvictionPolicy` protocol, the
  :data:`Runs` and :data:`Pinned` types and their helpers (:func:`pinned_parts`),
  and the pieces/groups/key-index machinery shared by the run-based policies.
* :mod:`~kvsim.policies.lru`, :mod:`~kvsim.policies.fifo`,
  :mod:`~kvsim.policies.lfu` -- one run-based policy each.
* :mod:`~kvsim.policies.reference` -- the per-block policies.
* :mod:`~kvsim.policies.s3fifo`, :mod:`~kvsim.policies.sieve`,
  :mod:`~kvsim.policies.arc`, :mod:`~kvsim.policies.lfu_aging` -- one per-block
  policy each.
* this package -- the registry (:data:`POLICIES`, :data:`BLOCK_POLICIES`,
  :func:`make_policy`) and the public names.

Adding a policy is one new module beside these, importing
only :mod:`~kvsim.policies.base` (a class that follows :class:`EvictionPolicy`),
and one line in :data:`POLICIES` below; the cache and the engine do not change.
"""

from __future__ import annotations

from kvsim.policies.arc import ARCPolicy
from kvsim.policies.base import EvictionPolicy, Pinned, Runs, pinned_parts
from kvsim.policies.fifo import FIFOPolicy
from kvsim.policies.lfu import LFUPolicy
from kvsim.policies.lfu_aging import LFUAgingPolicy
from kvsim.policies.lru import LRUPolicy
from kvsim.policies.reference import BlockFIFO, BlockLFU, BlockLRU
from kvsim.policies.s3fifo import S3FIFOPolicy
from kvsim.policies.sglang import SGLangPolicy
from kvsim.policies.sglang_reference import SGLangReference
from kvsim.policies.sieve import SievePolicy

__all__ = [
    "ARCPolicy",
    "BLOCK_POLICIES",
    "BlockFIFO",
    "BlockLFU",
    "BlockLRU",
    "EvictionPolicy",
    "FIFOPolicy",
    "LFUAgingPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "POLICIES",
    "Pinned",
    "Runs",
    "S3FIFOPolicy",
    "SGLangPolicy",
    "SGLangReference",
    "SievePolicy",
    "make_policy",
    "pinned_parts",
]

POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "lfu": LFUPolicy,
    "s3fifo": S3FIFOPolicy,
    "sieve": SievePolicy,
    "arc": ARCPolicy,
    "lfu-aging": LFUAgingPolicy,
    "sglang": SGLangPolicy,
}
"""Policy classes by name: the run-based ones where there are two implementations, the default."""

BLOCK_POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": BlockLRU,
    "fifo": BlockFIFO,
    "lfu": BlockLFU,
    "s3fifo": S3FIFOPolicy,
    "sieve": SievePolicy,
    "arc": ARCPolicy,
    "lfu-aging": LFUAgingPolicy,
    "sglang": SGLangReference,
}
"""The per-block implementations of the same policies, by name."""


def make_policy(name: str, per_block: bool = False, capacity_blocks: int | None = None) -> EvictionPolicy:
    """Return a new, empty policy called ``name`` (one of :data:`POLICIES`);
    ``per_block`` picks the per-block implementation. ``capacity_blocks`` is the size of the
    cache it will serve, for policies whose rules depend on it (S3-FIFO's small queue, ARC's
    target): those declare ``needs_capacity = True`` and take it as their one argument."""
    cls = (BLOCK_POLICIES if per_block else POLICIES).get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)} (got {name!r})")
    if getattr(cls, "needs_capacity", False):
        if capacity_blocks is None:
            raise ValueError(f"policy {name!r} needs the cache's capacity_blocks")
        return cls(capacity_blocks)
    return cls()
