"""Airflow runs Atelier's DAGs for real: `lake_ingest` triggered through the REST API, as from the UI."""

from __future__ import annotations

import urllib.request
from urllib.parse import quote

import pytest

from pipelines.lake.tables import Lake
from pipelines.orchestration import AirflowApiError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def client(airflow_service, settings):
    from pipelines.cli import _airflow_client

    return _airflow_client(settings)


def test_ui_and_health(airflow_service, settings):
    base = f"http://{settings.airflow.host}:{settings.airflow.port}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as page:
        assert page.status == 200
        assert b"<html" in page.read().lower()
    with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=10) as health:
        assert b'"healthy"' in health.read()


def test_api_requires_authentication(airflow_service, settings):
    base = f"http://{settings.airflow.host}:{settings.airflow.port}"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"{base}/api/v2/dags", timeout=10)
    assert denied.value.code in (401, 403)


def test_lake_ingest_through_airflow(client, settings, usecase):
    client.wait_for_dag("lake_ingest")
    run_id = client.trigger("lake_ingest", {"usecase": usecase.name})
    result = client.wait_for_run("lake_ingest", run_id, timeout_s=900)
    assert result.state == "success", result.failed_tasks
    lake = Lake.from_settings(settings)
    for table in usecase.tables:
        assert lake.info(table).run_id == run_id
    assert lake.info("flights").rows == 336776
    assert lake.info("weather").rows == 26115
    # The events features_offline is scheduled on (paused for the test session, see conftest.py).
    # Only this use case's tables, each event naming the use case and the run (through the task's alias).
    events = client.asset_events("lake_ingest", run_id)
    assert set(events) == {f"lake.{t}" for t in usecase.tables}, events
    assert all(e == {"usecase": usecase.name, "run_id": run_id} for e in events.values()), events


def test_unknown_usecase_param_is_rejected_at_trigger(client):
    with pytest.raises(AirflowApiError, match="HTTP 400"):
        client.trigger("lake_ingest", {"usecase": "no_such_usecase"})


def test_features_materialize_through_airflow(client, settings, usecase):
    """The DAG submits the materialization and the skew check through the Spark provider. The run names no use
    case, as a scheduled run does: it covers every use case with feature views, one map index each."""
    from datetime import UTC, datetime

    from pipelines.featurestore.materialize import online_view_name
    from pipelines.stores.online import get_online_store
    from pipelines.usecases import list_usecases

    client.wait_for_dag("features_materialize")
    run_id = client.trigger("features_materialize", {"start": "2013-12-29", "end": "2013-12-31"})
    result = client.wait_for_run("features_materialize", run_id, timeout_s=900)
    assert result.state == "success", result.failed_tasks
    run_path = f"/api/v2/dags/features_materialize/dagRuns/{quote(run_id, safe='')}/taskInstances"
    covered = client._request("GET", f"{run_path}/usecases/xcomEntries/return_value")["value"]
    assert covered == list_usecases(settings.usecases_path), covered
    tasks = client._request("GET", run_path)["task_instances"]
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks}
    index = covered.index(usecase.name)
    assert states[("materialize", index)] == "success" and states[("skew_check", index)] == "success", states
    # The other use cases have no data in these days (or no lake yet): their indexes end skipped, not failed,
    # and the run still succeeds.
    for other, name in enumerate(covered):
        if name != usecase.name:
            assert states[("materialize", other)] == "skipped", (name, states)
    with get_online_store(settings) as store:
        rows = store.read(online_view_name(usecase.name, "origin_weather"), [("JFK",), ("EWR",), ("LGA",)],
                          now=datetime(2013, 12, 31, tzinfo=UTC))
    assert all(r.found for r in rows)
    assert all(r.event_time.date().isoformat() == "2013-12-30" for r in rows)
    report = settings.home_path / "reports" / usecase.name / "skew"
    assert any(p.read_text().startswith("skew check PASSED") for p in report.glob("*.txt"))
    events = client.asset_events("features_materialize", run_id)
    assert set(events) == {f"features.{usecase.name}.{v}" for v in ("aircraft_history", "route_stats",
                                                                     "origin_weather")}, events
    assert all(e["usecase"] == usecase.name for e in events.values()), events

