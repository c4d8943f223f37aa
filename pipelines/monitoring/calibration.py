"""Interval recalibration from labelled served predictions: adaptive conformal inference per segment.

The bundle's :class:`~pipelines.models.bundle.Calibration` is split conformal, fitted once on validation
residuals; when the residual distribution drifts (December's delays are larger than the validation weeks'),
its coverage drops. The feedback job calls :func:`recalibrate` on a schedule (daily by default) with every
labelled served prediction whose outcome has arrived, and serves the returned ``Calibration`` until the next
update. Between updates the intervals are fixed.

Method, per segment (``segment_feature`` value) and per level, each side separately:

* the offsets are conformal quantiles of the residuals (actual - prediction) of a trailing window of recent
  outcomes (``window_days``; a segment with fewer than ``min_segment_rows`` rows in it takes its latest
  ``min_segment_rows`` rows within ``lookback_days``), at tail levels ``alpha_low`` / ``alpha_high``;
* the tail levels follow adaptive conformal inference (Gibbs & Candes 2021), one step per update:
  ``alpha <- alpha + gamma * (target - miss_rate)``, where ``target = (1 - level) / 2`` and ``miss_rate`` is
  the share of the outcomes arrived since the previous update that fell below (above) the interval that was
  issued for their segment. The window follows the drift with a lag; the feedback removes the rest of it,
  and the long-run miss rate of each side converges to its target whatever the drift;
* a segment without enough rows keeps the base (bundle) offsets of that segment, or, absent those, the
  global offsets (computed the same way over all rows);
* intervals are made to contain the point prediction and to nest (90% contains 80%): this only widens.

The state carried between updates is a small JSON-serialisable dict (see :func:`recalibrate`). Everything is
deterministic: same rows, base, state, ``as_of`` and config in, same calibration and state out.

Plain numpy/pandas: no Spark, no Airflow.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.models.bundle import Calibration

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GLOBAL", "METHOD", "STATE_FORMAT", "AdaptiveConformalConfig", "calibration_id", "calibration_record",
           "recalibrate", "simulate"]

METHOD = "adaptive_conformal"
STATE_FORMAT = 1
GLOBAL = "__global__"  # the state key of the offsets used for segments without their own


class AdaptiveConformalConfig(BaseModel):
    """Parameters of :func:`recalibrate`. Defaults chosen on a tuning replay (April-May 2013, see
    ``benchmarks/calibration.py``), disjoint from the evaluation periods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_days: float = Field(7.0, gt=0, le=365, description="trailing window of outcome arrivals whose "
                               "residual quantiles give the offsets")
    gamma: float = Field(0.05, ge=0, le=1, description="ACI step per update on each tail level "
                         "(0 = plain rolling-window conformal)")
    min_segment_rows: int = Field(300, ge=10, description="rows a segment needs for its own offsets")
    lookback_days: float = Field(60.0, gt=0, le=730, description="how far back a thin segment may reach for "
                                 "its latest min_segment_rows rows")
    max_alpha_factor: float = Field(4.0, ge=1, le=50, description="tail levels are kept in [0, factor * target] "
                                    "(bounds the controller's wind-up)")
    segment_feature: str | None = Field(None, description="the segment column's feature name; default: the "
                                        "base calibration's")

    @model_validator(mode="after")
    def _lookback_covers_window(self) -> AdaptiveConformalConfig:
        if self.lookback_days < self.window_days:
            raise ValueError(f"lookback_days ({self.lookback_days:g}) must be >= window_days "
                             f"({self.window_days:g})")
        return self


def _level_key(level: float) -> str:
    return f"{level:g}"


def _utc(value: Any) -> pd.Timestamp:
    import pandas as pd

    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {value!r}")
    return ts.tz_convert("UTC")


def _conformal_quantiles(residuals: np.ndarray, alpha_low: float, alpha_high: float) -> tuple[float, float]:
    """Lower offset at tail level ``alpha_low``, upper at ``1 - alpha_high``, with the finite-sample conformal
    correction of :meth:`Calibration.fit` (levels clipped to [0, 1]: at 0 the window's extremes)."""
    n = residuals.size
    lo_q = min(1.0, max(0.0, math.floor((n + 1) * alpha_low) / n))
    hi_q = min(1.0, max(0.0, math.ceil((n + 1) * (1 - alpha_high)) / n))
    lo, hi = np.quantile(residuals, [lo_q, hi_q], method="inverted_cdf")
    return float(lo), float(hi)


def _nanoseconds(values: Any) -> np.ndarray:
    """UTC epoch nanoseconds of tz-aware timestamps (NaT -> the int64 minimum)."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime(values, utc=True, cache=False))
    return np.asarray(index.asi8, dtype=np.int64)


def _segment_keys(values: np.ndarray) -> np.ndarray:
    """``Calibration.segment_key`` of each value, computed once per distinct value."""
    distinct, inverse = np.unique(values, return_inverse=True)
    keys = np.array([Calibration.segment_key(v) for v in distinct], dtype=object)
    return keys[inverse.reshape(-1)] if values.size else np.array([], dtype=object)


def _served_offsets(calibration: Calibration, level: float, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return calibration.interval(np.zeros(segments.shape), level, segments if calibration.segment_feature else None)


def _served_entry(calibration: Calibration, segments: np.ndarray) -> np.ndarray:
    """Per row, the state key of the offsets ``calibration`` served it with (its segment's, or the global)."""
    keys = _segment_keys(segments)
    if not calibration.segment_feature:
        return np.full(keys.shape, GLOBAL, dtype=object)
    own = np.array([k in calibration.segment_offsets for k in keys], dtype=bool)
    return np.where(own, keys, GLOBAL)


def _window(residuals: np.ndarray, arrived_ns: np.ndarray, start_ns: int, min_rows: int) -> np.ndarray:
    """The rows arrived since ``start_ns`` (arrival-sorted input), or the latest ``min_rows`` if fewer."""
    recent = residuals[arrived_ns >= start_ns]
    if recent.size >= min_rows:
        return recent
    return residuals[-min_rows:] if residuals.size >= min_rows else residuals[:0]


def recalibrate(labelled: pd.DataFrame, base: Calibration, state: dict[str, Any] | None, *, as_of: Any,
                config: AdaptiveConformalConfig | None = None) -> tuple[Calibration, dict[str, Any]]:
    """The calibration to serve from ``as_of`` on, and the state for the next update.

    Args:
        labelled: served predictions with their outcome: ``arrived_at`` (tz-aware timestamp, when the outcome
            became known), ``segment`` (the value of the segment feature the prediction was served with, e.g.
            ``dep_delay_bucket``), ``residual`` (actual - prediction). Rows arrived at or after ``as_of`` are
            ignored, so passing the whole log is fine; rows older than ``lookback_days`` are not used.
        base: the model bundle's own calibration: levels, segment feature, and the fallback offsets.
        state: what the previous call returned (``None`` the first time after a model is deployed).
        as_of: the update time (tz-aware).
        config: the method's parameters (defaults when ``None``).

    Returns:
        ``(calibration, state)``. The state is JSON-serialisable: ``{"format", "method", "as_of", "updates",
        "config": <the config used>, "issued": <calibration.to_dict()>, "alpha": {entry: {level: [alpha_low, alpha_high]}},
        "source": {entry: "window" | "base"}, "rows": {entry: n}}`` where ``entry`` is a segment key
        (``Calibration.segment_key``) or ``"__global__"``.
    """
    import pandas as pd

    config = config or AdaptiveConformalConfig()
    now = _utc(as_of)
    missing = {"arrived_at", "segment", "residual"} - set(labelled.columns)
    if missing:
        raise ValueError(f"labelled rows lack column(s) {sorted(missing)}")
    levels = tuple(float(x) for x in base.levels)
    segment_feature = config.segment_feature or base.segment_feature

    previous_as_of = None
    if state is not None:
        if state.get("format") != STATE_FORMAT or state.get("method") != METHOD:
            raise ValueError(f"state of format {state.get('format')!r} / method {state.get('method')!r} is not "
                             f"{STATE_FORMAT} / {METHOD}")
        previous_as_of = _utc(state["as_of"])
    issued = Calibration.from_dict(state["issued"]) if state is not None else base
    alpha: dict[str, dict[str, list[float]]] = {e: {lv: list(a) for lv, a in per.items()}
                                                for e, per in (state or {}).get("alpha", {}).items()}
    source: dict[str, str] = dict((state or {}).get("source", {}))

    arrived = _nanoseconds(labelled["arrived_at"])
    residual = pd.to_numeric(labelled["residual"], errors="coerce").to_numpy(np.float64)
    segment = pd.to_numeric(labelled["segment"], errors="coerce").to_numpy(np.float64)
    lookback_start = (now - pd.Timedelta(days=config.lookback_days)).value
    keep = (arrived < now.value) & (arrived >= lookback_start) & np.isfinite(residual) & np.isfinite(segment)
    # Arrival order, ties broken by value: the result does not depend on the input's row order.
    order = np.lexsort((residual[keep], segment[keep], arrived[keep]))
    arrived_ns, seg_values, res_values = arrived[keep][order], segment[keep][order], residual[keep][order]
    seg_keys = _segment_keys(seg_values)

    # 1. Feedback: the outcomes arrived since the previous update, against the offsets issued for them.
    new = arrived_ns >= (previous_as_of.value if previous_as_of is not None else np.iinfo(np.int64).min)
    if new.any():
        entries = _served_entry(issued, seg_values[new])
        for level in levels:
            lk = _level_key(level)
            target = (1 - level) / 2
            lo, hi = _served_offsets(issued, level, seg_values[new])
            r = res_values[new]
            for entry in sorted(set(entries.tolist())):
                if source.get(entry) != "window":
                    continue  # base offsets are not the window's quantiles: nothing to correct
                rows = entries == entry
                a_lo, a_hi = alpha.get(entry, {}).get(lk, [target, target])
                cap = config.max_alpha_factor * target
                a_lo = min(cap, max(0.0, a_lo + config.gamma * (target - float(np.mean(r[rows] < lo[rows])))))
                a_hi = min(cap, max(0.0, a_hi + config.gamma * (target - float(np.mean(r[rows] > hi[rows])))))
                alpha.setdefault(entry, {})[lk] = [a_lo, a_hi]

    # 2. Offsets from the trailing window at the adapted tail levels.
    window_start = (now - pd.Timedelta(days=config.window_days)).value

    def entry_offsets(entry: str, mask: np.ndarray, fallback: dict[str, tuple[float, float]] | None
                      ) -> tuple[dict[str, tuple[float, float]] | None, int]:
        window = _window(res_values[mask], arrived_ns[mask], window_start, config.min_segment_rows)
        if window.size < config.min_segment_rows:
            if fallback is not None:
                source[entry] = "base"
            return fallback, int(window.size)
        source[entry] = "window"
        out = {}
        for level in levels:
            lk = _level_key(level)
            a_lo, a_hi = alpha.setdefault(entry, {}).setdefault(lk, [(1 - level) / 2, (1 - level) / 2])
            out[lk] = _conformal_quantiles(window, a_lo, a_hi)
        return out, int(window.size)

    rows: dict[str, int] = {}
    global_offsets, rows[GLOBAL] = entry_offsets(GLOBAL, np.ones(res_values.shape, dtype=bool),
                                                 dict(base.offsets))
    assert global_offsets is not None
    per_segment: dict[str, dict[str, tuple[float, float]]] = {}
    if segment_feature:
        known = sorted(set(seg_keys.tolist()) | set(base.segment_offsets), key=lambda k: float(k))
        for key in known:
            offsets, rows[key] = entry_offsets(key, seg_keys == key, base.segment_offsets.get(key))
            if offsets is not None:
                per_segment[key] = offsets
            else:
                source.pop(key, None)

    def well_formed(offsets: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        # Contain the prediction (0) and nest the levels: the API and the batch checks rely on it.
        out: dict[str, tuple[float, float]] = {}
        lo_prev, hi_prev = 0.0, 0.0
        for level in sorted(levels):
            lo, hi = offsets[_level_key(level)]
            lo_prev, hi_prev = min(lo, lo_prev), max(hi, hi_prev)
            out[_level_key(level)] = (lo_prev, hi_prev)
        return {_level_key(level): out[_level_key(level)] for level in levels}

    calibration = Calibration(levels, well_formed(global_offsets), segment_feature if per_segment else None,
                              {k: well_formed(v) for k, v in per_segment.items()},
                              int(sum(rows[k] for k in per_segment) if per_segment else rows[GLOBAL]), METHOD)
    new_state = {
        "format": STATE_FORMAT, "method": METHOD, "as_of": now.isoformat(),
        "updates": int((state or {}).get("updates", 0)) + 1,
        "config": config.model_dump(mode="json"),
        "issued": calibration.to_dict(),
        "alpha": {e: {lk: [float(a[0]), float(a[1])] for lk, a in sorted(per.items())}
                  for e, per in sorted(alpha.items())},
        "source": dict(sorted(source.items())),
        "rows": dict(sorted(rows.items())),
    }
    return calibration, new_state


def calibration_id(model_name: str, model_version: str, calibration: Calibration, as_of: Any) -> str:
    """The version name of a recalibration: ``<model>:<version>/cal-<as_of YYYYmmddTHHMMZ>-<content hash>``.

    The model version pins which predictions it applies to, the time orders it, the hash identifies the
    offsets (a re-run of the same update gives the same id)."""
    digest = hashlib.sha256(json.dumps(calibration.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{model_name}:{model_version}/cal-{_utc(as_of):%Y%m%dT%H%MZ}-{digest}"


def calibration_record(model_name: str, model_version: str, calibration: Calibration,
                       state: dict[str, Any]) -> dict[str, Any]:
    """What the feedback job stores per update: id, method, time, the calibration and the state."""
    return {"id": calibration_id(model_name, model_version, calibration, state["as_of"]), "method": METHOD,
            "model": model_name, "model_version": str(model_version), "as_of": state["as_of"],
            "calibration": calibration.to_dict(), "state": state}


def _update_times(first: pd.Timestamp, last: pd.Timestamp, cadence: timedelta,
                  anchor: datetime) -> list[pd.Timestamp]:
    """Update times on the grid ``anchor + k * cadence`` in (first, last]."""
    import pandas as pd

    step = pd.Timedelta(cadence)
    if step <= pd.Timedelta(0):
        raise ValueError(f"cadence must be positive, got {cadence}")
    k = math.floor((first - _utc(anchor)) / step) + 1
    out = []
    t = _utc(anchor) + k * step
    while t <= last:
        out.append(t)
        t = t + step
    return out


def simulate(stream: pd.DataFrame, base: Calibration, config: AdaptiveConformalConfig | None = None, *,
             label_delay: timedelta = timedelta(hours=2), cadence: timedelta = timedelta(days=1),
             anchor: datetime = datetime(2000, 1, 1, tzinfo=UTC), start: Any = None) -> pd.DataFrame:
    """Replay served predictions through scheduled recalibrations, as the feedback job and the API would.

    ``stream`` has ``requested_at`` (tz-aware, when the prediction was served), ``outcome_at`` (when the
    truth happened, e.g. the flight's ``arr_ts``; NaT = no outcome ever), ``segment``, ``prediction`` and
    ``actual`` (NaN = no outcome). An outcome is known at ``outcome_at + label_delay``. The bundle's ``base``
    calibration serves until the first update after ``start`` (default: the first request); updates run at
    ``anchor + k * cadence`` (midnight UTC daily by default), each calling :func:`recalibrate` with every
    outcome arrived before it, and serve requests until the next update.

    Returns the stream (in its order) with ``arrived_at``, ``calibration_as_of`` (NaT = base) and
    ``lower_<level>`` / ``upper_<level>`` per level of ``base`` (e.g. ``lower_0.8``).
    """
    import pandas as pd

    config = config or AdaptiveConformalConfig()
    requested = pd.to_datetime(stream["requested_at"], utc=True)
    outcome = pd.to_datetime(stream["outcome_at"], utc=True)
    prediction = stream["prediction"].to_numpy(np.float64)
    actual = stream["actual"].to_numpy(np.float64)
    segments = stream["segment"].to_numpy(np.float64)
    arrived = outcome + pd.Timedelta(label_delay)
    has_outcome = (~arrived.isna() & np.isfinite(actual)).to_numpy()
    labelled = pd.DataFrame({"arrived_at": arrived[has_outcome].array, "segment": segments[has_outcome],
                             "residual": (actual - prediction)[has_outcome]})
    labelled = labelled.sort_values("arrived_at", kind="stable").reset_index(drop=True)
    arrived_sorted = _nanoseconds(labelled["arrived_at"])
    lookback = pd.Timedelta(days=config.lookback_days).value

    first = _utc(start) if start is not None else requested.min()
    times = _update_times(first, requested.max(), cadence, anchor)
    served_from = np.full(len(stream), -1)  # index into times, -1 = base
    req_ns = _nanoseconds(requested)
    for i, t in enumerate(times):
        served_from[req_ns >= t.value] = i
    out = stream.copy()
    out["arrived_at"] = arrived.array
    out["calibration_as_of"] = pd.Series(pd.NaT, index=stream.index, dtype="datetime64[ns, UTC]")
    lows = {lv: np.empty(len(stream)) for lv in base.levels}
    highs = {lv: np.empty(len(stream)) for lv in base.levels}

    def serve(calibration: Calibration, rows: np.ndarray) -> None:
        for level in base.levels:
            lo, hi = calibration.interval(prediction[rows], level,
                                          segments[rows] if calibration.segment_feature else None)
            lows[level][rows], highs[level][rows] = lo, hi

    serve(base, served_from == -1)
    state: dict[str, Any] | None = None
    for i, t in enumerate(times):
        # Every outcome arrived before t (older than the lookback would be ignored: not passed).
        lo_row, hi_row = np.searchsorted(arrived_sorted, [t.value - lookback, t.value], side="left")
        visible = labelled.iloc[lo_row:hi_row]
        calibration, state = recalibrate(visible, base, state, as_of=t, config=config)
        # What the platform does: store the state as JSON, read it back next time.
        state = json.loads(json.dumps(state))
        rows = served_from == i
        if rows.any():
            serve(calibration, rows)
            out.loc[rows, "calibration_as_of"] = t
    for level in base.levels:
        out[f"lower_{_level_key(level)}"] = lows[level]
        out[f"upper_{_level_key(level)}"] = highs[level]
    return out
