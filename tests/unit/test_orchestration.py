"""The Airflow REST client (``pipelines/orchestration.py``) against a scripted fake Airflow on loopback: login,
bearer tokens, the error messages, and which answers are retried (transient 5xx and time-outs, a DAG not yet
parsed) and which are not. Waits between attempts are recorded instead of slept."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
import tenacity.nap

from pipelines.orchestration import AirflowApiError, AirflowClient

pytestmark = pytest.mark.timeout(60)


class FakeAirflow:
    """Answers each (method, path) with its scripted answers in turn (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], list[tuple[int, Any]]] = {
            ("POST", "/auth/token"): [(201, {"access_token": "tok-1"})],
        }
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path, _, query = self.path.partition("?")
                fake.requests.append({"method": self.command, "path": path, "query": query, "body": body,
                                      "auth": self.headers.get("Authorization")})
                answers = fake.script.get((self.command, path), [(404, {"detail": "Not Found"})])
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if (r["method"], r["path"]) == (method, path)]


@pytest.fixture
def airflow() -> Iterator[FakeAirflow]:
    fake = FakeAirflow()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The waits tenacity asks for; each is slept for at most 20 ms."""
    import time

    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        time.sleep(min(seconds, 0.02))

    monkeypatch.setattr(tenacity.nap, "time", SimpleNamespace(sleep=sleep))
    return asked


def test_login_sends_the_credentials_and_then_the_bearer_token(airflow):
    airflow.script[("PATCH", "/api/v2/dags/d")] = [(200, {"dag_id": "d", "is_paused": False})]
    client = AirflowClient(airflow.url + "/", "admin", "pw")
    assert client.base_url == airflow.url
    client.set_paused("d", False)
    login, patch = airflow.requests
    assert login["body"] == {"username": "admin", "password": "pw"} and login["auth"] is None
    assert patch["auth"] == "Bearer tok-1" and patch["body"] == {"is_paused": False}


def test_with_token_acts_as_the_token_holder_without_logging_in(airflow):
    airflow.script[("GET", "/api/v2/dags/d/dagRuns")] = [(200, {"dag_runs": [{"dag_run_id": "r1"}]})]
    client = AirflowClient.with_token(airflow.url, "user-token")
    assert client.runs("d", limit=5) == [{"dag_run_id": "r1"}]
    (request,) = airflow.requests
    assert request["auth"] == "Bearer user-token"
    assert "order_by=-run_after" in request["query"] and "limit=5" in request["query"]


def test_error_answers_name_the_call_the_status_and_the_detail(airflow):
    airflow.script[("PATCH", "/api/v2/dags/d")] = [(403, {"detail": "forbidden for viewer"})]
    client = AirflowClient.with_token(airflow.url, "t")
    with pytest.raises(AirflowApiError) as info:
        client.set_paused("d", True)
    assert str(info.value).startswith("PATCH /api/v2/dags/d: HTTP 403: ")
    assert "forbidden for viewer" in str(info.value)


def test_unreachable_airflow_is_named():
    client = AirflowClient.with_token("http://127.0.0.1:1", "t", timeout_s=2)
    with pytest.raises(AirflowApiError) as info:
        client.set_paused("d", True)
    assert "Airflow is not reachable at http://127.0.0.1:1" in str(info.value)


def test_trigger_retries_a_5xx_with_the_same_run_id_and_a_409_then_means_it_landed(airflow, waits):
    path = "/api/v2/dags/d/dagRuns"
    airflow.script[("POST", path)] = [(500, {"detail": "database is locked"}), (409, {"detail": "exists"})]
    client = AirflowClient.with_token(airflow.url, "t")
    run_id = client.trigger("d", {"usecase": "flights_eta"})
    first, second = airflow.calls("POST", path)
    assert first["body"] == second["body"] == {"dag_run_id": run_id, "logical_date": None,
                                               "conf": {"usecase": "flights_eta"}}
    assert run_id.startswith("manual__")
    assert len(waits) == 1 and 2 <= waits[0] <= 3  # 2 s, with up to 1 s of jitter


def test_trigger_gives_up_after_its_attempts_with_the_last_error(airflow, waits):
    airflow.script[("POST", "/api/v2/dags/d/dagRuns")] = [(503, {"detail": "busy"})]
    client = AirflowClient.with_token(airflow.url, "t")
    with pytest.raises(AirflowApiError, match="HTTP 503"):
        client.trigger("d", attempts=3)
    assert len(airflow.calls("POST", "/api/v2/dags/d/dagRuns")) == 3
    assert [int(w) for w in waits] == [2, 4]  # 2 s more each time, plus jitter


def test_trigger_does_not_retry_a_refusal_and_a_first_409_is_an_error(airflow, waits):
    path = "/api/v2/dags/d/dagRuns"
    airflow.script[("POST", path)] = [(409, {"detail": "exists"})]
    client = AirflowClient.with_token(airflow.url, "t")
    with pytest.raises(AirflowApiError, match="HTTP 409"):
        client.trigger("d")
    assert len(airflow.calls("POST", path)) == 1 and waits == []


def test_wait_for_dag_waits_through_404_and_5xx(airflow, waits):
    airflow.script[("GET", "/api/v2/dags/d")] = [(404, {}), (500, {}), (200, {"dag_id": "d"})]
    AirflowClient.with_token(airflow.url, "t").wait_for_dag("d")
    assert len(airflow.calls("GET", "/api/v2/dags/d")) == 3
    assert all(2 <= w <= 2.5 for w in waits) and len(waits) == 2


def test_wait_for_dag_raises_a_refusal_at_once_and_a_404_at_the_deadline(airflow, waits):
    airflow.script[("GET", "/api/v2/dags/d")] = [(401, {"detail": "expired"})]
    with pytest.raises(AirflowApiError, match="HTTP 401"):
        AirflowClient.with_token(airflow.url, "t").wait_for_dag("d")
    assert waits == []
    with pytest.raises(AirflowApiError, match="HTTP 404"):
        AirflowClient.with_token(airflow.url, "t").wait_for_dag("never_parsed", timeout_s=0.2)


def test_wait_for_run_polls_until_final_and_lists_failed_tasks(airflow, waits):
    run = "/api/v2/dags/d/dagRuns/manual__2024-01-01T00%3A00%3A00%2B00%3A00"
    airflow.script[("GET", run)] = [(200, {"state": "queued"}), (500, {}), (200, {"state": "running"}),
                                    (200, {"state": "failed"})]
    airflow.script[("GET", run + "/taskInstances")] = [(200, {"task_instances": [
        {"task_id": "a", "state": "success"}, {"task_id": "b", "state": "failed"},
        {"task_id": "c", "state": "upstream_failed"}]})]
    result = AirflowClient.with_token(airflow.url, "t").wait_for_run("d", "manual__2024-01-01T00:00:00+00:00")
    assert (result.dag_id, result.state, result.failed_tasks) == ("d", "failed", ["b", "c"])
    assert len(airflow.calls("GET", run)) == 4
    assert len(waits) == 3 and all(3 <= w <= 3.5 for w in waits)


def test_wait_for_run_times_out_naming_the_last_state(airflow, waits):
    airflow.script[("GET", "/api/v2/dags/d/dagRuns/r1")] = [(200, {"state": "running"}), (502, {})]
    with pytest.raises(AirflowApiError) as info:
        AirflowClient.with_token(airflow.url, "t").wait_for_run("d", "r1", timeout_s=0.2)
    assert str(info.value) == "d run r1 still running after 0 s"


def test_wait_for_run_raises_a_non_transient_error(airflow, waits):
    airflow.script[("GET", "/api/v2/dags/d/dagRuns/r1")] = [(404, {"detail": "no such run"})]
    with pytest.raises(AirflowApiError, match="HTTP 404"):
        AirflowClient.with_token(airflow.url, "t").wait_for_run("d", "r1")


def test_emit_asset_event_finds_the_asset_by_its_exact_name(airflow):
    airflow.script[("GET", "/api/v2/assets")] = [(200, {"assets": [{"name": "models.production.x", "id": 7},
                                                                   {"name": "models.production", "id": 3}]})]
    airflow.script[("POST", "/api/v2/assets/events")] = [(200, {"id": 11})]
    client = AirflowClient.with_token(airflow.url, "t")
    assert client.emit_asset_event("models.production", {"usecase": "u"}) == {"id": 11}
    assert "name_pattern=models.production" in airflow.calls("GET", "/api/v2/assets")[0]["query"]
    assert airflow.calls("POST", "/api/v2/assets/events")[0]["body"] == {"asset_id": 3, "extra": {"usecase": "u"}}
    with pytest.raises(AirflowApiError, match="no asset named 'nope'"):
        client.emit_asset_event("nope")
