"""The demo's prediction step: start the prediction API, send it real requests of a use case, print the answers.

``run_demo_requests(settings, usecase) -> str`` returns the printable text. The API runs under the Supervisor
(``<run dir>/api.log``, pid file ``api.pid``) for the duration of the demo and is stopped at the end unless
``keep_running=True``; ``atelier serve`` runs it in the foreground. The requests are the last real events of the
label's source table before the profile's simulated clock (``api.as_of``; for the flights use case the last
departures before 2013-12-31), built from the spec alone (``real_requests``), and each answer is printed beside
what really happened (the event's label in the lake).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import REPO_ROOT, Settings
from pipelines.services import Supervisor
from pipelines.services.base import ServiceSpec

if TYPE_CHECKING:
    import httpx

    from pipelines.usecases import UseCase

__all__ = ["api_spec", "real_requests", "run_demo_requests", "wait_until_ready"]


def api_spec(settings: Settings) -> ServiceSpec:
    """The API as a supervised process (``python -m serving.server`` with this profile)."""
    import urllib.request

    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host  # noqa: S104
    base = f"http://{host}:{settings.api.port}"

    def health() -> None:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:  # noqa: S310 - our loopback URL
            r.read()

    return ServiceSpec(name="api", argv=[sys.executable, "-m", "serving.server"], health=health,
                       ports={"http": (settings.api.host, settings.api.port)},
                       env={"ATELIER_PROFILE": settings.profile}, cwd=REPO_ROOT, start_timeout_s=120,
                       describe=f"prediction API {base} (OpenAPI {base}/docs)")


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


def run_demo_requests(settings: Settings, usecase: UseCase | None = None, *, n_single: int = 5, n_batch: int = 20,
                      keep_running: bool = False) -> str:
    """Start the API (if not running), call it with the use case's real events (``real_requests``), return the
    text to print. ``usecase``: the API's first use case when not given."""
    import httpx

    from pipelines.interface import OutputSpec
    from pipelines.usecases import get_usecase

    if settings.api.as_of is None:
        return "  (the prediction API demo needs api.as_of: the demo data is historical)"
    usecase = usecase or get_usecase(settings.api.usecases[0], settings.usecases_path)
    examples = real_requests(settings, usecase, max(n_single, n_batch), settings.api.as_of)
    if not examples:
        return (f"  no real events with a known outcome in the day before api.as_of ({settings.api.as_of.isoformat()}):"
                " nothing to send")
    example = examples[0]
    out = OutputSpec.load(usecase, _label_column(usecase))
    unit = f" {out.unit}" if out.unit else ""
    spec = api_spec(settings)
    supervisor = Supervisor(settings.run_dir)
    lines: list[str] = []
    try:
        spec.health()
        started_here = False  # an API already answers there (`atelier serve` or an earlier demo): use it
    except OSError:
        started_here = True
        supervisor.up(spec)
    host, port = spec.ports["http"]
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    headers = {}
    token = os.environ.get("ATELIER_API_TOKEN", "")
    if settings.api.auth_required:
        headers["Authorization"] = f"Bearer {token}"
    try:
        ready = wait_until_ready(base)
        details = ready.json()
        model = details.get(usecase.name, {})
        lines.append(f"  API {base}: {'ready' if ready.status_code == 200 else 'NOT ready'}; model "
                     f"{model.get('model')} v{model.get('version')} on Triton: {model.get('triton_ready')}; "
                     f"online store {details['online_store']['backend']}: {details['online_store']['usable']}")
        if not model.get("bundle_loaded"):
            lines.append(f"  no model to serve yet ({model.get('bundle_error')}): train and register one first")
        width = max(len(e["id"]) for e in examples[:n_single])
        lines.append(f"  {len(examples[:n_single])} real {usecase.name} requests before the clock "
                     f"{settings.api.as_of.isoformat()} (api.as_of), each beside its real outcome:")
        predicted = f"predicted {out.name}{unit}"
        header = f"  {'id':<{width}} {predicted:>{len(predicted)}} {'interval':>20}"
        if out.time_name:
            header += f" {out.time_name + ' (UTC)':>24}"
        lines.append(header + f" {'actual':>9} {'confidence':>10} {'runtime':>8} {'ms':>5}")
        with httpx.Client(headers=headers, timeout=10) as client:
            for e in examples[:n_single]:
                t = time.perf_counter()
                r = client.post(f"{base}/v1/predict", json=e["request"])
                ms = (time.perf_counter() - t) * 1e3
                if r.status_code != 200:
                    lines.append(f"  {e['id']:<{width}} HTTP {r.status_code}: {r.json().get('message', r.text)[:150]}")
                    continue
                a = r.json()
                level, (lo, hi) = _first_interval(a, out.name)
                line = (f"  {e['id']:<{width}} {a['prediction'][out.name]:>{len(predicted)}.2f} "
                        f"{f'{level}: [{lo:.1f}, {hi:.1f}]':>20}")
                if out.time_name:
                    line += f" {a['prediction'][out.time_name][:19]:>24}"
                lines.append(line + f" {e['actual']:>9.2f} {a['confidence']['level']:>10} {a['model']['runtime']:>8} "
                             f"{ms:>5.1f}" + (f"  degraded: {'; '.join(a['degraded_reasons'])}" if a["degraded"] else ""))
            batch = examples[:n_batch]
            r = client.post(f"{base}/v1/predict/batch", json={"requests": [e["request"] for e in batch]})
            if r.status_code == 200:
                answers = r.json()["predictions"]
                errors = [abs(a["prediction"][out.name] - e["actual"]) for a, e in zip(answers, batch, strict=True)]
                intervals = [_first_interval(a, out.name) for a in answers]
                inside = sum(lo <= e["actual"] <= hi for (_, (lo, hi)), e in zip(intervals, batch, strict=True))
                lines.append(f"  batch of {len(answers)}: mean absolute error {sum(errors) / len(errors):.2f}{unit}; "
                             f"{inside}/{len(answers)} real outcomes inside the {intervals[0][0]} interval")
            else:
                lines.append(f"  batch: HTTP {r.status_code}: {r.text[:200]}")
        auth = ' -H "Authorization: Bearer $ATELIER_API_TOKEN"' if settings.api.auth_required else ""
        body = ", ".join(f'"{k}": {v!r}'.replace("'", '"') for k, v in example["request"].items())
        lines.append("  call it yourself (`atelier serve` runs it in the foreground; OpenAPI at /docs):")
        lines.append(f"    curl -s {base}/v1/predict{auth} -H 'Content-Type: application/json' \\")
        lines.append(f"      -d '{{{body}}}'")
        lines.append(f"  metrics: {base}/metrics   readiness: {base}/readyz   prediction log: "
                     f"{settings.prediction_log_path}")
    finally:
        if started_here and not keep_running:
            supervisor.down(spec)
    return "\n".join(lines)


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
