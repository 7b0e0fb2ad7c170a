"""Hand-worked scenarios of the prefix cache, for every policy.

Block keys are strings: "A3" is block 3 (depth 3) of conversation A, "S0" a
shared system-prompt block. ``blocks("A", 4)`` = ["A0", "A1", "A2", "A3"].
A request is written ``keys / max_hit_blocks / alloc_blocks``; eviction orders
are written front (next victim) first.

Every scenario runs on PrefixCache (run-based policies, the default), on
PrefixCache with the per-block policies, and on ReferenceCache. String keys
are interned by PrefixCache; the run-specific tests at the end use int keys.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.cache import PrefixCache, ReferenceCache, ServeResult, runs_of
from kvsim.policies import (
    BLOCK_POLICIES,
    POLICIES,
    BlockFIFO,
    BlockLFU,
    BlockLRU,
    EvictionPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    make_policy,
)


def PerBlockCache(capacity, policy):
    """PrefixCache with the per-block implementation of ``policy``."""
    return PrefixCache(capacity, make_policy(policy, per_block=True))


IMPLEMENTATIONS = [PrefixCache, PerBlockCache, ReferenceCache]
POLICY_NAMES = ["lru", "fifo", "lfu"]


def blocks(conv: str, n: int, start: int = 0) -> list[str]:
    return [f"{conv}{j}" for j in range(start, n)]


def served(hit: int, evicted: int) -> ServeResult:
    return ServeResult(hit, evicted, False)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def impl(request):
    return request.param


def run(cache, requests):
    """Serve (keys, max_hit, alloc) requests; return the results."""
    return [cache.serve(keys, max_hit, alloc) for keys, max_hit, alloc in requests]


def test_lru_evicts_tail_of_least_recent_conversation_first(impl):
    cache = impl(10, "lru")
    # A: A0..A3 / 3 / 5 -> miss. LRU order: A3 A2 A1 A0
    assert cache.serve(blocks("A", 4), 3, 5) == served(0, 0)
    # B: B0..B3 / 3 / 5 -> miss, 6 free. Order: A3 A2 A1 A0 B3 B2 B1 B0
    assert cache.serve(blocks("B", 4), 3, 5) == served(0, 0)
    # C: C0..C2 / 2 / 4 -> 2 free, needs 4: evicts A's tail A3, A2.
    assert cache.serve(blocks("C", 3), 2, 4) == served(0, 2)
    assert cache.keys() == {"A0", "A1", *blocks("B", 4), *blocks("C", 3)}
    # Order: A1 A0 B3 B2 B1 B0 C2 C1 C0.
    # A turn 2: A0..A5 / 5 / 7 -> hits A0 A1 (its surviving head); own 2,
    # 1 free, needs 7 - 2 = 5: evicts 4 blocks, B3 B2 B1 B0 (A1, A0 in use).
    assert cache.serve(blocks("A", 6), 5, 7) == served(2, 4)
    assert cache.keys() == {*blocks("A", 6), *blocks("C", 3)}
    # Order: C2 C1 C0 A5 A4 A3 A2 A1 A0.
    # B turn 2: B0..B5 / 5 / 7 -> nothing left of B; 1 free, needs 7:
    # evicts C entirely, then A's tail A5 A4 A3.
    assert cache.serve(blocks("B", 6), 5, 7) == served(0, 6)
    assert cache.keys() == {"A0", "A1", "A2", *blocks("B", 6)}
    assert len(cache) == 9
    assert (cache.requests, cache.evictions, cache.oversized) == (5, 12, 0)


# One request sequence, three policies (capacity 12). After r2 A's head
# A0..A3 was inserted at r1 and hit at r2; A4, A5 were inserted at r2.
#   r1  A0..A3 / 3 / 5   miss
#   r2  A0..A5 / 5 / 7   hits A0..A3
#   r3  B0..B4 / 4 / 6   miss, fills 11 blocks
#   r4  C0..C3 / 3 / 5   1 free, needs 5: evicts 4
#       FIFO queue  A3 A2 A1 A0 A5 A4 B4..B0 -> evicts A's head A3 A2 A1 A0
#       LRU order   A5 A4 A3 A2 A1 A0 B4..B0 -> evicts A's tail A5 A4 A3 A2
#       LFU (count) A0..A3 have 2; count-1 order A5 A4 B4 B3 .. -> A5 A4 B4 B3
#   r5  A0..A7 / 7 / 9   1 free
#       FIFO: A0 missing -> 0 hits although A4, A5 are cached. They are the
#             request's own (stale) blocks: own 2, needs 7, evicts B4..B0 C3,
#             and A4, A5 are replaced by fresh copies (11 blocks, not 13).
#       LRU:  hits A0 A1 (the LRU front, but in use); own 2, evicts B4..B0 C3.
#       LFU:  hits A0..A3; own 4, needs 5, evicts count-1 B2 B1 B0 C3.
#       All end with A0..A7 + C0..C2; order (all three): C2 C1 C0 A7 .. A0.
#   r6  D0..D2 / 2 / 4   1 free, needs 4: evicts C2 C1 C0
#   r7  E0 / 0 / 2       1 free, needs 2: evicts A7 -- for FIFO this shows that
#       A4, A5 were re-inserted at r5 (else A5, older, would go first).
BROKEN_PREFIX_REQUESTS = [
    (blocks("A", 4), 3, 5),
    (blocks("A", 6), 5, 7),
    (blocks("B", 5), 4, 6),
    (blocks("C", 4), 3, 5),
    (blocks("A", 8), 7, 9),
    (blocks("D", 3), 2, 4),
    (["E0"], 0, 2),
]
BROKEN_PREFIX_EXPECTED = {
    "fifo": (
        [(0, 0), (4, 0), (0, 0), (0, 4), (0, 6), (0, 3), (0, 1)],
        {"A4", "A5", *blocks("B", 5), *blocks("C", 4)},
    ),
    "lru": (
        [(0, 0), (4, 0), (0, 0), (0, 4), (2, 6), (0, 3), (0, 1)],
        {"A0", "A1", *blocks("B", 5), *blocks("C", 4)},
    ),
    "lfu": (
        [(0, 0), (4, 0), (0, 0), (0, 4), (4, 4), (0, 3), (0, 1)],
        {*blocks("A", 4), "B0", "B1", "B2", *blocks("C", 4)},
    ),
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_broken_prefix_and_stale_copies(impl, policy):
    cache = impl(12, policy)
    results = run(cache, BROKEN_PREFIX_REQUESTS[:4])
    expected_hits, after_r4 = BROKEN_PREFIX_EXPECTED[policy]
    assert cache.keys() == after_r4
    results += run(cache, BROKEN_PREFIX_REQUESTS[4:5])
    assert cache.keys() == {*blocks("A", 8), "C0", "C1", "C2"}
    assert len(cache) == 11  # stale copies replaced, not duplicated
    results += run(cache, BROKEN_PREFIX_REQUESTS[5:])
    assert results == [served(*hit_evicted) for hit_evicted in expected_hits]
    assert cache.keys() == {*blocks("A", 7), *blocks("D", 3), "E0"}
    assert cache.evictions == sum(evicted for _, evicted in expected_hits)


# FIFO parks hit blocks found at the front of the queue and puts them back in
# place (capacity 5):
#   r1 A0 A1 / 1 / 2       queue A1 A0
#   r2 B0 B1 / 1 / 2       queue A1 A0 B1 B0
#   r3 A0..A3 / 3 / 4      hits A0 A1, 1 free, needs 2: evicts 1.
#        FIFO: A1 A0 in use -> B1; queue A1 A0 B0 A3 A2
#        LRU/LFU: A1 A0 in use -> B1; then order B0 A3 A2 A1 A0 (LFU: count 1
#        B0 A3 A2, count 2 A1 A0)
#   r4 C0 / 0 / 1          full: evicts FIFO A1, LRU/LFU B0
PINNED_REQUESTS = [
    (["A0", "A1"], 1, 2),
    (["B0", "B1"], 1, 2),
    (blocks("A", 4), 3, 4),
    (["C0"], 0, 1),
]
PINNED_EXPECTED = {
    "fifo": {"A0", "A2", "A3", "B0", "C0"},
    "lru": {"A0", "A1", "A2", "A3", "C0"},
    "lfu": {"A0", "A1", "A2", "A3", "C0"},
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_hit_blocks_at_the_front_are_not_evicted(impl, policy):
    cache = impl(5, policy)
    results = run(cache, PINNED_REQUESTS)
    assert results == [served(0, 0), served(0, 0), served(2, 1), served(0, 1)]
    assert cache.keys() == PINNED_EXPECTED[policy]


# A shared system-prompt block S0, hit by every turn-1 request (capacity 6):
#   r1 S0 A0 / 1 / 3    miss          counts S0 1, A0 1
#   r2 S0 B0 / 1 / 3    hits S0       S0 2
#   r3 S0 C0 / 1 / 3    hits S0       S0 3
#   r4 D0 D1 / 1 / 2    fills the cache (6 blocks)
#        LRU order  A0 B0 C0 S0 D1 D0
#        FIFO queue A0 S0 B0 C0 D1 D0
#        LFU        count 1: A0 B0 C0 D1 D0, count 3: S0
#   r5 E0..E4 / 4 / 5   full, evicts 5: LFU keeps S0, LRU/FIFO keep D0
#   r6 S0 F0 / 1 / 2    LFU hits S0 and evicts E4; LRU/FIFO miss, evict D0 E4
SYSTEM_PROMPT_REQUESTS = [
    (["S0", "A0"], 1, 3),
    (["S0", "B0"], 1, 3),
    (["S0", "C0"], 1, 3),
    (["D0", "D1"], 1, 2),
    (blocks("E", 5), 4, 5),
    (["S0", "F0"], 1, 2),
]
SYSTEM_PROMPT_EXPECTED = {
    "lfu": ([(0, 0), (1, 0), (1, 0), (0, 0), (0, 5), (1, 1)], {"S0", *blocks("E", 5)}),
    "lru": ([(0, 0), (1, 0), (1, 0), (0, 0), (0, 5), (0, 2)], {"D0", *blocks("E", 5)}),
    "fifo": ([(0, 0), (1, 0), (1, 0), (0, 0), (0, 5), (0, 2)], {"D0", *blocks("E", 5)}),
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_lfu_keeps_frequently_hit_block(impl, policy):
    cache = impl(6, policy)
    expected, after_r5 = SYSTEM_PROMPT_EXPECTED[policy]
    results = run(cache, SYSTEM_PROMPT_REQUESTS[:5])
    assert cache.keys() == after_r5
    results += run(cache, SYSTEM_PROMPT_REQUESTS[5:])
    assert results == [served(*e) for e in expected]
    assert cache.keys() == {"S0", "F0", *blocks("E", 4)}


def test_lfu_reinserted_stale_copy_restarts_at_count_one(impl):
    cache = impl(4, "lfu")
    # P0 P1 / 1 / 2 three times: P0 is hit (count 3), P1 lies beyond the cap,
    # so it is re-inserted each time and keeps count 1 (last at r3).
    assert run(cache, [(["P0", "P1"], 1, 2)] * 3) == [served(0, 0), served(1, 0), served(1, 0)]
    # Q0 / 0 / 1: count 1, newer than P1.
    assert cache.serve(["Q0"], 0, 1) == served(0, 0)
    # R0 R1 / 1 / 3: 1 free, needs 3: evicts the count-1 blocks P1 then Q0.
    assert cache.serve(["R0", "R1"], 1, 3) == served(0, 2)
    assert cache.keys() == {"P0", "R0", "R1"}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_prompt_minus_one_cap(impl, policy):
    cache = impl(4, policy)
    assert cache.serve(["P0", "P1"], 1, 2) == served(0, 0)
    # Both blocks cached, but the cap (prompt fully in 2 blocks) allows 1 hit;
    # P1 is the request's own stale copy: no eviction, no duplicate.
    assert cache.serve(["P0", "P1"], 1, 2) == served(1, 0)
    assert len(cache) == 2
    assert cache.serve(["P0", "P1", "P2"], 2, 4) == served(2, 0)
    assert cache.serve(["P0"], 0, 1) == served(0, 0)
    assert cache.keys() == {"P0", "P1", "P2"}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_stale_copies_count_as_own_blocks(impl, policy):
    cache = impl(4, policy)
    run(cache, [(["A0", "A1", "A2"], 2, 3), (["B0"], 0, 1)])
    # Z0 A1 A2 / 3 / 4: Z0 misses, so A1, A2 are stale but the request's own:
    # they stay, and only 4 - 2 = 2 blocks are needed: A0 and B0 go
    # (although LRU and FIFO would otherwise evict A2 first).
    assert cache.serve(["Z0", "A1", "A2"], 3, 4) == served(0, 2)
    assert cache.keys() == {"Z0", "A1", "A2"}


# A present block after the first missing one is not a hit.
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_hit_is_leading_run_only(impl, policy):
    cache = impl(8, policy)
    cache.serve(["A0", "A1", "A2"], 2, 3)
    assert cache.serve(["A0", "X1", "A2"], 3, 3) == served(1, 0)
    assert cache.serve(["X0", "A0"], 2, 2) == served(0, 0)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_oversized_request_leaves_cache_untouched(impl, policy):
    cache = impl(4, policy)
    run(cache, [(["A0"], 0, 1), (["B0"], 0, 1)])
    # 5 blocks > 4: reported as 0 hits, nothing touched, inserted or evicted.
    assert cache.serve(["A0", *blocks("X", 4, 1)], 4, 5) == ServeResult(0, 0, True)
    assert cache.keys() == {"A0", "B0"}
    assert (cache.requests, cache.oversized, cache.evictions) == (3, 1, 0)
    # A0 was not touched by the oversized request: it is still the victim.
    assert cache.serve(["C0", "C1"], 1, 3) == served(0, 1)
    assert cache.keys() == {"B0", "C0", "C1"}
    # alloc_blocks == capacity is not oversized.
    assert cache.serve(blocks("D", 4), 3, 4) == served(0, 3)
    assert (cache.requests, cache.oversized, cache.evictions) == (5, 1, 4)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_capacity_zero(impl, policy):
    cache = impl(0, policy)
    assert cache.serve(["A0"], 0, 1) == ServeResult(0, 0, True)
    assert cache.serve([], 0, 1) == ServeResult(0, 0, True)
    assert cache.serve([], 0, 0) == served(0, 0)
    assert len(cache) == 0 and cache.keys() == set()
    assert (cache.requests, cache.oversized, cache.evictions) == (3, 2, 0)


@pytest.mark.parametrize("capacity", [-1, 2.5, "8", True, None])
def test_bad_capacity(impl, capacity):
    with pytest.raises(ValueError, match=r"capacity_blocks must be an int >= 0"):
        impl(capacity, "lru")


@pytest.mark.parametrize("policy", ["xyz", "", 42, None])
def test_bad_policy(impl, policy):
    with pytest.raises(ValueError, match=r"policy must be one of lru, fifo, lfu"):
        impl(4, policy)


def test_bad_policy_message_names_the_value(impl):
    with pytest.raises(ValueError, match=r"^policy must be one of lru, fifo, lfu(, [a-z0-9-]+)* \(got 'xyz'\)$"):
        impl(4, "xyz")


@pytest.mark.parametrize(
    "keys, max_hit, alloc, message",
    [
        (["A0", "A1"], 3, 3, "max_hit_blocks"),
        (["A0", "A1"], -1, 3, "max_hit_blocks"),
        (["A0", "A1"], 1, 1, "alloc_blocks"),
    ],
)
def test_bad_request(impl, keys, max_hit, alloc, message):
    cache = impl(4, "lru")
    with pytest.raises(ValueError, match=message):
        cache.serve(keys, max_hit, alloc)
    assert cache.requests == 0 and len(cache) == 0


def test_policy_name_case_and_numpy_capacity(impl):
    cache = impl(np.int64(4), "LRU")
    assert cache.capacity_blocks == 4 and type(cache.capacity_blocks) is int
    assert cache.serve(["A0"], 0, 1) == served(0, 0)
    assert "A0" in cache and "B0" not in cache


def test_policies_follow_the_protocol():
    assert set(POLICIES) == set(BLOCK_POLICIES) == {"lru", "fifo", "lfu", "s3fifo", "sieve", "arc", "lfu-aging", "sglang"}
    for per_block, table in ((False, POLICIES), (True, BLOCK_POLICIES)):
        for name, cls in table.items():
            policy = make_policy(name, per_block, capacity_blocks=8)
            assert isinstance(policy, cls) and isinstance(policy, EvictionPolicy)
            assert policy.name == name and len(policy) == 0


@pytest.mark.parametrize("cls", [LRUPolicy, FIFOPolicy, LFUPolicy, BlockLRU, BlockFIFO, BlockLFU])
def test_prefix_cache_takes_a_policy_instance(cls):
    policy = cls()
    cache = PrefixCache(3, policy)
    assert cache.policy is policy
    cache.serve([10, 11], 1, 3)
    assert len(policy) == len(cache) == 2 and set(policy) == cache.keys() == {10, 11}
    assert 10 in policy and 12 not in policy and "A0" not in policy
    with pytest.raises(ValueError, match="policy must be empty"):
        PrefixCache(3, policy)


def test_repr():
    cache = PrefixCache(4, "fifo")
    cache.serve(["A0"], 0, 1)
    assert repr(cache) == "PrefixCache(capacity_blocks=4, policy='fifo', cached=1)"


# ---------------------------------------------------------------- runs and keys


def test_runs_of():
    assert runs_of([]) == []
    assert runs_of([5]) == [(5, 1)]
    assert runs_of([0, 1, 2, 7, 8, 3, -1, 0]) == [(0, 3), (7, 2), (3, 1), (-1, 2)]
    assert runs_of(range(10, 20)) == [(10, 10)]
    with pytest.raises(TypeError, match="keys must be ints"):
        runs_of([1, "A"])


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_serve_runs_equals_serve(policy):
    by_keys, by_runs = PrefixCache(8, policy), PrefixCache(8, policy)
    requests = [([0, 1, 2, 100, 101], 4, 6), ([0, 1, 2, 100, 101, 102, 103], 6, 8),
                ([200, 201, 202], 2, 4), ([0, 1, 2, 100, 105], 4, 5)]
    for keys, max_hit, alloc in requests:
        assert by_keys.serve(keys, max_hit, alloc) == by_runs.serve_runs(runs_of(keys), max_hit, alloc)
        assert by_keys.keys() == by_runs.keys()
    assert by_keys.evictions == by_runs.evictions > 0


@pytest.mark.parametrize("runs", [[(0, 0)], [(0, 2), (5, -1)]])
def test_bad_runs(runs):
    cache = PrefixCache(8, "lru")
    with pytest.raises(ValueError, match="counts >= 1"):
        cache.serve_runs(runs, 0, 4)
    assert cache.requests == 0


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_mixed_and_huge_keys_are_interned(policy):
    cache = PrefixCache(6, policy)
    huge = [2**64 - 1, 2**64, 2**64 + 1]  # the first is a plain int key, the others interned
    assert cache.serve([*huge, "x", np.int64(7), True], 5, 6) == served(0, 0)
    assert cache.keys() == {*huge, "x", 7, 1}
    # numpy ints and bools are the ints they equal, as dict keys are
    assert 7 in cache and np.int64(7) in cache and 1 in cache and "y" not in cache and 2**65 not in cache
    assert cache.serve([*huge, "x", 7, 1], 5, 6) == served(5, 0)
    assert cache.serve(["y"], 0, 1) == served(0, 1)


# Pieces split in the middle: keys 0..9 inserted by one request are replaced,
# evicted and hit in parts (capacity 12).
#   r1 0..9 / 9 / 10     one piece; every policy's order: 9 8 .. 0
#   r2 3 4 5 / 0 / 3     stale copies of its own, re-inserted (0..2, 6..9 keep r1's rank)
#                        order: 9 8 7 6 2 1 0 5 4 3
#   r3 20 21 / 1 / 4     2 free, needs 4: evicts 9 8
#   r4 0..7 / 7 / 8      hits 0..6 (the cap), 7 is re-inserted; no eviction
#       LRU  order 21 20 7 6 5 4 3 2 1 0      (r4 touched 0..7, tail first)
#       FIFO queue 6 2 1 0 5 4 3 21 20 7      (hits keep their place)
#       LFU  count 1: 21 20 7; count 2: 6 5 4 3 2 1 0
#   r5 30..33 / 3 / 5    2 free, needs 5: evicts 3
RUN_SPLIT_REQUESTS = [
    (list(range(10)), 9, 10),
    ([3, 4, 5], 0, 3),
    ([20, 21], 1, 4),
    (list(range(8)), 7, 8),
    ([30, 31, 32, 33], 3, 5),
]
RUN_SPLIT_EXPECTED = {
    "lru": {*range(7), 30, 31, 32, 33},
    "fifo": {0, 3, 4, 5, 7, 20, 21, 30, 31, 32, 33},
    "lfu": {*range(7), 30, 31, 32, 33},
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_pieces_split_and_evicted_in_parts(impl, policy):
    cache = impl(12, policy)
    results = run(cache, RUN_SPLIT_REQUESTS)
    assert results == [served(0, 0), served(0, 0), served(0, 2), served(7, 0), served(0, 3)]
    assert cache.keys() == RUN_SPLIT_EXPECTED[policy]
