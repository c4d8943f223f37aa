"""Export a model bundle to a Triton model repository, as a registered version.

Two flavours of the same booster, same tensor names (``input__0`` FP32 [batch, n] -> ``output__0`` FP32
[batch, 1]), so the prediction API does not care which one answers:

* ``python`` (this machine, ``atelier services``' Triton): a python-backend ``model.py``
  (:mod:`pipelines.deploy.xgboost_model`) running the bundle's ``model.json`` with ``inplace_predict``, in the
  serving venv; dynamic batching merges concurrent requests into one call.
* ``fil`` (the cluster's Triton image, which ships NVIDIA's FIL backend): ``config.pbtxt`` with
  ``backend: "fil"`` and ``model_type: xgboost_json`` plus the same ``model.json``.

Both give the booster's raw output (the sum of its trees); a bundle with an ``offset_feature`` adds that
feature's value after (:meth:`ModelBundle.add_offset`, done by the API).

The Triton model name is the registered model's name and its version folder the registry version, so a
prediction names exactly the version (and so the calibration) it was computed with. The repository keeps the
two latest versions loaded (``version_policy``), so a new version can be loaded while the API still pins the
previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.deploy.repository import (
    TensorSpec,
    _atomic_write,
    _check_name,
    python_model_config,
    write_python_model,
)

if TYPE_CHECKING:
    from pipelines.config import Settings
    from pipelines.models.bundle import ModelBundle

__all__ = ["INPUT", "MAX_BATCH", "OUTPUT", "DeployedModel", "deploy_registered", "export_fil_model",
           "export_python_model", "fil_model_config", "load_on_triton", "triton_python_config"]

INPUT, OUTPUT = "input__0", "output__0"
MAX_BATCH = 4096
VERSION_POLICY = "latest { num_versions: 2 }"
MODEL_SOURCE = Path(__file__).parent / "xgboost_model.py"


@dataclass(frozen=True)
class DeployedModel:
    name: str
    version: int
    n_features: int
    folder: Path


def _version(bundle: ModelBundle, version: int | str | None) -> int:
    v = version if version is not None else bundle.version
    if v is None or not str(v).isdigit() or int(v) < 1:
        raise ValueError(f"a Triton version must be the registry's version number (a positive integer), got {v!r}")
    return int(v)


def triton_python_config(name: str, n_features: int) -> str:
    """``config.pbtxt`` of the python-backend flavour (dynamic batching, two versions live)."""
    return python_model_config(
        name, inputs=[TensorSpec(INPUT, "FP32", [n_features])], outputs=[TensorSpec(OUTPUT, "FP32", [1])],
        max_batch_size=MAX_BATCH, dynamic_batching=True, version_policy=VERSION_POLICY,
    )


def fil_model_config(name: str, n_features: int, max_batch_size: int = MAX_BATCH) -> str:
    """``config.pbtxt`` for Triton's FIL backend (the cluster image): an XGBoost JSON regressor on CPU."""
    _check_name(name)
    return f'''name: "{name}"
backend: "fil"
max_batch_size: {max_batch_size}
version_policy: {{ {VERSION_POLICY} }}
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    dims: [ {n_features} ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
instance_group [{{ kind: KIND_CPU }}]
parameters [
  {{
    key: "model_type"
    value: {{ string_value: "xgboost_json" }}
  }},
  {{
    key: "is_classifier"
    value: {{ string_value: "false" }}
  }},
  {{
    key: "storage_type"
    value: {{ string_value: "AUTO" }}
  }}
]
dynamic_batching {{ }}
'''


def export_python_model(bundle: ModelBundle, repository: Path, name: str | None = None,
                        version: int | str | None = None) -> DeployedModel:
    """Write the python-backend flavour of ``bundle`` as ``<repository>/<name>/<version>`` (atomic)."""
    if bundle.path is None:
        raise ValueError("the bundle must be loaded from (or saved to) a folder")
    name = name or bundle.model_name
    v = _version(bundle, version)
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
    name = name or bundle.model_name
    _check_name(name)
    v = _version(bundle, version)
    n = len(bundle.feature_names)
    model_dir = Path(repository) / name
    final = model_dir / str(v)
    final.mkdir(parents=True, exist_ok=True)
    tmp = final / ".model.json.tmp"
    shutil.copyfile(bundle.path / "model.json", tmp)
    tmp.replace(final / "model.json")
    _atomic_write(model_dir / "config.pbtxt", fil_model_config(name, n).encode())
    return DeployedModel(name, v, n, final)


def load_on_triton(url: str, name: str, version: int, timeout_s: float = 60.0) -> None:
    """Load (or reload) ``name`` through Triton's repository API and wait until ``version`` is ready."""
    import time

    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
    try:
        client.load_model(name)
        deadline = time.monotonic() + timeout_s
        while not client.is_model_ready(name, str(version)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton at {url}: model {name} version {version} not ready after {timeout_s} s")
            time.sleep(0.1)
    finally:
        client.close()


def deploy_registered(settings: Settings, name: str, *, alias: str | None = None, version: str | int | None = None,
                      flavour: str = "python", repository: Path | None = None, load: bool = True) -> DeployedModel:
    """Export a registered version (by alias, default champion, or number) to the model repository and, for
    the python flavour on a reachable Triton, load it. The cluster's deployment writes ``flavour="fil"`` into
    the Triton image's repository volume (its server then loads it through the repository API)."""
    from pipelines.models.registry import load_bundle

    if flavour not in ("python", "fil"):
        raise ValueError(f"unknown Triton flavour {flavour!r} (python, fil)")
    bundle = load_bundle(settings, name, alias, version)
    export = export_fil_model if flavour == "fil" else export_python_model
    deployed = export(bundle, repository or settings.triton_model_repository, name=name)
    if load and flavour == "python":
        load_on_triton(settings.triton.http_url, name, deployed.version)
    return deployed
