"""A model from its Hugging Face ``config.json`` (``--model-config PATH``): geometry and parameters.

Reads the fields every decoder-only transformer's config has (``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_size``,
``intermediate_size``, ``vocab_size``), the mixture-of-experts ones (``num_local_experts`` /
``num_experts`` / ``n_routed_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
shared experts, leading dense layers), MLA's (``kv_lora_rank``, ``qk_rope_head_dim``, ...) and
sliding windows (``sliding_window`` with ``layer_types``), from the top level or a nested
``text_config`` (Gemma 3, multimodal models). The parameter count is estimated from the shapes:
embeddings (and the output projection unless tied), attention projections, the gated MLP or the
experts and their router, and the norms; biases and per-head q/k norms (a few thousand
parameters a layer) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from analytic.specs import ModelSpec

# Gated MLPs (SwiGLU/GeGLU: gate, up and down projections), as every model family kvsim has a
# preset for (Llama, Mistral, Mixtral, Qwen, DeepSeek, Gemma, Phi-3, gpt-oss).
MLP_MATRICES = 3
# Norms per decoder layer: before attention and before the MLP (Gemma 2/3 add two more, which a
# few thousand parameters do not change).
NORMS_PER_LAYER = 2


class _Config:
    """The config's fields, with errors that name the file and the field."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default=None):
        value = self.data.get(key)
        return default if value is None else value

    def int(self, *keys: str, default: int | None = None, allow_zero: bool = False) -> int:
        """The first of ``keys`` the config has, a whole number > 0 (>= 0 with allow_zero)."""
        for key in keys:
            if self.has(key):
                value = self.data[key]
                ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
                if not ok:
                    raise ValueError(f"model-config: {self.path}: {key} must be a whole number "
                                     f"{'>= 0' if allow_zero else '> 0'} (got {value!r})")
                return value
        if default is None:
            raise ValueError(f"model-config: {self.path} lacks {keys[0]}")
        return default


def _read(path: str | Path) -> _Config:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"model-config: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"model-config: {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"model-config: {path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"model-config: {path}: not a config.json (a JSON object)")
    nested = data.get("text_config")
    if "num_hidden_layers" not in data and isinstance(nested, dict):
        # Multimodal configs (Gemma 3, Llama 4, Mistral 3) hold the language model's in text_config;
        # a few fields (the vocabulary, tying) may sit at the top level only.
        data = {**{k: v for k, v in data.items() if k != "text_config"}, **nested}
    return _Config(path, data)


def _sliding(c: _Config, layers: int) -> tuple[int, int]:
    """(window, sliding layers): ``layer_types`` counts them; else Gemma 3's pattern (every
    ``sliding_window_pattern``-th layer global), Gemma 2's alternation, or every layer."""
    window = c.get("sliding_window", 0)
    if c.get("use_sliding_window") is False or not window:
        return 0, 0
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"model-config: {c.path}: sliding_window must be a whole number >= 0 (got {window!r})")
    types = c.get("layer_types")
    if isinstance(types, list):
        sliding = sum(1 for t in types[:layers] if t == "sliding_attention")
    elif c.has("sliding_window_pattern"):
        sliding = layers - layers // c.int("sliding_window_pattern")
    elif str(c.get("model_type", "")).startswith("gemma2"):
        sliding = (layers + 1) // 2  # even layers slide
    else:
        sliding = layers  # Mistral 7B v0.1, Phi-3: one window on every layer
    return (window, sliding) if sliding else (0, 0)


def model_from_config(path: str | Path) -> ModelSpec:
    """The :class:`~analytic.specs.ModelSpec` of a Hugging Face ``config.json``: geometry, context
    length and parameters (total, and active for mixture-of-experts models) estimated from the
    shapes. A missing, unreadable or incomplete file raises ``ValueError`` naming the field."""
    c = _read(path)
    layers = c.int("num_hidden_layers", "n_layer", "num_layers")
    heads = c.int("num_attention_heads", "n_head")
    hidden = c.int("hidden_size", "n_embd", "d_model")
    kv_heads = c.int("num_key_value_heads", default=heads)
    head_dim = c.int("head_dim", default=hidden // heads if hidden % heads == 0 else 0, allow_zero=True)
    if not head_dim:
        raise ValueError(f"model-config: {c.path} lacks head_dim (hidden_size {hidden} is not a multiple of "
                         f"num_attention_heads {heads})")
    vocab = c.int("vocab_size")
    tied = c.get("tie_word_embeddings", str(c.get("model_type", "")).startswith("gemma"))

    # Attention projections.
    kv_lora_rank = c.int("kv_lora_rank", default=0, allow_zero=True)
    rope_dim = 0
    if kv_lora_rank:  # MLA (DeepSeek-V2/V3): low-rank queries and a compressed KV latent
        rope_dim = c.int("qk_rope_head_dim")
        nope_dim = c.int("qk_nope_head_dim")
        v_dim = c.int("v_head_dim")
        head_dim = nope_dim + rope_dim
        q_rank = c.int("q_lora_rank", default=0, allow_zero=True)
        q = hidden * q_rank + q_rank + q_rank * heads * head_dim if q_rank else hidden * heads * head_dim
        attention = (q + hidden * (kv_lora_rank + rope_dim) + kv_lora_rank
                     + kv_lora_rank * heads * (nope_dim + v_dim) + heads * v_dim * hidden)
    else:
        attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden

    # MLP or experts.
    experts = c.int("num_local_experts", "num_experts", "n_routed_experts", default=0, allow_zero=True)
    per_token = None
    if experts:
        per_token = c.int("num_experts_per_tok", "num_experts_per_token", "moe_topk")
        if per_token > experts:
            raise ValueError(f"model-config: {c.path}: num_experts_per_tok ({per_token}) exceeds the "
                             f"experts ({experts})")
        expert_size = MLP_MATRICES * hidden * c.int("moe_intermediate_size", "intermediate_size")
        shared = c.int("n_shared_experts", default=0, allow_zero=True) * expert_size
        if c.has("shared_expert_intermediate_size"):  # Qwen2-MoE: one shared expert of its own size
            shared += MLP_MATRICES * hidden * c.int("shared_expert_intermediate_size", allow_zero=True)
        dense_layers = min(layers, c.int("first_k_dense_replace", default=0, allow_zero=True))
        dense_mlp = MLP_MATRICES * hidden * c.int("intermediate_size") if dense_layers else 0
        moe_layers = layers - dense_layers
        router = hidden * experts
        mlp_total = dense_layers * dense_mlp + moe_layers * (experts * expert_size + shared + router)
        mlp_active = dense_layers * dense_mlp + moe_layers * (per_token * expert_size + shared + router)
    else:
        mlp_total = mlp_active = layers * MLP_MATRICES * hidden * c.int("intermediate_size")

    embeddings = vocab * hidden * (1 if tied else 2)
    norms = layers * NORMS_PER_LAYER * hidden + hidden
    total = embeddings + layers * attention + mlp_total + norms
    active = embeddings + layers * attention + mlp_active + norms
    window, sliding = _sliding(c, layers)
    name = c.get("_name_or_path") or c.path.parent.name or "custom"
    return ModelSpec(
        name=str(name).rstrip("/").rpartition("/")[2].lower() or "custom",
        layers=layers, kv_heads=kv_heads, head_dim=head_dim, params_b=total / 1e9,
        kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim,
        sliding_window=window, sliding_layers=sliding,
        max_context=c.int("max_position_embeddings", default=0, allow_zero=True) or None,
        attention_heads=heads, hidden_size=hidden,
        intermediate_size=c.int("moe_intermediate_size", "intermediate_size") if experts else c.int("intermediate_size"),
        experts=experts or None, experts_per_token=per_token,
        active_params_b=active / 1e9 if experts else None,
    )

