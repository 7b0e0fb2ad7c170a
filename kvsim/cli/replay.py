"""The command line of ``kvsim replay`` (:func:`kvsim.replay.replay`) and ``kvsim export-trace``
(:func:`kvsim.export.export_libcachesim_csv`)."""

from __future__ import annotations

import argparse
import json

from analytic.offload import OFFLOAD_MODES, Tiers
from kvsim.cli.parser import nonnegative_int, output_file, positive_float, positive_int
from kvsim.cli.engine_args import add_engine_args, engine_asked, engine_options
from kvsim.cli.simulate import add_hybrid_cache_args
from kvsim.export import export_libcachesim_csv
from kvsim.replay import OFFLINE_POLICIES, policy_choices, policy_names, replay

__all__ = ["cmd_export_trace", "cmd_replay", "configure_export_parser", "configure_replay_parser", "replay_kwargs",
           "result_table"]


def _int_list(text: str) -> list[int]:
    try:  # an empty item (1,,2 or a trailing comma) is refused, not dropped
        values = [int(v.replace("_", "")) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (got {text!r})") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0 separated by commas (got {text!r})")
    return values


def _policy_list(text: str) -> list[str]:
    try:
        return policy_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_reading_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace files (*.jsonl, *.json, optionally .gz) or directories of them")
    g = p.add_argument_group("reading traces")
    g.add_argument("--block-size", type=positive_int,
                   help="tokens per cache block (default: the traces' own; a multiple of it merges "
                        "consecutive hash-id blocks, anything else is refused)")
    g.add_argument("--trace-block-size", type=positive_int,
                   help="tokens per hash id in jsonl traces (default: blksz_N in the file name, else 16 "
                        "with chat_id (Bailian), else 512 (Mooncake))")
    g.add_argument("--time-unit", default="auto", choices=["auto", "ms", "s"],
                   help="timestamps of jsonl traces (default auto: s with chat_id (Bailian), else ms)")
    g.add_argument("--arrival-rate", type=positive_float,
                   help="start conversation files, in a random order, as a Poisson process of this "
                        "many per second (default: all at time 0, as recorded)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --arrival-rate (default 0)")
    g.add_argument("--vllm", action="store_true",
                   help="vLLM semantics: cache full blocks only, compute at least one prompt token "
                        "(default: every listed block counts, as in the Mooncake papers)")
    g.add_argument("--skip-bad", action="store_true", help="skip and count malformed records instead of stopping")
    g.add_argument("--max-requests", type=positive_int, help="stop after this many requests")


def configure_replay_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``kvsim replay`` arguments to ``p`` (and ``func=cmd_replay``)."""
    _add_reading_args(p)
    g = p.add_argument_group("caches")
    g.add_argument("--policy", type=_policy_list, default=["lru"],
                   help=f"eviction policy: {', '.join(policy_choices())}, a comma list, or all (default lru); "
                        f"{', '.join(OFFLINE_POLICIES)} knows the future (a first pass over the trace): a reference, "
                        f"not an online policy")
    cap = g.add_mutually_exclusive_group()
    cap.add_argument("--capacity-blocks", type=_int_list, metavar="N[,N...]", help="cache capacities in blocks")
    cap.add_argument("--capacity-tokens", type=_int_list, metavar="N[,N...]",
                     help="cache capacities in tokens (floor(N / block size) blocks)")
    g.add_argument("--curve", action="store_true",
                   help="LRU at every capacity from one pass (exact); with no capacity, a dense curve")
    o = p.add_argument_group("CPU / disk offload (tiers below each cache, the capacity above being the GPU's)")
    for tier, what in (("cpu", "CPU DRAM"), ("disk", "local disk, below the CPU tier")):
        sizes = o.add_mutually_exclusive_group()
        sizes.add_argument(f"--{tier}-capacity-blocks", dest=f"{tier}_blocks", type=nonnegative_int, metavar="N",
                           help=f"{what} tier of N blocks")
        sizes.add_argument(f"--{tier}-capacity-tokens", dest=f"{tier}_tokens", type=nonnegative_int, metavar="N",
                           help=f"{what} tier of N tokens (floor(N / block size) blocks)")
    o.add_argument("--offload-mode", choices=OFFLOAD_MODES,
                   help="inclusive (write-through, the default) or exclusive (GPU evictions move down)")
    add_engine_args(p)
    e = p.add_argument_group("the model and GPU (the engine's roofline step time and capacity; with --vllm, a hybrid "
                             "model's KV cache groups)")
    e.add_argument("--rate-scale", type=positive_float, default=1.0,
                   help="with --engine: replay the same requests this many times faster (default 1)")
    e.add_argument("--preset", help="model preset (default llama-3.1-8b); with --vllm, a hybrid model (sliding-window "
                                    "or Mamba layers) is replayed through vLLM's hybrid KV cache manager, the "
                                    "capacities being its pool of blocks")
    e.add_argument("--model-config", metavar="PATH", help="a Hugging Face config.json describing the model")
    e.add_argument("--gpu", help="GPU preset (default a100-40gb); its memory sizes the cache unless a capacity is given")
    e.add_argument("--tp", "--gpus", dest="gpus", type=positive_int, default=1, help="GPUs per instance (tensor parallel)")
    e.add_argument("--kv-dtype", default="bf16", help="KV cache dtype (default bf16)")
    e.add_argument("--weight-dtype", default="bf16", help="weight dtype (default bf16)")
    add_hybrid_cache_args(p, vllm=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)


def hybrid_layout(a):
    """``--vllm`` with a hybrid ``--preset`` / ``--model-config``: vLLM's KV cache groups for a block
    size (:func:`kvsim.hybrid_cache.vllm_layout`), else None (one pool, as without a model)."""
    model = None
    if a.vllm and (a.preset or a.model_config):
        from kvsim.cli.args import _model

        model = _model({"preset": a.preset, "model_config": a.model_config})
    if a.mamba_cache_mode is not None and not (model and any(g.kind == "mamba" for g in model.groups)):
        raise ValueError("--mamba-cache-mode applies with --vllm to a --preset or --model-config with Mamba / "
                         "linear-attention layers")
    if model is None or not model.is_hybrid:
        return None
    from functools import partial

    from analytic.specs import check_dtype
    from kvsim.hybrid_cache import vllm_layout

    check_dtype("kv-dtype", a.kv_dtype)
    return partial(vllm_layout, model, kv_dtype=a.kv_dtype, tp=a.gpus, mamba_cache_mode=a.mamba_cache_mode or "align")


def replay_tiers(a) -> dict:
    """The ``tiers`` / ``tier_tokens`` arguments of :func:`kvsim.replay.replay` from the offload flags."""
    blocks, tokens = (a.cpu_blocks, a.disk_blocks), (a.cpu_tokens, a.disk_tokens)
    if all(x is None for x in blocks + tokens):
        if a.offload_mode is not None:
            raise ValueError("--offload-mode: there is no tier below the GPU to apply to; give --cpu-capacity-blocks "
                             "or --cpu-capacity-tokens")
        return {}
    if any(x is not None for x in blocks) and any(x is not None for x in tokens):
        raise ValueError("give the CPU and disk tiers both in blocks or both in tokens")
    mode = {"mode": a.offload_mode} if a.offload_mode else {}
    if any(x is not None for x in tokens):
        return {"tiers": Tiers(**mode), "tier_tokens": tuple(x or 0 for x in tokens)}
    return {"tiers": Tiers(*(x or 0 for x in blocks), **mode)}


def replay_kwargs(a) -> dict:
    return dict(block_size=a.block_size, trace_block_size=a.trace_block_size, time_unit=a.time_unit,
                arrival_rate=a.arrival_rate, seed=a.seed, vllm=a.vllm, skip_bad=a.skip_bad,
                max_requests=a.max_requests)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def cmd_replay(a) -> int:
    if engine_asked(vars(a)):
        return _cmd_replay_engine(a)
    requests_out = output_file("--requests-out", a.requests_out)
    if a.curve and "lru" not in a.policy:
        raise ValueError("--curve computes LRU: use it with --policy lru (or a list with lru)")
    hits = [] if requests_out else None
    record = replay(a.traces, a.policy, a.capacity_blocks or [], capacities_tokens=a.capacity_tokens,
                    curve=a.curve, **replay_kwargs(a), **replay_tiers(a), per_request=hits, hybrid=hybrid_layout(a))
    if requests_out:
        from kvsim.cli.simulate import write_requests
        from kvsim.step_engine import EngineRequest

        rows = []
        for index, arrival, inp, out, hit in hits:
            r = EngineRequest(index, arrival, inp, out, ())
            r.hit_tokens = hit
            rows.append(r)
        write_requests(requests_out, rows)
    if a.json:
        print(json.dumps(record, indent=2))
        return 0
    files = record["inputs"]["traces"] or []
    tr = record["trace"]
    bs = record["inputs"]["block_size"]
    kinds = {}
    for info in files:
        key = (info["format"], info["block_size"], info.get("time_unit"))
        kinds[key] = kinds.get(key, 0) + 1
    desc = "; ".join(f"{n} {fmt} file{'s' if n > 1 else ''} ({b}-token hash blocks"
                     + (f", timestamps in {u})" if u else ")") for (fmt, b, u), n in kinds.items())
    print(f"traces    {desc}")
    conversations = sum(info["format"] == "conversation" for info in files)
    if conversations > 1:
        print("          " + (f"conversations start as a Poisson process, {a.arrival_rate:g}/s (seed {a.seed})"
                              if a.arrival_rate else
                              f"all {conversations} conversations start at t=0 (use --arrival-rate to stagger them)"))
    span = (tr["last_time_s"] - tr["first_time_s"]) if tr["requests"] else 0.0
    print(f"requests  {tr['requests']:,} over {span:,.0f} s; {tr['input_tokens']:,} input tokens in "
          f"{tr['listed_blocks']:,} blocks of {bs} tokens ({tr['distinct_blocks']:,} distinct)")
    print(f"semantics {record['inputs']['semantics']}")
    if "hybrid_cache" in record["inputs"]:
        from kvsim.hybrid_cache import HybridLayout

        print(f"cache     vLLM's hybrid KV cache manager: "
              f"{HybridLayout.from_dict(record['inputs']['hybrid_cache']).describe()}")
    print(f"ideal     block_hit_rate {_pct(record['ideal_block_hit_rate'])}, token_hit_rate "
          f"{_pct(record['ideal_token_hit_rate'])} (infinite cache)")
    if record["results"]:
        print()
        for line in result_table(record["results"]):
            print(line)
    print()
    rate = record["requests_per_s"]
    if record.get("belady_future_s") is not None:
        print(f"belady    future of {tr['listed_blocks']:,} listed blocks ({record['belady_future_bytes'] / 1e6:.2f} MB), "
              f"built in {record['belady_future_s']:.2f} s")
    if requests_out:
        print(f"requests: {requests_out}")
    print(f"replayed in {record['elapsed_s']:.2f} s" + (f" ({rate:,.0f} requests/s)" if rate else ""))
    _report_skips(record)
    return 0


def _cmd_replay_engine(a) -> int:
    """``kvsim replay --engine``: the trace's requests at their times through one step engine."""
    from analytic import presets
    from analytic.sizing import capacity_from_memory
    from analytic.specs import DEFAULT_ACTIVATION_RESERVE_GIB, DEFAULT_MEMORY_UTILIZATION, Hardware, check_dtype
    from kvsim.cli.args import DEFAULT_GPU, DEFAULT_PRESET, _model
    from kvsim.cli.simulate import engine_line, serving_lines, write_requests
    from kvsim.replay_engine import replay_engine

    requests_out = output_file("--requests-out", a.requests_out)
    if hybrid_layout(a) is not None:
        raise ValueError("--engine: the step engine keeps one KV cache group; leave out --vllm to replay a hybrid "
                         "model with the upper bound (every layer caching every token)")
    if a.policy != ["lru"]:
        raise ValueError(f"policy must be lru with --engine (vLLM's block pool) (got {','.join(a.policy)})")
    if a.curve:
        raise ValueError("--curve computes LRU hit rates without the engine: leave it out with --engine")
    sizes = [x for x in (a.capacity_blocks, a.capacity_tokens) if x]
    if sizes and len(sizes[0]) > 1:
        raise ValueError("--engine replays one capacity: give one value of --capacity-blocks or --capacity-tokens")
    check_dtype("kv-dtype", a.kv_dtype)
    check_dtype("weight-dtype", a.weight_dtype)
    model = _model({"preset": a.preset or (None if a.model_config else DEFAULT_PRESET), "model_config": a.model_config})
    gpu = a.gpu or DEFAULT_GPU
    memory = presets.gpu_memory_gib(gpu)
    spec = engine_options(vars(a)).spec(model, gpu, memory, a.gpus, a.weight_dtype, a.kv_dtype)
    hardware = Hardware(memory, a.gpus, DEFAULT_MEMORY_UTILIZATION, DEFAULT_ACTIVATION_RESERVE_GIB, gpu=gpu)

    def from_memory(bs: int) -> int:
        return capacity_from_memory(model, hardware, a.kv_dtype, a.weight_dtype, bs).capacity_blocks

    kwargs = replay_kwargs(a)
    del kwargs["vllm"]
    tiers = replay_tiers(a)
    if tiers:  # the tiers' load time per token: the model's KV bytes over the default bandwidths
        from dataclasses import replace

        from analytic.offload import DEFAULT_CPU_BANDWIDTH_GBPS, DEFAULT_DISK_BANDWIDTH_GBPS, GB
        from analytic.sizing import bytes_per_token

        per_token = bytes_per_token(model, a.kv_dtype)
        tiers["tiers"] = replace(tiers["tiers"], cpu_load_s_per_token=per_token / (DEFAULT_CPU_BANDWIDTH_GBPS * GB),
                                 disk_load_s_per_token=per_token / (DEFAULT_DISK_BANDWIDTH_GBPS * GB))
    record, served = replay_engine(a.traces, spec, a.capacity_blocks[0] if a.capacity_blocks else None,
                                   capacity_tokens=a.capacity_tokens[0] if a.capacity_tokens else None,
                                   rate_scale=a.rate_scale, keep_requests=True, capacity_for_block_size=from_memory,
                                   **kwargs, **tiers)
    if requests_out:
        write_requests(requests_out, served)
    if a.json:
        print(json.dumps(record, indent=2))
        return 0
    inp = record["inputs"]
    print(engine_line(spec))
    print(f"cache     {inp['capacity_blocks']:,} blocks of {inp['block_size']} tokens"
          + ("" if a.capacity_blocks or a.capacity_tokens else f" ({model.name} on {a.gpus} x {gpu})"))
    print(f"requests  {record['requests']:,}, arrivals {a.rate_scale:g}x as recorded; served in "
          f"{record['makespan_s']:,.1f} s of simulated time")
    print(f"hits      token_hit_rate {_pct(record['token_hit_rate'])}, request_hit_rate "
          f"{_pct(record['request_hit_rate'])} (under load, at first scheduling)"
          + (" = " + " + ".join(f"{name} {_pct(t['token_hit_rate'])}" for name, t in record["tiers"].items())
             if "tiers" in record else ""))
    for line in serving_lines([record], label=lambda r: "replay"):
        print(line)
    if requests_out:
        print(f"\nrequests: {requests_out}")
    print(f"replayed in {record['elapsed_s']:.2f} s")
    return 0


def _points(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} pts"


def result_table(results: list[dict]) -> list[str]:
    """The text table of replay results: per capacity (in the order given), the policies ranked
    by token hit rate, best first (a blank line between capacities when several policies ran),
    and each one's headroom to belady when belady ran."""
    width = max(6, *(len(r["policy"]) for r in results))
    headroom = any("headroom_to_belady" in r for r in results)
    tiered = "tiers" in results[0]
    by_capacity: dict[int, list[dict]] = {}
    for r in results:
        by_capacity.setdefault(r["capacity_blocks"], []).append(r)
    several = any(len(group) > 1 for group in by_capacity.values())
    lines = [f"{'policy':{width}} {'capacity_blocks':>15} {'capacity_tokens':>15} {'rank':>4} {'block_hit_rate':>14} "
             f"{'token_hit_rate':>14} {'request_hit_rate':>16} {'evictions':>11} {'oversized':>9}"
             + (f" {'headroom_to_belady':>18}" if headroom else "")
             + (f" {'token hits ' + ' + '.join(results[0]['tiers']):>24}" if tiered else "")]
    for k, group in enumerate(by_capacity.values()):
        if several and k:
            lines.append("")
        for r in sorted(group, key=lambda r: r.get("rank", 0)):  # stable: ties keep the policies' order
            lines.append(
                f"{r['policy']:{width}} {r['capacity_blocks']:>15,} {r['capacity_tokens']:>15,} {r.get('rank', 1):>4} "
                f"{_pct(r['block_hit_rate']):>14} {_pct(r['token_hit_rate']):>14} "
                f"{_pct(r['request_hit_rate']):>16} {r['evictions']:>11,} {r['oversized']:>9,}"
                + (f" {_points(r.get('headroom_to_belady')):>18}" if headroom else "")
                + (f" {' + '.join(_pct(t['token_hit_rate']) for t in r['tiers'].values()):>24}" if tiered else ""))
    return lines


def _report_skips(record: dict) -> None:
    if record["skipped"] or record["skipped_files"]:
        print(f"skipped {record['skipped']:,} malformed records and {record['skipped_files']:,} unreadable files, "
              f"e.g.:")
        for message in record.get("skip_examples", []):
            print(f"  {message}")


def configure_export_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``kvsim export-trace`` arguments to ``p`` (and ``func=cmd_export_trace``)."""
    _add_reading_args(p)
    p.add_argument("--format", default="libcachesim-csv", choices=["libcachesim-csv"],
                   help="output format (default libcachesim-csv: time,obj_id,obj_size,request)")
    p.add_argument("-o", "--output", required=True, help="file to write (replaced atomically)")
    p.add_argument("--bytes-per-token", type=positive_int,
                   help="write obj_size in bytes (block size x this) instead of tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export_trace)


def cmd_export_trace(a) -> int:
    output = output_file("--output", a.output)
    summary = export_libcachesim_csv(a.traces, output, bytes_per_token=a.bytes_per_token, **replay_kwargs(a))
    if a.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"wrote {summary['rows']:,} block accesses of {summary['requests']:,} requests to {summary['output']} "
          f"(obj_size {summary['obj_size']} {summary['obj_size_unit']})")
    print(f"libCacheSim: {summary['libcachesim_command']}")
    if summary["skipped"] or summary["skipped_files"]:
        print(f"skipped {summary['skipped']:,} malformed records and {summary['skipped_files']:,} unreadable files")
    return 0
