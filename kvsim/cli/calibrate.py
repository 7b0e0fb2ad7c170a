"""``kvsim calibrate``: fit the linear step time (``--step-time linear:...``) to measurements
(:mod:`kvsim.calibrate`) and write the file ``--step-time FILE`` reads."""

from __future__ import annotations

import argparse
import json

from kvsim.cli.parser import UsageError, nonnegative_int, output_file, positive_int

__all__ = ["cmd", "configure"]

DEFAULT_OUT = "step_time.json"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("measurements", metavar="MEASUREMENTS",
                   help="vllm bench serve's result JSON (--save-result --save-detailed) or a CSV with columns "
                        "arrival_s,input_tokens,output_tokens,ttft_s,e2e_s (kvsim's --requests-out too)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.json",
                   help=f"where to write the fitted step time (default {DEFAULT_OUT}); use it as --step-time FILE")
    m = p.add_argument_group("the model and GPU measured (the roofline 'before', the KV cache and vLLM's limits)")
    m.add_argument("--preset", help="model preset (default llama-3.1-8b)")
    m.add_argument("--model-config", metavar="PATH", help="a Hugging Face config.json describing the model")
    m.add_argument("--gpu", help="GPU preset (default a100-40gb); its memory sizes the cache unless "
                                 "--capacity-blocks is given")
    m.add_argument("--tp", "--gpus", dest="gpus", type=positive_int, default=1, help="GPUs (tensor parallel)")
    m.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (default bf16)")
    m.add_argument("--weight-dtype", default="bf16", help="weight dtype (default bf16)")
    e = p.add_argument_group("the engine measured")
    e.add_argument("--capacity-blocks", type=positive_int, metavar="N",
                   help="KV cache blocks (vLLM's log: 'GPU KV cache size'; default: from the GPU's memory)")
    e.add_argument("--block-size", type=positive_int, default=16, help="tokens per block (default 16)")
    e.add_argument("--max-num-batched-tokens", type=positive_int, metavar="N",
                   help="tokens per step (default: vLLM serve's for the GPU)")
    e.add_argument("--max-num-seqs", type=positive_int, metavar="N", help="requests per step (default: vLLM serve's)")
    e.add_argument("--no-prefix-caching", action="store_true", help="the server ran without prefix caching")
    e.add_argument("--prompt-cycle", type=nonnegative_int, default=0, metavar="N",
                   help="request k sent prompt k mod N (load generators that cycle through N prompts; "
                        "default 0: every prompt its own)")
    e.add_argument("--shared-prefix-tokens", type=nonnegative_int, default=0, metavar="N",
                   help="prompt tokens every request shares (vllm bench's --random-prefix-len; default 0: none)")
    f = p.add_argument_group("the fit")
    f.add_argument("--max-simulations", type=positive_int, default=None, metavar="N",
                   help="engine simulations at most (default 200)")
    f.add_argument("--latency-only", action="store_true",
                   help="keep the roofline's step time and fit only the latency per request outside the steps "
                        "(one simulation; the file then holds the roofline's latency for this --preset/--gpu)")
    f.add_argument("--no-request-latency", action="store_true",
                   help="fit the step time alone: no latency per request outside the steps (default: fit one, "
                        "for client-side TTFTs that hold the API server's time)")
    f.add_argument("--seed", type=nonnegative_int, default=None,
                   help="seed of the arrivals reconstructed when the JSON has no start_times (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    from analytic import presets
    from analytic.sizing import capacity_from_memory
    from analytic.specs import DEFAULT_ACTIVATION_RESERVE_GIB, DEFAULT_MEMORY_UTILIZATION, Hardware, check_dtype
    from analytic.steptime import default_engine_limits, roofline, write_step_time
    from kvsim.calibrate import (DEFAULT_MAX_SIMULATIONS, RECONSTRUCTION_SEED, EngineSetup, fit, fit_latency,
                                 read_measurements)
    from kvsim.cli.args import DEFAULT_GPU, DEFAULT_PRESET, _model

    out = output_file("--out", a.out)
    check_dtype("kv-dtype", a.kv_dtype)
    check_dtype("weight-dtype", a.weight_dtype)
    model = _model({"preset": a.preset or (None if a.model_config else DEFAULT_PRESET), "model_config": a.model_config})
    gpu = (a.gpu or DEFAULT_GPU).lower()
    memory = presets.gpu_memory_gib(gpu)
    before = roofline(model, gpu, a.gpus, a.weight_dtype, a.kv_dtype)
    tokens, seqs = default_engine_limits(memory, gpu)
    tokens = a.max_num_batched_tokens or tokens
    seqs = a.max_num_seqs or seqs
    if a.capacity_blocks is None:
        hardware = Hardware(memory, a.gpus, DEFAULT_MEMORY_UTILIZATION, DEFAULT_ACTIVATION_RESERVE_GIB, gpu=gpu)
        capacity = capacity_from_memory(model, hardware, a.kv_dtype, a.weight_dtype, a.block_size).capacity_blocks
        if capacity < 1:
            raise UsageError(f"capacity: {model.name} leaves no KV cache on {a.gpus} x {gpu}: give --capacity-blocks")
        where = f" ({model.name} on {a.gpus} x {gpu})"
    else:
        capacity, where = a.capacity_blocks, ""
    setup = EngineSetup(capacity, a.block_size, tokens, seqs, not a.no_prefix_caching, a.shared_prefix_tokens,
                        a.prompt_cycle)
    m = read_measurements(a.measurements, RECONSTRUCTION_SEED if a.seed is None else a.seed)
    if a.latency_only and (a.no_request_latency or a.max_simulations is not None):
        raise UsageError("--latency-only fits the request latency alone: leave out --no-request-latency and "
                         "--max-simulations")
    if a.latency_only:
        linear, report = fit_latency(m, setup, before)
    else:
        linear, report = fit(m, setup, before,
                             DEFAULT_MAX_SIMULATIONS if a.max_simulations is None else a.max_simulations,
                             request_latency=not a.no_request_latency)
    extra = {"fitted_by": "kvsim calibrate", "measurements": str(a.measurements),
             "mean_ttft_error": report["after"]["ttft_error"], "mean_e2e_error": report["after"]["e2e_error"]}
    write_step_time(out, linear, extra)
    report["out"] = out
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    for line in report_lines(report, where):
        print(line)
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def report_lines(r: dict, where: str = "") -> list[str]:
    """The text of ``kvsim calibrate``."""
    ms, eng, fit = r["measurements"], r["engine"], r["fit"]
    lines = [f"measured  {ms['source']}: {ms['requests']:,} requests over {ms['span_s']:,.1f} s, "
             f"{ms['mean_input_tokens']:,.0f} in + {ms['mean_output_tokens']:,.0f} out tokens on average"]
    lines += [f"          {note}" for note in ms["notes"]]
    lines.append(f"engine    vLLM scheduler: {eng['max_num_batched_tokens']:,} tokens and {eng['max_num_seqs']:,} "
                 f"requests per step, prefix caching {'on' if eng['prefix_caching'] else 'off'}, "
                 f"{eng['capacity_blocks']:,} blocks of {eng['block_size']} tokens{where}"
                 + (f", {eng['shared_prefix_tokens']:,} prompt tokens shared" if eng["shared_prefix_tokens"] else ""))
    lines.append("")
    lines.append(f"{'':18} {'mean TTFT s':>12} {'error':>7} {'mean E2E s':>11} {'error':>7} {'MAPE':>6}")
    lines.append(f"{'measured':18} {ms['mean_ttft_s']:>12.4f} {'':>7} {ms['mean_e2e_s']:>11.4f}")
    roofline_after = r["after"]["step_time"]["step_time"] == "roofline"
    for label, key in (("before (roofline)", "before"), ("after (roofline)" if roofline_after else "after (linear)",
                                                           "after")):
        if key in r:
            x = r[key]
            lines.append(f"{label:18} {x['mean_ttft_s']:>12.4f} {_pct(x['ttft_error']):>7} {x['mean_e2e_s']:>11.4f} "
                         f"{_pct(x['e2e_error']):>7} {100 * x['mape']:>5.1f}%")
    lines.append("")
    if "before" in r:
        lines.append(f"before    {r['before']['describe']}")
    a = r["after"]["step_time"]
    latency = a.get("request_latency_s", 0.0)  # left out of the file when 0
    if roofline_after:
        lines.append(f"after     the roofline + {1000 * latency:.3g} ms per request outside the steps")
        lines.append("fit       the request latency alone: the median of the measured minus the simulated TTFTs (one "
                     "engine simulation)")
        lines.append(f"written   {r['out']} (use: --step-time {r['out']} with the same --preset/--model-config and --gpu)")
        return lines
    lines.append(f"after     linear: alpha {a['alpha']:.4g} s + beta {a['beta']:.4g} s x tokens + gamma "
                 f"{a['gamma']:.4g} s x context tokens; {1000 * latency:.3g} ms per request outside the steps")
    lines.append(f"          = --step-time linear:{a['alpha']:.6g},{a['beta']:.6g},{a['gamma']:.6g}"
                 + (f",{latency:.6g}" if latency else ""))
    lines.append(f"fit       Nelder-Mead over log coefficients from the {r['start']['from']}; "
                 f"{fit['simulations']} engine simulations (at most {fit['max_simulations']}); per request: decode "
                 f"time RMSE {100 * r['after']['decode_rmse']:.1f}%, TTFT by input length "
                 f"{100 * r['after']['ttft_by_input_rmse']:.1f}% of the means")
    lines.append(f"          fitted in {fit['elapsed_s']:.1f} s")
    lines.append(f"written   {r['out']} (use: --step-time {r['out']})")
    return lines
