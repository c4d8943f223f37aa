"""The prediction interface of a use case, derived from its spec files: what a request carries, what the
answer names. The API (``serving/``) validates requests with it; the replay and the feedback loop
(``pipelines/monitoring``) build and read requests and answers with the same definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import yaml

from pipelines.featurestore.spec import FeatureSet
from pipelines.quality.expectations import EXPECTATIONS_DIR
from pipelines.usecases import UseCase

__all__ = ["OutputSpec", "json_value", "outcome_key_columns", "request_columns", "required_request_columns", "suite_rules"]


def json_value(value: Any, dtype: str) -> Any:
    """A lake value of type ``dtype`` as the JSON the API's strict request schema takes (no "12" for 12):
    None, NaN and NaT become null; a timestamp becomes ISO 8601 in UTC with ``Z`` (a naive one is read as UTC);
    a date becomes its ISO date; other values pass as they are."""
    if value is None or (isinstance(value, (float, datetime)) and value != value):  # NaN, NaT
        return None
    if dtype == "timestamp" and isinstance(value, datetime):
        as_utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return as_utc.isoformat().replace("+00:00", "Z")
    if dtype == "date" and isinstance(value, date):
        return value.isoformat()
    if dtype == "int":
        return int(value)
    if dtype == "double":
        return float(value)
    if dtype == "bool":
        return bool(value)
    return value


def suite_rules(usecase: UseCase, table: str) -> tuple[set[str], dict[str, tuple[float | None, float | None]]]:
    """(not-null columns, {column: (min, max)}) from the table's expectation suite."""
    spec = usecase.tables.get(table)
    name = getattr(spec, "expectations", None) if spec is not None else None
    path = EXPECTATIONS_DIR / (name or table) / "suite.yaml"
    if not path.exists():
        return set(), {}
    data = yaml.safe_load(path.read_text()) or {}
    not_null, ranges = set(), {}
    for exp in data.get("expectations", []):
        kwargs = exp.get("kwargs", {})
        if exp.get("type") == "expect_column_values_to_not_be_null" and "mostly" not in kwargs:
            not_null.add(kwargs["column"])
        elif exp.get("type") == "expect_column_values_to_be_between" and "mostly" not in kwargs:
            ranges[kwargs["column"]] = (kwargs.get("min_value"), kwargs.get("max_value"))
    return not_null, ranges


def request_columns(usecase: UseCase, features: FeatureSet) -> dict[str, tuple[str, str]]:
    """{column: (type, source table)} a request must carry: entity keys, then request-feature inputs."""
    out: dict[str, tuple[str, str]] = {}
    for view in features.batch_views:
        for key, key_type in zip(view.keys, view.key_types, strict=True):
            out.setdefault(key, (key_type, view.source))
    for view in features.request_views:
        schema = usecase.tables[view.source].output_schema
        for feature in view.features:
            for column in sorted(feature.expr.columns):
                out.setdefault(column, (schema[column], view.source))
    return out


def outcome_key_columns(usecase: UseCase, features: FeatureSet) -> dict[str, tuple[str, str]]:
    """{column: (type, source table)} of the label's keys a request may carry (optional, never used as a
    feature): they are logged with the answer, so the feedback loop joins it with its outcome."""
    label = features.label
    if label is None or label.source not in usecase.tables:
        return {}
    schema = usecase.tables[label.source].output_schema
    return {k: (schema[k], label.source) for k in label.keys if k in schema}


@dataclass(frozen=True)
class OutputSpec:
    name: str
    unit: str | None = None
    time_from: str | None = None
    time_name: str | None = None

    @classmethod
    def load(cls, usecase: UseCase, label: str) -> OutputSpec:
        path = usecase.path / "serving.yaml"
        data = (yaml.safe_load(path.read_text()) or {}).get("prediction", {}) if path.exists() else {}
        return cls(data.get("name", label), data.get("unit"), data.get("time_from"), data.get("time_name"))


def required_request_columns(usecase: UseCase, features: FeatureSet) -> list[str]:
    """The request columns a request must carry (not null in their table's suite); the rest may be null."""
    rules: dict[str, set[str]] = {}
    out = []
    for column, (_, table) in request_columns(usecase, features).items():
        if table not in rules:
            rules[table] = suite_rules(usecase, table)[0]
        if column in rules[table]:
            out.append(column)
    return out
