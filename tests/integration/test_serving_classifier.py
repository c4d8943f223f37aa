"""A binary classifier served for real: its bundle registered in the test MLflow, packaged with the
deployment's own code, loaded into the test Triton (python backend) and checked against its golden margins,
then answered by the API as a server process on real online features: the most probable class, calibrated
probabilities equal to the bundle's own on the features the API used, and conformal prediction sets.

The classifier is a synthetic one on the flights features (``tests.support.bundles.synthetic_bundle``,
task ``binary``): what is tested is the serving path of a classifier, not a use case."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from serving_fixtures import AS_OF, ApiServer, wait_for_log

pytest_plugins = ["serving_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "flights_eta_classifier"


@pytest.fixture(scope="module")
def classifier(settings, usecase, serving_features, mlflow_service, triton_service, tmp_path_factory):
    from pipelines.deploy.artifact import package
    from pipelines.deploy.package import MODEL_SOURCE, golden_check, place_and_load, serving_spec_hash
    from pipelines.deploy.triton import triton_name, triton_python_config
    from tests.support.bundles import register_bundle, synthetic_bundle

    folder = tmp_path_factory.mktemp("classifier")
    bundle = synthetic_bundle(serving_features, folder / "bundle", rows=4_000, trees=20, depth=4, task="binary")
    bundle.feature_spec_hash = serving_spec_hash(usecase)  # trained on this spec's features
    bundle.model_name = MODEL
    bundle.save(folder / "bundle")
    ref = register_bundle(settings, bundle, MODEL, alias="champion")
    name = triton_name(MODEL, ref.version)
    rng = np.random.default_rng(5)
    golden = np.abs(rng.normal(10, 5, (32, len(bundle.feature_names)))).astype(np.float32)
    out = package(bundle, folder / "artifact.zip", triton_name=name,
                  config_pbtxt=triton_python_config(name, len(bundle.feature_names)), model_py=MODEL_SOURCE.read_text(),
                  golden_inputs=golden, runtime="python", version=str(ref.version))
    place_and_load(settings, usecase, out)
    checked = golden_check(settings, out)  # Triton's outputs are the booster's margins, within 1e-6
    return ref, bundle, checked


def test_the_api_answers_a_classifier_s_class_probabilities_and_sets_from_triton(classifier, sqlite_features,
                                                                                  real_flights, tmp_path):
    ref, bundle, checked = classifier
    api = ApiServer({**sqlite_features, "ATELIER__API__MODELS": f"{{flights_eta: '{MODEL}:{ref.version}'}}"},
                    tmp_path / "log").start()
    try:
        with httpx.Client(headers={**api.headers, "X-Atelier-As-Of": AS_OF}, timeout=30) as client:
            answers = [client.post(f"{api.url}/v1/predict", json=flight).json() for flight in real_flights[:20]]
            batch = client.post(f"{api.url}/v1/predict/batch", json={"requests": real_flights[:5]})
        records = [wait_for_log(api.log_dir, a["request_id"]) for a in answers]
    finally:
        api.stop()
    assert batch.status_code == 200, batch.text
    for answer, record in zip(answers, records, strict=True):
        assert answer["model"] == {"name": MODEL, "version": str(ref.version), "runtime": "triton"}, answer
        probabilities = answer["prediction"]["probabilities"]
        assert list(probabilities) == ["on_time", "late"]
        matrix = np.array([[record["features_used"][f] for f in bundle.feature_names]], dtype=np.float32)
        expected = bundle.predict_proba(matrix)[0]
        assert np.allclose([probabilities["on_time"], probabilities["late"]], expected, atol=1e-4)
        assert answer["prediction"]["arr_delay"] == bundle.classes[int(np.argmax(expected))]
        members = bundle.prediction_sets(bundle.margins(matrix), matrix)
        assert answer["sets"] == {lvl: [c for c, m in zip(bundle.classes, row[0], strict=True) if m]
                                  for lvl, row in members.items()}
        assert answer["interval"] == {} and answer["degraded"] is False
    assert [a["prediction"] for a in batch.json()["predictions"]] == [a["prediction"] for a in answers[:5]]
    assert len({a["prediction"]["probabilities"]["late"] for a in answers}) > 1  # real features, varied answers
