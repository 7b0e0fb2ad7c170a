"""kvsim's step engine against vLLM's own scheduler, request by request and step by step.

Needs the optional `engines` environment (vLLM 0.33 on CPU, no GPU): make it once with
``../shared/engines/setup.sh`` (about 8 minutes), then

    .venv/bin/python experiments/engine_parity.py [--engines-python /tmp/kvengines/bin/python]

Three workloads (light load; saturated, with preemptions; a shared system prompt with long
prompts that need chunking) are served by vLLM's ``Scheduler`` (experiments/vllm_driver.py, in
the engines' python) and by :class:`kvsim.step_engine.EngineInstance`, with the same arrivals,
token ids and linear step time. Printed: per workload, how many requests have an identical hit,
first scheduling, TTFT, end-to-end time and preemptions, and how many steps schedule identical
tokens; the first differences, if any.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytic.serving import EngineSpec  # noqa: E402
from analytic.steptime import LinearStepTime  # noqa: E402
from kvsim.engine import Counters  # noqa: E402
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats  # noqa: E402

HERE = Path(__file__).resolve().parent
STEP = (0.005, 2e-5, 1e-8)  # s, s per token, s per context token: an 8B model on one GPU, roughly


def workloads(seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)

    def requests(n, rate, prompt, output, system=0):
        t, out = 0.0, []
        system_tokens = list(range(1, system + 1))
        for i in range(n):
            t += rng.exponential(1 / rate)
            p = int(rng.integers(*prompt))
            own = [10_000_000 * (i + 1) + j for j in range(p)]
            out.append({"arrival": round(t, 6), "tokens": system_tokens + own, "max_tokens": int(rng.integers(*output))})
        # repeat a few prompts verbatim (prefix hits without a system prompt)
        for k in range(0, n, 7):
            later = out[min(n - 1, k + 3)]
            later["tokens"] = list(out[k]["tokens"])
        return out

    base = {"block_size": 16, "prefix_caching": True, "step_time": list(STEP)}
    return {
        "light": {**base, "num_blocks": 10_000, "max_num_seqs": 64, "max_num_batched_tokens": 2048,
                  "requests": requests(40, 2.0, (50, 600), (5, 80))},
        "saturated": {**base, "num_blocks": 160, "max_num_seqs": 32, "max_num_batched_tokens": 1024,
                      "requests": requests(60, 40.0, (50, 400), (50, 300))},
        "shared-prompt": {**base, "num_blocks": 1500, "max_num_seqs": 16, "max_num_batched_tokens": 1024,
                          "requests": requests(40, 5.0, (100, 2000), (10, 60), system=3000)},
    }


def keys_of(tokens: list[int], bs: int) -> list:
    """A key per full block, fixing its whole prefix (as vLLM's chained block hashes do)."""
    keys, key = [], None
    for j in range(len(tokens) // bs):
        key = hash((key, tuple(tokens[j * bs:(j + 1) * bs])))
        keys.append(key)
    return keys


def kvsim_run(w: dict) -> dict:
    env = simpy.Environment()
    stats = ServingStats(0.0, math.inf, requests=[])
    spec = EngineSpec(LinearStepTime(*w["step_time"]), w["max_num_batched_tokens"], w["max_num_seqs"],
                      w["prefix_caching"])
    inst = EngineInstance(env, spec, w["num_blocks"], w["block_size"], stats, Counters())
    inst.step_log = []
    reqs = []
    for i, r in enumerate(w["requests"]):
        req = EngineRequest(i, r["arrival"], len(r["tokens"]), r["max_tokens"], keys_of(r["tokens"], w["block_size"]))
        reqs.append(req)
        env.timeout(r["arrival"]).callbacks.append(lambda _, req=req: inst.submit(req))
    env.run()
    return {"requests": [{"hit": q.hit_tokens, "first_scheduled": q.first_scheduled, "first_token": q.first_token,
                          "finish": q.finish, "preemptions": q.preemptions} for q in reqs],
            "steps": [[t, {str(k): v for k, v in tokens.items()}] for t, tokens in inst.step_log]}


def compare(name: str, vllm: dict, ours: dict) -> dict:
    n = len(vllm["requests"])
    fields = {"hit": "hit", "first scheduling": "first_scheduled", "TTFT": "first_token", "end-to-end": "finish",
              "preemptions": "preemptions"}
    same = {label: sum(1 for a, b in zip(vllm["requests"], ours["requests"]) if a[f] == b[f])
            for label, f in fields.items()}
    steps_same = sum(1 for a, b in zip(vllm["steps"], ours["steps"]) if a[1] == b[1] and a[0] == b[0])
    first = next(({"request": i, "vllm": a, "kvsim": b} for i, (a, b) in enumerate(zip(vllm["requests"],
                                                                                      ours["requests"])) if a != b), None)
    return {"workload": name, "requests": n, "identical": same, "steps": len(vllm["steps"]),
            "kvsim_steps": len(ours["steps"]), "identical_steps": steps_same,
            "preemptions": sum(r["preemptions"] for r in vllm["requests"]), "first_difference": first}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines-python", default=os.path.join(tempfile.gettempdir(), "kvengines", "bin", "python"),
                   help="python of the engines environment (../shared/engines/setup.sh prints it)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if not Path(a.engines_python).exists():
        print(f"engine_parity: no engines environment at {a.engines_python}: run ../shared/engines/setup.sh",
              file=sys.stderr)
        return 2
    print(f"{'workload':14} {'requests':>8} {'hit':>5} {'first sched':>11} {'TTFT':>5} {'E2E':>5} {'preempt':>7} "
          f"{'steps':>11} {'preemptions':>11}")
    for name, w in workloads(a.seed).items():
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "in.json", Path(d) / "out.json"
            src.write_text(json.dumps(w))
            subprocess.run([a.engines_python, str(HERE / "vllm_driver.py"), str(src), str(dst)], check=True)
            vllm = json.loads(dst.read_text())
        ours = kvsim_run(w)
        c = compare(name, vllm, ours)
        i = c["identical"]
        print(f"{name:14} {c['requests']:>8} {i['hit']:>5} {i['first scheduling']:>11} {i['TTFT']:>5} "
              f"{i['end-to-end']:>5} {i['preemptions']:>7} {c['identical_steps']:>5}/{c['steps']:<5} "
              f"{c['preemptions']:>11}")
        if c["first_difference"]:
            print(f"  first difference: {c['first_difference']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
