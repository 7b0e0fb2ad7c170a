"""The LRU model of a hybrid pool (analytic.hybrid_lru): hand-worked sums per kind of group, and
one full-attention group is the single-group LRU model (and, for analytic.hybrid_fifo, FIFO's)."""

import pytest

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.fifo import fifo_model
from analytic.hybrid_fifo import hybrid_fifo_model
from analytic.hybrid_lru import group_sums, hybrid_lru_model
from analytic.lru import lru_model
from analytic.specs import Workload


def test_group_sums_by_hand():
    # 5 turns of 200 + 300 tokens, 16-token blocks: c'_k = floor(500 k / 16) = 31, 62, 93, 125, 156
    w = Workload()
    assert group_sums(w, 16, "full") == (31 + 62 + 93 + 125, 156, 0, 0)
    # sliding 128: a hit needs cdiv(127, 16) = 8 blocks before it; the rest stay T once
    assert group_sums(w, 16, "sliding", 128) == (4 * 8, 156, 311 - 32, 0)
    # align: per turn a state at the prompt's last boundary (a new one each turn here) and one per
    # boundary the decode crosses: floor(500k/16) - floor((500k - 300)/16) = 19, 19, 18, 19, 19
    assert group_sums(w, 16, "mamba") == (4, 5 + 94, 0, 0)
    assert group_sums(w, 16, "mamba", mamba_cache_mode="all") == (4, 156, 311 - 4, 0)
    # a 1,000-token system prompt: 62 blocks pinned per full group, 8 per sliding group, 1 state
    s = Workload(system_prompt_tokens=1000)
    assert group_sums(s, 16, "full")[3] == 62 and group_sums(s, 16, "sliding", 128)[3] == 8
    assert group_sums(s, 16, "mamba")[3] == 1
    with pytest.raises(ValueError, match="kind must be one of full, sliding, mamba"):
        group_sums(w, 16, "linear")


@pytest.mark.parametrize("workload", [
    Workload(),
    Workload(system_prompt_tokens=2000, turns=TurnCount("geometric", 6)),
    Workload(input_tokens=TokenCount("lognormal", 300, 1.0), think_time=ThinkTime("gamma", 20, 0.5)),
])
@pytest.mark.parametrize("capacity", [300, 2000, 8000])
@pytest.mark.parametrize("pool,single", [(hybrid_lru_model, lru_model), (hybrid_fifo_model, fifo_model)])
def test_one_full_group_is_the_single_group_model(workload, capacity, pool, single):
    a = pool(workload, [("full", 0, 1)], capacity, 16)
    b = single(workload, capacity, 16, variant="che")
    assert a.token_hit_rate == pytest.approx(b.token_hit_rate, rel=1e-9)
    assert a.request_hit_rate == pytest.approx(b.request_hit_rate, rel=1e-9)
    assert a.characteristic_time == pytest.approx(b.characteristic_time, rel=1e-9)


def test_what_a_pool_buys_by_kind():
    """At the same pool, a sliding group keeps less than a second full group (more hits), a Mamba
    group less still; two full groups halve the pool of one."""
    w = Workload()
    two_full = hybrid_lru_model(w, [("full", 0, 2)], 6000, 16).token_hit_rate
    sliding = hybrid_lru_model(w, [("sliding", 128, 1), ("full", 0, 1)], 6000, 16).token_hit_rate
    mamba = hybrid_lru_model(w, [("mamba", 0, 1), ("full", 0, 1)], 6000, 16).token_hit_rate
    assert two_full == pytest.approx(lru_model(w, 3000, 16, variant="che").token_hit_rate, rel=1e-6)
    assert two_full < sliding < mamba


def test_plan_sizes_a_hybrid_pool(capsys):
    """kvsim plan on a hybrid model: the smallest pool whose LRU model reaches the target."""
    import json

    from kvsim.cli.main import main

    assert main(["plan", "--preset", "gpt-oss-20b", "--gpu", "h100-80gb", "--target-hit-rate", "0.6",
                 "--arrival-rate", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    n, bs = plan["pool_blocks"], plan["block_size"]
    groups = [(g["kind"], g["window"], g["groups"]) for g in plan["groups"]]
    w = Workload(arrival_rate=4)
    assert hybrid_lru_model(w, groups, n, bs).token_hit_rate >= 0.6 > hybrid_lru_model(w, groups, n - 1, bs).token_hit_rate
    assert plan["kv_cache_gib"] == pytest.approx(n * 2 * 12 * 16 * 8 * 64 * 2 / 2**30)  # 2 groups of 12 layers
    assert main(["plan", "--preset", "gpt-oss-20b", "--gpu", "h100-80gb", "--target-hit-rate", "0.6", "--method",
                 "fifo", "--arrival-rate", "4", "--json"]) == 0
    fifo = json.loads(capsys.readouterr().out)["plan"]
    from analytic.hybrid_fifo import hybrid_fifo_model

    n = fifo["pool_blocks"]
    assert hybrid_fifo_model(w, groups, n, bs).token_hit_rate >= 0.6 > hybrid_fifo_model(w, groups, n - 1, bs).token_hit_rate
    assert n > plan["pool_blocks"]  # FIFO needs more pool than LRU for the same hits
    assert main(["plan", "--preset", "gpt-oss-20b", "--gpu", "h100-80gb", "--target-hit-rate", "0.6", "--check"]) == 2
    assert "--check: a hybrid model's pool is checked by kvsim simulate --vllm" in capsys.readouterr().err
