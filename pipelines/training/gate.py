"""Checks before training starts, and the promotion gate after it (what model_train's Python tasks call)."""

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

__all__ = ["check_training_config", "metric_names", "overrides_from_params", "promotion_rules", "run_gate"]

METRICS = ("mae", "rmse", "median_ae", "p90_ae", "bias", "rows")


def metric_names(spec: ModelSpec) -> set[str]:
    """Every metric a training run logs (what rules may reference)."""
    names = set(METRICS) | {"validation_mae", "best_iteration", "train_seconds", "rows_train", "rows_validation",
                            "rows_holdout"}
    names |= {f"champion_{m}" for m in METRICS} | {"champion_version"}
    for base in spec.evaluation.baselines:
        names |= {f"baseline_{base}_{m}" for m in METRICS}
    for level in spec.calibration.levels:
        names |= {f"coverage_{round(level * 100)}", f"interval_width_{round(level * 100)}"}
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
    lake = Lake(settings.lake_root)
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


def run_gate(settings: Settings, usecase: UseCase, run_id: str, overrides: dict[str, Any] | None = None,
             by: str = "model_train") -> dict[str, Any]:
    """Apply the use case's promotion rules to the version this run registered."""
    from pipelines.lifecycle.registry import apply_rules
    from pipelines.models.registry import ModelNotFound, client
    from pipelines.training.pipeline import RUN_ID_TAG, experiment_name, find_registered

    features = load_feature_set(usecase)
    spec = load_model_spec(usecase, overrides, features.feature_names, features.key_columns)
    rules = promotion_rules(usecase, spec)
    c = client(settings)
    mv = find_registered(c, spec.name, run_id)
    if mv is None:
        raise ModelNotFound(f"run '{run_id}' registered no version of '{spec.name}' (tag {RUN_ID_TAG})")
    outcome = apply_rules(settings, spec.name, mv.version, rules, by=by, mlflow_client=c)
    experiment = c.get_experiment_by_name(experiment_name(usecase.name))
    base = settings.mlflow.tracking_uri.rstrip("/")
    run_url = f"{base}/#/experiments/{experiment.experiment_id if experiment else 0}/runs/{mv.run_id}"
    report_url = f"{run_url}/artifacts/atelier/report/report.html"
    return {"usecase": usecase.name, "model": spec.name, "version": outcome.version, "from": outcome.start_stage,
            "to": outcome.final_stage, "mlflow_run_url": run_url, "production": outcome.promoted_to_production, "summary": outcome.summary(), "report_url": report_url,
            "moves": outcome.moves}
