"""Drive vLLM's own v1 Scheduler on CPU for experiments/engine_parity.py (run with the python of
the optional `engines` environment: ../shared/engines/setup.sh makes it).

    ENGINES_PY experiments/vllm_driver.py IN.json OUT.json

IN: {"block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "prefix_caching",
"step_time": [alpha, beta, gamma], "requests": [{"arrival", "tokens", "max_tokens"}]}.
OUT: per request hit (cached tokens at first scheduling), first_scheduled, first_token,
finish, preemptions; per step [start, {request index: tokens}].

The scheduler is run synchronously (schedule, then the step's output): each scheduled request
whose computed tokens reach its known tokens samples one made-up token, unique to the request
and position, so outputs never share a block. The model is a config.json only (Llama-3.1-8B's
shape, no weights): the scheduler reads nothing else of it.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import torch  # noqa: E402
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
          "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
          "max_position_embeddings": 131072, "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
          "torch_dtype": "bfloat16", "head_dim": 128}
MAX_MODEL_LEN = 131072


def scheduler(w: dict) -> Scheduler:
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    model = ModelConfig(model=folder, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=MAX_MODEL_LEN)
    sched = SchedulerConfig(max_num_seqs=w["max_num_seqs"], max_num_batched_tokens=w["max_num_batched_tokens"],
                            max_model_len=MAX_MODEL_LEN, enable_chunked_prefill=True, is_encoder_decoder=False)
    cache = CacheConfig(block_size=w["block_size"], cache_dtype="auto", enable_prefix_caching=w["prefix_caching"])
    cache.num_gpu_blocks = w["num_blocks"]
    config = VllmConfig(model_config=model, scheduler_config=sched, cache_config=cache,
                        device_config=DeviceConfig("cpu"))
    group = KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=w["block_size"], num_kv_heads=1, head_size=1,
                                                          dtype=torch.float32))
    # the pool keeps one block aside as its null block: num_blocks + 1 gives num_blocks usable
    kv = KVCacheConfig(num_blocks=w["num_blocks"] + 1, kv_cache_tensors=[], kv_cache_groups=[group])
    return Scheduler(vllm_config=config, kv_cache_config=kv, log_stats=True,
                     structured_output_manager=StructuredOutputManager(config), block_size=w["block_size"])


def run(w: dict) -> dict:
    init_none_hash(sha256)
    hasher = get_request_block_hasher(w["block_size"], sha256)
    s = scheduler(w)
    alpha, beta, gamma = w["step_time"]
    reqs = w["requests"]
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i]["arrival"], i))
    out = [{"hit": None, "first_scheduled": None, "first_token": None, "finish": None, "preemptions": 0}
           for _ in reqs]
    steps = []
    now, nxt = 0.0, 0
    while nxt < len(order) or s.has_unfinished_requests():
        if not s.has_unfinished_requests() and reqs[order[nxt]]["arrival"] > now:
            now = reqs[order[nxt]]["arrival"]
        while nxt < len(order) and reqs[order[nxt]]["arrival"] <= now:
            i = order[nxt]
            nxt += 1
            r = reqs[i]
            s.add_request(Request(request_id=str(i), prompt_token_ids=list(r["tokens"]),
                                  sampling_params=SamplingParams(max_tokens=r["max_tokens"], ignore_eos=True),
                                  pooling_params=None, block_hasher=hasher, arrival_time=r["arrival"]))
        before = {rid: q.num_preemptions for rid, q in s.requests.items()}
        so = s.schedule()
        for rid, q in s.requests.items():
            out[int(rid)]["preemptions"] += q.num_preemptions - before.get(rid, 0)
        ids = list(so.num_scheduled_tokens)
        if not ids:
            if nxt < len(order):
                now = max(now, reqs[order[nxt]]["arrival"])
                continue
            raise RuntimeError("the scheduler is idle with requests left")
        for new in so.scheduled_new_reqs:
            i = int(new.req_id)
            if out[i]["hit"] is None:
                out[i]["hit"] = new.num_computed_tokens
                out[i]["first_scheduled"] = now
        tokens = context = 0
        sampled = []
        for rid in ids:
            q = s.requests[rid]
            n = so.num_scheduled_tokens[rid]
            c = q.num_computed_tokens - n  # schedule() advanced it already
            tokens += n
            context += c + n
            if q.num_computed_tokens >= q.num_tokens:
                sampled.append([2_000_000_000 + int(rid) * 100_000 + q.num_output_tokens])
            else:
                sampled.append([])
        steps.append([now, {rid: so.num_scheduled_tokens[rid] for rid in ids}])
        now += alpha + beta * tokens + gamma * context
        for rid, tok in zip(ids, sampled):
            if tok and out[int(rid)]["first_token"] is None:
                out[int(rid)]["first_token"] = now
        s.update_from_output(so, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: k for k, r in enumerate(ids)},
                                                   sampled_token_ids=sampled, logprobs=None,
                                                   prompt_logprobs_dict={}, pooler_output=[]))
        for rid in ids:
            if rid not in s.requests and out[int(rid)]["finish"] is None:
                out[int(rid)]["finish"] = now
    return {"requests": out, "steps": steps}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        workload = json.load(f)
    result = run(workload)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
