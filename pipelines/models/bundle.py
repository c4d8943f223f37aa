"""The model bundle: everything training produces that serving and batch scoring need, in one folder.

    <bundle>/model.json     the XGBoost booster (XGBoost's JSON format)
    <bundle>/bundle.json    feature order and defaults, calibration, training ranges, fallback, lineage

Training writes a bundle and logs it to the model's MLflow run (artifact path ``atelier``); the online API,
the Triton model and the batch job all load the same files, so they compute the same numbers.

Prediction intervals are split-conformal: residuals (label - prediction) on the validation set give, per
nominal level, the residual quantiles ``(1 - level) / 2`` and ``(1 + level) / 2``; an interval is the point
prediction plus those offsets. With a ``segment_feature`` the offsets are per segment value (segments with
too few validation rows use the global offsets), which follows the error's scale where it changes a lot.

The fallback is a linear model over a few features, fitted on the same training rows: what the API answers
(flagged as degraded) when the main model cannot run.

With an ``offset_feature`` the booster learns the label minus that feature (trained with it as XGBoost's base
margin and ``base_score`` 0): a prediction is the booster's raw output plus the feature's value. Any runtime
that sums the trees (xgboost's ``inplace_predict``, Triton's FIL backend) gives the raw output; the offset is
added after, by :meth:`ModelBundle.predict` / :meth:`ModelBundle.add_offset`.

A classification bundle (``task`` ``binary`` or ``multiclass``, its ``classes`` in label order) holds instead
a probability calibration, conformal prediction sets and a logistic fallback
(``pipelines/models/classification.py``); its booster's margins give the probabilities
(:meth:`ModelBundle.predict_proba`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.models.classification import LogisticFallback, PredictionSets, ProbabilityCalibration

if TYPE_CHECKING:
    import xgboost

__all__ = ["BUNDLE_FORMAT", "Calibration", "LinearFallback", "ModelBundle", "BundleError", "feature_spec_hash"]

BUNDLE_FORMAT = 1
BOOSTER_FILE = "model.json"
BUNDLE_FILE = "bundle.json"


class BundleError(ValueError):
    """A bundle folder is missing, incomplete or from an unknown format."""


def feature_spec_hash(text: str) -> str:
    """Stable identity of a feature spec (the features.yaml text the model was trained with)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _level_key(level: float) -> str:
    return f"{level:g}"


@dataclass(frozen=True)
class Calibration:
    """Split-conformal residual offsets: ``offsets[level] = (low, high)``, added to the point prediction."""

    levels: tuple[float, ...]
    offsets: dict[str, tuple[float, float]]
    segment_feature: str | None = None
    segment_offsets: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    rows: int = 0
    method: str = "split_conformal"

    @staticmethod
    def segment_key(value: Any) -> str:
        v = float(value)
        return str(int(v)) if v.is_integer() else f"{v:g}"

    @classmethod
    def fit(cls, residuals: np.ndarray, levels: Sequence[float], segments: np.ndarray | None = None,
            segment_feature: str | None = None, min_segment_rows: int = 300) -> Calibration:
        residuals = np.asarray(residuals, dtype=np.float64)
        if residuals.size == 0:
            raise ValueError("cannot calibrate intervals on an empty validation set")

        def offsets(r: np.ndarray) -> dict[str, tuple[float, float]]:
            n = r.size
            out = {}
            for level in levels:
                # Finite-sample conformal correction: the ceil((n + 1) q) / n empirical quantile.
                lo_q = max(0.0, math.floor((n + 1) * (1 - level) / 2) / n)
                hi_q = min(1.0, math.ceil((n + 1) * (1 + level) / 2) / n)
                lo, hi = np.quantile(r, [lo_q, hi_q], method="inverted_cdf")
                out[_level_key(level)] = (float(lo), float(hi))
            return out

        per_segment: dict[str, dict[str, tuple[float, float]]] = {}
        if segments is not None and segment_feature is not None:
            keys = np.array([cls.segment_key(v) for v in segments])
            for key in sorted(set(keys.tolist())):
                mask = keys == key
                if mask.sum() >= min_segment_rows:
                    per_segment[key] = offsets(residuals[mask])
        return cls(tuple(float(x) for x in levels), offsets(residuals), segment_feature if per_segment else None,
                   per_segment, int(residuals.size))

    def interval(self, predictions: np.ndarray, level: float,
                 segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        key = _level_key(level)
        if key not in self.offsets:
            raise KeyError(f"no calibration for level {level} (calibrated: {', '.join(self.offsets)})")
        predictions = np.asarray(predictions, dtype=np.float64)
        lo = np.full(predictions.shape, self.offsets[key][0])
        hi = np.full(predictions.shape, self.offsets[key][1])
        if self.segment_feature and segments is not None:
            # One lookup per distinct segment value, not per row (batch scoring calls this on whole batches).
            values, inverse = np.unique(np.asarray(segments, dtype=np.float64).ravel(), return_inverse=True)
            for j, value in enumerate(values):
                seg = self.segment_offsets.get(self.segment_key(value))
                if seg is not None:
                    rows = inverse == j
                    lo[rows], hi[rows] = seg[key]
        return predictions + lo, predictions + hi

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "levels": list(self.levels), "rows": self.rows,
                "offsets": {k: list(v) for k, v in self.offsets.items()},
                "segment_feature": self.segment_feature,
                "segment_offsets": {s: {k: list(v) for k, v in o.items()} for s, o in self.segment_offsets.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(tuple(data["levels"]), {k: (v[0], v[1]) for k, v in data["offsets"].items()},
                   data.get("segment_feature"),
                   {s: {k: (v[0], v[1]) for k, v in o.items()} for s, o in data.get("segment_offsets", {}).items()},
                   int(data.get("rows", 0)), str(data.get("method", "split_conformal")))


@dataclass(frozen=True)
class LinearFallback:
    """``intercept + sum(coefficients[f] * x[f])``: cheap, always available, flagged as degraded when used."""

    intercept: float
    coefficients: dict[str, float]

    @classmethod
    def fit(cls, frame: Any, features: Sequence[str], label: np.ndarray) -> LinearFallback:
        x = np.column_stack([np.ones(len(label)), *[np.asarray(frame[f], dtype=np.float64) for f in features]])
        coef, *_ = np.linalg.lstsq(x, np.asarray(label, dtype=np.float64), rcond=None)
        return cls(float(coef[0]), {f: float(c) for f, c in zip(features, coef[1:], strict=True)})

    def predict_one(self, values: Mapping[str, float]) -> float:
        return self.intercept + sum(c * float(values[f]) for f, c in self.coefficients.items())

    def predict(self, matrix: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        index = {f: i for i, f in enumerate(feature_names)}
        out = np.full(matrix.shape[0], self.intercept, dtype=np.float64)
        for f, c in self.coefficients.items():
            out += c * matrix[:, index[f]].astype(np.float64)
        return out


@dataclass
class ModelBundle:
    """A trained model with what it needs at prediction time. ``version`` is set once registered."""

    usecase: str
    model_name: str
    label: str
    feature_names: list[str]
    feature_defaults: dict[str, float]
    calibration: Calibration | PredictionSets  # intervals (regression) or prediction sets (classification)
    feature_ranges: dict[str, tuple[float, float]]
    fallback: LinearFallback | LogisticFallback
    feature_spec_hash: str
    lineage: dict[str, Any] = field(default_factory=dict)
    offset_feature: str | None = None
    task: str = "regression"  # regression | binary | multiclass
    classes: list[str] = field(default_factory=list)
    probability: ProbabilityCalibration | None = None
    version: str | None = None
    path: Path | None = None
    _booster: Any = None

    # ----------------------------------------------------------------------------------------- model
    @property
    def booster(self) -> xgboost.Booster:
        if self._booster is None:
            import xgboost

            if self.path is None:
                raise BundleError("the bundle has no booster (not loaded from a folder, none attached)")
            booster = xgboost.Booster()
            booster.load_model(str(self.path / BOOSTER_FILE))
            self._booster = booster
        return self._booster

    def matrix(self, rows: Sequence[Mapping[str, Any]] | Any) -> np.ndarray:
        """float32 feature matrix in the model's column order, from dict rows or a DataFrame."""
        if hasattr(rows, "columns"):
            return np.column_stack([np.asarray(rows[f], dtype=np.float32) for f in self.feature_names])
        return np.array([[row[f] for f in self.feature_names] for row in rows], dtype=np.float32)

    @property
    def is_classifier(self) -> bool:
        return self.task != "regression"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Point predictions for a float32 matrix (``inplace_predict``: no DMatrix), offset included.
        Regression only: a classifier answers :meth:`predict_proba`."""
        if self.is_classifier:
            raise BundleError(f"{self.model_name} is a {self.task} classifier: use predict_proba")
        return self.add_offset(self.booster.inplace_predict(matrix), matrix)

    def fallback_outputs(self, matrix: np.ndarray) -> np.ndarray:
        """The fallback's answer for a matrix: predictions (linear, regression) or margins (logistic)."""
        if isinstance(self.fallback, LogisticFallback):
            return self.fallback.margins(matrix, self.feature_names)
        return self.fallback.predict(matrix, self.feature_names)

    def margins(self, matrix: np.ndarray) -> np.ndarray:
        """The booster's raw margins (``(n,)`` binary, ``(n, K)`` multi-class): what Triton returns."""
        return np.asarray(self.booster.inplace_predict(matrix, predict_type="margin"), dtype=np.float64)

    def predict_proba(self, matrix: np.ndarray | None = None, margins: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities ``(n, K)`` of a classifier, from a matrix or from its margins."""
        if not self.is_classifier or self.probability is None:
            raise BundleError(f"{self.model_name} is not a classifier: use predict")
        return self.probability.apply(self.margins(matrix) if margins is None else margins)

    def prediction_sets(self, margins: np.ndarray, matrix: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"0.8": (n, K) booleans, ...}``: each calibrated level's conformal prediction sets, from the
        booster's margins (the sets' scores are the uncalibrated probabilities)."""
        from pipelines.models.classification import probabilities

        sets = self.calibration
        if not isinstance(sets, PredictionSets):
            raise BundleError(f"{self.model_name} is not a classifier: use intervals")
        segments = None
        if sets.segment_feature and matrix is not None:
            segments = matrix[:, self.feature_names.index(sets.segment_feature)]
        scores = probabilities(margins)
        predicted = self.predict_proba(margins=margins).argmax(axis=1) if self.probability is not None else None
        return {_level_key(level): sets.members(scores, level, segments, predicted) for level in sets.levels}

    def add_offset(self, raw: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """The booster's raw output (sum of trees) -> the prediction: plus the offset feature, if any."""
        out = np.asarray(raw, dtype=np.float64).reshape(-1)
        if self.offset_feature is not None:
            out = out + np.asarray(matrix, dtype=np.float32)[:, self.feature_names.index(self.offset_feature)]
        return out

    def intervals(self, predictions: np.ndarray, matrix: np.ndarray | None = None,
                  calibration: Calibration | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"0.8": (low, high), "0.9": (...)}`` for every calibrated level, by the bundle's calibration or
        ``calibration`` (a recalibration from the feedback loop)."""
        calibration = calibration or self.calibration
        if not isinstance(calibration, Calibration):
            raise BundleError(f"{self.model_name} is a {self.task} classifier: use prediction_sets")
        segments = None
        if calibration.segment_feature and matrix is not None:
            segments = matrix[:, self.feature_names.index(calibration.segment_feature)]
        return {_level_key(level): calibration.interval(predictions, level, segments)
                for level in calibration.levels}

    def out_of_range(self, values: Mapping[str, float]) -> list[str]:
        """Features whose value lies outside the training range (the 0.1-99.9 percentiles)."""
        out = []
        for name, (lo, hi) in self.feature_ranges.items():
            v = values.get(name)
            if v is not None and not (lo <= float(v) <= hi):
                out.append(name)
        return out

    # ----------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "usecase": self.usecase, "model_name": self.model_name,
                "label": self.label, "feature_names": self.feature_names,
                "feature_defaults": self.feature_defaults, "calibration": self.calibration.to_dict(),
                "feature_ranges": {k: list(v) for k, v in self.feature_ranges.items()},
                "fallback": self.fallback.to_dict() if isinstance(self.fallback, LogisticFallback) else
                {"kind": "linear", "intercept": self.fallback.intercept, "coefficients": self.fallback.coefficients},
                "feature_spec_hash": self.feature_spec_hash, "lineage": self.lineage,
                "offset_feature": self.offset_feature, "task": self.task, "classes": self.classes,
                "probability": self.probability.to_dict() if self.probability is not None else None}

    def save(self, folder: str | Path, booster: xgboost.Booster | None = None) -> Path:
        """Write the bundle atomically (a temporary sibling renamed into place)."""
        folder = Path(folder)
        booster = booster if booster is not None else self.booster
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        booster.save_model(str(tmp / BOOSTER_FILE))
        (tmp / BUNDLE_FILE).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        self.path, self._booster = folder, booster
        return folder

    @classmethod
    def load(cls, folder: str | Path, version: str | None = None) -> ModelBundle:
        folder = Path(folder)
        try:
            data = json.loads((folder / BUNDLE_FILE).read_text())
        except FileNotFoundError:
            raise BundleError(f"{folder} is not a model bundle: {BUNDLE_FILE} is missing") from None
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{folder}: bundle format {data.get('format')!r} is not {BUNDLE_FORMAT}")
        if not (folder / BOOSTER_FILE).exists():
            raise BundleError(f"{folder} is not a model bundle: {BOOSTER_FILE} is missing")
        fb = data["fallback"]
        task = str(data.get("task", "regression"))
        classifier = task != "regression"
        probability = data.get("probability")
        return cls(
            usecase=data["usecase"], model_name=data["model_name"], label=data["label"],
            feature_names=list(data["feature_names"]), feature_defaults=dict(data["feature_defaults"]),
            calibration=(PredictionSets if classifier else Calibration).from_dict(data["calibration"]),
            feature_ranges={k: (v[0], v[1]) for k, v in data["feature_ranges"].items()},
            fallback=LogisticFallback.from_dict(fb) if fb.get("kind") == "logistic"
            else LinearFallback(fb["intercept"], dict(fb["coefficients"])),
            feature_spec_hash=data["feature_spec_hash"], lineage=dict(data.get("lineage", {})),
            offset_feature=data.get("offset_feature"), task=task, classes=list(data.get("classes", [])),
            probability=ProbabilityCalibration.from_dict(probability) if probability else None,
            version=version, path=folder,
        )
