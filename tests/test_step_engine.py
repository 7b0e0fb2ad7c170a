"""The step engine (vLLM's scheduler, kvsim.step_engine): hand-worked steps, invariants on random
workloads, the fast decode path against the plain stepper, and zero step time against the
instant simulator."""

import math

import pytest
import simpy
from hypothesis import given, settings, strategies as st

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.serving import EngineSpec
from analytic.specs import Workload
from analytic.steptime import LinearStepTime
from kvsim.engine import Counters, simulate
from kvsim.fleet import simulate_fleet
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats

ONE_SECOND = LinearStepTime(1.0, 0.0, 0.0)


def run(requests, capacity, *, bs=4, budget=8, seqs=4, step=ONE_SECOND, fast=True, caching=True, tiers=None):
    """Serve ``requests`` = [(arrival, prompt keys, prompt tokens, output tokens)] on one engine;
    return (the EngineRequests by index, the step log, the instance)."""
    env = simpy.Environment()
    stats = ServingStats(0.0, math.inf, requests=[])
    inst = EngineInstance(env, EngineSpec(step, budget, seqs, caching), capacity, bs, stats, Counters(), fast=fast,
                          tiers=tiers)
    inst.step_log = []
    reqs = []
    for i, (arrival, keys, prompt, out) in enumerate(requests):
        req = EngineRequest(i, arrival, prompt, out, list(keys))
        reqs.append(req)
        env.timeout(arrival).callbacks.append(lambda _, req=req: inst.submit(req))
    env.run()
    return reqs, inst.step_log, inst


def test_chunked_prefill_across_steps():
    (r,), log, inst = run([(0.0, range(5), 20, 2)], capacity=10)
    # budget 8: chunks of 8, 8 and 4; the last completes the prompt and samples token 1 (t = 3)
    assert log == [(0.0, {0: 8}), (1.0, {0: 8}), (2.0, {0: 4}), (3.0, {0: 1})]
    assert (r.first_scheduled, r.first_token, r.finish, r.hit_tokens) == (0.0, 3.0, 4.0, 0)
    # the prompt's 5 full blocks are cached, the decode's 6th block (token 20) was never full
    assert inst.pool.held == 0 and inst.pool.cached == 5


def test_hit_on_blocks_allocated_in_the_same_step():
    shared = [100, 101, 102]
    reqs, log, _ = run([(0.0, shared, 14, 1), (0.0, shared, 14, 1)], capacity=20, budget=100)
    a, b = reqs
    # A's chunk caches blocks 0-2 as it is allocated: B, admitted next in the same step, hits them
    assert a.hit_tokens == 0 and b.hit_tokens == 12
    assert log[0] == (0.0, {0: 14, 1: 2})


def test_prompt_minus_one_cap():
    keys = [1, 2, 3]
    reqs, _, _ = run([(0.0, keys, 12, 1), (5.0, keys, 12, 1)], capacity=20, budget=100)
    # 12 tokens = 3 full blocks, all cached, but the hit stops at floor(11 / 4) = 2 blocks
    assert reqs[1].hit_tokens == 8


def test_preemption_and_recompute():
    # 6 blocks of 4 tokens: two requests of 8 prompt tokens grow until the blocks run out
    reqs, log, inst = run([(0.0, [1, 2], 8, 10), (0.0, [3, 4], 8, 10)], capacity=6, budget=100)
    a, b = reqs
    assert a.preemptions == 0 and b.preemptions >= 1
    assert a.finish < b.finish
    # step 0 admits both (2 blocks each); decoding, each takes its 3rd block at token 8, then A's
    # 4th block at token 12 finds none free: B (admitted last) is preempted in that step
    assert log[0] == (0.0, {0: 8, 1: 8})
    preempting = next(i for i, (_, tokens) in enumerate(log) if 1 not in tokens)
    assert log[preempting][1] == {0: 1}
    # B comes back with its cached blocks as a hit and recomputes the rest of its tokens
    back = next(tokens for _, tokens in log[preempting:] if 1 in tokens)
    assert 0 < back[1] < 8 + 4
    assert inst.pool.held == 0


def test_head_of_line_blocking():
    # 10 blocks: R0 (20 + 20 tokens) runs; R1 needs 6 blocks for its prompt and does not fit
    # beside it; R2 (1 block) would fit but waits behind R1 (first come, first served)
    reqs, _, _ = run([(0.0, range(5), 20, 20), (2.5, range(10, 16), 24, 1), (2.6, [20], 4, 1)],
                     capacity=10, budget=100)
    r0, r1, r2 = reqs
    assert r1.first_scheduled >= r0.finish
    assert r2.first_scheduled >= r1.first_scheduled


def test_request_cap():
    reqs, log, _ = run([(0.0, [i], 4, 3) for i in range(3)], capacity=100, budget=100, seqs=2)
    assert all(len(tokens) <= 2 for _, tokens in log)
    assert reqs[2].first_scheduled == reqs[0].finish


def test_prefill_only_request():
    (r,), log, _ = run([(0.0, [1, 2], 9, 0)], capacity=10)
    assert log == [(0.0, {0: 8}), (1.0, {0: 1})]
    assert r.first_token == r.finish == 2.0 and r.outputs == 0


def test_a_hit_from_the_cpu_tier_waits_for_its_load():
    from analytic.offload import Tiers

    # GPU of 6 blocks of 4 tokens, CPU tier of 100 (write-through) loading at 0.5 s per token.
    # R0 leaves blocks [1, 2]; R1 (5 blocks) evicts the LRU tail, block 2; R2 = [1, 2, 9] hits
    # block 1 on the GPU and block 2 in the CPU tier: admitted at t=10, it loads 4 tokens (2 s),
    # then computes its last 4 prompt tokens in one step: first token at 13.
    reqs, log, inst = run([(0.0, [1, 2], 8, 1), (5.0, [3, 4, 5, 6, 7], 20, 1), (10.0, [1, 2, 9], 12, 1)],
                          capacity=6, budget=100, tiers=Tiers(cpu_blocks=100, cpu_load_s_per_token=0.5))
    r2 = reqs[2]
    assert (r2.hit_tokens, r2.first_scheduled, r2.first_token, r2.finish) == (8, 10.0, 13.0, 13.0)
    assert log[-1] == (12.0, {2: 4})
    c = inst.counters
    assert c.tier_hit_blocks == [1, 1] and c.tier_stored_blocks[1] == 2 + 5 + 1
    # without the tier the same request recomputes block 2: hit 4 tokens, first token at 11
    plain = run([(0.0, [1, 2], 8, 1), (5.0, [3, 4, 5, 6, 7], 20, 1), (10.0, [1, 2, 9], 12, 1)],
                capacity=6, budget=100)[0][2]
    assert (plain.hit_tokens, plain.first_token) == (4, 11.0)


def test_no_prefix_caching():
    keys = [1, 2, 3]
    reqs, _, inst = run([(0.0, keys, 13, 1), (5.0, keys, 13, 1)], capacity=20, budget=100, caching=False)
    assert reqs[1].hit_tokens == 0 and inst.pool.cached == 0


# ---------------------------------------------------------------------------- random workloads

requests_st = st.lists(
    st.tuples(st.floats(0, 20, allow_nan=False), st.integers(0, 3), st.integers(1, 40), st.integers(0, 25)),
    min_size=1, max_size=12)


def _workload(raw, bs):
    """Requests sharing prefixes: ``family`` picks a stream of keys, the prompt takes its head."""
    out = []
    for arrival, family, prompt, output in sorted(raw, key=lambda r: r[0]):
        keys = [family * 1000 + j for j in range((prompt + output) // bs)]
        out.append((arrival, keys, prompt, output))
    return out


@settings(max_examples=60, deadline=None)
@given(raw=requests_st, capacity=st.integers(12, 40), budget=st.integers(4, 24), seqs=st.integers(1, 4),
       alpha=st.sampled_from([0.0, 0.3, 1.0]), gamma=st.sampled_from([0.0, 0.01]))
def test_invariants_and_fast_path(raw, capacity, budget, seqs, alpha, gamma):
    seqs = min(seqs, budget)
    work = _workload(raw, 4)
    step = LinearStepTime(alpha, 0.001, gamma)
    fast, fast_log, fast_inst = run(work, capacity, budget=budget, seqs=seqs, step=step, fast=True)
    plain, plain_log, plain_inst = run(work, capacity, budget=budget, seqs=seqs, step=step, fast=False)
    for log in (plain_log,):
        for _, tokens in log:
            assert 0 < sum(tokens.values()) <= budget  # the budget is never exceeded
            assert len(tokens) <= seqs  # nor the request cap
    for r in plain:
        if r.oversized:  # refused: it could never fit the cache
            assert -(-(r.prompt_tokens + r.max_tokens) // 4) > capacity and r.first_scheduled is None
            continue
        assert r.finish is not None and r.finish >= r.first_token >= r.first_scheduled >= r.arrival
        assert r.outputs == r.max_tokens
    # service in arrival order: first schedulings are in arrival order
    firsts = [r.first_scheduled for r in plain if not r.oversized]
    assert firsts == sorted(firsts)
    # blocks are conserved: at the end nothing is held, every block free or cached
    assert plain_inst.pool.held == 0 and fast_inst.pool.held == 0
    # the fast decode path is the plain stepper, exactly
    fields = ("hit_tokens", "first_scheduled", "first_token", "finish", "preemptions", "outputs")
    assert [[getattr(r, f) for f in fields] for r in fast] == [[getattr(r, f) for f in fields] for r in plain]
    assert fast_log == plain_log
    s, p = fast_inst.stats, plain_inst.stats
    assert sorted(zip(s.itl_values, s.itl_weights)) == sorted(zip(p.itl_values, p.itl_weights))
    assert (s.held_area, s.cached_area, s.held_peak, s.steps) == (p.held_area, p.cached_area, p.held_peak, p.steps)
    assert fast_inst.pool.evictions == plain_inst.pool.evictions


def _small_workload(**kw):
    base = dict(arrival_rate=0.5, turns=TurnCount("fixed", 4), think_time=ThinkTime("exp", 10.0),
                input_tokens=TokenCount("fixed", 201), output_tokens=TokenCount("fixed", 60))
    base.update(kw)
    return Workload(**base)


def test_fast_path_equals_plain_stepper_in_a_fleet():
    w = _small_workload(arrival_rate=2.0)
    spec = EngineSpec(LinearStepTime(0.004, 4e-5, 1e-8), 512, 32)
    runs = [simulate_fleet(w, [300, 300], router="cache-aware", engine=spec, duration=200, warmup=50,
                           replications=1, fast=fast, keep_requests=True) for fast in (True, False)]
    rows = [sorted((q.index, q.instance, q.hit_tokens, q.first_scheduled, q.first_token, q.finish, q.preemptions)
                   for stats in r.serving[0] for q in stats.requests) for r in runs]
    assert rows[0] == rows[1]
    assert runs[0].as_dict() == runs[1].as_dict()


def test_zero_step_time_reproduces_the_instant_hit_rates():
    # 201 + 60 tokens per turn: no turn ends on a block boundary (or one past it), where the
    # engine differs by design (it never computes a request's last sampled token)
    w = _small_workload()
    for capacity in (120, 400, 100_000):
        instant = simulate(w, capacity, duration=400, warmup=100, replications=1)
        engine = simulate_fleet(w, capacity, 1, engine=EngineSpec(LinearStepTime(0, 0, 0), 2048, 256),
                                duration=400, warmup=100, replications=1)
        a, b = instant.replications[0], engine.replications[0][0]
        assert (b.requests, b.hit_tokens, b.hit_blocks, b.requests_hit) == (a.requests, a.hit_tokens, a.hit_blocks,
                                                                           a.requests_hit)
        assert b.turn_hits == a.turn_hits


def test_engine_refuses_what_it_does_not_model():
    spec = EngineSpec(ONE_SECOND, 8, 4)
    with pytest.raises(ValueError, match="policy must be lru"):
        simulate_fleet(_small_workload(), 100, 1, policy="fifo", engine=spec, duration=200, warmup=50)
    with pytest.raises(ValueError, match="max-num-batched-tokens must be >= max-num-seqs"):
        EngineSpec(ONE_SECOND, 4, 8)
    with pytest.raises(ValueError, match="max-num-seqs must be"):
        EngineSpec(ONE_SECOND, 8, 0)


@pytest.mark.parametrize("args, message", [
    (["--max-num-batched-tokens", "0"], "max-num-batched-tokens must be a whole number > 0"),
    (["--max-num-seqs", "-1"], "max-num-seqs must be a whole number > 0"),
    (["--max-num-batched-tokens", "10", "--max-num-seqs", "20"], "max-num-batched-tokens must be >= max-num-seqs"),
    (["--step-time", "linear:nan,0,0"], "step-time alpha must be a finite number >= 0"),
    (["--step-time", "linear:-1,0,0"], "step-time alpha must be a finite number >= 0"),
    (["--step-time", "linear:1,2"], "step-time must be roofline"),
    (["--engine", "--model-config", "/nonexistent/config.json"], "model-config: /nonexistent/config.json"),
    (["--engine", "--gpu-memory-gb", "80"], "step-time: the roofline needs the GPU"),
    (["--engine", "--policy", "fifo"], "policy must be lru with the engine"),
    (["--engine", "--service"], "--service: the linear service model is replaced by the serving engine"),
    (["--engine", "--requests-out", "/tmp"], "--requests-out must be a file path, not a folder"),
])
def test_engine_flags_refused_in_one_line(args, message, capsys):
    from kvsim.cli.main import main

    assert main(["simulate", *args, "--duration", "700", "--warmup", "100", "--replications", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_replay_refuses_a_request_larger_than_the_cache(tmp_path, capsys):
    import json

    from kvsim.cli.main import main

    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": t, "input_length": 40, "output_length": 600 if t == 3 else 4,
                                         "hash_ids": [1, 2, 10 + t]}) + "\n" for t in range(6)))
    assert main(["replay", str(trace), "--trace-block-size", "16", "--engine", "--step-time", "linear:0.01,0,0",
                 "--capacity-blocks", "10"]) == 2
    err = capsys.readouterr().err
    assert "capacity: the largest request (40 input + 600 output tokens = 40 blocks of 16" in err


def test_requests_out_with_the_engine(tmp_path):
    import csv

    from kvsim.cli.main import main

    out = tmp_path / "requests.csv"
    assert main(["simulate", "--engine", "--step-time", "linear:0.01,1e-5,0", "--capacity-tokens", "100000",
                 "--duration", "300", "--warmup", "100", "--replications", "1", "--requests-out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["request", "arrival_s", "instance", "prompt_tokens", "output_tokens", "hit_tokens",
                             "first_scheduled_s", "ttft_s", "e2e_s", "preemptions"]
    assert [int(r["request"]) for r in rows] == list(range(len(rows)))
    for r in rows:
        assert float(r["e2e_s"]) >= float(r["ttft_s"]) > 0
        assert float(r["first_scheduled_s"]) >= float(r["arrival_s"])


def test_requests_out_without_the_engine_holds_the_hits(tmp_path):
    import csv
    import json

    from kvsim.cli.main import main

    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": 1000 * t, "input_length": 40, "output_length": 4,
                                         "hash_ids": [1, 2, 10 + t]}) + "\n" for t in range(6)))
    out = tmp_path / "hits.csv"
    assert main(["replay", str(trace), "--trace-block-size", "16", "--vllm", "--capacity-blocks", "100",
                 "--requests-out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["hit_tokens"]) for r in rows] == [0, 32, 32, 32, 32, 32]  # 40 tokens: 2 full blocks
    assert [float(r["arrival_s"]) for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(r["ttft_s"] == r["e2e_s"] == r["first_scheduled_s"] == "" for r in rows)
    # the engine's rows for the same trace: the same hits (nothing evicts here), with times
    engine_out = tmp_path / "engine.csv"
    assert main(["replay", str(trace), "--trace-block-size", "16", "--engine", "--step-time", "linear:0.01,0,0",
                 "--capacity-blocks", "100", "--requests-out", str(engine_out)]) == 0
    engine_rows = list(csv.DictReader(engine_out.open()))
    assert [r["hit_tokens"] for r in engine_rows] == [r["hit_tokens"] for r in rows]
    assert all(float(r["e2e_s"]) == pytest.approx(0.04) for r in engine_rows)  # prefill + 3 decode steps
    assert main(["replay", str(trace), "--trace-block-size", "16", "--capacity-blocks", "10,20",
                 "--requests-out", str(out)]) == 2
