"""The feedback spec of a use case (``feedback.yaml``): request and outcome times, label lag, segments.

Checked against the label source's schema and the feature set when it loads; errors name the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import validation_lines
from pipelines.featurestore.spec import FeatureSet, LabelSpec, parse_duration
from pipelines.monitoring.calibration import AdaptiveConformalConfig
from pipelines.usecases import SpecError, UseCase

__all__ = ["FeedbackSpec", "load_feedback_spec"]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_time: str = Field(description="label-source timestamp column: when a request is made")
    outcome_time: str = Field(description="label-source timestamp column: when the outcome happens")
    label_delay: str = "0s"
    max_label_lag: str = "2d"
    segments: dict[str, str] = Field(default_factory=dict)
    recalibration: dict[str, Any] | None = Field(None, description="adaptive conformal recalibration of the "
                                                 "intervals from the outcomes (pipelines.monitoring.calibration); "
                                                 "absent = the bundle's calibration is served as trained")


@dataclass(frozen=True)
class FeedbackSpec:
    usecase: str
    label: LabelSpec
    request_time: str
    outcome_time: str
    label_delay: timedelta
    max_label_lag: timedelta
    segments: dict[str, str]
    """{segment name: request column or feature name}"""
    recalibration: AdaptiveConformalConfig | None = None


def load_feedback_spec(usecase: UseCase, features: FeatureSet) -> FeedbackSpec:
    path = usecase.path / "feedback.yaml"
    if "feedback" not in usecase.extra:
        raise SpecError(f"use case '{usecase.name}' has no {path.name}: the feedback loop needs request_time and "
                        "outcome_time (see config/usecases/flights_eta/feedback.yaml)")
    try:
        spec = _File.model_validate(usecase.extra["feedback"])
    except ValidationError as exc:
        raise SpecError("\n".join([f"invalid feedback spec {path}:", *validation_lines(exc)])) from None
    problems = []
    label = features.label
    if label is None:
        raise SpecError(f"invalid feedback spec {path}: features.yaml declares no label to join outcomes on")
    schema = usecase.tables[label.source].output_schema
    for key in ("request_time", "outcome_time"):
        column = getattr(spec, key)
        if schema.get(column) != "timestamp":
            problems.append(f"{key}: '{column}' is not a timestamp column of '{label.source}'")
    durations = {}
    for key in ("label_delay", "max_label_lag"):
        try:
            durations[key] = parse_duration(getattr(spec, key))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    known = set(schema) | set(features.feature_names)
    for name, column in spec.segments.items():
        if column not in known:
            problems.append(f"segments.{name}: '{column}' is neither a column of '{label.source}' nor a feature")
    recalibration = None
    if spec.recalibration is not None:
        try:
            recalibration = AdaptiveConformalConfig.model_validate(spec.recalibration)
        except ValidationError as exc:
            problems += [line.strip().removeprefix("- ") for line in validation_lines(exc, ("recalibration",))]
        if recalibration is not None and recalibration.segment_feature and \
                recalibration.segment_feature not in features.feature_names:
            problems.append(f"recalibration.segment_feature: '{recalibration.segment_feature}' is not a feature")
    if problems:
        raise SpecError(f"invalid feedback spec {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return FeedbackSpec(usecase.name, label, spec.request_time, spec.outcome_time, durations["label_delay"],
                        durations["max_label_lag"], dict(spec.segments), recalibration)
