"""Offline feature tables and point-in-time training sets, against a brute-force reference and on the full
flights data."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.featurestore import offline
from pipelines.featurestore.spec import load_feature_set
from pipelines.lake.tables import Lake

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2013, 3, 9, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def features(usecase):
    return load_feature_set(usecase)


def _brute_force(labels, rows, ttl):
    """For each label: the latest row of its key with time <= the label's time and younger than ttl."""
    expected = {}
    for label_id, key, ts in labels:
        candidates = [r for r in rows if r[0] == key and r[1] <= ts]
        best = max(candidates, key=lambda r: r[1], default=None)
        if best is not None and ts - best[1] < ttl:
            expected[label_id] = (best[2], best[1])
        else:
            expected[label_id] = (None, None)
    return expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_as_of_join_matches_brute_force(spark, features, seed):
    view = replace(features.views["aircraft_history"], ttl=timedelta(hours=6))
    rng = random.Random(seed)
    keys = [f"N{i}" for i in range(12)]
    minutes = lambda n: T0 + timedelta(minutes=n)  # noqa: E731
    rows, seen = [], set()
    for _ in range(400):
        key, when = rng.choice(keys), minutes(rng.randrange(0, 3000))
        if (key, when) not in seen:
            seen.add((key, when))
            rows.append((key, when, rng.uniform(-30, 120)))
    labels = [(f"L{i}", rng.choice(keys), minutes(rng.randrange(-60, 3200))) for i in range(600)]
    # Edge cases: a label exactly at a row's time (known at T: used), exactly one TTL after (expired).
    when = minutes(100)
    rows.append(("EDGE", when, 42.0))
    labels += [("tie", "EDGE", when), ("ttl-edge", "EDGE", when + timedelta(hours=6)),
               ("just-fresh", "EDGE", when + timedelta(hours=6) - timedelta(microseconds=1)),
               ("before", "EDGE", when - timedelta(microseconds=1)), ("no-key", "N999", when)]

    table = spark.createDataFrame(
        [(k, t, v, 0.0, 1) for k, t, v in rows],
        "tailnum string, event_time timestamp, tail_arr_delay_mean_7d double, tail_dep_delay_mean_7d double, "
        "tail_flights_7d int")
    label_frame = spark.createDataFrame(labels, "flight_id string, tailnum string, sched_dep_ts timestamp")
    got = {r["__row_id"]: (r["tail_arr_delay_mean_7d"], r["aircraft_history__event_time"])
           for r in offline.as_of_join(label_frame, table, view, "sched_dep_ts", "flight_id").collect()}
    expected = _brute_force(labels, rows, view.ttl)
    normalized = {k: (v, t.replace(tzinfo=UTC) if t else None) for k, (v, t) in got.items()}
    assert normalized == expected
    assert expected["tie"] == (42.0, when) and expected["just-fresh"] == (42.0, when)
    assert expected["ttl-edge"] == expected["before"] == expected["no-key"] == (None, None)


@pytest.fixture(scope="module")
def full_training_set(spark, settings, usecase, features, published_lake):
    lake = published_lake
    for view in features.batch_views:
        offline.write_view_table(spark, lake, usecase.name, view, "features-test")
    path = settings.home_path / "test_training_set"
    offline.training_set(spark, lake, features).write.mode("overwrite").parquet(str(path))
    return spark.read.parquet(str(path))


def test_training_set_on_all_flights(full_training_set, features):
    from pyspark.sql import functions as F  # noqa: N812

    assert full_training_set.count() == 327346  # flights with a known arrival delay
    assert full_training_set.select("flight_id").distinct().count() == 327346
    # Never a value from the future, never older than the view's TTL.
    for view in features.batch_views:
        fts = F.col(f"{view.name}__event_time")
        assert full_training_set.where(fts > F.col("sched_dep_ts")).count() == 0, view.name
        too_old = F.unix_micros(F.col("sched_dep_ts")) - F.unix_micros(fts) >= int(view.ttl.total_seconds() * 1e6)
        assert full_training_set.where(too_old).count() == 0, view.name
    # Defaults filled every feature; the weather of the departure hour is found for nearly every flight.
    feature_names = [f for v in features.views.values() for f in v.feature_names]
    nulls = full_training_set.select([F.sum(F.col(c).isNull().cast("int")).alias(c) for c in feature_names]).first()
    assert all(v == 0 for v in nulls.asDict().values()), nulls
    weather_found = full_training_set.where(F.col("origin_weather__event_time").isNotNull()).count()
    assert weather_found / 327346 > 0.99


def test_training_set_features_equal_a_direct_recomputation(full_training_set, spark, settings, features):
    """For sampled flights, the aircraft features equal a direct Python recomputation over the lake."""
    import pandas as pd
    from pyspark.sql import functions as F  # noqa: N812

    lake = Lake.from_settings(settings)
    sample = full_training_set.where(F.col("tailnum").isin("N14228", "N24211", "N725MQ")).select(
        "flight_id", "tailnum", "sched_dep_ts", "tail_arr_delay_mean_7d", "tail_flights_7d").toPandas()
    history = spark.read.parquet(lake.path("flights")).where(
        F.col("tailnum").isin("N14228", "N24211", "N725MQ") & F.col("arr_ts").isNotNull()).select(
        "tailnum", "arr_ts", "arr_delay").toPandas()
    assert len(sample) > 50
    for row in sample.itertuples():
        mine = history[(history.tailnum == row.tailnum) & (history.arr_ts <= row.sched_dep_ts)]
        if mine.empty or row.sched_dep_ts - mine.arr_ts.max() >= pd.Timedelta(days=7):
            assert row.tail_arr_delay_mean_7d == 0.0 and row.tail_flights_7d == 0
            continue
        last = mine.arr_ts.max()
        window = mine[(mine.arr_ts > last - pd.Timedelta(days=7)) & (mine.arr_ts <= last)]
        assert row.tail_flights_7d == window.arr_delay.notna().sum()
        assert row.tail_arr_delay_mean_7d == pytest.approx(window.arr_delay.mean(), rel=1e-9)


def test_a_window_training_set_equals_the_whole_one_cut_to_the_window(full_training_set, spark, published_lake,
                                                                        features):
    """A window reads only the feature rows its labels can use (event time < end, not older than the TTL before
    start): the result is the same as joining all of them and keeping the window's labels. The start is mid-day
    and the window short, so the 3 h, 7 d and 30 d TTLs all reach back across the date partitions."""
    from pyspark.sql import functions as F  # noqa: N812

    start, end = datetime(2013, 5, 14, 9, 30, tzinfo=UTC), datetime(2013, 5, 17, 6, 0, tzinfo=UTC)
    window = offline.training_set(spark, published_lake, features, start, end)
    whole = full_training_set.where((F.col("sched_dep_ts") >= F.lit(start)) & (F.col("sched_dep_ts") < F.lit(end)))
    columns = sorted(whole.columns)
    assert sorted(window.columns) == columns
    n = whole.count()
    assert n > 2_000 and window.count() == n
    assert window.select(columns).exceptAll(whole.select(columns)).count() == 0
