"""Capacity planning: the inverse of the TTL models and the hit-rate curve."""

import pytest

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.fifo import fifo_model
from analytic.lru import lru_model
from analytic.plan import capacity_for_target, hit_rate_curve, model
from analytic.specs import Workload
from analytic.ttl import no_eviction_ceiling

SANITY = Workload()
SYSTEM = Workload(
    system_prompt_tokens=1500, turns=TurnCount("geometric", 3.0), think_time=ThinkTime("gamma", 20.0, 0.7)
)
DET = Workload(think_time=ThinkTime("det", 30.0), arrival_rate=0.5)
DRAWN = Workload(input_tokens=TokenCount("lognormal", 200, 1.0, name="input-tokens"))


def rate(result, metric):
    return result.token_hit_rate if metric == "token" else result.request_hit_rate


@pytest.mark.parametrize(
    "w,target,metric,method",
    [
        (SANITY, 0.5, "token", "lru"),
        (SANITY, 0.07, "token", "lru"),
        (SANITY, 0.5, "token", "fifo"),
        (SANITY, 0.3, "request", "lru"),
        (SANITY, 0.3, "request", "fifo"),
        (SYSTEM, 0.8, "token", "lru"),
        (SYSTEM, 0.8, "token", "fifo"),
        (DET, 0.6, "token", "lru"),
        (DET, 0.4, "request", "fifo"),
        (DRAWN, 0.25, "token", "lru"),
    ],
)
def test_plan_inverts_the_model(w, target, metric, method):
    capacity = capacity_for_target(w, target, metric=metric, method=method)
    assert rate(model(w, capacity, method=method), metric) >= target
    assert rate(model(w, capacity - 1, method=method), metric) < target


def test_plan_passes_the_lru_variant():
    che = capacity_for_target(SANITY, 0.4, variant="che")
    gauss = capacity_for_target(SANITY, 0.4, variant="che+gaussian")
    assert lru_model(SANITY, gauss, variant="che+gaussian").token_hit_rate >= 0.4
    assert abs(che - gauss) < 0.05 * che  # close, yet each the exact inverse of its own variant


def test_fifo_needs_more_memory_than_lru_for_the_same_target():
    assert capacity_for_target(SANITY, 0.5, method="fifo") > capacity_for_target(SANITY, 0.5, method="lru")


@pytest.mark.parametrize("metric", ["token", "request"])
def test_target_at_or_above_the_ceiling_is_out_of_reach(metric):
    ceiling = rate(no_eviction_ceiling(SANITY), metric)
    for target in (ceiling, min(1.0, ceiling + 0.01)):
        with pytest.raises(ValueError, match=f"out of reach.*{ceiling:.4g}"):
            capacity_for_target(SANITY, target, metric=metric)
    capacity_for_target(SANITY, ceiling - 0.01, metric=metric)  # just below: reachable


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target=0.0), "target must be"),
        (dict(target=1.5), "target must be"),
        (dict(target=0.5, metric="block"), "metric must be one of token, request"),
        (dict(target=0.5, method="lfu"), "method must be one of lru, fifo"),
        (dict(target=0.5, block_size=0), "block-size"),
    ],
)
def test_bad_plan_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        capacity_for_target(SANITY, **kwargs)


def test_hit_rate_curve_rows():
    capacities = [1250, 3125, 6250, 12500]
    rows = hit_rate_curve(SANITY, capacities)
    assert [(r["capacity_blocks"], r["method"]) for r in rows] == [(c, m) for c in capacities for m in ("lru", "fifo")]
    for r in rows:
        direct = (lru_model if r["method"] == "lru" else fifo_model)(SANITY, r["capacity_blocks"])
        assert r["token_hit_rate"] == direct.token_hit_rate
        assert r["request_hit_rate"] == direct.request_hit_rate
        assert r["capacity_tokens"] == 16 * r["capacity_blocks"]
        assert r["ceiling_token_hit_rate"] == pytest.approx(no_eviction_ceiling(SANITY).token_hit_rate)
    for method in ("lru", "fifo"):
        token = [r["token_hit_rate"] for r in rows if r["method"] == method]
        assert token == sorted(token)


def test_hit_rate_curve_single_method_and_bad_method():
    rows = hit_rate_curve(SANITY, [100, 1000], methods="lru", variant="che+gaussian")
    assert [r["variant"] for r in rows] == ["che+gaussian"] * 2
    with pytest.raises(ValueError, match="method must be one of"):
        hit_rate_curve(SANITY, [100], methods=("lru", "arc"))
