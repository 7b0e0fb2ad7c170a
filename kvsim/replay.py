"""Real traces through the prefix cache: the replay engine.

**Replay** (:func:`replay`, ``kvsim replay``) serves a trace's requests in timestamp order
through the same :class:`~kvsim.cache.PrefixCache` as :func:`kvsim.engine.simulate`, for
several policies and capacities in one pass over the trace, beside an infinite cache (the
*ideal* hit rates: the reuse the trace holds at all).

How a hash-id request asks the cache (``request_blocks``), at a block size ``B``:

* ``keys`` = the request's listed hash ids, ``max_hit_blocks`` = all of them,
  ``alloc_blocks`` = ``ceil((input + output) / B)``. Every listed block counts, the partial
  last one included: that is the "cache hit rate" of the Mooncake papers (DESIGN.md §4,
  ``block_hit_rate``). The prompt-1 cap of DESIGN.md §3 is *not* applied by default: it is a
  detail of one engine, it can only bite when a request's whole listed chain is cached, i.e.
  on an exact repeat of an earlier prompt (a partial last block's hash is specific to the
  whole prompt), and applying it would make the block hit rate disagree with the papers'.
* ``vllm=True`` (``--vllm``) gives vLLM's behaviour instead: only full blocks
  (``input // B``) are cached and the hit is capped at ``(input - 1) // B`` blocks.
* Output blocks are never keys: a trace does not say what they hash to. A later turn that
  repeats an answer lists its blocks under new ids (that is how the traces are built), so
  they count as misses, as in the papers.
* ``token_hit_rate`` = hit tokens / input tokens, hit tokens = ``min(hit_blocks * B, input)``;
  ``block_hit_rate`` = hit blocks / listed blocks (at ``B``).
* ``B`` defaults to the trace's own block size. A multiple of it coarsens: a ``B``-token block
  is ``B / bs`` consecutive trace blocks and is identified by the last of their chained ids
  (which fixes the whole prefix); a trailing group of fewer ids is a partial block. A block
  size that is not a multiple of the trace's is refused: hash ids cannot be split.

Policies: every online policy of :data:`kvsim.policies.POLICIES` (read when called, so a newly
registered one is offered at once) and the offline ones, :data:`OFFLINE_POLICIES`: ``belady``
(:mod:`kvsim.policies.belady`), which evicts the block used farthest in the future. Unlike the
others it needs the future: when it is asked for, :func:`replay` reads the trace twice, a first
pass building a :class:`~kvsim.policies.belady.Future` (4 bytes per listed block and 16 per
request: O(total listed blocks) of memory, shared by the belady caches of every capacity; a
dict of the distinct keys while it is built) and the replay itself. For a prefix cache Belady
is a strong reference, not a proven optimum (a block hits only if its whole prefix is cached,
which Belady ignores). ``all`` is all of them. Each result gets its ``rank`` among the
policies at its capacity (by token hit rate, best first; ties share a rank) and, when belady
ran, its ``headroom_to_belady``: belady's token hit rate minus its own (a rate, like them).

Speed: the readers hand each request's ids over as runs of consecutive ids
(:attr:`~kvsim.traces.TraceRequest.runs`), which go to the caches as they are
(``serve_runs``, :func:`request_runs`); the infinite cache keeps ranges of ids
(:class:`_Seen`), not a set of blocks; and :mod:`kvsim.curve` (which pulls in the simulator)
is imported only for ``curve``. A replay of the Mooncake conversation trace at one capacity
is thus mostly JSON decoding (``experiments/bench.py`` compares it with libCacheSim).

Conversation templates are in :mod:`kvsim.templates`, the export to libCacheSim in
:mod:`kvsim.export`, the command line in :mod:`kvsim.cli.replay`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from analytic.offload import MAX_TIER_BLOCKS, Tiers
from kvsim.cache import PrefixCache, runs_of
from kvsim.policies import POLICIES
from kvsim.policies.belady import BeladyPolicy, Future
from kvsim.tiered import TieredCache, make_cache
from kvsim.tiered import tier_tokens as split_tier_tokens
from kvsim.traces import TraceError, iter_requests

if TYPE_CHECKING:
    from kvsim.hybrid_cache import HybridLayout

__all__ = [
    "DENSE_CURVE_MAX_DOUBLINGS", "OFFLINE_POLICIES", "check_block_size", "policy_choices", "policy_names", "rate",
    "replay", "request_blocks", "request_runs", "resolve_block_size",
]

OFFLINE_POLICIES = ("belady",)
"""Policies that need the whole trace in advance: replay only (not in :data:`kvsim.policies.POLICIES`)."""


def policy_choices() -> tuple[str, ...]:
    """The policies replay offers, ``all`` of them: the registered online ones, then the offline ones."""
    return (*POLICIES, *(p for p in OFFLINE_POLICIES if p not in POLICIES))


# ---------------------------------------------------------------- what a request asks of the cache

def _group_ids(ids: list, k: int) -> list:
    """Ids of ``k``-fold coarser blocks: the last chained id of each group of ``k``."""
    if k == 1:
        return ids
    groups = ids[k - 1::k]
    if len(ids) % k:
        groups.append(ids[-1])
    return groups


def request_blocks(ids: list, input_tokens: int, output_tokens: int, trace_block_size: int,
                   block_size: int, vllm: bool = False) -> tuple[list, int, int, int]:
    """``(keys, max_hit_blocks, alloc_blocks, listed_blocks)`` of a hash-id request served at
    ``block_size`` (a multiple of ``trace_block_size``); see the module docstring."""
    groups = _group_ids(ids, block_size // trace_block_size)
    alloc = -(-(input_tokens + output_tokens) // block_size)
    if vllm:
        keys = groups[:input_tokens // block_size]
        return keys, min((input_tokens - 1) // block_size, len(keys)), alloc, len(groups)
    return groups, len(groups), alloc, len(groups)


def request_runs(req, block_size: int, vllm: bool = False) -> tuple[list, int, int, int]:
    """:func:`request_blocks` of a :class:`~kvsim.traces.TraceRequest`, with the keys as runs
    (``(first_key, count)``, as :meth:`~kvsim.cache.PrefixCache.serve_runs` takes them).

    At the trace's own block size the reader's runs are the keys: no list of ids is built or
    split into runs again (per block, that would cost more than the cache). A coarser block
    size, or a request without runs, goes through the ids."""
    inp = req.input_tokens
    runs = req.runs
    if runs is None or req.block_size != block_size:
        ids = req.block_ids
        if ids is None:
            ids = [k for first, count in runs for k in range(first, first + count)]
        keys, max_hit, alloc, listed = request_blocks(ids, inp, req.output_tokens, req.block_size,
                                                      block_size, vllm)
        try:
            return runs_of(keys), max_hit, alloc, listed
        except TypeError:
            raise TraceError(f"{req.where or 'a trace request'}: block ids must be integers") from None
    alloc = -(-(inp + req.output_tokens) // block_size)
    listed = 0
    for _, count in runs:
        listed += count
    if not vllm:
        return runs, listed, alloc, listed
    full = inp // block_size  # vLLM caches full blocks only: the first ``full`` keys
    if full < listed:
        kept, left = [], full
        for first, count in runs:
            if left <= 0:
                break
            kept.append((first, min(count, left)))
            left -= count
        runs = kept
    return runs, min((inp - 1) // block_size, full, listed), alloc, listed


def check_block_size(block_size: int, trace_block_size: int, where: str) -> None:
    if block_size % trace_block_size:
        raise TraceError(
            f"block size {block_size} is not a multiple of the {trace_block_size}-token blocks of {where}: "
            f"hash ids identify whole {trace_block_size}-token blocks and cannot be split "
            f"(use a multiple of {trace_block_size}, or the default: the trace's own)")


def resolve_block_size(block_size: int | None, files: list[dict]) -> int | None:
    if block_size is not None and (type(block_size) is not int or block_size < 1):
        raise ValueError(f"block-size must be an integer >= 1 (got {block_size!r})")
    sizes = {info["block_size"] for info in files if info["block_size"] is not None}
    if block_size is None:
        if len(sizes) > 1:
            listing = ", ".join(f"{Path(i['path']).name}: {i['block_size']}" for i in files[:6])
            raise TraceError(
                f"the traces have different block sizes ({listing}{', ...' if len(files) > 6 else ''}); "
                f"give --block-size, a common multiple (e.g. {math.lcm(*sizes)})")
        return sizes.pop() if sizes else None
    for info in files:
        if info["block_size"] is not None:
            check_block_size(block_size, info["block_size"], info["path"])
    return block_size


def policy_names(policies) -> list[str]:
    if isinstance(policies, str):
        policies = policies.split(",")
    choices = policy_choices()
    names: list[str] = []
    for p in policies:
        p = p.strip().lower()
        for name in (choices if p == "all" else (p,)):
            if name not in choices:
                raise ValueError(f"policy must be one of {', '.join(choices)} or all (got {p!r})")
            if name not in names:
                names.append(name)
    return names


def _sizes(values, what: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, int):
        values = [values]
    out = []
    for v in values:
        if type(v) is not int or not 0 <= v <= MAX_TIER_BLOCKS:
            raise ValueError(f"{what} must be integers in [0, {MAX_TIER_BLOCKS:,}] (got {v!r})")
        out.append(v)
    return out


def rate(num: float, den: float):
    return num / den if den else None


# ---------------------------------------------------------------- replay

DENSE_CURVE_MAX_DOUBLINGS = 30  # the dense curve's grid reaches 2**30 blocks


class _Seen:
    """The infinite cache of the ideal hit rates: every block seen so far.

    Kept as sorted, disjoint ranges of ids (touching ones merged), so that a run of keys costs
    two bisections, not a set look-up per block: the traces number their hash ids in order of
    first appearance, so a handful of ranges holds everything. Scattered ids would make many
    ranges, and inserting into long lists moves their tails; beyond ``MAX_RANGES`` the blocks
    go to a set instead (per block, as a set always costs)."""

    MAX_RANGES = 1 << 16

    def __init__(self) -> None:
        self.los: list[int] = []  # range k is los[k] .. his[k] - 1
        self.his: list[int] = []
        self.blocks = 0
        self.set: set | None = None

    def serve(self, runs, max_hit_blocks: int) -> int:
        """The leading run of the first ``max_hit_blocks`` keys already seen; then all are seen."""
        if self.set is not None:
            return self._serve_set(runs, max_hit_blocks)
        los, his = self.los, self.his
        hit = k = 0
        for first, count in runs:
            i = bisect_right(los, first) - 1
            covered = his[i] - first if i >= 0 else 0
            if covered < count:
                hit += max(covered, 0)
                break
            hit += count
            k += 1
        for first, count in runs[k:]:  # the runs before k are seen already
            self._add(first, first + count)
        if len(los) > self.MAX_RANGES:
            self.set = {key for lo, hi in zip(los, his) for key in range(lo, hi)}
            self.los, self.his = [], []
        return min(hit, max_hit_blocks)

    def _add(self, lo: int, hi: int) -> None:
        los, his = self.los, self.his
        i = bisect_left(his, lo)  # the first range ending at or after lo ...
        j = bisect_right(los, hi, i)  # ... to the last starting at or before hi: they touch lo .. hi
        if i == j:
            los.insert(i, lo)
            his.insert(i, hi)
            self.blocks += hi - lo
            return
        merged_lo, merged_hi = min(lo, los[i]), max(hi, his[j - 1])
        self.blocks += merged_hi - merged_lo - sum(his[m] - los[m] for m in range(i, j))
        los[i:j] = [merged_lo]
        his[i:j] = [merged_hi]

    def _serve_set(self, runs, max_hit_blocks: int) -> int:
        seen = self.set
        hit = 0
        for first, count in runs:
            run = range(first, first + count)
            if seen.issuperset(run):
                hit += count
                continue
            for key in run:
                if key not in seen:
                    break
                hit += 1
            break
        for first, count in runs:
            seen.update(range(first, first + count))
        self.blocks = len(seen)
        return min(hit, max_hit_blocks)


@dataclass
class _Tally:
    policy: str
    cache: PrefixCache | TieredCache
    hit_blocks: int = 0
    hit_tokens: int = 0
    requests_hit: int = 0
    # A tiered cache's hit blocks and tokens per tier, GPU first (empty for one tier).
    tier_blocks: list[int] = field(default_factory=list)
    tier_tokens: list[int] = field(default_factory=list)


def _make_tally(policy: str, capacity: int, future: Future | None, tiers: Tiers | None, bs: int,
                layout: HybridLayout | None = None) -> _Tally:
    if layout is not None:
        return _Tally(policy, layout.cache(capacity))
    if policy == "belady":
        return _Tally(policy, PrefixCache(capacity, BeladyPolicy(future, capacity)))
    cache = make_cache(capacity, policy, tiers, bs)
    n = len(getattr(cache, "tiers", ()))
    return _Tally(policy, cache, tier_blocks=[0] * n, tier_tokens=[0] * n)


def _tier_results(t: _Tally, listed_total: int, input_tokens: int) -> dict:
    traffic = t.cache.traffic()
    return {row["tier"]: {"token_hit_rate": rate(tokens, input_tokens), "block_hit_rate": rate(blocks, listed_total),
                          "hit_blocks": blocks, "hit_tokens": tokens, "loaded_blocks": row["loaded_blocks"],
                          "stored_blocks": row["stored_blocks"], "cached_blocks": row["cached_blocks"],
                          "capacity_blocks": row["capacity_blocks"]}
            for row, blocks, tokens in zip(traffic, t.tier_blocks, t.tier_tokens)}


def _one_shot(traces) -> bool:
    """Whether ``traces`` is an iterator of requests, which cannot be read twice."""
    if isinstance(traces, (str, os.PathLike, list, tuple)) or callable(traces):
        return False
    try:
        return iter(traces) is traces
    except TypeError:
        return False


def _future(traces, reading: dict, bs: int, vllm: bool, max_requests: int | None) -> Future:
    """Belady's first pass: the next uses of the keys of the requests :func:`replay` will serve."""
    requests, _ = iter_requests(traces, block_ids=False, **reading)
    future = Future()
    n = 0
    for req in requests:
        if max_requests is not None and n >= max_requests:
            break
        if req.block_size != bs:
            check_block_size(bs, req.block_size, req.where or "a trace")
        runs, _, alloc, _ = request_runs(req, bs, vllm)
        future.add(runs, alloc)
        n += 1
    future.seal()
    return future


def _rank(results: list[dict]) -> None:
    """Add ``rank`` (per capacity, by token hit rate, best first; ties share a rank) and, when
    belady is among them, ``headroom_to_belady`` to each result."""
    by_capacity: dict[int, list[dict]] = {}
    for res in results:
        by_capacity.setdefault(res["capacity_blocks"], []).append(res)
    for group in by_capacity.values():
        def score(res):
            return -1.0 if res["token_hit_rate"] is None else res["token_hit_rate"]

        ordered = sorted(group, key=score, reverse=True)
        for k, res in enumerate(ordered):
            res["rank"] = ordered[k - 1]["rank"] if k and score(res) == score(ordered[k - 1]) else k + 1
        belady = next((res for res in group if res["policy"] == "belady"), None)
        if belady is not None:
            for res in group:
                b, own = belady["token_hit_rate"], res["token_hit_rate"]
                res["headroom_to_belady"] = None if b is None or own is None else b - own


def replay(traces, policies=("lru",), capacities_blocks=(), *, capacities_tokens=None,
           block_size: int | None = None, trace_block_size: int | None = None, time_unit: str = "auto",
           arrival_rate: float | None = None, seed: int = 0, vllm: bool = False, skip_bad: bool = False,
           max_requests: int | None = None, progress: bool | None = None, curve: bool = False,
           tiers: Tiers | None = None, tier_tokens: tuple[int, int] | None = None,
           per_request: list | None = None, hybrid: Callable[[int], HybridLayout] | None = None) -> dict:
    """Replay ``traces`` through prefix caches; return the ``kvsim replay --json`` record.

    ``curve``: LRU at every capacity from one pass (:class:`kvsim.curve.LRUCurve`, exact), with
    the same records as separate caches; with no capacity given, a dense grid (8 points per
    doubling, up to the first capacity that never evicts).

    ``traces``: a path, a directory or a list of them (read by
    :func:`kvsim.traces.open_traces`, which ``trace_block_size``, ``time_unit``,
    ``arrival_rate``, ``seed`` and ``skip_bad`` are for), or a callable returning
    :class:`~kvsim.traces.TraceRequest` records in time order, or such an iterable.
    One cache per (policy, capacity); ``capacities_tokens`` are converted to
    ``floor(tokens / block_size)`` blocks. ``block_size`` defaults to the traces' own.

    ``belady`` among the ``policies`` reads ``traces`` twice (see the module docstring): an
    iterator of requests is first made a list, a callable is called twice (it must return the
    same requests each time).

    ``tiers`` (:class:`analytic.specs.Tiers`): every cache is a tiered one, the capacity its GPU's
    (:func:`kvsim.tiered.make_cache`); each result adds ``tiers`` (per tier: token and block hit
    rates, hit blocks and tokens, blocks loaded up and stored down). Not with ``belady`` or ``curve``.
    ``tier_tokens`` ``(cpu, disk)``: the tiers' sizes in tokens instead (``floor(tokens / block_size)``
    blocks), with the mode and load costs of ``tiers``.

    ``per_request``: a list that gets, per request, ``(index, arrival_s, input_tokens, output_tokens,
    hit_tokens)`` of the one cache (one policy and one capacity; arrival from the first request).

    ``hybrid``: the caches are vLLM's hybrid KV cache manager (:class:`kvsim.hybrid_cache.HybridCache`,
    LRU or FIFO, ``vllm`` semantics), laid out by ``hybrid(block size)`` (e.g. :func:`kvsim.hybrid_cache.vllm_layout`
    of a model), whose block size is the replay's; a capacity is its pool of blocks. Not with the
    tiers, belady or ``curve``.
    """
    names = policy_names(policies)
    if hybrid is not None and (names not in (["lru"], ["fifo"]) or curve or not vllm or tiers is not None
                               or tier_tokens is not None):
        raise ValueError("vLLM's hybrid KV cache manager (a hybrid model with --vllm) is one pool: give --policy "
                         "lru (vLLM's) or fifo, and no --curve or offload tiers")
    if (tiers is not None or tier_tokens is not None) and (curve or "belady" in names):
        raise ValueError("the CPU/disk tiers work with the online policies, not with --curve or belady")
    capacities = _sizes(capacities_blocks, "capacity-blocks")
    tokens = _sizes(capacities_tokens, "capacity-tokens")
    if max_requests is not None and (type(max_requests) is not int or max_requests < 1):
        raise ValueError(f"max-requests must be an integer >= 1 (got {max_requests!r})")
    reading = dict(trace_block_size=trace_block_size, time_unit=time_unit, arrival_rate=arrival_rate,
                   seed=seed, skip_bad=skip_bad)
    offline = [p for p in names if p in OFFLINE_POLICIES]
    if offline and _one_shot(traces):
        traces = list(traces)
    # block_ids=False: the readers' runs are all this needs (request_runs)
    requests, stats = iter_requests(traces, block_ids=False, **reading)
    bs = resolve_block_size(block_size, stats.files)
    requests = iter(requests)
    first = next(requests, None)
    if bs is None:
        bs = first.block_size if first is not None else 1
    layout = None
    if hybrid is not None:
        layout = replace(hybrid(bs), policy=names[0])
        bs = layout.block_size  # a Mamba state may need larger blocks: a multiple of the trace's, checked below
    capacities += [t // bs for t in tokens]
    if tier_tokens is not None:
        cpu_tokens, disk_tokens = tier_tokens
        tiers = replace(tiers or Tiers(), cpu_blocks=cpu_tokens // bs, disk_blocks=disk_tokens // bs)
    dense = curve and not capacities
    if dense:
        capacities = sorted({int(round(2 ** (k / 8))) for k in range(8 * DENSE_CURVE_MAX_DOUBLINGS + 1)})
    lru_curve = None
    if curve and "lru" in names:
        from kvsim.curve import LRUCurve  # here only: it imports the simulator (simpy, numpy)

        lru_curve = LRUCurve(capacities, bs)
    future = None
    future_s = 0.0
    if offline and capacities:
        started = time.perf_counter()
        future = _future(traces, reading, bs, vllm, max_requests)
        future_s = time.perf_counter() - started
    tallies = [_make_tally(p, c, future, tiers, bs, layout) for p in names for c in capacities
               if not (p == "lru" and lru_curve)]
    if per_request is not None and (len(tallies) != 1 or lru_curve is not None):
        raise ValueError("requests-out: the requests' hits need one cache: one --policy and one capacity, no --curve")

    n = input_tokens = output_tokens = listed_total = max_alloc = 0
    ideal_blocks = ideal_tokens = ideal_requests = 0
    seen = _Seen()
    t_first = t_last = None
    bar = _progress_bar(progress, "replay")
    started = time.perf_counter()
    try:
        req = first
        while req is not None:
            if max_requests is not None and n >= max_requests:
                break
            if req.block_size != bs:
                check_block_size(bs, req.block_size, req.where or "a trace")
            runs, max_hit, alloc, listed = request_runs(req, bs, vllm)
            inp = req.input_tokens
            if alloc > max_alloc:
                max_alloc = alloc
            n += 1
            input_tokens += inp
            output_tokens += req.output_tokens
            listed_total += listed
            if t_first is None:
                t_first = req.time
            t_last = req.time
            hit = seen.serve(runs, max_hit)
            if hit:
                ideal_blocks += hit
                ideal_tokens += min(hit * bs, inp)
                ideal_requests += 1
            if lru_curve is not None:
                lru_curve.add(runs, max_hit, alloc, inp)
            for tally in tallies:
                if layout is None:
                    result = tally.cache.serve_runs(runs, max_hit, alloc)
                else:  # the hybrid cache prefills the input, decodes the output
                    result = tally.cache.serve_runs(runs, max_hit, alloc, inp, inp + req.output_tokens)
                if per_request is not None:
                    per_request.append((n - 1, req.time - t_first, inp, req.output_tokens,
                                     min(result.hit_blocks * bs, inp)))
                if result.hit_blocks:
                    tally.hit_blocks += result.hit_blocks
                    tally.hit_tokens += min(result.hit_blocks * bs, inp)
                    tally.requests_hit += 1
                    if tally.tier_blocks:
                        for i, (h, t) in enumerate(zip(result.tier_hits, split_tier_tokens(result.tier_hits, bs, inp))):
                            tally.tier_blocks[i] += h
                            tally.tier_tokens[i] += t
            if bar is not None and not n % 1000:
                bar.update(1000)
            req = next(requests, None)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started + future_s

    results = [{
        "policy": t.policy,
        "capacity_blocks": t.cache.capacity_blocks,
        "capacity_tokens": t.cache.capacity_blocks * bs,
        "block_hit_rate": rate(t.hit_blocks, listed_total),
        "token_hit_rate": rate(t.hit_tokens, input_tokens),
        "request_hit_rate": rate(t.requests_hit, n),
        "requests": n,
        "hit_blocks": t.hit_blocks,
        "hit_tokens": t.hit_tokens,
        "evictions": t.cache.evictions,
        "oversized": t.cache.oversized,
        **({"tiers": _tier_results(t, listed_total, input_tokens)} if t.tier_blocks else {}),
    } for t in tallies]
    if lru_curve is not None:
        points = lru_curve.points()
        if dense:  # beyond the first capacity that never evicts, the curve is flat
            everything = seen.blocks + max_alloc
            points = [p for p in points if p.capacity_blocks < everything] + \
                     [p for p in points if p.capacity_blocks >= everything][:1]
        results[:0] = [{
            "policy": "lru",
            "capacity_blocks": p.capacity_blocks,
            "capacity_tokens": p.capacity_blocks * bs,
            "block_hit_rate": rate(p.hit_blocks, listed_total),
            "token_hit_rate": rate(p.hit_tokens, input_tokens),
            "request_hit_rate": rate(p.requests_hit, n),
            "requests": n,
            "hit_blocks": p.hit_blocks,
            "hit_tokens": p.hit_tokens,
            "evictions": p.evictions,
            "oversized": p.oversized,
        } for p in points]
        capacities = [p.capacity_blocks for p in points] if dense else capacities
    _rank(results)
    return {
        "inputs": {
            "traces": stats.files or None,
            "block_size": bs,
            "semantics": "vllm" if vllm else "listed-blocks",
            "policies": names,
            "capacities_blocks": capacities,
            "time_unit": time_unit,
            "trace_block_size": trace_block_size,
            "arrival_rate": arrival_rate,
            "seed": seed,
            "skip_bad": skip_bad,
            "max_requests": max_requests,
            "curve": curve,
            **({"hybrid_cache": layout.as_dict()} if layout is not None else {}),
        },
        "trace": {
            "requests": n,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "listed_blocks": listed_total,
            "distinct_blocks": seen.blocks,
            "first_time_s": t_first,
            "last_time_s": t_last,
        },
        "results": results,
        "ideal_block_hit_rate": rate(ideal_blocks, listed_total),
        "ideal_token_hit_rate": rate(ideal_tokens, input_tokens),
        "ideal_request_hit_rate": rate(ideal_requests, n),
        "skipped": stats.skipped,
        "skipped_files": stats.skipped_files,
        "skip_examples": stats.examples,
        "elapsed_s": elapsed,
        "requests_per_s": n / elapsed if elapsed > 0 else None,
        # belady's first pass (part of elapsed_s) and the memory of its future
        "belady_future_s": future_s if future is not None else None,
        "belady_future_bytes": future.nbytes() if future is not None else None,
    }


def _progress_bar(progress: bool | None, desc: str):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(unit=" requests", desc=desc, file=sys.stderr, leave=False)
