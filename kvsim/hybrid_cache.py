"""The prefix cache of a hybrid model, as vLLM 0.33's hybrid KV cache manager keeps it.

A hybrid model's layers form KV cache *groups* (:class:`CacheGroup`, in vLLM's order): full
attention, sliding window, Mamba / linear attention. All groups share one pool of
``capacity_blocks`` blocks and one LRU queue; a block is cached under its group and the key of its
full block of tokens (vLLM's ``(block hash, group id)``), so a key is cached once per group. A
request is served as vLLM's scheduler serves it alone, in blocks of ``block_size``: lookup, prefill
of its prompt, decode of the rest of its tokens one by one, free.

* **Lookup** (vLLM's ``HybridKVCacheCoordinator``): full attention, the leading run of cached
  keys (at most ``max_hit_blocks``); sliding window W, below that, the right-most run of
  ``cdiv(W - 1, block_size)`` cached blocks ends the hit (or a shorter run from the first block);
  Mamba, the right-most block below it whose state is cached. The groups of one kind are looked
  up together (a key counts if each of them has it); full attention first, and the hit is lowered
  until every kind accepts it.
* **Admission**: the whole prompt must fit in the pool at once (vLLM's
  ``scheduler_reserve_full_isl``), then each step; a request that does not is *oversized*: served
  uncached, the cache left as it was.
* **Prefill**: one chunk (a step budget larger than the prompt), except that with Mamba groups in
  mode ``align`` the scheduler ends a chunk at the *junction* (the full-attention hit, when no
  Mamba state was cached there: the next request sharing that prefix finds one) and, for mixers
  without a mid-prefill checkpoint (Mamba1), at the prompt's last block boundary before its last
  token.
* **Blocks a group holds** (per step, as vLLM's single-type managers): full attention, every
  block; sliding window, every block from the window before the hit on (the hit's blocks before it
  stay where they are in the queue); Mamba ``align``, the hit's state, then per step the running
  state (a block boundary's state once it is full) and, in a prefill chunk of a checkpoint mixer
  (Mamba2, Gated DeltaNet), the state one block before the chunk's end; Mamba ``all`` (vLLM before
  0.33: a state at every block boundary), every block from the hit's state on. Before each step
  but the first, a sliding group frees the blocks that left its window, a Mamba group its
  superseded states: early, to the tail of the LRU queue, still cached.
* **Cached**: every full block a group holds (a state block: the state at its end). At the end the
  request's blocks are freed group by group in vLLM's order, each group's deepest first, the
  partial last ones uncached.
* **Eviction**: vLLM's free queue: uncached free blocks are taken first, then cached blocks,
  least recently freed first. With ``policy="fifo"`` (not vLLM's: the FIFO model's reference) a
  request's hits stay where they are in the queue instead of going back to its tail, spared while
  it holds them: a cached block keeps the place it took when first freed.

One corner differs from vLLM, as in :class:`~kvsim.cache.PrefixCache` (DESIGN.md §3): a block the
request computes although its key is cached (beyond the agreed hit) takes the cached copy as its
own, where vLLM computes a duplicate in a new block and keeps both until evicted.
:class:`ReferenceHybridCache` does either; ``experiments/engine_parity.py --hybrid`` compares them
with vLLM. With one full-attention group, :class:`HybridCache` is :class:`~kvsim.cache.PrefixCache`
(LRU) bit for bit.

:class:`HybridCache` works per run of keys (``serve_runs``, as PrefixCache): the pool is one
run-based LRU (:class:`~kvsim.policies.LRUPolicy`) over the keys of every group (group ``g``'s keys
shifted by ``g * 2**66``; the decode's frees under mirrored keys, see :meth:`HybridCache._mirror`),
and a request costs per run of keys and per step that frees or allocates, not per block.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from analytic.hybrid import plan
from analytic.scenario import MAMBA_PREFIX_CACHE_MODES as MAMBA_CACHE_MODES
from analytic.specs import ModelSpec
from kvsim.cache import PrefixCache, ServeResult, _check_capacity, _check_request, check_runs
from kvsim.policies.base import Runs
from kvsim.policies.lru import LRUPolicy

__all__ = ["CacheGroup", "HybridCache", "HybridLayout", "ReferenceHybridCache", "vllm_layout"]

GROUP_KINDS = ("full", "sliding", "mamba")
# The pool's eviction order: vLLM's LRU free queue, or FIFO (the block hashed longest ago goes
# first; a hit keeps its place), the single-group FIFO's rule, for the FIFO model's validation.
POLICIES = ("lru", "fifo")
_KEY_END = 1 << 65  # keys are below (PrefixCache interns other keys from 2**64 on)
_GROUP_SHIFT = 1 << 66  # group g's keys are shifted by g * _GROUP_SHIFT
_MAX_GROUPS_OF_A_KIND = 256


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class CacheGroup:
    """One of vLLM's KV cache groups: its kind (:data:`GROUP_KINDS`), a sliding group's window in
    tokens, and whether a Mamba group's mixer exports a mid-prefill checkpoint (vLLM's
    ``num_prefill_checkpoint_blocks > 0``: Mamba2, Gated DeltaNet; not Mamba1)."""

    kind: str
    window: int = 0
    checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.kind not in GROUP_KINDS:
            raise ValueError(f"group kind must be one of {', '.join(GROUP_KINDS)} (got {self.kind!r})")
        if (self.kind == "sliding") != (self.window > 0):
            raise ValueError(f"sliding-window must be > 0 for a sliding group and 0 otherwise (got {self.window!r} "
                             f"for a {self.kind} group)")
        if self.checkpoint and self.kind != "mamba":
            raise ValueError(f"checkpoint applies to mamba groups only (a {self.kind} group got it)")


@dataclass(frozen=True)
class HybridLayout:
    """A pool's KV cache groups (in vLLM's order), its block size and vLLM's Mamba caching mode:
    what a :class:`HybridCache` needs beside its capacity."""

    groups: tuple[CacheGroup, ...]
    block_size: int
    mamba_cache_mode: str = "align"
    policy: str = "lru"

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", _check_groups(self.groups, self.block_size, self.mamba_cache_mode))
        _check_policy(self.policy)

    def cache(self, capacity_blocks: int) -> HybridCache:
        return HybridCache(capacity_blocks, self.groups, self.block_size, self.mamba_cache_mode, self.policy)

    def as_dict(self) -> dict:
        return {"groups": [{"kind": g.kind, **({"window": g.window} if g.window else {}),
                            **({"checkpoint": g.checkpoint} if g.kind == "mamba" else {})} for g in self.groups],
                "block_size": self.block_size, "mamba_cache_mode": self.mamba_cache_mode, "policy": self.policy}

    @classmethod
    def from_dict(cls, d: dict) -> HybridLayout:
        return cls(tuple(CacheGroup(**g) for g in d["groups"]), d["block_size"], d["mamba_cache_mode"],
                   d.get("policy", "lru"))

    def describe(self) -> str:
        """The groups in words: "1 sliding 128 + 1 full KV cache groups, one LRU queue"."""
        counts: dict[CacheGroup, int] = {}
        for g in self.groups:
            counts[g] = counts.get(g, 0) + 1
        names = {"full": "full", "sliding": "sliding {}", "mamba": "mamba"}
        kinds = " + ".join(f"{n} {names[g.kind].format(g.window)}" for g, n in counts.items())
        mamba = any(g.kind == "mamba" for g in self.groups)
        return f"{kinds} KV cache groups, one {self.policy.upper()} queue" + (
            f"; Mamba states cached as {self.mamba_cache_mode}" if mamba else "")


def vllm_layout(model: ModelSpec, block_size: int = 16, *, kv_dtype: str = "bf16", tp: int = 1,
                mamba_cache_mode: str = "align", policy: str = "lru") -> HybridLayout:
    """vLLM's hybrid KV cache manager for ``model`` run with ``--block-size block_size``: its KV cache
    groups and its block size (:func:`analytic.hybrid.plan`: a Mamba state may need larger blocks).

    vLLM lists the groups in the order their kind first appears in the layers; layer 0 of every
    hybrid model we know (gpt-oss, Gemma 2 and 3, Phi-3, Qwen3-Next, Jamba, Nemotron-H) is a
    sliding-window or SSM layer, so full attention comes last. The block size is align's, 0.33's
    only caching mode (the older mode all differs only in not aligning it to Mamba checkpoints).
    """
    # Any memory will do: the groups and the block size do not depend on it.
    p = plan(model, 1.0, kv_dtype=kv_dtype, block_size=block_size, tp=tp)
    groups: list[CacheGroup] = []
    for layers, g in sorted(zip(model.groups, p.groups), key=lambda pair: pair[1].kind == "full"):
        groups += [CacheGroup(g.kind, g.window, g.kind == "mamba" and layers.checkpoint_blocks > 0)] * g.groups
    return HybridLayout(tuple(groups), p.block_size, mamba_cache_mode, policy)


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"policy: a hybrid model's pool is one of {', '.join(POLICIES)} (got {policy!r})")
    return policy


def _check_groups(groups: Sequence[CacheGroup], block_size: int, mamba_cache_mode: str) -> tuple[CacheGroup, ...]:
    groups = tuple(groups)
    if not groups or not all(isinstance(g, CacheGroup) for g in groups):
        raise ValueError(f"groups must be one or more CacheGroup (got {groups!r})")
    if type(block_size) is not int or block_size < 1:
        raise ValueError(f"block-size must be an integer >= 1 (got {block_size!r})")
    if mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise ValueError(f"mamba-cache-mode must be one of {', '.join(MAMBA_CACHE_MODES)} (got {mamba_cache_mode!r})")
    return groups


def _spec_groups(groups: tuple[CacheGroup, ...]) -> list[tuple[CacheGroup, list[int]]]:
    """Groups of equal spec, looked up together (vLLM's SpecGroup), full attention first."""
    specs: dict[CacheGroup, list[int]] = {}
    for g, group in enumerate(groups):
        specs.setdefault(group, []).append(g)
    return sorted(specs.items(), key=lambda item: item[0].kind != "full")


def _agree(specs: list[tuple[CacheGroup, list[int]]], find, max_hit_blocks: int) -> tuple[int, int]:
    """vLLM's coordinator (``HybridKVCacheCoordinator.find_longest_cache_hit``): ``(the hit every kind
    accepts, the longest hit of one kind)``. ``find(spec, ids, limit)`` is the longest hit of at most
    ``limit`` blocks the groups ``ids`` of kind ``spec`` accept; full attention's is found once (it
    accepts any shorter hit), and the others' again until none lowers it; with two kinds, full
    attention first, once is enough."""
    hit, longest, found = max_hit_blocks, 0, {}
    simple = len(specs) == 2 and specs[0][0].kind == "full"
    while True:
        current = hit
        for spec, ids in specs:
            if spec.kind == "full" and spec in found:
                current = min(current, found[spec])
                continue
            current = found[spec] = find(spec, ids, current)
            longest = max(longest, current)
        if current >= hit or simple:
            return current, longest
        hit = current


def _prefill_stops(groups: tuple[CacheGroup, ...], mamba_cache_mode: str, block_size: int, start: int,
                   junction: int, prompt: int) -> list[int]:
    """Where vLLM's scheduler ends the prefill chunks of a prompt of ``prompt`` tokens computed from
    ``start`` (``_mamba_block_aligned_split``, a budget larger than the prompt): only Mamba groups in
    mode align stop it, at the junction (tokens) and, for mixers without a mid-prefill checkpoint,
    at the last block boundary before the last token. The prompt's end is the last stop."""
    mamba = [g for g in groups if g.kind == "mamba"]
    stops = {prompt}
    if mamba and mamba_cache_mode == "align":
        if start < junction < prompt:
            stops.add(junction)
        last_boundary = (prompt - 1) // block_size * block_size
        if not all(g.checkpoint for g in mamba) and start < last_boundary:
            stops.add(last_boundary)
    return sorted(stops)


def _steps(groups: tuple[CacheGroup, ...], mamba_cache_mode: str, bs: int, hit: int, junction: int, prompt: int,
           tokens: int) -> list[tuple[int, int]]:
    """The steps of a request alone, as ``(computed tokens before, after)``: its prefill chunks (the
    last ends at ``prompt``), then one decode step per token, of which only those that change a
    group's blocks are kept (a new block at a block boundary; a sliding window or a Mamba state moving
    past one)."""
    start = hit * bs
    steps = []
    for stop in _prefill_stops(groups, mamba_cache_mode, bs, start, junction * bs, prompt):
        steps.append((start, stop))
        start = stop
    offsets = {0} | {(g.window - 1) % bs for g in groups if g.kind == "sliding"}
    if any(g.kind == "mamba" for g in groups):
        offsets.add(1 % bs)
    decode = {prompt} if prompt < tokens else set()
    for offset in offsets:  # the tokens c, prompt <= c < tokens, with c = offset (mod bs)
        decode.update(range(prompt + (offset - prompt) % bs, tokens, bs))
    return steps + [(c, c + 1) for c in sorted(decode)]


# ---------------------------------------------------------------- position intervals


def _size(intervals) -> int:
    return sum(b - a for a, b in intervals)


def _clip(intervals, lo: int, hi: int) -> list[list[int]]:
    return [[max(a, lo), min(b, hi)] for a, b in intervals if max(a, lo) < min(b, hi)]


def _union(intervals) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and out[-1][1] >= a:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _minus(xs, ys) -> list[list[int]]:
    """``xs`` without ``ys`` (both sorted, disjoint)."""
    out, j = [], 0
    for a, b in xs:
        while j < len(ys) and ys[j][1] <= a:
            j += 1
        k = j
        while a < b and k < len(ys) and ys[k][0] < b:
            if ys[k][0] > a:
                out.append([a, ys[k][0]])
            a = max(a, ys[k][1])
            k += 1
        if a < b:
            out.append([a, b])
    return out


class _Pool(LRUPolicy):
    """vLLM's free queue of cached blocks, run-based: LRU over the group-shifted (and mirrored) keys,
    each request's freed blocks one LRU group in the order they leave (its last run first, each run
    from its highest key down)."""

    def covered(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The cached parts of the keys ``lo .. hi - 1``, in key order."""
        return [(max(p[0], lo), min(p[1], hi)) for p in self._overlapping(lo, hi)]

    def insert(self, runs: Runs) -> None:
        """Free the blocks of ``runs`` (none cached now) to the tail, the deepest first out."""
        if runs:
            self.acquire(runs, 0)
            self.release(runs, 0)


class HybridCache:
    """The prefix cache of a hybrid model (see the module docstring): ``capacity_blocks`` blocks
    shared by ``groups`` (:class:`CacheGroup`, in vLLM's order) in blocks of ``block_size`` tokens;
    Mamba states cached as vLLM's ``mamba_cache_mode`` (:data:`MAMBA_CACHE_MODES`) does.

    Served like :class:`~kvsim.cache.PrefixCache` (:meth:`serve`, :meth:`serve_runs`), with the
    request's token counts besides; counters :attr:`requests`, :attr:`oversized`,
    :attr:`evictions`; ``len`` is the cached blocks of every group.
    """

    # Keys that are not small ints are interned as PrefixCache interns them.
    runs = PrefixCache.runs
    _id = PrefixCache._id

    def __init__(self, capacity_blocks: int, groups: Sequence[CacheGroup], block_size: int,
                 mamba_cache_mode: str = "align", policy: str = "lru") -> None:
        self.capacity_blocks = _check_capacity(capacity_blocks)
        self.groups = _check_groups(groups, block_size, mamba_cache_mode)
        self.block_size = block_size
        self.mamba_cache_mode = mamba_cache_mode
        self.policy = _check_policy(policy)
        self.requests = self.oversized = self.evictions = 0
        self._specs = _spec_groups(self.groups)
        self._kind_of = [0] * len(self.groups)  # group -> its index in _specs
        self._rank = [0] * len(self.groups)  # group -> its index among the groups of its kind
        for i, (_, ids) in enumerate(self._specs):
            if len(ids) > _MAX_GROUPS_OF_A_KIND:
                raise ValueError(f"groups: at most {_MAX_GROUPS_OF_A_KIND} groups of one kind (got {len(ids)})")
            for rank, g in enumerate(ids):
                self._kind_of[g], self._rank[g] = i, rank
        # The mirror of kind i: where its decode frees are kept (see _mirror).
        self._mirror_base = [(len(self.groups) + 1 + i) * _GROUP_SHIFT * _MAX_GROUPS_OF_A_KIND
                             for i in range(len(self._specs))]
        self._pool = _Pool()
        self._uncached = self.capacity_blocks  # free blocks without a hash: the front of vLLM's queue
        self._pooled = 0  # free blocks with a hash: in the pool (between requests, every cached block)
        self._ids: dict[Hashable, int] = {}
        self._interned: list[Hashable] = []

    def __len__(self) -> int:
        return self._pooled

    def __repr__(self) -> str:
        return (f"HybridCache(capacity_blocks={self.capacity_blocks}, groups={len(self.groups)}, "
                f"block_size={self.block_size}, cached={self._pooled})")

    def serve(self, keys: Sequence[Hashable], max_hit_blocks: int, alloc_blocks: int, prompt_tokens: int | None = None,
              tokens: int | None = None) -> ServeResult:
        """Serve one request and return its :class:`~kvsim.cache.ServeResult`: ``keys`` those of its
        full blocks, head first; it computes ``tokens`` tokens, ``prompt_tokens`` of them its prompt
        (prefilled; the others decoded one by one), ``alloc_blocks = cdiv(tokens, block_size)``;
        its hit is at most ``max_hit_blocks`` (at most ``(prompt_tokens - 1) // block_size``).
        Without token counts its blocks are all prompt."""
        return self.serve_runs(self.runs(keys), max_hit_blocks, alloc_blocks, prompt_tokens, tokens)

    # ---------------------------------------------------------------- keys <-> positions

    @staticmethod
    def _depths(runs: Runs) -> list[int]:
        depths, d = [], 0
        for _, count in runs:
            depths.append(d)
            d += count
        return depths

    @staticmethod
    def _keys(runs: Runs, depths: list[int], intervals, shift: int) -> list[tuple[int, int]]:
        """The group-shifted keys at the positions ``intervals``, as runs in depth order."""
        out = []
        for lo, hi in intervals:
            i = bisect_right(depths, lo) - 1
            while lo < hi:
                first, count = runs[i]
                end = min(depths[i] + count, hi)
                key = first + shift + lo - depths[i]
                if out and out[-1][0] + out[-1][1] == key:  # adjacent positions of consecutive keys
                    out[-1] = (out[-1][0], out[-1][1] + end - lo)
                else:
                    out.append((key, end - lo))
                lo = end
                i += 1
        return out

    # A group's blocks are kept under its shifted keys (key + g * 2**66), the pool evicting a run of
    # them from the highest key down: a group's blocks freed deepest first, as vLLM frees them at the
    # end and when a prefill chunk or the decode starts. During the decode vLLM frees them one by one,
    # shallowest first, the groups of a kind in turn: those frees are kept under mirrored keys, in
    # which that order is again from the highest key down, so that a whole decode's frees of a kind
    # make one run: kind i's mirror of key k of its group of rank r is base_i - (k * n + r), n its
    # groups.

    def _mirror(self, g: int, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The mirrored keys of group ``g``'s keys ``runs`` (unshifted), as runs."""
        kind = self._kind_of[g]
        n, rank, base = len(self._specs[kind][1]), self._rank[g], self._mirror_base[kind]
        out = []
        for first, count in runs:
            if n == 1:
                out.append((base - (first + count - 1), count))
            else:
                out += [(base - (k * n + rank), 1) for k in range(first, first + count)]
        return out

    def _mirror_all(self, kind: int, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The mirrored keys of every group of ``kind`` at the keys ``runs`` (unshifted)."""
        n, base = len(self._specs[kind][1]), self._mirror_base[kind]
        return [(base - ((first + count) * n - 1), count * n) for first, count in runs]

    def _covered(self, runs: Runs, depths: list[int], g: int, lo: int, hi: int) -> list[list[int]]:
        """The positions in ``lo .. hi - 1`` whose key group ``g`` has cached, as intervals."""
        found: list[list[int]] = []
        kind = self._kind_of[g]
        n, rank, base = len(self._specs[kind][1]), self._rank[g], self._mirror_base[kind]
        mirrored = self._specs[kind][0].kind != "full"  # full attention frees nothing before the end
        for first, count in self._keys(runs, depths, [(lo, hi)], 0):
            for a, b in self._pool.covered(first + g * _GROUP_SHIFT, first + count + g * _GROUP_SHIFT):
                found.append([a - g * _GROUP_SHIFT - first + lo, b - g * _GROUP_SHIFT - first + lo])
            if mirrored:
                top = base - rank  # key k of this group is mirrored to top - k * n
                for a, b in self._pool.covered(top - (first + count - 1) * n, top - first * n + 1):
                    k_lo, k_hi = max(first, _cdiv(top - b + 1, n)), min(first + count - 1, (top - a) // n)
                    if k_lo <= k_hi:
                        found.append([k_lo - first + lo, k_hi + 1 - first + lo])
            lo += count
        return _union(found)

    # ---------------------------------------------------------------- lookup

    def _find(self, spec: CacheGroup, ids: list[int], runs: Runs, depths: list[int], limit: int) -> int:
        if limit <= 0:
            return 0
        if spec.kind == "full":
            return min(self._pool.cached_prefix([(f + g * _GROUP_SHIFT, c) for f, c in runs], limit) for g in ids)
        covered = self._covered(runs, depths, ids[0], 0, limit)
        for g in ids[1:]:  # only where the groups before have them
            covered = [iv for lo, hi in covered for iv in self._covered(runs, depths, g, lo, hi)]
        if spec.kind == "mamba":
            return covered[-1][1] if covered else 0
        need = _cdiv(spec.window - 1, self.block_size)
        for a, b in reversed(covered):
            if b - a >= need:
                return b
        return covered[0][1] if covered and covered[0][0] == 0 else 0

    def _lookup(self, runs: Runs, depths: list[int], max_hit_blocks: int) -> tuple[int, int]:
        """(the hit every kind of group accepts, the longest hit of one kind), in blocks."""
        return _agree(self._specs, lambda spec, ids, limit: self._find(spec, ids, runs, depths, limit), max_hit_blocks)

    def lookup(self, runs: Runs, max_hit_blocks: int) -> int:
        """The hit a request would find now (``hit_blocks`` of :meth:`serve_runs`), changing nothing."""
        check_runs(runs, max_hit_blocks, sum(count for _, count in runs))
        return self._lookup(runs, self._depths(runs), max_hit_blocks)[0]

    # ---------------------------------------------------------------- serving

    def _plan(self, spec: CacheGroup, hit: int, steps: list[tuple[int, int]], blocks: list[int]) -> tuple:
        """The blocks of a group of kind ``spec``, as positions: the intervals of the hit it takes;
        per step the intervals freed before it (None: none) and the ``(lo, hi)`` allocated in it
        (vLLM's remove_skipped_blocks and allocate_new_blocks); the intervals it holds at the end.
        ``blocks``: the table's length after each step."""
        bs = self.block_size
        freed_per_step, new_per_step = [], []
        length = hit  # the block table's length: positions allocated so far, nulls included
        if spec.kind == "mamba" and self.mamba_cache_mode == "align":
            live = [[hit - 1, hit]] if hit else []
            taken = list(live)
            for i, (start, end) in enumerate(steps):
                # superseded states: all but the running one
                freed = _clip(live, 0, (start - 1) // bs) if i and live else None
                if freed:
                    live = _minus(live, freed)
                lo = max(length, blocks[i] - 1 - (spec.checkpoint and start % bs == 0
                                                  and (end - 1) // bs * bs >= start + bs))
                if lo < blocks[i]:
                    live.append([lo, blocks[i]])
                    length = blocks[i]
                freed_per_step.append(freed or None)
                new_per_step.append((lo, max(lo, blocks[i])))
            return taken, freed_per_step, new_per_step, live
        window = spec.window - 1 if spec.kind == "sliding" else None
        if spec.kind == "full":
            first = 0
        elif window is not None:
            first = max(0, (hit * bs - window) // bs)
        else:  # mamba, mode all: a state per block, all but the last one freed
            first = max(0, hit - 1)
        taken = [[first, hit]] if first < hit else []
        frees = spec.kind != "full"
        for i, (start, end) in enumerate(steps):
            freed = None
            if frees and i:
                skipped = min((start - 1) // bs if window is None else (start - window) // bs, length)
                if skipped > first:
                    freed = [[first, skipped]]
                    first = skipped
            freed_per_step.append(freed)
            new_per_step.append((length, blocks[i]))
            length = blocks[i]
        return taken, freed_per_step, new_per_step, [[first, length]] if first < length else []

    def serve_runs(self, runs: Runs, max_hit_blocks: int, alloc_blocks: int, prompt_tokens: int | None = None,
                   tokens: int | None = None) -> ServeResult:
        """Serve the request whose keys are ``runs``, ``(first_key, count)`` pairs of int keys in
        ``[0, 2**65)``, head first; as :meth:`serve` otherwise."""
        n_keys = check_runs(runs, max_hit_blocks, alloc_blocks)
        for first, count in runs:
            if not 0 <= first <= first + count <= _KEY_END:  # the groups' keys must not meet
                raise ValueError(f"keys must be ints in [0, 2**65) (got a run of {count} from {first})")
        prompt_tokens, tokens = self._tokens(max_hit_blocks, alloc_blocks, prompt_tokens, tokens)
        self.requests += 1
        depths = self._depths(runs)
        hit, longest = self._lookup(runs, depths, max_hit_blocks)
        steps = _steps(self.groups, self.mamba_cache_mode, self.block_size, hit, longest if longest > hit else 0,
                       prompt_tokens, tokens)
        n_steps = len(steps)
        blocks = [max(hit, _cdiv(end, self.block_size)) for _, end in steps]
        # The groups of one kind hold the same positions: a plan per kind (in the order of _specs).
        plans = [self._plan(spec, hit, steps, blocks) for spec, _ in self._specs]
        decode = sum(1 for start, _ in steps if start < prompt_tokens)  # the first decode step
        # Per step: the new blocks taken from the queue, the blocks freed, the uncached ones freed
        # (to the front of the queue: the next new blocks take them first).
        fresh, freed, uncached = [0] * n_steps, [0] * n_steps, [0] * n_steps
        held = 0
        for (taken, freed_per_step, new_per_step, _), (_, ids) in zip(plans, self._specs):
            n = len(ids)
            held += n * _size(taken)
            for i, (lo, hi) in enumerate(new_per_step):
                fresh[i] += n * (hi - lo)
            for i, intervals in enumerate(freed_per_step):
                if intervals:
                    size = _size(intervals)
                    freed[i] += n * size
                    if intervals[-1][1] > n_keys:  # blocks without a key (replay's outputs) are uncached
                        uncached[i] += n * (size - _size(_clip(intervals, 0, n_keys)))
        # The cached copies of the blocks the request computes are its own (PrefixCache's rule):
        # taken with its hits, before anything is evicted.
        own = []
        for g in range(len(self.groups)):
            new_per_step = plans[self._kind_of[g]][2]
            mine = []
            for lo, hi in _clip(_union([[lo, hi] for lo, hi in new_per_step if lo < hi]), 0, n_keys):
                mine += self._covered(runs, depths, g, lo, hi)
            own.append(mine)
            if mine:
                held += _size(mine)
                for i, (lo, hi) in enumerate(new_per_step):
                    if lo < hi:
                        fresh[i] -= hi - lo - _size(_minus([[lo, hi]], mine))
        # vLLM admits a request only if its whole prompt fits at once (scheduler_reserve_full_isl),
        # then each step must fit.
        prompt = [(hit * self.block_size, prompt_tokens)]
        whole = [self._plan(spec, hit, prompt, [_cdiv(prompt_tokens, self.block_size)]) for spec, _ in self._specs]
        peaks = [sum(len(ids) * (_size(taken) + hi - lo) for (taken, _, ((lo, hi),), _), (_, ids) in
                     zip(whole, self._specs))]
        for i in range(n_steps):
            held += fresh[i] - freed[i]
            peaks.append(held)
        if max(peaks) > self.capacity_blocks:
            self.oversized += 1
            return ServeResult(0, 0, True)
        evicted = self._serve_steps(runs, depths, plans, own, fresh, uncached, decode, n_keys)
        self.evictions += evicted
        return ServeResult(hit, evicted, False)

    def _tokens(self, max_hit_blocks: int, alloc_blocks: int, prompt_tokens: int | None,
                tokens: int | None) -> tuple[int, int]:
        """``(prompt tokens, tokens)``, checked; not given: the request's blocks are all prompt."""
        if prompt_tokens is None and tokens is None:
            prompt_tokens = tokens = alloc_blocks * self.block_size
        if (type(prompt_tokens) is not int or type(tokens) is not int or not 1 <= prompt_tokens <= tokens
                or _cdiv(tokens, self.block_size) != alloc_blocks):
            raise ValueError(f"tokens must be ints with 1 <= prompt_tokens <= tokens and alloc_blocks = "
                             f"cdiv(tokens, block_size) = {alloc_blocks} (got {prompt_tokens!r}, {tokens!r})")
        if max_hit_blocks > (prompt_tokens - 1) // self.block_size:
            raise ValueError(f"max_hit_blocks must be <= (prompt_tokens - 1) // block_size = "
                             f"{(prompt_tokens - 1) // self.block_size}: vLLM computes at least one prompt token "
                             f"(got {max_hit_blocks!r})")
        return prompt_tokens, tokens

    def _serve_steps(self, runs: Runs, depths: list[int], plans: list, own: list, fresh: list, uncached: list,
                     decode: int, n_keys: int) -> int:
        """Take the request's cached blocks out of the queue, run its steps (frees to the tail, or to
        the front when uncached; new blocks from the front), free it; return the blocks evicted.
        Steps from ``decode`` on are the decode's.

        The blocks freed go back as one LRU group of the pool at the end, in their order (the pool
        evicts an LRU group's last run first, so the list is built backwards), and the evictions are
        done at once: the same blocks as step by step, unless the request's new blocks need more
        than the queue held before it (a request nearly the pool's size), which then goes step by
        step, its own frees joining the queue as they happen."""
        pool = self._pool
        kind_of = self._kind_of
        fifo = self.policy == "fifo"
        shifts = [g * _GROUP_SHIFT for g in range(len(self.groups))]
        removed = 0
        if not fifo:  # LRU: the hits leave the queue, to go back to its tail (FIFO: they stay in place)
            for i, (taken, *_) in enumerate(plans):
                if taken:
                    removed += pool.discard(self._pool_keys(i, self._keys(runs, depths, taken, 0)))
        for g, mine in enumerate(own):
            if mine:
                keys = self._keys(runs, depths, mine, 0)
                removed += pool.discard([(k + shifts[g], c) for k, c in keys])
                if self.groups[g].kind != "full":
                    removed += pool.discard(self._mirror(g, keys))
        self._pooled -= removed
        stages = self._fifo_stages(runs, depths, plans) if fifo else [(0, [], 0)]
        firsts = [first for first, *_ in stages]
        ends = firsts[1:] + [len(fresh)]

        def hashed(plan: tuple, intervals: list) -> list:
            """The blocks of ``intervals`` with a key, less (FIFO) the hits, which never left the queue."""
            intervals = intervals if intervals[-1][1] <= n_keys else _clip(intervals, 0, n_keys)
            return _minus(intervals, plan[0]) if fifo and intervals else intervals

        # The hashed blocks each kind frees in each step, as keys (shifted per group below).
        freed_keys = [[self._keys(runs, depths, hashed(plan, freed), 0) if freed else None for freed in plan[1]]
                      for plan in plans]
        steps_freeing = sorted({i for plan in plans for i, freed in enumerate(plan[1]) if freed})

        def freed_by(g: int, i: int) -> list | None:
            keys = freed_keys[kind_of[g]][i]
            if not keys:
                return None
            if i >= decode and len(keys) == 1 and keys[0][1] == 1:  # a decode step's one block: mirrored
                return self._mirror(g, keys)
            return [(k + shifts[g], c) for k, c in keys]

        front, evictions = self._uncached, []
        for i, n in enumerate(fresh):
            front += uncached[i]
            reused = min(n, front)
            front -= reused
            evictions.append(n - reused)
        freed_lists: list[list] = []  # the hashed frees of each step and group, in time order
        pooled, at_once = self._pooled, True
        for (first, _, spared), end in zip(stages, ends):
            pooled -= sum(evictions[first:end])
            at_once = at_once and pooled >= spared
        if at_once:
            for (first, pinned, _), end in zip(stages, ends):
                if sum(evictions[first:end]):
                    pool.evict(sum(evictions[first:end]), pinned)
            self._pooled -= sum(evictions)
            self._uncached = front
            for i in steps_freeing:
                for g in range(len(shifts)):
                    keys = freed_by(g, i)
                    if keys:
                        freed_lists.append(keys)
        else:
            for i, n in enumerate(fresh):
                for g in range(len(shifts)):
                    keys = freed_by(g, i)
                    if keys:
                        freed_lists.append(keys)
                self._uncached += uncached[i]
                reused = min(n, self._uncached)
                self._uncached -= reused
                if n > reused:
                    _, pinned, spared = stages[bisect_right(firsts, i) - 1]
                    if n - reused > self._pooled - spared:  # nothing older left: the request's own frees go first
                        self._put_back(freed_lists)
                    pool.evict(n - reused, pinned)
                    self._pooled -= n - reused
        for g, shift in enumerate(shifts):  # vLLM frees group by group, each group's blocks deepest first
            live = plans[kind_of[g]][3]
            keyed = hashed(plans[kind_of[g]], live) if live else []
            if keyed:
                freed_lists.append([(k + shift, c) for k, c in self._keys(runs, depths, keyed, 0)])
            self._uncached += _size(live) - _size(_clip(live, 0, n_keys))  # partial last blocks: uncached, to the front
        self._put_back(freed_lists)
        return sum(evictions)

    def _pool_keys(self, kind: int, keys: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The keys of positions ``keys`` in the groups of kind ``kind`` as the pool may hold them:
        shifted per group, and (but full attention) mirrored."""
        out = [(k + g * _GROUP_SHIFT, c) for g in self._specs[kind][1] for k, c in keys]
        return out + self._mirror_all(kind, keys) if keys and self._specs[kind][0].kind != "full" else out

    def _fifo_stages(self, runs: Runs, depths: list[int], plans: list) -> list[tuple[int, list, int]]:
        """FIFO leaves a request's hits in their place in the queue, spared by evictions while the
        request holds them (a sliding window or a Mamba group frees some early: from then on they
        can go, where they are). Per span of steps over which it holds the same hits: (its first
        step, the pool's keys of those hits as sorted ``(lo, hi)`` ranges, how many)."""
        held = [plan[0] for plan in plans]
        stages = []
        for i in range(len(plans[0][1])):
            if i:
                after = [_minus(h, plan[1][i]) if h and plan[1][i] else h for h, plan in zip(held, plans)]
                if all(_size(a) == _size(h) for a, h in zip(after, held)):
                    continue
                held = after
            pinned = sorted(part for kind, intervals in enumerate(held) if intervals
                            for first, count in self._pool_keys(kind, self._keys(runs, depths, intervals, 0))
                            for part in self._pool.covered(first, first + count))
            stages.append((i, pinned, sum(b - a for a, b in pinned)))
        return stages

    def _put_back(self, freed_lists: list[list]) -> None:
        """The freed blocks of ``freed_lists`` to the tail of the queue, the first list first out
        (adjacent runs merged: a decode's mirrored frees become one run)."""
        keys: list[tuple[int, int]] = []
        for runs in reversed(freed_lists):
            for first, count in runs:
                if keys and keys[-1][0] + keys[-1][1] == first:
                    keys[-1] = (keys[-1][0], keys[-1][1] + count)
                else:
                    keys.append((first, count))
        self._pool.insert(keys)
        self._pooled += sum(n for _, n in keys)
        freed_lists.clear()


class _DoesNotFit(Exception):
    """The request needs more blocks at once than the pool has."""


class ReferenceHybridCache:
    """Deliberately naive oracle: vLLM's block pool, block by block.

    The free queue is a list of block numbers (first victim first), a block's hash is
    ``(group, key)``, and ``copies`` maps a hash to its blocks in the order they were hashed (vLLM
    looks up and touches the first). With ``duplicates`` (vLLM's own behaviour) a request that
    computes a block whose hash is cached already gets a new block for it; without (the rule of
    :class:`~kvsim.cache.PrefixCache`, the default) it takes the cached copy as its own. With
    ``policy="fifo"`` a hit block stays in the queue, skipped by victims until the request frees
    it. For tests and the parity experiment only: O(pool) per request.
    """

    def __init__(self, capacity_blocks: int, groups: Sequence[CacheGroup], block_size: int,
                 mamba_cache_mode: str = "align", policy: str = "lru", duplicates: bool = False) -> None:
        self.capacity_blocks = _check_capacity(capacity_blocks)
        self.groups = _check_groups(groups, block_size, mamba_cache_mode)
        self.block_size = block_size
        self.mamba_cache_mode = mamba_cache_mode
        self.policy = _check_policy(policy)
        self._pinned: set[int] = set()  # FIFO: the request's hit blocks, left in their place in the queue
        self.duplicates = duplicates
        self.requests = self.oversized = self.evictions = 0
        self._free = list(range(self.capacity_blocks))
        self._hash: dict[int, tuple[int, Hashable]] = {}
        self._copies: dict[tuple[int, Hashable], list[int]] = {}
        self._specs = _spec_groups(self.groups)

    def __len__(self) -> int:
        return len(self._hash)

    # ---------------------------------------------------------------- lookup

    def _cached(self, ids: list[int], key: Hashable) -> bool:
        return all((g, key) in self._copies for g in ids)

    def _find(self, spec: CacheGroup, ids: list[int], keys: Sequence, limit: int) -> int:
        if spec.kind == "full":
            hit = 0
            while hit < limit and self._cached(ids, keys[hit]):
                hit += 1
            return hit
        if spec.kind == "mamba":
            for i in range(limit - 1, -1, -1):
                if self._cached(ids, keys[i]):
                    return i + 1
            return 0
        need = _cdiv(spec.window - 1, self.block_size)
        run = 0
        for i in range(limit - 1, -1, -1):
            if self._cached(ids, keys[i]):
                run += 1
                if run >= need:
                    return i + run
            else:
                run = 0
        return run

    def lookup(self, keys: Sequence, max_hit_blocks: int) -> tuple[int, int]:
        """(the hit every group agrees on, the longest hit of one group), in blocks."""
        return _agree(self._specs, lambda spec, ids, limit: self._find(spec, ids, keys, limit), max_hit_blocks)

    # ---------------------------------------------------------------- serving

    def serve(self, keys: Sequence, max_hit_blocks: int, alloc_blocks: int, prompt_tokens: int | None = None,
              tokens: int | None = None) -> ServeResult:
        _check_request(len(keys), max_hit_blocks, alloc_blocks)
        if prompt_tokens is None:
            prompt_tokens = tokens = alloc_blocks * self.block_size
        if not (max_hit_blocks <= (prompt_tokens - 1) // self.block_size and prompt_tokens <= tokens
                and _cdiv(tokens, self.block_size) == alloc_blocks):
            raise ValueError(f"inconsistent request: {max_hit_blocks}, {alloc_blocks}, {prompt_tokens}, {tokens}")
        self.requests += 1
        saved = list(self._free), dict(self._hash), {h: list(b) for h, b in self._copies.items()}
        try:
            return self._serve(list(keys), max_hit_blocks, prompt_tokens, tokens)
        except _DoesNotFit:
            self._free, self._hash, self._copies = saved
            self.oversized += 1
            return ServeResult(0, 0, True)
        finally:
            self._pinned.clear()

    def _prefill_ends(self, start: int, junction: int, prompt: int) -> list[int]:
        """vLLM's scheduler, ``_mamba_block_aligned_split``, one chunk after the other (tokens)."""
        mamba = [g for g in self.groups if g.kind == "mamba"]
        ends = []
        while True:
            end = prompt
            if mamba and self.mamba_cache_mode == "align":
                last_boundary = (prompt - 1) // self.block_size * self.block_size
                checkpoint = all(g.checkpoint for g in mamba)
                for stop in (junction, None if checkpoint else last_boundary):
                    if stop is not None and start < stop < end:
                        end = stop
            ends.append(end)
            if end == prompt:
                return ends
            start = end

    def _positions(self, g: int, table: list, start: int, end: int) -> list[int]:
        """Table positions group ``g`` gets new blocks for in a step computing tokens ``start .. end``
        (vLLM's allocate_new_blocks), nulls added where it keeps none."""
        group, bs = self.groups[g], self.block_size
        blocks = _cdiv(end, bs)
        if group.kind == "mamba" and self.mamba_cache_mode == "align":
            checkpoint = group.checkpoint and start % bs == 0 and start < (end - 1) // bs * bs and \
                start + bs <= (end - 1) // bs * bs
            table.extend([None] * max(0, blocks - 1 - checkpoint - len(table)))
        return list(range(len(table), blocks))

    def _free_early(self, g: int, table: list, processed: int) -> None:
        """Blocks group ``g`` releases before a step, ``processed`` tokens computed (vLLM's
        remove_skipped_blocks): a sliding window's blocks before it, superseded Mamba states."""
        group = self.groups[g]
        if group.kind == "full":
            return
        if group.kind == "sliding":
            skipped = max(0, (processed - group.window + 1) // self.block_size)
        else:
            skipped = (processed - 1) // self.block_size
        freed = []
        for i in range(min(skipped, len(table)) - 1, -1, -1):
            if table[i] is None:
                if group.kind == "mamba" and self.mamba_cache_mode == "align":
                    continue  # align leaves null gaps between states: look past them
                break
            freed.append(table[i])
            table[i] = None
        self._release(freed)

    def _release(self, blocks: list[int]) -> None:
        """vLLM's free_blocks: hashed blocks to the tail in order, the others to the front (FIFO:
        the hits are still in their place)."""
        self._free[:0] = [b for b in blocks if b not in self._hash]
        self._free.extend(b for b in blocks if b in self._hash and b not in self._pinned)
        self._pinned.difference_update(blocks)

    def _take(self, block: int, hit: bool = False) -> None:
        if hit and self.policy == "fifo":
            self._pinned.add(block)
        else:
            self._free.remove(block)

    def _victim(self) -> int:
        """The next free block: the queue's first that the request does not hold."""
        for i, block in enumerate(self._free):
            if block not in self._pinned:
                return self._free.pop(i)
        raise _DoesNotFit

    def _serve(self, keys: list, max_hit: int, prompt: int, tokens: int) -> ServeResult:
        bs = self.block_size
        hit, longest = self.lookup(keys, max_hit)
        junction = longest if longest > hit else 0
        steps, start = [], hit * bs
        for end in self._prefill_ends(start, junction * bs, prompt):
            steps.append((start, end))
            start = end
        steps += [(c, c + 1) for c in range(prompt, tokens)]  # decode: a token a step
        tables = []
        for g, group in enumerate(self.groups):
            if group.kind == "full":
                first = 0
            elif group.kind == "sliding":
                first = max(0, (hit * bs - group.window + 1) // bs)
            else:
                first = max(0, hit - 1)
            table = [None] * first + [self._copies[(g, keys[i])][0] for i in range(first, hit)]
            for block in table[first:]:
                self._take(block, hit=True)
            tables.append(table)
        own = {}
        if not self.duplicates:  # the cached copies of blocks the request computes are its own
            for g in range(len(self.groups)):
                probe = list(tables[g])
                for start, end in steps:
                    for i in self._positions(g, probe, start, end):
                        probe.append(None)
                        if i < len(keys) and (g, keys[i]) in self._copies:
                            own[(g, i)] = self._copies[(g, keys[i])][0]
                            self._take(own[(g, i)])
        # vLLM admits a request only if its whole prompt fits at once (scheduler_reserve_full_isl).
        admitted = 0
        for g, table in enumerate(tables):
            admitted += sum(b is not None for b in table) + len(self._positions(g, list(table), hit * bs, prompt))
        if admitted > self.capacity_blocks:
            raise _DoesNotFit
        cached = [len(t) for t in tables]
        evicted = 0
        for step, (start, end) in enumerate(steps):
            if step:
                for g in range(len(self.groups)):
                    self._free_early(g, tables[g], start)
            for g in range(len(self.groups)):
                for i in self._positions(g, tables[g], start, end):
                    if (g, i) in own:
                        tables[g].append(own.pop((g, i)))
                        continue
                    block = self._victim()
                    if block in self._hash:
                        h = self._hash.pop(block)
                        self._copies[h].remove(block)
                        if not self._copies[h]:
                            del self._copies[h]
                        evicted += 1
                    tables[g].append(block)
            full = min(end // bs, len(keys))
            for g, table in enumerate(tables):
                for i in range(cached[g], full):
                    block = table[i]
                    if block is not None and block not in self._hash:
                        self._hash[block] = (g, keys[i])
                        self._copies.setdefault((g, keys[i]), []).append(block)
                cached[g] = max(cached[g], full)
        for table in tables:
            self._release([b for b in reversed(table) if b is not None])
        self.evictions += evicted
        return ServeResult(hit, evicted, False)
