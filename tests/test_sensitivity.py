"""Sensitivity: the +/-50% tornado rows and local elasticities (analytic.sensitivity), and
``kvsim sensitivity`` (kvsim.cli.sensitivity)."""

import argparse
import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest

from analytic import presets
from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.lru import lru_model
from analytic.sensitivity import PARAMETERS, Scenario, sensitivity
from analytic.sizing import capacity_from_memory
from analytic.specs import Hardware, Workload

LLAMA8 = presets.model("llama-3.1-8b")
A100 = Hardware(40.0, 1, gpu="a100-40gb")
BASE = Scenario(LLAMA8, Workload(), A100)


def rows_by_key(result):
    return {r["parameter"]: r for r in result["rows"]}


@pytest.fixture(scope="module")
def base_result():
    return sensitivity(BASE)


def test_rows_cover_the_workload_and_memory_and_are_sorted_by_swing(base_result):
    rows = rows_by_key(base_result)
    assert set(rows) == {"arrival-rate", "turns", "think-time", "input-tokens", "output-tokens",
                         "system-prompt-tokens", "gpu-memory-gb", "capacity-tokens"}
    swings = [r["swing"] for r in base_result["rows"]]
    assert swings == sorted(swings, reverse=True)
    assert base_result["method"] == "lru" and base_result["step"] == 0.5


def test_base_is_the_lru_model_at_the_scenario(base_result):
    blocks = capacity_from_memory(LLAMA8, A100).capacity_blocks
    assert base_result["base"]["token_hit_rate"] == pytest.approx(lru_model(Workload(), blocks).token_hit_rate)


def test_each_end_is_the_model_with_that_one_value_moved(base_result):
    rows = rows_by_key(base_result)
    blocks = capacity_from_memory(LLAMA8, A100).capacity_blocks
    r = rows["arrival-rate"]
    assert (r["low"], r["high"]) == (0.5, 1.5)
    assert r["token_hit_rate_low"] == pytest.approx(lru_model(Workload(arrival_rate=0.5), blocks).token_hit_rate)
    assert r["token_hit_rate_high"] == pytest.approx(lru_model(Workload(arrival_rate=1.5), blocks).token_hit_rate)
    # the capacity moves by itself; the workload is held
    r = rows["capacity-tokens"]
    tokens = capacity_from_memory(LLAMA8, A100).capacity_tokens
    assert r["base"] == tokens
    assert r["token_hit_rate_high"] == pytest.approx(
        lru_model(Workload(), int(round(tokens * 1.5)) // 16).token_hit_rate)
    # GPU memory moves the capacity (weights and reserve held)
    r = rows["gpu-memory-gb"]
    blocks_high = capacity_from_memory(LLAMA8, replace(A100, gpu_memory_gib=60.0)).capacity_blocks
    assert r["token_hit_rate_high"] == pytest.approx(lru_model(Workload(), blocks_high).token_hit_rate)


def test_directions_and_elasticity_signs(base_result):
    rows = rows_by_key(base_result)
    for key in ("arrival-rate", "think-time", "turns", "input-tokens", "output-tokens"):
        assert rows[key]["token_hit_rate_high"] < rows[key]["token_hit_rate_base"] < rows[key]["token_hit_rate_low"]
        assert rows[key]["elasticity"] < 0
    for key in ("capacity-tokens", "gpu-memory-gb"):
        assert rows[key]["token_hit_rate_low"] < rows[key]["token_hit_rate_base"] < rows[key]["token_hit_rate_high"]
        assert rows[key]["elasticity"] > 0


def test_rate_and_think_time_enter_the_exponential_lru_model_as_their_product(base_result):
    # C = rate * E[G] * (K1 (1 - e^-tau) + K2 tau) with tau = T / E[G]: only rate x E[G] matters.
    rows = rows_by_key(base_result)
    a, t = rows["arrival-rate"], rows["think-time"]
    assert a["token_hit_rate_low"] == pytest.approx(t["token_hit_rate_low"], rel=1e-9)
    assert a["token_hit_rate_high"] == pytest.approx(t["token_hit_rate_high"], rel=1e-9)
    assert a["elasticity"] == pytest.approx(t["elasticity"], rel=1e-6)


def test_elasticity_is_the_local_log_derivative(base_result):
    r = rows_by_key(base_result)["arrival-rate"]
    blocks = capacity_from_memory(LLAMA8, A100).capacity_blocks
    h = 1e-3
    lo = lru_model(Workload(arrival_rate=1 - h), blocks).token_hit_rate
    hi = lru_model(Workload(arrival_rate=1 + h), blocks).token_hit_rate
    numeric = (math.log(hi) - math.log(lo)) / (math.log(1 + h) - math.log(1 - h))
    assert r["elasticity"] == pytest.approx(numeric, abs=0.02)


def test_integer_parameters_are_rounded_and_zero_bases_say_so(base_result):
    rows = rows_by_key(base_result)
    assert (rows["turns"]["low"], rows["turns"]["high"]) == (3, 8)  # 2.5 -> 3, 7.5 -> 8 (half up)
    assert rows["turns"]["elasticity"] is not None  # +/-1 turn: a 5% step rounds to the base
    sp = rows["system-prompt-tokens"]
    assert sp["base"] == 0 and sp["swing"] == 0 and sp["elasticity"] is None and "is 0" in sp["note"]


def test_distribution_parameters_appear_when_they_apply():
    w = Workload(turns=TurnCount("geometric", 4), think_time=ThinkTime("gamma", 30.0, 2.0),
                 input_tokens=TokenCount("lognormal", 200, 0.5, name="input-tokens"), system_prompt_tokens=512)
    result = sensitivity(Scenario(LLAMA8, w, capacity_tokens=100_000))
    rows = rows_by_key(result)
    assert {"think-cv", "input-cv"} <= set(rows) and "output-cv" not in rows and "gpu-memory-gb" not in rows
    assert rows["turns"]["low"] == 2.0  # geometric: not rounded
    assert rows["system-prompt-tokens"]["elasticity"] is not None


def test_a_value_the_specs_reject_leaves_that_end_empty_with_the_reason():
    s = Scenario(presets.model("llama-3.1-70b"), Workload(), Hardware(80.0, 2, gpu="h100-80gb"))
    row = rows_by_key(sensitivity(s))["gpu-memory-gb"]
    assert row["token_hit_rate_low"] is None and row["delta_low"] is None
    assert row["token_hit_rate_high"] is not None
    assert "low: gpu-memory-gb" in row["note"]
    assert row["swing"] == pytest.approx(row["token_hit_rate_high"] - row["token_hit_rate_base"])


def test_fifo_method_and_a_custom_evaluate_are_used():
    calls = []

    def evaluate(workload, blocks, bs, method):
        calls.append(method)
        return lru_model(workload, blocks, bs) if method == "lru" else lru_model(workload, blocks // 2, bs)

    result = sensitivity(BASE, method="fifo", evaluate=evaluate)
    assert set(calls) == {"fifo"} and len(calls) > 10
    assert result["method"] == "fifo"


@pytest.mark.parametrize("kwargs,match", [
    ({"step": 0}, "step"), ({"step": 1.5}, "step"), ({"eps": 0}, "eps"), ({"method": "lfu"}, "method"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sensitivity(BASE, **kwargs)


def test_scenario_needs_exactly_one_memory_and_a_known_policy():
    with pytest.raises(ValueError, match="exactly one"):
        Scenario(LLAMA8, Workload())
    with pytest.raises(ValueError, match="exactly one"):
        Scenario(LLAMA8, Workload(), A100, capacity_tokens=1000)
    with pytest.raises(ValueError, match="policy"):
        Scenario(LLAMA8, Workload(), A100, policy="lfu")
    with pytest.raises(ValueError, match="kv-dtype"):
        Scenario(LLAMA8, Workload(), A100, kv_dtype="fp4")
    assert Scenario(LLAMA8, Workload(), capacity_gib=10.0).capacity().kv_cache_gib == pytest.approx(10.0, rel=1e-4)


def test_parameters_have_unique_flags():
    keys = [p.key for p in PARAMETERS]
    assert len(keys) == len(set(keys))


def test_analytic_never_imports_kvsim():
    code = ("import sys, analytic.sensitivity, analytic.advice; "
            "bad = [m for m in sys.modules if m == 'kvsim' or m.startswith('kvsim.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- kvsim sensitivity


def sensitivity_parser():
    from kvsim.cli import sensitivity as command

    p = argparse.ArgumentParser()
    command.configure(p)  # sets func=command.cmd
    return p


def test_cli_prints_the_table_and_writes_the_figure_atomically(tmp_path, capsys):
    figure = tmp_path / "tornado.png"
    a = sensitivity_parser().parse_args(["--figure", str(figure)])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "token hit rate 0.4933 (LRU model)" in out
    assert "gpu-memory-gb" in out and "elasticity" in out and f"figure: {figure}" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in tmp_path.iterdir()] == ["tornado.png"]  # no temporary file left


def test_cli_json_matches_the_module(capsys):
    a = sensitivity_parser().parse_args(["--json", "--arrival-rate", "2", "--gpu", "h100-80gb"])
    assert a.func(a) == 0
    record = json.loads(capsys.readouterr().out)
    direct = sensitivity(Scenario(LLAMA8, Workload(arrival_rate=2.0), Hardware(80.0, 1, gpu="h100-80gb")))
    assert record["rows"] == json.loads(json.dumps(direct["rows"]))
    assert record["memory"]["capacity_tokens"] > 0


def test_cli_bad_input_names_the_flag():
    from kvsim.cli.sensitivity import cmd as cmd_sensitivity

    a = sensitivity_parser().parse_args(["--arrival-rate", "0"])
    with pytest.raises(ValueError, match="^arrival-rate"):
        cmd_sensitivity(a)
    a = sensitivity_parser().parse_args(["--step", "1.5"])
    with pytest.raises(ValueError, match="^step"):
        cmd_sensitivity(a)


def test_kvsim_sensitivity_when_wired(tmp_path, capsys):
    from kvsim.cli.main import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "sensitivity" not in sub.choices:
        pytest.skip("kvsim sensitivity is not wired into kvsim/cli.py yet")
    assert main(["sensitivity", "--figure", str(tmp_path / "t.png")]) == 0
    assert "elasticity" in capsys.readouterr().out
    assert main(["sensitivity", "--arrival-rate", "-1"]) == 2
    assert "arrival-rate" in capsys.readouterr().err
