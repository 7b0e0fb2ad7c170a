"""``kvsim compare``: the models and the simulation side by side (the main job), and its figure."""

from __future__ import annotations

import argparse
import json

from analytic.scenario import Scenario, inputs_summary
from kvsim.cli.args import (SimulationSettings, add_json_arg, add_scenario_args, add_simulation_args,
                            scenario_from_values, simulation_from_values, synthetic_only)
from kvsim.cli.parser import output_file
from kvsim.cli.text import ci, describe, fmt


def configure(p: argparse.ArgumentParser) -> None:
    add_scenario_args(p)
    add_simulation_args(p)
    p.add_argument("--figure", metavar="PNG", help="also draw hit rate vs GPU memory to this file")
    add_json_arg(p)
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    figure = output_file("--figure", a.figure, figure=True)
    scenario = scenario_from_values(vars(a))
    record, lines = compare_record(scenario, simulation_from_values(vars(a)), figure=figure)
    if a.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(lines))
    return 0


def compare_record(scenario: Scenario, settings: SimulationSettings, figure: str | None = None):
    """The comparison's record and text lines; ``figure`` is a path checked by
    :func:`~kvsim.cli.parser.output_file` (the one written and printed)."""
    from kvsim.compare import SIM_POLICIES, compare, memory_figure
    from kvsim.engine import run_window

    s = scenario
    synthetic_only(s, "kvsim compare works on synthetic workloads only; use kvsim calc or kvsim simulate with "
                      "templates")
    capacity = s.capacity()
    size_gb = s.weights_gib()
    duration, warmup = run_window(s.workload, settings.duration, settings.warmup, None)
    sim = dict(duration=duration, warmup=warmup, replications=settings.replications, seed=settings.seed)
    result = compare(s.model, capacity, s.workload, kv_dtype=s.kv_dtype, model_size_gb=size_gb,
                     max_events=settings.max_events, **sim)
    if figure:
        memory_figure(figure, s.model, capacity, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype,
                      hardware=s.hardware, model_size_gb=size_gb, max_events=settings.max_events, **sim)
    record = {"inputs": inputs_summary(s.model, s.workload, kv_dtype=s.kv_dtype, weight_dtype=s.weight_dtype, **sim),
              **result}
    lines = describe(s.model, result["memory"], s.workload, s.kv_dtype)
    lines.append(f"simulation: {duration:g} s of arrivals, warm-up {warmup:g} s, {settings.replications} "
                 f"replications, seed {settings.seed}; mean [95% CI]\n")
    lines.append(f"{'':16} {'token_hit_rate':>26} {'request_hit_rate':>26}")
    for name, m in result["methods"].items():
        label = "seed model" if name == "seed" else f"{name.upper()} model"
        lines.append(f"{label:16} {fmt(m['token_hit_rate']):>26} {fmt(m['request_hit_rate']):>26}")
    for policy in SIM_POLICIES:
        r = result["simulated"][policy]
        lines.append(f"{policy.upper() + ' simulated':16} {ci(r['token_hit_rate']):>26} "
                     f"{ci(r['request_hit_rate']):>26}")
    lines.append("\nThe seed model sizes its own cache (1.2 x weights, no utilisation fraction): "
                 f"{result['methods']['seed']['max_cached_tokens']:,} tokens.")
    if figure:
        lines.append(f"figure: {figure}")
    return record, lines
