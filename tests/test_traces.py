import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import runs_of
from kvsim.traces import (
    NAMESPACE_STRIDE,
    TraceError,
    TraceStats,
    _runs,  # the run compression every reader relies on
    open_traces,
    read_conversation,
    read_jsonl,
    trace_files,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


def write_jsonl(path: Path, records, raw_lines=()) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_json(path: Path, doc) -> Path:
    text = json.dumps(doc)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def mooncake(ts, inp, out, ids):
    return {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids}


# ---------------------------------------------------------------- jsonl

def test_mooncake_defaults_ms_and_512_blocks(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(0, 600, 10, [0, 1]), mooncake(1500, 1024, 3, [0, 2])])
    reqs = list(read_jsonl(p))
    assert [r.time for r in reqs] == [0.0, 1.5]
    assert reqs[0].block_size == 512 and reqs[0].input_tokens == 600 and reqs[0].output_tokens == 10
    assert reqs[1].block_ids == [0, 2]
    assert reqs[0].chat_id is None and reqs[0].where.endswith("t.jsonl:1")


def test_namespace_offsets_ids(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(0, 600, 10, [7, 8])])
    (r,) = read_jsonl(p, namespace=3)
    assert r.block_ids == [3 * NAMESPACE_STRIDE + 7, 3 * NAMESPACE_STRIDE + 8]


def test_bailian_detected_seconds_16_and_fields_kept(tmp_path):
    rec = {"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114, "input_length": 40,
           "output_length": 132, "type": "text", "turn": 2, "hash_ids": [1089, 1090, 1091]}
    (r,) = read_jsonl(write_jsonl(tmp_path / "b.jsonl", [rec]))
    assert r.time == pytest.approx(61.114) and r.block_size == 16
    assert (r.chat_id, r.parent_chat_id, r.turn, r.type) == (159, 55, 2, "text")


def test_block_size_from_file_name_and_overrides(tmp_path):
    rec = {"chat_id": 1, "parent_chat_id": -1, "timestamp": 2, "input_length": 64, "output_length": 1,
           "type": "text", "turn": 1, "hash_ids": [1, 2]}
    p = write_jsonl(tmp_path / "qwen_x_blksz_32.jsonl", [rec])
    (r,) = read_jsonl(p)
    assert r.block_size == 32 and r.time == 2.0
    # 64 tokens in 64-token blocks need one id, not two
    with pytest.raises(TraceError, match="wrong block size"):
        list(read_jsonl(p, block_size=64))
    p2 = write_jsonl(tmp_path / "m.jsonl", [mooncake(3, 64, 1, [1])])
    (r,) = read_jsonl(p2, block_size=64, time_unit="s")
    assert r.time == 3.0 and r.block_size == 64


def test_partial_last_block_is_listed_or_not(tmp_path):
    # ceil (Mooncake, Bailian) and floor (agentic) counts are both accepted
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(0, 1000, 0, [1, 2]), mooncake(1, 1000, 0, [1])])
    assert [len(r.block_ids) for r in read_jsonl(p)] == [2, 1]


def test_gzip_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl.gz", [mooncake(0, 600, 10, [0, 1])])
    (r,) = read_jsonl(p)
    assert r.block_ids == [0, 1]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('[1, 2]', "not a JSON object"),
    ('{"timestamp": 1, "input_length": 600, "hash_ids": [0, 1]}', "missing 'output_length'"),
    ('{"timestamp": 1, "input_length": -5, "output_length": 1, "hash_ids": []}', "input_length must be"),
    ('{"timestamp": 1, "input_length": 0, "output_length": 1, "hash_ids": []}', "input_length must be"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1.5, "hash_ids": [0, 1]}', "output_length must be"),
    ('{"timestamp": "x", "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}', "timestamp must be"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, 1, 2, 3]}', "4 hash_ids for 600"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, "a"]}', "list of integers"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [5, 5]}', "repeats an id"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [-1, 0]}', r"\[0, 2\*\*40\)"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": 7}', "list of integers"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, 1.0]}', "list of integers"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [true, 1]}', "list of integers"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, null]}', "list of integers"),
    ('{"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [0, 1099511627776]}', r"\[0, 2\*\*40\)"),
    ('{"timestamp": 1e999, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}', "timestamp must be"),
    ('{"timestamp": true, "input_length": 600, "output_length": 1, "hash_ids": [0, 1]}', "timestamp must be"),
    ('{"timestamp": 1, "input_length": true, "output_length": 1, "hash_ids": [0, 1]}', "input_length must be"),
    ('"just a string"', "not a JSON object"),
])
def test_bad_line_named_with_file_and_line(tmp_path, line, message):
    p = write_jsonl(tmp_path / "bad.jsonl", [mooncake(0, 600, 10, [0, 1]), "", line, mooncake(5, 600, 1, [0, 3])])
    it = read_jsonl(p)
    assert next(it).time == 0.0  # streaming: good records come out before the bad one is read
    with pytest.raises(TraceError, match=message) as e:
        list(it)
    assert f"{p}:3: " in str(e.value) and "\n" not in str(e.value)
    stats = TraceStats()
    good = list(read_jsonl(p, skip_bad=True, stats=stats))
    assert [r.time for r in good] == [0.0, 0.005]
    assert stats.skipped == 1 and stats.requests == 2 and f"{p}:3" in stats.examples[0]


def test_float_timestamps_and_integral_float_sizes_are_read(tmp_path):
    # the checks one by one (not the fast path for plain records) accept what they always did
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(0.5, 600.0, 1, [0, 1]), mooncake(2, 600, 1.0, [0, 2])])
    reqs = list(read_jsonl(p))
    assert [(r.time, r.input_tokens, r.output_tokens) for r in reqs] == [(0.0005, 600, 1), (0.002, 600, 1)]
    assert all(type(r.input_tokens) is int and type(r.output_tokens) is int for r in reqs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40)), min_size=1, max_size=8), st.randoms())
def test_runs_are_the_maximal_runs_of_consecutive_ids(pieces, rnd):
    ids = list(dict.fromkeys(k for first, count in pieces for k in range(first, first + count)))
    if rnd.random() < 0.5:  # also ids whose ends look like one run but are not: [0, 2, 1, 3]
        rnd.shuffle(ids)
    starts, lengths = _runs(ids, len(ids), 1)
    assert list(zip(starts, lengths)) == runs_of(ids)
    with pytest.raises(Exception, match="repeats an id"):
        _runs(ids + [ids[len(ids) // 2]], len(ids) + 1, 1)


def test_requests_carry_their_ids_as_runs(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(0, 2500, 10, [0, 1, 2, 7, 8])])
    (r,) = read_jsonl(p, namespace=2)
    base = 2 * NAMESPACE_STRIDE
    assert r.runs == [(base, 3), (base + 7, 2)] == runs_of(r.block_ids)
    (bare,) = read_jsonl(p, namespace=2, block_ids=False)  # for readers of runs only (replay)
    assert bare.block_ids is None and bare.runs == r.runs
    c = write_json(tmp_path / "c.json", conversation([req(0.0, 12, 0, [4, 5, 9])]))
    (q,) = open_traces([c], block_ids=False)
    assert q.block_ids is None and q.runs == [(NAMESPACE_STRIDE + 4, 2), (NAMESPACE_STRIDE + 9, 1)]


def test_time_going_backwards_is_malformed(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [mooncake(10, 600, 1, [0, 1]), mooncake(5, 600, 1, [0, 2]),
                                           mooncake(20, 600, 1, [0, 3])])
    with pytest.raises(TraceError, match=r"t.jsonl:2: .*sorted by timestamp"):
        list(read_jsonl(p))
    stats = TraceStats()
    assert [r.time for r in read_jsonl(p, skip_bad=True, stats=stats)] == [0.01, 0.02]
    assert stats.skipped == 1


def test_truncated_gzip_names_the_file(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl.gz", [mooncake(i, 600, 1, [0, i + 1]) for i in range(2000)])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="t.jsonl.gz:.*cannot read"):
        list(read_jsonl(p))
    stats = TraceStats()
    assert len(list(read_jsonl(p, skip_bad=True, stats=stats))) > 0
    assert stats.skipped_files == 1


# ---------------------------------------------------------------- conversation files

def conversation(requests, **top):
    return {"id": "conv", "block_size": 4, "hash_id_scope": "local", "requests": requests, **top}


def req(t, inp, out, ids, **kw):
    return {"t": t, "type": "n", "model": "m", "in": inp, "out": out, "hash_ids": ids, **kw}


def test_conversation_with_subagents(tmp_path):
    doc = conversation([
        req(0.0, 8, 2, [1, 2], api_time=1.0, think_time=0.0),
        {"t": 10.0, "type": "subagent", "agent_id": "agent_001", "duration_ms": 7500, "status": "completed",
         "requests": [req(0.0, 4, 1, [20]), req(3.0, 9, 1, [20, 21])]},
        {"t": 11.0, "type": "subagent", "agent_id": "agent_002", "status": "async_launched",
         "requests": [req(0.0, 4, 1, [30])]},
        req(12.0, 12, 1, [1, 2, 3], type="s"),
    ])
    p = write_json(tmp_path / "c.json.gz", doc)
    reqs = list(read_conversation(p, namespace=2, start=100.0))
    # the completed subagent started at 10 - 7.5 = 2.5 s, its requests at 2.5 and 5.5
    assert [r.time for r in reqs] == [100.0, 102.5, 105.5, 111.0, 112.0]
    assert [r.agent for r in reqs] == [None, "agent_001", "agent_001", "agent_002", None]
    base = 2 * NAMESPACE_STRIDE
    assert reqs[2].block_ids == [base + 20, base + 21]  # the parent's namespace
    assert reqs[4].block_ids == [base + 1, base + 2, base + 3] and reqs[4].type == "s"
    assert reqs[0].api_time == 1.0 and reqs[0].conversation == "conv" and reqs[0].block_size == 4


def test_conversation_bad_request_named_by_index(tmp_path):
    doc = conversation([
        req(0.0, 8, 2, [1, 2]),
        {"t": 5.0, "type": "subagent", "duration_ms": 1000,
         "requests": [req(0.0, 4, 1, [20]), req(1.0, 4, 1, [20, 21, 22])]},
        {"t": 6.0, "in": 4, "out": 1, "hash_ids": [9]},
        req(7.0, 8, 1, [1, 2]),
    ])
    doc["requests"][3].pop("hash_ids")
    p = write_json(tmp_path / "c.json", doc)
    with pytest.raises(TraceError, match=r"c.json: request 1\.1: 3 hash_ids for 4 input tokens"):
        list(read_conversation(p))
    stats = TraceStats()
    good = list(read_conversation(p, skip_bad=True, stats=stats))
    assert [r.time for r in good] == [0.0, 4.0, 6.0]
    assert stats.skipped == 2 and "request 3: missing 'hash_ids'" in stats.examples[1]


def test_unreadable_conversation_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"requests": [')
    with pytest.raises(TraceError, match="c.json: not a readable conversation file"):
        list(read_conversation(p))
    stats = TraceStats()
    assert list(read_conversation(p, skip_bad=True, stats=stats)) == []
    assert stats.skipped_files == 1
    q = write_json(tmp_path / "d.json", {"requests": [req(0, 4, 0, [1])], "hash_id_scope": "weird", "block_size": 4})
    with pytest.raises(TraceError, match="hash_id_scope"):
        list(read_conversation(q))


# ---------------------------------------------------------------- several files

def test_trace_files_expand_and_name_missing(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [mooncake(0, 600, 1, [0, 1])])
    write_json(tmp_path / "b.json.gz", conversation([req(0, 4, 0, [1])]))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in trace_files(tmp_path)] == ["a.jsonl", "b.json.gz"]
    with pytest.raises(TraceError, match="nope.jsonl: no such trace file"):
        trace_files([tmp_path / "a.jsonl", tmp_path / "nope.jsonl"])
    with pytest.raises(TraceError, match="unknown trace format"):
        trace_files(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TraceError, match="holds no trace files"):
        trace_files(empty)


def test_open_traces_merges_in_time_order_with_namespaces(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [mooncake(0, 8, 0, [1, 2]), mooncake(3000, 8, 0, [1, 2])])
    b = write_json(tmp_path / "b.json", conversation([req(0.0, 4, 0, [1]), req(2.0, 8, 0, [1, 2])]))
    c = write_json(tmp_path / "c.json", conversation([req(1.0, 4, 0, [1])]))
    stats = TraceStats()
    reqs = list(open_traces([a, b, c], trace_block_size=4, stats=stats))
    assert [(r.time, r.block_ids[0] // NAMESPACE_STRIDE) for r in reqs] == [
        (0.0, 1), (0.0, 2), (1.0, 3), (2.0, 2), (3.0, 1)]
    assert [f["format"] for f in stats.files] == ["jsonl", "conversation", "conversation"]
    assert stats.requests == 5


def test_open_traces_poisson_starts_and_global_scope(tmp_path):
    files = [write_json(tmp_path / f"c{i}.json", conversation([req(0.0, 4, 0, [1]), req(1.0, 8, 0, [1, 2])],
                                                             hash_id_scope="global"))
             for i in range(4)]
    stats = TraceStats()
    reqs = list(open_traces(files, arrival_rate=0.1, seed=3, stats=stats))
    starts = [f["start"] for f in stats.files]
    assert min(starts) == 0.0 and len(set(starts)) == 4  # Poisson starts, files in a random order
    assert [r.time for r in reqs] == sorted(r.time for r in reqs)
    assert {r.block_ids[0] for r in reqs} == {1}  # global ids: one shared namespace (0)
    again = TraceStats()
    list(open_traces(files, arrival_rate=0.1, seed=3, stats=again))
    assert [f["start"] for f in again.files] == starts


# ---------------------------------------------------------------- the shared real traces

@pytest.mark.skipif(not (SHARED / "mooncake" / "conversation_trace.jsonl").exists(),
                    reason="shared traces not present (../shared/traces)")
def test_real_mooncake_and_agentic_files_read_cleanly():
    stats = TraceStats()
    reqs = list(read_jsonl(SHARED / "mooncake" / "conversation_trace.jsonl", stats=stats))
    assert len(reqs) == 12031 and stats.skipped == 0
    assert reqs[-1].time == pytest.approx(3536.999) and reqs[0].block_size == 512
    files = sorted((SHARED / "agentic-coding").glob("*.json.gz"))[:3]
    for f in files:
        rs = list(read_conversation(f))
        assert rs and all(r.block_size == 64 and len(r.block_ids) == r.input_tokens // 64 for r in rs)
        assert [r.time for r in rs] == sorted(r.time for r in rs)


def test_bad_subagent_entry_skips_its_requests(tmp_path):
    doc = conversation([
        req(0.0, 8, 2, [1, 2]),
        {"type": "subagent", "agent_id": ["x"], "requests": [req(0.0, 4, 1, [20]), req(1.0, 4, 1, [21])]},
        req(7.0, 8, 1, [1, 2]),
    ])
    p = write_json(tmp_path / "c.json", doc)
    with pytest.raises(TraceError, match=r"c.json: request 1: missing 't'"):
        list(read_conversation(p))
    stats = TraceStats()
    assert [r.time for r in read_conversation(p, skip_bad=True, stats=stats)] == [0.0, 7.0]
    assert stats.skipped == 2
