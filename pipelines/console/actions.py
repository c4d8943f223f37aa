"""The console's actions: each is a DAG run (or the retrain Asset event a DAG is scheduled on) with params the
DAG itself validates again, never a call around the DAGs. :func:`plan` checks a form's fields and says exactly
what will be triggered (shown on the confirmation page); :func:`execute` triggers it with the user's own
Airflow token (so Airflow authorizes it and records it in its audit log) and appends the action to the
console's audit file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.config import Settings
from pipelines.lifecycle.rules import STAGES

__all__ = ["ACTIONS", "ActionError", "Plan", "audit_log", "execute", "plan"]

LIFECYCLE_DAG = "model_lifecycle"
STRATEGIES = ("canary", "shadow", "ab", "direct")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
VERSION = re.compile(r"^\d{1,9}$")
# The name of plugins.assets.retrain_request(usecase) (pipelines never imports Airflow; a test pins the two).
RETRAIN_ASSET = "retrain.{usecase}"


class ActionError(ValueError):
    """A form field is wrong; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Plan:
    action: str
    usecase: str
    summary: str
    dag_id: str
    conf: dict[str, Any] = field(default_factory=dict)
    asset: str | None = None  # set: an Asset event is emitted instead of a DAG run

    def digest(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _text(form: dict[str, Any], name: str, *, required: bool = False, max_len: int = 500) -> str:
    value = str(form.get(name) or "").strip()
    if required and not value:
        raise ActionError(name, "is required")
    if len(value) > max_len:
        raise ActionError(name, f"at most {max_len} characters")
    return value


def _version(form: dict[str, Any], *, required: bool) -> str | None:
    value = _text(form, "version", required=required, max_len=12)
    if value and not VERSION.match(value):
        raise ActionError("version", f"a registry version number such as 3, got {value!r}")
    return value or None


def _day(form: dict[str, Any], name: str) -> str | None:
    value = _text(form, name, max_len=10)
    if value and not DAY.match(value):
        raise ActionError(name, f"an ISO date such as 2013-06-01, got {value!r}")
    if value:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ActionError(name, f"not a calendar date: {value!r}") from None
    return value or None


def _train(uc: str, form: dict[str, Any]) -> Plan:
    start, end = _day(form, "start"), _day(form, "end")
    if start and end and start >= end:
        raise ActionError("end", f"must be after start ({start})")
    conf: dict[str, Any] = {"usecase": uc, "start": start, "end": end}
    window = f" on [{start or 'spec start'}, {end or 'spec end'})"
    return Plan("train", uc, f"train a new version of {uc}{window}", "model_train", conf)


def _retrain(uc: str, form: dict[str, Any]) -> Plan:
    why = _text(form, "why", required=True)
    return Plan("retrain", uc, f"request a retraining of {uc} (model_train runs on the request): {why}",
                "model_train", {"reason": why, "params": {}}, asset=RETRAIN_ASSET.format(usecase=uc))


def _deploy(uc: str, form: dict[str, Any]) -> Plan:
    version = _version(form, required=False)
    strategy = _text(form, "strategy", max_len=10) or None
    if strategy and strategy not in STRATEGIES:
        raise ActionError("strategy", f"one of {', '.join(STRATEGIES)}, got {strategy!r}")
    what = f"v{version}" if version else "the champion"
    return Plan("deploy", uc, f"deploy {what} of {uc} ({strategy or 'deployment.yaml strategy'})", "model_deploy",
                {"usecase": uc, "version": version, "strategy": strategy, "overrides": {}})


def _rollback(uc: str, form: dict[str, Any]) -> Plan:
    why = _text(form, "why", required=True)
    return Plan("rollback", uc, f"roll {uc} back to its primary version only: {why}", LIFECYCLE_DAG,
                {"action": "rollback", "usecase": uc, "version": None, "stage": None, "why": why})


def _move(uc: str, form: dict[str, Any]) -> Plan:
    version = _version(form, required=True)
    stage = _text(form, "stage", required=True, max_len=20)
    if stage not in STAGES:
        raise ActionError("stage", f"one of {', '.join(STAGES)}, got {stage!r}")
    why = _text(form, "why", required=True)
    return Plan("move", uc, f"move {uc} v{version} to {stage}: {why}", LIFECYCLE_DAG,
                {"action": "move", "usecase": uc, "version": version, "stage": stage, "why": why})


ACTIONS = {"train": _train, "retrain": _retrain, "deploy": _deploy, "rollback": _rollback, "move": _move}


def plan(settings: Settings, action: str, usecase: str, form: dict[str, Any]) -> Plan:
    """Validate an action's form: the exact DAG run (or Asset event) it would make, or ActionError."""
    from pipelines.usecases import list_usecases

    if action not in ACTIONS:
        raise ActionError("action", f"one of {', '.join(ACTIONS)}, got {action!r}")
    if usecase not in list_usecases(settings.usecases_path):
        raise ActionError("usecase", f"unknown use case {usecase!r}")
    return ACTIONS[action](usecase, form)


def execute(settings: Settings, p: Plan, *, user: str, token: str, base_url: str) -> dict[str, Any]:
    """Trigger the plan with the user's token; the audit record (also on failure) is returned."""
    from pipelines.orchestration import AirflowApiError, AirflowClient

    record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "user": user, **asdict(p)}
    client = AirflowClient.with_token(base_url, token)
    try:
        if p.asset:
            event = client.emit_asset_event(p.asset, {**p.conf, "requested_by": f"console:{user}"})
            record.update(outcome="asset event", asset_event_id=event.get("id"))
        else:
            record.update(outcome="dag run", dag_run_id=client.trigger(p.dag_id, p.conf))
    except AirflowApiError as exc:
        record.update(outcome="refused", error=str(exc)[:500])
    _append(settings, record)
    return record


def _path(settings: Settings) -> Any:
    return settings.home_path / "audit" / "console.jsonl"


def _append(settings: Settings, record: dict[str, Any]) -> None:
    path = _path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)  # one write of one line: appends never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def audit_log(settings: Settings, usecase: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The console's actions, newest first (a torn last line, if any, is skipped)."""
    try:
        lines = _path(settings).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if usecase is None or record.get("usecase") == usecase:
            out.append(record)
        if len(out) >= limit:
            break
    return out
