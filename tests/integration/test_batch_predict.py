"""Batch prediction on real Spark, MLflow and Airflow: the flights of a few days of the test lake, scored with
the registered flights model (``registered_model``, pinned by version) into ``predictions__flights_eta``."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.batch import predict
from pipelines.lake.tables import PARTITION_MANIFEST, Lake

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TABLE = "predictions__flights_eta"
DAY = timedelta(days=1)
# Two December days for the in-process runs (the killed job re-scores the second), another day for Airflow.
START, END = datetime(2013, 12, 10, tzinfo=UTC), datetime(2013, 12, 12, tzinfo=UTC)
KILL_DAY = datetime(2013, 12, 11, tzinfo=UTC)
AIRFLOW_DAY = datetime(2013, 12, 16, tzinfo=UTC)


def snapshot(folder: str | Path) -> dict[str, int]:
    """Relative path -> inode and size of every data file: equal snapshots = the very same files."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("_atelier")}


def partition_snapshot(lake: Lake, day: str) -> dict[str, int]:
    return snapshot(Path(lake.path(TABLE)) / f"sched_dep_date={day}")


def rows_of(spark, lake: Lake, days: list[str]) -> list[dict]:
    from datetime import date

    frame = predict.read_predictions(spark, lake, "flights_eta", [date.fromisoformat(d) for d in days])
    return [r.asDict() for r in frame.orderBy("flight_id").collect()]


@pytest.fixture(scope="module")
def model(registered_model):
    return registered_model


@pytest.fixture(scope="module")
def lake(published_lake, settings):
    return Lake.from_settings(settings)


@pytest.fixture(scope="module")
def first_run(spark, settings, usecase, lake, model):
    """One in-process run over [START, END) with the pinned version; returns (result, loads)."""
    p = predict.plan(settings, usecase, START, END, "test-batch-a", version=model.version)
    loads = spark.sparkContext.accumulator(0)
    return predict.run(spark, settings, usecase, p, loads=loads), loads.value


def flights_of(spark, lake: Lake, days: list[str]) -> int:
    from pyspark.sql import functions as F  # noqa: N812

    return spark.read.parquet(lake.path("flights")).where(F.col("sched_dep_date").cast("string").isin(days)).count()


def test_scores_every_flight_of_the_interval_into_its_day_partitions(spark, lake, first_run, model):
    result, loads = first_run
    days = ["2013-12-10", "2013-12-11"]
    expected = flights_of(spark, lake, days)
    assert result.days == days and result.input_rows == expected == result.output_rows
    assert result.model_version == model.version and result.model_name == "flights_eta"
    published = lake.partitions(TABLE, "sched_dep_date")
    assert sum(published[d] for d in days) == expected
    rows = rows_of(spark, lake, days)
    assert len(rows) == expected and len({r["flight_id"] for r in rows}) == expected
    for r in rows:
        assert r["model_version"] == model.version and r["run_id"] == "test-batch-a"
        assert r["lower_90"] <= r["lower_80"] <= r["prediction"] <= r["upper_80"] <= r["upper_90"]
        assert "arr_delay" not in r  # the label is never carried into predictions
    # The bundle is shipped once and loaded once per Python worker (local[2]: at most two workers).
    assert 1 <= loads <= 2
    manifest = json.loads((Path(lake.path(TABLE)) / "sched_dep_date=2013-12-10" / PARTITION_MANIFEST).read_text())
    assert manifest == {"rows": published["2013-12-10"], "run_id": "test-batch-a"}
    report = Path(lake.root).parent / "reports" / "flights_eta" / "batch_predict" / "test-batch-a" / "validation.txt"
    assert report.read_text().startswith("data validation PASSED")


def test_rerun_gives_identical_output_and_keeps_other_days(spark, settings, usecase, lake, first_run, model):
    before = rows_of(spark, lake, ["2013-12-10", "2013-12-11"])
    other_days = {d: partition_snapshot(lake, d) for d in lake.partitions(TABLE, "sched_dep_date")
                  if d not in ("2013-12-10", "2013-12-11")}
    # Another run of the interval writes the same rows, its run id aside (a retry, same run id, is identical).
    p = predict.plan(settings, usecase, START, END, "test-batch-b", version=model.version)
    predict.run(spark, settings, usecase, p)
    again = rows_of(spark, lake, ["2013-12-10", "2013-12-11"])
    assert {r["run_id"] for r in again} == {"test-batch-b"}
    assert [{**r, "run_id": "test-batch-a"} for r in again] == before
    # Other days' partitions are the very same files (hard links), untouched.
    assert {d: partition_snapshot(lake, d) for d in other_days} == other_days


def test_batch_prediction_equals_online_prediction_for_the_same_flight_and_features(spark, settings, usecase, lake,
                                                                                     first_run, model):
    """Point 4: for sampled flights, the online API's own feature code (``serving.features.FeatureResolver``:
    request features by the feature language's Python compiler from the raw flight row, store rows with
    defaults and freshness policies) builds each feature row, the store answering with the same values the
    batch joined (found with its event time, or missing when the batch had none); one row is predicted in
    one process as serving does (a one-row float32 matrix, ``ModelBundle.predict`` = ``inplace_predict``,
    ``ModelBundle.intervals``): equal to the batch output within 1e-6."""
    import numpy as np
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.featurestore.spec import load_feature_set
    from pipelines.models.registry import load_bundle
    from pipelines.stores.online.base import ReadResult
    from serving.features import FeatureResolver

    features = load_feature_set(usecase)
    bundle = load_bundle(settings, model.name, version=model.version)
    resolver = FeatureResolver(features, dict(bundle.feature_defaults))
    batch = {r["flight_id"]: r for r in rows_of(spark, lake, ["2013-12-10", "2013-12-11"])}
    sample = sorted(batch)[::max(1, len(batch) // 60)]
    flights = spark.read.parquet(lake.path("flights")).where(F.col("flight_id").isin(sample))
    timestamps = [c for c, t in flights.dtypes if t == "timestamp"]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    raw = {r["flight_id"]: {k: (epoch + timedelta(microseconds=v) if k in timestamps and v is not None else v)
                            for k, v in r.asDict().items()}
           for r in flights.select(*[F.unix_micros(c).alias(c) if c in timestamps else F.col(c)
                                     for c in flights.columns]).collect()}
    worst, missing_rows = 0.0, 0
    for flight_id in sample:
        row, scored = raw[flight_id], batch[flight_id]
        keys = resolver.keys(row)
        results = {}
        for view in features.batch_views:
            online = next(v.online_name for v in resolver.views if v.name == view.name)
            event_time = scored[f"{view.name}__event_time"]
            found = event_time is not None
            missing_rows += not found
            results[online] = ReadResult(keys[online], found, {f: scored[f] for f in view.feature_names} if found
                                         else None, event_time, 0.0 if found else None)
        resolved = resolver.resolve(row, keys, results)
        for name in bundle.feature_names:  # the same feature values on both paths
            a, b = resolved.values[name], scored[name]
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0), name
        matrix = np.array([resolver.vector(resolved.values, bundle.feature_names)], dtype=np.float32)
        prediction = bundle.predict(matrix)
        worst = max(worst, abs(float(prediction[0]) - scored["prediction"]))
        for level, (low, high) in bundle.intervals(prediction, matrix).items():
            lo_name, hi_name = predict.interval_columns([level])
            assert abs(low[0] - scored[lo_name]) <= 1e-6 and abs(high[0] - scored[hi_name]) <= 1e-6
    assert len(sample) >= 30 and worst <= 1e-6


def test_a_classifier_scores_probabilities_classes_and_sets_through_spark(spark, settings, usecase, lake, model,
                                                                         tmp_path):
    """A binary classifier's bundle scored by the batch job's Spark stage (the pandas UDF in the workers, its
    string columns included): per flight, the bundle's own calibrated probabilities, most probable class and
    conformal sets for the same feature row. Not published: the use case's table holds its regressor's."""
    import numpy as np

    from pipelines.featurestore.spec import load_feature_set
    from tests.support.bundles import synthetic_bundle

    features = load_feature_set(usecase)
    bundle = synthetic_bundle(features, tmp_path / "classifier", rows=3_000, trees=10, depth=3, task="binary")
    p = predict.plan(settings, usecase, START, END, "test-batch-classifier", version=model.version)
    frame = predict.features_frame(spark, lake, features, p, predict.read_entities(spark, lake, p),
                                   bundle.feature_defaults)
    rows = [r.asDict() for r in predict.score(spark, frame, bundle, p.run_id).collect()]
    assert len(rows) > 500
    matrix = np.array([[np.nan if r[f] is None else r[f] for f in bundle.feature_names] for r in rows],
                      dtype=np.float32)
    proba = bundle.predict_proba(matrix)
    sets = bundle.prediction_sets(bundle.margins(matrix), matrix)
    assert np.allclose([r["prediction"] for r in rows], proba[:, 1], atol=1e-9)
    assert np.allclose([r["probability_on_time"] for r in rows], proba[:, 0], atol=1e-9)
    assert [r["predicted_class"] for r in rows] == [bundle.classes[k] for k in proba.argmax(axis=1)]
    for level, column in (("0.8", "set_80"), ("0.9", "set_90")):
        assert [r[column] for r in rows] == ["|".join(c for c, m in zip(bundle.classes, row, strict=True) if m)
                                             for row in sets[level]]
    assert 0 < sum(r["set_90"] == "on_time|late" for r in rows) < len(rows)


def test_failed_validation_fails_the_run_and_keeps_the_published_days(spark, settings, usecase, lake, first_run,
                                                                       model, tmp_path):
    """A real model whose interval offsets are inverted (lower above upper) makes the output break the
    suite's ordering checks: the run fails with the report and publishes nothing."""
    from pipelines.models.bundle import ModelBundle
    from pipelines.models.registry import load_bundle
    from pipelines.quality.expectations import ValidationFailed

    good = load_bundle(settings, model.name, version=model.version)
    folder = tmp_path / "broken"
    shutil.copytree(good.path, folder)
    data = json.loads((folder / "bundle.json").read_text())
    data["calibration"]["offsets"]["0.8"] = [25.0, -25.0]
    data["calibration"]["segment_feature"], data["calibration"]["segment_offsets"] = None, {}
    (folder / "bundle.json").write_text(json.dumps(data))
    broken = ModelBundle.load(folder, version=model.version)

    version, day = lake.current_version(TABLE), partition_snapshot(lake, "2013-12-10")
    p = predict.plan(settings, usecase, START, START + DAY, "test-batch-broken", version=model.version)
    with pytest.raises(ValidationFailed) as failed:
        predict.run(spark, settings, usecase, p, bundle=broken)
    text = str(failed.value)
    assert "FAILED" in text and "expect_column_pair_values_a_to_be_greater_than_b" in text and "lower_80" in text
    assert lake.current_version(TABLE) == version and partition_snapshot(lake, "2013-12-10") == day
    assert not lake.staging_path(TABLE, "test-batch-broken").exists()


def test_plan_resolves_the_champion_by_default_or_another_alias(settings, usecase, model):
    """Without a version the plan takes the alias (``champion`` by default), resolved once on the driver."""
    from pipelines.models.registry import client, resolve_version

    c = client(settings)
    c.set_registered_model_alias(model.name, "batch-test", model.version)
    try:
        assert predict.plan(settings, usecase, START, END, "test-batch-alias", alias="batch-test").model.version \
            == model.version
    finally:
        c.delete_registered_model_alias(model.name, "batch-test")
    champion = resolve_version(settings, model.name, alias="champion")
    assert predict.plan(settings, usecase, START, END, "test-batch-champion").model.version == champion.version


def job_env(settings, **extra: str) -> dict[str, str]:
    from pipelines.spark import python_env

    return {**os.environ, **python_env(), "ATELIER_PROFILE": settings.profile, **extra}


def run_job_directly(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The job's entry point without spark-submit: enough for failures that come before Spark starts."""
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "jobs" / "batch_predict.py"),
                           "--usecase", "flights_eta", *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO, env=job_env(settings, **env))


@pytest.mark.parametrize(("args", "reason"), [
    (["--alias", "no-such-alias", "--start", "2013-12-10", "--end", "2013-12-11"],
     "ModelNotFound\nregistered model 'flights_eta' has no alias 'no-such-alias'"),
    (["--start", "2013-12-10", "--end", "2013-12-10"],
     "BatchPredictError\nempty interval: start 2013-12-10T00:00:00+00:00 is not before end"),
    (["--start", "2013-13-10", "--end", "2013-12-11"], "ValueError\n'2013-13-10' is not an ISO date"),
], ids=["unknown-alias", "start-equals-end", "bad-date"])
def test_bad_input_fails_early_and_clearly(settings, model, args, reason):
    version_args = [] if "--alias" in args else ["--model-version", model.version]
    done = run_job_directly(settings, "--run-id", "test-batch-bad", *version_args, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"ATELIER JOB FAILED: {reason}" in done.stderr
    assert "Traceback" not in done.stderr and "SparkContext" not in done.stderr + done.stdout


def test_an_interval_without_flights_is_skipped_with_the_reason_before_spark(settings, model):
    """Nothing to score is not a failure (a scheduled run past the data): exit 0, the reason, no Spark."""
    done = run_job_directly(settings, "--run-id", "test-batch-nothing", "--model-version", model.version,
                            "--start", "2014-03-01", "--end", "2014-03-03")
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("ATELIER JOB SKIPPED: nothing to score: lake table 'flights' has no sched_dep_date partition in "
            "[2014-03-01, 2014-03-03)") in done.stdout
    assert "SparkContext" not in done.stderr + done.stdout


def test_missing_feature_tables_fail_early_naming_them(settings, lake, model, tmp_path):
    """A lake whose offline feature tables were never built (the flights table is there)."""
    other = tmp_path / "lake"
    other.mkdir()
    (other / "flights").symlink_to(Path(lake.root) / "flights")
    done = run_job_directly(settings, "--run-id", "test-batch-nofeatures", "--model-version", model.version,
                            "--start", "2013-12-10", "--end", "2013-12-11", ATELIER__LAKE__ROOT=str(other))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ATELIER JOB FAILED: BatchPredictError\nmissing feature partitions:" in done.stderr
    for view in ("aircraft_history", "route_stats", "origin_weather"):
        assert f"offline feature table 'features__flights_eta__{view}' is not published" in done.stderr


def test_spark_submit_killed_before_publishing_leaves_the_previous_partition(spark, settings, usecase, lake, model,
                                                                            first_run):
    """A real kill: the job runs under spark-submit (its own process group: JVM and Python workers) and gets
    SIGKILL as soon as its output files for the day appear in their final place in its staging folder (Spark's
    job commit; next come validation and publication) -- where an in-place Parquet overwrite would already
    have replaced part or all of the partition. The
    published day is the previous run's, file for file; the next run cleans up and publishes."""
    from pipelines.spark import spark_conf

    day, run_id = KILL_DAY.date().isoformat(), "test-batch-killed"
    version, before = lake.current_version(TABLE), partition_snapshot(lake, day)  # published by the first run
    assert before

    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(submit), "--master", settings.spark.master, "--driver-memory", settings.spark.driver_memory]
    for key, value in spark_conf(settings).items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(REPO / "pipelines" / "jobs" / "batch_predict.py"), "--usecase", "flights_eta", "--run-id", run_id,
            "--model-version", model.version, "--start", day, "--end", (KILL_DAY + DAY).date().isoformat()]
    staged = lake.staging_path(TABLE, run_id)
    shutil.rmtree(staged, ignore_errors=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any(staged.glob("sched_dep_date=*/part-*")):
            assert proc.poll() is None, f"the job ended before it was killed:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the job never wrote its staging output"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert lake.current_version(TABLE) == version and partition_snapshot(lake, day) == before
    assert any(staged.rglob("part-*")), "the killed run had written its day"

    p = predict.plan(settings, usecase, KILL_DAY, KILL_DAY + DAY, run_id, version=model.version)
    result = predict.run(spark, settings, usecase, p)
    assert list(result.partitions) == [day] and result.output_rows == flights_of(spark, lake, [day])
    assert lake.partitions(TABLE, "sched_dep_date")[day] == result.output_rows
    assert json.loads((Path(lake.path(TABLE)) / f"sched_dep_date={day}" / PARTITION_MANIFEST).read_text())[
        "run_id"] == run_id


@pytest.fixture(scope="module")
def airflow(airflow_service, settings):
    from pipelines.cli import _airflow_client

    return _airflow_client(settings)


def test_batch_predict_dag_through_airflow(airflow, settings, lake, model, published_lake):
    """The DAG submits the job through the Spark provider for a one-day backfill with a pinned version."""
    day = AIRFLOW_DAY.date().isoformat()
    airflow.wait_for_dag("batch_predict")
    run_id = airflow.trigger("batch_predict", {"usecase": "flights_eta", "start": day,
                                               "end": (AIRFLOW_DAY + DAY).date().isoformat(),
                                               "model_version": model.version})
    result = airflow.wait_for_run("batch_predict", run_id, timeout_s=900)
    assert result.state == "success", result.failed_tasks
    manifest = json.loads((Path(lake.path(TABLE)) / f"sched_dep_date={day}" / PARTITION_MANIFEST).read_text())
    assert manifest["run_id"] == run_id and manifest["rows"] > 500
    assert airflow.asset_events("batch_predict", run_id) == {
        "predictions.flights_eta": {"usecase": "flights_eta", "run_id": run_id}}
