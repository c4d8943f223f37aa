"""Deployment drills: a deliberately wrong copy of a serving version, registered so a canary can prove that the
judge catches it and rolls it back (a fire drill for the rollout path, as known-bad canaries are in Kayenta).

:func:`register_biased_copy` adds one tree to the version's booster that shifts every prediction by ``bias``
label units, and registers the result as a new version of the same model, tagged ``atelier.drill`` and left in
``evaluation`` (it never reaches a lifecycle stage by rules, and its audit trail says what it is).
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pipelines.config import Settings
    from pipelines.models.bundle import ModelBundle

__all__ = ["DRILL_TAG", "continue_training", "register_biased_copy"]

DRILL_TAG = "atelier.drill"


def continue_training(bundle: ModelBundle, matrix: np.ndarray, delta: np.ndarray, rounds: int = 1,
                      depth: int = 1) -> Any:
    """The booster with ``rounds`` more trees adding ``delta`` to its raw output on ``matrix``'s rows (squared
    error, learning rate 1, no regularisation: the new trees fit the shift exactly where they can)."""
    import xgboost

    booster = bundle.booster.copy()
    raw = booster.inplace_predict(matrix)
    data = xgboost.DMatrix(matrix, label=raw + delta, feature_names=bundle.feature_names)
    params = {"objective": "reg:squarederror", "eta": 1.0, "max_depth": depth, "lambda": 0.0,
              "min_child_weight": 0.0, "nthread": 1, "tree_method": "hist", "max_bin": 1024}
    return xgboost.train(params, data, num_boost_round=rounds, xgb_model=booster)


def register_biased_copy(settings: Settings, model: str, version: str, bias: float, *, by: str = "drill") -> str:
    """Register ``model`` ``version`` shifted by ``bias`` as a new version; returns its number."""
    import mlflow
    import numpy as np

    from pipelines.deploy.package import golden_inputs
    from pipelines.models.registry import BUNDLE_ARTIFACT_PATH, STAGE_TAG, client, load_bundle, mlflow_errors

    base = load_bundle(settings, model, version=version)
    matrix = golden_inputs(settings, base, 500)
    booster = continue_training(base, matrix, np.full(len(matrix), float(bias)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        base.lineage = {**base.lineage, "drill": {"of_version": str(version), "bias": float(bias)}}
        base.save(folder, booster)
        with mlflow_errors(settings):
            mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
            experiment = mlflow.set_experiment(f"atelier/{base.usecase}-drills")
            with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=f"drill-bias-{bias:g}") as run:
                mlflow.log_artifacts(str(folder), BUNDLE_ARTIFACT_PATH)
                mlflow.set_tag(DRILL_TAG, f"bias {bias:+g}")
            audit = {"from": None, "to": "evaluation", "by": by, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "why": f"deployment drill: v{version} with every prediction shifted by {bias:+g}"}
            mv = client(settings).create_model_version(
                model, f"runs:/{run.info.run_id}/{BUNDLE_ARTIFACT_PATH}", run_id=run.info.run_id,
                tags={STAGE_TAG: "evaluation", DRILL_TAG: f"v{version} {bias:+g}",
                      "atelier.audit.0000": json.dumps(audit)})
    return str(mv.version)
