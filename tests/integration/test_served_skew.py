"""Served-feature skew against the real lake: served rows built the way the API builds them, in Python.

The served predictions are real December 2013 flights at push-back (``as_of`` = ``dep_ts``): request
features from the API's own resolver (the feature language's Python compiler), batch features from the
published offline tables looked up as of push-back in plain Python (latest row at or before, the online
store's TTL expiry), both through ``serving.features.FeatureResolver.resolve`` with the spec's freshness
policies. The check recomputes them with Spark and the point-in-time join.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.featurestore.materialize import online_view_name
from pipelines.featurestore.offline import EVENT_TIME, feature_table_name
from pipelines.featurestore.spec import load_feature_set
from pipelines.monitoring.served_skew import ServedSkewDetected, served_skew
from pipelines.stores.online.base import ReadResult
from serving.features import FeatureResolver, StaleFeature

pytestmark = pytest.mark.integration

DAY = "2013-12-10"
N_FLIGHTS = 400
REQUEST_COLUMNS = ["origin", "dest", "carrier", "tailnum", "sched_dep_ts", "sched_arr_ts", "dep_delay", "flight_id"]
TIME_COLUMNS = ("sched_dep_ts", "sched_arr_ts")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(micros):
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


@pytest.fixture(scope="module")
def features(usecase):
    return load_feature_set(usecase)


@pytest.fixture(scope="module")
def real_requests(spark, offline_feature_tables):
    """Real flights of one December day that pushed back, as the API's request rows (aware UTC times)."""
    from pyspark.sql import functions as F  # noqa: N812

    flights = spark.read.parquet(offline_feature_tables.path("flights")).where(
        (F.col("sched_dep_date") == F.lit(DAY).cast("date")) & F.col("dep_ts").isNotNull())
    # Times as epoch microseconds: no dependence on the Python process's time zone.
    picked = flights.orderBy(F.xxhash64("flight_id"), "flight_id").limit(N_FLIGHTS).select(
        *[F.unix_micros(c).alias(c) if c in TIME_COLUMNS else c for c in REQUEST_COLUMNS],
        F.unix_micros("dep_ts").alias("as_of"))
    rows = []
    for r in picked.collect():
        d = r.asDict()
        for c in (*TIME_COLUMNS, "as_of"):
            d[c] = _utc(d[c])
        rows.append(d)
    return rows


@pytest.fixture(scope="module")
def offline_history(spark, features, offline_feature_tables, real_requests):
    """{view: {key: (sorted event micros, rows)}} of the offline tables around the day, for those keys."""
    from pyspark.sql import functions as F  # noqa: N812

    day = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    history = {}
    for view in features.batch_views:
        keys = {tuple(r[k] for k in view.keys) for r in real_requests}
        keys = [k for k in keys if None not in k]
        wanted = spark.createDataFrame(keys, list(view.keys))
        table = spark.read.parquet(offline_feature_tables.path(feature_table_name(features.usecase, view.name)))
        table = table.join(F.broadcast(wanted), list(view.keys), "left_semi").where(
            (F.col(EVENT_TIME) > F.lit(day - view.ttl - timedelta(days=1)))
            & (F.col(EVENT_TIME) < F.lit(day + timedelta(days=2))))
        by_key: dict[tuple, list] = {}
        for r in table.select(*view.keys, F.unix_micros(EVENT_TIME).alias("us"), *view.feature_names).collect():
            d = r.asDict()
            by_key.setdefault(tuple(d[k] for k in view.keys), []).append(d)
        history[view.name] = {}
        for key, items in by_key.items():
            items.sort(key=lambda d: d["us"])
            history[view.name][key] = ([d["us"] for d in items], items)
    return history


def online_read(features, history, row, key_by_view, overrides=None):
    """What the online store answers at the request's clock: the latest row at or before it, expired after
    the view's TTL (``overrides``: {view: ReadResult} to serve instead)."""
    now_us = (row["as_of"] - EPOCH) // timedelta(microseconds=1)
    out = {}
    for view in features.batch_views:
        name = online_view_name(features.usecase, view.name)
        key = key_by_view[name]
        if overrides and view.name in overrides:
            out[name] = overrides[view.name]
            continue
        if key is None:
            continue
        times, items = history[view.name].get(key, ([], []))
        i = bisect.bisect_right(times, now_us) - 1
        ttl_us = view.ttl // timedelta(microseconds=1)
        if i < 0 or times[i] + ttl_us <= now_us:
            out[name] = ReadResult(key, False, None, None, None)
            continue
        values = {f: items[i][f] for f in view.feature_names}
        out[name] = ReadResult(key, True, values, _utc(times[i]), (now_us - times[i]) / 1e6)
    return out


def served_record(features, resolver, row, results, request_id):
    """The served prediction's logged features, as the API resolves them (None when the API refuses it)."""
    keys = resolver.keys(row)
    try:
        resolved = resolver.resolve(row, keys, results)
    except StaleFeature:
        return None  # a reject policy: the API answered 422, nothing was served
    return {
        "request_id": request_id,
        "as_of": row["as_of"],
        "model_version": "7",
        "request": {c: row[c] for c in REQUEST_COLUMNS},
        "features": resolved.values,
        "feature_status": {v: rep["status"] for v, rep in resolved.report.items()},
        "feature_age_s": {v: rep["age_seconds"] for v, rep in resolved.report.items()},
    }


def served_frame(spark, features, records):
    from pyspark.sql import types as T  # noqa: N812

    kinds = {"int": T.LongType(), "double": T.DoubleType(), "string": T.StringType(), "bool": T.BooleanType()}
    request = T.StructType([T.StructField(c, T.TimestampType() if c in TIME_COLUMNS else
                                          T.DoubleType() if c == "dep_delay" else T.StringType())
                            for c in REQUEST_COLUMNS])
    feats = T.StructType([T.StructField(f.name, kinds[f.dtype]) for v in features.views.values() for f in v.features])
    schema = T.StructType([
        T.StructField("request_id", T.StringType(), False), T.StructField("as_of", T.TimestampType(), False),
        T.StructField("model_version", T.StringType()), T.StructField("request", request),
        T.StructField("features", feats),
        T.StructField("feature_status", T.MapType(T.StringType(), T.StringType())),
        T.StructField("feature_age_s", T.MapType(T.StringType(), T.DoubleType())),
    ])
    order = [f.name for v in features.views.values() for f in v.features]
    data = [(r["request_id"], r["as_of"], r["model_version"], tuple(r["request"][c] for c in REQUEST_COLUMNS),
             tuple(r["features"][n] for n in order), r["feature_status"], r["feature_age_s"]) for r in records]
    return spark.createDataFrame(data, schema)


@pytest.fixture(scope="module")
def correct_records(features, real_requests, offline_history):
    resolver = FeatureResolver(features)
    records = []
    for i, row in enumerate(real_requests):
        results = online_read(features, offline_history, row, resolver.keys(row))
        record = served_record(features, resolver, row, results, f"req-{i:04d}")
        if record is not None:
            records.append(record)
    assert len(records) > 300, "most pushed-back flights are served"
    return records


def test_correct_served_values_pass(spark, settings, features, offline_feature_tables, correct_records):
    served = served_frame(spark, features, correct_records)
    report = served_skew(spark, offline_feature_tables, features, served, sample=200, seed=11, run_id="served-ok",
                         home=settings.home_path)

    assert report.success, report.to_text()
    assert report.served_rows == len(correct_records) and report.sampled == 200
    for skew in report.features:
        assert skew.mismatches == 0, report.to_text()
    request_names = {f.name for v in features.request_views for f in v.features}
    for skew in report.features:
        # Not vacuous: every request feature of every sampled row was compared, and every batch feature's row
        # was either compared or set aside under a named serving condition (here: stale with use_default).
        set_aside = sum(c.rows for c in report.conditions if c.view == skew.view and skew.feature in c.features)
        assert skew.compared + set_aside == 200, report.to_text()
        assert skew.compared == 200 if skew.feature in request_names else skew.compared >= 100, report.to_text()
    assert {c.condition for c in report.conditions} <= {"stale_default"}, report.to_text()
    assert report.model_versions == {"7": 200}
    text = (settings.home_path / "reports" / features.usecase / "served_skew" / "served-ok.txt").read_text()
    assert "PASSED" in text and "sched_dep_hour: 0/200" in text
    again = served_skew(spark, offline_feature_tables, features, served, sample=200, seed=11, run_id="served-ok-2")
    assert [(f.feature, f.compared) for f in again.features] == [(f.feature, f.compared) for f in report.features]
    assert [c.examples for c in again.conditions] == [c.examples for c in report.conditions]


def test_serving_only_timezone_bug_is_caught(spark, settings, usecase, features, offline_feature_tables,
                                             correct_records):
    from pipelines.features import compile_python, parse_feature

    utc_hour = compile_python(parse_feature("sched_dep_hour", 'hour(sched_dep_ts, "UTC")',
                                            usecase.tables["flights"].output_schema))
    buggy = [{**r, "features": {**r["features"], "sched_dep_hour": utc_hour(r["request"])}} for r in correct_records]
    assert sum(b["features"]["sched_dep_hour"] != r["features"]["sched_dep_hour"]
               for b, r in zip(buggy, correct_records, strict=True)) == len(correct_records)
    served = served_frame(spark, features, buggy)

    with pytest.raises(ServedSkewDetected) as caught:
        served_skew(spark, offline_feature_tables, features, served, sample=200, seed=11, run_id="served-tz-bug",
                    home=settings.home_path)

    report = caught.value.report
    assert caught.value.features == ["sched_dep_hour"] and report.failed_features == ["sched_dep_hour"]
    assert "served-feature skew in sched_dep_hour" in str(caught.value)
    hour = report.feature("sched_dep_hour")
    assert hour.compared == hour.mismatches == 200
    # New York is five hours behind UTC in December: the served (UTC) hour is the offline one + 5, mod 24.
    assert hour.largest_differences and {d["abs_diff"] for d in hour.largest_differences} <= {5.0, 19.0}
    for e in hour.examples:
        assert e["served"] == (e["offline"] + 5) % 24
    assert all(f.mismatches == 0 for f in report.features if f.feature != "sched_dep_hour"), report.to_text()
    text = (settings.home_path / "reports" / features.usecase / "served_skew" / "served-tz-bug.txt").read_text()
    assert "FAIL request.sched_dep_hour: 200/200" in text


def test_store_down_and_past_ttl_rows_are_serving_conditions_not_skew(spark, settings, features, real_requests,
                                                                       offline_history, offline_feature_tables,
                                                                       correct_records):
    resolver = FeatureResolver(features)
    by_id = {f"req-{i:04d}": row for i, row in enumerate(real_requests)}
    aircraft = next(v for v in features.batch_views if v.name == "aircraft_history")
    records, down, past_ttl, would_mismatch = [], set(), set(), 0
    for record in correct_records:
        row, rid = by_id[record["request_id"]], record["request_id"]
        if len(down) < 12:
            # The online store is down: every view is served from its defaults.
            degraded = served_record(features, resolver, row, None, rid)
            would_mismatch += degraded["features"] != record["features"]
            records.append(degraded)
            down.add(rid)
        elif len(past_ttl) < 12 and record["feature_status"]["aircraft_history"] == "fresh":
            # A store that kept an eight-day-old row of the tail (past the 7-day TTL) serves it as stale.
            key = resolver.keys(row)[online_view_name(features.usecase, "aircraft_history")]
            old = {n: (record["features"][n] + 30.0 if isinstance(record["features"][n], float)
                       else record["features"][n] + 3) for n in aircraft.feature_names}
            age = (aircraft.ttl + timedelta(days=1)).total_seconds()
            stale = ReadResult(key, True, old, row["as_of"] - timedelta(seconds=age), age)
            results = online_read(features, offline_history, row, resolver.keys(row), {"aircraft_history": stale})
            served = served_record(features, resolver, row, results, rid)
            assert served["feature_status"]["aircraft_history"] == "stale"
            would_mismatch += 1
            records.append(served)
            past_ttl.add(rid)
        else:
            records.append(record)
    assert len(down) == len(past_ttl) == 12
    # Counted as mismatches, these rows would fail the check (1% of the rows is 4 rows).
    assert would_mismatch > 0.01 * len(records) * 2
    served = served_frame(spark, features, records)

    report = served_skew(spark, offline_feature_tables, features, served, sample=len(records), seed=3,
                         run_id="served-conditions", home=settings.home_path)

    assert report.success, report.to_text()
    assert all(f.mismatches == 0 for f in report.features), report.to_text()
    for view in features.batch_views:
        unavailable = next(c for c in report.conditions if c.view == view.name and c.condition == "unavailable")
        assert unavailable.rows == 12 and set(unavailable.examples) <= down
    ttl = next(c for c in report.conditions if c.view == "aircraft_history" and c.condition == "past_ttl")
    assert ttl.rows == 12 and set(ttl.examples) <= past_ttl
    assert report.condition_rows("route_stats", "past_ttl") == 0
    text = report.to_text()
    assert "aircraft_history: past_ttl: 12 row(s)" in text and "origin_weather: unavailable: 12 row(s)" in text
    assert "not counted as mismatches" in text


def test_serving_only_batch_feature_bug_is_caught(spark, features, offline_feature_tables, correct_records):
    # The online materialization wrote the tail's departure-delay mean into its arrival-delay mean.
    buggy = [{**r, "features": {**r["features"], "tail_arr_delay_mean_7d": r["features"]["tail_dep_delay_mean_7d"]}}
             if r["feature_status"]["aircraft_history"] == "fresh" else r for r in correct_records]
    served = served_frame(spark, features, buggy)

    with pytest.raises(ServedSkewDetected) as caught:
        served_skew(spark, offline_feature_tables, features, served, sample=200, seed=11, run_id="served-batch-bug")

    report = caught.value.report
    assert report.failed_features == ["tail_arr_delay_mean_7d"], report.to_text()
    tail = report.feature("tail_arr_delay_mean_7d")
    assert tail.mismatches > 0.5 * tail.compared and tail.largest_differences
    assert all(f.mismatches == 0 for f in report.features if f.feature != "tail_arr_delay_mean_7d")
