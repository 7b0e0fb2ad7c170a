"""The SimPy engine: Poisson conversation arrivals through one block-level prefix cache.

Each arrival starts a conversation; each conversation waits its think times (SimPy timeouts) and
serves its turns against the cache (:func:`drive`). Requests that arrive in ``[warmup, duration)`` are
measured; the run stops at ``duration`` (conversations still open are cut, so the load on the
cache stays stationary up to the end of the window). Replication r uses the seed sequence
``(seed, r)``: replications are independent, and the same seed gives bit-identical results.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import simpy

from analytic.offload import TIER_NAMES, Tiers
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from kvsim.cache import PrefixCache
from kvsim.defaults import DEFAULT_MAX_EVENTS
from kvsim.tiered import make_cache, tier_tokens
from kvsim.workload import Turn, synthetic_conversation

if TYPE_CHECKING:
    from kvsim.hybrid_cache import HybridLayout

# A source of conversations: (rng, conversation id) -> its turns.
ConversationSource = Callable[[np.random.Generator, int], Iterator[Turn]]


@dataclass
class Counters:
    """What one replication measured inside its window."""

    requests: int = 0
    requests_hit: int = 0
    prompt_tokens: int = 0
    hit_tokens: int = 0
    prompt_blocks: int = 0
    hit_blocks: int = 0
    evictions: int = 0
    oversized: int = 0
    occupancy_area: float = 0.0  # integral of cached blocks over the window (block-seconds)
    occupancy_peak: int = 0  # most cached blocks after a request
    window: float = 0.0
    turn_requests: dict[int, int] = field(default_factory=dict)
    turn_hits: dict[int, int] = field(default_factory=dict)
    # A tiered cache's figures per tier, GPU first (empty for a single-tier cache): hit blocks
    # and hit tokens found in each tier (below the GPU: loaded up from it), blocks stored into it.
    tier_hit_blocks: list[int] = field(default_factory=list)
    tier_hit_tokens: list[int] = field(default_factory=list)
    tier_stored_blocks: list[int] = field(default_factory=list)

    def tier_token_hit_rate(self, i: int) -> float:
        return self.tier_hit_tokens[i] / self.prompt_tokens if self.prompt_tokens else math.nan

    def tier_block_hit_rate(self, i: int) -> float:
        return self.tier_hit_blocks[i] / self.prompt_blocks if self.prompt_blocks else math.nan

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else math.nan

    @property
    def request_hit_rate(self) -> float:
        return self.requests_hit / self.requests if self.requests else math.nan

    @property
    def block_hit_rate(self) -> float:
        return self.hit_blocks / self.prompt_blocks if self.prompt_blocks else math.nan

    @property
    def mean_occupancy(self) -> float:
        return self.occupancy_area / self.window if self.window else math.nan


def drive(
    source: ConversationSource,
    arrival_rate: float,
    duration: float,
    rng: np.random.Generator,
    on_turn: Callable[[Turn, float, int], None],
    progress: Callable[[float], None] | None = None,
) -> None:
    """Run Poisson conversation arrivals for ``duration`` seconds; call ``on_turn(turn, now,
    conversation_id)`` for every turn, in time order. Service takes no time, so the turns and
    their order do not depend on the cache: every capacity and policy sees the same requests."""
    env = simpy.Environment()
    timeout = env.timeout

    # Conversations and arrivals are event callbacks rather than SimPy processes: the same
    # events in the same order (the random draws too), without a generator resumed per turn.
    def advance(turns: Iterator[Turn], cid: int) -> None:
        """Serve the turns due now; schedule the next one that has a delay."""
        for turn in turns:
            if turn.delay:
                timeout(turn.delay, (turns, turn, cid)).callbacks.append(turn_due)
                return
            on_turn(turn, env.now, cid)

    def turn_due(event) -> None:
        turns, turn, cid = event.value
        on_turn(turn, env.now, cid)
        advance(turns, cid)

    run_arrivals(env, source, arrival_rate, duration, rng, lambda turns, cid: advance(iter(turns), cid), progress)


def run_arrivals(env: simpy.Environment, source: ConversationSource, arrival_rate: float, duration: float,
                 rng: np.random.Generator, start: Callable[[Iterator[Turn], int], None],
                 progress: Callable[[float], None] | None = None) -> None:
    """Poisson conversation arrivals on ``env`` until ``duration``: conversation ``cid`` (1, 2, ...)
    gets its turns from ``source`` and is handed to ``start(turns, cid)``, after the draw of the
    next arrival time (the order of the random draws is part of the results)."""
    timeout = env.timeout
    conversation_id = 0

    def arrival(_) -> None:
        nonlocal conversation_id
        conversation_id += 1
        turns = source(rng, conversation_id)
        timeout(rng.exponential(1.0 / arrival_rate)).callbacks.append(arrival)
        start(turns, conversation_id)

    def ticker(step: float):
        while True:
            yield env.timeout(step)
            progress(step)

    timeout(rng.exponential(1.0 / arrival_rate)).callbacks.append(arrival)
    if progress is not None:
        env.process(ticker(duration / 100))
    env.run(until=duration)


def counting_server(cache: PrefixCache, c: Counters, block_size: int, warmup: float,
                    serve_runs: Callable | None = None) -> Callable:
    """``serve(turn, now, conversation_id=0, runs=None) -> ServeResult`` (an ``on_turn`` of
    :func:`drive`): serve ``turn`` on ``cache`` (with ``cache.serve_runs``, or ``serve_runs``: the
    fleet passes ``cache.begin``) and count it in ``c`` if ``now >= warmup``. ``runs`` are the
    turn's keys as runs when the caller has them."""
    if serve_runs is None:
        serve_runs = cache.serve_runs
    from kvsim.hybrid_cache import HybridCache

    # vLLM's hybrid KV cache manager prefills the prompt and decodes the output: it takes the tokens.
    with_tokens = isinstance(cache, HybridCache)
    as_runs = cache.runs
    turn_requests = c.turn_requests
    turn_hits = c.turn_hits
    tiers = len(getattr(cache, "tiers", ()))
    if tiers and not c.tier_hit_blocks:
        c.tier_hit_blocks, c.tier_hit_tokens, c.tier_stored_blocks = [0] * tiers, [0] * tiers, [0] * tiers
    last_time, last_size = warmup, 0  # time and cached blocks at the last change inside the window

    def serve(turn: Turn, now: float, conversation_id: int = 0, runs=None):
        nonlocal last_time, last_size
        index, _, keys, max_hit, alloc, prompt_tokens, prompt_blocks, turn_runs, output_tokens = turn
        if runs is None:
            runs = as_runs(keys) if turn_runs is None else turn_runs
        if with_tokens:
            result = serve_runs(runs, max_hit, alloc, prompt_tokens, prompt_tokens + output_tokens)
        else:
            result = serve_runs(runs, max_hit, alloc)
        if now < warmup:
            last_size = len(cache)
            return result
        c.occupancy_area += last_size * (now - last_time)
        last_time, last_size = now, len(cache)
        if last_size > c.occupancy_peak:
            c.occupancy_peak = last_size
        c.requests += 1
        c.prompt_tokens += prompt_tokens
        c.prompt_blocks += prompt_blocks
        turn_requests[index] = turn_requests.get(index, 0) + 1
        hit_blocks, evicted, oversized = result
        c.evictions += evicted
        if oversized:
            c.oversized += 1
        elif hit_blocks:
            c.requests_hit += 1
            c.hit_blocks += hit_blocks
            c.hit_tokens += min(hit_blocks * block_size, prompt_tokens)
            turn_hits[index] = turn_hits.get(index, 0) + 1
        if tiers and not oversized:
            count_tiers(c, result, block_size, prompt_tokens)
        return result

    def close(end: float) -> None:
        """Count the occupancy from the last change to ``end`` (the end of the window)."""
        c.occupancy_area += last_size * (end - last_time)

    serve.close = close
    return serve


def count_tiers(c: Counters, result, block_size: int, prompt_tokens: int) -> None:
    """Add a tiered cache's :class:`~kvsim.tiered.TieredServeResult` to ``c``'s per-tier counters."""
    tokens = tier_tokens(result.tier_hits, block_size, prompt_tokens)
    for i, (h, t, stored) in enumerate(zip(result.tier_hits, tokens, result.stored)):
        c.tier_hit_blocks[i] += h
        c.tier_hit_tokens[i] += t
        c.tier_stored_blocks[i] += stored


def run_replication(
    source: ConversationSource,
    arrival_rate: float,
    cache: PrefixCache,
    block_size: int,
    duration: float,
    warmup: float,
    rng: np.random.Generator,
    progress: Callable[[float], None] | None = None,
) -> Counters:
    """One independent run; ``progress(seconds)`` is called as simulated time advances."""
    c = Counters(window=duration - warmup)
    serve = counting_server(cache, c, block_size, warmup)
    drive(source, arrival_rate, duration, rng, serve, progress)
    serve.close(duration)
    return c


@dataclass(frozen=True)
class Estimate:
    """Mean over replications and its 95% Student-t confidence interval (None with one)."""

    mean: float
    ci95: tuple[float, float] | None

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return cls(math.nan, None)
        mean = float(np.mean(values))
        if len(values) < 2:
            return cls(mean, None)
        from scipy import stats  # half a second to import: only when an interval is computed

        sem = stats.sem(values)
        if sem == 0:
            return cls(mean, (mean, mean))
        lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        return cls(mean, (float(lo), float(hi)))

    def as_dict(self) -> dict:
        return {"mean": _json_number(self.mean), "ci95": list(self.ci95) if self.ci95 else None}


def _json_number(x: float):
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class SimulationResult:
    policy: str
    capacity_blocks: int
    block_size: int
    replications: list[Counters]
    duration: float  # s of arrivals per replication
    warmup: float  # s not measured at the start

    def estimate(self, metric: str) -> Estimate:
        return Estimate.of([getattr(c, metric) for c in self.replications])

    @property
    def token_hit_rate(self) -> Estimate:
        return self.estimate("token_hit_rate")

    @property
    def request_hit_rate(self) -> Estimate:
        return self.estimate("request_hit_rate")

    @property
    def block_hit_rate(self) -> Estimate:
        return self.estimate("block_hit_rate")

    @property
    def per_turn_hit(self) -> dict[int, float]:
        """P(turn k hits), pooled over replications."""
        requests: dict[int, int] = {}
        hits: dict[int, int] = {}
        for c in self.replications:
            for k, n in c.turn_requests.items():
                requests[k] = requests.get(k, 0) + n
                hits[k] = hits.get(k, 0) + c.turn_hits.get(k, 0)
        return {k: hits[k] / requests[k] for k in sorted(requests)}

    def total(self, counter: str) -> int:
        return sum(getattr(c, counter) for c in self.replications)

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "capacity_blocks": self.capacity_blocks,
            "block_size": self.block_size,
            "replications": len(self.replications),
            "token_hit_rate": self.token_hit_rate.as_dict(),
            "request_hit_rate": self.request_hit_rate.as_dict(),
            "block_hit_rate": self.block_hit_rate.as_dict(),
            "per_turn_hit": {str(k): p for k, p in self.per_turn_hit.items()},
            "occupancy_blocks": {
                "mean": self.estimate("mean_occupancy").as_dict(),
                "peak": max(c.occupancy_peak for c in self.replications),
                "capacity": self.capacity_blocks,
            },
            "evictions": self.total("evictions"),
            "oversized": self.total("oversized"),
            "requests_measured": self.total("requests"),
            "duration": self.duration,
            "warmup": self.warmup,
            **({"tiers": self.tiers()} if self.tier_names else {}),
        }

    @property
    def tier_names(self) -> tuple[str, ...]:
        """gpu, cpu (and disk) for a tiered cache; empty for a single tier."""
        n = len(self.replications[0].tier_hit_blocks) if self.replications else 0
        return TIER_NAMES[:n]

    def tiers(self) -> dict[str, dict]:
        """Per tier: token and block hit rates (Estimates over replications, as dicts), and the
        totals over replications of hit tokens and blocks, blocks loaded up from it (its hits, below
        the GPU) and stored down into it."""
        out = {}
        for i, name in enumerate(self.tier_names):
            hit_blocks = sum(c.tier_hit_blocks[i] for c in self.replications)
            out[name] = {
                "token_hit_rate": Estimate.of([c.tier_token_hit_rate(i) for c in self.replications]).as_dict(),
                "block_hit_rate": Estimate.of([c.tier_block_hit_rate(i) for c in self.replications]).as_dict(),
                "hit_tokens": sum(c.tier_hit_tokens[i] for c in self.replications),
                "hit_blocks": hit_blocks,
                "loaded_blocks": hit_blocks if i else 0,
                "stored_blocks": sum(c.tier_stored_blocks[i] for c in self.replications),
            }
        return out


MAX_DURATION = 1e12  # seconds of arrivals (30,000 years): beyond it SimPy's clock loses its resolution
MIN_WARMUP = 600.0  # seconds
WARMUP_LIFETIMES = 5  # automatic warm-up: this many mean conversation lifetimes, at least MIN_WARMUP
MEASURED_WINDOW = 3000.0  # automatic duration: the warm-up plus this many seconds measured


def run_window(workload: Workload, duration: float | None, warmup: float | None,
               source: ConversationSource | None) -> tuple[float, float]:
    """(duration, warmup), filling the automatic ones.

    A synthetic workload's cache is in steady state after a few conversation lifetimes
    (E[turns] x E[think time]), so the automatic warm-up is ``WARMUP_LIFETIMES`` of them (at least
    ``MIN_WARMUP``); a fixed 600 s is far too short for long conversations. With another source
    the engine cannot tell, and the automatic warm-up is ``MIN_WARMUP``.
    """
    if warmup is None:
        warmup = MIN_WARMUP
        if source is None:
            warmup = max(MIN_WARMUP, WARMUP_LIFETIMES * workload.turns.mean * workload.think_time.mean)
    if duration is None:
        duration = warmup + MEASURED_WINDOW
    return duration, warmup


def expected_requests(workload: Workload, duration: float, replications: int,
                      source: ConversationSource | None = None) -> float | None:
    """Requests a simulation will serve, on average: conversations started (arrival rate x
    duration) x requests per conversation (the turns, or a source's ``mean_requests``) x
    replications. None for a source that does not say how many requests it makes."""
    per_conversation = workload.turns.mean if source is None else getattr(source, "mean_requests", None)
    if per_conversation is None:
        return None
    return workload.arrival_rate * duration * per_conversation * replications


def check_events(requests: float | None, max_events: int | None, mean_blocks: float | None = None) -> None:
    """Refuse a run above ``max_events`` requests (None: no limit), before it starts."""
    if max_events is None or requests is None or requests <= max_events:
        return
    blocks = f" of {mean_blocks:,.0f} blocks each on average" if mean_blocks is not None else ""
    raise ValueError(f"max-events: this simulation would serve about {requests:,.3g} requests{blocks}, above the "
                     f"limit of {max_events:,}; shorten --duration, lower --replications or --arrival-rate, or raise "
                     "--max-events")


def checked_source(workload: Workload, source: ConversationSource | None, block_size: int, duration: float,
                   warmup: float, replications: int, seed: int,
                   max_events: int | None = DEFAULT_MAX_EVENTS) -> ConversationSource:
    """Check the run arguments of :func:`simulate` (its size included: at most ``max_events``
    requests); return ``source`` or the synthetic one."""
    check_positive("block-size", block_size, integer=True)
    check_positive("duration", duration, at_most=MAX_DURATION)
    check_positive("warmup", warmup, allow_zero=True)
    check_positive("replications", replications, integer=True)
    check_positive("seed", seed, integer=True, allow_zero=True)
    if max_events is not None:
        check_positive("max-events", max_events, integer=True)
    if warmup >= duration:
        raise ValueError(f"warmup must be shorter than duration ({duration:g} s) (got {warmup:g})")
    mean_blocks = None
    if source is None:
        w = workload
        mean_prompt = w.system_prompt_tokens + w.input_tokens.mean + (w.turns.mean - 1) / 2 * w.tokens_per_turn
        mean_blocks = mean_prompt / block_size
    check_events(expected_requests(workload, duration, replications, source), max_events, mean_blocks)
    if source is None:
        def source(rng, cid):
            return synthetic_conversation(workload, block_size, rng, cid)
    return source


def progress_bar(progress: bool | None, simulated_seconds: float, desc: str):
    """A tqdm bar over simulated seconds on stderr, or None (``progress`` None: if stderr is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=round(simulated_seconds), unit="sim s", desc=desc, file=sys.stderr, leave=False)


def simulate(
    workload: Workload,
    capacity_blocks: int,
    policy: str = "lru",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    duration: float | None = None,
    warmup: float | None = None,
    replications: int = 5,
    seed: int = 0,
    source: ConversationSource | None = None,
    progress: bool | None = None,
    max_events: int | None = DEFAULT_MAX_EVENTS,
    tiers: Tiers | None = None,
    hybrid: HybridLayout | None = None,
) -> SimulationResult:
    """Simulate ``workload`` through a prefix cache of ``capacity_blocks`` blocks (the GPU; with
    ``tiers``, CPU and disk tiers below it: :func:`kvsim.tiered.make_cache`, per-tier results;
    with ``hybrid``, the pool of a hybrid model's groups: :class:`kvsim.hybrid_cache.HybridCache`,
    ``hybrid.policy`` (LRU as vLLM's, or FIFO), at ``hybrid.block_size``).

    ``duration`` (s of arrivals) and ``warmup`` (s not measured) default to an automatic
    window (:func:`run_window`): 5 mean conversation lifetimes of warm-up (at least 600 s), then
    3000 s measured.

    ``source`` replaces the synthetic conversations (e.g. trace templates); arrivals stay
    Poisson at ``workload.arrival_rate``. ``progress`` shows a tqdm bar on stderr (default: when
    stderr is a terminal). A run above ``max_events`` requests (:func:`expected_requests`) is
    refused with ``ValueError`` before it starts; None lifts the limit.
    """
    check_positive("capacity-blocks", capacity_blocks, integer=True, allow_zero=True)
    if hybrid is not None and (policy != hybrid.policy or tiers is not None or hybrid.block_size != block_size):
        raise ValueError(f"hybrid: vLLM's hybrid KV cache manager is one pool ({hybrid.policy}) without tiers at its own "
                         f"block size ({hybrid.block_size}) (got policy {policy!r}, block size {block_size}"
                         f"{', tiers' if tiers is not None else ''})")
    duration, warmup = run_window(workload, duration, warmup, source)
    source = checked_source(workload, source, block_size, duration, warmup, replications, seed, max_events)
    bar = progress_bar(progress, duration * replications, f"simulate {policy}")
    runs = []
    try:
        for r in range(replications):
            rng = np.random.default_rng([seed, r])
            cache = hybrid.cache(capacity_blocks) if hybrid else make_cache(capacity_blocks, policy, tiers, block_size)
            runs.append(run_replication(source, workload.arrival_rate, cache, block_size, duration, warmup,
                                        rng, bar.update if bar else None))
    finally:
        if bar:
            bar.close()
    return SimulationResult(policy, capacity_blocks, block_size, runs, duration, warmup)
