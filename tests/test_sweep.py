"""The scenario layer (one Scenario from flags, page fields and grid points) and ``kvsim sweep``."""

import csv
import json

import pytest

from kvsim import page
from kvsim.cli import sweep
from kvsim.cli.args import scenario_from_values
from kvsim.cli.main import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_grid(path, text):
    path.write_text(text)
    return str(path)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- one scenario, three doors


@pytest.mark.parametrize("values", [
    {"arrival-rate": 2, "gpu": "h100-80gb", "think-time": 10},
    {"preset": "qwen3-32b", "capacity-tokens": 120000, "turns-dist": "geometric", "turns": 8, "input-cv": 0.5},
    {"instances": 3, "router": "random", "system-prompt-tokens": 1000, "kv-dtype": "fp8", "policy": "fifo"},
])
def test_flags_page_fields_and_grid_point_give_one_scenario(tmp_path, values):
    argv = [x for k, v in values.items() for x in (f"--{k}", str(v))]
    from_flags = scenario_from_values(vars(sweep.command_parser("calc").parse_args(argv)))
    from_page = page._scenario({k: str(v) for k, v in values.items()})[1]
    first, *rest = values.items()
    base = "".join(f'{k} = {json.dumps(v)}\n' for k, v in rest)
    grid = sweep.load_grid(write_grid(tmp_path / "g.toml", f'command = "calc"\n[base]\n{base}[grid]\n'
                                                               f'{first[0]} = [{json.dumps(first[1])}]\n'))
    from_grid = scenario_from_values(vars(sweep.command_parser("calc").parse_args(grid.argv(grid.points[0]))))
    assert from_flags == from_page == from_grid
    assert from_flags.workload.arrival_rate == values.get("arrival-rate", 1.0)


# ----------------------------------------------------------------------------- kvsim sweep

CALC_GRID = """command = "calc"
[base]
gpu = "h100-80gb"
method = "all"
[grid]
arrival-rate = [0.5, 2]
think-time = [10, 60.0]
"""


def test_sweep_points_equal_kvsim_calc(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.toml", CALC_GRID)
    code, out, err = run(capsys, "sweep", grid, "--out", tmp_path / "out", "--workers", 1, "--no-progress")
    assert code == 0, err
    assert "4 points (arrival-rate x think-time): 4 run, 0 already done; 12 rows" in out
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [(r["arrival-rate"], r["think-time"], r["method"]) for r in rows[:4]] == [
        ("0.5", "10", "seed"), ("0.5", "10", "lru"), ("0.5", "10", "fifo"), ("0.5", "60.0", "seed")]
    for rate in ("0.5", "2"):
        for think in ("10", "60.0"):
            code, out, _ = run(capsys, "calc", "--json", "--gpu", "h100-80gb", "--arrival-rate", rate,
                               "--think-time", think)
            methods = json.loads(out)["methods"]
            got = {r["method"]: r for r in rows if (r["arrival-rate"], r["think-time"]) == (rate, think)}
            assert set(got) == set(methods)
            for name, m in methods.items():
                for metric in ("token_hit_rate", "request_hit_rate"):
                    cell = got[name][metric]
                    assert (cell == "" and m[metric] is None) or float(cell) == m[metric]  # exact: repr round trip


def test_interrupted_sweep_resumes_and_rerun_skips(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.toml", CALC_GRID)
    out_dir = tmp_path / "out"
    assert run(capsys, "sweep", grid, "--out", out_dir, "--workers", 1, "--no-progress")[0] == 0
    results = out_dir / "results.csv"
    complete = results.read_text()
    # an interruption after two points: only their rows were written
    lines = complete.splitlines(keepends=True)
    results.write_text("".join(lines[:1 + 6]))
    code, out, _ = run(capsys, "sweep", grid, "--out", out_dir, "--workers", 1, "--no-progress")
    assert code == 0 and "2 run, 2 already done" in out
    assert results.read_text() == complete
    code, out, _ = run(capsys, "sweep", grid, "--out", out_dir, "--no-progress")
    assert code == 0 and "0 run, 4 already done" in out and results.read_text() == complete
    # the same folder with another base is refused, not mixed in
    other = write_grid(tmp_path / "other.toml", CALC_GRID.replace("h100-80gb", "a100-80gb"))
    code, _, err = run(capsys, "sweep", other, "--out", out_dir)
    assert code == 2 and "another command or base" in err and results.read_text() == complete


def test_simulate_sweep_has_confidence_intervals(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.toml", """command = "simulate"
[base]
capacity-tokens = 20000
duration = 700
warmup = 200
replications = 2
[grid]
policy = ["lru", "fifo"]
""")
    code, out, err = run(capsys, "sweep", grid, "--out", tmp_path / "out", "--workers", 2, "--no-progress")
    assert code == 0, err
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [r["method"] for r in rows] == ["lru", "fifo"]
    code, out, _ = run(capsys, "simulate", "--json", "--capacity-tokens", 20000, "--duration", 700, "--warmup", 200,
                       "--replications", 2, "--policy", "fifo")
    sim = json.loads(out)
    fifo = rows[1]
    assert float(fifo["token_hit_rate_mean"]) == sim["token_hit_rate"]["mean"]
    assert [float(fifo["token_hit_rate_ci_low"]), float(fifo["token_hit_rate_ci_high"])] == sim["token_hit_rate"]["ci95"]
    assert int(fifo["requests_measured"]) == sim["requests_measured"]


def test_plan_sweep(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid.toml", 'command = "plan"\n[grid]\ntarget-hit-rate = [0.4, 0.6]\n')
    assert run(capsys, "sweep", grid, "--out", tmp_path / "out", "--workers", 1, "--no-progress")[0] == 0
    rows = read_rows(tmp_path / "out" / "results.csv")
    code, out, _ = run(capsys, "plan", "--json", "--target-hit-rate", "0.6")
    plan = json.loads(out)["plan"]
    assert int(rows[1]["capacity_blocks"]) == plan["capacity_blocks"] and float(rows[1]["token_hit_rate"]) >= 0.6
    assert int(rows[0]["capacity_blocks"]) < int(rows[1]["capacity_blocks"])


@pytest.mark.parametrize("text,needle", [
    ('command = "calc"\n[grid]\narival-rate = [1, 2]\n', "grid.arival-rate: unknown key"),
    ('command = "calc"\n[base]\nfrobnicate = 1\n[grid]\nturns = [2]\n', "base.frobnicate: unknown key"),
    ('command = "calc"\n[grid]\narrival-rate = []\n', "grid.arrival-rate: the list is empty"),
    ('command = "calc"\n[grid]\narrival-rate = 2\n', "grid.arrival-rate must be a list"),
    ('command = "calc"\n[grid]\narrival-rate = ["fast"]\n', "arrival-rate"),
    ('command = "calc"\n[grid]\narrival-rate = [1, -1]\n', "arrival-rate=-1: arrival-rate must be"),
    ('command = "calc"\n[grid]\nmethod = ["lru", "mru"]\n', "--method"),
    ('command = "compare"\n[grid]\nturns = [2]\n', "command must be one of calc, simulate, replay, plan"),
    ('command = "calc"\n', "grid: give at least one key"),
    ('command = "calc"\n[grid\n', "not a valid TOML file"),
])
def test_bad_grid_is_one_line_before_any_work(tmp_path, capsys, text, needle):
    grid = write_grid(tmp_path / "grid.toml", text)
    code, out, err = run(capsys, "sweep", grid, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_replay_sweep_equals_kvsim_replay(tmp_path, capsys):
    import random

    rng = random.Random(3)
    trace = tmp_path / "trace.jsonl"
    lines = []
    for t in range(300):  # conversations that grow their hash chains, some repeating earlier prefixes
        chain = [rng.randrange(40) * 100 + j for j in range(rng.randrange(1, 4))]
        lines.append(json.dumps({"timestamp": t * 10, "input_length": 16 * len(chain), "output_length": 4,
                                 "hash_ids": chain}))
    trace.write_text("\n".join(lines) + "\n")
    grid = write_grid(tmp_path / "grid.toml", f'command = "replay"\n[base]\ntraces = ["{trace}"]\n'
                                               f'trace-block-size = 16\n[grid]\ncapacity-blocks = [10, 40]\n'
                                               'policy = ["lru", "fifo"]\n')
    assert run(capsys, "sweep", grid, "--out", tmp_path / "out", "--workers", 1, "--no-progress")[0] == 0
    rows = read_rows(tmp_path / "out" / "results.csv")
    assert [(r["capacity-blocks"], r["method"]) for r in rows] == [("10", "lru"), ("10", "fifo"), ("40", "lru"),
                                                                    ("40", "fifo")]
    code, out, _ = run(capsys, "replay", trace, "--trace-block-size", 16, "--capacity-blocks", 40, "--policy", "fifo",
                       "--json")
    result = json.loads(out)["results"][0]
    assert float(rows[3]["token_hit_rate"]) == result["token_hit_rate"] > 0
    assert float(rows[3]["block_hit_rate"]) == result["block_hit_rate"]


def test_sweep_on_a_dask_cluster(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")  # the optional dask extra
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        grid = write_grid(tmp_path / "grid.toml", CALC_GRID)
        code, out, err = run(capsys, "sweep", grid, "--out", tmp_path / "dask", "--dask", cluster.scheduler_address,
                             "--no-progress")
    assert code == 0, err
    assert run(capsys, "sweep", grid, "--out", tmp_path / "local", "--workers", 1, "--no-progress")[0] == 0
    assert (tmp_path / "dask" / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()


def test_atomic_writes_get_the_mode_of_a_plain_file(tmp_path):
    import os
    import stat

    from kvsim.batch import write_atomic

    write_atomic(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)
