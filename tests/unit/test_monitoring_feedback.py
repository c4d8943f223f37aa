"""The feedback loop's spec, the request's outcome key, the log's day folders and the replay's guards."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_settings
from pipelines.featurestore.spec import load_feature_set
from pipelines.monitoring.replay import ReplayError, _check_loopback, request_id_for
from pipelines.monitoring.spec import load_feedback_spec
from pipelines.usecases import SpecError, get_usecase, load_usecase
from serving.predlog import PredictionLog
from serving.schemas import RequestSchema

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def usecase():
    return get_usecase("flights_eta", load_settings("test", environ={}).usecases_path)


@pytest.fixture()
def folder(tmp_path):
    import shutil

    target = tmp_path / "flights_eta"
    shutil.copytree(REPO / "config" / "usecases" / "flights_eta", target)
    return target


def test_the_flights_feedback_spec_loads(usecase):
    spec = load_feedback_spec(usecase, load_feature_set(usecase))
    assert (spec.request_time, spec.outcome_time) == ("dep_ts", "arr_ts")
    assert spec.label_delay == timedelta(hours=2) and spec.max_label_lag == timedelta(days=2)
    assert spec.label.keys == ["flight_id"] and spec.segments["hour"] == "sched_dep_hour"


@pytest.mark.parametrize(("change", "message"), [
    ({"request_time": "dep_delay"}, "request_time: 'dep_delay' is not a timestamp column of 'flights'"),
    ({"label_delay": "soon"}, "label_delay: 'soon' is not a duration"),
    ({"segments": {"route": "no_such_column"}}, "segments.route: 'no_such_column' is neither a column"),
    ({"colour": "blue"}, "colour: unknown key"),
])
def test_feedback_spec_errors_name_the_key(folder, change, message):
    path = folder / "feedback.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, **change}))
    uc = load_usecase(folder)
    with pytest.raises(SpecError) as exc:
        load_feedback_spec(uc, load_feature_set(uc))
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_a_usecase_without_feedback_spec_is_told_what_to_add(folder):
    (folder / "feedback.yaml").unlink()
    uc = load_usecase(folder)
    with pytest.raises(SpecError, match="no feedback.yaml"):
        load_feedback_spec(uc, load_feature_set(uc))


def test_requests_may_carry_the_label_key_for_the_outcome_join(usecase):
    schema = RequestSchema(usecase, load_feature_set(usecase), max_batch=4)
    assert schema.outcome_keys == {"flight_id": ("string", "flights")}
    flight = {"origin": "JFK", "dest": "LAX", "carrier": "AA", "sched_dep_ts": "2013-12-30T22:00:00Z",
              "sched_arr_ts": "2013-12-31T04:00:00Z"}
    assert schema.single(json.dumps(flight).encode())["flight_id"] is None  # optional
    row = schema.single(json.dumps({**flight, "flight_id": "2013-12-30_AA_1_JFK_1700"}).encode())
    assert row["flight_id"] == "2013-12-30_AA_1_JFK_1700"
    assert "flight_id" not in schema.single_model.model_json_schema().get("required", [])


def test_prediction_log_folders_follow_the_request_clock(tmp_path):
    log = PredictionLog(tmp_path, batch=10).start()
    for i, as_of in enumerate(["2013-06-01T23:59:00Z", "2013-06-02T00:01:00Z", "2013-06-01T12:00:00Z"]):
        assert log.append("uc", {"request_id": str(i), "as_of": as_of})
    log.close()
    days = {p.parent.name: [json.loads(x)["request_id"] for x in p.read_text().splitlines()]
            for p in tmp_path.rglob("*.jsonl")}
    assert {k: sorted(v) for k, v in days.items()} == {"date=2013-06-01": ["0", "2"], "date=2013-06-02": ["1"]}


def test_replay_request_ids_are_stable_and_valid():
    rid = request_id_for(("2013-12-24_B6_1_JFK_515",))
    assert rid == "rp-2013-12-24_B6_1_JFK_515" == request_id_for(("2013-12-24_B6_1_JFK_515",))
    assert request_id_for(("a b/c", 7)) == "rp-a_b_c_7"
    assert len(request_id_for(("x" * 100,))) == 64


@pytest.mark.parametrize("url", ["http://10.0.0.5:8100", "http://example.org", "http://192.168.1.2"])
def test_replay_drives_loopback_apis_only(url):
    with pytest.raises(ReplayError, match="loopback"):
        _check_loopback(url)


def test_replay_accepts_loopback():
    for url in ("http://127.0.0.1:8100", "http://localhost:18100", "http://[::1]:8100"):
        _check_loopback(url)


# ---------------------------------------------------------------- the replay's HTTP side


def _traffic_sending(answers: list):
    """A replay _Traffic whose API answers `answers` in turn (a status code, or an exception to raise)."""
    import httpx

    from pipelines.monitoring.replay import _Traffic

    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        step = answers.pop(0)
        if isinstance(step, Exception):
            raise step
        status, text = step if isinstance(step, tuple) else (step, "{}")
        return httpx.Response(status, text=text)

    traffic = _Traffic("http://127.0.0.1:1", None, concurrency=2, rate=None)
    traffic.client = httpx.AsyncClient(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(answer))
    return traffic, calls


def _send(traffic) -> int:
    import asyncio
    from datetime import UTC, datetime

    async def run() -> int:
        try:
            return await traffic.send({"x": 1}, datetime(2013, 3, 1, tzinfo=UTC), "req-1")
        finally:
            await traffic.close()

    return asyncio.run(run())


def test_replay_retries_shed_requests_and_transport_errors_twice():
    import httpx

    traffic, calls = _traffic_sending([httpx.ConnectError("refused"), 429, 200])
    assert _send(traffic) == 200
    assert len(calls) == 3
    assert {c.headers["X-Request-Id"] for c in calls} == {"req-1"}
    traffic, calls = _traffic_sending([503, 503, 503, 200])
    assert _send(traffic) == 503 and len(calls) == 3  # gives up with the last status
    traffic, calls = _traffic_sending([httpx.ReadError("reset")] * 3)
    assert _send(traffic) == 0 and len(calls) == 3  # unreachable
    traffic, calls = _traffic_sending([400])
    assert _send(traffic) == 400 and len(calls) == 1  # a real answer is not retried


def test_replay_stops_at_once_when_the_api_refuses_the_simulated_clock():
    from pipelines.monitoring.replay import AS_OF_HEADER

    traffic, calls = _traffic_sending([(422, f'{{"message": "{AS_OF_HEADER.lower()} is not accepted"}}'), 200])
    with pytest.raises(ReplayError, match="refuses the simulated clock"):
        _send(traffic)
    assert len(calls) == 1
