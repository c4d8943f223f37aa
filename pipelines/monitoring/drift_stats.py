"""Drift statistics from quantile sketches: PSI, Kolmogorov-Smirnov, Wasserstein, Jensen-Shannon.

Daily data profiles keep, per (column, segment), a quantile summary at the fixed rank grid :data:`RANKS`
(0, 0.005, ..., 0.995, 1: 201 points, rank 0 = min, rank 1 = max), e.g. read from a KLL sketch. Everything
here works on those grids, never on raw rows, and is vectorized over rows: an input is a float array
``[n, len(RANKS)]``, one row per indicator, and a row that holds a NaN (no data) gives NaN.

The distribution behind a grid ``q`` is the piecewise-linear quantile function through the points
``(RANKS[j], q[j])``. Its CDF (:func:`cdf_at`) is the inverse:

* below the grid's minimum it is 0, at or above its maximum 1;
* between two grid points with ``q[j] <= x < q[j+1]`` (so ``q[j] < q[j+1]``) it interpolates the rank
  linearly: ``RANKS[j] + (x - q[j]) / (q[j+1] - q[j]) * (RANKS[j+1] - RANKS[j])``;
* it is right-continuous: at a value repeated over a run of grid points (a point mass, e.g. a discrete
  feature), ``F(x)`` is the rank of the *last* point of the run, so the whole mass counts as ``<= x``.

For a grid of exact quantiles of a sample with the inverted-CDF definition (what :func:`quantiles_from_sample`
computes and what a KLL sketch's ``get_quantile`` returns: an actual item), this CDF is within one rank step
``h = 0.005`` of the sample's empirical CDF at every ``x``: ``Q(r_j) <= x < Q(r_{j+1})`` implies
``r_j <= F_emp(x) < r_{j+1}``, and the interpolated value lies in ``[r_j, r_{j+1}]`` too. At a grid's own
points the error is one-sided: ``F(x) - h < cdf_at(x) <= F(x)``. The statistics inherit bounds in ``h``
(see the tests for the ones each statistic gets).

* :func:`psi`: Population Stability Index over ``bins`` bins whose interior edges are the reference's
  quantiles at ranks ``1/bins .. (bins-1)/bins`` (the outer bins are open). Both fractions come from the CDFs
  at the edges, the reference's from its own CDF too (about ``1/bins`` each for a continuous feature; for a
  discrete one the edges repeat and the empty bins between equal edges contribute 0 on both sides).
  ``PSI = sum (cur - ref) * ln(cur / ref)`` with both fractions floored at ``eps``.
* :func:`ks`: ``D = sup |F_cur - F_ref|`` over the union of both grids' points (both CDFs are piecewise
  linear between those points, so the supremum is at one of them).
* :func:`wasserstein`: ``W1 = integral_0^1 |Q_cur(p) - Q_ref(p)| dp``, trapezoid over :data:`RANKS`;
  :func:`wasserstein_normed` divides by the reference's scale, like Evidently's normed Wasserstein (its drift
  threshold is 0.1).
* :func:`jensen_shannon`: the Jensen-Shannon distance (base 2) between category counts.

Plain numpy: no Spark, no scipy (the tests compare against scipy on raw samples).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RANKS", "cdf_at", "jensen_shannon", "ks", "psi", "quantiles_from_sample", "reference_scale",
           "wasserstein", "wasserstein_normed"]

GRID_SIZE = 201
# i / 200, correctly rounded: the deciles (0.1, 0.2, ...) and 0.16 / 0.84 are exactly grid ranks.
RANKS: np.ndarray = np.arange(GRID_SIZE, dtype=np.float64) / (GRID_SIZE - 1)
RANKS.setflags(write=False)
RANK_STEP = 1.0 / (GRID_SIZE - 1)
# The normed Wasserstein's last-resort scale floor (a reference that is a point mass at 0).
TINY_SCALE = 1e-12


def _grid(q: np.ndarray, name: str) -> np.ndarray:
    """``q`` as a float ``[n, len(RANKS)]`` array (a 1-D grid is one row), made non-decreasing per row.

    Sketch quantiles are non-decreasing up to rounding; the running maximum repairs a tiny inversion so the
    CDF stays well defined. A row with any NaN is left all-NaN (no data).
    """
    a = np.atleast_2d(np.asarray(q, dtype=np.float64))
    if a.ndim != 2 or a.shape[1] != GRID_SIZE:
        raise ValueError(f"{name} must have shape [n, {GRID_SIZE}] (quantiles at RANKS), got {a.shape}")
    bad = np.isnan(a).any(axis=1)
    a = np.maximum.accumulate(np.where(bad[:, None], 0.0, a), axis=1)
    a[bad] = np.nan
    return a


def _pair(ref_q: np.ndarray, cur_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = _grid(ref_q, "ref_q"), _grid(cur_q, "cur_q")
    if ref.shape != cur.shape:
        raise ValueError(f"ref_q and cur_q must have the same shape, got {ref.shape} and {cur.shape}")
    return ref, cur


def _count_le(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per row, how many of the (sorted) ``q[i]`` are ``<= x[i, k]``: ``[n, m]`` ints.

    One stable argsort of ``[q | x]`` per row (vectorized over rows): ties keep ``q`` ahead of ``x`` (it comes
    first in the concatenation), so a grid value equal to ``x`` is counted.
    """
    n, g = q.shape
    both = np.concatenate([q, x], axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    seen_q = np.cumsum(order < g, axis=1)
    rows, pos = np.nonzero(order >= g)
    counts = np.empty(x.shape, dtype=np.intp)
    counts[rows, order[rows, pos] - g] = seen_q[rows, pos]
    return counts


def _cdf(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`cdf_at` on a validated grid ``q`` [n, G] and points ``x`` [n, m]."""
    g = q.shape[1]
    k = _count_le(q, x)
    j = np.clip(k - 1, 0, g - 2)
    lo = np.take_along_axis(q, j, axis=1)
    hi = np.take_along_axis(q, j + 1, axis=1)
    inside = (k > 0) & (k < g)  # q[j] <= x < q[j + 1]: a strictly increasing segment
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(inside, (x - lo) / np.where(inside, hi - lo, 1.0), 0.0)
    r_lo, r_hi = RANKS[j], RANKS[j + 1]
    out = np.where(k >= g, 1.0, np.where(k <= 0, 0.0, r_lo + frac * (r_hi - r_lo)))
    out[np.isnan(x) | np.isnan(q[:, :1])] = np.nan
    return out


def cdf_at(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The CDF of each quantile grid at points: ``q`` [n, G] quantiles at :data:`RANKS`, ``x`` [n, m] (or [m],
    the same points for every row) -> [n, m] values in [0, 1].

    The inverse of the piecewise-linear quantile function (see the module docstring): 0 below the minimum,
    1 at or above the maximum, linear in rank between grid values, right-continuous at a point mass (at a value
    repeated over grid ranks ``r_a .. r_b`` the CDF is ``r_b``). NaN where the row or the point is NaN.
    """
    grid = _grid(q, "q")
    pts = np.asarray(x, dtype=np.float64)
    if pts.ndim == 1:
        pts = np.broadcast_to(pts, (grid.shape[0], pts.shape[0]))
    if pts.ndim != 2 or pts.shape[0] != grid.shape[0]:
        raise ValueError(f"x must have shape [{grid.shape[0]}, m] or [m], got {np.shape(x)}")
    return _cdf(grid, pts)


def _quantile_at(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The quantile function at ranks ``p`` (same for all rows), linear between grid ranks: [n, len(p)]."""
    j = np.clip(np.searchsorted(RANKS, p, side="right") - 1, 0, GRID_SIZE - 2)
    w = (p - RANKS[j]) / (RANKS[j + 1] - RANKS[j])
    # A rank on the grid (w == 0) takes the grid value itself.
    return np.where(w == 0.0, q[:, j], q[:, j] * (1.0 - w) + q[:, j + 1] * w)


def psi(ref_q: np.ndarray, cur_q: np.ndarray, bins: int = 10, eps: float = 1e-4) -> np.ndarray:
    """Population Stability Index of the current grid against the reference grid, per row: [n].

    Interior edges are the reference's quantiles at ranks ``k / bins`` (k = 1 .. bins-1), the outer bins are
    open; bin ``k`` is ``(e_k, e_{k+1}]``. Both fractions come from the CDFs at the edges (:func:`cdf_at`), the
    reference's from its own CDF, so repeated edges of a discrete feature give empty bins on both sides
    (contributing 0). ``PSI = sum_k (cur_k - ref_k) * ln(cur_k / ref_k)``, both floored at ``eps``. NaN where
    either row has no data.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    ref, cur = _pair(ref_q, cur_q)
    n = ref.shape[0]
    edges = _quantile_at(ref, np.arange(1, bins) / bins)
    zeros, ones = np.zeros((n, 1)), np.ones((n, 1))
    ref_frac = np.diff(np.concatenate([zeros, _cdf(ref, edges), ones], axis=1), axis=1)
    cur_frac = np.diff(np.concatenate([zeros, _cdf(cur, edges), ones], axis=1), axis=1)
    r = np.maximum(ref_frac, eps)  # NaN propagates through maximum
    c = np.maximum(cur_frac, eps)
    return np.sum((c - r) * np.log(c / r), axis=1)


def ks(ref_q: np.ndarray, cur_q: np.ndarray) -> np.ndarray:
    """Kolmogorov-Smirnov statistic ``sup_x |F_cur(x) - F_ref(x)|`` per row: [n] in [0, 1].

    Both CDFs (:func:`cdf_at`) are evaluated at the union of both grids' points; between those points both are
    linear, so the supremum is at one of them. NaN where either row has no data.
    """
    ref, cur = _pair(ref_q, cur_q)
    pts = np.concatenate([ref, cur], axis=1)
    return np.max(np.abs(_cdf(cur, pts) - _cdf(ref, pts)), axis=1)


def _trapezoid(f: np.ndarray) -> np.ndarray:
    """Trapezoid rule over :data:`RANKS` along the last axis."""
    return np.sum((f[:, 1:] + f[:, :-1]) * (0.5 * np.diff(RANKS)), axis=1)


def wasserstein(ref_q: np.ndarray, cur_q: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance ``integral_0^1 |Q_cur(p) - Q_ref(p)| dp`` per row (trapezoid over RANKS): [n].

    In the feature's units. NaN where either row has no data.
    """
    ref, cur = _pair(ref_q, cur_q)
    return _trapezoid(np.abs(cur - ref))


def reference_scale(ref_q: np.ndarray) -> np.ndarray:
    """The scale :func:`wasserstein_normed` divides by, per row: [n] (> 0, NaN for a row without data).

    In order, the first that is positive:

    1. ``(Q(0.84) - Q(0.16)) / 2``: the standard deviation of a normal, robust to the tails;
    2. the grid's standard deviation ``sqrt(integral (Q(p) - mean)^2 dp)`` (trapezoid): a discrete feature
       with 68% or more of its mass on one value has a zero inter-quantile range but a positive spread;
    3. ``|mean|``: a point mass at a non-zero value (a shift to ``v (1 + d)`` then scores ``d``);
    4. 1.0: a point mass at 0 (the distance stays in the feature's units);

    and at least ``TINY_SCALE``.
    """
    ref = _grid(ref_q, "ref_q")
    i16, i84 = int(round(0.16 * (GRID_SIZE - 1))), int(round(0.84 * (GRID_SIZE - 1)))
    robust = (ref[:, i84] - ref[:, i16]) / 2.0
    mean = _trapezoid(ref)
    std = np.sqrt(np.maximum(_trapezoid((ref - mean[:, None]) ** 2), 0.0))
    scale = np.where(robust > 0, robust, np.where(std > 0, std, np.where(np.abs(mean) > 0, np.abs(mean), 1.0)))
    scale = np.maximum(scale, TINY_SCALE)
    scale[np.isnan(ref[:, 0])] = np.nan
    return scale


def wasserstein_normed(ref_q: np.ndarray, cur_q: np.ndarray) -> np.ndarray:
    """:func:`wasserstein` divided by the reference's scale (:func:`reference_scale`) per row: [n].

    Mirrors Evidently's normed Wasserstein distance (``wasserstein_distance / max(std(reference), 0.001)``,
    drift at 0.1), with the std approximated from the grid by ``(Q(0.84) - Q(0.16)) / 2`` and a documented
    fallback for degenerate references instead of an absolute 0.001 (which depends on the feature's units).
    """
    ref, cur = _pair(ref_q, cur_q)
    return _trapezoid(np.abs(cur - ref)) / reference_scale(ref)


def jensen_shannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between category counts per row: [n].

    ``ref_counts`` and ``cur_counts`` are non-negative ``[n, k]`` arrays aligned on the same k categories (a
    category absent on one side has count 0 there). Each row is normalized to a distribution; the result is
    ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2`` and logs base 2, as
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``. NaN where a row sums to 0 (or holds a NaN).
    """
    ref = np.atleast_2d(np.asarray(ref_counts, dtype=np.float64))
    cur = np.atleast_2d(np.asarray(cur_counts, dtype=np.float64))
    if ref.ndim != 2 or ref.shape != cur.shape:
        raise ValueError(f"ref_counts and cur_counts must have the same [n, k] shape, got {ref.shape} and "
                         f"{cur.shape}")
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("counts must be non-negative")
    ref_tot = ref.sum(axis=1, keepdims=True)
    cur_tot = cur.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ref / ref_tot
        q = cur / cur_tot
        m = (p + q) / 2.0
        # 0 * log(0 / m) = 0 (scipy's rel_entr); m > 0 wherever p > 0 or q > 0.
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    js = (left.sum(axis=1) + right.sum(axis=1)) / (2.0 * np.log(2.0))
    out = np.sqrt(np.maximum(js, 0.0))
    out[~((ref_tot[:, 0] > 0) & (cur_tot[:, 0] > 0))] = np.nan  # also NaN totals
    return out


def quantiles_from_sample(values: np.ndarray) -> np.ndarray:
    """The exact quantile grid of a 1-D sample at :data:`RANKS`: [len(RANKS)].

    Uses ``np.quantile(..., method="inverted_cdf")``: each quantile is an actual item of the sample (the
    smallest ``x`` with ``F_emp(x) >= p``), as a KLL sketch's ``get_quantile`` returns (an item, not an
    interpolation between two), so references computed in memory and sketches read from profiles are the
    same kind of grid. NaN (and +-inf, which the CDF interpolation cannot place) are dropped; no value left ->
    a row of NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.full(GRID_SIZE, np.nan)
    return np.quantile(v, RANKS, method="inverted_cdf")
