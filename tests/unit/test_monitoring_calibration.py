"""Adaptive conformal recalibration (pipelines/monitoring/calibration.py) on synthetic streams."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.models.bundle import Calibration
from pipelines.monitoring.calibration import (
    GLOBAL,
    AdaptiveConformalConfig,
    calibration_id,
    calibration_record,
    recalibrate,
    simulate,
)

START = datetime(2013, 6, 1, tzinfo=UTC)
LEVELS = (0.8, 0.9)


def _stream(days: int = 40, per_day: int = 400, shift_day: int = 10, scale_after: float = 2.0,
            seed: int = 0) -> pd.DataFrame:
    """Two segments (0: sd 10, 1: sd 30) of normal residuals; from ``shift_day`` every spread is multiplied."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    requested = pd.Timestamp(START) + pd.to_timedelta(np.sort(rng.uniform(0, days * 86400, n)), unit="s")
    segment = (rng.uniform(size=n) < 0.3).astype(float)
    sd = np.where(segment == 1, 30.0, 10.0) * np.where(requested >= pd.Timestamp(START) + pd.Timedelta(days=shift_day),
                                                        scale_after, 1.0)
    prediction = rng.normal(0, 20, n)
    return pd.DataFrame({"requested_at": requested, "outcome_at": requested + pd.Timedelta(hours=3),
                         "segment": segment, "prediction": prediction, "actual": prediction + rng.normal(0, sd)})


def _base(seed: int = 1) -> Calibration:
    """Split conformal fitted on pre-shift data, as the bundle's would be."""
    rng = np.random.default_rng(seed)
    segment = (rng.uniform(size=4000) < 0.3).astype(float)
    residual = rng.normal(0, np.where(segment == 1, 30.0, 10.0))
    return Calibration.fit(residual, LEVELS, segment, "dep_delay_bucket", 300)


def _coverage(out: pd.DataFrame, level: float, rows: np.ndarray | None = None) -> float:
    y = out["actual"].to_numpy()
    hit = (y >= out[f"lower_{level:g}"].to_numpy()) & (y <= out[f"upper_{level:g}"].to_numpy())
    return float(hit[rows].mean() if rows is not None else hit.mean())


def _static(out: pd.DataFrame, base: Calibration, level: float) -> np.ndarray:
    lo, hi = base.interval(out["prediction"].to_numpy(), level, out["segment"].to_numpy())
    y = out["actual"].to_numpy()
    return (y >= lo) & (y <= hi)


def test_variance_shift_static_loses_coverage_adaptive_holds_it():
    stream, base = _stream(), _base()
    out = simulate(stream, base, AdaptiveConformalConfig(window_days=7, gamma=0.1), cadence=timedelta(days=1))
    # From the shift on, transition included: the feedback has to make up for the window's lag.
    after = (out["requested_at"] >= pd.Timestamp(START) + pd.Timedelta(days=10)).to_numpy()
    for level in LEVELS:
        static = _static(out, base, level)[after]
        assert static.mean() < level - 0.15  # the spread doubled: split conformal is far off
        assert abs(_coverage(out, level, after) - level) <= 0.02
        for seg in (0.0, 1.0):
            rows = after & (out["segment"].to_numpy() == seg)
            assert abs(_coverage(out, level, rows) - level) <= 0.05


def test_without_feedback_the_rolling_window_lags_the_shift():
    stream, base = _stream(), _base()
    out = simulate(stream, base, AdaptiveConformalConfig(window_days=7, gamma=0.0))
    after = (out["requested_at"] >= pd.Timestamp(START) + pd.Timedelta(days=10)).to_numpy()
    assert _coverage(out, 0.8, after) < 0.8 - 0.02


def test_intervals_contain_the_prediction_and_nest():
    out = simulate(_stream(days=15), _base(), AdaptiveConformalConfig(window_days=5))
    p = out["prediction"].to_numpy()
    assert (out["lower_0.9"] <= out["lower_0.8"]).all() and (out["lower_0.8"] <= p + 1e-9).all()
    assert (p <= out["upper_0.8"] + 1e-9).all() and (out["upper_0.8"] <= out["upper_0.9"]).all()


def _labelled(stream: pd.DataFrame, delay: timedelta = timedelta(hours=2)) -> pd.DataFrame:
    return pd.DataFrame({"arrived_at": stream["outcome_at"] + delay, "segment": stream["segment"],
                         "residual": stream["actual"] - stream["prediction"]})


def test_state_round_trips_through_json_and_updates_chain():
    labelled, base = _labelled(_stream(days=12)), _base()
    config = AdaptiveConformalConfig(window_days=5, gamma=0.2)
    t1, t2 = pd.Timestamp(START) + pd.Timedelta(days=6), pd.Timestamp(START) + pd.Timedelta(days=7)
    _, state = recalibrate(labelled, base, None, as_of=t1, config=config)
    again = json.loads(json.dumps(state))
    assert again == state
    cal_a, state_a = recalibrate(labelled, base, state, as_of=t2, config=config)
    cal_b, state_b = recalibrate(labelled, base, again, as_of=t2, config=config)
    assert cal_a == cal_b and state_a == state_b
    assert state_b["updates"] == 2 and state_b["as_of"] == t2.isoformat()
    # The state's issued calibration is what the API would load.
    assert Calibration.from_dict(state_b["issued"]) == cal_b
    # Tail levels moved from their targets: the outcomes of day 6 fed back.
    assert state_b["alpha"]["0"]["0.8"] != state["alpha"]["0"]["0.8"]


def test_thin_segment_falls_back_to_the_base_offsets_or_the_global_ones():
    rng = np.random.default_rng(3)
    n = 3000
    arrived = pd.Timestamp(START) + pd.to_timedelta(np.sort(rng.uniform(0, 5 * 86400, n)), unit="s")
    segment = np.where(np.arange(n) % 50 == 0, 1.0, 0.0)  # segment 1: 60 rows, below min_segment_rows
    segment[np.arange(n) % 100 == 1] = 2.0  # segment 2: 30 rows, absent from the base calibration
    labelled = pd.DataFrame({"arrived_at": arrived, "segment": segment, "residual": rng.normal(0, 5, n)})
    base = _base()
    assert "2" not in base.segment_offsets
    cal, state = recalibrate(labelled, base, None, as_of=pd.Timestamp(START) + pd.Timedelta(days=6),
                             config=AdaptiveConformalConfig(window_days=5, min_segment_rows=300))
    assert cal.segment_offsets["1"] == base.segment_offsets["1"]
    assert state["source"]["1"] == "base" and state["source"]["0"] == "window"
    assert "2" not in cal.segment_offsets  # served with the global offsets
    assert cal.segment_feature == "dep_delay_bucket"
    lo, hi = cal.interval(np.zeros(1), 0.8, np.array([2.0]))
    assert (lo[0], hi[0]) == cal.offsets["0.8"]
    assert state["source"][GLOBAL] == "window" and cal.offsets != base.offsets
    # No labelled rows at all: the base calibration, unchanged.
    empty, _ = recalibrate(labelled.iloc[:0], base, None, as_of=START)
    assert empty.offsets == base.offsets and empty.segment_offsets == base.segment_offsets


def test_deterministic_and_independent_of_row_order():
    labelled, base = _labelled(_stream(days=8)), _base()
    as_of = pd.Timestamp(START) + pd.Timedelta(days=8)
    shuffled = labelled.sample(frac=1.0, random_state=5)
    a = recalibrate(labelled, base, None, as_of=as_of)
    b = recalibrate(shuffled, base, None, as_of=as_of)
    assert a == b
    s1 = simulate(_stream(days=6), base)
    s2 = simulate(_stream(days=6), base)
    pd.testing.assert_frame_equal(s1, s2)


def test_rows_arrived_after_as_of_are_not_seen():
    labelled, base = _labelled(_stream(days=8)), _base()
    as_of = pd.Timestamp(START) + pd.Timedelta(days=4)
    future = labelled.assign(residual=np.where(labelled["arrived_at"] >= as_of, 1e6, labelled["residual"]))
    assert recalibrate(labelled, base, None, as_of=as_of) == recalibrate(future, base, None, as_of=as_of)


@pytest.mark.parametrize("field, value", [("window_days", 0), ("gamma", 1.5), ("min_segment_rows", 1),
                                          ("window_days", "soon")])
def test_bad_config_is_refused_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        AdaptiveConformalConfig(**{field: value})


def test_unknown_config_key_and_inconsistent_lookback_are_refused():
    with pytest.raises(ValidationError, match="windw_days"):
        AdaptiveConformalConfig.model_validate({"windw_days": 3})
    with pytest.raises(ValidationError, match="lookback_days"):
        AdaptiveConformalConfig(window_days=30, lookback_days=10)


def test_naive_as_of_and_foreign_state_are_refused():
    labelled, base = _labelled(_stream(days=2)), _base()
    with pytest.raises(ValueError, match="timezone"):
        recalibrate(labelled, base, None, as_of=datetime(2013, 6, 2))
    with pytest.raises(ValueError, match="format"):
        recalibrate(labelled, base, {"format": 99, "method": "x", "as_of": START.isoformat()}, as_of=START)


def test_calibration_id_names_model_version_time_and_content():
    labelled, base = _labelled(_stream(days=3)), _base()
    as_of = pd.Timestamp(START) + pd.Timedelta(days=3)
    cal, state = recalibrate(labelled, base, None, as_of=as_of)
    cid = calibration_id("flights_eta", "4", cal, as_of)
    assert cid.startswith("flights_eta:4/cal-20130604T0000Z-")
    assert cid == calibration_id("flights_eta", "4", cal, as_of)
    assert cid != calibration_id("flights_eta", "4", base, as_of)
    record = calibration_record("flights_eta", "4", cal, state)
    assert record["id"] == cid and record["method"] == "adaptive_conformal"
    json.dumps(record)
