"""Request and response schemas. Requests are derived from the use case's spec, so a new use case needs no code.

A request row carries the columns the features need at request time: every batch view's entity keys (to look
features up) and the columns read by request features (computed on the spot); optionally the label's keys
(flights: ``flight_id``), logged with the answer so the feedback loop can join it with its outcome. Types come from the lake
table's schema; required-ness and ranges from its expectation suite (``expect_column_values_to_not_be_null``,
``expect_column_values_to_be_between``), the same rules the lake applies to that data. Strict: unknown
fields, wrong types (no "12" for 12), NaN/inf, naive timestamps and out-of-range values are rejected, field
by field. Responses are plain dicts serialized with orjson on the hot path; the pydantic models below
document them in the OpenAPI document.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from pipelines.featurestore.spec import FeatureSet
from pipelines.interface import outcome_key_columns, request_columns, suite_rules
from pipelines.usecases import UseCase

__all__ = ["BatchResponse", "ErrorResponse", "PredictionResponse", "RequestSchema", "field_errors"]

_TYPES: dict[str, Any] = {"string": str, "double": float, "int": int, "bool": bool, "timestamp": AwareDatetime,
                          "date": date}
STRING_MAX = 64
# Instants a request may carry: wide enough for any real schedule, narrow enough that adding a predicted
# delay never leaves datetime's range.
TIMESTAMP_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RequestSchema:
    """Validators of one use case's single and batch requests (pydantic-core, strict JSON mode)."""

    def __init__(self, usecase: UseCase, features: FeatureSet, max_batch: int) -> None:
        self.usecase = usecase.name
        self.columns = request_columns(usecase, features)
        self.outcome_keys = {c: t for c, t in outcome_key_columns(usecase, features).items() if c not in self.columns}
        fields: dict[str, Any] = {}
        rules: dict[str, tuple[set[str], dict]] = {}
        for column, (dtype, table) in {**self.columns, **self.outcome_keys}.items():
            not_null, ranges = rules.setdefault(table, suite_rules(usecase, table))
            py = _TYPES[dtype]
            constraints: dict[str, Any] = {}
            if dtype == "string":
                constraints.update(min_length=1, max_length=STRING_MAX)
            lo, hi = ranges.get(column, (None, None))
            if dtype == "timestamp":
                constraints.update(ge=TIMESTAMP_RANGE[0], lt=TIMESTAMP_RANGE[1])
            if dtype in ("int", "double"):
                if lo is not None:
                    constraints["ge"] = lo
                if hi is not None:
                    constraints["le"] = hi
            if column in not_null and column not in self.outcome_keys:
                fields[column] = (py, Field(..., **constraints))
            else:
                fields[column] = (py | None, Field(None, **constraints))
        title = "".join(part.title() for part in usecase.name.split("_"))
        self.row_model = create_model(f"{title}Row", __config__=STRICT, **fields)
        literal = Literal[usecase.name]  # type: ignore[valid-type]
        self.single_model = create_model(f"{title}Request", __base__=self.row_model,
                                         usecase=(literal, Field(usecase.name, description="use case name")))
        self.batch_model = create_model(
            f"{title}BatchRequest", __config__=STRICT,
            usecase=(literal, Field(usecase.name, description="use case name")),
            requests=(list[self.row_model], Field(..., min_length=1, max_length=max_batch)),  # type: ignore[name-defined]
        )
        self._single = TypeAdapter(self.single_model)
        self._batch = TypeAdapter(self.batch_model)
        self.names = [*self.columns, *self.outcome_keys]

    def single(self, body: bytes) -> dict[str, Any]:
        """The validated row as a dict (raises pydantic ValidationError)."""
        return self._single.validate_json(body).__dict__

    def batch(self, body: bytes) -> list[dict[str, Any]]:
        return [row.__dict__ for row in self._batch.validate_json(body).requests]


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Field-level messages: [{"field": "requests.3.dep_delay", "message": ..., "type": ...}]."""
    out = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<body>"
        message = "unknown field (not allowed)" if err["type"] == "extra_forbidden" else err["msg"]
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out[:50]


# ---------------------------------------------------------------------------------------- documentation


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Doc):
    name: str
    version: str | None = Field(description="registry version that answered (None: no model loaded)")
    runtime: Literal["triton", "fallback"] = Field(description="triton, or the bundle's fallback predictor")


class RoutingRef(_Doc):
    version: int = Field(description="the routing table version that routed the request (0: no table, the "
                                     "configured version)")
    role: Literal["primary", "canary", "arm"] = Field(description="the answering version's role")
    arm: str | None = Field(None, description="the A/B arm, during an A/B test")


class FeatureViewReport(_Doc):
    age_seconds: float | None = Field(description="age of the view's online row at the request's clock")
    status: Literal["fresh", "stale", "missing", "no_key", "unavailable"]
    action: Literal["none", "serve_stale", "use_default", "default"] = Field(
        description="what the freshness policy did: served stale values, replaced them by defaults, "
                    "or defaults because the row is missing/unavailable")
    stale_features: dict[str, str] = Field(default_factory=dict, description="feature -> action, when stale")


class Confidence(_Doc):
    level: Literal["high", "medium", "low"]
    reasons: list[str]


class PredictionResponse(_Doc):
    request_id: str
    usecase: str
    prediction: dict[str, Any] = Field(description="regression: the label's predicted value (e.g. arr_delay minutes) "
                                                   "and, where the use case defines one, the predicted time; "
                                                   "classification: the most probable class and `probabilities` "
                                                   "({class: calibrated probability})")
    interval: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description='regression, per nominal level ("0.8", "0.9"): {name: [low, high]} for the value and the time')
    sets: dict[str, list[str]] | None = Field(
        None, description='classification, per nominal level ("0.8", "0.9"): the classes of the conformal prediction '
                          "set (it holds the true class at that rate; more than one class: the model is unsure)")
    confidence: Confidence
    model: ModelRef
    routing: RoutingRef
    calibration: str = Field(description="the intervals' calibration: '<model>:<version>/bundle' (as trained) or a "
                                         "recalibration from the outcomes ('<model>:<version>/cal-<time>-<hash>')")
    features: dict[str, FeatureViewReport]
    degraded: bool
    degraded_reasons: list[str]
    as_of: str = Field(description="the clock feature ages were judged at (UTC)")


class BatchResponse(_Doc):
    request_id: str
    usecase: str
    predictions: list[PredictionResponse]


class FieldError(_Doc):
    field: str
    message: str
    type: str


class ErrorResponse(_Doc):
    error: str = Field(description="kind: invalid_request, stale_feature, unauthorized, overloaded, ...")
    message: str
    request_id: str | None = None
    fields: list[FieldError] | None = None


__all__ += ["Confidence", "FeatureViewReport", "ModelRef", "RoutingRef", "ValidationError", "outcome_key_columns", "request_columns"]
