"""Model and GPU presets.

Model values are read from ``presets.csv`` (a copy of ../shared/presets.csv, whose ``sources``
column says where each value comes from); a preset is named by its ``model`` column lower-cased.
"""

from __future__ import annotations

import csv
import re
from functools import cache
from pathlib import Path

from analytic.specs import ModelSpec

PRESETS_CSV = Path(__file__).with_name("presets.csv")

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
            )
    return out


def model(name: str) -> ModelSpec:
    table = models()
    if name.lower() not in table:
        raise ValueError(f"preset must be one of {', '.join(table)} (got {name!r})")
    return table[name.lower()]


def gpu_memory_gib(name: str) -> float:
    if name.lower() not in GPUS:
        raise ValueError(f"gpu must be one of {', '.join(GPUS)} (got {name!r})")
    return GPUS[name.lower()]
