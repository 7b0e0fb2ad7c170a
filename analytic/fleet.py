"""Analytic models of a fleet of N serving instances behind a router, each instance with its own
prefix cache of C_i blocks (the cache of DESIGN.md §3, the workload of §2, the models of §5).

**affinity** (consistent hashing of the conversation id): instance i receives 1/N of the
conversations with all their turns, so it is the single-instance model (``ttl.lru_model`` or
``ttl.fifo_model``, any variant) of the workload at arrival rate lambda/N and capacity C_i.

**random** (each request to a uniformly random instance; LRU only). A conversation's turns
scatter over the instances, and a turn can reuse its conversation's context only where one of its
earlier turns went. Approximation (Che's, as in ``ttl.lru_model``): per instance a characteristic
time T_i; a context is evicted as a whole T_i after its last access; every instance sees 1/N of
the requests, with the same mix. With p = 1/N, blocks as in ``analytic.ttl`` (n_S system blocks,
c'_t conversation blocks of context c_t, h_s blocks reused from the previous context):

* Under LRU a conversation's content at instance i is exactly the context left by its latest
  visit there: later contexts contain earlier ones, and a visit touches or inserts all its
  blocks. Turn s >= 2 last visited its instance j turns back (j = 1..s-1) with probability
  w_j = p (1-p)^(j-1), and never with (1-p)^(s-1). The context of turn t = s-j is still there
  iff the j gaps since then sum to less than T: probability F^{*j}(T) (Erlang, gamma, a step for
  exp, gamma, det think times; a lattice convolution of 1024 cells on [0, T] for the others).
* A surviving context of turn t gives min(floor(c_t/bs), floor((p_s-1)/bs)) = min(floor(c_t/bs),
  h_s) blocks (floor(c_t/bs) <= floor(c_{s-1}/bs)); without one, turn s hits the system blocks
  min(n_S, floor((p_s-1)/bs)).
* Occupancy: the c'_t blocks turn t leaves at its instance stay there until the conversation's
  next served visit to it (j turns later, after S_j = the sum of j gaps) or T if none comes,
  capped at T. With m_j(T) = E[min(S_j, T)] = integral_0^T (1 - F^{*j}(x)) dx and
  sigma_k = 1(turn k is served at this capacity; contexts only grow, so sigma is monotone):
      C_i - n_S = (lambda/N) sum_t [ P(L>=t) E[c'_t sigma_t] T
                                     - sum_{j>=1} w_j P(L>=t+j) E[c'_t sigma_{t+j}] (T - m_j(T)) ].
  The right side increases with T (its slope is at least the content no later visit touches);
  brentq finds the root. With N = 1 (w_1 = 1, no later w_j) this is ``lru_model``'s equation
  C_conv = lambda (K1 m(T) + K2 T).

Deterministic think times make F^{*j}(T) a step in T; random routing has no Gaussian refinement
(its only variant is "che").

Fleet rates: every instance receives 1/N of the requests with the same mix of turns and sizes,
so the fleet's rates are the plain means of the instances' rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, special

from analytic.distributions import ThinkTime
from analytic.plan import METHODS, capacity_for_target, smallest_capacity
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from analytic.ttl import (
    ModelResult,
    _check,
    _nothing_served,
    _table,
    _Table,
    fifo_model,
    lru_model,
    rates,
)

FLEET_ROUTERS = ("affinity", "random")  # the routers that have a model
RANDOM_VARIANT = "che"
REVISIT_TAIL = 1e-12  # revisits j turns back with w_j F^{*j}(T) below this are dropped (see _revisit_survival)
GAP_LATTICE_CELLS = 1024  # cells on [0, T] for F^{*j} and m_j of lognormal and empirical gaps


@dataclass(frozen=True)
class FleetModelResult:
    """Predicted steady state of a fleet (metrics named as in DESIGN.md §4).

    ``per_instance`` holds each instance's ``ModelResult`` (in the order of the capacities). Each
    instance receives 1/N of the requests with the same mix, so the fleet's rates are the plain
    means of the instances' (``per_turn_hit`` too).
    """

    router: str
    method: str
    variant: str
    instances: int
    per_instance: tuple[ModelResult, ...]
    token_hit_rate: float
    request_hit_rate: float
    per_turn_hit: dict[int, float]

    def as_dict(self) -> dict:
        """JSON-ready, like ``ModelResult.as_dict`` (infinities become None)."""
        return {
            "router": self.router,
            "method": self.method,
            "variant": self.variant,
            "instances": self.instances,
            "per_instance": [result.as_dict() for result in self.per_instance],
            "token_hit_rate": self.token_hit_rate,
            "request_hit_rate": self.request_hit_rate,
            "per_turn_hit": dict(self.per_turn_hit),
        }


def _check_router(router, method) -> None:
    if router not in FLEET_ROUTERS:
        raise ValueError(f"router must be one of {', '.join(FLEET_ROUTERS)} (got {router!r})")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if router == "random" and method != "lru":
        raise ValueError(f"method must be lru for router random (got {method!r})")


def fleet_model(
    workload: Workload,
    capacities: Sequence[int],
    router: str,
    method: str = "lru",
    block_size: int = DEFAULT_BLOCK_SIZE,
    variant: str | None = None,
) -> FleetModelResult:
    """Hit rates of N = len(capacities) instances (capacities in blocks) behind ``router``.

    affinity: instance i is ``lru_model``/``fifo_model`` (with ``variant``) at arrival rate
    lambda/N and capacity C_i. random: LRU only, the per-instance Che model of the module
    docstring (variant "che").
    """
    if isinstance(capacities, (str, bytes)) or not isinstance(capacities, Sequence) or not capacities:
        raise ValueError(f"capacities must be a non-empty sequence of whole numbers >= 0 (got {capacities!r})")
    for capacity in capacities:
        check_positive("capacities", capacity, integer=True, allow_zero=True)
    _check_router(router, method)
    _check(workload, capacities[0], block_size)
    instances = len(capacities)
    capacities = [int(c) for c in capacities]
    if router == "affinity":
        share = replace(workload, arrival_rate=workload.arrival_rate / instances)
        single = lru_model if method == "lru" else fifo_model
        # Equal capacities give equal instances: evaluate each distinct capacity once.
        results = {c: single(share, c, block_size, variant) for c in dict.fromkeys(capacities)}
    else:
        if variant not in (None, RANDOM_VARIANT):
            raise ValueError(f"variant must be {RANDOM_VARIANT} or None for router random (got {variant!r})")
        results = {c: _random_instance(workload, c, block_size, instances) for c in dict.fromkeys(capacities)}
    per_instance = tuple(results[c] for c in capacities)
    turns = per_instance[0].per_turn_hit.keys()  # the same on every instance: they depend on the workload only
    return FleetModelResult(
        router=router,
        method=method,
        variant=per_instance[0].variant,
        instances=instances,
        per_instance=per_instance,
        token_hit_rate=float(np.mean([r.token_hit_rate for r in per_instance])),
        request_hit_rate=float(np.mean([r.request_hit_rate for r in per_instance])),
        per_turn_hit={k: float(np.mean([r.per_turn_hit[k] for r in per_instance])) for k in turns},
    )


def capacity_to_match(
    workload: Workload,
    target_token_hit_rate: float,
    instances: int,
    router: str,
    method: str = "lru",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> int:
    """Smallest capacity (blocks, the same on every instance) at which the fleet's token hit rate
    is >= ``target_token_hit_rate``.

    affinity: ``plan.capacity_for_target`` at arrival rate lambda/N. random: the same search
    (double, then bisect on whole blocks; the model does not decrease with capacity) against the
    random router's own ceiling - with unlimited caches a turn still misses when none of its
    earlier turns went to its instance, so targets between that and the no-eviction ceiling are
    out of reach too.
    """
    check_positive("instances", instances, integer=True)
    _check_router(router, method)
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be an analytic.specs.Workload (got {type(workload).__name__})")
    if router == "affinity":
        share = replace(workload, arrival_rate=workload.arrival_rate / instances)
        return capacity_for_target(share, target_token_hit_rate, "token", block_size, method)
    check_positive("block-size", block_size, integer=True)
    target = target_token_hit_rate
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target <= 1):
        raise ValueError(f"target must be a hit rate in (0, 1] (got {target!r})")
    ceiling = _random_ceiling(workload, instances, block_size)
    if target >= ceiling:
        raise ValueError(
            f"target token hit rate {target:.4g} is out of reach for router random over {instances} "
            f"instances: even unlimited caches get {ceiling:.4g} with this workload"
        )

    def reaches(capacity: int) -> bool:
        return _random_instance(workload, capacity, block_size, instances).token_hit_rate >= target

    # 0 blocks hit nothing, and target > 0
    return smallest_capacity(reaches, workload.system_prompt_tokens // block_size, f"token hit rate of {target:.4g}")


# ----------------------------------------------------------------------------- random routing


@dataclass(frozen=True)
class _Revisits:
    """What the random-router model needs of one instance's table, whatever T is.

    j = 1..J: revisits j turns back, J the last j with w_j = p (1-p)^(j-1) >= REVISIT_TAIL (and
    < K). ``weights[j-1]`` = w_j; ``stays`` = sum_t P(L>=t) E[c'_t sigma_t]; ``revisited[j-1]`` =
    sum_t P(L>=t+j) E[c'_t sigma_{t+j}] (the occupancy equation's two sums). Per turn s (row s-1):
    ``token_gain[s-1, j-1]`` = E[sigma_s (blocks the context of turn s-j gives - system blocks)] bs,
    ``any_gain`` the same with 1(blocks > 0); 0 where j >= s.
    """

    weights: np.ndarray
    stays: float
    revisited: np.ndarray
    token_gain: np.ndarray
    any_gain: np.ndarray


def _then_served(table: _Table, x: np.ndarray) -> np.ndarray:
    """M[t, s] = E[x_t sigma_s] (0-based turns) for a per-path quantity x: the table's
    ``new_then_served`` with x in the place of the blocks a hit turn writes."""
    return replace(table, paths=replace(table.paths, new=x)).new_then_served()


def _cap_shortfall(table: _Table, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the prompt-1 cap takes from an older surviving context, (D, Z) of shape (K, K), 0-based
    [s, t], t < s: D = E[sigma_s (full_t - h_s)^+], Z = E[sigma_s 1(full_t > 0 = h_s)].

    h_s = min(full_{s-1}, floor((p_s - 1)/bs)) and p_s >= c_{s-1}, so h_s >= full_{s-1} - 1: the cap
    takes at most one block (only when the prompt adds nothing beyond c_{s-1}'s full blocks), and
    then from exactly the turns t whose context has as many full blocks as c_{s-1}: a run of turns
    ending at s-1, since full_t never decreases. Summed as a difference array along t.
    """
    reuse = table.paths.reuse
    n_paths, K = full.shape
    turn = np.arange(K)
    capped = (reuse[:, 1:] < full[:, :-1]) & (turn[None, 1:] < table.served_turns[:, None])
    grew = np.ones(full.shape, dtype=bool)
    grew[:, 1:] = full[:, 1:] > full[:, :-1]
    run_start = np.maximum.accumulate(np.where(grew, turn, 0), axis=1)
    path, s = np.nonzero(capped)
    s = s + 1
    start = run_start[path, s - 1]
    emptied = reuse[path, s] == 0
    shortfall = np.zeros((2, K, K))
    for which, rows in ((0, slice(None)), (1, emptied)):
        np.add.at(shortfall[which], (s[rows], start[rows]), 1.0)
        np.add.at(shortfall[which], (s[rows], s[rows]), -1.0)  # the run ends at t = s-1
    shortfall = np.cumsum(shortfall, axis=2) / n_paths
    return shortfall[0], shortfall[1]


def _revisits(table: _Table, p: float, block_size: int) -> _Revisits:
    law, paths = table.law, table.paths
    K = law.turns
    j = np.arange(1, K)
    weights = p * (1.0 - p) ** (j - 1)
    weights = weights[weights >= REVISIT_TAIL]
    J = len(weights)
    full = paths.conv + table.system_blocks  # floor(c_t / bs): a context holds the whole system prompt
    conv_then = _then_served(table, paths.conv)
    some_then = _then_served(table, (full > 0).astype(float))
    short_blocks, short_any = _cap_shortfall(table, full)
    s = np.arange(K)[:, None]
    t = s - np.arange(1, J + 1)[None, :]
    valid = t >= 0
    t = np.where(valid, t, 0)
    s = np.broadcast_to(s, t.shape)
    conv = np.where(valid, conv_then[t, s], 0.0)  # E[c'_{s-j} sigma_s]
    reused = conv + table.system_blocks * table.served[s] - short_blocks[s, t]  # E[sigma_s min(full_{s-j}, h_s)]
    some = some_then[t, s] - short_any[s, t]
    return _Revisits(
        weights=weights,
        stays=float(law.reach @ table.conv_served),
        revisited=law.reach @ conv,
        token_gain=np.where(valid, block_size * reused - table.system_tokens[s], 0.0),
        any_gain=np.where(valid, some - table.system_any[s], 0.0),
    )


def _gap_sums(think: ThinkTime, T: float, orders: int) -> tuple[np.ndarray, np.ndarray]:
    """(F^{*j}(T), E[(T - S_j)^+] = T - m_j(T)) for j = 1..orders, S_j the sum of j gaps.

    j = 1 uses the exact F and m (as ``lru_model`` does); j >= 2 closed forms for det, exp and
    gamma (S_j is gamma(k = j/cv^2, scale = mean cv^2): E[S_j; S_j <= T] = j mean F_{k+1}(T)), a
    lattice on [0, T] for the others (stopped where F^{*j}(T) < REVISIT_TAIL; the rest stay 0).
    """
    below, cut = np.zeros(orders), np.zeros(orders)
    if T <= 0 or orders == 0:
        return below, cut
    j = np.arange(2, orders + 1)
    if think.kind == "det":
        below[1:] = j * think.mean <= T
        cut[1:] = np.maximum(T - j * think.mean, 0.0)
    elif think.kind in ("exp", "gamma"):
        shape, scale = j / think.cv**2, think.mean * think.cv**2
        below[1:] = special.gammainc(shape, T / scale)
        cut[1:] = np.maximum(T * below[1:] - j * think.mean * special.gammainc(shape + 1, T / scale), 0.0)
    elif orders >= 2:
        _, lattice = think.convolution_lattice(orders, T, GAP_LATTICE_CELLS, tail=REVISIT_TAIL)
        below[1:] = lattice[2:, -1]
        cut[1:] = np.trapezoid(lattice[2:], dx=T / GAP_LATTICE_CELLS, axis=1)  # integral_0^T F^{*j}
    below[0] = think.cdf(T)
    cut[0] = T - think.limited_mean(T)
    return below, cut


def _revisit_survival(think: ThinkTime, T: float, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w_j F^{*j}(T), E[(T - S_j)^+]) for j = 1..J, both 0 where w_j F^{*j}(T) < REVISIT_TAIL.

    Both factors fall with j. A revisit that unlikely finds its context changes no hit rate, and
    its occupancy term w_j E[(T - S_j)^+] <= w_j F^{*j}(T) T is below REVISIT_TAIL of the T the
    context would otherwise stay: dropping it (the context then stays T) moves T by less than that
    relative amount. It bounds the lattice convolutions by the gaps that can still fall within T.
    """
    below, cut = _gap_sums(think, T, len(weights))
    found = weights * below
    kept = found >= REVISIT_TAIL
    return np.where(kept, found, 0.0), np.where(kept, cut, 0.0)


def _random_occupancy(T: float, rate: float, think: ThinkTime, revisits: _Revisits) -> float:
    """Conversation blocks cached at one instance at characteristic time T (module docstring)."""
    _, cut = _revisit_survival(think, T, revisits.weights)
    return float(rate * (revisits.stays * T - (revisits.weights * revisits.revisited) @ cut))


def _random_characteristic_time(rate: float, think: ThinkTime, revisits: _Revisits, c_conv: float) -> float:
    """The root T of  C_conv = occupancy(T), bracketed as in ``ttl.lru_characteristic_time``.

    occupancy = rate (K2 T + sum_j w_j B_j m_j(T)), K2 = stays - sum_j w_j B_j (content no later
    visit touches), and m_j(T) <= min(T, j E[G]): the root lies in
    [max(C/(rate stays), (C/rate - sum_j w_j B_j j E[G]) / K2), C/(rate K2)].
    """
    if c_conv <= 0:
        return 0.0
    revisited = revisits.weights * revisits.revisited
    untouched = revisits.stays - float(revisited.sum())
    if untouched <= 0:
        return math.inf  # no conversation content: the cache never fills
    target = c_conv / rate
    hi = target / untouched
    orders = np.arange(1, len(revisited) + 1)
    lo = max(target / revisits.stays, (target - float(revisited @ orders) * think.mean) / untouched, 0.0)
    if lo >= hi:
        return hi

    def excess(T):
        return _random_occupancy(T, rate, think, revisits) / rate - target

    if excess(hi) <= 0:
        return hi
    if excess(lo) >= 0:
        return lo
    return optimize.brentq(excess, lo, hi, xtol=1e-12 * hi, rtol=1e-12)


def _random_rates(table: _Table, revisits: _Revisits, found: np.ndarray):
    """(token, request, per_turn, per_turn_context) from ``found[j-1]`` = w_j F^{*j}(T)."""
    hit_tokens = table.system_tokens + revisits.token_gain @ found
    any_hit = table.system_any + revisits.any_gain @ found
    # Turn s reuses one of its own contexts with probability sum_{j < s} w_j F^{*j}(T).
    reused = np.concatenate(([0.0], np.cumsum(found)))[np.minimum(np.arange(table.law.turns), len(found))]
    return rates(table, hit_tokens, any_hit, reused)


def _random_instance(workload: Workload, capacity_blocks: int, block_size: int, instances: int) -> ModelResult:
    """One instance of a fleet of ``instances`` behind the random router (module docstring)."""
    table = _table(workload, block_size, capacity_blocks)
    if table.served[0] == 0:
        return _nothing_served("lru", RANDOM_VARIANT, capacity_blocks, block_size, table)
    revisits = _revisits(table, 1.0 / instances, block_size)
    rate = workload.arrival_rate / instances
    think = workload.think_time
    T = _random_characteristic_time(rate, think, revisits, capacity_blocks - table.system_blocks)
    if math.isinf(T):
        found, occupancy = revisits.weights, float(table.system_blocks)
    else:
        found, _ = _revisit_survival(think, T, revisits.weights)
        occupancy = table.system_blocks + _random_occupancy(T, rate, think, revisits)
    token, request, per_turn, context = _random_rates(table, revisits, found)
    return ModelResult(
        "lru", RANDOM_VARIANT, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size
    )


def _random_ceiling(workload: Workload, instances: int, block_size: int) -> float:
    """Token hit rate of the random router with unlimited caches: every context survives
    (F^{*j} = 1) and no request is oversized, yet a turn misses when none of its earlier turns
    went to its instance."""
    table = _table(workload, block_size, None)
    revisits = _revisits(table, 1.0 / instances, block_size)
    return _random_rates(table, revisits, revisits.weights)[0]
