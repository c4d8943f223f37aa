"""The monitoring spec of a use case (``monitoring.yaml``): what is profiled, cut by which segments, and when a
finding is raised, alerted and turned into a retraining. Checked against the use case's tables and features
when it loads; an error names the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import validation_lines
from pipelines.featurestore.spec import FeatureSet, parse_duration
from pipelines.usecases import IDENTIFIER, SpecError, UseCase

__all__ = ["MonitoringSpec", "Segment", "SourceSpec", "load_monitoring_spec", "SEVERITY_NAMES"]

SEVERITY_NAMES = ("none", "low", "medium", "high")
Severity = Literal["low", "medium", "high"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Segment(_Spec):
    column: str
    buckets: list[float] | None = Field(None, description="numeric column: cut into [-inf, b0), [b0, b1) ... "
                                        "[bn, inf), named by their lower edge")

    @field_validator("buckets")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(b >= a for a, b in zip(value[1:], value, strict=False))):
            raise ValueError("must be a non-empty, strictly increasing list")
        return value


class SourceSpec(_Spec):
    """A lake table behind the features, profiled per day of its ``day`` column."""

    day: str = Field(description="the table's date column (its partition) that assigns a row to a day")
    segments: dict[str, str] = Field(default_factory=dict, description="segment name -> this table's column")
    exclude: list[str] = Field(default_factory=list, description="columns not profiled (ids, free text)")


class _Level(_Spec):
    medium: float | None = None
    high: float | None = None


class _Drift(_Spec):
    """Effect sizes a drift must reach before it can be medium or high (the indicator's own history decides
    whether it is unusual; these decide whether it matters)."""

    psi: _Level = _Level(medium=0.1, high=0.25)
    ks: _Level = _Level(medium=0.1, high=0.2)
    wasserstein: _Level = _Level(medium=0.1, high=0.3)   # normed by the reference's spread
    js: _Level = _Level(medium=0.1, high=0.2)


class _Quality(_Spec):
    """Fixed rules that apply from the first day (no history needed)."""

    null_rate_increase: _Level = _Level(medium=0.02, high=0.05)
    unseen_category_share: _Level = _Level(medium=0.01, high=0.05)


class _Anomaly(_Spec):
    window_days: int = Field(28, ge=7, le=400)
    min_history: int = Field(7, ge=3)
    seasonal_min_weeks: int = Field(3, ge=2)
    z_low: float = Field(4.0, gt=0)
    z_medium: float = Field(6.0, gt=0)
    z_high: float = Field(10.0, gt=0)
    min_scale_rel: float = Field(0.05, ge=0)


class _Online(_Spec):
    mae_max: float | None = Field(None, gt=0, description="overall online MAE above this on a day: a high "
                                  "drift finding (retrains)")
    coverage_min: float | None = Field(None, gt=0, lt=1, description="90% interval coverage below this: medium")
    min_labelled: int = Field(200, ge=1)


class _Alerts(_Spec):
    min_severity: Severity = "medium"
    max_listed: int = Field(20, ge=1, le=1000, description="findings named in one alert (the rest counted)")


class _Retrain(_Spec):
    min_severity: Severity = "high"
    cooldown: str = "14d"
    window: str = Field("120d", description="the retraining's data window: this long, ending at the end of the "
                        "day the incident was detected")
    validation_days: int | None = Field(None, ge=1)
    holdout_days: int | None = Field(None, ge=1)


class _Report(_Spec):
    top_features: int = Field(8, ge=1, le=100)
    max_rows: int = Field(5000, ge=100, le=200_000)


class _Reference(_Spec):
    max_rows: int = Field(200_000, ge=1000, description="training rows kept with the model as its reference")


class _File(_Spec):
    segments: dict[str, str | Segment] = Field(default_factory=dict)
    crosses: list[list[str]] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list, description="string request columns profiled as "
                                   "category frequencies (Jensen-Shannon); other columns are numeric")
    exclude: list[str] = Field(default_factory=list, description="request columns not profiled (ids)")
    sources: dict[str, SourceSpec] = Field(default_factory=dict)
    min_rows: int = Field(30, ge=1, description="fewer rows in a segment-day: counts and null rate only")
    min_rows_high: int = Field(200, ge=1, description="fewer rows: a finding is at most medium")
    trailing_days: int = Field(7, ge=2, le=90)
    reference: _Reference = _Reference()
    drift: _Drift = _Drift()
    quality: _Quality = _Quality()
    anomaly: _Anomaly = _Anomaly()
    online: _Online = _Online()
    alerts: _Alerts = _Alerts()
    retrain: _Retrain = _Retrain()
    report: _Report = _Report()


@dataclass(frozen=True)
class MonitoringSpec:
    usecase: str
    segments: dict[str, Segment]
    """served data: segment name -> request column or feature"""
    crosses: list[tuple[str, ...]]
    categorical: list[str]
    exclude: list[str]
    sources: dict[str, SourceSpec]
    min_rows: int
    min_rows_high: int
    trailing_days: int
    reference_max_rows: int
    drift: _Drift
    quality: _Quality
    anomaly: _Anomaly
    online: _Online
    alerts: _Alerts
    retrain: _Retrain
    cooldown: timedelta
    retrain_window: timedelta
    report: _Report

    def grouping(self, names: dict[str, str]) -> list[tuple[str, ...]]:
        """The grouping sets over the segments present in ``names`` (segment -> column): overall, each one,
        each cross whose parts are all present."""
        sets: list[tuple[str, ...]] = [()]
        sets += [(s,) for s in names]
        sets += [c for c in self.crosses if all(s in names for s in c)]
        return sets


def load_monitoring_spec(usecase: UseCase, features: FeatureSet) -> MonitoringSpec:
    path = usecase.path / "monitoring.yaml"
    raw = (usecase.extra.get("monitoring") or {}).get("monitoring")
    if not raw:
        raise SpecError(f"use case '{usecase.name}' has no monitoring in {path.name}: the drift monitor needs "
                        "at least its segments (see config/usecases/flights_eta/monitoring.yaml)")
    try:
        spec = _File.model_validate(raw)
    except ValidationError as exc:
        raise SpecError("\n".join([f"invalid monitoring spec {path}:", *validation_lines(exc, ("monitoring",))])
                        ) from None
    from pipelines.interface import outcome_key_columns, request_columns

    problems: list[str] = []
    request = {**request_columns(usecase, features), **outcome_key_columns(usecase, features)}
    known = set(request) | set(features.feature_names)
    segments = {name: (s if isinstance(s, Segment) else Segment(column=s)) for name, s in spec.segments.items()}
    import re

    for name, seg in segments.items():
        if not re.match(IDENTIFIER, name):
            problems.append(f"monitoring.segments.{name}: not a lower-case identifier")
        if seg.column not in known:
            problems.append(f"monitoring.segments.{name}: '{seg.column}' is neither a request column nor a feature")
    for i, cross in enumerate(spec.crosses):
        if len(cross) < 2 or len(set(cross)) != len(cross):
            problems.append(f"monitoring.crosses.{i}: a cross names two or more different segments")
        for s in cross:
            if s not in segments:
                problems.append(f"monitoring.crosses.{i}: unknown segment '{s}'")
    for column in spec.categorical:
        if column not in request or request[column][0] != "string":
            problems.append(f"monitoring.categorical: '{column}' is not a string request column")
    for column in spec.exclude:
        if column not in request:
            problems.append(f"monitoring.exclude: '{column}' is not a request column")
    for name, source in spec.sources.items():
        if name not in usecase.tables:
            problems.append(f"monitoring.sources.{name}: not a table of this use case ({', '.join(usecase.tables)})")
            continue
        schema = usecase.tables[name].output_schema
        if schema.get(source.day) not in ("date", "string"):
            problems.append(f"monitoring.sources.{name}.day: '{source.day}' is not a date column of '{name}'")
        for seg, column in source.segments.items():
            if seg not in segments:
                problems.append(f"monitoring.sources.{name}.segments.{seg}: not a segment of monitoring.segments")
            if column not in schema:
                problems.append(f"monitoring.sources.{name}.segments.{seg}: '{name}' has no column '{column}'")
        for column in source.exclude:
            if column not in schema:
                problems.append(f"monitoring.sources.{name}.exclude: '{name}' has no column '{column}'")
    durations = {}
    for key in ("cooldown", "window"):
        try:
            durations[key] = parse_duration(getattr(spec.retrain, key))
        except ValueError as exc:
            problems.append(f"monitoring.retrain.{key}: {exc}")
    a = spec.anomaly
    if not a.z_low <= a.z_medium <= a.z_high:
        problems.append("monitoring.anomaly: z_low <= z_medium <= z_high must hold")
    if problems:
        raise SpecError(f"invalid monitoring spec {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return MonitoringSpec(
        usecase.name, segments, [tuple(c) for c in spec.crosses], list(spec.categorical), list(spec.exclude),
        dict(spec.sources), spec.min_rows, spec.min_rows_high, spec.trailing_days, spec.reference.max_rows,
        spec.drift, spec.quality, spec.anomaly, spec.online, spec.alerts, spec.retrain, durations["cooldown"],
        durations["window"], spec.report)
