"""Training benchmark: the flights model on its spec's training window (model.yaml), on 2 cores.

1. The point-in-time training set of the window, validated with Great Expectations and published (Spark).
2. Single-node XGBoost (`hist`, the spec's hyperparameters, early stopping on validation): 3 runs, median.
3. Distributed `xgboost.spark` on local Spark (num_workers from the spec), same rows and parameters: 1 run.
4. The whole DAG `model_train` through Airflow's REST API (when `--dag`; needs the profile's Airflow up).

Bounded: at most 5 trainings and one DAG run. Last output line: one JSON object of figures.

    ATELIER_PROFILE=test .venv/bin/python benchmarks/training.py [--dag]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    from pipelines.config import load_settings
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.spark import get_spark
    from pipelines.training.dataset import build_training_set, read_training_set, split_by_time
    from pipelines.training.spec import load_model_spec
    from pipelines.training.trainer import train_distributed, train_single
    from pipelines.usecases import get_usecase

    settings = load_settings()
    usecase = get_usecase("flights_eta", settings.usecases_path)
    features = load_feature_set(usecase)
    spec = load_model_spec(usecase, None, features.feature_names, features.key_columns)
    label = features.label
    assert label is not None
    figures: dict[str, object] = {"load_before": os.getloadavg()[0]}
    run_id = f"bench-training-{int(time.time())}"

    spark = get_spark(settings, "atelier-bench-training")
    started = time.perf_counter()
    _, rows, _ = build_training_set(spark, settings, features, spec, run_id, spec.window.start, spec.window.end)
    figures["training_set_s"] = round(time.perf_counter() - started, 1)
    figures["training_set_rows"] = rows
    frame, _ = read_training_set(settings, usecase.name, run_id)
    train, valid, holdout = split_by_time(frame, label.event_time, spec.window)
    figures.update(rows_train=len(train), rows_validation=len(valid), rows_holdout=len(holdout))
    names = features.feature_names

    single = []
    for i in range(3):
        model = train_single(spec, dict(spec.hyperparameters), train, valid, names, label.column)
        single.append(model.seconds)
        log(f"single node run {i}: {model.seconds:.1f} s, {model.best_iteration + 1} trees, "
            f"validation MAE {model.validation_mae:.3f}")
    figures["single_node_s_median"] = round(statistics.median(single), 1)
    figures["single_node_s_runs"] = [round(s, 1) for s in single]
    figures["single_node_trees"] = model.best_iteration + 1

    cols = [*names, label.column]
    dist = train_distributed(spark, spec, dict(spec.hyperparameters), spark.createDataFrame(train[cols]),
                             spark.createDataFrame(valid[cols]), names, label.column, valid)
    figures["distributed_s"] = round(dist.seconds, 1)
    figures["distributed_trees"] = dist.best_iteration + 1
    figures["distributed_validation_mae"] = round(dist.validation_mae, 3)
    figures["single_validation_mae"] = round(model.validation_mae, 3)
    spark.stop()

    if "--dag" in sys.argv:
        from pipelines.cli import _airflow_client

        client = _airflow_client(settings)
        client.wait_for_dag("model_train")
        dag_run = client.trigger("model_train", {"usecase": usecase.name})
        result = client.wait_for_run("model_train", dag_run, timeout_s=1800)
        figures["dag_state"] = result.state
        figures["dag_s"] = round(result.seconds, 1)
    figures["load_after"] = os.getloadavg()[0]
    log(json.dumps(figures, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
