"""kvsim calc/simulate --conversations: template conversations end to end through the CLI."""

import json

import pytest

from kvsim.cli.main import main


def conversation(path, times, block_size=16):
    # one growing context: request k lists blocks 1..2k (every block full), 8 output tokens
    requests = [{"t": t, "type": "n", "in": 32 * (k + 1), "out": 8, "hash_ids": list(range(1, 2 * (k + 1) + 1))}
                for k, t in enumerate(times)]
    path.write_text(json.dumps({"id": path.stem, "block_size": block_size, "hash_id_scope": "local",
                                "requests": requests}))


@pytest.fixture
def folder(tmp_path):
    conversation(tmp_path / "a.json", [0, 5, 10, 15])
    conversation(tmp_path / "b.json", [0, 100, 200])
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_calc_with_templates(capsys, folder):
    code, out, _ = run(capsys, "calc", "--conversations", str(folder), "--arrival-rate", "0.01",
                       "--capacity-tokens", "100000", "--json")
    assert code == 0
    methods = json.loads(out)["methods"]
    # ideal: a hits 2+4+6 blocks of 32+64+96+128 prompt tokens, b hits 2+4 of 32+64+96
    ceiling = (12 + 6) * 16 / (320 + 192)
    assert methods["ceiling"]["token_hit_rate"] == pytest.approx(ceiling)
    assert methods["lru"]["token_hit_rate"] == pytest.approx(ceiling)  # the cache holds everything
    code, out, _ = run(capsys, "calc", "--conversations", str(folder), "--arrival-rate", "10",
                       "--capacity-tokens", "400", "--json")
    small = json.loads(out)["methods"]["lru"]
    assert small["token_hit_rate"] < ceiling


def test_simulate_with_templates_matches_the_ideal_when_alone(capsys, folder):
    code, out, _ = run(capsys, "simulate", "--conversations", str(folder), "--arrival-rate", "0.001",
                       "--capacity-tokens", "100000", "--duration", "20000", "--warmup", "1000",
                       "--replications", "1", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["block_size"] == 16 and record["requests_measured"] > 0
    # conversations rarely overlap and the cache holds everything: each gets its own reuse
    per_turn = record["per_turn_hit"]
    assert per_turn["1"] == 0 and all(per_turn[k] == 1 for k in ("2", "3"))


def test_templates_errors(capsys, folder, tmp_path):
    code, _, err = run(capsys, "calc", "--conversations", str(tmp_path / "none"))
    assert code == 2 and "none" in err
    code, _, err = run(capsys, "calc", "--conversations", str(folder), "--method", "seed")
    assert code == 2 and "--method lru, fifo or all" in err
    code, _, err = run(capsys, "plan", "--conversations", str(folder), "--target-hit-rate", "0.5")
    assert code == 2 and "synthetic" in err


def test_simulate_templates_on_a_fleet(capsys, folder):
    """Template conversations go through a fleet too: a fleet of one is the single instance,
    and with affinity and ample caches every conversation still finds its own context."""
    base = ["simulate", "--conversations", str(folder), "--arrival-rate", "0.05", "--capacity-tokens", "100000",
            "--duration", "20000", "--warmup", "1000", "--replications", "1", "--json"]
    _, single, _ = run(capsys, *base)
    code, one, _ = run(capsys, *base, "--instances", "1", "--router", "random")
    assert code == 0 and json.loads(one)["token_hit_rate"] == json.loads(single)["token_hit_rate"]
    _, affinity, _ = run(capsys, *base, "--instances", "3", "--router", "affinity", "--step-time",
                         "linear:0.005,4e-5,1e-8")
    record = json.loads(affinity)
    assert record["token_hit_rate"]["mean"] == pytest.approx(json.loads(single)["token_hit_rate"]["mean"], abs=0.02)
    assert record["serving"]["ttft_s"]["p50"] > 0


def test_calc_fleet_refuses_templates(capsys, folder):
    code, _, err = run(capsys, "calc", "--conversations", str(folder), "--instances", "2", "--capacity-tokens", "4000")
    assert code == 2 and "--instances/--router: the fleet models work on synthetic workloads only" in err
