"""Feature-store jobs (spark-submit entry points).

    features.py offline      --usecase U --run-id R                     offline feature tables (all history)
    features.py materialize  --usecase U --run-id R --start T --end T   the interval's rows -> online store
    features.py skew         --usecase U --run-id R --as-of T           online vs offline, fails above threshold
"""

from __future__ import annotations

import json

from pipelines.jobs.common import (
    base_parser,
    context,
    log,
    parse_time,
    rows_between,
    run_job,
    skip_if_nothing_to_do,
)


def _parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("step", choices=["offline", "materialize", "skew"])
    parser.add_argument("--start", help="interval start (inclusive), ISO date/time, UTC")
    parser.add_argument("--end", help="interval end (exclusive), ISO date/time, UTC")
    parser.add_argument("--as-of", help="skew: the time the online values are judged at (default: --end)")
    parser.add_argument("--view", action="append", default=[], help="only these views (default: all)")
    return parser


def nothing_to_do(argv: list[str]) -> str | None:
    """Why a ``materialize`` run has nothing to do (no source event in its interval, or no lake yet), else
    None. Anything this cannot judge (bad arguments, a bad spec) is left to the job, which names it."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake

    try:
        args = _parser().parse_args(argv)
        start, end = parse_time(args.start), parse_time(args.end)
    except (SystemExit, ValueError):  # the job itself names the bad argument
        return None
    if args.step != "materialize" or start is None or end is None or start >= end:
        return None
    try:
        settings, usecase = context(args)
        views = [v for v in load_feature_set(usecase).batch_views if not args.view or v.name in args.view]
    except Exception:  # noqa: BLE001 - the job itself reports a bad spec or setting, with its message
        return None
    lake = Lake.from_settings(settings)
    seen = []
    for view in views:
        if lake.current_version(view.source) is None:
            seen.append(f"{view.name}: lake table '{view.source}' is not published yet (run lake_ingest)")
            continue
        rows = rows_between(lake, view.source, view.event_time, start, end)
        if rows != 0:
            return None
        seen.append(f"{view.name}: no '{view.source}' row with {view.event_time} in the interval")
    return (f"nothing to materialize for [{start.isoformat()}, {end.isoformat()}): " + "; ".join(seen)
            if seen else None)


def main(argv: list[str] | None = None) -> None:
    if skip_if_nothing_to_do(nothing_to_do, argv):
        return
    args = _parser().parse_args(argv)

    from pipelines.featurestore import materialize, offline, skew
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.spark import get_spark

    settings, usecase = context(args)
    features = load_feature_set(usecase)
    start, end = parse_time(args.start), parse_time(args.end)
    if start and end and start >= end:
        raise ValueError(f"empty interval: --start {args.start} is not before --end {args.end}")
    unknown = set(args.view) - {v.name for v in features.batch_views}
    if unknown:
        raise ValueError(f"unknown feature view(s) {sorted(unknown)}; batch views: "
                         f"{[v.name for v in features.batch_views]}")
    views = [v for v in features.batch_views if not args.view or v.name in args.view]
    lake = Lake.from_settings(settings)
    spark = get_spark(settings, f"atelier-features-{args.step}-{usecase.name}")
    try:
        if args.step == "offline":
            for view in views:
                rows = offline.write_view_table(spark, lake, usecase.name, view, args.run_id)
                log.info("offline feature table %s: %d rows", view.name, rows)
        elif args.step == "materialize":
            if start is None or end is None:
                raise ValueError("materialize needs --start and --end (the data interval)")
            for view in views:
                result = materialize.materialize_view(spark, settings, features, view, start, end, now=end)
                log.info("materialized %s", json.dumps(result.__dict__, default=str))
        else:
            as_of = parse_time(args.as_of) or end
            if as_of is None:
                raise ValueError("skew needs --as-of (or --end)")
            report = skew.run_skew_check(spark, settings, features, args.run_id, as_of)
            log.info("%s", report.to_text())
    finally:
        spark.stop()


def expected_failures() -> tuple[type[BaseException], ...]:
    from pipelines.featurestore.skew import SkewDetected
    from pipelines.lake.tables import TableNotFound
    from pipelines.stores.online import OnlineStoreError

    return (SkewDetected, OnlineStoreError, TableNotFound, ValueError)


if __name__ == "__main__":
    run_job(main, expected_failures())
