"""The Atelier console: a FastAPI app the Airflow API server mounts at ``/atelier`` (see
``plugins/atelier_console.py``), behind Airflow's own authentication and authorization.

Every page needs a signed-in Airflow user allowed to see plugin views (the auth manager decides); a visitor
without a session is sent to Airflow's login and back. Reads go through :mod:`pipelines.console.data`;
actions are planned and confirmed here, then triggered as the user's own DAG runs by
:mod:`pipelines.console.actions` (a signed, user-bound, expiring confirmation token guards the final POST).
Reports (training, Evidently) are served with a sandboxing Content-Security-Policy: their scripts run in an
opaque origin, away from the user's session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PREFIX = "/atelier"
TOKEN_MAX_AGE_S = 600
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
REPORT_CSP = "sandbox allow-scripts allow-popups; default-src 'self' 'unsafe-inline' data: blob:"
SECTIONS = [("models", "Models"), ("online", "Online"), ("rollouts", "Rollouts"), ("freshness", "Freshness"),
            ("drift", "Drift"), ("actions", "Actions"), ("audit", "Audit trail")]

app = FastAPI(title="Atelier console", docs_url=None, redoc_url=None, openapi_url=None)
templates = Jinja2Templates(directory=str(HERE / "templates"))


# -- authentication and authorization (Airflow's auth manager)


class _LoginRequired(Exception):
    pass


async def _user(request: Request) -> Any:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    bearer = (HTTPAuthorizationCredentials(scheme="Bearer", credentials=header[7:].strip())
              if header[:7].lower() == "bearer " else None)
    try:
        user = await get_user(request, None, bearer)  # a Bearer token (API clients) or the UI's session cookie
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            raise _LoginRequired from None
        raise
    if not get_auth_manager().is_authorized_view(access_view=AccessView.PLUGINS, user=user):
        raise HTTPException(403, "your Airflow role may not open plugin views")
    return user


User = Annotated[Any, Depends(_user)]


@app.exception_handler(_LoginRequired)
async def _to_login(request: Request, _: _LoginRequired) -> Response:
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


def _token(request: Request) -> str:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")


def _signer() -> Any:
    from airflow.configuration import conf
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(conf.get("api_auth", "jwt_secret"), salt="atelier-console-action")


def _settings() -> Any:
    from pipelines.config import get_settings

    return get_settings()


def _usecase(name: str) -> str:
    from pipelines.usecases import list_usecases

    if not NAME.match(name) or name not in list_usecases(_settings().usecases_path):
        raise HTTPException(404, f"no use case named {name!r}")
    return name


# -- rendering helpers


def _panel(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """A panel's data, or the reason it is not there (the page shows the reason instead of failing)."""
    from pipelines.console.data import Unavailable

    try:
        return fn(*args, **kwargs), None
    except Unavailable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken source must not take the page down
        log.exception("console panel %s failed", getattr(fn, "__name__", fn))
        return None, f"could not be read: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if value != value:  # NaN
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


templates.env.filters["age"] = _age
templates.env.filters["num"] = _num
templates.env.globals["prefix"] = PREFIX
templates.env.globals["sections"] = SECTIONS


def _page(request: Request, template: str, user: Any, **context: Any) -> HTMLResponse:
    context.setdefault("usecase", None)
    return templates.TemplateResponse(request, template, {"user": user.get_name(), **context})


# -- static assets (shipped with the packages; no network at run time)


@app.get("/static/plotly.min.js", include_in_schema=False)
def plotly_js() -> FileResponse:
    import plotly

    return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                        media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@app.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    if name not in ("console.css", "console.js"):
        raise HTTPException(404)
    return FileResponse(HERE / "static" / name, headers={"Cache-Control": "max-age=3600"})


# -- pages


@app.get("/", response_class=HTMLResponse)
def index(request: Request, user: User) -> HTMLResponse:
    from pipelines.console.data import overview

    items, error = _panel(overview, _settings())
    return _page(request, "index.html", user, items=items or [], error=error)


@app.get("/usecases/{name}", include_in_schema=False)
def usecase_home(name: str, user: User) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/usecases/{_usecase(name)}/models", status_code=303)


@app.get("/usecases/{name}/models", response_class=HTMLResponse)
def models(request: Request, name: str, user: User) -> HTMLResponse:
    from pipelines.console.data import model_versions, online_by_version, online_metrics
    from plugins.console import charts

    settings = _settings()
    data, error = _panel(model_versions, settings, _usecase(name))
    chart = charts.metric_history(data) if data else None
    online, online_error = _panel(online_metrics, settings, name)
    served = online_by_version(online) if online is not None else {}
    return _page(request, "models.html", user, usecase=name, section="models", data=data, error=error,
                 history_chart=chart, served=served, online_error=online_error)


@app.get("/usecases/{name}/models/{version}/report", include_in_schema=False)
def training_report(name: str, version: str, user: User) -> Response:
    from pipelines.console.data import Unavailable, training_report

    try:
        path = training_report(_settings(), _usecase(name), version)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from None
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})


@app.get("/usecases/{name}/online", response_class=HTMLResponse)
def online(request: Request, name: str, user: User) -> HTMLResponse:
    from pipelines.console.data import online_metrics
    from plugins.console import charts

    frame, error = _panel(online_metrics, _settings(), _usecase(name))
    plots = []
    if frame is not None:
        error_cols = [c for c in ("mae", "rmse") if c in frame]
        coverage_cols = [c for c in frame.columns if c.startswith("coverage_")]
        plots = [c for c in (charts.online_series(frame, error_cols, "Online error per day (labelled outcomes)"),
                             charts.online_series(frame, coverage_cols, "Interval coverage per day"),
                             charts.online_series(frame, ["predictions", "labelled"], "Prediction volume per day"),
                             charts.online_series(frame, ["fallback_rate", "stale_rate", "defaulted_rate"],
                                                  "Fallback, stale and defaulted rates per day")) if c]
    rows = frame.sort_values(["prediction_day", "model_version"], ascending=False).to_dict("records") \
        if frame is not None else []
    return _page(request, "online.html", user, usecase=name, section="online", rows=rows, error=error, plots=plots)


@app.get("/usecases/{name}/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, name: str, user: User) -> HTMLResponse:
    from pipelines.console.data import rollouts as read_rollouts
    from plugins.console import charts

    data, error = _panel(read_rollouts, _settings(), _usecase(name))
    chart = charts.rollout_steps(data["rollouts"][0]) if data and data["rollouts"] else None
    return _page(request, "rollouts.html", user, usecase=name, section="rollouts", data=data, error=error,
                 steps_chart=chart)


@app.get("/usecases/{name}/freshness", response_class=HTMLResponse)
def freshness(request: Request, name: str, user: User) -> HTMLResponse:
    from pipelines.console.data import freshness as read_freshness

    data, error = _panel(read_freshness, _settings(), _usecase(name))
    return _page(request, "freshness.html", user, usecase=name, section="freshness", data=data, error=error)


@app.get("/usecases/{name}/drift", response_class=HTMLResponse)
def drift(request: Request, name: str, user: User, column: str | None = None) -> HTMLResponse:
    from pipelines.console.data import drift_heatmap, indicator_series
    from plugins.console import charts

    settings = _settings()
    heat, error = _panel(drift_heatmap, settings, _usecase(name))
    chart = charts.drift_heatmap(heat) if heat else None
    if heat and not column and heat["columns"]:
        column = heat["columns"][0]
    series, series_error = (_panel(indicator_series, settings, name, column) if column else (None, None))
    top = heat["findings"].sort_values("z", ascending=False, na_position="last").head(30).to_dict("records") \
        if heat and not heat["findings"].empty else []
    return _page(request, "drift.html", user, usecase=name, section="drift", heat=heat, error=error, heat_chart=chart,
                 column=column, series_chart=charts.indicator_series(series, column) if series is not None else None,
                 series_error=series_error, top=top,
                 incidents=heat["incidents"].to_dict("records") if heat else [])


@app.get("/usecases/{name}/drift/{day}/report", include_in_schema=False)
def drift_report(name: str, day: str, user: User) -> Response:
    if not DAY.match(day):
        raise HTTPException(404, "day must be an ISO date")
    path = _settings().home_path / "reports" / _usecase(name) / "drift" / day / "drift.html"
    if not path.is_file():
        raise HTTPException(404, f"no Evidently report for {day}: the drift run keeps one per run's last day")
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})


@app.get("/usecases/{name}/audit", response_class=HTMLResponse)
def audit(request: Request, name: str, user: User) -> HTMLResponse:
    from pipelines.console.actions import audit_log
    from pipelines.console.data import model_versions
    from pipelines.console.data import rollouts as read_rollouts

    settings = _settings()
    models_data, error = _panel(model_versions, settings, _usecase(name))
    trail = sorted(({"version": v["version"], **e} for v in (models_data or {}).get("versions", [])
                    for e in v["audit"]), key=lambda e: str(e.get("at", "")), reverse=True)
    routing, routing_error = _panel(read_rollouts, settings, name)
    return _page(request, "audit.html", user, usecase=name, section="audit", trail=trail, error=error,
                 actions=audit_log(settings, name), routing=(routing or {}).get("routing_history", []),
                 routing_error=routing_error)


# -- actions: form -> confirmation -> DAG run


def _actions_page(request: Request, name: str, user: Any, *, form: dict[str, str] | None = None,
                  field_error: Any = None, action: str | None = None, status: int = 200) -> HTMLResponse:
    from pipelines.console.actions import STRATEGIES
    from pipelines.console.data import model_versions
    from pipelines.lifecycle.rules import STAGES

    data, error = _panel(model_versions, _settings(), _usecase(name))
    versions = [(v["version"], f"v{v['version']} ({v['stage']})") for v in (data or {}).get("versions", [])]
    page = _page(request, "actions.html", user, usecase=name, section="actions", data=data, error=error,
                 version_options=versions, strategy_options=[(s, s) for s in STRATEGIES],
                 stage_options=[(s, s) for s in STAGES], form=form or {}, field_error=field_error, action=action)
    page.status_code = status
    return page


@app.get("/usecases/{name}/actions", response_class=HTMLResponse)
def actions(request: Request, name: str, user: User) -> HTMLResponse:
    return _actions_page(request, name, user)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {k: str(v) for k, v in form.items() if isinstance(v, str)}


@app.post("/usecases/{name}/actions/{action}", response_class=HTMLResponse)
async def confirm(request: Request, name: str, action: str, user: User) -> HTMLResponse:
    """Check the form and show exactly what will run; nothing is triggered yet."""
    from starlette.concurrency import run_in_threadpool

    from pipelines.console.actions import ActionError, plan

    form = await _form(request)
    try:
        p = plan(_settings(), action, _usecase(name), form)
    except ActionError as exc:
        wrong = exc
        return await run_in_threadpool(lambda: _actions_page(request, name, user, form=form, field_error=wrong,
                                                              action=action, status=422))
    token = _signer().dumps({"user": str(user.get_id()), "plan": p.digest()})
    return _page(request, "confirm.html", user, usecase=name, section="actions", plan=p, form=form, token=token,
                 action=action)


@app.post("/usecases/{name}/actions/{action}/run", response_class=HTMLResponse)
async def run(request: Request, name: str, action: str, user: User) -> HTMLResponse:
    """Trigger a confirmed action as the user (their own Airflow token), then show the run it started."""
    from airflow.configuration import conf
    from itsdangerous import BadSignature, SignatureExpired
    from starlette.concurrency import run_in_threadpool

    from pipelines.console.actions import ActionError, execute, plan

    form = await _form(request)
    token = form.pop("confirmation", "")
    try:
        p = plan(_settings(), action, _usecase(name), form)
        signed = _signer().loads(token, max_age=TOKEN_MAX_AGE_S)
    except ActionError as exc:
        raise HTTPException(422, str(exc)) from None
    except SignatureExpired:
        raise HTTPException(409, "this confirmation expired: open the action again") from None
    except BadSignature:
        raise HTTPException(403, "not a confirmation this console issued") from None
    if signed.get("user") != str(user.get_id()) or signed.get("plan") != p.digest():
        raise HTTPException(403, "the confirmation does not match this user and action")
    record = await run_in_threadpool(execute, _settings(), p, user=user.get_name(), token=_token(request),
                                     base_url=conf.get("api", "base_url"))
    status = 200 if record["outcome"] != "refused" else 502
    page = _page(request, "result.html", user, usecase=name, section="actions", record=record, plan=p)
    page.status_code = status
    return page


@app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException is a subclass: both land here
async def _error(request: Request, exc: StarletteHTTPException) -> Response:
    body = templates.get_template("error.html").render(
        request=request, prefix=PREFIX, sections=SECTIONS, usecase=None, user=None, status=exc.status_code,
        detail=exc.detail)
    return HTMLResponse(body, status_code=exc.status_code)


def dag_run_url(dag_id: str, run_id: str) -> str:
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


templates.env.globals["dag_run_url"] = dag_run_url
templates.env.globals["now"] = lambda: datetime.now(UTC)
