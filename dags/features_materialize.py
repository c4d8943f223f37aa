"""
### features_materialize

Every day, compute the data interval's feature rows with Spark (the feature language's Spark compiler,
reading the history the windows need) and write the latest row per entity to the online store (SQLite in
the `local` profile, Cassandra in `cluster`); then **skew_check** samples entities, reads their online
values and recomputes them offline, failing above the spec's mismatch threshold (report under
`<home>/reports/<usecase>/skew/` and in the lake's `_reports/skew`).

Scheduled runs cover every use case (one map index each, failing or skipping on its own); a manual run
covers the `usecase` it names (`plugins/intervals.py`). An interval without any source event (no lake before the first ingest, or a scheduled run past the data)
ends **skipped** with the reason, before Spark starts.

Writes are versioned by event time: a re-run or a retry of an interval is harmless and an old interval
replayed never overwrites newer values. Cassandra down: the task retries, then fails naming the store.

Params: `usecase`; `start` / `end` (ISO dates, UTC) to backfill a range instead of the data interval,
e.g. `{"start": "2013-12-01", "end": "2014-01-01"}` for the flights data.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task_group
from airflow.timetables.interval import CronDataIntervalTimetable

from plugins.assets import feature_view
from plugins.intervals import interval_args, interval_params, usecases_task
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import feature_sets

SETS = feature_sets()
USECASES = list(SETS)

with DAG(
    dag_id="features_materialize",
    description="Materialize the interval's features into the online store, then check skew",
    doc_md=__doc__,
    # A data-interval timetable: "@daily" in Airflow 3 is a trigger timetable whose runs have an empty interval.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "features", "online-store"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params=interval_params(USECASES),
) as dag:

    @task_group(group_id="per_usecase", prefix_group_id=False)
    def per_usecase(usecase: str) -> None:
        materialize = AtelierSparkJobOperator(
            task_id="materialize", job="features", job_args=["materialize", *interval_args(usecase)],
            usecase_outlets={u: [feature_view(u, v.name) for v in fs.batch_views] for u, fs in SETS.items()},
        )
        skew_check = AtelierSparkJobOperator(task_id="skew_check", job="features",
                                             job_args=["skew", *interval_args(usecase)], retries=0)
        materialize >> skew_check

    per_usecase.expand(usecase=usecases_task(USECASES))
