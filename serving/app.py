"""The HTTP API (FastAPI/Starlette on uvicorn): routes, auth, limits, errors, OpenAPI.

Routes
    ``POST /v1/predict``        one request row -> one answer
    ``POST /v1/predict/batch``  ``{"usecase": ..., "requests": [rows]}`` -> ``{"predictions": [...]}``
    ``GET /healthz``            the process answers (liveness)
    ``GET /readyz``             200 only when the online store and every use case's model (bundle + Triton) are
                                usable, else 503 with the details
    ``GET /metrics``            Prometheus
    ``GET /openapi.json``, ``/docs``

Status codes: 200 (a prediction, possibly ``degraded``), 401 (missing/wrong bearer token), 404/405, 408 (the
body did not arrive within ``body_timeout_ms``: ``Retry-After``, connection closed), 413 (body too large), 422
(invalid request, field by field; or a ``reject``-policy feature is stale), 429 (more than
``max_in_flight`` requests in progress: shed, ``Retry-After``), 503 (no model loaded, or the deadline passed
before anything could be answered: ``Retry-After``). Dependency failures (online store, Triton) never give
5xx: they give defaults or the fallback predictor, flagged.

The prediction routes read the raw body and validate it with the use case's pydantic-core validator
(strict JSON mode), and answer orjson bytes: no per-request model building or jsonable_encoder passes.
The OpenAPI document still describes every request and response schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import ValidationError

from pipelines.config import Settings
from serving.metrics import CONTENT_TYPE_LATEST
from serving.resilience import parse_as_of
from serving.schemas import BatchResponse, ErrorResponse, PredictionResponse, field_errors
from serving.service import NoModel, PredictionService, StaleFeature

__all__ = ["MIN_TOKEN_CHARS", "TOKEN_ENV", "check_token", "create_app"]

log = logging.getLogger("atelier.serving")
TOKEN_ENV = "ATELIER_API_TOKEN"
# 16 random bytes (128 bits) are 22 characters of URL-safe base64 (secrets.token_urlsafe(16)), 32 of hex.
MIN_TOKEN_CHARS = 22
PLACEHOLDER_PREFIX = "change-me"  # every placeholder of docker/.env.example starts so
AS_OF_HEADER = "x-atelier-as-of"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
JSON = "application/json"


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, fields: list | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.fields = status, kind, message, fields
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _error(exc: ApiError, request_id: str | None) -> Response:
    body: dict[str, Any] = {"error": exc.kind, "message": exc.message, "request_id": request_id}
    if exc.fields:
        body["fields"] = exc.fields
    headers = dict(exc.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return _json(body, exc.status, headers)


def check_token(token: str) -> None:
    """Refuse a bearer token that is missing, a documented placeholder or too short to be a random secret."""
    if not token:
        raise RuntimeError(f"api.auth_required is on but {TOKEN_ENV} is not set: set it to the bearer token "
                           "clients must send, e.g. `openssl rand -hex 32` (or turn auth off in a local profile)")
    if token.strip().lower().startswith(PLACEHOLDER_PREFIX):
        raise RuntimeError(f"{TOKEN_ENV} is still the placeholder of docker/.env.example: replace it with a "
                           "random secret, e.g. `openssl rand -hex 32`")
    if len(token) < MIN_TOKEN_CHARS:
        raise RuntimeError(f"{TOKEN_ENV} is {len(token)} characters long; use a random secret of at least "
                           f"{MIN_TOKEN_CHARS}, e.g. `openssl rand -hex 32`")


def create_app(settings: Settings, service: PredictionService | None = None, token: str | None = None) -> FastAPI:
    """The ASGI app. ``token`` defaults to ``$ATELIER_API_TOKEN``; with auth required, a missing token is an
    error at creation (the API never runs open by accident)."""
    api = settings.api
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    if api.auth_required:
        check_token(token)
    expected = f"Bearer {token}".encode() if api.auth_required else b""
    deadline_s = api.deadline_ms / 1000
    svc = service or PredictionService(settings)
    metrics = svc.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="Atelier Prediction API", version="1",
                  description="Online predictions with features from the online store, models on Triton, "
                              "freshness policies, intervals and a degraded mode.",
                  lifespan=lifespan)
    app.state.service = svc

    def authorize(request: Request) -> None:
        if not api.auth_required:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            metrics.errors.labels("unauthorized").inc()
            raise ApiError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": "Bearer"})

    def clock(request: Request) -> datetime:
        header = request.headers.get(AS_OF_HEADER)
        if header is not None:
            if not api.allow_as_of_header:
                raise ApiError(422, "invalid_request", f"the {AS_OF_HEADER} header is not allowed on this server",
                               [{"field": f"header.{AS_OF_HEADER}", "message": "not allowed", "type": "forbidden"}])
            try:
                return parse_as_of(header)
            except ValueError as exc:
                raise ApiError(422, "invalid_request", f"invalid {AS_OF_HEADER} header: {exc}",
                               [{"field": f"header.{AS_OF_HEADER}", "message": str(exc), "type": "datetime"}]) from None
        return api.as_of or datetime.now(UTC)

    async def body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > api.max_body_bytes):
            raise ApiError(413, "body_too_large", f"the body exceeds {api.max_body_bytes} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(api.body_timeout_ms / 1000):  # uvicorn has no body-read deadline
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > api.max_body_bytes:
                        raise ApiError(413, "body_too_large", f"the body exceeds {api.max_body_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            metrics.errors.labels("body_timeout").inc()
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {api.body_timeout_ms} ms",
                           retry_after=1, headers={"Connection": "close"}) from None
        return b"".join(chunks)

    def request_id_of(request: Request) -> str:
        """The caller's X-Request-Id (checked later by :func:`check_request_id`) or a new one."""
        given = request.headers.get("x-request-id")
        return given if given is not None and REQUEST_ID.match(given) else uuid.uuid4().hex

    def check_request_id(request: Request) -> None:
        given = request.headers.get("x-request-id")
        if given is not None and not REQUEST_ID.match(given):
            raise ApiError(422, "invalid_request", "invalid X-Request-Id header",
                           [{"field": "header.x-request-id", "message": f"must match {REQUEST_ID.pattern}",
                             "type": "string_pattern_mismatch"}])

    def pick_usecase(raw: bytes) -> str:
        if len(svc.runtimes) == 1:
            return svc.default_usecase
        try:
            name = orjson.loads(raw).get("usecase", svc.default_usecase)
        except (orjson.JSONDecodeError, AttributeError):
            return svc.default_usecase  # the validator reports the body error
        if name not in svc.runtimes:
            raise ApiError(422, "invalid_request", f"unknown use case {str(name)[:64]!r}",
                           [{"field": "usecase", "message": f"one of {sorted(svc.runtimes)}", "type": "literal_error"}])
        return name

    async def handle(request: Request, endpoint: str) -> Response:
        started = time.perf_counter()
        request_id = request_id_of(request)
        status = 200
        if svc.in_flight >= api.max_in_flight:
            metrics.errors.labels("shed").inc()
            metrics.requests.labels(endpoint, "429").inc()
            return _error(ApiError(429, "overloaded", f"more than {api.max_in_flight} requests in progress",
                                   retry_after=1), request_id)
        svc.in_flight += 1
        metrics.in_flight.inc()
        try:
            authorize(request)
            check_request_id(request)
            raw = await body(request)
            as_of = clock(request)
            rt = svc.runtime(pick_usecase(raw))
            try:
                rows = [rt.schema.single(raw)] if endpoint == "predict" else rt.schema.batch(raw)
            except ValidationError as exc:
                fields = field_errors(exc)
                raise ApiError(422, "invalid_request", f"{len(fields)} invalid field(s): "
                               + "; ".join(f"{f['field']}: {f['message']}" for f in fields[:3]), fields) from None
            try:
                # Every stage has its own budget within the deadline; this is the backstop if the process
                # itself is starved (a slow answer is worth less than a clear "retry").
                async with asyncio.timeout(max(0.001, started + deadline_s + 0.02 - time.perf_counter())):
                    answers = await svc.predict(rt, rows, as_of, request_id, endpoint, started)
            except TimeoutError:
                raise ApiError(503, "deadline", f"no answer within the {api.deadline_ms} ms deadline",
                               retry_after=1) from None
            except StaleFeature as exc:
                where = f"requests.{exc.row}" if endpoint == "batch" else "features"  # type: ignore[attr-defined]
                raise ApiError(422, "stale_feature", str(exc),
                               [{"field": f"{where}.{exc.feature}", "message": str(exc), "type": "stale_feature"}]) from None
            except NoModel as exc:
                raise ApiError(503, "no_model", str(exc), retry_after=5) from None
            if endpoint == "predict":
                return _json(answers[0], headers={"X-Request-Id": request_id})
            return _json({"request_id": request_id, "usecase": rt.name, "predictions": answers},
                         headers={"X-Request-Id": request_id})
        except ApiError as exc:
            status = exc.status
            if exc.kind != "unauthorized":
                metrics.errors.labels(exc.kind).inc()
            return _error(exc, request_id)
        except Exception:  # a bug: say so in JSON (with the request id to find the traceback), count it
            status = 500
            log.exception("request %s failed", request_id)
            metrics.errors.labels("internal").inc()
            return _error(ApiError(500, "internal", "internal error; the server log has the details"), request_id)
        finally:
            svc.in_flight -= 1
            metrics.in_flight.dec()
            metrics.requests.labels(endpoint, str(status)).inc()

    responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
        408: {"model": ErrorResponse, "description": "the body did not arrive in time: retry after Retry-After seconds"},
        413: {"model": ErrorResponse, "description": "body too large"},
        422: {"model": ErrorResponse, "description": "invalid request (field-level messages) or a stale feature "
                                                     "whose policy is reject"},
        429: {"model": ErrorResponse, "description": "overloaded: shed, retry after Retry-After seconds"},
        503: {"model": ErrorResponse, "description": "no model loaded: retry after Retry-After seconds"},
    }
    headers_doc = [
        {"name": "X-Request-Id", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": REQUEST_ID.pattern}},
        {"name": "X-Atelier-As-Of", "in": "header", "required": False,
         "description": "simulated clock for feature ages (only where api.allow_as_of_header is on)",
         "schema": {"type": "string", "format": "date-time"}},
    ]

    def body_doc(kind: str) -> dict[str, Any]:
        models = [getattr(rt.schema, f"{kind}_model").__name__ for rt in svc.runtimes.values()]
        schema = {"$ref": f"#/components/schemas/{models[0]}"} if len(models) == 1 else {
            "oneOf": [{"$ref": f"#/components/schemas/{m}"} for m in models]}
        return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}, "parameters": headers_doc}

    @app.post("/v1/predict", response_model=PredictionResponse, responses=responses,
              openapi_extra=body_doc("single"), summary="One prediction")
    async def predict(request: Request) -> Response:
        return await handle(request, "predict")

    @app.post("/v1/predict/batch", response_model=BatchResponse, responses=responses,
              openapi_extra=body_doc("batch"), summary=f"Many predictions (1..{api.max_batch} rows)")
    async def predict_batch(request: Request) -> Response:
        return await handle(request, "batch")

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness: the online store and a model are usable",
             responses={503: {"description": "not ready; the body says what is missing"}})
    async def readyz() -> Response:
        ok, details = svc.readiness()
        return _json({"ready": ok, **details}, 200 if ok else 503, None if ok else {"Retry-After": "2"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for rt in svc.runtimes.values():
            for model in (rt.schema.single_model, rt.schema.batch_model):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
        if api.auth_required:
            components_root = doc["components"]
            components_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path in ("/v1/predict", "/v1/predict/batch"):
                doc["paths"][path]["post"]["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return app
