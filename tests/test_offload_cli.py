"""CPU/disk offload through the commands: calc, simulate (one instance and fleets) and replay."""

import gzip
import json

import pytest

from analytic.offload import Tiers
from kvsim.cli.main import main

SMALL = ("--capacity-tokens", "40000", "--duration", "1500", "--warmup", "600", "--replications", "2")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_calc_with_a_cpu_tier_gives_the_tiers_and_their_sum(capsys):
    code, out, err = run(capsys, "calc", "--cpu-offload-gib", "64", "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    assert record["inputs"]["offload"]["cpu"]["capacity_blocks"] == 64 * 2**30 // 131072 // 16
    for name in ("lru", "fifo"):
        m = record["methods"][name]
        assert set(m["tiers"]) == {"gpu", "cpu"}
        assert sum(t["token_hit_rate"] for t in m["tiers"].values()) == pytest.approx(m["token_hit_rate"])
        assert m["tiers"]["gpu"]["token_hit_rate"] == pytest.approx(m["gpu_only"]["token_hit_rate"])
        assert m["token_hit_rate"] > m["gpu_only"]["token_hit_rate"] + 0.2  # 64 GiB below 19 GiB of GPU cache
        assert m["ttft"]["tiered"] < m["ttft"]["gpu_only"]
    assert "tiers" not in record["methods"]["seed"]


def test_an_inclusive_lru_cpu_tier_smaller_than_the_gpu_adds_nothing(capsys):
    # It holds the most recent blocks, as the GPU does: a subset of the GPU's (19.1 GiB here).
    _, out, _ = run(capsys, "calc", "--cpu-offload-gib", "16", "--method", "lru", "--json")
    m = json.loads(out)["methods"]["lru"]
    assert m["tiers"]["cpu"]["token_hit_rate"] == 0 and m["token_hit_rate"] == m["gpu_only"]["token_hit_rate"]


def test_calc_with_an_empty_cpu_tier_is_the_single_tier_model(capsys):
    _, out, _ = run(capsys, "calc", "--cpu-capacity-blocks", "0", "--method", "lru", "--json")
    m = json.loads(out)["methods"]["lru"]
    assert m["token_hit_rate"] == m["gpu_only"]["token_hit_rate"] and m["tiers"]["cpu"]["token_hit_rate"] == 0


def test_simulate_with_an_empty_cpu_tier_is_the_single_tier_simulation(capsys):
    _, plain, _ = run(capsys, "simulate", *SMALL, "--json")
    _, tiered, _ = run(capsys, "simulate", *SMALL, "--cpu-capacity-blocks", "0", "--json")
    plain, tiered = json.loads(plain), json.loads(tiered)
    assert tiered["token_hit_rate"] == plain["token_hit_rate"] and tiered["evictions"] == plain["evictions"]
    assert tiered["tiers"]["gpu"]["hit_tokens"] > 0 and tiered["tiers"]["cpu"]["hit_tokens"] == 0


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_simulate_with_a_cpu_tier_adds_hits_below_the_gpu(capsys, mode):
    _, plain, _ = run(capsys, "simulate", *SMALL, "--json")
    code, out, err = run(capsys, "simulate", *SMALL, "--cpu-capacity-tokens", "160000", "--offload-mode", mode, "--json")
    assert code == 0 and err == ""
    plain, r = json.loads(plain), json.loads(out)
    gpu, cpu = r["tiers"]["gpu"], r["tiers"]["cpu"]
    assert gpu["token_hit_rate"] == plain["token_hit_rate"]  # the GPU tier does not see what is below it
    assert cpu["hit_tokens"] > 0 and cpu["loaded_blocks"] == cpu["hit_blocks"]
    assert cpu["loaded_bytes"] == cpu["loaded_blocks"] * 16 * 131072
    assert r["token_hit_rate"]["mean"] == pytest.approx(gpu["token_hit_rate"]["mean"] + cpu["token_hit_rate"]["mean"])
    assert r["inputs"]["offload"]["mode"] == mode


def test_simulate_text_has_a_column_per_tier(capsys):
    code, out, _ = run(capsys, "simulate", *SMALL, "--cpu-capacity-tokens", "160000")
    assert code == 0
    assert "offload   CPU 19.5 GiB = 10,000 blocks (25 GB/s); inclusive" in out
    assert "token hits gpu + cpu" in out


def test_a_served_fleet_loads_cpu_hits_faster_than_it_would_prefill_them(capsys):
    flags = (*SMALL, "--instances", "2", "--step-time", "linear:0.01,4e-5,1e-8", "--json")
    _, plain, _ = run(capsys, "simulate", *flags)
    _, tiered, _ = run(capsys, "simulate", *flags, "--cpu-capacity-tokens", "160000")
    plain, tiered = json.loads(plain), json.loads(tiered)
    assert tiered["token_hit_rate"]["mean"] > plain["token_hit_rate"]["mean"] + 0.05
    assert tiered["serving"]["ttft_s"]["mean"]["mean"] < plain["serving"]["ttft_s"]["mean"]["mean"]
    assert set(tiered["tiers"]) == {"gpu", "cpu"}


def _trace(path):
    # Two conversations of three turns each, chained ids (Mooncake format, 512-token blocks).
    rows = []
    for turn in range(3):
        for conv in range(2):
            ids = [conv * 100 + k for k in range(2 * turn + 2)]
            rows.append({"timestamp": 1000 * (2 * turn + conv), "input_length": 512 * len(ids), "output_length": 10,
                         "hash_ids": ids})
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_replay_with_a_cpu_tier_keeps_what_the_gpu_loses(capsys, tmp_path):
    trace = _trace(tmp_path / "t.jsonl.gz")
    # A GPU of 8 blocks holds one conversation's last turn (7 blocks with its partial one), not both.
    _, out, _ = run(capsys, "replay", trace, "--capacity-blocks", "8", "--json")
    single = json.loads(out)["results"][0]
    code, out, err = run(capsys, "replay", trace, "--capacity-blocks", "8", "--cpu-capacity-blocks", "100", "--json")
    assert code == 0 and err == ""
    tiered = json.loads(out)["results"][0]
    assert tiered["tiers"]["gpu"]["hit_blocks"] == single["hit_blocks"]
    # Every listed block of turns 2 and 3 was listed before: with the CPU tier all of them hit.
    assert tiered["hit_blocks"] == 2 * (2 + 4) > single["hit_blocks"]
    assert tiered["hit_blocks"] == tiered["tiers"]["gpu"]["hit_blocks"] + tiered["tiers"]["cpu"]["hit_blocks"]


def test_replay_tier_sizes_in_tokens_are_floored_to_blocks(capsys, tmp_path):
    trace = _trace(tmp_path / "t.jsonl.gz")
    _, out, _ = run(capsys, "replay", trace, "--capacity-blocks", "5", "--cpu-capacity-tokens", "5000", "--json")
    assert json.loads(out)["results"][0]["tiers"]["cpu"]["capacity_blocks"] == 9


@pytest.mark.parametrize("argv,message", [
    (("calc", "--offload-mode", "exclusive"), "--offload-mode: there is no tier below the GPU"),
    (("calc", "--disk-offload-gib", "100"), "a disk tier needs a CPU tier above it"),
    (("calc", "--cpu-offload-gib", "-1"), "cpu-offload-gib must be a number >= 0"),
    (("calc", "--cpu-offload-gib", "nan"), "finite"),
    (("calc", "--cpu-offload-gib", "1", "--cpu-capacity-blocks", "3"), "not allowed with"),
    (("calc", "--cpu-offload-gib", "1", "--cpu-bandwidth-gbps", "0"), "cpu-bandwidth-gbps must be a number > 0"),
    (("calc", "--cpu-offload-gib", "1", "--instances", "2"), "the tiered models take one instance"),
    (("simulate", "--cpu-offload-gib", "1", "--offload-mode", "exclusive", "--policy", "s3fifo"),
     "exclusive mode needs gpu policy 's3fifo'"),
    (("replay", "x.jsonl", "--cpu-capacity-blocks", "5", "--curve"), "not with --curve or belady"),
])
def test_bad_offload_flags_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_tiers_spec_refuses_bad_values():
    with pytest.raises(ValueError, match="offload-mode must be one of inclusive, exclusive"):
        Tiers(10, mode="victim")
    with pytest.raises(ValueError, match="cpu-capacity-blocks must be a whole number"):
        Tiers(1.5)


def test_plan_tier_cpu_gives_the_cpu_offload_that_reaches_the_target(capsys):
    code, out, err = run(capsys, "plan", "--target-hit-rate", "0.7", "--tier", "cpu", "--json")
    assert code == 0 and err == ""
    plan = json.loads(out)["plan"]
    assert plan["gpu_alone_token_hit_rate"] < 0.7 <= plan["token_hit_rate"]
    blocks = plan["cpu_capacity_blocks"]
    assert plan["cpu_offload_gib"] == pytest.approx(blocks * 16 * 131072 / 2**30)
    for cpu, reaches in ((blocks, True), (blocks - 1, False)):  # calc agrees, and one block less misses
        _, out, _ = run(capsys, "calc", "--cpu-capacity-blocks", str(cpu), "--method", "lru", "--json")
        assert (json.loads(out)["methods"]["lru"]["token_hit_rate"] >= 0.7) is reaches


def test_plan_tier_cpu_out_of_reach_and_misuse_are_one_line(capsys):
    code, _, err = run(capsys, "plan", "--target-hit-rate", "0.99", "--tier", "cpu")
    assert code == 2 and "out of reach: even an unlimited cpu tier gets" in err
    code, _, err = run(capsys, "plan", "--target-hit-rate", "0.7", "--tier", "cpu", "--cpu-offload-gib", "3")
    assert code == 2 and "leave out the tier sizes" in err


def test_advice_prices_cpu_offload_and_says_when_it_does_not_pay(capsys):
    _, out, _ = run(capsys, "calc", "--advise", "--json")
    lever = next(x for x in json.loads(out)["advice"] if x["id"] == "offload")
    assert lever["recommended"] and lever["token_hit_rate"]["then"] > lever["token_hit_rate"]["now"] + 0.2
    assert lever["prefill_s"]["then"] < lever["prefill_s"]["now"]
    assert f"{lever['cpu_offload_gib']:,.0f} GiB of CPU offload" in lever["text"]
    # A cache that already holds (nearly) everything: nothing left beyond the GPU's horizon.
    _, out, _ = run(capsys, "calc", "--advise", "--capacity-tokens", "10000000", "--json")
    lever = next(x for x in json.loads(out)["advice"] if x["id"] == "offload")
    assert not lever["recommended"] and "CPU offload would not pay" in lever["text"]
