"""Holdout evaluation: metrics overall and per segment, for the model and for the baselines. Regression
models get error metrics (:func:`error_metrics`), classification models probability metrics
(:func:`classification_metrics`, from ``(n, K)`` class probabilities)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["CLASSIFICATION_METRICS", "REGRESSION_METRICS", "classification_metrics", "coverage", "error_metrics",
           "segment_metrics", "set_metrics"]

REGRESSION_METRICS = ("mae", "rmse", "median_ae", "p90_ae", "bias", "rows")
CLASSIFICATION_METRICS = ("auc", "log_loss", "brier", "calibration_error", "accuracy", "positive_rate",
                          "mean_probability", "rows")
CALIBRATION_BINS = 10


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


def classification_metrics(actual: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """AUC (binary; one-vs-rest macro for multi-class; NaN when the slice holds one class), log loss, Brier
    score, calibration error (expected calibration error over 10 equal-width bins: of the positive class's
    probability for binary models, of the top class's otherwise), accuracy (the most probable class), the
    positive rate and mean probability (binary; the top class's otherwise) and the row count."""
    y = np.asarray(actual).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if y.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    n, k = proba.shape
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    p_true = np.clip(proba[np.arange(n), y], 1e-15, 1.0)
    if k == 2:
        score, hit = proba[:, 1], (y == 1).astype(np.float64)
    else:
        score, hit = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(np.float64)
    bins = np.minimum((score * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    ece = sum(abs(hit[bins == b].mean() - score[bins == b].mean()) * (bins == b).mean()
              for b in range(CALIBRATION_BINS) if (bins == b).any())
    return {"auc": _auc(y, proba), "log_loss": float(-np.mean(np.log(p_true))),
            "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1)) / (2 if k == 2 else 1)),
            "calibration_error": float(ece), "accuracy": float(np.mean(proba.argmax(axis=1) == y)),
            "positive_rate": float(np.mean(y == 1)) if k == 2 else float(np.mean(hit)),
            "mean_probability": float(np.mean(score)), "rows": float(n)}


def _auc(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if present.size < 2 or (proba.shape[1] > 2 and present.size < proba.shape[1]):
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def set_metrics(actual: np.ndarray, members: np.ndarray) -> tuple[float, float]:
    """(coverage, mean set size) of prediction sets (``(n, K)`` booleans) against the true classes."""
    y = np.asarray(actual).astype(np.int64)
    return float(np.mean(members[np.arange(y.size), y])), float(np.mean(members.sum(axis=1)))


def coverage(actual: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    return float(np.mean((actual >= low) & (actual <= high)))


def segment_metrics(frame: Any, segments: Mapping[str, str], actual: str,
                    predictions: Mapping[str, np.ndarray], min_rows: int = 30,
                    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] = error_metrics,
                    ) -> list[dict[str, Any]]:
    """One row per (segment, value, predictor): the ``metrics`` of each predictor on that slice (error
    metrics, or :func:`classification_metrics` with class probabilities as predictions).

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
                m = metrics(y[mask], np.asarray(pred)[mask])
                rows.append({"segment": segment, "value": str(value), "predictor": name, **m})
    return rows
