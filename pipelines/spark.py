"""One way to get a SparkSession, configured from the settings profile."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from pipelines.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_conf(settings: Settings) -> dict[str, str]:
    """Spark properties every Atelier job uses (also passed to spark-submit by the DAGs)."""
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.executor.memory": settings.spark.executor_memory,
    }


def python_env() -> dict[str, str]:
    """Spark's Python workers must run this interpreter (the venv), not whatever python3 is on PATH."""
    return {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def get_spark(settings: Settings, app_name: str) -> SparkSession:
    """The active session if a job runs under spark-submit, else a new one for the profile's master."""
    from pyspark.sql import SparkSession

    for key, value in python_env().items():
        os.environ.setdefault(key, value)
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the JVM is already up (its gateway port is in the environment) and the master and
    # driver memory come from the submit command; only a plain `python` process picks the profile's master.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(settings.spark.master).config("spark.driver.memory", settings.spark.driver_memory)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
