"""``kvsim sweep GRID.toml --out DIR``: one command over the cross product of a grid of its flags.

The grid file names a ``command`` (calc, simulate, replay or plan), a ``[base]`` table and a
``[grid]`` table; keys are the command's long flags without the dashes (``arrival-rate``), plus
``traces`` for replay's trace paths. Every grid point becomes that command's argument list,
parsed by the command's own parser and made into a scenario by the command line's own function,
so a point gives exactly what ``kvsim COMMAND ...`` gives. All points are parsed (and their
scenarios built) before any work starts: a bad grid is one line naming the key.

Results: ``DIR/results.csv``, one row per grid point and method (or policy, router, capacity),
rewritten atomically (temporary file, rename) whenever a point finishes, so an interrupted sweep
loses nothing and a rerun skips the points already there. ``DIR/sweep.json`` records the
command and base, so that a rerun with another base is refused rather than mixed in.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kvsim.batch import executor, write_atomic
from kvsim.cli import calc, plan, simulate
from kvsim.cli.args import scenario_from_values, simulation_from_values
from kvsim.cli.parser import Parser, UsageError, check_finite, flag_names, output_folder
from kvsim.cli.replay import configure_replay_parser, replay_kwargs
from kvsim.replay import replay
from kvsim.traces import trace_files

COMMANDS = ("calc", "simulate", "replay", "plan")
ESTIMATE = ("mean", "ci_low", "ci_high")  # a simulated figure's columns
COLUMNS = {
    "calc": ["method", "token_hit_rate", "request_hit_rate"],
    "simulate": ["method", "router", *(f"{m}_{e}" for m in ("token_hit_rate", "request_hit_rate", "block_hit_rate")
                                       for e in ESTIMATE), "requests_measured"],
    "replay": ["method", "capacity_blocks", "token_hit_rate", "request_hit_rate", "block_hit_rate"],
    "plan": ["method", "capacity_blocks", "capacity_tokens", "kv_cache_gib", "token_hit_rate", "request_hit_rate"],
}
POSITIONAL = {"replay": "traces"}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", metavar="GRID.toml", help="the grid: command, [base] and [grid] tables")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of results.csv (a rerun resumes there)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on an existing Dask cluster (the dask extra)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd)


def command_parser(command: str) -> Parser:
    p = Parser(prog=f"kvsim {command}")
    if command == "replay":
        configure_replay_parser(p)
    else:
        {"calc": calc, "simulate": simulate, "plan": plan}[command].configure(p)
    return p


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Grid:
    command: str
    base: dict
    keys: tuple[str, ...]
    points: tuple[tuple, ...]  # values of ``keys``, in the order of the cross product

    def argv(self, point: tuple) -> list[str]:
        return to_argv(self.command, {**self.base, **dict(zip(self.keys, point))})


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s[2:]: a for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def to_argv(command: str, values: dict) -> list[str]:
    """The command line of one grid point (its flags in the grid file's order)."""
    argv = []
    for key, value in values.items():
        if key == POSITIONAL.get(command):
            argv[:0] = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif value is True:
            argv.append(f"--{key}")
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def load_grid(path: str) -> Grid:
    """Read and check a grid file: every point parses and builds, before any work starts."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not a valid TOML file ({e})") from None
    unknown = set(spec) - {"command", "base", "grid"}
    if unknown:
        raise UsageError(f"{path}: unknown table or key {sorted(unknown)[0]!r} (allowed: command, base, grid)")
    command = spec.get("command")
    if command not in COMMANDS:
        raise UsageError(f"command must be one of {', '.join(COMMANDS)} (got {command!r})")
    base, grid = spec.get("base", {}), spec.get("grid", {})
    for name, table in (("base", base), ("grid", grid)):
        if not isinstance(table, dict):
            raise UsageError(f"{name} must be a table of flags")
    if not grid:
        raise UsageError("grid: give at least one key with a list of values")
    parser = command_parser(command)
    flags = _flags(parser)
    allowed = set(flags) | ({POSITIONAL[command]} if command in POSITIONAL else set())
    for name, table in (("base", base), ("grid", grid)):
        for key in table:
            if key not in allowed:
                raise UsageError(f"{name}.{key}: unknown key for kvsim {command} (its flags without the dashes, "
                                 f"e.g. arrival-rate; see kvsim {command} --help)")
            if key in ("json", "figure"):
                raise UsageError(f"{name}.{key}: output flags do not apply to a sweep")
    overlap = set(base) & set(grid)
    if overlap:
        raise UsageError(f"grid.{sorted(overlap)[0]}: given in both [base] and [grid]")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise UsageError(f"grid.{key} must be a list of values (got {values!r})")
        if not values:
            raise UsageError(f"grid.{key}: the list is empty")
        for value in values:
            if isinstance(value, (dict, list)):
                raise UsageError(f"grid.{key}: each value must be a number, a string or a boolean (got {value!r})")
    for name, table in (("base", base), ("grid", grid)):
        for key, value in table.items():
            switch = key in flags and flags[key].nargs == 0  # an on/off flag (--json, --vllm, --curve)
            for v in (value if name == "grid" else [value]):
                if isinstance(v, bool) and not switch:  # false would drop the flag: its default, silently
                    raise UsageError(f"{name}.{key} must be a value for --{key}, not a boolean (got {v!r})")
    keys = tuple(grid)
    points = tuple(itertools.product(*(grid[k] for k in keys)))
    g = Grid(command, base, keys, points)
    for point in points:
        try:
            check_point(g, point)
        except (UsageError, ValueError) as e:
            where = ", ".join(f"{k}={v}" for k, v in zip(keys, point))
            raise UsageError(f"grid point {where}: {e}") from None
    return g


def check_point(g: Grid, point: tuple) -> None:
    parser = command_parser(g.command)
    a = parser.parse_args(g.argv(point))
    check_finite(vars(a), flag_names(parser))
    if g.command == "replay":
        trace_files(a.traces)  # each trace path names files (not read yet: that is the work)
    else:
        scenario = scenario_from_values(vars(a))
        scenario.capacity()
        if g.command == "simulate":
            simulate.check_size(scenario, simulation_from_values(vars(a)))


# ----------------------------------------------------------------------------- one point


def _estimate(e: dict) -> list:
    lo, hi = e["ci95"] if e.get("ci95") else (None, None)
    return [e["mean"], lo, hi]


def run_point(command: str, argv: list[str]) -> list[dict]:
    """The result rows of one grid point (run in a worker process)."""
    a = command_parser(command).parse_args(argv)
    if command == "replay":
        record = replay(a.traces, a.policy, a.capacity_blocks or [], capacities_tokens=a.capacity_tokens,
                        curve=a.curve, **replay_kwargs(a))
        return [{"method": r["policy"], "capacity_blocks": r["capacity_blocks"], "token_hit_rate": r["token_hit_rate"],
                 "request_hit_rate": r["request_hit_rate"], "block_hit_rate": r["block_hit_rate"]}
                for r in record["results"]]
    scenario = scenario_from_values(vars(a))
    if command == "calc":
        record = calc.calc_record(scenario, a.method)
        return [{"method": name, "token_hit_rate": m["token_hit_rate"], "request_hit_rate": m["request_hit_rate"]}
                for name, m in record["methods"].items()]
    if command == "plan":
        check = simulation_from_values(vars(a)) if a.check else None
        record, _ = plan.plan_record(scenario, a.target_hit_rate, a.metric, a.method, check)
        if "plans" in record:  # a fleet: the cache per instance under each router
            return [{"method": f"{a.method}/{p['router']}", "capacity_blocks": p.get("capacity_blocks_per_instance"),
                     "capacity_tokens": p.get("capacity_tokens_per_instance"),
                     "kv_cache_gib": p.get("kv_cache_gib_per_instance"), "token_hit_rate": p.get("token_hit_rate")}
                    for p in record["plans"]]
        p = record["plan"]
        at = next(r for r in record["curve"] if r["capacity_blocks"] == p["capacity_blocks"])
        return [{"method": a.method, "capacity_blocks": p["capacity_blocks"], "capacity_tokens": p["capacity_tokens"],
                 "kv_cache_gib": p["kv_cache_gib"], "token_hit_rate": at["token_hit_rate"],
                 "request_hit_rate": at["request_hit_rate"]}]
    record, _ = simulate.simulate_record(scenario, a.policy, simulation_from_values(vars(a)), progress=False)
    rows = []
    for r in record.get("results", [record]):
        row = {"method": r["policy"], "router": r.get("router"), "requests_measured": r.get("requests_measured")}
        for metric in ("token_hit_rate", "request_hit_rate", "block_hit_rate"):
            row.update(zip((f"{metric}_{e}" for e in ESTIMATE), _estimate(r[metric])))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- results


def _cell(value) -> str:
    """A CSV cell that reads back as the same value: repr for floats (exact), '' for None."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _point_key(point) -> tuple[str, ...]:
    return tuple(_cell(v) for v in point)


def read_finished(path: Path, keys: tuple[str, ...]) -> dict[tuple, list[list[str]]]:
    """The rows of results.csv by grid point (its key columns as text)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:len(keys)]) != keys:
            raise UsageError(f"--out: {path} holds the results of another grid (columns {header}); "
                             "use another --out folder")
        done: dict[tuple, list[list[str]]] = {}
        for row in reader:
            done.setdefault(tuple(row[:len(keys)]), []).append(row)
    return done


def write_results(path: Path, header: list[str], grid: Grid, done: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for point in grid.points:
        writer.writerows(done.get(_point_key(point), []))
    write_atomic(path, buf.getvalue())


def cmd(a) -> int:
    output_folder("--out", a.out)
    grid = load_grid(a.grid)
    if a.workers is not None and a.workers < 1:
        raise UsageError(f"workers must be a whole number >= 1 (got {a.workers})")
    out = Path(a.out)
    meta = {"command": grid.command, "base": grid.base, "grid_keys": list(grid.keys)}
    meta_path, results = out / "sweep.json", out / "results.csv"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise UsageError(f"--out: {out} holds a sweep of another command or base ({meta_path}); use another --out "
                         "folder")
    header = [*grid.keys, *COLUMNS[grid.command]]
    done = read_finished(results, grid.keys)
    todo = [p for p in grid.points if _point_key(p) not in done]
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    if todo:
        from concurrent.futures import as_completed

        from tqdm import tqdm

        with executor(a.workers, a.dask) as pool, tqdm(total=len(todo), desc=f"sweep {grid.command}", file=sys.stderr,
                                                     disable=True if a.no_progress else None) as bar:
            futures = {pool.submit(run_point, grid.command, grid.argv(p)): p for p in todo}
            for future in as_completed(futures):
                point = futures[future]
                rows = future.result()
                done[_point_key(point)] = [[*_point_key(point), *(_cell(r.get(c)) for c in COLUMNS[grid.command])]
                                           for r in rows]
                write_results(results, header, grid, done)
                bar.update()
    elif not results.exists():
        write_results(results, header, grid, done)
    rows = sum(len(done.get(_point_key(p), [])) for p in grid.points)
    print(f"sweep: kvsim {grid.command} over {len(grid.points)} points ({' x '.join(grid.keys)}): "
          f"{len(todo)} run, {len(grid.points) - len(todo)} already done; {rows} rows in {results}")
    return 0
