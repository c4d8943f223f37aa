"""``serving.demo.wait_until_ready``: the demo's (and the CLI's) wait for the prediction API's ``/readyz``."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
import tenacity.nap

from serving.demo import wait_until_ready


@pytest.fixture
def answers(monkeypatch):
    """Script /readyz's status codes; waits are recorded, not slept."""
    script: list[int] = []
    asked: list[str] = []
    waits: list[float] = []

    def get(url: str, timeout: float) -> httpx.Response:
        asked.append(url)
        return httpx.Response(script.pop(0) if len(script) > 1 else script[0], json={})

    monkeypatch.setattr(httpx, "get", get)
    monkeypatch.setattr(tenacity.nap, "time", SimpleNamespace(sleep=waits.append))
    return SimpleNamespace(script=script, asked=asked, waits=waits)


def test_polls_each_second_until_ready(answers):
    answers.script.extend([503, 503, 200])
    assert wait_until_ready("http://127.0.0.1:18100").status_code == 200
    assert answers.asked == ["http://127.0.0.1:18100/readyz"] * 3
    assert answers.waits == [1, 1]


def test_returns_the_last_answer_at_the_deadline(answers):
    answers.script.append(503)
    assert wait_until_ready("http://127.0.0.1:18100", timeout_s=0.05).status_code == 503
    assert len(answers.asked) >= 2


def test_an_api_that_does_not_answer_raises(monkeypatch):
    def refused(url: str, timeout: float) -> httpx.Response:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(httpx, "get", refused)
    with pytest.raises(httpx.ConnectError):
        wait_until_ready("http://127.0.0.1:1")
