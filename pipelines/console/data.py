"""The console's read models: plain dicts and frames, one function per panel.

Each reads one system of record through the module that owns it: model versions, gate verdicts and audit
trails from MLflow (:mod:`pipelines.models.registry`), online metrics, findings and indicators from the
lake's published tables (pyarrow, no Spark), the traffic split and rollouts from the routing store and the
rollout ledger, freshness from the online store's watermarks. A panel whose source is not there yet (no
replay, registry down) raises :class:`Unavailable` with what to do; the page shows that instead of failing.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.lake.tables import Lake, TableNotFound
from pipelines.usecases import SpecError, UseCase, get_usecase, list_usecases

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Unavailable", "drift_heatmap", "online_by_version", "freshness", "indicator_series", "model_versions", "online_metrics",
           "overview", "rollouts", "training_report", "usecase"]

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SEVERITY_RANK = {"none": 0, "low": 1, "medium": 2, "high": 3}
REPORT_ARTIFACT = "atelier/report/report.html"


class Unavailable(RuntimeError):
    """A panel's source is not there (yet); the message says why and what produces it."""


def usecase(settings: Settings, name: str) -> UseCase:
    """The use case by name; an unknown name is a LookupError naming the known ones."""
    try:
        return get_usecase(name, settings.usecases_path)
    except SpecError as exc:
        raise LookupError(str(exc)) from None


def model_name(uc: UseCase) -> str:
    return str((uc.extra.get("model") or {}).get("model", {}).get("name") or uc.name)


def _registry(settings: Settings) -> Any:
    from pipelines.models.registry import client

    return client(settings)


def _unavailable_registry(settings: Settings, exc: Exception) -> Unavailable:
    return Unavailable(f"the model registry (MLflow at {settings.mlflow.tracking_uri}) did not answer: "
                       f"{str(exc).splitlines()[0][:200]}")


def _rule_metrics(uc: UseCase) -> list[str]:
    """The metrics the promotion rules judge (the ones worth a chart), in the order the rules name them."""
    from pipelines.lifecycle.rules import RuleError, load_rules

    try:
        rules = load_rules(uc.extra.get("rules") or {}, str(uc.path / "rules.yaml"))
    except RuleError:
        return []
    seen: list[str] = []
    for rule in rules:
        for metric in sorted(rule.metrics):
            if metric not in seen:
                seen.append(metric)
    return seen


def model_versions(settings: Settings, name: str) -> dict[str, Any]:
    """Every registered version of the use case's model, newest first, with stage, aliases, gate verdict
    (rule, passed, failing clauses), holdout metrics, links and audit trail; plus the metrics the rules judge."""
    from pipelines.lifecycle.registry import GATE_TAG, audit_trail
    from pipelines.models.registry import STAGE_TAG, mlflow_errors
    from pipelines.training.pipeline import RUN_ID_TAG

    uc = usecase(settings, name)
    model = model_name(uc)
    base = settings.mlflow.tracking_uri.rstrip("/")
    try:
        with mlflow_errors(settings):
            c = _registry(settings)
            found = c.search_model_versions(f"name = '{model}'")
            versions = []
            for mv in sorted(found, key=lambda v: -int(v.version)):
                mv = c.get_model_version(model, mv.version)  # search results carry no aliases
                run = c.get_run(mv.run_id)
                tags = dict(mv.tags or {})
                gate = json.loads(tags.get(GATE_TAG, "{}") or "{}")
                versions.append({
                    "version": str(mv.version), "stage": tags.get(STAGE_TAG, "?"), "aliases": list(mv.aliases or []),
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    "gate": gate, "metrics": dict(run.data.metrics), "run_id": mv.run_id,
                    "experiment_id": run.info.experiment_id, "airflow_run_id": run.data.tags.get(RUN_ID_TAG),
                    "mlflow_url": f"{base}/#/experiments/{run.info.experiment_id}/runs/{mv.run_id}",
                    "audit": audit_trail(tags)})
    except Exception as exc:  # noqa: BLE001 - ModelNotFound / RegistryUnavailable: show, do not fail the page
        from pipelines.models.registry import ModelNotFound

        if isinstance(exc, ModelNotFound):
            versions = []
        else:
            raise _unavailable_registry(settings, exc) from None
    champion = next((v for v in versions if "champion" in v["aliases"]), None)
    return {"usecase": uc.name, "model": model, "versions": versions, "champion": champion,
            "rule_metrics": _rule_metrics(uc)}


def training_report(settings: Settings, name: str, version: str) -> Path:
    """The version's training report (the HTML its run logged), downloaded once and cached by run id."""
    from pipelines.models.registry import mlflow_errors

    if not version.isdigit():
        raise LookupError(f"version must be a number, got {version!r}")
    uc = usecase(settings, name)
    try:
        with mlflow_errors(settings):
            c = _registry(settings)
            run_id = c.get_model_version(model_name(uc), version).run_id
            folder = settings.home_path / "cache" / "console" / "reports" / run_id  # a run's artifacts never change
            cached = folder / Path(REPORT_ARTIFACT).name
            if not cached.exists():
                folder.mkdir(parents=True, exist_ok=True)
                cached = Path(c.download_artifacts(run_id, REPORT_ARTIFACT, str(folder)))
    except Exception as exc:  # noqa: BLE001
        from pipelines.models.registry import ModelNotFound

        if isinstance(exc, ModelNotFound):
            raise LookupError(str(exc)) from None
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "No such file" in str(exc):
            raise LookupError(f"v{version}'s training run logged no report ({REPORT_ARTIFACT})") from None
        raise _unavailable_registry(settings, exc) from None
    return cached


def rollouts(settings: Settings, name: str, limit: int = 20) -> dict[str, Any]:
    """The routing table in force (traffic split), its history and the rollouts with their steps."""
    from pipelines.deploy import rollout
    from pipelines.deploy.routing import RoutingStore

    uc = usecase(settings, name)
    state = rollout.status(settings, uc.name)
    history = [t.to_dict() for t in RoutingStore(settings.routing_path).history(uc.name)][-limit:]
    return {"routing": state["routing"], "routing_history": list(reversed(history)),
            "rollouts": rollout.history(settings, uc.name, limit=limit)}


def online_metrics(settings: Settings, name: str) -> pd.DataFrame:
    """Per prediction day and model version (segment ``all``): volume, labelled share, the feedback loop's
    error metrics, interval coverage, fallback, stale and defaulted rates."""
    from pipelines.monitoring.report import metrics_frame

    uc = usecase(settings, name)
    try:
        frame = metrics_frame(settings, uc.name)
    except TableNotFound as exc:
        raise Unavailable(str(exc)) from None
    return frame[frame["segment"] == "all"].reset_index(drop=True)


def online_by_version(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per serving version over every day it served: predictions, labelled, and the labelled-weighted error
    and coverage (the Models page sets them beside the holdout metrics)."""
    out: dict[str, dict[str, float]] = {}
    for version, part in frame.groupby("model_version"):
        labelled = float(part["labelled"].sum())
        row = {"predictions": float(part["predictions"].sum()), "labelled": labelled,
               "days": float(part["prediction_day"].nunique())}
        for column in [c for c in part.columns if c in ("mae", "rmse", "bias") or c.startswith("coverage_")]:
            valid = part[part[column].notna()]
            weight = float(valid["labelled"].sum())
            row[column] = float((valid[column] * valid["labelled"]).sum() / weight) if weight else float("nan")
        out[str(version)] = row
    return out


def drift_heatmap(settings: Settings, name: str, *, last_days: int = 31) -> dict[str, Any]:
    """Findings as feature x day: the highest severity per cell (0 none .. 3 high) and the count, over the
    last ``last_days`` days that have findings; the incidents; the days that have an Evidently report."""
    from pipelines.monitoring.findings import findings_frame, incidents_frame

    uc = usecase(settings, name)
    try:
        frame = findings_frame(settings, uc.name)
        incidents = incidents_frame(settings, uc.name)
    except TableNotFound as exc:
        raise Unavailable(str(exc)) from None
    reports = sorted(p.parent.name for p in (settings.home_path / "reports" / uc.name / "drift").glob("*/drift.html")
                     if DAY.match(p.parent.name))
    if frame.empty:
        return {"days": [], "columns": [], "severity": [], "counts": [], "incidents": incidents, "reports": reports,
                "findings": frame}
    days = sorted(frame["day"].unique())[-last_days:]
    frame = frame[frame["day"].isin(days)]
    rank = frame.assign(rank=frame["severity"].map(SEVERITY_RANK).fillna(0))
    worst = rank.pivot_table(index="column", columns="day", values="rank", aggfunc="max", fill_value=0)
    counts = rank.pivot_table(index="column", columns="day", values="rank", aggfunc="count", fill_value=0)
    order = worst.max(axis=1).sort_values(ascending=False).index  # worst columns first
    worst, counts = worst.reindex(index=order, columns=days, fill_value=0), counts.reindex(index=order, columns=days,
                                                                                           fill_value=0)
    return {"days": days, "columns": list(worst.index), "severity": worst.to_numpy().tolist(),
            "counts": counts.to_numpy().tolist(), "incidents": incidents, "reports": reports, "findings": frame}


def indicator_series(settings: Settings, name: str, column: str, statistic: str | None = None) -> pd.DataFrame:
    """One column's indicators over the whole population (segment ``all``), one row per day and statistic."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.monitoring.drift import indicators_table

    uc = usecase(settings, name)
    lake = Lake.from_settings(settings)
    table = indicators_table(uc.name)
    if lake.current_version(table) is None:
        raise Unavailable(f"lake table '{table}' is not published yet: run the monitoring_drift DAG first")
    condition = (pc.field("segment") == "all") & (pc.field("column") == column)
    if statistic:
        condition = condition & (pc.field("statistic") == statistic)
    data = ds.dataset(lake.path(table), format="parquet", partitioning="hive")
    frame = data.to_table(filter=condition, columns=["source", "column", "statistic", "value", "day"]).to_pandas()
    frame["day"] = frame["day"].astype(str)
    return frame.sort_values(["statistic", "day"]).reset_index(drop=True)


def serving_clock(settings: Settings) -> datetime:
    """The time serving judges freshness at: the API's fixed ``as_of`` (a replayed year) or now."""
    return settings.api.as_of or datetime.now(UTC)


def freshness(settings: Settings, name: str) -> dict[str, Any]:
    """Per batch feature view: the newest event time the online store holds, its age at the serving clock,
    and each feature's SLA and stale policy with its verdict."""
    from pipelines.featurestore.materialize import online_view_name
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.stores.online import get_online_store

    uc = usecase(settings, name)
    features = load_feature_set(uc)
    clock = serving_clock(settings)
    views: list[dict[str, Any]] = []
    try:
        store = get_online_store(settings)
    except Exception as exc:  # noqa: BLE001 - a store down is a panel message
        raise Unavailable(f"the online store ({settings.online_store.backend}) is not reachable: {exc}") from None
    try:
        for view in features.batch_views:
            try:
                newest = store.newest_event_time(online_view_name(uc.name, view.name))
            except ValueError:  # never applied: nothing materialized yet
                newest = None
            age = (clock - newest).total_seconds() if newest else None
            rows = []
            for f in view.features:
                sla = f.sla.total_seconds() if f.sla else None
                status = "no data" if age is None else ("no SLA" if sla is None else
                                                        ("fresh" if age <= sla else "stale"))
                rows.append({"feature": f.name, "sla_s": sla, "on_stale": f.on_stale, "status": status})
            views.append({"view": view.name, "newest": newest, "age_s": age, "features": rows,
                          "status": "no data" if age is None else (
                              "stale" if any(r["status"] == "stale" for r in rows) else "fresh")})
    finally:
        store.close()
    return {"clock": clock, "views": views}


def overview(settings: Settings) -> list[dict[str, Any]]:
    """One line per use case: its champion, the traffic split, the latest online day, open findings."""
    out = []
    for name in list_usecases(settings.usecases_path):
        item: dict[str, Any] = {"name": name, "problems": []}
        try:
            uc = usecase(settings, name)
            item["description"] = uc.description
            item["model"] = model_name(uc)
        except LookupError as exc:
            item["problems"].append(str(exc))
            out.append(item)
            continue
        try:
            models = model_versions(settings, name)
            item["versions"] = len(models["versions"])
            item["champion"] = models["champion"]["version"] if models["champion"] else None
        except Unavailable as exc:
            item["problems"].append(str(exc))
        table = rollouts(settings, name, limit=1)["routing"]
        item["routes"] = table["routes"] if table else []
        try:
            online = online_metrics(settings, name)
            last = online[online["prediction_day"] == online["prediction_day"].max()]
            item["last_day"] = str(last["prediction_day"].iloc[0]) if len(last) else None
            item["predictions"] = int(last["predictions"].sum()) if len(last) else 0
        except Unavailable:
            item["last_day"] = None
        try:
            incidents = drift_heatmap(settings, name)["incidents"]
            item["incidents"] = len(incidents)
        except Unavailable:
            item["incidents"] = None
        out.append(item)
    return out
