"""Lake ingest job (spark-submit entry point): `stage`, `validate`, or `all` (stage, validate, publish).

    spark-submit pipelines/jobs/lake_ingest.py stage --usecase flights_eta --run-id <id>
"""

from __future__ import annotations

from pipelines.jobs.common import base_parser, context, log, run_job


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("step", choices=["stage", "validate", "all"])
    parser.add_argument("--source", action="append", default=[], metavar="TABLE=PATH",
                        help="read TABLE from this CSV/Parquet file instead of its declared source (stage/all)")
    args = parser.parse_args(argv)

    from pipelines.lake import ingest
    from pipelines.spark import get_spark

    settings, usecase = context(args)
    overrides = {}
    for item in args.source:
        table, sep, path = item.partition("=")
        if not sep or not path:
            parser.error(f"--source needs TABLE=PATH, got {item!r}")
        overrides[table] = path
    spark = get_spark(settings, f"atelier-lake-ingest-{usecase.name}")
    try:
        if args.step in ("stage", "all"):
            for table in ingest.stage(spark, settings, usecase, args.run_id, overrides):
                log.info("staged %s: %d rows at %s", table.name, table.rows, table.path)
        if args.step in ("validate", "all"):
            report = ingest.validate(spark, settings, usecase, args.run_id)
            log.info("%s", report.to_text())
        if args.step == "all":
            for table, version in ingest.publish(settings, usecase, args.run_id).items():
                log.info("published %s version %s", table, version)
    finally:
        spark.stop()


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.lake.ingest import NotValidated
    from pipelines.lake.tables import Superseded
    from pipelines.lake.transform import SourceError
    from pipelines.quality.expectations import SuiteError, ValidationFailed

    return (NotValidated, Superseded, SourceError, SuiteError, ValidationFailed, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
