"""The front door: every bad value or combination is one line naming the flag, exit status 2,
nothing else on stderr and no warning, before any work; the Python API raises ValueError."""

import json
import warnings

import pytest

from analytic.distributions import MAX_TURNS, ThinkTime, TokenCount, TurnCount
from analytic.fifo import FIFO_MAX_TURNS, fifo_model
from analytic.scenario import Fleet
from analytic.service import ServiceModel
from analytic.sizing import capacity_from_gib, capacity_from_tokens
from analytic.specs import Hardware, ModelSpec, Workload
from kvsim.cli.main import main
from kvsim.engine import DEFAULT_MAX_EVENTS, expected_requests, simulate

SHORT = ["--duration", "700", "--warmup", "100", "--replications", "2"]


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": 40, "output_length": 4,
                                        "hash_ids": [1, 2, t]}) + "\n" for t in range(20)))
    return str(path)


BAD = [
    # calc: values
    (["calc", "--turns=1e6"], "turns must be at most 100,000"),
    (["calc", "--turns=100000", "--method", "fifo"], "turns: the FIFO model's cost"),
    (["calc", "--turns-dist", "geometric", "--turns", "1e9"], "turns must be at most"),
    (["calc", "--turns=inf"], "turns must be a finite number"),
    (["calc", "--turns=nan"], "turns must be a finite number"),
    (["calc", "--capacity-gib=1e308"], "capacity-gib: a cache of inf tokens"),
    (["calc", "--capacity-tokens=10000000000000"], "capacity-tokens: a cache of"),
    (["calc", "--gpu-memory-gb=1e300"], "gpu-memory-gb must be a number <= 100,000"),
    (["calc", "--gpus=1000000"], "gpus must be a whole number <= 100,000"),
    (["calc", "--instances=100000"], "instances must be a whole number <= 10,000"),
    (["calc", "--instances=99999999999999999999"], "instances must be a whole number <= 10,000"),
    (["calc", "--input-tokens", "0", "--output-tokens", "0", "--system-prompt-tokens", "100"],
     "input-tokens + output-tokens must be >= 1 for the seed model"),
    (["calc", "--think-dist", "lognormal", "--think-cv=1e308"], "think-cv must be a number in (0, 100]"),
    (["calc", "--input-cv=nan"], "input-cv must be a finite number"),
    (["calc", "--input-cv=1e9"], "input-tokens-cv must be a number in (0, 100]"),
    (["calc", "--input-tokens=1e12"], "argument --input-tokens: invalid int value"),
    (["calc", "--input-tokens=100000000000"], "input-tokens must be a number in [0, 10,000,000]"),
    (["calc", "--system-prompt-tokens=99999999999999999999"], "system-prompt-tokens must be a whole number <="),
    (["calc", "--think-time=1e300"], "think-time must be a number in (0, 1e+09] s"),
    (["calc", "--arrival-rate=1e308"], "arrival-rate must be a number <= 1e+06"),
    (["calc", "--memory-utilization=nan"], "memory-utilization must be a finite number"),
    # calc: combinations silently accepted before
    (["calc", "--preset="], "--preset must name one"),
    (["calc", "--gpu="], "--gpu must name one"),
    (["calc", "--kv-lora-rank=-1"], "--kv-lora-rank describes a custom model"),
    (["calc", "--sliding-layers=99"], "--sliding-layers describes a custom model"),
    (["calc", "--layers", "32", "--kv-heads", "8", "--head-dim", "128", "--params-b", "8", "--sliding-layers", "40",
      "--sliding-window", "4096"], "sliding-layers must be <= layers (32)"),
    # simulate: bounded work, refused before it starts
    (["simulate", "--duration=1e308"], "duration must be a number <= 1e+12"),
    (["simulate", "--duration=1e11"], "max-events: this simulation would serve about"),
    (["simulate", "--arrival-rate=1e5"], "max-events: this simulation would serve about"),
    (["simulate", "--replications=100000000"], "max-events: this simulation would serve about"),
    (["simulate", "--instances", "3", "--router", "all", "--arrival-rate", "1e5"], "max-events"),
    (["simulate", "--max-events", "1000", *SHORT], "above the limit of 1,000"),
    (["simulate", "--max-events", "0"], "max-events must be a whole number > 0"),
    (["simulate", "--prefill-base=1e308", *SHORT], "prefill-base must be a number <= 3,600"),
    (["simulate", "--prefill-per-token=1e308", *SHORT], "prefill-per-token must be a number <= 1"),
    (["simulate", "--instance-capacity-tokens", "10,x"], "--instance-capacity-tokens must be integers"),
    (["simulate", "--warmup", "nan"], "warmup must be a finite number"),
    (["compare", "--replications=100000000"], "max-events"),
    (["plan", "--target-hit-rate", "0.5", "--check", "--max-events", "10", *SHORT], "max-events"),
    (["plan", "--target-hit-rate", "nan"], "target-hit-rate must be a finite number"),
    (["plan", "--target-hit-rate", "0.5", "--arrival-rate=1e308"], "arrival-rate must be a number <= 1e+06"),
    (["sensitivity", "--step", "inf"], "step must be a finite number"),
    (["sensitivity", "--conversations", "nowhere"], "--conversations: sensitivity"),
]


def _run(capsys, argv):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err, caught


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_invocation_is_one_line_exit_2(capsys, argv, needle):
    code, out, err, caught = _run(capsys, argv)
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("kvsim: error: ") and needle in err, err
    assert "Traceback" not in err and not caught


@pytest.mark.parametrize("argv,needle", [
    (["replay", "{trace}", "--capacity-blocks", "x"], "--capacity-blocks"),
    (["replay", "{trace}", "--arrival-rate", "inf"], "--arrival-rate"),
    (["replay", "{trace}", "--policy", "mru"], "--policy"),
    (["replay", "{trace}/missing"], "no such trace file"),
    (["export-trace", "{trace}", "-o", "{trace}.csv", "--bytes-per-token", "0"], "--bytes-per-token"),
])
def test_bad_trace_invocation_is_one_line(capsys, trace, argv, needle):
    code, out, err, caught = _run(capsys, [a.format(trace=trace) for a in argv])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and not caught, err


def test_the_limit_can_be_raised(capsys):
    argv = ["simulate", "--capacity-tokens", "20000", *SHORT, "--json"]
    code, _, err, _ = _run(capsys, [*argv, "--max-events", "100"])
    assert code == 2 and "above the limit of 100" in err
    code, out, _, _ = _run(capsys, [*argv, "--max-events", "100000"])
    assert code == 0 and json.loads(out)["requests_measured"] > 0


# ----------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("make,match", [
    (lambda: TurnCount("fixed", MAX_TURNS + 1), "^turns must be at most"),
    (lambda: TurnCount("geometric", 1e7), "^turns must be at most"),
    (lambda: TurnCount("geometric", float("nan")), "^turns must be a number"),
    (lambda: TurnCount("empirical", pmf_pairs=((MAX_TURNS + 1, 1.0),)), "^turns pmf"),
    (lambda: ThinkTime("lognormal", 30, 1e9), "^think-cv"),
    (lambda: ThinkTime("exp", float("inf")), "^think-time"),
    (lambda: TokenCount("lognormal", 200, float("nan"), name="input-tokens"), "^input-tokens-cv"),
    (lambda: TokenCount("fixed", 200, 0.5, name="input-tokens"), "^input-tokens-cv must be 0"),
    (lambda: Workload(arrival_rate=1e9), "^arrival-rate"),
    (lambda: Workload(system_prompt_tokens=10**12), "^system-prompt-tokens"),
    (lambda: Hardware(gpu_memory_gib=1e300), "^gpu-memory-gb"),
    (lambda: ModelSpec(kv_lora_rank=-1), "^kv-lora-rank"),
    (lambda: capacity_from_gib(ModelSpec(), 1e308), "^capacity-gib"),
    (lambda: capacity_from_tokens(ModelSpec(), 10**13), "^capacity-tokens"),
    (lambda: Fleet(instances=10**6), "^instances"),
    (lambda: ServiceModel(max_running=10**9), "^max-running"),
    (lambda: fifo_model(Workload(turns=TurnCount("fixed", FIFO_MAX_TURNS + 1)), 1000), "^turns: the FIFO model"),
    (lambda: simulate(Workload(arrival_rate=1e5), 1000), "^max-events"),
    (lambda: simulate(Workload(), 1000, duration=700, warmup=100, max_events=10), "^max-events"),
])
def test_api_raises_value_error_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_event_estimate():
    w = Workload(arrival_rate=2.0, turns=TurnCount("fixed", 5))
    assert expected_requests(w, 1000.0, 3) == 2.0 * 1000 * 5 * 3
    assert expected_requests(w, 1000.0, 3, source=lambda rng, cid: iter(())) is None  # a source that does not say
    assert DEFAULT_MAX_EVENTS >= 10 * expected_requests(Workload(), 3750.0, 5)  # the default run is far below it
