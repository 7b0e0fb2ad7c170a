"""kvsim against vLLM's own code, request by request: the step engine against vLLM's scheduler, and
(``--hybrid``) the hybrid cache against vLLM's hybrid KV cache manager.

Needs the optional `engines` environment (vLLM 0.33 on CPU, no GPU): make it once with
``../shared/engines/setup.sh`` (about 8 minutes), then

    .venv/bin/python experiments/engine_parity.py [--hybrid] [--engines-python /tmp/kvengines/bin/python]

Step engine: three workloads (light load; saturated, with preemptions; a shared system prompt with
long prompts that need chunking) are served by vLLM's ``Scheduler`` (experiments/vllm_driver.py, in
the engines' python) and by :class:`kvsim.step_engine.EngineInstance`, with the same arrivals,
token ids and linear step time. Printed: per workload, how many requests have an identical hit,
first scheduling, TTFT, end-to-end time and preemptions, and how many steps schedule identical
tokens; the first differences, if any.

Hybrid cache (``--hybrid``): multi-turn conversations sharing a system prompt (some turns branch
off or repeat an earlier one), each request prefilled and decoded alone, through small pools (so
that blocks are evicted) of a sliding-window hybrid (a window of 128 tokens, as gpt-oss) and of an
SSM hybrid (Mamba2-like, with a prefill checkpoint, and Mamba1-like, without, in mode align; and
in mode all), by vLLM's scheduler and hybrid KV cache manager (experiments/vllm_hybrid_driver.py)
and by :class:`kvsim.hybrid_cache.HybridCache`. Printed: per layout and pool, the requests, vLLM's
token hit rate, how many hits kvsim gets identical, and how many the per-block reference gets
identical when it keeps vLLM's duplicate copies (the one corner kvsim leaves out); every request
where kvsim differs is then explained if that reference matches vLLM there.
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


# ---------------------------------------------------------------- the hybrid cache

HYBRID_BLOCK = 16
# vLLM's KV cache groups, in vLLM's order (the non-full kind first, as gpt-oss, Qwen3-Next and Jamba
# have it), and its Mamba caching mode.
HYBRID_LAYOUTS = {
    "sliding 128 + full": ([{"kind": "sliding", "window": 128}, {"kind": "full"}], "align"),
    "mamba2 + full, align": ([{"kind": "mamba", "checkpoint": True}, {"kind": "full"}], "align"),
    "mamba1 + full, align": ([{"kind": "mamba", "checkpoint": False}, {"kind": "full"}], "align"),
    "mamba + full, all": ([{"kind": "mamba"}, {"kind": "full"}], "all"),
}
HYBRID_POOLS = (120, 250, 600)  # blocks: most requests hold 20 to 70


def output_token(request: int, j: int) -> int:
    """The token request ``request`` samples ``j``-th in experiments/vllm_hybrid_driver.py."""
    return 2_000_000_000 + request * 100_000 + j


def hybrid_stream(seed: int, conversations: int = 30, system: int = 200) -> list[dict]:
    """Requests in arrival order: ``{"prompt": tokens, "max_tokens": n}``. Each conversation starts
    with the shared system prompt; a turn's prompt is the context (previous prompt and output) and
    new user tokens; one turn in eight branches off an earlier point of its conversation instead,
    one in ten repeats an earlier request verbatim."""
    rng = np.random.default_rng(seed)
    turns = [int(rng.integers(2, 7)) for _ in range(conversations)]
    order = [c for c in range(conversations) for _ in range(turns[c])]
    order = [order[i] for i in rng.permutation(len(order))]
    context = {c: list(range(1, system + 1)) for c in range(conversations)}
    fresh, out = 10_000_000, []
    for c in order:
        if out and rng.random() < 0.1:
            out.append(dict(out[int(rng.integers(len(out)))]))
            continue
        base = context[c]
        if rng.random() < 0.125:
            base = base[:int(rng.integers(system, len(base) + 1))]
        user = int(rng.integers(20, 150))
        prompt = base + list(range(fresh, fresh + user))
        fresh += user
        out.append({"prompt": prompt, "max_tokens": int(rng.integers(1, 150))})
        if base is context[c]:
            context[c] = prompt + [output_token(len(out) - 1, j) for j in range(out[-1]["max_tokens"])]
    return out


def hybrid_hits(w: dict, duplicates: bool | None = None) -> list[int | None]:
    """kvsim's hits of ``w`` (the request's tokens: its prompt and the outputs it computes, the last
    output being sampled, not computed); ``duplicates``: the per-block reference instead, keeping
    vLLM's duplicate copies or not."""
    from kvsim.hybrid_cache import CacheGroup, HybridCache, ReferenceHybridCache

    bs = w["block_size"]
    groups = [CacheGroup(g["kind"], g.get("window", 0), g.get("checkpoint", False)) for g in w["groups"]]
    if duplicates is None:
        cache = HybridCache(w["num_blocks"], groups, bs, w["mamba_cache_mode"])
    else:
        cache = ReferenceHybridCache(w["num_blocks"], groups, bs, w["mamba_cache_mode"], duplicates=duplicates)
    ids: dict = {}
    hits = []
    for i, r in enumerate(w["requests"]):
        prompt = len(r["prompt"])
        tokens = r["prompt"] + [output_token(i, j) for j in range(r["max_tokens"] - 1)]
        keys = [ids.setdefault(k, len(ids)) for k in keys_of(tokens, bs)]
        result = cache.serve(keys, (prompt - 1) // bs, -(-len(tokens) // bs), prompt, len(tokens))
        hits.append(None if result.oversized else result.hit_blocks * bs)
    return hits


def hybrid_parity(engines_python: str, seed: int) -> int:
    """The ``--hybrid`` comparison; returns how many differences no reference explains."""
    requests = hybrid_stream(seed)
    prompts = sum(len(r["prompt"]) for r in requests)
    print(f"{len(requests)} requests, {prompts:,} prompt tokens, blocks of {HYBRID_BLOCK} tokens; kvsim's hits against "
          "vLLM 0.33's (its scheduler and hybrid KV cache manager, one request at a time)")
    print(f"{'layout':22} {'pool':>5} {'requests':>8} {'vLLM hit rate':>13} {'kvsim identical':>15} "
          f"{'with duplicates':>15} {'oversized':>9}")
    unexplained = 0
    for name, (groups, mode) in HYBRID_LAYOUTS.items():
        for pool in HYBRID_POOLS:
            w = {"block_size": HYBRID_BLOCK, "num_blocks": pool, "mamba_cache_mode": mode, "groups": groups,
                 "requests": requests}
            with tempfile.TemporaryDirectory() as d:
                src, dst = Path(d) / "in.json", Path(d) / "out.json"
                src.write_text(json.dumps(w))
                subprocess.run([engines_python, str(HERE / "vllm_hybrid_driver.py"), str(src), str(dst)], check=True)
                vllm = json.loads(dst.read_text())["hits"]
            ours, exact = hybrid_hits(w), hybrid_hits(w, duplicates=True)
            differ = [i for i, (a, b) in enumerate(zip(vllm, ours)) if a != b]
            unexplained += sum(1 for i in differ if exact[i] != vllm[i])
            rate = sum(h or 0 for h in vllm) / prompts
            print(f"{name:22} {pool:>5} {len(vllm):>8} {rate:>13.4f} {len(vllm) - len(differ):>15} "
                  f"{sum(a == b for a, b in zip(vllm, exact)):>15} {sum(h is None for h in vllm):>9}")
    print("every difference explained: vLLM's duplicate copies" if not unexplained else
          f"{unexplained} differences not explained by vLLM's duplicate copies")
    return unexplained


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines-python", default=os.path.join(tempfile.gettempdir(), "kvengines", "bin", "python"),
                   help="python of the engines environment (../shared/engines/setup.sh prints it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hybrid", action="store_true",
                   help="the hybrid cache against vLLM's hybrid KV cache manager (instead of the step engine)")
    a = p.parse_args()
    if not Path(a.engines_python).exists():
        print(f"engine_parity: no engines environment at {a.engines_python}: run ../shared/engines/setup.sh",
              file=sys.stderr)
        return 2
    if a.hybrid:
        return 1 if hybrid_parity(a.engines_python, a.seed) else 0
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
