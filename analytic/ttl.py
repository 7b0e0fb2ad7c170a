"""Characteristic-time (TTL) models of the prefix-cache hit rate (DESIGN.md §5): the shared pieces.

The models live in ``analytic.lru`` (LRU, Che's characteristic time: ``lru_model``) and
``analytic.fifo`` (FIFO, timer set at insertion: ``fifo_model``). This module holds what they
(and ``analytic.fleet``) share: the result ``ModelResult``, the turn law and the sampled size
paths, the per-turn expectations ``_Table`` (``_table``), the LRU sums in closed form
(``closed_form_sums``), the hit rates from what survives (``_metrics``, ``rates``), the normal
survival of a context evicted tail first (``normal_survival``) and the no-eviction ceiling
(``no_eviction_ceiling``).

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

Turn counts enter through P(L >= k) over ``TurnCount.support``; for fixed sizes and fixed or
geometric L without oversized turns, the LRU equation's two sums have closed forms
(``closed_form_sums``; the tests check them against the sums over the support).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy import special

from analytic.checks import MIN_ARRIVAL_RATE
from analytic.sizing import check_block_size
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload, check_positive

SIZE_PATHS = 2000  # sampled size paths when token counts are drawn ...
SIZE_CELLS = 400_000  # ... fewer when the turn support is long: at most this many (path, turn) cells
MIN_SIZE_PATHS = 400
SIZE_SEED = 20_250_611
REPORT_REACH = 1e-6  # per-turn dicts list the turns a conversation reaches with at least this probability


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
    check_block_size(block_size)
    if workload.arrival_rate < MIN_ARRIVAL_RATE:  # the characteristic time ~ capacity / rate overflows
        raise ValueError(f"arrival-rate must be a number >= {MIN_ARRIVAL_RATE:g} for the models (got "
                         f"{workload.arrival_rate!r})")


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
