"""Tiered prefix cache (GPU -> CPU -> optional disk): per-tier hit rates, bytes moved and TTFT.

``tiered_model(workload, capacities_blocks, block_size, method, mode)`` builds on the single-tier
characteristic-time models (``analytic.lru``, ``analytic.fifo``, through ``analytic.plan.model``)
and adds no hit-rate formula of its own: every tier figure is a sum or difference of single-tier
model results. The cache modelled (the simulator's rules, zero service time):

* Tiers in order GPU, CPU, optionally disk, each a capacity in blocks, one policy on all of them.
* Lookup: the longest leading run on the GPU, continued from the CPU, then from disk (never back
  up again); blocks found below the GPU are loaded into it and count as hits of their tier. The
  prompt-1 cap applies to the whole run.
* ``inclusive`` (write-through: vLLM's CPU offloading, LMCache): every full block a request leaves
  on the GPU is stored in, or refreshed in, every lower tier. A refresh is the tier's own touch:
  LRU moves the block to most recent, FIFO does nothing (a FIFO hit never refreshes); a block
  recomputed after the hit run is stored again (its stale copy replaced), as on the GPU.
* ``exclusive`` (write-back / victim): a block evicted from the GPU moves to the CPU (and from the
  CPU to disk); a block loaded back, or recomputed, leaves the lower tier.

Derivation. The GPU's evolution does not depend on the tiers below it: a block loaded from a lower
tier is inserted exactly as a recomputed one would be. So in every mode and policy the GPU tier is
the single-tier model at C_gpu (exact: the GPU's hits are those of the cache alone).

LRU, inclusive: each tier sees every request's blocks in the same order, so each is an LRU of its
own capacity holding the most recently used C_t blocks (tail first within a request). Those nest:
the GPU's content is inside any larger tier's, and a tier smaller than one above it holds nothing
the one above does not. The union of tiers 0..t is therefore an LRU of max(C_0..C_t): hits of tier
t = H(max(C_0..C_t)) - H(max(C_0..C_{t-1})), H the single-tier model. A CPU no larger than the GPU
adds nothing (exactly 0 hits: its content is the GPU's most recent part), and disk the same one
level down. LRU, exclusive: GPU victims enter the CPU at its most recent end in LRU order, and a
block used again goes back to the GPU, so the tiers split one recency order: the GPU the most
recent C_0 blocks, the CPU the next C_1, disk the next C_2; the union of tiers 0..t is an LRU of
C_0 + ... + C_t. A context is evicted tail first, so its head stays on the GPU and its tail is
found below: the lookup order loses nothing. Both are exact up to the single-tier models' own
error (and a block of slack for the partial block a request holds on the GPU).

FIFO does not nest. Inclusive: the CPU is fed every block the GPU inserts, at the same moment,
and a block it already holds keeps its place; if the GPU never held a block longer than the CPU,
the CPU would be a FIFO of C_cpu with the single-tier write stream (miss: the whole context; hit:
the new blocks), and the union that FIFO: total ~ H_fifo(max(C_0..C_t)), the model used. It is a
lower bound in practice: a block loaded back from the CPU is re-inserted on the GPU while the CPU
keeps its old place, so the GPU can outlive the CPU's copy, and a CPU smaller than the GPU still
adds a little (a block the GPU hit after the CPU evicted it is stored again). Exclusive: a GPU
miss of a context reloads or recomputes all of it, so the union's clock restarts at every GPU miss
(not at GPU hits): between FIFO(C_0 + C_1), whose clock restarts only at misses of the union, and
LRU(C_0 + C_1), whose clock restarts at every access. GPU hits are the rarer the smaller T_gpu is
against the think time, so the lower tiers' share is taken from LRU: hits of tier t >= 1 =
H_lru(C_0 + .. + C_t) - H_lru(C_0 + .. + C_{t-1}), on top of the exact FIFO GPU tier. (The blocks
a conversation wrote after its head, still on the GPU when the head has moved down, are not found:
the lookup does not return to the GPU. That loss pulls the other way.) Measured against a per-block
simulation of these rules on the default workload (``tests/test_tiers_model.py``, 18,000 s runs,
GPU 3,125-6,250 blocks, CPU 0.5-4x the GPU, with and without disk): the LRU tiers agree within
0.3 points of token hit rate (the single-tier model's own error), FIFO inclusive totals are 0.2-2.4
points low, FIFO exclusive totals 0.5-1.5 points high; stored traffic within 3%.

Traffic (tokens per request; bytes = tokens x bytes per token): loaded from tier t = its hit
tokens. Stored into tier t (t >= 1): inclusive, the blocks the tier did not hold, full - H(C_t)
(each tier a standalone cache of the request stream; full = the full blocks of the request's
context, what it leaves on the GPU); exclusive, the GPU's (resp. tier t-1's) victims, full - hits
of the tiers above t, in the steady state where insertions equal evictions.

Time to first token (``TieredModelResult.ttft``): the service model's prefill
``prefill_base + prefill_per_token x uncached tokens``, with a lower tier's hit tokens paying
``tokens x bytes_per_token / bandwidth`` instead of compute; a mean over requests, without queueing
and without overlapping the loads with compute (LMCache's layer-wise pipelining would hide part of
them: the transfer term is then an upper bound). "gpu_only" is the same GPU without the tiers below.

Limits: requests larger than the GPU are served uncached by the simulator, whereas the union model
at a larger capacity would serve them: with such requests (a context longer than the GPU cache)
the lower tiers' figures are optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analytic import presets
from analytic.plan import METHODS, model, smallest_capacity
from analytic.service import DEFAULT_SERVICE_PRESET, ServiceModel
from analytic.sizing import bytes_per_token as kv_bytes_per_token
from analytic.offload import DEFAULT_CPU_BANDWIDTH_GBPS, DEFAULT_DISK_BANDWIDTH_GBPS, GB, OFFLOAD_MODES, TIER_NAMES
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from analytic.ttl import ModelResult, _table, no_eviction_ceiling

DEFAULT_BANDWIDTHS_GBPS = {"cpu": DEFAULT_CPU_BANDWIDTH_GBPS, "disk": DEFAULT_DISK_BANDWIDTH_GBPS}
# KV bytes per token of the model the default service times are for (Llama-3.1-8B, bf16: 131,072).
DEFAULT_BYTES_PER_TOKEN = kv_bytes_per_token(presets.model(DEFAULT_SERVICE_PRESET), "bf16")


@dataclass(frozen=True)
class TieredModelResult:
    """Predicted steady state of a tiered prefix cache (metrics named as in DESIGN.md §4).

    ``token_hit_rate``, ``block_hit_rate``, ``request_hit_rate``: all tiers together.
    ``tiers[name]`` (gpu, cpu, disk when given): ``capacity_blocks``, ``token_hit_rate``,
    ``block_hit_rate``, ``hit_tokens_per_request`` (mean), ``loaded_tokens_per_request`` /
    ``loaded_bytes_per_request`` (moved up to the GPU from this tier; 0 for the GPU) and
    ``stored_tokens_per_request`` / ``stored_bytes_per_request`` (moved into this tier from above;
    0 for the GPU, whose writes are computed). ``gpu_only`` is the single-tier model of the GPU;
    ``levels[t]`` the single-tier results the tiers 0..t are computed from.
    """

    method: str
    mode: str
    capacities_blocks: dict[str, int]
    block_size: int
    bytes_per_token: float
    token_hit_rate: float
    block_hit_rate: float
    request_hit_rate: float
    prompt_tokens_per_request: float
    tiers: dict[str, dict]
    gpu_only: ModelResult = field(repr=False)
    levels: tuple = field(default=(), repr=False)

    def ttft(self, service: ServiceModel | None = None, bandwidths_gbps: dict | None = None) -> dict:
        """Mean prefill time (s) per request, i.e. the time to first token without queueing.

        ``tiered`` = prefill_base + prefill_per_token x (prompt - all hit tokens) + sum over the
        lower tiers of hit tokens x bytes_per_token / bandwidth; ``gpu_only`` = the same GPU alone
        (prefill_base + prefill_per_token x (prompt - GPU hit tokens)). ``bandwidths_gbps``: GB/s
        per lower tier (defaults ``DEFAULT_BANDWIDTHS_GBPS``). Loads are not overlapped with
        compute. Returns gpu_only, tiered, compute, transfer (per tier), saved (gpu_only - tiered).
        """
        service = ServiceModel() if service is None else service
        if not isinstance(service, ServiceModel):
            raise ValueError(f"service must be an analytic.service.ServiceModel (got {type(service).__name__})")
        bandwidths = dict(DEFAULT_BANDWIDTHS_GBPS)
        for name, value in (bandwidths_gbps or {}).items():
            if name not in DEFAULT_BANDWIDTHS_GBPS:
                raise ValueError(f"bandwidths-gbps keys must be among {', '.join(DEFAULT_BANDWIDTHS_GBPS)} (got {name!r})")
            check_positive(f"{name}-bandwidth-gbps", value)
            bandwidths[name] = value
        prompt = self.prompt_tokens_per_request
        gpu_hit = self.tiers["gpu"]["hit_tokens_per_request"]
        total_hit = sum(t["hit_tokens_per_request"] for t in self.tiers.values())
        transfer = {name: tier["loaded_tokens_per_request"] * self.bytes_per_token / (bandwidths[name] * GB)
                    for name, tier in self.tiers.items() if name != "gpu"}  # fmt: skip
        compute = service.prefill(prompt - total_hit)
        gpu_only = service.prefill(prompt - gpu_hit)
        tiered = compute + sum(transfer.values())
        return {"gpu_only": gpu_only, "tiered": tiered, "compute": compute, "transfer": transfer,
                "saved": gpu_only - tiered}  # fmt: skip

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("method", "mode", "capacities_blocks", "block_size", "bytes_per_token",
                                             "token_hit_rate", "block_hit_rate", "request_hit_rate",
                                             "prompt_tokens_per_request", "tiers")}  # fmt: skip
        out["ttft"] = self.ttft()
        return out


def _capacities(capacities_blocks) -> dict[str, int]:
    """(gpu, cpu[, disk]) or {"gpu": .., "cpu": .., "disk": ..} -> an ordered dict of the tiers given."""
    if isinstance(capacities_blocks, dict):
        unknown = set(capacities_blocks) - set(TIER_NAMES)
        if unknown or not {"gpu", "cpu"} <= set(capacities_blocks):
            raise ValueError(f"capacities-blocks must have keys gpu, cpu and optionally disk (got {sorted(capacities_blocks)})")
        values = [capacities_blocks[name] for name in TIER_NAMES if name in capacities_blocks]
    elif isinstance(capacities_blocks, (tuple, list)):
        if not 2 <= len(capacities_blocks) <= 3:
            raise ValueError(f"capacities-blocks must list 2 or 3 capacities: gpu, cpu[, disk] (got {len(capacities_blocks)})")
        values = list(capacities_blocks)
    else:
        raise ValueError(f"capacities-blocks must be a tuple (gpu, cpu[, disk]) or a dict (got {type(capacities_blocks).__name__})")
    for name, value in zip(TIER_NAMES, values):
        check_positive(f"{name}-capacity-blocks", value, integer=True, allow_zero=name != "gpu")
    return {name: int(value) for name, value in zip(TIER_NAMES, values)}


def _check(workload, block_size, method, mode) -> None:
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be an analytic.specs.Workload (got {type(workload).__name__})")
    check_positive("block-size", block_size, integer=True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(OFFLOAD_MODES)} (got {mode!r})")


@dataclass(frozen=True)
class _Level:
    """A linear combination of single-tier results: sum of weight x result (hit rates are linear)."""

    parts: tuple  # ((weight, ModelResult), ...)

    def rate(self, name: str) -> float:
        # The first part, plus the corrections: a correction that cancels leaves it bit for bit.
        (w0, r0), rest = self.parts[0], self.parts[1:]
        return float(w0 * getattr(r0, name) + sum(w * getattr(r, name) for w, r in rest))


def _levels(H, caps: list[int], method: str, mode: str) -> list[_Level]:
    """The union of tiers 0..t as single-tier models, t = 0..len(caps)-1 (see the module docstring);
    ``H(capacity, method)`` evaluates one."""
    levels = []
    for t in range(len(caps)):
        if mode == "inclusive":
            levels.append(_Level(((1.0, H(max(caps[: t + 1]), method)),)))
        elif method == "lru" or t == 0:
            levels.append(_Level(((1.0, H(sum(caps[: t + 1]), method)),)))
        else:  # exclusive FIFO: the exact FIFO GPU, the lower tiers' share from LRU
            gpu = caps[0]
            levels.append(_Level(((1.0, H(gpu, "fifo")), (1.0, H(sum(caps[: t + 1]), "lru")), (-1.0, H(gpu, "lru")))))
    return levels


def tiered_model(
    workload: Workload,
    capacities_blocks,
    block_size: int = DEFAULT_BLOCK_SIZE,
    method: str = "lru",
    mode: str = "inclusive",
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN,
    evaluate=None,
) -> TieredModelResult:
    """Per-tier hit rates and traffic of a GPU -> CPU [-> disk] prefix cache (module docstring).

    ``capacities_blocks``: (gpu, cpu[, disk]) or a dict with keys gpu, cpu[, disk], in blocks of
    ``block_size`` tokens (gpu >= 1; a lower tier may be 0). ``method``: the policy of every tier,
    lru or fifo. ``mode``: inclusive (write-through) or exclusive (victim tiers).
    ``bytes_per_token``: KV bytes per token for the bytes moved and ``ttft`` (default Llama-3.1-8B
    in bf16, the default service model's). ``evaluate(workload, capacity_blocks, block_size, method)``
    replaces :func:`analytic.plan.model` for the single-tier models it is made of (a cached one).
    """
    _check(workload, block_size, method, mode)
    caps = _capacities(capacities_blocks)
    check_positive("bytes-per-token", bytes_per_token)
    cache: dict = {}

    def H(capacity: int, how: str) -> ModelResult:
        if (capacity, how) not in cache:
            cache[capacity, how] = (model if evaluate is None else evaluate)(workload, capacity, block_size, how)
        return cache[capacity, how]

    names = list(caps)
    levels = _levels(H, list(caps.values()), method, mode)
    table = _table(workload, block_size, caps["gpu"])
    law = table.law
    prompt = float(law.reach @ table.prompt) / law.mean
    prompt_blocks = float(law.reach @ np.ceil(table.paths.prompt / block_size).mean(axis=0)) / law.mean
    # Tokens in full blocks a request leaves on the GPU (oversized requests leave none).
    full = float(law.reach @ (table.conv_served + table.system_blocks * table.served)) * block_size / law.mean

    # Token hit rate of tiers 0..t; no cache beats an unlimited one (exclusive FIFO's sum of a FIFO
    # GPU and an LRU remainder can, where the single-tier FIFO model is high).
    ceiling = no_eviction_ceiling(workload, block_size).token_hit_rate
    cumulative = [min(level.rate("token_hit_rate"), ceiling) for level in levels]
    tiers = {}
    for t, name in enumerate(names):
        # Differences of models that do not decrease with capacity: clip rounding below zero.
        rate = max(cumulative[t] - (cumulative[t - 1] if t else 0.0), 0.0)
        tokens = rate * prompt
        if t == 0 or caps[name] == 0:
            stored = 0.0
        elif mode == "inclusive":  # the blocks this tier, a standalone cache of the requests, lacks
            stored = full - prompt * H(caps[name], method).token_hit_rate
        else:  # the victims of the tier above: its insertions, in the steady state
            stored = full - prompt * cumulative[t - 1]
        loaded = tokens if t else 0.0
        tiers[name] = {
            "capacity_blocks": caps[name],
            "token_hit_rate": rate,
            "block_hit_rate": tokens / block_size / prompt_blocks,
            "hit_tokens_per_request": tokens,
            "loaded_tokens_per_request": loaded,
            "loaded_bytes_per_request": loaded * bytes_per_token,
            "stored_tokens_per_request": max(stored, 0.0),
            "stored_bytes_per_request": max(stored, 0.0) * bytes_per_token,
        }
    total = sum(tier["token_hit_rate"] for tier in tiers.values())
    return TieredModelResult(
        method=method, mode=mode, capacities_blocks=caps, block_size=block_size, bytes_per_token=float(bytes_per_token),
        token_hit_rate=total, block_hit_rate=total * prompt / block_size / prompt_blocks,
        request_hit_rate=float(np.clip(levels[-1].rate("request_hit_rate"), 0.0, 1.0)),
        prompt_tokens_per_request=prompt, tiers=tiers, gpu_only=H(caps["gpu"], method), levels=tuple(levels),
    )  # fmt: skip


def capacity_for_tier_target(
    workload: Workload,
    target: float,
    gpu_blocks: int,
    tier: str = "cpu",
    cpu_blocks: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    method: str = "lru",
    mode: str = "inclusive",
) -> int:
    """Smallest capacity (blocks) of ``tier`` (cpu, or disk below ``cpu_blocks`` of CPU) at which
    the total token hit rate reaches ``target``, the tiers above fixed. 0 if they reach it alone;
    ValueError if even an unlimited tier cannot (the limit is stated). Bisection on whole blocks
    (``analytic.plan.smallest_capacity``): the total does not decrease with the tier's capacity."""
    _check(workload, block_size, method, mode)
    if tier not in ("cpu", "disk"):
        raise ValueError(f"tier must be one of cpu, disk (got {tier!r})")
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target <= 1):
        raise ValueError(f"target must be a hit rate in (0, 1] (got {target!r})")
    check_positive("gpu-capacity-blocks", gpu_blocks, integer=True)
    if tier == "disk":
        if cpu_blocks is None:
            raise ValueError("cpu-blocks is required with tier disk (the CPU capacity above the disk)")
        check_positive("cpu-capacity-blocks", cpu_blocks, integer=True, allow_zero=True)
        above = [gpu_blocks, cpu_blocks]
    else:
        if cpu_blocks is not None:
            raise ValueError("cpu-blocks is the tier sized with tier cpu: leave it out")
        above = [gpu_blocks]

    def total(capacity: int) -> float:
        return tiered_model(workload, (*above, capacity), block_size, method, mode).token_hit_rate

    # An unlimited tier: the no-eviction ceiling, but exclusive FIFO keeps its FIFO GPU's deficit
    # (its lower tiers add the LRU increments, which end at the ceiling).
    ceiling = no_eviction_ceiling(workload, block_size).token_hit_rate
    limit = ceiling
    if mode == "exclusive" and method == "fifo":
        limit -= model(workload, gpu_blocks, block_size, "lru").token_hit_rate - \
            model(workload, gpu_blocks, block_size, "fifo").token_hit_rate  # fmt: skip
    if target >= limit:
        raise ValueError(f"target token hit rate {target:.4g} is out of reach: even an unlimited {tier} tier "
                         f"gets {limit:.4g} with this workload and GPU")  # fmt: skip
    if total(0) >= target:
        return 0
    first = max(1, sum(above)) if mode == "exclusive" else max(above)  # inclusive: below the GPU adds nothing
    return smallest_capacity(lambda c: total(c) >= target, 2 * first, f"total token hit rate of {target:.4g}")
