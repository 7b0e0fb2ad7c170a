"""Cross-check analytic.hybrid against vLLM 0.33's own functions (run with the engines' venv:
/tmp/kvengines/bin/python experiments/hybrid_vllm_check.py; prints one JSON line per case).

For each case it builds vLLM's per-layer KV cache specs (FullAttentionSpec, SlidingWindowSpec,
MambaSpec with the state shapes and dtypes of the model's own class,
``get_mamba_state_shape_from_config``), raises the attention block size with vLLM's
``Platform._align_hybrid_block_size`` (FlashAttention backend), then groups the layers
(``get_kv_cache_groups``), sizes the pool (``_get_kv_cache_bytes_per_block``, default LBNHC
layout) and computes the maximum concurrency (``get_max_concurrency_for_kv_cache_config``).
Nothing in vLLM is patched except the lookups that need a built model (the backends found on its
layers, and the layers' checkpoint alignment, given per case).
"""
import json
import logging
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
import torch  # noqa: E402

logging.getLogger("vllm").setLevel(logging.ERROR)
from vllm.model_executor.layers.mamba import abstract as mamba_abstract  # noqa: E402
from vllm.platforms.interface import Platform  # noqa: E402
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend  # noqa: E402
from vllm.v1.core import kv_cache_planning as planning  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_max_concurrency_for_kv_cache_config  # noqa: E402
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig, KVCacheLayout,  # noqa: E402
                                        MambaSpec, SlidingWindowSpec)

GIB = 1024**3


def vllm_config(hf, tp, max_model_len, block_size, mnbt, mamba_mode):
    cache = SimpleNamespace(block_size=block_size, cache_dtype="auto", mamba_cache_mode=mamba_mode,
                            mamba_block_size=None, mamba_page_size_padded=None, mamba_cache_dtype="auto",
                            mamba_ssm_cache_dtype="auto", use_replayssm=False, user_specified_block_size=True,
                            kv_cache_dtype_skip_layers=[], num_gpu_blocks_override=None,
                            get_resolved_kv_cache_layout=lambda: KVCacheLayout.LBNHC,
                            prefix_cache_retention_interval=None)
    model = SimpleNamespace(hf_config=hf, hf_text_config=hf, dtype=torch.bfloat16, max_model_len=max_model_len,
                            use_mla=False, architecture=hf.architecture,
                            get_num_kv_heads=lambda pc: max(1, hf.num_key_value_heads // tp),
                            get_head_size=lambda: hf.head_dim)
    return SimpleNamespace(cache_config=cache, model_config=model,
                           parallel_config=SimpleNamespace(tensor_parallel_size=tp, decode_context_parallel_size=1),
                           scheduler_config=SimpleNamespace(disable_hybrid_kv_cache_manager=False,
                                                            max_num_batched_tokens=mnbt),
                           attention_config=SimpleNamespace(hisparse_config=None), speculative_config=None,
                           num_speculative_tokens=0, max_in_flight_tokens=2 * mnbt)


def run(case):
    hf = SimpleNamespace(**case["hf"])
    cfg = vllm_config(hf, case["tp"], case["max_model_len"], case["block_size"], case["mnbt"], "align")
    mamba_spec = None
    if case.get("mamba_cls"):
        module, name = case["mamba_cls"].rsplit(".", 1)
        cls = getattr(__import__(module, fromlist=[name]), name)
        shapes = cls.get_mamba_state_shape_from_config(cfg)
        dtypes = cls.get_mamba_state_dtype_from_config(cfg)
        cfg.cache_config.mamba_ssm_cache_dtype = case.get("ssm_dtype", "auto")
        dtypes = cls.get_mamba_state_dtype_from_config(cfg)
        # the block size: vLLM's own alignment, with the backend and the layers' checkpoint alignment given
        from vllm.model_executor.models import ModelRegistry
        ModelRegistry.resolve_model_cls = classmethod(lambda c, *a, **k: (cls, None)).__get__(ModelRegistry)
        Platform._find_non_ssm_backends = classmethod(lambda c, v: [FlashAttentionBackend])
        mamba_abstract.get_mamba_prefill_checkpoint_alignment = lambda v: case.get("checkpoint_alignment")
        Platform._align_hybrid_block_size.__func__(Platform, cfg, FlashAttentionBackend)
        mamba_spec = MambaSpec(shapes=tuple(shapes), dtypes=tuple(dtypes), block_size=cfg.cache_config.mamba_block_size,
                               page_size_padded=cfg.cache_config.mamba_page_size_padded, mamba_cache_mode="align",
                               num_prefill_checkpoint_blocks=case.get("checkpoint_blocks", 0))
    bs = cfg.cache_config.block_size
    kv_heads = max(1, hf.num_key_value_heads // case["tp"])
    specs = {}
    for i, kind in enumerate(case["layers"]):
        if kind == "full":
            specs[f"l{i}"] = FullAttentionSpec(block_size=bs, num_kv_heads=kv_heads, head_size=hf.head_dim,
                                               dtype=torch.bfloat16)
        elif kind == "sliding":
            specs[f"l{i}"] = SlidingWindowSpec(block_size=bs, num_kv_heads=kv_heads, head_size=hf.head_dim,
                                               dtype=torch.bfloat16, sliding_window=hf.sliding_window)
        else:
            specs[f"l{i}"] = mamba_spec
    groups = planning.get_kv_cache_groups(cfg, dict(specs))
    per_block = planning._get_kv_cache_bytes_per_block(groups, KVCacheLayout.LBNHC)
    kv_bytes = int(case["kv_gib"] * GIB / case["tp"])
    num_blocks = kv_bytes // per_block
    kvc = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=groups)
    conc = get_max_concurrency_for_kv_cache_config(cfg, kvc)
    return {"case": case["name"], "block_size": groups[0].kv_cache_spec.block_size, "groups": len(groups),
            "layers_per_group": [len(g.layer_names) for g in groups], "page_bytes": groups[0].kv_cache_spec.page_size_bytes,
            "bytes_per_block": per_block, "num_blocks": num_blocks, "max_concurrency": conc,
            "kv_cache_tokens": int(conc * case["max_model_len"])}


if __name__ == "__main__":
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)
