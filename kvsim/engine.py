"""The SimPy engine: Poisson conversation arrivals through one block-level prefix cache.

An arrival process starts one process per conversation; each conversation waits its think times
and serves its turns against the cache. Requests that arrive in ``[warmup, duration)`` are
measured; the run stops at ``duration`` (conversations still open are cut, so the load on the
cache stays stationary up to the end of the window). Replication r uses the seed sequence
``(seed, r)``: replications are independent, and the same seed gives bit-identical results.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import simpy
from scipy import stats

from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from kvsim.cache import PrefixCache
from kvsim.workload import Turn, synthetic_conversation

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
    env = simpy.Environment()
    c = Counters(window=duration - warmup)
    last = [warmup, 0]  # time and cached blocks at the last change inside the window

    def serve(turn: Turn) -> None:
        result = cache.serve(turn.keys, turn.max_hit_blocks, turn.alloc_blocks)
        now = env.now
        if now < warmup:
            last[1] = len(cache)
            return
        c.occupancy_area += last[1] * (now - last[0])
        last[0], last[1] = now, len(cache)
        c.occupancy_peak = max(c.occupancy_peak, last[1])
        c.requests += 1
        c.prompt_tokens += turn.prompt_tokens
        c.prompt_blocks += turn.prompt_blocks
        c.evictions += result.evicted
        c.turn_requests[turn.index] = c.turn_requests.get(turn.index, 0) + 1
        if result.oversized:
            c.oversized += 1
        elif result.hit_blocks:
            c.requests_hit += 1
            c.hit_blocks += result.hit_blocks
            c.hit_tokens += min(result.hit_blocks * block_size, turn.prompt_tokens)
            c.turn_hits[turn.index] = c.turn_hits.get(turn.index, 0) + 1

    def conversation(turns: Iterator[Turn]):
        for turn in turns:
            if turn.delay:
                yield env.timeout(turn.delay)
            serve(turn)

    def arrivals():
        conversation_id = 0
        while True:
            yield env.timeout(rng.exponential(1.0 / arrival_rate))
            conversation_id += 1
            env.process(conversation(source(rng, conversation_id)))

    def ticker(step: float):
        while True:
            yield env.timeout(step)
            progress(step)

    env.process(arrivals())
    if progress is not None:
        env.process(ticker(duration / 100))
    env.run(until=duration)
    c.occupancy_area += last[1] * (duration - last[0])
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
        }


def simulate(
    workload: Workload,
    capacity_blocks: int,
    policy: str = "lru",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    duration: float = 3600.0,
    warmup: float = 600.0,
    replications: int = 5,
    seed: int = 0,
    source: ConversationSource | None = None,
    progress: bool | None = None,
) -> SimulationResult:
    """Simulate ``workload`` through a prefix cache of ``capacity_blocks`` blocks.

    ``source`` replaces the synthetic conversations (e.g. trace templates); arrivals stay
    Poisson at ``workload.arrival_rate``. ``progress`` shows a tqdm bar on stderr (default: when
    stderr is a terminal).
    """
    check_positive("capacity-blocks", capacity_blocks, integer=True, allow_zero=True)
    check_positive("block-size", block_size, integer=True)
    check_positive("duration", duration)
    check_positive("warmup", warmup, allow_zero=True)
    check_positive("replications", replications, integer=True)
    check_positive("seed", seed, integer=True, allow_zero=True)
    if warmup >= duration:
        raise ValueError(f"warmup must be shorter than duration ({duration:g} s) (got {warmup:g})")
    if source is None:
        def source(rng, cid):
            return synthetic_conversation(workload, block_size, rng, cid)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(duration * replications), unit="sim s", desc=f"simulate {policy}",
                   file=sys.stderr, leave=False)
    runs = []
    try:
        for r in range(replications):
            rng = np.random.default_rng([seed, r])
            cache = PrefixCache(capacity_blocks, policy)
            runs.append(run_replication(source, workload.arrival_rate, cache, block_size, duration, warmup,
                                        rng, bar.update if bar else None))
    finally:
        if bar:
            bar.close()
    return SimulationResult(policy, capacity_blocks, block_size, runs)
