"""
### batch_predict

Score a use case's entities in batch: every day for the data interval, or a backfill range from the
trigger form (`start` / `end`, ISO dates, UTC, end exclusive, e.g. `{"start": "2013-12-01", "end":
"2013-12-08"}` for a week of the flights data). One Spark job (`pipelines/jobs/batch_predict.py`, submitted
through the Spark provider: `local[2]` by default, the cluster master in the `cluster` profile) reads the
interval's entities (the flights scheduled on those days) from the lake, joins their offline features point
in time (the training set's code), loads the registered model once per executor (alias `champion`, another
alias, or a pinned `model_version`), predicts with `inplace_predict` in Arrow batches, and writes
prediction, intervals, model name and version and run id to the lake table `predictions__<usecase>`,
partitioned by day.

Scheduled runs score every use case (one map index each, failing or skipping on its own); a manual run
scores the `usecase` it names (`plugins/intervals.py`). A pinned `model_version` applies to a manual run's
use case only.

Great Expectations checks the staged output (row count = entities read, no null prediction, nested
intervals) before it replaces **only the interval's days**, by an atomic pointer swap: a failed check or a
killed job leaves the published days as they were; a re-run gives the same rows; runs over different
intervals may overlap. An interval with no entity yet (no lake before the first ingest, or no partition of
those days: a scheduled run past the data) ends **skipped** with the reason, before Spark starts. Unknown
alias, a reversed interval or feature tables that do not cover the interval fail the task at once with
`ATELIER JOB FAILED: ...` naming the cause (no retry helps those; fix and re-run).
The published table emits the `predictions.<usecase>` Asset (the feedback loop reads it).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task_group
from airflow.timetables.interval import CronDataIntervalTimetable

from plugins.assets import predictions
from plugins.intervals import interval_args, interval_params, usecases_task
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import feature_sets

USECASES = [name for name, fs in feature_sets().items() if fs.label is not None]
MODEL_ARGS = [
    "{{ '--model-version' if params.model_version else '--alias' }}",
    "{{ params.model_version or params.alias or 'champion' }}",
]


def job_args(usecase: str) -> list[str]:
    """The scoring job's arguments for one use case (a mapped group's argument): its interval, then the model."""
    return [*interval_args(usecase), *MODEL_ARGS]

with DAG(
    dag_id="batch_predict",
    description="Score the interval's entities with the registered model into the lake's predictions table",
    doc_md=__doc__,
    # A real one-day data interval ([midnight, next midnight) UTC): Airflow 3's plain "@daily" gives
    # zero-length intervals (start == end), which would score nothing.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=2,
    tags=["atelier", "batch", "predictions"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params=interval_params(
        USECASES,
        alias=Param("champion", type="string", description="registered model alias to score with"),
        model_version=Param(None, type=["null", "string"], description="a pinned model version (overrides the alias)"),
    ),
) as dag:

    @task_group(group_id="per_usecase", prefix_group_id=False)
    def per_usecase(usecase: str) -> None:
        AtelierSparkJobOperator(
            task_id="score", job="batch_predict", job_args=job_args(usecase),
            usecase_outlets={u: [predictions(u)] for u in USECASES},
        )

    per_usecase.expand(usecase=usecases_task(USECASES))
