"""XGBoost training: single node (``hist``) or distributed on Spark (``xgboost.spark``), plus random search.

Both paths return a plain ``xgboost.Booster`` trained on the same rows with the same parameters, so
everything downstream (evaluation, calibration, the bundle, serving) is the same whichever trained it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.training.spec import HYPERPARAMETERS, ModelSpec

if TYPE_CHECKING:
    import pandas as pd
    import xgboost
    from pyspark.sql import SparkSession

__all__ = ["TrainedModel", "check_labels", "predict_raw_plus_offset", "sample_trials", "train_distributed",
           "train_single", "validation_loss"]


@dataclass
class TrainedModel:
    booster: xgboost.Booster
    params: dict[str, Any]
    best_iteration: int
    seconds: float
    validation_loss: float  # what the best trial is chosen by: MAE (regression) or log loss (classification)
    history: dict[str, list[float]] = field(default_factory=dict)


def _booster_params(spec: ModelSpec, hyper: dict[str, Any]) -> tuple[dict[str, Any], int, int | None]:
    hyper = dict(hyper)
    rounds = int(hyper.pop("n_estimators", 300))
    early = hyper.pop("early_stopping_rounds", None)
    params = {"objective": spec.objective, "tree_method": "hist", "seed": spec.seed, "nthread": 0,
              # XGBoost stops early on the last metric: the one the best model is chosen by.
              "eval_metric": {"regression": ["rmse", "mae"], "binary": ["auc", "logloss"],
                              "multiclass": ["merror", "mlogloss"]}[spec.task]}
    if spec.task == "multiclass":
        params["num_class"] = len(spec.class_names)
    if spec.offset_feature:
        params["base_score"] = 0.0  # the raw output is then exactly the sum of trees; the offset is added after
    if "learning_rate" in hyper:
        params["eta"] = hyper.pop("learning_rate")
    if "reg_lambda" in hyper:
        params["lambda"] = hyper.pop("reg_lambda")
    if "reg_alpha" in hyper:
        params["alpha"] = hyper.pop("reg_alpha")
    params.update(hyper)
    return params, rounds, int(early) if early else None


def predict_raw_plus_offset(booster: xgboost.Booster, x: np.ndarray, features: list[str],
                            offset_feature: str | None) -> np.ndarray:
    """What :meth:`ModelBundle.predict` computes, for a booster not yet in a bundle."""
    out = np.asarray(booster.inplace_predict(x), dtype=np.float64)
    if offset_feature:
        out = out + x[:, features.index(offset_feature)]
    return out


def validation_loss(spec: ModelSpec, booster: xgboost.Booster, x: np.ndarray, y: np.ndarray,
                    features: list[str]) -> float:
    """MAE (regression, offset included) or log loss of the uncalibrated probabilities (classification)."""
    if spec.task == "regression":
        return float(np.mean(np.abs(predict_raw_plus_offset(booster, x, features, spec.offset_feature) - y)))
    from pipelines.models.classification import probabilities

    proba = probabilities(booster.inplace_predict(x, predict_type="margin"))
    return float(-np.mean(np.log(np.clip(proba[np.arange(y.size), y.astype(np.int64)], 1e-15, 1.0))))


def check_labels(spec: ModelSpec, labels: np.ndarray, where: str) -> None:
    """A classifier's labels must be the class indices 0 .. K-1 (raises naming the values found)."""
    if spec.task == "regression":
        return
    values = np.unique(labels[~np.isnan(labels)]) if labels.dtype.kind == "f" else np.unique(labels)
    allowed = set(range(len(spec.class_names)))
    bad = [v for v in values.tolist() if v not in allowed]
    if bad or (labels.dtype.kind == "f" and np.isnan(labels).any()):
        raise ValueError(f"{where}: a {spec.task} objective needs label values in {sorted(allowed)} (classes "
                         f"{spec.class_names}); found {sorted(bad)[:10] or 'missing labels'}")


def train_single(spec: ModelSpec, hyper: dict[str, Any], train: pd.DataFrame, valid: pd.DataFrame,
                 features: list[str], label: str) -> TrainedModel:
    """``xgboost.train`` with the validation set for early stopping; the booster is cut at its best round."""
    import xgboost

    params, rounds, early = _booster_params(spec, hyper)
    started = time.perf_counter()
    x_train = train[features].to_numpy(np.float32)
    x_valid = valid[features].to_numpy(np.float32)
    offset = spec.offset_feature
    dtrain = xgboost.QuantileDMatrix(x_train, train[label].to_numpy(np.float64), feature_names=features,
                                     base_margin=train[offset].to_numpy(np.float32) if offset else None)
    dvalid = xgboost.DMatrix(x_valid, valid[label].to_numpy(np.float64), feature_names=features,
                             base_margin=valid[offset].to_numpy(np.float32) if offset else None)
    history: dict[str, Any] = {}
    booster = xgboost.train(params, dtrain, rounds, evals=[(dvalid, "validation")], early_stopping_rounds=early,
                            evals_result=history, verbose_eval=False)
    best = booster.best_iteration if early else rounds - 1
    booster = booster[: best + 1]
    seconds = time.perf_counter() - started
    return TrainedModel(booster, {**hyper}, best, seconds,
                        validation_loss(spec, booster, x_valid, valid[label].to_numpy(np.float64), features),
                        {k: list(v) for k, v in history.get("validation", {}).items()})


def train_distributed(spark: SparkSession, spec: ModelSpec, hyper: dict[str, Any], train: Any, valid: Any,
                      features: list[str], label: str, valid_pdf: pd.DataFrame) -> TrainedModel:
    """``xgboost.spark.SparkXGBRegressor`` (``SparkXGBClassifier`` for classification) on Spark frames
    (``num_workers`` tasks); validation rows are marked with a column so early stopping sees the same
    validation set as the single-node path."""
    from pyspark.sql import functions as F  # noqa: N812
    from xgboost.spark import SparkXGBClassifier, SparkXGBRegressor

    params, rounds, early = _booster_params(spec, hyper)
    params.pop("nthread", None)
    params.pop("eval_metric", None)
    frame = train.withColumn("__is_valid", F.lit(False)).unionByName(valid.withColumn("__is_valid", F.lit(True)))
    offset = spec.offset_feature
    frame = frame.select(*[F.col(f).cast("float").alias(f) for f in features], F.col(label).cast("double"),
                         "__is_valid", *([F.col(offset).cast("float").alias("__offset")] if offset else []))
    # xgboost 3.2's Spark reader fails on an Arrow batch without validation rows: shuffle so every batch of
    # every partition holds both (seeded, so a re-run sees the same rows in the same order).
    frame = frame.repartition(spec.distributed.num_workers).sortWithinPartitions(F.rand(spec.seed))
    started = time.perf_counter()
    estimator_class = SparkXGBRegressor if spec.task == "regression" else SparkXGBClassifier
    params.pop("num_class", None)  # the classifier counts the classes itself
    metric = {"regression": "mae", "binary": "logloss", "multiclass": "mlogloss"}[spec.task]
    estimator = estimator_class(
        features_col=features, label_col=label, validation_indicator_col="__is_valid",
        **({"base_margin_col": "__offset"} if offset else {}),
        num_workers=spec.distributed.num_workers, n_estimators=rounds, early_stopping_rounds=early,
        eval_metric=metric, random_state=spec.seed, **{k: v for k, v in params.items()
                                                      if k not in ("objective", "seed", "eta", "lambda", "alpha")},
        **({"objective": spec.objective} if spec.task == "regression" else {}),
        learning_rate=params.get("eta", 0.3),
        reg_lambda=params.get("lambda", 1.0), reg_alpha=params.get("alpha", 0.0),
    )
    model = estimator.fit(frame)
    booster = model.get_booster()
    best = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    booster = booster[: best + 1]
    seconds = time.perf_counter() - started
    return TrainedModel(booster, {**hyper}, best, seconds,
                        validation_loss(spec, booster, valid_pdf[features].to_numpy(np.float32),
                                        valid_pdf[label].to_numpy(np.float64), features))


def sample_trials(spec: ModelSpec) -> list[dict[str, Any]]:
    """The search's hyperparameter sets: the spec's values with the searched ones drawn (seeded) from
    their ranges (log-uniform for the learning rate)."""
    rng = random.Random(spec.search.seed)
    trials = []
    for _ in range(spec.search.trials):
        hyper = dict(spec.hyperparameters)
        for name, (low, high) in sorted(spec.search.space.items()):
            kind = HYPERPARAMETERS[name][0]
            if kind is int:
                hyper[name] = rng.randint(int(low), int(high))
            elif name == "learning_rate" and low > 0:
                hyper[name] = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            else:
                hyper[name] = rng.uniform(low, high)
        trials.append(hyper)
    return trials
