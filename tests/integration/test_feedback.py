"""The feedback loop for real: a week of December 2013 replayed through the API (real Triton, real features
written on the replay's clock), then monitoring_feedback through Airflow, checked against an independent
recomputation from the raw log files and the lake.

One replay is shared by the module (it is the expensive part: ~7,000 requests and their feature writes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from serving_fixtures import ApiServer, clear_logs, model_env

from pipelines.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["serving_fixtures"]

WEEK = (date(2013, 12, 24), date(2013, 12, 31))
CUTOFF = datetime(2013, 12, 31, tzinfo=UTC)
LABEL_DELAY = timedelta(hours=2)
SEGMENTS = {"origin": "origin", "carrier": "carrier", "dep_delay_bucket": "dep_delay_bucket",
            "hour": "sched_dep_hour"}


@pytest.fixture(scope="module")
def replayed(settings, spark, usecase, published_lake, offline_feature_tables, serving_model, triton_service,
             tmp_path_factory):
    """The API (pinned to the trained version, its own SQLite store, the profile's log folder) and one
    replay of the week through it. Yields (replay result, API server, store overrides, model ref)."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.recalibration import calibration_dir
    from pipelines.monitoring.replay import prepare_store, replay
    from pipelines.stores.online import get_online_store

    ref, _ = serving_model
    clear_logs(settings, WEEK[0] - timedelta(days=3), WEEK[1] + timedelta(days=2))
    shutil.rmtree(calibration_dir(settings, "flights_eta", ref.name, ref.version), ignore_errors=True)
    db = tmp_path_factory.mktemp("replay-online") / "features.db"
    store = {"ATELIER__ONLINE_STORE__BACKEND": "sqlite", "ATELIER__ONLINE_STORE__SQLITE_PATH": str(db)}
    replay_settings = load_settings("test", environ={**os.environ, **store})
    with get_online_store(replay_settings) as online:  # the API is ready once its views exist
        prepare_store(online, load_feature_set(usecase), clear=True)
    server = ApiServer({**store, **model_env(ref)}, log_dir=settings.prediction_log_path).start()
    try:
        result = replay(replay_settings, spark, "flights_eta", *WEEK, api_url=server.url, token=server.token,
                        label_delay=LABEL_DELAY)
        yield result, server, replay_settings, ref
    finally:
        server.stop()
        # The version's recalibration is this module's output: later modules serve the bundle's intervals.
        shutil.rmtree(calibration_dir(settings, "flights_eta", ref.name, ref.version), ignore_errors=True)


def _log_records(settings, first: date, last: date) -> list[dict]:
    records = []
    day = first
    while day <= last:
        for path in sorted((settings.prediction_log_path / "flights_eta" / f"date={day.isoformat()}").glob("*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        day += timedelta(days=1)
    return records


def _flights(published_lake) -> pd.DataFrame:
    import pyarrow.dataset as ds

    return ds.dataset(published_lake.path("flights"), format="parquet", partitioning="hive").to_table(
        columns=["flight_id", "dep_ts", "arr_ts", "arr_delay", "origin", "dest", "carrier", "sched_dep_ts",
                 "sched_arr_ts"]).to_pandas()


def test_replay_sends_every_pushback_of_the_week_and_releases_outcomes_late(replayed, settings, published_lake):
    result, _, _, _ = replayed
    flights = _flights(published_lake)
    start, end = (pd.Timestamp(d, tz="UTC") for d in WEEK)
    pushed = flights[(flights.dep_ts >= start) & (flights.dep_ts < end)]
    assert result.failed == 0 and result.answered == result.requests
    assert result.requests == len(pushed) > 5000  # every push-back of the week, nothing else
    assert [d.day for d in result.days] == [(WEEK[0] + timedelta(days=i)).isoformat() for i in range(7)]
    assert all(d.feature_rows > 0 for d in result.days)

    records = {r["request_id"]: r for r in _log_records(settings, WEEK[0], WEEK[1])}
    assert set(records) == {f"rp-{f}" for f in pushed.flight_id}
    # The API judged features on the replay's clock: the request's push-back time.
    sample = pushed.head(50)
    for f in sample.itertuples():
        assert records[f"rp-{f.flight_id}"]["as_of"] == f.dep_ts.strftime("%Y-%m-%dT%H:%M:%SZ")

    # The week's releases (outcome partitions are by release day; other modules replay other periods).
    released = {(WEEK[0] + timedelta(days=i)).isoformat() for i in range((WEEK[1] - WEEK[0]).days + 2)}
    outcomes = pd.concat(pd.read_json(p, lines=True) for p in
                         (settings.outcome_log_path / "flights_eta").glob("date=*/*.jsonl")
                         if p.parent.name.removeprefix("date=") in released)
    labelled = pushed[pushed.arr_delay.notna()]
    assert set(outcomes.flight_id) == set(labelled.flight_id)  # a diverted flight releases nothing
    merged = outcomes.merge(labelled, on="flight_id")
    assert (pd.to_datetime(merged.arrived_at, utc=True) == merged.arr_ts + LABEL_DELAY).all()
    assert (merged.arr_delay_x == merged.arr_delay_y).all()


def _independent_metrics(settings, published_lake) -> pd.DataFrame:
    """MAE / coverage / counts per day and segment from the raw log files and the lake, without the
    platform's feedback code: dedupe by request id, label = the lake's arr_delay if it arrived before the
    cut-off (arrival + label delay), segments from the logged request and features."""
    records = _log_records(settings, WEEK[0], WEEK[1] - timedelta(days=1))
    rows = {}
    for r in records:
        rows.setdefault(r["request_id"], r)
    flights = _flights(published_lake).set_index("flight_id")
    out = []
    for r in rows.values():
        fid = r["request"]["flight_id"]
        f = flights.loc[fid]
        arrived = f.arr_ts + LABEL_DELAY if not pd.isna(f.arr_ts) else None
        actual = f.arr_delay if arrived is not None and arrived < CUTOFF and not pd.isna(f.arr_delay) else None
        pred = r["prediction"]["arr_delay"]
        lo, hi = r["interval"]["0.8"]["arr_delay"]
        values = {**r["request"], **r["features_used"]}
        row = {"day": r["as_of"][:10], "version": str(r["model"]["version"]), "actual": actual, "pred": pred,
               "covered_80": None if actual is None else lo <= actual <= hi}
        for seg, col in SEGMENTS.items():
            v = values[col]
            row[f"seg__{seg}"] = None if v is None else (str(float(v)) if isinstance(v, float) else str(v))
        out.append(row)
    return pd.DataFrame(out)


def test_feedback_dag_online_metrics_equal_an_independent_recomputation(replayed, settings, published_lake,
                                                                        airflow_service):
    from pipelines.cli import _airflow_client
    from pipelines.monitoring.report import metrics_frame

    _, _, _, ref = replayed
    client = _airflow_client(settings)
    client.wait_for_dag("monitoring_feedback")
    run_id = client.trigger("monitoring_feedback", {"usecase": "flights_eta", "start": WEEK[0].isoformat(),
                                                    "end": WEEK[1].isoformat()})
    state = client.wait_for_run("monitoring_feedback", run_id, timeout_s=900)
    assert state.state == "success", state.failed_tasks

    metrics = metrics_frame(settings, "flights_eta", start=WEEK[0].isoformat(), end="2013-12-30")
    expected = _independent_metrics(settings, published_lake)
    assert sorted(metrics.prediction_day.unique()) == sorted(expected.day.unique())
    checked = 0
    for seg in ["all", *SEGMENTS]:
        ours = metrics[metrics.segment == seg]
        keys = ["day"] if seg == "all" else ["day", f"seg__{seg}"]
        for key, group in expected.groupby(keys, dropna=False):
            day = key[0] if isinstance(key, tuple) else key
            value = "all" if seg == "all" else ("(null)" if pd.isna(key[1]) else key[1])
            row = ours[(ours.prediction_day == day) & (ours.segment_value.astype(str) == str(value))]
            assert len(row) == 1, (seg, day, value)
            row = row.iloc[0]
            labelled = group[group.actual.notna()]
            assert row.predictions == len(group) and row.labelled == len(labelled), (seg, day, value)
            if len(labelled):
                mae = (labelled.pred - labelled.actual.astype(float)).abs().mean()
                assert math.isclose(row.mae, mae, rel_tol=1e-9, abs_tol=1e-9), (seg, day, value, row.mae, mae)
                assert math.isclose(row.coverage_80, labelled.covered_80.astype(float).mean(), abs_tol=1e-12)
            checked += 1
    assert checked > 7 * 10
    # The last day's late outcomes (arrival + 2 h after midnight) are pending, not errors; a diverted flight of
    # the first day has no label after max_label_lag (2 d): missing, not counted in the errors.
    overall_rows = metrics[metrics.segment == "all"].set_index("prediction_day")
    assert overall_rows.loc["2013-12-30", "pending"] > 0 and overall_rows.loc["2013-12-30", "labelled"] > 0
    flights = _flights(published_lake)
    missing = 0
    for i in range(5):  # the days more than max_label_lag before the cut-off: every label is in, or missing
        day = WEEK[0] + timedelta(days=i)
        pushed = flights[(flights.dep_ts >= pd.Timestamp(day, tz="UTC"))
                         & (flights.dep_ts < pd.Timestamp(day + timedelta(days=1), tz="UTC"))]
        assert overall_rows.loc[day.isoformat(), "missing"] == pushed.arr_delay.isna().sum()
        assert overall_rows.loc[day.isoformat(), "pending"] == 0
        missing += int(pushed.arr_delay.isna().sum())
    assert missing > 0

    # The DAG's served_skew task recomputed what the API used, offline, and found no skew.
    reports = sorted((settings.home_path / "reports" / "flights_eta" / "served_skew").glob("*.txt"),
                     key=lambda p: p.stat().st_mtime)
    assert reports and reports[-1].read_text().startswith("served-feature skew check PASSED")

    # The registry shows online beside offline figures: one point per day on the version's run.
    from pipelines.models.registry import client as mlflow_client

    history = mlflow_client(settings).get_metric_history(ref.run_id, "online_mae")
    # MLflow's history is append-only: a re-run of a day (a DAG re-run, or this module run again on one MLflow
    # store) adds a point at the same day; the latest run's figure is among them.
    by_day: dict[str, list[float]] = {}
    for m in history:
        by_day.setdefault(datetime.fromtimestamp(m.timestamp / 1000, UTC).date().isoformat(), []).append(m.value)
    overall = metrics[metrics.segment == "all"].set_index("prediction_day")
    for day, maes in by_day.items():
        if day in overall.index:
            assert any(math.isclose(mae, overall.loc[day, "mae"], rel_tol=1e-9) for mae in maes), (day, maes)
    assert set(overall.index) <= set(by_day)


def test_late_labels_update_earlier_days_and_reruns_are_identical(replayed, settings, spark, usecase):
    from pipelines.lake.tables import Lake
    from pipelines.monitoring.feedback import feedback_table, run_feedback

    lake = Lake.from_settings(settings)

    def day_status(day: str) -> dict[str, int]:
        frame = spark.read.parquet(lake.path(feedback_table("flights_eta"))).where(
            f"prediction_day = '{day}' AND source = 'online'")
        return {r[0]: r[1] for r in frame.groupBy("label_status").count().collect()}

    before = day_status("2013-12-30")
    assert before.get("pending", 0) > 0
    # The next day's run: the outcomes that arrived on Dec 31 join Dec 30's predictions.
    first = run_feedback(spark, settings, usecase, date(2013, 12, 31), date(2014, 1, 1), "it-feedback-late",
                         log_to_mlflow=False)
    after = day_status("2013-12-30")
    assert sum(after.values()) == sum(before.values())  # the same predictions, more of them labelled
    assert after["labelled"] > before["labelled"] and after.get("pending", 0) < before["pending"]
    assert after.get("pending", 0) < 0.01 * sum(after.values())  # diverted flights: no label yet, not an error
    rows = spark.read.parquet(lake.path(feedback_table("flights_eta"))).where(
        "prediction_day >= '2013-12-29'").orderBy("source", "prediction_id").toPandas()
    again = run_feedback(spark, settings, usecase, date(2013, 12, 31), date(2014, 1, 1), "it-feedback-late-2",
                         log_to_mlflow=False)
    rows2 = spark.read.parquet(lake.path(feedback_table("flights_eta"))).where(
        "prediction_day >= '2013-12-29'").orderBy("source", "prediction_id").toPandas()
    pd.testing.assert_frame_equal(rows, rows2)
    assert first.feedback_rows == again.feedback_rows and first.label_status == again.label_status


def test_corrupt_lines_duplicates_and_empty_days_are_reported_never_published(replayed, settings, spark, usecase,
                                                                              tmp_path):
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.monitoring.feedback import ingest_served, served_table

    records = _log_records(settings, date(2013, 12, 26), date(2013, 12, 26))[:40]
    assert len(records) == 40
    log_dir = tmp_path / "log" / "flights_eta" / "date=2013-12-26"
    log_dir.mkdir(parents=True)
    lines = [json.dumps(r) for r in records]
    broken = {**records[0], "request_id": "no-prediction"}
    broken.pop("prediction")
    (log_dir / "part-a.jsonl").write_text("\n".join(lines[:30]) + "\n" + "not json at all\n"
                                          + json.dumps(broken) + "\n")
    # A rotated file read again (the same records twice) and a crash mid-write (a truncated last line).
    (log_dir / "part-b.jsonl").write_text("\n".join(lines[20:]) + "\n" + lines[0][: len(lines[0]) // 2])
    local = settings.model_copy(update={"lake": settings.lake.model_copy(update={"root": str(tmp_path / "lake")}),
                                        "api": settings.api.model_copy(update={"prediction_log_dir": str(tmp_path / "log")})})
    features = load_feature_set(usecase)
    report = ingest_served(spark, local, usecase, features, ["0.8", "0.9"], "arr_delay",
                           [date(2013, 12, 26), date(2013, 12, 27)], "it-corrupt")
    assert report.rows == 40 and report.rows_by_day == {"2013-12-26": 40}
    assert report.rejected == 3 and report.duplicates == 10 and report.lines == 30 + 2 + 20 + 1
    table = spark.read.parquet(Lake(local.lake_root).path(served_table("flights_eta")))
    assert table.count() == 40 and table.select("request_id").distinct().count() == 40
    served = table.where(f"request_id = '{records[5]['request_id']}'").collect()[0]
    assert served.prediction == records[5]["prediction"]["arr_delay"]
    assert served.features["wx_temp"] == records[5]["features_used"]["wx_temp"]
    # A day without traffic publishes nothing and fails nothing.
    empty = ingest_served(spark, local, usecase, features, ["0.8", "0.9"], "arr_delay", [date(2013, 12, 28)],
                          "it-empty")
    assert empty.rows == 0 and empty.lines == 0 and empty.rejected == 0


def test_the_api_serves_the_recalibration_the_feedback_run_published(replayed, settings):
    """monitoring_feedback recalibrated the served version's intervals from the week's outcomes; the running
    API follows it within its 2 s tick and names it in every answer."""
    import time

    import httpx

    from pipelines.monitoring.recalibration import calibration_dir

    _, server, _, ref = replayed
    folder = calibration_dir(settings, "flights_eta", ref.name, ref.version)
    updates = sorted(p.name for p in (folder / "updates").glob("*.json"))
    # One update after each day the DAG (and the late-label run) covered; current.json is the newest.
    assert [u[:8] for u in updates] == [f"{d:%Y%m%d}" for d in
                                        (WEEK[0] + timedelta(days=i) for i in range(1, 9))]
    record = json.loads((folder / "current.json").read_text())
    assert record == json.loads((folder / "updates" / updates[-1]).read_text())
    assert record["method"] == "adaptive_conformal" and record["state"]["updates"] == 8
    assert record["id"].startswith(f"{ref.name}:{ref.version}/cal-20140101T0000Z-")
    flight = {"origin": "JFK", "dest": "LAX", "carrier": "AA", "tailnum": "N335AA",
              "sched_dep_ts": "2013-12-30T22:00:00Z", "sched_arr_ts": "2013-12-31T04:00:00Z", "dep_delay": 12.0}
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.post(f"{server.url}/v1/predict", json=flight, headers=server.headers, timeout=5).json()
        if answer["calibration"] == record["id"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer["calibration"] == record["id"]
    offsets = record["calibration"]["offsets"]["0.9"]
    segment = record["calibration"]["segment_offsets"].get("1", {}).get("0.9", offsets)  # dep_delay 12: bucket 1
    value = answer["prediction"]["arr_delay"]
    low, high = answer["interval"]["0.9"]["arr_delay"]
    assert math.isclose(low, value + segment[0], abs_tol=0.011) and math.isclose(high, value + segment[1], abs_tol=0.011)


def test_model_train_can_learn_from_the_labelled_served_rows(replayed, settings, spark, usecase):
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.training.dataset import build_training_set, feedback_lineage
    from pipelines.training.spec import load_model_spec

    features = load_feature_set(usecase)
    spec = load_model_spec(usecase, {"data": {"start": "2013-12-01", "end": "2014-01-01", "validation_days": 10,
                                              "holdout_days": 7, "include_feedback": True}})
    version, rows, _ = build_training_set(spark, settings, features, spec, "it-feedback-training",
                                          spec.window.start, spec.window.end)
    lineage = feedback_lineage(settings, "flights_eta", version)
    assert lineage is not None and lineage["rows"] > 5000
    assert lineage["days"] == [(WEEK[0] + timedelta(days=i)).isoformat() for i in range(7)]
    assert set(lineage["tables"]) == {"feedback__flights_eta", "served__flights_eta", "outcomes__flights_eta"}
    assert all(lineage["tables"].values())
    # Replaced, not added: each flight once (the served copy's label is the outcome that arrived).
    plain = spark.read.parquet(published_lake_path(settings, "flights")).where(
        "arr_delay IS NOT NULL AND sched_dep_ts >= '2013-12-01' AND sched_dep_ts < '2014-01-01'").count()
    assert rows == plain


def published_lake_path(settings, table: str) -> str:
    from pipelines.lake.tables import Lake

    return Lake.from_settings(settings).path(table)


def test_a_replay_run_twice_gives_the_same_predictions(replayed, settings, spark):
    from pipelines.monitoring.replay import replay

    result, server, replay_settings, _ = replayed
    day = date(2013, 12, 27)
    first = {r["request_id"] for r in _log_records(settings, day, day)}
    again = replay(replay_settings, spark, "flights_eta", day, day + timedelta(days=1), api_url=server.url,
                   token=server.token, label_delay=LABEL_DELAY, drain=False)
    assert again.failed == 0 and again.requests == len(first)
    import time

    # The API's log writer flushes on its own thread (every 0.2 s); under load it may lag the answers, so wait
    # for the second copy of every record rather than a fixed time.
    deadline = time.monotonic() + 60
    while True:
        seen: dict[str, list[dict]] = {}
        for r in _log_records(settings, day, day):
            seen.setdefault(r["request_id"], []).append(r)
        if all(len(v) >= 2 for v in seen.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(seen) == first
    assert {len(v) for v in seen.values()} == {2}
    # The same request with the same features on the replay's clock, every time.
    differ = [k for k, (a, b) in seen.items() if (a["request"], a["as_of"], a["features_used"]) !=
              (b["request"], b["as_of"], b["features_used"])]
    assert not differ, differ[:5]
    # The same answer wherever the same runtime answered (under load a Triton call past its budget is answered
    # by the fallback predictor, by design, and says so).
    same = [(a, b) for a, b in seen.values() if a["model"]["runtime"] == b["model"]["runtime"]]
    assert len(same) > len(seen) // 2
    assert all(a["prediction"]["arr_delay"] == b["prediction"]["arr_delay"] for a, b in same), [
        (a["request_id"], a["prediction"], b["prediction"]) for a, b in same
        if a["prediction"]["arr_delay"] != b["prediction"]["arr_delay"]][:5]
