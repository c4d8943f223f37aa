"""Feature views of a use case (``features.yaml``), checked against the lake schemas when the spec loads.

A view has an entity (its keys), a source lake table, an event-time column (when a row's values become
known), a TTL, and features written in Atelier's feature language. Each feature carries its freshness SLA,
its policy when stale (``serve_stale``, ``use_default``, ``reject``) and its default. ``kind: request`` views
are computed from the request online and from the same columns of the source offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import validation_lines
from pipelines.features.checker import FeatureExpr, check_feature
from pipelines.features.errors import FeatureDefinitionError
from pipelines.usecases import SpecError, UseCase

DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
STALE_POLICIES = ("serve_stale", "use_default", "reject")


def parse_duration(text: str) -> timedelta:
    match = DURATION_RE.match(str(text).strip())
    if not match:
        raise ValueError(f"'{text}' is not a duration such as 90s, 15m, 3h, 7d, 2w")
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Spec):
    expr: str
    default: float | int | str | bool | None = None
    sla: str | None = Field(None, description="max age of the online value before it is stale")
    on_stale: Literal["serve_stale", "use_default", "reject"] = "serve_stale"
    description: str = ""


class ViewSpec(_Spec):
    description: str = ""
    kind: Literal["batch", "request"] = "batch"
    entity: str | None = None
    source: str
    event_time: str
    ttl: str | None = None
    features: dict[str, FeatureSpec | str] = Field(min_length=1)


class LabelSpec(_Spec):
    source: str
    column: str
    event_time: str
    keys: list[str] = Field(min_length=1)


class SkewCheckSpec(_Spec):
    sample_size: int = Field(200, ge=1, le=100_000)
    max_mismatch_rate: float = Field(0.01, ge=0, le=1)


class FeaturesFile(_Spec):
    feature_views: dict[str, ViewSpec] = Field(default_factory=dict)
    label: LabelSpec | None = None
    skew_check: SkewCheckSpec = SkewCheckSpec()


@dataclass(frozen=True)
class Feature:
    name: str
    expr: FeatureExpr
    default: Any
    sla: timedelta | None
    on_stale: str

    @property
    def dtype(self) -> str:
        return self.expr.dtype


@dataclass(frozen=True)
class FeatureView:
    name: str
    kind: str
    entity: str | None
    keys: tuple[str, ...]
    source: str
    event_time: str
    ttl: timedelta | None
    features: tuple[Feature, ...]
    key_types: tuple[str, ...]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def lookback(self) -> timedelta:
        """How much source history computing one row needs (the longest window)."""
        windows = [f.expr.max_window for f in self.features if f.expr.max_window]
        return max(windows, default=timedelta(0))


@dataclass(frozen=True)
class FeatureSet:
    usecase: str
    views: dict[str, FeatureView]
    label: LabelSpec | None
    skew_check: SkewCheckSpec

    @property
    def batch_views(self) -> list[FeatureView]:
        return [v for v in self.views.values() if v.kind == "batch"]

    @property
    def request_views(self) -> list[FeatureView]:
        return [v for v in self.views.values() if v.kind == "request"]

    @property
    def feature_names(self) -> list[str]:
        return [f for v in self.views.values() for f in v.feature_names]

    @property
    def key_columns(self) -> list[str]:
        """Every batch view's entity key columns (a training set carries them)."""
        return sorted({k for v in self.batch_views for k in v.keys})


def load_feature_set(usecase: UseCase) -> FeatureSet:
    """Validate ``features.yaml`` of a use case: structure, then every expression against its source schema."""
    path = usecase.path / "features.yaml"
    try:
        spec = FeaturesFile.model_validate(usecase.extra.get("features", {}))
    except ValidationError as exc:
        raise SpecError("\n".join([f"invalid feature spec {path}:", *validation_lines(exc)])) from None

    problems: list[str] = []
    views: dict[str, FeatureView] = {}
    seen_features: dict[str, str] = {}
    for vname, view in spec.feature_views.items():
        where = f"feature_views.{vname}"
        table = usecase.tables.get(view.source)
        if table is None:
            problems.append(f"{where}.source: unknown lake table '{view.source}' (tables: {', '.join(usecase.tables)})")
            continue
        schema = table.output_schema
        if schema.get(view.event_time) != "timestamp":
            problems.append(f"{where}.event_time: '{view.event_time}' is not a timestamp column of '{view.source}'")
        keys: tuple[str, ...] = ()
        if view.kind == "batch":
            if view.entity is None or view.entity not in usecase.entities:
                problems.append(f"{where}.entity: unknown entity '{view.entity}' "
                                f"(entities: {', '.join(usecase.entities)})")
                continue
            keys = tuple(usecase.entities[view.entity].keys)
            missing = [k for k in keys if k not in schema]
            if missing:
                problems.append(f"{where}.entity: key column(s) {missing} of entity '{view.entity}' "
                                f"are not in '{view.source}'")
                continue
            if view.ttl is None:
                problems.append(f"{where}.ttl: a batch view needs a ttl (e.g. 7d)")
        elif view.entity is not None:
            problems.append(f"{where}.entity: a request view has no entity")
        try:
            ttl = parse_duration(view.ttl) if view.ttl else None
        except ValueError as exc:
            problems.append(f"{where}.ttl: {exc}")
            continue
        features = []
        for fname, fspec in view.features.items():
            fspec = FeatureSpec(expr=fspec) if isinstance(fspec, str) else fspec
            if fname in seen_features:
                problems.append(f"{where}.features.{fname}: also defined in view '{seen_features[fname]}'")
            seen_features[fname] = vname
            try:
                expr = check_feature(fname, fspec.expr, schema)
                sla = parse_duration(fspec.sla) if fspec.sla else None
            except (FeatureDefinitionError, ValueError) as exc:
                problems.append(f"{where}.features.{fname}: {exc}")
                continue
            if view.kind == "request" and expr.is_windowed:
                problems.append(f"{where}.features.{fname}: a request feature cannot aggregate over a window")
            if view.kind == "batch" and fspec.default is None:
                problems.append(f"{where}.features.{fname}: needs a default (served when missing or expired)")
            features.append(Feature(fname, expr, fspec.default, sla, fspec.on_stale))
        views[vname] = FeatureView(vname, view.kind, view.entity, keys, view.source, view.event_time, ttl,
                                   tuple(features), tuple(schema[k] for k in keys))
    if spec.label is not None:
        table = usecase.tables.get(spec.label.source)
        if table is None:
            problems.append(f"label.source: unknown lake table '{spec.label.source}'")
        else:
            for col in (spec.label.column, spec.label.event_time, *spec.label.keys):
                if col not in table.output_schema:
                    problems.append(f"label: '{col}' is not a column of '{spec.label.source}'")
    if problems:
        raise SpecError(f"invalid feature spec {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return FeatureSet(usecase.name, views, spec.label, spec.skew_check)
