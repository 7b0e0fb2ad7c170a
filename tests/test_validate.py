"""One grid point of experiments/validate.py, end to end, small."""

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_point_models_match_simulation():
    validate = load("validate")
    point = dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp", think_cv=1.0,
                 system_prompt_tokens=0, capacity_blocks=9778, target_fraction=0.5)
    rows = {r["method"]: r for r in validate.run_point(point, replications=3, requests_per_replication=8000, seed=0)}
    assert set(rows) == {"lru", "fifo", "seed"}
    for method in ("lru", "fifo"):
        r = rows[method]
        assert r["metric"] == "token_hit_rate" and r["ci_lo"] < r["simulated"] < r["ci_hi"]
        assert r["abs_err"] < 0.03, r  # the models are accurate here (README: validation results)
    assert rows["seed"]["metric"] == "request_hit_rate"
    assert rows["seed"]["abs_err"] > 0.05  # the seed model is not


def test_summary_lines_and_resume(tmp_path, monkeypatch):
    validate = load("validate")
    points = [dict(arrival_rate=1.0, turns_dist="fixed", turns=3, think_time=10.0, think_dist="exp", think_cv=1.0,
                   system_prompt_tokens=0, capacity_blocks=c, target_fraction=0.5) for c in (300, 900)]
    monkeypatch.setattr(validate, "grid", lambda quick: points)
    calls = []
    real = validate.run_point
    monkeypatch.setattr(validate, "run_point", lambda *a: calls.append(a) or real(*a))
    argv = ["--quick", "--out", str(tmp_path), "--workers", "1", "--requests", "1500", "--no-progress", "--no-tiered",
            "--no-loaded"]
    # a finished point from an earlier, interrupted run is not redone
    first = real(points[0], 2, 1500, 0)
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / f"{validate.point_id(points[0])}.json").write_text(json.dumps(first))
    monkeypatch.setattr(validate, "executor", lambda workers, dask: ThreadPoolExecutor(1))  # run_point patched here
    assert validate.main(argv) == 0
    assert len(calls) == 1 and calls[0][0] == points[1]
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    for method, line in zip(("lru", "fifo", "seed"), lines):
        assert line.startswith(f"{method}: mean_abs_err=") and line.endswith(" n=2")
    assert (tmp_path / "validation.csv").read_text().count("\n") == 7


def test_tiered_section(tmp_path, monkeypatch):
    validate = load("validate")
    point = dict(arrival_rate=1.0, turns_dist="fixed", turns=5, think_time=30.0, think_dist="exp", think_cv=1.0,
                 system_prompt_tokens=0, capacity_blocks=9778, cpu_blocks=19556, cpu_ratio=2, tier_mode="exclusive",
                 target_fraction=0.45)
    monkeypatch.setattr(validate, "tiered_grid", lambda quick: [point])
    monkeypatch.setattr(validate, "executor", lambda workers, dask: ThreadPoolExecutor(1))
    argv = ["--quick", "--tiered-only", "--out", str(tmp_path), "--workers", "1", "--requests", "3000",
            "--no-progress"]
    assert validate.main(argv) == 0
    assert not (tmp_path / "validation.csv").exists()  # --tiered-only: no single-tier grid
    assert (tmp_path / "points" / f"tiered-{validate.point_id(point)}.json").exists()
    rows = {(r["method"], r["tier"]): r for r in validate.json.loads(
        (tmp_path / "points" / f"tiered-{validate.point_id(point)}.json").read_text())}
    assert set(rows) == {(m, t) for m in ("lru", "fifo") for t in ("gpu", "cpu", "total")}
    for method in ("lru", "fifo"):
        gpu, cpu, total = (rows[method, t] for t in ("gpu", "cpu", "total"))
        assert abs(gpu["simulated"] + cpu["simulated"] - total["simulated"]) < 1e-9
        assert cpu["simulated"] > 0.1  # the CPU tier adds hits here
    assert rows["lru", "total"]["abs_err"] < 0.03, rows["lru", "total"]  # exclusive LRU: exact up to the LRU model
    assert (tmp_path / "tiered.csv").read_text().count("\n") == 7
    lines = (tmp_path / "tiered_summary.txt").read_text().splitlines()
    assert lines[0].startswith("tiered lru exclusive gpu: mean_abs_err=") and lines[0].endswith(" n=1")


def test_loaded_section(tmp_path, monkeypatch):
    """The engine under load against the models under load, end to end on one short point."""
    validate = load("validate")
    point = {**validate.loaded_grid(quick=True)[0], "rate_fraction": 0.5}
    monkeypatch.setattr(validate, "loaded_grid", lambda quick: [point])
    monkeypatch.setattr(validate, "LOADED_QUICK_DURATION_S", 600.0)
    monkeypatch.setattr(validate, "executor", lambda workers, dask: ThreadPoolExecutor(1))
    argv = ["--quick", "--loaded-only", "--out", str(tmp_path), "--workers", "1", "--no-progress"]
    assert validate.main(argv) == 0
    assert not (tmp_path / "validation.csv").exists() and not (tmp_path / "tiered.csv").exists()
    rows = {r["metric"]: r for r in validate.json.loads(
        (tmp_path / "points" / f"loaded-{validate.point_id(point)}.json").read_text())}
    assert set(rows) == {"token_hit_rate", "kv_usage", "tpot_mean", "ttft_mean"}
    r = rows["token_hit_rate"]
    # half the sustainable rate: the instance keeps up, and the models are close on hits and TPOT
    assert 0 < r["arrival_rate"] < r["sustainable_rate"] and r["model_saturated"] is None
    assert r["err"] < 0.05, r
    assert rows["tpot_mean"]["relative"] and rows["tpot_mean"]["err"] < 0.2, rows["tpot_mean"]
    assert 0 < rows["kv_usage"]["simulated"] < 1
    lines = (tmp_path / "loaded_summary.txt").read_text().splitlines()
    assert lines[0].startswith("loaded token_hit_rate: mean_abs_err=") and lines[0].endswith(" n=1")
    assert lines[3].startswith("loaded ttft_mean: mean_rel_err=")
