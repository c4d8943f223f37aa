"""Drift monitoring job (spark-submit entry point).

    drift.py run  --usecase U --run-id R --start D --end D   profiles, indicators, findings, incidents, report
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
    parser.add_argument("step", choices=["run"])
    add_day_interval(parser)
    parser.add_argument("--no-report", action="store_true", help="skip the Evidently report")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    return parser


def nothing_to_do(argv: list[str]) -> str | None:
    """Why a run has nothing to profile (no served, feedback or source day of the interval is published),
    else None; what this cannot judge is left to the job."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.monitoring import feedback as fb
    from pipelines.monitoring.drift_spec import load_monitoring_spec

    try:
        args = _parser().parse_args(argv)
        start, end = day_interval(args)
        settings, usecase = context(args)
        spec = load_monitoring_spec(usecase, load_feature_set(usecase))
    except (SystemExit, Exception):  # noqa: BLE001 - the job itself reports bad arguments or a bad spec
        return None
    lake, days = Lake.from_settings(settings), days_of(start, end)
    inputs = {fb.served_table(usecase.name): fb.SERVED_DATE, fb.feedback_table(usecase.name): fb.PREDICTION_DAY,
              **{name: source.day for name, source in spec.sources.items()}}
    if any(published_days(lake, table, column, days) for table, column in inputs.items()):
        return None
    return (f"nothing to profile in [{start}, {end}): no day of it is published in "
            + ", ".join(f"'{t}' ({c})" for t, c in inputs.items()))


def main(argv: list[str] | None = None) -> None:
    if skip_if_nothing_to_do(nothing_to_do, argv):
        return
    args = _parser().parse_args(argv)

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
