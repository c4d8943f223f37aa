"""
### model_deploy

Take a registered model version to traffic, judged as it goes (Michelangelo's deployment, with canary
analysis, shadow and A/B):

1. **resolve**: the version to deploy, from the triggering `models.production` event (a champion just promoted
   by `model_train`'s rules; skipped where `deploy.auto_deploy` is off) or from the trigger form (`usecase`,
   `version`, `strategy`, `overrides`).
2. **rollout** (`pipelines.deploy.rollout.deploy`): package the version's artifact (ZIP: model, feature-spec
   hash, calibration, fallback, Triton config, golden rows, checksums, manifest; kept with the MLflow version),
   verify it against the serving use case, place it in Triton's model repository, load it beside the version
   serving (never unloading first), readiness, golden check (Triton's answers for real holdout rows equal the
   artifact's within 1e-6). A refusal stops here: the old version keeps serving. Then the strategy:
   `canary` (deployment.yaml's steps, each judged against the primary on the same window, per segment too),
   `shadow`, `ab` or `direct` (a first deployment is always direct: nothing serves yet).
3. **verdict**: fails the run when the candidate was refused or rolled back, so the run is red and the alert
   notifier fires (log plus `deploy.webhook_url`); the reasons are in the decision ledger (lake table
   `deployments__<usecase>`, the MLflow version's tags and audit trail, `atelier deploy status`).

Params: `usecase`, `version` (registry version; empty = the champion), `strategy` (empty = deployment.yaml's),
`overrides` (e.g. `{"canary.bake_s": 60}`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowSkipException

from plugins.assets import model_production
from plugins.console.links import RolloutLink
from plugins.notifiers.alert import AtelierAlertNotifier
from plugins.usecases import usecases

USECASES = [name for name, u in usecases().items() if (u.extra.get("model") or {}).get("model")]

with DAG(
    dag_id="model_deploy",
    description="Package, load beside, golden check, then canary / shadow / A/B / direct with automatic rollback",
    doc_md=__doc__,
    schedule=[model_production()],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "deployment", "serving"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "owner": "atelier"},
    params={
        "usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""]),
        "version": Param(None, type=["null", "string"], description="registry version (empty: the champion)"),
        "strategy": Param(None, type=["null", "string"], enum=[None, "canary", "shadow", "ab", "direct"],
                          description="empty: the use case's deployment.yaml"),
        "overrides": Param({}, type=["object", "null"], description='deployment.yaml overrides, e.g. '
                                                                   '{"canary.bake_s": 60}'),
    },
) as dag:

    @task
    def resolve(params: dict[str, Any], triggering_asset_events: Any = None) -> dict[str, Any]:
        """The use case and version: the production event's, else the trigger form's (champion if empty)."""
        from pipelines.config import get_settings
        from pipelines.deploy.rollout import model_name
        from pipelines.models.registry import resolve_version

        settings = get_settings()
        usecase, version = params["usecase"], params.get("version")
        for events in (triggering_asset_events or {}).values():
            for event in events:
                extra = event.extra or {}
                if extra.get("usecase") in USECASES and extra.get("version"):
                    usecase, version = extra["usecase"], str(extra["version"])
                    print(f"triggered by models.production: {extra}")
                    if not settings.deploy.auto_deploy:
                        raise AirflowSkipException(f"{extra['model']} v{version} reached production, but "
                                                   "deploy.auto_deploy is off in this profile: deploy it "
                                                   "manually (trigger this DAG with its version)")
        if usecase not in USECASES:
            raise ValueError(f"usecase {usecase!r} is not one of {USECASES}")
        ref = resolve_version(settings, model_name(settings, usecase), alias=None if version else "champion",
                              version=version or None)
        return {"usecase": usecase, "version": ref.version, "strategy": params.get("strategy"),
                "overrides": params.get("overrides") or {}}

    # A retry re-runs an interrupted rollout from its start (the routes it left are removed first); a rollout
    # that ended is not run again (same rollout id = the run id).
    @task(execution_timeout=timedelta(hours=6), retries=1)
    def rollout(target: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        from pipelines.config import get_settings
        from pipelines.deploy.rollout import deploy

        result = deploy(get_settings(), target["usecase"], target["version"], strategy=target["strategy"],
                        overrides=target["overrides"], by=f"model_deploy/{run_id}", rollout_id=run_id, alert=False)
        for step in result.steps:
            print(f"{step['step']:<14} {step['verdict']:<12} {step.get('reason', '')}")
        print(f"{result.status}: {result.reason}")
        print(f"Decision ledger: {result.ledger}; live record: atelier deploy status --usecase {result.usecase}")
        if result.report:
            print(f"Report: {result.report}")
        return {"usecase": result.usecase, "status": result.status, "reason": result.reason, "decision": result.decision,
                "candidate": result.candidate, "primary": result.primary, "strategy": result.strategy,
                "routing_version": result.routing_version, "ledger": result.ledger, "report": result.report}

    @task(retries=0, on_failure_callback=AtelierAlertNotifier("rollout_failed"))
    def verdict(outcome: dict[str, Any]) -> str:
        if outcome["status"] in ("refused", "rolled_back"):
            raise RuntimeError(f"v{outcome['candidate']} {outcome['status'].replace('_', ' ')}: {outcome['reason']}")
        return f"{outcome['status']}: {outcome['reason']}"

    outcome = rollout(resolve())
    outcome.operator.operator_extra_links = (RolloutLink(),)
    verdict(outcome)
