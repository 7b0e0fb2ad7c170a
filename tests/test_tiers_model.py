"""Tiered prefix-cache models (analytic.tiers): identities with the single-tier models, tier sums,
monotonicity, a hand-worked TTFT, the capacity search, and agreement with a small per-block
simulation of the tiers' rules (below: ``simulate_tiers``)."""

import math
from collections import OrderedDict

import numpy as np
import pytest

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.plan import model
from analytic.service import ServiceModel
from analytic.specs import Workload
from analytic.tiers import (
    DEFAULT_BYTES_PER_TOKEN,
    DEFAULT_CPU_BANDWIDTH_GBPS,
    DEFAULT_DISK_BANDWIDTH_GBPS,
    capacity_for_tier_target,
    tiered_model,
)

W = Workload()  # the default: 1 conversation/s, 5 turns, exp think 30 s, 200 + 300 tokens, block 16


# ----------------------------------------------------------------------------- a per-block simulation


def _evict(tier: OrderedDict, capacity: int, lo: int = 0, hi: int = 0) -> list[int]:
    """Drop the first len - capacity keys (least recent / oldest), sparing keys in [lo, hi)."""
    excess = len(tier) - max(capacity, 0)
    victims = []
    if excess > 0:
        for key in tier:
            if not lo <= key < hi:
                victims.append(key)
                if len(victims) == excess:
                    break
        for key in victims:
            del tier[key]
    return victims


def simulate_tiers(caps, policy, mode, duration=5000.0, warmup=1000.0, seed=0, u=200, r=300, turns=5,
                   think=30.0, rate=1.0, bs=16):  # fmt: skip
    """The tiered cache's rules (analytic.tiers' docstring) on the default workload, zero service
    time, one ordered dict per tier (front = next victim). Returns per-tier and total token hit
    rates and the tokens stored into each tier per request."""
    rng = np.random.default_rng(seed)
    lru = policy == "lru"
    tiers = [OrderedDict() for _ in caps]
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * duration * 1.3) + 100))
    arrivals = arrivals[arrivals < duration]
    gaps = rng.exponential(think, (len(arrivals), turns - 1))
    times = arrivals[:, None] + np.concatenate([np.zeros((len(arrivals), 1)), np.cumsum(gaps, axis=1)], axis=1)
    order = np.argsort(times, axis=None, kind="stable")
    convs, ks = np.unravel_index(order, times.shape)
    hits, stored = [0] * len(caps), [0] * len(caps)
    prompt_tokens = requests = 0
    for t, c, k in zip(times.ravel()[order].tolist(), convs.tolist(), ks.tolist()):
        prompt = k * (u + r) + u
        full = (prompt + r) // bs
        partial = -(-(prompt + r) // bs) - full  # the partial block, held while served, never cached
        base = c << 20  # block j of conversation c is base + j
        measured = t >= warmup
        prompt_tokens += prompt * measured
        requests += measured
        if full + partial > caps[0]:
            continue  # oversized: served uncached
        h, got = 0, []
        for tier in tiers:  # the GPU's leading run, continued from the CPU, then disk
            n = 0
            while h < (prompt - 1) // bs and base + h in tier:
                h, n = h + 1, n + 1
            got.append(n)
        if measured:
            hits = [x + n * bs for x, n in zip(hits, got)]
        if mode == "exclusive":
            for tier in tiers[1:]:  # loaded or recomputed: leaves the lower tiers
                for key in range(base + got[0], base + full):
                    tier.pop(key, None)
        for i, tier in enumerate(tiers if mode == "inclusive" else tiers[:1]):
            run = got[0] if i == 0 else h
            new = 0
            for j in range(full - 1, -1, -1):  # head last: the tail is the next victim
                key = base + j
                if key not in tier:
                    tier[key] = None
                    new += 1
                elif lru or j >= run:  # LRU touch; FIFO: a recomputed block replaces its stale copy
                    tier.move_to_end(key)
                    new += j >= run
            stored[i] += new * bs * measured
            victims = _evict(tier, caps[i] - partial, base, base + full) if i == 0 else _evict(tier, caps[i])
        if mode == "exclusive":
            for i in range(1, len(tiers)):  # victims move one tier down
                stored[i] += len(victims) * bs * measured
                for key in victims:
                    tiers[i][key] = None
                victims = _evict(tiers[i], caps[i])
    rates = [x / prompt_tokens for x in hits]
    return {"tiers": rates, "total": sum(rates), "stored": [x / requests for x in stored]}


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("method", ["lru", "fifo"])
@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_zero_size_cpu_is_the_single_tier_model(method, mode):
    for gpu in (500, 3125, 9000):
        res = tiered_model(W, (gpu, 0), method=method, mode=mode)
        single = model(W, gpu, 16, method)
        assert res.token_hit_rate == single.token_hit_rate
        assert res.request_hit_rate == single.request_hit_rate
        assert res.tiers["cpu"]["token_hit_rate"] == 0.0
        assert res.tiers["cpu"]["stored_tokens_per_request"] == 0.0
        assert res.tiers["gpu"]["token_hit_rate"] == single.token_hit_rate


@pytest.mark.parametrize("method", ["lru", "fifo"])
def test_inclusive_total_is_the_single_tier_model_at_the_largest_tier(method):
    for gpu, cpu in [(3125, 6250), (3125, 12500), (2000, 2000)]:
        res = tiered_model(W, (gpu, cpu), method=method)
        assert res.token_hit_rate == pytest.approx(model(W, cpu, 16, method).token_hit_rate, abs=1e-12)
        assert res.tiers["gpu"]["token_hit_rate"] == model(W, gpu, 16, method).token_hit_rate
    # A CPU no larger than the GPU adds nothing (LRU: exactly; FIFO: the model's approximation).
    res = tiered_model(W, (6250, 3125), method=method)
    assert res.tiers["cpu"]["token_hit_rate"] == 0.0
    # Disk the same one level down: below a larger CPU it adds nothing.
    res = tiered_model(W, (3125, 6250, 5000), method=method)
    assert res.tiers["disk"]["token_hit_rate"] == 0.0
    assert tiered_model(W, (3125, 6250, 12500), method=method).token_hit_rate == pytest.approx(
        model(W, 12500, 16, method).token_hit_rate, abs=1e-12)  # fmt: skip


def test_exclusive_lru_total_is_lru_at_the_summed_capacity():
    for caps in [(3125, 3125), (3125, 6250), (1000, 2000, 4000)]:
        res = tiered_model(W, caps, method="lru", mode="exclusive")
        assert res.token_hit_rate == pytest.approx(model(W, sum(caps), 16, "lru").token_hit_rate, abs=1e-12)
        assert res.tiers["gpu"]["token_hit_rate"] == model(W, caps[0], 16, "lru").token_hit_rate


@pytest.mark.parametrize("method", ["lru", "fifo"])
@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_tiers_are_non_negative_sum_to_the_total_and_grow_with_the_cpu(method, mode):
    previous = -1.0
    for cpu in (0, 1000, 3000, 6000, 12000, 24000):
        res = tiered_model(W, {"gpu": 3000, "cpu": cpu, "disk": 4000}, method=method, mode=mode)
        rates = [tier["token_hit_rate"] for tier in res.tiers.values()]
        assert min(rates) >= 0.0
        assert sum(rates) == pytest.approx(res.token_hit_rate, abs=1e-12)
        blocks = [tier["block_hit_rate"] for tier in res.tiers.values()]
        assert sum(blocks) == pytest.approx(res.block_hit_rate, abs=1e-12)
        hit_tokens = sum(tier["hit_tokens_per_request"] for tier in res.tiers.values())
        assert hit_tokens == pytest.approx(res.token_hit_rate * res.prompt_tokens_per_request)
        assert res.token_hit_rate >= previous - 1e-12
        assert res.tiers["gpu"]["token_hit_rate"] == model(W, 3000, 16, method).token_hit_rate
        previous = res.token_hit_rate


# ----------------------------------------------------------------------------- against the simulation

# One run of 4,000 measured seconds (20,000 requests) per configuration, seed 0 (deterministic).
# At this length the simulation's own noise is about +-1 point: over seeds 0-3, model - simulation
# of the total was -0.8, +0.1, -0.2, +1.6 points for both LRU configurations below, and the worst
# tier 0.7 points. The single-tier models are within 0.3 points on this workload (README's
# validation, exp think), and the LRU tiers are those models exactly: 0.012 covers both.
SIM_TOLERANCE = 0.012


@pytest.mark.parametrize("mode, caps", [("inclusive", (3125, 6250, 12500)), ("exclusive", (3125, 3125, 6250))])
def test_lru_tiers_match_the_per_block_simulation(mode, caps):
    sim = simulate_tiers(caps, "lru", mode)
    res = tiered_model(W, caps, method="lru", mode=mode)
    for name, simulated in zip(res.tiers, sim["tiers"]):
        assert res.tiers[name]["token_hit_rate"] == pytest.approx(simulated, abs=SIM_TOLERANCE), name
    # Stored traffic (~1,000 tokens per request): within 2.8% over seeds 0-3.
    for name, simulated in zip(list(res.tiers)[1:], sim["stored"][1:]):
        assert res.tiers[name]["stored_tokens_per_request"] == pytest.approx(simulated, rel=0.04), name


# FIFO: measured at 18,000 s (model - simulation, total token hit rate, points):
#   inclusive (3125, 1562) -0.2, (3125, 6250) -0.9, (3125, 12500) -0.6, (6250, 3125) -1.0,
#             (6250, 12500) -2.3, (3125, 6250, 12500) -2.4: the model is low (the GPU outlives the
#             CPU's copy of a block it reloaded, and a smaller CPU still adds a little);
#   exclusive (3125, 1562) +0.5, (3125, 3125) +0.7, (3125, 6250) +0.6, (3125, 12500) +0.5,
#             (6250, 3125) +1.5, (6250, 6250) +1.5, (6250, 12500) +0.9: the model is high (the
#             lower tiers' share is LRU's; GPU hits do not restart the union's clock).
# At 4,000 s over seeds 0-3: inclusive -1.7..+0.2 (both), exclusive (3125, 6250) -0.2..+2.0,
# (6250, 3125) +0.6..+2.7. The bounds are those ranges widened by about half a point.
@pytest.mark.parametrize("mode, caps, low, high", [
    ("inclusive", (3125, 6250), -0.03, 0.01),
    ("inclusive", (6250, 3125), -0.03, 0.01),
    ("exclusive", (3125, 6250), -0.01, 0.03),
    ("exclusive", (6250, 3125), -0.005, 0.035),
])  # fmt: skip
def test_fifo_tiers_against_the_per_block_simulation(mode, caps, low, high):
    sim = simulate_tiers(caps, "fifo", mode)
    res = tiered_model(W, caps, method="fifo", mode=mode)
    assert low <= res.token_hit_rate - sim["total"] <= high
    # The GPU tier is the single-tier FIFO model (its evolution ignores the tiers below).
    assert res.tiers["gpu"]["token_hit_rate"] == pytest.approx(sim["tiers"][0], abs=SIM_TOLERANCE)
    assert res.tiers["cpu"]["stored_tokens_per_request"] == pytest.approx(sim["stored"][1], rel=0.04)


def test_the_gpu_ignores_the_tiers_below_in_the_simulation():
    """The derivation's first step, checked on the simulation itself: the same seed gives the GPU
    tier exactly the hits of a GPU alone (a loaded block is inserted as a recomputed one is)."""
    for policy, mode in [("fifo", "exclusive"), ("fifo", "inclusive")]:
        alone = simulate_tiers((2000,), policy, mode, duration=1500.0, warmup=300.0)
        tiered = simulate_tiers((2000, 3000), policy, mode, duration=1500.0, warmup=300.0)
        assert tiered["tiers"][0] == alone["tiers"][0]
        assert tiered["total"] > alone["total"]


# ----------------------------------------------------------------------------- time to first token


def test_ttft_by_hand():
    # L = 2, u = 200, r = 300, block 16, rate 0.5/s, exp think 30 s; GPU 400 blocks, CPU 800.
    w = Workload(arrival_rate=0.5, turns=TurnCount("fixed", 2), think_time=ThinkTime("exp", 30.0),
                 input_tokens=TokenCount("fixed", 200, name="input-tokens"),
                 output_tokens=TokenCount("fixed", 300, name="output-tokens"))  # fmt: skip
    res = tiered_model(w, (400, 800), method="lru", mode="inclusive", bytes_per_token=131072)
    # Prompts 200 and 700 tokens: 450 per request. Turn 2 reuses 31 blocks = 496 tokens with
    # probability F(T) at each capacity: GPU hit tokens per request = F(T_400) 496 / 2, CPU the
    # rest up to F(T_800) 496 / 2.
    f_gpu = model(w, 400, 16, "lru").per_turn_hit[2]
    f_all = model(w, 800, 16, "lru").per_turn_hit[2]
    gpu, cpu = f_gpu * 248, (f_all - f_gpu) * 248
    assert res.prompt_tokens_per_request == 450
    assert res.tiers["gpu"]["hit_tokens_per_request"] == pytest.approx(gpu)
    assert res.tiers["cpu"]["hit_tokens_per_request"] == pytest.approx(cpu)
    service = ServiceModel(prefill_per_token=4e-5, prefill_base=0.01)
    out = res.ttft(service, {"cpu": 25.0})
    # gpu_only = 0.01 + 4e-5 (450 - gpu); tiered = 0.01 + 4e-5 (450 - gpu - cpu) + cpu 131072 / 25e9
    # (5.24e-6 s per token loaded against 4e-5 computed: each CPU hit token saves 3.48e-5 s).
    assert out["gpu_only"] == pytest.approx(0.01 + 4e-5 * (450 - gpu))
    assert out["transfer"]["cpu"] == pytest.approx(cpu * 5.24288e-6)
    assert out["tiered"] == pytest.approx(0.01 + 4e-5 * (450 - gpu - cpu) + cpu * 5.24288e-6)
    assert out["saved"] == pytest.approx(cpu * (4e-5 - 5.24288e-6))
    # Numbers: T_400 and T_800 solve 400 = 0.5 (31 m(T) + 62 T), resp. 800; F = 1 - exp(-T/30).
    theta = 30.0
    for capacity, f in ((400, f_gpu), (800, f_all)):
        lo, hi = 0.0, 1e4
        for _ in range(200):
            mid = (lo + hi) / 2
            occ = 0.5 * (31 * theta * (1 - math.exp(-mid / theta)) + 62 * mid)
            lo, hi = (mid, hi) if occ < capacity else (lo, mid)
        assert f == pytest.approx(1 - math.exp(-lo / theta), rel=1e-9)


def test_ttft_defaults_and_bytes():
    res = tiered_model(W, (3125, 6250, 12500))
    assert res.bytes_per_token == DEFAULT_BYTES_PER_TOKEN == 131072
    out = res.ttft()
    service = ServiceModel()
    loaded = {n: res.tiers[n]["loaded_tokens_per_request"] for n in ("cpu", "disk")}
    assert out["transfer"]["cpu"] == pytest.approx(loaded["cpu"] * 131072 / (DEFAULT_CPU_BANDWIDTH_GBPS * 1e9))
    assert out["transfer"]["disk"] == pytest.approx(loaded["disk"] * 131072 / (DEFAULT_DISK_BANDWIDTH_GBPS * 1e9))
    assert out["gpu_only"] == pytest.approx(service.prefill(res.prompt_tokens_per_request
                                                            - res.tiers["gpu"]["hit_tokens_per_request"]))  # fmt: skip
    assert 0 < out["tiered"] < out["gpu_only"]
    tier = res.tiers["cpu"]
    assert tier["loaded_bytes_per_request"] == tier["loaded_tokens_per_request"] * 131072
    assert tier["stored_bytes_per_request"] == tier["stored_tokens_per_request"] * 131072
    assert res.as_dict()["ttft"] == out


# ----------------------------------------------------------------------------- capacity search


@pytest.mark.parametrize("method, mode", [("lru", "inclusive"), ("lru", "exclusive"), ("fifo", "exclusive")])
def test_capacity_for_tier_target_round_trip(method, mode):
    gpu, target = 3125, 0.5
    cpu = capacity_for_tier_target(W, target, gpu, method=method, mode=mode)
    assert tiered_model(W, (gpu, cpu), method=method, mode=mode).token_hit_rate >= target
    assert tiered_model(W, (gpu, cpu - 1), method=method, mode=mode).token_hit_rate < target
    if mode == "inclusive":
        assert cpu == model_capacity(target)  # the single-tier LRU's own answer
    disk = capacity_for_tier_target(W, 0.7, gpu, tier="disk", cpu_blocks=cpu, method=method, mode=mode)
    assert tiered_model(W, (gpu, cpu, disk), method=method, mode=mode).token_hit_rate >= 0.7
    assert tiered_model(W, (gpu, cpu, disk - 1), method=method, mode=mode).token_hit_rate < 0.7


def model_capacity(target):
    from analytic.plan import capacity_for_target

    return capacity_for_target(W, target)


def test_capacity_for_tier_target_limits():
    assert capacity_for_tier_target(W, 0.1, 3125) == 0  # the GPU alone gets 0.178
    with pytest.raises(ValueError, match="out of reach"):
        capacity_for_tier_target(W, 0.99, 3125)  # the no-eviction ceiling is 0.794... here
    with pytest.raises(ValueError, match="cpu-blocks is required"):
        capacity_for_tier_target(W, 0.5, 3125, tier="disk")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda: tiered_model(W, (0, 100)), "gpu-capacity-blocks"),
    (lambda: tiered_model(W, (100,)), "capacities-blocks must list 2 or 3"),
    (lambda: tiered_model(W, (100, -1)), "cpu-capacity-blocks"),
    (lambda: tiered_model(W, (100, 1.5)), "cpu-capacity-blocks"),
    (lambda: tiered_model(W, {"gpu": 100, "ssd": 5}), "keys gpu, cpu"),
    (lambda: tiered_model(W, 100), "capacities-blocks must be"),
    (lambda: tiered_model(W, (100, 100), method="lfu"), "method must be one of lru, fifo"),
    (lambda: tiered_model(W, (100, 100), mode="victim"), "mode must be one of inclusive, exclusive"),
    (lambda: tiered_model(W, (100, 100), bytes_per_token=0), "bytes-per-token"),
    (lambda: tiered_model("w", (100, 100)), "workload"),
    (lambda: tiered_model(W, (100, 100)).ttft(bandwidths_gbps={"cpu": 0}), "cpu-bandwidth-gbps"),
    (lambda: tiered_model(W, (100, 100)).ttft(bandwidths_gbps={"nvlink": 5}), "bandwidths-gbps keys"),
    (lambda: capacity_for_tier_target(W, 1.5, 100), "target"),
    (lambda: capacity_for_tier_target(W, 0.5, 100, tier="gpu"), "tier must be one of cpu, disk"),
])  # fmt: skip
def test_bad_inputs_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_no_tiered_total_beats_an_unlimited_cache():
    # Exclusive FIFO adds an LRU remainder to a FIFO GPU; where the single-tier FIFO model runs high
    # (deterministic think times, geometric turns) the sum once went above 1.
    from analytic.distributions import ThinkTime, TurnCount
    from analytic.ttl import no_eviction_ceiling

    w = Workload(arrival_rate=0.5, turns=TurnCount("geometric", 8), think_time=ThinkTime("det", 10.0))
    ceiling = no_eviction_ceiling(w, 16).token_hit_rate
    for method in ("lru", "fifo"):
        for mode in ("inclusive", "exclusive"):
            for cpu in (5000, 20000):  # the GPU: where LRU gets 45% of the ceiling (the sum was 1.17-1.18)
                m = tiered_model(w, (9945, cpu), 16, method, mode)
                assert m.token_hit_rate <= ceiling + 1e-12, (method, mode, cpu)
                assert all(t["token_hit_rate"] >= 0 for t in m.tiers.values())
