"""A small client for Airflow's REST API (v2): trigger a DAG run the way a user or an alert would, and wait.

Authenticates with the simple auth manager's token endpoint; the password is read from the file Airflow
generated (local profiles) or given by the caller. Transient answers are retried with tenacity (with jitter).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_incrementing,
    wait_random,
)

FINAL_STATES = ("success", "failed")


class AirflowApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunResult:
    dag_id: str
    run_id: str
    state: str
    failed_tasks: list[str]
    seconds: float


def _transient(exc: BaseException) -> bool:
    """Airflow on SQLite answers 500 (or not in time) while its metadata DB stays locked; the API server's own
    concurrent requests can hold the lock. Such an answer is worth another try."""
    return isinstance(exc, AirflowApiError) and bool(re.search(r"HTTP 5\d\d|timed out", str(exc)))


def _not_parsed_yet(exc: BaseException) -> bool:
    return _transient(exc) or (isinstance(exc, AirflowApiError) and "HTTP 404" in str(exc))


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token = self._login(username, password)

    @classmethod
    def with_token(cls, base_url: str, token: str, timeout_s: float = 10.0) -> AirflowClient:
        """A client acting as the holder of ``token`` (e.g. a console user's own session token), so Airflow
        authorizes and audits each call as that user."""
        client = cls.__new__(cls)
        client.base_url, client.timeout_s, client._token = base_url.rstrip("/"), timeout_s, token
        return client

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True,
                 params: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"} if auth else {}
        try:
            response = httpx.request(method, f"{self.base_url}{path}", json=body, params=params, headers=headers,
                                     timeout=self.timeout_s)
        except httpx.TimeoutException:
            raise AirflowApiError(f"{method} {path}: no answer within {self.timeout_s:.0f} s (timed out)") from None
        except httpx.TransportError as exc:
            raise AirflowApiError(f"{method} {path}: Airflow is not reachable at {self.base_url}: {exc}") from None
        if response.is_error:
            raise AirflowApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def _login(self, username: str, password: str) -> str:
        self._token = ""
        answer = self._request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        return str(answer["access_token"])

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> None:
        """Wait until the DAG processor has parsed `dag_id` (it is then known to the API)."""
        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(2) + wait_random(0, 0.5),
                 retry=retry_if_exception(_not_parsed_yet), reraise=True)(self._request, "GET", f"/api/v2/dags/{dag_id}")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, attempts: int = 4) -> str:
        """Create a manual run. The run id is chosen here, so a retry after a transient server error (5xx)
        can never create a second run: if the first attempt did land, the retry gets 409 and is done."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_incrementing(2, 2) + wait_random(0, 1),
                                retry=retry_if_exception(_transient), reraise=True):
            with attempt:
                try:
                    return str(self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])
                except AirflowApiError as exc:
                    if "HTTP 409" in str(exc) and attempt.retry_state.attempt_number > 1:
                        return run_id
                    raise
        raise AssertionError("unreachable")

    def emit_asset_event(self, asset_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record an event of the asset named `asset_name` (as a producer task would); DAGs scheduled on it run.
        Not retried on 5xx: a repeated event would start a second run."""
        assets = self._request("GET", "/api/v2/assets", params={"name_pattern": asset_name, "limit": 100})
        match = [a for a in assets.get("assets", []) if a.get("name") == asset_name]
        if not match:
            raise AirflowApiError(f"no asset named '{asset_name}' (a DAG must declare it; is the DAG parsed?)")
        return dict(self._request("POST", "/api/v2/assets/events", {"asset_id": match[0]["id"],
                                                                      "extra": extra or {}}))

    def asset_events(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """{asset name: the event's extra} of the Asset events a DAG run emitted."""
        answer = self._request("GET", "/api/v2/assets/events", params={"source_dag_id": dag_id,
                                                                       "source_run_id": run_id, "limit": 100})
        return {e["name"]: e.get("extra") or {} for e in answer.get("asset_events", [])}

    def runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The DAG's latest runs, newest first."""
        answer = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"order_by": "-run_after",
                                                                                   "limit": limit})
        return list(answer.get("dag_runs", []))

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900.0) -> RunResult:
        """Poll the run until it succeeded or failed; transient answers keep the last state seen."""
        started = time.monotonic()
        run_path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        state = "unknown"

        def poll() -> str:
            nonlocal state
            state = self._request("GET", run_path)["state"]
            return state

        def still_running(_: RetryCallState) -> NoReturn:
            raise AirflowApiError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f} s")

        Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(3) + wait_random(0, 0.5),
                 retry=retry_if_result(lambda s: s not in FINAL_STATES) | retry_if_exception(_transient),
                 retry_error_callback=still_running)(poll)
        tasks = self._request("GET", f"{run_path}/taskInstances")
        failed = [t["task_id"] for t in tasks.get("task_instances", []) if t.get("state") in ("failed", "upstream_failed")]
        return RunResult(dag_id, run_id, state, failed, time.monotonic() - started)
