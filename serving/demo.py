"""The demo's prediction step: start the prediction API, send it real requests of a use case, print the answers.

``run_demo_requests(settings, usecase, clock=None) -> str`` returns the printable text. ``demo_api(settings, name)``
is the API serving a use case for a block: the one already answering when it serves the use case, else one
started under the Supervisor (``<run dir>/api.log``, pid file ``api.pid``; a supervised API that does not serve
the use case is restarted serving it) and stopped at the end unless ``keep_running=True``; ``atelier serve`` runs
it in the foreground. A use case outside ``api.usecases`` is served alone. The requests are the last real events
of the label's source table before the clock (default ``api.as_of``; ``make demo`` passes its window's end, so
each use case answers on its own data's clock, sent as ``X-Atelier-As-Of``), built from the spec alone
(``real_requests``), and each answer is printed beside what really happened (the event's label in the lake):
a regressor's prediction and interval, a classifier's class, probability and prediction set.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import REPO_ROOT, Settings
from pipelines.services import Supervisor
from pipelines.services.base import ServiceSpec

if TYPE_CHECKING:
    import httpx

    from pipelines.usecases import UseCase

__all__ = ["api_spec", "demo_api", "real_requests", "run_demo_requests", "served_usecases", "wait_until_ready"]


def served_usecases(settings: Settings, name: str) -> list[str]:
    """The use cases an API started for ``name`` serves: the profile's ``api.usecases`` when they include it,
    else ``name`` alone (its readiness then needs no other use case's model)."""
    return list(settings.api.usecases) if name in settings.api.usecases else [name]


def base_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host  # noqa: S104
    return f"http://{host}:{settings.api.port}"


def api_spec(settings: Settings, usecases: list[str] | None = None) -> ServiceSpec:
    """The API as a supervised process (``python -m serving.server`` with this profile), serving ``usecases``
    (default: the profile's ``api.usecases``)."""
    import urllib.request

    base = base_url(settings)

    def health() -> None:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:  # noqa: S310 - our loopback URL
            r.read()

    env = {"ATELIER_PROFILE": settings.profile}
    if usecases is not None and list(usecases) != list(settings.api.usecases):
        env["ATELIER__API__USECASES"] = json.dumps(list(usecases))
    return ServiceSpec(name="api", argv=[sys.executable, "-m", "serving.server"], health=health,
                       ports={"http": (settings.api.host, settings.api.port)},
                       env=env, cwd=REPO_ROOT, start_timeout_s=120,
                       describe=f"prediction API {base} (OpenAPI {base}/docs)")


def _serves(base: str, name: str) -> bool:
    """Whether the API answering at ``base`` serves the use case (its ``/readyz`` has a section for it)."""
    import httpx

    try:
        return name in httpx.get(f"{base}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False


@contextlib.contextmanager
def demo_api(settings: Settings, name: str, keep_running: bool = False) -> Iterator[str]:
    """The prediction API serving use case ``name`` for the block; yields its base URL (see the module
    docstring). An API this did not start and that does not serve the use case raises RuntimeError."""
    spec = api_spec(settings, served_usecases(settings, name))
    supervisor = Supervisor(settings.run_dir)
    base = base_url(settings)
    try:
        spec.health()
        running = True
    except OSError:
        running = False
    if running and not _serves(base, name):
        if supervisor.status(spec).state not in ("running", "unhealthy"):
            raise RuntimeError(f"the prediction API at {base} does not serve use case '{name}' and was not started "
                               f"by Atelier's supervisor: stop it, or serve the use case there (api.usecases)")
        supervisor.down(spec)  # ours, serving other use cases: restarted below for this one
        running = False
    if not running:
        supervisor.up(spec)
    try:
        yield base
    finally:
        if not running and not keep_running:
            supervisor.down(spec)


def real_requests(settings: Settings, usecase: UseCase, limit: int, before: datetime) -> list[dict[str, Any]]:
    """The use case's last ``limit`` real events before ``before``, as API requests, each with its real outcome.

    Rows come from the label's source table (features.yaml ``label.source``), on its last day before ``before``
    (the table's date partition, when it has one), keeping those whose request columns are all filled and
    whose label is known. Each is ``{"request": {...}, "id": "<label keys>", "actual": <label>}``; the request
    carries the request columns (entity keys, request-feature inputs) and the label's keys, as JSON values of
    their lake types."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.featurestore.spec import load_feature_set
    from pipelines.interface import json_value, outcome_key_columns, request_columns
    from pipelines.lake.tables import Lake

    features = load_feature_set(usecase)
    label = features.label
    if label is None:
        raise ValueError(f"use case '{usecase.name}' has no label (features.yaml `label`): no outcome to show")
    table = usecase.tables[label.source]
    schema = table.output_schema
    request = {c: t for c, (t, _) in {**request_columns(usecase, features),
                                      **outcome_key_columns(usecase, features)}.items()}
    missing = sorted(c for c in request if c not in schema)
    if missing:
        raise ValueError(f"request columns {missing} are not columns of the label's source table "
                         f"'{label.source}': the demo builds its requests from that table")
    columns = sorted({*request, label.column, label.event_time, *label.keys})
    data = ds.dataset(Lake.from_settings(settings).path(label.source), format="parquet", partitioning="hive")
    day_filter = None
    partition = table.partition_by[0] if table.partition_by else None
    if partition is not None and schema.get(partition) == "date":
        # Partitions are ISO dates; the day before the clock and the clock's own day cover every earlier event.
        days = [(before - timedelta(days=d)).date().isoformat() for d in (1, 0)]
        day_filter = pc.field(partition).cast("string").isin(days)
    frame = data.to_table(columns=columns, filter=day_filter).to_pandas()
    times = pd.to_datetime(frame[label.event_time], utc=True)
    complete = frame[list(request)].notna().all(axis=1) & frame[label.column].notna()
    frame = frame[complete & (times < before)].assign(_t=times).sort_values(["_t", *label.keys]).tail(limit)
    return [{"request": {c: json_value(getattr(r, c), request[c]) for c in request},
             "id": "/".join(str(getattr(r, k)) for k in label.keys), "actual": float(getattr(r, label.column))}
            for r in frame.itertuples(index=False)]


def wait_until_ready(base_url: str, timeout_s: float = 60.0) -> httpx.Response:
    """Poll the API's ``/readyz`` each second until it answers 200 or ``timeout_s`` passes; its last answer.
    An API that does not answer at all raises (httpx.TransportError): it is started before this is called."""
    import httpx
    from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

    def last_answer(state: RetryCallState) -> httpx.Response:
        assert state.outcome is not None
        return state.outcome.result()

    return Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(1),
                    retry=retry_if_result(lambda r: r.status_code != 200),
                    retry_error_callback=last_answer)(httpx.get, f"{base_url}/readyz", timeout=5)


def run_demo_requests(settings: Settings, usecase: UseCase | None = None, *, clock: datetime | None = None,
                      n_single: int = 5, n_batch: int = 20, keep_running: bool = False) -> str:
    """Start the API (if needed), call it with the use case's real events before ``clock`` (``real_requests``;
    default ``api.as_of``), return the text to print. ``usecase``: the API's first use case when not given."""
    import httpx

    from pipelines.interface import OutputSpec
    from pipelines.usecases import get_usecase

    clock = clock or settings.api.as_of
    if clock is None:
        return "  (the prediction API demo needs a clock (api.as_of): the demo data is historical)"
    usecase = usecase or get_usecase(settings.api.usecases[0], settings.usecases_path)
    headers: dict[str, str] = {}
    if clock != settings.api.as_of:
        if not settings.api.allow_as_of_header:
            return (f"  (the {usecase.name} data ends at {clock.isoformat()}, not at api.as_of: the demo sends its "
                    "clock as X-Atelier-As-Of, which needs api.allow_as_of_header)")
        headers["X-Atelier-As-Of"] = clock.isoformat().replace("+00:00", "Z")
    examples = real_requests(settings, usecase, max(n_single, n_batch), clock)
    if not examples:
        return f"  no real events with a known outcome in the day before {clock.isoformat()}: nothing to send"
    served = served_usecases(settings, usecase.name)
    if served[0] != usecase.name:  # the API's default use case is another one
        examples = [{**e, "request": {**e["request"], "usecase": usecase.name}} for e in examples]
    out = OutputSpec.load(usecase, _label_column(usecase))
    if settings.api.auth_required:
        headers["Authorization"] = f"Bearer {os.environ.get('ATELIER_API_TOKEN', '')}"
    lines: list[str] = []
    with demo_api(settings, usecase.name, keep_running=keep_running) as base:
        ready = wait_until_ready(base)
        details = ready.json()
        model = details.get(usecase.name, {})
        lines.append(f"  API {base} serving {', '.join(served)}: {'ready' if ready.status_code == 200 else 'NOT ready'}; "
                     f"model {model.get('model')} v{model.get('version')} on Triton: {model.get('triton_ready')}; "
                     f"online store {details['online_store']['backend']}: {details['online_store']['usable']}")
        if not model.get("bundle_loaded"):
            lines.append(f"  no model to serve yet ({model.get('bundle_error')}): train and register one first")
        lines.append(f"  {len(examples[:n_single])} real {usecase.name} requests before the clock {clock.isoformat()}"
                     f"{' (api.as_of)' if clock == settings.api.as_of else ' (X-Atelier-As-Of)'}, each beside its "
                     "real outcome:")
        with httpx.Client(headers=headers, timeout=10) as client:
            answers: list[tuple[dict[str, Any], dict[str, Any] | None, str, float]] = []
            for e in examples[:n_single]:
                t = time.perf_counter()
                r = client.post(f"{base}/v1/predict", json=e["request"])
                ms = (time.perf_counter() - t) * 1e3
                text = "" if r.status_code == 200 else f"HTTP {r.status_code}: {r.json().get('message', r.text)[:150]}"
                answers.append((e, r.json() if r.status_code == 200 else None, text, ms))
            batch = examples[:n_batch]
            r = client.post(f"{base}/v1/predict/batch",
                            json={"usecase": usecase.name, "requests": [e["request"] for e in batch]})
            batch_answers = r.json()["predictions"] if r.status_code == 200 else None
        classifier = any(a is not None and a.get("sets") for _, a, _, _ in answers)
        show = _classifier_lines if classifier else _regressor_lines
        lines.extend(show(out, answers, batch, batch_answers))
        if batch_answers is None:
            lines.append(f"  batch: HTTP {r.status_code}: {r.text[:200]}")
        auth = ' -H "Authorization: Bearer $ATELIER_API_TOKEN"' if settings.api.auth_required else ""
        as_of = f" -H 'X-Atelier-As-Of: {headers['X-Atelier-As-Of']}'" if "X-Atelier-As-Of" in headers else ""
        body = ", ".join(f'"{k}": {v!r}'.replace("'", '"') for k, v in examples[0]["request"].items())
        lines.append("  call it yourself (`atelier serve` runs it in the foreground; OpenAPI at /docs):")
        lines.append(f"    curl -s {base}/v1/predict{auth}{as_of} -H 'Content-Type: application/json' \\")
        lines.append(f"      -d '{{{body}}}'")
        lines.append(f"  metrics: {base}/metrics   readiness: {base}/readyz   prediction log: "
                     f"{settings.prediction_log_path}")
    return "\n".join(lines)


def _regressor_lines(out: Any, answers: list, batch: list, batch_answers: list | None) -> list[str]:
    unit = f" {out.unit}" if out.unit else ""
    width = max(len(e["id"]) for e, _, _, _ in answers)
    predicted = f"predicted {out.name}{unit}"
    header = f"  {'id':<{width}} {predicted:>{len(predicted)}} {'interval':>20}"
    if out.time_name:
        header += f" {out.time_name + ' (UTC)':>24}"
    lines = [header + f" {'actual':>9} {'confidence':>10} {'runtime':>8} {'ms':>5}"]
    for e, a, error, ms in answers:
        if a is None:
            lines.append(f"  {e['id']:<{width}} {error}")
            continue
        level, (lo, hi) = _first_interval(a, out.name)
        line = f"  {e['id']:<{width}} {a['prediction'][out.name]:>{len(predicted)}.2f} {f'{level}: [{lo:.1f}, {hi:.1f}]':>20}"
        if out.time_name:
            line += f" {a['prediction'][out.time_name][:19]:>24}"
        lines.append(line + f" {e['actual']:>9.2f} {a['confidence']['level']:>10} {a['model']['runtime']:>8} "
                     f"{ms:>5.1f}" + _degraded(a))
    if batch_answers is not None:
        errors = [abs(a["prediction"][out.name] - e["actual"]) for a, e in zip(batch_answers, batch, strict=True)]
        intervals = [_first_interval(a, out.name) for a in batch_answers]
        inside = sum(lo <= e["actual"] <= hi for (_, (lo, hi)), e in zip(intervals, batch, strict=True))
        lines.append(f"  batch of {len(batch_answers)}: mean absolute error {sum(errors) / len(errors):.2f}{unit}; "
                     f"{inside}/{len(batch_answers)} real outcomes inside the {intervals[0][0]} interval")
    return lines


def _classifier_lines(out: Any, answers: list, batch: list, batch_answers: list | None) -> list[str]:
    """A classifier's answers: the class, its probability, the widest prediction set, the real class (the
    label's value is the class index)."""
    import math

    width = max(len(e["id"]) for e, _, _, _ in answers)
    first = next(a for _, a, _, _ in answers if a is not None)
    classes = list(first["prediction"]["probabilities"])
    level = max(first["sets"], key=float)
    cw = max(len(c) for c in classes)
    set_head = f"{float(level):.0%} set"
    sw = max(len(set_head), len("{" + ", ".join(classes) + "}"))
    lines = [f"  {'id':<{width}} {'predicted ' + out.name:>{max(cw, len(out.name) + 10)}} {'P':>5} {set_head:>{sw}} "
             f"{'actual':>{cw}} {'confidence':>10} {'runtime':>8} {'ms':>5}"]
    for e, a, error, ms in answers:
        if a is None:
            lines.append(f"  {e['id']:<{width}} {error}")
            continue
        label = a["prediction"][out.name]
        shown = "{" + ", ".join(a["sets"][level]) + "}"
        lines.append(f"  {e['id']:<{width}} {label:>{max(cw, len(out.name) + 10)}} "
                     f"{a['prediction']['probabilities'][label]:>5.2f} {shown:>{sw}} {classes[int(e['actual'])]:>{cw}} "
                     f"{a['confidence']['level']:>10} {a['model']['runtime']:>8} {ms:>5.1f}" + _degraded(a))
    if batch_answers is not None:
        truth = [classes[int(e["actual"])] for e in batch]
        right = sum(a["prediction"][out.name] == t for a, t in zip(batch_answers, truth, strict=True))
        covered = sum(t in a["sets"][level] for a, t in zip(batch_answers, truth, strict=True))
        loss = -sum(math.log(max(a["prediction"]["probabilities"][t], 1e-15))
                    for a, t in zip(batch_answers, truth, strict=True)) / len(truth)
        lines.append(f"  batch of {len(batch_answers)}: {right}/{len(truth)} classes right, log loss {loss:.3f}; "
                     f"{covered}/{len(truth)} real classes inside the {float(level):.0%} prediction set")
    return lines


def _degraded(answer: dict[str, Any]) -> str:
    return f"  degraded: {'; '.join(answer['degraded_reasons'])}" if answer["degraded"] else ""


def _label_column(usecase: UseCase) -> str:
    from pipelines.featurestore.spec import load_feature_set

    label = load_feature_set(usecase).label
    assert label is not None  # real_requests has checked
    return label.column


def _first_interval(answer: dict[str, Any], name: str) -> tuple[str, tuple[float, float]]:
    """(level, (low, high)) of the answer's narrowest interval level (the spec's first)."""
    level = min(answer["interval"], key=float)
    lo, hi = answer["interval"][level][name]
    return level, (lo, hi)
