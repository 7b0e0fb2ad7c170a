"""``kvsim presets``: the model and GPU presets."""

from __future__ import annotations

import argparse
import json

from analytic import presets
from analytic.sizing import bytes_per_token


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd)


def cmd(a) -> int:
    models = presets.models()
    if a.json:
        print(json.dumps({
            "models": {n: {**m.__dict__, "bytes_per_token_bf16": bytes_per_token(m)} for n, m in models.items()},
            "gpus": {n: {"memory_gib": g} for n, g in presets.GPUS.items()},
        }, indent=2))
        return 0
    print(f"{'model':24} {'layers':>6} {'kv_heads':>8} {'head_dim':>8} {'params_b':>8} {'B/token bf16':>13}  attention")
    for name, m in models.items():
        print(f"{name:24} {m.layers:>6} {m.kv_heads:>8} {m.head_dim:>8} {m.params_b:>8g} "
              f"{bytes_per_token(m):>13,.0f}  {m.attention}")
    print(f"\nhybrid presets (Mamba / linear-attention layers; analytic/hybrid_presets.csv, sources in it):")
    for name, m in presets.hybrid_models().items():
        params = "-" if m.params_b is None else f"{m.params_b:g}"
        print(f"{name:24} {m.layers:>6} {m.kv_heads:>8} {m.head_dim:>8} {params:>8} "
              f"{bytes_per_token(m):>13,.0f}  {m.attention}")
    print(f"\n{'gpu':24} {'memory (GiB)':>12}")
    for name, gib in presets.GPUS.items():
        print(f"{name:24} {gib:>12g}")
    return 0
