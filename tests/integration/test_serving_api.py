"""The prediction API end to end, as a real server process: real flights from the test lake, features
materialized by Spark into the real online store (SQLite, then Cassandra), the model on the real test Triton
(python backend, ``inplace_predict``), freshness policies on real stale rows, auth, strict validation, the
prediction log and the operational routes."""

from __future__ import annotations

import math
import os
import signal
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from serving_fixtures import AS_OF, ApiServer, model_env, read_log, wait_for_log

from pipelines.config import load_settings

pytest_plugins = ["serving_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Generous budgets: these tests check answers, not latency (the benchmark does), on a busy shared machine.
BUDGETS = {"ATELIER__API__DEADLINE_MS": "5000", "ATELIER__API__TRITON_TIMEOUT_MS": "4000",
           "ATELIER__API__FEATURE_TIMEOUT_MS": "2000"}


@pytest.fixture(scope="module", params=["sqlite", "cassandra"])
def backend(request):
    return request.param, request.getfixturevalue(f"{request.param}_features")


@pytest.fixture(scope="module")
def api(backend, serving_model, triton_service, tmp_path_factory):
    _, overrides = backend
    server = ApiServer({**overrides, **BUDGETS, **model_env(serving_model[0])},
                       tmp_path_factory.mktemp("predlog") / "log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(backend):
    from pipelines.stores.online import get_online_store

    _, overrides = backend
    with get_online_store(load_settings("test", environ={**os.environ, **overrides})) as s:
        yield s


def _post(api, body, path="/v1/predict", as_of=AS_OF, headers=None):
    h = {**api.headers, **({"X-Atelier-As-Of": as_of} if as_of else {}), **(headers or {})}
    return httpx.post(f"{api.url}{path}", json=body, headers=h, timeout=30)


def test_real_flights_are_predicted_on_triton(api, real_flights, serving_model):
    ref, bundle = serving_model
    for flight in real_flights[:10]:
        r = _post(api, flight, headers={"X-Request-Id": f"flight-{flight['tailnum']}"})
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["request_id"] == r.headers["x-request-id"] == f"flight-{flight['tailnum']}"
        assert a["model"] == {"name": ref.name, "version": ref.version, "runtime": "triton"}
        assert a["degraded"] is False and a["degraded_reasons"] == []
        assert a["as_of"] == AS_OF
        assert set(a["features"]) == {"aircraft_history", "route_stats", "origin_weather"}
        assert a["features"]["origin_weather"]["status"] == "fresh"  # materialized up to the clock
        for report in a["features"].values():
            assert report["status"] in ("fresh", "missing") and report["action"] in ("none", "default")
            if report["status"] == "fresh":
                assert 0 <= report["age_seconds"] <= 30 * 86400
        delay = a["prediction"]["arr_delay"]
        sched_arr = datetime.fromisoformat(flight["sched_arr_ts"])
        arrival = datetime.fromisoformat(a["prediction"]["predicted_arrival"].replace("Z", "+00:00"))
        assert abs((arrival - sched_arr).total_seconds() - delay * 60) <= 1
        lo8, hi8 = a["interval"]["0.8"]["arr_delay"]
        lo9, hi9 = a["interval"]["0.9"]["arr_delay"]
        assert lo9 <= lo8 <= delay <= hi8 <= hi9
        assert a["confidence"]["level"] in ("high", "medium", "low")


def test_answers_are_the_models_own_numbers_on_the_online_features(api, real_flights, serving_model, store,
                                                                   serving_features):
    """Triton's answer = in-process inplace_predict on the logged feature row; that row = the online store's
    values and the request features of the feature language's Python compiler."""
    from pipelines.features import compile_python
    from pipelines.featurestore.materialize import online_view_name

    _, bundle = serving_model
    as_of = datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
    flight = real_flights[3]
    a = _post(api, flight).json()
    record = wait_for_log(api.log_dir, a["request_id"])
    assert record["prediction"] == a["prediction"] and record["model"] == a["model"]
    used = record["features_used"]
    row = np.array([[math.nan if used[f] is None else used[f] for f in bundle.feature_names]], dtype=np.float32)
    assert a["prediction"]["arr_delay"] == pytest.approx(float(bundle.predict(row)[0]), abs=0.011)
    # The intervals are exactly those of the calibration the answer names (the bundle's, or a recalibration
    # the feedback loop published for this version).
    calibration = None
    if a["calibration"] != f"{a['model']['name']}:{a['model']['version']}/bundle":
        from pipelines.monitoring.recalibration import calibration_dir, load_current

        calibration_id, calibration = load_current(calibration_dir(load_settings("test"), "flights_eta",
                                                                    a["model"]["name"], a["model"]["version"]))
        assert calibration_id == a["calibration"]
    lo, hi = bundle.intervals(bundle.predict(row), row, calibration)["0.9"]
    assert a["interval"]["0.9"]["arr_delay"] == pytest.approx([float(lo[0]), float(hi[0])], abs=0.011)

    view = serving_features.views["aircraft_history"]
    [online] = store.read(online_view_name("flights_eta", view.name), [(flight["tailnum"],)], now=as_of)
    assert online.found
    for name in view.feature_names:
        assert used[name] == pytest.approx(online.values[name])
    request_row = {**flight, "sched_dep_ts": datetime.fromisoformat(flight["sched_dep_ts"]),
                   "sched_arr_ts": datetime.fromisoformat(flight["sched_arr_ts"])}
    for f in serving_features.views["request"].features:
        assert used[f.name] == pytest.approx(compile_python(f.expr)(request_row)), f.name


def test_batch_gives_the_single_answers(api, real_flights):
    batch = _post(api, {"usecase": "flights_eta", "requests": real_flights[:20]}, "/v1/predict/batch")
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert len(body["predictions"]) == 20
    assert body["request_id"] == batch.headers["x-request-id"]
    for i, (flight, answer) in enumerate(zip(real_flights[:20], body["predictions"], strict=True)):
        assert answer["request_id"] == f"{body['request_id']}-{i}"
        single = _post(api, flight).json()
        assert answer["prediction"] == single["prediction"]
        assert answer["interval"] == single["interval"]
        assert answer["features"] == single["features"]


def _event_time(store, view, key):
    [result] = store.read(f"flights_eta__{view}", [key], now=datetime(2013, 12, 31, tzinfo=UTC))
    assert result.found
    return result.event_time


def _iso(ts):
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_stale_feature_with_reject_policy_is_a_422_naming_it(api, real_flights, store):
    flight = real_flights[0]
    observed = _event_time(store, "origin_weather", (flight["origin"],))
    # 2.5 h after the observation: past wx_pressure's 2 h SLA (reject), within the view's 3 h TTL.
    r = _post(api, flight, as_of=_iso(observed + timedelta(hours=2.5)))
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "stale_feature"
    assert "wx_pressure" in err["message"] and "origin_weather" in err["message"]
    assert err["fields"][0]["field"] == "features.wx_pressure"
    batch = _post(api, {"requests": [real_flights[1], flight]}, "/v1/predict/batch",
                  as_of=_iso(observed + timedelta(hours=2.5)))
    assert batch.status_code == 422 and batch.json()["fields"][0]["field"].startswith("requests.")


def test_stale_rows_are_served_or_defaulted_and_flagged(api, real_flights, store):
    flight = real_flights[0]
    landed = _event_time(store, "aircraft_history", (flight["tailnum"],))
    [stored] = store.read("flights_eta__aircraft_history", [(flight["tailnum"],)], now=landed)
    as_of = landed + timedelta(days=2, hours=12)  # past the view's 2 d SLA, within its 7 d TTL
    r = _post(api, flight, as_of=_iso(as_of))
    assert r.status_code == 200, r.text
    a = r.json()
    aircraft = a["features"]["aircraft_history"]
    assert aircraft["status"] == "stale"
    assert aircraft["age_seconds"] == pytest.approx((as_of - landed).total_seconds())
    assert aircraft["stale_features"] == {"tail_arr_delay_mean_7d": "serve_stale",
                                          "tail_dep_delay_mean_7d": "serve_stale",
                                          "tail_flights_7d": "use_default"}
    assert aircraft["action"] == "serve_stale"
    # The weather row is older than its 3 h TTL by then: not found, defaults.
    assert a["features"]["origin_weather"] == {"age_seconds": None, "status": "missing", "action": "default",
                                               "stale_features": {}}
    assert a["confidence"]["level"] != "high"
    assert any("aircraft_history" in reason and "stale" in reason for reason in a["confidence"]["reasons"])
    assert any("origin_weather" in reason for reason in a["confidence"]["reasons"])
    used = wait_for_log(api.log_dir, a["request_id"])["features_used"]
    assert used["tail_flights_7d"] == 0  # use_default
    assert used["tail_arr_delay_mean_7d"] == pytest.approx(stored.values["tail_arr_delay_mean_7d"])  # served
    assert used["wx_temp"] == 55.0  # the spec's default


def test_auth_is_required_and_constant(api, real_flights):
    url = f"{api.url}/v1/predict"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": api.token},
                    {"Authorization": f"Basic {api.token}"}):
        r = httpx.post(url, json=real_flights[0], headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "unauthorized"
        assert api.token not in r.text


@pytest.mark.parametrize(("change", "field", "kind"), [
    ({"cabin": "J"}, "cabin", "extra_forbidden"),
    ({"dep_delay": "12"}, "dep_delay", "float_type"),
    ({"dep_delay": 5000}, "dep_delay", "less_than_equal"),
    ({"dep_delay": -500.0}, "dep_delay", "greater_than_equal"),
    ({"origin": None}, "origin", "string_type"),
    ({"origin": ""}, "origin", "string_too_short"),
    ({"tailnum": "N" * 65}, "tailnum", "string_too_long"),
    ({"sched_dep_ts": "2013-12-30T22:00:00"}, "sched_dep_ts", "timezone_aware"),
    ({"sched_dep_ts": "yesterday"}, "sched_dep_ts", "datetime_parsing"),
    ({"usecase": "nope"}, "usecase", "literal_error"),
])
def test_invalid_fields_are_422_with_field_messages(api, real_flights, change, field, kind):
    r = _post(api, {**real_flights[0], **change})
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_request"
    assert {"field": field, "type": kind} in [{"field": f["field"], "type": f["type"]} for f in err["fields"]], err


def test_missing_field_nan_infinity_bad_json_and_sizes(api, real_flights):
    body = {k: v for k, v in real_flights[0].items() if k != "carrier"}
    assert _post(api, body).json()["fields"][0] == {"field": "carrier", "message": "Field required",
                                                    "type": "missing"}
    raw = httpx.post(f"{api.url}/v1/predict", headers={**api.headers, "Content-Type": "application/json"},
                     content=b'{"origin": "JFK", "dep_delay": NaN}', timeout=30)
    assert raw.status_code == 422 and "dep_delay" in {f["field"] for f in raw.json()["fields"]}
    raw = httpx.post(f"{api.url}/v1/predict", headers=api.headers, content=b'{"dep_delay": 1e999', timeout=30)
    assert raw.status_code == 422
    raw = httpx.post(f"{api.url}/v1/predict", headers=api.headers, content=b"", timeout=30)
    assert raw.status_code == 422
    big = httpx.post(f"{api.url}/v1/predict", headers=api.headers, content=b" " * 2_000_000, timeout=30)
    assert big.status_code == 413 and big.json()["error"] == "body_too_large"
    too_many = _post(api, {"requests": [real_flights[0]] * 257}, "/v1/predict/batch")
    assert too_many.status_code == 422 and too_many.json()["fields"][0]["field"] == "requests"
    assert _post(api, {"requests": []}, "/v1/predict/batch").status_code == 422
    bad_row = _post(api, {"requests": [real_flights[0], {**real_flights[1], "dep_delay": "x"}]}, "/v1/predict/batch")
    assert bad_row.status_code == 422 and bad_row.json()["fields"][0]["field"] == "requests.1.dep_delay"
    assert _post(api, real_flights[0], as_of="2013-12-31T00:00:00").status_code == 422  # clock needs a zone


def test_health_readiness_metrics_and_openapi(api):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    details = ready.json()
    assert details["ready"] is True and details["flights_eta"]["triton_ready"] is True
    metrics = httpx.get(f"{api.url}/metrics").text
    for stage in ("feature_lookup", "transform", "inference", "total"):
        assert f'atelier_api_stage_seconds_count{{endpoint="predict",stage="{stage}"}}' in metrics
    assert 'atelier_api_errors_total{kind="invalid_request"}' in metrics
    assert 'atelier_api_freshness_actions_total{action="serve_stale",view="aircraft_history"}' in metrics
    assert 'atelier_api_freshness_actions_total{action="reject",view="origin_weather"}' in metrics
    doc = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    request = doc["components"]["schemas"]["FlightsEtaRequest"]
    assert set(request["required"]) == {"origin", "dest", "carrier", "sched_dep_ts", "sched_arr_ts"}
    assert request["additionalProperties"] is False
    assert doc["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]


def test_prediction_log_keeps_everything_accepted_at_shutdown(backend, serving_model, triton_service, real_flights,
                                                              tmp_path, spark):
    _, overrides = backend
    server = ApiServer({**overrides, **BUDGETS, **model_env(serving_model[0])}, tmp_path / "log").start()
    try:
        ids = []
        with httpx.Client(headers={**server.headers, "X-Atelier-As-Of": AS_OF}, timeout=30) as client:
            for i in range(60):
                r = client.post(f"{server.url}/v1/predict", json=real_flights[i % len(real_flights)])
                assert r.status_code == 200
                ids.append(r.json()["request_id"])
            r = client.post(f"{server.url}/v1/predict/batch", json={"requests": real_flights[:25]})
            ids += [p["request_id"] for p in r.json()["predictions"]]
    finally:
        # uvicorn finishes in-flight requests and the app's shutdown, then re-raises SIGTERM.
        assert server.stop() in (0, -signal.SIGTERM)
    records = read_log(tmp_path / "log")
    assert sorted(r["request_id"] for r in records) == sorted(ids)
    files = list((tmp_path / "log" / "flights_eta").glob("date=*/part-*.jsonl"))
    assert files
    import pandas as pd

    frame = pd.concat(pd.read_json(f, lines=True) for f in files)
    assert len(frame) == 85
    assert {"request_id", "logged_at", "as_of", "keys", "features_used", "model", "prediction", "interval",
            "degraded", "confidence", "request"} <= set(frame.columns)
    # The lake reads it as it is: one row per answer, the folder's date as a partition column.
    lake = spark.read.json(str(tmp_path / "log" / "flights_eta"))
    assert lake.count() == 85 and "date" in lake.columns
    assert lake.select("features_used.wx_temp", "model.version", "prediction.arr_delay").dropna().count() == 85
