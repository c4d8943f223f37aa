"""What the per-use-case DAGs share: the use cases a run covers, the templated job arguments of a run's data
interval (or a backfill range from the trigger form) and the params that choose the use case and the range.

One DAG per capability, mapped over use cases: a run's first task, ``usecases``, names the use cases it covers
and the work is a task group expanded over them (``prefix_group_id=False``: task ids stay ``materialize``,
``score``, ...; each use case is one map index). A run that names a use case (the trigger form, the CLI,
the console) covers that one; a scheduled run covers every use case the DAG offers; an Asset-triggered run
covers the use cases whose Assets triggered it. Each use case's tasks succeed, fail, skip and retry on their
own, and emit only their own use case's Assets (``plugins.assets``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Param, task

# The backfill params win over the data interval; manual runs without them have no interval (empty strings,
# which the jobs refuse with a clear message).
RANGE_ARGS = [
    "--run-id", "{{ run_id }}",
    "--start", "{{ params.start or (data_interval_start.isoformat() if data_interval_start else '') }}",
    "--end", "{{ params.end or (data_interval_end.isoformat() if data_interval_end else '') }}",
]


def interval_args(usecase: Any) -> list[Any]:
    """``--usecase <usecase>`` (a mapped task group's argument) and the run's interval arguments."""
    return ["--usecase", usecase, *RANGE_ARGS]


def interval_params(usecases: list[str], **extra: Param) -> dict[str, Any]:
    """``usecase`` (one of ``usecases``), ``start`` / ``end`` (a backfill range, ISO dates, UTC), then ``extra``.
    The ``usecase`` default fills the trigger form; a run whose conf does not name one covers every use case."""
    return {
        "usecase": Param(usecases[0] if usecases else "", enum=usecases or [""],
                         description="the use case of a manual run (scheduled runs cover every use case)"),
        "start": Param(None, type=["null", "string"], description="backfill start (ISO date, UTC)"),
        "end": Param(None, type=["null", "string"], description="backfill end, exclusive (ISO date, UTC)"),
        **extra,
    }


def covered_usecases(offered: Sequence[str], conf: Mapping[str, Any] | None,
                     triggering_assets: Sequence[str] | None = None,
                     assets_of: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The use cases one run covers, among those the DAG ``offered``: the conf's ``usecase`` when it names one;
    with ``assets_of`` ({use case: names of the Assets that trigger it}), the use cases any of the
    ``triggering_assets`` belongs to; otherwise every one."""
    chosen = (conf or {}).get("usecase")
    if chosen:
        if chosen not in offered:
            raise ValueError(f"usecase '{chosen}' is not one this DAG offers: {sorted(offered)}")
        return [chosen]
    if assets_of is not None and triggering_assets:
        fired = set(triggering_assets)
        return [u for u in offered if fired & set(assets_of.get(u, ()))]
    return list(offered)


def usecases_task(offered: Sequence[str], assets_of: Mapping[str, Sequence[str]] | None = None) -> Any:
    """The ``usecases`` task of a run (its XCom: the list ``covered_usecases`` gives), to expand a group over."""

    @task(task_id="usecases", retries=0)
    def usecases(dag_run: Any = None, triggering_asset_events: Any = None) -> list[str]:
        names = [asset.name for asset in (triggering_asset_events or {})] if assets_of is not None else None
        covered = covered_usecases(list(offered), dag_run.conf if dag_run else None, names, assets_of)
        print(f"use cases of this run: {covered or 'none'}")
        return covered

    return usecases()
