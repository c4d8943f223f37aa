"""Shared pieces of the prediction API's integration tests: real online features (materialized by Spark from
the test lake into SQLite or Cassandra), a model registered in the test MLflow, and the API as a real server
process (``python -m serving.server``) against the test Triton or another one.

The model is the use case's own trained model (the registry's champion, or the one the session's
``registered_model`` fixture trains); the API is pinned to that version (``api.models: {flights_eta: "flights_eta:<version>"}``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pipelines.config import REPO_ROOT, load_settings

WINDOW = (datetime(2013, 12, 30, tzinfo=UTC), datetime(2013, 12, 31, tzinfo=UTC))
AS_OF = "2013-12-31T00:00:00Z"
CASSANDRA_KEYSPACE = "atelier_test_serving"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def serving_features(usecase):
    from pipelines.featurestore.spec import load_feature_set

    return load_feature_set(usecase)


@pytest.fixture(scope="session")
def serving_model(request, settings, usecase, mlflow_service, triton_service, published_lake):
    """(VersionRef, ModelBundle) of the use case's trained model, pinned by version (lifecycle tests move
    aliases): the registry's current champion when there is one, else the session's ``registered_model``
    fixture trains and registers one. Its artifact is loaded into the test Triton (the deployment's own
    package -> verify -> load -> golden check; the API never loads models)."""
    from pipelines.deploy.package import golden_check, package_version, place_and_load
    from pipelines.models.registry import ModelNotFound, load_bundle, resolve_version

    try:
        ref = resolve_version(settings, "flights_eta", "champion")
    except ModelNotFound:
        ref = request.getfixturevalue("registered_model")
    artifact = package_version(settings, ref.name, ref.version)
    place_and_load(settings, usecase, artifact.path)
    golden_check(settings, artifact.path)
    return ref, load_bundle(settings, ref.name, version=ref.version)


def clear_logs(settings, first: date, last: date, usecase: str = "flights_eta") -> None:
    """Remove the prediction and outcome log partitions of the days [first, last] (a module's own replay)."""
    for root in (settings.prediction_log_path, settings.outcome_log_path):
        day = first
        while day <= last:
            shutil.rmtree(root / usecase / f"date={day.isoformat()}", ignore_errors=True)
            day += timedelta(days=1)


def model_env(ref) -> dict[str, str]:
    """The API's setting that serves exactly this version."""
    return {"ATELIER__API__MODELS": f"{{flights_eta: '{ref.name}:{ref.version}'}}"}


def _materialize(spark, store_settings, features) -> None:
    from pipelines.featurestore import materialize

    for view in features.batch_views:
        materialize.materialize_view(spark, store_settings, features, view, *WINDOW, now=WINDOW[1])


@pytest.fixture(scope="session")
def sqlite_features(spark, published_lake, serving_features, tmp_path_factory):
    """Settings overrides of a SQLite online store holding the materialized last day of 2013-12-30."""
    db = tmp_path_factory.mktemp("online") / "features.db"
    overrides = {"ATELIER__ONLINE_STORE__BACKEND": "sqlite", "ATELIER__ONLINE_STORE__SQLITE_PATH": str(db)}
    _materialize(spark, load_settings("test", environ={**os.environ, **overrides}), serving_features)
    return overrides


@pytest.fixture(scope="session")
def cassandra_features(spark, published_lake, serving_features, cassandra_service):
    overrides = {"ATELIER__ONLINE_STORE__BACKEND": "cassandra", "ATELIER__CASSANDRA__KEYSPACE": CASSANDRA_KEYSPACE}
    _materialize(spark, load_settings("test", environ={**os.environ, **overrides}), serving_features)
    return overrides


@pytest.fixture(scope="session")
def real_flights(published_lake):
    """Real flights of the last evening of 2013-12-30 (UTC), with tail numbers, as API request rows."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    data = ds.dataset(published_lake.path("flights"), format="parquet", partitioning="hive")
    table = data.to_table(columns=["origin", "dest", "carrier", "tailnum", "sched_dep_ts", "sched_arr_ts",
                                   "dep_delay", "flight_id"],
                          filter=(pc.field("sched_dep_date") == "2013-12-30"))
    frame = table.to_pandas()
    frame = frame[(frame.sched_dep_ts >= "2013-12-30T21:00:00Z") & frame.tailnum.notna()
                  & frame.dep_delay.notna()].sort_values("flight_id").head(40)
    rows = []
    for r in frame.itertuples(index=False):
        rows.append({"origin": r.origin, "dest": r.dest, "carrier": r.carrier, "tailnum": r.tailnum,
                     "sched_dep_ts": r.sched_dep_ts.isoformat(), "sched_arr_ts": r.sched_arr_ts.isoformat(),
                     "dep_delay": float(r.dep_delay)})
    assert len(rows) >= 20
    return rows


@dataclass
class ApiServer:
    """``python -m serving.server`` with the test profile and ``env`` overrides; stopped with SIGTERM."""

    env: dict[str, str]
    log_dir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    output: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, ready_timeout_s: float = 120.0, wait_ready: bool = True) -> ApiServer:
        env = {**os.environ, "ATELIER_PROFILE": "test", "ATELIER_API_TOKEN": self.token,
               "ATELIER__API__PORT": str(self.port), "ATELIER__API__PREDICTION_LOG_DIR": str(self.log_dir),
               **self.env}
        self.output = self.log_dir.parent / f"server-{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.server"], cwd=REPO_ROOT, env=env,  # noqa: S603
                                     stdout=self.output.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode}):\n{self.output.read_text()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200 or (not wait_ready and r.status_code == 503):
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API was not ready in {ready_timeout_s} s:\n{self.output.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def read_log(folder: Path) -> list[dict]:
    import json

    return [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_text().splitlines()]


def wait_for_log(folder: Path, request_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in read_log(folder):
            if record["request_id"] == request_id:
                return record
        time.sleep(0.2)
    raise AssertionError(f"request {request_id} is not in the prediction log under {folder}")
