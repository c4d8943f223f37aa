"""Degraded mode, for real: Triton killed (SIGKILL) mid-traffic and started again, the online store down, no
model in the registry, load past capacity. Every answer is a prediction, a flagged fallback, or a clear
4xx/503 with Retry-After; never a 5xx for a dependency failure."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest
from serving_fixtures import AS_OF, ApiServer, free_port, model_env

from pipelines.config import load_settings
from pipelines.services import Supervisor, triton

pytest_plugins = ["serving_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Triton keeps its production budget (25 ms) so its failures are what these tests see; the request deadline is
# widened so that a CI machine starved of CPU does not turn a late answer into the deadline's 503.
BUDGET = {"ATELIER__API__DEADLINE_MS": "1000"}


@pytest.fixture
def own_triton(tmp_path, settings):
    """A Triton of our own (other ports, its own repository): killing it disturbs no other test."""
    triton.ensure_installed(settings)
    overrides = {"ATELIER__HOME": str(tmp_path / "home"), "ATELIER__TRITON__HTTP_PORT": str(free_port()),
                 "ATELIER__TRITON__GRPC_PORT": str(free_port()), "ATELIER__TRITON__METRICS_PORT": str(free_port())}
    other = load_settings("test", environ={**os.environ, **overrides})
    spec = triton.build_spec(other)
    supervisor = Supervisor(other.run_dir)
    supervisor.up(spec)
    try:
        yield overrides, supervisor, spec
    finally:
        supervisor.down(spec)
        triton.remove_stale_shm_regions(triton.shm_prefix(other), min_age_s=0)


class Traffic(threading.Thread):
    """Sequential requests for real flights until stopped; every answer kept."""

    def __init__(self, api: ApiServer, flights: list[dict]) -> None:
        super().__init__(daemon=True)
        self.api, self.flights = api, flights
        self.answers: list[tuple[int, dict]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(headers={**self.api.headers, "X-Atelier-As-Of": AS_OF}, timeout=30) as client:
            i = 0
            while not self.stopped.is_set():
                r = client.post(f"{self.api.url}/v1/predict", json=self.flights[i % len(self.flights)])
                self.answers.append((r.status_code, r.json()))
                i += 1

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(predicate(a) for _, a in self.answers[-20:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout_s} s; last answers: {self.answers[-3:]}")


def test_triton_killed_mid_traffic_then_back(own_triton, sqlite_features, serving_model, real_flights, tmp_path,
                                             settings, usecase):
    from pipelines.deploy.package import package_version, place_and_load

    overrides, supervisor, spec = own_triton
    # The deployment loads the version into this Triton (the API only serves what is loaded).
    ref = serving_model[0]
    place_and_load(load_settings("test", environ={**os.environ, **overrides}), usecase,
                   package_version(settings, ref.name, ref.version).path)
    api = ApiServer({**sqlite_features, **overrides, **model_env(serving_model[0]), **BUDGET},
                    tmp_path / "log").start()
    traffic = Traffic(api, real_flights)
    try:
        traffic.start()
        traffic.wait_for(lambda a: a["model"]["runtime"] == "triton", 60, "answer from Triton")
        pid = supervisor.status(spec).pid
        assert pid is not None
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # no goodbye: connections just die
        killed_at = len(traffic.answers)
        traffic.wait_for(lambda a: a["degraded"], 30, "fallback answer")
        ready = httpx.get(f"{api.url}/readyz")
        deadline = time.monotonic() + 30
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = httpx.get(f"{api.url}/readyz")
        assert ready.status_code == 503 and ready.json()["flights_eta"]["triton_ready"] is False
        while len(traffic.answers) < killed_at + 100:
            time.sleep(0.05)
        supervisor.down(spec)  # forget the dead instance's pid file
        back_at = len(traffic.answers)
        supervisor.up(spec)  # --load-model=* loads the deployed version again
        traffic.wait_for(lambda a: a["model"]["runtime"] == "triton" and not a["degraded"], 90, "recovery")
        recovered_at = len(traffic.answers)
    finally:
        traffic.stopped.set()
        traffic.join(30)
        api.stop()
    statuses = {status for status, _ in traffic.answers}
    assert statuses == {200}, statuses  # no 5xx, no errors: predictions or flagged fallbacks
    during = [a for _, a in traffic.answers[killed_at + 5:back_at]]
    assert len(during) >= 90
    for a in during:
        assert a["degraded"] is True and a["model"]["runtime"] == "fallback"
        assert a["degraded_reasons"][0].startswith("fallback predictor answered")
        assert a["confidence"]["level"] == "low"
        assert a["prediction"]["arr_delay"] is not None and len(a["interval"]) == 2
    for _, a in traffic.answers:
        assert a["degraded"] == (a["model"]["runtime"] == "fallback")
    assert any(a["model"]["runtime"] == "triton" for _, a in traffic.answers[recovered_at - 20:])
    reasons = {a["degraded_reasons"][0].split(":")[1].strip().split(" ")[0] for _, a in traffic.answers if a["degraded"]}
    assert reasons <= {"Triton"}, reasons


def test_online_store_down_gives_defaults_flagged(serving_model, triton_service, real_flights, tmp_path):
    closed = free_port()  # nothing listens there: the Cassandra driver cannot connect
    api = ApiServer({"ATELIER__ONLINE_STORE__BACKEND": "cassandra", "ATELIER__CASSANDRA__PORT": str(closed),
                     "ATELIER__API__FEATURE_TIMEOUT_MS": "30", **model_env(serving_model[0]), **BUDGET}, tmp_path / "log").start(wait_ready=False)
    try:
        ready = httpx.get(f"{api.url}/readyz")
        assert ready.status_code == 503 and ready.json()["online_store"]["usable"] is False
        assert ready.headers["retry-after"]
        with httpx.Client(headers={**api.headers, "X-Atelier-As-Of": AS_OF}, timeout=30) as client:
            for flight in real_flights[:10]:
                r = client.post(f"{api.url}/v1/predict", json=flight)
                assert r.status_code == 200, r.text
                a = r.json()
                assert a["degraded"] is True
                assert any("online store" in reason for reason in a["degraded_reasons"])
                for report in a["features"].values():
                    assert report == {"age_seconds": None, "status": "unavailable", "action": "default",
                                      "stale_features": {}}
                assert a["confidence"]["level"] == "low"
            batch = client.post(f"{api.url}/v1/predict/batch", json={"requests": real_flights[:5]})
            assert batch.status_code == 200 and all(p["degraded"] for p in batch.json()["predictions"])
    finally:
        api.stop()


def test_no_model_is_a_503_with_retry_after(sqlite_features, mlflow_service, triton_service, real_flights, tmp_path):
    api = ApiServer({**sqlite_features, "ATELIER__API__MODELS": "{flights_eta: atelier_no_such_model}"},
                    tmp_path / "log").start(wait_ready=False)
    try:
        ready = httpx.get(f"{api.url}/readyz").json()
        assert ready["ready"] is False and ready["flights_eta"]["bundle_loaded"] is False
        assert "atelier_no_such_model" in ready["flights_eta"]["bundle_error"]
        r = httpx.post(f"{api.url}/v1/predict", json=real_flights[0], headers=api.headers, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"] == "no_model"
        # Validation still comes first: a bad request is the client's 4xx, whatever the server's state.
        r = httpx.post(f"{api.url}/v1/predict", json={"origin": 1}, headers=api.headers, timeout=30)
        assert r.status_code == 422
    finally:
        api.stop()


def test_load_past_capacity_is_shed_with_429(sqlite_features, serving_model, triton_service, real_flights, tmp_path):
    api = ApiServer({**sqlite_features, "ATELIER__API__MAX_IN_FLIGHT": "2", **model_env(serving_model[0])},
                    tmp_path / "log").start()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={**api.headers, "X-Atelier-As-Of": AS_OF}, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*[client.post(f"{api.url}/v1/predict/batch",
                                                      json={"requests": real_flights[:20]}) for _ in range(48)])

    try:
        responses = asyncio.run(burst())
    finally:
        api.stop()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= 2
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"


def test_model_missing_on_triton_then_loaded_again(own_triton, sqlite_features, serving_model, real_flights,
                                                  tmp_path, settings, usecase):
    """The served version unloaded from Triton behind the API's back: flagged fallbacks (reason: Triton
    refused); once the deployment loads it again, the API finds it by itself (no restart)."""
    import tritonclient.http as httpclient

    from pipelines.deploy.package import package_version, place_and_load
    from pipelines.deploy.triton import triton_name

    overrides, _, _ = own_triton
    ref, _ = serving_model
    other = load_settings("test", environ={**os.environ, **overrides})
    artifact = package_version(settings, ref.name, ref.version).path
    place_and_load(other, usecase, artifact)
    api = ApiServer({**sqlite_features, **overrides, **model_env(ref), **BUDGET}, tmp_path / "log").start()
    traffic = Traffic(api, real_flights)
    client = httpclient.InferenceServerClient(other.triton.http_url)
    name = triton_name(ref.name, ref.version)
    try:
        traffic.start()
        traffic.wait_for(lambda a: a["model"]["runtime"] == "triton", 60, "answer from Triton")
        client.unload_model(name)
        traffic.wait_for(lambda a: a["degraded"], 30, "fallback answer")
        place_and_load(other, usecase, artifact)
        traffic.wait_for(lambda a: a["model"]["runtime"] == "triton" and not a["degraded"], 90, "recovery")
    finally:
        traffic.stopped.set()
        traffic.join(30)
        client.close()
        api.stop()
    assert {status for status, _ in traffic.answers} == {200}
    reasons = {a["degraded_reasons"][0] for _, a in traffic.answers if a["degraded"]}
    assert reasons and all(r.startswith("fallback predictor answered: Triton") for r in reasons), reasons
    assert any("refused" in r and name in r for r in reasons), reasons
