"""The page's serving figures: what the prefix cache buys one instance under load (DESIGN.md §9).

Inputs: the page's fields (the ``kvsim calc`` flags, ``kvsim.page``), the engine's among them
(``max-num-batched-tokens``, ``max-num-seqs``, ``step-time``: roofline or linear here, the page
reads no files), and ``slo``: latency targets as ``kvsim plan --slo`` takes them
(``"ttft-p99=0.5,tpot-p99=0.05"``; empty or missing: none).

* ``/api/serving`` - the models under load (``analytic.load``) with the page's policy, prefix
  caching on and off (``caching.on``, ``caching.off``): the hit rate under load, mean TTFT and
  TPOT, throughput (requests/s, input and output tokens/s), KV usage, the largest sustainable
  arrival rate, as ``kvsim calc --engine``. With ``slo``: a lone request's latencies and the
  models' bound on the arrival rate within the targets (``analytic.slo.model_rate_bound``: the
  rate whose *mean* latencies meet them, an upper bound for percentile targets), as ``kvsim plan
  --slo``'s first line. ``chart``: the same models at LOAD_CHART_POINTS arrival rates up to past
  the sustainable rates. The model evaluations go through the page's cache and charge
  SERVING_BUDGET_S, as ``/api/sensitivity``'s: when it runs out the answer is ``{"incomplete":
  true}``, with the headline and the chart's rates computed so far once the headline is done
  (coarse to fine; ``chart.complete``); asked again, it goes on from the cache. One instance of
  a full-attention model without offload tiers, with a step time (the roofline needs a GPU
  preset): otherwise ``{"unavailable": why}``.

Two background jobs share the page's one (``kvsim.page.SimulationJob``: one at a time; ``GET
/api/simulate`` reports either, ``kind`` "load" or "plan"), both the step engine (vLLM's
scheduler, LRU) on a shortened window - a warm-up of two conversation lifetimes
(``kvsim.page.simulation_warmup``) and a measured window that keeps the job within
LOAD_SIM_MAX_REQUESTS requests in all (LOAD_SIM_WINDOW_S; too many requests even for its
shortest: refused, ``kvsim plan --slo`` or ``kvsim simulate --engine`` runs it). The API may
override ``duration``, ``warmup``, ``replications`` and ``seed`` (bounded).

* ``POST /api/simulate-load`` - the chart's points: a few arrival rates (LOAD_SIM_FRACTIONS of the
  sustainable rate with caching, and the page's own), caching on and off, LOAD_SIM_REPLICATIONS
  replications. A point: TTFT p99 (one per replication: mean and 95% CI), the pooled latencies,
  the token hit rate, throughput.
* ``POST /api/simulate-plan`` - ``kvsim plan --slo`` itself (``kvsim.cli.plan.slo_plan_record``:
  the engine at the models' bound, bisected below it when it misses), LOAD_PLAN_REPLICATIONS
  replications, its window sized for its worst case (every bisection run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from analytic.scenario import Fleet, Scenario
from analytic.serving import EngineSpec
from analytic.specs import Workload
from kvsim.page import (BudgetSpent, FieldError, SimulationJob, _check_policy, _coarse_to_fine, _incomplete, _now,
                        _scenario, budget, cached_evaluate, error_field, fifo_note, settings_overrides,
                        simulation_warmup)

SERVING_BUDGET_S = 1.0  # new model evaluations of one /api/serving request (then: incomplete)
LOAD_CHART_POINTS = 24  # arrival rates of the chart's model lines (and the sustainable rates, the page's own)
LOAD_CHART_SPAN = 1.15  # the chart reaches this far past the larger sustainable rate

LOAD_SIM_FRACTIONS = (1 / 3, 2 / 3, 0.95)  # of the sustainable rate with caching: the simulated rates
LOAD_SIM_REPLICATIONS = 3  # the chart's points: a 95% CI needs a few
LOAD_PLAN_REPLICATIONS = 2  # the plan judges pooled percentiles: fewer warm-ups, a longer window
LOAD_SIM_WINDOW_S = (120.0, 3000.0)  # the measured window: at least (else refused), at most (kvsim's default)
# A job's requests in all (runs x replications): the step engine serves ~1,500-3,000 requests/s
# on this kind of machine with caching on (more off): about a minute.
LOAD_SIM_MAX_REQUESTS = 120_000

STEP_TIME_FORMS = "roofline or linear:... (kvsim calc --help lists its coefficients)"
MODELS_NOTE = ("Models (analytic/load.py): a mean-value model of vLLM's scheduler on one instance, in steady "
               "state - means, and no waiting queue: near the sustainable rate the queue grows and only the "
               "simulation tells TTFT.")
FIFO_ENGINE_NOTE = "The models use the FIFO hit model; the engine simulated is vLLM's (LRU)."


@dataclass(frozen=True)
class Setup:
    """What the serving figures need, or why they are unavailable."""

    scenario: Scenario
    blocks: int
    engine: EngineSpec | None
    unavailable: str | None
    slo: str | None  # the targets as given (kvsim plan --slo)
    targets: tuple = ()
    alone: dict | None = None  # a lone request's latencies (nothing cached)

    def engines(self) -> dict[str, EngineSpec]:
        return {"on": replace(self.engine, prefix_caching=True), "off": replace(self.engine, prefix_caching=False)}


def _unavailable(s: Scenario) -> str | None:
    """Why the models under load do not take this scenario (as ``kvsim calc --engine``)."""
    if s.fleet.size > 1:
        return ("The models under load take one instance: set instances to 1 (kvsim simulate --engine --instances "
                "simulates a fleet).")
    if s.offload.asked:
        return ("The models under load have no offload tiers: clear the CPU offload (kvsim simulate --engine "
                "--cpu-offload-gib simulates them).")
    if s.model.is_hybrid:
        return ("The models under load take full-attention models only (kvsim simulate --engine simulates "
                "hybrid ones).")
    return None


def setup(params: dict) -> Setup:
    """The scenario, its engine and its targets; bad input raises FieldError (``slo`` for the
    targets, a target below what a lone request takes included)."""
    from analytic.slo import check_possible, parse_slo

    params = dict(params)
    slo = params.pop("slo", None)
    values, s, capacity, _, _ = _scenario(params)
    _check_policy(s, fifo_note(s.workload))
    text = values.get("step_time")
    if text is not None and text.strip().lower() != "roofline" and not text.strip().lower().startswith("linear:"):
        raise FieldError("step-time", f"step-time must be {STEP_TIME_FORMS} here (got {text!r}): the page reads no "
                                      "files (kvsim calc --engine --step-time FILE.json does)")
    targets = ()
    if slo is not None and not (isinstance(slo, str) and not slo.strip()):
        try:
            targets = parse_slo(slo)
        except ValueError as e:
            raise FieldError("slo", str(e)) from None
    why = _unavailable(s)
    engine = None
    if why is None:
        s = replace(s, fleet=Fleet())  # one instance: the page's instances (1) and router fields are no fleet
        try:
            engine = s.engine_spec()
        except ValueError as e:
            if text is not None or error_field(str(e)) != "step-time":  # a value the user gave
                raise
            why = f"No step time for the models under load ({e})."  # the roofline without a GPU preset
    alone = None
    if engine is not None and targets:
        try:
            alone = check_possible(targets, s.workload, engine.step_time, engine.max_num_batched_tokens)
        except ValueError as e:
            raise FieldError("slo", str(e)) from None
    return Setup(s, capacity.capacity_blocks, engine, why, slo if targets else None, targets, alone)


# ----------------------------------------------------------------------------- the models


# The models under load, behind caches as the hit models are (``kvsim.page.cached_evaluate``): the
# page asks the same questions again, and their step-time root searches (and a bound's bisection,
# ~1,000 steps when no rate meets the targets) are not model evaluations and charge no budget.


@lru_cache(maxsize=4096)
def _under_load(workload: Workload, blocks: int, block_size: int, engine: EngineSpec, method: str):
    from analytic.load import under_load

    return under_load(workload, blocks, block_size, engine, cached_evaluate, method)


@lru_cache(maxsize=256)
def _saturation(workload: Workload, blocks: int, block_size: int, engine: EngineSpec, method: str) -> float:
    from analytic.load import saturation_rate

    return saturation_rate(workload, blocks, block_size, engine, cached_evaluate, method)


@lru_cache(maxsize=256)
def _bound(targets: tuple, workload: Workload, blocks: int, block_size: int, engine: EngineSpec, method: str) -> float:
    from analytic.slo import model_rate_bound

    return model_rate_bound(targets, workload, blocks, block_size, engine, cached_evaluate, method)


def _steady_state(st: Setup, engine: EngineSpec, rate: float):
    s = st.scenario
    return _under_load(replace(s.workload, arrival_rate=rate), st.blocks, s.block_size, engine, s.policy)


def _headline(st: Setup, engine: EngineSpec) -> dict:
    """``kvsim calc --engine``'s figures at the page's arrival rate, and input tokens/s."""
    from analytic.load import mean_prompt

    s = st.scenario
    w = s.workload
    r = _steady_state(st, engine, w.arrival_rate)
    rate = _saturation(w, st.blocks, s.block_size, engine, s.policy)
    return {**r.as_dict(), "saturation_arrival_rate": rate, "saturation_requests_per_s": rate * w.turns.mean,
            "kv_usage": None if r.held_blocks is None else r.held_blocks / st.blocks,
            "input_tokens_per_s": None if r.saturated else r.requests_per_s * mean_prompt(w)}


def _slo_bounds(st: Setup) -> dict:
    s = st.scenario
    out = {"text": st.slo, "targets": [{**t.__dict__, "name": t.name} for t in st.targets], "lone_request_s": st.alone}
    for key, engine in st.engines().items():
        bound = _bound(st.targets, s.workload, st.blocks, s.block_size, engine, s.policy)
        out[key] = {"model_bound_arrival_rate": bound, "model_bound_requests_per_s": bound * s.workload.turns.mean}
    return out


def _chart_rates(st: Setup, caching: dict) -> tuple[list[float], float]:
    """The chart's arrival rates and its right end: LOAD_CHART_POINTS rates evenly up to
    LOAD_CHART_SPAN x the larger sustainable rate, and the sustainable rates and the page's own."""
    here = st.scenario.workload.arrival_rate
    finite = [c["saturation_arrival_rate"] for c in caching.values() if c["saturation_arrival_rate"] < float("inf")]
    top = LOAD_CHART_SPAN * max(finite) if finite else 2 * here
    xs = {top * (i + 1) / LOAD_CHART_POINTS for i in range(LOAD_CHART_POINTS)}
    xs |= {x for x in (*finite, here) if x <= top}
    return sorted(xs), top


def _chart(st: Setup, caching: dict) -> dict:
    """The models at the chart's rates (None where saturated), coarse to fine until the budget
    is spent: ``complete`` False when some are left (asked again, the chart goes on from the cache)."""
    xs, top = _chart_rates(st, caching)
    engines = st.engines()
    rows = {}
    try:
        for i in _coarse_to_fine(len(xs)):
            rows[i] = {key: _steady_state(st, engine, xs[i]) for key, engine in engines.items()}
    except BudgetSpent:
        pass
    done = sorted(rows)
    out = {"x": [xs[i] for i in done], "x_max": top, "complete": len(done) == len(xs)}
    for key in engines:
        fields = ("ttft_s", "tpot_s") + (("token_hit_rate", "instant_token_hit_rate") if key == "on" else ())
        out[key] = {f: [getattr(rows[i][key], f) for i in done] for f in fields}
    return out


def _models(st: Setup) -> dict:
    """The headline figures with caching on and off, and the SLO bounds (BudgetSpent if the
    budget runs out first)."""
    caching = {key: _headline(st, engine) for key, engine in st.engines().items()}
    return {"caching": caching, "slo": _slo_bounds(st) if st.targets else None}


def serving_response(params: dict) -> dict:
    """What ``/api/serving`` answers (the module's docstring). Within SERVING_BUDGET_S: the
    headline and the SLO bounds, or nothing (``{"incomplete": true}``); then the chart's rates,
    coarse to fine, as many as the budget allows (``incomplete`` until all are there)."""
    from kvsim.cli.simulate import engine_line

    start = _now()
    st = setup(params)
    s = st.scenario
    if st.unavailable:
        return {"unavailable": st.unavailable, "incomplete": False, "timing_ms": {"total": 1000 * (_now() - start)}}
    with budget(SERVING_BUDGET_S):
        try:
            models = _models(st)
        except BudgetSpent:
            return _incomplete(start)
        chart = _chart(st, models["caching"])
    notes = [MODELS_NOTE] + ([FIFO_ENGINE_NOTE] if s.policy == "fifo" else [])
    return {"policy": s.policy, "engine": {**st.engine.as_dict(), "line": engine_line(st.engine)},
            "arrival_rate": s.workload.arrival_rate, "requests_per_s": s.workload.requests_per_second,
            "capacity_blocks": st.blocks, **models, "chart": chart, "notes": notes,
            "incomplete": not chart["complete"], "timing_ms": {"total": 1000 * (_now() - start)}}


# ----------------------------------------------------------------------------- the simulation


SIM_KEYS = ("duration", "warmup", "replications", "seed")


def job_settings(st: Setup, conversations_per_s: float, replications: int, what: str, params: dict) -> dict:
    """Warm-up, duration, replications and seed of a job whose runs together start
    ``conversations_per_s``, and the requests it serves at most (the module docstring)."""
    w = st.scenario.workload
    per_second = conversations_per_s * w.turns.mean * replications  # requests per second of duration
    warmup = simulation_warmup(w)
    duration = math.floor(min(warmup + LOAD_SIM_WINDOW_S[1], LOAD_SIM_MAX_REQUESTS / per_second))
    if duration - warmup < LOAD_SIM_WINDOW_S[0] and "duration" not in params:
        need = (warmup + LOAD_SIM_WINDOW_S[0]) * per_second
        raise FieldError("", f"{what} would serve {need:,.0f} requests ({replications} replications of "
                             f"{warmup + LOAD_SIM_WINDOW_S[0]:,.0f} s); the page runs at most "
                             f"{LOAD_SIM_MAX_REQUESTS:,}: kvsim plan --slo (or kvsim simulate --engine) runs it.")
    settings = settings_overrides({"warmup": warmup, "duration": duration, "replications": replications, "seed": 0},
                                  {k: params[k] for k in SIM_KEYS if k in params})
    requests = conversations_per_s * w.turns.mean * settings["replications"] * settings["duration"]
    if requests > LOAD_SIM_MAX_REQUESTS:
        raise FieldError("duration", f"duration: {what} would serve {requests:,.0f} requests; the page runs at most "
                                     f"{LOAD_SIM_MAX_REQUESTS:,}")
    settings["requests"] = requests
    return settings


def _job_setup(params: dict) -> tuple[dict, Setup, dict]:
    """(the inputs, the setup, its models) of a job: the models from the page's cache once
    ``/api/serving`` has answered."""
    model_params = {k: v for k, v in params.items() if k not in SIM_KEYS}
    st = setup(model_params)
    if st.unavailable:
        raise FieldError("", st.unavailable)
    with budget(SERVING_BUDGET_S):
        try:
            models = _models(st)
        except BudgetSpent:
            raise FieldError("", "The models under load are still being computed: try again in a moment.") from None
    return model_params, st, models


def _window(settings: dict) -> dict:
    return {k: settings[k] for k in SIM_KEYS}


def _load_point(result, rate: float, caching: str) -> dict:
    """A chart point of one simulated rate."""
    import numpy as np

    from kvsim.engine import Estimate

    d = result.as_dict()
    v = d["serving"]
    # The summary pools the replications' latencies for its percentiles (no interval); the
    # chart's error bar needs a p99 per replication.
    p99 = Estimate.of([float(np.percentile(st.ttft, 99)) for st in result.serving_stats() if st.ttft])
    return {"arrival_rate": rate, "caching": caching, "ttft_p99": p99.as_dict(), "ttft_s": v["ttft_s"],
            "tpot_s": v["tpot_s"], "token_hit_rate": d["token_hit_rate"], "throughput": v["throughput"],
            "preemptions": v["preemptions"], "waiting_at_end": v["waiting_at_end"]}


def start_load_simulation(job: SimulationJob, params: dict) -> tuple[int, dict]:
    """``POST /api/simulate-load``: the chart's simulated points (the module docstring); (HTTP
    status, body) as ``SimulationJob.launch``."""
    model_params, st, models = _job_setup(params)
    _, chart_end = _chart_rates(st, models["caching"])
    top = models["caching"]["on"]["saturation_arrival_rate"]
    if not top < float("inf"):
        top = chart_end
    here = st.scenario.workload.arrival_rate
    rates = sorted({f * top for f in LOAD_SIM_FRACTIONS} | ({here} if here <= chart_end else set()))
    settings = job_settings(st, 2 * sum(rates), LOAD_SIM_REPLICATIONS, "The engine simulation", params)
    runs = [(rate, key) for rate in rates for key in ("on", "off")]
    engines = st.engines()

    def work(job: SimulationJob) -> None:
        from kvsim.fleet import simulate_fleet

        s = st.scenario
        for rate, key in runs:
            job.check_cancelled()
            r = simulate_fleet(replace(s.workload, arrival_rate=rate), st.blocks, 1, engine=engines[key],
                               block_size=s.block_size, progress=None, **_window(settings))
            job.add_point(_load_point(r, rate, key))

    return job.launch("load", len(runs), {"params": model_params, "settings": settings, "rates": rates}, work)


def start_plan_simulation(job: SimulationJob, params: dict) -> tuple[int, dict]:
    """``POST /api/simulate-plan``: ``kvsim plan --slo`` on the page's inputs and ``slo``,
    shortened (the module docstring); (HTTP status, body) as ``SimulationJob.launch``."""
    from kvsim.cli.plan import SLO_BISECTIONS

    model_params, st, models = _job_setup(params)
    if not st.targets:
        raise FieldError("slo", "slo: give a latency target (e.g. ttft-p99=0.5) for the plan")
    bounds = [models["slo"][key]["model_bound_arrival_rate"] for key in ("on", "off")]
    # the plan simulates at most 1 + SLO_BISECTIONS rates at or below each bound
    settings = job_settings(st, (1 + SLO_BISECTIONS) * sum(bounds), LOAD_PLAN_REPLICATIONS, "The plan's simulation",
                            params)

    def work(job: SimulationJob) -> None:
        from kvsim.cli.args import SimulationSettings
        from kvsim.cli.plan import slo_plan_record

        record, lines = slo_plan_record(st.scenario, st.slo, SimulationSettings(**_window(settings)))
        job.update(done=1, plan={"prefix_caching": record["prefix_caching"], "caching_gain": record["caching_gain"]},
                   plan_lines=lines)

    status = {"params": model_params, "settings": settings, "slo": st.slo, "plan": None, "plan_lines": None}
    return job.launch("plan", 1, status, work)
