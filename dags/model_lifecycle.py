"""
### model_lifecycle

An operator's hand on a model, through Airflow so that it is authorized, logged and audited like every other
change (the Atelier console and `atelier` trigger it; the trigger form works too):

* **move**: move a registered version to another stage (`pipelines.lifecycle.registry.transition`: only the
  lifecycle's allowed moves; production makes it the champion). The move, who asked (the run's triggering
  user) and why are written to the version's audit trail.
* **rollback**: take a use case's traffic back (`pipelines.deploy.rollout.rollback`): a candidate in service
  goes to weight 0 and is retired; with none, the previous primary serves all traffic again. The routing
  table's history records who and why.

Params: `action` (`move` | `rollback`), `usecase`, `version` and `stage` (move), `why` (required: kept in the
audit trail).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from pipelines.lifecycle.rules import STAGES
from plugins.usecases import usecases

USECASES = [name for name, u in usecases().items() if (u.extra.get("model") or {}).get("model")]

with DAG(
    dag_id="model_lifecycle",
    description="Move a model version's stage or roll a use case's traffic back, audited",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "lifecycle", "deployment"],
    default_args={"retries": 1, "owner": "atelier"},
    params={
        "action": Param("move", enum=["move", "rollback"]),
        "usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""]),
        "version": Param(None, type=["null", "string"], pattern=r"^\d{1,9}$", description="move: registry version"),
        "stage": Param(None, type=["null", "string"], enum=[None, *STAGES], description="move: the target stage"),
        "why": Param("", type="string", minLength=3, maxLength=500, description="kept in the audit trail"),
    },
) as dag:

    # Not retried: a rollback retried after it landed would roll back one version further, and a move that
    # landed would be refused as a move to the stage it is already in. A failed run says what happened.
    @task(retries=0)
    def apply(params: dict[str, Any], dag_run: Any = None, run_id: str | None = None) -> dict[str, Any]:
        from pipelines.config import get_settings
        from pipelines.deploy import rollout
        from pipelines.lifecycle.registry import transition
        from pipelines.usecases import get_usecase

        settings = get_settings()
        user = getattr(dag_run, "triggering_user_name", None) or "unknown"
        by = f"{user} via model_lifecycle/{run_id}"
        uc = get_usecase(params["usecase"], settings.usecases_path)
        if params["action"] == "rollback":
            table = rollout.rollback(settings, uc.name, reason=params["why"], by=by)
            print(f"{uc.name}: routing version {table.version}: v{table.primary.version} serves all traffic")
            return {"action": "rollback", "usecase": uc.name, "routing_version": table.version,
                    "primary": table.primary.version}
        if not params.get("version") or not params.get("stage"):
            raise ValueError("move needs `version` and `stage`")
        from pipelines.console.data import model_name

        entry = transition(settings, model_name(uc), params["version"], params["stage"], by=by, why=params["why"])
        print(f"{model_name(uc)} v{params['version']}: {entry['from']} -> {entry['to']} (by {by})")
        return {"action": "move", "usecase": uc.name, "version": params["version"], **entry}

    apply()
