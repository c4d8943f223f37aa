"""
### features_offline

Rebuild a use case's offline feature tables (one per feature view, keyed by entity and event time,
partitioned by date) from the lake with Spark, and publish each atomically. Runs when `lake_ingest`
publishes new lake tables (Asset-triggered) or on demand. The point-in-time training sets read these tables.

Params: `usecase`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from plugins.assets import lake_table, offline_features
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import feature_sets

SETS = feature_sets()
USECASES = list(SETS)
SOURCES = sorted({v.source for fs in SETS.values() for v in fs.batch_views})

with DAG(
    dag_id="features_offline",
    description="Rebuild the offline feature tables when the lake changes",
    doc_md=__doc__,
    schedule=[lake_table(t) for t in SOURCES] or None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "features", "offline-store"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params={"usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""])},
) as dag:
    AtelierSparkJobOperator(
        task_id="build", job="features", job_args=["offline", "--usecase", "{{ params.usecase }}",
                                                   "--run-id", "{{ run_id }}"],
        usecase_outlets={u: [offline_features(u)] for u in USECASES},
    )
