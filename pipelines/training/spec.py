"""The model spec of a use case (``model.yaml``): algorithm, hyperparameters, data window, split, search,
calibration, evaluation. Validated when loaded and again with every override (Airflow params), so a bad
training config fails before any data is read, naming the key at fault.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import validation_lines
from pipelines.usecases import SpecError, UseCase

__all__ = ["ALGORITHMS", "HYPERPARAMETERS", "ModelSpec", "TrainingWindow", "load_model_spec"]

ALGORITHMS = ("xgboost", "xgboost_spark")
REGRESSION_OBJECTIVES = ("reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror")
CLASSIFICATION_OBJECTIVES = ("binary:logistic", "multi:softprob")

# name -> (type, minimum, maximum): the XGBoost parameters a spec may set, with sane bounds.
HYPERPARAMETERS: dict[str, tuple[type, float, float]] = {
    "n_estimators": (int, 1, 5000),
    "max_depth": (int, 1, 16),
    "learning_rate": (float, 1e-4, 1.0),
    "subsample": (float, 0.05, 1.0),
    "colsample_bytree": (float, 0.05, 1.0),
    "min_child_weight": (float, 0.0, 1e4),
    "reg_lambda": (float, 0.0, 1e4),
    "reg_alpha": (float, 0.0, 1e4),
    "gamma": (float, 0.0, 1e4),
    "max_bin": (int, 16, 1024),
    "early_stopping_rounds": (int, 1, 1000),
}


def check_hyperparameters(values: dict[str, Any], where: str = "hyperparameters") -> dict[str, Any]:
    """Type- and range-checked copy; unknown names and bad values raise ValueError naming the key."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in HYPERPARAMETERS:
            raise ValueError(f"{where}.{name}: unknown hyperparameter (known: {', '.join(HYPERPARAMETERS)})")
        kind, low, high = HYPERPARAMETERS[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}.{name}: expected a number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise ValueError(f"{where}.{name}: expected an integer, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{where}.{name}: {value!r} is outside [{low:g}, {high:g}]")
        out[name] = kind(value)
    return out


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    start: date = Field(description="first day of the training data window (UTC)")
    end: date = Field(description="day after the last one (exclusive)")
    validation_days: int = Field(30, ge=1, description="days before the holdout: early stopping, calibration")
    holdout_days: int = Field(31, ge=1, description="the window's last days: final evaluation only")
    min_rows: int = Field(1000, ge=1)
    include_feedback: bool = Field(False, description="also learn from the labelled served predictions of the "
                                   "window (the feedback loop's outcomes, with point-in-time features)")


class SearchSpec(_Spec):
    trials: int = Field(0, ge=0, le=50, description="random-search trials (0 = train the spec's values)")
    seed: int = 7
    space: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (low, high) in value.items():
            check_hyperparameters({name: low}, "search.space")
            check_hyperparameters({name: high}, "search.space")
            if low > high:
                raise ValueError(f"search.space.{name}: low {low} > high {high}")
        return value


class CalibrationSpec(_Spec):
    levels: list[float] = Field(default_factory=lambda: [0.8, 0.9], min_length=1,
                                description="nominal levels: prediction intervals (regression) or prediction "
                                            "sets (classification)")
    probability: Literal["isotonic", "sigmoid", "temperature", "none"] | None = Field(
        None, description="classification: how probabilities are calibrated on validation (default: isotonic "
                          "for binary, temperature for multi-class)")
    segment_by: str | None = None
    min_segment_rows: int = Field(300, ge=10)

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        for level in value:
            if not 0 < level < 1:
                raise ValueError(f"interval level {level} is not in (0, 1)")
        return value


class EvaluationSpec(_Spec):
    segments: dict[str, str] = Field(default_factory=dict, description="segment name -> column")
    baselines: dict[str, str] = Field(default_factory=dict, description="baseline name -> feature it predicts with")
    must_beat_baselines: bool = True


class DistributedSpec(_Spec):
    num_workers: int = Field(2, ge=1, le=256)


class ModelSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
    algorithm: Literal["xgboost", "xgboost_spark"] = "xgboost"
    objective: Literal["reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "binary:logistic",
                       "multi:softprob"] = "reg:squarederror"
    classes: list[str] = Field(default_factory=list, description="classification: the class names of label "
                               "values 0, 1, ... (binary default: ['0', '1'])")
    seed: int = 7
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec
    search: SearchSpec = SearchSpec()
    calibration: CalibrationSpec = CalibrationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    distributed: DistributedSpec = DistributedSpec()
    fallback_features: list[str] = Field(default_factory=list, max_length=8)
    offset_feature: str | None = Field(None, description="the model learns label - this feature (base margin)")
    extra_columns: list[str] = Field(default_factory=list, description="label-source columns kept for segments")

    @field_validator("hyperparameters")
    @classmethod
    def _hyperparameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_hyperparameters(value)

    @model_validator(mode="after")
    def _task(self) -> ModelSpec:
        if self.task == "regression":
            if self.classes:
                raise ValueError(f"classes: only for classification objectives ({', '.join(CLASSIFICATION_OBJECTIVES)})")
            if self.calibration.probability is not None:
                raise ValueError("calibration.probability: only for classification objectives")
            return self
        if self.offset_feature:
            raise ValueError("offset_feature: regression only (a classifier's margin has no feature to add)")
        bad = [c for c in self.classes if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", c)]
        if bad:
            raise ValueError(f"classes: {bad} are not names of letters, digits and _ (at most 64; they name "
                             "batch columns such as probability_<class>)")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: names repeat: {self.classes}")
        if self.task == "binary" and self.classes and len(self.classes) != 2:
            raise ValueError(f"classes: a binary objective has 2 classes, got {len(self.classes)}")
        if self.task == "multiclass" and len(self.classes) < 3:
            raise ValueError("classes: multi:softprob needs the names of its 3 or more classes (label values 0, 1, "
                             "...); a 2-class problem takes binary:logistic")
        method = self.calibration.probability
        if self.task == "binary" and method == "temperature":
            raise ValueError("calibration.probability: 'temperature' is for multi-class; binary takes isotonic, "
                             "sigmoid or none")
        if self.task == "multiclass" and method in ("isotonic", "sigmoid"):
            raise ValueError(f"calibration.probability: '{method}' is for binary; multi-class takes temperature or "
                             "none")
        if "prior" in self.evaluation.baselines:
            raise ValueError("evaluation.baselines.prior: a built-in baseline of classification models (the "
                             "training rows' class rates); name yours otherwise")
        return self

    @property
    def task(self) -> Literal["regression", "binary", "multiclass"]:
        """What the objective predicts: a number, one of two classes or one of several."""
        if self.objective.startswith("binary:"):
            return "binary"
        if self.objective.startswith("multi:"):
            return "multiclass"
        return "regression"

    @property
    def class_names(self) -> list[str]:
        """The classes of a classifier, in label order (empty for regression)."""
        if self.task == "regression":
            return []
        return list(self.classes) or ["0", "1"]

    @property
    def probability_method(self) -> str:
        """The probability calibration of a classifier (``none`` for regression)."""
        if self.task == "regression":
            return "none"
        return self.calibration.probability or ("isotonic" if self.task == "binary" else "temperature")

    @model_validator(mode="after")
    def _window(self) -> ModelSpec:
        if self.data.start >= self.data.end:
            raise ValueError(f"data: empty window (start {self.data.start} is not before end {self.data.end})")
        days = (self.data.end - self.data.start).days
        if self.data.validation_days + self.data.holdout_days >= days:
            raise ValueError(f"data: validation_days + holdout_days ({self.data.validation_days} + "
                             f"{self.data.holdout_days}) leave no training days in a {days}-day window")
        return self

    @property
    def window(self) -> TrainingWindow:
        return TrainingWindow.of(self.data)

    def with_overrides(self, overrides: dict[str, Any] | None) -> ModelSpec:
        """A copy with overrides applied (``hyperparameters`` merged, the rest replaced), re-validated."""
        if not overrides:
            return self
        data = self.model_dump()
        for key, value in overrides.items():
            if key in ("hyperparameters", "data", "search", "calibration", "evaluation", "distributed") \
                    and isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return ModelSpec.model_validate(data)


class TrainingWindow(BaseModel):
    model_config = ConfigDict(frozen=True)
    start: datetime
    validation_start: datetime
    holdout_start: datetime
    end: datetime

    @classmethod
    def of(cls, data: DataSpec) -> TrainingWindow:
        def at(d: date) -> datetime:
            return datetime(d.year, d.month, d.day, tzinfo=UTC)

        end = at(data.end)
        holdout = end - timedelta(days=data.holdout_days)
        return cls(start=at(data.start), validation_start=holdout - timedelta(days=data.validation_days),
                   holdout_start=holdout, end=end)


def load_model_spec(usecase: UseCase, overrides: dict[str, Any] | None = None,
                    feature_names: list[str] | None = None, key_columns: list[str] | None = None) -> ModelSpec:
    """Validate ``model.yaml`` (plus overrides); with ``feature_names``, every referenced feature must exist
    (segments may also name ``key_columns``, the entity keys a training set carries)."""
    source = str(usecase.path / "model.yaml")
    raw = (usecase.extra.get("model") or {}).get("model")
    if not raw:
        raise SpecError(f"{source}: the use case declares no model (model: null)")
    try:
        spec = ModelSpec.model_validate({"name": usecase.name, **raw})
        if overrides:
            source += " with overrides " + ", ".join(sorted(overrides))
            spec = spec.with_overrides(overrides)
    except ValidationError as exc:
        raise SpecError("\n".join([f"invalid model spec {source}:", *validation_lines(exc)])) from None
    if feature_names is not None:
        known = set(feature_names)
        refs = {"calibration.segment_by": [spec.calibration.segment_by] if spec.calibration.segment_by else [],
                "offset_feature": [spec.offset_feature] if spec.offset_feature else [],
                "fallback_features": spec.fallback_features,
                "evaluation.baselines": list(spec.evaluation.baselines.values())}
        for where, names in refs.items():
            for name in names:
                if name not in known:
                    raise SpecError(f"{source}: {where}: '{name}' is not a feature of the use case "
                                    f"(features: {', '.join(feature_names)})")
        extra = set(spec.extra_columns) | set(key_columns or ())
        for seg, column in spec.evaluation.segments.items():
            if column not in known and column not in extra:
                raise SpecError(f"{source}: evaluation.segments.{seg}: '{column}' is neither a feature, an entity "
                                f"key nor one of extra_columns {sorted(spec.extra_columns)}")
    return spec
