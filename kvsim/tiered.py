"""Tiered prefix cache: GPU HBM -> CPU DRAM (-> local disk), behind the interface of
:class:`~kvsim.cache.PrefixCache`.

:class:`TieredCache` is one :class:`~kvsim.cache.PrefixCache` per tier (its own capacity in
blocks and its own eviction policy, any name of :data:`~kvsim.policies.POLICIES`), driven so:

* **Lookup.** The hit is the longest run of leading blocks on the GPU, then the run that
  continues it from the CPU tier, then from disk; the ``max_hit_blocks`` cap (prompt - 1) applies
  to the whole run. Blocks found below the GPU are *loaded* to the GPU for the request: they count
  as hits of the tier they came from (:attr:`TieredServeResult.tier_hits`) and occupy GPU blocks
  like the rest of the request (on the GPU they are inserted, not touched: for FIFO and LFU a
  reloaded block starts afresh there). A block below the first missing one never counts, even
  if a deeper tier (or, in exclusive mode, the GPU) holds the next ones.
* **GPU tier.** Exactly a :class:`~kvsim.cache.PrefixCache`: room for the request's
  ``alloc_blocks`` is made by evicting unpinned blocks that are not the request's own, then the
  GPU hits are touched and every other full block inserted. A request larger than the GPU is
  ``oversized``: it leaves every tier unchanged.
* ``mode="inclusive"`` (the default; write-through, as vLLM's native CPU offloading and LMCache):
  every full block a request leaves on the GPU is also stored in, or refreshed in, the CPU tier,
  and in the disk tier the same way: each lower tier serves the request's full blocks as a
  PrefixCache would a request of ``alloc_blocks = max_hit_blocks = len(keys)`` (no partial block).
  A block not yet there is *stored* into it (a copy down); one already there is refreshed and
  moves no bytes. A request with more full blocks than a lower tier is not stored in it (as vLLM's
  ``prepare_store`` gives up when it cannot make room). GPU evictions just drop the GPU copy.
* ``mode="exclusive"`` (write-back, a victim cache): a block evicted from the GPU moves to the
  CPU tier, and one evicted from the CPU moves to disk (victims arrive as the most recent blocks
  of the lower tier, in the order they were evicted); a block loaded back up leaves the lower
  tier, and so do all the request's other blocks there (the GPU now holds them all: the tiers
  stay disjoint). Victims beyond a lower tier's capacity pass through it (to the next tier, or
  are dropped): those are the oldest of them, so a per-block tier would have evicted them at
  once. Every tier's policy needs the capabilities of
  :class:`~kvsim.policies.base.TierPolicy` (``evict(..., victims)`` and ``discard``), else
  ``ValueError``.
* **Bytes moved.** Per tier: blocks *loaded* up from it (its hits), blocks *stored* down into it
  (inclusive: those not already there; exclusive: the victims it kept), and its evictions
  (blocks that left it to make room: for the GPU in exclusive mode, the ones moved down).
  :meth:`TieredCache.traffic` gives them, in tokens too when ``block_size`` is given.
* **Pinning** (:meth:`~TieredCache.begin` / :meth:`~TieredCache.end`): the GPU tier pins the
  blocks of requests in service exactly as a PrefixCache. Lower tiers pin nothing: loads and
  stores are instantaneous here (vLLM's CPU manager holds a block only while its transfer is in
  flight), so a lower-tier copy of an in-service block may be evicted, which is harmless -- the
  pinned GPU copy is what other requests hit. Stores happen at ``begin`` (vLLM offloads blocks
  as they are computed).
* With a zero-size CPU tier and no disk the results are bit-identical to a single
  :class:`~kvsim.cache.PrefixCache` of the GPU's size, request by request.

LRU inclusion properties (``tests/test_tiered.py``), for requests that fit the GPU and no
requests in service:

* inclusive, CPU >= GPU (and disk >= CPU): the GPU's blocks are always in the CPU tier (both
  keep the most recent blocks of one recency order), so the hit is exactly that of one LRU of
  the lowest tier's size *allocating full blocks only*; one LRU of that size that also makes
  room for each request's partial block (a plain PrefixCache) keeps one block less after such
  a request and never hits more -- not exactly equal.
* exclusive: GPU + CPU (+ disk) together hold exactly what one LRU of the summed size holds
  (any capacities); the hits are equal on prefix-closed streams (a request holds every earlier
  block of its conversation: multi-turn chat). Elsewhere a deeper block can be more recent than
  its predecessor and sit on the GPU while the predecessor is in the CPU tier: the run continued
  from the CPU stops there, the single cache's does not.

Sizing from GiB (vLLM's ``--kv-offloading-size``): the capacity of a tier is
``analytic.sizing.capacity_from_gib(model, gib, kv_dtype, block_size).capacity_blocks``.

Where the engines differ from these rules (read in their code; none of this is modelled):

* vLLM (``OffloadingConnector``, ``kv_offload`` CPU manager): offloads in blocks of
  ``block_size`` in its ``kv_connector_extra_config``, a multiple of the GPU block (a whole
  offloaded block hits or misses); a CPU hit shorter than one offloaded block is not loaded;
  ``store_threshold`` >= 2 (off by default) stores a block only after that many lookups have seen
  it (``FilterReusedOffloadingManager``); new CPU blocks of a request are appended head first and
  then touched tail first (the head ends most recent, as here); an ARC CPU policy exists (here
  any of :data:`~kvsim.policies.POLICIES`); its lookup touches all the request's CPU blocks, as
  the inclusive store here does.
* LMCache: stores chunks of 256 tokens (``chunk_size``) and by default only prompt tokens
  (``save_decode_cache`` off), to every backend at once (CPU and disk, like inclusive mode
  here); its lookup is a prefix of *its own* tiers from token 0, used only where it goes beyond
  vLLM's GPU hit (here the CPU run continues the GPU's); a disk hit is written back to the CPU
  (here: the inclusive store does it).
* SGLang HiCache (``HiRadixCache``): works on radix nodes (whole inserts), not blocks;
  ``write_through`` backs a node up on the host at its first hit, ``write_through_selective``
  after a few hits, ``write_back`` only when the GPU evicts it; after a load back the host copy
  is kept (never exclusive), and the host evicts only nodes no longer on the GPU; a host hit
  shorter than ``load_back_threshold`` tokens is recomputed rather than loaded; the L3 storage
  backend is written from the host after further hits.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence

from analytic.offload import OFFLOAD_MODES, TIER_NAMES, Tiers
from kvsim.cache import _INTERNED, PrefixCache, ServeResult
from kvsim.policies import EvictionPolicy, Runs
from kvsim.policies.base import supports_tiers

__all__ = ["TIER_NAMES", "TieredCache", "TieredServeResult", "make_cache", "tier_tokens"]



class TieredServeResult(ServeResult):
    """A :class:`~kvsim.cache.ServeResult` (``hit_blocks`` = the whole hit over the tiers,
    ``evicted`` = GPU evictions, ``oversized``; it unpacks and compares as that triple) plus
    the per-tier breakdown, one entry per tier, GPU first."""

    tier_hits: tuple[int, ...]
    """Hit blocks found in each tier (those below the GPU were loaded up from it)."""
    stored: tuple[int, ...]
    """Blocks stored down into each tier by this request (0 for the GPU)."""
    tier_evicted: tuple[int, ...]
    """Blocks that left each tier to make room (the GPU's are ``evicted``)."""

    def __new__(cls, hit_blocks: int, evicted: int, oversized: bool, tier_hits: tuple[int, ...] = (),
                stored: tuple[int, ...] = (), tier_evicted: tuple[int, ...] = ()) -> TieredServeResult:
        self = super().__new__(cls, hit_blocks, evicted, oversized)
        self.tier_hits = tier_hits
        self.stored = stored
        self.tier_evicted = tier_evicted
        return self

    def __repr__(self) -> str:
        return (f"TieredServeResult(hit_blocks={self.hit_blocks}, evicted={self.evicted}, "
                f"oversized={self.oversized}, tier_hits={self.tier_hits}, stored={self.stored}, "
                f"tier_evicted={self.tier_evicted})")


_new_tuple = tuple.__new__


def _result(hit_blocks: int, evicted: int, oversized: bool, tier_hits: tuple, stored: tuple,
            tier_evicted: tuple) -> TieredServeResult:
    """A :class:`TieredServeResult`, made in half the time of its constructor."""
    r = _new_tuple(TieredServeResult, (hit_blocks, evicted, oversized))
    r.tier_hits = tier_hits
    r.stored = stored
    r.tier_evicted = tier_evicted
    return r


def _after(runs: Runs, depth: int) -> list[tuple[int, int]]:
    """``runs`` without their first ``depth`` keys."""
    out = []
    for first, count in runs:
        if depth >= count:
            depth -= count
            continue
        out.append((first + depth, count - depth))
        depth = 0
    return out


class _Tier(PrefixCache):
    """One tier: a PrefixCache that can hand over what it evicts and drop given keys."""

    def __init__(self, name: str, capacity_blocks: int, policy: str | EvictionPolicy) -> None:
        super().__init__(capacity_blocks, policy)
        self.name = name

    def pin(self, runs: Runs, alloc_blocks: int) -> None:
        """The pinning half of :meth:`PrefixCache.begin`, for a request already served."""
        self._held += alloc_blocks - sum(count for _, count in runs)
        for run in runs:
            self._pins[run] = self._pins.get(run, 0) + 1
        self._update_pins()

    def store(self, runs: Runs, n_keys: int) -> tuple[int, int]:
        """Inclusive mode: store or refresh the request's full blocks; return (stored, evicted)."""
        if not n_keys or n_keys > self.capacity_blocks:
            return 0, 0
        before = self._size
        evicted = self.serve_runs(runs, n_keys, n_keys).evicted
        return self._size - before + evicted, evicted

    def discard(self, runs: Runs) -> None:
        """Exclusive mode: drop the request's blocks (they are on the GPU now)."""
        if self._size:
            self._size -= self.policy.discard(runs)

    def take(self, victims: list, keep_victims: bool) -> tuple[int, int, list]:
        """Exclusive mode: keep the upper tier's ``victims`` ((lo, hi) ranges in eviction order)
        as this tier's most recent blocks; return (stored, evicted, what moves on down) -- this
        tier's own victims and the oldest incoming ones that do not fit, in eviction order,
        if ``keep_victims`` (else nothing: they are dropped)."""
        m = sum(hi - lo for lo, hi in victims)
        out: list = []
        if not m:
            return 0, 0, out
        passed: list = []
        over = m - self.capacity_blocks
        if over > 0:  # the first victims would be evicted at once: they pass through
            kept = []
            for lo, hi in victims:
                if over >= hi - lo:
                    passed.append((lo, hi))
                    over -= hi - lo
                elif over:
                    passed.append((hi - over, hi))
                    kept.append((lo, hi - over))
                    over = 0
                else:
                    kept.append((lo, hi))
            victims = kept
            m = self.capacity_blocks
        evicted = 0
        if m:
            # Last evicted = most recent = the head of this "request"; a range's keys went
            # from hi - 1 down to lo, so lo is its most recent.
            runs = [(lo, hi - lo) for lo, hi in reversed(victims)]
            self._victims = out if keep_victims else None
            evicted = self.serve_runs(runs, 0, m).evicted
            self._victims = None
        if keep_victims:
            out.extend(passed)
        return m, evicted, out


def _check_blocks(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (got {value!r})")
    return int(value)


class TieredCache:
    """Tiered prefix cache: ``gpu_blocks`` of GPU, ``cpu_blocks`` of CPU and optionally
    ``disk_blocks`` of disk (0: no disk tier), semantics in the module docstring.

    ``policy`` is every tier's eviction policy (a name of :data:`~kvsim.policies.POLICIES`, or
    a new, empty policy object: then the GPU's, the tiers below get new ones of its name);
    ``cpu_policy`` and ``disk_policy`` (names or objects) override it below the GPU. ``mode`` is ``"inclusive"`` or ``"exclusive"``. ``block_size`` (tokens per block),
    if given, adds token figures to :meth:`traffic`.

    As a :class:`~kvsim.cache.PrefixCache`: :meth:`serve`, :meth:`serve_runs`, :meth:`runs`,
    :meth:`begin`, :meth:`end`, :meth:`fits`, :meth:`lookup`, :attr:`free_blocks`,
    :attr:`in_service_blocks`, ``len()``, ``in`` and :meth:`keys` (the GPU's),
    :attr:`capacity_blocks` (the GPU's), counters :attr:`requests`, :attr:`oversized`,
    :attr:`evictions` (GPU evictions). Per tier (lists, GPU first, names in :attr:`tiers`):
    :attr:`tier_hits`, :attr:`stored_blocks`, :attr:`tier_evictions`.
    """

    def __init__(self, gpu_blocks: int, cpu_blocks: int, disk_blocks: int = 0,
                 policy: str | EvictionPolicy = "lru", *, cpu_policy: str | EvictionPolicy | None = None,
                 disk_policy: str | EvictionPolicy | None = None, mode: str = "inclusive",
                 block_size: int | None = None) -> None:
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"mode must be one of {', '.join(OFFLOAD_MODES)} (got {mode!r})")
        sizes = [_check_blocks("gpu_blocks", gpu_blocks), _check_blocks("cpu_blocks", cpu_blocks)]
        if _check_blocks("disk_blocks", disk_blocks):
            sizes.append(int(disk_blocks))
        if block_size is not None and (not isinstance(block_size, numbers.Integral) or isinstance(block_size, bool)
                                       or block_size < 1):
            raise ValueError(f"block_size must be an int >= 1 (got {block_size!r})")
        # A policy object serves one tier: below the GPU the default is a new one of its name.
        below = policy if isinstance(policy, str) else getattr(policy, "name", policy)
        policies = [policy, below if cpu_policy is None else cpu_policy,
                    below if disk_policy is None else disk_policy][: len(sizes)]
        self.mode = mode
        self.block_size = None if block_size is None else int(block_size)
        self._tiers = [_Tier(name, size, p) for name, size, p in zip(TIER_NAMES, sizes, policies)]
        if mode == "exclusive":
            for tier in self._tiers:
                if not supports_tiers(tier.policy):
                    raise ValueError(f"exclusive mode needs {tier.name} policy {tier.policy.name!r} to support "
                                     f"evict(victims=) and discard() (lru, fifo, lfu do)")
        self._gpu = self._tiers[0]
        self._lower = [t for t in self._tiers[1:]]
        # Nothing below the GPU can hold a block: serve as the GPU alone.
        self._single = not any(t.capacity_blocks for t in self._lower)
        self.tiers = tuple(t.name for t in self._tiers)
        self.capacity_blocks = self._gpu.capacity_blocks
        self.requests = 0
        self.oversized = 0
        n = len(self._tiers)
        self.tier_hits = [0] * n
        self.stored_blocks = [0] * n
        self.tier_evictions = [0] * n
        self._zeros = (0,) * n

    # ------------------------------------------------------------------ serving

    def serve(self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int) -> TieredServeResult:
        """Serve one request and return its :class:`TieredServeResult`."""
        return self.serve_runs(self.runs(keys), max_hit_blocks, alloc_blocks)

    def runs(self, keys: Sequence[Hashable]) -> list[tuple[int, int]]:
        """``keys`` as the runs :meth:`serve_runs` takes (as :meth:`PrefixCache.runs`)."""
        return self._gpu.runs(keys)

    def serve_runs(self, runs: Runs, max_hit_blocks: int, alloc_blocks: int) -> TieredServeResult:
        """Serve the request whose keys are ``runs`` (as :meth:`PrefixCache.serve_runs`)."""
        gpu = self._gpu
        zeros = self._zeros
        if self._single:
            r = gpu.serve_runs(runs, max_hit_blocks, alloc_blocks)  # checks the arguments
            self.requests += 1
            if r.oversized:
                self.oversized += 1
                return _result(0, 0, True, zeros, zeros, zeros)
            hit, evicted = r.hit_blocks, r.evicted
            self.tier_hits[0] += hit
            self.tier_evictions[0] += evicted
            rest = zeros[1:]
            return _result(hit, evicted, False, (hit,) + rest, zeros, (evicted,) + rest)
        exclusive = self.mode == "exclusive"
        victims: list | None = [] if exclusive else None
        gpu._victims = victims
        try:
            r = gpu.serve_runs(runs, max_hit_blocks, alloc_blocks)
        finally:
            gpu._victims = None
        self.requests += 1
        if r.oversized:
            self.oversized += 1
            return _result(0, 0, True, zeros, zeros, zeros)
        # Lookups below the GPU (the GPU's serve changed nothing there).
        hits = self._continued(runs, max_hit_blocks, r.hit_blocks)
        total = sum(hits)
        stored = [0]
        tier_evicted = [r.evicted]
        if exclusive:
            for tier in self._lower:
                tier.discard(runs)
            last = len(self._lower) - 1
            for i, tier in enumerate(self._lower):
                s, e, victims = tier.take(victims, i < last)
                stored.append(s)
                tier_evicted.append(e)
        else:
            n_keys = sum(count for _, count in runs)
            for tier in self._lower:
                s, e = tier.store(runs, n_keys)
                stored.append(s)
                tier_evicted.append(e)
        for i, (h, s, e) in enumerate(zip(hits, stored, tier_evicted)):
            self.tier_hits[i] += h
            self.stored_blocks[i] += s
            self.tier_evictions[i] += e
        return _result(total, r.evicted, False, tuple(hits), tuple(stored), tuple(tier_evicted))

    def fits(self, runs: Runs, alloc_blocks: int) -> bool:
        """Whether the request can :meth:`begin` now (room on the GPU, see :meth:`PrefixCache.fits`)."""
        return self._gpu.fits(runs, alloc_blocks)

    def begin(self, runs: Runs, max_hit_blocks: int, alloc_blocks: int) -> TieredServeResult:
        """Start serving a request: as :meth:`serve_runs`, its GPU blocks pinned and its partial
        block held until :meth:`end` (see :meth:`PrefixCache.begin`)."""
        gpu = self._gpu
        if alloc_blocks <= gpu.capacity_blocks and not gpu.fits(runs, alloc_blocks):
            raise ValueError("the request does not fit beside the requests in service (check fits() first)")
        result = self.serve_runs(runs, max_hit_blocks, alloc_blocks)
        if not result.oversized:
            gpu.pin(runs, alloc_blocks)
        return result

    def end(self, runs: Runs, alloc_blocks: int) -> None:
        """Finish a request started by :meth:`begin`."""
        self._gpu.end(runs, alloc_blocks)

    def lookup_tiers(self, runs: Runs, max_hit_blocks: int) -> tuple[int, ...]:
        """The hit blocks a request would find now in each tier, changing nothing."""
        return tuple(self._continued(runs, max_hit_blocks, self._gpu.lookup(runs, max_hit_blocks)))

    def _continued(self, runs: Runs, max_hit_blocks: int, gpu_hit: int) -> list[int]:
        """The hit of each tier, GPU first: the GPU's ``gpu_hit``, then the run each lower tier
        continues from where the tiers above stopped (capped at ``max_hit_blocks`` in all)."""
        total = gpu_hit
        hits = [total]
        for tier in self._lower:
            h = 0
            if total < max_hit_blocks and tier._size:
                h = tier.lookup(_after(runs, total), max_hit_blocks - total)
            hits.append(h)
            total += h
        return hits

    def lookup(self, runs: Runs, max_hit_blocks: int) -> int:
        """The whole hit a request would find now (``hit_blocks`` of :meth:`serve_runs`)."""
        return sum(self.lookup_tiers(runs, max_hit_blocks))

    # ------------------------------------------------------------------ state

    @property
    def evictions(self) -> int:
        """Blocks evicted from the GPU (in exclusive mode: moved down to the CPU tier)."""
        return self._gpu.evictions

    @property
    def in_service_blocks(self) -> int:
        return self._gpu.in_service_blocks

    @property
    def free_blocks(self) -> int:
        return self._gpu.free_blocks

    @property
    def tier_capacities(self) -> tuple[int, ...]:
        return tuple(t.capacity_blocks for t in self._tiers)

    def tier_sizes(self) -> tuple[int, ...]:
        """Cached blocks in each tier."""
        return tuple(len(t) for t in self._tiers)

    def tier_keys(self, tier: int | str) -> set[Hashable]:
        """The keys cached in one tier (by index or name)."""
        t = self._tiers[self.tiers.index(tier) if isinstance(tier, str) else tier]
        interned = self._gpu._interned
        return {k if k < _INTERNED else interned[k - _INTERNED] for k in t.policy}

    def traffic(self) -> list[dict]:
        """Per tier: capacity, cached, hit (= loaded up, below the GPU), stored and evicted
        blocks so far, and the same in tokens when ``block_size`` was given."""
        out = []
        bs = self.block_size
        for i, t in enumerate(self._tiers):
            row = {"tier": t.name, "capacity_blocks": t.capacity_blocks, "cached_blocks": len(t),
                   "hit_blocks": self.tier_hits[i], "loaded_blocks": self.tier_hits[i] if i else 0,
                   "stored_blocks": self.stored_blocks[i], "evictions": self.tier_evictions[i]}
            if bs is not None:
                row.update(loaded_tokens=row["loaded_blocks"] * bs, stored_tokens=row["stored_blocks"] * bs)
            out.append(row)
        return out

    def __len__(self) -> int:
        return len(self._gpu)

    def __contains__(self, key: object) -> bool:
        return key in self._gpu

    def keys(self) -> set[Hashable]:
        """The keys cached on the GPU."""
        return self._gpu.keys()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t.name}={len(t)}/{t.capacity_blocks}" for t in self._tiers)
        return f"TieredCache({sizes}, mode={self.mode!r}, policies={[t.policy.name for t in self._tiers]})"



def make_cache(capacity_blocks: int, policy: str | EvictionPolicy = "lru", tiers: Tiers | None = None,
               block_size: int | None = None) -> PrefixCache | TieredCache:
    """The cache a simulation or a replay serves through: a :class:`~kvsim.cache.PrefixCache` of
    ``capacity_blocks`` (the GPU) or, with ``tiers`` (:class:`analytic.specs.Tiers`), a
    :class:`TieredCache` with those tiers below it (a zero-size CPU tier gives the same results as
    the PrefixCache, with per-tier figures)."""
    if tiers is None:
        return PrefixCache(capacity_blocks, policy)
    if not isinstance(tiers, Tiers):
        raise ValueError(f"tiers must be an analytic.specs.Tiers (got {type(tiers).__name__})")
    return TieredCache(capacity_blocks, tiers.cpu_blocks, tiers.disk_blocks, policy, mode=tiers.mode,
                       block_size=block_size)


def tier_tokens(tier_hits: Sequence[int], block_size: int, prompt_tokens: int) -> list[int]:
    """The hit tokens found in each tier, GPU first: the hit run is the GPU's blocks, then each
    lower tier's, so a tier's tokens are its part of ``min(hit blocks x block_size, prompt_tokens)``."""
    out = []
    depth = tokens = 0
    for h in tier_hits:
        depth += h
        reached = min(depth * block_size, prompt_tokens)
        out.append(reached - tokens)
        tokens = reached
    return out
