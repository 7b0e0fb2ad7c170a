"""A fleet of serving instances behind a router.

Each instance has its own prefix cache (DESIGN.md §3; capacities may differ). Every request of
a conversation goes through the router, which picks an instance (:data:`ROUTERS`).

By default a request is served the instant it arrives, exactly as in
:func:`kvsim.engine.simulate`: a fleet of one is the single-instance simulator, draw for draw.

With an :class:`~analytic.serving.EngineSpec` every instance is a step engine
(:mod:`kvsim.step_engine`, vLLM's continuous-batching scheduler): requests queue, batch, get
chunked and preempted, and take the time of their steps; the next turn of a conversation
arrives a think time after its response completes. The routers see each instance's running and
waiting requests and its cache.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

import numpy as np
import simpy

from analytic.serving import EngineSpec
from analytic.offload import Tiers
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from kvsim.cache import PrefixCache, runs_of
from kvsim.defaults import BALANCE_ABS_THRESHOLD, BALANCE_REL_THRESHOLD, CACHE_THRESHOLD, DEFAULT_MAX_EVENTS
from kvsim.engine import (ConversationSource, Counters, Estimate, SimulationResult, checked_source,
                          counting_server, drive, progress_bar, run_arrivals,
                          run_window)
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats, merged, serving_summary
from kvsim.tiered import make_cache
from kvsim.workload import Turn

# ---------------------------------------------------------------------------- instances and routers


@dataclass
class Instance:
    """One instance of the instant simulation: its cache (nothing is ever outstanding)."""

    index: int
    cache: PrefixCache
    counters: Counters
    outstanding: int = 0  # requests sent here and not finished: the load a router sees


def _request_runs(instance: Instance, turn: Turn):
    return turn.runs if turn.runs is not None else instance.cache.runs(turn.keys)


class _Rotating:
    """Least-loaded choice with ties broken in turn (round robin among the tied), so that an
    idle fleet (zero service time: nothing is ever outstanding) spreads its requests evenly."""

    def __init__(self, instances: Sequence[Instance]) -> None:
        self.instances = instances
        self._next = 0

    def least_loaded(self, candidates: Sequence[int] | None = None) -> int:
        instances = self.instances
        if candidates is None:
            candidates = range(len(instances))
        n = len(instances)
        start = self._next
        best = min(candidates, key=lambda i: (instances[i].outstanding, (i - start) % n))
        self._next = (best + 1) % n
        return best


class RandomRouter:
    """Each request to an instance drawn uniformly at random."""

    name = "random"

    def __init__(self, instances: Sequence[Instance], rng: np.random.Generator) -> None:
        self.n = len(instances)
        self._random = rng.random

    def choose(self, conversation_id: int, turn: Turn) -> int:
        return int(self._random() * self.n)


class RoundRobinRouter:
    """Requests to the instances in turn, whatever their conversation."""

    name = "round-robin"

    def __init__(self, instances: Sequence[Instance], rng: np.random.Generator) -> None:
        self.n = len(instances)
        self._next = -1

    def choose(self, conversation_id: int, turn: Turn) -> int:
        self._next = (self._next + 1) % self.n
        return self._next


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a fixed, well-spread 64-bit hash of an int (Python's own hash
    of an int is the int itself)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class AffinityRouter:
    """Session affinity by consistent hashing of the conversation id: every turn of a
    conversation goes to the same instance. Each instance owns ``VIRTUAL_NODES`` points of a
    hash ring (as ketama does): the shares stay within about 10% of 1/N (0.24-0.27 for N = 4)."""

    name = "affinity"
    VIRTUAL_NODES = 160

    def __init__(self, instances: Sequence[Instance], rng: np.random.Generator) -> None:
        ring = sorted((_mix64((i << 32) | v), i) for i in range(len(instances)) for v in range(self.VIRTUAL_NODES))
        self._points = [point for point, _ in ring]
        self._owners = [i for _, i in ring]

    def choose(self, conversation_id: int, turn: Turn) -> int:
        # Bit 63 keeps conversations' keys apart from the ring's (i << 32 | v): the finaliser is a
        # bijection, so no conversation hashes onto a ring point (conversations 0-159 once all
        # landed on instance 0, whose points are _mix64(0 .. 159)).
        j = bisect_left(self._points, _mix64(conversation_id | 1 << 63))
        return self._owners[j if j < len(self._owners) else 0]


class LeastLoadedRouter:
    """To the instance with the fewest outstanding requests (running + queued); ties in turn."""

    name = "least-loaded"

    def __init__(self, instances: Sequence[Instance], rng: np.random.Generator) -> None:
        self._rotating = _Rotating(instances)

    def choose(self, conversation_id: int, turn: Turn) -> int:
        return self._rotating.least_loaded()


class CacheAwareRouter:
    """SGLang's cache-aware routing, against the instances' real caches (SGLang's router keeps
    an approximate tree of what it sent where instead).

    If the load is imbalanced -- max - min outstanding > ``balance_abs`` and max >
    ``balance_rel`` x min -- to the least-loaded instance. Otherwise to the instance whose cache
    holds the longest prefix of the request, if it covers more than ``cache_threshold`` of the
    prompt; else to the instance with the most free cache (blocks neither cached nor held).
    Ties go to the least loaded, then in turn.
    """

    name = "cache-aware"

    def __init__(self, instances: Sequence[Instance], rng: np.random.Generator, *,
                 cache_threshold: float = CACHE_THRESHOLD, balance_abs: int = BALANCE_ABS_THRESHOLD,
                 balance_rel: float = BALANCE_REL_THRESHOLD, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if not 0 <= cache_threshold <= 1:
            raise ValueError(f"cache-threshold must be in [0, 1] (got {cache_threshold!r})")
        check_positive("balance-abs", balance_abs, allow_zero=True)
        check_positive("balance-rel", balance_rel)
        self.instances = instances
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.block_size = block_size
        self._rotating = _Rotating(instances)

    def choose(self, conversation_id: int, turn: Turn) -> int:
        instances = self.instances
        loads = [inst.outstanding for inst in instances]
        low, high = min(loads), max(loads)
        if high - low > self.balance_abs and high > self.balance_rel * low:
            return self._rotating.least_loaded()
        matches = [inst.cache.lookup(_request_runs(inst, turn), turn.max_hit_blocks) for inst in instances]
        best = max(matches)
        if min(best * self.block_size, turn.prompt_tokens) > self.cache_threshold * turn.prompt_tokens:
            return self._rotating.least_loaded([i for i, m in enumerate(matches) if m == best])
        free = [inst.cache.free_blocks for inst in instances]
        most = max(free)
        return self._rotating.least_loaded([i for i, f in enumerate(free) if f == most])


ROUTERS = {r.name: r for r in (RandomRouter, RoundRobinRouter, AffinityRouter, LeastLoadedRouter, CacheAwareRouter)}
"""Router classes by name (the names are :data:`kvsim.defaults.ROUTER_NAMES`)."""


def make_router(name: str, instances: Sequence[Instance], rng: np.random.Generator, **options):
    cls = ROUTERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)} (got {name!r})")
    if options and cls is not CacheAwareRouter:
        raise ValueError(f"router {name} takes no options (got {', '.join(options)})")
    return cls(instances, rng, **options)


# ---------------------------------------------------------------------------- the simulation


def _run_instant(source, arrival_rate, instances, router, block_size, duration, warmup, rng, progress,
                 requests: list | None = None) -> None:
    """Zero service time: :func:`kvsim.engine.drive`, each turn routed then served at once.
    ``requests``: a list that gets each request's hit (an :class:`EngineRequest` without times)."""
    servers = [counting_server(inst.cache, inst.counters, block_size, warmup) for inst in instances]
    choose = router.choose
    serial = count()

    def on_turn(turn: Turn, now: float, cid: int) -> None:
        i = choose(cid, turn)
        result = servers[i](turn, now)
        if requests is not None:
            req = EngineRequest(next(serial), now, turn.prompt_tokens, turn.output_tokens, (), turn=turn.index)
            req.instance = i
            req.hit_tokens = 0 if result.oversized else min(result.hit_blocks * block_size, turn.prompt_tokens)
            requests.append(req)

    drive(source, arrival_rate, duration, rng, on_turn, progress)
    for server in servers:
        server.close(duration)


class _EngineCache:
    """The router's view of an engine instance's cache (what :class:`CacheAwareRouter` reads)."""

    def __init__(self, engine: EngineInstance) -> None:
        self.engine = engine

    runs = staticmethod(runs_of)

    def lookup(self, runs, max_hit_blocks: int) -> int:
        return self.engine.lookup(runs, max_hit_blocks)

    @property
    def free_blocks(self) -> int:
        return self.engine.free_blocks()


class _EngineView:
    """An engine instance as the routers see it: its load and its cache."""

    def __init__(self, engine: EngineInstance) -> None:
        self.engine = engine
        self.cache = _EngineCache(engine)

    @property
    def outstanding(self) -> int:
        return self.engine.outstanding


def _run_engine(source, arrival_rate, capacities, router: str, router_options: dict, spec: EngineSpec,
                block_size, duration, warmup, rng, router_rng, progress, fast: bool = True,
                keep_requests: bool = False, tiers: Tiers | None = None) -> tuple[list[Counters], list[ServingStats]]:
    """Conversations through step engines behind ``router``: a turn is submitted when it arrives
    (its think time after the previous response finished), measured if it arrives in
    ``[warmup, duration)``. New conversations and turns stop at ``duration``; the requests
    already sent are served to the end (so every measured request finishes)."""
    env = simpy.Environment()
    timeout = env.timeout
    window = duration - warmup
    counters = [Counters(window=window) for _ in capacities]
    stats = [ServingStats(warmup, duration, requests=[] if keep_requests else None) for _ in capacities]
    serial = count()

    def finished(req: EngineRequest) -> None:
        turns, cid = req.payload
        arrive(turns, cid)

    engines = [EngineInstance(env, spec, c, block_size, stats[i], counters[i], finished, index=i, fast=fast,
                              tiers=tiers) for i, c in enumerate(capacities)]
    chooser = make_router(router, [_EngineView(e) for e in engines], router_rng, **router_options)
    choose = chooser.choose
    open_ = True

    def submit(turns, turn: Turn, cid: int) -> None:
        if not open_:
            return
        now = env.now
        keys = list(turn.keys)
        req = EngineRequest(next(serial), now, turn.prompt_tokens, turn.output_tokens, keys,
                            measured=now >= warmup, turn=turn.index, payload=(turns, cid))
        engines[choose(cid, turn)].submit(req)

    def arrive(turns, cid: int) -> None:
        turn = next(turns, None)
        if turn is None:
            return
        if turn.delay:
            timeout(turn.delay, (turns, turn, cid)).callbacks.append(due)
        else:
            submit(turns, turn, cid)

    def due(event) -> None:
        submit(*event.value)

    evictions_at_warmup = [0] * len(engines)

    def at_warmup(_) -> None:
        for i, e in enumerate(engines):
            evictions_at_warmup[i] = e.pool.evictions

    timeout(warmup).callbacks.append(at_warmup)
    run_arrivals(env, source, arrival_rate, duration, rng, lambda turns, cid: arrive(iter(turns), cid), progress)
    open_ = False
    for e, s in zip(engines, stats):
        s.waiting_at_end = len(e.waiting)
    # Serve what was sent; nothing new arrives. (An engine idle with requests left could only be
    # one whose loaded requests cannot all fit: stop rather than wait forever.)
    while any(e.outstanding and (e.busy or e.loading) for e in engines):
        env.step()
    for e, c, s, ev in zip(engines, counters, stats, evictions_at_warmup):
        c.evictions = e.pool.evictions - ev
        c.occupancy_area = s.held_area + s.cached_area
        c.occupancy_peak = s.used_peak
    return counters, stats


@dataclass(frozen=True)
class FleetResult:
    """What a fleet simulation measured: per replication, one :class:`Counters` per instance."""

    router: str
    policy: str
    capacities: tuple[int, ...]
    block_size: int
    replications: list[list[Counters]]  # [replication][instance]
    duration: float
    warmup: float
    engine: EngineSpec | None = None
    serving: list[list[ServingStats]] | None = None  # [replication][instance], with the engine
    requests: list | None = None  # without the engine, if kept: the first replication's requests and hits

    def serving_stats(self) -> list[ServingStats]:
        """One :class:`ServingStats` per replication, its instances merged."""
        return [merged(rep) for rep in self.serving]

    def instance(self, i: int) -> SimulationResult:
        return SimulationResult(self.policy, self.capacities[i], self.block_size,
                                [rep[i] for rep in self.replications], self.duration, self.warmup)

    @property
    def fleet(self) -> SimulationResult:
        """All instances together (capacity: their sum; occupancy peak: the sum of their peaks)."""
        return SimulationResult(self.policy, sum(self.capacities), self.block_size,
                                [_merged(rep) for rep in self.replications], self.duration, self.warmup)

    @property
    def load_imbalance(self) -> Estimate:
        """max / mean requests per instance (1 = perfectly even)."""
        values = []
        for rep in self.replications:
            counts = [c.requests for c in rep]
            values.append(max(counts) / np.mean(counts) if sum(counts) else math.nan)
        return Estimate.of(values)

    def as_dict(self) -> dict:
        fleet = self.fleet.as_dict()
        del fleet["capacity_blocks"]
        total = self.fleet.total("requests")
        instances = []
        for i, capacity in enumerate(self.capacities):
            r = self.instance(i)
            instances.append({
                "capacity_blocks": capacity,
                "request_share": r.total("requests") / total if total else None,
                "token_hit_rate": r.token_hit_rate.as_dict(),
                "request_hit_rate": r.request_hit_rate.as_dict(),
                "mean_occupancy_blocks": r.estimate("mean_occupancy").as_dict(),
                "evictions": r.total("evictions"),
            })
        record = {"router": self.router, "instances": len(self.capacities),
                  "capacity_blocks": list(self.capacities), **fleet,
                  "load_imbalance": self.load_imbalance.as_dict(), "per_instance": instances,
                  "engine": None, "serving": None}
        if self.engine is not None:
            record["engine"] = self.engine.as_dict()
            record["serving"] = serving_summary(self.serving_stats())
        return record


def _merged(counters: list[Counters]) -> Counters:
    total = Counters(window=counters[0].window)
    for c in counters:
        for name in ("requests", "requests_hit", "prompt_tokens", "hit_tokens", "prompt_blocks", "hit_blocks",
                     "evictions", "oversized", "occupancy_area", "occupancy_peak"):
            setattr(total, name, getattr(total, name) + getattr(c, name))
        for mine, theirs in ((total.turn_requests, c.turn_requests), (total.turn_hits, c.turn_hits)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        for name in ("tier_hit_blocks", "tier_hit_tokens", "tier_stored_blocks"):
            theirs = getattr(c, name)
            if theirs:
                mine = getattr(total, name) or [0] * len(theirs)
                setattr(total, name, [a + b for a, b in zip(mine, theirs)])
    return total


def _capacities(capacity_blocks, instances: int | None) -> tuple[int, ...]:
    if isinstance(capacity_blocks, Sequence):
        capacities = tuple(capacity_blocks)
        if not capacities:
            raise ValueError("capacity-blocks must list one capacity per instance (got none)")
        if instances is not None and instances != len(capacities):
            raise ValueError(f"instances must equal the number of capacities ({len(capacities)}) (got {instances})")
    else:
        check_positive("instances", 1 if instances is None else instances, integer=True)
        capacities = (capacity_blocks,) * (1 if instances is None else instances)
    for c in capacities:
        check_positive("capacity-blocks", c, integer=True, allow_zero=True)
    return capacities


def simulate_fleet(
    workload: Workload,
    capacity_blocks: int | Sequence[int],
    instances: int | None = None,
    router: str = "affinity",
    policy: str = "lru",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    duration: float | None = None,
    warmup: float | None = None,
    replications: int = 5,
    seed: int = 0,
    source: ConversationSource | None = None,
    router_options: dict | None = None,
    progress: bool | None = None,
    max_events: int | None = DEFAULT_MAX_EVENTS,
    tiers: Tiers | None = None,
    engine: EngineSpec | None = None,
    fast: bool = True,
    keep_requests: bool = False,
) -> FleetResult:
    """Simulate ``workload`` over ``instances`` instances of ``capacity_blocks`` blocks each (or
    one instance per entry of a list of capacities) behind ``router`` (one of :data:`ROUTERS`).

    Without ``engine`` requests take no time (a fleet of one equals :func:`kvsim.engine.simulate`).
    The window, ``source`` and seeds are as in :func:`kvsim.engine.simulate`; the router draws
    from its own stream, so every router sees the same conversations. ``max_events``: as there.
    ``tiers``: every instance has these CPU (and disk) tiers below its GPU cache.

    ``engine``: every instance is a step engine (:mod:`kvsim.step_engine`, vLLM's scheduler);
    the result's ``serving`` has what it measured (its TTFT counts the loads from below the GPU
    at the tiers' bandwidth). ``keep_requests``: every request, for ``--requests-out`` (without
    the engine, the first replication's hits); ``fast=False``: the plain stepper, for the tests.
    """
    capacities = _capacities(capacity_blocks, instances)
    if engine is not None:
        if policy != "lru":
            raise ValueError(f"policy must be lru with the engine (vLLM's block pool evicts the least recently "
                             f"freed block) (got {policy!r})")

    duration, warmup = run_window(workload, duration, warmup, source)
    source = checked_source(workload, source, block_size, duration, warmup, replications, seed, max_events)
    options = dict(router_options or {})
    if router == "cache-aware":
        options.setdefault("block_size", block_size)
    bar = progress_bar(progress, duration * replications, f"fleet {router} {policy}")
    runs, serving = [], []
    kept = None
    try:
        for r in range(replications):
            rng = np.random.default_rng([seed, r])
            router_rng = np.random.default_rng([seed, r, 1])
            tick = bar.update if bar else None
            if engine is not None:
                counters, stats = _run_engine(source, workload.arrival_rate, capacities, router, options, engine,
                                              block_size, duration, warmup, rng, router_rng, tick, fast,
                                              keep_requests, tiers)
                runs.append(counters)
                serving.append(stats)
                continue
            fleet = [Instance(i, make_cache(c, policy, tiers, block_size), Counters(window=duration - warmup))
                     for i, c in enumerate(capacities)]
            chooser = make_router(router, fleet, router_rng, **options)
            if keep_requests and kept is None:
                kept = []
            _run_instant(source, workload.arrival_rate, fleet, chooser, block_size, duration, warmup, rng, tick,
                         kept if r == 0 else None)
            runs.append([inst.counters for inst in fleet])
    finally:
        if bar:
            bar.close()
    return FleetResult(router, policy, capacities, block_size, runs, duration, warmup, engine,
                       serving if engine is not None else None, kept)
