"""The drift monitor for real: a model trained on January-March 2013, then real traffic replayed through the
API (real Triton, real features on the replay's clock, real outcomes): a week inside the training window
(the control) and the first twelve days of June (the seasonal shift, with one injected client bug), the feedback
join, then ``run_drift`` on the control and the ``monitoring_drift`` DAG through Airflow on June, whose retraining
request ``model_train`` consumes. The retrained model is judged on all of June-July (offline point-in-time rows).

Why twelve days of served June rather than all of June-July: the shift is flagged from its first day and the
bug on its day; every further day only repeats them, at ~15 s of drift run and ~1,000 requests each (about 20
more minutes of CI for no new behaviour).

One trained model, one API and one pair of replays are shared by the module.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import ApiServer, clear_logs, model_env

from pipelines.config import load_settings

# A hang guard, not a deadline: the first test's setup trains, replays and profiles (~15 min on 2 cores).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3000)]
pytest_plugins = ["serving_fixtures"]

WINTER = {"data": {"start": "2013-01-01", "end": "2013-04-01", "validation_days": 14, "holdout_days": 14}}
CONTROL = (date(2013, 2, 22), date(2013, 3, 1))   # inside the winter model's training split
SUMMER = (date(2013, 6, 1), date(2013, 6, 13))   # served and monitored; the judged period runs to Aug 1
BUG_DAY, BUG_CARRIER = "2013-06-10", "B6"          # a client stops sending dep_delay for 10% of B6's requests
LABEL_DELAY = timedelta(hours=2)
DRIFT_TABLES = ("profiles", "indicators", "findings", "incidents")


def _buggy_client(body: dict) -> dict:
    if body["carrier"] == BUG_CARRIER and str(body["sched_dep_ts"]).startswith(BUG_DAY) and \
            zlib.crc32(body["flight_id"].encode()) % 10 == 0:
        return {**body, "dep_delay": None}
    return body


@pytest.fixture(scope="module", autouse=True)
def champion_kept(settings, mlflow_service):
    """The retraining's gate may promote its version: the champion other modules serve is put back."""
    from pipelines.models.registry import ModelNotFound, client, resolve_version

    try:
        before = resolve_version(settings, "flights_eta", "champion").version
    except ModelNotFound:
        before = None
    yield
    if before is not None:
        client(settings).set_registered_model_alias("flights_eta", "champion", before)
    else:  # there was none: the modules after this one find none either
        from mlflow.exceptions import MlflowException

        try:
            client(settings).delete_registered_model_alias("flights_eta", "champion")
        except MlflowException:  # the retraining did not set one either
            pass


@pytest.fixture(scope="module")
def winter_model(settings, spark, usecase, offline_feature_tables, mlflow_service, triton_service):
    """The January-March model, registered and loaded into the test Triton (the deployment's own steps)."""
    from pipelines.deploy.package import golden_check, package_version, place_and_load
    from pipelines.models.registry import resolve_version
    from pipelines.training.pipeline import train_usecase

    result = train_usecase(settings, spark, usecase, "it-drift-winter-r2", WINTER, triggered_by="test-drift")
    ref = resolve_version(settings, result.model_name, version=result.version)
    artifact = package_version(settings, ref.name, ref.version)
    place_and_load(settings, usecase, artifact.path)
    golden_check(settings, artifact.path)
    return ref


@pytest.fixture(scope="module")
def replayed(settings, spark, usecase, winter_model, tmp_path_factory):
    """The two periods replayed through an API pinned to the winter model, then joined with their outcomes
    (run_feedback). The drift tables start empty."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.drift import run_dir
    from pipelines.monitoring.feedback import run_feedback
    from pipelines.monitoring.replay import prepare_store, replay
    from pipelines.stores.online import get_online_store

    for table in DRIFT_TABLES:
        shutil.rmtree(Path(settings.lake_root) / f"{table}__flights_eta", ignore_errors=True)
    shutil.rmtree(run_dir(settings, "flights_eta"), ignore_errors=True)
    for first, end in (CONTROL, SUMMER):
        clear_logs(settings, first - timedelta(days=3), end + timedelta(days=2))
    db = tmp_path_factory.mktemp("drift-online") / "features.db"
    store = {"ATELIER__ONLINE_STORE__BACKEND": "sqlite", "ATELIER__ONLINE_STORE__SQLITE_PATH": str(db)}
    replay_settings = load_settings("test", environ={**os.environ, **store})
    with get_online_store(replay_settings) as online:
        prepare_store(online, load_feature_set(usecase), clear=True)
    server = ApiServer({**store, **model_env(winter_model), "ATELIER__API__DEADLINE_MS": "1000"},
                       log_dir=settings.prediction_log_path).start()
    results = {}
    try:
        for name, (first, end) in (("control", CONTROL), ("summer", SUMMER)):
            results[name] = replay(replay_settings, spark, "flights_eta", first, end, api_url=server.url,
                                   token=server.token, label_delay=LABEL_DELAY,
                                   request_hook=_buggy_client if name == "summer" else None)
    finally:
        server.stop()
    for name, (first, end) in (("control", CONTROL), ("summer", SUMMER)):
        assert results[name].failed == 0
        run_feedback(spark, settings, usecase, first, end, f"it-drift-feedback-{name}", log_to_mlflow=False)
    return results


@pytest.fixture(scope="module")
def control(replayed, settings, spark, usecase):
    from pipelines.monitoring.drift import run_drift

    return run_drift(spark, settings, usecase, *CONTROL, "it-drift-control", log_to_mlflow=False)


@pytest.fixture(scope="module")
def summer(replayed, control, settings, airflow_service):
    """monitoring_drift through Airflow over June-July (one backfill run), and the model_train run its
    retraining request started."""
    from pipelines.cli import _airflow_client
    from pipelines.monitoring.alerts import run_result

    client = _airflow_client(settings)
    client.wait_for_dag("monitoring_drift")
    before = {r["dag_run_id"] for r in client.runs("model_train")}
    run_id = client.trigger("monitoring_drift", {"usecase": "flights_eta", "start": SUMMER[0].isoformat(),
                                                 "end": SUMMER[1].isoformat()})
    state = client.wait_for_run("monitoring_drift", run_id, timeout_s=1800)
    assert state.state == "success", state.failed_tasks
    result = run_result(settings, "flights_eta", run_id)
    deadline = time.monotonic() + 180
    new: list[dict] = []
    while not new and time.monotonic() < deadline:
        new = [r for r in client.runs("model_train") if r["dag_run_id"] not in before]
        time.sleep(3)
    return client, run_id, result, new


def _findings(settings, **filters):
    from pipelines.monitoring.findings import findings_frame

    return findings_frame(settings, "flights_eta", **filters)


def test_a_period_like_the_training_one_raises_no_high_finding_and_no_retraining(control, settings):
    assert control.indicators_total >= 100_000 and min(control.indicators.values()) > 0
    assert control.reference is not None  # judged against the winter model's stored reference
    high = _findings(settings, start=CONTROL[0].isoformat(), end=(CONTROL[1] - timedelta(days=1)).isoformat(),
                     severity="high")
    model_high = high[high.source.isin(["served", "outcomes"])]
    assert model_high.empty, model_high.message.tolist()[:10]
    assert control.incidents == [] and control.retrain == []


def test_every_run_evaluates_100k_indicators_per_segment_and_cross(summer, replayed):
    _, _, result, _ = summer
    served = replayed["summer"].answered
    assert result["rows_scanned"]["served"] == served > 10_000  # every served row of the interval, once
    assert sum(result["indicators"].values()) >= 100_000
    assert min(result["indicators"].values()) >= 20_000  # every day, not one big day


def test_the_seasonal_shift_is_flagged_with_one_incident_and_one_retraining(summer, settings):
    client, run_id, result, new = summer
    high = _findings(settings, start=SUMMER[0].isoformat(), severity="high", kind="drift", source="served")
    columns = set(high.column)
    assert {"wx_temp", "sched_month"} <= columns, sorted(columns)[:30]
    assert len(result["incidents"]) == 1 and len(result["retrain"]) == 1, result["incidents"]
    first = result["incidents"][0]["first_day"]
    assert first <= "2013-06-07"  # within the first week of the shift
    params = result["retrain"][0]["params"]
    assert params["end"] == (date.fromisoformat(first) + timedelta(days=1)).isoformat()
    assert len(new) == 1 and new[0]["run_type"] == "asset_triggered"


def test_the_retrained_model_beats_the_old_one_on_the_drifted_period(summer, settings, spark, usecase,
                                                                     winter_model):
    from pipelines.featurestore import offline
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.models.registry import client, load_bundle
    from pipelines.training.pipeline import find_registered

    af, _, result, new = summer
    train_run = af.wait_for_run("model_train", new[0]["dag_run_id"], timeout_s=1800)
    assert train_run.state == "success", train_run.failed_tasks
    mv = find_registered(client(settings), "flights_eta", new[0]["dag_run_id"])
    run = client(settings).get_run(mv.run_id)
    params = result["retrain"][0]["params"]
    assert run.data.params["window_start"] == params["start"] and run.data.params["window_end"] == params["end"]
    # The drifted period after the retraining window: both models on the same point-in-time rows.
    features = load_feature_set(usecase)
    start = datetime.fromisoformat(params["end"] + "T00:00:00+00:00")
    rows = offline.training_set(spark, Lake.from_settings(settings), features, start,
                                datetime.fromisoformat("2013-08-01T00:00:00+00:00")).toPandas()
    rows = rows[rows["arr_delay"].notna()]
    old, new_bundle = (load_bundle(settings, "flights_eta", version=v) for v in (winter_model.version, mv.version))
    y = rows["arr_delay"].to_numpy(float)
    mae = {name: float(np.mean(np.abs(b.predict(b.matrix(rows)) - y))) for name, b in
           (("old", old), ("retrained", new_bundle))}
    assert len(rows) > 30_000
    assert mae["retrained"] < mae["old"], mae


def test_the_injected_client_bug_is_flagged_on_its_first_day_naming_feature_and_segment(summer, settings):
    bug = _findings(settings, start=BUG_DAY, end=BUG_DAY, column="dep_delay", segment="carrier",
                    severity="medium", source="served")
    hits = bug[(bug.segment_value == BUG_CARRIER) & (bug.statistic == "null_rate")]
    assert not hits.empty, bug.message.tolist()[:10]
    assert set(bug[bug.statistic == "null_rate"].segment_value) == {BUG_CARRIER}  # that carrier only
    # The served requests had dep_delay before the bug's day (the lake's nulls are real cancellations, a
    # source of their own): the bug's first day is the first flagged.
    before = _findings(settings, start=SUMMER[0].isoformat(), end="2013-06-09", column="dep_delay",
                       segment="carrier", severity="medium", source="served")
    assert before[before.statistic == "null_rate"].empty, before.message.tolist()[:10]


def test_findings_are_queryable_from_the_cli(summer, settings, capsys):
    from pipelines.cli import main

    assert main(["monitor", "findings", "--usecase", "flights_eta", "--day", BUG_DAY, "--column", "dep_delay",
                 "--segment", f"carrier={BUG_CARRIER}"]) == 0
    out = capsys.readouterr().out
    assert "null_rate carrier=B6" in out
    assert main(["monitor", "incidents", "--usecase", "flights_eta"]) == 0
    assert "flights_eta-2013-06" in capsys.readouterr().out
    assert main(["monitor", "findings", "--usecase", "flights_eta", "--severity", "urgent"]) == 2


def test_the_report_of_the_incident_day_is_kept_and_logged_to_the_serving_version(summer, settings,
                                                                                  winter_model):
    from pipelines.models.registry import client

    _, _, result, _ = summer
    first = result["incidents"][0]["first_day"]
    path = settings.home_path / "reports" / "flights_eta" / "drift" / first / "drift.html"
    assert path.stat().st_size > 10_000
    assert first in result["reports"] and (SUMMER[1] - timedelta(days=1)).isoformat() in result["reports"]
    c = client(settings)
    logged = [a.path for a in c.list_artifacts(winter_model.run_id, f"atelier/monitoring/drift/{first}")]
    assert logged == [f"atelier/monitoring/drift/{first}/drift.html"]


def test_alerts_reach_the_webhook_and_a_rerun_requests_no_second_retraining(summer, settings, tmp_path):
    """The DAG's alert task body with a webhook (a local receiver), and the retraining ledger on a re-run."""
    import http.server
    import json
    import threading

    from pipelines.monitoring.alerts import alert_findings, claim_retraining

    _, run_id, result, _ = summer
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hooked = load_settings("test", environ={**os.environ, "ATELIER__DEPLOY__WEBHOOK_URL":
                                                f"http://127.0.0.1:{server.server_address[1]}/alerts"})
        sent = alert_findings(hooked, result, "high", 20)
    finally:
        server.shutdown()
    assert sent == len(received) > 0
    assert all(a["event"] in ("drift.finding", "drift.findings") for a in received)
    assert received[0]["severity"] == "high" and received[0]["usecase"] == "flights_eta"
    # The incident was claimed by the DAG's run: another run over the same days asks for nothing.
    assert claim_retraining(settings, {**result, "run_id": "another-run"}) == []
