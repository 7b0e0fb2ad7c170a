import math

import numpy as np
import pytest

from analytic.empirical import TemplateProfile, TemplateRequest, ceiling_from_templates, lru_model_from_templates
from analytic.lru import lru_model
from analytic.specs import Workload
from kvsim.workload import synthetic_conversation


def R(t, keys, max_hit, prompt):
    return TemplateRequest(float(t), keys, max_hit, prompt)


def test_hand_worked_profile():
    # one template: blocks a,b at t=0; a,b,c at t=10 (lookup 2); a,c at t=40 (lookup 2: a then c)
    conv = [R(0, ["a", "b"], 1, 40), R(10, ["a", "b", "c"], 2, 40), R(40, ["a", "c"], 2, 40)]
    p = TemplateProfile([conv], block_size=16)
    assert p.requests == 3 and p.prompt_tokens == 120
    # ages along lookups: req2: a=10, b=10 -> running [10, 10]; req3: a=30, c=30 -> [30, 30]
    assert p.hit_tokens(5) == 0
    assert p.hit_tokens(10.5) == 32  # request 2 hits 2 blocks
    assert p.hit_tokens(31) == 64
    assert p.requests_hit(10.5) == 1 and p.requests_hit(31) == 2
    assert p.per_turn_hit(31) == {1: 0.0, 2: 1.0, 3: 1.0}
    # gaps to next access: a: 10, 30; b: 10; c: 30; last accesses: a, b, c
    assert p.occupancy(20) == pytest.approx(10 + 20 + 10 + 20 + 3 * 20)
    assert p.occupancy(100) == pytest.approx(10 + 30 + 10 + 30 + 300)


def test_prompt_cap_limits_token_hits():
    conv = [R(0, [1, 2], 0, 20), R(1, [1, 2], 2, 20)]  # prompt of 20 tokens: 2 blocks but 20 tokens
    p = TemplateProfile([conv], block_size=16)
    assert p.hit_tokens(math.inf) == 20


def test_solve_and_ceiling():
    conv = [R(0, [1, 2], 1, 30), R(5, [1, 2, 3], 2, 40)]
    p = TemplateProfile([conv, conv], block_size=16)
    ceiling = ceiling_from_templates(p)
    assert ceiling.token_hit_rate == pytest.approx(64 / 140)
    m = lru_model_from_templates(p, arrival_rate=1.0, capacity_blocks=4)
    # occupancy per template: block 1 and 2: min(5, T) + T, block 3: T -> 2 min(5,T) + 3T = 4
    assert m.characteristic_time == pytest.approx(0.8)
    assert m.token_hit_rate == 0
    big = lru_model_from_templates(p, arrival_rate=1.0, capacity_blocks=100)
    assert big.token_hit_rate == pytest.approx(ceiling.token_hit_rate)
    assert lru_model_from_templates(p, 1.0, 0).token_hit_rate == 0


def test_agrees_with_the_closed_form_on_sampled_synthetic_conversations():
    workload = Workload()
    rng = np.random.default_rng(0)
    conversations = []
    for cid in range(1, 1501):
        t, reqs = 0.0, []
        for turn in synthetic_conversation(workload, 16, rng, cid):
            t += turn.delay
            reqs.append(TemplateRequest(t, list(turn.keys), turn.max_hit_blocks, turn.prompt_tokens))
        conversations.append(reqs)
    profile = TemplateProfile(conversations, 16)
    for capacity in (2000, 9778, 20000):
        templates = lru_model_from_templates(profile, workload.arrival_rate, capacity)
        closed = lru_model(workload, capacity, 16)
        assert templates.token_hit_rate == pytest.approx(closed.token_hit_rate, abs=0.02)
        assert templates.characteristic_time == pytest.approx(closed.characteristic_time, rel=0.05)


def test_depth_variant_by_hand():
    # request 2 looks up blocks 1, 2, 3, all last touched 10 s before
    conv = [R(0, [1, 2, 3], 0, 48), R(10, [1, 2, 3, 4], 3, 60)]
    p = TemplateProfile([conv], block_size=16)
    # occupancy(10 s) = gaps min(10, 10) for blocks 1-3 + 10 s for each of the 4 last accesses = 70
    assert p.occupancy(10) == pytest.approx(70)
    # stack distances at rate 0.01: 0.7 + depth -> 0.7, 1.7, 2.7: a 2-block cache keeps the head two
    m = lru_model_from_templates(p, arrival_rate=0.01, capacity_blocks=2)
    assert m.variant == "che+depth"
    assert m.token_hit_rate == pytest.approx(32 / 108)
    assert m.per_turn_hit == {1: 0.0, 2: 1.0}
    assert lru_model_from_templates(p, 0.01, 3).token_hit_rate == pytest.approx(48 / 108)
    with pytest.raises(ValueError, match="variant"):
        lru_model_from_templates(p, 0.01, 3, variant="x")


def test_fifo_by_hand():
    from analytic.empirical import fifo_model_from_templates

    # blocks 1, 2 inserted at t=0; request 2 at t=10 finds them (not refreshed: FIFO) and adds 3;
    # request 3 at t=25 looks up 1, 2, 3: 1 and 2 are 25 s old, 3 is 15 s old
    conv = [R(0, [1, 2], 0, 32), R(10, [1, 2, 3], 2, 48), R(25, [1, 2, 3, 4], 3, 64)]
    p = TemplateProfile([conv], block_size=16)
    hit_tokens, requests_hit, turn_hits, kept = p.fifo_pass(20)
    # T=20: request 2 hits 2 blocks; request 3 misses block 1 (25 >= 20): rewrites 1-4 at t=25
    assert (hit_tokens, requests_hit, turn_hits) == (32, 1, {2: 1})
    # kept: blocks 1, 2 inserted at 0 replaced at 25 -> min(20, 25) each; block 3 inserted at 10
    # replaced at 25 -> 15; then 4 blocks keep 20 each
    assert kept == pytest.approx(20 + 20 + 15 + 4 * 20)
    hit_tokens, _, _, _ = p.fifo_pass(30)  # request 3 hits all three
    assert hit_tokens == 32 + 48
    m = fifo_model_from_templates(p, arrival_rate=1.0, capacity_blocks=10**6)
    assert m.token_hit_rate == pytest.approx(ceiling_from_templates(p).token_hit_rate)
    assert fifo_model_from_templates(p, 1.0, 0).token_hit_rate == 0
