"""What a classification model carries besides its trees: probability calibration, conformal prediction
sets and the degraded-mode fallback. All work from the booster's **margins** (the raw sum of trees, what
Triton returns), so every runtime computes the same probabilities.

- :class:`ProbabilityCalibration` maps margins to calibrated probabilities: ``isotonic`` (binary: the
  sigmoid of the margin through an isotonic map fitted on validation, its pure end steps held off 0 and 1 by
  their Laplace estimate), ``sigmoid`` (binary: Platt scaling,
  a logistic fit of the margin), ``temperature`` (multi-class: the softmax of the margins over one fitted
  temperature) or ``none`` (the plain sigmoid / softmax).
- :class:`PredictionSets` is split-conformal classification (the "least ambiguous set" score,
  ``1 - p(true class)``): per level, the classes whose probability is at least ``1 - q``, where ``q`` is the
  ``ceil((n + 1) level) / n`` quantile of the scores on the calibration rows. The top class is always in the
  set (a set is never empty), and so is the class an answer gives (the calibrated probabilities' argmax,
  which calibration can move near a tie), so coverage is at least the level on exchangeable data. With a segment feature
  the thresholds are per segment value (Mondrian conformal), the global ones elsewhere. The scores are the
  model's **uncalibrated** probabilities (:func:`probabilities` of the margins): they are continuous, where an
  isotonic map's steps tie many rows at the threshold and make the sets cover well above their level (0.89
  for a 0.8 level in the unit test's case). Any score keeps the guarantee; the calibrated probabilities are
  what the answer reports.
- :class:`LogisticFallback` is a logistic regression over a few features, fitted on the training rows.

Probabilities are ``(n, K)`` arrays in class order (binary: ``K = 2``, column 1 is the positive class).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LogisticFallback", "PredictionSets", "ProbabilityCalibration", "probabilities"]

PROBABILITY_METHODS = ("isotonic", "sigmoid", "temperature", "none")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _margins(margin: np.ndarray) -> np.ndarray:
    """Margins as ``(n,)`` (binary) or ``(n, K)`` (multi-class) float64."""
    m = np.asarray(margin, dtype=np.float64)
    return m.reshape(-1) if m.ndim == 1 or (m.ndim == 2 and m.shape[1] == 1) else m


def probabilities(margin: np.ndarray) -> np.ndarray:
    """Uncalibrated class probabilities ``(n, K)`` from margins (sigmoid for binary, softmax otherwise)."""
    m = _margins(margin)
    if m.ndim == 1:
        p = _sigmoid(m)
        return np.column_stack([1.0 - p, p])
    return _softmax(m)


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(y.size), y], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


@dataclass(frozen=True)
class ProbabilityCalibration:
    """Margins -> calibrated probabilities (see the module docstring for the methods)."""

    method: str = "none"
    x: tuple[float, ...] = ()  # isotonic: the map's knots (uncalibrated probability -> calibrated)
    y: tuple[float, ...] = ()
    a: float = 1.0  # sigmoid: p = sigmoid(a * margin + b)
    b: float = 0.0
    temperature: float = 1.0
    rows: int = 0

    @classmethod
    def fit(cls, margin: np.ndarray, labels: np.ndarray, method: str) -> ProbabilityCalibration:
        m, y = _margins(margin), np.asarray(labels).astype(np.int64)
        if method not in PROBABILITY_METHODS:
            raise ValueError(f"unknown probability calibration '{method}' (known: {', '.join(PROBABILITY_METHODS)})")
        if y.size == 0:
            raise ValueError("cannot calibrate probabilities on an empty validation set")
        binary = m.ndim == 1
        if method in ("isotonic", "sigmoid") and not binary:
            raise ValueError(f"probability calibration '{method}' is for binary models; multi-class takes "
                             "'temperature' or 'none'")
        if method == "temperature" and binary:
            raise ValueError("probability calibration 'temperature' is for multi-class models; binary takes "
                             "'isotonic', 'sigmoid' or 'none'")
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            scores = _sigmoid(m)
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y)
            # The lowest and highest steps are often pure (every validation row there a 0, or a 1): a step at
            # exactly 0 or 1 makes a later miss cost a log loss of 34. Those two steps take their rows'
            # Laplace estimate (k + 1) / (n + 2) as a floor and ceiling, which keeps the map monotone.
            fitted = iso.predict(scores)
            low, high = fitted == fitted.min(), fitted == fitted.max()
            floor = (y[low].sum() + 1.0) / (low.sum() + 2.0)
            ceiling = (y[high].sum() + 1.0) / (high.sum() + 2.0)
            knots = np.clip(iso.y_thresholds_, min(floor, ceiling), max(floor, ceiling))
            return cls("isotonic", tuple(map(float, iso.X_thresholds_)), tuple(map(float, knots)), rows=int(y.size))
        if method == "sigmoid":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6, max_iter=1000).fit(m.reshape(-1, 1), y)
            return cls("sigmoid", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]), rows=int(y.size))
        if method == "temperature":
            from scipy.optimize import minimize_scalar

            found = minimize_scalar(lambda log_t: _log_loss(y, _softmax(m / math.exp(log_t))),
                                    bounds=(-3.0, 3.0), method="bounded")
            return cls("temperature", temperature=float(math.exp(found.x)), rows=int(y.size))
        return cls("none", rows=int(y.size))

    def apply(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(n, K)``."""
        m = _margins(margin)
        if self.method == "isotonic":
            p = np.interp(_sigmoid(m), self.x, self.y) if len(self.x) > 1 else np.full(m.shape, self.y[0])
            return np.column_stack([1.0 - p, p])
        if self.method == "sigmoid":
            p = _sigmoid(self.a * m + self.b)
            return np.column_stack([1.0 - p, p])
        if self.method == "temperature":
            return _softmax(m / self.temperature)
        return probabilities(m)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": list(self.x), "y": list(self.y), "a": self.a, "b": self.b,
                "temperature": self.temperature, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbabilityCalibration:
        return cls(str(data.get("method", "none")), tuple(data.get("x", ())), tuple(data.get("y", ())),
                   float(data.get("a", 1.0)), float(data.get("b", 0.0)), float(data.get("temperature", 1.0)),
                   int(data.get("rows", 0)))


def _level_key(level: float) -> str:
    return f"{level:g}"


def _segment_key(value: Any) -> str:
    v = float(value)
    return str(int(v)) if v.is_integer() else f"{v:g}"


@dataclass(frozen=True)
class PredictionSets:
    """Split-conformal prediction sets: ``thresholds[level]``, a class is in the set when its (uncalibrated)
    probability is at least the threshold (the top class always is)."""

    levels: tuple[float, ...]
    thresholds: dict[str, float]
    segment_feature: str | None = None
    segment_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: int = 0
    method: str = "split_conformal_lac"

    @classmethod
    def fit(cls, proba: np.ndarray, labels: np.ndarray, levels: Sequence[float], segments: np.ndarray | None = None,
            segment_feature: str | None = None, min_segment_rows: int = 300) -> PredictionSets:
        proba, y = np.asarray(proba, dtype=np.float64), np.asarray(labels).astype(np.int64)
        if y.size == 0:
            raise ValueError("cannot calibrate prediction sets on an empty validation set")
        scores = 1.0 - proba[np.arange(y.size), y]

        def thresholds(s: np.ndarray) -> dict[str, float]:
            n = s.size
            out = {}
            for level in levels:
                q = min(1.0, math.ceil((n + 1) * level) / n)
                out[_level_key(level)] = float(1.0 - np.quantile(s, q, method="inverted_cdf"))
            return out

        per_segment: dict[str, dict[str, float]] = {}
        if segments is not None and segment_feature is not None:
            keys = np.array([_segment_key(v) for v in segments])
            for key in sorted(set(keys.tolist())):
                mask = keys == key
                if mask.sum() >= min_segment_rows:
                    per_segment[key] = thresholds(scores[mask])
        return cls(tuple(float(x) for x in levels), thresholds(scores), segment_feature if per_segment else None,
                   per_segment, int(y.size))

    def members(self, proba: np.ndarray, level: float, segments: np.ndarray | None = None,
                predicted: np.ndarray | None = None) -> np.ndarray:
        """``(n, K)`` booleans: which classes are in each row's set at ``level``. ``predicted``: each row's
        answered class (the calibrated probabilities' argmax), always in its set too (calibration can move
        the argmax near a tie: an answer's class is never outside its own set)."""
        key = _level_key(level)
        if key not in self.thresholds:
            raise KeyError(f"no prediction sets for level {level} (calibrated: {', '.join(self.thresholds)})")
        proba = np.asarray(proba, dtype=np.float64)
        threshold = np.full(proba.shape[0], self.thresholds[key])
        if self.segment_feature and segments is not None:
            values, inverse = np.unique(np.asarray(segments, dtype=np.float64).ravel(), return_inverse=True)
            for j, value in enumerate(values):
                seg = self.segment_thresholds.get(_segment_key(value))
                if seg is not None:
                    threshold[inverse == j] = seg[key]
        member = proba >= threshold[:, None]
        member[np.arange(proba.shape[0]), proba.argmax(axis=1)] = True
        if predicted is not None:
            member[np.arange(proba.shape[0]), np.asarray(predicted, dtype=np.int64)] = True
        return member

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "levels": list(self.levels), "rows": self.rows, "thresholds": self.thresholds,
                "segment_feature": self.segment_feature, "segment_thresholds": self.segment_thresholds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionSets:
        return cls(tuple(data["levels"]), {k: float(v) for k, v in data["thresholds"].items()},
                   data.get("segment_feature"),
                   {s: {k: float(v) for k, v in t.items()} for s, t in data.get("segment_thresholds", {}).items()},
                   int(data.get("rows", 0)), str(data.get("method", "split_conformal_lac")))


@dataclass(frozen=True)
class LogisticFallback:
    """A logistic regression over a few features: ``margins = intercepts + x @ coefficients`` (one column for
    binary, one per class otherwise). Cheap, always available, flagged as degraded when used."""

    intercepts: tuple[float, ...]
    coefficients: dict[str, tuple[float, ...]]

    @classmethod
    def fit(cls, frame: Any, features: Sequence[str], labels: np.ndarray, classes: int) -> LogisticFallback:
        y = np.asarray(labels).astype(np.int64)
        if not features:
            prior = np.bincount(y, minlength=classes) / max(y.size, 1)
            prior = np.clip(prior, 1e-6, 1.0)
            if classes == 2:
                return cls((float(math.log(prior[1] / prior[0])),), {})
            return cls(tuple(float(v) for v in np.log(prior)), {})
        from sklearn.linear_model import LogisticRegression

        x = np.column_stack([np.asarray(frame[f], dtype=np.float64) for f in features])
        lr = LogisticRegression(max_iter=2000).fit(x, y)
        return cls(tuple(float(v) for v in lr.intercept_),
                   {f: tuple(float(v) for v in lr.coef_[:, i]) for i, f in enumerate(features)})

    def margins(self, matrix: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        index = {f: i for i, f in enumerate(feature_names)}
        out = np.tile(np.asarray(self.intercepts, dtype=np.float64), (matrix.shape[0], 1))
        for f, c in self.coefficients.items():
            out += np.asarray(matrix[:, index[f]], dtype=np.float64)[:, None] * np.asarray(c)[None, :]
        return out[:, 0] if out.shape[1] == 1 else out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logistic", "intercepts": list(self.intercepts),
                "coefficients": {f: list(c) for f, c in self.coefficients.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogisticFallback:
        return cls(tuple(data["intercepts"]), {f: tuple(c) for f, c in data["coefficients"].items()})
