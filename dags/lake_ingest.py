"""
### lake_ingest

Ingest a use case's sources into the lake: **stage** (Spark: explicit schemas, local times to UTC,
partitioning) -> **validate** (Great Expectations suites from `expectations/`, with referential checks)
-> **publish** (atomic swap of each table's published version) -> **summarize**.

A violation fails `validate` with a readable report (also saved under
`<home>/reports/<usecase>/lake_ingest/<run_id>/validation.txt`); nothing is published, the lake keeps its
previous version. Re-running a run id gives the same tables.

Runs on demand (the Airflow UI's trigger form, `atelier dags trigger lake_ingest`, or the REST API):
the sources of the first use case are snapshots. Params: `usecase` (a folder under `config/usecases/`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from pipelines.config import get_settings
from plugins.assets import emit, lake_table, usecase_outlet
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import usecases

USECASES = list(usecases())
JOB_ARGS = ["--usecase", "{{ params.usecase }}", "--run-id", "{{ run_id }}"]

with DAG(
    dag_id="lake_ingest",
    description="Stage, validate and publish a use case's lake tables",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "lake", "ingest"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "owner": "atelier"},
    params={"usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""],
                             description="use case whose sources are ingested")},
) as dag:
    stage = AtelierSparkJobOperator(task_id="stage", job="lake_ingest", job_args=["stage", *JOB_ARGS])
    # Data that breaks its expectations will not get better by retrying.
    validate = AtelierSparkJobOperator(task_id="validate", job="lake_ingest", job_args=["validate", *JOB_ARGS],
                                       retries=0)

    @task(outlets=[usecase_outlet("lake_ingest", "publish")])
    def publish(params=None, run_id=None, outlet_events=None) -> dict[str, str]:
        """Publish the staged, validated tables; emit the Assets of this use case's tables only."""
        from pipelines.lake import ingest
        from pipelines.usecases import get_usecase

        settings = get_settings()
        usecase = get_usecase(params["usecase"], settings.usecases_path)
        published = ingest.publish(settings, usecase, run_id)
        emit(outlet_events, usecase_outlet("lake_ingest", "publish"), [lake_table(t) for t in usecase.tables],
             {"usecase": usecase.name, "run_id": run_id})
        return published

    @task
    def summarize(params=None) -> dict[str, int]:
        from pipelines.lake import ingest
        from pipelines.usecases import get_usecase

        settings = get_settings()
        infos = ingest.summary(settings, get_usecase(params["usecase"], settings.usecases_path))
        for info in infos:
            print(f"{info.name}: {info.rows} rows, version {info.version}")
        return {info.name: info.rows for info in infos}

    stage >> validate >> publish() >> summarize()
