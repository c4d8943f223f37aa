"""The prediction service behind the HTTP routes: models, features, inference, fallbacks, uncertainty, log.

Per use case (:class:`UseCaseRuntime`): the spec-derived request schema, the compiled feature resolver, the
model bundle of the registry version served (``settings.api.model_alias``; it carries the calibration, the
training ranges and the fallback), and the Triton client pinned to that version.

A request's path (:meth:`PredictionService.predict`), every stage bounded by what is left of the deadline:

1. feature lookup: one ``read_many_views`` on the online store at the request's clock (SQLite inline;
   Cassandra with the driver's asynchronous requests on the event loop, :mod:`serving.cassandra_async`),
   with a timeout; a failure, a timeout or an open circuit -> defaults, flagged.
2. transform: freshness policies, request features (feature language's Python compiler), the float32 row.
3. inference on Triton (kept-alive HTTP, timeout = min(triton budget, time left)); a timeout, a refusal, a
   missing model or an open circuit -> the bundle's fallback predictor, ``degraded: true`` with the reason.
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
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Settings
from pipelines.featurestore.spec import FeatureSet, load_feature_set
from pipelines.interface import OutputSpec
from pipelines.models.bundle import Calibration, ModelBundle
from pipelines.monitoring.recalibration import bundle_calibration_id, calibration_dir, load_current
from pipelines.usecases import get_usecase
from serving.cassandra_async import read_many_views_async, supports_async
from serving.features import FeatureResolver, StaleFeature
from serving.inference import TritonModel, TritonUnavailable
from serving.metrics import ApiMetrics
from serving.predlog import PredictionLog
from serving.resilience import CircuitBreaker
from serving.schemas import RequestSchema

__all__ = ["NoModel", "OutputSpec", "PredictionService", "StaleFeature", "UseCaseRuntime"]

log = logging.getLogger("atelier.serving")
MIN_INFERENCE_S = 0.002  # below this much time left, the fallback answers at once


class NoModel(RuntimeError):
    """No model bundle is loaded for the use case (registry unreachable or no version): 503, retry later."""


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
        self.bundle: ModelBundle | None = None
        self.bundle_error: str | None = "not loaded yet"
        self.triton: TritonModel | None = None
        self.triton_breaker = CircuitBreaker(failures=3, cooldown_s=0.5)
        self.triton_ready = False
        self.levels: list[str] = []
        # The intervals' calibration: the bundle's, until the feedback loop publishes a recalibration.
        self.calibration: Calibration | None = None
        self.calibration_id = ""
        self.calibration_stamp: int | None = None

    def attach(self, bundle: ModelBundle) -> None:
        missing = [f for f in bundle.feature_names if f not in self.resolver.feature_names]
        if missing:
            raise ValueError(f"model {self.model_name} v{bundle.version} needs features the spec does not define: "
                             f"{missing}")
        self.resolver = FeatureResolver(self.features, {k: v for k, v in bundle.feature_defaults.items()})
        self.levels = [f"{level:g}" for level in bundle.calibration.levels]
        self.bundle, self.bundle_error = bundle, None
        self.calibration, self.calibration_stamp = bundle.calibration, None
        self.calibration_id = bundle_calibration_id(self.model_name, str(bundle.version))

    def follow_calibration(self, settings: Settings) -> None:
        """Serve the newest recalibration the feedback loop published for this version (if changed)."""
        if self.bundle is None:
            return
        folder = calibration_dir(settings, self.name, self.model_name, str(self.bundle.version))
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
            log.warning("use case %s: unreadable recalibration in %s (%s): keeping %s", self.name, folder, exc,
                        self.calibration_id)
            return
        if loaded is None:
            return
        calibration_id, calibration = loaded
        segment = calibration.segment_feature
        if tuple(calibration.levels) != tuple(self.bundle.calibration.levels) or (
                segment is not None and segment not in self.bundle.feature_names):
            log.warning("use case %s: recalibration %s does not fit the model (levels or segment feature): "
                        "keeping %s", self.name, calibration_id, self.calibration_id)
            return
        self.calibration, self.calibration_id = calibration, calibration_id
        log.info("use case %s: serving intervals of %s", self.name, calibration_id)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _plus_minutes(epoch_s: float, minutes: float) -> str | None:
    """The instant ``epoch_s`` + minutes as ISO 8601 UTC, to the second (None outside years 1..9999)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round(epoch_s + minutes * 60)))
    except (OverflowError, OSError, ValueError):
        return None


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
        self._store_async = settings.online_store.backend == "cassandra"
        self.store_breaker = CircuitBreaker(failures=3, cooldown_s=1.0)
        self.store_ready = False
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="online-store")
        self.log = PredictionLog(settings.prediction_log_path, max_queue=self.api.prediction_log_queue,
                                 on_written=self.metrics.log_written.inc)
        self._maintenance: asyncio.Task | None = None
        self._last_deploy: dict[str, float] = {}
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
            self._store_async = self._store_async and supports_async(self._store)
        return self._store

    async def start(self) -> None:
        self.log.start()
        for rt in self.runtimes.values():
            await self._load_bundle(rt)
            rt.follow_calibration(self.settings)
            await self._ensure_triton(rt, force=True)
        await self._check_store()
        self._maintenance = asyncio.create_task(self._maintain())
        # Everything loaded at start lives as long as the process: keep it out of the collector's way, and
        # collect young objects less often (a request allocates a few hundred short-lived objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 50)
        self.started = True

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._maintenance
        for rt in self.runtimes.values():
            if rt.triton is not None:
                await rt.triton.close()
        self.log.close()
        with contextlib.suppress(Exception):
            if self._store is not None:
                self._store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _load_bundle(self, rt: UseCaseRuntime) -> None:
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
            rt.bundle_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.warning("use case %s: no model (%s)", rt.name, rt.bundle_error)

    async def _ensure_triton(self, rt: UseCaseRuntime, force: bool = False) -> None:
        """Open the Triton client of the bundle's version; deploy and load it when configured and not ready."""
        if rt.bundle is None:
            return
        version = str(rt.bundle.version)
        if rt.triton is None or rt.triton.version != version:
            if rt.triton is not None:
                await rt.triton.close()
            rt.triton = TritonModel(self.settings.triton.http_url, rt.model_name, version,
                                    len(rt.bundle.feature_names))
        was_ready = rt.triton_ready
        rt.triton_ready = await rt.triton.ready()
        if rt.triton_ready:
            if not was_ready:
                await self._warm_up(rt)
            return
        if not self.api.deploy_on_start:
            return
        now = time.monotonic()
        if not force and now - self._last_deploy.get(rt.name, 0.0) < 10.0:
            return
        self._last_deploy[rt.name] = now
        try:
            await asyncio.to_thread(self._deploy, rt.bundle, rt.model_name)
            rt.triton_ready = await rt.triton.ready(timeout_s=5.0)
            if rt.triton_ready:
                await self._warm_up(rt)
        except Exception as exc:  # noqa: BLE001 - Triton down: the fallback answers until it is back
            log.warning("use case %s: cannot deploy %s v%s to Triton: %s", rt.name, rt.model_name, version, exc)

    async def _warm_up(self, rt: UseCaseRuntime) -> None:
        """One call on a fresh connection, so the first request does not pay the connection set-up."""
        assert rt.triton is not None
        with contextlib.suppress(Exception):
            await rt.triton.predict(np.zeros((1, rt.triton.n_features), dtype=np.float32), 5.0)

    def _deploy(self, bundle: ModelBundle, name: str) -> None:
        from pipelines.deploy import export_python_model, load_on_triton
        from pipelines.deploy.triton import MODEL_SOURCE

        repo = self.settings.triton_model_repository
        folder = repo / name / str(bundle.version)
        assert bundle.path is not None
        try:
            current = (folder / "model.json").read_bytes() == (bundle.path / "model.json").read_bytes() and (
                (folder / "model.py").read_text() == MODEL_SOURCE.read_text())
        except OSError:
            current = False
        if not current:
            export_python_model(bundle, repo, name=name, version=bundle.version)
        load_on_triton(self.settings.triton.http_url, name, int(str(bundle.version)), timeout_s=60.0)

    async def _check_store(self) -> None:
        rt = next(iter(self.runtimes.values()))
        view = rt.resolver.views[0] if rt.resolver.views else None
        if view is None:
            self.store_ready = True
            return
        probe = {view.online_name: [tuple("__probe__" for _ in view.keys)]}
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
                    if rt.bundle is None and time.monotonic() - last_bundle_try > 10.0:
                        last_bundle_try = time.monotonic()
                        await self._load_bundle(rt)
                    rt.follow_calibration(self.settings)
                    await self._ensure_triton(rt)
                await self._check_store()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let the maintenance loop die
                log.warning("maintenance: %s", exc)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        details: dict[str, Any] = {"online_store": {"backend": self.settings.online_store.backend,
                                                    "usable": self.store_ready}}
        ok = self.store_ready
        for rt in self.runtimes.values():
            model_ok = rt.bundle is not None and rt.triton_ready
            details[rt.name] = {"model": rt.model_name,
                                "version": None if rt.bundle is None else rt.bundle.version,
                                "bundle_loaded": rt.bundle is not None, "bundle_error": rt.bundle_error,
                                "triton_ready": rt.triton_ready,
                                "triton_calls": rt.triton.calls if rt.triton else 0,
                                "triton_rows_coalesced": rt.triton.coalesced_rows if rt.triton else 0}
            ok = ok and model_ok
        return ok, details

    # ------------------------------------------------------------------------------------------ hot path

    def runtime(self, usecase: str | None) -> UseCaseRuntime:
        return self.runtimes[usecase or self.default_usecase]

    async def _read(self, requests: dict[str, list[tuple]], as_of: datetime, timeout_s: float) -> dict:
        store = self.store
        if self._store_inline:
            return store.read_many_views(requests, now=as_of)
        # Asynchronous once connected; connecting (which blocks) happens in a worker thread.
        if self._store_async and getattr(store, "_sess", None) is not None:
            async with asyncio.timeout(timeout_s):
                return await read_many_views_async(store, requests, as_of)
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
        self.store_breaker.success()
        by_view = {view: dict(zip(requests[view], res, strict=True)) for view, res in results.items()}
        out: list[dict | None] = []
        for row_keys in keys:
            out.append({view: by_view[view][key] for view, key in row_keys.items() if key is not None})
        return out, None

    async def infer(self, rt: UseCaseRuntime, matrix: np.ndarray, deadline: float) -> tuple[np.ndarray, str | None]:
        """(predictions, None) from Triton, or (fallback predictions, reason)."""
        assert rt.bundle is not None
        reason: str
        left = deadline - time.perf_counter()
        if rt.triton is None:
            reason = "model not deployed on Triton"
        elif left < MIN_INFERENCE_S:
            reason = "deadline nearly spent before inference"
        elif not rt.triton_breaker.allow():
            reason = "Triton unavailable (circuit open after recent failures)"
        else:
            try:
                raw = await rt.triton.predict(matrix, min(self.api.triton_timeout_ms / 1000,
                                                          left - MIN_INFERENCE_S / 2))
                rt.triton_breaker.success()
                rt.triton_ready = True
                return rt.bundle.add_offset(raw, matrix), None  # Triton sums the trees; the offset is ours
            except TritonUnavailable as exc:
                rt.triton_breaker.failure()
                self.metrics.errors.labels(f"triton_{exc.kind}").inc()
                reason = str(exc)
        self.metrics.fallbacks.labels(rt.name, reason.split(" (")[0][:60]).inc(matrix.shape[0])
        return rt.bundle.fallback.predict(matrix, rt.bundle.feature_names), reason

    async def predict(self, rt: UseCaseRuntime, rows: list[dict[str, Any]], as_of: datetime, request_id: str,
                      endpoint: str, started: float) -> list[dict[str, Any]]:
        """Answers for validated rows (raises StaleFeature for a ``reject`` policy, NoModel without a bundle)."""
        bundle = rt.bundle
        if bundle is None:
            raise NoModel(f"no model loaded for use case '{rt.name}' ({rt.bundle_error})")
        deadline = started + self.api.deadline_ms / 1000
        resolver = rt.resolver
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
        predictions, fallback_reason = await self.infer(rt, matrix, deadline)
        t3 = time.perf_counter()
        intervals = bundle.intervals(predictions, matrix, rt.calibration)
        answers = [self._answer(rt, bundle, rows[i], keys[i], resolved[i], float(predictions[i]),
                                {lvl: (float(lo[i]), float(hi[i])) for lvl, (lo, hi) in intervals.items()},
                                fallback_reason, store_problem, as_of,
                                request_id if len(rows) == 1 and endpoint == "predict" else f"{request_id}-{i}")
                   for i in range(len(rows))]
        t4 = time.perf_counter()
        self.metrics.observe(endpoint, t1 - t0, (t2 - t1) + (t4 - t3), t3 - t2, t4 - started)
        self.metrics.rows.labels(rt.name, "fallback" if fallback_reason else "triton").inc(len(rows))
        return answers

    def _answer(self, rt: UseCaseRuntime, bundle: ModelBundle, row: dict[str, Any], keys: dict[str, tuple | None],
                resolved: Any, value: float, interval: dict[str, tuple[float, float]], fallback_reason: str | None,
                store_problem: str | None, as_of: datetime, request_id: str) -> dict[str, Any]:
        out = rt.output
        value = round(value, 2)
        prediction: dict[str, Any] = {out.name: value}
        intervals: dict[str, dict[str, list[Any]]] = {}
        base_ts = row.get(out.time_from) if out.time_from else None
        base = base_ts.timestamp() if base_ts is not None else None
        for level, (lo, hi) in interval.items():
            entry: dict[str, list[Any]] = {out.name: [round(lo, 2), round(hi, 2)]}
            if base is not None and out.time_name:
                entry[out.time_name] = [_plus_minutes(base, lo), _plus_minutes(base, hi)]
            intervals[level] = entry
        if base is not None and out.time_name:
            prediction[out.time_name] = _plus_minutes(base, value)
        reasons = list(resolved.issues)
        score = len(resolved.issues)
        ood = bundle.out_of_range(resolved.values) if bundle.feature_ranges else []
        if ood:
            reasons.append("outside the training distribution: " + ", ".join(ood[:5]))
            score += 1
        degraded_reasons = []
        if fallback_reason:
            degraded_reasons.append(f"fallback predictor answered: {fallback_reason}")
            reasons.append("answered by the fallback predictor (intervals calibrated for the main model)")
            score += 3
        if store_problem:
            degraded_reasons.append(f"feature defaults used: {store_problem}")
        level = "high" if score == 0 else "medium" if score <= 2 else "low"
        freshness = self.metrics.freshness
        for view, rep in resolved.report.items():
            if rep["action"] != "none":
                freshness.labels(view, rep["action"]).inc()
        answer = {
            "request_id": request_id,
            "usecase": rt.name,
            "prediction": prediction,
            "interval": intervals,
            "confidence": {"level": level, "reasons": reasons},
            "model": {"name": rt.model_name, "version": bundle.version,
                      "runtime": "fallback" if fallback_reason else "triton"},
            "calibration": rt.calibration_id,
            "features": resolved.report,
            "degraded": bool(degraded_reasons),
            "degraded_reasons": degraded_reasons,
            "as_of": _iso(as_of),
        }
        record = dict(answer)
        record["route"] = "primary"
        record["logged_at"] = datetime.now(UTC)
        record["request"] = row
        record["keys"] = {view: list(k) if k is not None else None for view, k in keys.items()}
        record["features_used"] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in resolved.values.items()}
        if not self.log.append(rt.name, record):
            self.metrics.log_dropped.inc()
        return answer


def default_log_dir(settings: Settings) -> Path:
    return settings.prediction_log_path
