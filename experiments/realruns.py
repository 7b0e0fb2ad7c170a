"""The engine against real vLLM runs on H100 (``../shared/realruns``, never shipped).

    .venv/bin/python experiments/realruns.py [--realruns ../shared/realruns] [--offload] [--out out/realruns]

Each run's requests (arrival, input and output tokens) are replayed through one step engine
(:mod:`kvsim.step_engine`) with the run's configuration: its model (``model_config``), tensor
parallelism, fp16, ``max_num_seqs`` 128, ``max_num_batched_tokens`` 2048, 16-token blocks and
the GPU blocks vLLM logged; prompts repeat as that folder's README says (request k sends prompt
k mod 100, so its full blocks are those of prompt k mod 100); ``--offload`` adds the runs' 8 GiB
CPU tier (write-through, 25 GB/s). The step time is the roofline with its defaults: nothing is
fitted to these runs. ``--calibrate`` adds leave-one-run-out: for each run, two calibrations
fitted to the *other* normal runs of the same model (three windows of ``--window`` requests from
each, apart in time, so that both load stages are seen) predict it: the roofline with a latency
per request outside the steps (``kvsim.calibrate.fit_latency``), and a linear step time with
that latency (``kvsim.calibrate.fit``, at most ``--max-simulations`` engine runs per fit).
Printed: per run, measured and predicted mean and p99 TTFT and E2E with the absolute percentage
errors, their means over the runs (MAPE), and the published MAPEs of the
other simulators on the same experiments (``peer_predictions.csv``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytic.hfconfig import model_from_config  # noqa: E402
from analytic.offload import DEFAULT_CPU_BANDWIDTH_GBPS, GB, Tiers  # noqa: E402
from analytic.serving import EngineSpec  # noqa: E402
from analytic.sizing import GIB, bytes_per_token  # noqa: E402
from analytic.steptime import roofline  # noqa: E402
from kvsim.batch import write_atomic  # noqa: E402
from kvsim.engine import Counters  # noqa: E402
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPTS = 100  # the load generator's distinct prompts, reused cyclically
CPU_OFFLOAD_GIB = 8.0
PEERS = ("blis-evolved", "blis-trained-physics", "blis-roofline", "vidur", "llm-optimizer-estimate",
         "aiconfigurator-estimate", "llmservingsim")


def model_of(run: dict):
    """The run's model as a ModelSpec, through a Hugging Face config.json built from its dimensions."""
    m = run["model_config"]
    config = {"num_hidden_layers": m["num_layers"], "hidden_size": m["hidden_dim"],
              "num_attention_heads": m["num_heads"], "num_key_value_heads": m["num_kv_heads"],
              "intermediate_size": m["intermediate_dim"], "vocab_size": m["vocab_size"],
              "max_position_embeddings": run["engine"]["max_model_len"]}
    if m.get("num_local_experts"):
        config.update(num_local_experts=m["num_local_experts"], num_experts_per_tok=m["num_experts_per_tok"])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(config))
        return model_from_config(path)


def replay_run(run: dict, offload: bool, step_time=None) -> dict:
    model = model_of(run)
    e = run["engine"]
    bs = e["block_size"]
    tp = run["tp"]
    if step_time is None:
        step_time = roofline(model, run["gpu"], tp, "fp16", "fp16")
    spec = EngineSpec(step_time, e["max_num_batched_tokens"], e["max_num_seqs"])
    tiers = None
    if offload:
        per_token = bytes_per_token(model, "fp16")
        tiers = Tiers(cpu_blocks=int(CPU_OFFLOAD_GIB * GIB / per_token) // bs,
                      cpu_load_s_per_token=per_token / (DEFAULT_CPU_BANDWIDTH_GBPS * GB))
    env = simpy.Environment()
    stats = ServingStats(0.0, math.inf, requests=[])
    inst = EngineInstance(env, spec, e["num_gpu_blocks"], bs, stats, Counters(), tiers=tiers)
    for k, (arrival, inp, out, _, _) in enumerate(run["requests"]):
        keys = [(k % PROMPTS) << 20 | j for j in range(inp // bs)]
        req = EngineRequest(k, arrival, inp, out, keys)
        env.timeout(arrival).callbacks.append(lambda _, req=req: inst.submit(req))
    env.run()
    done = sorted(stats.requests, key=lambda r: r.index)
    measured = np.asarray(run["requests"], dtype=float)
    ttft = np.array([r.ttft for r in done])
    e2e = np.array([r.e2e for r in done])
    row = {"run": run["name"], "model": run["model"], "tp": tp, "requests": len(done),
           "steps": stats.steps, "preemptions": stats.preemptions,
           "hit_rate": sum(r.hit_tokens for r in done) / sum(r.prompt_tokens for r in done)}
    for name, sim, real in (("ttft", ttft, measured[:, 3]), ("e2e", e2e, measured[:, 4])):
        for stat, f in (("mean", np.mean), ("p99", lambda x: np.percentile(x, 99))):
            predicted, actual = 1000 * float(f(sim)), 1000 * float(f(real))
            row[f"{name}_{stat}_ms"] = actual
            row[f"{name}_{stat}_pred_ms"] = predicted
            row[f"{name}_{stat}_ape"] = 100 * abs(predicted - actual) / actual
    return row


def training_measurements(runs: list[dict], window: int):
    """The requests of ``runs`` as one set of measurements: from each, three windows of ``window``
    consecutive requests (at its start, 40% and 80% through), one after another with a minute
    of idle time between (the engine empties in between)."""
    from kvsim.calibrate import Measurements

    parts, offset = [], 0.0
    for run in runs:
        rows = np.asarray(run["requests"], dtype=float)
        for start in (0, int(0.4 * len(rows)), int(0.8 * len(rows))):
            w = rows[start:start + window].copy()
            w[:, 0] += offset - w[0, 0]
            parts.append(w)
            offset = float(w[-1, 0] + w[:, 4].max()) + 60.0
    a = np.concatenate(parts)
    return Measurements.of(a[:, 0], a[:, 1].astype(np.int64), a[:, 2].astype(np.int64), a[:, 3], a[:, 4],
                           source=f"{len(runs)} runs, {len(a)} requests")


def leave_one_out(runs: list[dict], targets: list[dict], window: int, max_simulations: int | None = None) -> dict:
    """Per run name of ``targets``, fitted to the other normal runs of its model (three windows of
    ``window`` requests from each): a linear step time and its request latency
    (``kvsim.calibrate.fit``, at most ``max_simulations`` engine runs), or with ``max_simulations``
    None the roofline with the request latency alone (``kvsim.calibrate.fit_latency``: one
    simulation, the median TTFT difference)."""
    from kvsim.calibrate import EngineSetup, fit, fit_latency

    fitted = {}
    for run in targets:
        others = [r for r in runs if r["model"] == run["model"] and r["name"] != run["name"]
                  and r["regime"] == "normal"]
        if not others:
            continue
        e = run["engine"]
        setup = EngineSetup(e["num_gpu_blocks"], e["block_size"], e["max_num_batched_tokens"], e["max_num_seqs"],
                            prompt_cycle=PROMPTS)
        measured = training_measurements(others, window)
        if max_simulations is None:
            step, report = fit_latency(measured, setup, roofline(model_of(run), run["gpu"], run["tp"], "fp16", "fp16"))
        else:
            step, report = fit(measured, setup, max_simulations=max_simulations)
        fitted[run["name"]] = step
        print(f"  fitted for {run['name']} on {', '.join(r['name'].split('-')[-1] for r in others)}: "
              f"{step.describe()} ({report['fit']['simulations']} simulations)", flush=True)
    return fitted


def _peer_rows(realruns: Path, runs: set[str]) -> list[dict]:
    """peer_predictions.csv's whole-run mean TTFT and E2E rows of the experiments of ``runs``."""
    with (realruns / "peer_predictions.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["per_request_run"] and Path(r["per_request_run"]).stem in runs
                and r["stage_index"] == "-1" and r["metric"] in ("ttft_mean", "e2e_mean")]


def peer_mapes(realruns: Path, runs: set[str]) -> dict:
    """Per peer, its mean absolute percentage error over our runs' experiments, for mean TTFT and E2E."""
    out = {}
    rows = _peer_rows(realruns, runs)
    for peer in PEERS:
        for metric in ("ttft_mean", "e2e_mean"):
            values = [float(r[f"{peer}_mape"]) for r in rows if r["metric"] == metric and r.get(f"{peer}_mape")]
            out[(peer, metric)] = (sum(values) / len(values), len(values)) if values else (None, 0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--realruns", default=str(HERE.parents[1] / "shared" / "realruns"))
    p.add_argument("--offload", action="store_true", help="add the runs' 8 GiB CPU tier (slower: no skipped steps)")
    p.add_argument("--only", help="run names containing this text")
    p.add_argument("--out", default="out/realruns", help="folder for realruns.csv")
    p.add_argument("--calibrate", action="store_true", help="also leave-one-run-out calibrated predictions")
    p.add_argument("--window", type=int, default=200, help="--calibrate: requests per training window")
    p.add_argument("--max-simulations", type=int, default=60, help="--calibrate: engine runs per fit at most")
    a = p.parse_args()
    folder = Path(a.realruns)
    if not (folder / "runs").is_dir():
        print(f"realruns: no runs at {folder / 'runs'} (the shared measurements are not shipped)", file=sys.stderr)
        return 2
    runs = [json.loads(path.read_text()) for path in sorted((folder / "runs").glob("*.json"))]
    fitted, latency_fitted = {}, {}
    if a.calibrate:
        print("leave-one-run-out fits:")
        targets = [r for r in runs if not a.only or a.only in r["name"]]
        latency_fitted = leave_one_out(runs, targets, a.window)
        fitted = leave_one_out(runs, targets, a.window, a.max_simulations)
    rows = []
    for run in runs:
        if a.only and a.only not in run["name"]:
            continue
        rows.append(replay_run(run, a.offload))
        for prefix, steps in (("latency", latency_fitted), ("calibrated", fitted)):
            if run["name"] in steps:
                c = replay_run(run, a.offload, steps[run["name"]])
                rows[-1].update({f"{prefix}_{k}": v for k, v in c.items() if k.endswith(("_pred_ms", "_ape"))})
        r = rows[-1]
        print(f"{r['run']:36} TTFT mean {r['ttft_mean_ms']:7.1f} -> {r['ttft_mean_pred_ms']:7.1f} ms "
              f"({r['ttft_mean_ape']:5.1f}%)  p99 {r['ttft_p99_ms']:7.1f} -> {r['ttft_p99_pred_ms']:7.1f} "
              f"({r['ttft_p99_ape']:5.1f}%)  E2E mean {r['e2e_mean_ms']:7.0f} -> {r['e2e_mean_pred_ms']:7.0f} ms "
              f"({r['e2e_mean_ape']:5.1f}%)  p99 {r['e2e_p99_ms']:7.0f} -> {r['e2e_p99_pred_ms']:7.0f} "
              f"({r['e2e_p99_ape']:5.1f}%)  hits {r['hit_rate']:.3f}", flush=True)
    print("\nMAPE over the runs (roofline defaults, nothing fitted):")
    for key in ("ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99"):
        print(f"  {key:9} {np.mean([r[f'{key}_ape'] for r in rows]):6.1f}%")
    for prefix, what in (("latency", "the roofline + a request latency"), ("calibrated", "a linear step time + a "
                                                                               "request latency")):
        chosen = [r for r in rows if f"{prefix}_ttft_mean_ape" in r]
        if not chosen:
            continue
        print(f"\nleave-one-run-out, {what} fitted on the other runs of its model, per run:")
        for r in chosen:
            print(f"  {r['run']:36} TTFT mean {r[f'{prefix}_ttft_mean_ape']:5.1f}%  p99 {r[f'{prefix}_ttft_p99_ape']:5.1f}%"
                  f"  E2E mean {r[f'{prefix}_e2e_mean_ape']:5.1f}%  p99 {r[f'{prefix}_e2e_p99_ape']:5.1f}%")
        print(f"MAPE over the {len(chosen)} runs:")
        for key in ("ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99"):
            print(f"  {key:9} {np.mean([r[f'{prefix}_{key}_ape'] for r in chosen]):6.1f}%")
    names = {r["run"] for r in rows}
    peers = peer_mapes(folder, names)
    compared = sorted({r["per_request_run"] for r in _peer_rows(folder, names)})
    if compared:
        ours = [r for r in rows if f"runs/{r['run']}" in compared]
        print(f"\non the {len(ours)} runs that the other simulators' published predictions cover:")
        print(f"  {'kvsim (roofline defaults)':28} TTFT mean {np.mean([r['ttft_mean_ape'] for r in ours]):6.1f}%  "
              f"E2E mean {np.mean([r['e2e_mean_ape'] for r in ours]):6.1f}%")
        for prefix, label in (("latency", "kvsim (roofline + latency)"), ("calibrated", "kvsim (linear + latency)")):
            cal = [r for r in ours if f"{prefix}_ttft_mean_ape" in r]
            if cal:
                print(f"  {label:28} TTFT mean {np.mean([r[f'{prefix}_ttft_mean_ape'] for r in cal]):6.1f}%  E2E mean "
                      f"{np.mean([r[f'{prefix}_e2e_mean_ape'] for r in cal]):6.1f}%  ({len(cal)} runs, leave-one-out)")
        for peer in PEERS:
            t, nt = peers[(peer, "ttft_mean")]
            e, ne = peers[(peer, "e2e_mean")]
            if nt or ne:
                print(f"  {peer:28} TTFT mean {t:6.1f}%  E2E mean {e:6.1f}%  ({max(nt, ne)} runs)")
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(Path(a.out) / ("realruns_offload.csv" if a.offload else "realruns.csv"), text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
