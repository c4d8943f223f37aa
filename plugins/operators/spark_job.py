"""Submit one of Atelier's Spark jobs (a module under `pipelines/jobs/`) with the profile's Spark settings."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowSkipException

import pipelines.jobs
from pipelines.config import get_settings
from pipelines.spark import python_env, spark_conf


class AtelierSparkJobOperator(SparkSubmitOperator):
    """`spark-submit pipelines/jobs/<job>.py <args>` through the Spark provider.

    The master comes from the Airflow connection (`spark.conn_id` in the profile: local[N] by default, a
    cluster master in the `cluster` profile); Spark properties and the workers' Python come from the profile.
    `job_args` is templated (use `{{ run_id }}`, `{{ data_interval_start }}`, `{{ params.x }}`).

    A job module that defines `nothing_to_do(argv)` is asked first, in this process: when its interval has
    no input (the data has not landed, no lake yet) the task ends **skipped** with the reason, and no Spark
    application is submitted.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")

    def __init__(self, *, job: str, job_args: list[str] | None = None, **kwargs: Any) -> None:
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

    def execute(self, context: Any) -> Any:
        self.application_args = list(self.job_args)
        check = getattr(importlib.import_module(f"pipelines.jobs.{self.job}"), "nothing_to_do", None)
        reason = check(self.application_args) if check is not None else None
        if reason:
            raise AirflowSkipException(reason)
        return super().execute(context)
