"""What every job entry point shares: settings, the use case, readable failures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime

from pipelines.config import ConfigError, Settings, load_settings
from pipelines.usecases import SpecError, UseCase, get_usecase

log = logging.getLogger("atelier.jobs")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", help="settings profile (default: $ATELIER_PROFILE or local)")
    parser.add_argument("--usecase", required=True, help="use case name (a folder under usecases_dir)")
    parser.add_argument("--run-id", required=True, help="the orchestrator's run id; outputs are keyed by it")
    return parser


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
