"""Streaming readers of real request traces (DESIGN.md §6).

Two formats, told apart by the file name (a further ``.gz`` means gzip):

* ``*.jsonl`` -- one request per line: ``timestamp``, ``input_length``, ``output_length`` and
  ``hash_ids`` (chained prefix-block hashes). Mooncake traces stamp milliseconds and use
  512-token blocks; the Alibaba Bailian traces stamp seconds, use 16-token blocks and add
  ``chat_id``, ``parent_chat_id`` (-1 for a first turn), ``turn`` and ``type``, which are kept.
* ``*.json`` -- one conversation per file (the agentic-coding traces): ``block_size``,
  ``hash_id_scope`` and ``requests[]`` with ``t`` (s from the conversation's start), ``in``,
  ``out``, ``hash_ids``, ``think_time``, ``api_time``; an entry of ``type: "subagent"`` nests
  its own ``requests``, timed from the subagent's start.

Every request becomes a :class:`TraceRequest`. Block ids are *namespaced*: id ``h`` of the
file opened with namespace ``n`` becomes ``n * 2**40 + h``, so two files never share a block
(hash ids are anonymised per file: Mooncake and Bailian remap them to sequential integers per
trace, and the agentic files say ``hash_id_scope: "local"``). Conversation files that declare
``hash_id_scope: "global"`` all share namespace 0 instead.

Decisions, checked against the shared traces (``../shared/traces``):

* **Time unit** of a jsonl file (``time_unit="auto"``): seconds when its first record has a
  ``chat_id`` (Bailian), else milliseconds (Mooncake). Pass ``"ms"`` or ``"s"`` to override.
* **Block size** of a jsonl file (``block_size=None``): a ``blksz_N`` in the file name (the
  Bailian files are called ``qwen_*_blksz_16.jsonl``), else 16 when the first record has a
  ``chat_id``, else 512 (Mooncake). Conversation files carry their own ``block_size``.
* **Partial blocks.** Mooncake lists ``ceil(input / 512)`` ids (the last block is usually
  partial; Bailian does the same, its last block is padded), the agentic files list
  ``floor(in / 64)`` (full blocks only). Both are accepted: a record is malformed when its id
  count is outside ``[floor(input/bs), ceil(input/bs)]`` -- which is also what a wrong block
  size looks like, so the message says so.
* **Subagents.** A completed subagent entry is stamped when its result returns to the parent:
  its ``t`` minus ``duration_ms`` lands 0.1-1 s after the parent's previous request ended in all
  59 such entries of the shared traces, while ``t`` itself would overlap the parent's next
  request. So a subagent starts at ``t - duration_ms / 1000`` (at ``t`` when there is no
  ``duration_ms``, as for ``status: "async_launched"``) and its requests at that start plus
  their own ``t``. They share the parent's namespace.
* **Order.** A jsonl file must be sorted by timestamp (a record earlier than the one before it
  is malformed: a silently reordered replay would be a wrong answer). A conversation file is
  read whole and sorted by time (ties keep file order); its clock starts at 0 as recorded (if a
  subagent would start before 0, the conversation is shifted to start at 0).
* **Malformed** (a :class:`TraceError` naming file and line, or file and request index
  ``i`` / ``i.j`` for request ``j`` of subagent entry ``i``): unparseable JSON, a missing
  field, a non-integer or negative size, ``input < 1``, a non-finite time, ``hash_ids`` that
  are not distinct integers in ``[0, 2**40)``, an id count that does not fit the block size, a
  time going backwards (jsonl). With ``skip_bad=True`` such records are skipped and counted in
  :class:`TraceStats` (a conversation file that cannot be parsed at all counts as a skipped
  file). Blank lines are ignored.

Files are read lazily: a jsonl trace is streamed line by line, a conversation file is parsed
when its first request is needed and kept only as runs of consecutive ids (a few per request).

Speed: reading is most of what ``kvsim replay`` costs (the run-based cache does a few million
blocks per second), so the per-record work is kept to the JSON decoding, a few type checks and
a pass over ``hash_ids`` in C (``_runs``); every request also carries its ids as
:attr:`TraceRequest.runs`, which the cache takes as they are, and a reader that needs nothing
else (the replay) can skip building the ``block_ids`` list (``block_ids=False``). numpy is
imported only to stagger conversation files (``arrival_rate``): start-up time counts too.
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
import os
import re
from math import isfinite
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "NAMESPACE_STRIDE", "TraceError", "TraceRequest", "TraceStats", "conversation_settings",
    "iter_requests", "jsonl_settings", "open_traces", "read_conversation", "read_jsonl", "trace_files",
    "trace_format",
]

NAMESPACE_STRIDE = 1 << 40
"""Block id ``h`` of namespace ``n`` is ``n * NAMESPACE_STRIDE + h``; raw ids must be below it."""

MOONCAKE_BLOCK_SIZE = 512
BAILIAN_BLOCK_SIZE = 16
TIME_UNITS = {"ms": 1e-3, "s": 1.0}
_EXAMPLES = 5  # skip messages kept as examples


class TraceError(ValueError):
    """A trace that cannot be read faithfully; the message names the file and the record."""


class TraceRequest(NamedTuple):
    """One request of a trace."""

    time: float  # seconds on the replay clock
    input_tokens: int
    output_tokens: int
    block_ids: list  # namespaced ids of the listed prompt blocks, head first (last may be partial)
    block_size: int  # tokens per listed block
    chat_id: object = None  # Bailian: chat (request) id
    parent_chat_id: object = None  # Bailian: the previous turn's chat id, -1 for a first turn
    turn: object = None  # Bailian: turn number
    type: object = None  # Bailian: text/search/image/file; agentic: "n" or "s" (streaming)
    conversation: object = None  # conversation files: the file's id
    agent: object = None  # conversation files: the subagent's id (None for the main agent)
    model: object = None
    think_time: float | None = None
    api_time: float | None = None
    where: str = ""  # "file:line" or "file: request i[.j]", for messages
    runs: list | None = None  # block_ids as (first_id, count) runs of consecutive ids (the cache's keys)


@dataclass
class TraceStats:
    """What reading found: requests read, bad records skipped, per-file settings."""

    requests: int = 0
    skipped: int = 0
    skipped_files: int = 0
    examples: list[str] = field(default_factory=list)  # the first few skip messages
    files: list[dict] = field(default_factory=list)

    def skip(self, message: str, records: int = 1) -> None:
        self.skipped += records
        if len(self.examples) < _EXAMPLES:
            self.examples.append(message)

    def skip_file(self, message: str) -> None:
        self.skipped_files += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(message)


class _Bad(Exception):
    """A malformed record; the reader adds where it is."""


# ---------------------------------------------------------------- files

def trace_format(path: str | os.PathLike) -> str:
    """``"jsonl"`` or ``"conversation"``, from the file name (``.gz`` allowed)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "conversation"
    raise TraceError(f"{path}: unknown trace format (expected .jsonl, .json, or either with .gz)")


def _is_trace_name(name: str) -> bool:
    name = name.lower()
    return name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz"))


def trace_files(paths) -> list[Path]:
    """The trace files named by ``paths`` (a path or several; a directory means its trace
    files, sorted by name). Raises :class:`TraceError` naming a path that does not exist."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        if not os.fspath(p).strip():  # Path("") is the current folder: an empty name is a slip, not "."
            raise TraceError(f"trace paths (TRACE, --conversations) must name a file or folder (got {os.fspath(p)!r})")
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and _is_trace_name(q.name))
            if not found:
                raise TraceError(f"{p}: directory holds no trace files (*.jsonl, *.json, optionally .gz)")
            files += found
        elif p.is_file():
            trace_format(p)
            files.append(p)
        elif p.exists():
            raise TraceError(f"{p}: not a regular file")
        else:
            raise TraceError(f"{p}: no such trace file")
    if not files:
        raise TraceError("no trace files given")
    return files


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


# ---------------------------------------------------------------- field checks

def _field(rec: dict, key: str):
    try:
        return rec[key]
    except KeyError:
        raise _Bad(f"missing {key!r}") from None


def _count(value, name: str, minimum: int) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or value < minimum:
        raise _Bad(f"{name} must be an integer >= {minimum} (got {value!r})")
    return value


def _seconds(value, name: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Bad(f"{name} must be a finite number (got {value!r})")
    return float(value)


def _optional_seconds(value, name: str) -> float | None:
    return None if value is None else _seconds(value, name)


_INT = {int}


def _runs(ids, input_tokens: int, block_size: int) -> tuple[list[int], list[int]]:
    """Check ``hash_ids`` and compress them to runs of consecutive ids (starts, lengths).

    Python steps per id would cost more than the JSON decoding, so the work per id is done by
    C loops: one pass for the types (``map``) and, per run, a slice comparison that confirms
    the end found by galloping (O(log run) steps). Chained prefix ids come in a few long runs
    (a shared head, then the request's own), so a request costs a few dozen steps."""
    if type(ids) is not list:
        raise _Bad(f"hash_ids must be a list of integers (got {type(ids).__name__})")
    n = len(ids)
    full, listed = input_tokens // block_size, -(-input_tokens // block_size)
    if not full <= n <= listed:
        need = f"{listed}" if full == listed else f"{listed} (or {full} full blocks)"
        raise _Bad(f"{n} hash_ids for {input_tokens} input tokens, but {block_size}-token blocks need "
                   f"{need}: wrong block size?")
    if n == 0:
        return [], []
    if set(map(type, ids)) != _INT:  # bools and floats too: 1.0 == 1 would pass the checks below
        raise _Bad("hash_ids must be a list of integers")
    starts: list[int] = []
    lengths: list[int] = []
    last = n - 1
    i = 0
    while i < n:
        first = ids[i]
        # j: the end of the run starting at i, i.e. the last j with ids[j] == first + (j - i)
        # before one that is not. Most often the rest of the list is one run; else gallop
        # (1, 2, 4, ... ahead) past the end, then bisect back to it.
        if ids[last] == first + last - i:
            j = last
        else:
            j, step = i, 1
            while j + step < last and ids[j + step] == first + j + step - i:
                j += step
                step *= 2
            hi = j + step if j + step < last else last  # ids[hi] does not fit the run
            while hi - j > 1:
                mid = (j + hi) // 2
                if ids[mid] == first + mid - i:
                    j = mid
                else:
                    hi = mid
        if j > i and ids[i:j + 1] != list(range(first, first + j + 1 - i)):
            j = i  # the ends fit but not everything between (never seen in real traces): id by id
            while j < last and ids[j + 1] == ids[j] + 1:
                j += 1
        starts.append(first)
        lengths.append(j + 1 - i)
        i = j + 1
    if len(starts) == 1:
        lo, hi = first, first + n
    else:  # ids repeat iff two runs overlap
        pairs = sorted(zip(starts, lengths))
        lo = hi = pairs[0][0]
        for s, m in pairs:
            if s < hi:
                raise _Bad("hash_ids repeats an id (a chained prefix hash cannot)")
            hi = s + m
    if lo < 0 or hi > NAMESPACE_STRIDE:
        raise _Bad("hash_ids must be in [0, 2**40)")
    return starts, lengths


def _expand(starts: list[int], lengths: list[int], base: int) -> list[int]:
    if len(starts) == 1:
        s = starts[0] + base
        return list(range(s, s + lengths[0]))
    out: list[int] = []
    for s, n in zip(starts, lengths):
        s += base
        out.extend(range(s, s + n))
    return out


def _namespaced(starts: list[int], lengths: list[int], base: int) -> list[tuple[int, int]]:
    """The runs of :attr:`TraceRequest.runs`: ``(first id, count)`` with the namespace added."""
    return [(s + base, n) for s, n in zip(starts, lengths)]


def _key(value, name: str):
    if isinstance(value, (list, dict)):
        raise _Bad(f"{name} must be a number or a string (got {type(value).__name__})")
    return value


# ---------------------------------------------------------------- jsonl

def _peek_jsonl(path: Path, lines: int = 100) -> dict | None:
    """The first parseable record of a jsonl file (None if there is none in its first lines)."""
    try:
        with _open_text(path) as f:
            for _, line in zip(range(lines), f):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    return rec
    except (OSError, EOFError, ValueError) as e:
        raise TraceError(f"{path}: cannot read: {e}") from None
    return None


def jsonl_settings(path, block_size: int | None = None, time_unit: str = "auto") -> tuple[int, str]:
    """Block size and time unit of a jsonl trace: as given, else detected (module docstring)."""
    path = Path(path)
    if time_unit not in ("auto", *TIME_UNITS):
        raise ValueError(f"time-unit must be one of auto, ms, s (got {time_unit!r})")
    if block_size is not None and (type(block_size) is not int or block_size < 1):
        raise ValueError(f"trace-block-size must be an integer >= 1 (got {block_size!r})")
    if block_size is None:
        m = re.search(r"blksz_(\d+)", path.name, re.IGNORECASE)
        if m and int(m.group(1)) > 0:
            block_size = int(m.group(1))
    if block_size is None or time_unit == "auto":
        first = _peek_jsonl(path)
        bailian = isinstance(first, dict) and "chat_id" in first
        if block_size is None:
            block_size = BAILIAN_BLOCK_SIZE if bailian else MOONCAKE_BLOCK_SIZE
        if time_unit == "auto":
            time_unit = "s" if bailian else "ms"
    return block_size, time_unit


def _jsonl_raw(path: Path, block_size: int, time_unit: str, skip_bad: bool, stats: TraceStats, *,
               base: int | None = None, block_ids: bool = True):
    """Yield ``(request without ids, starts, lengths)`` for each good record, ``starts, lengths``
    being its raw ids' runs; or, given ``base`` (the namespace's first id), the requests with
    their ids (``runs``, and ``block_ids`` unless not wanted)."""
    scale = TIME_UNITS[time_unit]
    last = -math.inf
    lineno = 0
    name = str(path)
    loads = json.loads
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    try:
                        rec = loads(line)
                    except ValueError as e:
                        if not line.strip():  # a blank line is not JSON either: test for it only then
                            continue
                        raise _Bad(f"not valid JSON ({e})") from None
                    try:  # a well-formed record passes the checks below inline, without calls
                        stamp, inp, out = rec["timestamp"], rec["input_length"], rec["output_length"]
                        ids = rec["hash_ids"]
                        plain = (type(inp) is int and inp >= 1 and type(out) is int and out >= 0
                                 and (type(stamp) is int or type(stamp) is float and isfinite(stamp)))
                    except (KeyError, TypeError):
                        plain = False
                    if plain:
                        time = stamp * scale
                    else:  # the same checks, one by one, to say what is wrong
                        if type(rec) is not dict:
                            raise _Bad("not a JSON object")
                        time = _seconds(_field(rec, "timestamp"), "timestamp") * scale
                        inp = _count(_field(rec, "input_length"), "input_length", 1)
                        out = _count(_field(rec, "output_length"), "output_length", 0)
                        ids = _field(rec, "hash_ids")
                    starts, lengths = _runs(ids, inp, block_size)
                    if time < last:
                        raise _Bad(f"timestamp {time:g} s is earlier than the previous record's "
                                   f"({last:g} s): the file must be sorted by timestamp")
                    if len(rec) == 4:  # the four fields just read (Mooncake): no Bailian ones
                        chat_id = parent = turn = kind = None
                    else:
                        chat_id = _key(rec.get("chat_id"), "chat_id")
                        parent = _key(rec.get("parent_chat_id"), "parent_chat_id")
                        turn = _key(rec.get("turn"), "turn")
                        kind = _key(rec.get("type"), "type")
                except _Bad as e:
                    message = f"{name}:{lineno}: {e}"
                    if not skip_bad:
                        raise TraceError(message) from None
                    stats.skip(message)
                    continue
                last = time
                stats.requests += 1
                if base is None:
                    yield (TraceRequest(time, inp, out, None, block_size, chat_id, parent, turn, kind,
                                        where=f"{name}:{lineno}"), starts, lengths)
                else:
                    yield TraceRequest(time, inp, out, _expand(starts, lengths, base) if block_ids else None,
                                       block_size, chat_id, parent, turn, kind, where=f"{name}:{lineno}",
                                       runs=_namespaced(starts, lengths, base))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        message = f"{name}:{lineno + 1}: cannot read: {e}"
        if not skip_bad:
            raise TraceError(message) from None
        stats.skip_file(message)


def read_jsonl(path, *, block_size: int | None = None, time_unit: str = "auto", namespace: int = 0,
               skip_bad: bool = False, stats: TraceStats | None = None,
               block_ids: bool = True) -> Iterator[TraceRequest]:
    """Stream the requests of a Mooncake/Bailian jsonl trace (time in s from the file's 0).
    ``block_ids=False`` leaves :attr:`TraceRequest.block_ids` None (``runs`` has the ids)."""
    path = Path(path)
    block_size, time_unit = jsonl_settings(path, block_size, time_unit)
    stats = stats if stats is not None else TraceStats()
    yield from _jsonl_raw(path, block_size, time_unit, skip_bad, stats, base=namespace * NAMESPACE_STRIDE,
                          block_ids=block_ids)


# ---------------------------------------------------------------- conversation files

_BLOCK_SIZE_FIELD = re.compile(r'"block_size"\s*:\s*(\d+)')
_SCOPE_FIELD = re.compile(r'"hash_id_scope"\s*:\s*"([^"]*)"')


def conversation_settings(path) -> tuple[int | None, str | None]:
    """``(block_size, hash_id_scope)`` of a conversation file, read cheaply from its head
    (None when not found there; the full read then decides)."""
    path = Path(path)
    try:
        with _open_text(path) as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, ValueError) as e:
        raise TraceError(f"{path}: cannot read: {e}") from None
    # The top-level fields precede the requests in these files; a hash list is digits only.
    cut = head.find('"requests"')
    head = head if cut < 0 else head[:cut]
    bs, scope = _BLOCK_SIZE_FIELD.search(head), _SCOPE_FIELD.search(head)
    return (int(bs.group(1)) if bs else None), (scope.group(1) if scope else None)


def _conversation_request(r, offset: float, block_size: int, conversation, agent, where: str):
    if type(r) is not dict:
        raise _Bad("not a JSON object")
    t = offset + _seconds(_field(r, "t"), "t")
    inp = _count(_field(r, "in"), "in", 1)
    out = _count(_field(r, "out"), "out", 0)
    starts, lengths = _runs(_field(r, "hash_ids"), inp, block_size)
    req = TraceRequest(
        t, inp, out, None, block_size, type=_key(r.get("type"), "type"), conversation=conversation,
        agent=agent, model=_key(r.get("model"), "model"),
        think_time=_optional_seconds(r.get("think_time"), "think_time"),
        api_time=_optional_seconds(r.get("api_time"), "api_time"), where=where)
    return req, starts, lengths


def _conversation_raw(path: Path, skip_bad: bool, stats: TraceStats, block_size: int | None = None):
    """Parse a conversation file: ``(block_size, scope, [(request, starts, lengths)])`` sorted by
    time with the clock starting at 0, or None if the whole file is skipped."""
    def bad_file(reason: str):
        message = f"{path}: {reason}"
        if not skip_bad:
            raise TraceError(message)
        stats.skip_file(message)

    try:
        with _open_text(path) as f:
            doc = json.load(f)
    except (OSError, EOFError, ValueError) as e:
        return bad_file(f"not a readable conversation file ({e})")
    if type(doc) is not dict or type(doc.get("requests")) is not list:
        return bad_file("not a conversation file (expected an object with a 'requests' list)")
    if "block_size" in doc:
        try:
            block_size = _count(doc["block_size"], "block_size", 1)
        except _Bad as e:
            return bad_file(str(e))
    elif block_size is None:
        return bad_file("no block_size (give the trace block size)")
    scope = doc.get("hash_id_scope", "local")
    if scope not in ("local", "global"):
        return bad_file(f"hash_id_scope must be 'local' or 'global' (got {scope!r})")
    conversation = doc.get("id")
    if not isinstance(conversation, (str, int)):
        conversation = path.name.split(".")[0]

    entries = []  # (time, order, request, starts, lengths)

    def add(r, offset, agent, where):
        try:
            req, starts, lengths = _conversation_request(r, offset, block_size, conversation, agent, where)
        except _Bad as e:
            if not skip_bad:
                raise TraceError(f"{where}: {e}") from None
            stats.skip(f"{where}: {e}")
            return
        entries.append((req.time, len(entries), req, starts, lengths))

    for i, r in enumerate(doc["requests"]):
        where = f"{path}: request {i}"
        if type(r) is dict and r.get("type") == "subagent":
            subs = r.get("requests")
            try:
                if type(subs) is not list:
                    raise _Bad("subagent entry without a 'requests' list")
                end = _seconds(_field(r, "t"), "t")
                duration = r.get("duration_ms")
                start = end if duration is None else end - _count(duration, "duration_ms", 0) / 1000
                agent = _key(r.get("agent_id"), "agent_id") or f"subagent-{i}"
            except _Bad as e:
                if not skip_bad:
                    raise TraceError(f"{where}: {e}") from None
                stats.skip(f"{where}: {e}", max(1, len(subs) if type(subs) is list else 1))
                continue
            for j, s in enumerate(subs):
                add(s, start, agent, f"{path}: request {i}.{j}")
        else:
            add(r, 0.0, None, where)
    entries.sort(key=lambda e: (e[0], e[1]))
    shift = -entries[0][0] if entries and entries[0][0] < 0 else 0.0
    stats.requests += len(entries)
    return block_size, scope, [(req._replace(time=req.time + shift) if shift else req, s, n)
                               for _, _, req, s, n in entries]


def read_conversation(path, *, namespace: int = 0, start: float = 0.0, skip_bad: bool = False,
                      stats: TraceStats | None = None, block_size: int | None = None,
                      block_ids: bool = True) -> Iterator[TraceRequest]:
    """The requests of one conversation file (subagents included) in time order, the clock
    starting at ``start`` seconds. ``block_size`` is used only if the file has none.
    ``block_ids=False`` leaves :attr:`TraceRequest.block_ids` None (``runs`` has the ids)."""
    path = Path(path)
    stats = stats if stats is not None else TraceStats()
    parsed = _conversation_raw(path, skip_bad, stats, block_size)
    if parsed is None:
        return
    _, _, entries = parsed
    base = namespace * NAMESPACE_STRIDE
    for req, starts, lengths in entries:
        yield req._replace(time=req.time + start, runs=_namespaced(starts, lengths, base),
                           block_ids=_expand(starts, lengths, base) if block_ids else None)


# ---------------------------------------------------------------- several files, merged

def _file_info(path: Path, fmt: str, trace_block_size: int | None, time_unit: str) -> dict:
    if fmt == "jsonl":
        bs, unit = jsonl_settings(path, trace_block_size, time_unit)
        return {"path": str(path), "format": fmt, "block_size": bs, "time_unit": unit}
    bs, scope = conversation_settings(path)
    if bs is None and trace_block_size is None:  # not in the head: parse the file once
        parsed = _conversation_raw(path, True, TraceStats())
        if parsed is not None:
            bs, scope = parsed[0], parsed[1]
    return {"path": str(path), "format": fmt, "block_size": bs or trace_block_size,
            "hash_id_scope": scope or "local"}


def open_traces(paths, *, trace_block_size: int | None = None, time_unit: str = "auto",
                arrival_rate: float | None = None, seed: int = 0, skip_bad: bool = False,
                stats: TraceStats | None = None, block_ids: bool = True) -> Iterator[TraceRequest]:
    """All requests of several traces merged in time order (ties: file order, then record order).

    File ``i`` (0-based, in the order of :func:`trace_files`) gets namespace ``i + 1``
    (``hash_id_scope: "global"`` conversation files share namespace 0). jsonl traces keep
    their own clock. Conversation files start at time 0 -- all at once, as recorded -- unless
    ``arrival_rate`` (conversations/s) is given: then they start in a random order as a
    Poisson process (the first at 0; order and gaps seeded by ``seed``), as the simulator's
    conversations arrive.
    ``stats.files`` gets one dict per file (path, format, block size, time unit, start).
    ``block_ids=False``: requests without :attr:`TraceRequest.block_ids` (None; ``runs`` has
    the ids), for a reader that works on runs and need not build a list per request.
    """
    files = trace_files(paths)
    stats = stats if stats is not None else TraceStats()
    if arrival_rate is not None:
        from analytic.checks import MIN_ARRIVAL_RATE
        from analytic.specs import MAX_ARRIVAL_RATE  # numpy: loaded below to draw the starts anyway

        if not (isinstance(arrival_rate, (int, float)) and math.isfinite(arrival_rate)
                and MIN_ARRIVAL_RATE <= arrival_rate <= MAX_ARRIVAL_RATE):
            raise ValueError(f"arrival-rate must be a number in [{MIN_ARRIVAL_RATE:g}, {MAX_ARRIVAL_RATE:g}] "
                             f"(got {arrival_rate!r})")
    infos = [_file_info(p, trace_format(p), trace_block_size, time_unit) for p in files]
    conversations = [i for i, info in enumerate(infos) if info["format"] == "conversation"]
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (got {seed!r})")
    offsets = [0.0] * len(conversations)
    if arrival_rate is not None and len(conversations) > 1:
        import numpy as np  # here only: importing numpy is a good part of a short replay's start-up

        rng = np.random.default_rng(seed)
        gaps = np.zeros(len(conversations))
        gaps[1:] = np.cumsum(rng.exponential(1.0 / arrival_rate, len(conversations) - 1))
        offsets = gaps.tolist()
        # File names say nothing about when a session happened; a random order makes
        # different seeds independent replications.
        conversations = [conversations[j] for j in rng.permutation(len(conversations))]
    for i, offset in zip(conversations, offsets):
        infos[i]["start"] = offset
    stats.files.extend(infos)
    if len(files) == 1 and infos[0]["format"] == "jsonl":  # nothing to merge: spare the heap
        return read_jsonl(files[0], block_size=infos[0]["block_size"], time_unit=infos[0]["time_unit"],
                          namespace=1, skip_bad=skip_bad, stats=stats, block_ids=block_ids)
    return _merge(files, infos, skip_bad, stats, block_ids)


def _merge(files: list[Path], infos: list[dict], skip_bad: bool, stats: TraceStats,
           block_ids: bool) -> Iterator[TraceRequest]:
    heap: list = []

    def push(i: int, stream: Iterator[TraceRequest]) -> None:
        # One entry per open file, so (time, file index) never ties and requests are not compared.
        req = next(stream, None)
        if req is not None:
            heapq.heappush(heap, (req.time, i, req, stream))

    # A conversation file is opened (parsed) only once the clock reaches its start: all its
    # requests come at or after it. jsonl files stream from the beginning.
    pending = []
    for i, (path, info) in enumerate(zip(files, infos)):
        if info["format"] == "jsonl":
            push(i, read_jsonl(path, block_size=info["block_size"], time_unit=info["time_unit"],
                               namespace=i + 1, skip_bad=skip_bad, stats=stats, block_ids=block_ids))
        else:
            pending.append((info["start"], i))
    pending.sort()
    pending.reverse()  # pop() takes the earliest

    def open_conversation(i: int) -> None:
        info = infos[i]
        namespace = 0 if info.get("hash_id_scope") == "global" else i + 1
        stream = _checked(read_conversation(files[i], namespace=namespace, start=info["start"],
                                            skip_bad=skip_bad, stats=stats,
                                            block_size=info["block_size"], block_ids=block_ids), info)
        push(i, stream)

    while heap or pending:
        while pending and (not heap or pending[-1][0] <= heap[0][0]):
            open_conversation(pending.pop()[1])
        if not heap:
            continue
        _, i, req, stream = heap[0]
        nxt = next(stream, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.time, i, nxt, stream))
        yield req


def _checked(stream: Iterator[TraceRequest], info: dict) -> Iterator[TraceRequest]:
    """Requests of a conversation file whose block size must be the one announced (info)."""
    for req in stream:
        if info["block_size"] != req.block_size:
            if info["block_size"] is None:
                info["block_size"] = req.block_size
            else:
                raise TraceError(f"{req.where}: block size {req.block_size} differs from the "
                                 f"{info['block_size']} announced at the top of the file")
        yield req


def iter_requests(source, **kwargs) -> tuple[Iterable[TraceRequest], TraceStats]:
    """Requests from paths (read with :func:`open_traces`), a callable returning requests,
    or an iterable of :class:`TraceRequest`; and the stats that reading fills in."""
    stats = kwargs.pop("stats", None) or TraceStats()
    if isinstance(source, (str, os.PathLike)) or (
            isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source)):
        return open_traces(source, stats=stats, **kwargs), stats
    if callable(source):
        source = source()
    return source, stats
