import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytic.specs import Workload
from kvsim.cache import ReferenceCache, runs_of
from kvsim.cli.parser import Parser, UsageError
from kvsim.engine import simulate
from kvsim.cli.replay import cmd_export_trace, cmd_replay, configure_export_parser, configure_replay_parser
from kvsim.export import export_libcachesim_csv
from kvsim.policies import POLICIES
from kvsim.replay import _Seen, replay, request_blocks, request_runs
from kvsim.templates import load_templates, template_source, template_summary
from kvsim.traces import NAMESPACE_STRIDE, TraceError, TraceRequest, read_conversation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": h}) + "\n"
                            for t, i, o, h in rows))
    return path


def write_conversation(path: Path, requests, block_size=4, scope="local") -> Path:
    path.write_text(json.dumps({"id": path.stem, "block_size": block_size, "hash_id_scope": scope,
                                "requests": requests}))
    return path


def r(t, inp, out, ids, **kw):
    return {"t": t, "type": "n", "in": inp, "out": out, "hash_ids": ids, **kw}


# Two conversations A (1, 2, 5, 7) and B (3, 4, 6) interleaved, 4-token blocks, no output:
# every listed block is full and alloc_blocks = listed blocks.
HAND = [(0, 8, 0, [1, 2]), (1, 8, 0, [3, 4]), (2, 12, 0, [1, 2, 5]), (3, 12, 0, [3, 4, 6]), (4, 16, 0, [1, 2, 5, 7])]


@pytest.fixture
def hand(tmp_path):
    return write_jsonl(tmp_path / "hand.jsonl", HAND)


def test_replay_worked_by_hand(hand):
    # Capacity 4, LRU (tail of a request evicted first):
    #  1 [1,2] miss            cache 2,1          (LRU -> MRU)
    #  2 [3,4] miss            cache 2,1,4,3
    #  3 [1,2,5] hits 1,2; room for 5 evicts 4 -> 3,5,2,1
    #  4 [3,4,6] hit 3; room for 4,6 evicts 5,2 -> 1,6,4,3
    #  5 [1,2,5,7] hit 1 (2 is gone)                         LRU: 2 + 1 + 1 = 4 hit blocks
    # FIFO (insertion order, hits do not refresh): 3 hits 1,2 evicts 4 -> 2,1,3,5;
    #  4 hit 3 evicts 2,1 -> 3,5,6,4; 5 [1,...] misses      FIFO: 2 + 1 + 0 = 3 hit blocks
    # Infinite cache: 2 + 2 + 3 = 7 of 14 listed blocks.
    out = replay(hand, "lru,fifo", [4], trace_block_size=4)
    lru, fifo = out["results"]
    assert (lru["policy"], lru["capacity_blocks"], lru["hit_blocks"]) == ("lru", 4, 4)
    assert (fifo["policy"], fifo["hit_blocks"]) == ("fifo", 3)
    assert lru["block_hit_rate"] == pytest.approx(4 / 14) and lru["token_hit_rate"] == pytest.approx(16 / 56)
    assert fifo["block_hit_rate"] == pytest.approx(3 / 14) and fifo["token_hit_rate"] == pytest.approx(12 / 56)
    assert lru["request_hit_rate"] == pytest.approx(3 / 5) and fifo["request_hit_rate"] == pytest.approx(2 / 5)
    assert lru["requests"] == 5 and lru["oversized"] == 0 and lru["evictions"] == 6
    assert out["ideal_block_hit_rate"] == pytest.approx(7 / 14)
    assert out["ideal_token_hit_rate"] == pytest.approx(28 / 56)
    assert out["skipped"] == 0 and out["trace"]["distinct_blocks"] == 7
    # the same requests through the naive oracle cache
    for policy, hits in (("lru", 4), ("fifo", 3)):
        cache = ReferenceCache(4, policy)
        assert sum(cache.serve(ids, len(ids), len(ids)).hit_blocks for _, _, _, ids in HAND) == hits


def test_replay_json_shape_and_capacity_tokens(hand):
    out = replay([hand], "all", capacities_tokens=[17, 400], trace_block_size=4)
    assert set(out) >= {"inputs", "results", "ideal_block_hit_rate", "ideal_token_hit_rate", "skipped"}
    for res in out["results"]:
        assert set(res) >= {"policy", "capacity_blocks", "block_hit_rate", "token_hit_rate", "requests", "oversized",
                            "rank", "headroom_to_belady"}
    # all = every registered online policy, then belady
    assert [(x["policy"], x["capacity_blocks"]) for x in out["results"]] == [
        (p, c) for p in (*POLICIES, "belady") for c in (4, 100)]
    big = [x for x in out["results"] if x["capacity_blocks"] == 100]
    assert all(x["block_hit_rate"] == out["ideal_block_hit_rate"] for x in big)
    assert all(x["rank"] == 1 and x["headroom_to_belady"] == 0 for x in big)
    # HAND at 4 blocks: LRU 4 hit blocks, FIFO 3 (test_replay_worked_by_hand), Belady 4 (test_belady.py)
    small = {x["policy"]: x for x in out["results"] if x["capacity_blocks"] == 4}
    assert small["belady"]["hit_blocks"] == small["lru"]["hit_blocks"] == 4 and small["fifo"]["hit_blocks"] == 3
    assert small["belady"]["rank"] == small["lru"]["rank"] == 1
    assert small["fifo"]["headroom_to_belady"] == pytest.approx(4 / 14 - 3 / 14)  # 4-token blocks, all full
    json.dumps(out)


def test_oversized_and_partial_blocks(tmp_path):
    # 10 tokens at 4-token blocks: 3 listed ids, the last one partial; output 7 -> 5 blocks held.
    p = write_jsonl(tmp_path / "t.jsonl", [(0, 10, 7, [1, 2, 3]), (1, 10, 7, [1, 2, 3])])
    out = replay(p, "lru", [4, 5], trace_block_size=4)
    small, fits = out["results"]
    assert small["oversized"] == 2 and small["hit_blocks"] == 0
    assert fits["hit_blocks"] == 3 and fits["token_hit_rate"] == pytest.approx(10 / 20)  # hit tokens capped at 10
    vllm = replay(p, "lru", [5], trace_block_size=4, vllm=True)["results"][0]
    assert vllm["hit_blocks"] == 2 and vllm["token_hit_rate"] == pytest.approx(8 / 20)


def test_request_blocks():
    ids = [10, 11, 12, 13, 14]  # 5 trace blocks of 4 tokens: 18 tokens, the last one partial
    assert request_blocks(ids, 18, 3, 4, 4) == (ids, 5, 6, 5)
    assert request_blocks(ids, 18, 3, 4, 4, vllm=True) == ([10, 11, 12, 13], 4, 6, 5)
    # 8-token blocks: groups (10, 11) (12, 13) (14) -> their last chained ids
    assert request_blocks(ids, 18, 3, 4, 8) == ([11, 13, 14], 3, 3, 3)
    assert request_blocks(ids, 18, 3, 4, 8, vllm=True) == ([11, 13], 2, 3, 3)
    assert request_blocks([10, 11], 8, 0, 4, 4, vllm=True) == ([10, 11], 1, 2, 2)  # prompt-1 cap


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=0, max_size=12, unique=True), st.integers(0, 40),
       st.sampled_from([1, 2, 3]), st.booleans())
def test_request_runs_are_request_blocks_as_runs(ids, extra, k, vllm):
    bs = 4
    inp = max(1, bs * len(ids) - (extra % bs if ids else 0))  # the last listed block may be partial
    out = extra
    req = TraceRequest(0.0, inp, out, ids, bs, runs=runs_of(ids))
    keys, max_hit, alloc, listed = request_blocks(ids, inp, out, bs, bs * k, vllm)
    assert request_runs(req, bs * k, vllm) == (runs_of(keys), max_hit, alloc, listed)
    # a request made by hand, without runs, gives the same
    assert request_runs(req._replace(runs=None), bs * k, vllm) == (runs_of(keys), max_hit, alloc, listed)


@pytest.mark.parametrize("max_ranges", [_Seen.MAX_RANGES, 3])
def test_ideal_cache_equals_a_set_of_blocks(monkeypatch, max_ranges):
    """The infinite cache keeps ranges of ids (or a set beyond MAX_RANGES): the same as a set."""
    monkeypatch.setattr(_Seen, "MAX_RANGES", max_ranges)
    rng = random.Random(11)
    seen_ranges, seen = _Seen(), set()
    for _ in range(2000):
        ids = list(dict.fromkeys(rng.choice([rng.randrange(400), rng.randrange(60)]) + d
                                 for d in range(rng.randint(0, 6)) for _ in range(rng.randint(1, 2))))
        if rng.random() < 0.2:
            rng.shuffle(ids)
        max_hit = rng.randint(0, len(ids))
        hit = 0
        while hit < max_hit and ids[hit] in seen:
            hit += 1
        seen.update(ids)
        assert seen_ranges.serve(runs_of(ids), max_hit) == hit
        assert seen_ranges.blocks == len(seen)
    assert (seen_ranges.set is not None) == (max_ranges == 3)


def test_coarser_block_size_and_refusal(hand):
    out = replay(hand, "lru", [2], trace_block_size=4, block_size=8)
    assert out["inputs"]["block_size"] == 8 and out["trace"]["listed_blocks"] == 1 + 1 + 2 + 2 + 2
    with pytest.raises(TraceError, match="not a multiple of the 4-token blocks"):
        replay(hand, "lru", [2], trace_block_size=4, block_size=6)


def test_mixed_block_sizes_need_a_common_one(tmp_path, hand):
    conv = write_conversation(tmp_path / "c.json", [r(0, 16, 0, [1, 2])], block_size=8)
    with pytest.raises(TraceError, match=r"different block sizes .*--block-size.*8"):
        replay([hand, conv], "lru", [4], trace_block_size=4)
    out = replay([hand, conv], "lru", [4], trace_block_size=4, block_size=8)
    assert out["trace"]["requests"] == 6


def test_requests_from_a_factory(hand):
    reqs = list(read_conversation(write_conversation(hand.parent / "c.json", [r(0, 8, 0, [1, 2]), r(1, 8, 0, [1, 2])])))
    out = replay(lambda: iter(reqs), "lru", [10])
    assert out["results"][0]["hit_blocks"] == 2 and out["inputs"]["block_size"] == 4
    # requests made by hand carry block ids only: the same replay
    bare = [q._replace(runs=None) for q in reqs]
    assert replay(bare, "lru", [10])["results"] == out["results"]
    with pytest.raises(TraceError, match="block ids must be integers"):
        replay([bare[0]._replace(block_ids=["a", "b"], where="x:1")], "lru", [10])


# ---------------------------------------------------------------- command line

def parser(configure):
    p = Parser(prog="kvsim")
    configure(p)
    return p


def test_cli_replay_json_and_table(hand, capsys):
    a = parser(configure_replay_parser).parse_args(
        [str(hand), "--policy", "lru,fifo", "--capacity-blocks", "4,100", "--trace-block-size", "4", "--json"])
    assert a.func(a) == 0
    out = json.loads(capsys.readouterr().out)
    assert [x["hit_blocks"] for x in out["results"]] == [4, 7, 3, 7]
    a = parser(configure_replay_parser).parse_args([str(hand), "--capacity-tokens", "16", "--trace-block-size", "4"])
    assert cmd_replay(a) == 0
    text = capsys.readouterr().out
    assert "lru" in text and "28.57%" in text and "ideal" in text and "requests/s" in text


def test_cli_errors_are_one_line(hand, tmp_path):
    p = parser(configure_replay_parser)
    with pytest.raises(UsageError, match="policy must be one of"):
        p.parse_args([str(hand), "--policy", "mru"])
    with pytest.raises(UsageError, match="not allowed with"):
        p.parse_args([str(hand), "--capacity-blocks", "4", "--capacity-tokens", "4"])
    with pytest.raises(UsageError):
        p.parse_args([str(hand), "--capacity-blocks", "4,x"])
    missing = tmp_path / "missing.jsonl"
    a = p.parse_args([str(hand), str(missing), "--capacity-blocks", "4"])
    with pytest.raises(ValueError, match="missing.jsonl: no such trace file") as e:
        cmd_replay(a)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 8, "output_length": 0, "hash_ids": [1, 2]}\n{oops\n')
    a = p.parse_args([str(bad), "--trace-block-size", "4", "--capacity-blocks", "4"])
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        cmd_replay(a)


def test_cli_skip_bad_reports_count(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 8, "output_length": 0, "hash_ids": [1, 2]}\n{oops\n'
                   '{"timestamp": 1, "input_length": 8, "output_length": 0, "hash_ids": [1, 2]}\n')
    a = parser(configure_replay_parser).parse_args(
        [str(bad), "--trace-block-size", "4", "--capacity-blocks", "4", "--skip-bad", "--json"])
    cmd_replay(a)
    out = json.loads(capsys.readouterr().out)
    assert out["skipped"] == 1 and out["trace"]["requests"] == 2 and "bad.jsonl:2" in out["skip_examples"][0]


# ---------------------------------------------------------------- export

def test_export_csv_atomic(hand, tmp_path, capsys):
    dest = tmp_path / "out" / "t.csv"
    dest.parent.mkdir()
    a = parser(configure_export_parser).parse_args([str(hand), "--trace-block-size", "4", "--time-unit", "s",
                                                         "-o", str(dest)])
    assert cmd_export_trace(a) == 0
    assert "cachesim" in capsys.readouterr().out
    lines = dest.read_text().splitlines()
    assert lines[0] == "time,obj_id,obj_size,request"
    assert len(lines) - 1 == sum(len(ids) for *_, ids in HAND)
    assert lines[1] == f"0,{NAMESPACE_STRIDE + 1},4,0" and lines[-1] == f"4,{NAMESPACE_STRIDE + 7},4,4"
    assert os.listdir(dest.parent) == ["t.csv"]
    # a failing export leaves the old file and no temporary
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 8, "output_length": 0, "hash_ids": [1, 2]}\n{oops\n')
    with pytest.raises(TraceError, match="bad.jsonl:2"):
        export_libcachesim_csv(bad, dest, trace_block_size=4)
    assert os.listdir(dest.parent) == ["t.csv"] and len(dest.read_text().splitlines()) == len(lines)
    with pytest.raises(ValueError, match="no such directory"):
        export_libcachesim_csv(hand, tmp_path / "nodir" / "x.csv", trace_block_size=4)
    summary = export_libcachesim_csv(hand, dest, trace_block_size=4, bytes_per_token=2)
    assert summary["obj_size"] == 8 and summary["obj_size_unit"] == "bytes"


def test_libcachesim_agrees_on_single_block_requests(tmp_path):
    """Block-level LRU and FIFO equal libCacheSim's where the semantics coincide: requests of
    one block (one key, alloc 1: nothing to pin, no prefix to break, no output room)."""
    lcs = pytest.importorskip("libcachesim", reason="libcachesim (PyPI, GPLv3, test-only) is not installed")
    rng = random.Random(7)
    rows = []
    for i in range(3000):
        h = int(rng.paretovariate(1.2)) % 400  # skewed popularity
        inp = rng.randint(1, 16)
        rows.append((i * 10, inp, rng.randint(0, 16 - inp), [h]))
    trace = write_jsonl(tmp_path / "single.jsonl", rows)
    csv = tmp_path / "single.csv"
    export_libcachesim_csv(trace, csv, trace_block_size=16)
    capacities = [5, 20, 80]
    ours = replay(trace, "lru,fifo", capacities, trace_block_size=16)["results"]
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                                 obj_id_is_num_set=True, ignore_obj_size=True)
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
    for res in ours:
        cache = {"lru": lcs.LRU, "fifo": lcs.FIFO}[res["policy"]](cache_size=res["capacity_blocks"])
        reader = lcs.TraceReader(str(csv), lcs.TraceType.CSV_TRACE, params)
        hits = sum(bool(cache.get(q)) for q in reader)
        assert hits == res["hit_blocks"], res


# ---------------------------------------------------------------- templates

def template_files(tmp_path):
    a = write_conversation(tmp_path / "a.json", [
        r(0.0, 8, 3, [1, 2], api_time=1.0),
        {"t": 9.0, "type": "subagent", "agent_id": "s1", "duration_ms": 6000,
         "requests": [r(0.0, 4, 1, [50]), r(2.0, 9, 2, [50, 51])]},
        r(10.0, 14, 2, [1, 2, 3]),
        r(25.0, 22, 1, [1, 2, 3, 4, 5]),
    ])
    b = write_conversation(tmp_path / "b.json", [
        r(0.0, 12, 0, [1, 2, 3]), r(4.0, 13, 5, [1, 2, 3]), r(5.0, 19, 0, [1, 2, 3, 7])])
    return [a, b]


def test_template_turns_follow_the_conversation(tmp_path):
    files = template_files(tmp_path)
    source, info = template_source(files)
    assert info["templates"] == 2 and info["block_size"] == 4 and info["requests"] == 8

    class Pick:  # an rng that draws template 0
        def integers(self, n):
            return 0

    turns = list(source(Pick(), 5))
    assert [t.delay for t in turns] == [0.0, 3.0, 2.0, 5.0, 15.0]  # subagent at 9 - 6 = 3 s
    assert [t.prompt_tokens for t in turns] == [8, 4, 9, 14, 22]
    base = 6 * NAMESPACE_STRIDE
    assert turns[0].keys == [base + 1, base + 2] and turns[2].keys == [base + 50, base + 51]
    assert (turns[3].max_hit_blocks, turns[3].alloc_blocks, turns[3].prompt_blocks) == (3, 4, 3)
    other = list(source(Pick(), 6))
    assert not set(other[0].keys) & set(turns[0].keys)  # two users share nothing


def test_templates_at_a_tiny_rate_reproduce_each_conversation(tmp_path):
    files = template_files(tmp_path)
    source, info = template_source(files)
    own = {}  # a conversation alone in an infinite cache
    for f in files:
        out = replay(f, "lru", [10 ** 6])
        own[f.stem] = (out["results"][0]["hit_blocks"], out["trace"]["requests"])
    served = []

    def recording(rng, cid):
        for turn in source(rng, cid):
            served.append((cid, turn))
            yield turn

    result = simulate(Workload(arrival_rate=1e-4), capacity_blocks=40, policy="lru", block_size=info["block_size"],
                      duration=2e6, warmup=0.0, replications=1, seed=1, source=recording, progress=False)
    c = result.replications[0]
    # the engine pulls a turn before waiting for it: one pulled at the end may be unserved
    if c.requests == len(served) - 1:
        served.pop()
    assert c.requests == len(served) > 100
    by_instance = {}
    for cid, turn in served:
        by_instance.setdefault(cid, []).append(turn)
    expected = 0
    complete = 0
    for turns in by_instance.values():
        seen, hits = set(), 0
        for t in turns:
            h = 0
            while h < t.max_hit_blocks and t.keys[h] in seen:
                h += 1
            seen.update(t.keys)
            hits += h
        expected += hits
        name = "a" if turns[0].prompt_tokens == 8 else "b"
        if len(turns) == own[name][1]:
            complete += 1
            assert hits == own[name][0]
    assert complete > 100
    assert c.hit_blocks == expected


def test_template_summary(tmp_path):
    s = template_summary(template_files(tmp_path))
    a, b = s["templates"]
    assert (a["name"], a["requests"], a["subagent_requests"]) == ("a", 5, 2)
    assert a["gaps_s"] == [3.0, 2.0, 5.0, 15.0] and a["duration_s"] == 25.0
    assert a["input_tokens"] == [8, 4, 9, 14, 22] and a["max_input_tokens"] == 22
    # a: hits 1 (50) + 2 (1, 2) + 3 (1, 2, 3) of 2 + 1 + 2 + 3 + 5 listed blocks
    assert a["ideal_block_hit_rate"] == pytest.approx(6 / 13)
    assert b["ideal_block_hit_rate"] == pytest.approx(6 / 10)
    assert s["turn_counts"] == [5, 3] and s["block_size"] == 4
    assert s["ideal_block_hit_rate"] == pytest.approx(12 / 23)


def test_bailian_chains_as_templates_share_global_blocks(tmp_path):
    rows = [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.0, "input_length": 32, "output_length": 5,
         "type": "text", "turn": 1, "hash_ids": [0, 1]},
        {"chat_id": 2, "parent_chat_id": -1, "timestamp": 1.0, "input_length": 32, "output_length": 5,
         "type": "text", "turn": 1, "hash_ids": [0, 9]},
        {"chat_id": 3, "parent_chat_id": 1, "timestamp": 4.0, "input_length": 48, "output_length": 5,
         "type": "text", "turn": 2, "hash_ids": [0, 1, 2]},
    ]
    p = tmp_path / "qwen_blksz_16.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in rows))
    ts = load_templates(p)
    assert [len(t) for t in ts.templates] == [2, 1] and ts.block_size == 16
    source, info = template_source(ts)
    assert info["shared_blocks"] == 2  # id 0, listed by both chains

    class Pick:
        def __init__(self, k):
            self.k = k

        def integers(self, n):
            return self.k

    first = list(source(Pick(0), 1))
    second = list(source(Pick(1), 2))
    assert [t.delay for t in first] == [0.0, 4.0]
    assert first[0].keys[0] == second[0].keys[0]  # the shared system-prompt block
    assert first[0].keys[1] != second[0].keys[1]
    mooncake = write_jsonl(tmp_path / "m.jsonl", [(0, 8, 0, [1])])
    with pytest.raises(TraceError, match="no chat_id"):
        load_templates(mooncake)


# ---------------------------------------------------------------- the shared real traces

@pytest.mark.skipif(not (SHARED / "mooncake" / "conversation_trace.jsonl").exists(),
                    reason="shared traces not present (../shared/traces)")
def test_real_traces_replay_sanely():
    out = replay(SHARED / "mooncake" / "conversation_trace.jsonl", "lru,fifo", [2000, 20000], max_requests=3000)
    assert out["trace"]["requests"] == 3000 and out["inputs"]["block_size"] == 512
    for res in out["results"]:
        assert 0 < res["block_hit_rate"] <= out["ideal_block_hit_rate"] < 1
    files = sorted((SHARED / "agentic-coding").glob("*.json.gz"))[:3]
    out = replay(files, "lru", [10 ** 7])
    assert out["results"][0]["block_hit_rate"] == pytest.approx(out["ideal_block_hit_rate"])
    assert out["ideal_block_hit_rate"] > 0.8


def test_curve_equals_separate_caches(tmp_path):
    rng = __import__("random").Random(5)
    rows, t = [], 0
    for _ in range(300):  # conversations extending random shared prefixes, 4-token blocks
        base = rng.choice([0, 100, 200, 300])
        n = rng.randint(1, 12)
        t += rng.randint(0, 3)
        rows.append((t, 4 * n - rng.randint(0, 3), rng.randint(0, 9), list(range(base, base + n))))
    trace = write_jsonl(tmp_path / "t_blksz_4.jsonl", rows)
    caps = [1, 3, 5, 8, 13, 30, 80]
    separate = replay(str(trace), "lru", caps)
    curve = replay(str(trace), "lru", caps, curve=True)
    assert curve["results"] == separate["results"]
    dense = replay(str(trace), "lru", curve=True)["results"]
    assert dense[-1]["block_hit_rate"] == separate["ideal_block_hit_rate"]
    assert all(a["hit_blocks"] <= b["hit_blocks"] for a, b in zip(dense, dense[1:]))
