"""Unit tests of the prediction API's parts: spec-derived request schemas, freshness policies, request features,
the circuit breaker, the clock header, the prediction log, and the Triton export (python backend and FIL)."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from pipelines.config import load_settings
from pipelines.featurestore.spec import load_feature_set
from pipelines.stores.online.base import ReadResult
from pipelines.usecases import get_usecase
from serving.features import FeatureResolver, StaleFeature
from serving.predlog import PredictionLog
from serving.resilience import CircuitBreaker, parse_as_of
from serving.schemas import RequestSchema, field_errors

NOW = datetime(2013, 12, 31, tzinfo=UTC)
FLIGHT = {"origin": "JFK", "dest": "LAX", "carrier": "AA", "tailnum": "N335AA",
          "sched_dep_ts": "2013-12-30T22:00:00Z", "sched_arr_ts": "2013-12-31T04:00:00Z", "dep_delay": 12}


@pytest.fixture(scope="module")
def features():
    settings = load_settings("test", environ={})
    return load_feature_set(get_usecase("flights_eta", settings.usecases_path))


@pytest.fixture(scope="module")
def schema(features):
    settings = load_settings("test", environ={})
    return RequestSchema(get_usecase("flights_eta", settings.usecases_path), features, max_batch=4)


def _errors(schema, body, batch=False):
    with pytest.raises(ValidationError) as exc:
        (schema.batch if batch else schema.single)(json.dumps(body).encode() if not isinstance(body, bytes) else body)
    return {(e["field"], e["type"]) for e in field_errors(exc.value)}


def test_request_schema_comes_from_the_spec_and_its_expectations(schema):
    assert list(schema.columns) == ["tailnum", "origin", "dest", "sched_dep_ts", "sched_arr_ts", "carrier",
                                    "dep_delay"]
    row = schema.single(json.dumps(FLIGHT).encode())
    assert row["sched_dep_ts"] == datetime(2013, 12, 30, 22, tzinfo=UTC) and row["dep_delay"] == 12.0
    # Not-null in the flights suite -> required; the others are optional (null = unknown).
    js = schema.single_model.model_json_schema()
    assert set(js["required"]) == {"origin", "dest", "carrier", "sched_dep_ts", "sched_arr_ts"}
    assert schema.single(json.dumps({**FLIGHT, "tailnum": None, "dep_delay": None}).encode())["tailnum"] is None
    # The suite's range for dep_delay (-120..2880) is the request's range.
    assert _errors(schema, {**FLIGHT, "dep_delay": 2881}) == {("dep_delay", "less_than_equal")}


@pytest.mark.parametrize(("change", "expected"), [
    ({"extra": 1}, {("extra", "extra_forbidden")}),
    ({"dep_delay": "12"}, {("dep_delay", "float_type")}),
    ({"dep_delay": True}, {("dep_delay", "float_type")}),
    ({"carrier": 7}, {("carrier", "string_type")}),
    ({"sched_dep_ts": "2013-12-30T22:00:00"}, {("sched_dep_ts", "timezone_aware")}),
    ({"sched_dep_ts": "9999-12-31T23:59:59Z"}, {("sched_dep_ts", "less_than")}),
    ({"sched_arr_ts": 1388448000}, {("sched_arr_ts", "datetime_type")}),
    ({"origin": "X" * 65}, {("origin", "string_too_long")}),
    ({"usecase": "other"}, {("usecase", "literal_error")}),
])
def test_strict_field_errors(schema, change, expected):
    assert _errors(schema, {**FLIGHT, **change}) == expected


def test_nan_infinity_and_broken_json(schema):
    body = json.dumps(FLIGHT).encode()
    assert _errors(schema, body.replace(b'"dep_delay": 12', b'"dep_delay": NaN')) == {("dep_delay", "finite_number")}
    assert _errors(schema, body.replace(b'"dep_delay": 12', b'"dep_delay": -Infinity')) == {
        ("dep_delay", "finite_number")}
    assert _errors(schema, body.replace(b'"dep_delay": 12', b'"dep_delay": 1e400')) == {("dep_delay", "finite_number")}
    assert _errors(schema, body[:-3]) == {("<body>", "json_invalid")}
    assert _errors(schema, b"[]") == {("<body>", "model_type")}


def test_batch_limits_and_row_paths(schema):
    assert len(schema.batch(json.dumps({"requests": [FLIGHT] * 4}).encode())) == 4
    assert _errors(schema, {"requests": [FLIGHT] * 5}, batch=True) == {("requests", "too_long")}
    assert _errors(schema, {"requests": []}, batch=True) == {("requests", "too_short")}
    assert _errors(schema, {"requests": [FLIGHT, {**FLIGHT, "dest": None}]}, batch=True) == {
        ("requests.1.dest", "string_type")}


def _read(values, age_s, found=True):
    event = NOW - timedelta(seconds=age_s)
    return ReadResult(("k",), found, values if found else None, event if found else None, age_s if found else None)


def _row(schema):
    return schema.single(json.dumps(FLIGHT).encode())


def test_fresh_rows_are_served_and_request_features_computed(features, schema):
    resolver = FeatureResolver(features)
    row = _row(schema)
    keys = resolver.keys(row)
    assert keys == {"flights_eta__aircraft_history": ("N335AA",), "flights_eta__route_stats": ("JFK", "LAX"),
                    "flights_eta__origin_weather": ("JFK",)}
    aircraft = {"tail_arr_delay_mean_7d": 5.5, "tail_dep_delay_mean_7d": 4.0, "tail_flights_7d": 9}
    weather = {"wx_temp": 30.0, "wx_wind_speed": 12.0, "wx_wind_gust": None, "wx_precip": 0.0, "wx_visib": 10.0,
               "wx_pressure": 1020.0}
    results = {"flights_eta__aircraft_history": _read(aircraft, 3600),
               "flights_eta__route_stats": _read({}, 0, found=False),
               "flights_eta__origin_weather": _read(weather, 1800)}
    out = resolver.resolve(row, keys, results)
    assert out.values["tail_arr_delay_mean_7d"] == 5.5 and out.values["tail_flights_7d"] == 9
    assert out.values["wx_wind_gust"] == 10.0  # a null stored value serves the default
    assert out.values["route_arr_delay_mean_30d"] == 7.0  # missing row: the spec's default
    assert out.report["aircraft_history"] == {"age_seconds": 3600, "status": "fresh", "action": "none",
                                              "stale_features": {}}
    assert out.report["route_stats"]["status"] == "missing" and out.report["route_stats"]["action"] == "default"
    assert out.issues == ["route_stats: missing, defaults used"]
    # Request features: the feature language's own compiled definitions (America/New_York local time).
    assert out.values["sched_dep_hour"] == 17 and out.values["sched_dep_dow"] == 0  # Monday 17:00 EST
    assert out.values["sched_block_minutes"] == 360.0 and out.values["carrier_index"] == 1
    assert out.values["dep_delay_known"] == 12.0 and out.values["dep_delay_bucket"] == 1


def test_stale_policies(features, schema):
    resolver = FeatureResolver(features)
    row = _row(schema)
    keys = resolver.keys(row)
    aircraft = {"tail_arr_delay_mean_7d": 5.5, "tail_dep_delay_mean_7d": 4.0, "tail_flights_7d": 9}
    results = {"flights_eta__aircraft_history": _read(aircraft, 3 * 86400),  # SLA 2 d
               "flights_eta__route_stats": _read({"route_distance": 2475.0}, 86400)}
    out = resolver.resolve(row, keys, results)
    assert out.values["tail_arr_delay_mean_7d"] == 5.5  # serve_stale
    assert out.values["tail_flights_7d"] == 0  # use_default
    assert out.report["aircraft_history"]["stale_features"] == {
        "tail_arr_delay_mean_7d": "serve_stale", "tail_dep_delay_mean_7d": "serve_stale",
        "tail_flights_7d": "use_default"}
    assert out.report["origin_weather"]["status"] == "missing"  # no result for the key
    weather = {"wx_temp": 30.0, "wx_wind_speed": 12.0, "wx_wind_gust": 20.0, "wx_precip": 0.0, "wx_visib": 10.0,
               "wx_pressure": 1020.0}
    with pytest.raises(StaleFeature) as exc:
        resolver.resolve(row, keys, {**results, "flights_eta__origin_weather": _read(weather, 2.5 * 3600)})
    assert exc.value.feature == "wx_pressure" and "reject" in str(exc.value)
    down = resolver.resolve(row, keys, None)
    assert {r["status"] for r in down.report.values()} == {"unavailable"} and down.store_failed
    no_tail = resolver.resolve({**row, "tailnum": None}, resolver.keys({**row, "tailnum": None}), {})
    assert no_tail.report["aircraft_history"]["status"] == "no_key"


def test_vector_in_model_order_with_nan_for_null(features, schema):
    resolver = FeatureResolver(features)
    vector = resolver.vector({"a": None, "b": True, "c": 3}, ["c", "a", "b"])
    assert vector[0] == 3.0 and math.isnan(vector[1]) and vector[2] == 1.0


def test_circuit_breaker_opens_probes_and_closes(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("serving.resilience.time.monotonic", lambda: clock[0])
    breaker = CircuitBreaker(failures=2, cooldown_s=1.0, min_streak_s=0.2)
    assert breaker.allow()
    breaker.failure()
    breaker.failure()
    breaker.failure()  # a burst at one instant (one slow moment): still closed
    assert breaker.allow() and breaker.state == "closed"
    clock[0] += 0.3
    breaker.failure()  # still failing 0.3 s later: open
    assert breaker.state == "open" and not breaker.allow()
    clock[0] += 1.5
    assert breaker.state == "half_open"
    assert breaker.allow()  # one probe
    assert not breaker.allow()  # only one at a time
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock[0] += 1.5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    breaker.failure()  # a new streak starts from zero
    assert breaker.allow()


def test_as_of_header_parsing():
    assert parse_as_of("2013-12-30T18:00:00Z") == datetime(2013, 12, 30, 18, tzinfo=UTC)
    assert parse_as_of("2013-12-30T13:00:00-05:00") == datetime(2013, 12, 30, 18, tzinfo=UTC)
    for bad in ("2013-12-30T18:00:00", "yesterday", "x" * 100):
        with pytest.raises(ValueError):
            parse_as_of(bad)


def test_prediction_log_is_bounded_and_loses_nothing_accepted(tmp_path):
    log = PredictionLog(tmp_path, max_queue=100_000, batch=500).start()
    threads = [threading.Thread(target=lambda t=t: [log.append("uc", {"request_id": f"{t}-{i}", "x": i,
                                                                       "at": datetime(2013, 1, 1, tzinfo=UTC)})
                                                    for i in range(2_000)]) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = [json.loads(line) for p in tmp_path.rglob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(lines) == log.accepted == log.written == 8_000 and log.dropped == 0
    assert len({r["request_id"] for r in lines}) == 8_000
    assert lines[0]["at"] == "2013-01-01T00:00:00+00:00"
    [folder] = {p.parent.name for p in tmp_path.rglob("*.jsonl")}
    assert folder.startswith("date=")
    assert not log.append("uc", {"late": True})  # closed: refused, counted

    tiny = PredictionLog(tmp_path / "tiny", max_queue=1)  # not started: nothing drains the queue
    tiny._thread = threading.current_thread()  # accept into the queue without a writer
    assert tiny.append("uc", {"a": 1}) and not tiny.append("uc", {"a": 2})
    assert tiny.dropped == 1


def _parsed_config(text: str):  # a tritonclient ModelConfig message
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_configs():
    from pipelines.deploy.triton import fil_model_config, triton_name, triton_python_config

    fil = _parsed_config(fil_model_config("flights_eta", 21))
    assert fil.backend == "fil" and list(fil.input[0].dims) == [21]
    assert fil.parameters["model_type"].string_value == "xgboost_json"
    assert fil.input[0].name == "input__0" and fil.output[0].name == "output__0" and fil.HasField("dynamic_batching")
    assert "is_classifier" in fil.parameters and fil.instance_group[0].kind == fil.instance_group[0].KIND_CPU
    python = _parsed_config(triton_python_config("flights_eta", 21))
    assert python.backend == "python" and list(python.input[0].dims) == [21] and python.max_batch_size == 4096
    assert python.version_policy.latest.num_versions == 1  # one registry version per Triton model
    assert triton_name("flights_eta", "12") == "flights_eta.v12"
    for bad in ("0", "x", "-1"):
        with pytest.raises(ValueError, match="positive integer"):
            triton_name("flights_eta", bad)


def test_export_writes_both_flavours(tmp_path, features):
    from pipelines.deploy.triton import export_fil_model, export_python_model
    from tests.support.bundles import synthetic_bundle

    bundle = synthetic_bundle(features, tmp_path / "bundle", rows=2_000, trees=5, depth=3, version="7")
    default = export_python_model(bundle, tmp_path / "repo")
    assert default.name == f"{bundle.model_name}.v7" and default.folder == tmp_path / "repo" / default.name / "7"
    py = export_python_model(bundle, tmp_path / "repo", name="flights_eta")
    assert py.version == 7 and (py.folder / "model.py").exists() and (py.folder / "model.json").exists()
    assert "inplace_predict" in (py.folder / "model.py").read_text()
    fil = export_fil_model(bundle, tmp_path / "fil", name="flights_eta")
    assert fil.version == 7 and fil.n_features == len(bundle.feature_names)
    assert (tmp_path / "fil" / "flights_eta" / "7" / "model.json").read_bytes() == (
        bundle.path / "model.json").read_bytes()
    config = _parsed_config((tmp_path / "fil" / "flights_eta" / "config.pbtxt").read_text())
    assert list(config.input[0].dims) == [len(bundle.feature_names)]
    bundle.version = None
    with pytest.raises(ValueError, match="registry's version"):
        export_python_model(bundle, tmp_path / "repo")


def test_the_store_probe_uses_each_view_s_key_types(features):
    """The readiness probe reads a key no entity has, of the key's own type: a string for a tail number, an
    integer for the union panel's worker number (a string there failed every probe: the API never got ready)."""
    union = load_feature_set(get_usecase("union_membership", load_settings("test", environ={}).usecases_path))
    assert FeatureResolver(union).views[0].probe_key() == (-1,)
    assert {v.name: v.probe_key() for v in FeatureResolver(features).views}["route_stats"] == ("__probe__", "__probe__")
