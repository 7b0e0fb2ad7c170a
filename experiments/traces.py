"""Real traces: hit rate vs capacity, replayed or simulated, next to the models and the ideal.

    python experiments/traces.py [--traces ../shared/traces] [--out out/traces] [--quick]

* Mooncake traces (one request stream each): every request is replayed in time order through
  LRU and FIFO caches at a range of capacities; the models are the template-fed LRU and FIFO
  models (``analytic.empirical``) applied to the whole trace as one "conversation" that happens
  once over the trace's duration, i.e. characteristic-time caches over the real block accesses.
* Agentic-coding sessions (conversation files): sessions start as a Poisson process, each
  replaying one session drawn uniformly (``kvsim simulate --conversations``); the models are
  the same template-fed ones with that arrival rate. Sessions longer than
  ``--max-session-hours`` are left out: a steady state with multi-day sessions would need a
  warm-up of days.

Writes ``<trace>.csv`` (capacity, method, block/token hit rates) and ``<trace>.png`` per trace,
atomically, and prints one line per trace and policy with the model's error.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from analytic.empirical import (
    TemplateProfile,
    TemplateRequest,
    ceiling_from_templates,
    fifo_model_from_templates,
    lru_model_from_templates,
)
from analytic.specs import Workload
from kvsim.batch import write_atomic
from kvsim.engine import simulate
from kvsim.replay import replay, request_blocks
from kvsim.templates import load_templates, template_profile, template_source
from kvsim.traces import read_jsonl


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))  # model rows carry no CI
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue().encode())


def stream_profile(path: Path) -> tuple[TemplateProfile, float]:
    """The whole trace as one template (listed-blocks semantics, as ``kvsim replay``), and its
    duration: the model's arrival rate is one such "conversation" per duration."""
    requests, block_size = [], None
    for r in read_jsonl(path):
        block_size = r.block_size
        keys, max_hit, _, _ = request_blocks(r.block_ids, r.input_tokens, r.output_tokens, r.block_size,
                                             r.block_size, False)
        requests.append(TemplateRequest(r.time, keys, max_hit, r.input_tokens))
    return TemplateProfile([requests], block_size), requests[-1].time - requests[0].time


def mooncake(path: Path, capacities: list[int]) -> list[dict]:
    record = replay(str(path), ("lru", "fifo"), capacities, progress=False)
    profile, duration = stream_profile(path)
    rows = [{"capacity_blocks": r["capacity_blocks"], "method": f"replay-{r['policy']}",
             "block_hit_rate": r["block_hit_rate"], "token_hit_rate": r["token_hit_rate"]}
            for r in record["results"]]
    for c in capacities:
        for name, model in (("model-lru", lru_model_from_templates), ("model-fifo", fifo_model_from_templates)):
            rows.append({"capacity_blocks": c, "method": name, "block_hit_rate": None,
                         "token_hit_rate": model(profile, 1.0 / duration, c).token_hit_rate})
    ideal = ceiling_from_templates(profile)
    rows.append({"capacity_blocks": None, "method": "ideal", "block_hit_rate": record["ideal_block_hit_rate"],
                 "token_hit_rate": record["ideal_token_hit_rate"]})
    assert abs(ideal.token_hit_rate - record["ideal_token_hit_rate"]) < 1e-9  # same blocks, same semantics
    return rows


def agentic(folder: Path, capacities_tokens: list[int], max_hours: float, sessions: int, rate: float,
            replications: int, seed: int) -> tuple[list[dict], dict]:
    files = sorted(folder.glob("*.json*"))
    templates = load_templates([str(f) for f in files[: sessions * 3]])
    keep = [t for t in templates.templates if t.times[-1] - t.times[0] <= max_hours * 3600][:sessions]
    templates.templates = keep
    bs = templates.block_size
    source, info = template_source(templates)
    profile = template_profile(templates)
    longest = max(t.times[-1] - t.times[0] for t in keep)
    warmup = 2 * longest
    window = 2 * longest
    rows = []
    for tokens in capacities_tokens:
        c = tokens // bs
        for name, model in (("model-lru", lru_model_from_templates), ("model-fifo", fifo_model_from_templates)):
            rows.append({"capacity_blocks": c, "method": name, "block_hit_rate": None,
                         "token_hit_rate": model(profile, rate, c).token_hit_rate})
        for policy in ("lru", "fifo"):
            r = simulate(Workload(arrival_rate=rate), c, policy, block_size=bs, duration=warmup + window,
                         warmup=warmup, replications=replications, seed=seed, source=source, progress=False)
            lo, hi = r.token_hit_rate.ci95 or (np.nan, np.nan)
            rows.append({"capacity_blocks": c, "method": f"simulated-{policy}", "block_hit_rate": r.block_hit_rate.mean,
                         "token_hit_rate": r.token_hit_rate.mean, "ci_lo": lo, "ci_hi": hi})
    ideal = ceiling_from_templates(profile)
    rows.append({"capacity_blocks": None, "method": "ideal", "block_hit_rate": None,
                 "token_hit_rate": ideal.token_hit_rate})
    return rows, {"templates": len(keep), "block_size": bs, "arrival_rate": rate, "warmup_s": warmup,
                  "window_s": window, "longest_session_s": longest}


def figure(path: Path, rows: list[dict], title: str, block_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"replay-lru": ("C0", "o", "replayed LRU"), "replay-fifo": ("C1", "s", "replayed FIFO"),
              "simulated-lru": ("C0", "o", "simulated LRU (95% CI)"),
              "simulated-fifo": ("C1", "s", "simulated FIFO (95% CI)")}
    for method, (color, marker, label) in styles.items():
        sel = [r for r in rows if r["method"] == method]
        if not sel:
            continue
        x = [r["capacity_blocks"] * block_size / 1e6 for r in sel]
        y = [r["token_hit_rate"] for r in sel]
        if "ci_lo" in sel[0] and not np.isnan(sel[0]["ci_lo"]):
            err = [[r["token_hit_rate"] - r["ci_lo"] for r in sel], [r["ci_hi"] - r["token_hit_rate"] for r in sel]]
            ax.errorbar(x, y, yerr=err, fmt=marker, color=color, label=label, ms=5, capsize=2)
        else:
            ax.plot(x, y, marker, color=color, label=label, ms=5)
    for method, style, label in (("model-lru", "C0-", "LRU model (from the trace)"),
                                 ("model-fifo", "C1--", "FIFO model (from the trace)")):
        model = [r for r in rows if r["method"] == method]
        ax.plot([r["capacity_blocks"] * block_size / 1e6 for r in model], [r["token_hit_rate"] for r in model],
                style, label=label)
    ideal = [r for r in rows if r["method"] == "ideal"][0]["token_hit_rate"]
    ax.axhline(ideal, color="grey", ls="--", lw=1, label=f"ideal (infinite cache) {ideal:.1%}")
    ax.set_xscale("log")
    ax.set_xlabel("cache capacity (million tokens)")
    ax.set_ylabel("token hit rate")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def summary_line(name: str, rows: list[dict], reference: str) -> str:
    policy = reference.split("-")[1]
    model = {r["capacity_blocks"]: r["token_hit_rate"] for r in rows if r["method"] == f"model-{policy}"}
    ref = {r["capacity_blocks"]: r["token_hit_rate"] for r in rows if r["method"] == reference}
    errs = [abs(model[c] - ref[c]) for c in ref]
    signed = [model[c] - ref[c] for c in ref]
    return (f"{name}: model vs {reference}: mean_abs_err={np.mean(errs):.4f} max_abs_err={np.max(errs):.4f} "
            f"mean_signed_err={np.mean(signed):+.4f} n={len(errs)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "traces"
    ap.add_argument("--traces", type=Path, default=default, help=f"folder of the shared traces (default {default})")
    ap.add_argument("--out", type=Path, default=Path("out/traces"))
    ap.add_argument("--quick", action="store_true", help="fewer capacities and sessions")
    ap.add_argument("--sessions", type=int, default=40, help="agentic sessions used as templates (default 40)")
    ap.add_argument("--max-session-hours", type=float, default=3.0)
    ap.add_argument("--agentic-rate", type=float, default=0.01, help="sessions started per second (default 0.01)")
    ap.add_argument("--replications", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.traces.is_dir():
        print(f"traces: error: no trace folder at {args.traces} (give --traces)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name in ("conversation_trace", "synthetic_trace"):
        path = args.traces / "mooncake" / f"{name}.jsonl"
        if not path.exists():
            print(f"traces: {path} missing, skipped", file=sys.stderr)
            continue
        caps = [int(c) for c in np.geomspace(500, 200_000, 6 if args.quick else 14)]
        rows = mooncake(path, caps)
        write_csv(args.out / f"mooncake-{name}.csv", rows)
        figure(args.out / f"mooncake-{name}.png", rows, f"Mooncake {name.replace('_', ' ')} (512-token blocks)", 512)
        for reference in ("replay-lru", "replay-fifo"):
            lines.append(summary_line(f"mooncake {name}", rows, reference))
            print(lines[-1], flush=True)
    folder = args.traces / "agentic-coding"
    if folder.is_dir():
        sessions = 12 if args.quick else args.sessions
        caps = [int(c) for c in np.geomspace(2e5, 2e7, 4 if args.quick else 8)]
        rows, info = agentic(folder, caps, args.max_session_hours, sessions, args.agentic_rate,
                             1 if args.quick else args.replications, args.seed)
        write_csv(args.out / "agentic-coding.csv", rows)
        figure(args.out / "agentic-coding.png", rows,
               f"agentic coding: {info['templates']} sessions (<= {args.max_session_hours:g} h) started at "
               f"{info['arrival_rate']:g}/s (64-token blocks)", info["block_size"])
        for reference in ("simulated-lru", "simulated-fifo"):
            lines.append(summary_line("agentic-coding", rows, reference) + f" ({info})")
            print(lines[-1], flush=True)
    write_atomic(args.out / "summary.txt", ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
