"""Text output shared by the commands: the scenario header and number formats."""

from __future__ import annotations

from analytic.sizing import GIB
from analytic.offload import GB, Tiers
from analytic.specs import ModelSpec, Workload


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ci(estimate: dict) -> str:
    """A simulated mean and its 95% confidence interval."""
    if estimate["mean"] is None:
        return "-"
    if not estimate["ci95"]:
        return f"{estimate['mean']:.4f}"
    lo, hi = estimate["ci95"]
    return f"{estimate['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def seconds(x) -> str:
    return f"{'-':>10}" if x is None else f"{x:>10.4f}"


def describe(model: ModelSpec, memory: dict, workload: Workload, kv_dtype: str) -> list[str]:
    """The header every command prints: model, memory, capacity, workload."""
    lines = [f"model     {model.name}: {model.attention}, KV {kv_dtype}: {memory['bytes_per_token']:,.0f} B/token"]
    if memory["source"] == "gpu-memory":
        lines.append(
            f"memory    {memory['gpu_memory_gib']:.1f} GiB x {memory.get('usable_gib', 0) / memory['gpu_memory_gib']:.2f}"
            f" - weights {memory['weights_gib']:.1f} GiB - activations {memory['activation_reserve_gib']:.1f} GiB"
            f" = {memory['kv_cache_gib']:.1f} GiB of KV cache")
    lines.append(f"capacity  {memory['capacity_tokens']:,} tokens = {memory['capacity_blocks']:,} blocks "
                 f"of {memory['block_size']} tokens")
    if "bytes_per_token_note" in memory:
        lines.append(f"note      {memory['bytes_per_token_note']}")
    w = workload
    think = f"{w.think_time.kind} think {w.think_time.mean:g} s" + (
        f" (cv {w.think_time.cv:g})" if w.think_time.kind in ("lognormal", "gamma") else "")
    lines.append(f"workload  {w.arrival_rate:g} conversations/s, {w.turns.mean:g} turns ({w.turns.kind}), {think}, "
                 f"{w.input_tokens.mean:g} in + {w.output_tokens.mean:g} out tokens/turn, "
                 f"system prompt {w.system_prompt_tokens}")
    return lines


def offload_summary(tiers: Tiers, bytes_per_token: float, block_size: int) -> dict:
    """The tiers below the GPU, JSON-ready: blocks, tokens and GiB of each, the mode, load costs."""
    out = {"mode": tiers.mode}
    for name, blocks, cost in (("cpu", tiers.cpu_blocks, tiers.cpu_load_s_per_token),
                               ("disk", tiers.disk_blocks, tiers.disk_load_s_per_token)):
        if name in tiers.names:
            out[name] = {"capacity_blocks": blocks, "capacity_tokens": blocks * block_size,
                         "gib": blocks * block_size * bytes_per_token / GIB, "load_s_per_token": cost,
                         "bandwidth_gbps": bytes_per_token / cost / GB}
    return out


def offload_line(tiers: Tiers, bytes_per_token: float, block_size: int) -> str:
    parts = [f"{name.upper()} {blocks * block_size * bytes_per_token / GIB:,.1f} GiB = {blocks:,} blocks "
             f"({bytes_per_token / cost / GB:g} GB/s)"
             for name, blocks, cost in (("cpu", tiers.cpu_blocks, tiers.cpu_load_s_per_token),
                                        ("disk", tiers.disk_blocks, tiers.disk_load_s_per_token))
             if name in tiers.names]
    return f"offload   {'; '.join(parts)}; {tiers.mode}"


def add_tier_bytes(tiers: dict, block_size: int, bytes_per_token: float) -> None:
    """Bytes moved per tier (the simulator counts blocks; the model gives the bytes per token)."""
    for row in tiers.values():
        row["loaded_bytes"] = row["loaded_blocks"] * block_size * bytes_per_token
        row["stored_bytes"] = row["stored_blocks"] * block_size * bytes_per_token
