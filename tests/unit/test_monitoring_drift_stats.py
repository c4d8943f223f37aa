"""Drift statistics from quantile grids (pipelines/monitoring/drift_stats.py) against exact values on raw samples.

Every tolerance below is a bound that follows from the 0.5% rank step ``H`` of the grid (derived next to each
test), not a value read off a run. The fact they all rest on: for the inverted-CDF quantile grid of a sample,
``Q(r_j) <= x < Q(r_{j+1})`` implies ``r_j <= F_emp(x) < r_{j+1}``, and :func:`cdf_at` returns a value in
``[r_j, r_{j+1}]``: the grid's CDF is within ``H`` of the sample's empirical CDF everywhere, and at a grid's
own points it is one-sided, ``F_emp(x) - H < cdf_at(x) <= F_emp(x)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.monitoring.drift_stats import (
    RANK_STEP,
    RANKS,
    cdf_at,
    jensen_shannon,
    ks,
    psi,
    quantiles_from_sample,
    reference_scale,
    wasserstein,
    wasserstein_normed,
)

H = RANK_STEP
N = 5000  # a multiple of 200: every grid rank is a multiple of 1/N (used by the Wasserstein bound)
EPS = 1e-4
BINS = 10


def _samples() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference and current samples of realistic feature shapes (seeded)."""
    rng = np.random.default_rng(20131210)
    hours = np.arange(5, 24)
    w_ref = np.exp(-0.5 * ((hours - 12) / 4.0) ** 2)
    w_cur = np.exp(-0.5 * ((hours - 15) / 4.0) ** 2)
    return {
        "normal_same": (rng.normal(10, 2, N), rng.normal(10, 2, N)),
        "normal_shifted": (rng.normal(10, 2, N), rng.normal(10.8, 2.4, N)),
        "lognormal": (rng.lognormal(3, 1, N), rng.lognormal(3.2, 1, N)),
        "discrete_3": (rng.choice([0.0, 1.0, 2.0], N, p=[0.5, 0.3, 0.2]),
                       rng.choice([0.0, 1.0, 2.0], N, p=[0.4, 0.3, 0.3])),
        "discrete_7": (rng.choice(np.arange(1.0, 8.0), N, p=[0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05]),
                       rng.choice(np.arange(1.0, 8.0), N, p=[0.1, 0.1, 0.2, 0.25, 0.15, 0.1, 0.1])),
        "hour_of_day": (rng.choice(hours, N, p=w_ref / w_ref.sum()).astype(float),
                        rng.choice(hours, N, p=w_cur / w_cur.sum()).astype(float)),
    }


SAMPLES = _samples()
CASES = sorted(SAMPLES)


def _grids(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a, b = SAMPLES[name]
    return a, b, quantiles_from_sample(a)[None, :], quantiles_from_sample(b)[None, :]


def _ecdf(sample: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(sample), x, side="right") / sample.size


# --- the CDF -------------------------------------------------------------------------------------------------


def test_ranks_grid():
    assert RANKS.shape == (201,) and RANKS[0] == 0.0 and RANKS[-1] == 1.0
    assert np.allclose(np.diff(RANKS), 0.005)
    assert RANKS[20] == 0.1 and RANKS[32] == 0.16 and RANKS[168] == 0.84  # exact: edges and scale ranks


def test_cdf_at_point_masses_count_the_whole_mass():
    values = np.repeat([0.0, 1.0, 2.0], [500, 300, 200])  # P = 0.5, 0.3, 0.2
    q = quantiles_from_sample(values)[None, :]
    got = cdf_at(q, np.array([[-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]]))
    # Between the masses the rank is interpolated over the one grid step that separates them.
    assert got[0] == pytest.approx([0.0, 0.5, 0.5 + 0.5 * H, 0.8, 0.8 + 0.5 * H, 1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_cdf_at_is_within_one_rank_step_of_the_empirical_cdf(name):
    a, b, qa, _ = _grids(name)
    x = np.unique(np.concatenate([a, b, [a.min() - 1, a.max() + 1]]))[None, :]
    got = cdf_at(qa, x)[0]
    assert np.all(np.abs(got - _ecdf(a, x[0])) < H + 1e-12)
    own = qa[0]
    assert np.all(cdf_at(qa, qa)[0] <= _ecdf(a, own) + 1e-12)  # one-sided at the grid's own points
    assert np.all(cdf_at(qa, qa)[0] > _ecdf(a, own) - H - 1e-12)


def test_cdf_at_shapes_nan_rows_and_shared_points():
    q = np.stack([quantiles_from_sample(np.arange(100.0)), np.full(201, np.nan)])
    out = cdf_at(q, np.array([-5.0, 49.5, 1000.0, np.nan]))
    assert out.shape == (2, 4)
    assert out[0, 0] == 0.0 and out[0, 2] == 1.0 and np.isnan(out[0, 3])
    assert 0.49 < out[0, 1] < 0.51
    assert np.isnan(out[1]).all()
    with pytest.raises(ValueError, match="shape"):
        cdf_at(np.zeros((2, 10)), np.zeros((2, 3)))


# --- Kolmogorov-Smirnov --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_ks_matches_scipy_within_three_rank_steps(name):
    stats = pytest.importorskip("scipy.stats")
    a, b, qa, qb = _grids(name)
    exact = stats.ks_2samp(a, b).statistic
    # Bound, for any data: the supremum is attained at some x*; at the largest grid point g <= x* of either
    # grid, each empirical CDF is at most H below its value at x* (no grid point of that sample in between),
    # so the signed difference moves by less than H. At g the reference's own grid CDF is within (-H, 0] of
    # the empirical one, the other grid's within (-H, H): the estimate moves by less than 2H more. 3H = 0.015.
    assert abs(ks(qa, qb)[0] - exact) < 3 * H
    assert abs(ks(qb, qa)[0] - exact) < 3 * H


def test_ks_identical_and_same_distribution():
    a, b, qa, qb = _grids("normal_same")
    assert ks(qa, qa)[0] == 0.0
    # Two samples of one distribution: below the KS test's 0.1% critical value 1.95 * sqrt(2 / N), plus the
    # grid's 3H.
    assert ks(qa, qb)[0] < 1.95 * np.sqrt(2 / N) + 3 * H


# --- PSI -----------------------------------------------------------------------------------------------------


def _direct_fractions(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin fractions of the raw samples, bins (e_k, e_k+1] with open outer bins (np.histogram-style counts)."""
    fa = np.diff(np.concatenate([[0.0], _ecdf(a, edges), [1.0]]))
    fb = np.diff(np.concatenate([[0.0], _ecdf(b, edges), [1.0]]))
    return fa, fb


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    r, c = np.maximum(ref, EPS), np.maximum(cur, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _psi_bound(ref: np.ndarray, cur: np.ndarray, w_ref: np.ndarray, w_cur: np.ndarray) -> float:
    """How far a PSI computed from CDF values at the edges, each off by at most ``w`` (per edge), can be from
    the PSI of the exact ones (``ref``, ``cur``: the exact bin fractions).

    PSI is a smooth function of the CDF values F(e) at the edges (bin k's fraction is F(e_k+1) - F(e_k)) as
    long as no fraction reaches the EPS floor. Taylor with the Lagrange remainder: |dPSI| <= sum_e |dPSI/dF(e)|
    w(e) + 1/2 sum_k (sup|f_cc| dc_k^2 + sup|f_rr| dr_k^2 + 2 sup|f_cr| dc_k dr_k), with f(c, r) =
    (c - r) ln(c / r) per bin, dPSI/dF(e_k) the difference of the partials of the two bins the edge separates
    (df/dc = ln(c/r) + 1 - r/c, df/dr the mirror), d_k = w(e_k) + w(e_k+1) a fraction's largest change, and
    the sups over the box of fractions +-d: f_cc = 1/c + r/c^2, f_rr = 1/r + c/r^2, |f_cr| = 1/c + 1/r.
    """
    dc = np.concatenate([[0.0], w_cur]) + np.concatenate([w_cur, [0.0]])
    dr = np.concatenate([[0.0], w_ref]) + np.concatenate([w_ref, [0.0]])
    moving = (dc > 0) | (dr > 0)
    c, r = np.maximum(cur, EPS), np.maximum(ref, EPS)
    c_lo, r_lo, c_hi, r_hi = c - dc, r - dr, c + dc, r + dr
    assert np.all(np.where(moving, np.minimum(c_lo, r_lo), 1.0) > EPS)  # away from the floor: smooth
    gc = np.log(c / r) + 1 - r / c
    gr = np.log(r / c) + 1 - c / r
    first = np.sum(np.abs(gc[:-1] - gc[1:]) * w_cur + np.abs(gr[:-1] - gr[1:]) * w_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        second = 0.5 * np.sum(np.where(moving, dc ** 2 * (1 / c_lo + r_hi / c_lo ** 2)
                                       + dr ** 2 * (1 / r_lo + c_hi / r_lo ** 2)
                                       + 2 * dc * dr * (1 / c_lo + 1 / r_lo), 0.0))
    return float(first + second)


@pytest.mark.parametrize("name", CASES)
def test_psi_matches_the_direct_psi_on_the_reference_deciles(name):
    a, b, qa, qb = _grids(name)
    edges = qa[0, 20:200:20]  # the reference's deciles: the same items np.quantile picks from the sample
    assert np.array_equal(edges, np.quantile(a, np.arange(1, BINS) / BINS, method="inverted_cdf"))
    fa, fb = _direct_fractions(a, b, edges)
    exact = _psi(fa, fb)
    # Repeated edges (discrete features) make empty bins on both sides, exactly, in both computations: the
    # bound is taken on the distinct edges.
    distinct = np.unique(edges)
    da, db = _direct_fractions(a, b, distinct)
    assert _psi(da, db) == pytest.approx(exact, abs=1e-12)
    # How far the grid's CDF values at the edges can be from the samples': H (the module's bound), and 0 where
    # they are exact: outside a grid's [min, max) (0 or 1 on both sides), and the reference's at its own
    # deciles when the sample has no ties (a single item at rank k/10 * N, a multiple of 1/N: F = k/10).
    exact_ref = (distinct >= qa[0, -1]) | (distinct < qa[0, 0]) | (np.unique(a).size == a.size)
    w_ref = np.where(exact_ref, 0.0, H)
    w_cur = np.where((distinct >= qb[0, -1]) | (distinct < qb[0, 0]), 0.0, H)
    bound = _psi_bound(da, db, w_ref, w_cur)
    got = psi(qa, qb, bins=BINS, eps=EPS)[0]
    assert abs(got - exact) <= bound, (got, exact, bound)
    # The bound is the worst case the grid allows, not the error seen (far smaller: an edge's error is rarely
    # a full step, and they do not all push one way). It is still a check with teeth: below half the PSI or
    # half the usual "moderate shift" level 0.1, whichever is larger.
    assert bound < max(0.05, exact / 2), bound


def test_psi_reference_fractions_are_deciles_for_a_continuous_feature():
    _, _, qa, _ = _grids("normal_shifted")
    assert psi(qa, qa)[0] == 0.0
    # The reference against itself through the CDF: each bin holds 1/bins (a grid point's own rank).
    edges = qa[:, 20:200:20]
    assert cdf_at(qa, edges)[0] == pytest.approx(np.arange(1, 10) / 10, abs=1e-12)


def test_psi_same_distribution_is_small():
    _, _, qa, qb = _grids("normal_same")
    # Sampling alone: E[PSI] ~ (bins - 1) * (1/N + 1/N) = 0.0036 (chi-square); five times that with the grid.
    assert psi(qa, qb)[0] < 5 * (BINS - 1) * 2 / N


def test_point_mass_reference():
    ref = quantiles_from_sample(np.zeros(N))[None, :]
    cur = quantiles_from_sample(np.repeat([0.0, 1.0], [9 * N // 10, N // 10]))[None, :]
    # All nine edges are 0: bin (-inf, 0] holds ref 1 / cur 0.9, the last bin (0, inf) ref 0 / cur 0.1, the
    # bins (0, 0] are empty on both sides.
    expected = (0.9 - 1.0) * np.log(0.9) + (0.1 - EPS) * np.log(0.1 / EPS)
    got = psi(ref, cur)[0]
    assert np.isfinite(got) and got == pytest.approx(expected, abs=1e-12)
    assert got > 0.25  # the usual "major shift" threshold
    assert ks(ref, cur)[0] == pytest.approx(0.1, abs=1e-12)
    # W is 0.1 exactly; the grid's quantile function jumps from 0 to 1 between ranks 0.9 and 0.905, and the
    # trapezoid puts the jump in the middle of that step: H/2 less.
    assert wasserstein(ref, cur)[0] == pytest.approx(0.1 - H / 2, abs=1e-12)
    assert reference_scale(ref)[0] == 1.0  # a point mass at 0: the distance stays in the feature's units
    assert wasserstein_normed(ref, cur)[0] == pytest.approx(0.1 - H / 2, abs=1e-12)
    assert psi(cur, ref)[0] > 0.25 and np.isfinite(psi(cur, ref)[0])


# --- Wasserstein ---------------------------------------------------------------------------------------------


def _abs_linear_integral(l0: np.ndarray, l1: np.ndarray, width: float) -> np.ndarray:
    """Exact integral of |L| over an interval where L is linear from l0 to l1."""
    same_sign = l0 * l1 >= 0
    den = np.where(same_sign, 1.0, np.abs(l0) + np.abs(l1))
    return width * np.where(same_sign, np.abs(l0 + l1) / 2, (l0 ** 2 + l1 ** 2) / (2 * den))


def _chord_l1(a: np.ndarray, b: np.ndarray) -> float:
    """integral_0^1 |g~(p) - g(p)| dp for g = Q_b - Q_a, the difference of the samples' quantile step functions
    (inverted CDF: x_(i) on ((i-1)/N, i/N]), and g~ the grid's piecewise-linear one (chords between grid
    points). Both samples have the same N, a multiple of 200: on each step g is constant and g~ linear (one
    grid interval), so the integral is exact, step by step."""
    n = a.size
    assert b.size == n and n % 200 == 0
    g = np.sort(b) - np.sort(a)
    grid = quantiles_from_sample(b) - quantiles_from_sample(a)
    u, v = np.arange(n) / n, np.arange(1, n + 1) / n
    return float(np.sum(_abs_linear_integral(np.interp(u, RANKS, grid) - g, np.interp(v, RANKS, grid) - g, 1 / n)))


def _crossing_excess(qa: np.ndarray, qb: np.ndarray) -> float:
    """How much the trapezoid of |g~| overshoots integral |g~| for g~ linear between grid points: only where it
    changes sign inside an interval, by H |g0| |g1| / (|g0| + |g1|)."""
    g = qb - qa
    g0, g1 = g[:-1], g[1:]
    cross = g0 * g1 < 0
    return float(np.sum(np.where(cross, H * np.abs(g0 * g1) / np.where(cross, np.abs(g0) + np.abs(g1), 1.0), 0.0)))


@pytest.mark.parametrize("name", CASES)
def test_wasserstein_matches_scipy(name):
    stats = pytest.importorskip("scipy.stats")
    a, b, qa, qb = _grids(name)
    exact = stats.wasserstein_distance(a, b)
    # The grid's W is the trapezoid of |g~|, g~ = Q~_cur - Q~_ref the piecewise-linear quantile functions. So
    # |W_grid - W| <= (trapezoid - integral of |g~|: the crossing excess) + |integral |g~| - integral |g||, and
    # the last is at most integral |g~ - g|: what the 0.5% rank step loses of the difference of the two quantile
    # functions (chords instead of the steps inside each rank interval; mostly the two outer tail intervals).
    bound = _chord_l1(a, b) + _crossing_excess(qa[0], qb[0])
    got = wasserstein(qa, qb)[0]
    assert abs(got - exact) <= bound + 1e-9 * exact, (got, exact, bound)
    if name != "normal_same":  # the check tells the distance from half of it
        assert bound < exact / 2, bound


def test_wasserstein_exact_for_distributions_the_grid_represents():
    # Uniform quantile functions are linear in rank: the grid holds them exactly, and without a crossing the
    # trapezoid is exact too.
    ref = (0.0 + 1.0 * RANKS)[None, :]
    cur = (0.3 + 2.0 * RANKS)[None, :]  # |Q_cur - Q_ref| = 0.3 + p
    assert wasserstein(ref, cur)[0] == pytest.approx(0.8, abs=1e-12)
    assert ks(ref, cur)[0] == pytest.approx(0.65, abs=1e-12)  # F_ref(x) = x, F_cur(x) = (x - 0.3) / 2, at x = 1
    # Scale: (Q(0.84) - Q(0.16)) / 2 = 0.34 for U(0, 1).
    assert wasserstein_normed(ref, cur)[0] == pytest.approx(0.8 / 0.34, abs=1e-12)


def test_reference_scale_and_normed_distance():
    a, b, qa, qb = _grids("normal_shifted")
    # For a normal, (Q(0.84) - Q(0.16)) / 2 is sigma * 0.994 (z(0.84) = 0.9945), here sigma = 2, plus the
    # sample quantiles' sampling error (sd ~ 1.5% at N = 5000).
    assert reference_scale(qa)[0] == pytest.approx(2 * 0.9945, rel=0.06)
    assert wasserstein_normed(qa, qb)[0] == pytest.approx(wasserstein(qa, qb)[0] / reference_scale(qa)[0])
    # A binary feature with 90% zeros: Q(0.84) = Q(0.16) = 0, the grid's std instead (sqrt(0.09) = 0.3; the
    # grid's jump sits mid-step, within H of rank 0.9: the std moves by less than 0.01).
    binary = quantiles_from_sample(np.repeat([0.0, 1.0], [9 * N // 10, N // 10]))[None, :]
    assert reference_scale(binary)[0] == pytest.approx(0.3, abs=0.01)
    # A point mass at 5: |mean|.
    assert reference_scale(np.full((1, 201), 5.0))[0] == 5.0


# --- vectorized rows, NaN rows -------------------------------------------------------------------------------


def test_mixed_rows_match_row_by_row_and_nan_rows_give_nan():
    ref = np.stack([quantiles_from_sample(SAMPLES[n][0]) for n in CASES] + [np.full(201, np.nan)])
    cur = np.stack([quantiles_from_sample(SAMPLES[n][1]) for n in CASES] + [quantiles_from_sample(SAMPLES[CASES[0]][1])])
    ref = np.concatenate([ref, ref[:1]])
    cur = np.concatenate([cur, quantiles_from_sample(np.array([np.nan, np.nan]))[None, :]])
    n = len(CASES)
    assert ref.shape == cur.shape == (n + 2, 201)
    for fn in (psi, ks, wasserstein, wasserstein_normed):
        out = fn(ref, cur)
        assert out.shape == (n + 2,)
        assert np.isnan(out[n]) and np.isnan(out[n + 1])  # no reference / no current data
        for i in range(n):
            assert out[i] == pytest.approx(fn(ref[i:i + 1], cur[i:i + 1])[0], abs=1e-12)
            assert np.isfinite(out[i])


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        psi(np.zeros((2, 201)), np.zeros((3, 201)))
    with pytest.raises(ValueError, match="201"):
        ks(np.zeros((2, 100)), np.zeros((2, 100)))
    with pytest.raises(ValueError, match="bins"):
        psi(np.zeros((1, 201)), np.zeros((1, 201)), bins=1)


def test_quantiles_from_sample():
    values = np.array([3.0, np.nan, 1.0, 2.0, np.inf])
    q = quantiles_from_sample(values)
    assert q.shape == (201,)
    assert q[0] == 1.0 and q[-1] == 3.0
    assert set(np.unique(q)) <= {1.0, 2.0, 3.0}  # actual items, never an interpolation
    third = np.searchsorted(RANKS, 1 / 3)  # the first rank above 1/3: the second item from there
    assert q[third - 1] == 1.0 and q[third] == 2.0
    assert np.isnan(quantiles_from_sample(np.array([np.nan]))).all()
    assert np.isnan(quantiles_from_sample(np.array([]))).all()


# --- Jensen-Shannon ------------------------------------------------------------------------------------------


def test_jensen_shannon_matches_scipy():
    distance = pytest.importorskip("scipy.spatial.distance")
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 1000, size=(50, 6)).astype(float)
    cur = rng.integers(0, 1000, size=(50, 6)).astype(float)
    ref[3, 2] = 0.0
    cur[4, :3] = 0.0  # categories absent on one side
    ref[5], cur[5] = [10, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7]  # disjoint: distance 1
    got = jensen_shannon(ref, cur)
    expected = np.array([distance.jensenshannon(p, q, base=2) for p, q in zip(ref, cur, strict=True)])
    assert np.allclose(got, expected, rtol=0, atol=1e-9)
    assert got[5] == pytest.approx(1.0, abs=1e-12)
    assert jensen_shannon(ref[:1], ref[:1] * 3)[0] == pytest.approx(0.0, abs=1e-7)


def test_jensen_shannon_empty_rows():
    out = jensen_shannon(np.array([[0.0, 0.0], [1.0, 2.0], [1.0, 1.0]]), np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 2.0]]))
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="non-negative"):
        jensen_shannon(np.array([[-1.0, 2.0]]), np.array([[1.0, 2.0]]))
