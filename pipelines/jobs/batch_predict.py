"""Batch prediction job (spark-submit entry point).

    batch_predict.py --usecase U --run-id R --start T --end T [--alias champion | --model-version N]

Scores the entities of the days in [start, end) with the registered model (alias ``champion`` by default,
or a pinned version) and replaces those days' partitions of the lake table ``predictions__<usecase>``
(see ``pipelines/batch/predict.py``). The interval, the model and the offline features are checked before
Spark starts: a bad one exits 2 with ``ATELIER JOB FAILED: ...`` naming what is at fault.
"""

from __future__ import annotations

from pipelines.jobs.common import (
    base_parser,
    context,
    log,
    parse_time,
    published_days,
    run_job,
    skip_if_nothing_to_do,
)


def _parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, help="interval start (inclusive), ISO date/time, UTC")
    parser.add_argument("--end", required=True, help="interval end (exclusive), ISO date/time, UTC")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", help="registered model alias (default: champion)")
    which.add_argument("--model-version", help="a pinned registered model version (instead of an alias)")
    return parser


def nothing_to_do(argv: list[str]) -> str | None:
    """Why a run has nothing to score (its entity table is not published yet, or has no partition in the
    interval), else None; what this cannot judge is left to the job's own checks."""
    from pipelines.batch.predict import interval_days
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake

    try:
        args = _parser().parse_args(argv)
        start, end = parse_time(args.start), parse_time(args.end)
    except (SystemExit, ValueError):  # the job itself names the bad argument
        return None
    if start is None or end is None or start >= end:
        return None
    try:
        settings, usecase = context(args)
        label = load_feature_set(usecase).label
    except Exception:  # noqa: BLE001 - the job itself reports a bad spec or setting, with its message
        return None
    if label is None or len(usecase.tables[label.source].partition_by) != 1:
        return None
    column = usecase.tables[label.source].partition_by[0]
    days = published_days(Lake.from_settings(settings), label.source, column, interval_days(start, end))
    if days is None:
        return f"nothing to score: lake table '{label.source}' is not published yet (run lake_ingest)"
    if not days:
        return (f"nothing to score: lake table '{label.source}' has no {column} partition in "
                f"[{start.date()}, {end.date()})")
    return None


def main(argv: list[str] | None = None) -> None:
    if skip_if_nothing_to_do(nothing_to_do, argv):
        return
    args = _parser().parse_args(argv)

    from pipelines.batch import predict
    from pipelines.spark import get_spark

    settings, usecase = context(args)
    start, end = parse_time(args.start), parse_time(args.end)
    if start is None or end is None:
        raise ValueError("--start and --end (the data interval) are required and must not be empty")
    p = predict.plan(settings, usecase, start, end, args.run_id, alias=args.alias or None,
                     version=args.model_version or None)
    log.info("scoring %s .. %s (%d day(s)) of '%s' with %s v%s into %s", p.days[0], p.days[-1], len(p.days),
             p.entity_table, p.model.name, p.model.version, p.table)
    spark = get_spark(settings, f"atelier-batch-predict-{usecase.name}")
    try:
        loads = spark.sparkContext.accumulator(0)
        result = predict.run(spark, settings, usecase, p, loads=loads)
        log.info("model bundle loaded %d time(s) by the Python workers", loads.value)
        log.info("batch prediction published: %s", result.to_json())
        print(f"ATELIER BATCH RESULT {result.to_json()}", flush=True)
    finally:
        spark.stop()


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.batch.predict import BatchPredictError
    from pipelines.lake.tables import TableNotFound
    from pipelines.models.bundle import BundleError
    from pipelines.models.registry import ModelNotFound, RegistryUnavailable
    from pipelines.quality.expectations import SuiteError, ValidationFailed

    return (BatchPredictError, ModelNotFound, RegistryUnavailable, BundleError, TableNotFound, ValidationFailed,
            SuiteError, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
