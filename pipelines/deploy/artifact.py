"""The deployment artifact: one versioned, self-describing ZIP per model version, checked before any traffic.

    manifest.json          what the artifact is (use case, model, registry version, Triton name, runtime,
                           feature names and spec hash, calibration levels) and the sha256 and size of every
                           other member
    model/model.json       the bundle's XGBoost booster
    model/bundle.json      the bundle's metadata (calibration, fallback, feature-spec hash, lineage)
    triton/config.pbtxt    the Triton model config
    triton/model.py        the python-backend source (runtime ``python`` only; FIL needs none)
    golden.npz             ``inputs`` float32 [rows, n_features] and ``outputs`` float64 [rows]: the booster's
                           raw output (``inplace_predict``, without the bundle's offset), which is what Triton
                           returns, so a deployment can compare the live model against it

:func:`package` writes it atomically from a :class:`ModelBundle`; :func:`open_artifact` refuses a truncated,
corrupt, tampered, zip-slip or mismatched artifact (wrong feature spec, wrong width) before anything reads it;
:meth:`Artifact.install` puts it into a Triton model repository atomically and idempotently.

Depends only on the standard library, numpy and :mod:`pipelines.models.bundle`, so packaging and checking do not
pull in the Triton export code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.models.bundle import BOOSTER_FILE, BUNDLE_FILE, ModelBundle

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_KIND", "Artifact", "ArtifactError", "open_artifact", "package"]

ARTIFACT_FORMAT = 1
ARTIFACT_KIND = "atelier-model-artifact"
RUNTIMES = ("python", "fil")
GOLDEN_TOLERANCE = 1e-6

MANIFEST = "manifest.json"
MODEL_JSON = f"model/{BOOSTER_FILE}"
BUNDLE_JSON = f"model/{BUNDLE_FILE}"
CONFIG_PBTXT = "triton/config.pbtxt"
MODEL_PY = "triton/model.py"
GOLDEN = "golden.npz"

# Caps on what is read into memory: a manifest is a few KB, a booster tens of MB.
MAX_MANIFEST_BYTES = 1 << 20
MAX_TOTAL_BYTES = 4 << 30
MAX_MEMBERS = 64

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """An artifact cannot be built or must not be deployed; the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------------------ helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_triton_name(name: object, where: str) -> str:
    """Triton names become folder names: no separators, no dot-only names, nothing a path could escape with."""
    if not isinstance(name, str) or name in (".", "..") or not _NAME.match(name):
        raise ArtifactError(f"{where}: triton_name {name!r} is not a safe Triton model name "
                            f"(letters, digits, '_', '.', '-'; starts with a letter, digit or '_'; at most 128)")
    return name


def _unsafe_member(name: str) -> str | None:
    """Why ``name`` could escape the extraction folder or be ambiguous (None when it is safe)."""
    if not name:
        return "empty name"
    if "\\" in name:
        return "backslash in the name"
    if "\x00" in name or ":" in name:
        return "NUL or ':' in the name"
    if name.startswith("/"):
        return "absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "'..' component (zip-slip)"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' component"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _golden_npz(inputs: np.ndarray, outputs: np.ndarray) -> bytes:
    """``np.savez`` layout (``np.load`` reads it) with fixed member timestamps, so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key, array in (("inputs", inputs), ("outputs", outputs)):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def _fsync_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _file_sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


# ------------------------------------------------------------------------------------------------ package
def package(bundle: ModelBundle, out: Path, *, triton_name: str, config_pbtxt: str, model_py: str | None,
            golden_inputs: np.ndarray, runtime: str = "python", version: str | None = None) -> Path:
    """Write ``bundle`` as a deployment artifact at ``out`` (a temp file in the same folder, then renamed: a
    reader never sees a half-written artifact). ``version`` defaults to ``bundle.version``. Returns ``out``."""
    out = Path(out)
    where = f"packaging {out}"
    if bundle.path is None:
        raise ArtifactError(f"{where}: the bundle has no folder (bundle.path is None): save or load it first")
    _check_triton_name(triton_name, where)
    if runtime not in RUNTIMES:
        raise ArtifactError(f"{where}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "python" and not model_py:
        raise ArtifactError(f"{where}: runtime 'python' needs model_py (the python-backend model.py source)")
    if runtime == "fil" and model_py is not None:
        raise ArtifactError(f"{where}: runtime 'fil' takes no model_py (FIL runs model.json itself)")
    if not isinstance(config_pbtxt, str) or not config_pbtxt.strip():
        raise ArtifactError(f"{where}: config_pbtxt is empty")
    top_name = re.search(r'^name\s*:\s*"([^"]*)"', config_pbtxt, re.MULTILINE)
    if top_name and top_name.group(1) != triton_name:
        raise ArtifactError(f"{where}: config.pbtxt names the model {top_name.group(1)!r}, "
                            f"triton_name is {triton_name!r} (Triton refuses a mismatch)")
    version = version if version is not None else bundle.version
    if version is None or not str(version).strip():
        raise ArtifactError(f"{where}: no version (pass version= or register the bundle first)")
    version = str(version)

    names = list(bundle.feature_names)
    n = len(names)
    inputs = np.asarray(golden_inputs)
    if inputs.ndim != 2 or inputs.shape[1] != n or inputs.shape[0] < 1:
        raise ArtifactError(f"{where}: golden_inputs must be 2-D [rows >= 1, {n} features], got shape "
                            f"{tuple(inputs.shape)}")
    if not (np.issubdtype(inputs.dtype, np.number) or inputs.dtype == np.bool_):
        raise ArtifactError(f"{where}: golden_inputs must be numeric, got dtype {inputs.dtype}")
    with np.errstate(over="ignore"):
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if np.isinf(inputs).any():
        raise ArtifactError(f"{where}: golden_inputs has infinite values (after float32 conversion); "
                            f"only finite values and NaN (missing) are allowed")

    model_bytes = (bundle.path / BOOSTER_FILE).read_bytes()
    bundle_bytes = (bundle.path / BUNDLE_FILE).read_bytes()
    on_disk = json.loads(bundle_bytes)
    for key, expected in (("feature_names", names), ("feature_spec_hash", bundle.feature_spec_hash),
                          ("offset_feature", bundle.offset_feature)):
        if on_disk.get(key) != expected:
            raise ArtifactError(f"{where}: {bundle.path / BUNDLE_FILE} has {key} {on_disk.get(key)!r}, the bundle "
                                f"object {expected!r} (save the bundle again)")
    booster = bundle.booster
    if booster.num_features() != n:
        raise ArtifactError(f"{where}: the booster has {booster.num_features()} features, the bundle {n}")
    if bundle.task == "multiclass":
        raise ArtifactError(f"{where}: {bundle.model_name} is a multi-class model; serving multi-class models on "
                            "Triton is planned (regression and binary models deploy)")
    outputs = np.asarray(booster.inplace_predict(inputs, predict_type="margin"), dtype=np.float64).reshape(-1)
    if outputs.shape != (inputs.shape[0],):
        raise ArtifactError(f"{where}: the booster returned {outputs.size} outputs for {inputs.shape[0]} rows "
                            f"(a multi-output model cannot be deployed as one output)")

    members: list[tuple[str, bytes]] = [(MODEL_JSON, model_bytes), (BUNDLE_JSON, bundle_bytes),
                                        (CONFIG_PBTXT, config_pbtxt.encode())]
    if model_py is not None:
        members.append((MODEL_PY, model_py.encode()))
    members.append((GOLDEN, _golden_npz(inputs, outputs)))

    created = datetime.now(UTC).replace(microsecond=0)
    manifest = {
        "format": ARTIFACT_FORMAT, "kind": ARTIFACT_KIND, "usecase": bundle.usecase,
        "model_name": bundle.model_name, "version": version, "triton_name": triton_name, "runtime": runtime,
        "feature_names": names, "n_features": n, "feature_spec_hash": bundle.feature_spec_hash,
        "offset_feature": bundle.offset_feature,
        "calibration_levels": [float(x) for x in bundle.calibration.levels],
        "created_at": created.isoformat(),
        "golden": {"rows": int(inputs.shape[0]), "tolerance": GOLDEN_TOLERANCE, "output": "raw"},
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in members},
    }
    stamp = created.timetuple()[:6]

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in [(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode()), *members]:
                    info = zipfile.ZipInfo(name, date_time=stamp)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------ artifact
@dataclass(frozen=True)
class Artifact:
    """A checked artifact (from :func:`open_artifact`): its members, re-verified on every read."""

    path: Path
    manifest: dict[str, Any]

    @property
    def triton_name(self) -> str:
        return self.manifest["triton_name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def n_features(self) -> int:
        return self.manifest["n_features"]

    @property
    def feature_spec_hash(self) -> str:
        return self.manifest["feature_spec_hash"]

    @property
    def sha256(self) -> str:
        """Checksum of the whole ZIP: what a deployment record pins."""
        digest = _file_sha256(self.path)
        if digest is None:
            raise ArtifactError(f"{self.path}: the artifact file is gone")
        return digest

    def read(self, name: str) -> bytes:
        """A member's bytes, checked against the manifest again (the file may have changed since it was opened)."""
        if name != MANIFEST and name not in self.manifest["files"]:
            raise ArtifactError(f"{self.path}: no member {name!r} in the manifest")
        try:
            with zipfile.ZipFile(self.path) as zf:
                data = zf.read(name)
        except (OSError, zipfile.BadZipFile, KeyError, zlib.error, EOFError) as e:
            raise ArtifactError(f"{self.path}: cannot read member {name}: {e}") from None
        if name != MANIFEST:
            expected = self.manifest["files"][name]["sha256"]
            if _sha256(data) != expected:
                raise ArtifactError(f"{self.path}: {name} changed since the artifact was opened: sha256 "
                                    f"expected {expected}, actual {_sha256(data)}")
        return data

    def golden(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs float32 [rows, n_features], outputs float64 [rows])``: raw booster output, no offset."""
        return _load_golden(self.path, self.read(GOLDEN), self.manifest)

    def check_outputs(self, outputs: np.ndarray) -> None:
        """Refuse a runtime whose raw outputs for the golden inputs differ from the golden outputs by more than
        the manifest's tolerance (relative to max(1, |golden|))."""
        _, expected = self.golden()
        actual = np.asarray(outputs, dtype=np.float64).reshape(-1)
        if actual.shape != expected.shape:
            raise ArtifactError(f"{self.path}: {actual.size} outputs for {expected.size} golden rows")
        tolerance = float(self.manifest["golden"]["tolerance"])
        error = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
        bad = ~(error <= tolerance)  # NaN counts as a difference
        if bad.any():
            row = int(np.argmax(np.where(bad, np.nan_to_num(error, nan=np.inf), -1.0)))
            raise ArtifactError(f"{self.path}: golden row {row}: output {actual[row]!r}, expected {expected[row]!r} "
                                f"(tolerance {tolerance:g}): the runtime does not compute what was packaged")

    def _version_files(self) -> dict[str, str]:
        """Version-folder file name -> member name."""
        files = {BOOSTER_FILE: MODEL_JSON, BUNDLE_FILE: BUNDLE_JSON}
        if self.runtime == "python":
            files["model.py"] = MODEL_PY
        return files

    def _installed(self, folder: Path, files: Mapping[str, str]) -> bool:
        if not folder.is_dir() or folder.is_symlink():
            return False
        present = {p.name for p in folder.iterdir()} - {"__pycache__"}  # Triton's python stub compiles model.py
        if present != set(files):
            return False
        return all(_file_sha256(folder / f) == self.manifest["files"][m]["sha256"] for f, m in files.items())

    def install(self, repository: Path, version_folder: str = "1") -> Path:
        """Install as ``<repository>/<triton_name>/{config.pbtxt, <version_folder>/...}``: the version folder
        built in a hidden sibling and renamed into place, config.pbtxt replaced atomically. Identical content
        already installed is left untouched (checksums compared). Returns the version folder."""
        if not isinstance(version_folder, str) or not version_folder.isdigit() or int(version_folder) < 1:
            raise ArtifactError(f"{self.path}: Triton version folder {version_folder!r} must be a positive integer")
        name = _check_triton_name(self.triton_name, str(self.path))
        model_dir = Path(repository) / name
        final = model_dir / version_folder
        model_dir.mkdir(parents=True, exist_ok=True)
        files = self._version_files()

        if not self._installed(final, files):
            tmp = Path(tempfile.mkdtemp(prefix=f".{version_folder}.tmp-", dir=model_dir))
            try:
                for file_name, member in files.items():
                    _fsync_write(tmp / file_name, self.read(member))
                os.chmod(tmp, 0o755)
                if final.exists() or final.is_symlink():
                    old = model_dir / f".{version_folder}.old-{secrets.token_hex(4)}"
                    os.replace(final, old)
                    try:
                        os.replace(tmp, final)
                    except BaseException:
                        os.replace(old, final)
                        raise
                    if old.is_dir() and not old.is_symlink():
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        old.unlink(missing_ok=True)
                else:
                    os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)

        config = model_dir / "config.pbtxt"
        if _file_sha256(config) != self.manifest["files"][CONFIG_PBTXT]["sha256"]:
            data = self.read(CONFIG_PBTXT)
            fd, tmp_name = tempfile.mkstemp(prefix=".config.pbtxt.", suffix=".tmp", dir=model_dir)
            os.close(fd)
            try:
                _fsync_write(Path(tmp_name), data)
                os.replace(tmp_name, config)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return final

    def bundle(self, dest: Path) -> ModelBundle:
        """Extract ``model/`` into ``dest`` and load it as the registry version the artifact was built from."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for file_name, member in ((BOOSTER_FILE, MODEL_JSON), (BUNDLE_FILE, BUNDLE_JSON)):
            data = self.read(member)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".tmp", dir=dest)
            os.close(fd)
            try:
                _fsync_write(Path(tmp_name), data)
                os.replace(tmp_name, dest / file_name)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return ModelBundle.load(dest, version=self.version)


# ------------------------------------------------------------------------------------------------ open
def _load_golden(path: Path, data: bytes, manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            inputs, outputs = npz["inputs"], npz["outputs"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path}: {GOLDEN} does not load as inputs/outputs arrays: {e}") from None
    rows, n = manifest["golden"]["rows"], manifest["n_features"]
    if inputs.dtype != np.float32 or inputs.shape != (rows, n):
        raise ArtifactError(f"{path}: {GOLDEN} inputs are {inputs.dtype} {tuple(inputs.shape)}, expected float32 "
                            f"({rows}, {n})")
    if outputs.dtype != np.float64 or outputs.shape != (rows,):
        raise ArtifactError(f"{path}: {GOLDEN} outputs are {outputs.dtype} {tuple(outputs.shape)}, expected "
                            f"float64 ({rows},)")
    return inputs, outputs


def _check_manifest(path: Path, manifest: object) -> dict[str, Any]:
    """Kind and format first (an unknown format may have any other shape), then every key's type."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: {MANIFEST} is not a JSON object")
    if manifest.get("kind") != ARTIFACT_KIND:
        raise ArtifactError(f"{path}: {MANIFEST} kind is {manifest.get('kind')!r}, not {ARTIFACT_KIND!r}: not an "
                            f"Atelier model artifact")
    if manifest.get("format") != ARTIFACT_FORMAT or not _is_int(manifest.get("format")):
        raise ArtifactError(f"{path}: artifact format {manifest.get('format')!r} is not supported (this code "
                            f"reads format {ARTIFACT_FORMAT})")

    def bad(key: str, what: str) -> ArtifactError:
        value = manifest.get(key, "<missing>")
        return ArtifactError(f"{path}: {MANIFEST} {key} must be {what}, got {value!r}")

    for key in ("usecase", "model_name", "version", "feature_spec_hash", "created_at"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise bad(key, "a non-empty string")
    _check_triton_name(manifest.get("triton_name"), f"{path}: {MANIFEST}")
    if manifest.get("runtime") not in RUNTIMES:
        raise bad("runtime", f"one of {', '.join(RUNTIMES)}")
    names = manifest.get("feature_names")
    if not isinstance(names, list) or not names or not all(isinstance(f, str) and f for f in names) \
            or len(set(names)) != len(names):
        raise bad("feature_names", "a non-empty list of distinct feature names")
    if not _is_int(manifest.get("n_features")) or manifest["n_features"] != len(names):
        raise bad("n_features", f"the number of feature_names ({len(names)})")
    offset = manifest.get("offset_feature")
    if offset is not None and offset not in names:
        raise bad("offset_feature", "null or one of feature_names")
    levels = manifest.get("calibration_levels")
    if not isinstance(levels, list) or not all(_is_number(v) and 0 < v < 1 for v in levels):
        raise bad("calibration_levels", "a list of levels in (0, 1)")
    try:
        datetime.fromisoformat(manifest["created_at"])
    except ValueError:
        raise bad("created_at", "an ISO timestamp") from None
    golden = manifest.get("golden")
    if not isinstance(golden, dict) or not _is_int(golden.get("rows")) or golden["rows"] < 1 \
            or not _is_number(golden.get("tolerance")) or golden["tolerance"] < 0 or golden.get("output") != "raw":
        raise bad("golden", '{"rows": int >= 1, "tolerance": number >= 0, "output": "raw"}')
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("files", "an object of path -> {sha256, bytes}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not _SHA256.match(entry["sha256"]) or not _is_int(entry.get("bytes")) or entry["bytes"] < 0:
            raise ArtifactError(f"{path}: {MANIFEST} files[{name!r}] must be {{\"sha256\": 64 hex digits, "
                                f"\"bytes\": int >= 0}}, got {entry!r}")
    if MANIFEST in files:
        raise ArtifactError(f"{path}: {MANIFEST} lists itself in files")
    required = [MODEL_JSON, BUNDLE_JSON, CONFIG_PBTXT, GOLDEN] + ([MODEL_PY] if manifest["runtime"] == "python" else [])
    for name in required:
        if name not in files:
            raise ArtifactError(f"{path}: {MANIFEST} does not list {name} (required for runtime "
                                f"{manifest['runtime']!r})")
    if manifest["runtime"] == "fil" and MODEL_PY in files:
        raise ArtifactError(f"{path}: runtime 'fil' artifact carries {MODEL_PY}")
    return manifest


def open_artifact(path: Path, *, expected_feature_spec_hash: str | None = None,
                  expected_n_features: int | None = None) -> Artifact:
    """Check an artifact completely and return it; raise :class:`ArtifactError` saying what is wrong.

    Checks, in order: a readable ZIP; safe, unique member names (no zip-slip); every member's CRC; the manifest
    (kind, format, keys and types); the members are exactly the manifest's files, each with its size and
    sha256; golden.npz shapes; bundle.json agrees with the manifest; then the caller's expectations.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: the artifact does not exist")
    if not path.is_file():
        raise ArtifactError(f"{path}: the artifact is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ArtifactError(f"{path}: not a ZIP file or truncated ({e})") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the artifact: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArtifactError(f"{path}: {len(infos)} members, more than an artifact has ({MAX_MEMBERS})")
        seen: set[str] = set()
        for info in infos:
            why = _unsafe_member(info.filename)
            if why:
                raise ArtifactError(f"{path}: unsafe member name {info.filename!r}: {why}")
            if info.filename in seen:
                raise ArtifactError(f"{path}: duplicate member {info.filename!r}")
            seen.add(info.filename)
            if info.flag_bits & 0x1:
                raise ArtifactError(f"{path}: member {info.filename!r} is encrypted")
        if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES:
            raise ArtifactError(f"{path}: members add up to more than {MAX_TOTAL_BYTES} bytes")
        if MANIFEST not in seen:
            raise ArtifactError(f"{path}: {MANIFEST} is missing: not an Atelier model artifact")
        if zf.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")

        # One pass over every member: reading to the end checks its CRC (what ZipFile.testzip does, but naming
        # the member whatever the failure) and gives its sha256.
        digests: dict[str, str] = {}
        sizes: dict[str, int] = {}
        contents: dict[str, bytes] = {}
        keep = {MANIFEST, BUNDLE_JSON, GOLDEN}
        for info in infos:
            h, size, chunks = hashlib.sha256(), 0, []
            try:
                with zf.open(info) as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        if info.filename in keep:
                            chunks.append(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
                raise ArtifactError(f"{path}: member {info.filename} is corrupt (CRC / compressed data): {e}") \
                    from None
            digests[info.filename], sizes[info.filename] = h.hexdigest(), size
            if info.filename in keep:
                contents[info.filename] = b"".join(chunks)

    try:
        raw = json.loads(contents[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON: {e}") from None
    manifest = _check_manifest(path, raw)
    files: dict[str, dict[str, Any]] = manifest["files"]

    missing = sorted(set(files) - seen)
    if missing:
        raise ArtifactError(f"{path}: missing member(s) listed in the manifest: {', '.join(missing)}")
    unlisted = sorted(seen - set(files) - {MANIFEST})
    if unlisted:
        raise ArtifactError(f"{path}: member(s) not listed in the manifest: {', '.join(unlisted)}")
    for name, entry in sorted(files.items()):
        if sizes[name] != entry["bytes"]:
            raise ArtifactError(f"{path}: {name} has {sizes[name]} bytes, the manifest says {entry['bytes']}")
        if digests[name] != entry["sha256"]:
            raise ArtifactError(f"{path}: {name} checksum mismatch: sha256 expected {entry['sha256']}, "
                                f"actual {digests[name]}")

    _load_golden(path, contents[GOLDEN], manifest)
    try:
        bundle_json = json.loads(contents[BUNDLE_JSON])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: {BUNDLE_JSON} is not valid JSON: {e}") from None
    if not isinstance(bundle_json, dict):
        raise ArtifactError(f"{path}: {BUNDLE_JSON} is not a JSON object")
    for key in ("feature_spec_hash", "feature_names", "offset_feature"):
        if bundle_json.get(key) != manifest[key]:
            raise ArtifactError(f"{path}: {BUNDLE_JSON} {key} {bundle_json.get(key)!r} differs from the "
                                f"manifest's {manifest[key]!r}")

    if expected_feature_spec_hash is not None and manifest["feature_spec_hash"] != expected_feature_spec_hash:
        raise ArtifactError(
            f"{path}: feature_spec_hash mismatch: artifact {manifest['feature_spec_hash']}, expected "
            f"{expected_feature_spec_hash}: the artifact was trained with another feature spec than the one "
            f"serving use case {manifest['usecase']} has now")
    if expected_n_features is not None and manifest["n_features"] != expected_n_features:
        raise ArtifactError(f"{path}: n_features mismatch: the artifact's model takes {manifest['n_features']} "
                            f"features, expected {expected_n_features}")
    return Artifact(path, manifest)
