"""The ``sglang`` policy: SGLang's RadixCache semantics (kvsim/policies/sglang.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import PrefixCache, runs_of
from kvsim.policies import EvictionPolicy, make_policy
from kvsim.policies.sglang import EVICTION_STRATEGIES, SGLangPolicy
from kvsim.policies.sglang_reference import SGLangReference


def insert(policy, keys):
    """SGLang's ``insert`` alone: a request that matches nothing (cap 0)."""
    runs = runs_of(keys)
    policy.acquire(runs, 0)
    policy.release(runs, 0)


def test_is_an_eviction_policy():
    assert isinstance(SGLangPolicy(), EvictionPolicy)
    assert SGLangPolicy().name == "sglang"
    for strategy in EVICTION_STRATEGIES:
        SGLangPolicy(strategy)
    with pytest.raises(ValueError, match="eviction_policy"):
        SGLangPolicy("arc")
    with pytest.raises(ValueError, match="chunk_blocks"):
        SGLangPolicy(chunk_blocks=0)


# ---------------------------------------------------------------- hand-worked cases


def test_shared_system_prompt_splits_the_node_where_requests_diverge():
    policy = SGLangPolicy()
    cache = PrefixCache(100, policy)
    # A: system prompt 0..3, then its own 100, 101; prompt = 5 blocks (cap 5). Inserted in two
    # steps: the prompt's blocks after prefill, then the output block.
    assert cache.serve([0, 1, 2, 3, 100, 101], 5, 7).hit_blocks == 0
    assert policy.nodes() == [(0, [(0, 4), (100, 1)]), (1, [(101, 1)])]
    # B shares the system prompt and diverges inside A's first node: the match splits it.
    assert cache.serve([0, 1, 2, 3, 200, 201, 202], 6, 7).hit_blocks == 4
    assert policy.nodes() == [
        (0, [(0, 4)]),
        (1, [(100, 1)]), (2, [(101, 1)]),
        (1, [(200, 2)]), (2, [(202, 1)]),
    ]
    assert len(cache) == len(policy) == 9


def test_match_is_capped_and_splits_at_the_cap():
    policy = SGLangPolicy()
    insert(policy, [0, 1, 2, 3])
    # Cap 2 inside the node [0..3]: hit 2; the request's other cached keys (2, 3) are its own.
    assert policy.acquire([(0, 4)], 2) == (2, 4)
    assert policy.nodes() == [(0, [(0, 2)]), (1, [(2, 2)])]
    policy.release([(0, 4)], 2)
    assert policy.cached_prefix([(0, 4)], 3) == 3
    assert policy.cached_prefix([(0, 4)], 4) == 4
    assert policy.cached_prefix([(0, 2), (7, 1)], 3) == 2


def test_lru_evicts_a_whole_leaf_and_reports_it():
    cache = PrefixCache(10, SGLangPolicy())
    cache.serve(list(range(10, 15)), 5, 5)  # one node of 5
    cache.serve(list(range(20, 25)), 5, 5)
    # One block short: the least recent leaf goes whole (5 blocks, not 1).
    result = cache.serve([30], 1, 1)
    assert result.evicted == 5
    assert len(cache) == 6
    assert 10 not in cache and 14 not in cache and 20 in cache and 30 in cache


def test_a_parent_whose_last_child_goes_is_evicted_in_the_same_call():
    cache = PrefixCache(10, SGLangPolicy())
    cache.serve([1, 2, 3], 3, 3)
    cache.serve([1, 2, 3, 4, 5], 3, 5)  # [1, 2, 3] -> [4, 5], both touched now
    cache.serve(list(range(50, 55)), 5, 5)  # full
    # 3 needed: [4, 5] (2 blocks) is the oldest leaf; then [1, 2, 3] is a leaf, and still older
    # than [50..54]: it goes too. 5 evicted.
    assert cache.serve([60, 61, 62], 3, 3).evicted == 5
    assert sorted(cache.keys()) == [50, 51, 52, 53, 54, 60, 61, 62]


def test_the_requests_own_path_is_locked():
    cache = PrefixCache(6, SGLangPolicy())
    cache.serve([1, 2, 3], 3, 3)
    cache.serve([7, 8, 9], 3, 3)
    # [1, 2, 3] is the least recent leaf, but the request matches it: [7, 8, 9] goes instead.
    result = cache.serve([1, 2, 3, 4], 3, 4)
    assert (result.hit_blocks, result.evicted) == (3, 3)
    assert sorted(cache.keys()) == [1, 2, 3, 4]


def test_pinned_nodes_are_skipped():
    cache = PrefixCache(6, SGLangPolicy())
    a = runs_of([1, 2, 3])
    cache.begin(a, 3, 3)  # in service: pinned
    cache.serve([7, 8, 9], 3, 3)
    assert cache.serve([20], 1, 1).evicted == 3  # [1, 2, 3] is older, but pinned
    assert 1 in cache and 7 not in cache
    cache.end(a, 3)
    assert cache.serve([30, 31, 32], 3, 3).evicted == 3  # now [1, 2, 3] can go
    assert 1 not in cache and 20 in cache


def test_whole_node_eviction_keeps_fewer_hits_than_per_block_lru():
    # Capacity 8. Conversation P's turn 1 caches 100..103 (one node), Q's caches 200..203: full.
    # R needs one block. Per-block LRU evicts P's tail block 103 and keeps 100..102; SGLang
    # evicts P's whole node (4 blocks). P's turn 2 (keys 100..105, cap 5) then hits 3 blocks
    # under per-block LRU and 0 under SGLang.
    hits = {}
    for name, policy in (("lru", make_policy("lru", per_block=True)), ("sglang", SGLangPolicy())):
        cache = PrefixCache(8, policy)
        cache.serve([100, 101, 102, 103], 4, 4)
        cache.serve([200, 201, 202, 203], 4, 4)
        evicted = cache.serve([300], 1, 1).evicted
        hits[name] = (evicted, cache.serve(list(range(100, 106)), 5, 6).hit_blocks)
    assert hits == {"lru": (1, 3), "sglang": (4, 0)}


def test_a_node_the_match_ends_inside_is_touched_whole():
    # SGLang touches a node before splitting it, so the lower part ([3, 4]) is refreshed by a
    # request that used only [1, 2]; [50, 51], older, goes first. Per-block LRU would evict 4, 3.
    cache = PrefixCache(8, SGLangPolicy())
    cache.serve([1, 2, 3, 4], 4, 4)
    cache.serve([50, 51], 2, 2)
    cache.serve([1, 2, 9], 3, 3)
    assert cache.serve([70, 71], 2, 2).evicted == 2
    assert 3 in cache and 50 not in cache


def test_a_node_the_insert_ends_inside_is_touched_whole():
    # C's keys end inside [3, 4], beyond its cap: SGLang's insert touches [3, 4] before splitting
    # it, so [4] is refreshed too and [50, 51] (older) goes first.
    cache = PrefixCache(6, SGLangPolicy())
    cache.serve([1, 2], 2, 2)
    cache.serve([1, 2, 3, 4], 2, 4)  # [1, 2] -> [3, 4]
    cache.serve([50, 51], 2, 2)
    assert cache.serve([1, 2, 3], 2, 3).hit_blocks == 2  # own blocks 1..3; [3, 4] split at 3
    assert cache.serve([70], 1, 1).evicted == 2
    assert 4 in cache and 50 not in cache


def test_fifo_split_upper_node_is_created_at_the_split():
    # A split makes a new TreeNode (creation_time = now): under fifo the upper part [1, 2]
    # ranks as younger than [50, 51], although its blocks were inserted before.
    cache = PrefixCache(7, SGLangPolicy("fifo"))
    cache.serve([1, 2, 3, 4], 4, 4)
    cache.serve([50, 51], 2, 2)
    cache.serve([1, 2], 2, 2)  # splits [1..4] into [1, 2] -> [3, 4]
    assert cache.serve([70, 71, 72, 73], 4, 4).evicted == 4  # [3, 4], then [50, 51]
    assert sorted(cache.keys()) == [1, 2, 70, 71, 72, 73]


def test_lfu_keeps_the_more_matched_leaf():
    cache = PrefixCache(6, SGLangPolicy("lfu"))
    cache.serve([1, 2, 3], 3, 3)
    cache.serve([1, 2, 3], 3, 3)  # matched once: hit count 1
    cache.serve([7, 8, 9], 3, 3)  # never matched, and more recent
    cache.serve([20], 1, 1)
    assert 1 in cache and 7 not in cache
    cache = PrefixCache(6, SGLangPolicy("lru"))
    for keys in ([1, 2, 3], [1, 2, 3], [7, 8, 9], [20]):
        cache.serve(keys, len(keys), len(keys))
    assert 1 not in cache and 7 in cache


def test_chunked_prefill_inserts_the_prompt_chunk_by_chunk():
    policy = SGLangPolicy(chunk_blocks=2)
    PrefixCache(20, policy).serve(list(range(10)), 7, 10)
    # Chunks end at 2, 4, 6; the prompt at 7; the output after it.
    assert [runs for _, runs in policy.nodes()] == [[(0, 2)], [(2, 2)], [(4, 2)], [(6, 1)], [(7, 3)]]


def test_a_key_under_another_parent_is_a_new_node():
    # Not a chained hash: key 2 arrives after 9 instead of after 1. It misses there and is cached
    # again under 9; both copies are blocks of the cache.
    policy = SGLangPolicy()
    cache = PrefixCache(10, policy)
    cache.serve([1, 2, 3], 3, 3)
    assert cache.serve([9, 2, 3], 3, 3).hit_blocks == 0
    assert len(cache) == len(policy) == 6
    assert sorted(policy) == [1, 2, 2, 3, 3, 9]
    assert cache.serve([1, 2, 3], 3, 3).hit_blocks == 3


# ---------------------------------------------------------------- SGLang's own documented behaviour


def test_sglang_radix_cache_demo():
    # radix_cache.py's __main__: five inserts, then a match of [1, 2, 3, 13, 14].
    policy = SGLangPolicy()
    for keys in ([1, 2, 3], [1, 2, 3], [1, 2, 4, 5], [1, 2, 4, 5, 6, 7], [8, 9, 10, 11, 12]):
        insert(policy, keys)
    assert policy.nodes() == [(0, [(1, 2)]), (1, [(3, 1)]), (1, [(4, 2)]), (2, [(6, 2)]), (0, [(8, 5)])]
    assert len(policy) == 12  # 2 + 1 + 2 + 2 + 5
    assert policy.cached_prefix(runs_of([1, 2, 3, 13, 14]), 5) == 3


def test_sglang_unit_tests_transcribed():
    # test_radix_cache_unit.py: insert [1, 2, 3]; match [1, 2, 3] -> 3 and [1, 2] -> 2.
    policy = SGLangPolicy()
    insert(policy, [1, 2, 3])
    assert len(policy) == 3
    assert policy.cached_prefix(runs_of([1, 2, 3]), 3) == 3
    assert policy.cached_prefix(runs_of([1, 2]), 2) == 2
    # test_total_size: + [4, 5] -> 5.
    insert(policy, [4, 5])
    assert len(policy) == 5
    # test_evict_functionality: [1, 2] and [3, 4]; evict(2) frees a whole node of 2.
    policy = SGLangPolicy()
    insert(policy, [1, 2])
    insert(policy, [3, 4])
    assert policy.evict(2) == 2
    assert len(policy) == 2
    # test_lock_ref_operations: a locked path is not evictable (here: the matched path).
    policy = SGLangPolicy()
    insert(policy, [1, 2, 3])
    insert(policy, [7])
    assert policy.acquire(runs_of([1, 2, 3]), 3) == (3, 3)
    assert policy.evict(1) == 1 and 7 not in policy and 1 in policy
    policy.release(runs_of([1, 2, 3]), 3)
    assert policy.evict(1) == 3 and len(policy) == 0


# ---------------------------------------------------------------- random workloads

SYSTEM_STRIDE = 1_000
CONV_STRIDE = 100_000


@st.composite
def workloads(draw):
    systems = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    n_conv = draw(st.integers(1, 5))
    convs = []
    for c in range(n_conv):
        s = draw(st.integers(0, len(systems) - 1))
        sys_keys = [(s + 1) * SYSTEM_STRIDE + j for j in range(systems[s])]
        own = 0
        turns = []
        prev = 0
        for _ in range(draw(st.integers(1, 4))):
            # Mostly growing; a shorter turn (a regenerated answer) is a prefix of a cached path.
            own = max(0, own + draw(st.integers(-2, 3)))
            keys = sys_keys + [(c + 1) * CONV_STRIDE + j for j in range(own)]
            max_hit = draw(st.integers(min(prev, len(keys)) if draw(st.booleans()) else 0, len(keys)))
            alloc = len(keys) + draw(st.integers(0, 1))
            turns.append((keys, max_hit, alloc))
            prev = len(keys)
        convs.append(turns)
    # Each step advances one conversation, optionally keeping the request in service.
    steps = draw(st.lists(st.tuples(st.integers(0, n_conv - 1), st.booleans(), st.booleans()),
                          max_size=25))
    return convs, steps


def parents_of(convs):
    parent = {}
    for turns in convs:
        for keys, _, _ in turns:
            for j, key in enumerate(keys):
                assert parent.setdefault(key, keys[j - 1] if j else None) == (keys[j - 1] if j else None)
    return parent


def run(policy, capacity, convs, steps, check=True):
    cache = PrefixCache(capacity, policy)
    parent = parents_of(convs)
    nxt = [0] * len(convs)
    in_service = []
    log = []
    for conv, keep, end_one in steps:
        if end_one and in_service:
            runs, alloc, _ = in_service.pop(0)
            cache.end(runs, alloc)
        if nxt[conv] >= len(convs[conv]):
            continue
        keys, max_hit, alloc = convs[conv][nxt[conv]]
        nxt[conv] += 1
        runs = cache.runs(keys)
        while alloc <= capacity and not cache.fits(runs, alloc):  # make room beside those in service
            r, a, _ = in_service.pop(0)
            cache.end(r, a)
        if keep:
            result = cache.begin(runs, max_hit, alloc)
            if not result.oversized:
                in_service.append((runs, alloc, keys))
        else:
            result = cache.serve_runs(runs, max_hit, alloc)
        log.append(tuple(result))
        if check:
            cached = sorted(policy)
            assert len(cache) == len(policy) == len(cached)
            assert len(cache) + cache.in_service_blocks - cache._pinned_blocks <= capacity
            assert cache.free_blocks >= 0
            keyset = set(cached)
            assert len(keyset) == len(cached)  # chained keys: no duplicates
            # Prefix-closed: a cached key's parent is cached.
            assert all(parent[k] is None or parent[k] in keyset for k in keyset)
            # The request just served and those in service keep all their keys.
            if not result.oversized:
                assert keyset.issuperset(keys)
            for _, _, held in in_service:
                assert keyset.issuperset(held)
    log.append(tuple(sorted(policy)))
    log.append(tuple(policy.nodes()))
    return log


@settings(max_examples=400, deadline=None)
@given(workloads(), st.integers(0, 20), st.sampled_from(EVICTION_STRATEGIES), st.sampled_from([None, 1, 2]))
def test_random_workloads_match_the_reference(workload, capacity, strategy, chunk):
    convs, steps = workload
    fast = run(SGLangPolicy(strategy, chunk), capacity, convs, steps)
    assert fast == run(SGLangReference(strategy, chunk), capacity, convs, steps, check=False)
    assert fast == run(SGLangPolicy(strategy, chunk), capacity, convs, steps, check=False)  # deterministic
