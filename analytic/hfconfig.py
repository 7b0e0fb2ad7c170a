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

from analytic.specs import LayerGroup, ModelSpec

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


# Layer kinds as configs name them (``layer_types``, ``layers_block_type``, NemotronH's
# ``hybrid_override_pattern``): full attention, sliding window, recurrent state (Mamba, linear
# attention), both (Falcon-H1: attention and Mamba side by side in every layer), or no mixer (MLP).
LAYER_TYPE_KINDS = {"full_attention": "full", "attention": "full", "sliding_attention": "sliding",
                    "linear_attention": "mamba", "mamba": "mamba", "hybrid": "both", "mlp": None, "moe": None}
PATTERN_KINDS = {"M": "mamba", "*": "full", "-": None, "E": None}
# Gated DeltaNet (Qwen3-Next) in vLLM 0.33 on Hopper: FlashInfer's prefill exports one checkpoint
# state mid-prefill, on a 64-token grid (vllm/model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py,
# FLASHINFER_GDN_CHECKPOINT_ALIGNMENT); Mamba2 mixers export one at any position (mamba_mixer2.py).
GDN_CHECKPOINT = (1, 64)
MAMBA2_CHECKPOINT = (1, 1)
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _layer_kinds(c: _Config, layers: int) -> list[str | None] | None:
    """Each layer's kind (LAYER_TYPE_KINDS' values), or None when the config does not list them."""
    types = c.get("layer_types")
    key = "layer_types"
    if not isinstance(types, list) and isinstance(c.get("layers_block_type"), list):
        types, key = c.get("layers_block_type"), "layers_block_type"
    if isinstance(types, list):
        kinds = []
        for i, t in enumerate(types[:layers]):
            if t not in LAYER_TYPE_KINDS:
                raise ValueError(f"model-config: {c.path}: {key}[{i}] is {t!r}, not a layer kind kvsim knows "
                                 f"({', '.join(LAYER_TYPE_KINDS)})")
            kinds.append(LAYER_TYPE_KINDS[t])
        return kinds
    pattern = c.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        for i, ch in enumerate(pattern):
            if ch not in PATTERN_KINDS:
                raise ValueError(f"model-config: {c.path}: hybrid_override_pattern[{i}] is {ch!r}, not a layer kind "
                                 f"kvsim knows (M Mamba, * attention, - MLP, E experts)")
        return [PATTERN_KINDS[ch] for ch in pattern]
    if c.has("attn_layer_period"):  # Jamba
        period = c.int("attn_layer_period")
        offset = c.int("attn_layer_offset", default=0, allow_zero=True)
        return ["full" if i % period == offset else "mamba" for i in range(layers)]
    model_type = str(c.get("model_type", ""))
    if model_type == "qwen3_next":
        interval = c.int("full_attention_interval", default=4)
        return ["full" if (i + 1) % interval == 0 else "mamba" for i in range(layers)]
    if model_type == "falcon_h1":
        return ["both"] * layers
    return None


def _dtype(c: _Config, key: str, default: str) -> str:
    value = c.get(key)
    if value is None or value == "auto":
        return default
    if value not in TORCH_DTYPES:
        raise ValueError(f"model-config: {c.path}: {key} must be one of {', '.join(TORCH_DTYPES)} (got {value!r})")
    return TORCH_DTYPES[value]


def _mamba_group(c: _Config, layers: int, hidden: int) -> LayerGroup:
    """The recurrent state of ``layers`` layers from the config's Mamba / linear-attention fields,
    with the shapes vLLM 0.33 allocates (vllm/model_executor/layers/mamba/mamba_utils.py:
    gated_delta_net_state_shape, mamba2_state_shape, mamba1_state_shape; conv states (kernel - 1,
    dim), TP splits the dim; SSM states TP-split on their first axis)."""
    model_dtype = _dtype(c, "torch_dtype", _dtype(c, "dtype", "bf16"))
    nemotron = str(c.get("model_type", "")).startswith("nemotron_h")
    ssm_dtype = _dtype(c, "mamba_ssm_cache_dtype", "fp32" if nemotron else model_dtype)
    if c.has("linear_num_value_heads"):  # Qwen3-Next Gated DeltaNet
        nk, nv = c.int("linear_num_key_heads"), c.int("linear_num_value_heads")
        kd, vd = c.int("linear_key_head_dim"), c.int("linear_value_head_dim")
        kernel = c.int("linear_conv_kernel_dim")
        shapes, mixer, (blocks, align) = ((kernel - 1, kd * nk * 2 + vd * nv), (nv, vd, kd)), "gated-deltanet", GDN_CHECKPOINT
        dtypes = (model_dtype, model_dtype)
    elif c.has("mamba_n_heads") or c.has("mamba_num_heads"):  # Mamba2: NemotronH, Granite 4.0-H, Falcon-H1, Bamba
        heads = c.int("mamba_n_heads", "mamba_num_heads")
        state = c.int("ssm_state_size", "mamba_d_state")
        groups = c.int("n_groups", "mamba_n_groups", default=1)
        kernel = c.int("conv_kernel", "mamba_d_conv", default=4)
        if c.has("mamba_d_ssm"):
            inner = c.int("mamba_d_ssm")
        elif nemotron:
            inner = heads * c.int("mamba_head_dim", "mamba_d_head")
        else:
            inner = c.int("mamba_expand", "expand", default=2) * hidden
        head_dim = c.get("mamba_d_head", c.get("mamba_head_dim", "auto"))
        head_dim = inner // heads if head_dim == "auto" else c.int("mamba_d_head", "mamba_head_dim")
        shapes, mixer, (blocks, align) = ((kernel - 1, inner + 2 * groups * state), (heads, head_dim, state)), \
            "mamba2", MAMBA2_CHECKPOINT
        dtypes = (model_dtype, ssm_dtype)
    elif c.has("mamba_d_state"):  # Mamba1: Jamba
        inner = c.int("mamba_expand", default=2) * hidden
        kernel = c.int("mamba_d_conv", default=4)
        shapes, mixer, (blocks, align) = ((kernel - 1, inner), (inner, c.int("mamba_d_state"))), "mamba1", (0, 1)
        dtypes = (model_dtype, ssm_dtype)
    else:
        raise ValueError(f"model-config: {c.path} has Mamba / linear-attention layers but lacks their state fields "
                         "(mamba_d_state / ssm_state_size, or linear_num_value_heads)")
    if any(dim <= 0 for shape in shapes for dim in shape):
        raise ValueError(f"model-config: {c.path}: the SSM state of a {mixer} layer is 0 bytes ({shapes}): "
                         "check mamba_d_conv / conv_kernel / linear_conv_kernel_dim")
    return LayerGroup("mamba", layers, state_shapes=shapes, state_dtypes=dtypes, shard_axes=(1, 0),
                      checkpoint_blocks=blocks, checkpoint_alignment=align, mixer=mixer)


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
    context = c.int("max_position_embeddings", default=0, allow_zero=True) or None
    if window and context and window > context:
        raise ValueError(f"model-config: {c.path}: sliding_window {window} is larger than max_position_embeddings "
                         f"{context} (the context limit)")
    kinds = _layer_kinds(c, layers)
    groups = ()
    if kinds is not None and any(k in ("mamba", "both") for k in kinds):
        full = sum(1 for k in kinds if k in ("full", "both"))
        sliding = sum(1 for k in kinds if k == "sliding")
        window = window if sliding else 0
        if sliding and not window:
            raise ValueError(f"model-config: {c.path}: sliding_attention layers need sliding_window > 0")
        groups = tuple(g for g in (
            LayerGroup("full", full) if full else None,
            LayerGroup("sliding", sliding, window) if sliding else None,
            _mamba_group(c, sum(1 for k in kinds if k in ("mamba", "both")), hidden)) if g is not None)
    name = c.get("_name_or_path") or c.path.parent.name or "custom"
    return ModelSpec(
        name=str(name).rstrip("/").rpartition("/")[2].lower() or "custom",
        layers=layers, kv_heads=kv_heads, head_dim=head_dim, params_b=total / 1e9,
        kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim,
        sliding_window=window, sliding_layers=sliding, layer_groups=groups,
        max_context=context,
        attention_heads=heads, hidden_size=hidden,
        intermediate_size=c.int("moe_intermediate_size", "intermediate_size") if experts else c.int("intermediate_size"),
        experts=experts or None, experts_per_token=per_token,
        active_params_b=active / 1e9 if experts else None,
    )

