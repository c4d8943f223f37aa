"""The drift reference stored with a model at training time: what the model learnt from, and how it did.

    features.parquet      the training split's rows (features, the label, the request and key columns),
                          sampled down to ``max_rows`` (seeded), as serving would have given them: a feature
                          whose policy replaces a stale value by its default (``on_stale: use_default``) has
                          the default where its view's row was older than the SLA at the row's time; and the
                          model's prediction for each row (the served prediction distribution to expect)
    predictions.parquet   the holdout's rows with the model's predictions, intervals and errors

Both are logged to the version's MLflow run under ``atelier/monitoring/reference``; the drift monitor
downloads them once per version into ``<home>/monitoring/<usecase>/reference/<model>/v<version>/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import Settings

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.featurestore.spec import FeatureSet

__all__ = ["ARTIFACT_PATH", "as_served", "load_reference", "reference_dir", "write_reference"]

ARTIFACT_PATH = "atelier/monitoring/reference"
DEFAULT_MAX_ROWS = 200_000


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not c.endswith("__event_time")]]


def as_served(frame: pd.DataFrame, features: FeatureSet, time_column: str) -> pd.DataFrame:
    """``frame`` (point-in-time rows with their ``<view>__event_time``) with the serving policy applied: a
    ``use_default`` feature is its default where the view's row was older than the feature's SLA at
    ``time_column``. The training set keeps such a row's value up to the view's TTL; serving does not."""
    import pandas as pd

    out = frame.copy()
    at = pd.to_datetime(out[time_column], utc=True)
    for view in features.batch_views:
        stamp = f"{view.name}__event_time"
        if stamp not in out.columns:
            continue
        age = at - pd.to_datetime(out[stamp], utc=True)
        for f in view.features:
            if f.on_stale == "use_default" and f.sla is not None and f.name in out.columns:
                out.loc[(age > f.sla).to_numpy(), f.name] = f.default
    return out


def write_reference(folder: Path, train: pd.DataFrame, holdout: pd.DataFrame, prediction: np.ndarray,
                    label: str, intervals: dict[float, tuple[np.ndarray, np.ndarray]],
                    max_rows: int = DEFAULT_MAX_ROWS, seed: int = 7, *,
                    served: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                    predict: Callable[[pd.DataFrame], np.ndarray] | None = None) -> Path:
    """Write the two reference files into ``folder`` (replaced whole). Returns the folder.

    ``served`` turns training rows into the rows serving would have seen (:func:`as_served`); ``predict``
    gives the model's predictions for such rows (stored as ``prediction`` in ``features.parquet``)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sample = train if len(train) <= max_rows else train.sample(n=max_rows, random_state=seed).sort_index()
    if served is not None:
        sample = served(sample)
    sample = _plain(sample)
    if predict is not None:
        sample = sample.assign(prediction=predict(sample))
    sample.to_parquet(folder / "features.parquet", index=False)
    held = _plain(holdout).copy()
    actual = held[label].to_numpy(np.float64)
    held["prediction"] = prediction
    held["error"] = prediction - actual
    held["abs_error"] = np.abs(prediction - actual)
    for level, (lo, hi) in intervals.items():
        pct = f"{level * 100:g}".replace(".", "_")
        held[f"width_{pct}"] = hi - lo
        held[f"covered_{pct}"] = ((actual >= lo) & (actual <= hi)).astype(float)
    held.to_parquet(folder / "predictions.parquet", index=False)
    return folder


def reference_dir(settings: Settings, usecase: str, model: str, version: str) -> Path:
    return settings.home_path / "monitoring" / usecase / "reference" / model / f"v{version}"


def load_reference(settings: Settings, usecase: str, model: str, version: str) -> Path | None:
    """The version's reference folder on this machine (downloaded once), or None when the version was
    trained without one."""
    from pipelines.models.registry import client, mlflow_errors, resolve_version

    target = reference_dir(settings, usecase, model, version)
    if (target / "features.parquet").exists() and (target / "predictions.parquet").exists():
        return target
    with mlflow_errors(settings):
        ref = resolve_version(settings, model, version=version)
        c: Any = client(settings)
        names = {Path(a.path).name for a in c.list_artifacts(ref.run_id, ARTIFACT_PATH)}
        if not {"features.parquet", "predictions.parquet"} <= names:
            return None
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("features.parquet", "predictions.parquet"):
            c.download_artifacts(ref.run_id, f"{ARTIFACT_PATH}/{name}", str(staging))
    downloaded = staging / ARTIFACT_PATH
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    (downloaded if downloaded.is_dir() else staging).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target
