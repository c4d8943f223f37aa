"""Submit one of Atelier's Spark jobs (a module under `pipelines/jobs/`) with the profile's Spark settings."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowSkipException

import pipelines.jobs
from pipelines.config import get_settings
from pipelines.spark import python_env, spark_conf
from plugins.assets import emit, usecase_outlet


class AtelierSparkJobOperator(SparkSubmitOperator):
    """`spark-submit pipelines/jobs/<job>.py <args>` through the Spark provider.

    The master comes from the Airflow connection (`spark.conn_id` in the profile: local[N] by default, a
    cluster master in the `cluster` profile); Spark properties and the workers' Python come from the profile.
    `job_args` is templated (use `{{ run_id }}`, `{{ data_interval_start }}`, `{{ params.x }}`).

    A job module that defines `nothing_to_do(argv)` is asked first, in this process: when its interval has
    no input (the data has not landed, no lake yet) the task ends **skipped** with the reason, and no Spark
    application is submitted.

    `usecase_outlets` ({use case: its Assets}): on success the task emits the Assets of the use case its
    `--usecase` argument names, and only those, through its alias outlet (``plugins.assets.usecase_outlet``).
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")

    def __init__(self, *, job: str, job_args: list[str] | None = None,
                 usecase_outlets: Mapping[str, Sequence[Asset]] | None = None, **kwargs: Any) -> None:
        settings = get_settings()
        application = str(next(iter(pipelines.jobs.__path__)) + f"/{job}.py")
        kwargs.setdefault("conn_id", settings.spark.conn_id)
        kwargs.setdefault("conf", spark_conf(settings))
        kwargs.setdefault("driver_memory", settings.spark.driver_memory)
        kwargs.setdefault("name", f"atelier-{job}")
        kwargs.setdefault("env_vars", {**python_env(), "ATELIER_PROFILE": settings.profile})
        super().__init__(application=application, **kwargs)
        self.job = job
        self.job_args = job_args or []
        self.usecase_outlets = {u: list(assets) for u, assets in (usecase_outlets or {}).items()}
        self.alias = usecase_outlet(self.dag_id, self.task_id) if usecase_outlets is not None else None
        if self.alias is not None:
            if any(not isinstance(o, AssetAlias) for o in self.outlets):
                raise ValueError(f"{self.task_id}: usecase_outlets replaces outlets (each run emits its own)")
            self.outlets = [self.alias]

    def execute(self, context: Any) -> Any:
        self.application_args = list(self.job_args)
        check = getattr(importlib.import_module(f"pipelines.jobs.{self.job}"), "nothing_to_do", None)
        reason = check(self.application_args) if check is not None else None
        if reason:
            raise AirflowSkipException(reason)
        result = super().execute(context)
        if self.alias is not None:
            usecase = _arg(self.application_args, "--usecase")
            emit(context["outlet_events"], self.alias, self.usecase_outlets.get(usecase or "", []),
                 {"usecase": usecase, "run_id": context["run_id"]})
        return result


def _arg(argv: Sequence[str], flag: str) -> str | None:
    """The value after ``flag`` in ``argv`` (None without one)."""
    for i, value in enumerate(argv[:-1]):
        if value == flag:
            return argv[i + 1]
    return None
