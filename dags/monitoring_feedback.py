"""
### monitoring_feedback

Close the loop: every day, over the data interval (or a backfill range from the trigger form, `start` /
`end`, ISO dates, UTC, end exclusive, e.g. `{"start": "2013-12-24", "end": "2013-12-31"}`), one Spark job
(`pipelines/jobs/feedback.py run`, through the Spark provider):

1. turns the prediction API's log of those days into the lake table `served__<usecase>` (one row per answer,
   counted once however often it was read; corrupt or truncated lines counted, reported and skipped) and the
   outcome log into `outcomes__<usecase>`, each checked by Great Expectations before it replaces exactly
   those days;
2. re-joins every online and batch prediction from `max_label_lag` (feedback.yaml) before the interval to its
   end with the outcomes that arrived by then (`feedback__<usecase>`: actual, error, covered flags, label lag,
   or `pending` / `missing` / `no_key`): late labels update earlier days, a re-run gives the same rows;
3. measures per day, model version and the spec's segments (`online_metrics__<usecase>`: MAE, RMSE, bias,
   coverage and width, fallback / stale / defaulted rates, label-lag percentiles) and logs the overall
   figures to each version's MLflow run (`online_*` metrics, the day as step).

Then **served_skew** recomputes, for a sample of the interval's served predictions, every feature the API
used offline at the request's time (the Spark compiler for request features, the point-in-time join for the
batch views) and fails above the spec's mismatch threshold, naming the feature (report under
`<home>/reports/<usecase>/served_skew/`). Known serving conditions (store down, materialization lag, a
stale value replaced by policy) are reported apart, not as skew.

Scheduled runs cover every use case with a `feedback.yaml` (one map index each, failing or skipping on its
own); a manual run covers the `usecase` it names (`plugins/intervals.py`). An interval with nothing new (no prediction-log or outcome-log file of its days and no batch prediction of
them) ends **skipped** with the reason, before Spark starts.

Read the metrics with `atelier monitor metrics --usecase flights_eta`. Emits the `feedback.<usecase>` Asset.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task_group
from airflow.timetables.interval import CronDataIntervalTimetable

from plugins.assets import feedback
from plugins.intervals import interval_args, interval_params, usecases_task
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import usecases

USECASES = [name for name, u in usecases().items() if "feedback" in u.extra]

with DAG(
    dag_id="monitoring_feedback",
    description="Prediction log and outcomes into the lake, joined, online metrics per version and segment",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "monitoring", "feedback"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params=interval_params(USECASES),
) as dag:

    @task_group(group_id="per_usecase", prefix_group_id=False)
    def per_usecase(usecase: str) -> None:
        joined = AtelierSparkJobOperator(
            task_id="feedback", job="feedback", job_args=["run", *interval_args(usecase)],
            usecase_outlets={u: [feedback(u)] for u in USECASES},
        )
        served_skew = AtelierSparkJobOperator(task_id="served_skew", job="feedback",
                                              job_args=["served-skew", *interval_args(usecase)], retries=0)
        joined >> served_skew

    per_usecase.expand(usecase=usecases_task(USECASES))
