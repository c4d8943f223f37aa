"""What every job entry point shares: settings, the use case, readable failures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from pipelines.config import ConfigError, Settings, load_settings
from pipelines.usecases import SpecError, UseCase, get_usecase

log = logging.getLogger("atelier.jobs")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", help="settings profile (default: $ATELIER_PROFILE or local)")
    parser.add_argument("--usecase", required=True, help="use case name (a folder under usecases_dir)")
    parser.add_argument("--run-id", required=True, help="the orchestrator's run id; outputs are keyed by it")
    return parser


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
