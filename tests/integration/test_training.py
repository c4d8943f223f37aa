"""Training on the real flights data, registered in the real (test) MLflow."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_registered_model_bundle_loads_and_predicts(settings, registered_model):
    import numpy as np

    from pipelines.models.registry import load_bundle

    bundle = load_bundle(settings, registered_model.name, version=registered_model.version)
    assert bundle.version == registered_model.version
    row = {name: float(bundle.feature_defaults.get(name, 1.0)) for name in bundle.feature_names}
    matrix = bundle.matrix([row])
    prediction = bundle.predict(matrix)
    intervals = bundle.intervals(prediction, matrix)
    assert set(intervals) == {"0.8", "0.9"}
    lo80, hi80 = intervals["0.8"]
    lo90, hi90 = intervals["0.9"]
    assert lo90[0] <= lo80[0] <= prediction[0] <= hi80[0] <= hi90[0]
    assert np.isfinite(bundle.fallback.predict(matrix, bundle.feature_names)).all()
