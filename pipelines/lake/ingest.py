"""Lake ingest: stage -> validate -> publish, for every table a use case declares in ``sources.yaml``.

- ``stage`` reads each source, applies the explicit schema and derivations, and writes the run's staging copy.
- ``validate`` runs each table's Great Expectations suite on the staged data (with cross-table references)
  and marks the staging copies as validated, or fails with a readable report (kept under the run's report
  folder) and discards them.
- ``publish`` atomically swaps validated staging copies in as the tables' published versions. It refuses data
  that was not validated, so corrupt data never reaches the lake tables. A retried publish skips the tables
  whose version from this run is already current, and refuses if a later run superseded one of them.

Each step is idempotent for a run id: a re-run overwrites that run's staging copy; a re-run of the whole
ingest publishes identical table contents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import Settings
from pipelines.lake.tables import Lake, TableInfo, safe_name
from pipelines.usecases import UseCase

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

VALIDATED = "_VALIDATED"


class NotValidated(RuntimeError):
    pass


@dataclass(frozen=True)
class StagedTable:
    name: str
    path: str
    rows: int


def report_dir(settings: Settings, usecase: UseCase, run_id: str) -> Path:
    return settings.home_path / "reports" / usecase.name / "lake_ingest" / safe_name(run_id)


def stage(spark: SparkSession, settings: Settings, usecase: UseCase, run_id: str,
          source_overrides: dict[str, str] | None = None) -> list[StagedTable]:
    """Build every table of the use case into its staging folder for `run_id`."""
    from pipelines.lake.transform import build_table

    overrides = source_overrides or {}
    unknown = set(overrides) - set(usecase.tables)
    if unknown:
        raise ValueError(f"source override for unknown table(s) {sorted(unknown)}; tables: {list(usecase.tables)}")
    lake = Lake.from_settings(settings)
    staged: list[StagedTable] = []
    built: dict[str, DataFrame] = {}
    for name, spec in usecase.tables.items():
        frame = build_table(spark, name, spec, built, overrides.get(name))
        path = lake.staging_path(name, run_id)
        writer = frame.write.mode("overwrite")
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        writer.parquet(str(path))
        written = spark.read.parquet(str(path))
        rows = written.count()
        lake.write_manifest(path, rows=rows, columns=spec.output_columns, partition_by=spec.partition_by,
                            run_id=run_id)
        built[name] = written
        staged.append(StagedTable(name, str(path), rows))
    return staged


def validate(spark: SparkSession, settings: Settings, usecase: UseCase, run_id: str):
    """Run the suites on the staged tables. Returns the report; raises ValidationFailed on a violation."""
    from pipelines.quality.expectations import ValidationFailed, validate_frames

    lake = Lake.from_settings(settings)
    frames = {}
    for name, spec in usecase.tables.items():
        path = lake.staging_path(name, run_id)
        if not path.exists():
            raise NotValidated(f"nothing staged for table '{name}' by run '{run_id}': run the stage step first")
        if spec.expectations:
            frames[name] = (spark.read.parquet(str(path)), spec.expectations)
    report = validate_frames(frames, run_id)
    folder = report_dir(settings, usecase, run_id)
    report.save(folder)
    if not report.success:
        for name in usecase.tables:
            lake.discard_staging(name, run_id)
        raise ValidationFailed(report)
    for name in usecase.tables:
        (lake.staging_path(name, run_id) / VALIDATED).write_text(json.dumps({"report": str(folder)}))
    return report


def publish(settings: Settings, usecase: UseCase, run_id: str) -> dict[str, str]:
    """Publish every validated staged table of `run_id`. Checks all before publishing any; tables this run
    already published (a retry) are returned as they are (:class:`Superseded` if a later run replaced one)."""
    lake = Lake.from_settings(settings)
    done = {name: v for name in usecase.tables if (v := lake.published_version(name, run_id)) is not None}
    for name in usecase.tables:
        if name not in done and not (lake.staging_path(name, run_id) / VALIDATED).exists():
            raise NotValidated(f"table '{name}' of run '{run_id}' was not validated; refusing to publish it")
    return {name: done.get(name) or lake.publish(name, run_id) for name in usecase.tables}


def summary(settings: Settings, usecase: UseCase) -> list[TableInfo]:
    lake = Lake.from_settings(settings)
    return [lake.info(name) for name in usecase.tables if lake.current_version(name)]
