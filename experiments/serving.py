"""What prefix caching and CPU offload buy on real traces, served by the engine.

    .venv/bin/python experiments/serving.py [--traces ../shared/traces] [--out out/serving]

Each trace is replayed through one step engine (``kvsim replay --engine``; its requests at their
recorded times divided by a rate scale) three ways: prefix caching off, on, and on with 512 GiB
of CPU offload (inclusive, 25 GB/s). Printed per trace and rate: the token hit rate under load,
TTFT p50 and p99, throughput, and the largest rate that keeps TTFT p99 within ``--ttft-p99``
seconds (the sustainable rate for that target).

* Mooncake's conversation trace (12,031 requests over an hour, prompts of ~12k tokens in
  512-token blocks): Llama-3.1-8B on one H100.
* The agentic-coding sessions (``--agentic-requests`` of them in time order, sessions starting
  as a Poisson process): Llama-3.1-70B on eight H100s (TP 8): a single request reaches ~900k
  tokens, more than one GPU's cache.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsim.batch import write_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
SETUPS = {"off": ["--no-prefix-caching"], "on": [], "on + 512 GiB CPU": ["--cpu-capacity-tokens", "{cpu_tokens}"]}


def replay(argv: list[str]) -> dict:
    import json
    from contextlib import redirect_stdout

    from kvsim.cli.main import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["replay", *argv, "--json"])
    if code:
        raise SystemExit(f"serving: kvsim replay {' '.join(argv)} failed")
    return json.loads(out.getvalue())


def study(name: str, base: list[str], rates: list[float], rate_flag: str, cpu_tokens: int, target: float) -> list[dict]:
    rows = []
    for setup, extra in SETUPS.items():
        for rate in rates:
            argv = [*base, rate_flag, str(rate), *(a.format(cpu_tokens=cpu_tokens) for a in extra)]
            r = replay(argv)
            v = r["serving"]
            rows.append({"trace": name, "setup": setup, "rate": rate, "token_hit_rate": r["token_hit_rate"],
                         "ttft_p50_s": v["ttft_s"]["p50"], "ttft_p99_s": v["ttft_s"]["p99"],
                         "output_tokens_per_s": v["throughput"]["output_tokens_per_s"]["mean"],
                         "preemptions": v["preemptions"]})
            x = rows[-1]
            print(f"{name:9} {setup:16} {rate_flag[2:]} {rate:<6g} hits {x['token_hit_rate']:.3f}  TTFT p50 "
                  f"{x['ttft_p50_s']:8.3f} s  p99 {x['ttft_p99_s']:8.3f} s  {x['output_tokens_per_s']:7,.0f} out tok/s"
                  f"  {x['preemptions']:6,} preemptions", flush=True)
    for setup in SETUPS:
        ok = [x["rate"] for x in rows if x["setup"] == setup and x["ttft_p99_s"] <= target]
        print(f"{name:9} {setup:16} sustains TTFT p99 <= {target:g} s up to {rate_flag[2:]} "
              + (f"{max(ok):g}" if ok else f"< {min(rates):g}"))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", default=str(HERE.parents[1] / "shared" / "traces"))
    p.add_argument("--out", default="out/serving")
    p.add_argument("--ttft-p99", type=float, default=2.0, help="the TTFT p99 target, s (default 2)")
    p.add_argument("--agentic-requests", type=int, default=10000)
    a = p.parse_args()
    traces = Path(a.traces)
    mooncake = traces / "mooncake" / "conversation_trace.jsonl"
    agentic = traces / "agentic-coding"
    if not mooncake.exists():
        print(f"serving: no traces at {traces}", file=sys.stderr)
        return 2
    rows = study("mooncake", [str(mooncake), "--engine", "--gpu", "h100-80gb"], [0.2, 0.25, 0.3, 0.35, 0.4],
                 "--rate-scale", 512 * 2**30 // 131072, a.ttft_p99)
    if agentic.is_dir():
        rows += study("agentic", [str(agentic), "--engine", "--preset", "llama-3.1-70b", "--gpu", "h100-80gb",
                                  "--tp", "8", "--max-requests", str(a.agentic_requests)],
                      [0.01, 0.02, 0.04], "--arrival-rate", 512 * 2**30 // 327680, a.ttft_p99)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(Path(a.out) / "serving.csv", text.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
