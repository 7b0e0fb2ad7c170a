"""--model-config: a model from a Hugging Face config.json (analytic.hfconfig), and its CLI wiring
(with --tp, the alias of --gpus)."""

from __future__ import annotations

import json

import pytest

from analytic import presets
from analytic.hfconfig import model_from_config
from analytic.sizing import bytes_per_token
from kvsim.cli.main import main

# The fields of the published config.json files (meta-llama/Llama-3.1-8B, mistralai/Mixtral-8x7B-v0.1,
# Qwen/Qwen3-30B-A3B, deepseek-ai/DeepSeek-V3, google/gemma-3-27b-it), the ones the reader uses
# plus a few it must ignore.
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256,
    "_name_or_path": "meta-llama/Llama-3.1-8B",
}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 32000,
}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "decoder_sparse_step": 1, "head_dim": 128,
    "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
    "mlp_only_layers": [], "moe_intermediate_size": 768, "num_attention_heads": 32, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "sliding_window": None,
    "tie_word_embeddings": False, "use_sliding_window": False, "vocab_size": 151936,
}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "first_k_dense_replace": 3,
    "hidden_size": 7168, "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "tie_word_embeddings": False,
    "vocab_size": 129280,
}
GEMMA_3_27B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27},
    "text_config": {"model_type": "gemma3_text", "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504,
                    "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 62,
                    "num_key_value_heads": 16, "sliding_window": 1024, "sliding_window_pattern": 6,
                    "vocab_size": 262208},
}


def write(tmp_path, config, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def test_llama_31_8b(tmp_path):
    m = model_from_config(write(tmp_path, LLAMA_31_8B))
    # Hand count: embeddings and output 2 x 128,256 x 4,096 = 1,050,673,152; a layer: q and o
    # 2 x 4,096^2 + k and v 2 x 4,096 x 1,024 = 41,943,040, MLP 3 x 4,096 x 14,336 = 176,160,768,
    # norms 2 x 4,096; 32 layers and the final norm: 8,030,261,248, the checkpoint's exact count
    # (Meta's model card: 8.03B; the preset says 8). No tolerance needed beyond float rounding.
    assert m.params_b * 1e9 == pytest.approx(8_030_261_248, abs=1)
    assert m.params_b == pytest.approx(presets.model("llama-3.1-8b").params_b, rel=0.01)
    assert (m.name, m.layers, m.kv_heads, m.head_dim, m.attention_heads, m.hidden_size) == (
        "llama-3.1-8b", 32, 8, 128, 32, 4096)
    assert (m.intermediate_size, m.experts, m.active_params_b, m.max_context) == (14336, None, None, 131072)
    assert bytes_per_token(m) == bytes_per_token(presets.model("llama-3.1-8b")) == 131072
    assert (m.sliding_window, m.sliding_layers, m.kv_lora_rank) == (0, 0, 0)


def test_mixtral_8x7b(tmp_path):
    m = model_from_config(write(tmp_path, MIXTRAL_8X7B))
    # 46,702,792,704 by hand (8 experts of 176,160,768 and a 4,096 x 8 router per layer): the
    # checkpoint's count. Mistral's announcement: 46.7B total, 12.9B active. Active: 2 experts a
    # layer -> 12,879,925,248, 0.16% under the rounded 12.9B: within its rounding (+-0.05B, 0.4%).
    assert m.params_b * 1e9 == pytest.approx(46_702_792_704, abs=1)
    assert m.params_b == pytest.approx(46.7, abs=0.05)
    assert m.active_params_b == pytest.approx(12.9, abs=0.05)
    assert (m.experts, m.experts_per_token, m.intermediate_size, m.sliding_window) == (8, 2, 14336, 0)


def test_qwen3_30b_a3b(tmp_path):
    m = model_from_config(write(tmp_path, QWEN3_30B_A3B))
    # The checkpoint has 30,532,122,624 parameters; the estimate leaves out the per-head q/k norms
    # (2 x 128 a layer = 12,288 in all, 4e-7 of the total). Qwen's model card: 30.5B total, 3.3B
    # activated; the estimate's 3.35B is within that figure's rounding (+-0.05B).
    assert m.params_b * 1e9 == pytest.approx(30_532_122_624, rel=1e-6)
    assert m.params_b == pytest.approx(30.5, abs=0.05)
    assert m.active_params_b == pytest.approx(3.3, abs=0.06)
    assert (m.experts, m.experts_per_token, m.intermediate_size) == (128, 8, 768)
    assert (m.kv_heads, m.head_dim, m.attention_heads, m.sliding_layers) == (4, 128, 32, 0)  # use_sliding_window false
    assert bytes_per_token(m) == bytes_per_token(presets.model("qwen3-30b-a3b"))


def test_deepseek_v3_mla(tmp_path):
    m = model_from_config(write(tmp_path, DEEPSEEK_V3))
    # DeepSeek-V3's report: 671B total, 37B activated (the MTP module's 14B not counted; so here).
    # MLA shapes, 3 dense layers, 1 shared expert: estimate 671.03B and 37.55B (1.5% over the
    # rounded 37B, which a few decimals of the report would not explain: it rounds down).
    assert m.params_b == pytest.approx(671, rel=0.002)
    assert m.active_params_b == pytest.approx(37, rel=0.02)
    assert (m.kv_lora_rank, m.qk_rope_head_dim, m.head_dim) == (512, 64, 192)
    assert bytes_per_token(m) == bytes_per_token(presets.model("deepseek-v3")) == 70272


def test_gemma_3_nested_text_config_and_sliding_layers(tmp_path):
    m = model_from_config(write(tmp_path, GEMMA_3_27B))
    # 52 of 62 layers slide (every 6th is global), as the preset; the language model alone is
    # 27.0B (the preset's 27.4B counts the vision tower too); embeddings are tied in Gemma.
    assert (m.sliding_window, m.sliding_layers, m.layers, m.kv_heads) == (1024, 52, 62, 16)
    assert m.params_b == pytest.approx(27.0, abs=0.05)
    types = {**GEMMA_3_27B["text_config"], "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}
    del types["sliding_window_pattern"]
    assert model_from_config(write(tmp_path, {"text_config": {**types, "num_hidden_layers": 6}})).sliding_layers == 5
    mistral = {**LLAMA_31_8B, "sliding_window": 4096}  # Mistral 7B v0.1: every layer slides
    assert model_from_config(write(tmp_path, mistral)).sliding_layers == 32


def test_defaults(tmp_path):
    config = {k: v for k, v in LLAMA_31_8B.items() if k not in ("num_key_value_heads", "_name_or_path")}
    m = model_from_config(write(tmp_path, config))
    assert m.kv_heads == 32 and m.head_dim == 128  # MHA, hidden / heads
    assert m.name == tmp_path.name.lower()  # the folder's name without _name_or_path
    tied = model_from_config(write(tmp_path, {**LLAMA_31_8B, "tie_word_embeddings": True}))
    assert tied.params_b == pytest.approx((8_030_261_248 - 128256 * 4096) / 1e9)


@pytest.mark.parametrize("change,match", [
    ({"num_attention_heads": None}, "lacks num_attention_heads"),
    ({"num_hidden_layers": None}, "lacks num_hidden_layers"),
    ({"hidden_size": None}, "lacks hidden_size"),
    ({"vocab_size": None}, "lacks vocab_size"),
    ({"intermediate_size": None}, "lacks intermediate_size"),
    ({"num_hidden_layers": "32"}, "num_hidden_layers must be a whole number > 0"),
    ({"num_key_value_heads": 0}, "num_key_value_heads must be"),
    ({"hidden_size": 4097}, "lacks head_dim"),
])
def test_config_lacking_or_bad_fields(tmp_path, change, match):
    config = {k: v for k, v in {**LLAMA_31_8B, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=f"model-config: .*{match}"):
        model_from_config(write(tmp_path, config))


def test_moe_and_mla_fields_needed(tmp_path):
    with pytest.raises(ValueError, match="lacks num_experts_per_tok"):
        model_from_config(write(tmp_path, {k: v for k, v in MIXTRAL_8X7B.items() if k != "num_experts_per_tok"}))
    with pytest.raises(ValueError, match="lacks v_head_dim"):
        model_from_config(write(tmp_path, {k: v for k, v in DEEPSEEK_V3.items() if k != "v_head_dim"}))
    with pytest.raises(ValueError, match="exceeds the experts"):
        model_from_config(write(tmp_path, {**MIXTRAL_8X7B, "num_experts_per_tok": 9}))


def test_missing_unreadable_not_json(tmp_path):
    with pytest.raises(ValueError, match="model-config: .*nope.json: no such file"):
        model_from_config(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="cannot be read"):
        model_from_config(tmp_path)  # a folder
    with pytest.raises(ValueError, match="not JSON"):
        model_from_config(_text(tmp_path, "{not json"))
    with pytest.raises(ValueError, match="not a config.json"):
        model_from_config(_text(tmp_path, "[1, 2]"))
    with pytest.raises(ValueError, match="cannot be read .*utf-8"):
        model_from_config(_bytes(tmp_path, b"\xff\xfe\x00"))


def _text(tmp_path, text):
    path = tmp_path / "text.json"
    path.write_text(text)
    return path


def _bytes(tmp_path, data):
    path = tmp_path / "bytes.json"
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- the command line


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_model_config(tmp_path, capsys):
    path = write(tmp_path, QWEN3_30B_A3B)
    code, out, err = run(capsys, "calc", "--model-config", str(path), "--gpu", "h100-80gb", "--tp", "2", "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    model = record["inputs"]["model"]
    assert (model["layers"], model["experts"], model["attention_heads"]) == (48, 128, 32)
    assert record["memory"]["bytes_per_token"] == 98304 and record["memory"]["gpu_memory_gib"] == 160
    code, out, _ = run(capsys, "calc", "--model-config", str(path), "--gpu", "h100-80gb", "--params-b", "20", "--json")
    assert code == 0 and json.loads(out)["inputs"]["model"]["params_b"] == 20


@pytest.mark.parametrize("extra,match", [
    (["--preset", "llama-3.1-8b"], "--model-config cannot be combined with --preset"),
    (["--layers", "4"], "--model-config cannot be combined with --layers"),
    (["--sliding-window", "4"], "--model-config cannot be combined with --sliding-window"),
])
def test_cli_model_config_exclusive(tmp_path, capsys, extra, match):
    code, _, err = run(capsys, "calc", "--model-config", str(write(tmp_path, LLAMA_31_8B)), *extra)
    assert code == 2 and match in err and err.count("\n") == 1


def test_cli_model_config_bad_file(tmp_path, capsys):
    code, _, err = run(capsys, "calc", "--model-config", str(tmp_path / "missing.json"))
    assert code == 2 and err.startswith("kvsim: error: model-config: ") and err.count("\n") == 1
    bad = write(tmp_path, {k: v for k, v in LLAMA_31_8B.items() if k != "num_attention_heads"})
    code, _, err = run(capsys, "calc", "--model-config", str(bad))
    assert code == 2 and err.strip().endswith("lacks num_attention_heads")


def test_cli_tp_is_gpus(capsys):
    code, out, _ = run(capsys, "calc", "--preset", "llama-3.1-8b", "--gpu", "h100-80gb", "--tp", "4", "--json")
    same, out2, _ = run(capsys, "calc", "--preset", "llama-3.1-8b", "--gpu", "h100-80gb", "--gpus", "4", "--json")
    assert code == same == 0 and out == out2 and json.loads(out)["memory"]["gpu_memory_gib"] == 320
