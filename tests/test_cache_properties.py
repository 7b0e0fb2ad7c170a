"""Property tests: the run-based PrefixCache, the per-block one and the naive
ReferenceCache agree request by request (same ServeResult, same cached keys).

Workloads mix growing conversations (int keys ``c * 100 + j`` after shared
system-prompt keys ``0 .. n_sys - 1``), restarted conversations, slices and
shuffled runs of conversation keys (they split pieces anywhere), arbitrary key
lists, random lookup caps, partial blocks and oversized requests, at
capacities that force partial evictions.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.cache import PrefixCache, ReferenceCache, runs_of
from kvsim.policies import make_policy

POLICY_NAMES = ["lru", "fifo", "lfu"]
STRIDE = 100  # conversation c owns the keys c * STRIDE + j

Request = tuple[list, int, int]


@st.composite
def requests(draw, max_requests: int = 40) -> list[Request]:
    """A list of (keys, max_hit_blocks, alloc_blocks)."""
    n_sys = draw(st.integers(0, 3))
    n_convs = draw(st.integers(1, 5))
    uses_sys = draw(st.lists(st.booleans(), min_size=n_convs, max_size=n_convs))
    conv_ids = list(range(1, n_convs + 1))
    context = [0] * n_convs  # blocks of each conversation after its system prompt
    next_id = n_convs + 1
    result = []
    for _ in range(draw(st.integers(1, max_requests))):
        kind = draw(st.sampled_from(["turn"] * 6 + ["restart", "slice", "shuffled", "arbitrary"]))
        c = draw(st.integers(0, n_convs - 1))
        base = conv_ids[c] * STRIDE
        if kind == "arbitrary":
            # Distinct keys in any order: stresses stale copies and ties.
            keys = draw(st.lists(st.integers(0, 3 * STRIDE), max_size=8, unique=True))
        elif kind == "slice":
            # A run starting inside a piece and ending inside another.
            lo = draw(st.integers(0, context[c] + 2))
            keys = list(range(base + lo, base + lo + draw(st.integers(1, 8))))
        elif kind == "shuffled":
            # Runs of one conversation in any order: depth order is not key order.
            cuts = sorted(draw(st.lists(st.integers(0, context[c] + 4), min_size=2, max_size=5, unique=True)))
            runs = [list(range(base + a, base + b)) for a, b in zip(cuts, cuts[1:])]
            keys = [k for run in draw(st.permutations(runs)) for k in run]
        else:
            if kind == "restart":
                conv_ids[c], next_id, context[c] = next_id, next_id + 1, 0
                base = conv_ids[c] * STRIDE
            context[c] += draw(st.integers(0, 6))
            prefix = list(range(n_sys)) if uses_sys[c] else []
            keys = prefix + list(range(base + len(prefix), base + len(prefix) + context[c]))
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


@settings(max_examples=400, deadline=None)
@given(workload=requests(), capacity=st.integers(0, 40), policy=st.sampled_from(POLICY_NAMES),
       as_runs=st.booleans())
def test_run_cache_equals_per_block_and_reference(workload, capacity, policy, as_runs):
    fast = PrefixCache(capacity, policy)
    per_block = PrefixCache(capacity, make_policy(policy, per_block=True))
    reference = ReferenceCache(capacity, policy)
    for keys, max_hit, alloc in workload:
        before = reference.keys()
        expected = reference.serve(keys, max_hit, alloc)
        result = fast.serve_runs(runs_of(keys), max_hit, alloc) if as_runs else fast.serve(keys, max_hit, alloc)
        assert result == expected
        assert per_block.serve(keys, max_hit, alloc) == expected
        assert fast.keys() == per_block.keys() == reference.keys()
        assert len(fast) == len(fast.policy) == len(reference) <= capacity
        assert result.hit_blocks <= max_hit
        if result.oversized:
            assert alloc > capacity and fast.keys() == before
            continue
        # Space accounting: evictions happen only to fit alloc_blocks.
        own = len(before.intersection(keys))
        assert len(fast) == len(before) - result.evicted + len(keys) - own
        if result.evicted:
            assert capacity - (len(before) - result.evicted) == alloc - own
    for cache in (fast, per_block):
        assert (cache.requests, cache.oversized, cache.evictions) == (
            reference.requests, reference.oversized, reference.evictions)


@settings(max_examples=100, deadline=None)
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


@settings(max_examples=300, deadline=None)
@given(workload=requests(), capacity=st.integers(0, 40), policy=st.sampled_from(POLICY_NAMES),
       data=st.data())
def test_requests_in_service_pin_their_blocks(workload, capacity, policy, data):
    """begin()/end() with overlapping requests: the three caches agree on every result, on
    fits() and lookup(), and no block of a request in service is ever evicted."""
    fast = PrefixCache(capacity, policy)
    per_block = PrefixCache(capacity, make_policy(policy, per_block=True))
    reference = ReferenceCache(capacity, policy)
    in_service: list[tuple[list, int]] = []  # (keys, alloc), oldest first

    def end_one(index: int) -> None:
        keys, alloc = in_service.pop(index)
        for cache in (fast, per_block):
            cache.end(cache.runs(keys), alloc)
        reference.end(keys, alloc)

    for keys, max_hit, alloc in workload:
        fit = reference.fits(keys, alloc)
        assert fast.fits(fast.runs(keys), alloc) == per_block.fits(per_block.runs(keys), alloc) == fit
        while not fit and alloc <= capacity:  # a queue would wait for requests to end
            end_one(data.draw(st.integers(0, len(in_service) - 1)))
            fit = reference.fits(keys, alloc)
        looked = reference.lookup(keys, max_hit)
        assert fast.lookup(fast.runs(keys), max_hit) == per_block.lookup(per_block.runs(keys), max_hit) == looked
        expected = reference.begin(keys, max_hit, alloc)
        assert fast.begin(fast.runs(keys), max_hit, alloc) == expected
        assert per_block.begin(per_block.runs(keys), max_hit, alloc) == expected
        assert expected.hit_blocks == (0 if expected.oversized else looked)
        if not expected.oversized:
            in_service.append((keys, alloc))
        assert fast.keys() == per_block.keys() == reference.keys()
        held = {key for request, _ in in_service for key in request}
        assert held <= fast.keys()
        assert len(fast) + sum(a - len(k) for k, a in in_service) <= capacity
        while in_service and data.draw(st.booleans()):
            end_one(data.draw(st.integers(0, len(in_service) - 1)))
    while in_service:
        end_one(0)
    assert fast.in_service_blocks == per_block.in_service_blocks == 0
