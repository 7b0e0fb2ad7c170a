"""Think-time helpers the TTL models need: m(t), n-fold convolutions, quadrature nodes."""

import numpy as np
import pytest

from analytic.distributions import ThinkTime

RNG_SAMPLES = tuple(np.random.default_rng(7).gamma(0.5, 40.0, 3000))
THINKS = [
    ThinkTime("exp", 30.0),
    ThinkTime("det", 30.0),
    ThinkTime("gamma", 30.0, 0.5),
    ThinkTime("gamma", 30.0, 2.0),
    ThinkTime("lognormal", 30.0, 1.5),
    ThinkTime("empirical", samples=RNG_SAMPLES),
]
IDS = ["exp", "det", "gamma-cv0.5", "gamma-cv2", "lognormal", "empirical"]


# quad resolves a handful of steps, not thousands: the empirical case uses five atoms here.
FEW_ATOMS = ThinkTime("empirical", samples=(5.0, 10.0, 20.0, 60.0, 120.0))


@pytest.mark.parametrize("think", THINKS[:5] + [FEW_ATOMS], ids=IDS)
@pytest.mark.parametrize("t", [0.5, 10.0, 30.0, 95.0, 400.0])
def test_limited_mean_closed_forms_match_quadrature(think, t):
    assert think.limited_mean(t) == pytest.approx(think.limited_mean_numeric(t), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("think", THINKS, ids=IDS)
def test_limited_means_is_the_vectorised_limited_mean(think):
    t = np.array([0.0, 0.3, 7.0, 30.0, 61.0, 1e4])
    assert think.limited_means(t) == pytest.approx([think.limited_mean(x) for x in t], rel=1e-12, abs=1e-12)
    assert think.limited_means(1e7) == pytest.approx(think.mean, rel=1e-6)


@pytest.mark.parametrize("think", [THINKS[0], THINKS[2], THINKS[3]], ids=["exp", "gamma-cv0.5", "gamma-cv2"])
def test_erlang_and_gamma_convolutions_match_the_lattice(think):
    n = np.arange(0, 8)
    exact = think.convolution_cdf(n, 75.0)
    numeric = think.convolution_cdf_numeric(n, 75.0, cells=4096)
    assert numeric == pytest.approx(exact, abs=2e-3)
    assert exact[0] == 1.0 and np.all(np.diff(exact) <= 0)


def test_erlang_closed_form_by_hand():
    think = ThinkTime("exp", 10.0)
    x = 25.0 / 10.0
    # P(S_3 <= t) = 1 - e^{-x} (1 + x + x^2/2) for rate-1/10 exponentials.
    assert think.convolution_cdf(3, 25.0) == pytest.approx(1 - np.exp(-x) * (1 + x + x * x / 2), rel=1e-12)


def test_deterministic_convolution_is_a_step():
    think = ThinkTime("det", 30.0)
    assert list(think.convolution_cdf([0, 1, 2, 3, 4], 90.0)) == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("think", [THINKS[4], THINKS[5]], ids=["lognormal", "empirical"])
def test_numeric_convolutions_match_monte_carlo(think):
    rng = np.random.default_rng(11)
    sums = np.cumsum(think.sample(rng, 400_000).reshape(100_000, 4), axis=1)
    for t in (20.0, 60.0, 150.0):
        mc = (sums <= t).mean(axis=0)
        assert think.convolution_cdf([1, 2, 3, 4], t) == pytest.approx(mc, abs=6e-3)


@pytest.mark.parametrize("think", THINKS, ids=IDS)
def test_convolution_lattice_is_consistent(think):
    pmf, below = think.convolution_lattice(6, 80.0, cells=256)
    assert pmf.shape == below.shape == (7, 257)
    assert np.all(pmf >= 0) and np.all(pmf.sum(axis=1) <= 1 + 1e-9)
    assert np.all(np.diff(below, axis=1) >= -1e-12)  # a CDF in t
    assert np.all(np.diff(below[1:, -1]) <= 1e-12)  # more gaps, less likely below t


def test_convolution_lattice_stops_at_the_tail():
    pmf, below = ThinkTime("lognormal", 30.0, 0.3).convolution_lattice(50, 60.0, cells=128, tail=1e-13)
    assert below[10:].sum() == 0.0 and pmf[10:].sum() == 0.0


@pytest.mark.parametrize("think", THINKS, ids=IDS)
def test_quantile_points_are_equally_likely(think):
    nodes = think.quantile_points(512)
    assert np.all(np.diff(nodes) >= 0)
    assert nodes.mean() == pytest.approx(think.mean, rel=0.05)


def test_negative_convolution_order_is_rejected():
    with pytest.raises(ValueError, match="convolution order"):
        ThinkTime("exp", 3.0).convolution_cdf(-1, 1.0)
