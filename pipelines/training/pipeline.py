"""One training run: split -> train (or search) -> evaluate on the holdout -> calibrate -> bundle -> report ->
MLflow (run, model, registered version).

Registration is the last step and a single call that carries the lineage and the initial stage as tags, so a
failure anywhere before it leaves no registered version; the run itself is then marked FAILED. A retry of
the same orchestrator run finds the version it already registered (tag ``atelier.run_id``) instead of
registering a second one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.featurestore.spec import FeatureSet
from pipelines.lake.tables import safe_name
from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle, feature_spec_hash
from pipelines.models.classification import (
    LogisticFallback,
    PredictionSets,
    ProbabilityCalibration,
    probabilities,
)
from pipelines.models.registry import (
    BUNDLE_ARTIFACT_PATH,
    STAGE_TAG,
    RegistryUnavailable,
    client,
    mlflow_errors,
    registry_error,
)
from pipelines.training.dataset import split_by_time
from pipelines.training.evaluate import (
    classification_metrics,
    coverage,
    error_metrics,
    segment_metrics,
    set_metrics,
)
from pipelines.training.spec import ModelSpec
from pipelines.training.trainer import (
    TrainedModel,
    check_labels,
    predict_raw_plus_offset,
    sample_trials,
    train_distributed,
    train_single,
)
from pipelines.usecases import SpecError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from pipelines.config import Settings
    from pipelines.usecases import UseCase

log = logging.getLogger("atelier.training")

__all__ = ["TrainingResult", "experiment_name", "find_registered", "run_training", "train_usecase"]

RUN_ID_TAG = "atelier.run_id"
AUDIT_TAG_PREFIX = "atelier.audit."


@dataclass
class TrainingResult:
    model_name: str
    version: str
    mlflow_run_id: str
    metrics: dict[str, float]
    report_path: Path
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def experiment_name(usecase: str) -> str:
    return f"atelier/{usecase}"


def find_registered(c: Any, model_name: str, run_id: str) -> Any | None:
    """The version a run registered, if any. Also the first call of a run: MLflow down fails it here, fast."""
    from mlflow.exceptions import MlflowException

    try:
        found = c.search_model_versions(f"name = '{model_name}' and tag.`{RUN_ID_TAG}` = '{run_id}'")
    except MlflowException as exc:
        raise registry_error(c.tracking_uri, exc) from None
    return max(found, key=lambda v: int(v.version)) if found else None


def _output_dir(settings: Settings, usecase: UseCase, run_id: str) -> Path:
    """Where a run keeps its bundle, report and segment metrics."""
    return settings.home_path / "reports" / usecase.name / "training" / safe_name(run_id)


def _reused(settings: Settings, c: Any, usecase: UseCase, run_id: str, mv: Any) -> TrainingResult:
    """The result of a run that already registered ``mv`` (a retried task): nothing is trained again."""
    log.info("run %s already registered %s version %s: reusing it", run_id, mv.name, mv.version)
    return TrainingResult(mv.name, str(mv.version), mv.run_id, dict(c.get_run(mv.run_id).data.metrics),
                          _output_dir(settings, usecase, run_id) / "report.html", reused=True)


def run_training(settings: Settings, usecase: UseCase, features: FeatureSet, spec: ModelSpec, run_id: str,
                 frame: pd.DataFrame, training_set_version: str, gx_summary: str = "",
                 spark: SparkSession | None = None, triggered_by: str = "model_train") -> TrainingResult:
    """Train, evaluate, calibrate and register one model from a validated training set."""
    import mlflow
    from mlflow.exceptions import MlflowException

    timings: dict[str, float] = {}
    started = time.perf_counter()
    c = client(settings)
    with mlflow_errors(settings):
        existing = find_registered(c, spec.name, run_id)
        mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
        experiment = mlflow.set_experiment(experiment_name(usecase.name))
    if existing is not None:
        return _reused(settings, c, usecase, run_id, existing)

    label = features.label
    assert label is not None
    names = features.feature_names
    non_numeric = [n for n in names if not np.issubdtype(frame[n].dtype, np.number)
                   and frame[n].dtype != bool]
    if non_numeric:
        raise ValueError(f"XGBoost needs numeric features; not numeric: {non_numeric}")
    train, valid, holdout = split_by_time(frame, label.event_time, spec.window)
    timings["split_s"] = time.perf_counter() - started

    with mlflow.start_run(run_name=f"train-{safe_name(run_id)}", experiment_id=experiment.experiment_id,
                          tags={RUN_ID_TAG: run_id, "atelier.usecase": usecase.name,
                                "atelier.triggered_by": triggered_by}) as run:
        try:
            validation_metric = "validation_mae" if spec.task == "regression" else "validation_log_loss"
            for part, rows in (("train", train), ("validation", valid), ("holdout", holdout)):
                check_labels(spec, rows[label.column].to_numpy(), f"label '{label.column}' ({part} rows)")
            trials = sample_trials(spec) if spec.search.trials else [dict(spec.hyperparameters)]
            best: TrainedModel | None = None
            train_seconds = 0.0
            for i, hyper in enumerate(trials):
                nested = spec.search.trials > 0
                ctx = mlflow.start_run(run_name=f"trial-{i}", nested=True) if nested else None
                try:
                    model = _train(spark, spec, hyper, train, valid, names, label.column)
                    if ctx is not None:
                        mlflow.log_params({k: v for k, v in hyper.items()})
                        mlflow.log_metrics({validation_metric: model.validation_loss,
                                            "best_iteration": model.best_iteration, "train_seconds": model.seconds})
                finally:
                    if ctx is not None:
                        mlflow.end_run()
                train_seconds += model.seconds
                if best is None or model.validation_loss < best.validation_loss:
                    best = model
            assert best is not None
            timings["train_s"] = train_seconds
            timings["search_trials"] = len(trials)

            evaluation = (_evaluate_regression if spec.task == "regression" else _evaluate_classification)(
                spec, best, train, valid, holdout, names, label.column, label.event_time)
            metrics = evaluation.metrics
            metrics[validation_metric] = best.validation_loss
            metrics["best_iteration"] = float(best.best_iteration)
            metrics["train_seconds"] = best.seconds
            metrics.update({"rows_train": float(len(train)), "rows_validation": float(len(valid)),
                            "rows_holdout": float(len(holdout))})
            segments = segment_metrics(holdout, spec.evaluation.segments, label.column, evaluation.predictors,
                                       metrics=error_metrics if spec.task == "regression" else classification_metrics)
            y_hold = holdout[label.column].to_numpy(np.float64)

            ranges = {n: (float(np.quantile(train[n], 0.001)), float(np.quantile(train[n], 0.999))) for n in names}
            fallback = evaluation.fallback
            spec_text = (usecase.path / "features.yaml").read_text()
            lineage = {"run_id": run_id, "mlflow_run_id": run.info.run_id, "training_set_version": training_set_version,
                       "window": spec.window.model_dump(mode="json"), "rows": {
                           "train": len(train), "validation": len(valid), "holdout": len(holdout)},
                       "gx": gx_summary.splitlines()[0] if gx_summary else "", "algorithm": spec.algorithm, "trained_at": datetime.now(UTC).isoformat()}
            from pipelines.training.dataset import feedback_lineage

            learnt = feedback_lineage(settings, usecase.name, training_set_version)
            if learnt is not None:
                lineage["feedback"] = learnt
            defaults = {f.name: f.default for v in features.batch_views for f in v.features}
            bundle = ModelBundle(usecase.name, spec.name, label.column, list(names), defaults, evaluation.calibration,
                                 ranges, fallback, feature_spec_hash(spec_text), lineage,
                                 offset_feature=spec.offset_feature, task=spec.task, classes=spec.class_names,
                                 probability=evaluation.probability)
            out_dir = _output_dir(settings, usecase, run_id)
            bundle_dir = bundle.save(out_dir / "bundle", booster=best.booster)

            champion = _champion_on_holdout(settings, c, spec, holdout, y_hold)
            if champion is not None:
                # The champion scored on this run's holdout: what the promotion rules compare against.
                metrics.update({f"champion_{k}": v for k, v in champion.items()})
            from pipelines.training.report import write_report

            report = write_report(out_dir / "report.html", usecase=usecase.name, model_name=spec.name,
                                  run_id=run_id, metrics=metrics, champion=champion, segments=segments,
                                  actual=y_hold, predicted=evaluation.predicted, intervals=evaluation.intervals,
                                  importance=best.booster.get_score(importance_type="gain"),
                                  history=best.history, lineage=lineage, baselines=evaluation.baselines,
                                  task=spec.task, classes=spec.class_names, sets=evaluation.sets)
            (out_dir / "segments.json").write_text(json.dumps(segments, indent=1))
            # The drift reference: what the model learnt from and how it did on the holdout.
            from pipelines.monitoring.reference import ARTIFACT_PATH, as_served, write_reference

            reference = write_reference(
                out_dir / "reference", train, holdout, evaluation.reference_prediction, label.column,
                evaluation.intervals, _reference_rows(usecase, features),
                served=lambda rows: as_served(rows, features, label.event_time),
                predict=lambda rows: evaluation.point(rows[names].to_numpy(np.float32)))
            timings["evaluate_s"] = time.perf_counter() - started - timings["split_s"] - best.seconds

            # MLflow: params, metrics, artifacts, the model; registration last.
            mlflow.log_params({**{f"hp.{k}": v for k, v in best.params.items()}, "algorithm": spec.algorithm,
                               "objective": spec.objective, "window_start": spec.window.start.date().isoformat(),
                               "window_end": spec.window.end.date().isoformat(),
                               "validation_start": spec.window.validation_start.date().isoformat(),
                               "holdout_start": spec.window.holdout_start.date().isoformat(),
                               "training_set_version": training_set_version,
                               "feature_spec_hash": bundle.feature_spec_hash, "search_trials": spec.search.trials,
                               "feedback_rows": (learnt or {}).get("rows", 0)})
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(bundle_dir), BUNDLE_ARTIFACT_PATH)
            mlflow.log_artifact(str(usecase.path / "features.yaml"), "atelier/spec")
            mlflow.log_artifact(str(usecase.path / "model.yaml"), "atelier/spec")
            mlflow.log_artifact(str(report), "atelier/report")
            mlflow.log_artifact(str(out_dir / "segments.json"), "atelier/report")
            mlflow.log_artifacts(str(reference), ARTIFACT_PATH)
            if gx_summary:
                mlflow.log_text(gx_summary, "atelier/lineage/training_set_validation.txt")
            mlflow.log_dict(lineage, "atelier/lineage/lineage.json")
            model_info = _log_model(best.booster, holdout[names].head(5), spec.offset_feature)
            timings["total_s"] = time.perf_counter() - started
            now = datetime.now(UTC).isoformat(timespec="seconds")
            audit = [{"from": None, "to": "training", "by": triggered_by, "at": now,
                      "why": f"training run {run_id} started"},
                     {"from": "training", "to": "evaluation", "by": triggered_by, "at": now,
                      "why": f"holdout evaluated: {evaluation.summary}"}]
            tags = {RUN_ID_TAG: run_id, STAGE_TAG: "evaluation", "atelier.usecase": usecase.name,
                    "atelier.training_set_version": training_set_version,
                    "atelier.feature_spec_hash": bundle.feature_spec_hash, "atelier.algorithm": spec.algorithm,
                    **{f"{AUDIT_TAG_PREFIX}{i:04d}": json.dumps(a) for i, a in enumerate(audit)}}
            again = find_registered(c, spec.name, run_id)
            if again is None:
                _ensure_registered_model(c, spec.name, usecase)
                mv = c.create_model_version(spec.name, model_info.model_uri, run_id=run.info.run_id, tags=tags,
                                            model_id=model_info.model_id)
            else:
                mv = again
        except MlflowException as exc:
            mlflow.set_tag("atelier.failure", str(exc).splitlines()[0][:500])
            mlflow.end_run("FAILED")
            raise registry_error(settings, exc) from None
        except BaseException:
            mlflow.end_run("FAILED")
            raise
    result = TrainingResult(spec.name, str(mv.version), run.info.run_id, metrics, report, timings=timings)
    log.info("registered %s version %s (run %s): %s", spec.name, mv.version, run.info.run_id, evaluation.summary)
    if spec.evaluation.must_beat_baselines:
        key = "mae" if spec.task == "regression" else "log_loss"
        beaten = [b for b in evaluation.baselines if metrics[key] >= metrics[f"baseline_{b}_{key}"]]
        if beaten:
            # Registered (it is evidence) but the gate's rules will keep it in evaluation.
            log.warning("the model does not beat baseline(s) %s on the holdout", beaten)
    return result


@dataclass
class _Evaluation:
    """What the holdout evaluation of one task gives the rest of the run."""

    metrics: dict[str, float]
    predictors: dict[str, np.ndarray]  # the model and each baseline on the holdout (segment metrics)
    baselines: list[str]
    calibration: Calibration | PredictionSets
    fallback: LinearFallback | LogisticFallback
    predicted: np.ndarray  # regression: predictions; classification: (n, K) probabilities
    reference_prediction: np.ndarray  # one number per holdout row for the drift reference
    point: Any  # matrix -> one number per row, as reference_prediction
    summary: str
    intervals: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sets: dict[float, np.ndarray] = field(default_factory=dict)
    probability: ProbabilityCalibration | None = None


def _evaluate_regression(spec: ModelSpec, best: TrainedModel, train: pd.DataFrame, valid: pd.DataFrame,
                         holdout: pd.DataFrame, names: list[str], label: str, event_time: str) -> _Evaluation:
    """Error metrics, split-conformal intervals (residuals on validation), baselines and the linear fallback."""
    y_hold = holdout[label].to_numpy(np.float64)
    pred_hold = predict_raw_plus_offset(best.booster, holdout[names].to_numpy(np.float32), names, spec.offset_feature)
    pred_valid = predict_raw_plus_offset(best.booster, valid[names].to_numpy(np.float32), names, spec.offset_feature)
    seg = spec.calibration.segment_by
    calibration = Calibration.fit(valid[label].to_numpy(np.float64) - pred_valid, spec.calibration.levels,
                                  valid[seg].to_numpy() if seg else None, seg, spec.calibration.min_segment_rows)
    metrics = error_metrics(y_hold, pred_hold)
    predictors = {"model": pred_hold}
    for base, feature in spec.evaluation.baselines.items():
        predictors[f"baseline_{base}"] = holdout[feature].to_numpy(np.float64)
        for k, v in error_metrics(y_hold, predictors[f"baseline_{base}"]).items():
            metrics[f"baseline_{base}_{k}"] = v
    intervals = {}
    for level in calibration.levels:
        lo, hi = calibration.interval(pred_hold, level, holdout[seg].to_numpy() if seg else None)
        intervals[level] = (lo, hi)
        pct = round(level * 100)
        metrics[f"coverage_{pct}"] = coverage(y_hold, lo, hi)
        metrics[f"interval_width_{pct}"] = float(np.mean(hi - lo))
    fallback = LinearFallback.fit(train, spec.fallback_features, train[label].to_numpy(np.float64)) \
        if spec.fallback_features else LinearFallback(float(train[label].mean()), {})
    top = max(calibration.levels)
    summary = f"mae {metrics['mae']:.3f}, coverage_{round(top * 100)} {metrics[f'coverage_{round(top * 100)}']:.3f}"
    return _Evaluation(metrics, predictors, list(spec.evaluation.baselines), calibration, fallback, pred_hold,
                       pred_hold, lambda x: predict_raw_plus_offset(best.booster, x, names, spec.offset_feature),
                       summary, intervals=intervals)


def _evaluate_classification(spec: ModelSpec, best: TrainedModel, train: pd.DataFrame, valid: pd.DataFrame,
                             holdout: pd.DataFrame, names: list[str], label: str, event_time: str) -> _Evaluation:
    """Probability metrics, calibration and conformal prediction sets (both fitted on validation; the sets'
    scores are the uncalibrated probabilities, ``pipelines/models/classification.py``), the prior and the
    spec's baselines, the logistic fallback."""
    k = len(spec.class_names)
    y_train = train[label].to_numpy().astype(np.int64)
    y_valid = valid[label].to_numpy().astype(np.int64)
    y_hold = holdout[label].to_numpy().astype(np.int64)

    def margins(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(best.booster.inplace_predict(frame[names].to_numpy(np.float32), predict_type="margin"),
                          dtype=np.float64)

    m_valid, m_hold = margins(valid), margins(holdout)
    probability = ProbabilityCalibration.fit(m_valid, y_valid, spec.probability_method)
    seg = spec.calibration.segment_by
    sets = PredictionSets.fit(probabilities(m_valid), y_valid, spec.calibration.levels,
                              valid[seg].to_numpy() if seg else None, seg, spec.calibration.min_segment_rows)
    p_hold = probability.apply(m_hold)
    metrics = classification_metrics(y_hold, p_hold)
    prior = np.clip(np.bincount(y_train, minlength=k) / max(y_train.size, 1), 1e-6, 1.0)
    predictors = {"model": p_hold, "baseline_prior": np.tile(prior / prior.sum(), (len(holdout), 1))}
    for base, feature in spec.evaluation.baselines.items():
        score = holdout[feature].to_numpy(np.float64)
        if np.nanmin(score) < 0 or np.nanmax(score) > 1:
            raise ValueError(f"evaluation.baselines.{base}: feature '{feature}' is not a probability (values in "
                             f"[{np.nanmin(score):g}, {np.nanmax(score):g}]); a classification baseline predicts the "
                             "positive class with a value in [0, 1] (a 0/1 rule, a rate)")
        predictors[f"baseline_{base}"] = np.column_stack([1.0 - score, score])
    baselines = ["prior", *spec.evaluation.baselines]
    for base in baselines:
        for key, value in classification_metrics(y_hold, predictors[f"baseline_{base}"]).items():
            metrics[f"baseline_{base}_{key}"] = value
    members = {}
    seg_hold = holdout[seg].to_numpy() if seg else None
    for level in sets.levels:
        members[level] = sets.members(probabilities(m_hold), level, seg_hold, p_hold.argmax(axis=1))
        pct = round(level * 100)
        metrics[f"coverage_{pct}"], metrics[f"set_size_{pct}"] = set_metrics(y_hold, members[level])
    fallback = LogisticFallback.fit(train, spec.fallback_features, y_train, k)

    def point(x: np.ndarray) -> np.ndarray:
        proba = probability.apply(best.booster.inplace_predict(x, predict_type="margin"))
        return proba[:, 1] if k == 2 else proba.argmax(axis=1).astype(np.float64)

    top = max(sets.levels)
    summary = (f"log_loss {metrics['log_loss']:.4f}, auc {metrics['auc']:.4f}, "
               f"coverage_{round(top * 100)} {metrics[f'coverage_{round(top * 100)}']:.3f}")
    reference = p_hold[:, 1] if k == 2 else p_hold.argmax(axis=1).astype(np.float64)
    return _Evaluation(metrics, predictors, baselines, sets, fallback, p_hold, reference, point, summary,
                       sets=members, probability=probability)


def _train(spark: SparkSession | None, spec: ModelSpec, hyper: dict[str, Any], train: pd.DataFrame,
           valid: pd.DataFrame, names: list[str], label: str) -> TrainedModel:
    if spec.algorithm == "xgboost":
        return train_single(spec, hyper, train, valid, names, label)
    if spark is None:
        raise ValueError("algorithm xgboost_spark needs a Spark session (run it as the Spark job)")
    cols = [*names, label]
    return train_distributed(spark, spec, hyper, spark.createDataFrame(train[cols]),
                             spark.createDataFrame(valid[cols]), names, label, valid)


def _champion_on_holdout(settings: Settings, c: Any, spec: ModelSpec, holdout: pd.DataFrame,
                         actual: np.ndarray) -> dict[str, float] | None:
    """The current champion's metrics on this holdout (None without a usable champion: none yet, or one of
    another task or other classes)."""
    from mlflow.exceptions import MlflowException

    from pipelines.models.registry import ModelNotFound, load_bundle

    try:
        champion = load_bundle(settings, spec.name, alias="champion")
    except (ModelNotFound, MlflowException, RegistryUnavailable):
        return None
    missing = [f for f in champion.feature_names if f not in holdout.columns]
    if missing:
        log.warning("champion version %s needs features this training set lacks (%s): not compared",
                    champion.version, missing)
        return None
    if champion.task != spec.task or champion.classes != spec.class_names:
        log.warning("champion version %s is a %s model %s; this run trains %s %s: not compared", champion.version,
                    champion.task, champion.classes, spec.task, spec.class_names)
        return None
    matrix = champion.matrix(holdout)
    if champion.is_classifier:
        return {**classification_metrics(actual, champion.predict_proba(matrix)), "version": float(champion.version or 0)}
    return {**error_metrics(actual, champion.predict(matrix)), "version": float(champion.version or 0)}


def _reference_rows(usecase: UseCase, features: FeatureSet) -> int:
    """The monitoring spec's reference size, or the default when the use case has no monitoring."""
    from pipelines.monitoring.drift_spec import load_monitoring_spec
    from pipelines.monitoring.reference import DEFAULT_MAX_ROWS

    try:
        return load_monitoring_spec(usecase, features).reference_max_rows
    except SpecError:
        return DEFAULT_MAX_ROWS


def _ensure_registered_model(c: Any, name: str, usecase: UseCase) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, tags={"atelier.usecase": usecase.name},
                                      description=usecase.description if hasattr(usecase, "description") else "")
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise


def _log_model(booster: Any, example: pd.DataFrame, offset_feature: str | None) -> Any:
    """The booster as an MLflow model (signature, input example). With an offset feature its output is the raw
    sum of trees: the metadata says what to add (Atelier's bundle under atelier/bundle does it)."""
    import mlflow.xgboost
    from mlflow.models import infer_signature

    example = example.astype(np.float32)
    signature = infer_signature(example, booster.inplace_predict(example.to_numpy()))
    metadata = {"atelier_offset_feature": offset_feature} if offset_feature else None
    return mlflow.xgboost.log_model(booster, name="model", signature=signature, input_example=example,
                                    model_format="json", metadata=metadata)


def train_usecase(settings: Settings, spark: SparkSession, usecase: UseCase, run_id: str,
                  overrides: dict[str, Any] | None = None, triggered_by: str = "cli") -> TrainingResult:
    """Everything in one process (CLI, tests): training set -> validation -> training -> registration.
    The DAG runs the same steps as separate tasks."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.training.dataset import build_training_set, read_training_set
    from pipelines.training.spec import load_model_spec

    features = load_feature_set(usecase)
    spec = load_model_spec(usecase, overrides, features.feature_names, features.key_columns)
    c = client(settings)
    existing = find_registered(c, spec.name, run_id)
    if existing is not None:
        return _reused(settings, c, usecase, run_id, existing)
    window = spec.window
    _, _, report = build_training_set(spark, settings, features, spec, run_id, window.start, window.end)
    frame, version = read_training_set(settings, usecase.name, run_id)
    return run_training(settings, usecase, features, spec, run_id, frame, version, report.to_text(), spark=spark,
                        triggered_by=triggered_by)
