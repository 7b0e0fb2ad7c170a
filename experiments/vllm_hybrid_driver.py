"""Drive vLLM's own hybrid KV cache manager on CPU, one request at a time, for
``experiments/engine_parity.py --hybrid`` (run with the python of the optional `engines` environment:
../shared/engines/setup.sh makes it).

    ENGINES_PY experiments/vllm_hybrid_driver.py IN.json OUT.json

IN: {"block_size", "num_blocks" (usable blocks, shared by every group), "mamba_cache_mode" ("align" or
"all"), "groups": [{"kind": "full"} | {"kind": "sliding", "window": W} | {"kind": "mamba",
"checkpoint": bool}, ...] (vLLM's KV cache groups, in their order), "requests": [{"prompt": [token
ids], "max_tokens": n}, ...]}.
OUT: {"hits": [tokens hit at first scheduling, or null for a request vLLM does not serve (larger than
the pool)]}. Request i's j-th output token is ``output_token(i, j)``.

Each request is served alone by vLLM's ``Scheduler`` (prefix caching and chunked prefill on, a step
budget larger than any request): it is prefilled, decodes its tokens one step each and finishes, and
only then does the next one arrive. Its blocks go through vLLM's own ``HybridKVCacheCoordinator``,
single-type managers and ``BlockPool``, unpatched: the hit every group agrees on, the Mamba "align"
chunk stops, early frees (sliding windows, superseded states) and the one LRU queue are vLLM's.

A Mamba group is a ``MambaSpec`` at the attention block size (vLLM's unified block size) with a
one-element state; ``checkpoint`` gives it one prefill checkpoint block (``num_prefill_checkpoint_blocks
= 1``, alignment 1: Mamba2 and Gated DeltaNet mixers) or none (Mamba1). vLLM 0.33 has no
``mamba_cache_mode="all"`` any more (only "align" and "none"); "all" here drives 0.33's generic
(non-align) Mamba path with caching on, the path the old "all" mode took: 0.33 asserts that caching
needs "align", so the driver re-runs itself under ``python -O``, which skips that assertion.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and __debug__:  # decided before vLLM is imported
    if json.loads(Path(sys.argv[1]).read_text()).get("mamba_cache_mode") == "all":
        os.execv(sys.executable, [sys.executable, "-O", *sys.argv])

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import torch  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, MambaSpec,  # noqa: E402
                                        SlidingWindowSpec)
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from vllm_driver import CONFIG, MAX_MODEL_LEN  # noqa: E402  (the same model config.json as the scheduler's parity)

BUDGET = 1 << 20  # tokens per step: no request is chunked by the budget, only by vLLM's Mamba stops


def output_token(request: int, j: int) -> int:
    """The made-up token request ``request`` samples ``j``-th: unique to it, known to the caller."""
    return 2_000_000_000 + request * 100_000 + j


def spec(group: dict, bs: int, mode: str):
    one = dict(num_kv_heads=1, head_size=1, dtype=torch.float32)
    if group["kind"] == "full":
        return FullAttentionSpec(block_size=bs, **one)
    if group["kind"] == "sliding":
        return SlidingWindowSpec(block_size=bs, sliding_window=group["window"], **one)
    checkpoint = bool(group.get("checkpoint"))
    return MambaSpec(block_size=bs, shapes=((1,),), dtypes=(torch.float32,), mamba_cache_mode=mode,
                     num_prefill_checkpoint_blocks=int(checkpoint),
                     prefill_checkpoint_alignment=1 if checkpoint else None)


def scheduler(w: dict) -> Scheduler:
    bs, mode = w["block_size"], w.get("mamba_cache_mode", "align")
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    model = ModelConfig(model=folder, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=MAX_MODEL_LEN)
    sched = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=BUDGET, max_model_len=MAX_MODEL_LEN,
                            enable_chunked_prefill=True, is_encoder_decoder=False)
    # The scheduler's own switch for the Mamba chunk stops; "all" is no 0.33 mode (see the docstring).
    cache = CacheConfig(block_size=bs, cache_dtype="auto", enable_prefix_caching=True,
                        mamba_cache_mode="align" if mode == "align" else "none")
    cache.num_gpu_blocks = w["num_blocks"] + 1
    config = VllmConfig(model_config=model, scheduler_config=sched, cache_config=cache,
                        device_config=DeviceConfig("cpu"))
    groups = [KVCacheGroupSpec([f"layer{i}"], spec(g, bs, mode)) for i, g in enumerate(w["groups"])]
    # the pool keeps one block aside as its null block: num_blocks + 1 gives num_blocks usable
    kv = KVCacheConfig(num_blocks=w["num_blocks"] + 1, kv_cache_tensors=[], kv_cache_groups=groups)
    return Scheduler(vllm_config=config, kv_cache_config=kv, log_stats=True,
                     structured_output_manager=StructuredOutputManager(config), block_size=bs)


def serve(s: Scheduler, rid: int, prompt: list, max_tokens: int, hasher) -> int | None:
    """One request alone: schedule it until it finishes; its hit, or None if vLLM does not serve it."""
    name = str(rid)
    s.add_request(Request(request_id=name, prompt_token_ids=list(prompt),
                          sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                          pooling_params=None, block_hasher=hasher))
    hit = None
    for _ in range(4 * (len(prompt) + max_tokens) + 8):  # a request that cannot progress is given up
        if name not in s.requests:
            return hit
        so = s.schedule()
        for new in so.scheduled_new_reqs:
            if hit is None:
                hit = new.num_computed_tokens
        ids = list(so.num_scheduled_tokens)
        if not ids or s.requests[name].num_preemptions:
            break  # a lone request preempted: it does not fit
        q = s.requests[name]
        sampled = [[output_token(rid, q.num_output_tokens)] if q.num_computed_tokens >= q.num_tokens else []]
        s.update_from_output(so, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)},
                                                   sampled_token_ids=sampled, logprobs=None,
                                                   prompt_logprobs_dict={}, pooler_output=[]))
    s.finish_requests(name, RequestStatus.FINISHED_ABORTED)
    return None


def run(w: dict) -> dict:
    init_none_hash(sha256)
    hasher = get_request_block_hasher(w["block_size"], sha256)
    s = scheduler(w)
    return {"hits": [serve(s, i, r["prompt"], r["max_tokens"], hasher) for i, r in enumerate(w["requests"])]}


if __name__ == "__main__":
    hits = run(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(hits))
