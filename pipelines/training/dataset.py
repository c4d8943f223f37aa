"""Training sets: built point-in-time correct from the offline store, validated with Great Expectations before
they are published, read back by the training run that built them, and split by time.

The suite is generated from the specs (label, row id, every feature the model reads: present and not null;
enough rows) plus the use case's own expectations in ``expectations/training_set__<usecase>/suite.yaml``
when that file exists (e.g. a plausible label range).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.featurestore.spec import FeatureSet
from pipelines.lake.tables import Lake, TableNotFound, safe_name
from pipelines.quality.expectations import EXPECTATIONS_DIR, load_suite
from pipelines.training.spec import ModelSpec, TrainingWindow

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from pipelines.config import Settings
    from pipelines.quality.expectations import ValidationReport

__all__ = ["EmptyTrainingWindow", "build_training_set", "feedback_lineage", "read_training_set", "split_by_time",
           "training_set_name", "training_set_suite"]

FEEDBACK_LINEAGE = "_feedback.json"


class EmptyTrainingWindow(ValueError):
    """The data window holds no (or too few) labelled events."""


def training_set_name(usecase: str) -> str:
    return f"training_set__{usecase}"


def training_set_suite(features: FeatureSet, spec: ModelSpec) -> dict[str, Any]:
    label = features.label
    assert label is not None
    row_id = label.keys[0]
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": spec.data.min_rows}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": label.column}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": label.event_time}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": row_id}},
    ]
    for name in features.feature_names:
        expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": name}})
    path = EXPECTATIONS_DIR / training_set_name(features.usecase) / "suite.yaml"
    if path.exists():
        expectations.extend(load_suite(training_set_name(features.usecase))["expectations"])
    return {"path": f"generated from the specs of '{features.usecase}'" + (f" + {path}" if path.exists() else ""),
            "expectations": expectations}


def build_training_set(spark: SparkSession, settings: Settings, features: FeatureSet, spec: ModelSpec,
                       run_id: str, start: datetime, end: datetime) -> tuple[str, int, ValidationReport]:
    """Compute the PIT training set of [start, end), validate it, publish it. Returns (version, rows, report).

    Nothing is published when validation fails: the staged copy is discarded and ValidationFailed raised.
    """
    from pipelines.featurestore import offline
    from pipelines.quality.expectations import ValidationFailed, validate_with_suites

    lake = Lake.from_settings(settings)
    name = training_set_name(features.usecase)
    path = lake.staging_path(name, run_id)
    labels, feedback = None, None
    if spec.data.include_feedback:
        from pipelines.monitoring.feedback import feedback_labels

        labels, feedback = feedback_labels(spark, lake, features, start, end)
    frame = offline.training_set(spark, lake, features, start, end, labels=labels, extra_columns=spec.extra_columns)
    frame.write.mode("overwrite").parquet(str(path))
    if feedback is not None:  # the lineage of the served rows learnt from, kept with the version
        (path / FEEDBACK_LINEAGE).write_text(json.dumps(feedback, indent=1, sort_keys=True))
    staged = spark.read.parquet(str(path))
    rows = staged.count()
    if rows == 0:
        lake.discard_staging(name, run_id)
        raise EmptyTrainingWindow(f"the training window [{start:%Y-%m-%d}, {end:%Y-%m-%d}) has no labelled "
                                  f"events in '{features.label.source if features.label else '?'}'")
    report = validate_with_suites({name: (staged, training_set_suite(features, spec))}, run_id)
    report_dir = settings.home_path / "reports" / features.usecase / "training_set" / safe_name(run_id)
    report.save(report_dir)
    if not report.success:
        lake.discard_staging(name, run_id)
        raise ValidationFailed(report)
    lake.write_manifest(path, rows=rows, columns=frame.columns, partition_by=[], run_id=run_id)
    return lake.publish(name, run_id), rows, report


def feedback_lineage(settings: Settings, usecase: str, version: str) -> dict[str, Any] | None:
    """What a training set version learnt from the feedback loop (tables, their versions, days, rows)."""
    path = Path(settings.lake_root) / training_set_name(usecase) / "versions" / version / FEEDBACK_LINEAGE
    return json.loads(path.read_text()) if path.exists() else None


def read_training_set(settings: Settings, usecase: str, run_id: str) -> tuple[pd.DataFrame, str]:
    """The training set published by ``run_id`` (not merely the latest one) as pandas, and its version."""
    import pandas as pd

    lake = Lake.from_settings(settings)
    versions = Path(settings.lake_root) / training_set_name(usecase) / "versions"
    mine = lake.versions_of(training_set_name(usecase), run_id)
    if not mine:
        raise TableNotFound(f"run '{run_id}' published no training set for '{usecase}' in {lake.root} "
                            "(the training_set task must run first)")
    return pd.read_parquet(versions / mine[-1]), mine[-1]


def split_by_time(frame: pd.DataFrame, time_column: str, window: TrainingWindow
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """train = [start, validation_start), validation = [validation_start, holdout_start), holdout = the rest."""
    import pandas as pd

    ts = pd.to_datetime(frame[time_column], utc=True)
    frame = frame.assign(**{time_column: ts}).sort_values(time_column, kind="stable")
    ts = frame[time_column]
    parts = (frame[(ts >= window.start) & (ts < window.validation_start)],
             frame[(ts >= window.validation_start) & (ts < window.holdout_start)],
             frame[(ts >= window.holdout_start) & (ts < window.end)])
    for part, what in zip(parts, ("train", "validation", "holdout"), strict=True):
        if part.empty:
            raise EmptyTrainingWindow(f"the {what} split of [{window.start:%Y-%m-%d}, {window.end:%Y-%m-%d}) is "
                                      "empty: widen the window or shorten validation_days / holdout_days")
    return parts
