"""The front door: every bad value or combination is one line naming the flag, exit status 2,
nothing else on stderr and no warning, before any work; the Python API raises ValueError."""

import gzip
import json
import tempfile
import warnings
from pathlib import Path

import pytest

from analytic.distributions import MAX_TURNS, ThinkTime, TokenCount, TurnCount
from analytic.fifo import FIFO_MAX_TURNS, fifo_model
from analytic.lru import lru_model
from analytic.scenario import Fleet
from analytic.service import ServiceModel
from analytic.sizing import capacity_from_gib, capacity_from_tokens
from analytic.specs import Hardware, ModelSpec, Workload
from kvsim.cli.main import main
from kvsim.cli.parser import output_file, output_folder
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
    (["calc", "--think-dist", "lognormal", "--think-cv=1e308"], "think-cv must be a number in [0.001, 100]"),
    (["calc", "--input-cv=nan"], "input-cv must be a finite number"),
    (["calc", "--input-cv=1e9"], "input-tokens-cv must be a number in [0.001, 100]"),
    (["calc", "--input-tokens=1e12"], "argument --input-tokens: invalid int value"),
    (["calc", "--input-tokens=100000000000"], "input-tokens must be a number in [0, 10,000,000]"),
    (["calc", "--system-prompt-tokens=99999999999999999999"], "system-prompt-tokens must be a whole number <="),
    (["calc", "--think-time=1e300"], "think-time must be a number in [1e-06, 1e+09] s"),
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
    (["simulate", "--prefill-base=1e308", *SHORT], "--prefill-base: the linear service model is replaced"),
    (["simulate", "--prefill-per-token=1e308", *SHORT], "--prefill-per-token: the linear service model is replaced"),
    (["simulate", "--instance-capacity-tokens", "10,x"], "--instance-capacity-tokens must be integers"),
    (["simulate", "--warmup", "nan"], "warmup must be a finite number"),
    (["compare", "--replications=100000000"], "max-events"),
    (["plan", "--target-hit-rate", "0.5", "--check", "--max-events", "10", *SHORT], "max-events"),
    (["plan", "--target-hit-rate", "nan"], "target-hit-rate must be a finite number"),
    (["plan", "--target-hit-rate", "0.5", "--arrival-rate=1e308"], "arrival-rate must be a number <= 1e+06"),
    (["sensitivity", "--step", "inf"], "step must be a finite number"),
    (["sensitivity", "--conversations", "nowhere"], "--conversations: sensitivity"),
    # issue 23: values that overflow only inside the models, refused with bounds
    (["calc", "--turns-dist", "geometric", "--turns=1e308"], "turns must be at most 100,000 per conversation"),
    (["calc", "--turns-dist", "geometric", "--turns=99999999999999999999"], "turns must be at most 100,000"),
    (["simulate", "--turns-dist", "geometric", "--turns=1e17", *SHORT], "turns must be at most 100,000"),
    (["calc", "--think-dist", "gamma", "--think-cv=1e-308"], "think-cv must be a number in [0.001, 100]"),
    (["calc", "--think-dist", "lognormal", "--think-cv=1e-308"], "think-cv must be a number in [0.001, 100]"),
    (["calc", "--input-cv=1e-308"], "input-tokens-cv must be a number in [0.001, 100]"),
    (["calc", "--output-cv=1e-308"], "output-tokens-cv must be a number in [0.001, 100]"),
    (["calc", "--think-time=1e-308"], "think-time must be a number in [1e-06, 1e+09] s"),
    (["calc", "--arrival-rate=1e-308"], "arrival-rate must be a number >= 1e-09 for the models"),
    (["plan", "--target-hit-rate", "0.3", "--arrival-rate=1e-308"], "arrival-rate must be a number >= 1e-09"),
    (["calc", "--block-size=99999999999999999999"], "block-size must be a whole number <= 1e+07"),
    (["calc", "--params-b=1e308"], "params-b must be a number <= 100,000"),
    (["calc", "--model-size-gb=1e308"], "model-size-gb must be a number <= 1e+06"),
    (["calc", "--layers=99999999999999999999", "--kv-heads=8", "--head-dim=128", "--params-b=8"],
     "layers must be a whole number <= 10,000"),
    (["calc", "--layers=32", "--kv-heads=8", "--head-dim=99999999999999999999", "--params-b=8"],
     "head-dim must be a whole number <= 100,000"),
    (["calc", "--layers=32", "--kv-heads=8", "--head-dim=128", "--params-b=8", "--kv-lora-rank=99999999999999999999",
      "--qk-rope-head-dim=64"], "kv-lora-rank must be a whole number <= 100,000"),
    (["calc", "--cpu-offload-gib=nan"], "cpu-offload-gib must be a finite number"),  # the flag, not its dest
    (["serve", "--host="], "host must name an address"),
    (["sweep", "nowhere.toml", "--out="], "--out must be a folder path (got '')"),
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
    (lambda: ServiceModel(prefill_per_token=2.0), "^prefill-per-token"),
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


# ----------------------------------------------------------------------------- issue 23: output paths


@pytest.fixture
def unwritable(tmp_path):
    """A folder no file can be created in: mode 0555, or /sys when running as root (which ignores
    the mode)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            yield candidate
            break
    else:
        pytest.skip("no unwritable folder here")
    folder.chmod(0o755)


@pytest.fixture
def grid(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('command = "calc"\n[grid]\nturns = [2, 3]\n')
    return str(path)


# Each command or experiment that writes files: its argv up to the output flag. {trace} and {grid}
# are filled in; the output flag's value comes last.
WRITERS = {
    "compare --figure": ["compare", *SHORT, "--figure"],
    "sensitivity --figure": ["sensitivity", "--figure"],
    "export-trace --output": ["export-trace", "{trace}", "--output"],
    "simulate --requests-out": ["simulate", *SHORT, "--replications", "1", "--requests-out"],
    "replay --requests-out": ["replay", "{trace}", "--trace-block-size", "16", "--capacity-blocks", "100",
                              "--requests-out"],
    "replay --engine --requests-out": ["replay", "{trace}", "--trace-block-size", "16", "--engine", "--step-time",
                                       "linear:0.01,0,0", "--capacity-blocks", "100", "--requests-out"],
}
# (path class, the path with {tmp} / {ro} for tmp_path and the unwritable folder, the error)
BAD_FILES = [
    ("empty", "", "must be a file path (got '')"),
    ("blank", " ", "must be a file path (got ' ')"),
    ("a folder", "{tmp}", "must be a file path, not a folder"),
    ("missing folder", "{tmp}/nowhere/out.png", "must be in an existing folder"),
    ("in a file", "{trace}/out.png", "must be in an existing folder"),
    ("unwritable folder", "{ro}/out.png", "must be in a folder kvsim can write"),
    ("a device", "/dev/null", "must be a regular file path"),
]


def _fill(text, tmp_path, trace, grid="", ro=""):
    return text.format(tmp=tmp_path, trace=trace, grid=grid, ro=ro)


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("what,path,needle", BAD_FILES, ids=[c for c, _, _ in BAD_FILES])
def test_output_file_refused_before_any_work(capsys, tmp_path, trace, unwritable, writer, what, path, needle):
    argv = [_fill(a, tmp_path, trace) for a in WRITERS[writer]]
    code, out, err, caught = _run(capsys, [*argv, _fill(path, tmp_path, trace, ro=unwritable)])
    flag = WRITERS[writer][-1]
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"kvsim: error: {flag} ") and needle in err and not caught, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro", "t.jsonl"]  # nothing written (no tmp.png either)


def test_figure_format_refused(capsys, tmp_path):
    code, _, err, _ = _run(capsys, ["sensitivity", "--figure", str(tmp_path / "t.bogus")])
    assert code == 2 and "--figure must end in one of" in err and ".png" in err


@pytest.mark.parametrize("given,written", [("tornado", "tornado.png"), ("tornado.svg", "tornado.svg")])
def test_printed_figure_is_the_file_written(capsys, tmp_path, given, written):
    code, out, _, _ = _run(capsys, ["sensitivity", "--figure", str(tmp_path / given)])
    assert code == 0 and f"figure: {tmp_path / written}\n" in out
    assert [p.name for p in tmp_path.iterdir()] == [written]


def test_compare_prints_the_figure_it_wrote(capsys, tmp_path):
    code, out, _, _ = _run(capsys, ["compare", *SHORT, "--arrival-rate", "0.2", "--figure", str(tmp_path / "f")])
    assert code == 0 and f"figure: {tmp_path / 'f.png'}\n" in out and (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("what,path,needle", [
    ("empty", "", "--out must be a folder path (got '')"),
    ("a file", "{trace}", "--out must be a folder (got"),
    ("under a file", "{trace}/sub", "is a file"),
    ("unwritable", "{ro}/sub", "--out must be in a folder kvsim can write"),
])
def test_sweep_out_folder_refused(capsys, tmp_path, trace, grid, unwritable, what, path, needle):
    code, out, err, _ = _run(capsys, ["sweep", grid, "--out", _fill(path, tmp_path, trace, ro=unwritable)])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_output_helpers_in_the_api(tmp_path):
    assert output_file("--out", str(tmp_path / "a.csv")) == str(tmp_path / "a.csv")
    assert output_file("--figure", tmp_path / "a", figure=True) == str(tmp_path / "a.png")
    assert output_file("--figure", None) is None and output_folder("--out", None) is None
    assert output_folder("--out", str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checked, not created


EXPERIMENTS = [  # (script, argv with {file} an existing file and {tmp} a folder, the error)
    ("fleet", ["--out", "{file}"], "fleet: error: --out must be a folder"),
    ("fleet", ["--figure", "{tmp}"], "fleet: error: --figure must be a file path, not a folder"),
    ("policies", ["--figure="], "policies: error: --figure must be a file path (got '')"),
    ("policies", ["--out="], "policies: error: --out must be a folder path (got '')"),
    ("tiers_figure", ["--out", "{tmp}"], "tiers_figure: error: --out must be a file path, not a folder"),
    ("tiers_figure", ["--out", "{tmp}/nowhere/t.png"], "tiers_figure: error: --out must be in an existing folder"),
    ("traces", ["--traces", "{tmp}", "--out", "{file}"], "traces: error: --out must be a folder"),
    ("validate", ["--out", "{file}"], "validate: error: --out must be a folder"),
    ("make_samples", ["--out", "{file}"], "make_samples: error: --out must be a folder"),
]


@pytest.mark.parametrize("script,argv,needle", EXPERIMENTS, ids=[f"{s} {' '.join(a)}" for s, a, _ in EXPERIMENTS])
def test_experiment_outputs_refused_before_any_work(capsys, tmp_path, script, argv, needle):
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(folder))  # fleet.py imports validate.py as a sibling
    try:
        spec = importlib.util.spec_from_file_location(f"_exp_{script}", folder / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    (tmp_path / "file").write_text("x")
    code = module.main([a.format(file=tmp_path / "file", tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and err.startswith(needle), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ----------------------------------------------------------------------------- issue 23: lists, traces, grids


@pytest.mark.parametrize("argv,needle", [
    (["replay", "{trace}", "--capacity-blocks", "1,,2"], "argument --capacity-blocks: expected integers"),
    (["replay", "{trace}", "--capacity-blocks", "1,2,"], "argument --capacity-blocks: expected integers"),
    (["replay", "{trace}", "--capacity-blocks", ","], "argument --capacity-blocks: expected integers"),
    (["replay", "{trace}", "--capacity-tokens", "100,,200"], "argument --capacity-tokens: expected integers"),
    (["replay", "{trace}", "--capacity-blocks", "99999999999999999999"], "capacity-blocks must be integers in [0, "),
    (["replay", "{trace}", "--policy", "lru,,fifo"], "argument --policy: policy must be one of"),
    (["simulate", "--instance-capacity-tokens", "10,,20", *SHORT], "--instance-capacity-tokens must be integers"),
    (["replay", "{trace}", "--arrival-rate", "1e-308"], "arrival-rate must be a number in [1e-09, 1e+06]"),
    (["export-trace", "{trace}", "-o", "{trace}.csv", "--bytes-per-token", "99999999999999999999"],
     "bytes-per-token must be an integer in [1, 1,000,000,000]"),
    (["replay", ""], "trace paths (TRACE, --conversations) must name a file or folder (got '')"),
    (["calc", "--conversations", ""], "trace paths (TRACE, --conversations) must name a file or folder"),
])
def test_lists_and_trace_paths(capsys, trace, argv, needle):
    code, out, err, caught = _run(capsys, [a.format(trace=trace) for a in argv])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and not caught, err


BAD_TRACES = [  # (what, file name, bytes, the error)
    ("truncated gzip", "t.jsonl.gz", lambda good: gzip.compress(good)[:60], "cannot read"),
    ("truncated line", "t.jsonl", lambda good: good[:-20], "not valid JSON"),
    ("not gzip", "t.jsonl.gz", lambda good: good, "Not a gzipped file"),
    ("binary", "t.jsonl", lambda good: bytes(range(128, 256)), "cannot read"),
    ("wrong type", "t.jsonl", lambda good: b'{"timestamp": 1, "input_length": "x", "hash_ids": [1]}\n',
     "input_length must be an integer"),
    ("truncated json", "t.json", lambda good: b'{"messages": [', "not a readable conversation file"),
    ("a fifo", "t.jsonl", None, "not a regular file"),
    ("empty folder", "empty", None, "holds no trace files"),
]


@pytest.mark.parametrize("what,name,make,needle", BAD_TRACES, ids=[w for w, *_ in BAD_TRACES])
@pytest.mark.parametrize("command", ["replay", "export-trace"])
def test_unreadable_traces(capsys, tmp_path, command, what, name, make, needle):
    import os

    bad = tmp_path / "bad"
    bad.mkdir()
    path = bad / name
    if what == "a fifo":
        os.mkfifo(path)  # reading it would block: refused before it is opened
    elif what == "empty folder":
        path.mkdir()
    else:
        good = "".join(json.dumps({"timestamp": t, "input_length": 40, "output_length": 4,
                                   "hash_ids": [3 * t, 3 * t + 1, 3 * t + 2]}) + "\n" for t in range(20))
        path.write_bytes(make(good.encode()))
    argv = [command, str(path), "--trace-block-size", "16",
            *(["-o", str(tmp_path / "o.csv")] if command == "export-trace" else [])]
    code, out, err, caught = _run(capsys, argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and not caught, err


BAD_GRIDS = [  # (what, grid file text, the error)
    ("not TOML", "command = ", "not a valid TOML file"),
    ("command a number", "command = 3\n[grid]\nturns = [5]", "command must be one of"),
    ("base not a table", 'command = "calc"\nbase = 3\n[grid]\nturns = [5]', "base must be a table"),
    ("grid value not a list", 'command = "calc"\n[grid]\nturns = 5', "grid.turns must be a list"),
    ("empty list", 'command = "calc"\n[grid]\nturns = []', "grid.turns: the list is empty"),
    ("nested list", 'command = "calc"\n[grid]\nturns = [[5]]', "each value must be a number, a string"),
    ("table value", 'command = "calc"\n[grid]\nturns = [{a = 1}]', "each value must be a number, a string"),
    ("string for a number", 'command = "calc"\n[grid]\nturns = [5, "x"]', "invalid float value: 'x'"),
    ("date for a number", 'command = "calc"\n[grid]\nturns = [1979-05-27]', "invalid float value"),
    ("float for an integer", 'command = "calc"\n[grid]\ninput-tokens = [1.5]', "invalid int value: '1.5'"),
    ("true for a value", 'command = "calc"\n[grid]\nturns = [true]', "grid.turns must be a value for --turns"),
    ("false for a value", 'command = "calc"\n[grid]\nturns = [false, 5]', "grid.turns must be a value for --turns"),
    ("false in base", 'command = "calc"\n[base]\nturns = false\n[grid]\narrival-rate = [1]', "base.turns must be"),
    ("overflow", 'command = "calc"\n[grid]\nturns-dist = ["geometric"]\nturns = [1e308]', "turns must be at most"),
    ("huge integer", 'command = "calc"\n[grid]\narrival-rate = [99999999999999999999]', "arrival-rate must be"),
    ("nan", 'command = "calc"\n[grid]\nturns = [nan]', "turns must be a finite number"),
    ("empty string", 'command = "calc"\n[grid]\npreset = [""]', "--preset must name one"),
    ("empty trace path", 'command = "replay"\n[base]\ntraces = [""]\n[grid]\ncapacity-blocks = [10]',
     "trace paths (TRACE, --conversations) must name a file or folder"),
    ("list with a hole", 'command = "replay"\n[base]\ntraces = ["{trace}"]\n[grid]\ncapacity-blocks = ["1,,2"]',
     "expected integers separated by commas"),
    ("unknown key", 'command = "calc"\n[grid]\n"" = [1]', "unknown key for kvsim calc"),
    ("output flag", 'command = "calc"\n[grid]\njson = [true]', "output flags do not apply"),
]


@pytest.mark.parametrize("what,text,needle", BAD_GRIDS, ids=[w for w, *_ in BAD_GRIDS])
def test_bad_grid_files(capsys, tmp_path, trace, what, text, needle):
    path = tmp_path / "grid.toml"
    path.write_text(text.replace("{trace}", trace))
    code, out, err, caught = _run(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and not caught, err
    assert not (tmp_path / "out").exists()


def test_packaging_uses_the_spdx_license():
    """setuptools >= 77 takes an SPDX string; the TOML table it deprecates printed a warning on install."""
    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT" and meta["project"]["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in meta["build-system"]["requires"]


@pytest.mark.parametrize("make,match", [
    (lambda: TurnCount("geometric", 1e308), "^turns must be at most"),
    (lambda: ThinkTime("gamma", 30, 1e-308), r"^think-cv must be a number in \[0.001"),
    (lambda: ThinkTime("exp", 1e-308), r"^think-time must be a number in \[1e-06"),
    (lambda: TokenCount("lognormal", 200, 1e-308, name="input-tokens"), "^input-tokens-cv"),
    (lambda: lru_model(Workload(arrival_rate=1e-308), 1000), "^arrival-rate must be a number >= 1e-09"),
    (lambda: fifo_model(Workload(arrival_rate=1e-308), 1000), "^arrival-rate must be a number >= 1e-09"),
    (lambda: lru_model(Workload(), 1000, 10**8), "^block-size must be a whole number <="),
    (lambda: capacity_from_tokens(ModelSpec(layers=10**20), 1000), "^layers must be a whole number <= 10,000"),
    (lambda: capacity_from_tokens(ModelSpec(), 1000, block_size=10**20), "^block-size"),
    (lambda: capacity_from_gib(ModelSpec(params_b=1e308), 10), None),  # params only matter for memory sizing
])
def test_api_bounds_issue_23(make, match):
    if match is None:
        make()
        return
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- the second fuzz (issue 23)
#
# Every flag that takes a value, of every command (read from the parsers, so a new flag is fuzzed
# too), given each class of bad value. What each class gets (kvsim, December 2026):
#   nan, inf, -inf                   "<flag> must be a finite number" (or argparse's invalid int value)
#   empty, blank, word, 1,,2         argparse's "argument --flag: invalid ... value" naming the flag, or
#                                    the flag's own "must name one" / "expected integers ..."
#   0, -1, -1e-308                   the flag's lower bound ("must be a number > 0", ">= 0", "in (0, 1)"),
#                                    or accepted where 0 means none (--cpu-offload-gib 0, --seed 0)
#   1e308, 99999999999999999999      the flag's upper bound (turns 100,000, tokens 10M, layers 10,000,
#                                    block size 1e7, params 100,000 B, capacity 1e12 tokens, ...) or
#                                    --max-events's estimate; accepted where it is a cap (--max-requests)
#   1e-308                           the bounds that keep the models finite (think time 1e-6 s, CV 0.001,
#                                    arrival rate 1e-9/s for the models), or a finite answer (a cache of
#                                    0 tokens hits nothing)
# Scenario flags are fuzzed through calc (every command builds the same Scenario); each other
# command through its own flags. Nothing may raise, warn, hang or print NaN / Infinity.
FUZZ_VALUES = {"zero": "0", "negative": "-1", "nan": "nan", "inf": "inf", "-inf": "-inf", "overflow": "1e308",
               "underflow": "1e-308", "negative underflow": "-1e-308", "huge integer": "99999999999999999999",
               "empty": "", "blank": " ", "word": "x", "list with a hole": "1,,2"}
ALWAYS_REFUSED = {"nan", "inf", "-inf", "empty", "blank", "word", "list with a hole"}
CUSTOM = ["--layers", "32", "--kv-heads", "8", "--head-dim", "128", "--params-b", "8"]
FUZZ_CONTEXT = {  # flags that act only with others
    "think-cv": ["--think-dist", "gamma"], "turns": ["--turns-dist", "geometric"],
    "sliding-window": [*CUSTOM, "--sliding-layers", "16"], "sliding-layers": [*CUSTOM, "--sliding-window", "4096"],
    "kv-lora-rank": [*CUSTOM, "--qk-rope-head-dim", "64"], "qk-rope-head-dim": [*CUSTOM, "--kv-lora-rank", "512"],
    "layers": CUSTOM[2:], "kv-heads": [*CUSTOM[:2], *CUSTOM[4:]], "head-dim": [*CUSTOM[:4], *CUSTOM[6:]],
    "cpu-bandwidth-gbps": ["--cpu-offload-gib", "10"], "offload-mode": ["--cpu-offload-gib", "10"],
    "disk-bandwidth-gbps": ["--cpu-offload-gib", "10", "--disk-offload-gib", "100"],
    "disk-offload-gib": ["--cpu-offload-gib", "10"], "disk-capacity-tokens": ["--cpu-capacity-tokens", "100000"],
    "disk-capacity-blocks": ["--cpu-capacity-blocks", "10000"],
    "cache-threshold": ["--instances", "2", "--router", "cache-aware"],
    "balance-abs": ["--instances", "2", "--router", "cache-aware"],
    "balance-rel": ["--instances", "2", "--router", "cache-aware"],
}
FUZZ_PREFIX = {  # each command's argv before the fuzzed flag (which comes last: the last one wins)
    "calc": ["calc", "--json"], "simulate": ["simulate", *SHORT, "--capacity-tokens", "20000", "--json"],
    "compare": ["compare", *SHORT, "--arrival-rate", "0.2", "--json"],
    "plan": ["plan", "--target-hit-rate", "0.3", "--json"], "sensitivity": ["sensitivity", "--json"],
    "replay": ["replay", "{trace}", "--trace-block-size", "16", "--json"],
    "export-trace": ["export-trace", "{trace}", "--trace-block-size", "16", "-o", "{out}", "--json"],
}
OUTPUT_FLAGS = {"figure", "output", "out", "conversations", "requests-out"}  # paths: tested above


def _fuzz_flags():
    from kvsim.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    calc = {s for a in sub["calc"]._actions for s in a.option_strings}
    cases = []
    for command in FUZZ_PREFIX:
        for action in sub[command]._actions:
            longs = [s[2:] for s in action.option_strings if s.startswith("--")]
            if not longs or action.nargs == 0 or longs[0] in OUTPUT_FLAGS | {"help"}:
                continue
            if command != "calc" and f"--{longs[0]}" in calc:
                continue
            cases.append((command, longs[0]))
    return cases


FUZZ_CASES = [(c, f, k) for c, f in _fuzz_flags() for k in FUZZ_VALUES]


@pytest.mark.parametrize("command,flag,kind", FUZZ_CASES, ids=[f"{c} --{f}={k}" for c, f, k in FUZZ_CASES])
def test_fuzz_every_flag(capsys, tmp_path, command, flag, kind):
    path = tmp_path / "t.jsonl"  # a trace that is right for --trace-block-size 16
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": 40, "output_length": 4,
                                        "hash_ids": [3 * t, 3 * t + 1, 3 * t + 2]}) + "\n" for t in range(20)))
    prefix = [a.format(trace=path, out=tmp_path / "o.csv") for a in FUZZ_PREFIX[command]]
    argv = [prefix[0], *FUZZ_CONTEXT.get(flag, []), *prefix[1:]]
    if command == "replay" and flag not in ("capacity-blocks", "capacity-tokens"):
        argv += ["--capacity-blocks", "4"]
    code, out, err, caught = _run(capsys, [*argv, f"--{flag}={FUZZ_VALUES[kind]}"])
    assert "Traceback" not in err and not caught, (err, [str(w.message) for w in caught])
    if code == 2:
        assert out == "" and err.count("\n") == 1 and err.startswith("kvsim: error: "), err
    else:
        assert kind not in ALWAYS_REFUSED and code == 0 and err == "", (code, err)
        assert "NaN" not in out and "Infinity" not in out, out


@pytest.mark.parametrize("argv,needle", [
    (["serve", "--port=-1"], "port must be in 0..65535"),
    (["serve", "--port=99999999999999999999"], "port must be in 0..65535"),
    (["serve", "--port=nan"], "argument --port: invalid int value"),
    (["serve", "--port="], "argument --port: invalid int value"),
    (["serve", "--host= ", "--port=0"], "host must name an address"),
    (["serve", "--allow-host=", "--port=0"], "allow-host: '' is not a host name"),
    (["serve", "--allow-host=a b", "--port=0"], "allow-host"),
])
def test_fuzz_serve(capsys, argv, needle):
    code, out, err, caught = _run(capsys, argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and not caught, err
