"""The API in-process (Starlette's TestClient), on a real SQLite online store and a real (small) model bundle,
with Triton unreachable (a closed port): auth, token handling, validation, shedding and the fallback path."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from pipelines.config import load_settings
from pipelines.featurestore.materialize import online_schema
from pipelines.featurestore.spec import load_feature_set
from pipelines.stores.online import get_online_store
from pipelines.stores.online.base import FeatureRow
from pipelines.usecases import get_usecase
from serving.app import create_app
from serving.service import PredictionService

FLIGHT = {"origin": "JFK", "dest": "LAX", "carrier": "AA", "tailnum": "N335AA",
          "sched_dep_ts": "2013-12-30T22:00:00Z", "sched_arr_ts": "2013-12-31T04:00:00Z", "dep_delay": 12}
TOKEN = "unit-test-token-0123456789abcdef"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    overrides = {"ATELIER__HOME": str(tmp / "home"), "ATELIER__ONLINE_STORE__SQLITE_PATH": str(tmp / "features.db"),
                 "ATELIER__API__PREDICTION_LOG_DIR": str(tmp / "log"),
                 "ATELIER__TRITON__HTTP_PORT": str(_closed_port())}
    settings = load_settings("test", environ={**os.environ, **overrides})
    features = load_feature_set(get_usecase("flights_eta", settings.usecases_path))
    with get_online_store(settings) as store:
        for view in features.batch_views:
            store.apply([online_schema("flights_eta", view)])
        store.write("flights_eta__aircraft_history",
                    [FeatureRow(("N335AA",), {"tail_arr_delay_mean_7d": 3.0, "tail_dep_delay_mean_7d": 2.0,
                                              "tail_flights_7d": 11}, datetime(2013, 12, 30, 20, tzinfo=UTC))],
                    now=datetime(2013, 12, 31, tzinfo=UTC))
    from tests.support.bundles import synthetic_bundle

    bundle = synthetic_bundle(features, tmp / "bundle", rows=3_000, trees=10, depth=3, version="1")
    return settings, bundle


def _client(env, **kw):
    settings, bundle = env
    service = PredictionService(settings, bundles={"flights_eta": bundle})
    return TestClient(create_app(settings, service, token=TOKEN, **kw))


def test_auth_required_without_token_refuses_to_start(env):
    settings, _ = env
    with pytest.raises(RuntimeError, match="ATELIER_API_TOKEN"):
        create_app(settings, PredictionService(settings), token="")


def test_fallback_answers_flagged_when_triton_is_unreachable(env):
    with _client(env) as client:
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Atelier-As-Of": "2013-12-31T00:00:00Z"}
        r = client.post("/v1/predict", json=FLIGHT, headers=headers)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["degraded"] is True and a["model"]["runtime"] == "fallback"
        assert a["degraded_reasons"][0].startswith("fallback predictor answered:")
        assert a["features"]["aircraft_history"]["status"] == "fresh"
        assert a["features"]["aircraft_history"]["age_seconds"] == 4 * 3600
        assert a["features"]["route_stats"]["status"] == "missing"
        assert a["confidence"]["level"] == "low"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/predict", json=FLIGHT).status_code == 401
        bad = client.post("/v1/predict", json={**FLIGHT, "dep_delay": "x"}, headers=headers)
        assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "dep_delay"
        assert client.post("/v1/predict", json=FLIGHT,
                           headers={**headers, "X-Request-Id": "bad id!"}).status_code == 422
        doc = client.get("/openapi.json").json()
        assert doc["components"]["schemas"]["FlightsEtaBatchRequest"]["properties"]["requests"]["maxItems"] == 256


def test_as_of_header_refused_where_not_allowed(env):
    settings, bundle = env
    strict = settings.model_copy(update={"api": settings.api.model_copy(update={"allow_as_of_header": False})})
    service = PredictionService(strict, bundles={"flights_eta": bundle})
    with TestClient(create_app(strict, service, token=TOKEN)) as client:
        r = client.post("/v1/predict", json=FLIGHT, headers={"Authorization": f"Bearer {TOKEN}",
                                                             "X-Atelier-As-Of": "2013-12-31T00:00:00Z"})
        assert r.status_code == 422 and r.json()["fields"][0]["field"] == "header.x-atelier-as-of"


def test_intervals_follow_the_published_recalibration_and_name_it(env):
    """The feedback loop publishes a recalibration of the served version: the API serves it within its 2 s
    maintenance tick (here: at start), names it in every answer, and keeps the bundle's on a bad file."""
    import json

    from pipelines.models.bundle import Calibration
    from pipelines.monitoring.recalibration import calibration_dir

    settings, bundle = env
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Atelier-As-Of": "2013-12-31T00:00:00Z"}
    folder = calibration_dir(settings, "flights_eta", "flights_eta", "1")
    with _client(env) as client:
        first = client.post("/v1/predict", json=FLIGHT, headers=headers).json()
    assert first["calibration"] == "flights_eta:1/bundle"
    wide = Calibration(bundle.calibration.levels, {"0.8": (-50.0, 60.0), "0.9": (-70.0, 80.0)}, None, {}, 500,
                       "adaptive_conformal")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "current.json").write_text(json.dumps({"id": "flights_eta:1/cal-20131231T0000Z-abcd1234",
                                                     "calibration": wide.to_dict()}))
    try:
        with _client(env) as client:
            a = client.post("/v1/predict", json=FLIGHT, headers=headers).json()
        assert a["calibration"] == "flights_eta:1/cal-20131231T0000Z-abcd1234"
        value = a["prediction"]["arr_delay"]
        assert a["interval"]["0.8"]["arr_delay"] == [round(value - 50.0, 2), round(value + 60.0, 2)]
        # A recalibration that does not fit the model (other levels) is refused; the bundle's stays.
        other = Calibration((0.5,), {"0.5": (-1.0, 1.0)}, None, {}, 500)
        (folder / "current.json").write_text(json.dumps({"id": "flights_eta:1/cal-x", "calibration": other.to_dict()}))
        with _client(env) as client:
            assert client.post("/v1/predict", json=FLIGHT, headers=headers).json()["calibration"] == \
                "flights_eta:1/bundle"
    finally:
        (folder / "current.json").unlink()


@pytest.fixture(scope="module")
def classifier(env, tmp_path_factory):
    settings, _ = env
    from tests.support.bundles import synthetic_bundle

    features = load_feature_set(get_usecase("flights_eta", settings.usecases_path))
    return synthetic_bundle(features, tmp_path_factory.mktemp("clf") / "bundle", rows=3_000, trees=10, depth=3,
                            version="2", task="binary")


def test_a_classifier_answers_its_classes_probabilities_and_prediction_sets(env, classifier):
    """Triton unreachable: the logistic fallback answers, flagged, with its own probabilities and the model's
    conformal sets; the answer names the most probable class and carries no interval."""
    settings, _ = env
    service = PredictionService(settings, bundles={"flights_eta": classifier})
    with TestClient(create_app(settings, service, token=TOKEN)) as client:
        r = client.post("/v1/predict", json=FLIGHT, headers={"Authorization": f"Bearer {TOKEN}",
                                                             "X-Atelier-As-Of": "2013-12-31T00:00:00Z"})
    assert r.status_code == 200, r.text
    a = r.json()
    probabilities = a["prediction"]["probabilities"]
    assert set(probabilities) == {"on_time", "late"} and sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert a["prediction"]["arr_delay"] == max(probabilities, key=probabilities.get)
    assert a["interval"] == {} and set(a["sets"]) == {"0.8", "0.9"}
    assert a["prediction"]["arr_delay"] in a["sets"]["0.8"] and set(a["sets"]["0.8"]) <= set(a["sets"]["0.9"])
    assert a["model"]["runtime"] == "fallback" and a["degraded"] is True
    assert any("its own probabilities" in reason for reason in a["confidence"]["reasons"])


def test_a_classifier_s_triton_margins_become_the_bundle_s_calibrated_probabilities(classifier):
    """What the API makes of Triton's output (the booster's margins) is the bundle's predict_proba and
    prediction sets, row for row."""
    import numpy as np

    from serving.service import ServedVersion

    rng = np.random.default_rng(3)
    matrix = np.abs(rng.normal(10, 5, (64, len(classifier.feature_names)))).astype(np.float32)
    sv = ServedVersion.__new__(ServedVersion)  # what _uncertainty reads of a served version: bundle, calibration
    sv.bundle, sv.calibration = classifier, classifier.calibration
    margins = classifier.margins(matrix)
    values, sets = PredictionService._uncertainty(sv, margins, matrix)
    expected = classifier.predict_proba(matrix)
    assert np.allclose(np.array(values), expected, atol=1e-12)
    members = classifier.prediction_sets(margins, matrix)["0.9"]
    assert [s["0.9"] for s in sets] == [[c for c, m in zip(classifier.classes, row, strict=True) if m]
                                        for row in members]
    wide = sum(len(s["0.9"]) > 1 for s in sets)
    assert 0 < wide < len(sets)  # some rows are ambiguous at 0.9, not all
