"""The demo's last step: start the prediction API, send real requests for real flights, print the answers.

``run_demo_requests(settings) -> str`` returns the printable text. The API runs under the Supervisor
(``<run dir>/api.log``, pid file ``api.pid``) for the duration of the demo and is stopped at the end unless
``keep_running=True``; ``atelier serve`` runs it in the foreground. Flights are the last scheduled departures of
the data before the profile's simulated clock (``api.as_of``, 2013-12-31 for the local profile), and each
answer is printed beside what really happened (the lake's ``arr_delay``).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipelines.config import REPO_ROOT, Settings
from pipelines.services import Supervisor
from pipelines.services.base import ServiceSpec

if TYPE_CHECKING:
    import httpx

__all__ = ["api_spec", "run_demo_requests", "wait_until_ready"]


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


def _flights(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """The last real departures before the clock, with tail numbers (and their real outcome)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.lake.tables import Lake

    as_of = settings.api.as_of
    assert as_of is not None
    day = (as_of - timedelta(days=1)).strftime("%Y-%m-%d")
    data = ds.dataset(Lake.from_settings(settings).path("flights"), format="parquet", partitioning="hive")
    frame = data.to_table(columns=["origin", "dest", "carrier", "flight", "tailnum", "sched_dep_ts", "sched_arr_ts",
                                   "dep_delay", "arr_delay"], filter=pc.field("sched_dep_date") == day).to_pandas()
    frame = frame[frame.tailnum.notna() & frame.dep_delay.notna() & frame.arr_delay.notna()
                  & (frame.sched_dep_ts < as_of)].sort_values("sched_dep_ts").tail(limit)
    return [{"request": {"origin": r.origin, "dest": r.dest, "carrier": r.carrier, "tailnum": r.tailnum,
                         "sched_dep_ts": r.sched_dep_ts.isoformat(), "sched_arr_ts": r.sched_arr_ts.isoformat(),
                         "dep_delay": float(r.dep_delay)},
             "flight": f"{r.carrier}{r.flight}", "actual": float(r.arr_delay)} for r in frame.itertuples()]


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


def run_demo_requests(settings: Settings, *, n_single: int = 5, n_batch: int = 20, keep_running: bool = False) -> str:
    """Start the API (if not running), call it for real flights, return the text to print."""
    import httpx

    if settings.api.as_of is None:
        return "  (the prediction API demo needs api.as_of: the flights data is historical)"
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
        model = details.get(settings.api.usecases[0], {})
        lines.append(f"  API {base}: {'ready' if ready.status_code == 200 else 'NOT ready'}; model "
                     f"{model.get('model')} v{model.get('version')} on Triton: {model.get('triton_ready')}; "
                     f"online store {details['online_store']['backend']}: {details['online_store']['usable']}")
        if not model.get("bundle_loaded"):
            lines.append(f"  no model to serve yet ({model.get('bundle_error')}): train and register one first")
        flights = _flights(settings, max(n_single, n_batch))
        lines.append(f"  {len(flights[:n_single])} real flights of {flights[0]['request']['sched_dep_ts'][:10]}, "
                     f"clock {settings.api.as_of.isoformat()} (api.as_of):")
        lines.append(f"  {'flight':<8} {'route':<8} {'dep delay':>9} {'predicted arr delay [80%]':>27} "
                     f"{'arrival (UTC)':>14} {'actual':>7} {'confidence':>10} {'runtime':>8} {'ms':>5}")
        with httpx.Client(headers=headers, timeout=10) as client:
            for f in flights[:n_single]:
                t = time.perf_counter()
                r = client.post(f"{base}/v1/predict", json=f["request"])
                ms = (time.perf_counter() - t) * 1e3
                if r.status_code != 200:
                    lines.append(f"  {f['flight']:<8} HTTP {r.status_code}: {r.json().get('message', r.text)[:150]}")
                    continue
                a = r.json()
                lo, hi = a["interval"]["0.8"]["arr_delay"]
                req = f["request"]
                lines.append(
                    f"  {f['flight']:<8} {req['origin']}-{req['dest']:<4} {req['dep_delay']:>8.0f}m "
                    f"{a['prediction']['arr_delay']:>10.1f}m [{lo:>6.1f}, {hi:>6.1f}] "
                    f"{a['prediction']['predicted_arrival'][11:16]:>14} {f['actual']:>6.0f}m "
                    f"{a['confidence']['level']:>10} {a['model']['runtime']:>8} {ms:>5.1f}"
                    + (f"  degraded: {'; '.join(a['degraded_reasons'])}" if a["degraded"] else ""))
            r = client.post(f"{base}/v1/predict/batch", json={"requests": [f["request"] for f in flights[:n_batch]]})
            if r.status_code == 200:
                answers = r.json()["predictions"]
                errors = [abs(a["prediction"]["arr_delay"] - f["actual"]) for a, f in zip(answers, flights, strict=False)]
                inside = sum(a["interval"]["0.8"]["arr_delay"][0] <= f["actual"] <= a["interval"]["0.8"]["arr_delay"][1]
                             for a, f in zip(answers, flights, strict=False))
                lines.append(f"  batch of {len(answers)}: mean absolute error {sum(errors) / len(errors):.1f} min; "
                             f"{inside}/{len(answers)} actual delays inside the 80% interval")
            else:
                lines.append(f"  batch: HTTP {r.status_code}: {r.text[:200]}")
        auth = ' -H "Authorization: Bearer $ATELIER_API_TOKEN"' if settings.api.auth_required else ""
        example = flights[0]["request"]
        body = ", ".join(f'"{k}": {v!r}'.replace("'", '"') for k, v in example.items())
        lines.append("  call it yourself (`atelier serve` runs it in the foreground; OpenAPI at /docs):")
        lines.append(f"    curl -s {base}/v1/predict{auth} -H 'Content-Type: application/json' \\")
        lines.append(f"      -d '{{{body}}}'")
        lines.append(f"  metrics: {base}/metrics   readiness: {base}/readyz   prediction log: "
                     f"{settings.prediction_log_path}")
    finally:
        if started_here and not keep_running:
            supervisor.down(spec)
    return "\n".join(lines)
