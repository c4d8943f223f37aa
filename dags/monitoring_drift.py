"""
### monitoring_drift

D3-style monitoring of each use case with a `monitoring.yaml`: every day, over the data interval (or a
backfill range from the trigger form, `start` / `end`, ISO dates, UTC, end exclusive), after the feedback
tables are in (`monitoring_feedback` runs at 01:00):

1. **drift** (`pipelines/jobs/drift.py run`, Spark): profiles the served data (the prediction log), the
   outcomes and the lake tables behind the features per segment and cross of segments in one pass per
   source (mergeable daily sketches in `profiles__<usecase>`; weekly windows merged from them), evaluates
   every indicator (null rate, moments, quantiles, distinct counts, category shares; PSI / KS / Wasserstein /
   Jensen-Shannon against the model's training reference and the trailing week; online error and coverage),
   judges each against thresholds learned from its own history (robust, weekly seasonality), and publishes
   `indicators__`, `findings__` and `incidents__<usecase>` (the days replaced exactly), plus an Evidently
   report of the most drifted features (`<home>/reports/<usecase>/drift/<day>/`, logged to MLflow under the
   serving version);
2. **alert**: each finding at `alerts.min_severity` or above goes to the task log and the alert webhook
   (`deploy.webhook_url`);
3. **retrain**: each new incident (a high drift finding on the model's inputs or outputs, or the online MAE
   above the spec's bound; one incident per cool-down) emits `retrain.<usecase>` with its reason and the
   window to train on; `model_train` consumes it (every event queued while it waited, in one run) and the
   retrained version goes through the promotion rules and the deployment. Skipped when nothing new opened.

Scheduled runs cover every use case with a `monitoring.yaml` (one map index each: drift, alert and retrain
fail or skip on their own); a manual run covers the `usecase` it names (`plugins/intervals.py`).
An interval with no served, feedback or source day published yet (a scheduled run past the data, or no lake
before the first ingest) ends **skipped** with the reason, before Spark starts.

Read the findings with `atelier monitor findings --usecase flights_eta [--column ...] [--segment ...]`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task, task_group
from airflow.sdk.exceptions import AirflowSkipException
from airflow.timetables.interval import CronDataIntervalTimetable

from plugins.assets import emit, feedback, retrain_request, usecase_outlet
from plugins.intervals import interval_args, interval_params, usecases_task
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import usecases

USECASES = [name for name, u in usecases().items() if (u.extra.get("monitoring") or {}).get("monitoring")]

with DAG(
    dag_id="monitoring_drift",
    description="Indicators per feature x segment x statistic, learned anomaly thresholds, alerts, retraining",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "monitoring", "drift"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params=interval_params(USECASES),
) as dag:
    @task
    def alert(usecase: str, run_id: str | None = None) -> int:
        """One alert per finding at the spec's alert severity or above (log + webhook)."""
        from pipelines.config import get_settings
        from pipelines.featurestore.spec import load_feature_set
        from pipelines.monitoring.alerts import alert_findings, run_result
        from pipelines.monitoring.drift_spec import load_monitoring_spec
        from pipelines.usecases import get_usecase

        settings = get_settings()
        spec_usecase = get_usecase(usecase, settings.usecases_path)
        spec = load_monitoring_spec(spec_usecase, load_feature_set(spec_usecase))
        result = run_result(settings, spec_usecase.name, run_id or "")
        sent = alert_findings(settings, result, spec.alerts.min_severity, spec.alerts.max_listed)
        print(f"{sent} alert(s) sent for {usecase} run {run_id}")
        return sent

    @task(outlets=[usecase_outlet("monitoring_drift", "retrain")])
    def retrain(usecase: str, run_id: str | None = None, outlet_events: Any = None) -> dict[str, Any]:
        """Emit ``retrain.<usecase>`` for the incidents this run opened (never twice for one incident)."""
        from pipelines.config import get_settings
        from pipelines.monitoring.alerts import claim_retraining, run_result

        settings = get_settings()
        result = run_result(settings, usecase, run_id or "")
        new = claim_retraining(settings, result)
        if not new:
            raise AirflowSkipException("no new incident: no retraining requested")
        latest = new[-1]  # one event per run: a backfill that opened several asks for the latest window
        extra = {"usecase": usecase, "reason": f"drift incident {latest['incident_id']}: "
                 f"{latest['reason']}", "incident": latest["incident_id"], "params": latest["params"],
                 "incidents": [r["incident_id"] for r in new], "run_id": run_id}
        emit(outlet_events, usecase_outlet("monitoring_drift", "retrain"), [retrain_request(usecase)], extra)
        print(f"retrain.{usecase} emitted: {extra}")
        return extra

    @task_group(group_id="per_usecase", prefix_group_id=False)
    def per_usecase(usecase: str) -> None:
        drift = AtelierSparkJobOperator(task_id="drift", job="drift", job_args=["run", *interval_args(usecase)],
                                        inlets=[feedback(u) for u in USECASES])
        drift >> alert(usecase) >> retrain(usecase)

    per_usecase.expand(usecase=usecases_task(USECASES))
