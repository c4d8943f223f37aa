"""Anomaly detection on each data-quality indicator's daily time series, with thresholds learned from its history.

Atelier evaluates more than 100,000 indicators a day (the null rate of a feature in a segment, the PSI of a
feature against the training reference in a segment, a row count, ...). Each has a daily series; today's value
is scored against the indicator's own recent history with robust statistics, all indicators at once (numpy,
vectorized over indicators: 300,000 indicators x 28 days in well under a second).

Method, per indicator, on the last ``window_days`` columns of its history (all strictly before the current day,
NaN = no value that day):

* ``n_history`` = the number of non-null history points. Below ``min_history`` no learned threshold applies:
  severity 0 whatever the value (fixed thresholds, :func:`fixed_severity`, apply from day one).
* Baseline, with weekly seasonality where the history allows: if the current weekday has at least
  ``seasonal_min_weeks`` non-null points in the window, the median of those same-weekday points
  (``seasonal`` = True); otherwise the median of all non-null history.
* Scale: ``1.4826 * MAD`` (the normal-consistent median absolute deviation) of *all* non-null history points
  around their overall median, seasonal or not. Residuals after removing per-weekday medians are not used:
  with 4 weeks each weekday's median is fitted to 3-4 points it then measures, which shrinks the residuals
  (by about a third for 4 normal points: 1.4826 * MAD of such residuals is ~0.65 sigma), and that would inflate
  every z by half at 100,000 indicators a day. The overall MAD is unaffected by a pattern on fewer than half
  of the days (weekends: the median of the absolute deviations stays among the weekdays'); a pattern spread
  over most days inflates it, which costs sensitivity (fewer alerts), never false alerts.
* The scale is at least the history's tail spread on the judged side (``q90`` of the residuals from each
  weekday's median, or the overall one, / 1.2816): about the MAD's sigma on normal data, but not ~0 for a
  zero-inflated or spiky series (precipitation), whose ordinary days would otherwise all alert.
* The scale is floored at ``max(min_scale_rel * |baseline|, abs_floor, min_scale_abs)``: a relative floor
  (a 5% move of a large, very stable count is not an incident), the caller's absolute floor per indicator
  (a null rate flat at 0.0 with ``abs_floor=0.005`` flags 0.10 as high, not 0.001) and a last-resort epsilon
  so z is finite (a flat history with no floor flags any change).
* ``z = (current - baseline) / scale``; severity 1 / 2 / 3 (low / medium / high) where the directed z
  (``|z|`` for ``direction="both"``, ``z`` for ``"up"``: null rates, drift distances; ``-z`` for ``"down"``:
  row counts) reaches ``z_low`` / ``z_medium`` / ``z_high``. 0 where the current value is NaN or the history is
  too short.

All-NaN rows give NaN baseline / scale / z and severity 0, without RuntimeWarnings: the medians are computed
by sorting (NaN last) and indexing by each row's own count, not with ``np.nanmedian``.

Plain numpy: no Spark, no Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DIRECTIONS", "SEVERITIES", "AnomalyConfig", "AnomalyScores", "combine", "fixed_severity", "score",
           "severity_name"]

SEVERITIES = ("none", "low", "medium", "high")
DIRECTIONS = ("both", "up", "down")
MAD_TO_SIGMA = 1.4826  # 1 / Phi^-1(3/4): 1.4826 * MAD estimates sigma for normal data


@dataclass(frozen=True)
class AnomalyConfig:
    """Learned-threshold parameters (see the module docstring for the method)."""

    window_days: int = 28  # history considered: the last window_days columns (days strictly before today)
    min_history: int = 7  # non-null history points needed before a learned threshold applies
    seasonal_min_weeks: int = 3  # same-weekday points needed to use the weekday's own baseline
    z_low: float = 3.0  # robust z thresholds per severity
    z_medium: float = 5.0
    z_high: float = 8.0
    min_scale_rel: float = 0.05  # scale floor relative to |baseline|
    min_scale_abs: float = 1e-9  # last-resort absolute scale floor (z stays finite on a flat history)

    def __post_init__(self) -> None:
        if self.window_days < 1:
            raise ValueError(f"window_days must be >= 1, got {self.window_days}")
        if self.min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {self.min_history}")
        if self.seasonal_min_weeks < 1:
            raise ValueError(f"seasonal_min_weeks must be >= 1, got {self.seasonal_min_weeks}")
        if not 0 < self.z_low <= self.z_medium <= self.z_high:
            raise ValueError(f"need 0 < z_low <= z_medium <= z_high, got {self.z_low}, {self.z_medium}, "
                             f"{self.z_high}")
        if self.min_scale_rel < 0:
            raise ValueError(f"min_scale_rel must be >= 0, got {self.min_scale_rel}")
        if not self.min_scale_abs > 0:
            raise ValueError(f"min_scale_abs must be > 0, got {self.min_scale_abs}")


@dataclass(frozen=True)
class AnomalyScores:
    """Per-indicator results of :func:`score`, arrays of length n."""

    baseline: np.ndarray  # float: the median the current value is compared with (NaN: no history)
    scale: np.ndarray  # float: the floored robust scale (NaN: no history)
    z: np.ndarray  # float: (current - baseline) / scale, signed (NaN: no history or no current value)
    n_history: np.ndarray  # int: non-null points in the window
    seasonal: np.ndarray  # bool: the baseline is the current weekday's own
    severity: np.ndarray  # int8 codes into SEVERITIES

    def to_frame(self, index: Any = None) -> Any:
        """The scores as a pandas DataFrame (one row per indicator), with the severity's name."""
        import pandas as pd

        return pd.DataFrame({"baseline": self.baseline, "scale": self.scale, "z": self.z,
                             "n_history": self.n_history, "seasonal": self.seasonal, "severity": self.severity,
                             "severity_name": severity_name(self.severity)}, index=index)


def severity_name(code: int | np.ndarray) -> str | np.ndarray:
    """The name of a severity code ("none", "low", "medium", "high"); an array of codes gives an array of names."""
    names = np.asarray(SEVERITIES, dtype=object)
    if np.ndim(code) == 0:
        return SEVERITIES[int(code)]
    return names[np.asarray(code, dtype=np.intp)]


def _median_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row median of the non-NaN values of ``a`` [n, d] and their count; NaN where a row has none.

    Sorting puts NaN last, so a row's values are its first ``k`` sorted entries: the median is the mean of
    entries ``(k-1)//2`` and ``k//2``. No warnings for all-NaN rows (unlike ``np.nanmedian``).
    """
    n, d = a.shape
    k = np.count_nonzero(~np.isnan(a), axis=1)
    if d == 0:
        return np.full(n, np.nan), k
    s = np.sort(a, axis=1)
    lo = np.clip((k - 1) // 2, 0, d - 1)[:, None]
    hi = np.clip(k // 2, 0, d - 1)[:, None]
    med = 0.5 * (np.take_along_axis(s, lo, axis=1)[:, 0] + np.take_along_axis(s, hi, axis=1)[:, 0])
    med[k == 0] = np.nan
    return med, k


TAIL_RANK = 0.9
TAIL_TO_SIGMA = 1.2816  # Phi^-1(0.9): (q90 - median) / 1.2816 estimates sigma for normal data


def _tail_scale(hist: np.ndarray, weekdays: np.ndarray, overall: np.ndarray, min_weeks: int,
                direction: str) -> np.ndarray:
    """The spread of the history's tail on the side being judged, ``q90(residual) / 1.2816`` (the lower mirror
    for ``down``, the larger of both for ``both``), the residuals taken from each weekday's own median where
    that weekday has ``min_weeks`` points (a weekly peak is not a tail) and from the overall median otherwise.
    For a normal series it is about the MAD's sigma; for a zero-inflated or spiky one (rain) the MAD is ~0
    while the tail shows how far the indicator moves on ordinary days, so those days do not all alert."""
    n, d = hist.shape
    if d == 0:
        return np.full(n, np.nan)
    centre = np.repeat(overall[:, None], d, axis=1)
    for wd in np.unique(weekdays):
        cols = weekdays == wd
        med, cnt = _median_rows(hist[:, cols])
        use = cnt >= min_weeks
        centre[:, cols] = np.where(use[:, None], med[:, None], centre[:, cols])
    resid = hist - centre
    k = np.count_nonzero(~np.isnan(resid), axis=1)
    s = np.sort(resid, axis=1)  # NaN last: a row's values are its first k entries
    upper_i = np.clip(np.floor(TAIL_RANK * (k - 1)).astype(int), 0, d - 1)[:, None]
    lower_i = np.clip(np.ceil((1 - TAIL_RANK) * (k - 1)).astype(int), 0, d - 1)[:, None]
    upper = np.take_along_axis(s, upper_i, axis=1)[:, 0] / TAIL_TO_SIGMA
    lower = -np.take_along_axis(s, lower_i, axis=1)[:, 0] / TAIL_TO_SIGMA
    out = upper if direction == "up" else lower if direction == "down" else np.fmax(upper, lower)
    return np.where(k > 0, np.fmax(out, 0.0), np.nan)


def score(history: np.ndarray, current: np.ndarray, history_weekdays: np.ndarray, current_weekday: int,
          config: AnomalyConfig | None = None, abs_floor: np.ndarray | float = 0.0,
          direction: str = "both") -> AnomalyScores:
    """Score each indicator's current value against its own history (see the module docstring).

    ``history``: float [n, d], NaN = no value that day, columns oldest -> newest, all strictly before the
    current day (only the last ``config.window_days`` columns are used); ``history_weekdays``: int [d], the
    columns' weekdays (0 = Monday); ``current``: float [n]; ``current_weekday``: the current day's weekday;
    ``abs_floor``: the absolute scale floor, a scalar or one per indicator ([n]; NaN counts as 0);
    ``direction``: "both", "up" (only increases flag) or "down" (only decreases flag).
    """
    cfg = config if config is not None else AnomalyConfig()
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    hist = np.asarray(history, dtype=np.float64)
    if hist.ndim != 2:
        raise ValueError(f"history must be 2-D [n, d], got shape {hist.shape}")
    n, d = hist.shape
    cur = np.asarray(current, dtype=np.float64)
    if cur.shape != (n,):
        raise ValueError(f"current must have shape ({n},), got {cur.shape}")
    weekdays = np.asarray(history_weekdays)
    if weekdays.shape != (d,):
        raise ValueError(f"history_weekdays must have shape ({d},), got {weekdays.shape}")
    if not 0 <= int(current_weekday) <= 6:
        raise ValueError(f"current_weekday must be in 0..6, got {current_weekday}")
    floor = np.fmax(np.broadcast_to(np.asarray(abs_floor, dtype=np.float64), (n,)), 0.0)  # NaN -> 0

    if d > cfg.window_days:
        hist, weekdays = hist[:, d - cfg.window_days:], weekdays[d - cfg.window_days:]

    overall, n_history = _median_rows(hist)
    same_day, n_same = _median_rows(hist[:, weekdays == int(current_weekday)])
    seasonal = n_same >= cfg.seasonal_min_weeks
    baseline = np.where(seasonal, same_day, overall)

    mad, _ = _median_rows(np.abs(hist - overall[:, None]))
    scale = np.fmax(MAD_TO_SIGMA * mad, _tail_scale(hist, weekdays, overall, cfg.seasonal_min_weeks, direction))
    # fmax: a NaN scale (no history) stays NaN only through the baseline's NaN below.
    scale = np.fmax(scale, np.fmax(cfg.min_scale_rel * np.abs(baseline), np.fmax(floor, cfg.min_scale_abs)))
    scale[n_history == 0] = np.nan

    z = (cur - baseline) / scale
    directed = np.abs(z) if direction == "both" else (z if direction == "up" else -z)
    with np.errstate(invalid="ignore"):
        severity = ((directed >= cfg.z_low).astype(np.int8) + (directed >= cfg.z_medium)
                    + (directed >= cfg.z_high)).astype(np.int8)
    severity[(n_history < cfg.min_history) | np.isnan(cur)] = 0
    return AnomalyScores(baseline=baseline, scale=scale, z=z, n_history=n_history, seasonal=seasonal,
                         severity=severity)


def fixed_severity(values: np.ndarray, low: float | None = None, medium: float | None = None,
                   high: float | None = None) -> np.ndarray:
    """Severity codes from fixed thresholds: the highest level whose threshold the value reaches (``>=``).

    For thresholds from configuration that apply from day one (e.g. ``PSI >= 0.25`` -> high); a threshold of
    None is not used; NaN values -> 0. Thresholds given must not decrease with the level.
    """
    given = [t for t in (low, medium, high) if t is not None]
    if any(b < a for a, b in zip(given, given[1:], strict=False)):
        raise ValueError(f"thresholds must not decrease with the level, got low={low}, medium={medium}, "
                         f"high={high}")
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        for code, threshold in ((1, low), (2, medium), (3, high)):
            if threshold is not None:
                out[v >= threshold] = code
    return out


def combine(*severities: np.ndarray) -> np.ndarray:
    """The elementwise maximum of severity code arrays (broadcast together)."""
    if not severities:
        raise ValueError("combine needs at least one severity array")
    arrays = np.broadcast_arrays(*(np.asarray(s, dtype=np.int8) for s in severities))
    return np.maximum.reduce(arrays).astype(np.int8)
