"""A real XGBoost bundle on the use case's real features, trained in seconds, not registered.

For the batch benchmark: it scores with a model of the size ``model.yaml`` asks for (300+ trees of depth 8)
whatever the registry holds. A real booster on a real point-in-time training set, not a mock; the real
models come from ``pipelines/training`` (DAG model_train).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Settings
    from pipelines.models.bundle import ModelBundle
    from pipelines.usecases import UseCase


def train_bundle(spark: SparkSession, settings: Settings, usecase: UseCase, start: datetime, end: datetime,
                 folder: Path, *, trees: int = 40, depth: int = 6) -> ModelBundle:
    """Train on the labelled flights of [start, end) (the training set's code), save the bundle in `folder`."""
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
