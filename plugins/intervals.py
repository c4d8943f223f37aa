"""What the interval DAGs share: the templated job arguments of a run's data interval (or a backfill range
from the trigger form) and the params that choose the use case and the range."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

# The backfill params win over the data interval; manual runs without them have no interval (empty strings,
# which the jobs refuse with a clear message).
INTERVAL_ARGS = [
    "--usecase", "{{ params.usecase }}", "--run-id", "{{ run_id }}",
    "--start", "{{ params.start or (data_interval_start.isoformat() if data_interval_start else '') }}",
    "--end", "{{ params.end or (data_interval_end.isoformat() if data_interval_end else '') }}",
]


def interval_params(usecases: list[str], **extra: Param) -> dict[str, Any]:
    """``usecase`` (one of ``usecases``), ``start`` / ``end`` (a backfill range, ISO dates, UTC), then ``extra``."""
    return {
        "usecase": Param(usecases[0] if usecases else "", enum=usecases or [""]),
        "start": Param(None, type=["null", "string"], description="backfill start (ISO date, UTC)"),
        "end": Param(None, type=["null", "string"], description="backfill end, exclusive (ISO date, UTC)"),
        **extra,
    }
