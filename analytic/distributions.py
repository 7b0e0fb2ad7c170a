"""Distributions of the workload: think times, turns per conversation, tokens per turn.

Each is a small frozen dataclass that the simulator samples and the models integrate. Sampling
uses numpy ``Generator`` methods directly (a scipy ``rvs`` call costs ~20 µs, too much per
conversation); CDFs and partial expectations come from ``scipy.stats`` where it has them (imported where used:
it costs half a second, and building a workload needs none of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

THINK_KINDS = ("exp", "det", "lognormal", "gamma", "empirical")
TURN_KINDS = ("fixed", "geometric", "empirical")
TOKEN_KINDS = ("fixed", "lognormal", "empirical")

# A geometric pmf is cut where its tail mass drops below this; the models sum over the support.
GEOMETRIC_TAIL = 1e-12
# Longest conversation the models take (turns reached, the geometric support included): the LRU
# model's tables grow linearly with it (0.25 s at 100,000 fixed turns), the FIFO model's with its
# square (see analytic.fifo.FIFO_MAX_TURNS).
MAX_TURNS = 100_000
# Coefficients of variation above this are refused: a lognormal of cv 100 already puts half its
# mass below 1/10,000 of the mean, and larger ones overflow in the moments.
MAX_CV = 100.0
# ... and below this: a gamma's shape is 1/cv^2 (cv 1e-160 underflows it to a division by zero),
# and a spread of 0.1% is a fixed value (det think times, a fixed token count).
MIN_CV = 1e-3
MAX_TOKENS = 10_000_000  # tokens of one message: the longest context of any model (Llama 4 Scout, 10M)
MAX_SECONDS = 1e9  # a think time beyond 30 years is a typo
MIN_SECONDS = 1e-6  # ... and one below a microsecond (the models divide by it: 1e-308 overflows)


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number (got {value!r})")


def _cv(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and MIN_CV <= value <= MAX_CV):
        raise ValueError(f"{name} must be a number in [{MIN_CV:g}, {MAX_CV:g}] (got {value!r})")


def _kind(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the underlying normal for a lognormal with this mean and CV."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


@dataclass(frozen=True)
class ThinkTime:
    """Gap between a response and the conversation's next request (seconds).

    ``kind`` is one of exp, det, lognormal, gamma (given ``mean`` and coefficient of variation
    ``cv``) or empirical (``samples``; ``mean`` is then ignored and taken from the samples).
    """

    kind: str = "exp"
    mean: float = 30.0
    cv: float = 1.0
    samples: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _kind("think-dist", self.kind, THINK_KINDS)
        if self.kind == "empirical":
            if not self.samples or any(not math.isfinite(s) or s < 0 for s in self.samples):
                raise ValueError("think-time samples must be a non-empty list of numbers >= 0")
            object.__setattr__(self, "mean", float(np.mean(self.samples)))
            object.__setattr__(self, "cv", float(np.std(self.samples) / self.mean) if self.mean else 0.0)
            return
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean)
                and MIN_SECONDS <= self.mean <= MAX_SECONDS):
            raise ValueError(f"think-time must be a number in [{MIN_SECONDS:g}, {MAX_SECONDS:g}] s (got {self.mean!r})")
        if self.kind in ("lognormal", "gamma"):
            _cv("think-cv", self.cv)
        elif self.kind == "exp":
            object.__setattr__(self, "cv", 1.0)
        else:
            object.__setattr__(self, "cv", 0.0)

    @property
    def deterministic(self) -> bool:
        """Every gap is the same: det, or empirical samples of one value."""
        return self.cv == 0

    @cached_property
    def scipy(self):
        """The frozen ``scipy.stats`` distribution (None for det and empirical)."""
        from scipy import stats

        if self.kind == "exp":
            return stats.expon(scale=self.mean)
        if self.kind == "gamma":
            shape = 1.0 / self.cv**2
            return stats.gamma(shape, scale=self.mean / shape)
        if self.kind == "lognormal":
            mu, sigma = _lognormal_params(self.mean, self.cv)
            return stats.lognorm(sigma, scale=math.exp(mu))
        return None

    @cached_property
    def _sorted(self) -> np.ndarray:
        return np.sort(np.asarray(self.samples, dtype=float))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "exp":
            return rng.exponential(self.mean, size)
        if self.kind == "gamma":
            shape = 1.0 / self.cv**2
            return rng.gamma(shape, self.mean / shape, size)
        if self.kind == "lognormal":
            mu, sigma = _lognormal_params(self.mean, self.cv)
            return rng.lognormal(mu, sigma, size)
        if self.kind == "det":
            return np.full(size, self.mean)
        return rng.choice(self._sorted, size)

    def cdf(self, x):
        """P(G <= x)."""
        if self.kind == "det":
            return np.where(np.asarray(x) >= self.mean, 1.0, 0.0)
        if self.kind == "empirical":
            return np.searchsorted(self._sorted, x, side="right") / len(self._sorted)
        if self.kind == "exp":
            # scipy.stats.expon's own formula and expm1 (numpy's differs in the last bit), without
            # importing scipy.stats: kvsim calc starts faster.
            from scipy import special

            x = np.asarray(x, dtype=float) / self.mean
            return np.where(x > 0, -special.expm1(-np.maximum(x, 0.0)), 0.0)[()]
        return self.scipy.cdf(x)

    def limited_mean(self, t: float) -> float:
        """m(t) = E[min(G, t)] = integral_0^t (1 - F(x)) dx (DESIGN.md §5)."""
        if t <= 0:
            return 0.0
        if self.kind == "exp":
            return self.mean * -math.expm1(-t / self.mean)
        if self.kind == "det":
            return min(self.mean, t)
        if self.kind == "empirical":
            return float(np.minimum(self._sorted, t).mean())
        from scipy import stats

        if self.kind == "gamma":
            shape = 1.0 / self.cv**2
            scale = self.mean / shape
            # E[G; G <= t] = mean * F_{shape+1}(t): the size-biased gamma is gamma(shape+1).
            return float(self.mean * stats.gamma.cdf(t, shape + 1, scale=scale) + t * self.scipy.sf(t))
        mu, sigma = _lognormal_params(self.mean, self.cv)
        # E[G; G <= t] = mean * Phi((ln t - mu - sigma^2) / sigma) for the lognormal.
        below = self.mean * stats.norm.cdf((math.log(t) - mu - sigma * sigma) / sigma)
        return float(below + t * self.scipy.sf(t))

    def limited_mean_numeric(self, t: float) -> float:
        """m(t) by quadrature of the survival function; the closed forms are checked against it."""
        from scipy import integrate

        return integrate.quad(lambda x: 1.0 - float(self.cdf(x)), 0.0, t, limit=200)[0]

    def limited_means(self, t) -> np.ndarray:
        """m(t) for an array of t (the vectorised twin of ``limited_mean``)."""
        t = np.maximum(np.asarray(t, dtype=float), 0.0)
        if self.kind == "exp":
            return self.mean * -np.expm1(-t / self.mean)
        if self.kind == "det":
            return np.minimum(self.mean, t)
        if self.kind == "empirical":
            # E[min(G, t)] = (sum of the samples <= t + t * count of those above) / n.
            below = np.searchsorted(self._sorted, t, side="right")
            partial = np.concatenate(([0.0], np.cumsum(self._sorted)))
            return (partial[below] + t * (len(self._sorted) - below)) / len(self._sorted)
        from scipy import stats

        if self.kind == "gamma":
            shape = 1.0 / self.cv**2
            scale = self.mean / shape
            return self.mean * stats.gamma.cdf(t, shape + 1, scale=scale) + t * self.scipy.sf(t)
        mu, sigma = _lognormal_params(self.mean, self.cv)
        with np.errstate(divide="ignore"):
            z = (np.log(t) - mu - sigma * sigma) / sigma
        return self.mean * stats.norm.cdf(z) + t * self.scipy.sf(t)

    def quantile_points(self, n: int = 256) -> np.ndarray:
        """n equally likely think times (mid-quantiles): nodes for E_G[h(G)] ~ mean of h(nodes)."""
        if self.kind == "det":
            return np.array([self.mean])
        probs = (np.arange(n) + 0.5) / n
        if self.kind == "empirical":
            if len(self._sorted) <= n:
                return self._sorted.copy()
            return np.quantile(self._sorted, probs, method="inverted_cdf")
        return self.scipy.ppf(probs)

    def convolution_cdf(self, n, t) -> np.ndarray:
        """F^{*n}(t) = P(G_1 + ... + G_n <= t), the n-fold convolution (F^{*0} is a step at 0).

        Closed forms: exp -> Erlang (regularised gamma P(n, t/mean)), gamma -> gamma with n times
        the shape, det -> a step at n * mean. lognormal and empirical have none: they go through
        ``convolution_lattice`` on [0, max t] (1024 cells; error O(cell width)).
        """
        from scipy import special

        n = np.asarray(n)
        t = np.asarray(t, dtype=float)
        if self.kind in ("lognormal", "empirical"):
            return self.convolution_cdf_numeric(n, t)
        if np.any(n < 0):
            raise ValueError("convolution order n must be >= 0")
        if self.kind == "det":
            return np.where(n * self.mean <= t, 1.0, 0.0)
        if self.kind == "exp":
            shape, scale = n, self.mean
        else:
            shape = n / self.cv**2
            scale = self.mean * self.cv**2
        with np.errstate(invalid="ignore"):
            value = special.gammainc(np.maximum(shape, 1e-300), np.maximum(t, 0.0) / scale)
        # S_0 = 0: the empty sum sits at 0.
        return np.where(n == 0, np.where(t >= 0, 1.0, 0.0), np.where(t > 0, value, 0.0))

    def convolution_cdf_numeric(self, n, t, cells: int = 1024) -> np.ndarray:
        """F^{*n}(t) from the lattice on [0, max t] (any kind; the closed forms are tested on it)."""
        n = np.asarray(n)
        t = np.asarray(t, dtype=float)
        if np.any(n < 0):
            raise ValueError("convolution order n must be >= 0")
        top = float(np.max(t)) if t.size else 0.0
        if top <= 0:
            return np.where((n == 0) & (t >= 0), 1.0, 0.0)
        pmf, _ = self.convolution_lattice(int(np.max(n)), top, cells)
        h = top / cells
        # Lattice point d*h stands for the cell [(d - 1/2)h, (d + 1/2)h): spread it uniformly.
        weight = np.clip((t[..., None] - np.arange(cells + 1) * h) / h + 0.5, 0.0, 1.0)
        return np.einsum("...d,...d->...", pmf[n], weight)

    def convolution_lattice(self, n_max: int, t: float, cells: int = 256, tail: float = 0.0):
        """The sums S_a = G_1 + ... + G_a (a = 0..n_max) on the lattice d*h, h = t/cells, d = 0..cells.

        Returns ``(pmf, below)``, both of shape (n_max + 1, cells + 1): ``pmf[a, d]`` = P(S_a rounds
        to d*h) (mass above t + h/2 is dropped: callers only look below t), ``below[a, d]`` =
        P(S_a < d*h). exp and gamma use the closed-form CDF for both; lognormal, empirical and det
        convolve the one-gap lattice pmf (FFT, truncated at t after each step), and ``below`` counts
        the lattice point at d*h half (it stands for a cell centred there). With ``tail`` > 0, the
        powers stop once P(S_a < t) < tail (later rows stay zero).
        """
        if n_max < 0 or cells < 1 or not t > 0:
            raise ValueError("convolution lattice needs n_max >= 0, cells >= 1 and t > 0")
        h = t / cells
        grid = np.arange(cells + 1) * h
        pmf = np.zeros((n_max + 1, cells + 1))
        below = np.zeros((n_max + 1, cells + 1))
        if self.kind in ("exp", "gamma"):
            orders = np.arange(n_max + 1)[:, None]
            edges = self.convolution_cdf(orders, np.concatenate(([-h / 2], grid + h / 2))[None, :])
            pmf[:] = np.diff(edges, axis=1)
            below[:] = self.convolution_cdf(orders, grid[None, :])
            below[0] = np.where(grid > 0, 1.0, 0.0)
            if tail > 0:
                stop = np.nonzero(below[1:, -1] < tail)[0]
                if stop.size:
                    pmf[stop[0] + 2 :] = 0.0
                    below[stop[0] + 2 :] = 0.0
            return pmf, below
        edges = np.concatenate(([-h / 2], grid + h / 2))
        one = np.diff(self.cdf(edges) if self.kind != "det" else np.where(edges >= self.mean, 1.0, 0.0))
        one = np.clip(one, 0.0, None)
        size = 2 * (cells + 1)  # linear (not circular) convolution of two lattice rows
        spectrum = np.fft.rfft(one, size)
        row = np.zeros(cells + 1)
        row[0] = 1.0
        for a in range(n_max + 1):
            pmf[a] = row
            below[a] = np.cumsum(row) - 0.5 * row
            if tail > 0 and a >= 1 and below[a, -1] < tail:
                break
            row = np.clip(np.fft.irfft(np.fft.rfft(row, size) * spectrum, size)[: cells + 1], 0.0, None)
        return pmf, below


@dataclass(frozen=True)
class TurnCount:
    """Turns (requests) per conversation: fixed, geometric with a given mean, or an empirical pmf.

    ``pmf`` for empirical is a tuple of (turns, probability) pairs.
    """

    kind: str = "fixed"
    mean: float = 5.0
    pmf_pairs: tuple[tuple[int, float], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _kind("turns-dist", self.kind, TURN_KINDS)
        if self.kind == "empirical":
            values = [v for v, _ in self.pmf_pairs]
            probs = [p for _, p in self.pmf_pairs]
            if not values or any(int(v) != v or not 1 <= v <= MAX_TURNS for v in values) or any(
                    not p >= 0 for p in probs):
                raise ValueError(f"turns pmf must list whole turn counts in [1, {MAX_TURNS:,}] with probabilities "
                                 ">= 0")
            total = sum(probs)
            if not math.isclose(total, 1.0, rel_tol=1e-6):
                raise ValueError(f"turns pmf probabilities must sum to 1 (got {total})")
            object.__setattr__(self, "mean", float(sum(v * p for v, p in self.pmf_pairs)))
            return
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean) and self.mean >= 1):
            raise ValueError(f"turns must be a number >= 1 (got {self.mean!r})")
        if self.kind == "fixed" and int(self.mean) != self.mean:
            raise ValueError(f"turns must be a whole number >= 1 for fixed turns (got {self.mean!r})")
        # The mean first: a geometric mean above ~1e16 rounds q = 1 - 1/mean to 1 (log q = 0).
        if self.mean > MAX_TURNS or self.longest > MAX_TURNS:
            reach = ("" if self.kind == "fixed" or self.mean > MAX_TURNS else
                     f" (geometric with mean {self.mean:g} reaches {self.longest:,})")
            raise ValueError(f"turns must be at most {MAX_TURNS:,} per conversation{reach} (got {self.mean:g})")

    @property
    def continuation(self) -> float:
        """q, the probability of one more turn, for the geometric kind."""
        return 1.0 - 1.0 / self.mean

    @property
    def longest(self) -> int:
        """The most turns a conversation reaches (the end of ``support``), without building it."""
        if self.kind == "fixed":
            return int(self.mean)
        if self.kind == "empirical":
            return max(int(v) for v, p in self.pmf_pairs if p > 0)
        q = self.continuation
        return 1 if q == 0 else int(math.ceil(math.log(GEOMETRIC_TAIL) / math.log(q))) + 1

    @cached_property
    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """(turn counts, probabilities); the geometric tail below GEOMETRIC_TAIL is cut off."""
        if self.kind == "fixed":
            return np.array([int(self.mean)]), np.array([1.0])
        if self.kind == "empirical":
            values = np.array([int(v) for v, _ in self.pmf_pairs])
            probs = np.array([float(p) for _, p in self.pmf_pairs])
            keep = probs > 0
            return values[keep], probs[keep] / probs[keep].sum()
        q = self.continuation
        if q == 0:
            return np.array([1]), np.array([1.0])
        values = np.arange(1, self.longest + 1)
        p = 1.0 - q
        return values, np.power(1 - p, values - 1) * p  # scipy.stats.geom.pmf's own formula, without its import

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(size, int(self.mean))
        if self.kind == "geometric":
            return rng.geometric(1.0 - self.continuation, size)
        values, probs = self.support
        return rng.choice(values, size, p=probs)


@dataclass(frozen=True)
class TokenCount:
    """Tokens of one user message or one response: fixed, lognormal (mean, cv) or empirical."""

    kind: str = "fixed"
    mean: float = 200
    cv: float = 0.0
    samples: tuple[int, ...] = field(default=(), repr=False)
    name: str = "tokens"

    def __post_init__(self) -> None:
        _kind(f"{self.name}-dist", self.kind, TOKEN_KINDS)
        if self.kind == "empirical":
            if not self.samples or any(int(s) != s or s < 0 for s in self.samples):
                raise ValueError(f"{self.name} samples must be whole numbers >= 0")
            object.__setattr__(self, "mean", float(np.mean(self.samples)))
            return
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean) and 0 <= self.mean <= MAX_TOKENS):
            raise ValueError(f"{self.name} must be a number in [0, {MAX_TOKENS:,}] (got {self.mean!r})")
        if self.kind == "fixed":
            if int(self.mean) != self.mean:
                raise ValueError(f"{self.name} must be a whole number (got {self.mean!r})")
            if self.cv != 0:
                raise ValueError(f"{self.name}-cv must be 0 for a fixed count (got {self.cv!r})")
        else:
            _cv(f"{self.name}-cv", self.cv)
            _positive(self.name, self.mean)

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(size, int(self.mean), dtype=np.int64)
        if self.kind == "lognormal":
            mu, sigma = _lognormal_params(self.mean, self.cv)
            return np.rint(rng.lognormal(mu, sigma, size)).astype(np.int64)
        return rng.choice(np.asarray(self.samples, dtype=np.int64), size)
