"""Holdout evaluation: error metrics overall and per segment, for the model and for the baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["coverage", "error_metrics", "segment_metrics"]


def error_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, median and 90th-percentile absolute error, mean error (bias) and row count."""
    actual = np.asarray(actual, dtype=np.float64)
    err = np.asarray(predicted, dtype=np.float64) - actual
    if err.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    abs_err = np.abs(err)
    return {"mae": float(abs_err.mean()), "rmse": float(np.sqrt(np.mean(err**2))),
            "median_ae": float(np.median(abs_err)), "p90_ae": float(np.quantile(abs_err, 0.9)),
            "bias": float(err.mean()), "rows": float(err.size)}


def coverage(actual: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    return float(np.mean((actual >= low) & (actual <= high)))


def segment_metrics(frame: Any, segments: Mapping[str, str], actual: str,
                    predictions: Mapping[str, np.ndarray], min_rows: int = 30) -> list[dict[str, Any]]:
    """One row per (segment, value, predictor): the error metrics of each predictor on that slice.

    Slices smaller than ``min_rows`` are left out (their figures would be noise).
    """
    rows: list[dict[str, Any]] = []
    y = np.asarray(frame[actual], dtype=np.float64)
    for segment, column in segments.items():
        values = np.asarray(frame[column])
        for value in sorted({v for v in values.tolist() if v is not None}, key=str):
            mask = values == value
            if mask.sum() < min_rows:
                continue
            for name, pred in predictions.items():
                m = error_metrics(y[mask], np.asarray(pred)[mask])
                rows.append({"segment": segment, "value": str(value), "predictor": name, **m})
    return rows
