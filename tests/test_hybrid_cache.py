"""The hybrid cache (kvsim.hybrid_cache): hand-worked hits of each kind of group, the coordinator's
agreement, early releases, the run-based cache against its per-block reference and, with one
full-attention group, against PrefixCache; the command line."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytic import presets
from kvsim.cache import PrefixCache, runs_of
from kvsim.cli.main import main
from kvsim.hybrid_cache import POLICIES, CacheGroup, HybridCache, ReferenceHybridCache, vllm_layout

BS = 16
FULL, MAMBA, CKPT = CacheGroup("full"), CacheGroup("mamba"), CacheGroup("mamba", checkpoint=True)


def sliding(window: int) -> CacheGroup:
    return CacheGroup("sliding", window)


class Tokens:
    """Serves token sequences: a block's key is its whole prefix (vLLM's chained block hashes)."""

    def __init__(self, cache) -> None:
        self.cache, self.ids = cache, {}

    def keys(self, tokens: list) -> list[int]:
        return [self.ids.setdefault(tuple(tokens[:(j + 1) * BS]), len(self.ids)) for j in range(len(tokens) // BS)]

    def serve(self, tokens: list, prompt: int | None = None):
        """Serve ``tokens``, the first ``prompt`` of them (default all) its prompt, the others decoded."""
        prompt = len(tokens) if prompt is None else prompt
        return self.cache.serve(self.keys(tokens), (prompt - 1) // BS, -(-len(tokens) // BS), prompt, len(tokens))

    def hit(self, tokens: list, prompt: int | None = None) -> int:
        result = self.serve(tokens, prompt)
        return None if result.oversized else result.hit_blocks * BS

    def peek(self, tokens: list) -> int:
        """The hit ``tokens`` would find (as a prompt), serving nothing."""
        return self.cache.lookup(runs_of(self.keys(tokens)), (len(tokens) - 1) // BS) * BS


def unique(n: int, start: int) -> list[int]:
    return list(range(start, start + n))


# ---------------------------------------------------------------- hand-worked hits (one request at a time, no eviction)

# Nine prompts; each hit is worked out below and is what vLLM 0.33's scheduler returns for them
# (experiments/vllm_hybrid_driver.py, a pool of 400 blocks).
PROMPTS = [list(range(100)), list(range(100)) + [7] * 40, list(range(96)), list(range(96)) + [5] * 33,
           list(range(160)), list(range(170)), list(range(64)) + [9] * 50, list(range(64)) + [8] * 50,
           list(range(64)) + [6] * 50]


@pytest.mark.parametrize("groups,mode,hits", [
    # Full attention: the leading run of cached blocks, at most (prompt - 1) // 16 blocks: the third
    # prompt (96 tokens) is capped at 5 blocks = 80 tokens although 6 are cached.
    ([FULL], "align", [0, 96, 80, 96, 96, 160, 64, 64, 64]),
    # Sliding window 64: a hit needs the cdiv(63, 16) = 4 blocks before it, all cached here.
    ([FULL, sliding(64)], "align", [0, 96, 80, 96, 96, 160, 64, 64, 64]),
    # Mamba, align, Mamba1 (no checkpoint): prompt 0 (100 tokens) stops its prefill at the last
    # boundary before its last token, 96: the only state cached. Prompt 2 (96 tokens, at most 80)
    # finds none at or below 80 tokens: 0, but full attention hits 80 there (the junction), so its
    # prefill stops at 80 and caches that state. Prompt 6 (a 64-token prefix) finds no state at 64:
    # 0, and caches it; prompts 7 and 8 hit it.
    ([FULL, MAMBA], "align", [0, 96, 0, 96, 96, 160, 0, 64, 64]),
    # Mamba2 (a checkpoint): every prefill chunk also caches the state one block before its end, so
    # prompt 2's chunk up to its junction (80) caches the state at 64, which prompt 6 hits.
    ([FULL, CKPT], "align", [0, 96, 0, 96, 96, 160, 64, 64, 64]),
    # Mode all: a state at every block boundary, as full attention.
    ([FULL, MAMBA], "all", [0, 96, 80, 96, 96, 160, 64, 64, 64]),
])
def test_hand_worked_hits(groups, mode, hits):
    for cache in (HybridCache(400, groups, BS, mode), ReferenceHybridCache(400, groups, BS, mode)):
        served = Tokens(cache)
        assert [served.hit(p) for p in PROMPTS] == hits
        assert cache.evictions == 0


def test_sliding_hit_needs_the_window_before_it_and_leaves_the_blocks_before_the_window():
    """Sliding window 64, blocks of 16: a hit needs the 4 blocks before it. A (10 blocks) fills the
    pool of 20; vLLM frees group 0 (sliding) first, deepest first, so the 4 blocks X needs are A's
    sliding blocks 9..6. B (A + one block) then has full attention's 10 blocks but sliding blocks
    only up to 5: the hit is 6 blocks (2..5 are the window), and blocks 0 and 1, before the window,
    are not held: with X's 4 they are what B's 6 new blocks evict."""
    a = list(range(160))
    cache = HybridCache(20, [sliding(64), FULL], BS)
    served = Tokens(cache)
    assert served.hit(a) == 0 and len(cache) == 20
    assert served.serve(unique(32, 1000)).evicted == 4
    result = served.serve(a + unique(16, 2000))
    assert result.hit_blocks == 6 and result.evicted == 6  # B computes blocks 6..10; full's 6..9 are its own
    assert served.hit(unique(32, 1000) + [5]) == 0  # X's blocks are gone
    # a run from the first block shorter than the window is a hit (the window starts at the start)
    served = Tokens(HybridCache(400, [sliding(64), FULL], BS))
    served.serve(list(range(48)))
    assert served.hit(list(range(48)) + [1] * 20) == 48  # 3 blocks, fewer than the window's 4
    assert served.hit(list(range(40)) + [1] * 20) == 32  # its third block differs


def test_decode_frees_the_blocks_leaving_the_window_first():
    """Window 32 (2 blocks before a hit): A's prompt has 2 blocks, its decode 4 more; as it decodes,
    blocks 0..3 leave the window and are freed then, before A ends and frees the window (4, 5) and
    full attention's blocks. X's 4 new blocks evict those four, and A's next turn still hits all 96
    tokens. Freed all at the end, deepest first, the window would have gone and the hit been 32."""
    a = list(range(96))
    cache = HybridCache(12, [sliding(32), FULL], BS)
    served = Tokens(cache)
    assert served.hit(a, prompt=32) == 0 and len(cache) == 12
    assert served.serve(unique(32, 1000)).evicted == 4
    assert served.hit(a + unique(16, 2000)) == 96


def test_mamba_states_of_the_decode_and_early_release():
    """Mamba1 (align): A's prompt (40 tokens) stops at 32, caching that state; its decode (to 80
    tokens) caches the state at each block boundary, 48, 64 and 80, each freed as the next is made,
    the last (80) at the end. A branch at 48 hits the decode's state; an unrelated request first
    evicts the superseded states (32, 48, 64), freed before A's end."""
    a = list(range(80))
    groups = [MAMBA, FULL]
    served = Tokens(HybridCache(400, groups, BS))
    served.serve(a, prompt=40)
    assert served.hit(a[:48] + unique(10, 3000)) == 48
    assert served.hit(a[:32] + unique(10, 4000)) == 32
    served = Tokens(HybridCache(10, groups, BS))  # A holds at most 5 full + 3 Mamba blocks
    served.serve(a, prompt=40)
    assert len(served.cache) == 9  # 5 full, 4 states (32, 48, 64, 80)
    assert served.serve(unique(16, 5000)).evicted == 1  # a full block and a state: the state at 32 goes
    assert served.peek(a[:32] + unique(10, 4000)) == 0
    assert served.peek(a[:48] + unique(10, 4000)) == 48
    assert served.peek(a + unique(10, 6000)) == 80


def test_coordinator_lowers_the_hit_until_every_kind_accepts_it():
    """Full attention, a sliding window of 2 blocks and Mamba (groups 0, 1, 2), a hand-made state:
    full attention has blocks 0..9, the sliding group all but block 7, Mamba states at 7 and 9
    blocks. vLLM's coordinator asks full attention (10), the window (10: blocks 8, 9), Mamba (9);
    then the window below 9 (7: blocks 5, 6, since 7 is missing) and Mamba below 7 (7): the hit is 7."""
    reference = ReferenceHybridCache(400, [sliding(32), MAMBA, FULL], BS)
    keys = list(range(100, 112))
    for i in range(10):
        reference._copies[(2, keys[i])] = [i]
        if i != 7:
            reference._copies[(0, keys[i])] = [100 + i]
    reference._copies[(1, keys[6])] = [200]
    reference._copies[(1, keys[8])] = [201]
    assert reference.lookup(keys, 11) == (7, 10)  # (the hit, the longest hit of one kind: the junction)
    assert reference.lookup(keys, 6) == (0, 6)  # no state at or below 6 blocks


@st.composite
def layouts(draw):
    kinds = draw(st.lists(st.sampled_from(["full", "sliding", "sliding", "mamba"]), min_size=1, max_size=4))
    groups = []
    for kind in kinds:
        if kind == "sliding":
            groups.append(sliding(draw(st.sampled_from([16, 17, 33, 40, 64]))))
        elif kind == "mamba":
            groups.append(CacheGroup("mamba", checkpoint=draw(st.booleans())))
        else:
            groups.append(FULL)
    return groups, draw(st.sampled_from(["align", "all"]))


@st.composite
def streams(draw, max_requests: int = 14):
    """Requests as (tokens, prompt): multi-turn conversations sharing a system prompt, branches
    and repeats; outputs decoded after the prompts."""
    system = list(range(draw(st.sampled_from([0, 16, 40]))))
    contexts = [list(system) for _ in range(draw(st.integers(1, 3)))]
    out, fresh = [], 10_000
    for _ in range(draw(st.integers(1, max_requests))):
        c = draw(st.integers(0, len(contexts) - 1))
        kind = draw(st.sampled_from(["turn", "turn", "turn", "branch", "repeat"]))
        if kind == "repeat" and out:
            out.append(draw(st.sampled_from(out)))
            continue
        base = contexts[c] if kind == "turn" else contexts[c][:draw(st.integers(0, len(contexts[c])))]
        user, output = draw(st.integers(1, 40)), draw(st.integers(0, 50))
        prompt = base + list(range(fresh, fresh + user))
        tokens = prompt + list(range(fresh + user, fresh + user + output))
        fresh += user + output
        out.append((tokens, len(prompt)))
        if kind == "turn":
            contexts[c] = tokens
    return out


@settings(max_examples=200, deadline=None)
@given(layout=layouts(), stream=streams(), capacity=st.integers(0, 40), policy=st.sampled_from(POLICIES))
def test_run_based_cache_equals_its_per_block_reference(layout, stream, capacity, policy):
    groups, mode = layout
    fast = Tokens(HybridCache(capacity, groups, BS, mode, policy))
    reference = Tokens(ReferenceHybridCache(capacity, groups, BS, mode, policy))
    reference.ids = fast.ids
    for tokens, prompt in stream:
        assert fast.serve(tokens, prompt) == reference.serve(tokens, prompt)
        assert len(fast.cache) == len(reference.cache)
    assert (fast.cache.requests, fast.cache.oversized, fast.cache.evictions) == (
        reference.cache.requests, reference.cache.oversized, reference.cache.evictions)


def accepts(reference: ReferenceHybridCache, keys: list, hit: int) -> bool:
    """Whether every kind of group of ``reference`` accepts a hit of ``hit`` blocks (vLLM's rules)."""
    for spec, ids in reference._specs:
        if spec.kind == "full":
            ok = all(reference._cached(ids, k) for k in keys[:hit])
        elif spec.kind == "mamba":
            ok = hit == 0 or reference._cached(ids, keys[hit - 1])
        else:
            need = -(-(spec.window - 1) // BS)
            ok = all(reference._cached(ids, k) for k in keys[max(0, hit - need):hit])
        if not ok:
            return False
    return True


@settings(max_examples=80, deadline=None)
@given(layout=layouts(), stream=streams(), capacity=st.integers(5, 40), data=st.data())
def test_the_agreed_hit_is_the_longest_every_kind_accepts(layout, stream, capacity, data):
    groups, mode = layout
    fast = Tokens(HybridCache(capacity, groups, BS, mode))
    reference = Tokens(ReferenceHybridCache(capacity, groups, BS, mode))
    reference.ids = fast.ids
    for tokens, prompt in stream:
        fast.serve(tokens, prompt)
        reference.serve(tokens, prompt)
    tokens, _ = data.draw(st.sampled_from(stream))
    keys = fast.keys(tokens)
    limit = data.draw(st.integers(0, len(keys)))
    expected = max(h for h in range(limit + 1) if accepts(reference.cache, keys, h))
    assert fast.cache.lookup(runs_of(keys), limit) == expected


@st.composite
def key_requests(draw):
    """Any distinct keys (stale copies, gaps, repeats), any cap below the blocks held."""
    out = []
    for _ in range(draw(st.integers(1, 40))):
        keys = draw(st.lists(st.integers(0, 30), max_size=10, unique=True))
        alloc = len(keys) + draw(st.integers(0, 1)) or 1
        if draw(st.integers(0, 9)) == 0:
            alloc += draw(st.integers(1, 40))
        out.append((keys, draw(st.integers(0, min(len(keys), alloc - 1))), alloc))
    return out


@settings(max_examples=300, deadline=None)
@given(workload=key_requests(), capacity=st.integers(0, 40), policy=st.sampled_from(POLICIES))
def test_one_full_attention_group_is_the_prefix_cache_bit_for_bit(workload, capacity, policy):
    prefix, hybrid = PrefixCache(capacity, policy), HybridCache(capacity, [FULL], BS, policy=policy)
    for keys, max_hit, alloc in workload:
        assert hybrid.serve(keys, max_hit, alloc) == prefix.serve(keys, max_hit, alloc)
        assert len(hybrid) == len(prefix)
        assert {k for k in range(31) if hybrid.lookup([(k, 1)], 1)} == prefix.keys()
    assert (hybrid.requests, hybrid.oversized, hybrid.evictions) == (prefix.requests, prefix.oversized,
                                                                    prefix.evictions)


def test_duplicates_are_vllms_corner():
    """vLLM computes a new copy of a block cached beyond the agreed hit and keeps both: the reference
    with ``duplicates`` does; kvsim (like PrefixCache) takes the cached copy as the request's own."""
    groups = [FULL]
    keys = [1, 2, 3, 4]
    for duplicates, cached in ((True, 5), (False, 4)):
        reference = ReferenceHybridCache(10, groups, BS, duplicates=duplicates)
        reference.serve(keys, 3, 4)
        assert reference.serve(keys, 3, 4).hit_blocks == 3  # the 4th block is recomputed (prompt - 1)
        assert len(reference) == cached


# ---------------------------------------------------------------- input and the model's groups


@pytest.mark.parametrize("call,text", [
    (lambda: CacheGroup("linear"), "group kind must be one of full, sliding, mamba"),
    (lambda: CacheGroup("sliding"), "sliding-window must be > 0"),
    (lambda: CacheGroup("full", checkpoint=True), "checkpoint applies to mamba groups only"),
    (lambda: HybridCache(10, [], BS), "groups must be one or more CacheGroup"),
    (lambda: HybridCache(10, [FULL], 0), "block-size must be an integer >= 1"),
    (lambda: HybridCache(10, [MAMBA], BS, "none"), "mamba-cache-mode must be one of align, all"),
    (lambda: HybridCache(-1, [FULL], BS), "capacity_blocks must be an int >= 0"),
    (lambda: HybridCache(10, [FULL], BS).serve([1, 2], 2, 2), "max_hit_blocks must be <= (prompt_tokens - 1)"),
    (lambda: HybridCache(10, [FULL], BS).serve([1, 2], 1, 2, 20, 40), "alloc_blocks = cdiv(tokens, block_size)"),
    (lambda: HybridCache(10, [FULL], BS).serve([-1, 2], 1, 2), "keys must be ints in [0, 2**65)"),
])
def test_bad_input_names_the_value(call, text):
    with pytest.raises(ValueError, match=re.escape(text)):
        call()


def test_vllm_layout_of_the_presets():
    """vLLM's groups, full attention last (layer 0 of each of these is sliding or SSM), and the block size."""
    layout = vllm_layout(presets.model("gpt-oss-20b"))
    assert layout.groups == (sliding(128), FULL) and layout.block_size == 16
    layout = vllm_layout(presets.model("gemma-3-27b"))
    assert layout.groups == (sliding(1024),) * 6 + (FULL,)  # 52 sliding layers in groups of 10
    layout = vllm_layout(presets.model("qwen3-next-80b-a3b"), tp=4)
    assert layout.groups == (CKPT,) * 3 + (FULL,) and layout.block_size == 320  # as kvsim calc prints it
    assert vllm_layout(presets.model("jamba-v0.1")).groups == (MAMBA,) * 7 + (FULL,)  # Mamba1: no checkpoint
    assert vllm_layout(presets.model("jamba-v0.1"), mamba_cache_mode="all").mamba_cache_mode == "all"


# ---------------------------------------------------------------- command line


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


SHORT = ["--duration", "900", "--warmup", "300", "--replications", "1", "--json"]


def test_simulate_vllm_on_a_sliding_window_model(capsys):
    code, out, err = run(capsys, "simulate", "--preset", "gpt-oss-20b", "--capacity-tokens", "60000", "--vllm",
                         *SHORT)
    assert code == 0 and err == ""
    record = json.loads(out)
    cache = record["inputs"]["hybrid_cache"]
    assert [g["kind"] for g in cache["groups"]] == ["sliding", "full"] and cache["block_size"] == 16
    assert record["capacity_blocks"] == cache["capacity_blocks"] == cache["plan"]["num_blocks"] - 1
    assert 0 < record["token_hit_rate"]["mean"] < 1 and record["requests_measured"] > 0


def test_simulate_vllm_leaves_full_attention_models_as_they_were(capsys):
    args = ["simulate", "--preset", "llama-3.1-8b", "--capacity-tokens", "20000", *SHORT]
    assert json.loads(run(capsys, *args, "--vllm")[1]) == json.loads(run(capsys, *args)[1])


@pytest.mark.parametrize("argv,text", [
    (["--preset", "gpt-oss-20b", "--vllm", "--engine"], "--engine: vLLM's hybrid KV cache manager"),
    (["--preset", "gpt-oss-20b", "--vllm", "--policy", "sieve"], "--policy: vLLM's hybrid KV cache manager evicts LRU; kvsim"),
    (["--preset", "gpt-oss-20b", "--vllm", "--mamba-cache-mode", "all"], "--mamba-cache-mode applies with --vllm"),
    (["--preset", "jamba-v0.1", "--mamba-cache-mode", "all"], "--mamba-cache-mode applies with --vllm"),
    (["--preset", "jamba-v0.1", "--vllm", "--no-hybrid-allocator"], "--no-hybrid-allocator: vLLM needs its hybrid"),
])
def test_simulate_vllm_refusals(capsys, argv, text):
    code, out, err = run(capsys, "simulate", "--capacity-tokens", "60000", *argv, *SHORT)
    assert code == 2 and out == "" and text in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"timestamp": t * 1000, "input_length": 40 + 16 * t, "output_length": 20,
                                        "hash_ids": list(range(1, 4 + t))}) + "\n" for t in range(12)))
    return str(path)


def test_replay_vllm_with_a_hybrid_preset(capsys, trace):
    args = ["replay", trace, "--trace-block-size", "16", "--capacity-blocks", "200", "--vllm", "--json"]
    plain = json.loads(run(capsys, *args)[1])
    code, out, err = run(capsys, *args, "--preset", "gpt-oss-20b")
    assert code == 0 and err == ""
    hybrid = json.loads(out)
    assert hybrid["inputs"]["hybrid_cache"]["groups"] == [{"kind": "sliding", "window": 128}, {"kind": "full"}]
    assert "hybrid_cache" not in plain["inputs"]
    # a growing conversation with a window larger than its turns: the same hits as one pool
    assert hybrid["results"][0]["hit_tokens"] == plain["results"][0]["hit_tokens"] > 0
    code, out, err = run(capsys, *args, "--preset", "gpt-oss-20b", "--policy", "fifo")
    assert code == 0 and json.loads(out)["inputs"]["hybrid_cache"]["policy"] == "fifo"
    code, out, err = run(capsys, *args, "--preset", "gpt-oss-20b", "--policy", "sieve")
    assert code == 2 and "give --policy lru (vLLM's) or fifo" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, *args, "--preset", "gpt-oss-20b", "--engine")
    assert code == 2 and "--engine: the step engine keeps one KV cache group" in err
