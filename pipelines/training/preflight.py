"""Checks before training starts (model_train's check_config task, and the training jobs again): the Airflow
params as model spec overrides, the spec, its promotion rules, and data in the lake inside the window."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.featurestore.spec import FeatureSet, load_feature_set
from pipelines.lake.tables import Lake
from pipelines.lifecycle.rules import Rule, load_rules
from pipelines.training.dataset import EmptyTrainingWindow
from pipelines.training.spec import ModelSpec, load_model_spec
from pipelines.usecases import SpecError, UseCase

if TYPE_CHECKING:
    from pipelines.config import Settings

__all__ = ["check_training_config", "metric_names", "overrides_from_params", "promotion_rules"]


def metric_names(spec: ModelSpec) -> set[str]:
    """Every metric a training run logs (what rules may reference): error metrics for regression, probability
    metrics and prediction-set coverage for classification."""
    from pipelines.training.evaluate import CLASSIFICATION_METRICS, REGRESSION_METRICS

    classifier = spec.task != "regression"
    metrics = CLASSIFICATION_METRICS if classifier else REGRESSION_METRICS
    names = set(metrics) | {"validation_log_loss" if classifier else "validation_mae", "best_iteration",
                            "train_seconds", "rows_train", "rows_validation", "rows_holdout"}
    names |= {f"champion_{m}" for m in metrics} | {"champion_version"}
    for base in [*spec.evaluation.baselines, *(["prior"] if classifier else [])]:
        names |= {f"baseline_{base}_{m}" for m in metrics}
    for level in spec.calibration.levels:
        pct = round(level * 100)
        names |= {f"coverage_{pct}", f"set_size_{pct}" if classifier else f"interval_width_{pct}"}
    return names


def promotion_rules(usecase: UseCase, spec: ModelSpec) -> list[Rule]:
    return load_rules(usecase.extra.get("rules"), str(usecase.path / "rules.yaml"), metric_names(spec))


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Airflow params -> model spec overrides. Empty values mean "as the spec says"."""
    out: dict[str, Any] = {}
    data = {k: params[k] for k in ("start", "end", "validation_days", "holdout_days") if params.get(k)}
    if data:
        out["data"] = data
    hyper = params.get("hyperparameters")
    if isinstance(hyper, str) and hyper.strip():
        try:
            hyper = json.loads(hyper)
        except json.JSONDecodeError as exc:
            raise SpecError(f"param hyperparameters: not a JSON object ({exc})") from None
    if hyper:
        if not isinstance(hyper, dict):
            raise SpecError(f"param hyperparameters: expected an object, got {type(hyper).__name__}")
        out["hyperparameters"] = hyper
    if params.get("algorithm"):
        out["algorithm"] = params["algorithm"]
    elif params.get("distributed") is True:
        out["algorithm"] = "xgboost_spark"
    if params.get("trials") not in (None, ""):
        out["search"] = {"trials": params["trials"]}
    return out


def check_training_config(settings: Settings, usecase: UseCase, overrides: dict[str, Any]
                          ) -> tuple[FeatureSet, ModelSpec]:
    """Everything that can be checked before reading data: spec + overrides, rules, and that the lake's label
    table has partitions inside the window. Raises SpecError / RuleError / EmptyTrainingWindow."""
    features = load_feature_set(usecase)
    if features.label is None:
        raise SpecError(f"{usecase.path / 'features.yaml'}: no label declared; nothing to train on")
    spec = load_model_spec(usecase, overrides, features.feature_names, features.key_columns)
    promotion_rules(usecase, spec)
    lake = Lake.from_settings(settings)
    info = lake.info(features.label.source)
    window = spec.window
    if info.partition_by:
        column = info.partition_by[0]
        folders = Path(lake.path(features.label.source)).glob(f"{column}=*")
        days = [f.name.split("=", 1)[1] for f in folders if _in_window(f.name.split("=", 1)[1], window.start,
                                                                         window.end)]
        if not days:
            raise EmptyTrainingWindow(
                f"the data window [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}) has no data in lake table "
                f"'{features.label.source}' (partitioned by {column})")
    return features, spec


def _in_window(value: str, start: datetime, end: datetime) -> bool:
    try:
        day = datetime.fromisoformat(value).date()
    except ValueError:
        return True  # not a date partition: cannot tell, the training-set step will
    return start.date() <= day < end.date() or (day == end.date() and end.time() != datetime.min.time())
