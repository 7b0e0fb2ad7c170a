"""The calculator page's computations: what each endpoint of ``kvsim serve`` answers.

The page's inputs are the ``kvsim calc`` flags, made into a Scenario by the same function as the
command line's (``kvsim.cli.args.scenario_from_values``). The HTTP server is ``kvsim.serve``.
Endpoints (JSON; the inputs are the ``kvsim calc`` flags by name, e.g. ``{"preset": "llama-3.1-70b", "gpu": "h100-80gb", "gpus": 2,
"arrival-rate": 2}``, as a POST body or a GET query string):

* ``GET /api/presets`` - models, GPUs, dtypes, choices and defaults of every field.
* ``/api/calc`` - bytes/token, capacity, the seed/LRU/FIFO models, and the hit-rate-vs-memory
  curves of ``kvsim compare``'s figure (``curve``), as many points as fit in ~90 ms.
* ``/api/curve`` - one method's curve refined (``"method": "fifo"``) when ``/api/calc`` flagged it
  ``incomplete`` (FIFO points of slow workloads cost up to ~100 ms each).
* ``/api/sensitivity`` - the +/-50% tornado rows and elasticities (``analytic.sensitivity``).
* ``/api/advice`` - the quantified recommendations (``analytic.advice``).
* ``POST /api/simulate`` starts a short simulation in a background thread (202); while one runs,
  another gets 409 and a polite message. ``GET /api/simulate`` reports its progress and points.
* ``/api/serving``, ``POST /api/simulate-load``, ``POST /api/simulate-plan``: one instance under
  load - TTFT, TPOT, throughput and the sustainable rate beside the hit rate, the latency
  targets' plan, the engine simulated (``kvsim.page_serving``; its jobs are this module's
  background job too). The engine's flags (``max-num-batched-tokens``, ``max-num-seqs``,
  ``step-time``) are fields of every endpoint; only those read them.

Every answer's work is bounded. ``/api/calc`` and ``/api/curve`` stop refining their curves after
CURVE_BUDGET_S / CURVE_REFINE_BUDGET_S (past a minimum of points). ``/api/sensitivity`` and
``/api/advice`` evaluate dozens of models (the advice's memory-for-a-target search bisects on
the model): each request may spend SENSITIVITY_BUDGET_S / ADVICE_BUDGET_S on new model evaluations
(at least one), answers from the cache are free. When the budget runs out the answer is
``{"incomplete": true, ...}`` without rows or levers: what was computed stays cached, so the same
request asked again goes further (the page asks again until it is complete). The conversations'
length (MAX_TURNS, FIFO_MAX_TURNS) and the fleet's size (MAX_INSTANCES) are bounded so that one
model evaluation is too; the simulation serves at most SIM_MAX_REQUESTS requests in all. The
budgets read the module's ``CLOCK`` (``time.perf_counter``), which tests replace.

Fleets: ``instances`` (default 1) and ``router`` (affinity or random, default affinity), with the
memory inputs per instance. With more than one instance the hit rates and the curves are the
fleet models' (``analytic.fleet.fleet_model``; affinity: LRU and FIFO, random: LRU only), the seed
model is left out (it knows one instance only), the advice adds the routing lever (with affinity,
the other levers at arrival rate / instances, as ``kvsim calc --instances --advise``) and the
simulation is ``kvsim.fleet.simulate_fleet``. The sensitivity stays single-instance.

CPU / disk offload (``cpu-offload-gib``, ``offload-mode``, ``cpu-bandwidth-gbps``, and the other
``kvsim calc`` offload flags): a tier of 0 (or none given) is no tier, and the mode and bandwidths
are then checked and ignored. With a tier, the LRU and FIFO results are the tiered models
(``analytic.tiers.tiered_model`` through the page's cache: totals, ``tiers`` per tier, ``ttft``
with and without the lower tiers, ``gpu_only``), as ``kvsim calc --cpu-offload-gib``; the seed
model stays single-tier; the curves are the tiered totals at each GPU memory, the lower tiers
fixed, with each tier's part (``curve[method]["tiers"]``); the simulation runs the tiers too
(per tier in each point's ``tiers``). The sensitivity and the advice's levers other than offload
are the GPU alone (single-tier models; the answers say so in ``notes``). Offload in a fleet
(instances > 1) is refused at the offload field: the fleet models have no tiers (as ``kvsim
calc``); ``kvsim simulate --instances --cpu-offload-gib`` simulates it.

Bad input gets HTTP 400 ``{"error": message, "field": flag, "errors": {flag: message}}``: the
specs' own ValueErrors, which name the field by its flag, mapped to the page's fields.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import math
import threading
import time
import traceback
from dataclasses import replace
from functools import lru_cache

import numpy as np

from analytic import presets
from analytic.advice import DEFAULT_TARGET, advise, fleet_advise
from analytic.calc import calculate
from analytic.offload import DEFAULT_CPU_BANDWIDTH_GBPS, DEFAULT_DISK_BANDWIDTH_GBPS, OFFLOAD_MODES, Tiers
from analytic.scenario import Offload, Scenario
from analytic.seed import seed_model
from analytic.sensitivity import sensitivity
from analytic.sizing import GIB, Capacity, bytes_per_token, capacity_from_memory, capacity_from_tokens
from analytic.specs import DEFAULT_BLOCK_SIZE, DTYPE_BYTES, Workload
from analytic.ttl import ModelResult
from kvsim.cli.args import (DEFAULT_GPU, DEFAULT_PRESET, OFFLOAD_SIZE_FLAGS, add_advise_args, add_fleet_args,
                            add_offload_args, add_scenario_args, scenario_from_values)
from kvsim.cli.engine_args import add_engine_args
from kvsim.cli.text import describe, offload_line, offload_summary


CURVE_POINTS = 40  # points of the hit-rate-vs-memory curves ...
CURVE_MIN_POINTS = 9  # ... at least this many, whatever the time
CURVE_GOOD_POINTS = 20  # fewer: the curve is flagged incomplete and /api/curve refines it
CURVE_REFINE_BUDGET_S = 0.25
CURVE_BUDGET_S = 0.09  # /api/calc stops refining the curves this long after it started (LRU first)
SENSITIVITY_BUDGET_S = 1.0  # new model evaluations of one /api/sensitivity request (then: incomplete)
ADVICE_BUDGET_S = 1.0  # ... of one /api/advice request

# The clock of every time budget above: time.perf_counter; tests replace it (monkeypatch
# kvsim.page.CLOCK) to run a budget out without measuring time.
CLOCK = time.perf_counter

# The FIFO model's cost grows with the square of the longest possible conversation (its turn
# support): ~50 ms at 540 turns (geometric, mean 20), ~0.6 s at 1,400, ~12 s at 5,500, and
# gigabytes beyond. The page evaluates it up to this many turns, and says so past it.
FIFO_MAX_TURNS = 700
# The LRU model's cost and memory grow with the turn support times the sampled size paths (up to
# 2,000 when token counts are drawn): the page takes conversations of at most this many turns.
MAX_TURNS = {"fixed sizes": 20_000, "drawn sizes": 2_000}
# The fleet models' cost grows with the instances (~1 s at 10,000): the page takes this many.
MAX_INSTANCES = 1_000

# Fields the page may not set: files on the server's disk; the engine's switches (the page always
# evaluates the models under load, with prefix caching on and off: kvsim.page_serving).
EXCLUDED_FIELDS = {"conversations", "help", "engine", "no-prefix-caching"}

# The short simulation behind the page's button.
SIM_POINTS = 4  # memory points besides the scenario's own (x LRU and FIFO)
SIM_POLICIES = ("lru", "fifo")
SIM_REPLICATIONS = 3
SIM_MEASURED_REQUESTS = 10_000  # per replication: sets the measured window, within the bounds below
SIM_WINDOW_S = (300.0, 3600.0)
SIM_WARMUP_S = (300.0, 3600.0)
SIM_LIMITS = {"duration": 50_000.0, "replications": 10, "points": 9}
SIM_MAX_REQUESTS = 3_000_000  # in all (runs x replications): about a minute


class FieldError(ValueError):
    """A value the API could not even read (not a number, not one of the choices)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# ----------------------------------------------------------------------------- fields


@lru_cache(maxsize=1)
def _fields() -> dict[str, argparse.Action]:
    """Flag name (no dashes) -> its argparse action, from the same helpers as ``kvsim calc``."""
    p = argparse.ArgumentParser(add_help=False)
    add_scenario_args(p)
    add_advise_args(p)
    add_fleet_args(p, simulation=False)
    add_offload_args(p)
    add_engine_args(p, requests_out=False)
    out = {}
    for action in p._actions:
        if not action.option_strings:
            continue
        flag = action.option_strings[0].lstrip("-")
        if flag not in EXCLUDED_FIELDS and flag != "advise":
            out[flag] = action
    return out


def field_defaults() -> dict:
    return {flag: action.default for flag, action in _fields().items()}


def _convert(flag: str, action: argparse.Action, raw):
    if action.type in (int, float):
        whole = action.type is int
        what = "a whole number" if whole else "a number"
        if isinstance(raw, bool):
            raise FieldError(flag, f"{flag} must be {what} (got {raw!r})")
        if isinstance(raw, str):
            text = raw.strip().replace("_", "")
            try:
                value = float(text)
            except ValueError:
                raise FieldError(flag, f"{flag} must be {what} (got {raw!r})") from None
        elif isinstance(raw, (int, float)):
            value = float(raw)
        else:
            raise FieldError(flag, f"{flag} must be {what} (got {raw!r})")
        if not math.isfinite(value):
            raise FieldError(flag, f"{flag} must be a finite number (got {raw!r})")
        if whole:
            if value != int(value):
                raise FieldError(flag, f"{flag} must be a whole number (got {raw!r})")
            return int(value)
        return value
    value = str(raw).strip()
    if action.choices is not None and value not in action.choices:
        raise FieldError(flag, f"{flag} must be one of {', '.join(map(str, action.choices))} (got {value!r})")
    return value


def values_from_params(params: dict) -> dict:
    """The values of the ``kvsim calc`` flags by dest (``arrival_rate``), from API parameters: what
    ``kvsim.cli.args.scenario_from_values`` takes.

    Keys are flags (``arrival-rate``) or their dests (``arrival_rate``); values are numbers or
    strings. A missing key takes the flag's default; an empty string does too when the default is
    None (an optional field left blank), and is an error otherwise (a required field cleared).
    """
    if not isinstance(params, dict):
        raise FieldError("", "the request must be a JSON object of the calc flags")
    fields = _fields()
    values = field_defaults()
    for key, raw in params.items():
        flag = str(key).replace("_", "-")
        if flag not in fields:
            raise FieldError(flag, f"unknown field {key!r} (known: {', '.join(sorted(fields))})")
        action = fields[flag]
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            if action.default is None:
                values[flag] = None
                continue
            raise FieldError(flag, f"{flag} is required")
        values[flag] = _convert(flag, action, raw)
    return {**{fields[f].dest: v for f, v in values.items()}, "conversations": None}


def error_field(message: str) -> str | None:
    """The field a spec's error message names (messages start with the flag, as the CLI's do)."""
    text = message.strip().lstrip("-")
    flags = sorted(_fields(), key=len, reverse=True)
    def ends_word(s: str, end: int) -> bool:
        return end == len(s) or not (s[end].isalnum() or s[end] == "-")

    for flag in flags:
        if text.startswith(flag) and ends_word(text, len(flag)):
            return flag
    found = []  # "give either --gpu or --gpu-memory-gb": the first flag mentioned
    for flag in flags:
        for prefix in ("--", " "):
            i = message.find(prefix + flag)
            end = i + len(prefix) + len(flag)
            if i >= 0 and ends_word(message, end):
                found.append((i, -len(flag), flag))
    if found:
        return min(found)[2]
    return None


# ----------------------------------------------------------------------------- time budgets


def _now() -> float:
    return CLOCK()


class BudgetSpent(Exception):
    """A request's time budget ran out before its answer was complete. Not a ValueError: the
    analytic code takes those for inputs the specs reject."""


class Budget:
    """``seconds`` of new (uncached) model evaluations, but at least ``min_new`` of them: a request
    asked again after running out goes further, as the evaluations done are cached."""

    def __init__(self, seconds: float, min_new: int = 1):
        self.deadline = _now() + seconds
        self.min_new = min_new
        self.new = 0  # new model evaluations so far
        self.spent = False

    def charge(self) -> None:
        """Before one new model evaluation: raises BudgetSpent when the time is up."""
        if self.spent or (self.new >= self.min_new and _now() > self.deadline):
            self.spent = True
            raise BudgetSpent(f"time budget spent after {self.new} new model evaluations")
        self.new += 1


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("kvsim_page_budget", default=None)


def _charge() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge()


@contextlib.contextmanager
def budget(seconds: float, min_new: int = 1):
    """The models evaluated in this block (this thread) charge a Budget of ``seconds``."""
    b = Budget(seconds, min_new)
    token = _BUDGET.set(b)
    try:
        yield b
    finally:
        _BUDGET.reset(token)


# ----------------------------------------------------------------------------- models (cached)


@lru_cache(maxsize=4096)
def _model(workload: Workload, capacity_blocks: int, block_size: int, method: str) -> ModelResult:
    from analytic.plan import model  # scipy-heavy: loaded by the first evaluation, not by kvsim serve --help

    _charge()  # a cache miss: a new evaluation (raises if a budget ran out; then nothing is cached)
    return model(workload, capacity_blocks, block_size, method)


def cached_evaluate(workload: Workload, capacity_blocks: int, block_size: int, method: str) -> ModelResult:
    """``analytic.plan.model`` behind a cache: the page asks the same questions again and again."""
    return _model(workload, int(capacity_blocks), int(block_size), method)


@lru_cache(maxsize=1024)
def _fleet_model(workload: Workload, capacity_blocks: int, instances: int, router: str, method: str, block_size: int):
    from analytic.fleet import fleet_model

    _charge()
    return fleet_model(workload, [capacity_blocks] * instances, router, method, block_size)


def cached_fleet(workload: Workload, capacity_blocks: int, instances: int, router: str, method: str,
                 block_size: int):
    """``analytic.fleet.fleet_model`` of ``instances`` equal instances, behind a cache."""
    return _fleet_model(workload, int(capacity_blocks), int(instances), router, method, int(block_size))


def tiered(s: Scenario, tiers: Tiers, gpu_blocks: int, method: str, bytes_per_token: float):
    """``analytic.tiers.tiered_model`` of a GPU of ``gpu_blocks`` over the scenario's lower tiers,
    its single-tier models through the page's cache (and budget)."""
    from analytic.tiers import tiered_model  # scipy-heavy, as _model

    caps = (int(gpu_blocks), tiers.cpu_blocks, tiers.disk_blocks)[:len(tiers.names)]
    return tiered_model(s.workload, caps, s.block_size, method, tiers.mode, bytes_per_token, evaluate=cached_evaluate)


def tier_bandwidths(s: Scenario, tiers: Tiers) -> dict:
    """GB/s of the lower tiers the scenario has, for ``TieredModelResult.ttft``."""
    given = {"cpu": s.offload.cpu_bandwidth_gbps, "disk": s.offload.disk_bandwidth_gbps}
    return {name: given[name] for name in tiers.names if name != "gpu"}


def tiered_entry(s: Scenario, tiers: Tiers, capacity: Capacity, method: str) -> dict:
    """The methods entry of the tiered model, as ``kvsim calc --cpu-offload-gib --json``'s (and the
    GPU tier's characteristic time)."""
    m = tiered(s, tiers, capacity.capacity_blocks, method, capacity.bytes_per_token)
    return {"token_hit_rate": m.token_hit_rate, "request_hit_rate": m.request_hit_rate,
            "block_hit_rate": m.block_hit_rate, "tiers": m.tiers,
            "ttft": m.ttft(None, tier_bandwidths(s, tiers)),
            "gpu_only": m.gpu_only.as_dict(), "characteristic_time": m.gpu_only.characteristic_time}


def fleet_of(s: Scenario) -> tuple[int, str]:
    """(instances, router) of the scenario: (1, "affinity") unless given."""
    return s.fleet.size, s.fleet.router or "affinity"


def fleet_methods(instances: int, router: str, note: str | None) -> tuple[str, ...]:
    """The methods the page evaluates: FIFO only where it has a model and is affordable."""
    return ("lru",) if note or (instances > 1 and router == "random") else ("lru", "fifo")


RANDOM_FIFO_NOTE = "no FIFO model for random routing"


def _coarse_to_fine(n: int) -> list[int]:
    """0, n-1, then the grid refined by halving strides: a curve cut short is still spread out."""
    order = [0, n - 1] if n > 1 else [0]
    seen = set(order)
    stride = 1 << max(0, (n - 1).bit_length() - 1)
    while stride >= 1:
        for i in range(0, n, stride):
            if i not in seen:
                seen.add(i)
                order.append(i)
        stride //= 2
    return order


def memory_axis(scenario: Scenario, capacity: Capacity, n: int, instances: int = 1):
    """(xs, capacity_at(x), x_label, here): GPU memory per GPU (GiB) from just above what the
    weights and the reserve need to twice the scenario's (as ``kvsim compare``'s figure), or the
    KV cache GiB when the capacity was given directly (per instance in a fleet)."""
    hw, bs = scenario.hardware, scenario.block_size
    model = scenario.model
    if hw is not None:
        floor = (capacity.weights_gib + hw.activation_reserve_gib) / hw.memory_utilization / hw.gpus
        lo, hi = floor * 1.02, max(2 * hw.gpu_memory_gib, floor * 1.5)

        def cap_at(x):
            return capacity_from_memory(model, replace(hw, gpu_memory_gib=float(x)), scenario.kv_dtype,
                                        scenario.weight_dtype, bs, model_size_gib=capacity.weights_gib)

        label = f"GPU memory per GPU (GiB), {hw.gpus} GPU{'s' if hw.gpus > 1 else ''}"
        here = hw.gpu_memory_gib
    else:
        lo, hi = 0.02 * capacity.kv_cache_gib, 2 * capacity.kv_cache_gib

        def cap_at(x):
            return capacity_from_tokens(model, max(1, int(x * GIB / capacity.bytes_per_token)), scenario.kv_dtype, bs)

        label = "KV cache (GiB)" if instances == 1 else "KV cache per instance (GiB)"
        here = capacity.kv_cache_gib
    if instances > 1:
        label += f"{' per instance' if hw is not None else ''}, {instances} instances"
    return np.linspace(lo, hi, n), cap_at, label, here


def memory_curve(scenario: Scenario, capacity: Capacity, model_size_gb: float, *, methods=("lru", "fifo"),
                 points: int = CURVE_POINTS, budget_s: float = CURVE_BUDGET_S, min_points=None,
                 start: float | None = None, instances: int = 1, router: str = "affinity",
                 tiers: Tiers | None = None) -> dict:
    """The curves of ``kvsim compare``'s figure: token and request hit rate of the LRU and FIFO
    models, and the seed model's request hit rate at the same capacity, against memory.

    Points are computed coarse to fine, each method until its share of the time budget is spent
    (LRU first, then FIFO with what is left) but at least ``min_points[method]`` (default
    CURVE_MIN_POINTS for LRU, 0 for FIFO, whose points cost 5-100 ms each). A curve with fewer
    than CURVE_GOOD_POINTS points is flagged in ``incomplete``: ``/api/curve`` refines it (the
    points already computed are cached). The seed curve is drawn at the LRU points (it is free).

    A fleet (``instances`` > 1): memory per instance; affinity evaluates each instance's model
    (the workload at arrival rate / instances), random the LRU fleet model; no seed curve.

    ``tiers`` (one instance): each point is the tiered model of the GPU at that memory over these
    lower tiers (fixed): ``token`` and ``request`` are the totals, ``tiers[name]`` each tier's part
    of the token hit rate (they add up to ``token``). A point costs one or two single-tier models
    (cached: the lower tiers' union is often the same model at every point).
    """
    start = _now() if start is None else start
    mins = {"lru": CURVE_MIN_POINTS, "fifo": 0, **(min_points or {})}
    xs, cap_at, label, here = memory_axis(scenario, capacity, points, instances)
    w, bs = scenario.workload, scenario.block_size
    if instances > 1 and router == "affinity":  # each instance is one cache at arrival rate / instances
        w = replace(w, arrival_rate=w.arrival_rate / instances)

    def evaluate(workload, blocks, block_size, method):
        if tiers is not None:
            return tiered(scenario, tiers, blocks, method, capacity.bytes_per_token)
        if instances > 1 and router == "random":
            return cached_fleet(workload, blocks, instances, router, method, block_size)
        return cached_evaluate(workload, blocks, block_size, method)
    caps = {}
    if tiers is not None:
        label += ", " + ", ".join(f"{name.upper()} {gib:,.0f} GiB" if gib >= 100 else f"{name.upper()} {gib:.3g} GiB"
                                  for name, gib in _tier_gib(tiers, capacity, bs).items())
        label += " fixed"
    out = {"x_label": label, "here": here, "incomplete": []}
    if tiers is not None:
        out["tiers"] = list(tiers.names)
    shares = {"lru": 0.5, "fifo": 1.0} if len(methods) > 1 else {m: 1.0 for m in methods}
    for method in methods:
        deadline = start + budget_s * shares[method]
        done = []
        for n, i in enumerate(_coarse_to_fine(len(xs))):
            if n >= mins[method] and _now() > deadline:
                break
            if i not in caps:
                caps[i] = cap_at(xs[i])
            r = evaluate(w, caps[i].capacity_blocks, bs, method)
            parts = tuple(r.tiers[name]["token_hit_rate"] for name in tiers.names) if tiers is not None else ()
            done.append((float(xs[i]), r.token_hit_rate, r.request_hit_rate, parts))
        done.sort()
        out[method] = {"x": [d[0] for d in done], "token": [d[1] for d in done], "request": [d[2] for d in done]}
        if tiers is not None:
            out[method]["tiers"] = {name: [d[3][t] for d in done] for t, name in enumerate(tiers.names)}
        if len(done) < min(CURVE_GOOD_POINTS, len(xs)):
            out["incomplete"].append(method)
    if "lru" in methods and instances == 1:
        seed_kw = dict(memory_per_token_bytes=capacity.bytes_per_token, model_size_gb=model_size_gb,
                       turns=w.turns.mean, arrival_rate=w.arrival_rate, interval=w.think_time.mean,
                       seq_len=w.tokens_per_turn)
        seed_x = sorted(i for i in caps)
        out["seed"] = {"x": [float(xs[i]) for i in seed_x],
                       "request": [seed_model(cached_tokens=caps[i].capacity_tokens, **seed_kw)["hit_rate"]
                                   for i in seed_x]}
    out["ms"] = 1000 * (_now() - start)
    return out


# ----------------------------------------------------------------------------- requests


def check_page_limits(workload: Workload, instances: int = 1) -> None:
    """Refuse (as a field error) conversations too long, or fleets too large, for an interactive
    answer."""
    if instances > MAX_INSTANCES:
        raise FieldError("instances", f"instances: {instances:,} instances are too many for this page, which takes up "
                                      f"to {MAX_INSTANCES:,}; kvsim calc computes them")
    longest = int(np.max(workload.turns.support[0]))
    drawn = not (workload.input_tokens.is_fixed and workload.output_tokens.is_fixed)
    kind = "drawn sizes" if drawn else "fixed sizes"
    if longest > MAX_TURNS[kind]:
        what = "token counts drawn (input-cv or output-cv > 0)" if drawn else "fixed token counts"
        raise FieldError("turns", f"turns: conversations that reach {longest:,} turns ({workload.turns.kind}, mean "
                                  f"{workload.turns.mean:g}) are too long for this page, which takes up to "
                                  f"{MAX_TURNS[kind]:,} with {what}; kvsim calc computes them")


OFFLOAD_OPTIONS = ("offload_mode", "cpu_bandwidth_gbps", "disk_bandwidth_gbps")


def _no_tier_is_none(values: dict) -> dict:
    """The page's offload fields as ``scenario_from_values`` takes them: a tier of 0 (every size
    given is 0) or none at all is no tier; the mode and bandwidths are then checked and dropped
    (the page's select always has a mode)."""
    sizes = [f for f in OFFLOAD_SIZE_FLAGS if values.get(f) is not None]
    if any(values[f] != 0 for f in sizes):
        return values
    options = {k: values[k] for k in OFFLOAD_OPTIONS if values.get(k) is not None}
    Offload(**{("mode" if k == "offload_mode" else k): v for k, v in options.items()})  # their own errors
    return {**values, **{f: None for f in (*OFFLOAD_SIZE_FLAGS, *OFFLOAD_OPTIONS)}}


def _tier_gib(tiers: Tiers, capacity: Capacity, block_size: int) -> dict:
    return {name: blocks * block_size * capacity.bytes_per_token / GIB
            for name, blocks in (("cpu", tiers.cpu_blocks), ("disk", tiers.disk_blocks)) if name in tiers.names}


def check_offload(scenario: Scenario, values: dict) -> None:
    """The tiers' own checks (a disk tier needs a CPU tier), and offload takes one instance: the
    fleet models have no tiers (refused, as ``kvsim calc``)."""
    scenario.tiers()
    if scenario.fleet.size > 1 and scenario.offload.asked:
        flags = {action.dest: flag for flag, action in _fields().items()}
        flag = flags[next(f for f in OFFLOAD_SIZE_FLAGS if values.get(f) is not None)]
        raise FieldError(flag, f"{flag}: CPU / disk offload takes one instance here (the fleet models have no "
                               f"tiers): set instances to 1, or use kvsim simulate --instances "
                               f"{scenario.fleet.size} --cpu-offload-gib for a fleet with offload")


def _scenario(params: dict):
    """(field values, scenario, capacity, weights GiB, describe) of the page's inputs."""
    values = _no_tier_is_none(values_from_params(params))
    scenario = scenario_from_values(values)
    check_page_limits(scenario.workload, scenario.fleet.size)
    check_offload(scenario, values)
    capacity = scenario.capacity()
    return values, scenario, capacity, scenario.weights_gib(), describe


def fifo_note(workload: Workload) -> str | None:
    """None when the page can afford the FIFO model for this workload, else why not."""
    longest = int(np.max(workload.turns.support[0]))
    if longest <= FIFO_MAX_TURNS:
        return None
    return (f"FIFO model not evaluated here: conversations reach {longest:,} turns ({workload.turns.kind}, mean "
            f"{workload.turns.mean:g}) and its cost grows with the square of that (it is fine up to "
            f"{FIFO_MAX_TURNS}); kvsim calc --method fifo computes it")


def _check_policy(s: Scenario, note: str | None, router: str = "affinity") -> None:
    if note and s.policy == "fifo":
        raise FieldError("policy", f"policy fifo: {note}")
    if router == "random" and s.policy == "fifo":
        raise FieldError("policy", f"policy fifo: {RANDOM_FIFO_NOTE}; use lru (or router affinity)")


def calc(params: dict, *, curve: bool = True) -> dict:
    """What the page shows for one set of inputs (everything but sensitivity and advice)."""
    start = _now()
    a, s, capacity, size_gb, describe = _scenario(params)
    instances, router = fleet_of(s)
    note = fifo_note(s.workload)
    _check_policy(s, note, router if instances > 1 else "affinity")
    seed = calculate(s.model, capacity, s.workload, kv_dtype=s.kv_dtype, model_size_gb=size_gb, methods=("seed",))
    methods = {"seed": seed["methods"]["seed"], "fifo": None}
    tiers = s.tiers()
    if tiers is not None:  # one instance (check_offload)
        for method in ("lru",) if note else ("lru", "fifo"):
            methods[method] = tiered_entry(s, tiers, capacity, method)
    elif instances == 1:
        for method in ("lru",) if note else ("lru", "fifo"):
            methods[method] = cached_evaluate(s.workload, capacity.capacity_blocks, s.block_size, method).as_dict()
    else:
        methods["seed"] = None
        for method in fleet_methods(instances, router, note):
            r = cached_fleet(s.workload, capacity.capacity_blocks, instances, router, method, s.block_size)
            methods[method] = {**r.as_dict(), "characteristic_time": r.per_instance[0].characteristic_time}
    models_ms = 1000 * (_now() - start)
    out = {
        "model": {**s.model.__dict__, "attention": s.model.attention},
        "kv_dtype": s.kv_dtype,
        "policy": s.policy,
        "memory": seed["memory"],
        "summary": describe(s.model, seed["memory"], s.workload, s.kv_dtype),
        "methods": methods,
        "notes": [note] if note else [],
    }
    if tiers is not None:
        line = offload_line(tiers, capacity.bytes_per_token, s.block_size)
        out["summary"] = [*out["summary"], line]
        out["offload"] = {**offload_summary(tiers, capacity.bytes_per_token, s.block_size),
                          "tiers": list(tiers.names)}
        out["method_notes"] = {"seed": "GPU only (single tier)"}
        out["notes"].append(f"{line.split(None, 1)[1]}: LRU and FIFO are the tiered models (GPU + "
                            f"{' + '.join(n.upper() for n in tiers.names[1:])}; characteristic time: the GPU's), "
                            "the seed model the GPU alone. Prefill: the mean time to first token without queueing "
                            "(default service model; loads at the tiers' bandwidth, not overlapped with compute).")
    if instances > 1:
        out["fleet"] = {"instances": instances, "router": router}
        out["method_notes"] = {"seed": "single instance only"}
        if router == "random":
            out["method_notes"]["fifo"] = RANDOM_FIFO_NOTE
        out["notes"].append(f"{instances} instances behind {router} routing, each with the memory above: fleet "
                            "models (characteristic time per instance); the seed model knows one instance only.")
    if curve:
        out["curve"] = memory_curve(s, capacity, size_gb, methods=fleet_methods(instances, router, note), start=start,
                                    instances=instances, router=router, tiers=tiers)
    out["timing_ms"] = {"models": models_ms, "total": 1000 * (_now() - start)}
    return out


def curve_response(params: dict) -> dict:
    """One method's curve refined (``{"method": "fifo", ...inputs}``): what ``/api/calc`` left
    incomplete (a slow workload, or a busy server). At least CURVE_GOOD_POINTS points for LRU,
    CURVE_MIN_POINTS for FIFO, more while CURVE_REFINE_BUDGET_S lasts."""
    params = dict(params)
    method = str(params.pop("method", "fifo"))
    if method not in ("lru", "fifo"):
        raise FieldError("method", f"method must be one of lru, fifo (got {method!r})")
    a, s, capacity, size_gb, _ = _scenario(params)
    instances, router = fleet_of(s)
    note = fifo_note(s.workload)
    if method == "fifo" and note:
        raise FieldError("method", note)
    if method == "fifo" and instances > 1 and router == "random":
        raise FieldError("method", RANDOM_FIFO_NOTE)
    return memory_curve(s, capacity, size_gb, methods=(method,), budget_s=CURVE_REFINE_BUDGET_S,
                        min_points={method: CURVE_GOOD_POINTS if method == "lru" else CURVE_MIN_POINTS},
                        instances=instances, router=router, tiers=s.tiers())


def _incomplete(start: float, **out) -> dict:
    return {**out, "incomplete": True, "timing_ms": {"total": 1000 * (_now() - start)}}


def sensitivity_response(params: dict) -> dict:
    """The tornado of ``kvsim sensitivity`` (LRU model), or ``{"incomplete": true, "rows": []}``
    when SENSITIVITY_BUDGET_S ran out first (ask again: it goes on from the cache)."""
    start = _now()
    _, s, _, _, _ = _scenario(params)
    with budget(SENSITIVITY_BUDGET_S):
        try:
            out = sensitivity(s, method="lru", evaluate=cached_evaluate)
        except BudgetSpent:
            return _incomplete(start, method="lru", rows=[], base=None)
    out["incomplete"] = False
    out["notes"] = [SENSITIVITY_OFFLOAD_NOTE] if s.offload.asked else []
    out["timing_ms"] = {"total": 1000 * (_now() - start)}
    return out


SENSITIVITY_OFFLOAD_NOTE = ("The sensitivity is the GPU's alone (the single-tier LRU model, the CPU / disk tiers "
                            "left out).")
ADVICE_OFFLOAD_NOTE = ("With your offload: the CPU offload lever compares the GPU alone with the GPU and your CPU "
                       "tier; the other levers are priced on the GPU alone (single-tier models, the tiers below "
                       "left out).")


def advice_response(params: dict) -> dict:
    """The levers of ``kvsim calc --advise``, or ``{"incomplete": true, "advice": []}`` when
    ADVICE_BUDGET_S ran out first (ask again: it goes on from the cache)."""
    start = _now()
    a, s, _, _, _ = _scenario(params)
    instances, router = fleet_of(s)
    note = fifo_note(s.workload)
    _check_policy(s, note, router if instances > 1 else "affinity")
    target = a["target_hit_rate"] if a["target_hit_rate"] is not None else DEFAULT_TARGET
    out = {"target": target, "notes": ([note] if note else []) + ([ADVICE_OFFLOAD_NOTE] if s.offload.asked else [])}
    with budget(ADVICE_BUDGET_S):
        try:
            if instances == 1:
                out["advice"] = advise(s, target=target, evaluate=cached_evaluate, compare_policies=note is None)
            else:
                out["advice"] = fleet_advise(s, instances, router, target=target, evaluate=cached_evaluate,
                                             compare_policies=note is None)
        except BudgetSpent:
            return _incomplete(start, **out, advice=[])
    out["incomplete"] = False
    out["timing_ms"] = {"total": 1000 * (_now() - start)}
    return out


def presets_response() -> dict:
    models = {n: {**m.__dict__, "attention": m.attention, "bytes_per_token_bf16": bytes_per_token(m)}
              for n, m in presets.models().items()}
    fields = _fields()
    defaults = field_defaults()
    defaults.update(preset=DEFAULT_PRESET, gpu=DEFAULT_GPU, instances=1, router="affinity",
                    **{"block-size": defaults.get("block-size") or DEFAULT_BLOCK_SIZE,
                       "offload-mode": OFFLOAD_MODES[0]})
    return {
        "models": models,
        "gpus": dict(presets.GPUS),
        "dtypes": list(DTYPE_BYTES),
        "defaults": defaults,
        "choices": {f: list(a.choices) for f, a in fields.items() if a.choices is not None},
        "help": {f: a.help for f, a in fields.items() if a.help},
        # what an empty bandwidth field means
        "placeholders": {"cpu-bandwidth-gbps": DEFAULT_CPU_BANDWIDTH_GBPS, "disk-bandwidth-gbps": DEFAULT_DISK_BANDWIDTH_GBPS},
    }


# ----------------------------------------------------------------------------- simulation job


def simulation_warmup(workload: Workload) -> float:
    """The page's warm-up: two conversation lifetimes (turns x think time), within 300-3600 s."""
    return min(max(2 * workload.turns.mean * workload.think_time.mean, SIM_WARMUP_S[0]), SIM_WARMUP_S[1])


def settings_overrides(settings: dict, params: dict) -> dict:
    """``settings`` with the API's overrides of ``duration``, ``warmup``, ``replications``,
    ``points`` and ``seed`` (bounded: SIM_LIMITS), the warm-up shorter than the duration."""
    settings = dict(settings)
    for key, kind in (("duration", float), ("warmup", float), ("replications", int), ("points", int), ("seed", int)):
        if key not in params:
            continue
        raw = params[key]
        try:
            value = kind(raw)
            ok = math.isfinite(value) and value == float(raw)
        except (TypeError, ValueError):
            ok = False
        limit = SIM_LIMITS.get(key, 2**31)
        low = 0 if key in ("warmup", "seed") else (1 if kind is int else 1e-9)
        if not ok or not (low <= value <= limit):
            raise FieldError(key, f"{key} must be {'a whole number' if kind is int else 'a number'} in "
                                  f"[{low:g}, {limit:g}] (got {raw!r})")
        settings[key] = value
    if settings["warmup"] >= settings["duration"]:
        raise FieldError("warmup", f"warmup must be shorter than duration ({settings['duration']:g} s) "
                                   f"(got {settings['warmup']:g})")
    return settings


def simulation_settings(scenario: Scenario, params: dict, policies=SIM_POLICIES) -> dict:
    """Warm-up, duration, replications and points of the page's short simulation.

    Warm-up: :func:`simulation_warmup`. Measured window: about SIM_MEASURED_REQUESTS requests per
    replication, within 300-3600 s. The API may override ``duration``, ``warmup``,
    ``replications`` and ``points`` (bounded).
    """
    w = scenario.workload
    warmup = simulation_warmup(w)
    window = min(max(SIM_MEASURED_REQUESTS / w.requests_per_second, SIM_WINDOW_S[0]), SIM_WINDOW_S[1])
    settings = settings_overrides({"warmup": warmup, "duration": warmup + window, "replications": SIM_REPLICATIONS,
                                   "points": SIM_POINTS, "seed": 0}, params)
    runs = (settings["points"] + 1) * len(policies) * settings["replications"]
    requests = runs * w.requests_per_second * settings["duration"]
    if requests > SIM_MAX_REQUESTS:
        raise FieldError("arrival-rate", f"arrival-rate: the short simulation would serve {requests:,.0f} requests "
                                         f"({w.requests_per_second:g}/s for {settings['duration']:,.0f} s, {runs} runs); "
                                         f"the page runs at most {SIM_MAX_REQUESTS:,}: use kvsim simulate")
    settings["requests"] = requests
    return settings


class JobCancelled(Exception):
    """The job was cancelled (the server is closing): its thread stops between runs."""


class SimulationJob:
    """One background simulation at a time: the page's memory sweep (:meth:`start`), or another
    kind of work (:meth:`launch`: the engine under load, ``kvsim.page_serving``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = {"state": "idle", "done": 0, "total": 0, "points": []}

    def status(self) -> dict:
        with self._lock:
            s = dict(self._status)
            s["points"] = list(s["points"])
            if s.get("started") is not None:
                s["elapsed_s"] = (s.get("finished") or time.time()) - s["started"]
            return s

    def running(self) -> bool:
        with self._lock:
            return self._status["state"] == "running"

    def start(self, params: dict) -> tuple[int, dict]:
        """The memory sweep: LRU and FIFO at a few memory points (a fleet: the page's router over
        its instances; random routing: LRU only; with offload, the tiers below each GPU, fixed).
        (HTTP status, body): 202 started, 409 one is running already (bad input raises)."""
        sim_keys = ("duration", "warmup", "replications", "points", "seed")
        model_params = {k: v for k, v in params.items() if k not in sim_keys}
        _, scenario, capacity, _, _ = _scenario(model_params)
        instances, router = fleet_of(scenario)
        policies = SIM_POLICIES if fleet_methods(instances, router, None) == SIM_POLICIES else ("lru",)
        settings = simulation_settings(scenario, params, policies)
        xs, cap_at, label, here = memory_axis(scenario, capacity, settings["points"] + 2, instances)
        xs = sorted({float(x) for x in xs[1:-1]} | {float(here)})
        runs = [(x, policy) for x in xs for policy in policies]

        def work(job: SimulationJob) -> None:
            from kvsim.engine import simulate
            from kvsim.fleet import simulate_fleet

            tiers = scenario.tiers()
            for x, policy in runs:
                job.check_cancelled()
                cap = cap_at(x)
                window = dict(block_size=scenario.block_size, duration=settings["duration"], warmup=settings["warmup"],
                              replications=settings["replications"], seed=settings["seed"], progress=False)
                if instances == 1:
                    r = simulate(scenario.workload, cap.capacity_blocks, policy, tiers=tiers, **window)
                else:
                    r = simulate_fleet(scenario.workload, cap.capacity_blocks, instances, router, policy,
                                       tiers=tiers, **window).fleet
                d = r.as_dict()
                point = {"policy": policy, "x": x, "capacity_blocks": cap.capacity_blocks,
                         "token_hit_rate": d["token_hit_rate"], "request_hit_rate": d["request_hit_rate"],
                         "requests": d.get("requests_measured")}
                if "tiers" in d:  # the totals above are all the tiers'
                    point["tiers"] = d["tiers"]
                job.add_point(point)

        return self.launch("memory", len(runs), {"params": model_params, "settings": settings, "x_label": label,
                                                 "here": here}, work)

    def launch(self, kind: str, total: int, status: dict, work) -> tuple[int, dict]:
        """Run ``work(job)`` in a background thread unless a job is running (then 409): it reports
        through :meth:`add_point` and :meth:`update`, and calls :meth:`check_cancelled` between
        runs. ``status``: what the status reports besides the state and progress (``params``...)."""
        with self._lock:
            if self._status["state"] == "running":
                s = self._status
                return 409, {
                    "error": f"A simulation is already running ({s['done']} of {s['total']} runs done). "
                             "Please wait for it to finish, then try again.",
                    "state": "running",
                }
            self._cancel.clear()
            self._status = {"state": "running", "kind": kind, "done": 0, "total": total, "points": [], **status,
                            "started": time.time(), "finished": None, "error": None}
            self._thread = threading.Thread(target=self._run, args=(work,), name=f"kvsim-simulation-{kind}",
                                            daemon=True)
            self._thread.start()
            return 202, self.status_unlocked()

    def status_unlocked(self) -> dict:
        s = dict(self._status)
        s["points"] = list(s["points"])
        return s

    def add_point(self, point: dict) -> None:
        """One run done, and its point."""
        with self._lock:
            self._status["points"].append(point)
            self._status["done"] += 1

    def update(self, done: int = 0, **fields) -> None:
        """``done`` more runs done, and these status fields."""
        with self._lock:
            self._status["done"] += done
            self._status.update(fields)

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled

    def _run(self, work) -> None:
        try:
            work(self)
            with self._lock:
                self._status.update(state="done", finished=time.time())
        except JobCancelled:
            with self._lock:
                self._status.update(state="cancelled", finished=time.time())
        except Exception as e:  # reported to the page, never lost in a thread
            traceback.print_exc()
            with self._lock:
                self._status.update(state="error", error=f"simulation failed: {e}", finished=time.time())

    def cancel(self, wait: float = 0.0) -> None:
        self._cancel.set()
        thread = self._thread
        if wait and thread is not None:
            thread.join(wait)
