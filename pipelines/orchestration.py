"""A small client for Airflow's REST API (v2): trigger a DAG run the way a user or an alert would, and wait.

Authenticates with the simple auth manager's token endpoint; the password is read from the file Airflow
generated (local profiles) or given by the caller. Standard library only.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class AirflowApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunResult:
    dag_id: str
    run_id: str
    state: str
    failed_tasks: list[str]
    seconds: float


def _transient(exc: AirflowApiError) -> bool:
    """Airflow on SQLite answers 500 (or not in time) while its metadata DB stays locked; the API server's own
    concurrent requests can hold the lock. Such an answer is worth another try."""
    return bool(re.search(r"HTTP 5\d\d|timed out", str(exc)))


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

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise AirflowApiError(f"{method} {path}: Airflow is not reachable at {self.base_url}: {exc.reason}") from None
        except TimeoutError:
            raise AirflowApiError(f"{method} {path}: no answer within {self.timeout_s:.0f} s (timed out)") from None
        return json.loads(raw) if raw else None

    def _login(self, username: str, password: str) -> str:
        self._token = ""
        answer = self._request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        return str(answer["access_token"])

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> None:
        """Wait until the DAG processor has parsed `dag_id` (it is then known to the API)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._request("GET", f"/api/v2/dags/{dag_id}")
                return
            except AirflowApiError as exc:
                if not ("HTTP 404" in str(exc) or _transient(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, attempts: int = 4) -> str:
        """Create a manual run. The run id is chosen here, so a retry after a transient server error (5xx)
        can never create a second run: if the first attempt did land, the retry gets 409 and is done."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        for attempt in range(1, attempts + 1):
            try:
                return str(self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])
            except AirflowApiError as exc:
                if "HTTP 409" in str(exc) and attempt > 1:
                    return run_id
                if not _transient(exc) or attempt == attempts:
                    raise
            time.sleep(2 * attempt)
        raise AssertionError("unreachable")

    def emit_asset_event(self, asset_name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record an event of the asset named `asset_name` (as a producer task would); DAGs scheduled on it run.
        Not retried on 5xx: a repeated event would start a second run."""
        quoted = urllib.request.quote(asset_name, safe="")
        assets = self._request("GET", f"/api/v2/assets?name_pattern={quoted}&limit=100").get("assets", [])
        match = [a for a in assets if a.get("name") == asset_name]
        if not match:
            raise AirflowApiError(f"no asset named '{asset_name}' (a DAG must declare it; is the DAG parsed?)")
        return dict(self._request("POST", "/api/v2/assets/events", {"asset_id": match[0]["id"],
                                                                      "extra": extra or {}}))

    def runs(self, dag_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The DAG's latest runs, newest first."""
        answer = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")
        return list(answer.get("dag_runs", []))

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 900.0) -> RunResult:
        started = time.monotonic()
        quoted = urllib.request.quote(run_id, safe="")
        state = "unknown"
        while True:
            try:
                state = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")["state"]
            except AirflowApiError as exc:
                if not _transient(exc):
                    raise
            if state in ("success", "failed"):
                break
            if time.monotonic() - started > timeout_s:
                raise AirflowApiError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f} s")
            time.sleep(3)
        tasks = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        failed = [t["task_id"] for t in tasks.get("task_instances", []) if t.get("state") in ("failed", "upstream_failed")]
        return RunResult(dag_id, run_id, state, failed, time.monotonic() - started)
