"""Property tests: PrefixCache equals the naive ReferenceCache request by request.

Workloads mix growing conversations (keys ``(conv, j)`` after shared
system-prompt keys ``("sys", j)``), restarted conversations, arbitrary key
lists, random lookup caps, partial blocks and oversized requests, at
capacities that force partial evictions.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import PrefixCache, ReferenceCache

POLICY_NAMES = ["lru", "fifo", "lfu"]

Request = tuple[list, int, int]


@st.composite
def requests(draw, max_requests: int = 40) -> list[Request]:
    """A list of (keys, max_hit_blocks, alloc_blocks)."""
    n_sys = draw(st.integers(0, 3))
    n_convs = draw(st.integers(1, 5))
    uses_sys = draw(st.lists(st.booleans(), min_size=n_convs, max_size=n_convs))
    conv_ids = list(range(n_convs))
    context = [0] * n_convs  # blocks of each conversation after its system prompt
    next_id = n_convs
    result = []
    for _ in range(draw(st.integers(1, max_requests))):
        kind = draw(st.sampled_from(["turn"] * 6 + ["restart", "arbitrary"]))
        if kind == "arbitrary":
            # Distinct keys in any order: stresses stale copies and ties.
            keys = draw(st.lists(st.integers(0, 15), max_size=8, unique=True))
        else:
            c = draw(st.integers(0, n_convs - 1))
            if kind == "restart":
                conv_ids[c], next_id, context[c] = next_id, next_id + 1, 0
            context[c] += draw(st.integers(0, 6))
            prefix = [("sys", j) for j in range(n_sys)] if uses_sys[c] else []
            keys = prefix + [(conv_ids[c], j) for j in range(len(prefix), len(prefix) + context[c])]
        if draw(st.booleans()):
            max_hit = max(0, len(keys) - draw(st.integers(0, 2)))
        else:
            max_hit = draw(st.integers(0, len(keys)))
        alloc = len(keys) + draw(st.integers(0, 2))
        if draw(st.integers(0, 9)) == 0:
            alloc += draw(st.integers(1, 40))  # often oversized
        result.append((keys, max_hit, alloc))
    return result


def infinite_cache_hits(workload: list[Request]) -> list[int]:
    cached: set = set()
    hits = []
    for keys, max_hit, _ in workload:
        hit = 0
        while hit < max_hit and keys[hit] in cached:
            hit += 1
        hits.append(hit)
        cached.update(keys)
    return hits


@settings(max_examples=200, deadline=None)
@given(workload=requests(), capacity=st.integers(0, 40), policy=st.sampled_from(POLICY_NAMES))
def test_prefix_cache_equals_reference(workload, capacity, policy):
    fast = PrefixCache(capacity, policy)
    reference = ReferenceCache(capacity, policy)
    for keys, max_hit, alloc in workload:
        before = reference.keys()
        result = fast.serve(keys, max_hit, alloc)
        assert result == reference.serve(keys, max_hit, alloc)
        assert fast.keys() == reference.keys()
        assert len(fast) == len(reference) == len(fast.policy) <= capacity
        assert result.hit_blocks <= max_hit
        if result.oversized:
            assert alloc > capacity and fast.keys() == before
            continue
        # Space accounting: evictions happen only to fit alloc_blocks.
        own = len(before.intersection(keys))
        assert len(fast) == len(before) - result.evicted + len(keys) - own
        if result.evicted:
            assert capacity - (len(before) - result.evicted) == alloc - own
    assert (fast.requests, fast.oversized, fast.evictions) == (
        reference.requests,
        reference.oversized,
        reference.evictions,
    )


@settings(max_examples=200, deadline=None)
@given(workload=requests())
def test_ample_capacity_matches_infinite_cache(workload):
    distinct = {key for keys, _, _ in workload for key in keys}
    capacity = len(distinct) + max(alloc for _, _, alloc in workload)
    expected = infinite_cache_hits(workload)
    for make in (PrefixCache, ReferenceCache):
        for policy in POLICY_NAMES:
            cache = make(capacity, policy)
            results = [cache.serve(*request) for request in workload]
            assert [r.hit_blocks for r in results] == expected
            assert cache.evictions == cache.oversized == 0
            assert cache.keys() == distinct
