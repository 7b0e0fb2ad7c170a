"""KV cache capacity of a hybrid model as vLLM 0.33's hybrid KV cache manager computes it.

A model whose layers are not all full attention (sliding-window layers, Mamba / linear-attention
layers: :class:`~analytic.specs.LayerGroup`) gets one pool of blocks shared by several KV cache
*groups* (DESIGN.md §10). The arithmetic, each step from vLLM 0.33's source:

* **Block size** (``vllm/platforms/interface.py`` ``_align_hybrid_block_size``): with Mamba layers
  the attention block size is raised to the smallest multiple of the kernel block alignment
  (FlashAttention: 16; at least ``--block-size``; MLA: 128; in prefix-caching "align" mode also the
  Mamba layers' checkpoint alignment when all declare one) whose attention page (block x K/V bytes
  of one token of one layer) holds a Mamba state; the Mamba page is padded up to it. Attention-only
  hybrids keep ``--block-size`` (their pages are equal already).
* **Groups** (``vllm/v1/core/kv_cache_planning.py`` ``_get_kv_cache_groups_uniform_page_size``):
  layers are bucketed by spec (full, each sliding window, each Mamba state); the group size is the
  smallest bucket (the largest when it is under 1.5 x the smallest); each bucket is split into
  ``cdiv(layers, group size)`` groups of ``layers[i::n]``.
* **Blocks** (``get_kv_cache_config_from_groups``, default layer-outer layout): bytes per block =
  page x the most layers in one group; blocks = KV memory of one GPU // bytes per block: the
  number vLLM logs and uses as ``num_gpu_blocks``.
* **Maximum concurrency** (``vllm/v1/core/kv_cache_utils.py``
  ``get_max_concurrency_for_kv_cache_config``): blocks / sum over groups of one request's peak at
  ``max_model_len`` (``vllm/v1/kv_cache_interface.py`` ``max_memory_usage_bytes``): full
  ``cdiv(max_model_len, block)``; sliding ``cdiv(min(window - 1 + in-flight tokens,
  max_model_len), block) + 1`` with in-flight tokens = 2 concurrent batches (async scheduling) x
  ``max_num_batched_tokens``; Mamba 2 + checkpoint states in "align" mode (prefix caching on, the
  default), 1 without prefix caching. vLLM logs it, and the cache size in tokens = concurrency x
  ``max_model_len``.

``hybrid_allocator=False`` is vLLM's ``--disable-hybrid-kv-cache-manager``: sliding layers are
allocated as full attention (one group of every layer: the upper bound ``analytic.sizing`` uses);
vLLM refuses it for models with Mamba layers. Tensor parallelism: each GPU holds
``max(1, kv_heads // tp)`` K/V heads (MLA's latent is not split) and its share of each state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import lcm

from analytic.specs import DTYPE_BYTES, LayerGroup, ModelSpec, check_dtype, check_positive

KERNEL_BLOCK = 16  # FlashAttention's supported kernel block sizes: MultipleOf(16) (vllm/v1/attention/backends/flash_attn.py)
MLA_KERNEL_BLOCK = 128  # hybrid MLA/Mamba: manager blocks a multiple of 128 (TRTLLM/FlashInfer MLA decode)
CONCURRENT_BATCHES = 2  # vllm/config/vllm.py max_concurrent_batches: 2 with async scheduling (the default)
MAMBA_CACHE_MODES = ("align", "none")  # prefix caching on (vLLM's default) / off
GROUP_SIZE_SLACK = 1.5  # the largest bucket under 1.5 x the smallest sets the group size (gpt-oss + eagle)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def attention_bytes_per_token_layer(model: ModelSpec, kv_dtype: str = "bf16", tp: int = 1) -> float:
    """K/V (or MLA latent + rope key) bytes of one token in one attention layer on one GPU."""
    check_dtype("kv-dtype", kv_dtype)
    if model.is_mla:
        return (model.kv_lora_rank + model.qk_rope_head_dim) * DTYPE_BYTES[kv_dtype]
    return 2 * max(1, model.kv_heads // tp) * model.head_dim * DTYPE_BYTES[kv_dtype]


def _state_alignment(mamba: list[LayerGroup]) -> int:
    """vLLM's get_mamba_prefill_checkpoint_alignment: the lcm when every Mamba layer declares one
    (1 here means none declared), else none."""
    if not mamba or any(g.checkpoint_alignment == 1 for g in mamba):
        return 1
    return lcm(*(g.checkpoint_alignment for g in mamba))


def unified_block_size(model: ModelSpec, kv_dtype: str = "bf16", block_size: int = 16, tp: int = 1,
                       mamba_cache_mode: str = "align") -> int:
    """The attention block size vLLM uses for ``model`` (``_align_hybrid_block_size``): ``block_size``
    unless Mamba states need larger attention pages."""
    mamba = [g for g in model.groups if g.kind == "mamba"]
    if not mamba or model.kv_layers == 0:
        return block_size
    per_token = attention_bytes_per_token_layer(model, kv_dtype, tp)
    state = max(g.state_bytes(tp) for g in mamba)
    align = max(KERNEL_BLOCK, block_size)
    if model.is_mla:
        align = max(align, MLA_KERNEL_BLOCK)
    if mamba_cache_mode == "align":
        align = lcm(align, _state_alignment(mamba))
    needed = align * _cdiv(state, int(align * per_token))
    needed = KERNEL_BLOCK * _cdiv(needed, KERNEL_BLOCK)
    return max(block_size, needed)


@dataclass(frozen=True)
class GroupPlan:
    """One kind of layer in the pool: ``groups`` vLLM KV cache groups of up to ``layers_per_group``
    layers; every block of the pool is ``page_bytes`` per layer; ``peak_blocks`` is what one request
    at ``max_model_len`` holds in each of the groups (None: no max_model_len)."""

    kind: str
    layers: int
    groups: int
    layers_per_group: int
    page_bytes: int
    window: int = 0
    state_bytes: int = 0  # a Mamba layer's state per request, before padding to the page
    peak_blocks: int | None = None
    mixer: str = ""

    def blocks_for(self, tokens: int, block_size: int) -> int:
        """Blocks one finished sequence of ``tokens`` keeps in each group of this kind: every block
        (full), the window's (sliding: the ones before it are freed, still cached but first to go),
        one state (Mamba: the last block boundary's)."""
        blocks = _cdiv(tokens, block_size)
        if self.kind == "sliding":
            return min(blocks, _cdiv(self.window - 1, block_size) + 1)
        if self.kind == "mamba":
            return 1
        return blocks


@dataclass(frozen=True)
class HybridPlan:
    """vLLM's KV cache configuration of one instance: its groups, block size, blocks and the
    maximum concurrency it logs."""

    block_size: int
    bytes_per_block: int  # on one GPU
    num_blocks: int  # vLLM's num_gpu_blocks (the pool, null block included)
    groups: tuple[GroupPlan, ...]
    tp: int = 1
    max_model_len: int | None = None
    max_concurrency: float | None = None
    kv_cache_tokens: int | None = None  # vLLM's "KV cache size: N tokens" = int(concurrency x max_model_len)
    hybrid_allocator: bool = True
    mamba_cache_mode: str = "align"

    @property
    def group_count(self) -> int:
        return sum(g.groups for g in self.groups)

    @property
    def pool_blocks(self) -> int:
        """The blocks requests can use: vLLM keeps one of ``num_blocks`` aside (its null block)."""
        return max(self.num_blocks - 1, 0)

    @property
    def group_kinds(self) -> list[tuple[str, int, int]]:
        """(kind, window, vLLM KV cache groups of that kind) per kind: the groups
        :func:`analytic.hybrid_lru.hybrid_lru_model` takes."""
        return [(g.kind, g.window, g.groups) for g in self.groups]

    def blocks_per_sequence(self, tokens: int) -> int:
        """Pool blocks one finished sequence of ``tokens`` tokens keeps, over all groups."""
        return sum(g.groups * g.blocks_for(tokens, self.block_size) for g in self.groups)

    def effective_tokens(self, tokens: int) -> int:
        """The pool in tokens of context when it holds sequences of ``tokens`` tokens: blocks x
        tokens / blocks per sequence (the figure the hit-rate models take as the capacity)."""
        tokens = max(1, int(tokens))
        return self.num_blocks * tokens // self.blocks_per_sequence(tokens)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["group_count"] = self.group_count
        out["pool_blocks"] = self.pool_blocks
        return out


def plan(model: ModelSpec, kv_bytes: float, *, kv_dtype: str = "bf16", block_size: int = 16, tp: int = 1,
         max_model_len: int | None = None, max_num_batched_tokens: int = 8192, hybrid_allocator: bool = True,
         mamba_cache_mode: str = "align", concurrent_batches: int = CONCURRENT_BATCHES) -> HybridPlan:
    """vLLM's KV cache configuration for ``model`` with ``kv_bytes`` of KV memory over ``tp`` GPUs
    (each gets ``kv_bytes / tp``). ``max_model_len`` (default the model's context) sets the
    maximum concurrency; ``max_num_batched_tokens`` the sliding groups' in-flight tokens."""
    check_dtype("kv-dtype", kv_dtype)
    check_positive("block-size", block_size, integer=True)
    check_positive("gpus", tp, integer=True)
    check_positive("max-num-batched-tokens", max_num_batched_tokens, integer=True)
    if mamba_cache_mode not in MAMBA_CACHE_MODES:
        raise ValueError(f"mamba-cache-mode must be one of {', '.join(MAMBA_CACHE_MODES)} (got {mamba_cache_mode!r})")
    if kv_bytes <= 0:
        raise ValueError(f"the KV cache must have > 0 bytes (got {kv_bytes:g})")
    max_model_len = model.max_context if max_model_len is None else max_model_len
    kinds = list(model.groups)
    if not hybrid_allocator:
        if any(g.kind == "mamba" for g in kinds):
            raise ValueError("no-hybrid-allocator: vLLM needs its hybrid KV cache manager for models with Mamba / "
                             "linear-attention layers (they fail at startup without it)")
        kinds = [LayerGroup("full", model.kv_layers)]
    bs = unified_block_size(model, kv_dtype, block_size, tp, mamba_cache_mode) if hybrid_allocator else block_size
    attention_page = int(bs * attention_bytes_per_token_layer(model, kv_dtype, tp))
    states = [g.state_bytes(tp) for g in kinds if g.kind == "mamba"]
    page = attention_page if model.kv_layers else max(states)
    sizes = [g.layers for g in kinds]
    group_size = min(sizes) if max(sizes) >= GROUP_SIZE_SLACK * min(sizes) else max(sizes)
    inflight = concurrent_batches * max_num_batched_tokens
    out = []
    for g in kinds:
        n = _cdiv(g.layers, group_size)
        if max_model_len is None:
            peak = None
        elif g.kind == "full":
            peak = _cdiv(max_model_len, bs)
        elif g.kind == "sliding":
            peak = _cdiv(min(g.window - 1 + inflight, max_model_len), bs) + 1
        else:
            peak = (2 + g.checkpoint_blocks) if mamba_cache_mode == "align" else 1
        out.append(GroupPlan(g.kind, g.layers, n, _cdiv(g.layers, n), page, g.window,
                             g.state_bytes(tp) if g.kind == "mamba" else 0, peak, g.mixer))
    bytes_per_block = page * max(g.layers_per_group for g in out)
    blocks = int(kv_bytes / tp // bytes_per_block)
    concurrency = tokens = None
    if max_model_len is not None:
        concurrency = blocks / sum(g.groups * g.peak_blocks for g in out)
        tokens = int(concurrency * max_model_len)
    return HybridPlan(bs, bytes_per_block, blocks, tuple(out), tp, max_model_len, concurrency, tokens,
                      hybrid_allocator, mamba_cache_mode)
