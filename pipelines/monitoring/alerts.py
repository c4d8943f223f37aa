"""What a drift run asks of people and of training: alerts for its findings, retraining for its incidents.

* **Alerts**: each finding at ``alerts.min_severity`` or above among the run's strongest (at most
  ``alerts.max_listed``, then one line counting the rest) goes to the log and the settings' alert webhook
  (``deploy.webhook_url``: one channel for every Atelier alert), through ``pipelines.deploy.rollout.notify``.
* **Retraining**: each incident the run opened asks for one retraining. The requests already emitted are
  kept in a ledger (``<home>/monitoring/<usecase>/retrain_emitted.json``, under a file lock), so a re-run
  or a backfill over the same days emits nothing twice (a retry of the same Airflow run emits again: its
  first try may have died before its event went out); one incident, one retraining.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from pipelines.config import Settings
from pipelines.lake.tables import safe_name
from pipelines.monitoring.drift_spec import SEVERITY_NAMES

__all__ = ["alert_findings", "claim_retraining", "run_result"]


def _folder(settings: Settings, usecase: str) -> Path:
    return settings.home_path / "monitoring" / usecase


def run_result(settings: Settings, usecase: str, run_id: str) -> dict[str, Any]:
    """The stored result of a drift run (what ``run_drift`` wrote)."""
    path = _folder(settings, usecase) / "runs" / f"{safe_name(run_id)}.json"
    if not path.exists():
        raise FileNotFoundError(f"drift run '{run_id}' of '{usecase}' left no result ({path})")
    return json.loads(path.read_text())


def alert_findings(settings: Settings, result: dict[str, Any], min_severity: str, max_listed: int) -> int:
    """Send an alert per finding at ``min_severity`` or above (the strongest first). Returns alerts sent."""
    from pipelines.deploy.rollout import notify

    level = SEVERITY_NAMES.index(min_severity)
    hits = [f for f in result.get("top_findings", []) if SEVERITY_NAMES.index(f["severity"]) >= level]
    total = sum(n for per_day in result.get("findings", {}).values()
                for s, n in per_day.items() if SEVERITY_NAMES.index(s) >= level)
    sent = 0
    for f in hits[:max_listed]:
        notify(settings, {"event": "drift.finding", "usecase": result["usecase"], "run_id": result["run_id"],
                          **{k: f[k] for k in ("day", "severity", "source", "column", "segment", "segment_value",
                                               "statistic", "kind")},
                          "reason": f["message"], "report": result.get("reports", {}).get(f["day"])})
        sent += 1
    if total > sent:
        notify(settings, {"event": "drift.findings", "usecase": result["usecase"], "run_id": result["run_id"],
                          "reason": f"{total - sent:,} more finding(s) at {min_severity} or above "
                                    f"(atelier monitor findings --usecase {result['usecase']})"})
        sent += 1
    return sent


def claim_retraining(settings: Settings, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's retraining requests never emitted before, recorded as emitted (ledger under a lock)."""
    usecase = result["usecase"]
    folder = _folder(settings, usecase)
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / "retrain_emitted.json"
    with FileLock(str(folder / ".retrain.lock"), timeout=30):
        emitted = json.loads(ledger.read_text()) if ledger.exists() else {}
        # The same run claiming again is a retry of a task that may have died before its event went out.
        new = [r for r in result.get("retrain", []) if r["incident_id"] not in emitted
               or emitted[r["incident_id"]]["run_id"] == result["run_id"]]
        for r in new:
            emitted[r["incident_id"]] = {"run_id": result["run_id"], "at": datetime.now(UTC).isoformat(),
                                         "params": r["params"]}
        if new:
            tmp = ledger.with_suffix(".tmp")
            tmp.write_text(json.dumps(emitted, indent=1, sort_keys=True))
            tmp.replace(ledger)
    return new
