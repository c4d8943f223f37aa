"""Batch prediction: scheduled scoring of lake entities into a partitioned lake table (see ``predict``)."""

from __future__ import annotations

from pipelines.batch.predict import (
    BatchPredictError,
    BatchResult,
    Plan,
    check_feature_coverage,
    interval_columns,
    interval_days,
    plan,
    predictions_table,
    read_predictions,
    run,
    score,
)

__all__ = ["BatchPredictError", "BatchResult", "Plan", "check_feature_coverage", "interval_columns",
           "interval_days", "plan", "predictions_table", "read_predictions", "run", "score"]
