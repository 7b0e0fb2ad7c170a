"""Fit the linear step time to a user's own measurements (``kvsim calibrate``).

Measurements are per request: arrival, input and output tokens, time to first token (TTFT) and
end-to-end time (E2E). :func:`read_measurements` reads them from the result JSON of vLLM's serving
benchmark (``vllm bench serve --save-result --save-detailed``) or from a CSV
(``arrival_s,input_tokens,output_tokens,ttft_s,e2e_s``; kvsim's ``--requests-out`` CSV too).
:func:`simulate_measurements` serves the same requests (same arrivals and lengths) through one
:class:`~kvsim.step_engine.EngineInstance` with a given step time, and :func:`fit` searches the
:class:`~analytic.steptime.LinearStepTime` whose simulation reproduces the measurements.

**The loss** (of coefficients θ; T = TTFT, E = E2E, a bar is the mean over requests, a hat is
simulated): ``e_T = mean(T̂)/mean(T) − 1`` and ``e_E = mean(Ê)/mean(E) − 1``, the relative errors
of the means (the figures the command reports), and the per-request term ``P``, the mean of two
squared normalised errors: each request's decode time ``D = E − T`` (``mean_i ((D̂_i − D_i)/D̄)²``)
and the mean TTFT of each of 8 groups of requests by input length (``mean_g ((T̂_g − T_g)/T̄)²``).
Errors are normalised by the measured mean, not by each value (a request with a 1 ms TTFT does not
dominate). TTFTs are compared by groups, not one by one: a request's TTFT jumps by up to a step
as its arrival falls into one step or the next, noise that made the loss a field of dents; the
decode time, a sum of many steps, is smooth enough per request.

* Stage 1, the shape: minimise ``e_T² + e_E² + P`` over the three coefficients. The two means
  alone fix two combinations of three coefficients; ``P`` tells long prompts (β, in TTFT by
  input length) from decoding beside long contexts (γ) or in a large batch (α vs β), which is
  what makes all three identifiable. γ is the least so: a decode step reads the contexts of its
  whole batch, so β·batch and γ·context move together unless the contexts vary.
* The request latency δ (:attr:`~analytic.steptime.StepTime.request_latency_s`: the API server,
  tokenisation, streaming; what a client-side TTFT holds beyond the engine's steps), added to
  every simulated TTFT and E2E. It shifts the results without changing the run, so each
  simulation gets its own δ at no cost (:func:`request_latency`): the median of the measured minus
  the simulated TTFTs (not the mean: queueing bursts that the simulation does not reproduce, a
  few requests seconds late, would pass for latency), at least 0. Its freedom
  can hold the optimiser in a valley (a δ standing in for part of the prefill), and a fit without
  it pushes δ into the step time, so stage 1 makes two descents and keeps the better: one with δ
  from the start, one without it that then goes on with it. From the regression start both the
  step time and δ are recovered (α, β within 1%, δ within 4% in the tests); from a start 2.5-4x
  off the means are matched but the coefficients can be off by up to 2x (γ) — the command always
  starts from the regression. ``request_latency=False`` (``--no-request-latency``) keeps δ at 0.
* Stage 2, the means: the coefficients ``(u·α, v·β, u·γ)`` (u scales the decode-dominated terms,
  v the prefill-dominated one) minimising ``e_T² + e_E² + 0.01·P``, from u = v = 1: the means are
  matched as closely as the engine allows, the per-request term only breaking ties. Run only if
  stage 1 left a mean more than 0.5% off.

**The optimiser**: Nelder–Mead (``scipy.optimize.minimize``) over the logarithms of the
coefficients. A simulated latency is a step function of the coefficients at fine scale (an
arrival falls into one step or the next; a request is preempted or not), so finite-difference
gradients (``least_squares``) are noise; Nelder–Mead needs none (a run that gains less than 0.1%
in 20 simulations stops and restarts from its best point with a smaller simplex; the first
simplex is ±10%: Nelder-Mead expands it when the start is far), and the logarithms keep the
coefficients positive and make a step a relative change whatever their magnitudes (~1e-2 s,
~1e-5 s/token, ~1e-8 s/token). It starts from the better (by the loss) of two guesses: a
regression on the measurements alone (each request's TPOT against the batch and context it
decoded beside, estimated from the other requests' measured intervals) and the roofline's linear
equivalent, when a roofline is given. Every loss evaluation is one engine simulation; their
number is capped (``max_simulations``, default 200) and reported.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import simpy

from analytic.serving import EngineSpec
from analytic.steptime import LinearStepTime, RooflineStepTime, StepTime
from kvsim.engine import Counters
from kvsim.step_engine import EngineInstance, EngineRequest, ServingStats

__all__ = ["CSV_COLUMNS", "DEFAULT_MAX_SIMULATIONS", "RECONSTRUCTION_SEED", "VLLM_FIELDS", "EngineSetup",
           "Measurements", "errors", "fit", "fit_latency", "linear_equivalent",
           "measurements_from_engine", "read_measurements", "regression_start", "request_latency",
           "simulate_measurements", "vllm_arrivals"]

CSV_COLUMNS = ("arrival_s", "input_tokens", "output_tokens", "ttft_s", "e2e_s")
"""The columns of a measurements CSV (``prompt_tokens`` is taken for ``input_tokens``, as kvsim's
``--requests-out`` names it)."""
VLLM_FIELDS = ("input_lens", "output_lens", "ttfts", "itls")
"""The per-request fields of a vLLM benchmark result that a fit needs (``--save-detailed``)."""
RECONSTRUCTION_SEED = 0
"""The default seed of reconstructed arrivals (vLLM's ``--seed`` default is 0 too, but the dataset
sampling draws from the same generator first, so the real times cannot be recomputed)."""
DEFAULT_MAX_SIMULATIONS = 200
RESTART_STEPS = (0.1, 0.05, 0.025)  # initial simplex of each Nelder-Mead run, in log units
STALL_EVALS, STALL_GAIN = 20, 1e-3  # a Nelder-Mead run stops after this many evaluations without this gain
STAGE2_TOLERANCE = 0.005  # stage 2 runs when a mean is more than this far off after stage 1
STAGE2_TIE_WEIGHT = 0.01
LATENCY_SHARE = 0.35  # of stage 1, for the descent with the request latency from the start (see fit)
MAX_REQUESTS = 1_000_000


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measurements:
    """Per request (sorted by arrival, the first at 0): arrival (s), input and output tokens, TTFT
    and E2E (s). ``source``: what the file was; ``notes``: what was reconstructed or left out."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    source: str = ""
    notes: tuple[str, ...] = ()
    arrivals: str = "measured"  # or "reconstructed"

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if not n:
            raise ValueError("measurements: no request")
        for name in ("input_tokens", "output_tokens", "ttft_s", "e2e_s"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"measurements: {name} has {len(getattr(self, name))} values for {n} requests")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def of(cls, arrival, input_tokens, output_tokens, ttft, e2e, source: str = "", notes=(),
           arrivals: str = "measured") -> Measurements:
        """Sorted by arrival (stable), shifted so that the first arrives at 0."""
        a = np.asarray(arrival, dtype=float)
        order = np.argsort(a, kind="stable")
        a = a[order] - (a[order][0] if len(a) else 0.0)
        return cls(a, np.asarray(input_tokens, dtype=np.int64)[order], np.asarray(output_tokens, dtype=np.int64)[order],
                   np.asarray(ttft, dtype=float)[order], np.asarray(e2e, dtype=float)[order], source, tuple(notes),
                   arrivals)

    def as_dict(self) -> dict:
        return {"source": self.source, "requests": len(self), "arrivals": self.arrivals, "notes": list(self.notes),
                "span_s": float(self.arrival_s[-1]), "mean_input_tokens": float(self.input_tokens.mean()),
                "mean_output_tokens": float(self.output_tokens.mean()), "mean_ttft_s": float(self.ttft_s.mean()),
                "mean_e2e_s": float(self.e2e_s.mean())}


def vllm_arrivals(n: int, request_rate: float, burstiness: float = 1.0, seed: int = RECONSTRUCTION_SEED) -> np.ndarray:
    """Send times as vLLM's benchmark draws them (``vllm/benchmarks/serve.py``, ``get_request``):
    gaps from a gamma distribution of shape ``burstiness`` and mean 1/``request_rate`` (burstiness 1:
    a Poisson process), accumulated, then rescaled so that the last request goes at
    ``n / request_rate``; all at 0 when the rate is infinite. Seeded with ``seed`` (NumPy's legacy
    generator, as vLLM uses)."""
    if math.isinf(request_rate):
        return np.zeros(n)
    if math.isinf(burstiness):
        delays = np.full(n, 1.0 / request_rate)
    else:
        delays = np.random.RandomState(seed).gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)
    t = np.cumsum(delays)
    if t[-1] > 0:
        t *= (n / request_rate) / t[-1]
    return t


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_vllm(path: Path, data: dict, seed: int) -> Measurements:
    where = f"calibrate: {path}"
    lacks = [f for f in VLLM_FIELDS if f not in data]
    if lacks:
        raise ValueError(f"{where}: a vLLM benchmark result needs the per-request fields {', '.join(VLLM_FIELDS)} "
                         f"(vllm bench serve --save-result --save-detailed); it lacks {', '.join(lacks)}")
    fields = {f: data[f] for f in VLLM_FIELDS}
    for f, v in fields.items():
        if not isinstance(v, list):
            raise ValueError(f"{where}: {f} must be a list, one value per request (got {type(v).__name__})")
    n = len(fields["input_lens"])
    if not n:
        raise ValueError(f"{where}: input_lens is empty: no request to fit")
    if n > MAX_REQUESTS:
        raise ValueError(f"{where}: {n:,} requests: at most {MAX_REQUESTS:,}")
    optional = {f: data[f] for f in ("start_times", "latencies", "errors") if data.get(f) is not None}
    for f, v in {**fields, **optional}.items():
        if not isinstance(v, list) or len(v) != n:
            got = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
            raise ValueError(f"{where}: {f} must be a list of {n} values, one per request as input_lens (got {got})")
    notes = []
    errors = optional.get("errors", [""] * n)
    keep = []
    for i in range(n):
        if errors[i]:
            continue  # a failed request: vLLM records ttft 0 and output length 0 for it
        inp, out, ttft, itls = (fields[f][i] for f in VLLM_FIELDS)
        if not (isinstance(inp, int) and not isinstance(inp, bool) and inp >= 1):
            raise ValueError(f"{where}: input_lens[{i}] must be a whole number >= 1 (got {inp!r})")
        if not (isinstance(out, int) and not isinstance(out, bool) and out >= 0):
            raise ValueError(f"{where}: output_lens[{i}] must be a whole number >= 0 (got {out!r})")
        if out == 0:
            continue  # failed without an error text, or nothing generated: no latency to fit
        if not (_number(ttft) and ttft > 0):
            raise ValueError(f"{where}: ttfts[{i}] must be a number > 0 in seconds (got {ttft!r})")
        if not isinstance(itls, list) or not all(_number(x) and x >= 0 for x in itls):
            raise ValueError(f"{where}: itls[{i}] must be a list of numbers >= 0 in seconds (the request's "
                             "inter-token latencies)")
        keep.append(i)
    if not keep:
        raise ValueError(f"{where}: no successful request (every one has an error or no output tokens)")
    if len(keep) < n:
        notes.append(f"{n - len(keep)} failed requests left out")
    # Arrivals: the send times if recorded, else as the benchmark drew them.
    if "start_times" in optional:
        st = optional["start_times"]
        bad = next((i for i in keep if not _number(st[i])), None)
        if bad is not None:
            raise ValueError(f"{where}: start_times[{bad}] must be a number in seconds (got {st[bad]!r})")
        arrival = np.array([st[i] for i in keep], dtype=float)
        arrivals = "measured"
        notes.append("arrivals: start_times")
    else:
        if data.get("ramp_up_strategy") is not None:
            raise ValueError(f"{where}: lacks start_times, which a run with a ramp-up needs (the arrival times "
                             "cannot be redrawn); rerun with a recent vllm bench serve --save-detailed")
        if data.get("max_concurrency") is not None:
            raise ValueError(f"{where}: lacks start_times, which a run with max_concurrency needs (the client "
                             "held requests back); rerun with a recent vllm bench serve --save-detailed")
        if "request_rate" not in data:
            raise ValueError(f"{where}: lacks start_times and request_rate: the arrival times cannot be known")
        rate = data["request_rate"]
        if isinstance(rate, str) and rate.strip().lower() in ("inf", "infinity"):
            rate = math.inf
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 and not math.isnan(rate)):
            raise ValueError(f"{where}: request_rate must be a number > 0 or \"inf\" (got {data['request_rate']!r})")
        burst = data.get("burstiness", 1.0)
        if burst is None:
            burst = 1.0
        if not (isinstance(burst, (int, float)) and not isinstance(burst, bool) and burst > 0):
            raise ValueError(f"{where}: burstiness must be a number > 0 (got {burst!r})")
        arrival = vllm_arrivals(n, float(rate), float(burst), seed)[keep]
        arrivals = "reconstructed"
        if math.isinf(rate):
            notes.append("arrivals: all at 0 (request_rate inf; no start_times in the file)")
        else:
            shape = "Poisson" if burst == 1 else f"gamma-interval (burstiness {burst:g})"
            notes.append(f"arrivals: reconstructed ({shape} at {float(rate):g} requests/s as vLLM draws them, seed "
                         f"{seed}; the file has no start_times)")
    inp = np.array([fields["input_lens"][i] for i in keep], dtype=np.int64)
    out = np.array([fields["output_lens"][i] for i in keep], dtype=np.int64)
    ttft = np.array([fields["ttfts"][i] for i in keep], dtype=float)
    lat = optional.get("latencies")
    if lat is not None and all(_number(lat[i]) and lat[i] >= ttft[k] for k, i in enumerate(keep)):
        e2e = np.array([lat[i] for i in keep], dtype=float)
        notes.append("E2E: latencies")
    else:
        e2e = ttft + np.array([sum(fields["itls"][i]) for i in keep], dtype=float)
        notes.append("E2E: ttft + sum(itls)")
    return Measurements.of(arrival, inp, out, ttft, e2e, "vllm bench serve result", notes, arrivals)


def _read_csv(path: Path, text: str) -> Measurements:
    where = f"calibrate: {path}"
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{where}: empty: a measurements CSV needs the header {','.join(CSV_COLUMNS)} and a row per "
                         "request (or give a vLLM benchmark result JSON)")
    names = [h.strip() for h in header]
    if "input_tokens" not in names and "prompt_tokens" in names:
        names[names.index("prompt_tokens")] = "input_tokens"
    lacks = [c for c in CSV_COLUMNS if c not in names]
    if lacks:
        raise ValueError(f"{where}: a measurements CSV needs the columns {', '.join(CSV_COLUMNS)} (or a vLLM "
                         f"benchmark result JSON); it lacks {', '.join(lacks)}")
    col = {c: names.index(c) for c in CSV_COLUMNS}
    values = {c: [] for c in CSV_COLUMNS}
    skipped = 0
    for line, row in enumerate(rows, start=2):
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) < len(names):
            raise ValueError(f"{where} line {line}: {len(row)} fields for the header's {len(names)}")
        cells = {c: row[col[c]].strip() for c in CSV_COLUMNS}
        if cells["ttft_s"] == "" and cells["e2e_s"] == "":
            skipped += 1  # kvsim's --requests-out leaves them empty for a refused (oversized) request
            continue
        for c in CSV_COLUMNS:
            try:
                v = int(cells[c]) if c.endswith("tokens") else float(cells[c])
            except ValueError:
                kind = "a whole number" if c.endswith("tokens") else "a number"
                raise ValueError(f"{where} line {line}: {c} must be {kind} (got {cells[c]!r})") from None
            low = 1 if c == "input_tokens" else 0
            if not math.isfinite(v) or v < low:
                raise ValueError(f"{where} line {line}: {c} must be >= {low} (got {cells[c]!r})")
            values[c].append(v)
        if values["e2e_s"][-1] < values["ttft_s"][-1]:
            raise ValueError(f"{where} line {line}: e2e_s ({cells['e2e_s']}) is below ttft_s ({cells['ttft_s']})")
        if len(values["arrival_s"]) > MAX_REQUESTS:
            raise ValueError(f"{where}: more than {MAX_REQUESTS:,} requests")
    if not values["arrival_s"]:
        raise ValueError(f"{where}: no request rows under the header")
    notes = [f"{skipped} requests without latencies (refused) left out"] if skipped else []
    return Measurements.of(*(values[c] for c in CSV_COLUMNS), source="measurements CSV", notes=notes)


def read_measurements(path, seed: int = RECONSTRUCTION_SEED) -> Measurements:
    """The measurements in ``path``: a vLLM benchmark result JSON or a CSV (see the module's
    docstring). ``seed``: of the arrivals reconstructed when the JSON has no ``start_times``. A
    file of another shape raises ``ValueError`` naming what it lacks."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"calibrate: {path}: cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"calibrate: {path}: not text (a vLLM benchmark result JSON or a measurements CSV)") from None
    if not text.strip():
        raise ValueError(f"calibrate: {path}: empty (a vLLM benchmark result JSON or a measurements CSV)")
    if text.lstrip()[:1] in "{[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"calibrate: {path}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"calibrate: {path}: a vLLM benchmark result is a JSON object with "
                             f"{', '.join(VLLM_FIELDS)} (got a {type(data).__name__})")
        return _read_vllm(path, data, seed)
    return _read_csv(path, text)


# ----------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class EngineSetup:
    """What the simulated engine is, besides its step time: the KV cache (``capacity_blocks`` of
    ``block_size`` tokens), the scheduler's limits, prefix caching, and the prompt tokens every
    request shares (``shared_prefix_tokens``: vLLM's random dataset with ``--random-prefix-len``;
    0: the benchmark's random prompts share nothing)."""

    capacity_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    prefix_caching: bool = True
    shared_prefix_tokens: int = 0
    prompt_cycle: int = 0  # > 0: request k sends prompt k mod this (a load generator cycling through its prompts)

    def __post_init__(self) -> None:
        for name in ("capacity_blocks", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a whole number >= 1 (got {v!r})")
        v = self.shared_prefix_tokens
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"shared-prefix-tokens must be a whole number >= 0 (got {v!r})")
        EngineSpec(LinearStepTime(0, 0, 0), self.max_num_batched_tokens, self.max_num_seqs)  # checks the limits

    def spec(self, step_time: StepTime) -> EngineSpec:
        return EngineSpec(step_time, self.max_num_batched_tokens, self.max_num_seqs, self.prefix_caching)

    def as_dict(self) -> dict:
        return {"capacity_blocks": self.capacity_blocks, "block_size": self.block_size,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "prefix_caching": self.prefix_caching, "shared_prefix_tokens": self.shared_prefix_tokens,
                "prompt_cycle": self.prompt_cycle}


def _check_fits(m_input, m_output, setup: EngineSetup) -> None:
    need = -(-(np.asarray(m_input) + np.asarray(m_output)) // setup.block_size)
    i = int(np.argmax(need))
    if need[i] > setup.capacity_blocks:
        raise ValueError(f"capacity: the largest request ({int(m_input[i]):,} input + {int(m_output[i]):,} output "
                         f"tokens = {int(need[i]):,} blocks of {setup.block_size}) cannot fit a KV cache of "
                         f"{setup.capacity_blocks:,} blocks: give a larger --capacity-blocks")


def _serve(arrival, input_tokens, output_tokens, step_time: StepTime, setup: EngineSetup) -> tuple[np.ndarray, np.ndarray]:
    _check_fits(input_tokens, output_tokens, setup)
    env = simpy.Environment()
    stats = ServingStats(0.0, math.inf)
    inst = EngineInstance(env, setup.spec(step_time), setup.capacity_blocks, setup.block_size, stats, Counters())
    bs = setup.block_size
    shared = setup.shared_prefix_tokens
    submit = inst.submit
    reqs = []
    for i, (t, inp, out) in enumerate(zip(arrival.tolist(), input_tokens.tolist(), output_tokens.tolist())):
        # Keys of the shared prefix's full blocks; the rest get keys of their own (EngineRequest.key).
        if setup.prompt_cycle:  # whole prompts repeat: the full blocks of prompt i mod cycle
            keys = [(i % setup.prompt_cycle + 1) << 32 | j for j in range(inp // bs)]
        else:
            keys = list(range(1, min(shared, inp) // bs + 1)) if shared else []
        r = EngineRequest(i, t, inp, out, keys)
        reqs.append(r)
        env.timeout(t).callbacks.append(lambda _, r=r: submit(r))
    env.run()
    ttft = np.fromiter((r.ttft for r in reqs), float, len(reqs))
    e2e = np.fromiter((r.e2e for r in reqs), float, len(reqs))
    return ttft, e2e


def simulate_measurements(m: Measurements, step_time: StepTime, setup: EngineSetup) -> tuple[np.ndarray, np.ndarray]:
    """Per request of ``m`` (same arrivals and lengths), the simulated (TTFT, E2E) in seconds, by
    one engine instance of ``setup`` whose steps take ``step_time``."""
    return _serve(m.arrival_s, m.input_tokens, m.output_tokens, step_time, setup)


def measurements_from_engine(arrival, input_tokens, output_tokens, step_time: StepTime, setup: EngineSetup,
                             source: str = "kvsim engine") -> Measurements:
    """Measurements the project generates: the given requests served by the engine with
    ``step_time`` (for tests, and to see what a fit recovers)."""
    a = np.asarray(arrival, dtype=float)
    inp, out = np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64)
    ttft, e2e = _serve(a, inp, out, step_time, setup)
    return Measurements.of(a, inp, out, ttft, e2e, source)


TTFT_BINS = 8  # groups of requests by input length, for the TTFT part of the per-request term


def errors(m: Measurements, ttft: np.ndarray, e2e: np.ndarray) -> dict:
    """How far simulated (``ttft``, ``e2e``) are from ``m``: the means, their relative errors, their
    MAPE (the mean of the two absolute relative errors), and the per-request term ``P`` of the loss
    (see the module's docstring)."""
    mt, me = float(m.ttft_s.mean()), float(m.e2e_s.mean())
    st, se = float(ttft.mean()), float(e2e.mean())
    et, ee = st / mt - 1, se / me - 1
    decode, decode_sim = m.e2e_s - m.ttft_s, e2e - ttft
    md = float(decode.mean())
    per_decode = float(np.mean(((decode_sim - decode) / md) ** 2)) if md > 0 else 0.0
    bins = _input_bins(m)
    count = np.bincount(bins)
    used = count > 0
    tb = np.bincount(bins, weights=m.ttft_s)[used] / count[used]
    tb_sim = np.bincount(bins, weights=ttft)[used] / count[used]
    per_ttft = float(np.mean(((tb_sim - tb) / mt) ** 2))
    return {"mean_ttft_s": st, "mean_e2e_s": se, "ttft_error": et, "e2e_error": ee,
            "mape": (abs(et) + abs(ee)) / 2, "per_request": (per_decode + per_ttft) / 2,
            "decode_rmse": per_decode ** 0.5, "ttft_by_input_rmse": per_ttft ** 0.5}


def request_latency(m: Measurements, ttft: np.ndarray) -> float:
    """The latency per request outside the steps (added to every simulated TTFT and E2E) that
    ``m`` shows beside the simulated ``ttft``: the median of the measured minus the simulated
    TTFTs, at least 0 (robust to the few requests a burst of queueing makes late)."""
    return max(0.0, float(np.median(m.ttft_s - ttft)))


def _input_bins(m: Measurements) -> np.ndarray:
    """Each request's group by input length: TTFT_BINS groups of about equal size."""
    k = min(TTFT_BINS, len(m))
    ranks = np.empty(len(m), dtype=np.int64)
    ranks[np.argsort(m.input_tokens, kind="stable")] = np.arange(len(m))
    return ranks * k // len(m)


# ----------------------------------------------------------------------------- starting points


def linear_equivalent(roofline: RooflineStepTime) -> LinearStepTime:
    """The roofline's terms summed instead of overlapped: α = weights read + fixed overhead, β = the
    linear layers' FLOPs and all-reduce per token, γ = the KV read per context token (attention's
    FLOPs left out). Above the roofline for mid-sized batches; a starting point, not a model."""
    r = roofline
    return LinearStepTime(r.weights_s + r.experts_s + r.fixed_s, r.per_token_s + r.allreduce_per_token_s,
                          r.per_context_s)


def regression_start(m: Measurements, grid: int = 4000) -> LinearStepTime | None:
    """Coefficients from the measurements alone (no simulation): each request's TPOT regressed
    (non-negative least squares) on the batch and context it decoded beside.

    Request j decodes from ``a_j + ttft_j`` to ``a_j + e2e_j``, its context growing linearly from
    its input to input + output tokens. Over request i's decoding, the time-averages of the number
    of decoding requests ``B_i`` and of their summed context ``C_i``, and the prompt tokens ``P_i``
    of the requests whose first token falls in it (prefilled in its steps), give
    ``TPOT_i ≈ α + β·(B_i + P_i/n_i) + γ·(C_i + P_i/n_i)`` with ``n_i`` = output − 1 steps. None
    when fewer than 3 requests have two output tokens or more."""
    from scipy.optimize import nnls

    out = m.output_tokens
    f = m.arrival_s + m.ttft_s
    e = m.arrival_s + m.e2e_s
    dec = (out >= 2) & (e > f)
    if dec.sum() < 3:
        return None
    lo, hi = float(f[dec].min()), float(e[dec].max())
    if not hi > lo:
        return None
    t = np.linspace(lo, hi, grid)
    # B(t) and C(t) by difference arrays: C_j(t) = in_j + out_j (t - f_j)/(e_j - f_j) while decoding.
    d = np.where(dec, e - f, 1.0)
    slope = np.where(dec, out / d, 0.0)
    intercept = np.where(dec, m.input_tokens - slope * f, 0.0)
    i0 = np.searchsorted(t, f, side="left")
    i1 = np.searchsorted(t, e, side="left")
    nb = np.zeros(grid + 1)
    ns = np.zeros(grid + 1)
    ni = np.zeros(grid + 1)
    w = dec.astype(float)
    np.add.at(nb, i0, w)
    np.add.at(nb, i1, -w)
    np.add.at(ns, i0, slope)
    np.add.at(ns, i1, -slope)
    np.add.at(ni, i0, intercept)
    np.add.at(ni, i1, -intercept)
    B = np.cumsum(nb)[:grid]
    C = np.cumsum(ni)[:grid] + np.cumsum(ns)[:grid] * t
    cb = np.concatenate(([0.0], np.cumsum(B)))
    cc = np.concatenate(([0.0], np.cumsum(C)))
    idx = np.flatnonzero(dec)
    k0, k1 = i0[idx], i1[idx]
    cnt = k1 - k0
    mid = np.clip(np.searchsorted(t, (f[idx] + e[idx]) / 2), 0, grid - 1)
    Bi = np.where(cnt > 0, (cb[k1] - cb[k0]) / np.maximum(cnt, 1), B[mid])
    Ci = np.where(cnt > 0, (cc[k1] - cc[k0]) / np.maximum(cnt, 1), C[mid])
    # Prompt tokens prefilled during i's decoding: requests whose first token falls in (f_i, e_i].
    order = np.argsort(f)
    fs = f[order]
    cin = np.concatenate(([0], np.cumsum(m.input_tokens[order])))
    P = cin[np.searchsorted(fs, e[idx], side="right")] - cin[np.searchsorted(fs, f[idx], side="right")]
    n = (out[idx] - 1).astype(float)
    tpot = (e[idx] - f[idx]) / n
    X = np.column_stack([np.ones(len(idx)), np.maximum(Bi, 1.0) + P / n, np.maximum(Ci, m.input_tokens[idx]) + P / n])
    scale = X.mean(axis=0)
    coef, _ = nnls(X / scale, tpot)
    coef = coef / scale
    # A coefficient NNLS sets to 0 gets a floor: its term worth 1% of the mean TPOT.
    floor = 0.01 * float(tpot.mean()) / scale
    coef = np.maximum(coef, floor)
    return LinearStepTime(*(float(c) for c in coef))


# ----------------------------------------------------------------------------- the fit


@dataclass
class _Evaluator:
    m: Measurements
    setup: EngineSetup
    budget: int
    fit_latency: bool = True
    runs: int = 0
    cache: dict = field(default_factory=dict)  # (alpha, beta, gamma) -> simulated (TTFT, E2E)

    def errors(self, st: LinearStepTime) -> dict | None:
        """The errors of ``st``'s step time with the best request latency for the current loss
        (simulated once per coefficients: the latency shifts the results, it is not simulated)."""
        key = (st.alpha, st.beta, st.gamma)
        if key not in self.cache:
            if self.runs >= self.budget:
                return None
            self.runs += 1
            self.cache[key] = simulate_measurements(self.m, LinearStepTime(*key), self.setup)
        ttft, e2e = self.cache[key]
        latency = request_latency(self.m, ttft) if self.fit_latency else 0.0
        return {**errors(self.m, ttft + latency, e2e + latency), "request_latency_s": latency}


def _stage1_loss(err: dict) -> float:
    return err["ttft_error"] ** 2 + err["e2e_error"] ** 2 + err["per_request"]


def _stage2_loss(err: dict) -> float:
    return err["ttft_error"] ** 2 + err["e2e_error"] ** 2 + STAGE2_TIE_WEIGHT * err["per_request"]


class _Budget(Exception):
    pass


def _nelder_mead(ev: _Evaluator, make, x0: np.ndarray, step: float, loss, max_evals: int,
                 stall: int | None = STALL_EVALS) -> tuple[np.ndarray, float]:
    """Nelder–Mead over ``x`` (``make(x)`` -> LinearStepTime) from ``x0`` with an initial simplex of
    ``step`` along each axis; at most ``max_evals`` simulations. The best point seen."""
    from scipy.optimize import minimize

    best = [x0, math.inf]
    limit = ev.runs + max_evals
    since = [0]  # evaluations since the best improved by a relative STALL_GAIN

    def f(x):
        st = make(x)
        if ev.runs >= limit and (st.alpha, st.beta, st.gamma) not in ev.cache:
            raise _Budget
        err = ev.errors(st)
        if err is None:
            raise _Budget
        v = loss(err)
        since[0] += 1
        if v < best[1]:
            if v < best[1] * (1 - STALL_GAIN):
                since[0] = 0
            best[0], best[1] = np.array(x, dtype=float), v
        if stall is not None and since[0] >= stall:
            raise _Budget  # stuck in a dent: the caller restarts
        return v

    k = len(x0)
    simplex = np.vstack([x0] + [x0 + step * np.eye(k)[j] for j in range(k)])
    try:
        minimize(f, x0, method="Nelder-Mead",
                 options={"initial_simplex": simplex, "xatol": 2e-3, "fatol": 1e-9, "maxfev": max_evals,
                          "adaptive": False})
    except _Budget:
        pass
    return best[0], best[1]


def fit(m: Measurements, setup: EngineSetup, roofline: StepTime | None = None,
        max_simulations: int = DEFAULT_MAX_SIMULATIONS, start: LinearStepTime | None = None,
        request_latency: bool = True) -> tuple[LinearStepTime, dict]:
    """The :class:`LinearStepTime` whose engine simulation best reproduces ``m`` (the loss and the
    optimiser: see the module's docstring), and a JSON-ready report: the coefficients, the errors
    before (``roofline``, simulated as it is, if given) and after, the starting point, and the
    simulations run (at most ``max_simulations``, the 'before' one included). ``request_latency``:
    also fit the latency each request spends outside the steps (False: none)."""
    if isinstance(max_simulations, bool) or not isinstance(max_simulations, int) or max_simulations < 4:
        raise ValueError(f"max-simulations must be a whole number >= 4 (got {max_simulations!r})")
    began = time.perf_counter()
    ev = _Evaluator(m, setup, max_simulations, fit_latency=request_latency)
    report: dict = {"measurements": m.as_dict(), "engine": setup.as_dict()}
    if roofline is not None:
        ev.runs += 1
        before = errors(m, *simulate_measurements(m, roofline, setup))
        report["before"] = {"step_time": roofline.as_dict(), "describe": roofline.describe(), **before}
    candidates = []
    if start is not None:
        candidates.append(("given", start))
    else:
        reg = regression_start(m)
        if reg is not None:
            candidates.append(("regression on the measurements", reg))
        if isinstance(roofline, RooflineStepTime):
            candidates.append(("roofline's linear equivalent", linear_equivalent(roofline)))
        elif isinstance(roofline, LinearStepTime):
            candidates.append(("the step time given", roofline))
        if not candidates:  # no decode to regress on, no roofline: a generic 8B-on-one-GPU guess
            candidates.append(("generic", LinearStepTime(0.01, 5e-5, 1e-8)))
    scored = []
    for name, st in candidates:
        st = LinearStepTime(*(max(v, 1e-12) for v in (st.alpha, st.beta, st.gamma)))
        scored.append((_stage1_loss(ev.errors(st)), name, st))
    scored.sort(key=lambda x: x[0])
    _, start_name, st0 = scored[0]
    report["start"] = {"from": start_name, **st0.as_dict(),
                       "candidates": [{"from": n, "loss": v, **s.as_dict()} for v, n, s in scored]}
    theta0 = np.array([st0.alpha, st0.beta, st0.gamma])

    def make1(x):
        return LinearStepTime(*(theta0 * np.exp(x)))

    # Stage 1: the shape, three quarters of what is left (stage 2 gets the rest). Nelder-Mead stops
    # in a dent of the loss (latencies jump as arrivals change steps): it restarts from its best
    # point with a fresh, smaller simplex while the budget lasts and a restart still gains.
    left = max_simulations - ev.runs
    stage1_end = ev.runs + (left - max(left // 4, 10) if left > 40 else left)

    def descend(x: np.ndarray, loss: float, end: int) -> tuple[np.ndarray, float]:
        for step in RESTART_STEPS:
            if ev.runs >= end:
                break
            x_new, v = _nelder_mead(ev, make1, x, step, _stage1_loss, end - ev.runs)
            gained = v < loss * (1 - 1e-3)
            if v < loss:
                x, loss = x_new, v
            if not gained and step <= RESTART_STEPS[-2]:
                break
        return x, loss

    if not request_latency:
        x1, loss1 = descend(np.zeros(3), math.inf, stage1_end)
    else:
        # The request latency's freedom opens valleys (a latency standing in for part of the
        # prefill) that a start far from the truth falls into, and a fit without it pushes the
        # latency into the step time: two descents, the better kept. B: with the latency from the
        # start (LATENCY_SHARE of stage 1); A: without it, then with it from where it stopped
        # (which can only lower the loss; half of what stage 2 would get).
        ev.fit_latency = True
        xb, loss_b = descend(np.zeros(3), math.inf, ev.runs + int(LATENCY_SHARE * (stage1_end - ev.runs)))
        ev.fit_latency = False
        xa, _ = descend(np.zeros(3), math.inf, stage1_end)
        ev.fit_latency = True
        xa, loss_a = descend(xa, _stage1_loss(ev.errors(make1(xa))), stage1_end + (max_simulations - stage1_end) // 2)
        x1, loss1 = (xa, loss_a) if loss_a <= loss_b else (xb, loss_b)
    st1 = make1(x1)
    err1 = ev.errors(st1)
    stage1_runs = ev.runs
    result, err = st1, err1
    stages = [{"stage": 1, "loss": "e_T^2 + e_E^2 + P", "value": loss1, "simulations": stage1_runs}]
    if max(abs(err1["ttft_error"]), abs(err1["e2e_error"])) > STAGE2_TOLERANCE and ev.runs < max_simulations:
        def make2(x):
            u, v = np.exp(x)
            return LinearStepTime(st1.alpha * u, st1.beta * v, st1.gamma * u)

        x2, loss2 = _nelder_mead(ev, make2, np.zeros(2), 0.2, _stage2_loss, max_simulations - ev.runs,
                                  stall=None)
        st2 = make2(x2)
        err2 = ev.errors(st2)
        if _stage2_loss(err2) < _stage2_loss(err1):
            result, err = st2, err2
        stages.append({"stage": 2, "loss": f"e_T^2 + e_E^2 + {STAGE2_TIE_WEIGHT} P over (u alpha, v beta, u gamma)",
                       "value": loss2, "simulations": ev.runs - stage1_runs})
    result = replace(result, request_latency_s=err["request_latency_s"])
    report["after"] = {"step_time": result.as_dict(), "describe": result.describe(), **err}
    report["fit"] = {"optimiser": "Nelder-Mead over log coefficients (scipy.optimize.minimize)", "stages": stages,
                     "simulations": ev.runs, "max_simulations": max_simulations,
                     "elapsed_s": time.perf_counter() - began}
    return result, report


def fit_latency(m: Measurements, setup: EngineSetup, step_time: StepTime) -> tuple[StepTime, dict]:
    """``step_time`` (the roofline, say) kept as it is, with the request latency that best
    reproduces ``m`` (:func:`request_latency` of one simulation),
    and a report shaped as :func:`fit`'s."""
    began = time.perf_counter()
    ttft, e2e = simulate_measurements(m, step_time, setup)
    latency = request_latency(m, ttft)
    result = replace(step_time, request_latency_s=latency)
    report = {"measurements": m.as_dict(), "engine": setup.as_dict(),
              "before": {"step_time": step_time.as_dict(), "describe": step_time.describe(), **errors(m, ttft, e2e)},
              "after": {"step_time": result.as_dict(), "describe": result.describe(),
                        **errors(m, ttft + latency, e2e + latency), "request_latency_s": latency},
              "fit": {"optimiser": "the request latency alone: the median TTFT difference", "simulations": 1,
                      "max_simulations": 1, "elapsed_s": time.perf_counter() - began}}
    return result, report

