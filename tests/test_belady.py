"""Belady, the clairvoyant reference policy of trace replay (kvsim.policies.belady)."""

import json
from functools import lru_cache
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import PrefixCache, runs_of
from kvsim.cli.main import main
from kvsim.policies import POLICIES
from kvsim.policies.belady import NEVER, BeladyPolicy, Future
from kvsim.replay import OFFLINE_POLICIES, policy_choices, replay


def belady_cache(requests, capacity):
    """A cache evicting by Belady over ``requests``: (keys, alloc_blocks) pairs (or key lists)."""
    requests = [r if isinstance(r, tuple) else (r, len(r)) for r in requests]
    future = Future.of([(runs_of(keys), alloc) for keys, alloc in requests])
    return PrefixCache(capacity, BeladyPolicy(future, capacity)), requests


def hits(requests, capacity, policy="belady"):
    """Per-request hit blocks of ``requests`` served in order, all of its keys looked up."""
    if policy == "belady":
        cache, requests = belady_cache(requests, capacity)
    else:
        requests = [r if isinstance(r, tuple) else (r, len(r)) for r in requests]
        cache = PrefixCache(capacity, policy)
    return [cache.serve(keys, len(keys), alloc).hit_blocks for keys, alloc in requests]


def naive_belady(requests, capacity):
    """Belady by brute force: at each eviction, the victim has the farthest next use
    (request, then depth in it; requests too large for the cache skipped), then the oldest age."""
    cache, total = {}, 0
    for s, (keys, alloc) in enumerate(requests):
        if alloc > capacity:
            continue
        hit = 0
        while hit < len(keys) and keys[hit] in cache:
            hit += 1
        total += hit
        own = sum(key in cache for key in keys)

        def rank(key):
            for t in range(s + 1, len(requests)):
                if key in requests[t][0] and requests[t][1] <= capacity:
                    return (t, requests[t][0].index(key), ())
            return (NEVER, 0, tuple(-x for x in cache[key]))

        while capacity - len(cache) < alloc - own:
            del cache[max((k for k in cache if k not in keys), key=rank)]
        for j, key in enumerate(keys):
            cache[key] = (s, -j)
    return total


def optimum(requests, capacity):
    """The most hit blocks any eviction choice gets (exhaustive; evicting only when room is needed)."""
    requests = tuple((tuple(keys), alloc) for keys, alloc in requests)

    @lru_cache(None)
    def best(s, cached):
        if s == len(requests):
            return 0
        keys, alloc = requests[s]
        if alloc > capacity:
            return best(s + 1, cached)
        hit = 0
        while hit < len(keys) and keys[hit] in cached:
            hit += 1
        need = alloc - sum(k in cached for k in keys) - (capacity - len(cached))
        others = sorted(k for k in cached if k not in keys)
        return hit + max(best(s + 1, (cached - set(victims)) | frozenset(keys))
                         for victims in (combinations(others, need) if need > 0 else [()]))

    return best(0, frozenset())


# ---------------------------------------------------------------- worked by hand

def test_single_blocks_farthest_next_use_goes():
    # capacity 2: [1] [2] [3] [1] [2]
    #  r2 [3] needs room: 1 is next used at r3, 2 at r4 -> evict 2; cache 1, 3
    #  r3 [1] hit; r4 [2] misses, evicts 3 (never used again)           Belady: 1 hit
    # LRU evicts 1 at r2, then 2 at r3: no hit.
    reqs = [[1], [2], [3], [1], [2]]
    assert hits(reqs, 2) == [0, 0, 0, 1, 0]
    assert hits(reqs, 2, "lru") == [0] * 5


def test_blocks_never_used_again_go_oldest_and_tail_first():
    # capacity 3, nothing is ever used again: the ages decide.
    #  r0 [1, 2, 3]; r1 [4] evicts the tail 3 (age (0, -2), the smallest)
    cache, reqs = belady_cache([[1, 2, 3], [4]], 3)
    for keys, alloc in reqs:
        cache.serve(keys, len(keys), alloc)
    assert cache.keys() == {1, 2, 4}
    #  r0 [1]; r1 [2]; r2 [3] at capacity 2 evicts 1, the oldest
    cache, reqs = belady_cache([[1], [2], [3]], 2)
    for keys, alloc in reqs:
        cache.serve(keys, len(keys), alloc)
    assert cache.keys() == {2, 3}


def test_same_next_request_deeper_block_goes():
    # capacity 2: [1] [2] [3] [1, 2]
    #  r2 [3] needs room: 1 and 2 are both next used by r3, 2 deeper in it -> evict 2 (though 1
    #  is older: the age would evict 1, and r3 would hit nothing); cache 1, 3
    #  r3 [1, 2] hits 1
    reqs = [[1], [2], [3], [1, 2]]
    assert hits(reqs, 2) == [0, 0, 0, 1]
    # the HAND trace of test_replay.py at capacity 4:
    #  r0 [1, 2]; r1 [3, 4] -> cache 1, 2, 3, 4
    #  r2 [1, 2, 5] hits 2; room for 5: 3 and 4 next used by r3, 4 deeper -> evict 4
    #  r3 [3, 4, 6] hits 1 (3); room for 4, 6: 1, 2, 5 next used by r4 at depths 0, 1, 2 -> evict 5, 2
    #  r4 [1, 2, 5, 7] hits 1 (1)                                            Belady: 4 = LRU
    hand = [[1, 2], [3, 4], [1, 2, 5], [3, 4, 6], [1, 2, 5, 7]]
    assert hits(hand, 4) == [0, 0, 2, 1, 1]
    assert sum(hits(hand, 4)) == optimum([(k, len(k)) for k in hand], 4) == 4


def test_uses_by_oversized_requests_do_not_count():
    # capacity 2: [1] [2] [3] [1, 5, 6] [2]; r3 holds 3 blocks: oversized, it looks nothing up.
    #  r2 [3] needs room: 1's only later listing is r3, which does not use it -> never used again;
    #  2 is next used at r4 -> evict 1 (counting r3 would evict 2 and lose r4's hit)
    #  r4 [2] hits 1
    reqs = [[1], [2], [3], [1, 5, 6], [2]]
    assert hits(reqs, 2) == [0, 0, 0, 0, 1]
    assert naive_belady([(k, len(k)) for k in reqs], 2) == 1


def test_pinned_blocks_are_spared():
    # capacity 3; r0 [1] begins and stays in service (pinned) until after r3.
    #  r1 [2]; r2 [3] -> cache 1, 2, 3, full
    #  r3 [4] needs room: 1 is never used again but pinned; 2 is next used at r5, 3 at r4 -> evict 2
    #  end r0; r4 [3] hits; r5 [2] misses, evicts 1 (never used again) first
    reqs = [[1], [2], [3], [4], [3], [2]]
    cache, _ = belady_cache(reqs, 3)
    cache.begin(runs_of([1]), 1, 1)
    for keys in reqs[1:4]:
        cache.serve(keys, 1, 1)
    assert cache.keys() == {1, 3, 4}
    cache.end(runs_of([1]), 1)
    assert cache.serve([3], 1, 1).hit_blocks == 1
    assert cache.serve([2], 1, 1).hit_blocks == 0
    assert cache.keys() == {2, 3, 4}


def test_lru_can_beat_belady_in_a_prefix_cache():
    """The counterexample the property test found: Belady is not an optimum of a prefix cache.

    Capacity 3; B = 3 is listed once without its prefix A = 2; requests [keys] alloc_blocks:
      r0 [A, B] 2   -> A, B (and 1 free block after)
      r1 [C] 2      needs 2 blocks, 1 is free -> evict 1 block of A, B.
                    Belady: B is next used at r2, A at r3 -> evicts A.  LRU: evicts B, the tail.
      r2 [B] 1      Belady: hit.  LRU: miss, B inserted in the free block.
      r3 [A, B] 3   Belady: A misses, so B is no hit (0).  LRU: A, B hit (2); C evicted.
    Belady 1 hit, LRU 2 (the optimum): keeping B for r2 cost A, and without A, B's hit at r3.
    """
    reqs = [([2, 3], 2), ([4], 2), ([3], 1), ([2, 3], 3)]
    assert hits(reqs, 3) == [0, 0, 1, 0]
    assert hits(reqs, 3, "lru") == [0, 0, 0, 2]
    assert optimum(reqs, 3) == 2 and naive_belady(reqs, 3) == 1


def test_the_future_must_match_the_requests():
    cache, _ = belady_cache([[1, 2]], 4)
    with pytest.raises(ValueError, match="lists 3 keys, the future 2"):
        cache.serve([1, 2, 3], 3, 3)
    cache, _ = belady_cache([[1]], 4)
    cache.serve([1], 1, 1)
    with pytest.raises(ValueError, match="beyond the future"):
        cache.serve([1], 1, 1)
    future = Future.of([[(1, 2)], ([(5, 1), (9, 2)], 4)])  # a request of two runs, and one with its alloc
    assert list(future.starts) == [0, 2, 5] and list(future.alloc) == [2, 4] and future.max_alloc == 4
    assert future.nbytes() == 4 * 5 + 8 * 3 + 8 * 2
    with pytest.raises(ValueError, match="sealed"):
        future.add([(1, 1)])


def test_future_next_positions():
    # r0 [1, 2]; r1 [2, 3]; r2 [1]: 1 (pos 0) next at pos 4, 2 (pos 1) at pos 2
    future = Future.of([[(1, 2)], [(2, 2)], [(1, 1)]])
    assert list(future.next_pos) == [4, 2, NEVER, NEVER, NEVER]


# ---------------------------------------------------------------- properties

def chains():
    """Requests that list a head of one of a few key chains sharing prefixes (as hash ids do:
    a block's id fixes its whole prefix), some with room for output, some too large."""
    paths = [[1, 2, 3, 4, 5], [1, 2, 6, 7], [1, 8], [9, 10, 11]]
    request = st.tuples(st.sampled_from(paths), st.integers(1, 5), st.integers(0, 2)).map(
        lambda t: (t[0][:t[1]], min(t[1], len(t[0])) + t[2]))
    return st.lists(request, min_size=1, max_size=14)


def any_keys():
    """Requests of arbitrary distinct keys (not prefix-closed), some with room for output."""
    request = st.tuples(st.lists(st.integers(1, 7), min_size=1, max_size=4, unique=True), st.integers(0, 2)).map(
        lambda t: (t[0], len(t[0]) + t[1]))
    return st.lists(request, min_size=1, max_size=14)


@settings(max_examples=300, deadline=None)
@given(reqs=st.one_of(chains(), any_keys()), capacity=st.integers(1, 8))
def test_belady_matches_brute_force(reqs, capacity):
    assert sum(hits(reqs, capacity)) == naive_belady(reqs, capacity)


@settings(max_examples=400, deadline=None)
@given(reqs=chains(), capacity=st.integers(1, 8))
def test_belady_never_below_lru_on_prefix_sharing_requests(reqs, capacity):
    """Requests sharing prefixes (prefix-closed key lists): Belady keeps the cached blocks
    prefix-closed and gets at least what LRU, FIFO and LFU get. (With arbitrary key lists it
    does not: test_lru_can_beat_belady_in_a_prefix_cache.)"""
    belady = sum(hits(reqs, capacity))
    for policy in ("lru", "fifo", "lfu"):
        assert belady >= sum(hits(reqs, capacity, policy)), policy


@settings(max_examples=150, deadline=None)
@given(reqs=st.lists(chains().map(lambda r: r[0]), min_size=1, max_size=7), capacity=st.integers(1, 4))
def test_belady_is_the_optimum_on_small_prefix_sharing_traces(reqs, capacity):
    assert sum(hits(reqs, capacity)) == optimum(reqs, capacity)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.integers(0, 9), min_size=1, max_size=40), capacity=st.integers(1, 6))
def test_belady_is_optimal_on_single_block_requests(keys, capacity):
    reqs = [[k] for k in keys]
    belady = sum(hits(reqs, capacity))
    assert belady >= sum(hits(reqs, capacity, "lru"))
    if len(keys) <= 14:
        assert belady == optimum([(r, 1) for r in reqs], capacity)


# ---------------------------------------------------------------- replay and the command line

def test_belady_is_offline_only():
    assert "belady" not in POLICIES and OFFLINE_POLICIES == ("belady",)
    assert policy_choices() == (*POLICIES, "belady")


def write_trace(tmp_path):
    """A small Mooncake-format trace, 4-token blocks: three conversations coming back."""
    rows, t = [], 0
    convs = {0: [1, 2], 1: [10, 11, 12], 2: [20]}
    for turn in range(6):
        for c, base in convs.items():
            ids = base + [100 * (c + 1) + 10 * turn + k for k in range(turn + 1)]
            convs[c] = ids
            rows.append({"timestamp": t, "input_length": 4 * len(ids) - 1, "output_length": 3, "hash_ids": ids})
            t += 10
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replay_all_ranks_and_headroom(tmp_path, capsys):
    trace = write_trace(tmp_path)
    assert main(["replay", str(trace), "--policy", "all", "--capacity-blocks", "8,20,400", "--trace-block-size", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = list(policy_choices())
    assert out["inputs"]["policies"] == names
    assert out["belady_future_bytes"] == 4 * out["trace"]["listed_blocks"] + 16 * out["trace"]["requests"] + 8
    results = out["results"]
    assert [(r["policy"], r["capacity_blocks"]) for r in results] == [(p, c) for p in names for c in (8, 20, 400)]
    for c in (8, 20, 400):
        group = [r for r in results if r["capacity_blocks"] == c]
        belady = next(r for r in group if r["policy"] == "belady")
        for r in group:
            better = sum(o["token_hit_rate"] > r["token_hit_rate"] for o in group)
            assert r["rank"] == better + 1
            assert r["headroom_to_belady"] == pytest.approx(belady["token_hit_rate"] - r["token_hit_rate"])
            assert r["headroom_to_belady"] >= 0  # prefix-closed ids: Belady is the best here
        assert belady["rank"] == 1
    small = [r for r in results if r["capacity_blocks"] == 8]
    assert max(r["headroom_to_belady"] for r in small) > 0  # something to gain at 8 blocks
    assert all(r["headroom_to_belady"] == 0 for r in results if r["capacity_blocks"] == 400)
    # belady in the replay is the policy served directly with the same requests
    direct = replay(trace, "belady", [8], trace_block_size=4)["results"][0]
    assert direct["hit_blocks"] == small[-1]["hit_blocks"] and "headroom_to_belady" in direct
    assert "headroom_to_belady" not in replay(trace, "lru", [8], trace_block_size=4)["results"][0]

    # the text table: per capacity, ranked, with the headroom in points
    assert main(["replay", str(trace), "--policy", "all", "--capacity-blocks", "8,20", "--trace-block-size", "4"]) == 0
    text = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(text) if line.startswith("policy"))
    assert text[header].split() == ["policy", "capacity_blocks", "capacity_tokens", "rank", "block_hit_rate",
                                    "token_hit_rate", "request_hit_rate", "evictions", "oversized",
                                    "headroom_to_belady"]
    rows = text[header + 1:header + 2 + 2 * len(names)]
    assert rows[len(names)] == ""  # a blank line between capacities
    for block, c in ((rows[:len(names)], 8), (rows[len(names) + 1:], 20)):
        expected = sorted((r for r in results if r["capacity_blocks"] == c), key=lambda r: r["rank"])
        assert [line.split()[0] for line in block] == [r["policy"] for r in expected]
        assert [int(line.split()[3]) for line in block] == [r["rank"] for r in expected]
        assert [line.split()[-2] for line in block] == [f"{100 * r['headroom_to_belady']:.2f}" for r in expected]
    assert any(line.startswith("belady    future of") for line in text)


def test_replay_belady_from_a_one_shot_iterator(tmp_path):
    trace = write_trace(tmp_path)
    from kvsim.traces import open_traces

    listed = replay(list(open_traces(trace, trace_block_size=4)), "lru,belady", [8])["results"]
    once = replay(iter(list(open_traces(trace, trace_block_size=4))), "lru,belady", [8])["results"]
    assert once == listed
