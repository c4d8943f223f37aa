"""A rollout: a registered version taken from the registry to traffic, judged, and promoted or rolled back.

:func:`deploy` runs one rollout of one use case (one at a time per use case, under a lock):

1. **package** the version's artifact (reused when built before), **verify** it against the serving use case,
   **place** it in Triton's model repository and **load** it beside the version serving, wait for
   **readiness**, and run the **golden check**. Any refusal here happens before traffic: the old version keeps
   serving, the candidate is unloaded, the refusal is audited on the version and alerted.
2. the **strategy** (``deployment.yaml``, or the deployment's own):

   * ``direct``: the candidate becomes primary at once (also what a first deployment does: nothing serves).
   * ``canary``: the routing table moves the candidate through the spec's steps (5% -> 25% -> 50% -> 100%).
     Each step bakes at least ``bake_s`` and ``min_requests``, then the judge
     (:func:`pipelines.deploy.analysis.judge_window`) compares candidate and primary on the answers of that
     routing version only (same window, same traffic): latency, failed calls, fallbacks, prediction shift,
     and online error and coverage where outcomes are known, globally and per segment. Pass: next step.
     Fail: rollback. Inconclusive: the bake is extended up to ``max_bake_s``, then rollback.
   * ``shadow``: the candidate scores a copy of the traffic after the primary answers; a paired comparison on
     the same requests (divergence; Wilcoxon on absolute errors where outcomes are known); never promoted.
   * ``ab``: sticky arms by the spec's key; at the end (fixed horizon) the sample-ratio check, each arm's MAE
     with confidence intervals, a power analysis and the decision; an HTML and JSON report; the winner serves.

3. every step's figures, verdict and reasons go to the **decision ledger**: a live JSON file while it runs
   (``<home>/deploy/<usecase>/rollouts/<id>.json``), the lake table ``deployments__<usecase>`` (one partition
   per rollout) and a tag on the candidate's MLflow version; rollbacks and refusals are also in the version's
   lifecycle audit trail and alerted (log, and the configured webhook).

A version leaving the routing keeps weight 0 for ``deploy.drain_s`` (requests in flight finish on it), then
leaves the table and is unloaded from Triton: no request fails because of a swap.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from pipelines.deploy.routing import Route, RoutingStore, RoutingTable
from pipelines.lake.tables import safe_name

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.deploy.spec import DeploymentSpec
    from pipelines.deploy.window import LogTail
    from pipelines.usecases import UseCase

__all__ = ["FINAL", "RolloutBusy", "RolloutResult", "deploy", "history", "ledger_table", "model_name",
           "rollback", "status"]

log = logging.getLogger("atelier.deploy")
FINAL = ("completed", "rolled_back", "refused", "unchanged", "shadow_done", "ab_done")


class RolloutBusy(RuntimeError):
    """Another rollout of the use case is in progress."""


@dataclass
class RolloutResult:
    rollout_id: str
    usecase: str
    model: str
    candidate: str
    primary: str | None
    strategy: str
    status: str = "running"
    reason: str = ""
    decision: str = ""
    started_at: str = ""
    ended_at: str = ""
    routing_version: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None
    ledger: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> datetime:
    return datetime.now(UTC)


def model_name(settings: Settings, usecase: str) -> str:
    """The registered model a use case serves (``api.models``, default the use case's name)."""
    return settings.api.models.get(usecase, usecase).partition(":")[0]


def _dir(settings: Settings, usecase: str) -> Path:
    return settings.home_path / "deploy" / safe_name(usecase)


def ledger_table(usecase: str) -> str:
    return f"deployments__{usecase}"


class _Rollout:
    """One rollout's state and its side effects (routing writes, ledger, audit, alerts)."""

    def __init__(self, settings: Settings, uc: UseCase, spec: DeploymentSpec, result: RolloutResult, *,
                 by: str, sleep: Callable[[float], None], done: Callable[[], bool] | None,
                 alert: bool = True) -> None:
        self.settings, self.uc, self.spec, self.result = settings, uc, spec, result
        self.by, self.sleep, self.done, self.alert = by, sleep, done, alert
        self.store = RoutingStore(settings.routing_path)
        self.file = _dir(settings, uc.name) / "rollouts" / f"{safe_name(result.rollout_id)}.json"
        self.tail: LogTail | None = None

    # -------------------------------------------------------------------------------------- records
    def save(self) -> None:
        from pipelines.deploy.routing import _atomic_write

        self.file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.file, json.dumps(self.result.to_dict(), indent=1, default=str))

    def step(self, name: str, verdict: str, reason: str = "", **figures: Any) -> dict[str, Any]:
        entry = {"step": name, "verdict": verdict, "reason": reason, "at": _now().isoformat(timespec="milliseconds"),
                 **figures}
        self.result.steps.append(entry)
        self.save()
        log.info("rollout %s: %s -> %s%s", self.result.rollout_id, name, verdict, f" ({reason})" if reason else "")
        return entry

    def route(self, routes: list[Route], reason: str, *, strategy: str | None = None,
              sticky_key: str | None = None) -> RoutingTable:
        current = self.store.read(self.uc.name)
        table = RoutingTable(usecase=self.uc.name, model=self.result.model, routes=tuple(routes),
                             strategy=strategy or self.result.strategy, rollout_id=self.result.rollout_id,
                             sticky_key=sticky_key)
        written = self.store.write(table, expected_version=current.version if current else 0,
                                   by=self.by, reason=reason)
        self.result.routing_version = written.version
        return written

    def finish(self, status: str, reason: str, decision: str = "") -> RolloutResult:
        r = self.result
        r.status, r.reason, r.decision, r.ended_at = status, reason, decision or r.decision, _now().isoformat()
        self.save()
        try:
            r.ledger = _publish_ledger(self.settings, r)
        except Exception as exc:  # noqa: BLE001 - the live file has it all; the lake table is republished next time
            log.warning("rollout %s: ledger table not published: %s", r.rollout_id, exc)
        self.save()
        summary = {"rollout": r.rollout_id, "status": status, "strategy": r.strategy, "reason": reason[:600],
                   "decision": r.decision[:200], "steps": [(s["step"], s["verdict"]) for s in r.steps][-12:]}
        try:
            from pipelines.models.registry import client, mlflow_errors

            with mlflow_errors(self.settings):
                client(self.settings).set_model_version_tag(r.model, r.candidate,
                                                            f"atelier.rollout.{safe_name(r.rollout_id)[:200]}",
                                                            json.dumps(summary)[:4900])
            if status in ("rolled_back", "refused") or r.strategy == "ab":
                from pipelines.lifecycle.registry import audit_event

                audit_event(self.settings, r.model, r.candidate, event=f"deploy_{status}", by=self.by,
                            why=reason[:900], details={"rollout": r.rollout_id, "strategy": r.strategy})
        except Exception as exc:  # noqa: BLE001 - MLflow down must not hide the outcome
            log.warning("rollout %s: not recorded on MLflow: %s", r.rollout_id, exc)
        if status in ("rolled_back", "refused") and self.alert:
            notify(self.settings, {"event": f"rollout_{status}", "usecase": r.usecase, "model": r.model,
                                   "version": r.candidate, "rollout": r.rollout_id, "reason": reason})
        return r

    # -------------------------------------------------------------------------------------- traffic
    def open_tail(self) -> LogTail:
        from pipelines.deploy.window import LogTail
        from pipelines.featurestore.spec import load_feature_set
        from pipelines.interface import OutputSpec, outcome_key_columns

        features = load_feature_set(self.uc)
        label = features.label.column if features.label else "value"
        output = OutputSpec.load(self.uc, label).name
        self.tail = LogTail(self.settings.prediction_log_path / self.uc.name,
                            self.settings.outcome_log_path / self.uc.name, output,
                            list(self.spec.analysis.segments), list(outcome_key_columns(self.uc, features)),
                            label, _now())
        return self.tail

    def drain_and_retire(self, table: RoutingTable, version: str) -> None:
        """``version`` has weight 0 in ``table``: wait for in-flight requests, drop it, unload it."""
        from pipelines.deploy.package import retire

        self.sleep(self.settings.deploy.drain_s)
        keep = [r for r in table.routes if r.version != version]
        self.route(keep, f"v{version} drained", strategy="direct")
        retire(self.settings, self.result.model, version)


def deploy(settings: Settings, usecase: str, version: str | int, *, strategy: str | None = None,
           overrides: dict[str, Any] | None = None, by: str = "atelier", rollout_id: str | None = None,
           runtime: str | None = None, model_source: str | None = None, artifact: Path | None = None,
           done: Callable[[], bool] | None = None, sleep: Callable[[float], None] = time.sleep,
           alert: bool = True) -> RolloutResult:
    """Deploy ``version`` of the use case's model (see the module doc). A re-run of a finished ``rollout_id``
    returns its result without doing it again.

    ``artifact``: deploy this artifact file (built elsewhere) instead of packaging the registered version;
    ``model_source``: a custom python-backend ``model.py``; ``done``: ends a shadow or A/B collection early
    (tests, the demo); ``alert``: alert a refusal or rollback here (the DAG alerts through its notifier)."""
    from pipelines.deploy.spec import load_deployment_spec
    from pipelines.usecases import get_usecase

    uc = get_usecase(usecase, settings.usecases_path)
    spec = load_deployment_spec(uc, overrides)
    version = str(version)
    model = model_name(settings, uc.name)
    rollout_id = rollout_id or f"{model}-v{version}-{_now():%Y%m%dT%H%M%S}"
    folder = _dir(settings, uc.name)
    previous = folder / "rollouts" / f"{safe_name(rollout_id)}.json"
    if previous.exists():
        done_before = json.loads(previous.read_text())
        if done_before.get("status") in FINAL:
            log.info("rollout %s already ended (%s): not run again", rollout_id, done_before["status"])
            return RolloutResult(**done_before)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(str(folder / ".rollout.lock"), timeout=0)
        lock.acquire()
    except Timeout:
        raise RolloutBusy(f"another rollout of {uc.name} is in progress (lock {folder / '.rollout.lock'})") from None
    try:
        table = RoutingStore(settings.routing_path).read(uc.name)
        primary = table.primary.version if table is not None else None
        chosen = strategy or spec.strategy
        if primary is None:
            chosen = "direct"
        result = RolloutResult(rollout_id, uc.name, model, version, primary, chosen, started_at=_now().isoformat())
        ro = _Rollout(settings, uc, spec, result, by=by, sleep=sleep, done=done, alert=alert)
        if primary == version and table is not None and len(table.routes) == 1:
            ro.step("check", "pass", f"v{version} already serves all traffic")
            return ro.finish("unchanged", f"v{version} already serves all traffic")
        if chosen != "direct" and _is_classifier(uc):
            reason = (f"{chosen} for a classifier is planned: the canary judge, shadow and A/B compare regression "
                      "errors; deploy it with strategy direct")
            ro.step("check", "fail", reason)
            return ro.finish("refused", reason)
        if table is not None:
            # A version left half-way by an interrupted rollout stops serving before this one starts.
            stray = [r for r in table.routes if r.role != "primary" and r.version != version]
            if stray:
                ro.route([table.primary], "routes of an interrupted rollout removed", strategy="direct")
        return _run(ro, table, runtime or settings.deploy.runtime, model_source, artifact)
    finally:
        lock.release()


def _is_classifier(uc: Any) -> bool:
    from pipelines.training.spec import load_model_spec

    try:
        return load_model_spec(uc).task != "regression"
    except Exception:  # noqa: BLE001 - no or a broken model.yaml: packaging names the problem
        return False


def _prepare(ro: _Rollout, runtime: str, model_source: str | None, given: Path | None) -> bool:
    """Package, verify, place, load, readiness, golden check. False (after finishing as refused) on refusal."""
    from pipelines.deploy.artifact import ArtifactError, open_artifact
    from pipelines.deploy.package import DeployRefused, golden_check, package_version, place_and_load, retire
    from pipelines.models.registry import ModelNotFound

    r = ro.result
    t0 = time.monotonic()
    try:
        if given is not None:
            try:
                artifact = open_artifact(Path(given))
            except ArtifactError as exc:
                raise DeployRefused("verify", str(exc)) from None
            if (artifact.manifest["model_name"], artifact.version) != (r.model, r.candidate):
                raise DeployRefused("verify", f"{given} holds {artifact.manifest['model_name']} "
                                              f"v{artifact.version}, not {r.model} v{r.candidate}")
        else:
            try:
                artifact = package_version(ro.settings, r.model, r.candidate, runtime=runtime,
                                           model_source=model_source)
            except (ArtifactError, ValueError, ModelNotFound) as exc:
                raise DeployRefused("package", str(exc)) from None
        ro.step("package", "pass", artifact=str(artifact.path), sha256=artifact.sha256,
                seconds=round(time.monotonic() - t0, 2))
        loaded = place_and_load(ro.settings, ro.uc, artifact.path)
        ro.step("load", "pass", triton_model=loaded.triton_name, seconds=round(time.monotonic() - t0, 2))
        golden = golden_check(ro.settings, artifact.path)
        ro.step("golden", "pass", **golden)
        return True
    except DeployRefused as exc:
        ro.step(exc.stage, "fail", str(exc))
        if exc.stage not in ("package", "verify"):
            retire(ro.settings, r.model, r.candidate)
        ro.finish("refused", f"{exc.stage}: {exc}")
        return False


def _run(ro: _Rollout, table: RoutingTable | None, runtime: str, model_source: str | None,
         artifact: Path | None) -> RolloutResult:
    if not _prepare(ro, runtime, model_source, artifact):
        return ro.result
    r = ro.result
    if r.strategy == "direct" or table is None:
        return _direct(ro, table)
    if r.strategy == "canary":
        return _canary(ro, table)
    if r.strategy == "shadow":
        return _shadow(ro, table)
    return _ab(ro, table)


def _promote(ro: _Rollout, old: str | None, reason: str) -> RolloutResult:
    r = ro.result
    routes = [Route(r.candidate, "primary", 1.0)]
    if old is not None and old != r.candidate:
        routes.append(Route(old, "canary", 0.0))
    written = ro.route(routes, reason)
    ro.step("promote", "pass", reason, routing_version=written.version)
    if old is not None and old != r.candidate:
        ro.drain_and_retire(written, old)
    return ro.finish("completed", reason)


def _direct(ro: _Rollout, table: RoutingTable | None) -> RolloutResult:
    old = table.primary.version if table is not None else None
    return _promote(ro, old, f"v{ro.result.candidate} serves all traffic (direct)")


def _rollback(ro: _Rollout, primary: str, reason: str) -> RolloutResult:
    r = ro.result
    written = ro.route([Route(primary, "primary", 1.0), Route(r.candidate, "canary", 0.0)],
                       f"rollback of v{r.candidate}: {reason}"[:300])
    ro.step("rollback", "fail", reason, routing_version=written.version)
    ro.drain_and_retire(written, r.candidate)
    return ro.finish("rolled_back", reason)


def _canary(ro: _Rollout, table: RoutingTable) -> RolloutResult:
    from pipelines.deploy.analysis import FAIL, PASS, judge_window

    r, spec = ro.result, ro.spec.canary
    primary = table.primary.version
    tail = ro.open_tail()
    arms = {primary: "primary", r.candidate: "candidate"}
    for pct in spec.steps:
        if pct >= 100:
            return _promote(ro, primary, f"canary passed {len(spec.steps) - 1} steps")
        w = pct / 100.0
        written = ro.route([Route(primary, "primary", round(1 - w, 6)), Route(r.candidate, "canary", w)],
                           f"canary step {pct:g}%")
        started = time.monotonic()
        verdict, judgement = "inconclusive", None
        while True:
            left = spec.bake_s - (time.monotonic() - started)
            ro.sleep(max(0.2, min(spec.check_every_s, left)) if left > 0 else spec.check_every_s)
            tail.poll()
            elapsed = time.monotonic() - started
            frame = tail.frame(arms, roles={"primary", "canary"})
            frame = frame[frame["request_id"].isin(_routed(tail, written.version))]
            n_candidate = int((frame["arm"] == "candidate").sum())
            if elapsed >= spec.bake_s and n_candidate >= spec.min_requests:
                judgement = judge_window(frame, ro.spec.analysis)
                verdict = judgement.verdict
                if verdict in (PASS, FAIL):
                    break
            if elapsed >= spec.max_bake_s:
                break
        figures = {"weight": w, "routing_version": written.version, "baked_s": round(elapsed, 1),
                   "requests": {"primary": int((frame["arm"] == "primary").sum()), "candidate": n_candidate}}
        if judgement is not None:
            figures["checks"] = [c.to_dict() for c in judgement.checks if c.verdict != "pass" or c.segment == "all"]
        if verdict == PASS:
            ro.step(f"canary {pct:g}%", PASS, "; ".join(judgement.reasons) if judgement else "", **figures)
            continue
        if verdict == FAIL:
            assert judgement is not None
            # The global findings first, then the segments'.
            ordered = sorted(judgement.reasons, key=lambda text: "[all]" not in text)
            reason = f"canary {pct:g}%: " + "; ".join(ordered[:4])
        elif n_candidate < spec.min_requests:
            reason = (f"canary {pct:g}%: only {n_candidate} candidate requests in {elapsed:.0f} s "
                      f"(min_requests {spec.min_requests})")
        else:
            reason = (f"canary {pct:g}%: inconclusive after {elapsed:.0f} s (max_bake_s {spec.max_bake_s:g}): "
                      + "; ".join((judgement.reasons if judgement else [])[:3]))
        ro.step(f"canary {pct:g}%", verdict if verdict == FAIL else "inconclusive", reason, **figures)
        return _rollback(ro, primary, reason)
    return _promote(ro, primary, "canary steps done")


def _routed(tail: LogTail, routing_version: int) -> set[str]:
    return {a.request_id for a in tail.answers if a.routing_version == routing_version}


def _wait_collect(ro: _Rollout, duration_s: float, enough: Callable[[], bool]) -> float:
    started = time.monotonic()
    while True:
        ro.sleep(min(1.0, duration_s))
        assert ro.tail is not None
        ro.tail.poll()
        elapsed = time.monotonic() - started
        if elapsed >= duration_s or (ro.done is not None and ro.done() and enough()):
            return elapsed


def _shadow(ro: _Rollout, table: RoutingTable) -> RolloutResult:
    import numpy as np

    from pipelines.deploy.analysis import paired_check

    r, spec = ro.result, ro.spec.shadow
    primary = table.primary.version
    tail = ro.open_tail()
    written = ro.route([Route(primary, "primary", 1.0), Route(r.candidate, "shadow", spec.sample)],
                       f"shadow of v{r.candidate} ({spec.sample:.0%} of requests)")
    arms = {primary: "primary", r.candidate: "shadow"}

    def pairs() -> Any:
        frame = tail.frame(arms)
        frame = frame[frame["request_id"].isin(_routed(tail, written.version))]
        p = frame[frame.arm == "primary"].drop_duplicates("request_id").set_index("request_id")
        s = frame[(frame.arm == "shadow") & (frame.role == "shadow")].drop_duplicates("request_id") \
            .set_index("request_id")
        return p.join(s, how="inner", lsuffix="_p", rsuffix="_s")

    elapsed = _wait_collect(ro, spec.duration_s, lambda: len(pairs()) >= spec.min_requests)
    joined = pairs()
    if len(joined) < spec.min_requests:
        decision = f"not enough shadow-scored requests ({len(joined)} < min_requests {spec.min_requests})"
        figures: dict[str, Any] = {"pairs": len(joined)}
    else:
        comparison = paired_check(joined["prediction_p"].to_numpy(), joined["prediction_s"].to_numpy(),
                                  joined["abs_error_p"].to_numpy(dtype=np.float64),
                                  joined["abs_error_s"].to_numpy(dtype=np.float64), ro.spec.analysis)
        decision = comparison.verdict
        figures = {k: v for k, v in comparison.to_dict().items() if k != "verdict"}
    ro.step("shadow", "pass", decision, routing_version=written.version, collected_s=round(elapsed, 1), **figures)
    r.decision = decision
    ended = ro.route([Route(primary, "primary", 1.0), Route(r.candidate, "shadow", 0.0)], "shadow ended")
    ro.drain_and_retire(ended, r.candidate)
    return ro.finish("shadow_done", f"shadow of v{r.candidate} ended: {decision}", decision)


def _ab(ro: _Rollout, table: RoutingTable) -> RolloutResult:
    from pipelines.deploy.analysis import ab_compare, ab_report_html

    r = ro.result
    spec = ro.spec.ab
    if spec is None:
        ro.step("ab", "fail", "deployment.yaml has no ab section (sticky_key, weights)")
        return _rollback(ro, table.primary.version, "A/B needs an ab section in deployment.yaml")
    primary = table.primary.version
    tail = ro.open_tail()
    written = ro.route([Route(primary, "primary", spec.weights["A"], arm="A"),
                        Route(r.candidate, "arm", spec.weights["B"], arm="B")],
                       f"A/B: v{primary} (A) against v{r.candidate} (B) by {spec.sticky_key}",
                       sticky_key=spec.sticky_key)
    arms = {primary: "A", r.candidate: "B"}

    def frame() -> Any:
        f = tail.frame(arms, roles={"primary", "arm"})
        return f[f["request_id"].isin(_routed(tail, written.version))]

    elapsed = _wait_collect(ro, spec.duration_s, lambda: frame()["abs_error"].notna().sum() >= 4)
    f = frame()
    counts = {"A": int((f.arm == "A").sum()), "B": int((f.arm == "B").sum())}
    known = f[f["abs_error"].notna()]
    try:
        result = ab_compare(known[known.arm == "A"]["abs_error"].to_numpy(),
                            known[known.arm == "B"]["abs_error"].to_numpy(), alpha=spec.alpha, power=spec.power,
                            min_detectable_effect=spec.min_detectable_effect, counts=counts,
                            expected_weights=spec.weights)
    except ValueError as exc:
        ro.step("ab", "inconclusive", str(exc), requests=counts, collected_s=round(elapsed, 1))
        return _rollback(ro, primary, f"A/B without enough outcomes: {exc}")
    folder = ro.file.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "ab_report.html"
    (folder / "ab_report.json").write_text(json.dumps({"rollout": r.rollout_id, "control": primary,
                                                       "treatment": r.candidate, "requests": counts,
                                                       **result.to_dict()}, indent=1, allow_nan=False))
    report.write_text(ab_report_html(result, f"A/B {r.model}: v{primary} (A) vs v{r.candidate} (B)",
                                     {"rollout": r.rollout_id, "sticky key": spec.sticky_key,
                                      "requests": f"A {counts['A']}, B {counts['B']}",
                                      "collected": f"{elapsed:.0f} s"}))
    r.report = str(report)
    try:
        from pipelines.models.registry import client, mlflow_errors, resolve_version

        ref = resolve_version(ro.settings, r.model, version=r.candidate)
        with mlflow_errors(ro.settings):
            for name in ("ab_report.html", "ab_report.json"):
                client(ro.settings).log_artifact(ref.run_id, str(folder / name),
                                                 artifact_path=f"atelier/deploy/ab/{safe_name(r.rollout_id)}")
    except Exception as exc:  # noqa: BLE001 - the report stays on disk and in the ledger
        log.warning("A/B report not logged to MLflow: %s", exc)
    ro.step("ab", "pass", result.decision, requests=counts, collected_s=round(elapsed, 1), report=str(report),
            **{k: v for k, v in result.to_dict().items() if k != "srm"})
    r.decision = result.decision
    if result.decision == "treatment wins":
        _promote(ro, primary, f"A/B: B (v{r.candidate}) wins: MAE difference {result.difference:+.3f} "
                              f"[{result.ci[0]:+.3f}, {result.ci[1]:+.3f}]")
        r.status = "ab_done"
        ro.save()
        return r
    ended = ro.route([Route(primary, "primary", 1.0), Route(r.candidate, "canary", 0.0)],
                     f"A/B ended: {result.decision}")
    ro.drain_and_retire(ended, r.candidate)
    return ro.finish("ab_done", f"A/B: {result.decision}; v{primary} keeps serving", result.decision)


def rollback(settings: Settings, usecase: str, *, reason: str, by: str = "atelier") -> RoutingTable:
    """Operator rollback: a candidate in service (canary, arm, shadow) goes to weight 0 and is retired; with
    none, the previous primary (from the routing history) is loaded again and serves all traffic."""
    from pipelines.deploy.package import package_version, place_and_load, retire
    from pipelines.usecases import get_usecase

    uc = get_usecase(usecase, settings.usecases_path)
    store = RoutingStore(settings.routing_path)
    table = store.read(uc.name)
    if table is None:
        raise RuntimeError(f"use case {uc.name} has no routing table: nothing was deployed through Atelier")
    primary = table.primary.version
    others = [r for r in table.routes if r.role != "primary"]
    if others:
        moved = store.write(table.with_routes([Route(primary, "primary", 1.0),
                                               *(Route(o.version, "canary", 0.0) for o in others)]),
                            expected_version=table.version, by=by, reason=f"rollback: {reason}")
        time.sleep(settings.deploy.drain_s)
        final = store.write(moved.with_routes([Route(primary, "primary", 1.0)]), expected_version=moved.version,
                            by=by, reason="rolled-back versions drained")
        for o in others:
            retire(settings, table.model, o.version)
        return final
    earlier = [t.primary.version for t in store.history(uc.name) if t.primary.version != primary]
    if not earlier:
        raise RuntimeError(f"use case {uc.name}: no earlier version in the routing history to roll back to")
    target = earlier[-1]
    artifact = package_version(settings, table.model, target)
    place_and_load(settings, uc, artifact.path)
    moved = store.write(table.with_routes([Route(target, "primary", 1.0), Route(primary, "canary", 0.0)]),
                        expected_version=table.version, by=by, reason=f"rollback to v{target}: {reason}")
    time.sleep(settings.deploy.drain_s)
    final = store.write(moved.with_routes([Route(target, "primary", 1.0)]), expected_version=moved.version, by=by,
                        reason=f"v{primary} drained")
    retire(settings, table.model, primary)
    notify(settings, {"event": "rollback", "usecase": uc.name, "model": table.model, "from": primary,
                      "to": target, "reason": reason, "by": by})
    try:
        from pipelines.lifecycle.registry import audit_event

        audit_event(settings, table.model, primary, event="deploy_rollback", by=by,
                    why=f"rolled back to v{target}: {reason}")
    except Exception as exc:  # noqa: BLE001
        log.warning("rollback not audited on MLflow: %s", exc)
    return final


def status(settings: Settings, usecase: str) -> dict[str, Any]:
    """The routing table in force and the latest rollout."""
    table = RoutingStore(settings.routing_path).read(usecase)
    rollouts = history(settings, usecase, limit=1)
    return {"usecase": usecase, "routing": table.to_dict() if table else None,
            "latest_rollout": rollouts[0] if rollouts else None}


def history(settings: Settings, usecase: str, limit: int = 20) -> list[dict[str, Any]]:
    """The use case's rollouts, newest first (from the live ledger files)."""
    folder = _dir(settings, usecase) / "rollouts"
    if not folder.is_dir():
        return []
    items = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(items, key=lambda d: d.get("started_at", ""), reverse=True)[:limit]


def notify(settings: Settings, event: dict[str, Any]) -> None:
    """An alert: the log always, the configured webhook when set (never raises)."""
    log.warning("ALERT %s", json.dumps(event, default=str))
    url = settings.deploy.webhook_url
    if not url:
        return
    try:
        import httpx

        httpx.post(url, json={"source": "atelier", **event}, timeout=5.0).raise_for_status()
    except Exception as exc:  # noqa: BLE001 - an alert channel down must not break the rollout
        log.warning("alert webhook %s failed: %s", url, exc)


LEDGER_COLUMNS = ["rollout_id", "usecase", "model", "candidate", "primary_version", "strategy", "status", "seq",
                  "step", "verdict", "reason", "at", "figures"]


def _publish_ledger(settings: Settings, r: RolloutResult) -> str:
    """The rollout's rows as its own partition of ``deployments__<usecase>`` (replaced whole on re-publish)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.lake.tables import Lake, write_partition_manifest

    lake = Lake.from_settings(settings)
    name = ledger_table(r.usecase)
    part = safe_name(r.rollout_id)
    run_id = f"ledger-{part}"
    staged = lake.staging_path(name, run_id) / f"rollout={part}"
    staged.mkdir(parents=True, exist_ok=True)
    rows = [{"rollout_id": r.rollout_id, "usecase": r.usecase, "model": r.model, "candidate": r.candidate,
             "primary_version": r.primary, "strategy": r.strategy, "status": r.status, "seq": i,
             "step": s["step"], "verdict": s["verdict"], "reason": s.get("reason", ""), "at": s["at"],
             "figures": json.dumps({k: v for k, v in s.items() if k not in ("step", "verdict", "reason", "at")},
                                   default=str)}
            for i, s in enumerate(r.steps)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.int64() if c == "seq" else pa.string())
                                                         for c in LEDGER_COLUMNS]))
    pq.write_table(table, staged / "part-0.parquet")
    write_partition_manifest(staged, rows=len(rows), run_id=run_id)
    version = lake.publish_partitions(name, run_id, column="rollout", replace=[part],
                                      columns=[*LEDGER_COLUMNS, "rollout"])
    return f"{lake.path(name)} ({version})"
