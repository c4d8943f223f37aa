"""What every job entry point shares: settings, the use case, readable failures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from pipelines.config import ConfigError, Settings, load_settings
from pipelines.lake.tables import UnsafeName, check_name
from pipelines.usecases import SpecError, UseCase, get_usecase

if TYPE_CHECKING:
    from pipelines.lake.tables import Lake

log = logging.getLogger("atelier.jobs")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", help="settings profile (default: $ATELIER_PROFILE or local)")
    parser.add_argument("--usecase", required=True, help="use case name (a folder under usecases_dir)")
    parser.add_argument("--run-id", required=True, type=run_id_arg,
                        help="the orchestrator's run id; outputs are keyed by it")
    return parser


def run_id_arg(value: str) -> str:
    """argparse type of ``--run-id``: refused when it cannot name a folder (argparse names the argument)."""
    try:
        return check_name(value, "run id")
    except UnsafeName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_time(text: str | None) -> datetime | None:
    """ISO date or timestamp; naive values are UTC."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO date or timestamp (e.g. 2013-12-01 or 2013-12-01T00:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_day_interval(parser: argparse.ArgumentParser) -> None:
    """``--start``/``--end`` of a job that works on whole days (the DAG's data interval)."""
    parser.add_argument("--start", required=True, help="interval start (inclusive), ISO date, UTC")
    parser.add_argument("--end", required=True, help="interval end (exclusive), ISO date, UTC")


def day_interval(args: argparse.Namespace) -> tuple[date, date]:
    """The days ``[start, end)`` of :func:`add_day_interval`'s arguments; an empty interval is refused."""
    start, end = parse_time(args.start), parse_time(args.end)
    assert start is not None and end is not None  # required arguments
    if start.date() >= end.date():
        raise ValueError(f"empty interval: --start {args.start} is not a day before --end {args.end}")
    return start.date(), end.date()


def context(args: argparse.Namespace) -> tuple[Settings, UseCase]:
    settings = load_settings(profile=args.profile) if args.profile else load_settings()
    return settings, get_usecase(args.usecase, settings.usecases_path)


def run_job(main: Callable[[], None], expected: tuple[type[BaseException], ...] = ()) -> None:
    """Run a job; a known failure (bad config, bad spec, bad data) prints its message, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except (ConfigError, SpecError, *expected) as exc:
        print(f"\nATELIER JOB FAILED: {type(exc).__name__}\n{exc}", file=sys.stderr, flush=True)
        sys.exit(2)


# --- runs with nothing to do ---------------------------------------------------------------------------
# A scheduled interval may have no input yet (its data has not landed, or the lake has never been ingested).
# Such a run is not a failure: each interval job module defines `nothing_to_do(argv) -> str | None`, which
# the Airflow operator calls before it submits anything (no JVM is started) and turns into a skip with the
# reason; the job's own entry point calls it too, so a CLI run says the same and exits 0 without work.

SKIPPED = "ATELIER JOB SKIPPED"


def published_days(lake: Lake, table: str, column: str, days: Iterable[date]) -> set[date] | None:
    """The days of ``days`` for which ``table`` has a published ``column`` partition (no Spark); None when
    the table has never been published."""
    from pipelines.lake.tables import TableNotFound

    try:
        return lake.partition_dates(table, column).intersection(days)
    except TableNotFound:
        return None


def rows_between(lake: Lake, table: str, column: str, start: datetime, end: datetime) -> int | None:
    """How many rows of ``table`` have ``column`` (a timestamp) in [start, end): reads that one column with
    pyarrow (Parquet footers and one column, no Spark). None when the table has never been published or has
    no such column (then the caller cannot tell, and must not skip)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from pipelines.lake.tables import TableNotFound

    try:
        dataset = ds.dataset(lake.path(table), format="parquet", partitioning="hive")
    except TableNotFound:
        return None
    if column not in dataset.schema.names:
        return None
    kind = dataset.schema.field(column).type
    if not pa.types.is_timestamp(kind):
        return None
    bound = (ds.field(column) >= pa.scalar(start, type=kind)) & (ds.field(column) < pa.scalar(end, type=kind))
    return int(dataset.count_rows(filter=bound))


def days_of(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]


def skip_if_nothing_to_do(check: Callable[[list[str]], str | None], argv: list[str] | None) -> bool:
    """For a job's entry point: print the skip reason and return True when ``check`` finds nothing to do."""
    reason = check(list(sys.argv[1:] if argv is None else argv))
    if reason:
        print(f"{SKIPPED}: {reason}", flush=True)
    return bool(reason)
