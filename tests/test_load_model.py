"""The models under load (analytic/load.py): hand-worked fixed points and saturation rates."""

import json

import pytest

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.load import mean_prompt, saturation_rate, step_fixed_point, under_load
from analytic.plan import model
from analytic.serving import EngineSpec
from analytic.specs import Workload
from analytic.steptime import LinearStepTime
from kvsim.cli.main import main

W = Workload(arrival_rate=0.5, turns=TurnCount("fixed", 4), think_time=ThinkTime("exp", 20.0),
             input_tokens=TokenCount("fixed", 100), output_tokens=TokenCount("fixed", 50))
HUGE = 10**9  # blocks: nothing is evicted, the held blocks change nothing


def test_mean_prompt_by_hand():
    # 4 turns of 100 in + 50 out: prompts 100, 250, 400, 550 -> mean 325
    assert mean_prompt(W) == pytest.approx(325.0)
    geometric = Workload(turns=TurnCount("geometric", 3.0), input_tokens=TokenCount("fixed", 10),
                         output_tokens=TokenCount("fixed", 0))
    # E[L(L-1)/2] / E[L] = (q / (1-q)^2) / (1 / (1-q)) = q / (1-q) = 2 for mean 3
    assert mean_prompt(geometric) == pytest.approx(10 + 10 * 2.0, rel=1e-3)


def test_constant_step_time_by_hand():
    alpha = 0.02
    spec = EngineSpec(LinearStepTime(alpha, 0.0, 0.0), 4096, 256)
    r = under_load(W, HUGE, 16, spec, model)
    lam, o, p = 2.0, 50, 325.0  # requests/s: 0.5 conversations/s x 4 turns
    assert r.step_s == pytest.approx(alpha) and r.tpot_s == pytest.approx(alpha)
    assert r.batch == pytest.approx(lam * o * alpha)  # Little: each request spends O steps
    assert r.held_blocks == pytest.approx(lam * o * alpha * ((p + o / 2) / 16 + 0.5))
    # every step lasts alpha: the rest of the step in progress is alpha / 2, then one prefill step
    assert r.ttft_s == pytest.approx(alpha / 2 + alpha)
    assert r.token_hit_rate == pytest.approx(r.instant_token_hit_rate)


def test_linear_step_time_fixed_point_by_hand():
    alpha, beta = 0.01, 2e-5
    spec = EngineSpec(LinearStepTime(alpha, beta, 0.0), 4096, 256)
    r = under_load(W, HUGE, 16, spec, model)
    h = r.token_hit_rate
    lam, o, p = 2.0, 50, 325.0
    # s = alpha + beta x tokens per step, tokens = lam s ((O - 1) + (1 - h) P)
    assert r.step_s == pytest.approx(alpha / (1 - beta * lam * ((o - 1) + (1 - h) * p)), rel=1e-9)
    steps = step_fixed_point(spec.step_time, W, h)
    assert steps.mean == pytest.approx(r.step_s)
    assert steps.with_prefill > steps.mean > steps.decode_only  # prefill steps are the long ones


def test_saturation_rate_by_hand():
    beta = 2e-5
    spec = EngineSpec(LinearStepTime(0.01, beta, 0.0), 10**6, 10**6)
    h = under_load(W, HUGE, 16, spec, model).token_hit_rate  # the ceiling: nothing is evicted
    # the steps keep up while beta x (work per request) x requests/s < 1
    per_request = beta * ((50 - 1) + (1 - h) * 325.0)
    expected = 1 / per_request / 4  # conversations/s
    assert saturation_rate(W, HUGE, 16, spec, model) == pytest.approx(expected, rel=0.01)
    over = under_load(Workload(**{**W.__dict__, "arrival_rate": expected * 1.05}), HUGE, 16, spec, model)
    assert over.saturated and over.step_s is None


def test_load_lowers_the_hit_rate_and_caching_off_has_none():
    spec = EngineSpec(LinearStepTime(0.02, 4e-5, 1e-7), 2048, 256)
    light = under_load(W, 3000, 16, spec, model)
    heavy = under_load(Workload(**{**W.__dict__, "arrival_rate": 1.5}), 3000, 16, spec, model)
    assert light.token_hit_rate <= light.instant_token_hit_rate
    assert heavy.held_blocks > light.held_blocks and heavy.token_hit_rate < light.token_hit_rate
    off = under_load(W, 3000, 16, EngineSpec(spec.step_time, 2048, 256, prefix_caching=False), model)
    assert off.token_hit_rate == 0.0 and off.step_s > light.step_s


def test_calc_prints_the_models_under_load(capsys):
    assert main(["calc", "--engine", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    lru = record["under_load"]["methods"]["lru"]
    assert 0 < lru["token_hit_rate"] < lru["instant_token_hit_rate"]
    assert lru["saturation_arrival_rate"] > 1.0 and lru["kv_usage"] > 0
    assert main(["calc", "--engine"]) == 0
    assert "sustains up to" in capsys.readouterr().out
    assert main(["calc", "--engine", "--cpu-offload-gib", "10"]) == 2
    assert "models under load take one instance" in capsys.readouterr().err
