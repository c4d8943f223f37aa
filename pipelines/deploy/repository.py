"""Write models into a Triton model repository (python backend), safely enough for a live server.

A Triton model repository is a folder of model folders::

    <repository>/<model name>/config.pbtxt
    <repository>/<model name>/<version>/model.py      (python backend; plus any artifact files beside it)

Atelier's server runs with ``--model-control-mode=explicit`` (see :mod:`pipelines.services.triton`): writing files
here changes nothing until the model is (re)loaded through the repository API, e.g. with tritonclient
``client.load_model(name)`` / ``client.unload_model(name)``. So the usual deployment is: write the new version with
:func:`write_python_model`, then load the model; Triton serves the versions its ``version_policy`` selects (by
default only the latest). Everything is written to a temporary sibling first and renamed into place, so a load never
sees a half-written version (replacing an existing version leaves it missing for the instant between two renames:
load after writing, not while writing).

Configs are tritonclient's ``ModelConfig`` protobuf messages written in text format (imported when one is
built: tritonclient's grpc package takes a second to import). The module runs in the platform venv, not in
Triton's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ModelRepositoryError",
    "TensorSpec",
    "model_config",
    "python_model_config",
    "write_python_model",
    "remove_model_version",
    "model_versions",
]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_DATA_TYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "STRING", "BF16",
}


class ModelRepositoryError(ValueError):
    """A model definition is invalid or cannot be written; the message names the model and the reason."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor. ``data_type`` is Triton's name without ``TYPE_`` (FP32, INT64, STRING...).

    ``dims`` exclude the batch dimension when the model has ``max_batch_size > 0``; -1 marks a variable size.
    """

    name: str
    data_type: str
    dims: Sequence[int]
    optional: bool = False

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.name):
            raise ModelRepositoryError(f"tensor name '{self.name}' must be letters, digits and underscores")
        dtype = self.data_type.upper().removeprefix("TYPE_")
        if dtype not in _DATA_TYPES:
            raise ModelRepositoryError(
                f"tensor '{self.name}': unknown data type '{self.data_type}' (known: {', '.join(sorted(_DATA_TYPES))})"
            )
        object.__setattr__(self, "data_type", dtype)
        if not self.dims or any(int(d) < -1 or int(d) == 0 for d in self.dims):
            raise ModelRepositoryError(f"tensor '{self.name}': dims {list(self.dims)} must be positive sizes or -1")


def model_config(
    name: str,
    backend: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int = 0,
    instance_count: int | None = 1,
    parameters: Mapping[str, str] | None = None,
    version_policy: str | None = None,
    dynamic_batching: bool = False,
) -> str:
    """The ``config.pbtxt`` text of a CPU model run by Triton's ``backend``: a ``ModelConfig`` message
    (tritonclient's ``model_config_pb2``, the schema Triton parses the file with) in protobuf text format.

    ``parameters`` become ``parameters { key: ... value { string_value: ... } }`` entries, readable in a
    python backend's ``model.py`` from ``json.loads(args["model_config"])["parameters"][key]["string_value"]``.
    ``version_policy`` is the policy body in text format, e.g. ``"all { }"``, ``"latest { num_versions: 2 }"``
    or ``"specific { versions: [1, 3] }"``; None keeps Triton's default (``latest { num_versions: 1 }``).
    ``instance_count`` None leaves the instance count to Triton.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    _check_name(name)
    if not outputs:
        raise ModelRepositoryError(f"model '{name}': needs at least one output")
    names = [t.name for t in [*inputs, *outputs]]
    if len(set(names)) != len(names):
        raise ModelRepositoryError(f"model '{name}': tensor names must be unique, got {names}")
    if max_batch_size < 0 or (instance_count is not None and instance_count < 1):
        raise ModelRepositoryError(f"model '{name}': max_batch_size must be >= 0 and instance_count >= 1")
    if dynamic_batching and max_batch_size == 0:
        raise ModelRepositoryError(f"model '{name}': dynamic batching needs max_batch_size > 0")
    if any(t.optional for t in outputs):
        raise ModelRepositoryError(f"model '{name}': only inputs can be optional")
    config = pb.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    if version_policy:
        try:
            text_format.Parse(version_policy, config.version_policy)
        except text_format.ParseError as exc:
            raise ModelRepositoryError(f"model '{name}': version_policy {version_policy!r}: {exc}") from None
    for t in inputs:
        config.input.add(name=t.name, data_type=pb.DataType.Value(f"TYPE_{t.data_type}"),
                         dims=[int(d) for d in t.dims], optional=t.optional)
    for t in outputs:
        config.output.add(name=t.name, data_type=pb.DataType.Value(f"TYPE_{t.data_type}"),
                          dims=[int(d) for d in t.dims])
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=instance_count or 0)
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return text_format.MessageToString(config)


def python_model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int = 0,
    instance_count: int = 1,
    parameters: Mapping[str, str] | None = None,
    version_policy: str | None = None,
    dynamic_batching: bool = False,
) -> str:
    """The ``config.pbtxt`` text of a CPU python-backend model (:func:`model_config` with ``backend="python"``)."""
    return model_config(name, "python", inputs, outputs, max_batch_size=max_batch_size,
                        instance_count=instance_count, parameters=parameters, version_policy=version_policy,
                        dynamic_batching=dynamic_batching)


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in {".", ".."}:
        raise ModelRepositoryError(
            f"model name '{name}' must be 1-128 letters, digits, '_', '-' or '.', not starting with '.' or '-'"
        )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_python_model(
    repository: Path,
    name: str,
    *,
    config_pbtxt: str,
    model_py: str,
    version: int = 1,
    files: Mapping[str, bytes | str | Path] | None = None,
    replace: bool = True,
) -> Path:
    """Write (or replace) version ``version`` of python-backend model ``name`` into ``repository``.

    ``files`` are extra artifacts placed beside ``model.py`` in the version folder (e.g. ``{"model.ubj": path}``);
    a value is the content (bytes/str) or a Path to copy. In ``model.py`` find them with
    ``Path(args["model_repository"]) / args["model_version"] / "model.ubj"``. The version folder is built under a
    temporary name and renamed into place; ``config.pbtxt`` is replaced atomically (it is shared by all versions).
    With ``replace=False`` an existing version is an error. Returns the version folder.
    """
    _check_name(name)
    if not isinstance(version, int) or version < 1:
        raise ModelRepositoryError(f"model '{name}': version must be a positive integer, got {version!r}")
    if not config_pbtxt.strip() or not model_py.strip():
        raise ModelRepositoryError(f"model '{name}': config_pbtxt and model_py must not be empty")
    if re.search(r'^\s*name\s*:\s*"([^"]*)"', config_pbtxt, re.M) and not re.search(
        rf'^\s*name\s*:\s*"{re.escape(name)}"', config_pbtxt, re.M
    ):
        raise ModelRepositoryError(f"model '{name}': config.pbtxt names another model")
    compile(model_py, f"{name}/{version}/model.py", "exec")  # a syntax error fails here, not at load time
    extra = dict(files or {})
    for rel in extra:
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts or rel_path.name == "model.py":
            raise ModelRepositoryError(f"model '{name}': extra file name '{rel}' must be a relative path, not model.py")

    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    if final.exists() and not replace:
        raise ModelRepositoryError(f"model '{name}' version {version} already exists in {repository}")
    # Triton only treats all-digit folder names as versions, so the temporary folder is never picked up.
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".v{version}-", suffix=".tmp"))
    try:
        (staging / "model.py").write_text(model_py)
        for rel, content in extra.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        os.chmod(staging, 0o755)
        if final.exists():
            old = model_dir / f".v{version}-old-{os.getpid()}.tmp"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _atomic_write(model_dir / "config.pbtxt", config_pbtxt.encode())
    return final


def model_versions(repository: Path, name: str) -> list[int]:
    """The version numbers present on disk for ``name`` (sorted); [] if the model folder does not exist."""
    _check_name(name)
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def remove_model_version(repository: Path, name: str, version: int) -> bool:
    """Delete one version folder (unload it from the server first, or reload after). True if it existed."""
    _check_name(name)
    target = Path(repository) / name / str(int(version))
    if not target.is_dir():
        return False
    shutil.rmtree(target)
    return True
