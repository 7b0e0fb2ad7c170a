"""Fleet models (analytic.fleet): the affinity router as the single-instance model at lambda/N, the
random router's Che model against its N = 1 limit, a hand-worked case, a per-path evaluation of
its formulas, its infinite-capacity limit, and the capacity search; its Gaussian variant against
lru_model's at N = 1, a hand-worked case, its smoothness and its large-capacity limit."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.fifo import fifo_model
from analytic.fleet import FLEET_ROUTERS, FleetModelResult, capacity_to_match, fleet_model
from analytic.lru import lru_model
from analytic.specs import Workload
from analytic.ttl import _table  # the size paths the per-path check evaluates by hand
from analytic.ttl import no_eviction_ceiling


def workload(L=5, u=200, r=300, S=0, think=None, rate=1.0, turns=None, drawn=False):
    if drawn:
        input_tokens = TokenCount("lognormal", u, 1.0, name="input-tokens")
        output_tokens = TokenCount("lognormal", r, 0.7, name="output-tokens")
    else:
        input_tokens = TokenCount("fixed", u, name="input-tokens")
        output_tokens = TokenCount("fixed", r, name="output-tokens")
    return Workload(
        arrival_rate=rate,
        turns=turns or TurnCount("fixed", L),
        think_time=think or ThinkTime("exp", 30.0),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        system_prompt_tokens=S,
    )


def same_result(a, b, rel=1e-9):
    assert a.characteristic_time == pytest.approx(b.characteristic_time, rel=rel)
    assert a.token_hit_rate == pytest.approx(b.token_hit_rate, rel=rel)
    assert a.request_hit_rate == pytest.approx(b.request_hit_rate, rel=rel)
    assert a.per_turn_hit == pytest.approx(b.per_turn_hit, rel=rel)
    assert a.per_turn_context_hit == pytest.approx(b.per_turn_context_hit, rel=rel)
    assert a.mean_occupancy_blocks == pytest.approx(b.mean_occupancy_blocks, rel=rel)


# ----------------------------------------------------------------------------- one instance


THINK_TIMES = [ThinkTime("exp", 30.0), ThinkTime("gamma", 30.0, 0.5), ThinkTime("lognormal", 30.0, 1.5)]


@pytest.mark.parametrize("think", THINK_TIMES)
@pytest.mark.parametrize("turns", [TurnCount("fixed", 5), TurnCount("geometric", 4)])
@pytest.mark.parametrize("drawn", [False, True])
def test_one_instance_is_the_single_instance_lru_model(think, turns, drawn):
    w = workload(S=1000, think=think, turns=turns, drawn=drawn)
    single = lru_model(w, 8000, variant="che")
    random = fleet_model(w, [8000], "random")
    affinity = fleet_model(w, [8000], "affinity", variant="che")
    assert random.variant == affinity.variant == "che"
    for fleet in (random, affinity):
        (instance,) = fleet.per_instance
        same_result(instance, single)
        assert fleet.token_hit_rate == pytest.approx(single.token_hit_rate, rel=1e-9)
        assert fleet.request_hit_rate == pytest.approx(single.request_hit_rate, rel=1e-9)
        assert fleet.per_turn_hit == pytest.approx(single.per_turn_hit, rel=1e-9)


def test_one_instance_with_deterministic_think_times_is_the_che_step():
    w = workload(think=ThinkTime("det", 30.0))
    for capacity in (3000, 8000):
        che = fleet_model(w, [capacity], "random", variant="che").per_instance[0]
        same_result(che, lru_model(w, capacity, variant="che"))


@pytest.mark.parametrize("think", [ThinkTime("det", 30.0), ThinkTime("gamma", 30.0, 0.5)])
@pytest.mark.parametrize("turns", [TurnCount("fixed", 5), TurnCount("geometric", 4)])
@pytest.mark.parametrize("drawn", [False, True])
def test_one_instance_gaussian_is_the_single_instance_gaussian(think, turns, drawn):
    # Rate 0.2/s: at 2500 and 3500 blocks the Gaussian survival is well between 0 and 1 (at
    # 10**5 it is ~1).
    w = workload(S=1000, think=think, turns=turns, drawn=drawn, rate=0.2)
    for capacity in (2500, 3500, 100_000):
        single = lru_model(w, capacity, variant="che+gaussian")
        fleet = fleet_model(w, [capacity], "random", variant="che+gaussian")
        assert fleet.variant == "che+gaussian"
        same_result(fleet.per_instance[0], single)
        assert 0.1 < single.per_turn_context_hit[2] < 0.95 or capacity == 100_000


def test_oversized_turns_match_the_single_instance_model():
    # 5 turns of 500 tokens: turn 4 needs 125 blocks, turn 5 157: both are oversized at 100 blocks.
    w = workload()
    same_result(fleet_model(w, [100], "random").per_instance[0], lru_model(w, 100, variant="che"))


# ----------------------------------------------------------------------------- affinity


@pytest.mark.parametrize("method", ["lru", "fifo"])
def test_affinity_is_the_single_instance_model_at_a_share_of_the_rate(method):
    w = workload(L=4, S=300, rate=2.0)
    capacities = [4000, 9000, 9000]
    fleet = fleet_model(w, capacities, "affinity", method=method)
    share = replace(w, arrival_rate=2.0 / 3)
    single = lru_model if method == "lru" else fifo_model
    expected = [single(share, c) for c in capacities]
    assert fleet.per_instance == tuple(expected)
    assert fleet.instances == 3 and fleet.method == method
    assert fleet.token_hit_rate == pytest.approx(np.mean([r.token_hit_rate for r in expected]), rel=1e-12)
    assert fleet.request_hit_rate == pytest.approx(np.mean([r.request_hit_rate for r in expected]), rel=1e-12)
    for k, hit in fleet.per_turn_hit.items():
        assert hit == pytest.approx(np.mean([r.per_turn_hit[k] for r in expected]), rel=1e-12)
    assert expected[0].token_hit_rate < expected[1].token_hit_rate  # unequal capacities really differ


# ----------------------------------------------------------------------------- random routing


def test_random_three_turns_two_instances_by_hand():
    # u = r = 160 tokens (10 blocks each), no system prompt, exp think (mean 30 s), rate 1/s,
    # N = 2 (p = 1/2), 600 blocks per instance. Contexts 20, 40, 60 blocks; prompts 160, 480,
    # 800 tokens (caps 9, 29, 49 blocks never bind). Turn 2 finds turn 1's context with
    # p F(T); turn 3 finds turn 2's with p F(T), turn 1's with p (1-p) F^{*2}(T). Occupancy:
    #   600 = (1/2) [ (20 + 40 + 60) T - p (20 + 40) (T - m_1(T)) - p (1-p) 20 (T - m_2(T)) ].
    theta, p, C = 30.0, 0.5, 600

    def erlang(T):
        x = T / theta
        F1, F2 = -math.expm1(-x), 1 - math.exp(-x) * (1 + x)
        m1, m2 = theta * F1, 2 * theta - math.exp(-x) * (2 * theta + T)  # integral_0^T (1 - F^{*j})
        return F1, F2, m1, m2

    def occupancy(T):
        _, _, m1, m2 = erlang(T)
        return 0.5 * (120 * T - p * 60 * (T - m1) - p * (1 - p) * 20 * (T - m2))

    T = optimize.brentq(lambda T: occupancy(T) - C, 1e-9, 1e4, xtol=1e-12, rtol=1e-14)
    F1, F2, _, _ = erlang(T)
    fleet = fleet_model(workload(L=3, u=160, r=160), [C, C], "random")
    instance = fleet.per_instance[0]
    assert instance.characteristic_time == pytest.approx(T, rel=1e-9)
    turn2, turn3 = p * F1, p * F1 + p * (1 - p) * F2
    hit_tokens = 16 * (20 * p * F1 + 40 * p * F1 + 20 * p * (1 - p) * F2)
    assert fleet.token_hit_rate == pytest.approx(hit_tokens / (160 + 480 + 800), rel=1e-9)
    assert fleet.request_hit_rate == pytest.approx((turn2 + turn3) / 3, rel=1e-9)
    assert fleet.per_turn_hit == pytest.approx({2: turn2, 3: turn3}, rel=1e-9)
    assert instance.per_turn_context_hit == pytest.approx({2: turn2, 3: turn3}, rel=1e-9)
    assert instance.mean_occupancy_blocks == pytest.approx(C, rel=1e-9)


REL_NODES = 1e-4  # 256 mid-quantile nodes of S_j against a fine grid (they agree to ~1e-5 here)


@pytest.mark.parametrize("think", [ThinkTime("det", 30.0), ThinkTime("gamma", 30.0, 0.5)])
def test_random_gaussian_three_turns_two_instances_by_hand(think):
    # The case above with the Gaussian variant at 2600 blocks per instance. The content others
    # touched within x (rate 1/2 per instance; contexts 20, 40, 60 blocks) has
    #   mu(x)  = (1/2) [ 120 x - p 60 (x - m_1(x)) - p (1-p) 20 (x - m_2(x)) ],
    #   s^2(x) = (1/2) [ 5600 x - p 2000 (x - m_1(x)) - p (1-p) 400 (x - m_2(x)) ]
    # (squares: 400 + 1600 + 3600; 400 + 1600; 400). Turn 2 finds turn 1's context (20 blocks)
    # p E[.](S_1); turn 3 turn 2's (40) p E[.](S_1) and turn 1's (20) p (1-p) E[.](S_2).
    p, C = 0.5, 2600
    if think.kind == "det":
        x = np.array([30.0, 60.0])  # S_1, S_2
        m = np.minimum(x[None, :], np.array([[30.0], [60.0]]))  # m_j(x) = E[min(S_j, x)]
    else:  # S_j is gamma(j/cv^2): m_j and the expectations over S_j on a fine grid
        laws = [stats.gamma(j / think.cv**2, scale=think.mean * think.cv**2) for j in (1, 2)]
        x = np.linspace(0.0, laws[1].ppf(1 - 1e-13), 200_001)
        m = np.array([integrate.cumulative_trapezoid(law.sf(x), x, initial=0.0) for law in laws])
        x, m = x[1:], m[:, 1:]  # the densities vanish at 0
    cut1, cut2 = x - m[0], x - m[1]
    mu = 0.5 * (120 * x - p * 60 * cut1 - p * (1 - p) * 20 * cut2)
    sd = np.sqrt(0.5 * (5600 * x - p * 2000 * cut1 - p * (1 - p) * 400 * cut2))

    def psi(z):
        return z * stats.norm.cdf(z) + stats.norm.pdf(z)

    def survival(j, c):  # (P(any), share, P(all)) of c blocks left S_j ago
        a, b = (C - mu) / sd, (C - mu - c) / sd
        at = np.array([stats.norm.cdf(a), sd * (psi(a) - psi(b)) / c, stats.norm.cdf(b)])
        if think.kind == "det":
            return at[:, j - 1]
        return integrate.trapezoid(at * laws[j - 1].pdf(x), x, axis=1)

    near1, far1, back2 = survival(1, 20), survival(1, 40), survival(2, 20)
    assert 0.05 < back2[0] < near1[0] < 0.999  # neither all nor nothing survives
    fleet = fleet_model(workload(L=3, u=160, r=160, think=think), [C, C], "random", variant="che+gaussian")
    instance = fleet.per_instance[0]
    rel = 1e-9 if think.kind == "det" else REL_NODES
    hit_tokens = 16 * (20 * p * near1[1] + 40 * p * far1[1] + 20 * p * (1 - p) * back2[1])
    assert fleet.token_hit_rate == pytest.approx(hit_tokens / (160 + 480 + 800), rel=rel)
    turn2, turn3 = p * near1[0], p * far1[0] + p * (1 - p) * back2[0]
    assert fleet.per_turn_hit == pytest.approx({2: turn2, 3: turn3}, rel=rel)
    assert fleet.request_hit_rate == pytest.approx((turn2 + turn3) / 3, rel=rel)
    context = {2: p * near1[2], 3: p * far1[2] + p * (1 - p) * back2[2]}
    assert instance.per_turn_context_hit == pytest.approx(context, rel=rel)
    che = fleet_model(workload(L=3, u=160, r=160, think=think), [C, C], "random", variant="che").per_instance[0]
    assert instance.characteristic_time == che.characteristic_time  # Che's T and occupancy, reported as is
    assert instance.mean_occupancy_blocks == che.mean_occupancy_blocks


@pytest.mark.parametrize("turns", [TurnCount("fixed", 5), TurnCount("geometric", 5)])
@pytest.mark.parametrize("instances", [2, 4])
def test_random_gaussian_is_smooth_where_che_steps(turns, instances):
    # Deterministic think times: Che's F^{*j}(T) is a step, so its hit rate jumps (by 0.2 to
    # 0.4 here) where T crosses a multiple of the gap; the Gaussian variant (the default) rises
    # smoothly, by at most ~0.01 per 100 blocks.
    w = workload(S=200, think=ThinkTime("det", 30.0), turns=turns, rate=float(instances))
    capacities = range(6000, 40001, 100)
    gaussian = np.array([fleet_model(w, [c] * instances, "random").token_hit_rate for c in capacities])
    che = np.array([fleet_model(w, [c] * instances, "random", variant="che").token_hit_rate for c in capacities])
    assert np.diff(che).max() > 0.15
    assert np.diff(gaussian).min() >= 0.0
    assert np.diff(gaussian).max() < 0.015
    assert gaussian[-1] - gaussian[0] > 0.15


@pytest.mark.parametrize("think", [ThinkTime("det", 30.0), ThinkTime("gamma", 30.0, 0.5), ThinkTime("exp", 30.0),
                                   ThinkTime("lognormal", 30.0, 1.5)])  # fmt: skip
def test_random_gaussian_tends_to_che_at_huge_capacity(think):
    w = workload(S=200, think=think, turns=TurnCount("geometric", 5), rate=4.0, drawn=True)
    # Every window S_j lies where the content others touched is surely below C - c: all is found.
    gaussian = fleet_model(w, [10**8] * 4, "random", variant="che+gaussian")
    che = fleet_model(w, [10**8] * 4, "random", variant="che")
    assert gaussian.token_hit_rate == pytest.approx(che.token_hit_rate, rel=1e-9)
    assert gaussian.request_hit_rate == pytest.approx(che.request_hit_rate, rel=1e-9)
    assert gaussian.per_turn_hit == pytest.approx(che.per_turn_hit, rel=1e-9)
    assert gaussian.token_hit_rate > fleet_model(w, [60000] * 4, "random", variant="che+gaussian").token_hit_rate
    # ... and for smooth think-time laws stays close to Che at a moderate capacity too.
    if think.kind != "det":
        near = [fleet_model(w, [20000] * 4, "random", variant=v).token_hit_rate for v in ("che", "che+gaussian")]
        assert near[1] == pytest.approx(near[0], abs=0.01)


def test_random_default_variant_follows_the_think_time():
    assert fleet_model(workload(think=ThinkTime("det", 30.0)), [5000] * 2, "random").variant == "che+gaussian"
    for think in THINK_TIMES:
        assert fleet_model(workload(think=think), [5000] * 2, "random").variant == "che"
    w = workload(think=ThinkTime("gamma", 30.0, 0.5))
    assert fleet_model(w, [5000] * 2, "random", variant="che+gaussian").per_instance[0].variant == "che+gaussian"


def random_by_hand(w, capacity, instances, gap_laws, bs=16):
    """(T, token, request hit rate) of the random router's model, written out path by path over
    the model's size paths; gap_laws(T, n) -> (F^{*j}(T), m_j(T)) for j = 0..n-1."""
    p = 1 / instances
    table = _table(w, bs, capacity)
    paths, law = table.paths, table.law
    K = law.turns
    full = paths.conv + paths.system_blocks
    cap = np.floor(np.maximum(paths.prompt - 1, 0) / bs)
    system = np.minimum(paths.system_blocks, cap)
    served = np.arange(K)[None, :] < table.served_turns[:, None]
    assert not served.all()  # some turns are oversized: they end the visits that count
    # Occupancy: turn s's context stays T, less E[(T - S_j)^+] if the next visit to its instance
    # is served and comes j turns later.
    stays = sum(law.reach[s] * (paths.conv[:, s] * served[:, s]).mean() for s in range(K))
    revisited = np.zeros(K)
    for s in range(K):
        for j in range(1, K - s):
            weight = p * (1 - p) ** (j - 1) * law.reach[s + j]
            revisited[j] += weight * (paths.conv[:, s] * served[:, s + j]).mean()

    def occupancy(T):
        _, m = gap_laws(T, K)
        return w.arrival_rate / instances * (stays * T - revisited @ (T - m))

    T = optimize.brentq(lambda T: occupancy(T) - (capacity - paths.system_blocks), 1e-6, 1e6, xtol=1e-12)
    F, _ = gap_laws(T, K)
    hit_tokens, any_hit = np.zeros(K), np.zeros(K)
    for s in range(K):
        hit = (1 - p) ** s * system[:, s]
        some = (1 - p) ** s * (system[:, s] > 0)
        for j in range(1, s + 1):
            found, lost = p * (1 - p) ** (j - 1) * F[j], p * (1 - p) ** (j - 1) * (1 - F[j])
            blocks = np.minimum(full[:, s - j], cap[:, s])
            hit = hit + found * blocks + lost * system[:, s]
            some = some + found * (blocks > 0) + lost * (system[:, s] > 0)
        hit_tokens[s] = bs * (hit * served[:, s]).mean()
        any_hit[s] = (some * served[:, s]).mean()
    token = law.reach @ hit_tokens / (law.reach @ paths.prompt.mean(axis=0))
    return T, token, law.reach @ any_hit / law.mean


def quadrature_laws(think):
    def laws(T, n):
        x = np.linspace(0.0, T, 4001)
        F = think.convolution_cdf(np.arange(n)[:, None], x[None, :])
        return F[:, -1], np.trapezoid(1 - F, x, axis=1)

    return laws


def monte_carlo_laws(think, samples=400_000):
    """j = 1 exact (as the model has it), j >= 2 from seeded sums of drawn gaps."""
    sums = {}

    def laws(T, n):
        if n not in sums:
            sums[n] = np.cumsum(think.sample(np.random.default_rng(7), (samples, n - 1)), axis=1)
        F = np.concatenate(([1.0, float(think.cdf(T))], (sums[n][:, 1:] < T).mean(axis=0)))
        m = np.concatenate(([0.0, think.limited_mean(T)], np.minimum(sums[n][:, 1:], T).mean(axis=0)))
        return F, m

    return laws


ZERO_TOKEN_CASES = [  # (S, instances, think, turns, rate, capacity, gap laws, rel)
    (0, 2, ThinkTime("gamma", 30.0, 0.7), TurnCount("geometric", 4), 0.1, 60, quadrature_laws, 1e-6),
    (16, 5, ThinkTime("gamma", 30.0, 0.7), TurnCount("geometric", 4), 0.1, 60, quadrature_laws, 1e-6),
    (20, 3, ThinkTime("exp", 30.0), TurnCount("geometric", 4), 0.1, 60, quadrature_laws, 1e-6),
    (16, 3, ThinkTime("lognormal", 30.0, 1.5), TurnCount("fixed", 10), 0.02, 12, monte_carlo_laws, 3e-3),
]


@pytest.mark.parametrize("S,instances,think,turns,rate,capacity,gap_laws,rel", ZERO_TOKEN_CASES)
def test_random_matches_its_formulas_path_by_path(S, instances, think, turns, rate, capacity, gap_laws, rel):
    # Drawn sizes with zero-token messages and exact block multiples (where the prompt-1 cap
    # takes a block from older contexts too); the small capacities make late turns oversized.
    # Rates that give T of one to three mean think times: revisits several turns back count.
    w = Workload(
        arrival_rate=rate,
        turns=turns,
        think_time=think,
        input_tokens=TokenCount("empirical", samples=(0, 0, 1, 16, 3), name="input-tokens"),
        output_tokens=TokenCount("empirical", samples=(0, 15, 16, 17), name="output-tokens"),
        system_prompt_tokens=S,
    )
    T, token, request = random_by_hand(w, capacity, instances, gap_laws(think))
    instance = fleet_model(w, [capacity] * instances, "random").per_instance[0]
    assert instance.characteristic_time == pytest.approx(T, rel=rel)
    assert instance.token_hit_rate == pytest.approx(token, rel=rel)
    assert instance.request_hit_rate == pytest.approx(request, rel=rel)


def test_random_is_below_affinity_and_falls_with_more_instances():
    w = workload()
    affinity = [fleet_model(w, [20000] * n, "affinity").token_hit_rate for n in (1, 2, 4, 8)]
    random = [fleet_model(w, [20000] * n, "random").token_hit_rate for n in (1, 2, 4, 8)]
    assert random[0] == pytest.approx(affinity[0], rel=1e-12)
    assert all(r < a - 0.05 for r, a in zip(random[1:], affinity[1:]))
    assert all(later < earlier for earlier, later in zip(random, random[1:]))
    assert all(later >= earlier for earlier, later in zip(affinity, affinity[1:]))  # more cache in total


def test_random_instance_depends_on_its_own_capacity_only():
    w = workload(S=200)
    mixed = fleet_model(w, [3000, 12000], "random")
    for capacity, instance in zip((3000, 12000), mixed.per_instance):
        assert instance == fleet_model(w, [capacity, capacity], "random").per_instance[0]
    assert mixed.token_hit_rate == pytest.approx(np.mean([r.token_hit_rate for r in mixed.per_instance]))
    assert mixed.per_instance[0].token_hit_rate < mixed.per_instance[1].token_hit_rate


@pytest.mark.parametrize("instances", [2, 3, 8])
def test_random_with_unlimited_caches_still_misses_unvisited_instances(instances):
    # Every context survives (F^{*j} = 1): turn s hits the context of turn s-j with
    # p (1-p)^(j-1), the system blocks with (1-p)^(s-1). u = 200, r = 300, S = 40, block 16.
    L, u, r, S, bs = 5, 200, 300, 40, 16
    p = 1 / instances
    hit = prompt = 0.0
    for s in range(1, L + 1):
        p_s = S + (s - 1) * (u + r) + u
        cap = (p_s - 1) // bs
        system = min(S // bs, cap)
        hit += (1 - p) ** (s - 1) * system
        for j in range(1, s):
            hit += p * (1 - p) ** (j - 1) * min((S + (s - j) * (u + r)) // bs, cap)
        prompt += p_s
    fleet = fleet_model(workload(L, u, r, S), [10**12] * instances, "random")
    assert fleet.token_hit_rate == pytest.approx(hit * bs / prompt, rel=1e-9)
    assert fleet.token_hit_rate < no_eviction_ceiling(workload(L, u, r, S)).token_hit_rate - 0.1


def test_long_geometric_conversations_on_eight_instances():
    # Its speed (target < 0.5 s) is a figure of experiments/bench.py, not a test.
    w = workload(turns=TurnCount("geometric", 10), think=ThinkTime("lognormal", 30.0, 1.5), drawn=True)
    fleet = fleet_model(w, [20000, 40000] * 4, "random")
    assert 0 < fleet.token_hit_rate < 1


# ----------------------------------------------------------------------------- capacity search


@pytest.mark.parametrize("instances", [2, 4])
def test_capacity_to_match(instances):
    w = workload()
    target = 0.3  # the random router with 4 instances cannot exceed 0.34 with this workload
    found = {router: capacity_to_match(w, target, instances, router) for router in FLEET_ROUTERS}
    assert found["random"] > found["affinity"]
    for router, capacity in found.items():
        assert fleet_model(w, [capacity] * instances, router).token_hit_rate >= target
        assert fleet_model(w, [capacity - 1] * instances, router).token_hit_rate < target


def test_capacity_to_match_uses_the_default_variant():
    w = workload(S=200, think=ThinkTime("det", 30.0))  # default: che+gaussian, smooth in the capacity
    capacity = capacity_to_match(w, 0.25, 2, "random")
    assert fleet_model(w, [capacity] * 2, "random").token_hit_rate >= 0.25
    assert fleet_model(w, [capacity - 1] * 2, "random").token_hit_rate < 0.25
    # Che's step would land elsewhere: on the capacity where T crosses a multiple of the gap.
    che = [fleet_model(w, [c] * 2, "random", variant="che").token_hit_rate for c in (capacity - 1, capacity)]
    assert che[0] == che[1]


def test_capacity_to_match_rejects_targets_beyond_the_random_ceiling():
    w = workload()
    random_limit = fleet_model(w, [10**12] * 4, "random").token_hit_rate
    target = random_limit + 0.02
    assert target < no_eviction_ceiling(w).token_hit_rate  # affinity still reaches it
    assert capacity_to_match(w, target, 4, "affinity") > 0
    with pytest.raises(ValueError, match="target token hit rate .* out of reach for router random"):
        capacity_to_match(w, target, 4, "random")


# ----------------------------------------------------------------------------- shape and inputs


def test_result_shape_and_json():
    fleet = fleet_model(workload(S=100), [5000, 6000], "random")
    assert isinstance(fleet, FleetModelResult)
    assert (fleet.router, fleet.method, fleet.variant, fleet.instances) == ("random", "lru", "che", 2)
    assert [r.capacity_blocks for r in fleet.per_instance] == [5000, 6000]
    data = json.loads(json.dumps(fleet.as_dict()))
    assert data["token_hit_rate"] == fleet.token_hit_rate
    assert data["per_instance"][1]["capacity_blocks"] == 6000
    # No conversation block ever fills (contexts of at most 5 tokens): T is infinite -> None.
    tiny = fleet_model(workload(u=1, r=0), [10], "random").as_dict()
    assert tiny["per_instance"][0]["characteristic_time"] is None
    json.dumps(tiny, allow_nan=False)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fleet_model(workload(), [100], "sticky"), r"router must be one of affinity, random \(got 'sticky'\)"),
        (lambda: fleet_model(workload(), [100], "affinity", method="lfu"), "method must be one of lru, fifo"),
        (lambda: fleet_model(workload(), [100], "random", method="fifo"), "method must be lru for router random"),
        (lambda: fleet_model(workload(), [], "random"), "capacities must be a non-empty"),
        (lambda: fleet_model(workload(), 100, "random"), "capacities must be a non-empty"),
        (lambda: fleet_model(workload(), [100, -1], "random"), "capacities must be a whole number >= 0"),
        (lambda: fleet_model(workload(), [100, 2.5], "affinity"), "capacities must be a whole number >= 0"),
        (lambda: fleet_model(workload(), [100], "random", variant="exact"),
         r"variant must be one of che, che\+gaussian or None \(got 'exact'\)"),
        (lambda: fleet_model(workload(), [100], "affinity", variant="exact"), "variant must be one of"),
        (lambda: fleet_model(workload(), [100], "random", block_size=0), "block-size"),
        (lambda: fleet_model("chat", [100], "random"), "workload must be"),
        (lambda: capacity_to_match(workload(), 0.5, 0, "random"), "instances"),
        (lambda: capacity_to_match(workload(), 0.5, 2, "sticky"), "router must be one of"),
        (lambda: capacity_to_match(workload(), 1.5, 2, "random"), "target"),
        (lambda: capacity_to_match(workload(), 0.99, 2, "affinity"), "target"),
        (lambda: capacity_to_match(workload(), 0.5, 2, "random", method="fifo"), "method must be lru"),
    ],
)
def test_bad_inputs_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
