"""The drift monitor's Spark path on the real lake: profiles of the flights and weather tables per segment and
cross, indicators checked against an independent pandas recomputation, findings for a day without served
data, and a re-run that gives the same rows. No module replays these days (no model served them): the
served-data scenario is ``test_drift.py``.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START, END = date(2013, 8, 5), date(2013, 8, 7)
DRIFT_TABLES = ("profiles", "indicators", "findings", "incidents")


def _tables(settings) -> list[Path]:
    return [Path(settings.lake_root) / f"{t}__flights_eta" for t in DRIFT_TABLES]


@pytest.fixture(scope="module")
def runs(settings, spark, usecase, published_lake):
    from pipelines.monitoring.drift import run_drift

    for path in _tables(settings):
        shutil.rmtree(path, ignore_errors=True)
    first = run_drift(spark, settings, usecase, START, END, "it-drift-lake-1", report=False, log_to_mlflow=False)
    rows_first = _indicator_rows(settings)
    second = run_drift(spark, settings, usecase, START, END, "it-drift-lake-2", report=False, log_to_mlflow=False)
    yield first, second, rows_first, _indicator_rows(settings)
    for path in _tables(settings):
        shutil.rmtree(path, ignore_errors=True)


def _indicator_rows(settings):
    import pyarrow.dataset as ds

    from pipelines.lake.tables import Lake

    frame = ds.dataset(Lake.from_settings(settings).path("indicators__flights_eta"), format="parquet",
                       partitioning="hive").to_table().to_pandas()
    frame["day"] = frame["day"].astype(str)
    return frame.sort_values(["day", "source", "segment", "segment_value", "column", "statistic"]).reset_index(
        drop=True)


def _flights(published_lake, days: list[str]):
    import pyarrow.dataset as ds

    frame = ds.dataset(published_lake.path("flights"), format="parquet", partitioning="hive").to_table(
        columns=["sched_dep_date", "carrier", "origin", "dep_delay", "arr_delay"]).to_pandas()
    frame["sched_dep_date"] = frame["sched_dep_date"].astype(str)
    return frame[frame["sched_dep_date"].isin(days)]


def _value(rows, day, column, statistic, segment="all", segment_value="all") -> float:
    hit = rows[(rows.day == day) & (rows.source == "lake.flights") & (rows.column == column)
               & (rows.statistic == statistic) & (rows.segment == segment) & (rows.segment_value == segment_value)]
    assert len(hit) == 1, (day, column, statistic, segment, segment_value, len(hit))
    return float(hit.value.iloc[0])


def test_every_day_evaluates_tens_of_thousands_of_indicators_over_the_rows_it_scanned(runs, published_lake):
    first, _, rows, _ = runs
    assert set(first.indicators) == {"2013-08-05", "2013-08-06"}
    assert min(first.indicators.values()) > 20_000
    assert sum(first.indicators.values()) == len(rows)
    # The interval and the trailing week before it (the window its first day is compared with) are profiled
    # (no stored profiles yet).
    days = [(START - timedelta(days=7) + timedelta(days=i)).isoformat() for i in range(9)]
    assert first.rows_scanned["lake.flights"] == len(_flights(published_lake, days))
    segments = set(rows.segment)
    assert {"all", "origin", "carrier", "dest", "hour", "origin*carrier", "carrier*dest", "carrier*hour"} <= segments


def test_indicators_equal_an_independent_recomputation(runs, published_lake):
    _, _, rows, _ = runs
    day = "2013-08-06"
    flights = _flights(published_lake, [day])
    assert _value(rows, day, "flights.dep_delay", "null_rate") == pytest.approx(
        flights.dep_delay.isna().mean(), abs=1e-12)
    ua = flights[flights.carrier == "UA"]
    assert _value(rows, day, "flights.arr_delay", "mean", "carrier", "UA") == pytest.approx(
        ua.arr_delay.mean(), rel=1e-9)
    assert _value(rows, day, "flights.arr_delay", "std", "carrier", "UA") == pytest.approx(
        ua.arr_delay.std(), rel=1e-9)
    # Quantiles from KLL sketches (k = 200): the value's rank in the real data is within the sketch's error.
    delays = np.sort(flights.arr_delay.dropna().to_numpy())
    p50 = _value(rows, day, "flights.arr_delay", "p50")
    rank = np.searchsorted(delays, p50, side="right") / len(delays)
    assert abs(rank - 0.5) < 0.03
    jfk_ua = flights[(flights.origin == "JFK") & (flights.carrier == "UA")]
    assert _value(rows, day, "flights.dep_delay", "rows", "origin*carrier", "JFK|UA") == len(jfk_ua)


def test_a_day_without_served_data_is_a_finding_not_a_crash(runs, settings):
    from pipelines.monitoring.findings import findings_frame

    first, _, _, _ = runs
    empty = findings_frame(settings, "flights_eta", source="served")
    assert sorted(empty.day) == ["2013-08-05", "2013-08-06"]
    assert all("no served predictions" in m for m in empty.message)
    assert first.incidents == [] and first.retrain == []  # data quality alone never retrains


def test_a_rerun_of_the_interval_replaces_its_rows_with_the_same_ones(runs):
    """Same keys, and the same values for every statistic not read from a quantile sketch. Spark's KLL sketches
    compact at random once a group holds more than k values, so quantiles and the distances computed from them
    agree only within the sketch's rank error between runs (a known gap: see the README)."""
    _, second, rows_first, rows_second = runs
    keys = ["day", "source", "segment", "segment_value", "column", "statistic"]
    assert len(rows_first) == len(rows_second)
    assert (rows_first[keys] == rows_second[keys]).all().all()
    sketched = rows_first.statistic.str.match(r"^(p\d\d|psi_|ks_|wasserstein_)")
    exact = ~sketched.to_numpy()
    assert exact.sum() > 0.5 * len(rows_first)
    assert np.array_equal(rows_first.value.to_numpy(float)[exact], rows_second.value.to_numpy(float)[exact],
                          equal_nan=True)
    assert second.indicators == runs[0].indicators


def test_findings_are_queryable_from_the_cli(runs, capsys):
    from pipelines.cli import main

    assert main(["monitor", "findings", "--usecase", "flights_eta", "--day", "2013-08-06", "--source-table",
                 "served"]) == 0
    assert "no served predictions on 2013-08-06" in capsys.readouterr().out
    assert main(["monitor", "findings", "--usecase", "flights_eta", "--severity", "urgent"]) == 2
    assert main(["monitor", "incidents", "--usecase", "flights_eta"]) == 0
    assert "no incidents" in capsys.readouterr().out
