"""Drift monitoring job (spark-submit entry point).

    drift.py run  --usecase U --run-id R --start D --end D   profiles, indicators, findings, incidents, report
"""

from __future__ import annotations

import json

from pipelines.jobs.common import add_day_interval, base_parser, context, day_interval, log, run_job


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("step", choices=["run"])
    add_day_interval(parser)
    parser.add_argument("--no-report", action="store_true", help="skip the Evidently report")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)

    from pipelines.monitoring.drift import run_drift
    from pipelines.spark import get_spark

    settings, usecase = context(args)
    start, end = day_interval(args)
    spark = get_spark(settings, f"atelier-drift-{usecase.name}")
    try:
        result = run_drift(spark, settings, usecase, start, end, args.run_id,
                           report=not args.no_report, log_to_mlflow=False if args.no_mlflow else None)
        print(result.to_text(), flush=True)
        log.info("drift %s", json.dumps({k: v for k, v in result.to_dict().items() if k != "top_findings"},
                                        default=str))
    finally:
        spark.stop()


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.lake.tables import TableNotFound
    from pipelines.models.registry import ModelNotFound, RegistryUnavailable

    return (TableNotFound, ModelNotFound, RegistryUnavailable, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
