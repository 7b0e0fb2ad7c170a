"""kvsim plan --slo: parsing, impossible targets, and the answer the simulation confirms."""

import json

import pytest

from analytic.slo import Target, lone_request, parse_slo
from analytic.distributions import TurnCount
from analytic.specs import Workload
from analytic.steptime import LinearStepTime
from kvsim.cli.main import main


def test_parse_slo():
    assert parse_slo("ttft-p99=0.5, tpot-mean=0.05") == (Target("ttft", "p99", 0.5), Target("tpot", "mean", 0.05))
    for bad, needle in [("", "slo must be METRIC-STAT=SECONDS"), ("ttft=0.5", "must be METRIC-STAT=SECONDS"),
                        ("latency-p99=1", "must be METRIC-STAT=SECONDS"), ("ttft-p95=1", "must be METRIC-STAT"),
                        ("ttft-p99=abc", "must be a number of seconds"), ("ttft-p99=-1", "must be a number"),
                        ("ttft-p99=nan", "must be a number"), ("ttft-p99=1,ttft-p99=2", "given twice")]:
        with pytest.raises(ValueError, match=needle):
            parse_slo(bad)


def test_lone_request_by_hand():
    # 5 turns of 200 + 300: mean prompt 200 + 500 x 2 = 1200 tokens; budget 1000: chunks of 1000 and 200
    step = LinearStepTime(0.01, 1e-5, 0.0)
    alone = lone_request(Workload(), step, 1000)
    assert alone["ttft"] == pytest.approx((0.01 + 1e-5 * 1000) + (0.01 + 1e-5 * 200))
    assert alone["tpot"] == pytest.approx(0.01 + 1e-5)
    assert alone["e2e"] == pytest.approx(alone["ttft"] + 299 * alone["tpot"])


SMALL = ["--capacity-tokens", "60000", "--step-time", "linear:0.01,2e-5,1e-8", "--duration", "500", "--warmup",
         "150", "--replications", "1"]


@pytest.mark.parametrize("argv, needle", [
    (["--slo", "ttft-p99=0.001"], "slo: ttft-p99=0.001 s is below what a lone request takes"),
    (["--slo", "speed=1"], "slo: 'speed=1' must be METRIC-STAT=SECONDS"),
    (["--slo", "ttft-p99=1", "--target-hit-rate", "0.5"], "give one of --target-hit-rate and --slo"),
    ([], "give one of --target-hit-rate and --slo"),
    (["--slo", "ttft-p99=1", "--instances", "2"], "--slo plans one instance"),
])
def test_bad_slo_is_one_line(argv, needle, capsys):
    assert main(["plan", *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_the_answer_meets_the_targets_in_the_simulation(capsys):
    assert main(["plan", *SMALL, "--slo", "ttft-p90=0.3,tpot-p99=0.05", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    for key in ("on", "off"):
        r = record["prefix_caching"][key]
        best = r["simulated_arrival_rate"]
        assert best is not None and 0 < best <= r["model_bound_arrival_rate"]
        at_best = next(x for x in r["simulations"] if x["arrival_rate"] == best)
        assert at_best["meets"] and at_best["ttft-p90"] <= 0.3 and at_best["tpot-p99"] <= 0.05
        # every simulated rate above the answer missed
        assert all(not x["meets"] for x in r["simulations"] if x["arrival_rate"] > best)
    assert record["prefix_caching"]["on"]["simulated_arrival_rate"] >= record["prefix_caching"]["off"][
        "simulated_arrival_rate"]
    # the instances the workload's own rate (1 conversation/s) needs, each within the targets
    for r in record["prefix_caching"].values():
        n = r["instances_for_arrival_rate"]
        assert n * r["simulated_arrival_rate"] >= 1.0 > (n - 1) * r["simulated_arrival_rate"]


def test_smallest_blocks_by_hand():
    from analytic.slo import smallest_blocks

    assert smallest_blocks(lambda n: n >= 37) == 37  # bisection below the start
    assert smallest_blocks(lambda n: n >= 5000, start=1024) == 5000  # doubling, then bisection
    assert smallest_blocks(lambda n: True) == 1
    assert smallest_blocks(lambda n: False) is None


def test_meets_at_rate_grows_with_the_cache_and_a_cpu_tier():
    """More GPU cache (or a CPU tier below it) never turns a met target into a miss in the models."""
    from analytic.load import mean_prompt
    from analytic.offload import Tiers
    from analytic.scenario import default_evaluate
    from analytic.serving import EngineSpec
    from analytic.slo import meets_at_rate

    engine = EngineSpec(LinearStepTime(0.01, 2e-5, 1e-8), 2048, 256)
    w = Workload(arrival_rate=1.5)
    targets = parse_slo("ttft-mean=0.1,tpot-mean=0.05")
    met = [meets_at_rate(targets, w, blocks, 16, engine, default_evaluate) for blocks in (500, 2000, 3000, 6000, 20000)]
    assert met == sorted(met) and met[-1] and not met[0]
    # A CPU tier: more hits; its load adds to TTFT, so a slow one can undo it
    gpu = 3000
    fast = Tiers(20000, 0, "inclusive", 1e-9)
    slow = Tiers(20000, 0, "inclusive", 0.5 / mean_prompt(w))  # a whole prompt's load: 0.5 s
    assert meets_at_rate(targets, w, gpu, 16, engine, default_evaluate, tiers=fast)
    assert not meets_at_rate(targets, w, gpu, 16, engine, default_evaluate, tiers=slow)


def test_the_memory_a_rate_needs_meets_the_targets_in_the_simulation(capsys):
    small = ["--capacity-tokens", "60000", "--step-time", "linear:0.01,2e-5,1e-8", "--duration", "400", "--warmup",
             "150", "--replications", "1"]
    assert main(["plan", *small, "--slo", "ttft-p90=0.3,tpot-p99=0.05", "--solve-for", "gpu-memory",
                 "--arrival-rate", "1.5", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    for r in record["prefix_caching"].values():
        best = r["simulated_blocks"]
        assert best is not None and best >= r["model_blocks"]  # the models' answer is a lower bound here
        assert next(x for x in r["simulations"] if x["blocks"] == best)["meets"]
        assert all(not x["meets"] for x in r["simulations"] if x["blocks"] < best)


@pytest.mark.parametrize("argv, needle", [
    (["--target-hit-rate", "0.5", "--solve-for", "gpu-memory"], "--solve-for goes with --slo"),
    (["--slo", "ttft-p99=1", "--solve-for", "cpu-offload", "--cpu-offload-gib", "8"],
     "--solve-for cpu-offload sizes one instance"),
    (["--slo", "ttft-p99=1", "--solve-for", "memory"], "--solve-for: invalid choice"),
])
def test_bad_solve_for_is_one_line(argv, needle, capsys):
    assert main(["plan", *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_no_rate_meets_an_impossible_target_and_the_bound_is_zero():
    from analytic.scenario import default_evaluate
    from analytic.serving import EngineSpec
    from analytic.slo import model_rate_bound

    engine = EngineSpec(LinearStepTime(0.01, 2e-5, 1e-8), 2048, 256)
    assert model_rate_bound(parse_slo("ttft-mean=0.000001"), Workload(), 5000, 16, engine, default_evaluate) == 0.0


def test_a_long_prompt_is_prefilled_in_chunks_as_a_lone_request_is():
    """Nearly no load, nothing cached, prompts of several token budgets: the models' TTFT is the
    lone request's (its chunks one step each), not chunks x a step holding the whole prompt."""
    from analytic.distributions import TokenCount
    from analytic.load import step_fixed_point, under_load
    from analytic.serving import EngineSpec

    step = LinearStepTime(0.01, 2e-5, 1e-8)
    engine = EngineSpec(step, 1024, 256, prefix_caching=False)
    w = Workload(arrival_rate=1e-4, turns=TurnCount("fixed", 1), input_tokens=TokenCount("fixed", 5000))
    r = under_load(w, 100_000, 16, engine, None)
    alone = lone_request(w, step, 1024)["ttft"]
    residual = step_fixed_point(step, w, 0.0).mean_residual  # the models' wait for the step in progress
    assert r.ttft_s - residual == pytest.approx(alone, rel=0.001) and alone > 4 * step.seconds(1024, 0, 0, 1)
