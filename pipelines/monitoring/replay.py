"""Replay: real historical traffic through the running prediction API, on a simulated clock.

For each simulated day the replay merges three streams in time order and plays them:

* **features**: each batch view's rows whose event time falls in the day, computed by the offline code
  (``offline.compute_view``, the feature language's Spark compiler) and written to the online store at
  their event time, so a request at time T sees exactly what was known at T: the latest row with event
  time <= T, as the point-in-time join of training does (ties at T included). Before the first day the
  store is cleared and filled by ``materialize.materialize_view`` over the views' TTL;
* **requests**: every label-source row (flights) whose request time (``feedback.yaml`` ``request_time``:
  the push-back) falls in the day, sent to ``POST /v1/predict`` in request-time order with the
  ``X-Atelier-As-Of`` header set to that time (the API judges feature ages on the replay's clock without
  a restart) and a request id derived from the label key (``rp-<key>``), so a replay run twice sends the
  same requests and the log's records can be counted once. Requests with no feature write between them
  go out together (bounded concurrency); ``rate`` bounds requests per wall-clock second;
* **outcomes**: each requested row's label, released ``label_delay`` after its ``outcome_time`` (the
  arrival) into the outcome log (``<home>/outcomes/<usecase>/date=<release day>/replay-<day>.jsonl``,
  rewritten whole by a re-run). Rows without a label (a diverted or cancelled flight) release nothing.
  With ``drain`` the clock runs on after the last day, without traffic, until every outcome is out.

Loopback only: the API URL must be a loopback address (a replay is a load generator).
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from pipelines.config import Settings
from pipelines.featurestore.materialize import materialize_view, online_schema, online_view_name
from pipelines.featurestore.offline import EVENT_TIME, compute_view
from pipelines.featurestore.spec import FeatureSet, load_feature_set
from pipelines.interface import json_value
from pipelines.lake.tables import Lake
from pipelines.monitoring.spec import FeedbackSpec, load_feedback_spec
from pipelines.usecases import UseCase, get_usecase

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["DayStats", "ReplayError", "ReplayResult", "prepare_store", "replay", "request_id_for"]

log = logging.getLogger("atelier.replay")
REQUEST_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:\-]")
AS_OF_HEADER = "X-Atelier-As-Of"
CHUNK_DAYS = 7  # feature rows computed by Spark this many days at a time
READY_WAIT_S = 30.0


class ReplayError(RuntimeError):
    """The replay cannot run (API unreachable or refusing the simulated clock, bad range, no data)."""


def request_id_for(key: tuple) -> str:
    """A request id the API accepts, derived from the label key (the same flight -> the same id)."""
    text = "rp-" + "|".join(str(k) for k in key)
    return REQUEST_ID_UNSAFE.sub("_", text)[:64]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc(ts: Any) -> datetime:
    value = ts.to_pydatetime() if hasattr(ts, "to_pydatetime") else ts
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class DayStats:
    day: str
    requests: int = 0
    answered: int = 0
    failed: int = 0
    skipped_rows: int = 0
    feature_rows: int = 0
    outcomes_released: int = 0
    status: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass
class ReplayResult:
    usecase: str
    start: str
    end: str
    days: list[DayStats]
    outcomes_pending: int
    wall_s: float
    outcome_log: str

    @property
    def requests(self) -> int:
        return sum(d.requests for d in self.days)

    @property
    def answered(self) -> int:
        return sum(d.answered for d in self.days)

    @property
    def failed(self) -> int:
        return sum(d.failed for d in self.days)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests": self.requests, "answered": self.answered, "failed": self.failed}


@dataclass(order=True)
class _Event:
    at: datetime
    order: int  # features (0) before outcomes (1) before requests (2) at the same instant
    seq: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False)


class _Traffic:
    """The HTTP side: an asyncio client, bounded concurrency and rate, counted statuses."""

    def __init__(self, api_url: str, token: str | None, concurrency: int, rate: float | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10.0,
                                        limits=httpx.Limits(max_connections=concurrency,
                                                            max_keepalive_connections=concurrency))
        self.semaphore = asyncio.Semaphore(concurrency)
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    async def close(self) -> None:
        await self.client.aclose()

    async def _pace(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        wait = self.next_at - now
        self.next_at = max(now, self.next_at) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)

    async def send(self, body: dict[str, Any], as_of: datetime, request_id: str) -> int:
        """The final HTTP status (transport errors and 429/503 are retried twice), 0 when unreachable."""
        import httpx

        async def post() -> int:
            try:
                r = await self.client.post("/v1/predict", json=body,
                                           headers={AS_OF_HEADER: _iso(as_of), "X-Request-Id": request_id})
            except httpx.TransportError:
                return 0
            if r.status_code == 422 and AS_OF_HEADER.lower() in r.text:
                raise ReplayError(f"the API refuses the simulated clock: {r.text[:300]} (a replay needs "
                                  "api.allow_as_of_header on the server, as in the local and test profiles)")
            return r.status_code

        def last_status(state: RetryCallState) -> int:
            return state.outcome.result() if state.outcome else 0

        async with self.semaphore:
            await self._pace()
            # Jitter spreads the retries of requests the API shed together.
            retrying = AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential_jitter(0.05, 1, jitter=0.05),
                                     retry=retry_if_result(lambda status: status in (0, 429, 503)),
                                     retry_error_callback=last_status)
            return int(await retrying(post))


def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ReplayError(f"the replay only drives an API on a loopback address, not {host!r}")


def _request_frame(spark: SparkSession, lake: Lake, spec: FeedbackSpec, columns: list[str], start: datetime,
                   end: datetime) -> Any:
    from pyspark.sql import functions as F  # noqa: N812

    label = spec.label
    wanted = list(dict.fromkeys([*columns, *label.keys, label.column, spec.request_time, spec.outcome_time]))
    frame = (spark.read.parquet(lake.path(label.source))
             .where((F.col(spec.request_time) >= F.lit(start)) & (F.col(spec.request_time) < F.lit(end)))
             .select(*wanted))
    out = frame.toPandas()
    for column in out.columns:  # Spark hands naive UTC times to pandas (the session's time zone is UTC)
        if str(out[column].dtype).startswith("datetime64") and out[column].dt.tz is None:
            out[column] = out[column].dt.tz_localize("UTC")
    return out.sort_values([spec.request_time, *label.keys], kind="stable")


def _feature_events(spark: SparkSession, lake: Lake, features: FeatureSet, start: datetime,
                    end: datetime) -> list[tuple[datetime, str, tuple, dict[str, Any]]]:
    """(event time, online view, key, values) of every batch view's rows with event time in [start, end)."""
    out = []
    for view in features.batch_views:
        rows = compute_view(spark, lake, view, start, end).select(*view.keys, EVENT_TIME, *view.feature_names)
        name = online_view_name(features.usecase, view.name)
        for row in rows.toLocalIterator():
            values = {f: row[f] for f in view.feature_names}
            out.append((_utc(row[EVENT_TIME]), name, tuple(row[k] for k in view.keys), values))
    out.sort(key=lambda e: (e[0], e[1], tuple(str(k) for k in e[2])))
    return out


def prepare_store(store: Any, features: FeatureSet, *, clear: bool) -> None:
    """Apply the use case's online views (an API answers only once they exist) and, with ``clear``, empty them."""
    store.apply([online_schema(features.usecase, v) for v in features.batch_views])
    if clear:
        for view in features.batch_views:
            store.clear(online_view_name(features.usecase, view.name))


def replay(settings: Settings, spark: SparkSession, usecase: str | UseCase, start: date, end: date, *,
           api_url: str, token: str | None = None, rate: float | None = None,
           label_delay: timedelta | None = None, concurrency: int = 4, reset: bool = True, drain: bool = True,
           progress: Callable[[DayStats], None] | None = None,
           request_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ReplayResult:
    """Replay the days [start, end) through the API at ``api_url`` (see the module doc). Returns the counts.

    ``request_hook`` sees (and may change) each request body before it is sent: fault injection, e.g. a
    field that a buggy client stops sending for some of its requests (the outcome stays the real one).
    ``reset`` clears the use case's online views first (the store must hold no row from after ``start``,
    or requests would see the future); ``label_delay`` defaults to the spec's."""
    from pipelines.interface import outcome_key_columns, request_columns, required_request_columns
    from pipelines.stores.online import get_online_store

    if start >= end:
        raise ReplayError(f"empty range: {start} is not before {end}")
    _check_loopback(api_url)
    uc = usecase if isinstance(usecase, UseCase) else get_usecase(usecase, settings.usecases_path)
    features = load_feature_set(uc)
    spec = load_feedback_spec(uc, features)
    delay = spec.label_delay if label_delay is None else label_delay
    types = {c: t for c, (t, _) in {**request_columns(uc, features), **outcome_key_columns(uc, features)}.items()}
    required = required_request_columns(uc, features)
    label = spec.label
    lake = Lake.from_settings(settings)
    outcome_dir = settings.outcome_log_path / uc.name
    started = time.monotonic()
    t_start = datetime(start.year, start.month, start.day, tzinfo=UTC)
    t_end = datetime(end.year, end.month, end.day, tzinfo=UTC)

    store = get_online_store(settings)
    try:
        prepare_store(store, features, clear=reset)
        for view in features.batch_views:
            # What was known when the replay's clock starts: the real materialization over the view's TTL.
            materialize_view(spark, settings, features, view, t_start - (view.ttl or timedelta(days=1)), t_start,
                             now=t_start)
        return asyncio.run(_play(settings, spark, uc, features, spec, store, lake, t_start, t_end, delay, types,
                                 required, label, outcome_dir, api_url, token, concurrency, rate, drain, progress,
                                 started, request_hook))
    finally:
        store.close()


async def _play(settings: Settings, spark: SparkSession, uc: UseCase, features: FeatureSet, spec: FeedbackSpec,
                store: Any, lake: Lake, t_start: datetime, t_end: datetime, delay: timedelta,
                types: dict[str, str], required: list[str], label: Any, outcome_dir: Path, api_url: str,
                token: str | None, concurrency: int, rate: float | None, drain: bool,
                progress: Callable[[DayStats], None] | None, started: float,
                request_hook: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ReplayResult:
    traffic = _Traffic(api_url, token, concurrency, rate)
    # The API re-checks its store every 2 s: views the replay just applied make it ready shortly.
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        try:
            r = await traffic.client.get("/readyz")
        except Exception as exc:  # noqa: BLE001 - httpx transport errors
            await traffic.close()
            raise ReplayError(f"the prediction API at {api_url} is not answering ({type(exc).__name__}: {exc})") from None
        if r.status_code == 200:
            break
        if time.monotonic() > deadline:
            await traffic.close()
            raise ReplayError(f"the prediction API at {api_url} is not ready: {r.text[:300]}")
        await asyncio.sleep(1.0)
    pending: list[tuple[datetime, int, dict[str, Any]]] = []  # (release time, seq, outcome record)
    days: list[DayStats] = []
    seq = 0
    try:
        day = t_start
        while day < t_end:
            chunk_end = min(t_end, day + timedelta(days=CHUNK_DAYS))
            feature_events = _feature_events(spark, lake, features, day, chunk_end)
            requests = _request_frame(spark, lake, spec, list(types), day, chunk_end)
            while day < chunk_end:
                next_day = day + timedelta(days=1)
                stats = DayStats(day.date().isoformat())
                t0 = time.monotonic()
                events: list[_Event] = []
                for at, view, key, values in feature_events:
                    if day <= at < next_day:
                        seq += 1
                        events.append(_Event(at, 0, seq, "feature", (view, key, values)))
                stats.feature_rows = len(events)
                todays = requests[(requests[spec.request_time] >= day) & (requests[spec.request_time] < next_day)]
                for row in todays.to_dict("records"):
                    body = {c: json_value(row.get(c), t) for c, t in types.items()}
                    if any(body[c] is None for c in required):
                        stats.skipped_rows += 1
                        continue
                    body["usecase"] = uc.name
                    if request_hook is not None:
                        body = request_hook(body)
                    key = tuple(row[k] for k in label.keys)
                    at = _utc(row[spec.request_time])
                    seq += 1
                    events.append(_Event(at, 2, seq, "request", (body, request_id_for(key))))
                    value, outcome_at = row.get(label.column), row.get(spec.outcome_time)
                    if value is not None and not (isinstance(value, float) and math.isnan(value)) and \
                            outcome_at is not None and not _is_nat(outcome_at):
                        release = _utc(outcome_at) + delay
                        record = {**{k: json_value(row[k], types.get(k, "string")) for k in label.keys},
                                  label.column: float(value),
                                  "event_time": _iso(_utc(row[label.event_time])),
                                  "outcome_time": _iso(_utc(outcome_at)), "arrived_at": _iso(release),
                                  "source": "replay"}
                        seq += 1
                        heapq.heappush(pending, (release, seq, record))
                released = await _run_day(store, traffic, events, pending, next_day, stats)
                _write_outcomes(outcome_dir, day.date(), released)
                stats.outcomes_released = len(released)
                stats.wall_s = round(time.monotonic() - t0, 3)
                days.append(stats)
                log.info("replay %s", json.dumps(asdict(stats)))
                if progress is not None:
                    progress(stats)
                day = next_day
        if drain and pending:
            drained = [heapq.heappop(pending)[2] for _ in range(len(pending))]
            by_day: dict[date, list[dict]] = {}
            for record in drained:
                by_day.setdefault(date.fromisoformat(record["arrived_at"][:10]), []).append(record)
            for release_day, records in by_day.items():
                _write_outcomes(outcome_dir, release_day, records, name="replay-drain")
    finally:
        await traffic.close()
    return ReplayResult(uc.name, t_start.date().isoformat(), t_end.date().isoformat(), days, len(pending),
                        round(time.monotonic() - started, 3), str(outcome_dir))


def _is_nat(value: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


async def _run_day(store: Any, traffic: _Traffic, events: list[_Event],
                   pending: list[tuple[datetime, int, dict[str, Any]]], day_end: datetime,
                   stats: DayStats) -> list[dict[str, Any]]:
    """Play one day's events in time order; returns the outcomes released during the day."""
    from pipelines.stores.online.base import FeatureRow

    events.sort()
    released: list[dict[str, Any]] = []
    statuses: Counter[int] = Counter()
    wave: list[_Event] = []
    writes: dict[str, list[FeatureRow]] = {}

    async def flush_wave() -> None:
        if not wave:
            return
        codes = await asyncio.gather(*(traffic.send(e.payload[0], e.at, e.payload[1]) for e in wave))
        statuses.update(codes)
        wave.clear()

    def flush_writes(now: datetime) -> None:
        for view, rows in writes.items():
            store.write(view, rows, now=now)
        writes.clear()

    for event in events:
        while pending and pending[0][0] <= event.at:
            released.append(heapq.heappop(pending)[2])
        if event.kind == "feature":
            await flush_wave()  # every request before this instant is answered before the store changes
            view, key, values = event.payload
            writes.setdefault(view, []).append(FeatureRow(key, values, event.at))
        else:
            if writes:
                flush_writes(event.at)
            wave.append(event)
    await flush_wave()
    if writes:
        flush_writes(day_end)
    while pending and pending[0][0] < day_end:
        released.append(heapq.heappop(pending)[2])
    stats.requests = sum(statuses.values())
    stats.answered = statuses.get(200, 0)
    stats.failed = stats.requests - stats.answered
    stats.status = {str(k): v for k, v in sorted(statuses.items())}
    return released


def _write_outcomes(folder: Path, day: date, records: list[dict[str, Any]], name: str | None = None) -> None:
    """One file per replayed day, replaced whole (atomic rename), so a re-run does not append twice."""
    if not records:
        return
    target = folder / f"date={day.isoformat()}"
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name or 'replay-' + day.isoformat()}.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
