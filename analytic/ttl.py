"""Characteristic-time (TTL) models of the prefix-cache hit rate under LRU and FIFO (DESIGN.md §5).

What is modelled is exactly the simulator's cache (DESIGN.md §3), at the level of whole blocks of
``bs`` tokens. Per conversation (L turns, context c_0 = S, prompt p_k = c_{k-1} + u_k, context
c_k = p_k + r_k):

* n_S = floor(S/bs) system blocks are shared by every conversation and always cached: with zero
  service time every allocation is made by a request that holds them, so no policy can evict
  them. The other full blocks of c_k, c'_k = floor(c_k/bs) - n_S, belong to the conversation.
  Everything below counts blocks, so the block rounding is exact.
* Turn k whose predecessor's context survived hits h_k = min(floor(c_{k-1}/bs), floor((p_k-1)/bs))
  blocks (vLLM computes at least one prompt token); otherwise it hits the system blocks,
  min(n_S, floor((p_k-1)/bs)). Turn 1 always gets the latter.
* A request needing more than ``capacity_blocks`` blocks (ceil(c_k/bs)) is served uncached: it
  hits nothing and caches nothing ("oversized"); since contexts only grow, so are the later turns.

Token counts drawn from a distribution are handled by averaging over ``SIZE_PATHS`` sampled
per-conversation size paths (fewer for very long turn supports; seeded; each turn's column
shifted to the exact mean). The models are linear in every per-turn size quantity and sizes are
independent of think times and of L, so this average is the exact expectation up to sampling
noise (the Gaussian refinement's partial-survival term uses the mean context instead). Fixed
token counts use one exact path.

FIFO with deterministic think times has several fixed points (the cache is bistable between
patterns of hits); its default variant averages over the stationary law of the fluctuating FIFO
horizon instead (``fifo_model``, ``_horizon_law``).

Turn counts enter through P(L >= k) over ``TurnCount.support``; for fixed sizes and fixed or
geometric L without oversized turns, the LRU equation's two sums have closed forms
(``closed_form_sums``; the tests check them against the sums over the support).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy import optimize, signal, special

from analytic.distributions import ThinkTime
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive

LRU_VARIANTS = ("che", "che+gaussian")
FIFO_VARIANTS = ("che", "che+gaussian")
SIZE_PATHS = 2000  # sampled size paths when token counts are drawn ...
SIZE_CELLS = 400_000  # ... fewer when the turn support is long: at most this many (path, turn) cells
MIN_SIZE_PATHS = 400
SIZE_SEED = 20_250_611
REPORT_REACH = 1e-6  # per-turn dicts list the turns a conversation reaches with at least this probability
LATTICE_CELLS = 256  # cells on [0, T_F] for the FIFO overlap term (a small correction: see fifo_model)
CONVOLUTION_TAIL = 1e-13  # F^{*n}(T) below this counts as 0 (longer hit runs are impossible)
GAUSS_NODES = 256  # quantile nodes for E_G[...] in the Gaussian refinement
# FIFO with deterministic gaps: quadrature of the horizon density (see _horizon_law)
HORIZON_NODES = np.polynomial.legendre.leggauss(8)  # Gauss-Legendre nodes per segment
HORIZON_STEPS = np.array([0.0, 0.5, 1, 1.5, 2, 3, 4, 6, 9, 14, 22, 35])  # segment ends, in local scales
HORIZON_TAIL = 60.0  # the density is followed until it has dropped by e^-60


@dataclass(frozen=True)
class ModelResult:
    """Predicted steady state of one cache policy at one capacity (metrics named as in DESIGN.md §4).

    ``per_turn_hit[k]`` = P(turn k has hit_tokens > 0), for turns k >= 2 (and turn 1 when the
    system prompt has a full block). ``per_turn_context_hit[k]`` = P(turn k reuses its
    conversation's previous context), k >= 2 - what the TTL models predict directly.
    ``characteristic_time`` is T (LRU) or T_F (FIFO) in seconds (inf: nothing is ever evicted).
    """

    method: str
    variant: str
    characteristic_time: float
    per_turn_hit: dict[int, float]
    request_hit_rate: float
    token_hit_rate: float
    mean_occupancy_blocks: float
    per_turn_context_hit: dict[int, float] = field(default_factory=dict)
    capacity_blocks: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE

    def as_dict(self) -> dict:
        """JSON-ready: infinities become None."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {k: clean(v) for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------- turns and sizes


@dataclass(frozen=True)
class _TurnLaw:
    """P(L = k), P(L >= k), P(L > k) for k = 1..K (index k-1)."""

    last: np.ndarray
    reach: np.ndarray
    more: np.ndarray

    @property
    def turns(self) -> int:
        return len(self.last)

    @property
    def mean(self) -> float:
        return float(self.reach.sum())


@lru_cache(maxsize=64)
def _turn_law(turns) -> _TurnLaw:
    values, probs = turns.support
    last = np.zeros(int(values.max()))
    np.add.at(last, values - 1, probs)
    last /= last.sum()
    reach = np.cumsum(last[::-1])[::-1]
    more = np.append(reach[1:], 0.0)
    return _TurnLaw(last, reach, more)


@dataclass(frozen=True)
class _SizePaths:
    """Per-path, per-turn block quantities (arrays of shape (paths, K))."""

    system_blocks: int
    prompt: np.ndarray  # p_k, tokens
    need: np.ndarray  # ceil(c_k / bs): blocks the request holds while served
    conv: np.ndarray  # c'_k = floor(c_k / bs) - n_S
    reuse: np.ndarray  # h_k: blocks hit when the previous context survived
    system: np.ndarray  # blocks hit when it did not (the system prompt)
    new: np.ndarray  # conversation blocks a hit turn inserts
    fixed: bool
    all_served: dict = field(default_factory=dict, compare=False)  # _TABLE_FIELDS with every turn served

    def quantity(self, name: str) -> np.ndarray:
        if name == "one":
            return np.ones_like(self.conv)
        if name == "conv2":
            return self.conv**2
        if name.endswith("_any"):
            return (getattr(self, name[:-4]) > 0).astype(float)
        return getattr(self, name)


@lru_cache(maxsize=32)
def _size_paths(input_tokens, output_tokens, system_prompt_tokens: int, block_size: int, turns: int):
    """Keyed on what sizes depend on only: changing the rate or think time reuses the paths."""
    bs = block_size
    fixed = input_tokens.is_fixed and output_tokens.is_fixed
    paths = 1 if fixed else max(MIN_SIZE_PATHS, min(SIZE_PATHS, SIZE_CELLS // turns))
    rng = np.random.default_rng(SIZE_SEED)

    def draw(tokens):
        if tokens.is_fixed:
            return np.full((paths, turns), float(tokens.mean))
        x = tokens.sample(rng, paths * turns).reshape(paths, turns).astype(float)
        # Centre each turn's column on the exact mean: removes most of the sampling noise in
        # the (linear) expectations; what is left is noise in the rounding corrections.
        return np.clip(x + (tokens.mean - x.mean(axis=0)), 0.0, None)

    u = draw(input_tokens)
    r = draw(output_tokens)
    S = system_prompt_tokens
    n_s = S // bs
    context = S + np.cumsum(u + r, axis=1)
    before = np.concatenate([np.full((paths, 1), float(S)), context[:, :-1]], axis=1)
    prompt = before + u
    full = np.floor(context / bs)
    full_before = np.floor(before / bs)
    cap = np.floor(np.maximum(prompt - 1, 0) / bs)  # vLLM: at least one prompt token is computed
    reuse = np.minimum(full_before, cap)
    system = np.minimum(n_s, cap)
    conv = np.maximum(full - n_s, 0)
    new = np.maximum(full - np.maximum(reuse, n_s), 0)
    paths_ = _SizePaths(n_s, prompt, np.ceil(context / bs), conv, reuse, system, new, fixed)
    for name, (quantity, weight) in _TABLE_FIELDS.items():
        mean = paths_.quantity(quantity).mean(axis=0)
        # Every turn served: sigma_{k+1} = 1 except after the last turn of the support.
        if weight == "next":
            mean = np.append(mean[:-1], 0.0)
        elif weight == "stop":
            mean = np.append(np.zeros(turns - 1), mean[-1])
        paths_.all_served[name] = mean
    return paths_


# Per-turn expectations of a _Table, each E[x_k * (a weight made of sigma_k, sigma_{k+1})].
_TABLE_FIELDS = {
    # name: (path quantity, weight)  weight: "k" = sigma_k, "next" = sigma_{k+1},
    #                                "stop" = sigma_k (1 - sigma_{k+1})
    "served": ("one", "k"),
    "reuse_tokens": ("reuse", "k"),
    "system_tokens": ("system", "k"),
    "reuse_any": ("reuse_any", "k"),
    "system_any": ("system_any", "k"),
    "conv_follow": ("conv", "next"),
    "conv_stop": ("conv", "stop"),
    "conv_served": ("conv", "k"),
    "conv2_follow": ("conv2", "next"),
    "conv2_stop": ("conv2", "stop"),
    "conv2_served": ("conv2", "k"),
    "new_served": ("new", "k"),
}


@dataclass(frozen=True)
class _Table:
    """Per-turn expectations (index k-1) at one capacity; sigma_k = 1(turn k is served).

    prompt = E[p_k] (every request counts in the denominator, oversized or not); served =
    E[sigma_k]; reuse_tokens / system_tokens = E[sigma_k h_k] bs / E[sigma_k min(n_S, cap)] bs;
    *_any = the same with 1(... > 0); conv_follow = E[c'_k sigma_{k+1}] (context followed by a
    served turn), conv_stop = E[c'_k sigma_k (1 - sigma_{k+1})] (next turn oversized),
    conv_served = E[c'_k sigma_k]; conv2_* the same with c'_k^2; new_served = E[new_k sigma_k].
    """

    law: _TurnLaw
    system_blocks: int
    prompt: np.ndarray
    served: np.ndarray
    reuse_tokens: np.ndarray
    system_tokens: np.ndarray
    reuse_any: np.ndarray
    system_any: np.ndarray
    conv_follow: np.ndarray
    conv_stop: np.ndarray
    conv_served: np.ndarray
    conv2_follow: np.ndarray
    conv2_stop: np.ndarray
    conv2_served: np.ndarray
    new_served: np.ndarray
    paths: _SizePaths
    served_turns: np.ndarray  # per path: sigma_k = 1(k <= served_turns), contexts only grow

    def sums(self, square: bool = False) -> tuple[float, float]:
        """(K1, K2): E[sum_{k<L} c'_k] over turns followed by a served turn, and E[c' of the last
        served turn] - the content that stays min(G, T) resp. T in the LRU equation."""
        law = self.law
        follow, stop, served = (
            (self.conv2_follow, self.conv2_stop, self.conv2_served)
            if square
            else (self.conv_follow, self.conv_stop, self.conv_served)
        )
        k1 = float(law.more @ follow)
        k2 = float(law.last @ served + law.more @ stop)
        return k1, k2

    def new_then_served(self) -> np.ndarray:
        """M[i, j] = E[new_i sigma_j] (0-based turns): a run written at hit turn i, turn j served."""
        new = self.paths.new
        K = self.law.turns
        count = self.served_turns
        if self.paths.fixed:
            return np.outer(new[0], np.arange(K) < count[0])
        # E[new_i 1(count >= j+1)]: sort the paths by count; a prefix sum gives each tail.
        order = np.argsort(count, kind="stable")
        prefix = np.concatenate([np.zeros((1, K)), np.cumsum(new[order], axis=0)])
        first = np.searchsorted(count[order], np.arange(1, K + 1), side="left")
        return ((prefix[-1] - prefix[first]) / len(count)).T


def _table(workload: Workload, block_size: int, capacity_blocks: float | None) -> _Table:
    law = _turn_law(workload.turns)
    p = _size_paths(
        workload.input_tokens, workload.output_tokens, workload.system_prompt_tokens, block_size, law.turns
    )
    K = law.turns
    if capacity_blocks is None:
        count = np.full(p.need.shape[0], K)
    else:
        count = (p.need <= capacity_blocks).sum(axis=1)
    lo, hi = int(count.min()), int(count.max())
    # Columns 0..lo-2 have sigma_k = sigma_{k+1} = 1 on every path (the cached all-served means);
    # columns >= hi have sigma_k = 0; only the columns in between are averaged path by path.
    a, b = max(lo - 1, 0), hi
    values = {}
    for name, (quantity, weight) in _TABLE_FIELDS.items():
        column = np.zeros(K)
        column[:a] = p.all_served[name][:a]
        if b > a:
            x = p.quantity(quantity)[:, a:b]
            k = np.arange(a, b)[None, :]
            this = k < count[:, None]
            after = (k + 1) < count[:, None]
            w = {"k": this, "next": after, "stop": this & ~after}[weight]
            column[a:b] = (x * w).mean(axis=0)
        values[name] = column
    values["reuse_tokens"] *= block_size
    values["system_tokens"] *= block_size
    return _Table(law=law, system_blocks=p.system_blocks, prompt=p.prompt.mean(axis=0), paths=p,
                  served_turns=count, **values)  # fmt: skip


def closed_form_sums(workload: Workload, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[float, float] | None:
    """(K1, K2) = (E[sum_{k=1}^{L-1} c'_k], E[c'_L]) in blocks, in closed form, or None if none applies.

    Applies to fixed token counts (s = u + r per turn) with fixed or geometric L, no turn
    oversized. c'_k = floor((S + k s)/bs) - n_S is linear plus periodic: with P = bs/gcd(s, bs)
    and D = s P / bs, c'_{k+P} = c'_k + D. Hence
      fixed L = n + 1, n = a P + rho:  K1 = a sum_{j<=P} c'_j + D P a(a-1)/2 + sum_{j<=rho} (c'_j + a D),
                                       K2 = c'_L;
      geometric, continuation q:       K1 = sum_k q^k c'_k = sum_{j<=P} q^j (c'_j/(1-q^P) + D q^P/(1-q^P)^2),
                                       K2 = sum_k (1-q) q^{k-1} c'_k = (1-q)/q K1.
    Without rounding (S = 0, bs | s) these are DESIGN's s L(L-1)/2 and s L, resp. s q/(1-q)^2 and
    s/(1-q) = s E[L] (in blocks).
    """
    if not (workload.input_tokens.is_fixed and workload.output_tokens.is_fixed):
        return None
    turns = workload.turns
    if turns.kind not in ("fixed", "geometric"):
        return None
    bs = block_size
    s = int(workload.input_tokens.mean + workload.output_tokens.mean)
    S = workload.system_prompt_tokens
    n_s = S // bs
    period = bs // math.gcd(s, bs) if s else 1
    step = s * period // bs

    def conv(k):
        return np.maximum((S + np.asarray(k) * s) // bs - n_s, 0)

    head = conv(np.arange(1, period + 1)).astype(float)
    if turns.kind == "fixed":
        L = int(turns.mean)
        a, rho = divmod(L - 1, period)
        k1 = a * head.sum() + step * period * a * (a - 1) / 2 + head[:rho].sum() + rho * a * step
        return float(k1), float(conv(L))
    q = turns.continuation
    if q == 0:
        return 0.0, float(conv(1))
    j = np.arange(1, period + 1)
    qp = q**period
    k1 = float(np.sum(q**j * (head / (1 - qp) + step * qp / (1 - qp) ** 2)))
    return k1, (1 - q) / q * k1


# ----------------------------------------------------------------------------- shared pieces


def _check(workload: Workload, capacity_blocks, block_size) -> None:
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be an analytic.specs.Workload (got {type(workload).__name__})")
    check_positive("capacity-blocks", capacity_blocks, integer=True, allow_zero=True)
    check_positive("block-size", block_size, integer=True)


def _metrics(table: _Table, keep_any: np.ndarray, keep_share=None, keep_full=None):
    """Hit rates from what survives of each turn's previous context (arrays over turns, index k-1;
    turn 1's entry is unused: it only ever has the system prompt to hit).

    ``keep_any`` = P(its leading block survives), ``keep_share`` = expected surviving share of it
    (a partial survival hits a leading part), ``keep_full`` = P(all of it survives); the last two
    default to the first (whole contexts evicted at once). A surviving context gives h_k blocks,
    a lost one the system blocks.
    """
    law = table.law
    share = keep_any if keep_share is None else keep_share
    full = keep_any if keep_full is None else keep_full
    keep_any, share, full = (np.where(np.arange(law.turns) == 0, 0.0, x) for x in (keep_any, share, full))
    hit_tokens = table.system_tokens + share * (table.reuse_tokens - table.system_tokens)
    any_hit = table.system_any + keep_any * (table.reuse_any - table.system_any)
    return rates(table, hit_tokens, any_hit, full)


def rates(table: _Table, hit_tokens: np.ndarray, any_hit: np.ndarray, context_kept: np.ndarray):
    """(token hit rate, request hit rate, per-turn hit, per-turn context hit) from the expected
    hit tokens, P(any hit) and P(the turn's previous context is found) per turn."""
    law = table.law
    token = float(law.reach @ hit_tokens) / float(law.reach @ table.prompt)
    request = float(law.reach @ any_hit) / law.mean
    shown = np.nonzero(law.reach >= REPORT_REACH)[0]
    first = 0 if table.system_blocks >= 1 else 1
    per_turn = {int(k + 1): float(any_hit[k]) for k in shown if k >= first}
    context = {int(k + 1): float(context_kept[k] * table.served[k]) for k in shown if k >= 1}
    return token, request, per_turn, context


def _nothing_served(method: str, variant: str, capacity_blocks, block_size, table: _Table) -> ModelResult:
    law = table.law
    shown = np.nonzero(law.reach >= REPORT_REACH)[0]
    first = 0 if table.system_blocks >= 1 else 1
    return ModelResult(
        method, variant, 0.0, {int(k + 1): 0.0 for k in shown if k >= first}, 0.0, 0.0, 0.0,
        {int(k + 1): 0.0 for k in shown if k >= 1}, capacity_blocks, block_size,
    )  # fmt: skip


# ----------------------------------------------------------------------------- LRU


def _lru_variant(think: ThinkTime, variant) -> str:
    if variant is None:
        # F(T) of a deterministic think time is a step; the Gaussian refinement smooths it.
        return "che+gaussian" if think.deterministic else "che"
    if variant not in LRU_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LRU_VARIANTS)} or None (got {variant!r})")
    return variant


def lru_characteristic_time(rate: float, think: ThinkTime, k1: float, k2: float, c_conv: float) -> float:
    """The root T of  C_conv = rate * (K1 m(T) + K2 T)  (blocks; DESIGN.md §5).

    The right side is 0 at T = 0, continuous and strictly increasing (K2 > 0), and grows without
    bound through K2 T, so the root exists and is unique for C_conv > 0. Since m(T) <= min(T, E[G]),
    it lies in [max(C/(rate (K1+K2)), (C/rate - K1 E[G])/K2), C/(rate K2)] - brentq's bracket.
    """
    if c_conv <= 0:
        return 0.0
    if k2 <= 0:
        return math.inf  # no conversation content: the cache never fills
    target = c_conv / rate
    hi = target / k2
    lo = max(target / (k1 + k2), (target - k1 * think.mean) / k2, 0.0)
    if lo >= hi:
        return hi

    def excess(T):
        return k1 * think.limited_mean(T) + k2 * T - target

    if excess(hi) <= 0:
        return hi
    if excess(lo) >= 0:
        return lo
    return optimize.brentq(excess, lo, hi, xtol=1e-12 * hi, rtol=1e-12)


def _gaussian_keep(rate, think: ThinkTime, table: _Table, c_conv: float):
    """Campbell refinement of LRU survival, per turn: (P(any), expected share, P(all)) of the
    previous context c (blocks) still cached when the next request comes, a gap G later.

    The content the other conversations touched within x is compound Poisson (each contributes
    its current context c'_k for min(G_k, x), resp. x after its last turn) with mean
    mu(x) = rate (K1 m(x) + K2 x) and variance s^2(x) = rate (K1sq m(x) + K2sq x); it is taken as
    normal. LRU evicts a context tail first, so its leading y blocks survive iff X <= C - y:
      P(any)  = E_G[Phi(a)],  a = (C - mu(G)) / s(G)           (DESIGN.md §5)
      share   = E_G[s (psi(a) - psi(a - c/s))] / c,  psi(z) = z Phi(z) + phi(z)  (= E[clip(C-X, 0, c)]/c)
      P(all)  = E_G[Phi(a - c/s)].
    With drawn token counts c is the turn's mean context.
    """
    k1, k2 = table.sums()
    k1sq, k2sq = table.sums(square=True)
    x = think.quantile_points(GAUSS_NODES)
    m = think.limited_means(x)
    mu = rate * (k1 * m + k2 * x)
    sd = np.sqrt(rate * (k1sq * m + k2sq * x))[:, None]
    # The context that turn k+1 hopes to find is c'_k (mean over the paths that serve turn k).
    context = np.concatenate(([0.0], table.conv_served[:-1] / np.maximum(table.served[:-1], 1e-300)))
    any_, kept, full = normal_survival(c_conv, mu[:, None], sd, context[None, :])
    any_ = np.broadcast_to(any_.mean(axis=0), context.shape).copy()
    full = full.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(context > 0, kept.mean(axis=0) / context, any_)
    return any_, np.clip(share, 0.0, 1.0), full


def _psi(z):
    """psi(z) = z Phi(z) + phi(z) = E[(z - Z)^+] for a standard normal Z (infinite z clipped)."""
    z = np.where(np.isinf(z), np.sign(z) * 1e6, z)
    return z * special.ndtr(z) + np.exp(-(z**2) / 2.0) / math.sqrt(2 * math.pi)


def normal_survival(c_conv: float, mu: np.ndarray, sd: np.ndarray, context: np.ndarray):
    """A context of ``context`` blocks, evicted tail first, in a cache of ``c_conv`` blocks where
    the content others touched since is X ~ N(mu, sd^2) (arrays that broadcast): its leading y
    blocks survive iff X <= C - y. Returns (P(any) = Phi(a), E[blocks kept] = E[clip(C - X, 0, c)]
    = s (psi(a) - psi(a - c/s)), P(all) = Phi(a - c/s)), a = (C - mu) / s. A window of ~0 (sd ~ 0:
    nothing else touched) keeps everything."""
    tiny = sd < 1e-12 * max(c_conv, 1.0)
    sd = np.where(tiny, 1.0, sd)
    a = np.where(tiny, np.inf, (c_conv - mu) / sd)
    b = np.where(tiny, np.inf, a - context / sd)
    with np.errstate(invalid="ignore"):
        kept = np.where(tiny, context, sd * (_psi(a) - _psi(b)))
    return special.ndtr(a), kept, special.ndtr(b)


def lru_model(
    workload: Workload,
    capacity_blocks: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    variant: str | None = None,
) -> ModelResult:
    """LRU by Che's characteristic time applied to conversations (DESIGN.md §5).

    Solves  C_conv = lambda * E[ sum_{k=1}^{L-1} c'_k m(T) + c'_L T ]  for T, with
    C_conv = capacity - n_S and c'_k in blocks: a context is touched as a whole by every request
    (hit blocks touched, new ones inserted), so it occupies the cache from its request until the
    next one (G) or until T has passed, and the last one of a conversation for T. Then
    P(turn k+1 reuses turn k's context) = F(T) ("che", whole contexts evicted at once), or the
    Gaussian refinement with partial (tail-first) eviction ("che+gaussian", the default for
    deterministic think times, whose F(T) is a step; see ``_gaussian_keep``).
    Oversized turns end a conversation as far as the cache is concerned (their predecessor's
    context then stays T). The cache is full at the root: mean occupancy = capacity.
    """
    _check(workload, capacity_blocks, block_size)
    think = workload.think_time
    variant = _lru_variant(think, variant)
    table = _table(workload, block_size, capacity_blocks)
    if table.served[0] == 0:
        return _nothing_served("lru", variant, capacity_blocks, block_size, table)
    rate = workload.arrival_rate
    c_conv = capacity_blocks - table.system_blocks
    sums = table.sums()
    if table.served_turns.min() == table.law.turns:  # no oversized turn: the closed form may apply
        sums = closed_form_sums(workload, block_size) or sums
    T = lru_characteristic_time(rate, think, *sums, c_conv)
    K = table.law.turns
    share = full = None
    if math.isinf(T):
        keep, occupancy = np.ones(K), float(table.system_blocks)
    else:
        occupancy = table.system_blocks + rate * (sums[0] * think.limited_mean(T) + sums[1] * T)
        if c_conv <= 0:
            keep = np.zeros(K)
        elif variant == "che":
            keep = np.full(K, float(think.cdf(T)))
        else:
            keep, share, full = _gaussian_keep(rate, think, table, c_conv)
    token, request, per_turn, context = _metrics(table, keep, share, full)
    return ModelResult("lru", variant, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


# ----------------------------------------------------------------------------- FIFO


@dataclass(frozen=True)
class _FifoGroups:
    """The size paths grouped by F, the number of leading turns that cannot hit their
    conversation's previous context even if it is cached: h_k <= n_S (c_{k-1} has no full
    conversation block, or the prompt-1 cap leaves none). Such a turn writes its whole context
    c'_k, head block included, exactly as a miss does: it restarts the FIFO clock of the
    conversation's head (turn 1 always does). These turns form a prefix: h_k >= floor(c_{k-1}/bs)
    - 1 always, and h_k = floor(c_{k-1}/bs) once u_k >= 1, so h_k > n_S, once reached, stays.

    Arrays of shape (groups, K), each E[x_k sigma_k ; the path is in the group] (over the groups
    they add up to the _Table's fields): ``conv`` of c'_k, ``conv2`` of c'_k^2, ``new`` of new_k,
    ``served`` of 1, ``gain_tokens`` / ``gain_any`` of what a found context adds to the system
    hit, (h_k - min(n_S, cap)) bs and the 1(... > 0) difference; ``weights`` (groups, K, K) the
    overlap weights of ``_overlap_weights``, group by group.
    """

    first: np.ndarray  # F of each group (1 <= F <= K)
    conv: np.ndarray
    conv2: np.ndarray
    new: np.ndarray
    served: np.ndarray
    gain_tokens: np.ndarray
    gain_any: np.ndarray
    weights: np.ndarray

    def misses(self, miss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pi, start), shape (groups, K), from the renewal sequence ``miss`` of a chain whose first
        miss is turn 1: pi_k = P(turn k misses) = 1 for k <= F and miss_{k-F+1} after (the chain
        restarts at F); start_k = P(turn k misses and may start a run of hits) = pi_k from F on
        (a miss before F starts none: turn F rewrites the head anyway)."""
        K = len(miss)
        shift = np.arange(K)[None, :] - (self.first[:, None] - 1)  # k - F (k 1-based)
        pi = np.where(shift > 0, miss[np.clip(shift, 0, K - 1)], 1.0)
        return pi, np.where(shift >= 0, pi, 0.0)


def _fifo_groups(table: _Table) -> _FifoGroups:
    p = table.paths
    K = table.law.turns
    first = np.cumprod(p.reuse <= p.system_blocks, axis=1).sum(axis=1)  # F per path (turn 1 always counts)
    values = np.unique(first)
    if len(values) == 1:  # one group (always so for fixed sizes): the table's own expectations
        return _FifoGroups(
            first=values.astype(int), conv=table.conv_served[None], conv2=table.conv2_served[None],
            new=table.new_served[None], served=table.served[None],
            gain_tokens=(table.reuse_tokens - table.system_tokens)[None],
            gain_any=(table.reuse_any - table.system_any)[None],
            weights=_overlap_weights(table)[None],
        )  # fmt: skip
    this = np.arange(K)[None, :] < table.served_turns[:, None]  # sigma_k per path
    fields = {"conv": p.conv, "conv2": p.conv**2, "new": p.new, "served": np.ones_like(p.conv),
              "gain": p.reuse - p.system, "gain_any": (p.reuse > 0) * 1.0 - (p.system > 0)}  # fmt: skip
    out = {name: np.zeros((len(values), K)) for name in fields}
    weights = np.zeros((len(values), K, K))
    for g, f in enumerate(values):
        member = (first == f)[:, None]
        for name, x in fields.items():
            out[name][g] = (x * (this & member)).mean(axis=0)
        weights[g] = _overlap_weights(table, np.where(member, p.new, 0.0))
    # Tokens: the table's total (already in tokens) shared out in proportion to the blocks.
    total = out.pop("gain")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total.sum(axis=0) > 0, total / total.sum(axis=0), 0.0)
    out["gain_tokens"] = share * (table.reuse_tokens - table.system_tokens)
    return _FifoGroups(first=values.astype(int), weights=weights, **out)


def _fifo_rates(table: _Table, groups: _FifoGroups, keep: np.ndarray):
    """``rates`` from keep[g, k-1] = P(turn k finds its previous context) in group g (0 for k <= F)."""
    hit_tokens = table.system_tokens + (keep * groups.gain_tokens).sum(axis=0)
    any_hit = table.system_any + (keep * groups.gain_any).sum(axis=0)
    context = (keep * groups.served).sum(axis=0) / np.maximum(table.served, 1e-300)
    return rates(table, hit_tokens, any_hit, context)


@dataclass(frozen=True)
class _FifoState:
    occupancy: float  # lambda * E[block-seconds per conversation], conversation blocks
    keep: np.ndarray  # [g, k-1] = P(turn k hits its context) = 1 - pi_k, size-path group g


def _below_and_overlap(think: ThinkTime, T: float, turns: int):
    """(P(S_n < T) for n = 0..turns, kappa[r-1, b-1]) where S_n sums n gaps and

      kappa(r, b) = E[(T - R_b)^+ ; S_{r+b-1} < T <= S_{r+b}],  R_b = the last b of the r+b gaps
                  = E[I(T - Y) F^{*r}(T - Y)] - E[(T - W) F^{*r}(T - W); W < T],
      Y ~ F^{*(b-1)}, W ~ F^{*b}, I(a) = E[(a - G)^+] = a - m(a):

    the expected unexpired time of a run written r turns after a miss that a new miss b turns
    later replaces (split the crossing gap G off: E_G[(T-Y-G)^+] = I(T-Y)).
    """
    if think.kind == "det":
        g = think.mean
        n = np.arange(turns + 1)
        below = np.where(n * g < T, 1.0, 0.0)
        hits = int(below[1:].sum())
        r = np.arange(1, hits + 1)[:, None]
        b = np.arange(1, hits + 1)[None, :]
        # Deterministic gaps: the run is replaced iff the crossing is at turn r+b.
        cross = ((r + b - 1) * g < T) & ((r + b) * g >= T)
        return below, np.where(cross, np.maximum(T - b * g, 0.0), 0.0)
    cells = LATTICE_CELLS
    if think.kind in ("exp", "gamma"):
        below = think.convolution_cdf(np.arange(turns + 1), T)
        hits = int(np.count_nonzero(below[1:] >= CONVOLUTION_TAIL))
        pmf, lattice_below = think.convolution_lattice(hits, T, cells) if hits else (None, None)
    else:
        pmf, lattice_below = think.convolution_lattice(turns, T, cells, tail=CONVOLUTION_TAIL)
        below = lattice_below[:, -1].copy()
        hits = int(np.count_nonzero(below[1:] >= CONVOLUTION_TAIL))
    below[0] = 1.0
    below[1 + hits :] = 0.0
    if hits == 0:
        return below, np.zeros((0, 0))
    x = T - np.arange(cells + 1) * (T / cells)  # T - Y at each lattice point of Y
    unexpired = np.maximum(x - think.limited_means(x), 0.0)
    shifted = lattice_below[1 : hits + 1, ::-1]  # [r-1, d] = P(S_r < T - d h)
    k1 = shifted @ (pmf[:hits] * unexpired).T
    k2 = shifted @ (pmf[1 : hits + 1] * x).T
    return below, np.maximum(k1 - k2, 0.0)


def _fifo_state(T: float, rate: float, think: ThinkTime, table: _Table, groups: _FifoGroups) -> _FifoState:
    """Occupancy and per-turn hit probability for a given T_F.

    Turn j hits iff A_j - A_m < T_F, m = the last turn that wrote the conversation's head block:
    its last miss, or turn F if later (``_FifoGroups``: the turns up to F have no context to hit
    and write all of theirs). Hit runs after a miss end at the first n with S_n >= T_F:
    P(run > n) = F^{*n}(T_F), so the miss probabilities are the renewal sequence pi_1 = 1,
    pi_j = sum_n f_n pi_{j-n}, f_n = F^{*(n-1)}(T_F) - F^{*n}(T_F) (an IIR filter), restarted at
    turn F in each group. Every written run stays T_F unless a later miss rewrites it first:
      occupancy = lambda (T_F E[W] - E[overlap]),
      E[W] = sum_j P(L>=j) (pi_j E[c'_j] + (1-pi_j) E[new_j])          (served turns only),
      E[overlap] = sum_{F<=m<i<j} pi_m E[new_i sigma_j] P(L>=j) kappa(i-m, j-i).
    """
    K = table.law.turns
    if T <= 0:
        return _FifoState(0.0, np.zeros((len(groups.first), K)))
    below, kappa = _below_and_overlap(think, T, K)
    run_end = below[:-1] - below[1:]  # f_n, n = 1..K
    impulse = np.zeros(K)
    impulse[0] = 1.0
    miss = signal.lfilter([1.0], np.concatenate(([1.0], -run_end[: K - 1])), impulse)
    miss = np.clip(miss, 0.0, 1.0)
    pi, start = groups.misses(miss)
    reach = table.law.reach
    written = float(np.sum((pi * groups.conv + (1 - pi) * groups.new) @ reach))
    overlap = 0.0
    hits = kappa.shape[0]
    if hits and K > 1:
        i = np.arange(K)[:, None]
        r = np.arange(1, hits + 1)[None, :]
        since_miss = np.where(i - r >= 0, start[:, np.clip(i - r, 0, None)], 0.0)  # [g, i, r-1] = start_{i-r}
        overlap = float(np.sum(groups.weights[:, :, :hits] * (since_miss @ kappa)))
    return _FifoState(rate * (T * written - overlap), 1.0 - pi)


def _overlap_weights(table: _Table, new: np.ndarray | None = None) -> np.ndarray:
    """W[i, b-1] = E[new_i sigma_{i+b}] P(L >= i+b) (0-based i): the run of hit turn i and a miss b
    later. ``new``: per-path new_i to use instead of the paths' own (zero outside a group)."""
    K = table.law.turns
    if new is None:
        both = table.new_then_served()
    else:  # as _Table.new_then_served: E[new_i 1(count >= j+1)] by a prefix sum over sorted counts
        count = table.served_turns
        order = np.argsort(count, kind="stable")
        prefix = np.concatenate([np.zeros((1, K)), np.cumsum(new[order], axis=0)])
        first = np.searchsorted(count[order], np.arange(1, K + 1), side="left")
        both = ((prefix[-1] - prefix[first]) / len(count)).T
    i = np.arange(K)[:, None]
    j = i + np.arange(1, K + 1)[None, :]
    valid = j < K
    jj = np.where(valid, j, 0)
    return np.where(valid, both[i, jj] * table.law.reach[jj], 0.0)


def fifo_characteristic_time(rate, think, table, c_conv, groups=None) -> tuple[float, _FifoState, _FifoState]:
    """T_F solving  C_conv = occupancy(T_F), with the states just below and above it.

    Bracket: every conversation's last served context stays exactly T_F, so occupancy >= rate K2
    T_F; and nothing is written more than all of c'_j at every turn, so occupancy <= rate T_F
    E[sum_j c'_j]. The occupancy jumps where F^{*n} does (deterministic or empirical gaps):
    brentq then converges onto the jump, and the caller mixes the two sides.
    """
    if groups is None:
        groups = _fifo_groups(table)
    k2 = table.sums()[1]
    most = float(table.law.reach @ table.conv_served)

    def state(T):
        return _fifo_state(T, rate, think, table, groups)

    lo, hi = c_conv / (rate * most), c_conv / (rate * k2)
    for _ in range(60):  # the bound above makes one pass enough; this guards rounding only
        if state(hi).occupancy >= c_conv:
            break
        hi *= 2
    else:
        raise ValueError(f"FIFO model: no characteristic time fills {c_conv} conversation blocks")
    if state(lo).occupancy >= c_conv:
        T = lo
    else:
        T = optimize.brentq(lambda t: state(t).occupancy - c_conv, lo, hi, xtol=1e-12 * hi, rtol=1e-12)
    step = 1e-9 * T
    return T, state(max(T - step, 0.0)), state(T + step)


# ----------------------------------------------------------------------------- FIFO, deterministic gaps


def _fifo_variant(think: ThinkTime, variant) -> str:
    if variant is None:
        # With deterministic gaps the occupancy jumps at every multiple of the gap; the Gaussian
        # horizon model replaces the single characteristic time by a distribution.
        return "che+gaussian" if think.kind == "det" else "che"
    if variant not in FIFO_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(FIFO_VARIANTS)} or None (got {variant!r})")
    if variant == "che+gaussian" and think.kind != "det":
        raise ValueError(f"FIFO variant che+gaussian needs deterministic think times (got {think.kind!r})")
    return variant


@dataclass(frozen=True)
class _DetPieces:
    """The FIFO cache with deterministic gaps G, held at a fixed horizon h, piece by piece.

    On piece n, h in (nG, (n+1)G] (the last piece, n = K-1, runs to infinity), a turn hits iff its
    context was written less than h ago: after a miss exactly n turns hit, then one misses (turn
    k > F is a = (k-F) mod (n+1) turns past its last miss, and misses iff a = 0; turns k <= F
    miss, ``_FifoGroups``). X(h), the conversation content written less than h ago and not
    rewritten since, then has
      mean      occ0[n] + occ_slope[n] (h - nG)   (= the occupancy of the che model at T = h)
      variance  var0[n] + var_slope[n] (h - nG)
    (Campbell: conversations start as a Poisson process, so both are rate * integral over a
    conversation's life of E[Y], resp. E[Y^2], Y = its content written within the last h).
    keep[n, g, k-1] = 1 if turn k hits on piece n in size-path group g. Only the first pieces may
    be listed; ``open_end`` says whether the last one listed is the one that runs to infinity.
    """

    gap: float
    open_end: bool
    occ0: np.ndarray
    occ_slope: np.ndarray
    var0: np.ndarray
    var_slope: np.ndarray
    keep: np.ndarray

    @property
    def start(self) -> np.ndarray:
        return np.arange(len(self.occ0)) * self.gap


def _det_pieces(rate: float, gap: float, table: _Table, count: int | None = None,
                groups: _FifoGroups | None = None) -> _DetPieces:  # fmt: skip
    """Y at time t between turn k and the next: the window (t - h, t] holds turns k-J+1..k
    (J = n or n+1 for a turn followed by another: for (n+1)G - h resp. h - nG of its G
    seconds; J = n+1, n, ..., 1 in turn after the last served turn). Y = c'_k if one of them
    missed (the miss rewrote the whole context), else c'_k - c'_{k-J}. With c = E[c'_k | served],
    E[c'_i c'_k] ~ E[c'_i^2] + c_i (c_k - c_i) (independent increments; exact for fixed sizes).
    Campbell's mean and variance add up over the size-path groups (each with its own F).
    ``count`` pieces (n = 0..count-1), all K by default.
    """
    K = table.law.turns
    count = K if count is None else min(count, K)
    groups = _fifo_groups(table) if groups is None else groups
    occ0 = occ_slope = var0 = var_slope = 0.0
    keep = []
    for g, F in enumerate(groups.first):
        served = groups.served[g]
        c = np.concatenate(([0.0], groups.conv[g] / np.maximum(served, 1e-300)))
        c2 = np.concatenate(([0.0], groups.conv2[g] / np.maximum(served, 1e-300)))
        follow = np.append(table.law.more[:-1] * served[1:], 0.0)  # turn k served and followed by a served one
        stop = table.law.reach * served - follow  # turn k is the last served one
        n = np.arange(count)[:, None]
        k = np.arange(1, K + 1)[None, :]
        since = np.where(k > F, (k - F) % (n + 1), 0)  # turns since the last miss
        ck, c2k = c[1:][None, :], c2[1:][None, :]
        back = np.where(since == n, c[np.clip(k - n, 0, K)], 0.0)  # c_{k-n} where the window of n turns has no miss
        back2 = np.where(since == n, c2[np.clip(k - n, 0, K)], 0.0)
        y_n = ck - back  # Y with J = n (J = n+1 always contains the miss: Y = c_k)
        y2_n = c2k - (back2 + 2 * back * ck - 2 * back**2)
        # After the last turn: sum over J = 1..n of Y = n c_k - sum_{i=k-a}^{k-1} c_i (a = since).
        first = k - 1 - since
        sums = np.concatenate(([0.0], np.cumsum(c[1:])))
        sums_q = np.concatenate(([0.0], np.cumsum(c2[1:] - 2 * c[1:] ** 2)))
        tail = sums[k - 1] - sums[first]
        tail_q = sums_q[k - 1] - sums_q[first]
        after = n * ck - tail
        after2 = n * c2k - tail_q - 2 * ck * tail
        occ0 = occ0 + rate * gap * (y_n @ follow + after @ stop)
        occ_slope = occ_slope + rate * ((ck - y_n) @ follow + ck @ stop)
        var0 = var0 + rate * gap * (y2_n @ follow + after2 @ stop)
        var_slope = var_slope + rate * ((c2k - y2_n) @ follow + c2k @ stop)
        keep.append((since != 0).astype(float))  # k <= F: since = 0 (turn 1 included)
    return _DetPieces(
        gap=gap, open_end=count == K, occ0=occ0, occ_slope=occ_slope, var0=var0, var_slope=var_slope,
        keep=np.stack(keep, axis=1),
    )  # fmt: skip


def _horizon_pieces(rate: float, gap: float, table: _Table, c_conv: float) -> int:
    """How many pieces (multiples of G) the horizon law needs: it weighs < e^-(HORIZON_TAIL + 10)
    beyond. Above hi = C/(rate K2), mean X(h) - C >= rate K2 (h - hi) and X' >= rate K2 (what
    is left after the last turn stays), while var X(h) <= rate Q (h + G), Q = E[sum_k c'_k^2]
    (Y <= c'_k, for G at most per turn, h after the last), so
      Phi(h) - Phi(hi) >= (rate K2^2 / Q) ((h - hi) - (hi + G) log((h + G)/(hi + G))).
    """
    k2 = table.sums()[1]
    q = float(table.law.reach @ table.conv2_served)
    hi = c_conv / (rate * k2)
    rise = HORIZON_TAIL + 10.0

    def bound(h):
        return rate * k2 * k2 / q * ((h - hi) - (hi + gap) * math.log((h + gap) / (hi + gap)))

    top = hi + gap
    while bound(top) < rise:
        top = hi + 2 * (top - hi)
    return int(top // gap) + 1


def _potential_step(h, ref, occ_ref, var_ref, slope, var_slope, c_conv):
    """integral_ref^h (X(x) - C) X'/V(x) dx for X = occ_ref + slope (x - ref), V = var_ref + var_slope (x - ref),
    in a form that stays exact as var_slope -> 0: (x - log1p x)/x^2 and log1p(x)/x by series near 0."""
    d = h - ref
    eps = var_slope * d / var_ref
    small = np.abs(eps) < 1e-4
    e = np.where(small, 0.5, eps)
    with np.errstate(divide="ignore"):
        log1p = np.log1p(e)
    l1 = np.where(small, 1 - eps / 2 + eps**2 / 3, log1p / e)
    l2 = np.where(small, 0.5 - eps / 3 + eps**2 / 4, (e - log1p) / e**2)
    return slope * (occ_ref - c_conv) * d / var_ref * l1 + slope * slope * d * d / var_ref * l2


def _horizon_law(pieces: _DetPieces, c_conv: float):
    """Distribution of the FIFO horizon H (the age of the oldest cached block) for det gaps.

    The cache holds the youngest C blocks, so H is where X(H) = C, X(h) the content written in
    the last h (``_DetPieces``). X is compound Poisson; taken as normal, around a stable root T
    of mean(X) = C this makes H normal with sd sigma/X' (X' = the mean's slope): the horizon
    fluctuates with the blocks written recently. Where mean(X) jumps across C at multiples of G
    (fewer hits, more rewrites), several roots coexist and the cache switches between them. H is
    taken as the stationary law of the diffusion with drift proportional to C - mean(X(H)) and
    noise that gives each root exactly that normal spread:
        density(H) ~ exp(-Phi(H)),  Phi'(h) = (mean X(h) - C) X'(h) / var X(h),
    exactly integrable piece by piece. Increasing C tilts the law towards larger H:
    exp(C * integral X'/var) is increasing in h, so H grows stochastically with capacity.
    Returns (probability of each piece, E[H]).
    """
    gap = pieces.gap
    K = len(pieces.occ0)
    start = pieces.start
    occ0, slope, var0, var_slope = pieces.occ0, pieces.occ_slope, pieces.var0, pieces.var_slope
    last = (np.arange(K) == K - 1) & pieces.open_end
    # Reference point of each piece: its right end; the last piece's left end (var > 0 at both).
    ref = np.where(last, start, start + gap)
    occ_ref = occ0 + slope * (ref - start)
    var_ref = var0 + var_slope * (ref - start)

    def potential(i, h):  # Phi on piece(s) i, up to the piece's constant
        return _potential_step(h, ref[i], occ_ref[i], var_ref[i], slope[i], var_slope[i], c_conv)

    # Phi is continuous: chain the constants (Phi = 0 at the end of piece 0).
    pieces_ = np.arange(K)
    inner = pieces_[1:][~last[1:]]  # the pieces with two finite ends, but the first (Phi = 0 at its end)
    offset = np.cumsum(np.concatenate(([0.0], -potential(inner, start[inner]), [0.0]))[:K])
    # Where the density is largest on each piece: at mean X = C, else at the nearer end; and
    # its local scale there (the normal sd at a root, else also 1/|Phi'| at the end).
    peak = start + (c_conv - occ0) / slope
    inside = (peak > start) & (last | (peak < start + gap))
    centre = np.where(inside, peak, np.where(peak <= start, start, start + gap))
    var_c = var0 + var_slope * (centre - start)
    drift = np.abs(occ0 + slope * (centre - start) - c_conv) * slope / var_c
    with np.errstate(divide="ignore"):
        scale = np.where(inside, np.sqrt(var_c) / slope, np.minimum(1 / drift, np.sqrt(var_c) / slope))
    lowest = offset + potential(pieces_, centre)
    x_nodes, w_nodes = HORIZON_NODES
    steps = np.concatenate((-HORIZON_STEPS[:0:-1], HORIZON_STEPS))
    hs, ws, phis, owner = [], [], [], []
    for i in np.nonzero(lowest <= lowest.min() + HORIZON_TAIL)[0]:  # the others weigh < e^-60
        lo, hi = start[i], start[i] + gap
        if last[i]:
            reach = 40 * scale[i]
            for _ in range(64):
                if potential(i, centre[i] + reach) - potential(i, centre[i]) >= HORIZON_TAIL:
                    break
                reach *= 2
            hi = centre[i] + reach
        ends = np.concatenate((centre[i] + scale[i] * steps, np.linspace(lo, hi, 17)))
        ends = np.unique(np.clip(ends, lo, hi))
        mid, half = (ends[1:] + ends[:-1]) / 2, (ends[1:] - ends[:-1]) / 2
        h = (mid[:, None] + half[:, None] * x_nodes).ravel()
        hs.append(h)
        ws.append((half[:, None] * w_nodes).ravel())
        phis.append(offset[i] + potential(i, h))
        owner.append(np.full(h.size, i))
    h, w, phi, owner = (np.concatenate(x) for x in (hs, ws, phis, owner))
    density = w * np.exp(-(phi - phi.min()))
    density /= density.sum()
    return np.bincount(owner, weights=density, minlength=K), float(density @ h)


def fifo_model(
    workload: Workload,
    capacity_blocks: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    variant: str | None = None,
) -> ModelResult:
    """FIFO by its characteristic time T_F (timer set at insertion, never reset; DESIGN.md §5).

    A conversation's head blocks are written at its last miss m and are its oldest, so turn j
    hits iff A_j - A_m < T_F: probability F^{*(j-m)}(T_F) given the miss at m (Erlang for exp,
    gamma for gamma, a step for det, a lattice convolution otherwise). The first turns, which have
    no conversation block to hit (h_k <= n_S, k <= F), write their whole context as a miss does:
    the clock starts at turn F, not turn 1 (``_FifoGroups``; F varies by size path). A miss
    rewrites the whole context (c'_j blocks), a hit inserts only its new blocks. Each written run
    occupies the cache for T_F, or less when the next miss rewrites it while it is still there
    (that overlap, a few per cent of the occupancy, is subtracted: exactly for deterministic gaps,
    on a 256-cell lattice of [0, T_F] otherwise); what remains after the last turn stays T_F. The
    fixed point
    C_conv = lambda (T_F E[W] - E[overlap])  is solved by brentq (``fifo_characteristic_time``).
    Where the occupancy jumps at the root (empirical gaps, or det with variant "che") the result
    mixes the two sides in the proportion that fills the cache exactly.

    Deterministic gaps G (default "che+gaussian"): the occupancy at a fixed T_F drops where T_F
    passes a multiple of G (one more turn hits, so less is rewritten), so T_F -> occupancy is not
    monotone and the fixed point is not unique: the cache is bistable between patterns of hits.
    The horizon of the real cache fluctuates with the blocks written recently and moves between
    these states; ``_horizon_law`` gives its stationary law, and the hit rates are averaged over
    it. ``characteristic_time`` is then E[horizon] and the cache is full (occupancy = capacity).
    This is the long-run state: a cache filled from empty can stay for a long time in the
    state with the larger horizon (more hits) when the barrier between the two is high.
    Empirical think times with a single value are deterministic and are modelled as such.

    FIFO never refreshes the shared system blocks either, but with zero service time every
    allocation is made by a request that holds them, so they are never evictable.
    """
    _check(workload, capacity_blocks, block_size)
    think = workload.think_time
    if think.kind == "empirical" and think.deterministic and think.mean > 0:
        think = ThinkTime("det", think.mean)  # one value: deterministic gaps (and their horizon law)
    variant = _fifo_variant(think, variant)
    table = _table(workload, block_size, capacity_blocks)
    if table.served[0] == 0:
        return _nothing_served("fifo", variant, capacity_blocks, block_size, table)
    rate = workload.arrival_rate
    c_conv = capacity_blocks - table.system_blocks
    k2 = table.sums()[1]
    groups = _fifo_groups(table)
    K = table.law.turns
    if c_conv <= 0:
        T, keep, occupancy = 0.0, np.zeros((len(groups.first), K)), float(table.system_blocks)
    elif k2 <= 0:
        T, occupancy = math.inf, float(table.system_blocks)
        keep = (np.arange(1, K + 1)[None, :] > groups.first[:, None]).astype(float)
    elif variant == "che+gaussian" and K > 1:
        count = _horizon_pieces(rate, think.mean, table, c_conv)
        pieces = _det_pieces(rate, think.mean, table, count, groups)
        mass, T = _horizon_law(pieces, c_conv)
        keep, occupancy = np.tensordot(mass, pieces.keep, axes=1), float(capacity_blocks)
    else:  # "che" (and det with one turn: nothing is reused, T_F only sets the occupancy)
        T, low, high = fifo_characteristic_time(rate, think, table, c_conv, groups)
        jump = high.occupancy - low.occupancy
        share = float(np.clip((c_conv - low.occupancy) / jump, 0.0, 1.0)) if jump > 1e-9 * c_conv else 0.5
        keep = share * high.keep + (1 - share) * low.keep
        occupancy = table.system_blocks + share * high.occupancy + (1 - share) * low.occupancy
    token, request, per_turn, context = _fifo_rates(table, groups, keep)
    return ModelResult("fifo", variant, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


# ----------------------------------------------------------------------------- ceiling


def no_eviction_ceiling(workload: Workload, block_size: int = DEFAULT_BLOCK_SIZE) -> ModelResult:
    """Hit rates with unlimited capacity: every context survives (T = inf), no request is oversized.

    token = sum_k P(L>=k) E[h_k bs] / sum_k P(L>=k) E[p_k]; request = share of turns with h_k > 0.
    """
    if not isinstance(workload, Workload):
        raise ValueError(f"workload must be an analytic.specs.Workload (got {type(workload).__name__})")
    check_positive("block-size", block_size, integer=True)
    table = _table(workload, block_size, None)
    token, request, per_turn, context = _metrics(table, np.ones(table.law.turns))
    return ModelResult("none", "no-eviction", math.inf, per_turn, request, token, math.inf, context, None, block_size)
