"""A model version on Triton: its repository files, and loading, checking and unloading it by model control.

Two flavours of the same booster, same tensor names (``input__0`` FP32 [batch, n] -> ``output__0`` FP32
[batch, 1]), so the prediction API does not care which one answers:

* ``python`` (this machine, ``atelier services``' Triton): a python-backend ``model.py``
  (:mod:`pipelines.deploy.xgboost_model`) running the bundle's ``model.json`` with ``inplace_predict``, in the
  serving venv; dynamic batching merges concurrent requests into one call.
* ``fil`` (the cluster's Triton image, which ships NVIDIA's FIL backend): ``config.pbtxt`` with
  ``backend: "fil"`` and ``model_type: xgboost_json`` plus the same ``model.json``.

Both give the booster's raw output (the sum of its trees); a bundle with an ``offset_feature`` adds that
feature's value after (:meth:`ModelBundle.add_offset`, done by the API).

Each registry version is its own Triton model, ``<name>.v<version>`` (:func:`triton_name`), with the
registry version as its only version folder. So loading a candidate never reloads or unloads the version
serving beside it (Triton reloads a model as a whole when its config changes), and unloading a rolled-back
version touches nothing else. A prediction names exactly the version (and so the calibration) it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from pipelines.deploy.repository import (
    TensorSpec,
    _atomic_write,
    _check_name,
    model_config,
    python_model_config,
    write_python_model,
)

if TYPE_CHECKING:
    from pipelines.models.bundle import ModelBundle

__all__ = ["INPUT", "MAX_BATCH", "OUTPUT", "DeployedModel", "TritonControl", "TritonControlError",
           "export_fil_model", "export_python_model", "fil_model_config", "triton_name", "triton_python_config"]

INPUT, OUTPUT = "input__0", "output__0"
MAX_BATCH = 4096
VERSION_POLICY = "latest { num_versions: 1 }"
MODEL_SOURCE = Path(__file__).parent / "xgboost_model.py"


@dataclass(frozen=True)
class DeployedModel:
    name: str
    version: int
    n_features: int
    folder: Path


def triton_name(model: str, version: str | int) -> str:
    """The Triton model serving one registry version."""
    _check_name(model)
    if not str(version).isdigit() or int(version) < 1:
        raise ValueError(f"a registry version is a positive integer, got {version!r}")
    return f"{model}.v{int(version)}"


def _version(bundle: ModelBundle, version: int | str | None) -> int:
    v = version if version is not None else bundle.version
    if v is None or not str(v).isdigit() or int(v) < 1:
        raise ValueError(f"a Triton version must be the registry's version number (a positive integer), got {v!r}")
    return int(v)


def triton_python_config(name: str, n_features: int) -> str:
    """``config.pbtxt`` of the python-backend flavour (dynamic batching)."""
    return python_model_config(
        name, inputs=[TensorSpec(INPUT, "FP32", [n_features])], outputs=[TensorSpec(OUTPUT, "FP32", [1])],
        max_batch_size=MAX_BATCH, dynamic_batching=True, version_policy=VERSION_POLICY,
    )


def fil_model_config(name: str, n_features: int, max_batch_size: int = MAX_BATCH) -> str:
    """``config.pbtxt`` for Triton's FIL backend (the cluster image): an XGBoost JSON regressor on CPU."""
    return model_config(
        name, "fil", inputs=[TensorSpec(INPUT, "FP32", [n_features])], outputs=[TensorSpec(OUTPUT, "FP32", [1])],
        max_batch_size=max_batch_size, instance_count=None, dynamic_batching=True, version_policy=VERSION_POLICY,
        parameters={"model_type": "xgboost_json", "is_classifier": "false", "storage_type": "AUTO"},
    )


def export_python_model(bundle: ModelBundle, repository: Path, name: str | None = None,
                        version: int | str | None = None) -> DeployedModel:
    """Write the python-backend flavour of ``bundle`` as ``<repository>/<name>/<version>`` (atomic); ``name``
    defaults to :func:`triton_name` of the bundle's model and version."""
    if bundle.path is None:
        raise ValueError("the bundle must be loaded from (or saved to) a folder")
    v = _version(bundle, version)
    name = name or triton_name(bundle.model_name, v)
    n = len(bundle.feature_names)
    source = MODEL_SOURCE.read_text()
    folder = write_python_model(Path(repository), name, version=v, config_pbtxt=triton_python_config(name, n),
                                model_py=source, files={"model.json": bundle.path / "model.json",
                                                        "bundle.json": bundle.path / "bundle.json"})
    return DeployedModel(name, v, n, folder)


def export_fil_model(bundle: ModelBundle, repository: Path, name: str | None = None,
                     version: int | str | None = None) -> DeployedModel:
    """Write the FIL flavour (for the cluster's Triton image) as ``<repository>/<name>/<version>/model.json``."""
    import shutil

    if bundle.path is None:
        raise ValueError("the bundle must be loaded from (or saved to) a folder")
    v = _version(bundle, version)
    name = name or triton_name(bundle.model_name, v)
    _check_name(name)
    n = len(bundle.feature_names)
    model_dir = Path(repository) / name
    final = model_dir / str(v)
    final.mkdir(parents=True, exist_ok=True)
    tmp = final / ".model.json.tmp"
    shutil.copyfile(bundle.path / "model.json", tmp)
    tmp.replace(final / "model.json")
    _atomic_write(model_dir / "config.pbtxt", fil_model_config(name, n).encode())
    return DeployedModel(name, v, n, final)


class TritonControlError(RuntimeError):
    """Triton refused or failed a model-control call (the message carries Triton's reason)."""


class TritonControl:
    """Triton's model-control API (explicit mode) and a plain inference call for checks, over HTTP."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        import tritonclient.http as httpclient

        self.url = url
        self._client = httpclient.InferenceServerClient(url, network_timeout=timeout_s,
                                                        connection_timeout=timeout_s)
        self.timeout_s = timeout_s

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise TritonControlError(f"Triton at {self.url}: {what}: {str(exc).splitlines()[0][:400]}") from None
        except Exception as exc:  # noqa: BLE001 - connection refused, reset, timeout
            raise TritonControlError(f"Triton at {self.url} unreachable ({what}): {type(exc).__name__}: "
                                     f"{str(exc)[:200]}") from None

    def load(self, name: str, version: str | int) -> None:
        """Load ``name`` and wait until ``version`` is ready. Other models are not touched."""
        from tenacity import Retrying, retry_if_not_result, stop_after_delay, wait_fixed

        def not_ready(_: object) -> NoReturn:
            raise TritonControlError(f"Triton at {self.url}: {name} version {version} not ready after "
                                     f"{self.timeout_s:.0f} s")

        self._call(f"load {name}", self._client.load_model, name)
        Retrying(stop=stop_after_delay(self.timeout_s), wait=wait_fixed(0.1), retry=retry_if_not_result(bool),
                 retry_error_callback=not_ready)(self.ready, name, version)

    def unload(self, name: str) -> None:
        self._call(f"unload {name}", self._client.unload_model, name)

    def ready(self, name: str, version: str | int) -> bool:
        try:
            return bool(self._client.is_model_ready(name, str(version)))
        except Exception:  # noqa: BLE001 - not ready, whatever the reason
            return False

    def loaded(self) -> dict[str, list[str]]:
        """Ready models -> their ready versions."""
        index = self._call("repository index", self._client.get_model_repository_index)
        out: dict[str, list[str]] = {}
        for entry in index:
            if entry.get("state") == "READY":
                out.setdefault(entry["name"], []).append(str(entry.get("version", "")))
        return out

    def infer(self, name: str, version: str | int, matrix: np.ndarray) -> np.ndarray:
        """The model's raw output for a float32 [rows, n_features] matrix (checks, not the hot path)."""
        import tritonclient.http as httpclient

        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        inp = httpclient.InferInput(INPUT, list(matrix.shape), "FP32")
        inp.set_data_from_numpy(matrix, binary_data=True)
        out = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]
        result = self._call(f"infer {name} v{version}", self._client.infer, name, [inp],
                            model_version=str(version), outputs=out)
        return np.asarray(result.as_numpy(OUTPUT), dtype=np.float64).reshape(-1)
