"""A half-open probe that never reports (it expired, or its call was cancelled) cannot wedge the circuit
breaker. The prediction log's own faults are in ``test_prediction_log.py``."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.config import load_settings
from serving.resilience import CircuitBreaker
from serving.service import PredictionService


@pytest.fixture
def clock(monkeypatch):
    # The breaker's own clock only: the event loop keeps the real one (patching time.monotonic would stop it).
    now = [100.0]
    monkeypatch.setattr("serving.resilience.time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _opened(breaker: CircuitBreaker, clock: list[float]) -> None:
    for _ in range(breaker.threshold):
        breaker.failure()
        clock[0] += breaker.min_streak_s
    assert breaker.state == "open" and not breaker.allow()


# ---------------------------------------------------------------------------------------------- breaker


def test_a_probe_that_never_reports_expires_and_a_new_probe_closes_the_breaker(clock):
    breaker = CircuitBreaker(failures=2, cooldown_s=1.0, min_streak_s=0.2, probe_timeout_s=2.0)
    _opened(breaker, clock)
    clock[0] += 1.0
    assert breaker.allow()  # the probe ... which is cancelled and never calls success() nor failure()
    clock[0] += 1.9
    assert not breaker.allow()  # still within the probe's time
    clock[0] += 0.2
    assert breaker.allow()  # the lost probe's slot expired: a new probe
    assert not breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def _service(tmp_path) -> PredictionService:
    environ = {**os.environ, "ATELIER__HOME": str(tmp_path / "home"),
               "ATELIER__ONLINE_STORE__SQLITE_PATH": str(tmp_path / "f.db"),
               "ATELIER__API__PREDICTION_LOG_DIR": str(tmp_path / "log")}
    return PredictionService(load_settings("test", environ=environ))


class HangingStore:
    """An online store whose asynchronous read never answers (the call is cancelled from outside)."""

    async_ready = True

    def __init__(self) -> None:
        self.hang = True

    async def read_many_views_async(self, requests, as_of):
        if self.hang:
            await asyncio.Event().wait()
        return {view: [None] * len(keys) for view, keys in requests.items()}


def test_a_cancelled_store_probe_is_reported_and_a_later_probe_closes_the_breaker(tmp_path, clock):
    svc = _service(tmp_path)
    store = HangingStore()
    svc._store, svc._store_inline = store, False
    svc.api = svc.api.model_copy(update={"feature_timeout_ms": 60_000})  # only the cancellation ends the call
    breaker = svc.store_breaker
    _opened(breaker, clock)
    clock[0] += breaker.cooldown_s
    rt = svc.runtime(None)
    keys = [{"view": ("k",)}]

    async def scenario() -> None:
        probe = asyncio.create_task(svc.lookup(rt, keys, None, time.perf_counter() + 60))
        await asyncio.sleep(0.01)
        assert breaker.probing
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.state == "open" and not breaker.probing  # reported as a failure: open again
        clock[0] += breaker.cooldown_s
        store.hang = False
        results, problem = await svc.lookup(rt, keys, None, time.perf_counter() + 60)
        assert problem is None and results == [{"view": None}]

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert breaker.state == "closed" and breaker.allow()


class HangingTriton:
    def __init__(self) -> None:
        self.hang = True

    async def predict(self, matrix, timeout_s):
        if self.hang:
            await asyncio.Event().wait()
        return np.zeros(matrix.shape[0], dtype=np.float32)


def test_a_cancelled_triton_probe_is_reported_and_a_later_probe_closes_the_breaker(tmp_path, clock):
    svc = _service(tmp_path)
    triton = HangingTriton()
    breaker = CircuitBreaker(failures=2, cooldown_s=0.5)
    sv = SimpleNamespace(triton=triton, triton_breaker=breaker, triton_ready=False,
                         bundle=SimpleNamespace(add_offset=lambda raw, matrix: raw))
    _opened(breaker, clock)
    clock[0] += breaker.cooldown_s
    rt = svc.runtime(None)
    matrix = np.zeros((1, 3), dtype=np.float32)

    async def scenario() -> None:
        probe = asyncio.create_task(svc.infer(rt, sv, matrix, time.perf_counter() + 60))
        await asyncio.sleep(0.01)
        assert breaker.probing
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.state == "open" and not breaker.probing
        clock[0] += breaker.cooldown_s
        triton.hang = False
        predictions, reason, _ = await svc.infer(rt, sv, matrix, time.perf_counter() + 60)
        assert reason is None and predictions.tolist() == [0.0]

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert breaker.state == "closed" and sv.triton_ready
