"""Model training jobs (spark-submit entry points), run by the DAG model_train.

    train.py training-set --usecase U --run-id R [--overrides JSON]   PIT training set -> GX -> publish
    train.py train        --usecase U --run-id R [--overrides JSON]   train, evaluate, calibrate, register
"""

from __future__ import annotations

import json

from pipelines.jobs.common import base_parser, context, log, run_job


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("step", choices=["training-set", "train"])
    parser.add_argument("--overrides", default="{}", help="model spec overrides (JSON object)")
    args = parser.parse_args(argv)

    from pipelines.training.preflight import check_training_config

    settings, usecase = context(args)
    try:
        overrides = json.loads(args.overrides or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--overrides is not a JSON object: {exc}") from None
    features, spec = check_training_config(settings, usecase, overrides)

    if args.step == "training-set":
        from pipelines.spark import get_spark
        from pipelines.training.dataset import build_training_set

        spark = get_spark(settings, f"atelier-training-set-{usecase.name}")
        try:
            window = spec.window
            version, rows, report = build_training_set(spark, settings, features, spec, args.run_id, window.start,
                                                       window.end)
            log.info("training set version %s: %d rows\n%s", version, rows, report.to_text())
        finally:
            spark.stop()
        return

    from pipelines.training.dataset import read_training_set
    from pipelines.training.pipeline import run_training

    frame, version = read_training_set(settings, usecase.name, args.run_id)
    from pipelines.lake.tables import safe_name

    validation = settings.home_path / "reports" / usecase.name / "training_set" / safe_name(args.run_id) / "validation.txt"
    gx_summary = validation.read_text() if validation.exists() else f"training set {version}: validated before publishing"
    spark = None
    if spec.algorithm == "xgboost_spark":
        from pipelines.spark import get_spark

        spark = get_spark(settings, f"atelier-train-{usecase.name}")
    try:
        result = run_training(settings, usecase, features, spec, args.run_id, frame, version, gx_summary,
                              spark=spark)
    finally:
        if spark is not None:
            spark.stop()
    log.info("model %s version %s%s: %s", result.model_name, result.version, " (reused)" if result.reused else "",
             json.dumps({k: round(v, 4) for k, v in result.metrics.items() if not k.startswith("rows")}))
    log.info("training report: %s", result.report_path)
    log.info("timings: %s", json.dumps({k: round(v, 2) for k, v in result.timings.items()}))


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.lake.tables import TableNotFound
    from pipelines.lifecycle.rules import RuleError
    from pipelines.models.registry import RegistryUnavailable
    from pipelines.quality.expectations import ValidationFailed

    return (ValidationFailed, TableNotFound, RuleError, RegistryUnavailable, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
