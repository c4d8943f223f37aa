"""Loading a model through Triton's model-control API (``pipelines/deploy/triton.py``) with a fake client: the
load waits until the version is ready, and gives up at its deadline naming the server, model and version."""

from __future__ import annotations

import time

import pytest

from pipelines.deploy.triton import TritonControl, TritonControlError

pytestmark = pytest.mark.timeout(30)


class FakeClient:
    def __init__(self, ready_after: int | None) -> None:
        self.ready_after, self.checks, self.loaded = ready_after, 0, []

    def load_model(self, name: str) -> None:
        self.loaded.append(name)

    def is_model_ready(self, name: str, version: str) -> bool:
        self.checks += 1
        if self.checks == 1:
            raise ConnectionResetError("not up yet")  # a failing check reads as "not ready"
        return self.ready_after is not None and self.checks >= self.ready_after


def control(client: FakeClient, timeout_s: float) -> TritonControl:
    c = TritonControl.__new__(TritonControl)
    c.url, c._client, c.timeout_s = "127.0.0.1:18000", client, timeout_s
    return c


def test_load_waits_until_the_version_is_ready():
    client = FakeClient(ready_after=4)
    control(client, timeout_s=10).load("flights_eta", 3)
    assert client.loaded == ["flights_eta"] and client.checks == 4


def test_load_gives_up_at_the_deadline():
    client = FakeClient(ready_after=None)
    started = time.monotonic()
    with pytest.raises(TritonControlError) as info:
        control(client, timeout_s=0.5).load("flights_eta", 3)
    assert 0.5 <= time.monotonic() - started < 3
    assert str(info.value) == "Triton at 127.0.0.1:18000: flights_eta version 3 not ready after 0 s"
    assert client.checks >= 3
