import json
import subprocess
import sys

import pytest

from kvsim.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_calc_json_shape(capsys):
    code, out, err = run(capsys, "calc", "--preset", "qwen3-32b", "--gpu", "h100-80gb", "--gpus", "2", "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    assert set(record) == {"inputs", "memory", "methods"}
    assert record["memory"]["bytes_per_token"] == 262144
    assert record["memory"]["capacity_blocks"] == record["memory"]["capacity_tokens"] // 16
    seed = record["methods"]["seed"]
    for key in ("hit_rate", "cache_utilization", "active_conversations", "avg_cached_conversations",
                "max_cached_tokens", "memory_per_token_bytes", "model_memory_gb", "cache_memory_gb",
                "derived_qps", "tokens_per_second", "cache_hits_per_second", "request_hit_rate"):
        assert key in seed
    assert seed["model_memory_gb"] == pytest.approx(64 * 1.2)


def test_calc_original_example_through_the_cli(capsys):
    code, out, _ = run(capsys, "calc", "--layers", "40", "--kv-heads", "8", "--head-dim", "128",
                       "--model-size-gb", "48", "--kv-dtype", "fp16", "--gpu-memory-gb", "80",
                       "--arrival-rate", "2", "--turns", "5", "--think-time", "30", "--tokens-per-turn", "1000",
                       "--json")
    seed = json.loads(out)["methods"]["seed"]
    assert seed["max_cached_tokens"] == 146800
    assert seed["hit_rate"] == pytest.approx(0.8 * 146800 / 5000 / 300)


def test_calc_table(capsys):
    code, out, _ = run(capsys, "calc", "--capacity-tokens", "100000")
    assert code == 0
    assert "capacity  100,000 tokens = 6,250 blocks" in out
    assert "seed" in out


def test_presets(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "deepseek-v3" in out and "mi300x-192gb" in out
    code, out, _ = run(capsys, "presets", "--json")
    assert json.loads(out)["models"]["llama-3.1-8b"]["bytes_per_token_bf16"] == 131072


@pytest.mark.parametrize("argv,needle", [
    (["calc", "--arrival-rate", "0"], "arrival-rate"),
    (["calc", "--arrival-rate", "-2"], "arrival-rate"),
    (["calc", "--think-time", "abc"], "--think-time"),
    (["calc", "--turns", "0"], "turns"),
    (["calc", "--input-tokens", "-5"], "input-tokens"),
    (["calc", "--preset", "gpt-5"], "preset must be one of"),
    (["calc", "--gpu", "v100"], "gpu must be one of"),
    (["calc", "--kv-dtype", "fp4"], "--kv-dtype"),
    (["calc", "--preset", "llama-3.1-70b", "--gpu", "a100-40gb"], "does not hold the weights"),
    (["calc", "--capacity-tokens", "-1"], "capacity-tokens"),
    (["calc", "--capacity-tokens", "10", "--gpu", "h100-80gb"], "not both"),
    (["calc", "--layers", "32"], "together"),
    (["calc", "--block-size", "0", "--capacity-tokens", "100"], "block-size"),
    (["calc", "--think-dist", "weibull"], "--think-dist"),
    (["calc", "--think-dist", "gamma", "--think-cv", "0"], "think-cv"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_console_script_exit_status():
    proc = subprocess.run([sys.executable, "-m", "kvsim.cli", "calc", "--gpus", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("kvsim: error: gpus") and "Traceback" not in proc.stderr


def test_plan_inverts_the_model(capsys):
    from analytic.specs import Workload
    from analytic.lru import lru_model

    code, out, _ = run(capsys, "plan", "--target-hit-rate", "0.6", "--json")
    assert code == 0
    plan = json.loads(out)["plan"]
    blocks = plan["capacity_blocks"]
    assert lru_model(Workload(), blocks).token_hit_rate >= 0.6 > lru_model(Workload(), blocks - 1).token_hit_rate
    assert plan["gpus_needed"] >= 1 and plan["gpu_memory_gib_total"] > plan["kv_cache_gib"]
    assert "recommended_memory_gb" in plan["seed_recommendation"]


def test_plan_out_of_reach(capsys):
    code, out, err = run(capsys, "plan", "--target-hit-rate", "0.95")
    assert code == 2 and "out of reach" in err and "ceiling" in err


def test_calc_all_methods(capsys):
    code, out, _ = run(capsys, "calc", "--capacity-tokens", "150000", "--json")
    methods = json.loads(out)["methods"]
    assert set(methods) == {"seed", "lru", "fifo"}
    for name in ("lru", "fifo"):
        assert 0 < methods[name]["token_hit_rate"] < 1 and methods[name]["characteristic_time"] > 0


def test_simulate_policy_does_not_offer_belady(capsys):
    # belady needs the future: replay only (kvsim.replay.OFFLINE_POLICIES), not in kvsim.policies.POLICIES
    code, out, err = run(capsys, "simulate", "--policy", "belady")
    assert code == 2 and out == ""
    assert "invalid choice: 'belady'" in err and err.count("\n") == 1


def test_replay_policy_offers_belady_and_every_registered_policy(capsys):
    from kvsim.cli.replay import configure_replay_parser
    from kvsim.cli.parser import Parser
    from kvsim.policies import POLICIES

    p = Parser(prog="kvsim")
    configure_replay_parser(p)
    assert p.parse_args(["t.jsonl", "--policy", "all"]).policy == [*POLICIES, "belady"]
    assert p.parse_args(["t.jsonl", "--policy", "lru,belady"]).policy == ["lru", "belady"]
