"""A real XGBoost model on the use case's real features, trained in seconds and registered in MLflow like
training registers its models (bundle under the run's ``atelier/bundle``, a version, an alias).

For the batch tests and benchmark: they need a registered version of the use case's model whatever the
state of the registry. It is a real booster on a real point-in-time training set, not a mock.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Settings
    from pipelines.models.bundle import ModelBundle
    from pipelines.models.registry import VersionRef
    from pipelines.usecases import UseCase


def train_bundle(spark: SparkSession, settings: Settings, usecase: UseCase, start: datetime, end: datetime,
                 folder: Path, *, trees: int = 40, depth: int = 6, calibration_offsets: dict | None = None,
                 ) -> ModelBundle:
    """Train on the labelled flights of [start, end) (the training set's code), save the bundle in `folder`.

    ``calibration_offsets`` ({"0.8": (lo, hi), ...}) replaces the fitted interval offsets (to make a model
    whose intervals are wrong on purpose)."""
    import numpy as np
    import xgboost

    from pipelines.featurestore.offline import training_set
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle, feature_spec_hash

    features = load_feature_set(usecase)
    assert features.label is not None
    names = features.feature_names
    frame = training_set(spark, Lake(settings.lake_root), features, start, end).toPandas()
    frame = frame.sort_values(features.label.keys[0]).reset_index(drop=True)
    x = np.column_stack([np.asarray(frame[f], dtype=np.float32) for f in names])
    y = np.asarray(frame[features.label.column], dtype=np.float64)
    cut = int(len(y) * 0.8)
    booster = xgboost.train({"max_depth": depth, "eta": 0.1, "nthread": 2, "seed": 7, "objective": "reg:squarederror"},
                            xgboost.DMatrix(x[:cut], label=y[:cut], feature_names=names), num_boost_round=trees)
    residuals = y[cut:] - booster.inplace_predict(x[cut:])
    calibration = Calibration.fit(residuals, [0.8, 0.9])
    if calibration_offsets is not None:
        calibration = Calibration(calibration.levels, {k: (v[0], v[1]) for k, v in calibration_offsets.items()},
                                  rows=calibration.rows)
    ranges = {f: (float(np.nanpercentile(x[:, i], 0.1)), float(np.nanpercentile(x[:, i], 99.9)))
              for i, f in enumerate(names)}
    fallback = LinearFallback.fit(frame.iloc[:cut].fillna(0.0), names[:3], y[:cut])
    bundle = ModelBundle(usecase=usecase.name, model_name=usecase.name, label=features.label.column,
                         feature_names=names, feature_defaults={}, calibration=calibration, feature_ranges=ranges,
                         fallback=fallback,
                         feature_spec_hash=feature_spec_hash((usecase.path / "features.yaml").read_text()),
                         lineage={"trained_on": [start.isoformat(), end.isoformat()], "rows": int(len(y)),
                                  "by": "pipelines.batch.sample_model"})
    bundle.save(folder, booster)
    return bundle


def register_bundle(settings: Settings, bundle: ModelBundle, alias: str | None = None) -> VersionRef:
    """Log the bundle folder to a new MLflow run (``atelier/bundle``) and register a version of the model
    named after the use case from that run; set `alias` on it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.models.registry import BUNDLE_ARTIFACT_PATH, client, resolve_version

    assert bundle.path is not None
    c = client(settings)
    experiment = f"{bundle.usecase}-batch-sample"
    exp = c.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else c.create_experiment(experiment)
    run = c.create_run(experiment_id, tags={"atelier.kind": "sample_model"})
    c.log_artifacts(run.info.run_id, str(bundle.path), artifact_path=BUNDLE_ARTIFACT_PATH)
    c.set_terminated(run.info.run_id)
    try:
        c.create_registered_model(bundle.model_name)
    except MlflowException:
        pass  # already registered
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mv = c.create_model_version(bundle.model_name, source=f"runs:/{run.info.run_id}/{BUNDLE_ARTIFACT_PATH}",
                                run_id=run.info.run_id)
    if alias:
        c.set_registered_model_alias(bundle.model_name, alias, mv.version)
    return resolve_version(settings, bundle.model_name, version=mv.version, mlflow_client=c)
