"""The drift reference written at training time: rows as serving would have given them, and the model's
predictions on them (pandas only, the flights use case's real feature spec)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.featurestore.spec import load_feature_set
from pipelines.monitoring.reference import as_served, write_reference
from pipelines.usecases import get_usecase


@pytest.fixture(scope="module")
def features():
    from pipelines.config import load_settings

    settings = load_settings("test")
    return load_feature_set(get_usecase("flights_eta", settings.usecases_path))


def _rows(ages_h: list[float]) -> pd.DataFrame:
    t = pd.Timestamp("2013-02-20 12:00", tz="UTC")
    return pd.DataFrame({
        "sched_dep_ts": [t] * len(ages_h),
        "aircraft_history__event_time": [t - pd.Timedelta(hours=h) for h in ages_h],
        "tail_flights_7d": [5] * len(ages_h),
        "tail_arr_delay_mean_7d": [12.5] * len(ages_h),
        "arr_delay": [3.0] * len(ages_h),
    })


def test_a_use_default_feature_older_than_its_sla_gets_its_default(features):
    # aircraft_history: tail_flights_7d use_default after 2 d, tail_arr_delay_mean_7d serve_stale.
    out = as_served(_rows([1.0, 47.0, 49.0, 24 * 6.5]), features, "sched_dep_ts")
    assert out["tail_flights_7d"].tolist() == [5, 5, 0, 0]
    assert out["tail_arr_delay_mean_7d"].tolist() == [12.5] * 4  # served stale, as training has it


def test_a_row_without_its_view_keeps_its_values(features):
    rows = _rows([100.0]).assign(aircraft_history__event_time=pd.NaT)
    assert as_served(rows, features, "sched_dep_ts")["tail_flights_7d"].tolist() == [5]


def test_the_reference_stores_served_rows_with_predictions(features, tmp_path):
    train = _rows([1.0, 72.0])
    holdout = _rows([1.0])
    folder = write_reference(tmp_path / "ref", train, holdout, np.array([4.0]), "arr_delay",
                             {0.9: (np.array([-10.0]), np.array([20.0]))},
                             served=lambda r: as_served(r, features, "sched_dep_ts"),
                             predict=lambda r: r["tail_flights_7d"].to_numpy(float) * 2)
    stored = pd.read_parquet(folder / "features.parquet")
    assert "aircraft_history__event_time" not in stored.columns
    assert stored["tail_flights_7d"].tolist() == [5, 0]
    assert stored["prediction"].tolist() == [10.0, 0.0]  # predicted on the served values
    held = pd.read_parquet(folder / "predictions.parquet")
    assert held["width_90"].tolist() == [30.0] and held["covered_90"].tolist() == [1.0]
