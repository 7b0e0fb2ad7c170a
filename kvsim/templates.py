"""Conversation templates: recorded conversations replayed by the simulator.

**Conversation templates** (:func:`template_source`): each conversation the simulator starts
replays one template conversation (a conversation file, or a Bailian chat chain) drawn
uniformly with the engine's rng: its requests in time order (subagents included), their sizes,
hash chains and start-to-start gaps. Each instance gets its own block namespace: two
concurrent replays of one template are two users, whose caches share nothing. Blocks that
several *templates* share (possible only in traces with global ids: Bailian, or conversation
files with ``hash_id_scope: "global"``) stay shared, as a common system prompt is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvsim.replay import rate, request_blocks, resolve_block_size
from kvsim.traces import (
    NAMESPACE_STRIDE,
    TraceError,
    TraceStats,
    _conversation_raw,
    _expand,
    _jsonl_raw,
    jsonl_settings,
    trace_files,
    trace_format,
)
from kvsim.workload import Turn

__all__ = ["Template", "Templates", "load_templates", "template_profile", "template_source", "template_summary"]


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
    bs = resolve_block_size(block_size, [{"path": t.name, "block_size": t.block_size} for t in templates])
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

    source.mean_requests = sum(len(t) for t in templates) / len(templates)  # sizes the run (engine.expected_requests)

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
            "ideal_block_hit_rate": rate(hit_blocks, listed),
            "ideal_token_hit_rate": rate(hit_tokens, inp),
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
        "ideal_block_hit_rate": rate(hit_blocks_all, listed_all),
        "ideal_token_hit_rate": rate(hit_tokens_all, input_all),
    }



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
