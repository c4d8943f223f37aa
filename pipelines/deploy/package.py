"""From a registered version to a checked model on Triton: package, verify, place, load beside, golden check.

* :func:`package_version` builds the version's artifact (:mod:`pipelines.deploy.artifact`) once: the bundle, the
  Triton config and model source of the runtime, and a golden set of real holdout rows of the version's own
  training set with the booster's offline outputs. It is kept under ``<artifacts>/<model>/`` and logged to the
  version's MLflow run (``atelier/deploy/``) with its checksum as a version tag, so a re-run reuses it.
* :func:`place_and_load` re-opens the artifact (checksums, format, and its feature-spec hash against the serving
  use case's spec now), installs it as its own Triton model (``<model>.v<version>``) and loads it by model
  control: the version serving beside it is never unloaded or reloaded.
* :func:`golden_check` asks the loaded model for the golden rows: equal within the manifest's 1e-6, or refused.
* :func:`retire` unloads a version no route uses any more and removes it from the repository (so a Triton
  restart does not load it again).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.deploy.artifact import Artifact, ArtifactError, open_artifact, package
from pipelines.deploy.triton import (
    MODEL_SOURCE,
    TritonControl,
    TritonControlError,
    fil_model_config,
    triton_name,
    triton_python_config,
)
from pipelines.models.bundle import ModelBundle, feature_spec_hash

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.usecases import UseCase

__all__ = ["ARTIFACT_TAG", "DeployRefused", "LoadedVersion", "golden_check", "golden_inputs", "package_version",
           "place_and_load", "retire", "serving_spec_hash"]

log = logging.getLogger("atelier.deploy")
ARTIFACT_TAG = "atelier.artifact"
ARTIFACT_MLFLOW_PATH = "atelier/deploy"


class DeployRefused(RuntimeError):
    """The candidate is refused before any traffic (corrupt artifact, spec mismatch, failed check); ``stage``
    names the step that refused it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class LoadedVersion:
    model: str
    version: str
    triton_name: str
    artifact: Path
    artifact_sha256: str


def serving_spec_hash(usecase: UseCase) -> str:
    """The feature-spec hash of the use case as it is now (what serving computes features with)."""
    return feature_spec_hash((usecase.path / "features.yaml").read_text())


def golden_inputs(settings: Settings, bundle: ModelBundle, rows: int) -> np.ndarray:
    """``rows`` real holdout rows of the version's training set (the first by row id: the same rows on every
    run), as the model's float32 matrix; the newest training set when the version's own is collected."""
    import pandas as pd
    import pyarrow.dataset as ds

    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake
    from pipelines.training.dataset import training_set_name
    from pipelines.usecases import get_usecase

    features = load_feature_set(get_usecase(bundle.usecase, settings.usecases_path))
    label = features.label
    table = training_set_name(bundle.usecase)
    lake = Lake.from_settings(settings)
    folder = Path(settings.lake_root) / table / "versions" / str(bundle.lineage.get("training_set_version", ""))
    if not bundle.lineage.get("training_set_version") or not folder.is_dir():
        folder = Path(lake.path(table))
    data = ds.dataset(str(folder), format="parquet", partitioning="hive")
    columns = [c for c in dict.fromkeys([*bundle.feature_names, *(label.keys if label else []),
                                         *([label.event_time] if label else [])]) if c in data.schema.names]
    missing = [f for f in bundle.feature_names if f not in columns]
    if missing:
        raise DeployRefused("golden", f"training set {folder} lacks the model's features {missing}")
    frame = data.to_table(columns=columns).to_pandas()
    holdout = (bundle.lineage.get("window") or {}).get("holdout_start")
    if holdout and label is not None and label.event_time in frame:
        times = pd.to_datetime(frame[label.event_time], utc=True)
        later = frame[times >= pd.Timestamp(holdout)]
        frame = later if len(later) else frame
    if label is not None and label.keys and label.keys[0] in frame:
        frame = frame.sort_values(label.keys[0], kind="stable")
    frame = frame.head(rows)
    if frame.empty:
        raise DeployRefused("golden", f"training set {folder} has no rows for the golden check")
    return bundle.matrix(frame)


def _artifact_file(settings: Settings, model: str, version: str, runtime: str) -> Path:
    return settings.artifacts_path / model / f"{triton_name(model, version)}-{runtime}.zip"


def package_version(settings: Settings, model: str, version: str, *, runtime: str | None = None,
                    model_source: str | None = None, rebuild: bool = False) -> Artifact:
    """The version's artifact: reused when already built (same bundle), else built, kept and logged to MLflow.

    ``model_source`` replaces the python backend's ``model.py`` (a custom runtime; tests use it to make a
    deliberately slow version)."""
    from pipelines.models.registry import client, load_bundle, mlflow_errors, resolve_version

    runtime = runtime or settings.deploy.runtime
    bundle = load_bundle(settings, model, version=version)
    name = triton_name(model, version)
    out = _artifact_file(settings, model, version, runtime)
    source = model_source if model_source is not None else MODEL_SOURCE.read_text()
    if out.exists() and not rebuild:
        try:
            existing = open_artifact(out)
            same = (existing.read("model/model.json") == (bundle.path / "model.json").read_bytes()  # type: ignore[operator]
                    and (runtime == "fil" or existing.read("triton/model.py").decode() == source))
            if same:
                return existing
        except ArtifactError as exc:
            log.warning("rebuilding %s: %s", out, exc)
    config = (triton_python_config(name, len(bundle.feature_names)) if runtime == "python"
              else fil_model_config(name, len(bundle.feature_names)))
    out.parent.mkdir(parents=True, exist_ok=True)
    package(bundle, out, triton_name=name, config_pbtxt=config, model_py=source if runtime == "python" else None,
            golden_inputs=golden_inputs(settings, bundle, settings.deploy.golden_rows), runtime=runtime,
            version=str(version))
    artifact = open_artifact(out)
    ref = resolve_version(settings, model, version=version)
    with mlflow_errors(settings):
        c = client(settings)
        c.log_artifact(ref.run_id, str(out), artifact_path=ARTIFACT_MLFLOW_PATH)
        c.set_model_version_tag(model, str(version), ARTIFACT_TAG, json.dumps(
            {"file": f"{ARTIFACT_MLFLOW_PATH}/{out.name}", "sha256": artifact.sha256, "runtime": runtime,
             "format": artifact.manifest["format"]}))
    log.info("packaged %s v%s: %s (sha256 %s)", model, version, out, artifact.sha256[:12])
    return artifact


def place_and_load(settings: Settings, usecase: UseCase, artifact_path: Path, *,
                   control: TritonControl | None = None) -> LoadedVersion:
    """Verify the artifact against the serving use case, install it and load it beside what serves."""
    try:
        artifact = open_artifact(artifact_path, expected_feature_spec_hash=serving_spec_hash(usecase))
    except ArtifactError as exc:
        raise DeployRefused("verify", str(exc)) from None
    if artifact.manifest["usecase"] != usecase.name:
        raise DeployRefused("verify", f"{artifact_path}: the artifact is for use case "
                                      f"'{artifact.manifest['usecase']}', not '{usecase.name}'")
    try:
        artifact.install(settings.triton_model_repository, version_folder=artifact.version)
    except (ArtifactError, OSError) as exc:
        raise DeployRefused("place", f"cannot install {artifact_path} into {settings.triton_model_repository}: "
                                     f"{exc}") from None
    own = control is None
    control = control or TritonControl(settings.triton.http_url)
    try:
        control.load(artifact.triton_name, artifact.version)
    except TritonControlError as exc:
        _remove_folder(settings, artifact.triton_name)
        raise DeployRefused("load", str(exc)) from None
    finally:
        if own:
            control.close()
    return LoadedVersion(artifact.manifest["model_name"], artifact.version, artifact.triton_name, artifact.path,
                         artifact.sha256)


def golden_check(settings: Settings, artifact_path: Path, *, control: TritonControl | None = None) -> dict[str, Any]:
    """The loaded model's answers for the golden rows against the artifact's offline outputs (1e-6)."""
    artifact = open_artifact(artifact_path)
    inputs, expected = artifact.golden()
    own = control is None
    control = control or TritonControl(settings.triton.http_url)
    try:
        if not control.ready(artifact.triton_name, artifact.version):
            raise DeployRefused("readiness", f"{artifact.triton_name} version {artifact.version} is not ready on "
                                             f"Triton at {settings.triton.http_url}")
        try:
            served = control.infer(artifact.triton_name, artifact.version, inputs)
        except TritonControlError as exc:
            raise DeployRefused("golden", str(exc)) from None
    finally:
        if own:
            control.close()
    diff = float(np.max(np.abs(served - expected))) if len(expected) else 0.0
    try:
        artifact.check_outputs(served)
    except ArtifactError as exc:
        raise DeployRefused("golden", f"golden check failed: {exc}") from None
    return {"rows": int(len(expected)), "max_abs_diff": diff, "tolerance": artifact.manifest["golden"]["tolerance"]}


def _remove_folder(settings: Settings, name: str) -> None:
    folder = settings.triton_model_repository / name
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


def retire(settings: Settings, model: str, version: str, *, control: TritonControl | None = None) -> None:
    """Unload a version no route uses and remove its Triton model folder (idempotent)."""
    name = triton_name(model, version)
    own = control is None
    control = control or TritonControl(settings.triton.http_url)
    try:
        control.unload(name)
    except TritonControlError as exc:
        log.warning("unloading %s: %s", name, exc)
    finally:
        if own:
            control.close()
    _remove_folder(settings, name)
