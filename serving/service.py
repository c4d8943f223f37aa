"""The prediction service behind the HTTP routes: models, features, inference, fallbacks, uncertainty, log.

Per use case (:class:`UseCaseRuntime`): the spec-derived request schema and the versions in service, each a
:class:`ServedVersion` (the registry version's bundle, which carries the calibration, the training ranges and
the fallback; its feature resolver; its Triton client, pinned to that version's Triton model). Which versions
serve, with which role and weight, is the use case's routing table (:mod:`pipelines.deploy.routing`), followed
every ``deploy.routing_poll_s`` without a restart; without a table the API serves the ``api.model_alias``
version, and a version pinned in ``api.models`` (``name:version``, an operator's override) is served whatever
the table says. The API never writes model repositories: the deployment
(:mod:`pipelines.deploy`, DAG ``model_deploy``) loads versions into Triton before routing traffic to them.

Every answer names exactly one model version and one routing version (``routing``); a shadow version scores a
copy of the request after the answer is built (a bounded queue, drops counted) and is only logged.

A request's path (:meth:`PredictionService.predict`), every stage bounded by what is left of the deadline:

1. feature lookup: one ``read_many_views`` on the online store at the request's clock (SQLite inline;
   Cassandra with the driver's asynchronous requests on the event loop, ``read_many_views_async``),
   with a timeout; a failure, a timeout or an open circuit -> defaults, flagged.
2. transform: freshness policies, request features (feature language's Python compiler), the float32 row.
3. inference on Triton by the version the routing table picks for the request (kept-alive HTTP, timeout =
   min(triton budget, time left)); a timeout, a refusal, a missing model or an open circuit -> that version's
   fallback predictor, ``degraded: true`` with the reason.
4. intervals from the calibration in use (the bundle's split-conformal one, or the newest recalibration the
   feedback loop published for this version, followed every 2 s and named in the answer); confidence lowered (and why) for defaulted or
   stale features, out-of-training-range values and fallback answers; the answer goes to the prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipelines.config import Settings
from pipelines.deploy.routing import RoutingError, RoutingStore, RoutingTable
from pipelines.deploy.triton import triton_name
from pipelines.featurestore.spec import FeatureSet, load_feature_set
from pipelines.interface import OutputSpec
from pipelines.models.bundle import Calibration, ModelBundle
from pipelines.models.classification import PredictionSets, probabilities
from pipelines.monitoring.recalibration import bundle_calibration_id, calibration_dir, load_current
from pipelines.usecases import get_usecase
from serving.features import FeatureResolver, StaleFeature
from serving.inference import TritonModel, TritonUnavailable
from serving.metrics import ApiMetrics
from serving.predlog import PredictionLog
from serving.resilience import CircuitBreaker
from serving.schemas import RequestSchema

__all__ = ["NoModel", "OutputSpec", "PredictionService", "ServedVersion", "StaleFeature", "UseCaseRuntime"]

log = logging.getLogger("atelier.serving")
MIN_INFERENCE_S = 0.002  # below this much time left, the fallback answers at once


class NoModel(RuntimeError):
    """No model bundle is loaded for the use case (registry unreachable or no version): 503, retry later."""


class ServedVersion:
    """One registry version the API answers (or shadows) with."""

    def __init__(self, rt: UseCaseRuntime, bundle: ModelBundle) -> None:
        missing = [f for f in bundle.feature_names if f not in rt.resolver.feature_names]
        if missing:
            raise ValueError(f"model {rt.model_name} v{bundle.version} needs features the spec does not define: "
                             f"{missing}")
        self.usecase, self.model_name, self.version = rt.name, rt.model_name, str(bundle.version)
        self.bundle = bundle
        self.resolver = FeatureResolver(rt.features, dict(bundle.feature_defaults))
        self.levels = [f"{level:g}" for level in bundle.calibration.levels]
        # The intervals' calibration: the bundle's, until the feedback loop publishes a recalibration (a
        # classifier's prediction sets stay the bundle's: the feedback loop recalibrates intervals).
        self.calibration: Calibration | PredictionSets = bundle.calibration
        self.calibration_id = bundle_calibration_id(self.model_name, self.version)
        self.calibration_stamp: int | None = None
        self.triton: TritonModel | None = None
        self.triton_breaker = CircuitBreaker(failures=3, cooldown_s=0.5)
        self.triton_ready = False

    @property
    def triton_model(self) -> str:
        return triton_name(self.model_name, self.version)

    def follow_calibration(self, settings: Settings) -> None:
        """Serve the newest recalibration the feedback loop published for this version (if changed)."""
        if self.bundle.is_classifier:
            return
        folder = calibration_dir(settings, self.usecase, self.model_name, self.version)
        try:
            stamp = (folder / "current.json").stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self.calibration_stamp:
            return
        self.calibration_stamp = stamp
        try:
            loaded = load_current(folder)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("use case %s: unreadable recalibration in %s (%s): keeping %s", self.usecase, folder, exc,
                        self.calibration_id)
            return
        if loaded is None:
            return
        calibration_id, calibration = loaded
        segment = calibration.segment_feature
        if tuple(calibration.levels) != tuple(self.bundle.calibration.levels) or (
                segment is not None and segment not in self.bundle.feature_names):
            log.warning("use case %s: recalibration %s does not fit the model (levels or segment feature): "
                        "keeping %s", self.usecase, calibration_id, self.calibration_id)
            return
        self.calibration, self.calibration_id = calibration, calibration_id
        log.info("use case %s: serving intervals of %s", self.usecase, calibration_id)


class UseCaseRuntime:
    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self.usecase = get_usecase(name, settings.usecases_path)
        self.features: FeatureSet = load_feature_set(self.usecase)
        self.schema = RequestSchema(self.usecase, self.features, settings.api.max_batch)
        # api.models maps a use case to "<registered name>" (served by alias) or "<name>:<version>" (pinned).
        target = settings.api.models.get(name, name)
        self.model_name, _, pinned = target.partition(":")
        self.model_version: str | None = pinned or None
        self.output = OutputSpec.load(self.usecase, self.features.label.column if self.features.label else "value")
        self.resolver = FeatureResolver(self.features)
        self.versions: dict[str, ServedVersion] = {}
        self.static_version: str | None = None  # served when the use case has no routing table
        self.table: RoutingTable | None = None
        self.routing_stamp: tuple[int, int] | None = None
        self.bundle_error: str | None = "not loaded yet"

    @property
    def primary(self) -> ServedVersion | None:
        version = self.table.primary.version if self.table is not None else self.static_version
        return self.versions.get(version) if version is not None else None

    @property
    def routing_version(self) -> int:
        return self.table.version if self.table is not None else 0

    def attach(self, bundle: ModelBundle) -> ServedVersion:
        """Serve ``bundle`` as the static version (no routing table)."""
        sv = ServedVersion(self, bundle)
        self.versions[sv.version] = sv
        self.static_version, self.bundle_error = sv.version, None
        return sv

    def pick(self, request_id: str, row: dict[str, Any]) -> tuple[ServedVersion | None, str, str | None]:
        """(version, role, arm) answering a request: the routing table's choice, or the primary while the
        chosen version is not loaded (yet)."""
        table, primary = self.table, self.primary
        if table is None:
            return primary, "primary", None
        sticky = row.get(table.sticky_key) if table.sticky_key else None
        route = table.choose(request_id, None if sticky is None else str(sticky))
        chosen = self.versions.get(route.version)
        if chosen is None:
            return primary, "primary", None
        return chosen, route.role, route.arm

    def shadows(self, request_id: str) -> list[ServedVersion]:
        if self.table is None:
            return []
        return [sv for r in self.table.shadowed(request_id) if (sv := self.versions.get(r.version)) is not None]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _plus_minutes(epoch_s: float, minutes: float) -> str | None:
    """The instant ``epoch_s`` + minutes as ISO 8601 UTC, to the second (None outside years 1..9999)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(epoch_s + minutes * 60)))
    except (OverflowError, OSError, ValueError):
        return None


def public_load_error(exc: BaseException) -> str:
    """What ``/readyz`` (unauthenticated) says of a failed model load: the registry's own "not found" message
    (it names the model and its aliases, which a caller of this API may know), otherwise only the kind of
    failure; the exception's text (URIs, paths, library internals) goes to the API's log only."""
    from pipelines.models.registry import ModelNotFound, RegistryUnavailable

    if isinstance(exc, ModelNotFound):
        return str(exc).splitlines()[0][:300]
    if isinstance(exc, RegistryUnavailable):
        return "the model registry is unreachable or failing (details in the API log)"
    return f"the model bundle could not be loaded ({type(exc).__name__}; details in the API log)"


class PredictionService:
    def __init__(self, settings: Settings, *, store: Any = None, bundles: dict[str, ModelBundle] | None = None,
                 metrics: ApiMetrics | None = None) -> None:
        self.settings = settings
        self.api = settings.api
        self.metrics = metrics or ApiMetrics()
        self.runtimes = {name: UseCaseRuntime(settings, name) for name in self.api.usecases}
        self.default_usecase = self.api.usecases[0]
        self._given_bundles = bundles or {}
        self._store = store
        self._store_inline = settings.online_store.backend == "sqlite"
        self.store_breaker = CircuitBreaker(failures=3, cooldown_s=1.0)
        self.store_ready = False
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-store")
        self.log = PredictionLog(settings.prediction_log_path, max_queue=self.api.prediction_log_queue,
                                 max_bytes=self.api.prediction_log_max_bytes,
                                 retention_s=self.api.prediction_log_retention_days * 86_400,
                                 on_written=self.metrics.log_written.inc, on_failed=self.metrics.log_failed.inc,
                                 on_evicted=lambda reason, size: self.metrics.log_evicted.labels(reason).inc(size))
        self.metrics.log_ok.set_function(lambda: float(self.log.error is None))
        self.routing = RoutingStore(settings.routing_path)
        self._maintenance: asyncio.Task | None = None
        self._router: asyncio.Task | None = None
        self._shadow_worker: asyncio.Task | None = None
        self._shadow_queue: asyncio.Queue | None = None
        self._retired: list[tuple[float, ServedVersion]] = []
        self.in_flight = 0
        self.started = False

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> Any:
        if self._store is None:
            from pipelines.stores.online import get_online_store

            options: dict[str, Any] = {}
            if self.settings.online_store.backend == "cassandra":
                budget = self.api.feature_timeout_ms / 1000
                options = {"read_timeout_s": max(budget, 0.01), "connect_timeout_s": 2.0}
            self._store = get_online_store(self.settings, **options)
        return self._store

    async def start(self) -> None:
        self.log.start()
        self._shadow_queue = asyncio.Queue(maxsize=self.api.shadow_queue)
        for rt in self.runtimes.values():
            await self._follow_routing(rt)
            if rt.table is None:
                await self._load_bundle(rt)
            for sv in list(rt.versions.values()):
                sv.follow_calibration(self.settings)
                await self._ensure_triton(sv)
        await self._check_store()
        self._maintenance = asyncio.create_task(self._maintain())
        if not self._given_bundles:
            self._router = asyncio.create_task(self._route_loop())
        self._shadow_worker = asyncio.create_task(self._shadow_loop())
        # Everything loaded at start lives as long as the process: keep it out of the collector's way, and
        # collect young objects less often (a request allocates a few hundred short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)
        self.started = True

    async def stop(self) -> None:
        for task in (self._maintenance, self._router, self._shadow_worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for rt in self.runtimes.values():
            for sv in rt.versions.values():
                if sv.triton is not None:
                    await sv.triton.close()
        for _, sv in self._retired:
            if sv.triton is not None:
                await sv.triton.close()
        self.log.close()
        with contextlib.suppress(Exception):
            if self._store is not None:
                self._store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _load_bundle(self, rt: UseCaseRuntime) -> None:
        """The static version (no routing table): ``api.models``' pinned version or the alias's."""
        if rt.name in self._given_bundles:
            rt.attach(self._given_bundles[rt.name])
            return
        from pipelines.models.registry import load_bundle

        try:
            bundle = await asyncio.to_thread(load_bundle, self.settings, rt.model_name,
                                             None if rt.model_version else self.api.model_alias, rt.model_version)
            rt.attach(bundle)
            log.info("use case %s: model %s version %s loaded", rt.name, rt.model_name, bundle.version)
        except Exception as exc:  # noqa: BLE001 - ModelNotFound, RegistryUnavailable, bad bundle: retried later
            rt.bundle_error = public_load_error(exc)
            log.warning("use case %s: no model (%s: %s)", rt.name, type(exc).__name__, exc)

    async def _served_version(self, rt: UseCaseRuntime, version: str) -> ServedVersion:
        sv = rt.versions.get(version)
        if sv is not None:
            return sv
        from pipelines.models.registry import load_bundle

        bundle = await asyncio.to_thread(load_bundle, self.settings, rt.model_name, None, version)
        sv = ServedVersion(rt, bundle)
        sv.follow_calibration(self.settings)
        await self._ensure_triton(sv)
        rt.versions[version] = sv
        log.info("use case %s: version %s loaded (Triton ready: %s)", rt.name, version, sv.triton_ready)
        return sv

    async def _follow_routing(self, rt: UseCaseRuntime) -> None:
        """Apply the use case's routing table when it changed: load the versions it names first, then switch.
        A version pinned in ``api.models`` (``name:version``) is an operator's override: no table applies."""
        if rt.model_version is not None:
            return
        path = self.routing.current_path(rt.name)
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == rt.routing_stamp:
            return
        if stamp is None:
            if rt.table is not None:
                log.warning("use case %s: routing table %s removed: serving the static version", rt.name, path)
                rt.table, rt.routing_stamp = None, None
                await self._load_bundle(rt)
            return
        try:
            table = self.routing.read(rt.name)
        except (OSError, RoutingError) as exc:
            log.warning("use case %s: unreadable routing table (%s): keeping routing version %s", rt.name, exc,
                        rt.routing_version)
            rt.routing_stamp = stamp
            return
        if table is None:
            return
        if table.model != rt.model_name:
            log.warning("use case %s: routing table names model %s, the API serves %s: ignored", rt.name,
                        table.model, rt.model_name)
            rt.routing_stamp = stamp
            return
        for version in table.versions:
            try:
                await self._served_version(rt, version)
            except Exception as exc:  # noqa: BLE001 - the registry or a bundle: retried at the next poll
                if version == table.primary.version:
                    log.warning("use case %s: routing version %s: primary %s not loadable (%s): keeping "
                                "routing version %s", rt.name, table.version, version, exc, rt.routing_version)
                    return
                log.warning("use case %s: routing version %s: version %s not loadable (%s): its share goes to "
                            "the primary", rt.name, table.version, version, exc)
        rt.table, rt.routing_stamp, rt.bundle_error = table, stamp, None
        self.metrics.routing_version.labels(rt.name).set(table.version)
        keep = set(table.versions)
        for version in [v for v in rt.versions if v not in keep]:
            # In-flight requests may still hold it: close its client after the drain time.
            self._retired.append((time.monotonic() + self.settings.deploy.drain_s + 5.0, rt.versions.pop(version)))
        log.info("use case %s: routing version %s applied: %s", rt.name, table.version,
                 ", ".join(f"v{r.version} {r.role} {r.weight:g}" for r in table.routes))

    async def _route_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.deploy.routing_poll_s)
            try:
                for rt in self.runtimes.values():
                    await self._follow_routing(rt)
                now = time.monotonic()
                while self._retired and self._retired[0][0] <= now:
                    _, sv = self._retired.pop(0)
                    if sv.triton is not None:
                        await sv.triton.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let the routing loop die
                log.warning("routing: %s", exc)

    async def _ensure_triton(self, sv: ServedVersion) -> None:
        """Open the Triton client of the version's Triton model and check it is ready (the API never loads it)."""
        if sv.triton is None:
            sv.triton = TritonModel(self.settings.triton.http_url, sv.triton_model, sv.version,
                                    len(sv.bundle.feature_names))
        was_ready = sv.triton_ready
        sv.triton_ready = await sv.triton.ready()
        if sv.triton_ready and not was_ready:
            await self._warm_up(sv)

    async def _warm_up(self, sv: ServedVersion) -> None:
        """Open as many connections as calls may run at once (a few concurrent calls, a few times), so no
        request pays a connection set-up: a version a canary step starts sending traffic to would otherwise
        show it in its tail latency."""
        assert sv.triton is not None
        await sv.triton.warm()

    async def _check_store(self) -> None:
        rt = next(iter(self.runtimes.values()))
        view = rt.resolver.views[0] if rt.resolver.views else None
        if view is None:
            self.store_ready = True
            return
        probe = {view.online_name: [view.probe_key()]}
        try:
            await self._read(probe, datetime.now(UTC), 2.0)
            self.store_ready = True
        except Exception:  # noqa: BLE001
            self.store_ready = False

    async def _maintain(self) -> None:
        """Every 2 s: retry missing bundles (every 10 s), re-check Triton and the store."""
        last_bundle_try = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            try:
                for rt in self.runtimes.values():
                    if rt.table is None and rt.primary is None and time.monotonic() - last_bundle_try > 10.0:
                        last_bundle_try = time.monotonic()
                        await self._load_bundle(rt)
                    for sv in list(rt.versions.values()):
                        sv.follow_calibration(self.settings)
                        await self._ensure_triton(sv)
                await self._check_store()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let the maintenance loop die
                log.warning("maintenance: %s", exc)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {"online_store": {"backend": self.settings.online_store.backend,
                                                    "usable": self.store_ready},
                                   # Shown, not gating: answers still flow while the log cannot be written.
                                   "prediction_log": self.log.status()}
        ok = self.store_ready
        for rt in self.runtimes.values():
            primary = rt.primary
            model_ok = primary is not None and primary.triton_ready
            triton = primary.triton if primary is not None else None
            details[rt.name] = {"model": rt.model_name,
                                "version": None if primary is None else primary.version,
                                "bundle_loaded": primary is not None, "bundle_error": rt.bundle_error,
                                "triton_ready": bool(primary and primary.triton_ready),
                                "triton_calls": triton.calls if triton else 0,
                                "triton_rows_coalesced": triton.coalesced_rows if triton else 0,
                                "routing_version": rt.routing_version,
                                "routes": self.routes(rt)}
            ok = ok and model_ok
        return ok, details

    def routes(self, rt: UseCaseRuntime) -> list[dict[str, Any]]:
        table = rt.table
        listed = table.routes if table is not None else ()
        out = [{**r.to_dict(), "loaded": r.version in rt.versions,
                "triton_ready": bool((sv := rt.versions.get(r.version)) and sv.triton_ready)} for r in listed]
        if table is None and rt.primary is not None:
            out.append({"version": rt.primary.version, "role": "primary", "weight": 1.0, "loaded": True,
                        "triton_ready": rt.primary.triton_ready})
        return out

    # ------------------------------------------------------------------------------------------ hot path

    def runtime(self, usecase: str | None) -> UseCaseRuntime:
        return self.runtimes[usecase or self.default_usecase]

    async def _read(self, requests: dict[str, list[tuple]], as_of: datetime, timeout_s: float) -> dict:
        store = self.store
        if self._store_inline:
            return store.read_many_views(requests, now=as_of)
        # Asynchronous once connected; connecting (which blocks) happens in a worker thread.
        if store.async_ready:
            async with asyncio.timeout(timeout_s):
                return await store.read_many_views_async(requests, as_of)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: store.read_many_views(requests, now=as_of))
        async with asyncio.timeout(timeout_s):
            return await future

    async def lookup(self, rt: UseCaseRuntime, keys: list[dict[str, tuple | None]], as_of: datetime,
                     deadline: float) -> tuple[list[dict | None], str | None]:
        """Per row {online view: ReadResult}, or None per row when the store could not be used (+ reason)."""
        requests: dict[str, list[tuple]] = {}
        for row_keys in keys:
            for view, key in row_keys.items():
                if key is not None:
                    requests.setdefault(view, []).append(key)
        if not requests:
            return [{} for _ in keys], None
        if not self.store_breaker.allow():
            return [None] * len(keys), "online store unavailable (circuit open after recent failures)"
        budget = min(self.api.feature_timeout_ms / 1000, deadline - time.perf_counter())
        try:
            results = await self._read(requests, as_of, max(budget, 0.001))
        except TimeoutError:
            self.store_breaker.failure()
            self.metrics.errors.labels("online_store_timeout").inc()
            return [None] * len(keys), f"online store timed out ({budget * 1e3:.0f} ms)"
        except Exception as exc:  # noqa: BLE001 - OnlineStoreError and driver errors: defaults, flagged
            self.store_breaker.failure()
            self.metrics.errors.labels("online_store_error").inc()
            return [None] * len(keys), f"online store unavailable ({type(exc).__name__})"
        except BaseException:
            # Cancelled (the request's backstop deadline, shutdown): the call never finished, so it counts as
            # a failure; unreported, a half-open probe would hold the breaker open.
            self.store_breaker.failure()
            raise
        self.store_breaker.success()
        by_view = {view: dict(zip(requests[view], res, strict=True)) for view, res in results.items()}
        out: list[dict | None] = []
        for row_keys in keys:
            out.append({view: by_view[view][key] for view, key in row_keys.items() if key is not None})
        return out, None

    async def infer(self, rt: UseCaseRuntime, sv: ServedVersion, matrix: np.ndarray, deadline: float,
                    ) -> tuple[np.ndarray, str | None, str | None]:
        """(outputs, None, None) from Triton, or (the fallback's outputs, reason, error kind or None). Outputs are
        predictions (regression) or margins (classification: :meth:`_uncertainty` makes the probabilities)."""
        reason: str
        kind: str | None = None
        left = deadline - time.perf_counter()
        if sv.triton is None:
            reason = "model not deployed on Triton"
        elif left < MIN_INFERENCE_S:
            reason = "deadline nearly spent before inference"
        elif not sv.triton_breaker.allow():
            reason = "Triton unavailable (circuit open after recent failures)"
            kind = "circuit_open"
        else:
            try:
                raw = await sv.triton.predict(matrix, min(self.api.triton_timeout_ms / 1000,
                                                          left - MIN_INFERENCE_S / 2))
                sv.triton_breaker.success()
                sv.triton_ready = True
                return sv.bundle.add_offset(raw, matrix), None, None  # Triton sums the trees; the offset is ours
            except TritonUnavailable as exc:
                sv.triton_breaker.failure()
                self.metrics.errors.labels(f"triton_{exc.kind}").inc()
                reason, kind = str(exc), exc.kind
            except BaseException:
                sv.triton_breaker.failure()  # cancelled or unexpected: report it, as in lookup
                raise
        self.metrics.fallbacks.labels(rt.name, reason.split(" (")[0][:60]).inc(matrix.shape[0])
        return sv.bundle.fallback_outputs(matrix), reason, kind

    async def predict(self, rt: UseCaseRuntime, rows: list[dict[str, Any]], as_of: datetime, request_id: str,
                      endpoint: str, started: float) -> list[dict[str, Any]]:
        """Answers for validated rows (raises StaleFeature for a ``reject`` policy, NoModel without a bundle)."""
        sv, role, arm = rt.pick(request_id, rows[0])
        if sv is None:
            raise NoModel(f"no model loaded for use case '{rt.name}' ({rt.bundle_error})")
        bundle = sv.bundle
        routing = {"version": rt.routing_version, "role": role}
        if arm is not None:
            routing["arm"] = arm
        deadline = started + self.api.deadline_ms / 1000
        resolver = sv.resolver
        keys = [resolver.keys(row) for row in rows]
        t0 = time.perf_counter()
        results, store_problem = await self.lookup(rt, keys, as_of, deadline)
        t1 = time.perf_counter()
        resolved = []
        for i, (row, row_keys, res) in enumerate(zip(rows, keys, results, strict=True)):
            try:
                resolved.append(resolver.resolve(row, row_keys, res))
            except StaleFeature as exc:
                exc.row = i  # type: ignore[attr-defined]
                self.metrics.freshness.labels(exc.view, "reject").inc()
                raise
        names = bundle.feature_names
        matrix = np.array([resolver.vector(r.values, names) for r in resolved], dtype=np.float32)
        t2 = time.perf_counter()
        outputs, fallback_reason, error = await self.infer(rt, sv, matrix, deadline)
        t3 = time.perf_counter()
        values, uncertainty = self._uncertainty(sv, outputs, matrix, fallback=fallback_reason is not None)
        answers = [self._answer(rt, sv, rows[i], keys[i], resolved[i], values[i], uncertainty[i],
                                fallback_reason, store_problem, as_of,
                                request_id if len(rows) == 1 and endpoint == "predict" else f"{request_id}-{i}",
                                routing, started, error)
                   for i in range(len(rows))]
        t4 = time.perf_counter()
        self.metrics.observe(endpoint, t1 - t0, (t2 - t1) + (t4 - t3), t3 - t2, t4 - started)
        self.metrics.rows.labels(rt.name, "fallback" if fallback_reason else "triton").inc(len(rows))
        self.metrics.routed.labels(rt.name, sv.version, role).inc(len(rows))
        for shadow in rt.shadows(request_id):
            if shadow is sv:
                continue
            item = (rt, shadow, rows, keys, resolved, as_of, [a["request_id"] for a in answers], routing)
            assert self._shadow_queue is not None
            try:
                self._shadow_queue.put_nowait(item)
            except asyncio.QueueFull:
                self.metrics.shadow.labels(rt.name, shadow.version, "dropped").inc(len(rows))
        return answers

    async def _shadow_loop(self) -> None:
        """Score queued copies with their shadow versions, off the requests' path; log them as ``shadow``."""
        assert self._shadow_queue is not None
        while True:
            rt, sv, rows, keys, resolved, as_of, request_ids, routing = await self._shadow_queue.get()
            try:
                started = time.perf_counter()
                matrix = np.array([sv.resolver.vector(r.values, sv.bundle.feature_names) for r in resolved],
                                  dtype=np.float32)
                outputs, reason, error = await self.infer(rt, sv, matrix, started + self.api.deadline_ms / 1000)
                values, uncertainty = self._uncertainty(sv, outputs, matrix, fallback=reason is not None)
                for i, row in enumerate(rows):
                    self._answer(rt, sv, row, keys[i], resolved[i], values[i], uncertainty[i],
                                 reason, None, as_of, request_ids[i], {**routing, "role": "shadow"}, started, error)
                self.metrics.shadow.labels(rt.name, sv.version, "scored").inc(len(rows))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a shadow never hurts serving
                self.metrics.shadow.labels(rt.name, sv.version, "failed").inc(len(rows))
                log.warning("shadow v%s: %s", sv.version, exc)

    @staticmethod
    def _uncertainty(sv: ServedVersion, outputs: np.ndarray, matrix: np.ndarray, fallback: bool = False,
                     ) -> tuple[list[Any], list[Any]]:
        """Per row: (the prediction, its uncertainty). Regression: (value, {level: (low, high)}) from the served
        calibration; classification: (the row's class probabilities, {level: the classes in the prediction set}).
        The fallback's probabilities are its own (a logistic regression's), not put through the model's map."""
        bundle = sv.bundle
        if bundle.is_classifier:
            proba = probabilities(outputs) if fallback else bundle.predict_proba(margins=outputs)
            sets = bundle.prediction_sets(outputs, matrix)
            classes = bundle.classes
            return ([[float(p) for p in row] for row in proba],
                    [{lvl: [classes[k] for k in np.flatnonzero(m[i])] for lvl, m in sets.items()}
                     for i in range(proba.shape[0])])
        intervals = bundle.intervals(outputs, matrix, sv.calibration)
        return ([float(v) for v in outputs],
                [{lvl: (float(lo[i]), float(hi[i])) for lvl, (lo, hi) in intervals.items()}
                 for i in range(outputs.shape[0])])

    def _answer(self, rt: UseCaseRuntime, sv: ServedVersion, row: dict[str, Any], keys: dict[str, tuple | None],
                resolved: Any, value: Any, uncertainty: dict[str, Any], fallback_reason: str | None,
                store_problem: str | None, as_of: datetime, request_id: str, routing: dict[str, Any],
                started: float, error: str | None) -> dict[str, Any]:
        """The answer (and its prediction-log record; a shadow's record only: role ``shadow``)."""
        bundle = sv.bundle
        out = rt.output
        reasons = list(resolved.issues)
        score = len(resolved.issues)
        intervals: dict[str, dict[str, list[Any]]] = {}
        sets: dict[str, list[str]] | None = None
        if bundle.is_classifier:
            # The label is the most probable class; the sets are the uncertainty: at each level, the classes
            # the conformal calibration cannot rule out.
            probabilities = {c: round(p, 4) for c, p in zip(bundle.classes, value, strict=True)}
            prediction: dict[str, Any] = {out.name: bundle.classes[int(np.argmax(value))],
                                          "probabilities": probabilities}
            sets = uncertainty
            widest = max(sets, key=float) if sets else None
            if widest is not None and len(sets[widest]) > 1:
                reasons.append(f"ambiguous: the {float(widest):.0%} prediction set holds {len(sets[widest])} classes")
                score += 1
        else:
            value = round(value, 2)
            prediction = {out.name: value}
            base_ts = row.get(out.time_from) if out.time_from else None
            base = base_ts.timestamp() if base_ts is not None else None
            for level, (lo, hi) in uncertainty.items():
                entry: dict[str, list[Any]] = {out.name: [round(lo, 2), round(hi, 2)]}
                if base is not None and out.time_name:
                    entry[out.time_name] = [_plus_minutes(base, lo), _plus_minutes(base, hi)]
                intervals[level] = entry
            if base is not None and out.time_name:
                prediction[out.time_name] = _plus_minutes(base, value)
        ood = bundle.out_of_range(resolved.values) if bundle.feature_ranges else []
        if ood:
            reasons.append("outside the training distribution: " + ", ".join(ood[:5]))
            score += 1
        degraded_reasons = []
        if fallback_reason:
            degraded_reasons.append(f"fallback predictor answered: {fallback_reason}")
            reasons.append("answered by the fallback predictor (intervals calibrated for the main model)"
                           if not bundle.is_classifier else
                           "answered by the fallback predictor (its own probabilities; sets calibrated for the main model)")
            score += 3
        if store_problem:
            degraded_reasons.append(f"feature defaults used: {store_problem}")
        level = "high" if score == 0 else "medium" if score <= 2 else "low"
        if routing["role"] != "shadow":
            freshness = self.metrics.freshness
            for view, rep in resolved.report.items():
                if rep["action"] != "none":
                    freshness.labels(view, rep["action"]).inc()
        answer = {
            "request_id": request_id,
            "usecase": rt.name,
            "prediction": prediction,
            "interval": intervals,
            **({"sets": sets} if sets is not None else {}),
            "confidence": {"level": level, "reasons": reasons},
            "model": {"name": rt.model_name, "version": sv.version,
                      "runtime": "fallback" if fallback_reason else "triton"},
            "routing": routing,
            "calibration": sv.calibration_id,
            "features": resolved.report,
            "degraded": bool(degraded_reasons),
            "degraded_reasons": degraded_reasons,
            "as_of": _iso(as_of),
        }
        record = dict(answer)
        record["route"] = routing["role"]
        record["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        record["error"] = error
        record["logged_at"] = datetime.now(UTC)
        record["request"] = row
        record["keys"] = {view: list(k) if k is not None else None for view, k in keys.items()}
        record["features_used"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in resolved.values.items()}
        if not self.log.append(rt.name, record):
            self.metrics.log_dropped.inc()
        return answer
