"""The one-pass LRU curve equals per-capacity replays of PrefixCache, request by request totals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.specs import Workload
from kvsim.cache import PrefixCache, runs_of
from kvsim.curve import CurvePoint, LRUCurve, lru_curve, simulate_curve
from kvsim.engine import simulate
from kvsim.workload import interleaved_turns
from test_cache_properties import requests as cache_requests

BS = 4  # tokens per block in these tests


def replay(requests, capacity, block_size=BS, warmup=0):
    """What lru_curve must return at ``capacity``: a plain PrefixCache replay."""
    cache = PrefixCache(capacity, "lru")
    counts = [0] * 5
    for i, (keys, max_hit, alloc, prompt) in enumerate(requests):
        r = cache.serve(keys, max_hit, alloc)
        if i < warmup:
            continue
        if r.hit_blocks:
            counts[0] += r.hit_blocks
            counts[1] += min(r.hit_blocks * block_size, prompt)
            counts[2] += 1
        counts[3] += r.evicted
        counts[4] += r.oversized
    return CurvePoint(capacity, len(requests) - min(warmup, len(requests)), *counts)


@st.composite
def curve_requests(draw):
    """(keys, max_hit_blocks, alloc_blocks, prompt_tokens): the cache tests' workloads, with
    prompts that sometimes end inside the last listed block (a hit can exceed the prompt)."""
    result = []
    for keys, max_hit, alloc in draw(cache_requests(max_requests=50)):
        prompt = max_hit * BS + draw(st.integers(-BS + 1, BS))
        result.append((keys, max_hit, alloc, max(prompt, 1)))
    return result


@settings(max_examples=300, deadline=None)
@given(requests=curve_requests(), capacities=st.lists(st.integers(0, 60), min_size=1, max_size=8),
       warmup=st.integers(0, 10), as_runs=st.booleans())
def test_curve_equals_replays(requests, capacities, warmup, as_runs):
    stream = [(runs_of(k) if as_runs else k, h, a, p) for k, h, a, p in requests]
    points = lru_curve(stream, capacities, BS, warmup_requests=warmup)
    assert points == [replay(requests, c, warmup=warmup) for c in capacities]


def synthetic_stream(workload, conversations, seed=0):
    """Requests of synthetic conversations interleaved by arrival time, as (runs, ...)."""
    return [(t.runs, t.max_hit_blocks, t.alloc_blocks, t.prompt_tokens)
            for t in interleaved_turns(workload, conversations, 16, seed)]


def test_synthetic_workload_with_system_prompt():
    w = Workload(arrival_rate=0.5, system_prompt_tokens=500, turns=TurnCount("geometric", 4),
                 think_time=ThinkTime("exp", 20.0), input_tokens=TokenCount("lognormal", 300, 1.0),
                 output_tokens=TokenCount("lognormal", 200, 1.0))
    stream = synthetic_stream(w, 150)
    capacities = [0, 10, 50, 100, 200, 400, 800, 1600, 3200, 10**6]
    points = lru_curve(stream, capacities, 16, warmup_requests=50)
    lists = [(list(k for first, count in runs for k in range(first, first + count)), h, a, p)
             for runs, h, a, p in stream]
    assert points == [replay(lists, c, 16, warmup=50) for c in capacities]
    hits = [p.hit_tokens for p in points]
    assert hits == sorted(hits) and hits[0] == 0 < hits[-1]  # LRU: more room, more hits
    assert points[-1].evictions == 0 and points[0].oversized == len(stream) - 50


def test_partial_block_makes_the_size_smaller_than_the_capacity():
    # Why the curve tracks each capacity's size M_C instead of comparing stack positions with C:
    # capacity 3. A0 A1 / 2 / 3 (a partial block), then B0 / 0 / 2 evicts A1 to fit its 2
    # blocks and frees its partial one: 2 blocks cached. A0 A1 is then at stack positions 2
    # and 3 <= 3, yet only A0 is cached.
    requests = [([0, 1], 2, 3, 10), ([100], 0, 2, 3), ([0, 1], 2, 3, 10)]
    (point,) = lru_curve(requests, [3], BS)
    assert point == replay(requests, 3) == CurvePoint(3, 3, 1, 4, 1, 2, 0)


def test_oversized_request_splits_small_capacities_off():
    # The 6- and 7-block requests are oversized at 4, 5 and 6: those replay alone from then on.
    requests = [([0, 1, 2], 2, 3, 9), ([10, 11, 12, 13, 14, 15], 5, 6, 21), ([0, 1, 2, 3], 3, 4, 13),
                ([10, 11, 12, 13, 14, 15, 16], 6, 7, 25), ([20], 0, 1, 1), ([0, 1, 2, 3], 3, 4, 13)]
    capacities = [5, 4, 6, 7, 12, 5]
    curve = LRUCurve(capacities, BS)
    for r in requests:
        curve.add(*r)
    assert sorted(curve._alone) == [4, 5, 6]
    assert curve.points() == [replay(requests, c) for c in capacities]


def test_no_capacities_and_no_requests():
    assert lru_curve([([1], 0, 1, 1)], [], BS) == []
    assert lru_curve([], [3, 0], BS) == [CurvePoint(3, 0, 0, 0, 0, 0, 0), CurvePoint(0, 0, 0, 0, 0, 0, 0)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(capacities_blocks=[-1]), "capacities"), (dict(capacities_blocks=[2.5]), "capacities"),
    (dict(block_size=0), "block_size"),
])
def test_bad_arguments(kwargs, message):
    args = dict(capacities_blocks=[4], block_size=BS) | kwargs
    with pytest.raises(ValueError, match=message):
        LRUCurve(**args)


def test_bad_requests():
    curve = LRUCurve([4], BS)
    with pytest.raises(ValueError, match="max_hit_blocks"):
        curve.add([1, 2], 3, 2, 5)
    with pytest.raises(ValueError, match="alloc_blocks"):
        curve.add([1, 2], 1, 1, 5)
    with pytest.raises(ValueError, match="counts >= 1"):
        curve.add([(1, 0)], 0, 1, 5)
    curve.add([1], 0, 1, 1)
    with pytest.raises(ValueError, match="unmeasured requests must come before"):
        curve.add([1], 0, 1, 1, measured=False)


@pytest.mark.parametrize("system_prompt", [0, 100])
def test_simulate_curve_equals_simulate(system_prompt):
    w = Workload(arrival_rate=2.0, system_prompt_tokens=system_prompt, turns=TurnCount("geometric", 3),
                 think_time=ThinkTime("exp", 5.0), input_tokens=TokenCount("lognormal", 60, 0.8),
                 output_tokens=TokenCount("fixed", 30))
    capacities = [0, 8, 40, 150, 400, 10**5]
    kw = dict(block_size=16, duration=200.0, warmup=40.0, replications=2, seed=3)
    curve = simulate_curve(w, capacities, **kw)
    for point, capacity in zip(curve, capacities):
        expected = simulate(w, capacity, "lru", **kw).as_dict()
        assert point == {"capacity_blocks": capacity} | {k: expected[k] for k in (
            "token_hit_rate", "block_hit_rate", "request_hit_rate", "evictions", "oversized", "requests_measured")}
    assert curve[0]["oversized"] == curve[0]["requests_measured"] > 0
