"""Text output shared by the commands: the scenario header and number formats."""

from __future__ import annotations

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
