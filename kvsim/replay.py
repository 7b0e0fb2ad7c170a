"""Real traces through the prefix cache: replay, conversation templates, export to libCacheSim.

**Replay** (:func:`replay`, ``kvsim replay``) serves a trace's requests in timestamp order
through the same :class:`~kvsim.cache.PrefixCache` as :func:`kvsim.engine.simulate`, for
several policies and capacities in one pass over the trace, beside an infinite cache (the
*ideal* hit rates: the reuse the trace holds at all).

How a hash-id request asks the cache (``request_blocks``), at a block size ``B``:

* ``keys`` = the request's listed hash ids, ``max_hit_blocks`` = all of them,
  ``alloc_blocks`` = ``ceil((input + output) / B)``. Every listed block counts, the partial
  last one included: that is the "cache hit rate" of the Mooncake papers (DESIGN.md §4,
  ``block_hit_rate``). The prompt-1 cap of DESIGN.md §3 is *not* applied by default: it is a
  detail of one engine, it can only bite when a request's whole listed chain is cached, i.e.
  on an exact repeat of an earlier prompt (a partial last block's hash is specific to the
  whole prompt), and applying it would make the block hit rate disagree with the papers'.
* ``vllm=True`` (``--vllm``) gives vLLM's behaviour instead: only full blocks
  (``input // B``) are cached and the hit is capped at ``(input - 1) // B`` blocks.
* Output blocks are never keys: a trace does not say what they hash to. A later turn that
  repeats an answer lists its blocks under new ids (that is how the traces are built), so
  they count as misses, as in the papers.
* ``token_hit_rate`` = hit tokens / input tokens, hit tokens = ``min(hit_blocks * B, input)``;
  ``block_hit_rate`` = hit blocks / listed blocks (at ``B``).
* ``B`` defaults to the trace's own block size. A multiple of it coarsens: a ``B``-token block
  is ``B / bs`` consecutive trace blocks and is identified by the last of their chained ids
  (which fixes the whole prefix); a trailing group of fewer ids is a partial block. A block
  size that is not a multiple of the trace's is refused: hash ids cannot be split.

**Conversation templates** (:func:`template_source`): each conversation the simulator starts
replays one template conversation (a conversation file, or a Bailian chat chain) drawn
uniformly with the engine's rng: its requests in time order (subagents included), their sizes,
hash chains and start-to-start gaps. Each instance gets its own block namespace: two
concurrent replays of one template are two users, whose caches share nothing. Blocks that
several *templates* share (possible only in traces with global ids: Bailian, or conversation
files with ``hash_id_scope: "global"``) stay shared, as a common system prompt is.

**Export** (:func:`export_libcachesim_csv`, ``kvsim export-trace``): the block-level access
stream for libCacheSim.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvsim.cache import PrefixCache
from kvsim.curve import LRUCurve
from kvsim.policies import POLICIES
from kvsim.traces import (
    NAMESPACE_STRIDE,
    TraceError,
    TraceStats,
    _conversation_raw,
    _expand,
    _jsonl_raw,
    iter_requests,
    jsonl_settings,
    trace_files,
    trace_format,
)
from kvsim.workload import Turn

__all__ = [
    "Template", "Templates", "cmd_export_trace", "cmd_replay", "configure_export_parser",
    "configure_replay_parser", "export_libcachesim_csv", "load_templates", "replay", "request_blocks",
    "template_source", "template_summary",
]

POLICY_NAMES = tuple(POLICIES)
LIBCACHESIM_PARAMS = "time-col=1,obj-id-col=2,obj-size-col=3,delimiter=,,has-header=true,obj-id-is-num=true"


# ---------------------------------------------------------------- what a request asks of the cache

def _group_ids(ids: list, k: int) -> list:
    """Ids of ``k``-fold coarser blocks: the last chained id of each group of ``k``."""
    if k == 1:
        return ids
    groups = ids[k - 1::k]
    if len(ids) % k:
        groups.append(ids[-1])
    return groups


def request_blocks(ids: list, input_tokens: int, output_tokens: int, trace_block_size: int,
                   block_size: int, vllm: bool = False) -> tuple[list, int, int, int]:
    """``(keys, max_hit_blocks, alloc_blocks, listed_blocks)`` of a hash-id request served at
    ``block_size`` (a multiple of ``trace_block_size``); see the module docstring."""
    groups = _group_ids(ids, block_size // trace_block_size)
    alloc = -(-(input_tokens + output_tokens) // block_size)
    if vllm:
        keys = groups[:input_tokens // block_size]
        return keys, min((input_tokens - 1) // block_size, len(keys)), alloc, len(groups)
    return groups, len(groups), alloc, len(groups)


def _check_block_size(block_size: int, trace_block_size: int, where: str) -> None:
    if block_size % trace_block_size:
        raise TraceError(
            f"block size {block_size} is not a multiple of the {trace_block_size}-token blocks of {where}: "
            f"hash ids identify whole {trace_block_size}-token blocks and cannot be split "
            f"(use a multiple of {trace_block_size}, or the default: the trace's own)")


def _resolve_block_size(block_size: int | None, files: list[dict]) -> int | None:
    if block_size is not None and (type(block_size) is not int or block_size < 1):
        raise ValueError(f"block-size must be an integer >= 1 (got {block_size!r})")
    sizes = {info["block_size"] for info in files if info["block_size"] is not None}
    if block_size is None:
        if len(sizes) > 1:
            listing = ", ".join(f"{Path(i['path']).name}: {i['block_size']}" for i in files[:6])
            raise TraceError(
                f"the traces have different block sizes ({listing}{', ...' if len(files) > 6 else ''}); "
                f"give --block-size, a common multiple (e.g. {math.lcm(*sizes)})")
        return sizes.pop() if sizes else None
    for info in files:
        if info["block_size"] is not None:
            _check_block_size(block_size, info["block_size"], info["path"])
    return block_size


def _names(policies) -> list[str]:
    if isinstance(policies, str):
        policies = policies.split(",")
    names: list[str] = []
    for p in policies:
        p = p.strip().lower()
        for name in (POLICY_NAMES if p == "all" else (p,)):
            if name not in POLICIES:
                raise ValueError(f"policy must be one of {', '.join(POLICY_NAMES)} or all (got {p!r})")
            if name not in names:
                names.append(name)
    return names


def _sizes(values, what: str) -> list[int]:
    if values is None:
        return []
    if isinstance(values, int):
        values = [values]
    out = []
    for v in values:
        if type(v) is not int or v < 0:
            raise ValueError(f"{what} must be integers >= 0 (got {v!r})")
        out.append(v)
    return out


def _rate(num: float, den: float):
    return num / den if den else None


# ---------------------------------------------------------------- replay

DENSE_CURVE_MAX_DOUBLINGS = 30  # the dense curve's grid reaches 2**30 blocks

@dataclass
class _Tally:
    policy: str
    cache: PrefixCache
    hit_blocks: int = 0
    hit_tokens: int = 0
    requests_hit: int = 0


def replay(traces, policies=("lru",), capacities_blocks=(), *, capacities_tokens=None,
           block_size: int | None = None, trace_block_size: int | None = None, time_unit: str = "auto",
           arrival_rate: float | None = None, seed: int = 0, vllm: bool = False, skip_bad: bool = False,
           max_requests: int | None = None, progress: bool | None = None, curve: bool = False) -> dict:
    """Replay ``traces`` through prefix caches; return the ``kvsim replay --json`` record.

    ``curve``: LRU at every capacity from one pass (:class:`kvsim.curve.LRUCurve`, exact), with
    the same records as separate caches; with no capacity given, a dense grid (8 points per
    doubling, up to the first capacity that never evicts).

    ``traces``: a path, a directory or a list of them (read by
    :func:`kvsim.traces.open_traces`, which ``trace_block_size``, ``time_unit``,
    ``arrival_rate``, ``seed`` and ``skip_bad`` are for), or a callable returning
    :class:`~kvsim.traces.TraceRequest` records in time order, or such an iterable.
    One cache per (policy, capacity); ``capacities_tokens`` are converted to
    ``floor(tokens / block_size)`` blocks. ``block_size`` defaults to the traces' own.
    """
    names = _names(policies)
    capacities = _sizes(capacities_blocks, "capacities")
    tokens = _sizes(capacities_tokens, "capacity tokens")
    if max_requests is not None and (type(max_requests) is not int or max_requests < 1):
        raise ValueError(f"max-requests must be an integer >= 1 (got {max_requests!r})")
    reading = dict(trace_block_size=trace_block_size, time_unit=time_unit, arrival_rate=arrival_rate,
                   seed=seed, skip_bad=skip_bad)
    requests, stats = iter_requests(traces, **reading)
    bs = _resolve_block_size(block_size, stats.files)
    requests = iter(requests)
    first = next(requests, None)
    if bs is None:
        bs = first.block_size if first is not None else 1
    capacities += [t // bs for t in tokens]
    dense = curve and not capacities
    if dense:
        capacities = sorted({int(round(2 ** (k / 8))) for k in range(8 * DENSE_CURVE_MAX_DOUBLINGS + 1)})
    lru_curve = LRUCurve(capacities, bs) if curve and "lru" in names else None
    tallies = [_Tally(p, PrefixCache(c, p)) for p in names for c in capacities if not (p == "lru" and lru_curve)]

    n = input_tokens = output_tokens = listed_total = max_alloc = 0
    ideal_blocks = ideal_tokens = ideal_requests = 0
    seen: set = set()
    t_first = t_last = None
    bar = _progress_bar(progress, "replay")
    started = time.perf_counter()
    try:
        req = first
        while req is not None:
            if max_requests is not None and n >= max_requests:
                break
            if req.block_size != bs:
                _check_block_size(bs, req.block_size, req.where or "a trace")
            keys, max_hit, alloc, listed = request_blocks(
                req.block_ids, req.input_tokens, req.output_tokens, req.block_size, bs, vllm)
            inp = req.input_tokens
            max_alloc = max(max_alloc, alloc)
            n += 1
            input_tokens += inp
            output_tokens += req.output_tokens
            listed_total += listed
            if t_first is None:
                t_first = req.time
            t_last = req.time
            hit = 0
            for key in keys:  # an infinite cache: the leading run of blocks seen before
                if hit == max_hit or key not in seen:
                    break
                hit += 1
            if hit < len(keys):
                seen.update(keys[hit:])
            if hit:
                ideal_blocks += hit
                ideal_tokens += min(hit * bs, inp)
                ideal_requests += 1
            if lru_curve is not None:
                lru_curve.add(keys, max_hit, alloc, inp)
            for tally in tallies:
                result = tally.cache.serve(keys, max_hit, alloc)
                if result.hit_blocks:
                    tally.hit_blocks += result.hit_blocks
                    tally.hit_tokens += min(result.hit_blocks * bs, inp)
                    tally.requests_hit += 1
            if bar is not None and not n % 1000:
                bar.update(1000)
            req = next(requests, None)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started

    results = [{
        "policy": t.policy,
        "capacity_blocks": t.cache.capacity_blocks,
        "capacity_tokens": t.cache.capacity_blocks * bs,
        "block_hit_rate": _rate(t.hit_blocks, listed_total),
        "token_hit_rate": _rate(t.hit_tokens, input_tokens),
        "request_hit_rate": _rate(t.requests_hit, n),
        "requests": n,
        "hit_blocks": t.hit_blocks,
        "hit_tokens": t.hit_tokens,
        "evictions": t.cache.evictions,
        "oversized": t.cache.oversized,
    } for t in tallies]
    if lru_curve is not None:
        points = lru_curve.points()
        if dense:  # beyond the first capacity that never evicts, the curve is flat
            everything = len(seen) + max_alloc
            points = [p for p in points if p.capacity_blocks < everything] + \
                     [p for p in points if p.capacity_blocks >= everything][:1]
        results[:0] = [{
            "policy": "lru",
            "capacity_blocks": p.capacity_blocks,
            "capacity_tokens": p.capacity_blocks * bs,
            "block_hit_rate": _rate(p.hit_blocks, listed_total),
            "token_hit_rate": _rate(p.hit_tokens, input_tokens),
            "request_hit_rate": _rate(p.requests_hit, n),
            "requests": n,
            "hit_blocks": p.hit_blocks,
            "hit_tokens": p.hit_tokens,
            "evictions": p.evictions,
            "oversized": p.oversized,
        } for p in points]
        capacities = [p.capacity_blocks for p in points] if dense else capacities
    return {
        "inputs": {
            "traces": stats.files or None,
            "block_size": bs,
            "semantics": "vllm" if vllm else "listed-blocks",
            "policies": names,
            "capacities_blocks": capacities,
            "time_unit": time_unit,
            "trace_block_size": trace_block_size,
            "arrival_rate": arrival_rate,
            "seed": seed,
            "skip_bad": skip_bad,
            "max_requests": max_requests,
            "curve": curve,
        },
        "trace": {
            "requests": n,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "listed_blocks": listed_total,
            "distinct_blocks": len(seen),
            "first_time_s": t_first,
            "last_time_s": t_last,
        },
        "results": results,
        "ideal_block_hit_rate": _rate(ideal_blocks, listed_total),
        "ideal_token_hit_rate": _rate(ideal_tokens, input_tokens),
        "ideal_request_hit_rate": _rate(ideal_requests, n),
        "skipped": stats.skipped,
        "skipped_files": stats.skipped_files,
        "skip_examples": stats.examples,
        "elapsed_s": elapsed,
        "requests_per_s": n / elapsed if elapsed > 0 else None,
    }


def _progress_bar(progress: bool | None, desc: str):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(unit=" requests", desc=desc, file=sys.stderr, leave=False)


# ---------------------------------------------------------------- conversation templates

@dataclass
class Template:
    """One recorded conversation: its requests in time order, ids raw (not namespaced)."""

    name: str
    block_size: int
    times: list[float]  # seconds from the conversation's first request
    input_tokens: list[int]
    output_tokens: list[int]
    runs: list[tuple[list[int], list[int]]]  # hash ids of each request as (starts, lengths)
    agents: list  # None for the main agent, else the subagent's id
    namespace: int = 0  # source file, for blocks shared between templates
    shared: frozenset = frozenset()  # raw ids that other templates list too

    def __len__(self) -> int:
        return len(self.times)


@dataclass
class Templates:
    templates: list[Template]
    block_size: int
    vllm: bool = False
    stats: TraceStats = field(default_factory=TraceStats)


def _chains(path: Path, index: int, trace_block_size, time_unit, skip_bad, stats) -> list[Template]:
    """Conversations of a Bailian jsonl trace: chat chains linked by parent_chat_id."""
    bs, unit = jsonl_settings(path, trace_block_size, time_unit)
    root: dict = {}
    groups: dict = {}
    for req, starts, lengths in _jsonl_raw(path, bs, unit, skip_bad, stats):
        if req.chat_id is None:
            raise TraceError(f"{req.where}: no chat_id: conversation templates need conversations "
                             "(conversation files, or jsonl traces with chat_id and parent_chat_id)")
        parent = req.parent_chat_id
        # A parent outside the trace's window still ties its children together.
        r = req.chat_id if parent is None or parent == -1 else root.get(parent, parent)
        root[req.chat_id] = r
        groups.setdefault(r, []).append((req, starts, lengths))
    stats.files.append({"path": str(path), "format": "jsonl", "block_size": bs, "time_unit": unit})
    out = []
    for r, reqs in groups.items():
        t0 = reqs[0][0].time
        out.append(Template(f"{path.name}#{r}", bs, [q.time - t0 for q, _, _ in reqs],
                            [q.input_tokens for q, _, _ in reqs], [q.output_tokens for q, _, _ in reqs],
                            [(s, n) for _, s, n in reqs], [None] * len(reqs), namespace=index + 1))
    return out


def load_templates(paths, block_size: int | None = None, *, trace_block_size: int | None = None,
                   time_unit: str = "auto", vllm: bool = False, skip_bad: bool = False) -> Templates:
    """Read template conversations: conversation files, or Bailian jsonl chat chains."""
    files = trace_files(paths)
    stats = TraceStats()
    templates: list[Template] = []
    shareable: list[Template] = []  # templates whose ids are global: may share blocks
    for i, path in enumerate(files):
        if trace_format(path) == "jsonl":
            chains = _chains(path, i, trace_block_size, time_unit, skip_bad, stats)
            templates += chains
            shareable += chains
            continue
        parsed = _conversation_raw(path, skip_bad, stats, trace_block_size)
        if parsed is None or not parsed[2]:
            continue
        bs, scope, entries = parsed
        t = Template(path.name.split(".")[0], bs, [q.time for q, _, _ in entries],
                     [q.input_tokens for q, _, _ in entries], [q.output_tokens for q, _, _ in entries],
                     [(s, n) for _, s, n in entries], [q.agent for q, _, _ in entries],
                     namespace=0 if scope == "global" else i + 1)
        templates.append(t)
        if scope == "global":
            shareable.append(t)
        stats.files.append({"path": str(path), "format": "conversation", "block_size": bs, "hash_id_scope": scope})
    if not templates:
        raise TraceError("no template conversations found in " + ", ".join(str(p) for p in files[:3]))
    bs = _resolve_block_size(block_size, [{"path": t.name, "block_size": t.block_size} for t in templates])
    _mark_shared(shareable)
    return Templates(templates, bs, vllm, stats)


def _mark_shared(templates: list[Template]) -> None:
    owners: dict = {}
    for k, t in enumerate(templates):
        for h in {h for s, n in t.runs for h in _expand(s, n, t.namespace * NAMESPACE_STRIDE)}:
            owners[h] = -1 if owners.get(h, k) != k else k
    shared = {h for h, k in owners.items() if k == -1}
    for t in templates:
        base = t.namespace * NAMESPACE_STRIDE
        t.shared = frozenset(h - base for h in shared if base <= h < base + NAMESPACE_STRIDE)


def _turns(t: Template, instance: int, block_size: int, vllm: bool) -> Iterator[Turn]:
    base = (instance + 1) * NAMESPACE_STRIDE
    shared, shared_base = t.shared, t.namespace * NAMESPACE_STRIDE
    previous = t.times[0] if t.times else 0.0
    for k in range(len(t.times)):
        starts, lengths = t.runs[k]
        if shared:
            # Negative keys: shared blocks can never collide with any instance's own.
            ids = [-1 - (shared_base + h) if h in shared else base + h for h in _expand(starts, lengths, 0)]
        else:
            ids = _expand(starts, lengths, base)
        inp = t.input_tokens[k]
        keys, max_hit, alloc, listed = request_blocks(ids, inp, t.output_tokens[k], t.block_size, block_size, vllm)
        yield Turn(k + 1, t.times[k] - previous, keys, max_hit, alloc, inp, listed, None, t.output_tokens[k])
        previous = t.times[k]


def template_source(paths_or_templates, block_size: int | None = None, **kwargs):
    """``(source, info)``: a :data:`kvsim.engine.ConversationSource` replaying template
    conversations, and a summary of what it holds.

    Each conversation the engine starts draws one template uniformly (``rng.integers``) and
    replays its requests as turns; conversation ``c`` uses block namespace ``c + 1``. Pass
    ``block_size=info["block_size"]`` to :func:`~kvsim.engine.simulate` so that it counts hit
    tokens at the templates' block size. ``kwargs``: those of :func:`load_templates`.
    """
    if isinstance(paths_or_templates, Templates):
        ts = paths_or_templates
        if block_size is not None and block_size != ts.block_size:
            raise ValueError(f"block size {block_size} differs from the templates' {ts.block_size}")
    else:
        ts = load_templates(paths_or_templates, block_size, **kwargs)
    templates, bs, vllm = ts.templates, ts.block_size, ts.vllm

    def source(rng: np.random.Generator, conversation_id: int) -> Iterator[Turn]:
        return _turns(templates[int(rng.integers(len(templates)))], conversation_id, bs, vllm)

    info = {
        "templates": len(templates),
        "names": [t.name for t in templates],
        "block_size": bs,
        "semantics": "vllm" if vllm else "listed-blocks",
        "requests": sum(len(t) for t in templates),
        "mean_requests_per_conversation": sum(len(t) for t in templates) / len(templates),
        "shared_blocks": sum(len(t.shared) for t in templates),
        "skipped": ts.stats.skipped,
        "skipped_files": ts.stats.skipped_files,
    }
    return source, info


def _quantiles(values) -> dict | None:
    if not len(values):
        return None
    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0.1, 0.5, 0.9])
    return {"mean": float(a.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]),
            "max": float(a.max())}


def template_summary(paths_or_templates, block_size: int | None = None, **kwargs) -> dict:
    """Per-template turn counts, context sizes and gaps, and their pooled distributions.

    For each template: ``requests`` (subagent ones included), ``subagent_requests``,
    ``duration_s``, ``gaps_s`` (start-to-start, the engine's delays), ``input_tokens`` (the
    context sent by each request), ``output_tokens``, and ``ideal_block_hit_rate`` /
    ``ideal_token_hit_rate``: the conversation's own reuse (alone, infinite cache).
    """
    ts = paths_or_templates if isinstance(paths_or_templates, Templates) else load_templates(
        paths_or_templates, block_size, **kwargs)
    bs = ts.block_size
    rows = []
    gaps_all: list[float] = []
    first_inputs, last_inputs, outputs = [], [], []
    hit_blocks_all = listed_all = hit_tokens_all = input_all = 0
    for t in ts.templates:
        hit_blocks = listed = hit_tokens = 0
        seen: set = set()
        for turn in _turns(t, 0, bs, ts.vllm):
            hit = 0
            for key in turn.keys:
                if hit == turn.max_hit_blocks or key not in seen:
                    break
                hit += 1
            seen.update(turn.keys[hit:])
            hit_blocks += hit
            hit_tokens += min(hit * bs, turn.prompt_tokens)
            listed += turn.prompt_blocks
        gaps = [b - a for a, b in zip(t.times, t.times[1:])]
        gaps_all += gaps
        first_inputs.append(t.input_tokens[0])
        last_inputs.append(t.input_tokens[-1])
        outputs += t.output_tokens
        inp = sum(t.input_tokens)
        hit_blocks_all += hit_blocks
        listed_all += listed
        hit_tokens_all += hit_tokens
        input_all += inp
        rows.append({
            "name": t.name,
            "requests": len(t),
            "subagent_requests": sum(a is not None for a in t.agents),
            "duration_s": t.times[-1] - t.times[0],
            "gaps_s": gaps,
            "input_tokens": list(t.input_tokens),
            "output_tokens": list(t.output_tokens),
            "max_input_tokens": max(t.input_tokens),
            "ideal_block_hit_rate": _rate(hit_blocks, listed),
            "ideal_token_hit_rate": _rate(hit_tokens, inp),
        })
    per_conv = [r["ideal_block_hit_rate"] for r in rows if r["ideal_block_hit_rate"] is not None]
    return {
        "templates": rows,
        "block_size": bs,
        "requests_per_template": _quantiles([r["requests"] for r in rows]),
        "turn_counts": [r["requests"] for r in rows],
        "gaps_s": _quantiles(gaps_all),
        "first_input_tokens": _quantiles(first_inputs),
        "last_input_tokens": _quantiles(last_inputs),
        "output_tokens": _quantiles(outputs),
        "duration_s": _quantiles([r["duration_s"] for r in rows]),
        "per_template_ideal_block_hit_rate": _quantiles(per_conv),
        "ideal_block_hit_rate": _rate(hit_blocks_all, listed_all),
        "ideal_token_hit_rate": _rate(hit_tokens_all, input_all),
    }


# ---------------------------------------------------------------- export

def export_libcachesim_csv(traces, output, *, block_size: int | None = None, trace_block_size: int | None = None,
                           time_unit: str = "auto", arrival_rate: float | None = None, seed: int = 0,
                           vllm: bool = False, skip_bad: bool = False, bytes_per_token: int | None = None,
                           max_requests: int | None = None) -> dict:
    """Write the block-level access stream of ``traces`` as a CSV file for libCacheSim.

    One row per block access, requests in replay order and each request's blocks head first
    (the keys :func:`replay` serves, see :func:`request_blocks`). Columns, with a header:

    * ``time`` -- whole seconds on the replay clock (libCacheSim truncates to an integer),
    * ``obj_id`` -- the namespaced block id (an unsigned integer below 2**63),
    * ``obj_size`` -- the block size in tokens (times ``bytes_per_token`` if given): every
      block occupies a whole block slot, the partial last one too,
    * ``request`` -- the request's index (0-based), ignored by libCacheSim.

    The file is written to a temporary file beside ``output`` and renamed. Run, e.g.::

        cachesim FILE csv lru,fifo 4096 --ignore-obj-size 1 \\
            -t "time-col=1,obj-id-col=2,obj-size-col=3,delimiter=,,has-header=true,obj-id-is-num=true"

    where 4096 is the capacity in blocks (or drop ``--ignore-obj-size`` and give
    ``blocks * obj_size``). libCacheSim's objects are independent: its hits equal the prefix
    cache's only where the semantics coincide -- single-block requests (every request one
    key, ``alloc_blocks`` 1). For longer requests a prefix cache stops at the first miss,
    pins the request's blocks, allocates room for the output and orders a request's blocks
    tail first; libCacheSim does none of these.
    """
    output = Path(output)
    if bytes_per_token is not None and (type(bytes_per_token) is not int or bytes_per_token < 1):
        raise ValueError(f"bytes-per-token must be an integer >= 1 (got {bytes_per_token!r})")
    directory = output.parent if str(output.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"cannot write {output}: no such directory {directory}")
    requests, stats = iter_requests(traces, trace_block_size=trace_block_size, time_unit=time_unit,
                                    arrival_rate=arrival_rate, seed=seed, skip_bad=skip_bad)
    bs = _resolve_block_size(block_size, stats.files)
    rows = n = 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ValueError(f"cannot write {output}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write("time,obj_id,obj_size,request\n")
            for req in requests:
                if max_requests is not None and n >= max_requests:
                    break
                if bs is None:
                    bs = req.block_size
                if req.block_size != bs:
                    _check_block_size(bs, req.block_size, req.where or "a trace")
                keys = request_blocks(req.block_ids, req.input_tokens, req.output_tokens,
                                      req.block_size, bs, vllm)[0]
                size = bs * (bytes_per_token or 1)
                tail = f",{size},{n}\n"
                prefix = f"{int(req.time)},"
                f.write("".join(prefix + str(k) + tail for k in keys))
                rows += len(keys)
                n += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, output)
    except OSError as e:
        _unlink(tmp)
        raise ValueError(f"cannot write {output}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return {
        "output": str(output),
        "format": "libcachesim-csv",
        "rows": rows,
        "requests": n,
        "block_size": bs,
        "obj_size": (bs or 0) * (bytes_per_token or 1),
        "obj_size_unit": "bytes" if bytes_per_token else "tokens",
        "skipped": stats.skipped,
        "skipped_files": stats.skipped_files,
        "libcachesim_command": f'cachesim {output} csv lru <capacity_blocks> --ignore-obj-size 1 -t "{LIBCACHESIM_PARAMS}"',
    }


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- command line

def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas (got {text!r})") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0 separated by commas (got {text!r})")
    return values


def _policy_list(text: str) -> list[str]:
    try:
        return _names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (got {text!r})")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (got {text!r})")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number > 0 (got {text!r})")
    return value


def _add_reading_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+", metavar="TRACE",
                   help="trace files (*.jsonl, *.json, optionally .gz) or directories of them")
    g = p.add_argument_group("reading traces")
    g.add_argument("--block-size", type=_positive_int,
                   help="tokens per cache block (default: the traces' own; a multiple of it merges "
                        "consecutive hash-id blocks, anything else is refused)")
    g.add_argument("--trace-block-size", type=_positive_int,
                   help="tokens per hash id in jsonl traces (default: blksz_N in the file name, else 16 "
                        "with chat_id (Bailian), else 512 (Mooncake))")
    g.add_argument("--time-unit", default="auto", choices=["auto", "ms", "s"],
                   help="timestamps of jsonl traces (default auto: s with chat_id (Bailian), else ms)")
    g.add_argument("--arrival-rate", type=_positive_float,
                   help="start conversation files, in a random order, as a Poisson process of this "
                        "many per second (default: all at time 0, as recorded)")
    g.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of --arrival-rate (default 0)")
    g.add_argument("--vllm", action="store_true",
                   help="vLLM semantics: cache full blocks only, compute at least one prompt token "
                        "(default: every listed block counts, as in the Mooncake papers)")
    g.add_argument("--skip-bad", action="store_true", help="skip and count malformed records instead of stopping")
    g.add_argument("--max-requests", type=_positive_int, help="stop after this many requests")


def configure_replay_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``kvsim replay`` arguments to ``p`` (and ``func=cmd_replay``)."""
    _add_reading_args(p)
    g = p.add_argument_group("caches")
    g.add_argument("--policy", type=_policy_list, default=["lru"],
                   help=f"eviction policy: {', '.join(POLICY_NAMES)}, a comma list, or all (default lru)")
    cap = g.add_mutually_exclusive_group()
    cap.add_argument("--capacity-blocks", type=_int_list, metavar="N[,N...]", help="cache capacities in blocks")
    cap.add_argument("--capacity-tokens", type=_int_list, metavar="N[,N...]",
                     help="cache capacities in tokens (floor(N / block size) blocks)")
    g.add_argument("--curve", action="store_true",
                   help="LRU at every capacity from one pass (exact); with no capacity, a dense curve")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_replay)


def _reading_kwargs(a) -> dict:
    return dict(block_size=a.block_size, trace_block_size=a.trace_block_size, time_unit=a.time_unit,
                arrival_rate=a.arrival_rate, seed=a.seed, vllm=a.vllm, skip_bad=a.skip_bad,
                max_requests=a.max_requests)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def cmd_replay(a) -> int:
    if a.curve and "lru" not in a.policy:
        raise ValueError("--curve computes LRU: use it with --policy lru (or a list with lru)")
    record = replay(a.traces, a.policy, a.capacity_blocks or [], capacities_tokens=a.capacity_tokens,
                    curve=a.curve, **_reading_kwargs(a))
    if a.json:
        print(json.dumps(record, indent=2))
        return 0
    files = record["inputs"]["traces"] or []
    tr = record["trace"]
    bs = record["inputs"]["block_size"]
    kinds = {}
    for info in files:
        key = (info["format"], info["block_size"], info.get("time_unit"))
        kinds[key] = kinds.get(key, 0) + 1
    desc = "; ".join(f"{n} {fmt} file{'s' if n > 1 else ''} ({b}-token hash blocks"
                     + (f", timestamps in {u})" if u else ")") for (fmt, b, u), n in kinds.items())
    print(f"traces    {desc}")
    conversations = sum(info["format"] == "conversation" for info in files)
    if conversations > 1:
        print("          " + (f"conversations start as a Poisson process, {a.arrival_rate:g}/s (seed {a.seed})"
                              if a.arrival_rate else
                              f"all {conversations} conversations start at t=0 (use --arrival-rate to stagger them)"))
    span = (tr["last_time_s"] - tr["first_time_s"]) if tr["requests"] else 0.0
    print(f"requests  {tr['requests']:,} over {span:,.0f} s; {tr['input_tokens']:,} input tokens in "
          f"{tr['listed_blocks']:,} blocks of {bs} tokens ({tr['distinct_blocks']:,} distinct)")
    print(f"semantics {record['inputs']['semantics']}")
    print(f"ideal     block_hit_rate {_pct(record['ideal_block_hit_rate'])}, token_hit_rate "
          f"{_pct(record['ideal_token_hit_rate'])} (infinite cache)")
    if record["results"]:
        print()
        print(f"{'policy':6} {'capacity_blocks':>15} {'capacity_tokens':>15} {'block_hit_rate':>14} "
              f"{'token_hit_rate':>14} {'request_hit_rate':>16} {'evictions':>11} {'oversized':>9}")
        for r in record["results"]:
            print(f"{r['policy']:6} {r['capacity_blocks']:>15,} {r['capacity_tokens']:>15,} "
                  f"{_pct(r['block_hit_rate']):>14} {_pct(r['token_hit_rate']):>14} "
                  f"{_pct(r['request_hit_rate']):>16} {r['evictions']:>11,} {r['oversized']:>9,}")
    print()
    rate = record["requests_per_s"]
    print(f"replayed in {record['elapsed_s']:.2f} s" + (f" ({rate:,.0f} requests/s)" if rate else ""))
    _report_skips(record)
    return 0


def _report_skips(record: dict) -> None:
    if record["skipped"] or record["skipped_files"]:
        print(f"skipped {record['skipped']:,} malformed records and {record['skipped_files']:,} unreadable files, "
              f"e.g.:")
        for message in record.get("skip_examples", []):
            print(f"  {message}")


def configure_export_parser(p: argparse.ArgumentParser) -> None:
    """Add the ``kvsim export-trace`` arguments to ``p`` (and ``func=cmd_export_trace``)."""
    _add_reading_args(p)
    p.add_argument("--format", default="libcachesim-csv", choices=["libcachesim-csv"],
                   help="output format (default libcachesim-csv: time,obj_id,obj_size,request)")
    p.add_argument("-o", "--output", required=True, help="file to write (replaced atomically)")
    p.add_argument("--bytes-per-token", type=_positive_int,
                   help="write obj_size in bytes (block size x this) instead of tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export_trace)


def cmd_export_trace(a) -> int:
    summary = export_libcachesim_csv(a.traces, a.output, bytes_per_token=a.bytes_per_token, **_reading_kwargs(a))
    if a.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"wrote {summary['rows']:,} block accesses of {summary['requests']:,} requests to {summary['output']} "
          f"(obj_size {summary['obj_size']} {summary['obj_size_unit']})")
    print(f"libCacheSim: {summary['libcachesim_command']}")
    if summary["skipped"] or summary["skipped_files"]:
        print(f"skipped {summary['skipped']:,} malformed records and {summary['skipped_files']:,} unreadable files")
    return 0


# ---------------------------------------------------------------- the model fed from templates

def template_profile(templates: Templates):
    """The templates' block accesses, prepared for the LRU characteristic-time model
    (``analytic.empirical``): their own sizes, hash chains and gaps, no parametric fit."""
    from analytic.empirical import TemplateProfile, TemplateRequest

    def requests(t: Template):
        at = t.times[0] if t.times else 0.0
        for turn in _turns(t, 0, templates.block_size, templates.vllm):
            at += turn.delay
            yield TemplateRequest(at, list(turn.keys), turn.max_hit_blocks, turn.prompt_tokens)

    return TemplateProfile((list(requests(t)) for t in templates.templates), templates.block_size)
