"""The tiered prefix cache (kvsim.tiered): hand-worked cases, equality with the single-tier
PrefixCache at a zero-size CPU tier, the LRU inclusion properties (where they hold exactly and
why not elsewhere), the per-block oracle (kvsim.tiered_reference) on random workloads with
pinning, and the policy capabilities it needs (evict(victims=), discard()).

Keys: conversation c owns the ints ``c * STRIDE + j``; shared system-prompt keys are ``0 ..
n_sys - 1``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytic.specs import Workload
from kvsim.cache import PrefixCache, ServeResult, runs_of
from kvsim.engine import run_replication
from kvsim.policies import POLICIES, LRUPolicy, make_policy
from kvsim.policies.base import supports_tiers
from kvsim.tiered import TieredCache, TieredServeResult
from kvsim.tiered_reference import ReferenceTieredCache
from kvsim.workload import synthetic_conversation

POLICY_NAMES = ["lru", "fifo", "lfu"]
MODES = ["inclusive", "exclusive"]
STRIDE = 100

Request = tuple[list, int, int]


def tiers_of(cache) -> list[set]:
    """The keys of each tier (of a TieredCache or a ReferenceTieredCache), GPU first."""
    n = len(cache.tier_capacities) if isinstance(cache, TieredCache) else len(cache.caps)
    return [cache.tier_keys(i) for i in range(n)]


# ---------------------------------------------------------------- workloads


@st.composite
def conversations(draw, max_requests: int = 30, partial: bool = True) -> list[Request]:
    """Multi-turn conversations (prefix-closed: a request holds every earlier block of its
    conversation, after an optional shared system prompt); cap = prompt - 1 or the prompt."""
    n_sys = draw(st.integers(0, 2))
    n_convs = draw(st.integers(1, 5))
    uses_sys = draw(st.lists(st.booleans(), min_size=n_convs, max_size=n_convs))
    context = [0] * n_convs
    out = []
    for _ in range(draw(st.integers(1, max_requests))):
        c = draw(st.integers(0, n_convs - 1))
        prompt = context[c] + draw(st.integers(1, 4))
        output = draw(st.integers(0, 2))
        prefix = list(range(n_sys)) if uses_sys[c] else []
        keys = prefix + [(c + 1) * STRIDE + j for j in range(prompt + output)]
        max_hit = len(prefix) + prompt - draw(st.integers(0, 1))
        alloc = len(keys) + (draw(st.integers(0, 1)) if partial else 0)
        context[c] = prompt + output
        out.append((keys, max_hit, alloc))
    return out


@st.composite
def mixed(draw, max_requests: int = 30) -> list[Request]:
    """Conversations plus slices, shuffled runs and arbitrary key lists (not prefix-closed),
    random caps, partial blocks, sometimes oversized requests."""
    n_convs = draw(st.integers(1, 4))
    context = [0] * n_convs
    out = []
    for _ in range(draw(st.integers(1, max_requests))):
        kind = draw(st.sampled_from(["turn"] * 5 + ["slice", "shuffled", "arbitrary"]))
        c = draw(st.integers(0, n_convs - 1))
        base = (c + 1) * STRIDE
        if kind == "arbitrary":
            keys = draw(st.lists(st.integers(0, 5 * STRIDE), max_size=7, unique=True))
        elif kind == "slice":
            lo = draw(st.integers(0, context[c] + 2))
            keys = list(range(base + lo, base + lo + draw(st.integers(1, 7))))
        elif kind == "shuffled":
            cuts = sorted(draw(st.lists(st.integers(0, context[c] + 4), min_size=2, max_size=5, unique=True)))
            runs = [list(range(base + a, base + b)) for a, b in zip(cuts, cuts[1:])]
            keys = [k for run in draw(st.permutations(runs)) for k in run]
        else:
            context[c] += draw(st.integers(0, 5))
            keys = list(range(base, base + context[c]))
        max_hit = draw(st.integers(0, len(keys)))
        alloc = len(keys) + draw(st.integers(0, 2))
        if draw(st.integers(0, 12)) == 0:
            alloc += draw(st.integers(1, 30))
        out.append((keys, max_hit, alloc))
    return out


def as_tuple(r) -> tuple:
    """A TieredServeResult or the reference's tuple, as one comparable tuple."""
    if isinstance(r, TieredServeResult):
        return (r.hit_blocks, r.evicted, r.oversized, r.tier_hits, r.stored, r.tier_evicted)
    return tuple(r)


# ---------------------------------------------------------------- hand-worked cases


def test_two_tiers_inclusive_by_hand():
    cache = TieredCache(3, 5, mode="inclusive", block_size=16)
    # A: GPU {1,2}, CPU {1,2} (stored 2).
    assert as_tuple(cache.serve([1, 2], 2, 2)) == (0, 0, False, (0, 0), (0, 2), (0, 0))
    # B (one partial block): the GPU needs 3 blocks, has 1 free -> evicts A's 2 and 1;
    # GPU {3,4}; CPU {1,2,3,4} (stored 2).
    assert as_tuple(cache.serve([3, 4], 2, 3)) == (0, 2, False, (0, 0), (0, 2), (2, 0))
    # C: nothing on the GPU, 1,2 continue from the CPU (loaded: 2 CPU hits); the GPU evicts
    # 3,4 for them and block 6; the CPU already has 1,2, stores 6 into its last free block.
    assert as_tuple(cache.serve([1, 2, 6], 2, 3)) == (2, 2, False, (0, 2), (0, 1), (2, 0))
    assert cache.tier_keys("gpu") == {1, 2, 6} and cache.tier_keys("cpu") == {1, 2, 3, 4, 6}
    # D: 3,4 from the CPU. The CPU's LRU order, oldest first: 4 3 (B), 6 2 1 (C, the deepest
    # oldest); storing 7 evicts the oldest block that is not D's own: 6.
    assert as_tuple(cache.serve([3, 4, 7], 2, 3)) == (2, 3, False, (0, 2), (0, 1), (3, 1))
    assert cache.tier_keys("cpu") == {1, 2, 3, 4, 7}
    # E: 1,2 from the CPU, 6 is gone from both tiers: the hit stops there.
    assert cache.lookup_tiers(cache.runs([1, 2, 6]), 3) == (0, 2)
    assert cache.tier_hits == [0, 4] and cache.stored_blocks == [0, 6] and cache.tier_evictions == [7, 1]
    traffic = cache.traffic()
    assert traffic[1]["loaded_tokens"] == 4 * 16 and traffic[1]["stored_tokens"] == 6 * 16
    assert (cache.requests, cache.oversized, cache.evictions) == (4, 0, 7)


def test_two_tiers_exclusive_by_hand():
    cache = TieredCache(3, 3, mode="exclusive")
    assert as_tuple(cache.serve([1, 2], 2, 2)) == (0, 0, False, (0, 0), (0, 0), (0, 0))
    # B: the GPU evicts 2 then 1; they move to the CPU.
    assert as_tuple(cache.serve([3, 4], 2, 3)) == (0, 2, False, (0, 0), (0, 2), (2, 0))
    assert cache.tier_keys("cpu") == {1, 2}
    # C: 1,2 are loaded from the CPU (and leave it); the GPU evicts 3,4, which move down.
    assert as_tuple(cache.serve([1, 2, 6], 2, 3)) == (2, 2, False, (0, 2), (0, 2), (2, 0))
    assert cache.tier_keys("gpu") == {1, 2, 6} and cache.tier_keys("cpu") == {3, 4}
    # D: the GPU evicts 6, 2, 1 (C's, deepest first) into the CPU, which drops its two
    # oldest (4, then 3) for them.
    assert as_tuple(cache.serve([7, 8], 2, 3)) == (0, 3, False, (0, 0), (0, 3), (3, 2))
    assert cache.tier_keys("gpu") == {7, 8} and cache.tier_keys("cpu") == {1, 2, 6}
    # The tiers stay disjoint; a lookup sees both.
    assert cache.lookup_tiers(cache.runs([1, 2, 6, 9]), 3) == (0, 3)


def test_three_tiers_exclusive_and_the_cap():
    cache = TieredCache(2, 2, 4, mode="exclusive")
    cache.serve([1, 2], 2, 2)
    cache.serve([3, 4], 2, 2)  # GPU 3,4; CPU 1,2
    cache.serve([5, 6], 2, 2)  # GPU 5,6; CPU 3,4; disk 1,2 (the CPU's victims move down)
    assert tiers_of(cache) == [{5, 6}, {3, 4}, {1, 2}]
    # [1, 2] capped at one hit block: block 1 comes from disk (past the CPU, which lacks it);
    # block 2 is in disk too, but beyond the cap: recomputed, and it leaves the disk as well
    # (the GPU holds it now). The GPU's victims 5,6 go to the CPU, whose 3,4 go to disk.
    r = cache.serve([1, 2], 1, 2)
    assert as_tuple(r) == (1, 2, False, (0, 0, 1), (0, 2, 2), (2, 2, 0))
    assert tiers_of(cache) == [{1, 2}, {5, 6}, {3, 4}]


def test_three_tiers_inclusive():
    cache = TieredCache(2, 3, 6, mode="inclusive")
    # Every request's blocks go to the GPU, the CPU and the disk. The CPU (3 blocks) evicts
    # 2 for B (A's deepest), then 1 and 4 for C; the disk keeps all six.
    for keys in ([1, 2], [3, 4], [5, 6]):
        cache.serve(keys, 2, 2)
    assert tiers_of(cache) == [{5, 6}, {3, 5, 6}, {1, 2, 3, 4, 5, 6}]
    # [3, 4]: block 3 from the CPU, block 4 continues from disk. Storing 4 in the CPU evicts
    # its oldest block not of the request: 6 (C's deepest); the disk has both already.
    r = cache.serve([3, 4], 2, 2)
    assert as_tuple(r) == (2, 2, False, (0, 1, 1), (0, 1, 0), (2, 1, 0))
    assert tiers_of(cache) == [{3, 4}, {3, 4, 5}, {1, 2, 3, 4, 5, 6}]


def test_cap_applies_to_the_whole_run():
    for mode in MODES:
        cache = TieredCache(4, 6, mode=mode)
        cache.serve([1, 2, 3], 3, 4)
        cache.serve([7, 8, 9], 3, 4)  # A leaves the GPU (inclusive: it stays in the CPU)
        r = cache.serve([1, 2, 3], 2, 4)  # block 3 is below but beyond the cap
        assert r.hit_blocks == 2 and r.tier_hits == (0, 2)
        assert cache.lookup([(1, 3)], 3) == 3
        assert cache.lookup([(1, 3)], 1) == 1
    # GPU hits count against the cap before the CPU's.
    cache = TieredCache(3, 6)
    cache.serve([1, 2], 2, 2)
    cache.serve([3, 4], 2, 3)  # GPU {3,4}; CPU {1,2,3,4}
    assert cache.lookup_tiers(cache.runs([3, 4, 1]), 2) == (2, 0)


def test_oversized_leaves_every_tier_unchanged():
    for mode in MODES:
        cache = TieredCache(2, 4, 4, mode=mode)
        cache.serve([1, 2], 2, 2)
        before = tiers_of(cache)
        r = cache.serve([1, 2, 3], 2, 3)
        assert r == ServeResult(0, 0, True) and r.tier_hits == (0, 0, 0)
        assert tiers_of(cache) == before and cache.oversized == 1 and cache.requests == 2


def test_result_unpacks_like_a_serve_result():
    r = TieredCache(4, 4).serve([1, 2], 2, 3)
    hit, evicted, oversized = r
    assert isinstance(r, ServeResult) and (hit, evicted, oversized) == (0, 0, False)
    assert "tier_hits=(0, 0)" in repr(r)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        TieredCache(4, 4, mode="write-back")
    with pytest.raises(ValueError, match="cpu_blocks must be an int >= 0"):
        TieredCache(4, -1)
    with pytest.raises(ValueError, match="block_size"):
        TieredCache(4, 4, block_size=0)
    with pytest.raises(ValueError, match="policy must be one of"):
        TieredCache(4, 4, cpu_policy="nope")


class _NoVictims(LRUPolicy):
    """An LRU without the tier capabilities (its evict() takes no victims)."""

    def evict(self, n, pinned=()):
        return super().evict(n, pinned)


def test_exclusive_mode_refuses_a_policy_without_the_capabilities():
    assert supports_tiers(LRUPolicy()) and not supports_tiers(_NoVictims())
    with pytest.raises(ValueError, match="exclusive mode needs gpu policy 'lru' to support"):
        TieredCache(4, 4, policy=_NoVictims(), mode="exclusive")
    with pytest.raises(ValueError, match="exclusive mode needs cpu policy"):
        TieredCache(4, 4, cpu_policy=_NoVictims(), mode="exclusive")
    TieredCache(4, 4, policy=_NoVictims()).serve([1, 2], 2, 2)  # inclusive needs neither


def test_engine_runs_a_tiered_cache():
    """The engine's counting server drives it as a PrefixCache: zero CPU gives the same figures."""
    w = Workload()

    def run(cache):
        source = lambda rng, cid: synthetic_conversation(w, 16, rng, cid)  # noqa: E731
        return run_replication(source, w.arrival_rate, cache, 16, 600.0, 0.0, np.random.default_rng([0, 0]))

    single = run(PrefixCache(400, "lru"))
    tiered = run(TieredCache(400, 0))
    assert (tiered.requests, tiered.token_hit_rate) == (single.requests, single.token_hit_rate)
    bigger = TieredCache(400, 4000)
    assert run(bigger).token_hit_rate > single.token_hit_rate and bigger.tier_hits[1] > 0


# ---------------------------------------------------------------- against the single tier


@settings(max_examples=150, deadline=None)
@given(workload=mixed(), gpu=st.integers(0, 30), policy=st.sampled_from(POLICY_NAMES),
       mode=st.sampled_from(MODES))
def test_zero_cpu_equals_the_single_tier(workload, gpu, policy, mode):
    single = PrefixCache(gpu, policy)
    tiered = TieredCache(gpu, 0, policy=policy, mode=mode)
    for keys, max_hit, alloc in workload:
        assert tiered.serve(keys, max_hit, alloc) == single.serve(keys, max_hit, alloc)
        assert tiered.keys() == single.keys()
    assert (tiered.requests, tiered.oversized, tiered.evictions) == (single.requests, single.oversized,
                                                                      single.evictions)


@settings(max_examples=60, deadline=None)
@given(workload=conversations(), gpu=st.integers(1, 20), mode=st.sampled_from(MODES), data=st.data())
def test_zero_cpu_equals_the_single_tier_in_service(workload, gpu, mode, data):
    """Also with begin()/end(): the same results, fits(), lookup() and GPU accounting."""
    single = PrefixCache(gpu, "lru")
    tiered = TieredCache(gpu, 0, mode=mode)
    in_service = []
    for keys, max_hit, alloc in workload:
        runs = runs_of(keys)
        while in_service and (data.draw(st.booleans()) or not single.fits(runs, alloc)):
            k, a = in_service.pop(0)
            single.end(runs_of(k), a)
            tiered.end(runs_of(k), a)
        assert tiered.fits(runs, alloc) == single.fits(runs, alloc)
        if alloc <= gpu and not single.fits(runs, alloc):
            continue
        assert tiered.lookup(runs, max_hit) == single.lookup(runs, max_hit)
        r = single.begin(runs, max_hit, alloc)
        assert tiered.begin(runs, max_hit, alloc) == r
        if not r.oversized:
            in_service.append((keys, alloc))
        assert tiered.in_service_blocks == single.in_service_blocks
        assert tiered.free_blocks == single.free_blocks


# ---------------------------------------------------------------- inclusion properties


def test_inclusive_is_not_exactly_one_lru_of_the_cpu_size():
    """Counterexample to "inclusive, CPU >= GPU, has the hits of one LRU of the CPU's size": the
    single cache must also make room for each request's partial block, the CPU tier never
    does (only full blocks are stored below the GPU), so the single cache keeps one block less."""
    workload = [([100, 101], 2, 3), ([200], 1, 2), ([100, 101], 2, 2)]
    single = PrefixCache(3, "lru")
    tiered = TieredCache(3, 3)
    hits = [(tiered.serve(*r).hit_blocks, single.serve(*r).hit_blocks) for r in workload]
    # Request 2 (2 blocks, one partial, in a 3-block cache holding 2): the single cache and the
    # GPU evict block 101; the CPU tier stores block 200 beside 100, 101 without evicting.
    # Request 3: 100 on the GPU, 101 from the CPU; the single cache has only 100.
    assert hits == [(0, 0), (0, 0), (2, 1)]


@settings(max_examples=150, deadline=None)
@given(workload=conversations(), gpu=st.integers(1, 20), extra=st.integers(0, 20), disk=st.integers(0, 30))
def test_inclusive_lru_has_the_hits_of_one_lru_of_the_cpu_size(workload, gpu, extra, disk):
    """What does hold, exactly: with CPU >= GPU (and disk >= CPU) the GPU is inside the CPU tier
    (both keep the most recent blocks of one recency order, LRU's stack property), so the
    whole hit is the CPU's own leading run: that of one LRU of the CPU's size that allocates
    full blocks only. The real single cache of that size (partial blocks too) never hits
    more. Requests larger than the GPU are left out (the tiered cache serves them uncached)."""
    cpu = gpu + extra
    disk = cpu + disk if disk else 0
    tiered = TieredCache(gpu, cpu, disk)
    bottom = disk or cpu
    full_only = PrefixCache(bottom, "lru")
    single = PrefixCache(bottom, "lru")
    for keys, max_hit, alloc in workload:
        if alloc > gpu:
            continue
        r = tiered.serve(keys, max_hit, alloc)
        assert r.hit_blocks == full_only.serve(keys, max_hit, len(keys)).hit_blocks
        assert r.hit_blocks >= single.serve(keys, max_hit, alloc).hit_blocks
        gpu_keys, *lower = tiers_of(tiered)
        assert all(gpu_keys <= t for t in lower)


def test_exclusive_misses_a_gpu_block_after_a_cpu_one():
    """Counterexample to "exclusive LRU has the hits of one LRU of the summed size" on streams
    that are not prefix-closed: a deeper block can be more recent than its predecessor, then
    it sits on the GPU while the predecessor is in the CPU tier; the run continued from the
    CPU stops at it (the lookup goes down the tiers, never back up), the single cache's run
    does not."""
    workload = [([1, 2], 2, 2), ([3], 1, 1), ([2], 1, 1), ([1, 2], 2, 2)]
    tiered = TieredCache(2, 2, mode="exclusive")
    single = PrefixCache(4, "lru")
    hits = [(tiered.serve(*r).hit_blocks, single.serve(*r).hit_blocks) for r in workload]
    # Before the last request: GPU {3, 2}, CPU {1}.
    assert hits[-1] == (1, 2)


@settings(max_examples=150, deadline=None)
@given(workload=conversations(), gpu=st.integers(1, 20), cpu=st.integers(0, 20), disk=st.integers(0, 20))
def test_exclusive_lru_has_the_hits_of_one_lru_of_the_summed_size(workload, gpu, cpu, disk):
    """What does hold, exactly, on prefix-closed streams (every request holds all the earlier
    blocks of its conversation, as multi-turn chat does): GPU + CPU (+ disk) hold what one LRU of
    the summed size holds (the GPU its most recent part, each victim entering the next tier as
    its most recent block; the partial block is reserved on the GPU as in the single cache), and
    the tiers, in order, hold a prefix's blocks in order. Requests larger than the GPU are left
    out. Any capacities, no inclusion needed."""
    tiered = TieredCache(gpu, cpu, disk, mode="exclusive")
    single = PrefixCache(gpu + cpu + disk, "lru")
    for keys, max_hit, alloc in workload:
        if alloc > gpu:
            continue
        assert tiered.serve(keys, max_hit, alloc).hit_blocks == single.serve(keys, max_hit, alloc).hit_blocks
        assert set().union(*tiers_of(tiered)) == single.keys()


# ---------------------------------------------------------------- against the per-block oracle


@settings(max_examples=200, deadline=None)
@given(workload=mixed(), gpu=st.integers(0, 25), cpu=st.integers(0, 25), disk=st.integers(0, 25),
       mode=st.sampled_from(MODES), per_block=st.booleans())
def test_tiered_equals_the_per_block_reference(workload, gpu, cpu, disk, mode, per_block):
    policies = {"policy": make_policy("lru", per_block), "cpu_policy": make_policy("lru", per_block),
                "disk_policy": make_policy("lru", per_block)}
    tiered = TieredCache(gpu, cpu, disk, mode=mode, **policies)
    reference = ReferenceTieredCache(gpu, cpu, disk, mode=mode)
    for keys, max_hit, alloc in workload:
        assert tiered.lookup_tiers(tiered.runs(keys), max_hit) == reference.lookup_tiers(keys, max_hit)
        assert as_tuple(tiered.serve(keys, max_hit, alloc)) == as_tuple(reference.serve(keys, max_hit, alloc))
        assert tiers_of(tiered) == tiers_of(reference)
        assert tiered.tier_sizes() == tuple(map(len, tiers_of(reference)))
        if mode == "exclusive":
            gpu_keys, *lower = tiers_of(tiered)
            assert sum(map(len, lower)) + len(gpu_keys) == len(set().union(gpu_keys, *lower))
    assert (tiered.tier_hits, tiered.stored_blocks, tiered.tier_evictions) == (
        reference.tier_hits, reference.stored_blocks, reference.tier_evictions)


@settings(max_examples=150, deadline=None)
@given(workload=mixed(), gpu=st.integers(1, 25), cpu=st.integers(0, 25), disk=st.integers(0, 25),
       mode=st.sampled_from(MODES), data=st.data())
def test_tiered_equals_the_reference_in_service(workload, gpu, cpu, disk, mode, data):
    """begin()/end() with overlapping requests: same results, fits(), and pinned GPU blocks."""
    tiered = TieredCache(gpu, cpu, disk, mode=mode)
    reference = ReferenceTieredCache(gpu, cpu, disk, mode=mode)
    in_service: list = []

    def end_one(i):
        keys, alloc = in_service.pop(i)
        tiered.end(tiered.runs(keys), alloc)
        reference.end(keys, alloc)

    for keys, max_hit, alloc in workload:
        fit = reference.fits(keys, alloc)
        assert tiered.fits(tiered.runs(keys), alloc) == fit
        while not fit and alloc <= gpu:
            end_one(data.draw(st.integers(0, len(in_service) - 1)))
            fit = reference.fits(keys, alloc)
        expected = reference.begin(keys, max_hit, alloc)
        assert as_tuple(tiered.begin(tiered.runs(keys), max_hit, alloc)) == as_tuple(expected)
        if not expected[2]:
            in_service.append((keys, alloc))
        assert tiers_of(tiered) == tiers_of(reference)
        assert {k for ks, _ in in_service for k in ks} <= tiered.keys()
        while in_service and data.draw(st.booleans()):
            end_one(data.draw(st.integers(0, len(in_service) - 1)))
    while in_service:
        end_one(0)
    assert tiered.in_service_blocks == 0


@settings(max_examples=60, deadline=None)
@given(workload=mixed(), gpu=st.integers(0, 20), cpu=st.integers(0, 20), disk=st.integers(0, 20),
       mode=st.sampled_from(MODES), policy=st.sampled_from(POLICY_NAMES))
def test_run_based_tiers_equal_per_block_tiers(workload, gpu, cpu, disk, mode, policy):
    """Any policy: the run-based tiers and the per-block ones give the same results."""
    fast = TieredCache(gpu, cpu, disk, policy=policy, mode=mode)
    slow = TieredCache(gpu, cpu, disk, mode=mode, policy=make_policy(policy, True),
                       cpu_policy=make_policy(policy, True), disk_policy=make_policy(policy, True))
    for keys, max_hit, alloc in workload:
        assert as_tuple(fast.serve(keys, max_hit, alloc)) == as_tuple(slow.serve(keys, max_hit, alloc))
        assert tiers_of(fast) == tiers_of(slow)


# ---------------------------------------------------------------- the policy capabilities


def expand(victims: list) -> list[int]:
    """Victim ranges as keys in eviction order (a range goes from hi - 1 down to lo)."""
    return [k for lo, hi in victims for k in range(hi - 1, lo - 1, -1)]


@settings(max_examples=200, deadline=None)
@given(workload=mixed(), capacity=st.integers(0, 30), policy=st.sampled_from(POLICY_NAMES), data=st.data())
def test_victims_and_discard_equal_the_per_block_policies(workload, capacity, policy, data):
    """Driving the policies as PrefixCache does, with evict(victims=) and, between requests,
    discard() of random runs (sometimes with keys pinned): the run-based and per-block policies
    report the same victims in the same order, exactly the keys that left."""
    fast, slow = make_policy(policy), make_policy(policy, per_block=True)
    for keys, max_hit, alloc in workload:
        if alloc > capacity:
            continue
        runs = runs_of(keys)
        cached = set(slow)
        pinned = []
        if data.draw(st.integers(0, 3)) == 0 and cached:
            lo = data.draw(st.sampled_from(sorted(cached)))
            pinned = [(lo, lo + data.draw(st.integers(1, 3)))]
        (hit, own), (hit2, own2) = fast.acquire(runs, max_hit), slow.acquire(runs, max_hit)
        assert (hit, own) == (hit2, own2)
        evictable = len(cached - set(keys) - {k for a, b in pinned for k in range(a, b)})
        need = min(alloc - own - (capacity - len(cached)), evictable)
        if need > 0:
            v_fast, v_slow = [], []
            fast.evict(need, pinned, v_fast)
            slow.evict(need, pinned, v_slow)
            assert expand(v_fast) == expand(v_slow)
            assert len(expand(v_fast)) == need
            assert set(expand(v_fast)) <= cached - set(keys)
        fast.release(runs, hit)
        slow.release(runs, hit)
        assert set(fast) == set(slow)
        if data.draw(st.booleans()):
            drop = runs_of(data.draw(st.lists(st.integers(0, 5 * STRIDE), max_size=6, unique=True)))
            drop += [(STRIDE * data.draw(st.integers(1, 4)) + data.draw(st.integers(0, 5)),
                      data.draw(st.integers(1, 6)))]
            drop = runs_of(sorted({k for a, n in drop for k in range(a, a + n)}))
            before = set(fast)
            removed = fast.discard(drop)
            assert removed == slow.discard(drop)
            gone = {k for a, n in drop for k in range(a, a + n)} & before
            assert removed == len(gone) and set(fast) == set(slow) == before - gone
        assert len(fast) == len(slow)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_evict_without_victims_is_unchanged(policy):
    """The default path: the same victims as when they are asked for."""
    caches = [PrefixCache(20, policy) for _ in range(2)]
    for i in range(40):
        keys = list(range((i % 7) * STRIDE, (i % 7) * STRIDE + 3 + i % 5))
        for c in caches:
            c.serve(keys, len(keys) - 1, len(keys) + 1)
    a, b = (c.policy for c in caches)
    victims: list = []
    a.acquire([], 0)
    a.evict(7, (), victims)
    a.release([], 0)
    b.acquire([], 0)
    b.evict(7)
    b.release([], 0)
    assert set(a) == set(b) and len(expand(victims)) == 7


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_registered_policy_serves_as_a_tier(policy):
    """Inclusive mode takes any policy of the registry; exclusive mode takes those with the
    capabilities and refuses the others in one line."""
    workload = [(list(range(c * STRIDE, c * STRIDE + n)), n - 1, n + 1) for c, n in
                [(1, 3), (2, 4), (1, 5), (3, 6), (2, 6), (1, 7), (4, 2), (3, 8)]]
    cache = TieredCache(8, 12, 20, policy=policy)
    for request in workload:
        cache.serve(*request)
    assert sum(cache.tier_hits[1:]) > 0
    if supports_tiers(make_policy(policy, capacity_blocks=8)):
        cache = TieredCache(8, 12, 20, policy=policy, mode="exclusive")
        for request in workload:
            cache.serve(*request)
    else:
        with pytest.raises(ValueError, match=r"^exclusive mode needs gpu policy .* to support [^\n]*$"):
            TieredCache(8, 12, 20, policy=policy, mode="exclusive")
