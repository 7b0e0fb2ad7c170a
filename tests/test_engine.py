import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.specs import Workload
from kvsim import simulate
from kvsim.workload import KEY_STRIDE, synthetic_conversation

BIG = 10**9


def small(**kw):
    base = dict(arrival_rate=2.0, turns=TurnCount("fixed", 4), think_time=ThinkTime("exp", 5.0),
                input_tokens=TokenCount("fixed", 40), output_tokens=TokenCount("fixed", 30))
    base.update(kw)
    return Workload(**base)


def test_synthetic_turns_by_hand():
    w = small(system_prompt_tokens=40, turns=TurnCount("fixed", 2), input_tokens=TokenCount("fixed", 10),
              output_tokens=TokenCount("fixed", 20))
    turns = [t._replace(keys=list(t.keys)) for t in synthetic_conversation(w, 16, np.random.default_rng(1), 7)]
    # turn 1: prompt 40 + 10 = 50, total 70 -> 4 full blocks (2 system blocks + 2 own), 5 allocated
    t1, t2 = turns
    assert (t1.index, t1.delay, t1.prompt_tokens, t1.max_hit_blocks, t1.alloc_blocks, t1.prompt_blocks) == (
        1, 0.0, 50, 3, 5, 4)
    assert t1.keys == [0, 1, 7 * KEY_STRIDE + 2, 7 * KEY_STRIDE + 3]
    # turn 2: prompt 70 + 10 = 80, total 100 -> 6 full blocks; lookup cap floor(79/16) = 4
    assert (t2.index, t2.prompt_tokens, t2.max_hit_blocks, t2.alloc_blocks) == (2, 80, 4, 7)
    assert t2.delay > 0 and t2.keys[:4] == t1.keys and len(t2.keys) == 6


def test_infinite_capacity_fixed_turns():
    L = 4
    r = simulate(small(turns=TurnCount("fixed", L)), BIG, "lru", duration=400, warmup=100, replications=2)
    assert r.per_turn_hit == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    for c in r.replications:
        assert c.requests_hit == c.requests - c.turn_requests[1]
        assert c.evictions == 0 and c.oversized == 0
    assert r.request_hit_rate.mean == pytest.approx((L - 1) / L, abs=0.02)
    # every turn after the first hits its whole previous context, in whole blocks
    per_turn_hit_tokens = [0, (70 // 16) * 16, (140 // 16) * 16, (210 // 16) * 16]
    prompts = [40, 110, 180, 250]
    expected = sum(per_turn_hit_tokens) / sum(prompts)
    assert r.token_hit_rate.mean == pytest.approx(expected, abs=0.02)


def test_same_seed_bit_identical_and_seeds_differ():
    w = small(think_time=ThinkTime("lognormal", 5.0, 1.5))
    a = simulate(w, 200, "fifo", duration=300, warmup=50, replications=2, seed=3).as_dict()
    b = simulate(w, 200, "fifo", duration=300, warmup=50, replications=2, seed=3).as_dict()
    c = simulate(w, 200, "fifo", duration=300, warmup=50, replications=2, seed=4).as_dict()
    assert a == b
    assert a != c


def test_capacity_above_everything_all_policies_equal_infinite():
    w = small(turns=TurnCount("geometric", 3), system_prompt_tokens=50)
    results = [simulate(w, cap, p, duration=200, warmup=20, replications=1).as_dict()
               for p in ("lru", "fifo", "lfu") for cap in (BIG, 10**6)]
    assert all(r["token_hit_rate"] == results[0]["token_hit_rate"] for r in results)
    assert all(r["evictions"] == 0 for r in results)


def test_small_cache_evicts_and_hits_less():
    w = small()
    big = simulate(w, BIG, "lru", duration=300, warmup=50, replications=1)
    tiny = simulate(w, 60, "lru", duration=300, warmup=50, replications=1)
    assert tiny.total("evictions") > 0
    assert tiny.token_hit_rate.mean < big.token_hit_rate.mean
    assert max(c.occupancy_peak for c in tiny.replications) <= 60


def test_oversized_requests_counted():
    # contexts grow to 4 x 70 = 280 tokens = 18 blocks; a 10-block cache cannot hold late turns
    r = simulate(small(), 10, "lru", duration=200, warmup=20, replications=1)
    assert r.total("oversized") > 0


def test_confidence_interval():
    r = simulate(small(), 150, "lru", duration=300, warmup=50, replications=4)
    est = r.token_hit_rate
    lo, hi = est.ci95
    assert lo < est.mean < hi
    assert simulate(small(), 150, "lru", duration=300, warmup=50, replications=1).token_hit_rate.ci95 is None


@pytest.mark.parametrize("kw,needle", [
    (dict(duration=10, warmup=20), "warmup"), (dict(replications=0), "replications"),
    (dict(duration=-1), "duration"),
])
def test_bad_arguments(kw, needle):
    with pytest.raises(ValueError, match=needle):
        simulate(small(), 100, "lru", **kw)
    with pytest.raises(ValueError, match="policy"):
        simulate(small(), 100, "mru", duration=10, warmup=1)


@settings(max_examples=25, deadline=None)
@given(capacity=st.integers(0, 400), policy=st.sampled_from(["lru", "fifo", "lfu"]),
       system=st.integers(0, 60), turns=st.integers(1, 5), seed=st.integers(0, 3))
def test_properties(capacity, policy, system, turns, seed):
    w = small(turns=TurnCount("fixed", turns), system_prompt_tokens=system)
    r = simulate(w, capacity, policy, duration=60, warmup=10, replications=1, seed=seed)
    c = r.replications[0]
    assert c.occupancy_peak <= capacity
    assert c.hit_tokens <= c.prompt_tokens - c.requests  # every request computes >= 1 prompt token
    assert c.requests_hit <= c.requests
    assert 0 <= c.hit_blocks <= c.prompt_blocks
    if turns == 1 and system < 16:
        assert c.hit_tokens == 0
    assert math.isnan(c.token_hit_rate) or 0 <= c.token_hit_rate < 1


def test_run_keys_view():
    from kvsim.workload import RunKeys
    keys = RunKeys(((0, 2), (100, 3)))
    assert list(keys) == [0, 1, 100, 101, 102] and len(keys) == 5
    assert (keys[0], keys[2], keys[4], keys[-1], keys[-5]) == (0, 100, 102, 102, 0)
    assert keys[1:4] == [1, 100, 101] and 101 in keys and 2 not in keys
    for bad in (5, -6):
        with pytest.raises(IndexError):
            keys[bad]
    assert list(RunKeys(())) == [] and len(RunKeys(())) == 0


@pytest.mark.parametrize("system", [0, 20, 100])
def test_synthetic_runs_are_the_keys(system):
    w = small(system_prompt_tokens=system, turns=TurnCount("fixed", 5))
    for turn in synthetic_conversation(w, 16, np.random.default_rng(2), 3):
        assert [k for first, count in turn.runs for k in range(first, first + count)] == list(turn.keys)
        assert all(count > 0 for _, count in turn.runs)
