"""The fleet simulator: routers, the serving engine behind them, and the agreement with the single-instance one."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.serving import EngineSpec
from analytic.steptime import LinearStepTime
from analytic.specs import Workload
from kvsim.cache import PrefixCache
from kvsim.cli.main import main
from kvsim.engine import Counters, counting_server, drive, simulate
from kvsim.defaults import ROUTER_NAMES
from kvsim.fleet import ROUTERS, AffinityRouter, CacheAwareRouter, Instance, make_router, simulate_fleet
from kvsim.workload import Turn, synthetic_conversation

BS = 16


def workload(**kw) -> Workload:
    base = dict(arrival_rate=0.5, turns=TurnCount("geometric", 4), think_time=ThinkTime("exp", 20.0),
                input_tokens=TokenCount("lognormal", 150, 0.5), output_tokens=TokenCount("fixed", 200),
                system_prompt_tokens=100)
    base.update(kw)
    return Workload(**base)


# ------------------------------------------------------------------ a fleet of one, affinity as a split


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu"])
@pytest.mark.parametrize("router", ["random", "cache-aware"])
def test_fleet_of_one_without_service_is_the_single_instance_simulator(policy, router):
    w = workload()
    single = simulate(w, 900, policy, duration=1500, warmup=300, replications=2, seed=7)
    fleet = simulate_fleet(w, 900, 1, router, policy, duration=1500, warmup=300, replications=2, seed=7)
    assert [rep[0] for rep in fleet.replications] == single.replications
    assert fleet.fleet.as_dict() == {**single.as_dict(), "capacity_blocks": 900}
    assert fleet.serving is None and fleet.load_imbalance.mean == 1.0


def test_affinity_is_independent_instances_on_the_split_workload():
    """Each instance of an affinity fleet is a single-instance run that sees only the
    conversations hashed to it (same conversations, same arrival times)."""
    w = workload(arrival_rate=2.0)
    n, capacity, duration, warmup = 3, 700, 1200.0, 200.0
    fleet = simulate_fleet(w, capacity, n, "affinity", "lru", duration=duration, warmup=warmup,
                           replications=1, seed=11)
    owner = AffinityRouter([None] * n, None).choose
    for i in range(n):
        c = Counters(window=duration - warmup)
        serve = counting_server(PrefixCache(capacity, "lru"), c, BS, warmup)

        def source(rng, cid):
            return synthetic_conversation(w, BS, rng, cid)

        def on_turn(turn, now, cid, i=i, serve=serve):
            if owner(cid, turn) == i:
                serve(turn, now)

        drive(source, w.arrival_rate, duration, np.random.default_rng([11, 0]), on_turn)
        serve.close(duration)
        assert fleet.replications[0][i] == c
        assert c.requests > 100


def test_affinity_spreads_conversations_evenly_and_keeps_them_whole():
    router = AffinityRouter([None] * 4, None)
    owners = [router.choose(cid, None) for cid in range(1, 20001)]
    shares = np.bincount(owners, minlength=4) / len(owners)
    assert np.all(np.abs(shares - 0.25) < 0.03)
    assert all(router.choose(cid, None) == owners[cid - 1] for cid in range(1, 200))


def test_affinity_does_not_send_the_first_conversations_to_one_instance():
    # Conversation ids once hashed like instance 0's ring points: ids 0-159 all went to instance 0.
    router = AffinityRouter([None] * 4, None)
    first = np.bincount([router.choose(cid, None) for cid in range(AffinityRouter.VIRTUAL_NODES)], minlength=4)
    assert first.max() < 0.4 * AffinityRouter.VIRTUAL_NODES, first


# ------------------------------------------------------------------ two instances, worked by hand

def turn(keys: list[int], index: int = 1, prompt_blocks: int | None = None) -> Turn:
    """A request whose prompt is all of ``keys`` but the last block (its response)."""
    prompt = (len(keys) - 1 if prompt_blocks is None else prompt_blocks) * BS
    return Turn(index, 0.0, keys, (prompt - 1) // BS, len(keys), prompt, -(-prompt // BS))


def conversation(cid: int, turns: int, blocks_per_turn: int = 2) -> list[Turn]:
    base = cid * 1000
    return [turn(list(range(base, base + blocks_per_turn * (k + 1))), k + 1) for k in range(turns)]


def route(router_name: str, requests: list[tuple[int, Turn]], rng=None, loads=None, capacity=100, **options):
    """Serve ``requests`` ((conversation id, turn), in order) on two instances; return
    (instance, hit blocks) per request. ``loads[k]`` sets the outstanding requests before request k."""
    fleet = [Instance(i, PrefixCache(capacity, "lru"), Counters()) for i in range(2)]
    router = make_router(router_name, fleet, rng, **options)
    out = []
    for k, (cid, t) in enumerate(requests):
        if loads is not None:
            for inst, load in zip(fleet, loads[k]):
                inst.outstanding = load
        i = router.choose(cid, t)
        out.append((i, fleet[i].cache.serve(t.keys, t.max_hit_blocks, t.alloc_blocks).hit_blocks))
    return out


A, B = conversation(1, 3), conversation(2, 3)
# A1 A2 B1 A3 B2 B3: contexts of 2, 4, 6 blocks; turn k may hit 2k - 1 blocks.
ORDER = [(1, A[0]), (1, A[1]), (2, B[0]), (1, A[2]), (2, B[1]), (2, B[2])]


def test_router_names_the_cli_offers_are_the_simulators_routers():
    assert tuple(ROUTERS) == ROUTER_NAMES


def test_round_robin_by_hand():
    # Instances 0 1 0 1 0 1 whatever the conversation. A2 misses (A1 is on 0); A3 finds A2's
    # context on 1 (4 blocks); B2 finds B1's on 0 (2 blocks); B3 misses (B2 went to 0).
    assert route("round-robin", ORDER) == [(0, 0), (1, 0), (0, 0), (1, 4), (0, 2), (1, 0)]


class Scripted:
    """A stand-in generator: random() returns the scripted values."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_random_by_hand():
    # Draws 0.2 0.9 0.7 0.4 0.6 0.1 -> instances 0 1 1 0 1 0.
    # A2 on 1 misses; A3 on 0 finds A1's 2 blocks; B2 on 1 finds B1's 2 blocks; B3 on 0 misses.
    got = route("random", ORDER, Scripted([0.2, 0.9, 0.7, 0.4, 0.6, 0.1]))
    assert got == [(0, 0), (1, 0), (1, 0), (0, 2), (1, 2), (0, 0)]


def test_affinity_by_hand():
    owner = AffinityRouter([None] * 2, None).choose
    a, b = owner(1, None), owner(2, None)
    # Every later turn finds its conversation's whole previous context (2, then 4 blocks).
    assert route("affinity", ORDER) == [(a, 0), (a, 2), (b, 0), (a, 4), (b, 2), (b, 4)]


def test_least_loaded_by_hand():
    # Loads before each request; ties go in turn (0, then 1, ...).
    loads = [(0, 0), (0, 0), (2, 1), (1, 3), (0, 0), (5, 5)]
    got = route("least-loaded", ORDER, loads=loads)
    # 0 (tie, first), 1 (tie, next in turn), 1 (fewer), 0 (fewer), 1 (tie: turn after 0), 0 (tie, after 1)
    assert [i for i, _ in got] == [0, 1, 1, 0, 1, 0]
    assert [h for _, h in got] == [0, 0, 0, 2, 2, 0]


def test_cache_aware_by_hand():
    # A1 -> 0 (nothing cached anywhere: most free cache, tie, first); A2 -> 0 (2 of its 3
    # prompt blocks cached there > 0.5); B1 -> 1 (no match; instance 1 has more free cache);
    # A3 -> 1 although A's context is on 0: the load is imbalanced (40 vs 0 outstanding);
    # B2 -> 1 (its prefix); B3 -> 1 (B2's context).
    loads = [(0, 0), (0, 0), (0, 0), (40, 0), (0, 0), (0, 0)]
    got = route("cache-aware", ORDER, loads=loads, block_size=BS)
    assert got == [(0, 0), (0, 2), (1, 0), (1, 0), (1, 2), (1, 4)]
    # Without the imbalance, A3 follows its prefix to instance 0.
    got = route("cache-aware", ORDER, loads=[(0, 0)] * 6, block_size=BS)
    assert got[3] == (0, 4)
    # A threshold above the match sends A2 to the freer instance instead.
    got = route("cache-aware", ORDER, loads=[(0, 0)] * 6, block_size=BS, cache_threshold=0.9)
    assert got[1] == (1, 0)


def test_router_errors():
    with pytest.raises(ValueError, match="router must be one of random, round-robin, affinity"):
        make_router("sticky", [], None)
    with pytest.raises(ValueError, match="router random takes no options"):
        make_router("random", [], None, cache_threshold=0.5)
    with pytest.raises(ValueError, match="cache-threshold must be in"):
        CacheAwareRouter([], None, cache_threshold=2.0)
    with pytest.raises(ValueError, match="instances must equal"):
        simulate_fleet(workload(), [10, 20], 3)


# ------------------------------------------------------------------ service time


def scripted_source(conversations: dict[int, list[Turn]]):
    def source(rng, cid):
        return iter(conversations.get(cid, []))
    return source


def arrivals(seed: int, rate: float, n: int) -> np.ndarray:
    """The first ``n`` conversation arrival times of replication 0 (a source that draws nothing)."""
    return np.cumsum(np.random.default_rng([seed, 0]).exponential(1 / rate, n))


def one_turn(cid: int, prompt_blocks: int, output_tokens: int, delay: float = 0.0, index: int = 1,
             shared: int = 0) -> Turn:
    keys = list(range(shared)) + list(range(cid * 1000 + shared, cid * 1000 + prompt_blocks + 1))
    prompt = prompt_blocks * BS
    return Turn(index, delay, keys, (prompt - 1) // BS, len(keys), prompt, prompt_blocks, None, output_tokens)


def engine(alpha=0.0, beta=0.0, seqs=256):
    return EngineSpec(LinearStepTime(alpha, beta, 0.0), 8192, seqs)


def requests_of(r):
    return sorted(r.serving[0][0].requests, key=lambda q: q.index)


def test_queueing_and_ttft_by_hand():
    # Two one-turn conversations on one engine that runs one request at a time, steps of 10 ms.
    rate, seed = 50.0, 3
    t1, t2 = arrivals(seed, rate, 2)
    s1 = 10 * 0.01  # the first request: its prefill step gives token 1, nine decode steps the rest
    assert t2 - t1 < s1  # the second arrives while the first is served
    source = scripted_source({1: [one_turn(1, 4, 10)], 2: [one_turn(2, 3, 5)]})
    r = simulate_fleet(Workload(arrival_rate=rate), 100, 1, "round-robin", engine=engine(0.01, seqs=1),
                       source=source, duration=10.0, warmup=0.0, replications=1, seed=seed, keep_requests=True)
    first, second = requests_of(r)
    assert first.first_scheduled - first.arrival == 0.0 and first.ttft == pytest.approx(0.01)
    assert second.first_scheduled == pytest.approx(t1 + s1) and second.ttft == pytest.approx(t1 + s1 + 0.01 - t2)
    assert r.as_dict()["serving"]["queue_s"]["p50"] == pytest.approx((t1 + s1 - t2) / 2)


def test_think_time_starts_when_the_response_completes_and_hits_shorten_prefill():
    rate, seed = 1.0, 5
    (t1,) = arrivals(seed, rate, 1)
    first = one_turn(1, 4, 20)  # keys 1000..1004, prompt 4 blocks
    second = Turn(2, 7.0, list(range(1000, 1008)), 6, 8, 7 * BS, 7, None, 30)  # finds turn 1's 5 blocks
    r = simulate_fleet(Workload(arrival_rate=rate), 100, 1, "round-robin", engine=engine(beta=1e-3),
                       source=scripted_source({1: [first, second]}), duration=t1 + 100, warmup=0.0,
                       replications=1, seed=seed, keep_requests=True)
    c = r.replications[0][0]
    # Turn 1 left 64 + 19 computed tokens: 5 full blocks cached; turn 2 hits them all.
    assert c.hit_blocks == 5 and c.requests == 2
    one, two = requests_of(r)
    # 1 ms per token: turn 1 prefills 64 tokens, decodes 19 more; turn 2 computes only its 2
    # uncached prompt blocks, and arrived 7 s after turn 1 *completed*.
    assert one.ttft == pytest.approx(4 * BS * 1e-3) and one.e2e == pytest.approx(4 * BS * 1e-3 + 19e-3)
    assert two.arrival == pytest.approx(one.finish + 7.0)
    assert (two.hit_tokens, two.first_scheduled) == (5 * BS, two.arrival)
    assert two.ttft == pytest.approx(2 * BS * 1e-3)


def test_a_request_waits_until_its_blocks_fit_beside_those_running():
    # Capacity 10 blocks: the first request holds 6 once decoding, the second needs 5 for its prompt.
    rate, seed = 50.0, 3
    t1, t2 = arrivals(seed, rate, 2)
    source = scripted_source({1: [one_turn(1, 5, 10)], 2: [one_turn(2, 5, 10)]})
    r = simulate_fleet(Workload(arrival_rate=rate), 10, 1, "round-robin", engine=engine(0.1), source=source,
                       duration=10.0, warmup=0.0, replications=1, seed=seed, keep_requests=True)
    assert requests_of(r)[1].first_scheduled == pytest.approx(t1 + 1.0)  # when the first finishes
    # With room for both, it joins at the next step.
    r = simulate_fleet(Workload(arrival_rate=rate), 12, 1, "round-robin", engine=engine(0.1), source=source,
                       duration=10.0, warmup=0.0, replications=1, seed=seed, keep_requests=True)
    assert requests_of(r)[1].first_scheduled == pytest.approx(t1 + 0.1)


def test_shared_system_prompt_is_a_hit_while_running():
    # Both requests carry the same 3 system blocks; the second starts while the first runs.
    rate, seed = 50.0, 3
    source = scripted_source({1: [one_turn(1, 5, 10, shared=3)], 2: [one_turn(2, 5, 10, shared=3)]})
    r = simulate_fleet(Workload(arrival_rate=rate), 12, 1, "round-robin", engine=engine(0.1), source=source,
                       duration=10.0, warmup=0.0, replications=1, seed=seed, keep_requests=True)
    c = r.replications[0][0]
    assert (c.requests, c.hit_blocks) == (2, 3)


def test_fleet_with_the_engine_is_deterministic_and_reports_latency():
    w = workload(arrival_rate=3.0)
    args = dict(duration=900, warmup=200, replications=2, seed=4, engine=engine(0.005, 1e-4, seqs=4))
    a = simulate_fleet(w, 600, 3, "cache-aware", **args)
    b = simulate_fleet(w, 600, 3, "cache-aware", **args)
    assert a.as_dict() == b.as_dict()
    d = a.as_dict()
    v = d["serving"]
    assert v["ttft_s"]["p99"] >= v["ttft_s"]["p50"] > 0
    assert v["queue_s"]["p99"] >= 0 and v["waiting_at_end"] >= 0
    assert sum(i["request_share"] for i in d["per_instance"]) == pytest.approx(1.0)


def test_routing_changes_hits_as_expected():
    """Session affinity keeps conversations whole; spreading them loses most of the reuse."""
    w = workload(arrival_rate=2.0)
    hits = {router: simulate_fleet(w, 1500, 4, router, duration=1500, warmup=300, replications=2,
                                   seed=1).fleet.token_hit_rate.mean
            for router in ("affinity", "random", "round-robin", "cache-aware")}
    assert hits["affinity"] > hits["random"] + 0.15
    assert hits["cache-aware"] > hits["round-robin"] + 0.15


# ------------------------------------------------------------------ command line


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_simulate_fleet_json(capsys):
    code, out, err = run(capsys, "simulate", "--capacity-tokens", "20000", "--instances", "3", "--router",
                         "round-robin", "--duration", "900", "--warmup", "200", "--replications", "2", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["router"] == "round-robin" and record["instances"] == 3
    assert record["capacity_blocks"] == [1250] * 3 and len(record["per_instance"]) == 3
    assert record["load_imbalance"]["mean"] >= 1 and record["serving"] is None
    assert record["model"] is None  # no model of round-robin
    code, out, _ = run(capsys, "simulate", "--capacity-tokens", "20000", "--instances", "3", "--router", "random",
                       "--duration", "900", "--warmup", "200", "--replications", "2", "--json")
    from analytic.fleet import fleet_model

    assert json.loads(out)["model"]["token_hit_rate"] == pytest.approx(
        fleet_model(Workload(), [1250] * 3, "random").token_hit_rate)


def test_cli_simulate_all_routers_with_the_engine(capsys):
    code, out, _ = run(capsys, "simulate", "--instance-capacity-tokens", "20000,40000", "--router", "all",
                       "--step-time", "linear:0.002,1e-5,0", "--duration", "700", "--warmup", "200",
                       "--replications", "1")
    assert code == 0
    assert "2 instances of 1,250, 2,500 blocks" in out
    assert Counter(line.split()[1] for line in out.splitlines() if line.startswith("lru ")) == Counter(
        {r: 8 for r in ("random", "round-robin", "affinity", "least-loaded", "cache-aware")})  # hits, share, 5 latencies, throughput
    assert "TTFT" in out


@pytest.mark.parametrize("argv, needle", [
    (["--router", "sticky"], "--router: invalid choice"),
    (["--instances", "0"], "instances must be"),
    (["--instances", "3", "--instance-capacity-tokens", "1000,2000"], "--instances must equal the number"),
    (["--instance-capacity-tokens", "1000,x"], "--instance-capacity-tokens must be integers"),
    (["--max-running", "16"], "--max-running: the linear service model is replaced by the serving engine"),
    (["--service"], "--service: the linear service model is replaced"),
    (["--router", "random", "--cache-threshold", "0.3"], "apply to --router cache-aware only"),
])
def test_cli_fleet_bad_input(capsys, argv, needle):
    code, out, err = run(capsys, "simulate", "--capacity-tokens", "20000", "--duration", "50", "--warmup", "10",
                         *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_calc_fleet_models(capsys):
    from analytic.fleet import fleet_model

    base = ["calc", "--capacity-tokens", "40000", "--arrival-rate", "2", "--json"]
    code, out, _ = run(capsys, *base, "--instances", "3", "--router", "random")
    record = json.loads(out)
    expected = fleet_model(Workload(arrival_rate=2.0), [2500] * 3, "random")
    assert code == 0 and record["methods"]["lru"]["token_hit_rate"] == pytest.approx(expected.token_hit_rate)
    assert record["lru_affinity"]["token_hit_rate"] > expected.token_hit_rate
    # One instance behind either router is the single-instance model.
    _, single, _ = run(capsys, *base, "--method", "lru")
    _, one, _ = run(capsys, *base, "--method", "lru", "--instances", "1", "--router", "random")
    assert json.loads(one)["methods"]["lru"]["token_hit_rate"] == pytest.approx(
        json.loads(single)["methods"]["lru"]["token_hit_rate"], rel=1e-9)


@pytest.mark.parametrize("argv, needle", [
    (["--instances", "2", "--method", "seed"], "--method seed has no fleet version"),
    (["--router", "random", "--method", "fifo"], "--method fifo has no model for --router random"),
    (["--router", "round-robin"], "--router: invalid choice"),
    (["--instances", "-1"], "instances must be"),
])
def test_cli_calc_fleet_bad_input(capsys, argv, needle):
    code, _, err = run(capsys, "calc", "--capacity-tokens", "20000", *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_routing_advice(capsys):
    from analytic.advice import routing_lever
    from analytic.fleet import fleet_model

    w = Workload(arrival_rate=2.0)
    lever = routing_lever(w, 2500, 3, "random", BS)
    gain = fleet_model(w, [2500] * 3, "affinity").token_hit_rate - fleet_model(w, [2500] * 3, "random").token_hit_rate
    assert lever["recommended"] and lever["gain_points"] == pytest.approx(100 * gain) and gain > 0.1
    assert routing_lever(w, 2500, 3, "affinity", BS)["gain_points"] == pytest.approx(-100 * gain)
    # With affinity the per-instance levers are those of one instance at lambda / N.
    code, out, _ = run(capsys, "calc", "--capacity-tokens", "40000", "--arrival-rate", "2", "--instances", "3",
                       "--advise", "--json")
    advice = json.loads(out)["advice"]
    _, single, _ = run(capsys, "calc", "--capacity-tokens", "40000", "--arrival-rate", str(2 / 3), "--advise",
                       "--json")
    assert code == 0 and [x for x in advice if x["id"] != "routing"] == json.loads(single)["advice"]
    assert [x["id"] for x in advice].count("routing") == 1


def test_cli_plan_fleet(capsys):
    from analytic.plan import capacity_for_target

    base = ["plan", "--target-hit-rate", "0.3", "--arrival-rate", "2", "--capacity-tokens", "1000", "--json"]
    code, out, _ = run(capsys, *base, "--instances", "3")
    plans = {p["router"]: p for p in json.loads(out)["plans"]}
    assert code == 0
    assert plans["affinity"]["capacity_blocks_per_instance"] == capacity_for_target(
        Workload(arrival_rate=2 / 3), 0.3, "token", BS, "lru")
    assert plans["random"]["capacity_blocks_per_instance"] > plans["affinity"]["capacity_blocks_per_instance"]
    assert plans["random"]["token_hit_rate"] >= 0.3
    code, _, err = run(capsys, *base, "--instances", "8", "--router", "random", "--target-hit-rate", "0.5")
    assert code == 2 and "out of reach for router random over 8 instances" in err
    code, _, err = run(capsys, *base, "--instances", "2", "--metric", "request")
    assert code == 2 and "--metric request has no fleet version" in err
