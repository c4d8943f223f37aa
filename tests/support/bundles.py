"""Real (small) model bundles for tests and benchmarks that run before a model has been trained and
registered (the training pipeline, ``pipelines/training``, registers the real ones).

* :func:`synthetic_bundle`: a booster trained on synthetic rows whose value ranges follow each feature's
  default; a real XGBoost model with a real split-conformal calibration, training ranges and linear fallback:
  everything the API does with a registered bundle, it does with this one.
* :func:`register_bundle`: logs and registers a bundle in MLflow, as training does.
* :func:`train_bundle`: a real booster on a real point-in-time training set of the use case's features,
  trained in seconds, not registered (the batch benchmark scores with a model of the size ``model.yaml``
  asks for, whatever the registry holds).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.featurestore.spec import FeatureSet
from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle, feature_spec_hash

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Settings
    from pipelines.usecases import UseCase

__all__ = ["register_bundle", "synthetic_bundle", "train_bundle"]


def synthetic_bundle(features: FeatureSet, folder: Path, *, rows: int = 20_000, trees: int = 60, depth: int = 6,
                     seed: int = 7, version: str = "1", task: str = "regression") -> ModelBundle:
    """Train, calibrate and save a bundle into ``folder``; ``bundle.version`` = ``version``. ``task``
    ``binary``: a classifier of "the synthetic delay exceeds 15" (classes ``on_time``, ``late``) with isotonic
    probabilities, conformal prediction sets and a logistic fallback, as classification training makes."""
    import pandas as pd
    import xgboost

    rng = np.random.default_rng(seed)
    names = features.feature_names
    data: dict[str, np.ndarray] = {}
    for name in names:
        if name == "dep_delay_known":
            data[name] = np.clip(rng.exponential(20, rows) - 8, -30, 600)
        elif name == "sched_dep_hour":
            data[name] = rng.integers(5, 23, rows).astype(float)
        elif name == "sched_dep_dow":
            data[name] = rng.integers(0, 7, rows).astype(float)
        elif name == "sched_month":
            data[name] = rng.integers(1, 13, rows).astype(float)
        elif name == "carrier_index":
            data[name] = rng.integers(0, 16, rows).astype(float)
        elif name == "dep_delay_bucket":
            data[name] = np.digitize(data.get("dep_delay_known", rng.normal(0, 20, rows)), [0, 15, 30, 60, 120])
        else:
            default = next((f.default for v in features.batch_views for f in v.features if f.name == name), None)
            scale = abs(float(default)) if default not in (None, 0, 0.0) else 10.0
            data[name] = np.abs(rng.normal(scale, scale / 3 + 1, rows))
    frame = pd.DataFrame(data)[names]
    dep = frame.get("dep_delay_known", pd.Series(np.zeros(rows)))
    route = frame.get("route_arr_delay_mean_30d", pd.Series(np.zeros(rows)))
    label = (0.95 * dep + 0.3 * route - 4 + rng.normal(0, 9, rows)).to_numpy()
    split = int(rows * 0.8)
    if task == "binary":
        return _binary_bundle(features, folder, frame, (label > 15).astype(np.int64), split, trees, depth, version)
    train = xgboost.DMatrix(frame.iloc[:split].to_numpy(np.float32), label=label[:split], feature_names=names)
    booster = xgboost.train({"max_depth": depth, "eta": 0.1, "objective": "reg:squarederror", "nthread": 2},
                            train, num_boost_round=trees)
    valid = frame.iloc[split:].to_numpy(np.float32)
    residuals = label[split:] - booster.inplace_predict(valid)
    calibration = Calibration.fit(residuals, [0.8, 0.9])
    ranges = {n: (float(np.percentile(frame[n], 0.1)), float(np.percentile(frame[n], 99.9))) for n in names}
    fallback_features = [n for n in ("dep_delay_known", "route_arr_delay_mean_30d", "tail_arr_delay_mean_7d")
                         if n in names]
    fallback = LinearFallback.fit(frame.iloc[:split], fallback_features, label[:split])
    defaults = {f.name: float(f.default) for v in features.batch_views for f in v.features
                if isinstance(f.default, (int, float))}
    bundle = ModelBundle(usecase=features.usecase, model_name=features.usecase, label="arr_delay",
                         feature_names=names, feature_defaults=defaults, calibration=calibration,
                         feature_ranges=ranges, fallback=fallback, feature_spec_hash=feature_spec_hash("synthetic"),
                         lineage={"source": "tests.support.bundles.synthetic_bundle", "rows": rows, "seed": seed})
    bundle.save(folder, booster=booster)
    bundle.version = version
    return bundle


def _binary_bundle(features: FeatureSet, folder: Path, frame, labels: np.ndarray, split: int, trees: int,  # noqa: ANN001
                   depth: int, version: str) -> ModelBundle:
    import xgboost

    from pipelines.models.classification import (
        LogisticFallback,
        PredictionSets,
        ProbabilityCalibration,
        probabilities,
    )

    names = features.feature_names
    train = xgboost.DMatrix(frame.iloc[:split].to_numpy(np.float32), label=labels[:split], feature_names=names)
    booster = xgboost.train({"max_depth": depth, "eta": 0.1, "objective": "binary:logistic", "nthread": 2},
                            train, num_boost_round=trees)
    margins = booster.inplace_predict(frame.iloc[split:].to_numpy(np.float32), predict_type="margin")
    probability = ProbabilityCalibration.fit(margins, labels[split:], "isotonic")
    sets = PredictionSets.fit(probabilities(margins), labels[split:], [0.8, 0.9])
    fallback_features = [n for n in ("dep_delay_known", "route_arr_delay_mean_30d") if n in names]
    ranges = {n: (float(np.percentile(frame[n], 0.1)), float(np.percentile(frame[n], 99.9))) for n in names}
    defaults = {f.name: float(f.default) for v in features.batch_views for f in v.features
                if isinstance(f.default, (int, float))}
    bundle = ModelBundle(usecase=features.usecase, model_name=features.usecase, label="late", feature_names=names,
                         feature_defaults=defaults, calibration=sets, feature_ranges=ranges,
                         fallback=LogisticFallback.fit(frame.iloc[:split], fallback_features, labels[:split], 2),
                         feature_spec_hash=feature_spec_hash("synthetic"), task="binary", classes=["on_time", "late"],
                         probability=probability, lineage={"source": "tests.support.bundles.synthetic_bundle"})
    bundle.save(folder, booster=booster)
    bundle.version = version
    return bundle


def register_bundle(settings, bundle: ModelBundle, name: str, alias: str = "champion"):  # noqa: ANN001, ANN201
    """Log ``bundle`` to a new MLflow run (artifact path ``atelier/bundle``), register it as a new version of
    ``name`` and point ``alias`` at it, as training does. Returns the registry's VersionRef."""
    import mlflow

    from pipelines.models.registry import BUNDLE_ARTIFACT_PATH, client, resolve_version

    c = client(settings)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    experiment = mlflow.set_experiment(f"{name}-serving-tests")
    assert bundle.path is not None
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="synthetic-bundle") as run:
        mlflow.log_artifacts(str(bundle.path), BUNDLE_ARTIFACT_PATH)
    from mlflow.exceptions import MlflowException

    try:
        c.create_registered_model(name)
    except MlflowException:
        pass  # already registered
    mv = c.create_model_version(name, source=f"runs:/{run.info.run_id}/{BUNDLE_ARTIFACT_PATH}", run_id=run.info.run_id)
    c.set_registered_model_alias(name, alias, mv.version)
    return resolve_version(settings, name, alias)


def train_bundle(spark: SparkSession, settings: Settings, usecase: UseCase, start: datetime, end: datetime,
                 folder: Path, *, trees: int = 40, depth: int = 6) -> ModelBundle:
    """Train on the labelled flights of [start, end) (the training set's code), save the bundle in `folder`."""
    import xgboost

    from pipelines.featurestore.offline import training_set
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake

    features = load_feature_set(usecase)
    assert features.label is not None
    names = features.feature_names
    frame = training_set(spark, Lake.from_settings(settings), features, start, end).toPandas()
    frame = frame.sort_values(features.label.keys[0]).reset_index(drop=True)
    x = np.column_stack([np.asarray(frame[f], dtype=np.float32) for f in names])
    y = np.asarray(frame[features.label.column], dtype=np.float64)
    cut = int(len(y) * 0.8)
    booster = xgboost.train({"max_depth": depth, "eta": 0.1, "nthread": 2, "seed": 7, "objective": "reg:squarederror"},
                            xgboost.DMatrix(x[:cut], label=y[:cut], feature_names=names), num_boost_round=trees)
    residuals = y[cut:] - booster.inplace_predict(x[cut:])
    calibration = Calibration.fit(residuals, [0.8, 0.9])
    ranges = {f: (float(np.nanpercentile(x[:, i], 0.1)), float(np.nanpercentile(x[:, i], 99.9)))
              for i, f in enumerate(names)}
    fallback = LinearFallback.fit(frame.iloc[:cut].fillna(0.0), names[:3], y[:cut])
    bundle = ModelBundle(usecase=usecase.name, model_name=usecase.name, label=features.label.column,
                         feature_names=names, feature_defaults={}, calibration=calibration, feature_ranges=ranges,
                         fallback=fallback,
                         feature_spec_hash=feature_spec_hash((usecase.path / "features.yaml").read_text()),
                         lineage={"trained_on": [start.isoformat(), end.isoformat()], "rows": int(len(y)),
                                  "by": "tests.support.bundles.train_bundle"})
    bundle.save(folder, booster)
    return bundle
