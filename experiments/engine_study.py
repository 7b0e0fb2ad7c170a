"""What prefix caching buys under load: TTFT p99 and the hit rate against the arrival rate, with
prefix caching on and off (the README's small study of the serving engine), and the models under
load (analytic/load.py) beside the simulation: hit rate, step time, KV usage, TTFT and the
largest sustainable rate.

    .venv/bin/python experiments/engine_study.py [--rates 0.5,1,1.5,2,2.5] [--out out/engine_study.csv]

The default workload (llama-3.1-8b on one a100-40gb, 5 turns of 200 + 300 tokens, 30 s think
time), one instance stepping like vLLM's scheduler with the roofline step time; 1800 s of
arrivals after a 600 s warm-up, 2 replications per point.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsim.batch import write_atomic  # noqa: E402
from kvsim.cli.args import SimulationSettings, scenario_from_values  # noqa: E402
from kvsim.cli.main import build_parser  # noqa: E402
from kvsim.cli.simulate import simulate_record  # noqa: E402


def scenario(rate: float, caching: bool):
    argv = ["simulate", "--engine", "--arrival-rate", str(rate)] + ([] if caching else ["--no-prefix-caching"])
    return scenario_from_values(vars(build_parser().parse_args(argv)))


def point(rate: float, caching: bool) -> dict:
    from analytic.load import under_load
    from analytic.scenario import default_evaluate

    s = scenario(rate, caching)
    record, _ = simulate_record(s, "lru", SimulationSettings(duration=2400, warmup=600, replications=2, seed=0))
    v = record["serving"]
    m = under_load(s.workload, s.capacity().capacity_blocks, s.block_size, s.engine_spec(), default_evaluate)
    return {"arrival_rate": rate, "prefix_caching": caching, "token_hit_rate": record["token_hit_rate"]["mean"],
            "ttft_mean_s": v["ttft_s"]["mean"]["mean"], "ttft_p50_s": v["ttft_s"]["p50"],
            "ttft_p99_s": v["ttft_s"]["p99"], "tpot_mean_s": v["tpot_s"]["mean"]["mean"],
            "tpot_p99_s": v["tpot_s"]["p99"], "output_tokens_per_s": v["throughput"]["output_tokens_per_s"]["mean"],
            "kv_usage_mean": v["kv_usage"]["mean"]["mean"], "preemptions": v["preemptions"],
            "model_token_hit_rate": m.token_hit_rate, "model_tpot_s": m.tpot_s, "model_ttft_s": m.ttft_s,
            "model_kv_usage": None if m.held_blocks is None else m.held_blocks / s.capacity().capacity_blocks,
            "model_saturated": m.saturated}


def saturation(caching: bool) -> float:
    from analytic.load import saturation_rate
    from analytic.scenario import default_evaluate

    s = scenario(1.0, caching)
    return saturation_rate(s.workload, s.capacity().capacity_blocks, s.block_size, s.engine_spec(), default_evaluate)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="0.5,1,1.5,2,2.5", help="conversations per second, comma-separated")
    p.add_argument("--out", default="out/engine_study.csv")
    a = p.parse_args()
    rows = [point(float(r), caching) for r in a.rates.split(",") for caching in (True, False)]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(a.out, text.getvalue())
    print(f"{'rate/s':>6} {'caching':>7} {'token hits':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p99':>9} "
          f"{'out tok/s':>9} {'KV usage':>8} {'preempt':>7}")
    for r in rows:
        print(f"{r['arrival_rate']:>6g} {'on' if r['prefix_caching'] else 'off':>7} {r['token_hit_rate']:>10.3f} "
              f"{r['ttft_p50_s']:>9.3f} {r['ttft_p99_s']:>9.3f} {r['tpot_p99_s']:>9.4f} "
              f"{r['output_tokens_per_s']:>9,.0f} {r['kv_usage_mean']:>8.3f} {r['preemptions']:>7,}")

    def cell(sim, model, digits=3):
        return f"{sim:.{digits}f} / " + ("-" if model is None else f"{model:.{digits}f}")

    print("\nthe models under load (analytic/load.py) beside the simulation: simulated / model")
    print(f"{'rate/s':>6} {'caching':>7} {'token hits':>15} {'TPOT mean s':>17} {'TTFT mean s':>17} "
          f"{'KV usage':>15}")
    for r in rows:
        print(f"{r['arrival_rate']:>6g} {'on' if r['prefix_caching'] else 'off':>7} "
              f"{cell(r['token_hit_rate'], r['model_token_hit_rate']):>15} "
              f"{cell(r['tpot_mean_s'], r['model_tpot_s'], 4):>17} {cell(r['ttft_mean_s'], r['model_ttft_s'], 4):>17} "
              f"{cell(r['kv_usage_mean'], r['model_kv_usage']):>15}"
              + (f"  model: saturated ({r['model_saturated']})" if r["model_saturated"] else ""))
    print(f"largest sustainable rate (model): {saturation(True):.3g} conversations/s with prefix caching, "
          f"{saturation(False):.3g} without")
    print(f"table: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
