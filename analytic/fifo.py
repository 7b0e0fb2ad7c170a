"""FIFO by its characteristic time T_F (timer set at insertion, never reset; DESIGN.md §5): ``fifo_model``.

After the last miss at turn m (which rewrites the whole context), turn j hits iff A_j - A_m < T_F;
the insertion rate times T_F fills the cache (``fifo_characteristic_time``). Whole blocks, size
paths and turn law are those of ``analytic.ttl``, which holds the pieces shared with the LRU model
(``analytic.lru``).

FIFO with deterministic think times has several fixed points (the cache is bistable between
patterns of hits); its default variant averages over the stationary law of the fluctuating FIFO
horizon instead (``fifo_model``, ``_horizon_law``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from analytic.distributions import ThinkTime
from analytic.specs import DEFAULT_BLOCK_SIZE, Workload
from analytic.ttl import ModelResult, _check, _nothing_served, _Table, _table, rates

FIFO_VARIANTS = ("che", "che+gaussian")
LATTICE_CELLS = 256  # cells on [0, T_F] for the FIFO overlap term (a small correction: see fifo_model)
# The longest conversation the model takes: its memory and time grow with the square of it
# (1.8 s and 0.7 GB at 4,000 turns; 5,000 turns is about 1.1 GB).
FIFO_MAX_TURNS = 5_000
CONVOLUTION_TAIL = 1e-13  # F^{*n}(T) below this counts as 0 (longer hit runs are impossible)
# FIFO with deterministic gaps: quadrature of the horizon density (see _horizon_law)
HORIZON_NODES = np.polynomial.legendre.leggauss(8)  # Gauss-Legendre nodes per segment
HORIZON_STEPS = np.array([0.0, 0.5, 1, 1.5, 2, 3, 4, 6, 9, 14, 22, 35])  # segment ends, in local scales
HORIZON_TAIL = 60.0  # the density is followed until it has dropped by e^-60


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


def _renewal(f: np.ndarray, K: int) -> np.ndarray:
    """pi_1 = 1, pi_j = sum_{n<j} f_n pi_{j-n} for j = 1..K: the impulse response of the IIR filter
    1 / (1 - sum_n f_n z^-n), computed as ``scipy.signal.lfilter`` does (transposed direct form II)
    but without importing scipy.signal, which costs a second of start-up (it loads scipy.stats)."""
    pi = np.empty(K)
    state = np.zeros(len(f))  # state[i] = sum_{n > i} f_n pi_{j-n+i}: what the past adds to the next turns
    for j in range(K):
        y = (1.0 if j == 0 else 0.0) + (state[0] if len(f) else 0.0)
        pi[j] = y
        if len(f):
            state[:-1] = state[1:] + f[:-1] * y
            state[-1] = f[-1] * y
    return pi


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
    miss = np.clip(_renewal(run_end[: K - 1], K), 0.0, 1.0)
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


def fifo_characteristic_time(rate, think, table, c_conv, groups=None, copies: float = 1.0,
                             per_second: float = 0.0) -> tuple[float, _FifoState, _FifoState]:
    """T_F solving  C_conv = occupancy(T_F), with the states just below and above it.

    The occupancy is ``copies`` times one cache's (a hybrid pool's groups that each write the
    conversation's blocks) plus ``per_second`` T_F (what is written at a steady rate and never
    rewritten: a hybrid's Mamba states). Bracket: every conversation's last served context stays
    exactly T_F, so occupancy >= rate K2 T_F; and nothing is written more than all of c'_j at
    every turn, so occupancy <= rate T_F E[sum_j c'_j]. The occupancy jumps where F^{*n} does
    (deterministic or empirical gaps): brentq then converges onto the jump, and the caller mixes
    the two sides (``_mix``).
    """
    if groups is None:
        groups = _fifo_groups(table)
    k2 = table.sums()[1]
    most = float(table.law.reach @ table.conv_served)

    def state(T):
        s = _fifo_state(T, rate, think, table, groups)
        return _FifoState(copies * s.occupancy + per_second * T, s.keep)

    lo, hi = c_conv / (copies * rate * most + per_second), c_conv / (copies * rate * k2 + per_second)
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
    if workload.turns.longest > FIFO_MAX_TURNS:
        raise ValueError(f"turns: the FIFO model's cost grows with the square of the longest conversation, "
                         f"{workload.turns.longest:,} turns here; it takes up to {FIFO_MAX_TURNS:,} (the LRU model and "
                         "the simulator take longer ones)")
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
        keep, occupancy = _mix(low, high, c_conv, table.system_blocks)
    token, request, per_turn, context = _fifo_rates(table, groups, keep)
    return ModelResult("fifo", variant, T, per_turn, request, token, occupancy, context, capacity_blocks, block_size)


def _mix(low: _FifoState, high: _FifoState, c_conv: float, system: float) -> tuple[np.ndarray, float]:
    """(keep, occupancy with ``system`` blocks) of the states on either side of T_F, mixed in the
    proportion that fills ``c_conv`` exactly where the occupancy jumps (half and half where it
    does not)."""
    jump = high.occupancy - low.occupancy
    share = float(np.clip((c_conv - low.occupancy) / jump, 0.0, 1.0)) if jump > 1e-9 * c_conv else 0.5
    return share * high.keep + (1 - share) * low.keep, system + share * high.occupancy + (1 - share) * low.occupancy
