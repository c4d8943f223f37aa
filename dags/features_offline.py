"""
### features_offline

Rebuild a use case's offline feature tables (one per feature view, keyed by entity and event time,
partitioned by date) from the lake with Spark, and publish each atomically. Runs when `lake_ingest`
publishes any of the tables a use case's feature views read (Asset-triggered, any one of them) or on demand.
The point-in-time training sets read these tables.

An Asset-triggered run rebuilds the use cases whose sources were published (one map index each, failing on
its own); a manual run rebuilds the `usecase` it names (`plugins/intervals.py`).

Params: `usecase`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetAny, Param, task_group

from plugins.assets import lake_table, offline_features
from plugins.intervals import usecases_task
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import feature_sets

SETS = feature_sets()
USECASES = list(SETS)
SOURCES = {u: sorted({v.source for v in fs.batch_views}) for u, fs in SETS.items()}
TABLES = sorted({t for tables in SOURCES.values() for t in tables})

with DAG(
    dag_id="features_offline",
    description="Rebuild the offline feature tables when the lake changes",
    doc_md=__doc__,
    # Any one source published starts a run (a list would wait for every source of every use case).
    schedule=AssetAny(*(lake_table(t) for t in TABLES)) if TABLES else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "features", "offline-store"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params={"usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""],
                             description="the use case of a manual run (Asset-triggered runs: those whose "
                                         "sources were published)")},
) as dag:

    @task_group(group_id="per_usecase", prefix_group_id=False)
    def per_usecase(usecase: str) -> None:
        AtelierSparkJobOperator(
            task_id="build", job="features", job_args=["offline", "--usecase", usecase, "--run-id", "{{ run_id }}"],
            usecase_outlets={u: [offline_features(u)] for u in USECASES},
        )

    per_usecase.expand(usecase=usecases_task(USECASES, {u: [lake_table(t).name for t in tables]
                                                         for u, tables in SOURCES.items()}))
