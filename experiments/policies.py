"""Policy study: every eviction policy over a capacity sweep, on real traces and on the synthetic
multi-turn workload, with the headroom to the clairvoyant ``belady`` reference.

    python experiments/policies.py [--traces ../shared/traces] [--out out/policies] [--quick]
                                   [--workers N] [--figure docs/policies.png]

* **Traces** (``kvsim replay``, every policy of ``kvsim.replay.policy_choices()``, belady
  included): the Mooncake conversation and synthetic traces (512-token blocks, listed-blocks
  semantics), and the agentic-coding sessions (64-token blocks) started as a Poisson process of
  ``--agentic-rate`` sessions/s, each file once.
* **Synthetic** (``kvsim simulate``, the online policies only: belady needs the future, which a
  simulation does not have): the chat workload of ``experiments/fleet.py`` (2 conversations/s,
  geometric turns of mean 6, exponential think time of 60 s, lognormal 200 + 300 tokens per
  turn, a 1000-token system prompt), at shares of the capacity where LRU reaches the
  no-eviction ceiling (LRU model).

Writes ``policies.csv`` (one row per workload x policy x capacity: token and block hit rates,
rank, headroom to belady), ``summary.txt`` and ``policies.png`` to the output folder and prints
the summary. Every finished workload (a trace's whole sweep, or one simulated capacity) is written
atomically to ``<out>/points/``: an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np

from analytic.distributions import ThinkTime, TokenCount, TurnCount
from analytic.plan import capacity_for_target
from analytic.specs import Workload
from analytic.ttl import no_eviction_ceiling
from kvsim.batch import executor, write_atomic, write_figure
from kvsim.cli.parser import UsageError, output_file, output_folder
from kvsim.policies import POLICIES
from kvsim.replay import policy_choices

BLOCK_SIZE = 16
CHAT = Workload(arrival_rate=2.0, turns=TurnCount("geometric", 6), think_time=ThinkTime("exp", 60.0),
                input_tokens=TokenCount("lognormal", 200, 1.0), output_tokens=TokenCount("lognormal", 300, 1.0),
                system_prompt_tokens=1000)
# Shares of the capacity at which the LRU model reaches 99% of the no-eviction ceiling.
CHAT_SHARES = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def trace_point(name: str, paths: list[str], capacities: list[int], arrival_rate: float | None) -> dict:
    from kvsim.replay import replay

    record = replay(paths, "all", capacities, arrival_rate=arrival_rate, progress=False)
    rows = [{"workload": name, "policy": r["policy"], "capacity_blocks": r["capacity_blocks"],
             "capacity_tokens": r["capacity_tokens"], "token_hit_rate": r["token_hit_rate"],
             "block_hit_rate": r["block_hit_rate"], "rank": r["rank"],
             "headroom_to_belady": r.get("headroom_to_belady")} for r in record["results"]]
    return {"rows": rows, "ideal_token_hit_rate": record["ideal_token_hit_rate"],
            "requests": record["results"][0]["requests"] if record["results"] else 0}


def synthetic_point(capacity: int, replications: int, seed: int) -> dict:
    from kvsim.engine import simulate

    rows = []
    for policy in POLICIES:
        r = simulate(CHAT, capacity, policy, block_size=BLOCK_SIZE, replications=replications, seed=seed,
                     progress=False)
        lo, hi = r.token_hit_rate.ci95 or (float("nan"), float("nan"))
        rows.append({"workload": "synthetic chat", "policy": policy, "capacity_blocks": capacity,
                     "capacity_tokens": capacity * BLOCK_SIZE, "token_hit_rate": r.token_hit_rate.mean,
                     "block_hit_rate": r.block_hit_rate.mean, "ci_lo": lo, "ci_hi": hi})
    ranked = sorted({row["token_hit_rate"] for row in rows}, reverse=True)
    for row in rows:
        row["rank"] = 1 + ranked.index(row["token_hit_rate"])
    return {"rows": rows}


def run(jobs: dict[str, tuple], out: Path, workers: int) -> dict[str, dict]:
    """Run the jobs not already in ``out/points`` (name -> (function, args)); return all results."""
    folder = out / "points"
    done = {}
    todo = {}
    for name, job in jobs.items():
        path = folder / f"{name}.json"
        if path.exists():
            done[name] = json.loads(path.read_text())
        else:
            todo[name] = job
    if todo:
        with executor(workers) as pool:
            futures = {pool.submit(fn, *args): name for name, (fn, args) in todo.items()}
            for future in as_completed(futures):
                name = futures[future]
                done[name] = future.result()
                write_atomic(folder / f"{name}.json", json.dumps(done[name]))
                print(f"  done: {name}", file=sys.stderr, flush=True)
    return {name: done[name] for name in jobs}


def summary(results: dict[str, dict]) -> list[str]:
    lines = []
    by_workload: dict[str, list[dict]] = {}
    for result in results.values():
        for row in result["rows"]:
            by_workload.setdefault(row["workload"], []).append(row)
    for workload, rows in by_workload.items():
        policies = list(dict.fromkeys(r["policy"] for r in rows))
        capacities = sorted({r["capacity_blocks"] for r in rows})
        lines.append(f"{workload}: token hit rate by capacity (blocks); rank in brackets")
        lines.append(f"{'policy':10}" + "".join(f"{c:>16,}" for c in capacities))
        cell = {(r["policy"], r["capacity_blocks"]): r for r in rows}
        for p in policies:
            lines.append(f"{p:10}" + "".join(f"{cell[p, c]['token_hit_rate']:>11.4f} ({cell[p, c]['rank']})"
                                            for c in capacities))
        if "belady" in policies:
            online = [p for p in policies if p != "belady"]
            mean = {p: np.mean([cell[p, c]["headroom_to_belady"] for c in capacities]) for p in online}
            lines.append("headroom to belady, mean over capacities (points): "
                         + ", ".join(f"{p} {100 * mean[p]:.2f}" for p in sorted(online, key=mean.get)))
        online = [p for p in policies if p != "belady"]
        best = {c: max(cell[p, c]["token_hit_rate"] for p in online) for c in capacities}
        leaders = {c: [p for p in online if cell[p, c]["token_hit_rate"] == best[c]] for c in capacities}
        lines.append("best online policy per capacity: "
                     + ", ".join(f"{c:,} {'all tie' if len(leaders[c]) == len(online) else '/'.join(leaders[c])}"
                                 for c in capacities))
        lru_gap = [best[c] - cell["lru", c]["token_hit_rate"] for c in capacities]
        lines.append(f"best online policy over LRU: mean {100 * np.mean(lru_gap):.2f} points, "
                     f"max {100 * np.max(lru_gap):.2f}")
        lines.append("")
    return lines


def figure(path: Path, results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_workload: dict[str, list[dict]] = {}
    for result in results.values():
        for row in result["rows"]:
            by_workload.setdefault(row["workload"], []).append(row)
    fig, axes = plt.subplots(1, len(by_workload), figsize=(4.2 * len(by_workload), 3.8), squeeze=False)
    policies = list(policy_choices())
    colours = dict(zip(policies, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    for ax, (workload, rows) in zip(axes[0], by_workload.items()):
        for p in policies:
            sel = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["capacity_blocks"])
            if not sel:
                continue
            style = dict(color="black", ls="--", lw=1.5) if p == "belady" else dict(color=colours[p], lw=1.2)
            ax.plot([r["capacity_tokens"] / 1e6 for r in sel], [r["token_hit_rate"] for r in sel],
                    marker="." if p != "belady" else None, label=p, **style)
        ax.set_xscale("log")
        ax.set_xlabel("cache capacity (million tokens)")
        ax.set_title(workload, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("token hit rate")
    axes[0][0].legend(fontsize=7)  # the first panel is a trace: it has belady too
    fig.tight_layout()
    write_figure(path, fig, dpi=70)


def write_csv(path: Path, results: dict[str, dict]) -> None:
    rows = [row for result in results.values() for row in result["rows"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", type=Path, default=default, help=f"folder of the shared traces (default {default})")
    ap.add_argument("--out", default="out/policies")
    ap.add_argument("--quick", action="store_true", help="fewer capacities, sessions and replications")
    ap.add_argument("--workers", type=int, default=None, help="local worker processes (default one per core)")
    ap.add_argument("--sessions", type=int, default=40, help="agentic sessions replayed (default 40)")
    ap.add_argument("--agentic-rate", type=float, default=0.01, help="agentic sessions started per second")
    ap.add_argument("--replications", type=int, default=None, help="synthetic: per capacity (default 3, quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", help="also draw the figure here (e.g. docs/policies.png)")
    args = ap.parse_args(argv)
    try:  # output paths checked before any work (kvsim.cli.parser)
        args.out = Path(output_folder("--out", args.out))
        args.figure = output_file("--figure", args.figure, figure=True)
    except UsageError as e:
        print(f"policies: error: {e}", file=sys.stderr)
        return 2
    replications = args.replications or (1 if args.quick else 3)
    points = 5 if args.quick else 9
    jobs: dict[str, tuple] = {}
    for name in ("conversation_trace", "synthetic_trace"):
        path = args.traces / "mooncake" / f"{name}.jsonl"
        if path.exists():
            caps = [int(c) for c in np.geomspace(1000, 200_000, points)]
            jobs[f"mooncake-{name}"] = (trace_point, (f"mooncake {name.replace('_', ' ')}", [str(path)], caps, None))
        else:
            print(f"policies: {path} missing, skipped", file=sys.stderr)
    folder = args.traces / "agentic-coding"
    if folder.is_dir():
        files = sorted(str(f) for f in folder.glob("*.json*"))[: 12 if args.quick else args.sessions]
        caps = [int(c) for c in np.geomspace(2e5, 2e7, points) // 64]
        jobs["agentic"] = (trace_point, (f"agentic coding ({len(files)} sessions)", files, caps, args.agentic_rate))
    ceiling = no_eviction_ceiling(CHAT, BLOCK_SIZE).token_hit_rate
    full = capacity_for_target(CHAT, 0.99 * ceiling, "token", BLOCK_SIZE)
    shares = CHAT_SHARES[::2] if args.quick else CHAT_SHARES
    for share in shares:
        capacity = max(1, int(share * full))
        jobs[f"synthetic-{capacity}"] = (synthetic_point, (capacity, replications, args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(jobs, args.out, args.workers)
    lines = summary(results)
    text = "\n".join(lines)
    print(text)
    write_atomic(args.out / "summary.txt", text + "\n")
    write_csv(args.out / "policies.csv", results)
    figure(args.out / "policies.png", results)
    if args.figure:
        figure(Path(args.figure), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
