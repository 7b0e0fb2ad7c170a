"""Analytic models of a fleet of N serving instances behind a router, each instance with its own
prefix cache of C_i blocks (the cache of DESIGN.md §3, the workload of §2, the models of §5).

**affinity** (consistent hashing of the conversation id): instance i receives 1/N of the
conversations with all their turns, so it is the single-instance model (``lru.lru_model`` or
``fifo.fifo_model``, any variant) of the workload at arrival rate lambda/N and capacity C_i.

**random** (each request to a uniformly random instance; LRU only). A conversation's turns
scatter over the instances, and a turn can reuse its conversation's context only where one of its
earlier turns went. Approximation (Che's, as in ``lru.lru_model``): per instance a characteristic
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

Variant "che+gaussian" (the default for deterministic think times, as for ``lru_model``): there
F^{*j}(T) is a step in T, and so is the hit rate in the capacity. Campbell's refinement of
``lru._gaussian_keep``, per instance: the content X(x) the *other* conversations touched at this
instance within a window x - for each, the context of its latest visit here if that is within x
- is compound Poisson (conversations start as a Poisson process), with
      mu(x)  = (lambda/N) sum_t [ P(L>=t) E[c'_t sigma_t] x - sum_j w_j P(L>=t+j) E[c'_t sigma_{t+j}] (x - m_j(x)) ],
      s^2(x) = the same with c'_t^2 (Campbell: E[Y^2] integrated over a conversation's life),
i.e. the occupancy at T = x and its squared twin; X is taken as normal. The tagged
conversation's own turns since its last visit here went elsewhere, so only others touched
anything. LRU evicts a context tail first: the leading y blocks of the c = c'_t blocks left j
turns back, S_j ago, survive iff X(S_j) <= C_conv - y. With a = (C_conv - mu(S_j)) / s(S_j),
psi(z) = z Phi(z) + phi(z):
      P(any)  = E_{S_j}[Phi(a)],   share = E_{S_j}[s (psi(a) - psi(a - c/s))] / c,
      P(all)  = E_{S_j}[Phi(a - c/s)]
(c: the mean of c'_t over the paths that serve turn t). Turn s gains w_j share of what the
context gives beyond the system blocks (tokens), w_j P(any) of any hit, w_j P(all) of a
context hit. E_{S_1} is over ``think.quantile_points`` (as ``lru_model``); E_{S_j}, j >= 2, over
j G (det) or 256 mid-quantiles of S_j given bottom < S_j <= top (the gamma law for exp and
gamma, the lattice for lognormal and empirical), where the windows below bottom surely keep
the context whole and those above top surely lose it (``_gaussian_found``). Since mu(T) =
C_conv, the refinement is a smoothed step around Che's T (still reported, with its occupancy).
With N = 1 it is ``lru_model(variant="che+gaussian")`` (equal to ~1e-15); at large capacity it
is "che" (every S_j below bottom).

Validation (``experiments/fleet.py``: N = 2, 4, 8, fixed/geometric 5 turns, think 30 s,
capacities at 30/60/90% of the ceiling; 18 configurations per think law, 3 x 20k requests each),
token hit rate error in points, mean / max, "che" -> "che+gaussian":
      det         6.06 / 21.31  ->  0.79 / 3.83   (inside the 95% CI: 17% -> 100%)
      gamma cv 0.5  0.40 / 2.00   ->  0.39 / 1.84
      exp         0.27 / 0.68   ->  0.29 / 0.73
      lognormal   0.28 / 0.70   ->  0.30 / 0.73
Only det gains clearly (gamma's largest errors, geometric turns at N = 2, are shared by both),
so the default rule stays ``lru_model``'s: "che+gaussian" for det, "che" otherwise.

Fleet rates: every instance receives 1/N of the requests with the same mix of turns and sizes,
so the fleet's rates are the plain means of the instances' rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import integrate, optimize, special, stats

from analytic.distributions import ThinkTime
from analytic.fifo import fifo_model
from analytic.lru import GAUSS_NODES, LRU_VARIANTS, _lru_variant, lru_model
from analytic.plan import METHODS, capacity_for_target, smallest_capacity
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive
from analytic.ttl import ModelResult, _check, _nothing_served, _table, _Table, normal_survival, rates

FLEET_ROUTERS = ("affinity", "random")  # the routers that have a model
RANDOM_VARIANTS = LRU_VARIANTS  # ("che", "che+gaussian")
REVISIT_TAIL = 1e-12  # revisits j turns back with w_j F^{*j}(T) below this are dropped (see _revisit_survival)
GAP_LATTICE_CELLS = 1024  # cells on [0, T] for F^{*j} and m_j of lognormal and empirical gaps
# Gaussian variant: Phi(-GAUSS_REACH) = REVISIT_TAIL. Windows where the content others touched is
# surely (by this many sd) below C - c or above C find the context whole or not at all.
GAUSS_REACH = float(stats.norm.isf(REVISIT_TAIL))


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


def _random_variant(think: ThinkTime, variant) -> str:
    """As ``lru_model``: "che+gaussian" by default for deterministic think times, else "che"."""
    return _lru_variant(think, variant)


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
    docstring, variant "che" or "che+gaussian" (None: the latter for deterministic think times).
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
        variant = _random_variant(workload.think_time, variant)
        results = {c: _random_instance(workload, c, block_size, instances, variant) for c in dict.fromkeys(capacities)}
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
    with the default variant (double, then bisect on whole blocks; the model does not decrease
    with capacity) against the random router's own ceiling - with unlimited caches a turn still
    misses when none of its earlier turns went to its instance, so targets between that and the
    no-eviction ceiling are out of reach too ("che+gaussian" tends to the same ceiling).
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

    variant = _random_variant(workload.think_time, None)

    def reaches(capacity: int) -> bool:
        return _random_instance(workload, capacity, block_size, instances, variant).token_hit_rate >= target

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
    ``any_gain`` the same with 1(blocks > 0); 0 where j >= s. ``stays_sq`` and ``revisited_sq``:
    the two sums with c'_t^2 (the Gaussian variant's variance; None unless asked for).
    """

    weights: np.ndarray
    stays: float
    revisited: np.ndarray
    token_gain: np.ndarray
    any_gain: np.ndarray
    stays_sq: float | None = None
    revisited_sq: np.ndarray | None = None

    def first(self, orders: int) -> _Revisits:
        """The revisits j = 1..orders only: the others are dropped (as below REVISIT_TAIL)."""
        return replace(
            self,
            weights=self.weights[:orders],
            revisited=self.revisited[:orders],
            token_gain=self.token_gain[:, :orders],
            any_gain=self.any_gain[:, :orders],
            revisited_sq=None if self.revisited_sq is None else self.revisited_sq[:orders],
        )


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


def _revisits(table: _Table, p: float, block_size: int, square: bool = False) -> _Revisits:
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
    squared = {}
    if square:
        conv_sq = np.where(valid, _then_served(table, paths.conv**2)[t, s], 0.0)  # E[c'_{s-j}^2 sigma_s]
        squared = {"stays_sq": float(law.reach @ table.conv2_served), "revisited_sq": law.reach @ conv_sq}
    return _Revisits(
        weights=weights,
        stays=float(law.reach @ table.conv_served),
        revisited=law.reach @ conv,
        token_gain=np.where(valid, block_size * reused - table.system_tokens[s], 0.0),
        any_gain=np.where(valid, some - table.system_any[s], 0.0),
        **squared,
    )


def _interpolate(rows: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Each row (a function on lattice points 0, 1, ...) at fractional positions, linearly."""
    i = np.clip(np.floor(position).astype(int), 0, rows.shape[1] - 2)
    frac = position - i
    return rows[:, i] * (1.0 - frac) + rows[:, i + 1] * frac


def _gap_sums(think: ThinkTime, T, orders: int) -> tuple[np.ndarray, np.ndarray]:
    """(F^{*j}(x), E[(x - S_j)^+] = x - m_j(x)) for j = 1..orders, S_j the sum of j gaps, at each
    x of ``T`` (a number or a 1-D array: shapes (orders,) + shape of T).

    j = 1 uses the exact F and m (as ``lru_model`` does); j >= 2 closed forms for det, exp and
    gamma (S_j is gamma(k = j/cv^2, scale = mean cv^2): E[S_j; S_j <= x] = j mean F_{k+1}(x)), a
    lattice on [0, max x] for the others (stopped where F^{*j}(max x) < REVISIT_TAIL; the rest
    stay 0), linear between its points.
    """
    x = np.atleast_1d(np.asarray(T, dtype=float))
    below, cut = np.zeros((orders, x.size)), np.zeros((orders, x.size))
    live = x > 0
    if orders and live.any():
        y = x[live]
        j = np.arange(2, orders + 1)[:, None]
        if think.kind == "det":
            below[1:, live] = j * think.mean <= y
            cut[1:, live] = np.maximum(y - j * think.mean, 0.0)
        elif think.kind in ("exp", "gamma"):
            shape, scale = j / think.cv**2, think.mean * think.cv**2
            below[1:, live] = special.gammainc(shape, y / scale)
            within = j * think.mean * special.gammainc(shape + 1, y / scale)  # E[S_j; S_j <= x]
            cut[1:, live] = np.maximum(y * below[1:, live] - within, 0.0)
        elif orders >= 2:
            top = float(y.max())
            cell = top / GAP_LATTICE_CELLS
            _, lattice = think.convolution_lattice(orders, top, GAP_LATTICE_CELLS, tail=REVISIT_TAIL)
            below[1:, live] = _interpolate(lattice[2:], y / cell)
            integral = integrate.cumulative_trapezoid(lattice[2:], dx=cell, axis=1, initial=0.0)  # of F^{*j}
            cut[1:, live] = _interpolate(integral, y / cell)
        below[0, live] = think.cdf(y)
        cut[0, live] = y - think.limited_means(y)
    shape = (orders,) + np.shape(T)
    return below.reshape(shape), cut.reshape(shape)


def _revisit_survival(think: ThinkTime, T, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w_j F^{*j}(T), E[(T - S_j)^+]) for j = 1..J (and each T of an array), both 0 where
    w_j F^{*j}(T) < REVISIT_TAIL.

    Both factors fall with j. A revisit that unlikely finds its context changes no hit rate, and
    its occupancy term w_j E[(T - S_j)^+] <= w_j F^{*j}(T) T is below REVISIT_TAIL of the T the
    context would otherwise stay: dropping it (the context then stays T) moves T by less than that
    relative amount. It bounds the lattice convolutions by the gaps that can still fall within T.
    """
    below, cut = _gap_sums(think, T, len(weights))
    found = weights.reshape(weights.shape + (1,) * np.ndim(T)) * below
    kept = found >= REVISIT_TAIL
    return np.where(kept, found, 0.0), np.where(kept, cut, 0.0)


def _random_occupancy(T, rate: float, think: ThinkTime, revisits: _Revisits, square: bool = False):
    """Conversation blocks cached at one instance at characteristic time T (module docstring), for
    a number or an array of T. With ``square``, the same sum of squared contexts: the variance of
    the content touched within T (Campbell; the Gaussian variant)."""
    _, cut = _revisit_survival(think, T, revisits.weights)
    stays, revisited = (revisits.stays_sq, revisits.revisited_sq) if square else (revisits.stays, revisits.revisited)
    content = rate * (stays * np.asarray(T) - (revisits.weights * revisited) @ cut)
    return float(content) if np.ndim(T) == 0 else content


def _random_characteristic_time(rate: float, think: ThinkTime, revisits: _Revisits, c_conv: float) -> float:
    """The root T of  C_conv = occupancy(T), bracketed as in ``lru.lru_characteristic_time``.

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


def _sum_nodes(think: ThinkTime, weights: np.ndarray, bottom: float, top: float):
    """Quadrature of E[h(S_j)] for the revisits that may find their context, for an h that is 1
    below ``bottom`` and 0 above ``top`` (to REVISIT_TAIL): (x, mass, owner, sure, J), with
    E[h(S_j)] ~ sure[j-1] + the sum of mass h(x) over the nodes whose owner is j-1.

    J: the revisits j = 1.. with w_j P(S_j <= top) >= REVISIT_TAIL (both factors fall with j).
    S_1 = G: ``think.quantile_points``, sure = 0 (as ``lru._gaussian_keep``). S_j, j >= 2:
    sure = P(S_j <= bottom); GAUSS_NODES mid-quantiles of S_j given bottom < S_j <= top, each of
    mass P(bottom < S_j <= top) / GAUSS_NODES (the gamma(j/cv^2) law for exp and gamma, the
    lattice of [0, top] for lognormal and empirical), or j G for det (when within); no nodes
    where w_j P(bottom < S_j <= top) < REVISIT_TAIL.
    """
    below, _ = _gap_sums(think, np.array([bottom, top]), len(weights))
    reach = weights * below[:, 1] >= REVISIT_TAIL
    orders = len(reach) if reach.all() else int(reach.argmin())
    first = think.quantile_points(GAUSS_NODES)
    xs, masses, owners = [first], [np.full(first.size, 1.0 / first.size)], [np.zeros(first.size, dtype=int)]
    sure = np.zeros(orders)
    if orders >= 2:
        j = np.arange(2, orders + 1)[:, None]
        lo, hi = below[1:orders, :1], below[1:orders, 1:]  # P(S_j <= bottom), P(S_j <= top)
        probs = (np.arange(GAUSS_NODES) + 0.5) / GAUSS_NODES
        if think.kind == "det":
            x = j * think.mean
        elif think.kind in ("exp", "gamma"):
            x = special.gammaincinv(j / think.cv**2, lo + (hi - lo) * probs) * think.mean * think.cv**2
        else:
            _, lattice = think.convolution_lattice(orders, top, GAP_LATTICE_CELLS)
            grid = np.linspace(0.0, top, GAP_LATTICE_CELLS + 1)
            cdfs = lattice[2:]  # P(S_j < x) on the grid
            lo, hi = np.array([[np.interp(bottom, grid, cdf)] for cdf in cdfs]), cdfs[:, -1:]
            x = np.array([np.interp(a + (b - a) * probs, cdf, grid) for a, b, cdf in zip(lo[:, 0], hi[:, 0], cdfs)])
        sure[1:] = lo[:, 0]
        between = np.broadcast_to((hi - lo) / x.shape[1], x.shape)
        for row in np.nonzero(weights[1:orders] * (hi - lo)[:, 0] >= REVISIT_TAIL)[0]:
            xs.append(x[row])
            masses.append(between[row])
            owners.append(np.full(x.shape[1], row + 1))
    return np.concatenate(xs), np.concatenate(masses), np.concatenate(owners), sure, orders


def _gaussian_found(rate: float, think: ThinkTime, table: _Table, revisits: _Revisits, T: float, c_conv: float):
    """The Gaussian variant's survival of the context c = c'_{s-j} that turn s finds at its
    instance, left by its last visit there j turns back, a sum of j gaps S_j ago (module
    docstring): (revisits kept, found, share, full), the last three of shape (K, J) [s-1, j-1]:
    w_j E_{S_j}[Phi(a)], w_j E_{S_j}[s (psi(a) - psi(a - c/s))] / c, w_j E_{S_j}[Phi(a - c/s)],
    a = (C_conv - mu(S_j)) / s(S_j), mu and s^2 the occupancy and its squared twin at S_j.

    With mu(x) <= rate P x and s^2(x) <= rate Q x (P, Q: the sums of c'_t and c'_t^2, each
    counted for the whole window) and mu(x) - C >= rate K2 (x - T) (the occupancy's slope is at
    least the content no later visit touches, K2, and mu(T) = C): below ``bottom``, the root of
    C - max c - rate P x = GAUSS_REACH sqrt(rate Q x), every context survives whole, and beyond
    ``top``, the root of rate K2 (x - T) = GAUSS_REACH sqrt(rate Q x), nothing survives (both to
    REVISIT_TAIL); ``_sum_nodes`` places the nodes in between.
    """
    context = table.conv_served / np.maximum(table.served, 1e-300)  # c'_t over the paths that serve turn t
    untouched = revisits.stays - float(revisits.weights @ revisits.revisited)
    spread = GAUSS_REACH * math.sqrt(rate * revisits.stays_sq)

    def root(slope, linear, constant):  # sqrt x of the positive root of slope x + linear sqrt(x) = constant
        return (math.sqrt(linear**2 + 4 * slope * constant) - linear) / (2 * slope)

    room = c_conv - float(context.max())
    bottom = root(rate * revisits.stays, spread, room) ** 2 if room > 0 else 0.0
    top = root(rate * untouched, -spread, rate * untouched * T) ** 2
    x, mass, owner, sure, orders = _sum_nodes(think, revisits.weights, bottom, top)
    revisits = revisits.first(orders)
    K = table.law.turns
    if orders == 0:
        return revisits, *(np.zeros((K, 0)),) * 3
    mu = _random_occupancy(x, rate, think, revisits)
    sd = np.sqrt(np.maximum(_random_occupancy(x, rate, think, revisits, square=True), 0.0))[:, None]
    any_node, kept, full_node = normal_survival(c_conv, mu[:, None], sd, context[None, :])
    first = np.flatnonzero(np.diff(owner, prepend=-1))  # each revisit's first node

    def expect(values):  # E over S_j of each column, [j-1, ...]: 1 below bottom, the nodes above
        out = np.zeros((orders, values.shape[1]))
        out[owner[first]] = np.add.reduceat(mass[:, None] * values, first, axis=0)
        return sure[:, None] + out

    any_ = expect(any_node)[:, 0]
    full = expect(full_node)  # [j-1, t]
    share = np.clip(np.where(context > 0, expect(kept / np.maximum(context, 1e-300)), any_[:, None]), 0.0, 1.0)
    back = np.arange(orders)[None, :]  # j - 1
    t = np.maximum(np.arange(K)[:, None] - back - 1, 0)  # turn s-j, 0-based (only t >= 0 counts)
    w = revisits.weights
    return revisits, np.broadcast_to(w * any_, (K, orders)), w * share[back, t], w * full[back, t]


def _random_rates(table: _Table, revisits: _Revisits, found: np.ndarray, share=None, full=None):
    """(token, request, per_turn, per_turn_context) from what turn s finds of the context of turn
    s-j when it revisits its instance: ``found[..., j-1]`` = w_j P(any of it survives) - w_j F^{*j}(T)
    for every turn ("che", a vector), or per turn (rows s-1, the Gaussian variant); ``share`` and
    ``full`` w_j times its expected surviving share and P(all of it survives) (default: found,
    whole contexts)."""
    K, J = revisits.token_gain.shape
    valid = np.arange(1, J + 1)[None, :] <= np.arange(K)[:, None]  # turn s revisits j <= s-1 turns back
    found = np.where(valid, found, 0.0)
    share = found if share is None else np.where(valid, share, 0.0)
    full = found if full is None else np.where(valid, full, 0.0)
    hit_tokens = table.system_tokens + (revisits.token_gain * share).sum(axis=1)
    any_hit = table.system_any + (revisits.any_gain * found).sum(axis=1)
    return rates(table, hit_tokens, any_hit, full.sum(axis=1))


def _random_instance(
    workload: Workload, capacity_blocks: int, block_size: int, instances: int, variant: str
) -> ModelResult:
    """One instance of a fleet of ``instances`` behind the random router (module docstring)."""
    table = _table(workload, block_size, capacity_blocks)
    if table.served[0] == 0:
        return _nothing_served("lru", variant, capacity_blocks, block_size, table)
    revisits = _revisits(table, 1.0 / instances, block_size, square=variant == "che+gaussian")
    rate = workload.arrival_rate / instances
    think = workload.think_time
    c_conv = capacity_blocks - table.system_blocks
    T = _random_characteristic_time(rate, think, revisits, c_conv)
    share = full = None
    if math.isinf(T):
        found, occupancy = revisits.weights, float(table.system_blocks)
    else:
        occupancy = table.system_blocks + _random_occupancy(T, rate, think, revisits)
        if variant == "che+gaussian" and c_conv > 0:
            revisits, found, share, full = _gaussian_found(rate, think, table, revisits, T, c_conv)
        else:
            found, _ = _revisit_survival(think, T, revisits.weights)
    token, request, per_turn, context = _random_rates(table, revisits, found, share, full)
    return ModelResult("lru", variant, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


def _random_ceiling(workload: Workload, instances: int, block_size: int) -> float:
    """Token hit rate of the random router with unlimited caches: every context survives
    (F^{*j} = 1) and no request is oversized, yet a turn misses when none of its earlier turns
    went to its instance."""
    table = _table(workload, block_size, None)
    revisits = _revisits(table, 1.0 / instances, block_size)
    return _random_rates(table, revisits, revisits.weights)[0]
