"""The batch_predict DAG's templated job arguments, rendered with Jinja as Airflow does (StrictUndefined)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "batch_predict.py"


def job_args() -> list[str]:
    """The DAG file's job arguments for the use case of a map index (the interval part is shared,
    plugins/intervals.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_predict_dag", DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.job_args("flights_eta")


def render(params: dict, start: datetime | None = None, end: datetime | None = None) -> list[str]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    context = {"params": {"usecase": "flights_eta", "start": None, "end": None, "alias": "champion",
                          "model_version": None, **params},
               "run_id": "scheduled__2013-12-10", "data_interval_start": start, "data_interval_end": end}
    return [env.from_string(arg).render(**context) for arg in job_args()]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_scheduled_run_scores_its_data_interval_with_the_champion():
    args = render({}, datetime(2013, 12, 10, tzinfo=UTC), datetime(2013, 12, 11, tzinfo=UTC))
    assert option(args, "--start") == "2013-12-10T00:00:00+00:00"
    assert option(args, "--end") == "2013-12-11T00:00:00+00:00"
    assert option(args, "--alias") == "champion" and "--model-version" not in args
    assert option(args, "--run-id") == "scheduled__2013-12-10" and option(args, "--usecase") == "flights_eta"


@pytest.mark.parametrize(("params", "flag", "value"), [
    ({"alias": "challenger"}, "--alias", "challenger"),
    ({"model_version": "7"}, "--model-version", "7"),
    ({"alias": "challenger", "model_version": "7"}, "--model-version", "7"),
])
def test_backfill_range_with_an_alias_or_a_pinned_version(params, flag, value):
    args = render({"start": "2013-12-01", "end": "2013-12-08", **params},
                  datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert option(args, "--start") == "2013-12-01" and option(args, "--end") == "2013-12-08"
    assert option(args, flag) == value
    assert ("--alias" in args) != ("--model-version" in args)


def test_the_schedule_gives_one_day_data_intervals(settings):
    """Scheduled runs score [midnight, next midnight) UTC -- Airflow 3's plain "@daily" would give start == end."""
    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    from pipelines.services.airflow import airflow_env

    with pytest.MonkeyPatch.context() as mp:
        for key, value in airflow_env(settings).items():
            mp.setenv(key, value)
        dag = DagBag(dag_folder=str(DAG_FILE)).dags["batch_predict"]
    interval = dag.timetable.infer_manual_data_interval(run_after=pendulum.datetime(2013, 12, 11, 6, 30, tz="UTC"))
    assert (interval.start, interval.end) == (pendulum.datetime(2013, 12, 10, tz="UTC"),
                                              pendulum.datetime(2013, 12, 11, tz="UTC"))
    args = render({}, interval.start, interval.end)
    assert (option(args, "--start"), option(args, "--end")) == ("2013-12-10T00:00:00+00:00",
                                                                 "2013-12-11T00:00:00+00:00")
