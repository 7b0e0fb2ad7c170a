"""The serving engine: an instance that steps like vLLM v1's scheduler (DESIGN.md §9).

The one model of service, shared by single instances, fleets and trace replay. The rules are
those of vLLM 0.33's ``Scheduler.schedule`` and ``KVCacheManager`` with their default settings
(synchronous scheduling, chunked prefill, no speculative decoding):

* **A step** schedules at most ``max_num_batched_tokens`` tokens and ``max_num_seqs`` requests.
  Running requests come first, in order of admission: a decoding request gets one token, a
  prefilling one the next chunk (as much of its prompt as the budget left allows). Then waiting
  requests, first come first served, while budget, request cap and free blocks allow; when the
  head of the queue cannot be admitted, the requests behind it wait too. No waiting request is
  admitted in a step that preempted one.
* **Admission**: when a waiting request is first scheduled (and again after a preemption) its
  prefix is looked up: the hit is the leading run of its blocks found in the cache, at most
  ``tokens - 1`` tokens. It is admitted only if the blocks of its *whole* sequence so far fit
  among the free blocks (vLLM's ``scheduler_reserve_full_isl``, on by default); hit blocks that
  sat evictable count against the free ones, as they leave the free queue.
* **Blocks** are allocated for the tokens scheduled in the step (a decoding request takes a new
  block every ``block_size`` tokens), and every block that the scheduled tokens fill is cached
  at once (hashed), so a request admitted later in the same step hits blocks still being
  computed. The pool is vLLM's ``BlockPool``: free blocks without a hash are taken first (LIFO),
  then cached blocks in the order they were freed (LRU; a request frees its blocks tail first).
* **Preemption**: when a running request cannot get its blocks, the most recently admitted
  running request is preempted (recompute): its blocks are freed to the cache, it goes back to
  the head of the waiting queue with nothing computed, and is looked up again when readmitted.
* **Tokens and finish**: a request whose scheduled tokens reach its known tokens samples one
  token at the end of the step (the first one is its time to first token); after
  ``output_tokens`` tokens it finishes and frees its blocks (they stay cached, evictable). Its
  last sampled token is never computed, so it never caches it (as vLLM). A request with no
  output tokens (scoring, embedding) finishes at the end of the step that completes its prompt.
* **Step time**: a :class:`~analytic.steptime.StepTime` of the step's tokens, attention pairs,
  context read and requests. Arrivals at the instant a step ends are in the next step.

What is not modelled: speculative decoding, asynchronous scheduling (which shifts times by at
most one step), ``long_prefill_token_threshold`` (0 by default), priorities, LoRA, encoder
inputs, pipeline parallelism, the watermark (0 by default) and ``max_model_len`` (requests are
refused only when they could never fit the cache: ``oversized``).

**Speed.** A run of steps in which every running request decodes and nothing else can happen
(no request waits, or the request cap holds the queue back; no request finishes before the
run's last step; the free blocks cover every block the run needs) is *skipped*: its step times are summed in one loop
over integers (the context grows by one token per request per step, so each step's inputs are
known in advance) and its blocks allocated in bulk, without touching the requests per step. An
arrival cuts the skip at the step in progress. ``fast=False`` runs the plain stepper; the tests
prove both give identical results.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

import simpy

from analytic.serving import EngineSpec

__all__ = ["BlockPool", "EngineInstance", "EngineRequest", "ServingStats", "REQUEST_COLUMNS"]

STEP_END_PRIORITY = 2  # after SimPy's NORMAL (1) events at the same instant: arrivals then join the next step
_NO_KEY_BITS = 24  # a request's uncached-by-key blocks get unique negative keys: request uid << 24 | block


class BlockPool:
    """vLLM's block pool over ``capacity`` blocks.

    A block is *held* (reference count > 0: some running request uses it) or *free*. Free blocks
    are uncached (no key: anonymous, taken first) or cached (evictable, in the order they were
    freed: the first is the next victim). Cached blocks have an id; several blocks may hold the
    same key (two requests computed it at once): a lookup finds the first one cached.
    """

    def __init__(self, capacity: int, caching: bool = True) -> None:
        self.capacity = capacity
        self.caching = caching
        self.free_uncached = capacity
        self.evictable: OrderedDict[int, None] = OrderedDict()
        self.key_of: dict[int, object] = {}
        self.refs: dict[int, int] = {}
        self.by_key: dict[object, dict[int, None]] = {}
        self._ids = count()
        self.evictions = 0

    def num_free(self) -> int:
        return self.free_uncached + len(self.evictable)

    @property
    def held(self) -> int:
        """Blocks used by running requests (vLLM's ``kv_cache_usage`` x capacity)."""
        return self.capacity - self.free_uncached - len(self.evictable)

    @property
    def cached(self) -> int:
        """Blocks holding a reusable key, held or evictable."""
        return len(self.key_of)

    def lookup(self, keys: Sequence, max_blocks: int) -> int:
        """Leading blocks of ``keys[:max_blocks]`` that are cached."""
        by_key = self.by_key
        hit = 0
        for key in keys:
            if hit >= max_blocks or key not in by_key:
                break
            hit += 1
        return hit

    def lookup_runs(self, runs, max_blocks: int) -> int:
        """As :meth:`lookup`, for keys given as ``(first_key, count)`` runs."""
        by_key = self.by_key
        hit = 0
        for first, n in runs:
            for key in range(first, first + n):
                if hit >= max_blocks or key not in by_key:
                    return hit
                hit += 1
        return hit

    def hit_blocks(self, keys: Sequence, hit: int) -> list[int]:
        """The block ids of the first ``hit`` keys (each cached)."""
        by_key = self.by_key
        return [next(iter(by_key[keys[j]])) for j in range(hit)]

    def evictable_among(self, blocks: list[int]) -> int:
        evictable = self.evictable
        return sum(1 for b in blocks if b in evictable)

    def touch(self, blocks: list[int]) -> None:
        """A request takes hit blocks: each gets one more reference and leaves the free queue."""
        refs, evictable = self.refs, self.evictable
        for b in blocks:
            if refs[b] == 0:
                del evictable[b]
            refs[b] += 1

    def allocate(self, n: int) -> None:
        """Take ``n`` free blocks (the caller checked they are there): uncached ones first, then
        the least recently freed cached ones, whose keys are evicted. They join the caller's
        table as anonymous blocks (``-1``)."""
        take = min(n, self.free_uncached)
        self.free_uncached -= take
        n -= take
        if n:
            self.evictions += n
            popitem, key_of, refs, by_key = self.evictable.popitem, self.key_of, self.refs, self.by_key
            for _ in range(n):
                b, _ = popitem(last=False)
                key = key_of.pop(b)
                del refs[b]
                ids = by_key[key]
                del ids[b]
                if not ids:
                    del by_key[key]

    def cache(self, key) -> int:
        """An anonymous held block now holds ``key``: it gets an id (one reference)."""
        b = next(self._ids)
        self.key_of[b] = key
        self.refs[b] = 1
        ids = self.by_key.get(key)
        if ids is None:
            self.by_key[key] = {b: None}
        else:
            ids[b] = None
        return b

    def free(self, table: list[int]) -> None:
        """Release a request's blocks, tail first: anonymous ones become free at once, cached
        ones evictable when no one else holds them (the tail before the head)."""
        refs, evictable = self.refs, self.evictable
        for b in reversed(table):
            if b < 0:
                self.free_uncached += 1
                continue
            left = refs[b] - 1
            refs[b] = left
            if not left:
                evictable[b] = None


class EngineRequest:
    """A request as the engine serves it, and what it measured."""

    __slots__ = ("index", "arrival", "prompt_tokens", "max_tokens", "keys", "num_tokens", "computed", "outputs",
                 "table", "ncached", "hit_tokens", "first_scheduled", "first_token", "last_token", "finish",
                 "preemptions", "instance", "measured", "turn", "payload", "uid", "oversized", "latency")

    def __init__(self, index: int, arrival: float, prompt_tokens: int, output_tokens: int, keys: Sequence,
                 measured: bool = True, turn: int = 0, payload=None) -> None:
        self.index = index
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.max_tokens = output_tokens
        self.keys = keys  # a list: keys of its full blocks, head first (prompt, then output if known)
        self.num_tokens = prompt_tokens  # prompt + output tokens sampled so far
        self.computed = 0
        self.outputs = 0
        self.table: list[int] = []
        self.ncached = 0  # leading blocks of the table that are cached
        self.hit_tokens: int | None = None  # at first scheduling
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.finish: float | None = None
        self.preemptions = 0
        self.instance = 0
        self.measured = measured
        self.turn = turn
        self.payload = payload
        self.uid = 0
        self.oversized = False
        self.latency = 0.0  # outside the engine's steps: added to TTFT and E2E (StepTime.request_latency_s)

    def key(self, j: int):
        keys = self.keys
        return keys[j] if j < len(keys) else -((self.uid << _NO_KEY_BITS) | j) - 1

    def block_keys(self, n: int) -> list:
        """The keys of its first ``n`` blocks (blocks past its known keys, such as a trace's
        output blocks, get keys of their own that no other request has)."""
        keys = self.keys
        if n <= len(keys):
            return keys if n == len(keys) else keys[:n]
        return [*keys, *(self.key(j) for j in range(len(keys), n))]

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival + self.latency

    @property
    def e2e(self) -> float | None:
        return None if self.finish is None else self.finish - self.arrival + self.latency


REQUEST_COLUMNS = ("request", "arrival_s", "instance", "prompt_tokens", "output_tokens", "hit_tokens",
                   "first_scheduled_s", "ttft_s", "e2e_s", "preemptions")
"""The columns of ``--requests-out`` (one row per request)."""


@dataclass
class ServingStats:
    """What one replication of the engine measured in its window ``[warmup, end)``: per-request
    latencies of the requests that arrived in it, and time-weighted figures of the window."""

    warmup: float
    end: float
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    itl_values: list[float] = field(default_factory=list)  # inter-token latencies, with
    itl_weights: list[int] = field(default_factory=list)   # how many tokens had each
    preemptions: int = 0
    finished_in_window: int = 0
    input_tokens_in_window: int = 0  # prompt tokens of the requests that finished in the window
    output_tokens_in_window: int = 0
    held_area: float = 0.0  # integral over the window of blocks held by running requests
    cached_area: float = 0.0  # ... of blocks cached and not held (evictable)
    held_peak: int = 0
    used_peak: int = 0  # blocks held or cached
    steps: int = 0
    waiting_at_end: int = 0
    oversized: int = 0
    capacity: int = 0  # blocks
    requests: list[EngineRequest] | None = None  # every request, if kept (for --requests-out)

    @property
    def window(self) -> float:
        return self.end - self.warmup


class EngineInstance:
    """One serving instance on SimPy's clock: :meth:`submit` a request; ``on_finish(request)`` is
    called when it finishes. ``counters``: a :class:`kvsim.engine.Counters` that gets each
    measured request's hit at its first scheduling (the hit rate under load)."""

    def __init__(self, env: simpy.Environment, spec: EngineSpec, capacity_blocks: int, block_size: int,
                 stats: ServingStats, counters, on_finish: Callable[[EngineRequest], None] | None = None,
                 index: int = 0, fast: bool = True, tiers=None) -> None:
        self.env = env
        self.spec = spec
        self.block_size = block_size
        self.pool = BlockPool(capacity_blocks, spec.prefix_caching)
        self.stats = stats
        self.counters = counters
        self.on_finish = on_finish
        self.index = index
        self.fast = fast
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self._seconds = spec.step_time.seconds
        # Latency outside the steps: the same for every request, so the same as every arrival
        # shifted by it, which shifts the whole run: it is added to the latencies, not simulated.
        self._latency = spec.step_time.request_latency_s
        self._busy = False
        self._generation = 0
        self._skip: _Skip | None = None
        self._last_step_start = 0.0  # start of the step in progress (its end measures the ITL)
        self._uids = count(1)
        stats.capacity = capacity_blocks
        self.step_log: list | None = None  # a list: gets (start, {request index: tokens}) per step
        # Tiers below the GPU (analytic.offload.Tiers, inclusive only): an LRU PrefixCache each,
        # with its load time per token; requests whose hits are there wait for their loads.
        self.lower: list[tuple] = []
        self.ready: deque[EngineRequest] = deque()  # loaded, holding blocks: admitted first
        self.loading = 0
        if tiers is not None and (tiers.cpu_blocks or tiers.disk_blocks):
            if tiers.mode != "inclusive":
                raise ValueError("offload-mode must be inclusive with the engine (vLLM's offloading connector "
                                 f"writes through) (got {tiers.mode!r})")
            from kvsim.cache import PrefixCache

            sizes = (tiers.cpu_blocks, tiers.disk_blocks)[:len(tiers.names) - 1]
            self.lower = [(PrefixCache(n, "lru"), cost) for n, cost in zip(sizes, tiers.load_s_per_token[1:])]
            self.fast = False  # stores below follow the steps one by one: no skipping
            counters.tier_hit_blocks = [0] * (1 + len(self.lower))
            counters.tier_hit_tokens = [0] * (1 + len(self.lower))
            counters.tier_stored_blocks = [0] * (1 + len(self.lower))

    @property
    def busy(self) -> bool:
        """Whether a step is in progress (or due now)."""
        return self._busy

    # ------------------------------------------------------------------ the router's view

    @property
    def outstanding(self) -> int:
        """Requests sent here and not finished: running + waiting."""
        return len(self.running) + len(self.waiting) + len(self.ready) + self.loading

    def free_blocks(self) -> int:
        """Blocks neither cached nor held."""
        self.sync()
        return self.pool.free_uncached

    def lookup(self, runs, max_blocks: int) -> int:
        """The hit a request whose keys are ``runs`` would find here now."""
        self.sync()
        return self.pool.lookup_runs(runs, max_blocks) if self.pool.caching else 0

    # ------------------------------------------------------------------ requests in

    def submit(self, request: EngineRequest) -> None:
        """A request arrives now (``request.arrival`` is now)."""
        request.instance = self.index
        request.uid = next(self._uids)
        request.latency = self._latency
        bs = self.block_size
        if -(-(request.prompt_tokens + request.max_tokens) // bs) > self.pool.capacity:
            # vLLM refuses a request longer than the cache can ever hold (max_model_len).
            request.oversized = True
            if request.measured:
                self.stats.oversized += 1
                self.counters.requests += 1
                self.counters.oversized += 1
                self.counters.prompt_tokens += request.prompt_tokens
                self.counters.prompt_blocks += -(-request.prompt_tokens // bs)
            if self.stats.requests is not None:
                self.stats.requests.append(request)
            if self.on_finish is not None:
                self.on_finish(request)
            return
        self.waiting.append(request)
        if not self._busy:
            self._busy = True
            self._at(self.env.now, self._step)
        elif self._skip is not None:
            self._cut_skip()

    # ------------------------------------------------------------------ events

    def _at(self, time: float, callback: Callable) -> None:
        """Call ``callback()`` at ``time`` (absolute, so that a skip's step ends fall on the very
        floats the plain stepper computes), after the NORMAL events of that instant."""
        self._generation += 1
        event = simpy.Event(self.env)
        event._ok = True
        event._value = self._generation
        event.callbacks.append(lambda e: e._value == self._generation and callback())
        env = self.env
        heapq.heappush(env._queue, (time, STEP_END_PRIORITY, next(env._eid), event))

    # ------------------------------------------------------------------ one step

    def _step(self) -> None:
        """Schedule a step (or a skip of decode steps) now, or go idle."""
        if self.fast and self._try_skip():
            return
        scheduled = self._schedule()
        if not scheduled:
            self._busy = False
            return
        tokens = attention = context = 0
        for req, n in scheduled:
            c = req.computed - n  # schedule() advanced it already, as vLLM does
            tokens += n
            attention += n * c + n * (n + 1) // 2
            context += c + n
        now = self.env.now
        if self.step_log is not None:
            self.step_log.append((now, {req.index: n for req, n in scheduled}))
        end = now + self._seconds(tokens, attention, context, len(scheduled))
        self._count_step(now, end, 1)
        self._at(end, lambda: self._step_end(scheduled))

    def _schedule(self) -> list[tuple[EngineRequest, int]]:
        """vLLM's ``schedule()``: the (request, tokens) of this step, blocks allocated."""
        spec, pool, bs = self.spec, self.pool, self.block_size
        budget = spec.max_num_batched_tokens
        running = self.running
        scheduled: list[tuple[EngineRequest, int]] = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.computed
            if req.num_tokens - computed == 1 and computed % bs and (computed + 1) % bs:
                # A decode that needs no new block and fills none: the common case, inlined.
                req.computed = computed + 1
                scheduled.append((req, 1))
                budget -= 1
                i += 1
                continue
            n = min(req.num_tokens - computed, budget)
            if n <= 0:
                i += 1
                continue
            need = -(-(computed + n) // bs) - len(req.table)
            while need > pool.num_free():
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                self._grow(req, n, need)
                scheduled.append((req, n))
                budget -= n
                i += 1
                continue
            break
        if preempted:
            return scheduled
        waiting = self.waiting
        now = self.env.now
        ready = self.ready
        while ready and budget > 0 and len(running) < spec.max_num_seqs:
            # Requests whose blocks were loaded from below hold them and go first (vLLM's
            # kv_holding_waiting queue); the whole sequence must still fit.
            req = ready[0]
            if -(-req.num_tokens // bs) - len(req.table) > pool.num_free():
                return scheduled
            ready.popleft()
            n = min(req.num_tokens - req.computed, budget)
            self._grow(req, n, -(-(req.computed + n) // bs) - len(req.table))
            running.append(req)
            scheduled.append((req, n))
            budget -= n
        if ready:
            return scheduled
        while waiting and budget > 0 and len(running) < spec.max_num_seqs:
            req = waiting[0]
            # Every waiting request has nothing computed (new, or preempted: recompute).
            hit = 0
            hits: list[int] = []
            if pool.caching:
                max_hit = (req.num_tokens - 1) // bs
                keys = req.block_keys(max_hit)
                hit = pool.lookup(keys, max_hit)
                hits = pool.hit_blocks(keys, hit)
            computed = hit * bs
            taken = pool.evictable_among(hits)
            # The whole sequence must fit (vLLM's scheduler_reserve_full_isl), then this chunk.
            if -(-req.num_tokens // bs) - hit + taken > pool.num_free():
                break
            if self.lower and pool.caching:
                below = self._lower_hits(keys, hit, max_hit)
                if any(below):
                    waiting.popleft()
                    self._load(req, hits, keys, hit, below, now)
                    continue
            n = min(req.num_tokens - computed, budget)
            waiting.popleft()
            pool.touch(hits)
            req.table = hits
            req.ncached = hit
            req.computed = computed
            self._grow(req, n, -(-(computed + n) // bs) - hit)
            running.append(req)
            scheduled.append((req, n))
            budget -= n
            if req.hit_tokens is None:
                self._first_scheduled(req, computed, now)
        return scheduled

    def _grow(self, req: EngineRequest, n: int, need: int) -> None:
        """Allocate ``need`` blocks for ``n`` new tokens of ``req`` and cache the blocks they fill."""
        pool = self.pool
        if need > 0:
            pool.allocate(need)
            req.table.extend([-1] * need)
        req.computed += n
        if pool.caching:
            full = min(req.computed, req.num_tokens) // self.block_size
            table = req.table
            for j in range(req.ncached, full):
                table[j] = pool.cache(req.key(j))
            if full > req.ncached:
                if self.lower:
                    self._store_below(req.block_keys(full)[req.ncached:full])
                req.ncached = full

    # ------------------------------------------------------------------ tiers below the GPU

    def _lower_hits(self, keys: list, hit: int, max_hit: int) -> tuple[int, ...]:
        """Blocks that continue the GPU hit from each lower tier in turn (the cap applies to all)."""
        from kvsim.cache import runs_of

        found = []
        at = hit
        for tier, _ in self.lower:
            n = tier.lookup(runs_of(keys[at:max_hit]), max_hit - at) if at < max_hit else 0
            found.append(n)
            at += n
        return tuple(found)

    def _store_below(self, keys: list) -> None:
        """Write-through: blocks just cached on the GPU are stored in every lower tier (refreshed
        if there), unless more than the tier holds (vLLM's offloading gives up on those)."""
        from kvsim.cache import runs_of

        runs = runs_of(keys)
        n = len(keys)
        c = self.counters
        for i, (tier, _) in enumerate(self.lower, 1):
            if n > tier.capacity_blocks:
                continue
            if c.tier_stored_blocks and self.stats.warmup <= self.env.now < self.stats.end:
                c.tier_stored_blocks[i] += sum(1 for k in keys if k not in tier)
            tier.serve_runs(runs, n, n)

    def _load(self, req: EngineRequest, hits: list[int], keys: list, hit: int, below: tuple, now: float) -> None:
        """Admit ``req`` for loading: it holds its GPU hits and new blocks for the blocks found
        below, and waits the transfer (bytes / each tier's bandwidth) before it is scheduled."""
        pool, bs = self.pool, self.block_size
        loaded = sum(below)
        pool.touch(hits)
        pool.allocate(loaded)
        req.table = hits + [-1] * loaded
        req.ncached = hit
        req.computed = (hit + loaded) * bs
        seconds = sum(n * bs * cost for n, (_, cost) in zip(below, self.lower))
        if req.hit_tokens is None:
            self._first_scheduled(req, req.computed, now, below)
        self.loading += 1

        def loaded_(_) -> None:
            # The loaded blocks are cached (hashed) when their load completes, as vLLM does.
            self.loading -= 1
            table = req.table
            for j in range(req.ncached, hit + loaded):
                table[j] = pool.cache(req.key(j))
            req.ncached = hit + loaded
            self.ready.append(req)
            if not self._busy:
                self._busy = True
                self._at(self.env.now, self._step)

        self.env.timeout(seconds).callbacks.append(loaded_)

    def _preempt(self, req: EngineRequest) -> None:
        self.pool.free(req.table)
        req.table = []
        req.ncached = 0
        req.computed = 0
        req.preemptions += 1
        if req.measured:
            self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def _first_scheduled(self, req: EngineRequest, computed: int, now: float, below: tuple = ()) -> None:
        req.hit_tokens = computed
        req.first_scheduled = now
        if not req.measured:
            return
        c = self.counters
        c.requests += 1
        c.prompt_tokens += req.prompt_tokens
        c.prompt_blocks += -(-req.prompt_tokens // self.block_size)
        c.turn_requests[req.turn] = c.turn_requests.get(req.turn, 0) + 1
        if c.tier_hit_blocks:
            gpu = computed // self.block_size - sum(below)
            for i, blocks in enumerate((gpu, *below)):
                c.tier_hit_blocks[i] += blocks
                c.tier_hit_tokens[i] += blocks * self.block_size
        if computed:
            c.requests_hit += 1
            c.hit_tokens += computed
            c.hit_blocks += computed // self.block_size
            c.turn_hits[req.turn] = c.turn_hits.get(req.turn, 0) + 1
        self.stats.queue.append(now - req.arrival)

    def _step_end(self, scheduled: list[tuple[EngineRequest, int]]) -> None:
        now = self.env.now
        stats = self.stats
        in_window = stats.warmup <= now < stats.end
        step_start = self._last_step_start
        same = 0  # measured requests whose previous token came at the previous step's end
        for req, n in scheduled:
            if req.computed < req.num_tokens:
                continue  # a prefill chunk short of the end
            if req.max_tokens == 0:
                if req.first_token is None:
                    req.first_token = now
                self._finish(req, now)
                continue
            req.outputs += 1
            req.num_tokens += 1
            if in_window:
                stats.output_tokens_in_window += 1
            if req.first_token is None:
                req.first_token = now
            elif req.measured:
                if req.last_token == step_start:
                    same += 1
                else:
                    stats.itl_values.append(now - req.last_token)
                    stats.itl_weights.append(1)
            req.last_token = now
            if req.outputs >= req.max_tokens:
                self._finish(req, now)
        if same:
            stats.itl_values.append(now - step_start)
            stats.itl_weights.append(same)
        self._step()

    def _finish(self, req: EngineRequest, now: float) -> None:
        self.running.remove(req)
        self.pool.free(req.table)
        req.table = []
        req.finish = now
        stats = self.stats
        if stats.warmup <= now < stats.end:
            stats.finished_in_window += 1
            stats.input_tokens_in_window += req.prompt_tokens
        if req.measured:
            stats.ttft.append(req.ttft)
            stats.e2e.append(req.e2e)
            if req.outputs > 1:
                stats.tpot.append((now - req.first_token) / (req.outputs - 1))
        if stats.requests is not None:
            stats.requests.append(req)
        if self.on_finish is not None:
            self.on_finish(req)

    def _count_step(self, start: float, end: float, steps: int) -> None:
        """Time-weighted KV figures of a step from ``start`` to ``end`` (blocks as allocated now)."""
        self._last_step_start = start
        stats = self.stats
        stats.steps += steps
        pool = self.pool
        held = pool.held
        if start < stats.end and end > stats.warmup:
            if held > stats.held_peak:
                stats.held_peak = held
            used = held + len(pool.evictable)
            if used > stats.used_peak:
                stats.used_peak = used
        overlap = min(end, stats.end) - max(start, stats.warmup)
        if overlap > 0:
            stats.held_area += held * overlap
            stats.cached_area += len(pool.evictable) * overlap

    # ------------------------------------------------------------------ the fast path

    def _try_skip(self) -> bool:
        """Start a skip of decode steps if one is possible and worth it (see the module docstring)."""
        running = self.running
        spec = self.spec
        if not running or (self.waiting and len(running) < spec.max_num_seqs):
            return False
        r = len(running)
        if r > spec.max_num_batched_tokens:
            return False
        remaining = math.inf
        for req in running:
            if req.computed != req.num_tokens - 1 or not req.outputs:
                return False
            left = req.max_tokens - req.outputs
            if left < remaining:
                remaining = left
        steps = remaining  # up to the step in which the first request finishes
        if steps < 2:
            return False
        skip = _Skip(self, steps)
        if skip.steps < 2:
            return False
        self._skip = skip
        self._at(skip.times[-1], self._skip_end)
        return True

    def _cut_skip(self) -> None:
        """A request arrived during a skip: the skip ends with the step in progress (the
        plain stepper admits the arrival at that step's end)."""
        skip = self._skip
        j = bisect_left(skip.times, self.env.now)
        if j < skip.steps - 1:
            skip.cut(j + 1)
            self._at(skip.times[-1], self._skip_end)

    def sync(self) -> None:
        """Bring the blocks up to now during a skip (the steps scheduled so far have allocated
        theirs), for a router that reads them."""
        skip = self._skip
        if skip is not None:
            skip.allocate_through(min(bisect_left(skip.times, self.env.now) + 1, skip.steps))

    def _skip_end(self) -> None:
        skip = self._skip
        self._skip = None
        skip.finish()
        self._step()


class _Skip:
    """A run of ``steps`` decode steps of every running request of ``instance`` from now.

    Step s (1-based) computes position ``p_i + s - 1`` of request i (``p_i = tokens - 1``): it
    takes a new block when that position starts one, and caches the block it fills. The skip is
    as long as asked, or shorter if the free blocks would run out (the plain stepper then
    preempts).
    """

    def __init__(self, instance: EngineInstance, steps: int) -> None:
        self.instance = instance
        pool = instance.pool
        bs = instance.block_size
        running = instance.running
        self.requests = list(running)
        self.positions = [req.num_tokens - 1 for req in running]  # computed at step 1
        self.start = now = instance.env.now
        r = len(running)
        positions = sum(self.positions)
        starts_block = [0] * bs  # requests whose step-1 position is j mod bs
        # Requests by the step (mod bs) at which they fill a block: step s fills one for request
        # i when p_i + s is a multiple of bs. Each list keeps the running order.
        self.filling: list[list] = [[] for _ in range(bs)]
        for req, p in zip(running, self.positions):
            starts_block[p % bs] += 1
            self.filling[(-p) % bs].append((req, p))
        free = pool.num_free()
        seconds = instance._seconds
        times = []
        new_blocks = []  # blocks taken by each step
        taken = 0
        for s in range(1, steps + 1):
            new = starts_block[(1 - s) % bs]
            if taken + new > free:
                break
            taken += new
            new_blocks.append(new)
            context = positions + r * s  # sum of (c_i + 1), c_i = p_i + s - 1
            now = now + seconds(r, context, context, r)
            times.append(now)
        self.times = times
        self.new_blocks = new_blocks
        self.steps = len(times)
        self.allocated = 0  # steps whose blocks are taken

    def cut(self, steps: int) -> None:
        del self.times[steps:]
        del self.new_blocks[steps:]
        self.steps = steps

    def allocate_through(self, steps: int) -> None:
        """Apply the blocks of the steps up to ``steps`` (a step takes and caches its blocks when
        it is scheduled, at the previous step's end): bulk allocation, filled blocks cached, and the
        time-weighted figures of each step (the requests' tables catch up in :meth:`finish`)."""
        if steps <= self.allocated:
            return
        inst = self.instance
        pool = inst.pool
        bs = inst.block_size
        start = self.times[self.allocated - 1] if self.allocated else self.start
        stats = inst.stats
        warmup, window_end = stats.warmup, stats.end
        times, new_blocks = self.times, self.new_blocks
        caching = pool.caching
        filling = self.filling
        for s in range(self.allocated, steps):
            n = new_blocks[s]
            if n:
                pool.allocate(n)
            if caching:
                # The blocks this step fills, cached in running order as the plain stepper does
                # (the order decides which copy a lookup finds when two requests cache one key).
                for req, p in filling[(s + 1) % bs]:
                    j = (p + s + 1) // bs - 1
                    table = req.table
                    if len(table) <= j:
                        table.extend([-1] * (j + 1 - len(table)))
                    table[j] = pool.cache(req.key(j))
                    req.ncached = j + 1
            end = times[s]
            if start < window_end and end > warmup:  # as _count_step, inlined: this loop runs per step
                held = pool.held
                cached = len(pool.evictable)
                if held > stats.held_peak:
                    stats.held_peak = held
                if held + cached > stats.used_peak:
                    stats.used_peak = held + cached
                overlap = min(end, window_end) - max(start, warmup)
                stats.held_area += held * overlap
                stats.cached_area += cached * overlap
            start = end
        stats.steps += steps - self.allocated
        inst._last_step_start = times[steps - 2] if steps > 1 else self.start
        self.allocated = steps

    def finish(self) -> None:
        """The skip's steps are done: blocks as above, tokens sampled, latencies counted."""
        k = self.steps
        self.allocate_through(k)
        stats = self.instance.stats
        bs = self.instance.block_size
        start = self.start
        end = self.times[-1]
        measured = 0
        for req, p in zip(self.requests, self.positions):
            grow = -(-(p + k) // bs) - len(req.table)  # the blocks taken for its p + k tokens
            if grow > 0:
                req.table.extend([-1] * grow)
            req.computed = p + k
            req.outputs += k
            req.num_tokens += k
            if req.measured:
                if req.last_token == start:
                    measured += 1
                else:  # not scheduled in the step before the skip: its first gap is its own
                    stats.itl_values.append(self.times[0] - req.last_token)
                    stats.itl_weights.append(1)
            req.last_token = end
        r = len(self.requests)
        log = self.instance.step_log
        if log is not None:
            each = {req.index: 1 for req in self.requests}
            log.extend((t, dict(each)) for t in [start, *self.times[:-1]])
        all_measured = sum(1 for req in self.requests if req.measured)
        previous = start
        warmup, window_end = stats.warmup, stats.end
        for i, t in enumerate(self.times):
            weight = measured if i == 0 else all_measured  # step 1's others are counted above
            if weight:
                stats.itl_values.append(t - previous)
                stats.itl_weights.append(weight)
            if warmup <= t < window_end:
                stats.output_tokens_in_window += r
            previous = t
        for req in self.requests:  # in running order, as the plain stepper finishes them
            if req.outputs >= req.max_tokens:
                self.instance._finish(req, end)


# ---------------------------------------------------------------------------- summaries

LATENCIES = ("ttft", "tpot", "itl", "e2e", "queue")
"""The latencies reported, in seconds (vLLM's and the benchmark tools' names)."""


def merged(stats: Sequence[ServingStats]) -> ServingStats:
    """One replication's instances as one (lists joined, counts and areas summed, peaks summed)."""
    first = stats[0]
    out = ServingStats(first.warmup, first.end)
    for s in stats:
        for name in ("ttft", "tpot", "e2e", "queue", "itl_values", "itl_weights"):
            getattr(out, name).extend(getattr(s, name))
        for name in ("preemptions", "finished_in_window", "input_tokens_in_window", "output_tokens_in_window",
                     "held_area", "cached_area", "held_peak", "used_peak", "steps", "waiting_at_end", "oversized",
                     "capacity"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        if s.requests is not None:
            out.requests = (out.requests or []) + s.requests
    return out


def serving_summary(replications: Sequence[ServingStats]) -> dict:
    """JSON-ready figures of the engine over replications (each one :class:`ServingStats`, its
    instances merged): each latency's mean (over replications, 95% CI) and pooled p50/p90/p99;
    throughput; preemptions; KV usage (mean and peak share of the blocks, held by running
    requests and cached)."""
    import numpy as np

    from kvsim.engine import Estimate

    def values(s: ServingStats, name: str):
        if name == "itl":
            return np.repeat(np.asarray(s.itl_values, dtype=float), np.asarray(s.itl_weights, dtype=np.int64))
        return np.asarray(getattr(s, name), dtype=float)

    out: dict = {}
    for name in LATENCIES:
        per_rep = [values(s, name) for s in replications]
        pooled = np.concatenate(per_rep) if per_rep else np.array([])
        mean = Estimate.of([float(v.mean()) if len(v) else math.nan for v in per_rep]).as_dict()
        if len(pooled):
            p50, p90, p99 = (float(x) for x in np.percentile(pooled, [50, 90, 99]))
        else:
            p50 = p90 = p99 = None
        out[f"{name}_s"] = {"mean": mean, "p50": p50, "p90": p90, "p99": p99}

    def rate(attr: str) -> dict:
        return Estimate.of([getattr(s, attr) / s.window for s in replications]).as_dict()

    out["throughput"] = {"requests_per_s": rate("finished_in_window"),
                         "input_tokens_per_s": rate("input_tokens_in_window"),
                         "output_tokens_per_s": rate("output_tokens_in_window")}
    out["preemptions"] = sum(s.preemptions for s in replications)
    out["kv_usage"] = {
        "mean": Estimate.of([s.held_area / s.window / s.capacity for s in replications]).as_dict(),
        "peak": max(s.held_peak / s.capacity for s in replications),
        "cached_mean": Estimate.of([s.cached_area / s.window / s.capacity for s in replications]).as_dict(),
        "used_peak": max(s.used_peak / s.capacity for s in replications),
    }
    out["steps"] = sum(s.steps for s in replications)
    out["waiting_at_end"] = sum(s.waiting_at_end for s in replications)
    out["oversized"] = sum(s.oversized for s in replications)
    return out


def request_rows(requests: Sequence[EngineRequest]) -> list[list]:
    """The rows of ``--requests-out`` (:data:`REQUEST_COLUMNS`), by request index."""
    rows = []
    for r in sorted(requests, key=lambda r: r.index):
        rows.append([r.index, r.arrival, r.instance, r.prompt_tokens, r.max_tokens,
                     "" if r.hit_tokens is None else r.hit_tokens,
                     "" if r.first_scheduled is None else r.first_scheduled,
                     "" if r.ttft is None else r.ttft, "" if r.e2e is None else r.e2e, r.preemptions])
    return rows
