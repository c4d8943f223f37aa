"""The lifecycle on MLflow's registry: stages as version tags, roles as aliases, every move audited.

* A version's stage is its tag ``atelier.stage`` (exploration, training, evaluation, staging, production,
  archived); moves follow :data:`pipelines.lifecycle.rules.ALLOWED_TRANSITIONS`.
* Aliases: ``champion`` is the production version (at most one), ``challenger`` the staging candidate.
  Promoting a version to production moves ``champion`` to it and sends the previous champion back to staging
  (audited as "superseded"); archiving a version drops its aliases.
* Every move adds a tag ``atelier.audit.NNNN`` = {from, to, by, at, why}; a rule's verdict (passed or the
  failing clauses) is kept in ``atelier.gate``.
* Moves of one model are serialised by a lock and re-read the state under it, so two concurrent promotions
  cannot both win: the second sees the first's result (the version already moved, or a new champion its
  rule must beat) and decides again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from pipelines.lifecycle.rules import Decision, ModelFacts, Rule, RuleError, check_transition, evaluate
from pipelines.models.registry import STAGE_TAG, client, mlflow_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.config import Settings

__all__ = ["AUDIT_PREFIX", "GateOutcome", "apply_rules", "audit_event", "audit_trail", "promotion_lock", "transition",
           "version_facts"]

AUDIT_PREFIX = "atelier.audit."
GATE_TAG = "atelier.gate"
CHAMPION, CHALLENGER = "champion", "challenger"


@contextmanager
def promotion_lock(settings: Settings, model_name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise lifecycle moves of one model on this machine (or any sharing ``home``)."""
    folder = settings.home_path / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        held = FileLock(folder / f"lifecycle-{model_name}.lock", timeout=timeout_s, poll_interval=0.2).acquire()
    except Timeout:
        raise TimeoutError(f"another lifecycle move of '{model_name}' holds the lock "
                           f"for more than {timeout_s:.0f} s") from None
    with held:
        yield


def _mlflow(settings: Settings, fn: Any, *args: Any, **kwargs: Any) -> Any:
    with mlflow_errors(settings):
        return fn(*args, **kwargs)


def audit_trail(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(AUDIT_PREFIX))]


def _audit(c: MlflowClient, name: str, version: str, tags: dict[str, str], entry: dict[str, Any]) -> None:
    n = len([k for k in tags if k.startswith(AUDIT_PREFIX)])
    c.set_model_version_tag(name, version, f"{AUDIT_PREFIX}{n:04d}", json.dumps(entry))


def _stage(c: MlflowClient, name: str, version: str) -> tuple[str | None, dict[str, str], list[str]]:
    mv = c.get_model_version(name, version)
    tags = dict(mv.tags or {})
    return tags.get(STAGE_TAG), tags, list(mv.aliases or [])


def transition(settings: Settings, name: str, version: str | int, to_stage: str, *, by: str, why: str,
               expected_from: str | None = None, mlflow_client: MlflowClient | None = None) -> dict[str, Any]:
    """Move one version to ``to_stage`` (an allowed move), update aliases, audit. Returns the audit entry.

    ``expected_from``: refuse (RuleError) when the version is no longer in that stage (a concurrent move won).
    """
    c = mlflow_client or client(settings)
    version = str(version)
    with promotion_lock(settings, name):
        return _transition_locked(settings, c, name, version, to_stage, by=by, why=why, expected_from=expected_from)


def _transition_locked(settings: Settings, c: MlflowClient, name: str, version: str, to_stage: str, *, by: str,
                       why: str, expected_from: str | None) -> dict[str, Any]:
    current, tags, aliases = _mlflow(settings, _stage, c, name, version)
    if current is None:
        raise RuleError(f"{name} version {version} has no lifecycle stage (tag {STAGE_TAG}); "
                        "it was not registered by Atelier")
    if expected_from is not None and current != expected_from:
        raise RuleError(f"{name} version {version} is in {current}, not {expected_from}: "
                        "another promotion moved it first")
    check_transition(current, to_stage)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entry = {"from": current, "to": to_stage, "by": by, "at": now, "why": why}
    if to_stage == "production":
        try:
            old = c.get_model_version_by_alias(name, CHAMPION)
        except Exception:  # noqa: BLE001 - no champion yet
            old = None
        if old is not None and str(old.version) != version:
            old_tags = dict(old.tags or {})
            _mlflow(settings, c.set_model_version_tag, name, old.version, STAGE_TAG, "staging")
            _mlflow(settings, _audit, c, name, str(old.version), old_tags,
                    {"from": "production", "to": "staging", "by": by, "at": now,
                     "why": f"superseded by version {version}"})
        _mlflow(settings, c.set_registered_model_alias, name, CHAMPION, version)
        if CHALLENGER in aliases:
            _mlflow(settings, c.delete_registered_model_alias, name, CHALLENGER)
    elif to_stage == "staging":
        _mlflow(settings, c.set_registered_model_alias, name, CHALLENGER, version)
        if CHAMPION in aliases:
            _mlflow(settings, c.delete_registered_model_alias, name, CHAMPION)
    elif to_stage == "archived":
        for alias in aliases:
            _mlflow(settings, c.delete_registered_model_alias, name, alias)
    _mlflow(settings, c.set_model_version_tag, name, version, STAGE_TAG, to_stage)
    _mlflow(settings, _audit, c, name, version, tags, entry)
    return entry


def audit_event(settings: Settings, name: str, version: str | int, *, event: str, by: str, why: str,
                details: dict[str, Any] | None = None, mlflow_client: MlflowClient | None = None) -> dict[str, Any]:
    """Add a non-moving entry (a deployment step, a rollback, a refusal) to a version's audit trail; the
    stage stays as it is (``from`` = ``to``)."""
    c = mlflow_client or client(settings)
    version = str(version)
    with promotion_lock(settings, name):
        stage, tags, _ = _mlflow(settings, _stage, c, name, version)
        entry = {"from": stage, "to": stage, "by": by, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "why": why, "event": event, **({"details": details} if details else {})}
        _mlflow(settings, _audit, c, name, version, tags, entry)
    return entry


def version_facts(c: MlflowClient, name: str, version: str) -> ModelFacts:
    mv = c.get_model_version(name, version)
    run = c.get_run(mv.run_id)
    return ModelFacts(metrics=dict(run.data.metrics), params=dict(run.data.params), tags=dict(mv.tags or {}))


@dataclass
class GateOutcome:
    version: str
    start_stage: str
    final_stage: str
    moves: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[tuple[str, Decision]] = field(default_factory=list)

    @property
    def promoted_to_production(self) -> bool:
        return any(m["to"] == "production" for m in self.moves)

    def summary(self) -> str:
        lines = [f"version {self.version}: {self.start_stage} -> {self.final_stage}"]
        for rule, decision in self.decisions:
            verdict = "PASSED" if decision.promote else "FAILED: " + "; ".join(decision.failing_clauses)
            lines.append(f"  rule {rule}: {verdict}" + (f" ({'; '.join(decision.notes)})" if decision.notes else ""))
        return "\n".join(lines)


def apply_rules(settings: Settings, name: str, version: str | int, rules: list[Rule], *,
                by: str = "rule", mlflow_client: MlflowClient | None = None) -> GateOutcome:
    """Evaluate the rules from the version's current stage, one stage at a time, as long as a rule for the
    next stage passes. Under the model's lock: the champion read is the one the decision is made against."""
    c = mlflow_client or client(settings)
    version = str(version)
    with promotion_lock(settings, name):
        stage, _, _ = _mlflow(settings, _stage, c, name, version)
        if stage is None:
            raise RuleError(f"{name} version {version} has no lifecycle stage")
        outcome = GateOutcome(version, stage, stage)
        while True:
            candidates = [r for r in rules if r.target_stage in _next_stages(stage)]
            if not candidates:
                break
            facts = _mlflow(settings, version_facts, c, name, version)
            champion = _champion_facts(settings, c, name, exclude=version, candidate=facts)
            moved = False
            for rule in candidates:
                decision = evaluate(rule, facts, champion)
                label = rule.name or rule.canonical
                outcome.decisions.append((label, decision))
                verdict = {"rule": label, "target": rule.target_stage, "passed": decision.promote,
                           "failing": decision.failing_clauses, "notes": decision.notes,
                           "at": datetime.now(UTC).isoformat(timespec="seconds")}
                _mlflow(settings, c.set_model_version_tag, name, version, GATE_TAG, json.dumps(verdict)[:4900])
                if decision.promote:
                    entry = _transition_locked(settings, c, name, version, rule.target_stage,
                                               by=f"{by}:{label}", why=f"rule passed: {rule.canonical}",
                                               expected_from=stage)
                    outcome.moves.append(entry)
                    stage = rule.target_stage
                    moved = True
                    break
            if not moved:
                break
        outcome.final_stage = stage
        return outcome


def _next_stages(stage: str) -> set[str]:
    from pipelines.lifecycle.rules import ALLOWED_TRANSITIONS

    # Rules promote forward; demotion and archiving are deliberate, never automatic.
    return {s for s in ALLOWED_TRANSITIONS[stage] if s not in ("archived",) and not
            (stage == "production" and s == "staging")}


def _champion_facts(settings: Settings, c: MlflowClient, name: str, exclude: str,
                    candidate: ModelFacts | None = None) -> ModelFacts | None:
    """The champion's facts. When the candidate's run scored this same champion on the candidate's holdout
    (metrics ``champion_<m>`` with ``champion_version``), those figures replace the champion's own: both
    models are then judged on the same rows."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if str(mv.version) == exclude:
        return None
    facts = _mlflow(settings, version_facts, c, name, str(mv.version))
    if candidate is not None and candidate.metrics.get("champion_version") == float(mv.version):
        aligned = {k.removeprefix("champion_"): v for k, v in candidate.metrics.items()
                   if k.startswith("champion_") and k != "champion_version"}
        facts = ModelFacts(metrics={**facts.metrics, **aligned}, params=facts.params, tags=facts.tags)
    return facts
