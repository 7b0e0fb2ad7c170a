"""One-pass LRU curve: the hits of an LRU prefix cache at many capacities from one replay.

The result at each capacity equals a replay of :class:`~kvsim.cache.PrefixCache` (``"lru"``)
at that capacity, request by request (tested against them). Why one pass suffices:

* **The stack.** A block's LRU rank ``(request, -depth)`` does not depend on the capacity, so
  every block ever seen has one place in a single *stack*, most recent first (the latest
  request's blocks on top, head first). Its *position* is 1 on top.
* **Inclusion.** At capacity ``C`` the cache holds exactly the top ``M_C`` blocks of the stack,
  for some size ``M_C <= C``: eviction takes the lowest blocks not in the request, and the
  request's blocks go on top. But ``M_C`` is not ``C``: after an eviction the cache has
  ``C - (alloc_blocks - len(keys))`` blocks (the partial block is freed), and it fills up only
  by what requests bring. So each capacity keeps its size, updated exactly per request:
  ``own_C`` = the request's blocks at positions ``<= M_C`` (hits and stale copies, which are
  never evicted for it), ``M_C <- min(M_C + len(keys) - own_C, C - (alloc_blocks - len(keys)))``,
  and ``M_C`` is non-decreasing in ``C``.
* **Hits.** The hit at ``C`` is the leading run of the first ``max_hit_blocks`` keys whose
  running maximum position is ``<= M_C`` (the issue's "stack distance <= C", with ``M_C``).
* **Oversized requests** break inclusion: a capacity smaller than a request's
  ``alloc_blocks`` skips it while larger ones serve it. At the first such request a capacity
  leaves the shared stack: its cache, the top ``M_C`` blocks in stack order, is rebuilt as a
  ``PrefixCache`` that then serves the rest of the requests on its own (exact, and rare:
  only capacities below the largest request).

Cost per request: O(log n) per piece of consecutive keys found in the stack (bisection in the
key index, a Fenwick tree over the stack's groups for positions), plus O(log K) per such piece
for K capacities, whose sizes are kept as a few parts of the form ``min(bound, C - gap)``; the
stack is cut at the largest capacity still sharing it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import NamedTuple

import numpy as np

from analytic.specs import DEFAULT_BLOCK_SIZE, Workload
from kvsim.cache import PrefixCache, check_runs, runs_of
from kvsim.engine import DEFAULT_MAX_EVENTS, ConversationSource, Estimate, checked_source, drive, run_window
from kvsim.policies import LRUPolicy, Runs

__all__ = ["CurvePoint", "LRUCurve", "lru_curve", "simulate_curve"]


class CurvePoint(NamedTuple):
    """What an LRU cache of ``capacity_blocks`` blocks did with the measured requests."""

    capacity_blocks: int
    requests: int
    hit_blocks: int
    hit_tokens: int  # sum of min(hit_blocks * block_size, prompt_tokens)
    requests_hit: int
    evictions: int
    oversized: int


class _Stack(LRUPolicy):
    """The blocks seen, in LRU order: an LRU policy that tells positions and never evicts
    (the curve cuts it at its largest capacity).

    Its groups (one per request, oldest first) carry their sizes in a Fenwick tree indexed by
    group id, so that a block's position is a prefix sum plus its rank within its group.
    """

    def __init__(self) -> None:
        super().__init__()
        self._group_size = [0]  # by group id (ids start at 1)
        self._tree = [0]  # Fenwick tree over _group_size
        self.total = 0

    def _prefix(self, gid: int) -> int:
        tree = self._tree
        s = 0
        while gid:
            s += tree[gid]
            gid &= gid - 1
        return s

    def _add(self, gid: int, delta: int) -> None:
        tree = self._tree
        n = len(tree)
        self._group_size[gid] += delta
        while gid < n:
            tree[gid] += delta
            gid += gid & -gid

    def _append(self, size: int) -> None:
        # tree[i] covers ids i - lowbit(i) + 1 .. i: the new size plus those already there.
        tree = self._tree
        i = len(tree)
        stop = i & (i - 1)
        s = size
        j = i - 1
        while j > stop:
            s += tree[j]
            j &= j - 1
        tree.append(s)
        self._group_size.append(size)

    def move_to_top(self, runs: Runs) -> list[tuple[int, int, int]]:
        """Put the request's blocks on top; return the ``(depth, count, position)`` segments
        of those that were in the stack, in depth order (positions before the request)."""
        segments = []
        taken = []  # (group id, blocks leaving it)
        # The pieces of each run; None where one reaches out of the run (taking another run
        # may split it: look it up again).
        found: list[list | None] = []
        total = self.total
        above: dict[int, int] = {}  # group id -> blocks in the groups above it
        depth = 0
        for first, count in runs:
            end = first + count
            pieces = self._overlapping(first, end)
            found.append(pieces)
            for piece in pieces:
                lo, hi, group = piece
                if lo < first or hi > end:
                    found[-1] = None
                a = lo if lo > first else first
                b = hi if hi < end else end
                gid = group.id
                rank = above.get(gid)
                if rank is None:
                    rank = above[gid] = total - self._prefix(gid)
                for other in group.pieces:
                    if other is piece:
                        break
                    rank += other[1] - other[0]
                segments.append((depth + a - first, b - a, rank + a - lo + 1))
                taken.append((gid, b - a))
            depth += count
        # Positions are read before anything moves; then the moves of LRUPolicy.acquire().
        claims = self._claims
        for (first, count), pieces in zip(runs, found):
            if pieces is None:
                pieces = self._overlapping(first, first + count)
            claims.append(self._take_run(pieces, first, first + count) if pieces else None)
        for gid, count in taken:
            self._add(gid, -count)
            total -= count
        self.release(runs, 0)
        self._append(depth)
        self.total = total + depth
        return segments

    def truncate(self, size: int) -> None:
        """Drop the lowest blocks so that ``size`` remain (they are cached at no capacity)."""
        excess = self.total - size
        if excess <= 0:
            return
        self.total = size
        left = excess
        for gid in self._groups:
            take = min(self._group_size[gid], left)
            self._add(gid, -take)
            left -= take
            if not left:
                break
        self.evict(excess)

    def top_groups(self, size: int) -> list[list[tuple[int, int]]]:
        """The top ``size`` blocks as runs per group, oldest group first (each in depth order)."""
        groups = []
        for group in reversed(self._groups.values()):
            if not size:
                break
            runs = []
            for lo, hi, _ in group.pieces:
                count = min(hi - lo, size)
                runs.append((lo, count))
                size -= count
                if not size:
                    break
            groups.append(runs)
        groups.reverse()
        return groups


_INF = math.inf


class _Alone(NamedTuple):
    """A capacity that left the shared stack, with its counts so far."""

    cache: PrefixCache
    counts: list[int]  # hit_blocks, hit_tokens, requests_hit, evictions, oversized


class LRUCurve:
    """Hits of LRU prefix caches at ``capacities_blocks`` from one pass over the requests.

    Feed the requests in order with :meth:`add`; read :meth:`points`. Keys are ints below
    ``2**64``; a request's keys may be given as a list or as runs (``(first_key, count)``
    pairs, as :meth:`~kvsim.cache.PrefixCache.serve_runs` takes them).
    """

    def __init__(self, capacities_blocks: Iterable[int], block_size: int) -> None:
        capacities = list(capacities_blocks)
        for c in capacities:
            if type(c) is not int or c < 0:
                raise ValueError(f"capacities must be integers >= 0 (got {c!r})")
        if type(block_size) is not int or block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1 (got {block_size!r})")
        self.capacities = capacities
        self.block_size = block_size
        self.requests = 0  # measured
        self._stack = _Stack()
        # The capacities that share the stack, ascending. Their sizes M_C (non-decreasing in C)
        # are kept as parts [first index, bound, gap]: M_C = min(bound, C - gap) from that
        # capacity to the next part's. A request maps each part to another such part (below),
        # so a few parts describe all the capacities: all of them, once the caches are full.
        self._caps = sorted(set(capacities))
        self._parts = [[0, 0, -_INF]]
        self._size_at_start: list[int] = []  # M_C before the first measured request
        # Measured totals per shared capacity as difference lists (entry i adds to capacities
        # i and above): a request adds a constant over ranges of capacities, O(1) each.
        # Totals: hit blocks, hit tokens, requests hit, and own blocks (for the evictions).
        self._totals = [[0] * (len(self._caps) + 1) for _ in range(4)]
        self._keys_total = 0  # sum of len(keys) over the measured requests
        self._measuring = False
        self._alone: dict[int, _Alone] = {}

    def add(self, keys: Sequence, max_hit_blocks: int, alloc_blocks: int, prompt_tokens: int,
            measured: bool = True) -> None:
        """Serve one request at every capacity. Unmeasured requests (a warm-up) fill the
        caches without being counted; they must all come before the measured ones."""
        runs = keys if keys and type(keys[0]) is tuple else runs_of(keys)
        n = check_runs(runs, max_hit_blocks, alloc_blocks)
        if measured and not self._measuring:
            self._measuring = True
            self._size_at_start = self._sizes(0, len(self._caps))
        elif not measured and self._measuring:
            raise ValueError("unmeasured requests must come before the measured ones")
        if measured:
            self.requests += 1
        caps = self._caps
        if caps and alloc_blocks > caps[0]:
            self._leave(bisect_left(caps, alloc_blocks))
        if measured:
            self._keys_total += n  # after _leave(): the capacities leaving do not serve it
        if caps:
            segments = self._stack.move_to_top(runs)
            self._stack.truncate(caps[-1])
            self._count(segments, n, max_hit_blocks, alloc_blocks - n, prompt_tokens, measured)
        bs = self.block_size
        for alone in self._alone.values():
            result = alone.cache.serve_runs(runs, max_hit_blocks, alloc_blocks)
            if measured:
                counts = alone.counts
                if result.hit_blocks:
                    counts[0] += result.hit_blocks
                    counts[1] += min(result.hit_blocks * bs, prompt_tokens)
                    counts[2] += 1
                counts[3] += result.evicted
                counts[4] += result.oversized

    def _first_reaching(self, size: int) -> int:
        """Index of the first shared capacity whose M_C is >= ``size`` (len(caps) if none)."""
        caps = self._caps
        parts = self._parts
        last = len(parts) - 1
        for j in range(last + 1):
            first, bound, gap = parts[j]
            if bound >= size:
                end = parts[j + 1][0] if j < last else len(caps)
                i = bisect_left(caps, size + gap, first, end)
                if i < end:
                    return i
        return len(caps)

    def _sizes(self, start: int, stop: int) -> list[int]:
        """M_C of the shared capacities ``start .. stop - 1``."""
        parts = self._parts
        j = 0
        sizes = []
        for i in range(start, stop):
            while j + 1 < len(parts) and parts[j + 1][0] <= i:
                j += 1
            sizes.append(min(parts[j][1], self._caps[i] - parts[j][2]))
        return sizes

    def _count(self, segments, n: int, max_hit: int, slack: int, prompt_tokens: int,
               measured: bool) -> None:
        """Update the shared capacities with a request found at ``segments`` of the stack.

        A segment at positions ``p .. q`` is cached whole at the capacities from
        ``_first_reaching(q)`` on, not at all below ``_first_reaching(p)``, and in part in
        between (rarely any capacity)."""
        first_reaching = self._first_reaching
        parts = self._parts
        # Capacity indices from which the parts or the request's own blocks change.
        cuts = {part[0] for part in parts}
        whole: dict[int, int] = {}  # capacity index -> blocks cached whole from there on
        partial: dict[int, int] = {}  # capacity index -> blocks cached there, of segments in part
        for _, count, position in segments:
            hi = first_reaching(position + count - 1)
            whole[hi] = whole.get(hi, 0) + count
            cuts.add(hi)
            if hi and count > 1:
                lo = first_reaching(position)
                for i, size in enumerate(self._sizes(lo, hi), lo):
                    partial[i] = partial.get(i, 0) + size - position + 1
                    cuts.add(i)
                    cuts.add(i + 1)
        if measured and segments:
            self._count_hits(segments, max_hit, prompt_tokens)
        own_diff = self._totals[3]
        caps = self._caps
        k = len(caps)
        cuts.discard(k)
        cuts = sorted(cuts)
        new_parts: list[list] = []
        own_whole = 0
        j = -1
        for c, a in enumerate(cuts):
            b = cuts[c + 1] if c + 1 < len(cuts) else k
            if j + 1 < len(parts) and parts[j + 1][0] == a:
                j += 1
            _, bound, gap = parts[j]
            own_whole += whole.get(a, 0)
            own = own_whole + partial.get(a, 0) if partial else own_whole
            if measured and own:
                own_diff[a] += own
                own_diff[b] -= own
            # min(min(bound, C - gap) + n - own, C - slack) = min(bound', C - gap')
            added = n - own
            bound += added
            gap = max(gap - added, slack)
            if bound >= caps[b - 1] - gap:
                bound = _INF  # never the smaller: M_C = C - gap
            elif bound <= caps[a] - gap:
                gap = -_INF  # M_C = bound
            if new_parts and new_parts[-1][1] == bound and new_parts[-1][2] == gap:
                continue
            new_parts.append([a, bound, gap])
        self._parts = new_parts

    def _count_hits(self, segments, max_hit: int, prompt_tokens: int) -> None:
        """Add the hits of a request found at ``segments`` of the stack."""
        hit_diff, token_diff, request_diff, _ = self._totals
        bs = self.block_size
        first_reaching = self._first_reaching
        # The leading run: each segment of it is cached in part from the capacity whose size
        # reaches both its first position and the highest before it (``reach``: below it the
        # run broke earlier), and whole from the one that reaches its last hit position too.
        leading = []  # (position, hit count, cached in part from, cached whole from)
        depth_reached = reach = 0
        for depth, count, position in segments:
            if depth != depth_reached or depth >= max_hit:
                break
            hit_count = min(count, max_hit - depth)
            part = first_reaching(position if position > reach else reach)
            if position + hit_count - 1 > reach:
                reach = position + hit_count - 1
            leading.append((position, hit_count, part, first_reaching(reach) if hit_count > 1 else part))
            if hit_count < count:
                break
            depth_reached += count
        if not leading:
            return
        request_diff[leading[0][2]] += 1
        hit = 0
        last = len(leading) - 1
        for s, (position, hit_count, part, whole) in enumerate(leading):
            if part < whole:
                for i, size in enumerate(self._sizes(part, whole), part):
                    blocks = hit + size - position + 1
                    hit_diff[i] += blocks
                    hit_diff[i + 1] -= blocks
                    tokens = min(blocks * bs, prompt_tokens)
                    token_diff[i] += tokens
                    token_diff[i + 1] -= tokens
            hit += hit_count
            end = leading[s + 1][2] if s < last else len(self._caps)  # where the next one starts
            if whole < end:
                tokens = min(hit * bs, prompt_tokens)
                hit_diff[whole] += hit
                hit_diff[end] -= hit
                token_diff[whole] += tokens
                token_diff[end] -= tokens

    def _shared_totals(self) -> list[list[int]]:
        """Per shared capacity: hit blocks, hit tokens, requests hit, evictions."""
        hits, tokens, requests, own = ([*accumulate(diff)][:-1] for diff in self._totals)
        if not self._measuring:
            return [[0, 0, 0, 0] for _ in self._caps]
        sizes = self._sizes(0, len(self._caps))
        evictions = [self._keys_total - o - (m - m0) for o, m, m0 in zip(own, sizes, self._size_at_start)]
        return [list(t) for t in zip(hits, tokens, requests, evictions)]

    def _leave(self, k: int) -> None:
        """The ``k`` smallest shared capacities leave the stack: each becomes its own cache."""
        totals = self._shared_totals()
        for i, size in enumerate(self._sizes(0, k)):
            cache = PrefixCache(self._caps[i], "lru")
            for runs in self._stack.top_groups(size):
                # One request per group, oldest first: the same LRU order, no eviction.
                cache.serve_runs(runs, 0, sum(count for _, count in runs))
            self._alone[self._caps[i]] = _Alone(cache, totals[i] + [0])
        for diff in self._totals:
            diff[k] = sum(diff[:k + 1])
            del diff[:k]
        parts = [[max(first - k, 0), bound, gap] for first, bound, gap in self._parts]
        self._parts = [p for p, following in zip(parts, parts[1:] + [[_INF]]) if following[0] > p[0]]
        del self._caps[:k]
        del self._size_at_start[:k]

    def points(self) -> list[CurvePoint]:
        """One point per capacity, in the order given."""
        totals = {c: (*t, 0) for c, t in zip(self._caps, self._shared_totals())}
        totals |= {c: tuple(a.counts) for c, a in self._alone.items()}
        return [CurvePoint(c, self.requests, *totals[c]) for c in self.capacities]


def lru_curve(requests: Iterable[tuple[Sequence, int, int, int]], capacities_blocks: Iterable[int],
              block_size: int, *, warmup_requests: int = 0) -> list[CurvePoint]:
    """LRU hits at each of ``capacities_blocks`` from one pass over ``requests``.

    ``requests``: ``(keys or runs, max_hit_blocks, alloc_blocks, prompt_tokens)`` in serving
    order; the first ``warmup_requests`` fill the caches without being counted. Returns one
    :class:`CurvePoint` per capacity, in the order given, each equal to a replay of
    ``PrefixCache(capacity, "lru")``.
    """
    curve = LRUCurve(capacities_blocks, block_size)
    for i, (keys, max_hit, alloc, prompt_tokens) in enumerate(requests):
        curve.add(keys, max_hit, alloc, prompt_tokens, i >= warmup_requests)
    return curve.points()


def simulate_curve(workload: Workload, capacities_blocks: Iterable[int], *,
                   block_size: int = DEFAULT_BLOCK_SIZE, duration: float | None = None, warmup: float | None = None,
                   replications: int = 5, seed: int = 0, source: ConversationSource | None = None,
                   max_events: int | None = DEFAULT_MAX_EVENTS) -> list[dict]:
    """LRU results of ``workload`` at every capacity from one simulation per replication.

    Arguments as :func:`~kvsim.engine.simulate`; one dict per capacity, in the order given, with
    the same values as ``simulate(workload, capacity, "lru", ...).as_dict()`` under these keys:
    ``capacity_blocks``, ``token_hit_rate``, ``block_hit_rate``, ``request_hit_rate`` (mean and
    95% CI over replications), ``evictions``, ``oversized``, ``requests_measured``.
    """
    capacities = list(capacities_blocks)
    duration, warmup = run_window(workload, duration, warmup, source)
    source = checked_source(workload, source, block_size, duration, warmup, replications, seed, max_events)
    runs = []  # per replication: its points, and the measured prompt tokens and blocks
    for r in range(replications):
        curve = LRUCurve(capacities, block_size)
        prompts = [0, 0]

        def on_turn(turn, now: float, conversation_id: int) -> None:
            measured = now >= warmup
            curve.add(turn.keys if turn.runs is None else turn.runs, turn.max_hit_blocks,
                      turn.alloc_blocks, turn.prompt_tokens, measured)
            if measured:
                prompts[0] += turn.prompt_tokens
                prompts[1] += turn.prompt_blocks

        drive(source, workload.arrival_rate, duration, np.random.default_rng([seed, r]), on_turn)
        runs.append((curve.points(), *prompts))

    def rate(values, totals) -> dict:
        return Estimate.of([v / t if t else math.nan for v, t in zip(values, totals)]).as_dict()

    results = []
    for i, capacity in enumerate(capacities):
        points = [run[0][i] for run in runs]
        results.append({
            "capacity_blocks": capacity,
            "token_hit_rate": rate([p.hit_tokens for p in points], [run[1] for run in runs]),
            "block_hit_rate": rate([p.hit_blocks for p in points], [run[2] for run in runs]),
            "request_hit_rate": rate([p.requests_hit for p in points], [p.requests for p in points]),
            "evictions": sum(p.evictions for p in points),
            "oversized": sum(p.oversized for p in points),
            "requests_measured": sum(p.requests for p in points),
        })
    return results
