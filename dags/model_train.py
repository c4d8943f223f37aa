"""
### model_train

Train a use case's model and move it through its lifecycle by rules:

1. **check_config**: the model spec with this run's overrides, the promotion rules and the data window are
   checked before any data is read (unknown algorithm, bad hyperparameter, empty window: the run fails here,
   naming the key at fault).
2. **training_set** (Spark): the point-in-time training set of the window from the offline store, validated
   with Great Expectations (a violation fails the task; nothing is published).
3. **train** (Spark job): split by time (train / validation / holdout), XGBoost single node (`hist`) or
   distributed (`xgboost.spark`), optional random search (nested MLflow runs, best on validation), holdout
   metrics against the baselines, conformal intervals, the HTML report, then one MLflow run and a registered
   version (stage `evaluation`) with its lineage.
4. **gate**: the use case's promotion rules (`rules.yaml`) move the version stage by stage while they pass;
   failing clauses are recorded on the version. Returns the report's URL (XCom `return_value`); the task's
   extra links "Training report" (the Atelier console's page) and "MLflow run" lead to what it judged.
5. **announce_production**: only when the version reached production: emits the `models.production` Asset
   (extra: use case, model, version) that the deployment DAG consumes; skipped otherwise.

Triggered from the UI (params below), by new offline features, or by a retrain request (drift alerts emit
`retrain.<usecase>`): an Asset-triggered run trains the use case named by its triggering asset.

Params: `usecase`; `start` / `end` (ISO dates: the data window); `hyperparameters` (JSON object, e.g.
`{"max_depth": 6}`); `distributed` (train with `xgboost.spark`) or `algorithm` (`xgboost` |
`xgboost_spark`); `trials` (random-search trials).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, AssetAny, Param, task

from plugins.assets import model_production, offline_features, retrain_request
from plugins.console.links import MlflowRunLink, TrainingReportLink
from plugins.operators.spark_job import AtelierSparkJobOperator
from plugins.usecases import usecases

USECASES = [name for name, u in usecases().items() if (u.extra.get("model") or {}).get("model")]
CONFIG = "ti.xcom_pull(task_ids='check_config')"
JOB_ARGS = ["--usecase", "{{ " + CONFIG + "['usecase'] }}", "--run-id", "{{ run_id }}",
            "--overrides", "{{ " + CONFIG + "['overrides'] | tojson }}"]

with DAG(
    dag_id="model_train",
    description="Train, evaluate, register and promote a use case's model",
    doc_md=__doc__,
    schedule=AssetAny(*[offline_features(u) for u in USECASES], *[retrain_request(u) for u in USECASES])
    if USECASES else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["atelier", "training", "lifecycle"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "owner": "atelier"},
    params={
        "usecase": Param(USECASES[0] if USECASES else "", enum=USECASES or [""]),
        "start": Param(None, type=["null", "string"], format="date", description="data window start (UTC)"),
        "end": Param(None, type=["null", "string"], format="date", description="data window end, exclusive"),
        "hyperparameters": Param({}, type=["object", "null"], description="overrides, e.g. {\"max_depth\": 6}"),
        "distributed": Param(False, type="boolean", description="train on Spark (xgboost.spark)"),
        "algorithm": Param(None, type=["null", "string"], enum=[None, "xgboost", "xgboost_spark"],
                           description="overrides `distributed` when set"),
        "trials": Param(None, type=["null", "integer"], minimum=0, maximum=50, description="random-search trials"),
    },
) as dag:

    @task(retries=0)
    def check_config(params: dict[str, Any], triggering_asset_events: Any = None) -> dict[str, Any]:
        """Resolve the use case (from the triggering asset, else the param) and check spec + window."""
        from pipelines.config import get_settings
        from pipelines.training.preflight import check_training_config, overrides_from_params
        from pipelines.usecases import get_usecase

        name = params["usecase"]
        params = dict(params)
        for asset, events in (triggering_asset_events or {}).items():
            for candidate in USECASES:
                if asset.name in (offline_features(candidate).name, retrain_request(candidate).name):
                    name = candidate
                    for event in events:
                        # A retrain request may carry trigger-form params (e.g. a window): the latest wins.
                        params.update((event.extra or {}).get("params") or {})
                        print(f"triggered by {asset.name}: {(event.extra or {}).get('reason', 'no reason given')}")
        settings = get_settings()
        overrides = overrides_from_params(params)
        _, spec = check_training_config(settings, get_usecase(name, settings.usecases_path), overrides)
        window = spec.window
        print(f"use case {name}: {spec.algorithm}, window [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}), "
              f"holdout from {window.holdout_start:%Y-%m-%d}, overrides {overrides}")
        return {"usecase": name, "overrides": overrides}

    training_set = AtelierSparkJobOperator(task_id="training_set", job="train",
                                           job_args=["training-set", *JOB_ARGS])
    train = AtelierSparkJobOperator(task_id="train", job="train", job_args=["train", *JOB_ARGS])

    @task
    def gate(config: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Apply the promotion rules to the version this run registered."""
        from pipelines.config import get_settings
        from pipelines.training.gate import run_gate
        from pipelines.usecases import get_usecase

        settings = get_settings()
        outcome = run_gate(settings, get_usecase(config["usecase"], settings.usecases_path), run_id or "",
                           config["overrides"], by=f"model_train/{run_id}")
        print(outcome["summary"])
        print(f"Training report: {outcome['report_url']}")
        return outcome

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def reached_production(outcome: dict[str, Any]) -> bool:
        return bool(outcome["production"])

    @task(outlets=[model_production()])
    def announce_production(config: dict[str, Any], outcome: dict[str, Any], outlet_events: Any = None) -> str:
        """Emit the production Asset; its extra names the use case, the model and the version."""
        outlet_events[model_production()].extra = {"usecase": config["usecase"], "model": outcome["model"],
                                                   "version": outcome["version"]}
        return f"{outcome['model']} version {outcome['version']} is in production"

    config = check_config()
    outcome = gate(config)
    outcome.operator.operator_extra_links = (TrainingReportLink(), MlflowRunLink())
    config >> training_set >> train >> outcome
    reached_production(outcome) >> announce_production(config, outcome)
