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


def test_a_use_case_outside_api_usecases_is_served_alone():
    from pipelines.config import load_settings
    from serving.demo import api_spec, served_usecases

    settings = load_settings("test", environ={})
    assert settings.api.usecases == ["flights_eta"]
    assert served_usecases(settings, "flights_eta") == ["flights_eta"]
    assert served_usecases(settings, "union_membership") == ["union_membership"]
    assert api_spec(settings, ["union_membership"]).env["ATELIER__API__USECASES"] == '["union_membership"]'
    assert "ATELIER__API__USECASES" not in api_spec(settings).env


def test_a_classifier_s_answers_show_class_probability_set_and_the_real_class():
    from pipelines.interface import OutputSpec
    from serving.demo import _classifier_lines

    def answer(p: float, sets: list[str]) -> dict:
        label = "member" if p > 0.5 else "non_member"
        return {"prediction": {"union_member": label, "probabilities": {"non_member": 1 - p, "member": p}},
                "sets": {"0.8": sets[:1], "0.9": sets}, "confidence": {"level": "high"},
                "model": {"runtime": "triton"}, "degraded": False, "degraded_reasons": []}

    examples = [{"id": "13_1987", "actual": 1.0}, {"id": "17_1987", "actual": 0.0}]
    answers = [answer(0.9, ["member"]), answer(0.4, ["non_member", "member"])]
    lines = _classifier_lines(OutputSpec("union_member"), [(e, a, "", 3.0) for e, a in zip(examples, answers, strict=True)],
                              examples, answers)
    assert "90% set" in lines[0]
    assert lines[1].split()[:5] == ["13_1987", "member", "0.90", "{member}", "member"]
    assert lines[2].split()[:6] == ["17_1987", "non_member", "0.60", "{non_member,", "member}", "non_member"]
    assert lines[3].startswith("  batch of 2: 2/2 classes right, log loss 0.308;")  # -(ln 0.9 + ln 0.6) / 2
    assert lines[3].endswith("2/2 real classes inside the 90% prediction set")
