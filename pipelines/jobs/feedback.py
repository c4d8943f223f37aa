"""Feedback-loop jobs (spark-submit entry points).

    feedback.py run          --usecase U --run-id R --start D --end D   log + outcomes -> lake, join, online metrics
    feedback.py served-skew  --usecase U --run-id R --start D --end D   served features vs offline recomputation
"""

from __future__ import annotations

import json

from pipelines.jobs.common import (
    add_day_interval,
    base_parser,
    context,
    day_interval,
    days_of,
    log,
    published_days,
    run_job,
    skip_if_nothing_to_do,
)


def _parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("step", choices=["run", "served-skew"])
    add_day_interval(parser)
    parser.add_argument("--no-mlflow", action="store_true", help="do not log online metrics to MLflow")
    return parser


def nothing_to_do(argv: list[str]) -> str | None:
    """Why a ``run`` has nothing new (no prediction-log, outcome-log or batch-prediction day in the
    interval), else None; what this cannot judge is left to the job."""
    from pipelines.batch.predict import predictions_table
    from pipelines.lake.tables import Lake, TableNotFound

    try:
        args = _parser().parse_args(argv)
        start, end = day_interval(args)
        settings, usecase = context(args)
    except (SystemExit, Exception):  # noqa: BLE001 - the job itself reports bad arguments or a bad spec
        return None
    if args.step != "run":
        return None
    days = days_of(start, end)
    logs = [settings.prediction_log_path / usecase.name, settings.outcome_log_path / usecase.name]
    if any(any((folder / f"date={d.isoformat()}").glob("*.jsonl")) for folder in logs for d in days):
        return None
    lake, table = Lake.from_settings(settings), predictions_table(usecase.name)
    try:
        partition = lake.info(table).partition_by[:1]
    except TableNotFound:
        partition = []
    if partition and published_days(lake, table, partition[0], days):
        return None
    return (f"nothing new in [{start}, {end}): no prediction-log or outcome-log file under "
            f"{logs[0]} / {logs[1]} and no batch prediction day of '{table}'")


def main(argv: list[str] | None = None) -> None:
    if skip_if_nothing_to_do(nothing_to_do, argv):
        return
    args = _parser().parse_args(argv)

    from pipelines.spark import get_spark

    settings, usecase = context(args)
    start, end = day_interval(args)
    spark = get_spark(settings, f"atelier-feedback-{args.step}-{usecase.name}")
    try:
        if args.step == "run":
            from pipelines.monitoring.feedback import run_feedback

            result = run_feedback(spark, settings, usecase, start, end, args.run_id,
                                  log_to_mlflow=False if args.no_mlflow else None)
            print(result.to_text(), flush=True)
            log.info("feedback %s", json.dumps(result.to_dict(), default=str))
        else:
            from pipelines.monitoring.feedback import check_served_skew

            report = check_served_skew(spark, settings, usecase, start, end, args.run_id)
            print(report.to_text() if report is not None else "no served predictions in the interval: nothing "
                  "to check", flush=True)
    finally:
        spark.stop()


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.lake.tables import TableNotFound
    from pipelines.models.registry import ModelNotFound, RegistryUnavailable
    from pipelines.monitoring.served_skew import ServedSkewDetected
    from pipelines.quality.expectations import ValidationFailed

    return (TableNotFound, ValidationFailed, ModelNotFound, RegistryUnavailable, ServedSkewDetected, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
