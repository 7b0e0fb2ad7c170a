"""Model and GPU presets.

Model values are read from ``presets.csv`` (a copy of ../shared/presets.csv, whose ``sources``
column says where each value comes from); a preset is named by its ``model`` column lower-cased.
GPU values are each vendor's datasheet, cited next to each.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from analytic.specs import LayerGroup, ModelSpec

PRESETS_CSV = Path(__file__).with_name("presets.csv")
# Hybrid models with Mamba / linear-attention layers (not in ../shared/presets.csv): each row's
# ``sources`` column names the file every value was read from; values not found are left empty.
HYBRID_PRESETS_CSV = Path(__file__).with_name("hybrid_presets.csv")

# Per-GPU memory as each vendor documents it ("80GB" etc.). HBM is sized in powers of two, so
# the nominal figure is read as GiB, as the original calculator did; the driver reports a
# little less (an H100 80GB shows 81,559 MiB).
GPUS = {
    "h100-80gb": 80.0,  # NVIDIA H100 SXM/PCIe datasheet: 80GB HBM3 / HBM2e
    "h200-141gb": 141.0,  # NVIDIA H200 datasheet: 141GB HBM3e
    "a100-40gb": 40.0,  # NVIDIA A100 datasheet: 40GB HBM2
    "a100-80gb": 80.0,  # NVIDIA A100 datasheet: 80GB HBM2e
    "l40s-48gb": 48.0,  # NVIDIA L40S datasheet: 48GB GDDR6 with ECC
    "b200-180gb": 180.0,  # NVIDIA DGX B200: 1,440GB HBM3e over 8 GPUs
    "mi300x-192gb": 192.0,  # AMD Instinct MI300X datasheet: 192GB HBM3
}


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures: what the step time's roofline (``analytic.steptime``) needs.

    FLOPs are peak *dense* tensor-core FLOPs per second (datasheets print the 2:4-sparse figure,
    twice the dense one, with an asterisk); None: the GPU has no such unit. Bandwidths are bytes
    per second; ``interconnect_bytes_per_s`` is the datasheet's per-GPU GPU-to-GPU figure, which
    counts both directions (``link_bytes_per_s`` is one direction).
    """

    name: str
    memory_gib: float
    bf16_flops: float  # also fp16: every GPU here runs both at the same rate
    fp8_flops: float | None
    int8_flops: float | None  # int8 tensor ops per second
    fp32_flops: float | None  # non-tensor FP32 (PyTorch does not use TF32 for matmuls by default)
    hbm_bytes_per_s: float
    interconnect_bytes_per_s: float
    interconnect: str

    @property
    def link_bytes_per_s(self) -> float:
        """One direction of the interconnect: what each hop of a ring all-reduce moves at (every
        GPU sends to one neighbour while it receives from the other)."""
        return self.interconnect_bytes_per_s / 2

    def peak_flops(self, dtype: str) -> float | None:
        """Peak dense FLOPs/s of matmuls in ``dtype`` (fp16 as bf16); None if the GPU has none."""
        return {"bf16": self.bf16_flops, "fp16": self.bf16_flops, "fp8": self.fp8_flops,
                "int8": self.int8_flops, "fp32": self.fp32_flops}.get(dtype)


# Datasheets (dense figures = the printed sparse figure / 2):
# * H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet: BF16/FP16 1,979 TFLOPS*, FP8 3,958 TFLOPS*,
#   INT8 3,958 TOPS* (*with sparsity), FP32 67 TFLOPS, HBM3 3.35 TB/s, NVLink 900 GB/s.
# * H200 SXM: NVIDIA H200 datasheet: the H100's compute, HBM3e 4.8 TB/s, NVLink 900 GB/s.
# * A100 SXM4: NVIDIA A100 datasheet: BF16/FP16 312 TFLOPS (624* sparse), INT8 624 TOPS,
#   FP32 19.5 TFLOPS, no FP8; 40GB HBM2 1,555 GB/s, 80GB HBM2e 2,039 GB/s; NVLink 600 GB/s.
# * L40S: NVIDIA L40S datasheet: BF16/FP16 362.05 TFLOPS (733* sparse), FP8 733 TFLOPS, INT8
#   733 TOPS, FP32 91.6 TFLOPS, GDDR6 864 GB/s; no NVLink: PCIe Gen4 x16, 64 GB/s bidirectional.
# * B200: NVIDIA DGX B200 datasheet (8 GPUs): 72 PFLOPS FP8 training (sparse) = 4.5 PFLOPS dense
#   FP8 per GPU; HGX B200 per GPU: BF16 4.5 PFLOPS*, INT8 9 POPS*; HBM3e 64 TB/s over 8 GPUs =
#   8 TB/s each; NVLink 5: 14.4 TB/s over 8 GPUs = 1.8 TB/s each. No FP32 figure is used.
# * MI300X: AMD Instinct MI300X datasheet: FP16/BF16 1,307.4 TFLOPS (2,614.9 sparse), FP8
#   2,614.9 TFLOPS, INT8 2,614.9 TOPS, FP32 163.4 TFLOPS, HBM3 5.3 TB/s; Infinity Fabric: 7 links
#   x 128 GB/s = 896 GB/s per GPU.
GPU_SPECS = {spec.name: spec for spec in (
    GpuSpec("h100-80gb", GPUS["h100-80gb"], 989e12, 1979e12, 1979e12, 67e12, 3.35e12, 900e9, "NVLink 4"),
    GpuSpec("h200-141gb", GPUS["h200-141gb"], 989e12, 1979e12, 1979e12, 67e12, 4.8e12, 900e9, "NVLink 4"),
    GpuSpec("a100-40gb", GPUS["a100-40gb"], 312e12, None, 624e12, 19.5e12, 1555e9, 600e9, "NVLink 3"),
    GpuSpec("a100-80gb", GPUS["a100-80gb"], 312e12, None, 624e12, 19.5e12, 2039e9, 600e9, "NVLink 3"),
    GpuSpec("l40s-48gb", GPUS["l40s-48gb"], 362.05e12, 733e12, 733e12, 91.6e12, 864e9, 64e9, "PCIe Gen4 x16"),
    GpuSpec("b200-180gb", GPUS["b200-180gb"], 2.25e15, 4.5e15, 4.5e15, None, 8e12, 1.8e12, "NVLink 5"),
    GpuSpec("mi300x-192gb", GPUS["mi300x-192gb"], 1307.4e12, 2614.9e12, 2614.9e12, 163.4e12, 5.3e12, 896e9,
            "Infinity Fabric"),
)}


def _active_params_b(row: dict) -> float | None:
    """A MoE model's active parameters: the first "<N>B active" of the ``attention`` column, else of
    the ``sources`` column (Mixtral: "12.9B active"); None for a dense model."""
    for column in ("attention", "sources"):
        match = re.search(r"(\d+(?:\.\d+)?)B active", row[column])
        if match:
            return float(match.group(1))
    return None


def _experts(text: str) -> tuple[int | None, int | None]:
    """'MoE 128 experts top-8' / 'MoE FFN 8 experts top-2' / 'MoE 256 routed+1 shared top-8' ->
    (routed experts, experts per token); (None, None) for a dense model."""
    match = re.search(r"MoE(?: FFN)? (\d+) (?:experts|routed)\b.*?top-(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def _sliding_layers(text: str, layers: int) -> int:
    """'21 of 42: ...' -> 21; 'all 32 layers ...' -> 32; 'none' -> 0."""
    if text.startswith("all"):
        return layers
    match = re.match(r"(\d+) of", text)
    return int(match.group(1)) if match else 0


@cache
def models() -> dict[str, ModelSpec]:
    out = {}
    with PRESETS_CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            layers = int(row["layers"])
            window = int(row["sliding_window"]) if row["sliding_window"].isdigit() else 0
            experts, per_token = _experts(row["attention"])
            out[row["model"].lower()] = ModelSpec(
                name=row["model"].lower(),
                layers=layers,
                kv_heads=int(row["kv_heads"]),
                head_dim=int(row["head_dim"]),
                params_b=float(row["params_b"]),
                kv_lora_rank=int(row["kv_lora_rank"] or 0),
                qk_rope_head_dim=int(row["qk_rope_head_dim"] or 0),
                sliding_window=window,
                sliding_layers=_sliding_layers(row["sliding_layers"], layers) if window else 0,
                max_context=int(row["max_context"]),
                attention_heads=int(row["attention_heads"]),
                hidden_size=int(row["hidden_size"]),
                experts=experts,
                experts_per_token=per_token,
                active_params_b=_active_params_b(row) if experts else None,
            )
    out.update((m.name, m) for m in EXTRA_SLIDING_MODELS)
    return out


# Sliding-window presets beyond ../shared/presets.csv (which analytic/presets.csv copies byte for
# byte), each value with its source:
# gemma-3-12b: AI-Hypercomputer/maxtext@0ed7bd52 MaxText/configs/models/gemma3-12b.yml
# (base_num_decoder_layers 48, base_emb_dim 3840, base_num_query_heads 16, base_num_kv_heads 8,
# head_dim 256, sliding_window_size 1024); google-deepmind/gemma GEMMA3_ATTENTION_PATTERN (5 local
# + 1 global, as gemma-3-27b in presets.csv: 40 sliding, 8 global layers); transformers
# models/gemma3/configuration_gemma3.py (max_position_embeddings 131072, sliding_window_pattern 6);
# keras-team/keras-hub@00d9f10a keras_hub/src/models/gemma3/gemma3_presets.py (gemma3_12b:
# 12,187,079,280 parameters, vision + text, as presets.csv's gemma-3-27b counts them).
EXTRA_SLIDING_MODELS = (
    ModelSpec(name="gemma-3-12b", layers=48, kv_heads=8, head_dim=256, params_b=12.2, sliding_window=1024,
              sliding_layers=40, max_context=131072, attention_heads=16, hidden_size=3840),
)


def _shapes(text: str) -> tuple[tuple[int, ...], ...]:
    """'3x8192;32x128x128' -> ((3, 8192), (32, 128, 128))."""
    return tuple(tuple(int(d) for d in shape.split("x")) for shape in text.split(";"))


@cache
def hybrid_models() -> dict[str, ModelSpec]:
    """The presets of ``hybrid_presets.csv``: attention layers plus Mamba / linear-attention ones."""
    out = {}
    with HYBRID_PRESETS_CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            number = lambda key, kind=int: kind(row[key]) if row[key] else None  # noqa: E731
            mamba = LayerGroup("mamba", int(row["mamba_layers"]), state_shapes=_shapes(row["state_shapes"]),
                               state_dtypes=tuple(row["state_dtypes"].split(";")),
                               shard_axes=tuple(int(a) for a in row["shard_axes"].split(";")),
                               checkpoint_blocks=int(row["checkpoint_blocks"]),
                               checkpoint_alignment=int(row["checkpoint_alignment"]), mixer=row["mixer"])
            out[row["model"].lower()] = ModelSpec(
                name=row["model"].lower(), layers=int(row["layers"]), kv_heads=int(row["kv_heads"]),
                head_dim=int(row["head_dim"]), params_b=number("params_b", float), max_context=number("max_context"),
                attention_heads=int(row["attention_heads"]), hidden_size=int(row["hidden_size"]),
                experts=number("experts"), experts_per_token=number("experts_per_token"),
                active_params_b=number("active_params_b", float),
                layer_groups=(LayerGroup("full", int(row["full_layers"])), mamba),
            )
    return out


def model(name: str) -> ModelSpec:
    table = {**models(), **hybrid_models()}
    if name.lower() not in table:
        raise ValueError(f"preset must be one of {', '.join(table)} (got {name!r})")
    return table[name.lower()]


def gpu_memory_gib(name: str) -> float:
    if name.lower() not in GPUS:
        raise ValueError(f"gpu must be one of {', '.join(GPUS)} (got {name!r})")
    return GPUS[name.lower()]


def gpu(name: str) -> GpuSpec:
    """The datasheet figures of GPU preset ``name``."""
    if name.lower() not in GPU_SPECS:
        raise ValueError(f"gpu must be one of {', '.join(GPU_SPECS)} (got {name!r})")
    return GPU_SPECS[name.lower()]
