"""The FIFO model of a hybrid pool (analytic.hybrid_fifo): the kinds by hand, and what the
simulator's FIFO pool finds (one full-attention group is the single-group FIFO model: test_hybrid_lru.py)."""

import math

import pytest

from analytic.distributions import ThinkTime
from analytic.fifo import _fifo_groups, _fifo_state, fifo_model
from analytic.hybrid_fifo import hybrid_fifo_model
from analytic.hybrid_lru import group_sums
from analytic.specs import Workload
from analytic.ttl import _table


def test_the_pool_fills_by_kind():
    """Under FIFO a sliding group writes what a full group writes (two full groups: each half the
    pool), and a Mamba group (align) a state per created boundary: at the model's T_F the pool is
    full with 2 x the single group's occupancy + rate x T_F x the states a conversation creates."""
    w = Workload()
    sliding = hybrid_fifo_model(w, [("sliding", 128, 1), ("full", 0, 1)], 6000, 16)
    two_full = hybrid_fifo_model(w, [("full", 0, 2)], 6000, 16)
    assert sliding.token_hit_rate == pytest.approx(two_full.token_hit_rate, rel=1e-12)
    assert two_full.token_hit_rate == pytest.approx(fifo_model(w, 3000, 16, variant="che").token_hit_rate, rel=1e-6)
    mamba = hybrid_fifo_model(w, [("mamba", 0, 1), ("full", 0, 1)], 6000, 16)
    table = _table(w, 16, 6000)
    T = mamba.characteristic_time
    single = _fifo_state(T, w.arrival_rate, w.think_time, table, _fifo_groups(table)).occupancy
    states = group_sums(w, 16, "mamba")[1]  # 99 states per conversation
    assert single + w.arrival_rate * T * states == pytest.approx(6000, rel=1e-9)
    assert two_full.token_hit_rate < mamba.token_hit_rate < fifo_model(w, 6000, 16, variant="che").token_hit_rate
    # more pool, more hits
    rates = [hybrid_fifo_model(w, [("mamba", 0, 3), ("full", 0, 1)], n, 16).token_hit_rate for n in (500, 2000, 8000)]
    assert rates == sorted(rates) and rates[0] < rates[-1]


def test_without_room_or_without_full_attention():
    w = Workload()
    assert hybrid_fifo_model(w, [("sliding", 128, 1), ("full", 0, 1)], 10**7, 16).characteristic_time > 0
    assert hybrid_fifo_model(w, [("full", 0, 2)], 20, 16).token_hit_rate == 0  # a request needs 2 x 19+ blocks
    with pytest.raises(ValueError, match="needs a full-attention group"):
        hybrid_fifo_model(w, [("sliding", 128, 1)], 1000, 16)
    assert math.isfinite(hybrid_fifo_model(Workload(think_time=ThinkTime("det", 30)), [("mamba", 0, 1), ("full", 0, 1)],
                                           3000, 16).token_hit_rate)


def test_against_the_simulated_fifo_pool():
    """gpt-oss-20b's layout (1 sliding 128 + 1 full group) served FIFO by the hybrid cache: the model
    is within 1.5 points of the simulation (0.1 here: 21.6% vs 21.7%)."""
    from kvsim.engine import simulate
    from kvsim.hybrid_cache import CacheGroup, HybridLayout

    w = Workload(arrival_rate=0.5)
    layout = HybridLayout((CacheGroup("sliding", 128), CacheGroup("full")), 16, policy="fifo")
    sim = simulate(w, 4000, "fifo", block_size=16, duration=2600, warmup=1000, replications=2, seed=3,
                   progress=False, hybrid=layout)
    model = hybrid_fifo_model(w, [("sliding", 128, 1), ("full", 0, 1)], 4000, 16)
    assert abs(model.token_hit_rate - sim.token_hit_rate.mean) < 0.015
    # A 2,000-token system prompt and a small pool: the system prompt's window ages out between the
    # requests that need it (58.4% predicted, 59.7% simulated; 65.4% if it were always found).
    w = Workload(arrival_rate=0.5, system_prompt_tokens=2000)
    sim = simulate(w, 1500, "fifo", block_size=16, duration=2600, warmup=1000, replications=2, seed=3,
                   progress=False, hybrid=layout)
    model = hybrid_fifo_model(w, [("sliding", 128, 1), ("full", 0, 1)], 1500, 16)
    assert abs(model.token_hit_rate - sim.token_hit_rate.mean) < 0.025
