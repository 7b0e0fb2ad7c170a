"""vLLM's hybrid KV cache manager (analytic.hybrid): hand-worked capacities, the layer kinds of a
config.json, and the check against vLLM's own functions (when its source is installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analytic import hybrid, presets
from analytic.hfconfig import model_from_config
from analytic.sizing import GIB, bytes_per_token, capacity_from_memory
from analytic.specs import Hardware, LayerGroup, ModelSpec, Workload
from kvsim.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path("/tmp/kvengines/bin/python")


def test_sliding_window_hybrid_hand_worked():
    """gpt-oss-20b (12 full + 12 sliding-128 layers, 8 KV heads x 64, bf16) with 60 GiB of KV."""
    m = presets.model("gpt-oss-20b")
    p = hybrid.plan(m, 60 * GIB, max_model_len=131072, max_num_batched_tokens=8192)
    page = 16 * 2 * 8 * 64 * 2  # a block of 16 tokens of one layer: 32 KiB, the same for both kinds
    assert p.block_size == 16 and [g.page_bytes for g in p.groups] == [page, page]
    # buckets of 12 and 12 layers: group size 12, one group each; a block = 12 layer pages
    assert [(g.kind, g.groups, g.layers_per_group) for g in p.groups] == [("full", 1, 12), ("sliding", 1, 12)]
    assert p.bytes_per_block == 12 * page == 393216
    assert p.num_blocks == 60 * 2**30 // 393216 == 163840
    # a request at 131072 tokens: full 131072/16 = 8192 blocks; sliding cdiv(127 + 2 x 8192, 16) + 1 = 1033
    assert [g.peak_blocks for g in p.groups] == [8192, 1033]
    assert p.max_concurrency == pytest.approx(163840 / 9225)
    assert p.kv_cache_tokens == int(163840 / 9225 * 131072)
    # without the hybrid manager: one group of 24 layers, every token in every layer
    upper = hybrid.plan(m, 60 * GIB, max_model_len=131072, hybrid_allocator=False)
    assert (upper.group_count, upper.bytes_per_block, upper.num_blocks) == (1, 24 * page, 81920)
    assert upper.max_concurrency == 10.0


def test_ssm_hybrid_hand_worked():
    """qwen3-next-80b-a3b (12 full + 36 Gated DeltaNet layers) on one GPU with 60 GiB of KV."""
    m = presets.model("qwen3-next-80b-a3b")
    per_token = 2 * 2 * 256 * 2  # K and V, 2 KV heads of 256, bf16: 2,048 B per token per layer
    state = 3 * (2 * 16 * 128 + 32 * 128) * 2 + 32 * 128 * 128 * 2  # conv (3, 8192) + SSM (32, 128, 128), bf16
    assert state == 1097728 == m.groups[1].state_bytes()
    # block: a multiple of lcm(16, 64) (FlashInfer GDN checkpoints) whose attention page holds a state:
    # 64 x cdiv(1097728, 64 x 2048) = 64 x 9 = 576 tokens; the state is padded to the 1,179,648 B page
    p = hybrid.plan(m, 60 * GIB, max_model_len=32768)
    assert p.block_size == 576 and p.groups[0].page_bytes == 576 * per_token == 1179648
    # buckets of 12 and 36 layers: group size 12 -> 1 full group and 3 groups of 12 GDN layers
    assert [(g.kind, g.groups, g.layers_per_group) for g in p.groups] == [("full", 1, 12), ("mamba", 3, 12)]
    assert p.bytes_per_block == 12 * 1179648 == 14155776
    assert p.num_blocks == 60 * 2**30 // 14155776 == 4551
    # a request at 32768 tokens: cdiv(32768, 576) = 57 full blocks, 2 + 1 checkpoint states in each GDN group
    assert [g.peak_blocks for g in p.groups] == [57, 3]
    assert p.max_concurrency == pytest.approx(4551 / (57 + 9))
    # 4 GPUs: 1 KV head each (2 // 4 -> replicated), a quarter of each state
    p4 = hybrid.plan(m, 60 * GIB, tp=4, max_model_len=32768)
    assert (p4.block_size, p4.num_blocks) == (64 * -(-274432 // (64 * 1024)), 4096) == (320, 4096)
    with pytest.raises(ValueError, match="no-hybrid-allocator"):
        hybrid.plan(m, 60 * GIB, hybrid_allocator=False)


def test_full_attention_models_are_unchanged():
    """A model whose layers are all full attention: no groups beyond one, today's figures bit for bit."""
    for name, m in presets.models().items():
        if m.sliding_layers:
            continue
        assert not m.is_hybrid and m.kv_layers == m.layers and m.groups == (LayerGroup("full", m.layers),)
        cap = capacity_from_memory(m, Hardware(80.0, 2), "bf16") if m.params_b < 150 else None
        if cap is not None:
            p = hybrid.plan(m, (cap.usable_gib - cap.weights_gib - cap.activation_reserve_gib) * GIB * 1.0, tp=1)
            assert p.num_blocks == cap.capacity_blocks and p.block_size == 16, name
    from kvsim.cli.calc import calc_record
    from analytic.scenario import Scenario

    s = Scenario(model=presets.model("llama-3.1-8b"), workload=Workload(), hardware=Hardware(40.0))
    record = calc_record(s, "lru")
    assert "hybrid" not in record["memory"] and record["memory"] == {**s.capacity().as_dict()}


def test_bytes_per_token_counts_attention_layers_only():
    m = presets.model("nemotronh-v0.1")
    assert (m.layers, m.kv_layers) == (52, 4) and bytes_per_token(m) == 2 * 4 * 8 * 128 * 2
    assert m.groups[1].state_bytes() == 3 * 10240 * 2 + 128 * 64 * 128 * 4  # SSM state fp32


JAMBA = {"architectures": ["JambaForCausalLM"], "model_type": "jamba", "hidden_size": 4096, "intermediate_size": 14336,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
         "max_position_embeddings": 262144, "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16,
         "mamba_d_conv": 4, "mamba_expand": 2, "num_experts": 16, "num_experts_per_tok": 2}
QWEN3_NEXT = {"model_type": "qwen3_next", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 48,
              "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "vocab_size": 151936,
              "max_position_embeddings": 32768, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
              "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
              "full_attention_interval": 4, "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512}

# As their published config.json files state them (analytic/hybrid_presets.csv names the copies read).
GRANITE_H_TINY = {"model_type": "granitemoehybrid", "hidden_size": 1536, "num_hidden_layers": 40,
                  "num_attention_heads": 12, "num_key_value_heads": 4, "intermediate_size": 512,
                  "shared_intermediate_size": 1024, "num_local_experts": 64, "num_experts_per_tok": 6,
                  "vocab_size": 100352, "max_position_embeddings": 131072, "mamba_d_state": 128, "mamba_n_groups": 1,
                  "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_expand": 2, "mamba_d_conv": 4,
                  "layer_types": ["attention" if i in (5, 15, 25, 35) else "mamba" for i in range(40)]}
FALCON_H1_7B = {"model_type": "falcon_h1", "hidden_size": 3072, "num_hidden_layers": 44, "num_attention_heads": 12,
                "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 130048,
                "mamba_d_state": 256, "mamba_n_groups": 1, "mamba_n_heads": 24, "mamba_d_head": 128,
                "mamba_d_ssm": 3072, "mamba_expand": 2, "mamba_d_conv": 4, "max_position_embeddings": 262144}


def write(tmp_path, data) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_config_layer_kinds(tmp_path):
    jamba = model_from_config(write(tmp_path, JAMBA))
    assert jamba.layer_groups == presets.model("jamba-v0.1").layer_groups
    qn = model_from_config(write(tmp_path, QWEN3_NEXT))
    assert qn.layer_groups == presets.model("qwen3-next-80b-a3b").layer_groups
    typed = {**QWEN3_NEXT, "layer_types": ["linear_attention", "full_attention"] * 24}
    assert [g.layers for g in model_from_config(write(tmp_path, typed)).layer_groups] == [24, 24]
    pattern = {"model_type": "nemotron_h", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "vocab_size": 131072, "intermediate_size": 21504, "num_hidden_layers": 52,
               "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
               "mamba_num_heads": 128, "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4}
    assert model_from_config(write(tmp_path, pattern)).layer_groups == presets.model("nemotronh-v0.1").layer_groups
    granite = model_from_config(write(tmp_path, GRANITE_H_TINY))
    assert granite.layer_groups == presets.model("granite-4.0-h-tiny").layer_groups
    assert (granite.head_dim, granite.experts, granite.max_context) == (128, 64, 131072)
    falcon = model_from_config(write(tmp_path, FALCON_H1_7B))
    assert falcon.layer_groups == presets.model("falcon-h1-7b").layer_groups


def test_falcon_h1_plan_by_hand():
    """Falcon-H1-7B runs attention and Mamba2 side by side in all 44 layers. A token's K/V in one layer:
    2 x 2 heads x 128 x 2 bytes = 1 KiB; a Mamba state: conv 3 x (3072 + 2 x 256) x 2 bytes + SSM
    24 x 128 x 256 x 2 bytes = 1,594,368 bytes, so vLLM raises the block to 16 x cdiv(1,594,368, 16 KiB)
    = 1,568 tokens (a 1,605,632-byte page); one group of 44 layers per kind, 70,647,808 bytes a block."""
    m = presets.model("falcon-h1-7b")
    assert m.groups[1].state_bytes() == 3 * 3584 * 2 + 24 * 128 * 256 * 2 == 1594368
    p = hybrid.plan(m, 60 * GIB, max_model_len=262144)
    assert (p.block_size, p.group_count, p.bytes_per_block) == (1568, 2, 1568 * 1024 * 44)
    assert p.num_blocks == 60 * GIB // (1568 * 1024 * 44) == 911
    # one request at 262,144 tokens: cdiv(262144, 1568) = 168 attention blocks + 3 states (align mode)
    assert p.max_concurrency == 911 / (168 + 3)


@pytest.mark.parametrize("change,message", [
    ({"layer_types": ["linear_attention", "chunked_attention"] * 24}, "layer_types[1] is 'chunked_attention'"),
    ({"linear_conv_kernel_dim": 1}, "SSM state of a gated-deltanet layer is 0 bytes"),
    ({"linear_key_head_dim": 0}, "linear_key_head_dim must be a whole number > 0"),
])
def test_bad_hybrid_configs(tmp_path, change, message, capsys):
    path = write(tmp_path, {**QWEN3_NEXT, **change})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        model_from_config(path)
    assert main(["calc", "--model-config", str(path), "--capacity-gib", "10", "--method", "lru"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_window_larger_than_context(tmp_path, capsys):
    path = write(tmp_path, {**JAMBA, "attn_layer_period": 1, "attn_layer_offset": 0, "sliding_window": 300000,
                            "layer_types": ["sliding_attention"] * 32})
    assert main(["calc", "--model-config", str(path), "--capacity-gib", "10", "--method", "lru"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sliding_window 300000 is larger than max_position_embeddings 262144" in err[0]


def test_calc_shows_groups_and_the_seed_error(capsys):
    assert main(["calc", "--preset", "gpt-oss-20b", "--gpu", "h100-80gb", "--method", "lru"]) == 0
    out = capsys.readouterr().out
    assert "84,335 blocks (vLLM's num_gpu_blocks)" in out and "12 sliding 128" in out and "seed x1.79" in out
    assert main(["calc", "--preset", "gpt-oss-20b", "--gpu", "h100-80gb", "--method", "lru",
                 "--no-hybrid-allocator"]) == 0
    out = capsys.readouterr().out
    assert "upper bound used" in out and "674,672 tokens" in out and "--disable-hybrid-kv-cache-manager" in out


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM 0.33 is not installed at /tmp/kvengines")
def test_against_vllm_own_functions():
    cases = [
        {"name": "gpt-oss-20b", "preset": "gpt-oss-20b", "tp": 1, "max_model_len": 131072,
         "hf": {"architecture": "GptOssForCausalLM", "num_key_value_heads": 8, "head_dim": 64, "sliding_window": 128},
         "layers": ["sliding" if i % 2 == 0 else "full" for i in range(24)]},
        {"name": "gemma-3-27b", "preset": "gemma-3-27b", "tp": 1, "max_model_len": 131072,
         "hf": {"architecture": "Gemma3ForCausalLM", "num_key_value_heads": 16, "head_dim": 128, "sliding_window": 1024},
         "layers": ["full" if (i + 1) % 6 == 0 else "sliding" for i in range(62)]},
        *({"name": f"qwen3-next tp{tp}", "preset": "qwen3-next-80b-a3b", "tp": tp, "max_model_len": 32768,
           "mamba_cls": "vllm.model_executor.models.qwen3_next.Qwen3NextForCausalLM", "checkpoint_alignment": 64,
           "checkpoint_blocks": 1, "hf": {"architecture": "Qwen3NextForCausalLM", "num_key_value_heads": 2, "head_dim": 256,
                                          "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                                          "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                                          "linear_conv_kernel_dim": 4},
           "layers": ["full" if (i + 1) % 4 == 0 else "mamba" for i in range(48)]} for tp in (1, 4)),
        {"name": "jamba", "preset": "jamba-v0.1", "tp": 1, "max_model_len": 262144,
         "mamba_cls": "vllm.model_executor.models.jamba.JambaForCausalLM",
         "hf": {"architecture": "JambaForCausalLM", "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 4096,
                "mamba_expand": 2, "mamba_d_state": 16, "mamba_d_conv": 4},
         "layers": ["full" if i % 8 == 4 else "mamba" for i in range(32)]},
        {"name": "nemotron-h", "preset": "nemotronh-v0.1", "tp": 1, "max_model_len": 8192, "ssm_dtype": "float32",
         "mamba_cls": "vllm.model_executor.models.nemotron_h.NemotronHForCausalLM", "checkpoint_blocks": 1,
         "hf": {"architecture": "NemotronHForCausalLM", "num_key_value_heads": 8, "head_dim": 128, "mamba_num_heads": 128,
                "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4},
         "layers": [{"M": "mamba", "*": "full"}[c] for c in "MMMM*MMMMM*MMMMM*MMMMM*MMMMM"]},
        {"name": "granite-4.0-h-tiny", "preset": "granite-4.0-h-tiny", "tp": 1, "max_model_len": 131072,
         "mamba_cls": "vllm.model_executor.models.granitemoehybrid.GraniteMoeHybridForCausalLM", "checkpoint_blocks": 1,
         "hf": {"architecture": "GraniteMoeHybridForCausalLM", "num_key_value_heads": 4, "head_dim": 128,
                "hidden_size": 1536, "mamba_expand": 2, "mamba_n_groups": 1, "mamba_n_heads": 48, "mamba_d_head": 64,
                "mamba_d_state": 128, "mamba_d_conv": 4},
         "layers": ["full" if i in (5, 15, 25, 35) else "mamba" for i in range(40)]},
        *({"name": f"falcon-h1-7b tp{tp}", "preset": "falcon-h1-7b", "tp": tp, "max_model_len": 262144,
           "mamba_cls": "vllm.model_executor.models.falcon_h1.FalconH1ForCausalLM", "checkpoint_blocks": 1,
           "hf": {"architecture": "FalconH1ForCausalLM", "num_key_value_heads": 2, "head_dim": 128, "hidden_size": 3072,
                  "mamba_expand": 2, "mamba_d_ssm": 3072, "mamba_n_groups": 1, "mamba_n_heads": 24,
                  "mamba_d_head": 128, "mamba_d_state": 256, "mamba_d_conv": 4},
           "layers": ["full"] * 44 + ["mamba"] * 44} for tp in (1, 2)),  # attention and Mamba in every layer
    ]
    lines = "".join(json.dumps({**c, "kv_gib": 60, "block_size": 16, "mnbt": 8192}) + "\n" for c in cases)
    done = subprocess.run([str(VLLM_PYTHON), str(ROOT / "experiments" / "hybrid_vllm_check.py")], input=lines,
                          capture_output=True, text=True, timeout=600, check=True)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases)
    for case, theirs in zip(cases, results):
        ours = hybrid.plan(presets.model(case["preset"]), 60 * GIB, tp=case["tp"], max_model_len=case["max_model_len"])
        assert (ours.block_size, ours.group_count, ours.bytes_per_block, ours.num_blocks) == (
            theirs["block_size"], theirs["groups"], theirs["bytes_per_block"], theirs["num_blocks"]), case["name"]
        assert ours.max_concurrency == pytest.approx(theirs["max_concurrency"], rel=1e-12), case["name"]
        assert ours.kv_cache_tokens == theirs["kv_cache_tokens"], case["name"]


def test_gemma_3_12b_preset_by_hand():
    """48 layers, 8 of them global (every 6th), 40 sliding over 1,024 tokens, 8 KV heads of 256:
    vLLM's hybrid manager makes groups of 8 layers (the full layers' count): 1 full + 5 sliding
    groups, 16-token blocks of 16 x 8 layers x 2 (K, V) x 8 heads x 256 x 2 bytes = 1 MiB."""
    from analytic import hybrid, presets

    m = presets.model("gemma-3-12b")
    assert (m.layers, m.sliding_layers, m.sliding_window, m.kv_heads, m.head_dim) == (48, 40, 1024, 8, 256)
    p = hybrid.plan(m, 40 * 2**30)
    assert p.block_size == 16 and p.bytes_per_block == 16 * 8 * 2 * 8 * 256 * 2 == 2**20
    assert [(g.kind, g.groups, g.layers_per_group) for g in p.groups] == [("full", 1, 8), ("sliding", 5, 8)]
    assert p.num_blocks == 40 * 2**30 // 2**20
