"""Indicators: the numbers judged every day, from profile rows (pandas, vectorised over rows).

An indicator is one (source, column, segment, segment value, statistic); its value is computed from the
day's profile row, the merged trailing windows and the reference:

    rows, null_rate                              every column, every segment
    mean, std, min, max, p01 ... p99, distinct   numeric columns with at least ``min_rows`` values
    distinct, unseen_share, top_share            categorical columns (unseen = a value the reference never had)
    psi_ref, ks_ref, wasserstein_ref (1d, 7d)    the day / the trailing week against the training reference
    psi_trail, ks_trail, wasserstein_trail       the day against the week before it
    js_ref (1d, 7d), js_trail                    categorical columns: Jensen-Shannon distance
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.monitoring import drift_stats
from pipelines.monitoring.profiles import NULL_VALUE

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DRIFT_STATISTICS", "QUANTILE_STATS", "compute_indicators", "statistic_kind"]

QUANTILE_STATS = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
DRIFT_STATISTICS = ("psi_ref_1d", "psi_ref_7d", "ks_ref_1d", "ks_ref_7d", "wasserstein_ref_1d",
                    "wasserstein_ref_7d", "psi_trail", "ks_trail", "wasserstein_trail", "js_ref_1d", "js_ref_7d",
                    "js_trail")
INDEX = ["source", "segment", "segment_value", "column"]


def statistic_kind(statistic: str) -> str:
    """``drift`` for distribution distances, ``quality`` for the rest (volume, nulls, ranges, categories)."""
    return "drift" if statistic in DRIFT_STATISTICS else "quality"


def _rank_index(rank: float) -> int:
    return int(np.argmin(np.abs(drift_stats.RANKS - rank)))


def _quantile_matrix(series: pd.Series) -> np.ndarray:
    g = len(drift_stats.RANKS)
    out = np.full((len(series), g), np.nan)
    for i, q in enumerate(series.to_numpy()):
        if q is not None and not (isinstance(q, float) and np.isnan(q)) and len(q) == g:
            out[i] = np.asarray(q, dtype=float)
    return out


def _freqs(value: Any) -> dict[str, float]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    # A map read back through pandas may come as a dict with None for absent keys (a struct), or as pairs.
    pairs = value.items() if isinstance(value, dict) else value
    return {str(k): float(v) for k, v in pairs if v is not None}


def _long(frame: pd.DataFrame, values: dict[str, np.ndarray], rows: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    parts = []
    for statistic, v in values.items():
        keep = ~np.isnan(v)
        if not keep.any():
            continue
        part = frame.loc[keep, INDEX].copy()
        part["statistic"] = statistic
        part["value"] = v[keep]
        part["n_rows"] = rows[keep]
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=[*INDEX, "statistic", "value", "n_rows"])
    return pd.concat(parts, ignore_index=True)


def compute_indicators(day: pd.DataFrame, week: pd.DataFrame | None, previous: pd.DataFrame | None,
                       reference: pd.DataFrame | None, *, min_rows: int,
                       window_days: int | None = None) -> pd.DataFrame:
    """The day's indicators as long rows (``INDEX`` + statistic, value, n_rows).

    Each frame holds profile rows with ``quantiles`` and ``distinct`` (``profiles.with_quantiles``): ``day``
    = the day itself, ``week`` = its trailing window (the day included), ``previous`` = the window before the
    day, ``reference`` = the training reference (one row per source, segment, value, column)."""
    import pandas as pd

    day = day.reset_index(drop=True)
    rows = day["rows"].to_numpy(float)
    n = day["n"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        null_rate = np.where(rows > 0, day["nulls"].to_numpy(float) / rows, np.nan)
    values: dict[str, np.ndarray] = {"rows": rows, "null_rate": null_rate}
    numeric = (day["kind"] == "numeric").to_numpy()
    enough = numeric & (n >= min_rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = day["sum"].to_numpy(float) / n
        var = day["sum_sq"].to_numpy(float) / n - mean ** 2
    std = np.sqrt(np.clip(var, 0, None) * np.where(n > 1, n / np.maximum(n - 1, 1), np.nan))
    values["mean"] = np.where(enough, mean, np.nan)
    values["std"] = np.where(enough, std, np.nan)
    values["min"] = np.where(enough, day["min"].to_numpy(float), np.nan)
    values["max"] = np.where(enough, day["max"].to_numpy(float), np.nan)
    q_day = _quantile_matrix(day["quantiles"])
    for name, rank in QUANTILE_STATS.items():
        values[name] = np.where(enough, q_day[:, _rank_index(rank)], np.nan)
    distinct = day["distinct"].to_numpy(float) if "distinct" in day else np.full(len(day), np.nan)
    values["distinct"] = np.where(enough | ~numeric, distinct, np.nan)

    def aligned(other: pd.DataFrame | None) -> pd.DataFrame | None:
        if other is None or other.empty:
            return None
        keyed = other.drop_duplicates(INDEX).set_index(INDEX)
        return keyed.reindex(pd.MultiIndex.from_frame(day[INDEX]))

    ref, wk, prev = aligned(reference), aligned(week), aligned(previous)
    nan = np.full(len(day), np.nan)

    def quantiles(frame: pd.DataFrame | None) -> np.ndarray:
        return _quantile_matrix(frame["quantiles"].reset_index(drop=True)) if frame is not None else \
            np.full((len(day), len(drift_stats.RANKS)), np.nan)

    if window_days is not None:
        wk = _complete(wk, window_days)
        prev = _complete(prev, window_days)
    q_ref, q_wk, q_prev = quantiles(ref), quantiles(wk), quantiles(prev)
    wk_n = wk["n"].to_numpy(float) if wk is not None else nan
    wk_rows = wk["rows"].to_numpy(float) if wk is not None else nan
    q_day_ok = np.where(enough[:, None], q_day, np.nan)
    q_wk_ok = np.where((numeric & (wk_n >= min_rows))[:, None], q_wk, np.nan)
    for suffix, base, cur in (("ref_1d", q_ref, q_day_ok), ("ref_7d", q_ref, q_wk_ok), ("trail", q_prev, q_day_ok)):
        for name, fn in (("psi", drift_stats.psi), ("ks", drift_stats.ks),
                         ("wasserstein", drift_stats.wasserstein_normed)):
            values[f"{name}_{suffix}"] = _where_both(fn, base, cur)
    # The 7d figures are judged on the week's rows, not the day's.
    basis = {"psi_ref_7d": wk_rows, "ks_ref_7d": wk_rows, "wasserstein_ref_7d": wk_rows, "js_ref_7d": wk_rows}

    # Categorical columns: category frequencies.
    cat_idx = np.flatnonzero(~numeric)
    for name in ("unseen_share", "top_share", "js_ref_1d", "js_ref_7d", "js_trail"):
        values[name] = nan.copy()
    for i in cat_idx:
        cur = _freqs(day.at[i, "freqs"])
        total = sum(cur.values())
        if total <= 0:
            continue
        values["top_share"][i] = max(cur.values()) / total
        ref_f = _freqs(ref.iloc[i]["freqs"]) if ref is not None else {}
        if ref_f:
            # A null is not a new category: the null rate judges it.
            values["unseen_share"][i] = sum(v for k, v in cur.items() if k not in ref_f and k != NULL_VALUE) / total
            if total >= min_rows:
                values["js_ref_1d"][i] = _js(ref_f, cur)
            wk_f = _freqs(wk.iloc[i]["freqs"]) if wk is not None else {}
            if sum(wk_f.values()) >= min_rows:
                values["js_ref_7d"][i] = _js(ref_f, wk_f)
        prev_f = _freqs(prev.iloc[i]["freqs"]) if prev is not None else {}
        if prev_f and total >= min_rows:
            values["js_trail"][i] = _js(prev_f, cur)
    parts = [_long(day, {statistic: v}, basis.get(statistic, rows)) for statistic, v in values.items()]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=[*INDEX, "statistic", "value", "n_rows"])
    return pd.concat(parts, ignore_index=True)


def _complete(frame: pd.DataFrame | None, days: int) -> pd.DataFrame | None:
    """Window rows merged from fewer than ``days`` days blanked (aligned rows keep their positions)."""
    if frame is None or "days_merged" not in frame:
        return frame
    partial = ~(frame["days_merged"].fillna(0).to_numpy(float) >= days)
    if not partial.any():
        return frame
    out = frame.copy()
    out.loc[partial, ["quantiles", "freqs"]] = None
    out.loc[partial, ["n", "rows"]] = np.nan
    return out


def _where_both(fn: Any, ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """``fn(ref, cur)`` on the rows where both grids exist (most segment-days are too small to have one)."""
    ok = ~np.isnan(ref).any(axis=1) & ~np.isnan(cur).any(axis=1)
    out = np.full(len(ref), np.nan)
    if ok.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok] = fn(ref[ok], cur[ok])
    return out


def _js(ref: dict[str, float], cur: dict[str, float]) -> float:
    keys = sorted(set(ref) | set(cur))
    r = np.array([[ref.get(k, 0.0) for k in keys]])
    c = np.array([[cur.get(k, 0.0) for k in keys]])
    return float(drift_stats.jensen_shannon(r, c)[0])
