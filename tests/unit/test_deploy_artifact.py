"""The deployment artifact: round trip on a real small XGBoost bundle, and every refusal naming its problem."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.deploy.artifact import (
    ARTIFACT_FORMAT,
    ArtifactError,
    open_artifact,
    package,
)
from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle, feature_spec_hash

NAMES = ["a", "b", "c", "off"]
SPEC = feature_spec_hash("features: [a, b, c, off]\n")
CONFIG = 'name: "delay_model"\nbackend: "python"\nmax_batch_size: 64\n'
MODEL_PY = "class TritonPythonModel:\n    pass\n"


def _train_bundle(folder: Path, seed: int = 0, rounds: int = 8) -> ModelBundle:
    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(NAMES))).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 1] + rng.normal(size=300)
    booster = xgboost.train({"tree_method": "hist", "max_depth": 3, "nthread": 1, "seed": seed},
                            xgboost.DMatrix(x, y), rounds)
    calibration = Calibration.fit(y - booster.inplace_predict(x), [0.8, 0.9])
    bundle = ModelBundle("delays", "delay_model", "y", list(NAMES), dict.fromkeys(NAMES, 0.0), calibration,
                         {"a": (-3.0, 3.0)}, LinearFallback.fit({"a": x[:, 0]}, ["a"], y), SPEC,
                         lineage={"by": "test"}, offset_feature="off", version="7")
    bundle.save(folder, booster=booster)
    return bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    return _train_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    x = np.random.default_rng(1).normal(size=(25, len(NAMES))).astype(np.float32)
    x[3, 1] = np.nan  # missing values are allowed in golden rows
    return x


@pytest.fixture
def artifact_path(tmp_path, bundle, inputs) -> Path:
    return package(bundle, tmp_path / "art.zip", triton_name="delay_model", config_pbtxt=CONFIG,
                   model_py=MODEL_PY, golden_inputs=inputs)


def _rewrite(src: Path, dst: Path, *, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
             add: dict[str, bytes] | None = None) -> Path:
    """A copy of the ZIP with members replaced / dropped / added (valid CRCs: only the manifest can tell)."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename not in drop:
                zout.writestr(info, replace.get(info.filename, zin.read(info)))
        for name, data in (add or {}).items():
            zout.writestr(zipfile.ZipInfo(name), data)
    return dst


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json"))


def _refused(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(ArtifactError) as e:
        open_artifact(path, **kwargs)
    message = str(e.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------------------------- round trip
def test_round_trip_manifest_and_golden(artifact_path, bundle, inputs):
    art = open_artifact(artifact_path, expected_feature_spec_hash=SPEC, expected_n_features=4)
    m = art.manifest
    assert m["format"] == ARTIFACT_FORMAT and m["kind"] == "atelier-model-artifact"
    assert (m["usecase"], m["model_name"], m["version"], m["triton_name"], m["runtime"]) == \
        ("delays", "delay_model", "7", "delay_model", "python")
    assert m["feature_names"] == NAMES and m["n_features"] == 4 and m["feature_spec_hash"] == SPEC
    assert m["offset_feature"] == "off" and m["calibration_levels"] == [0.8, 0.9]
    assert m["golden"] == {"rows": 25, "tolerance": 1e-6, "output": "raw"}
    assert m["created_at"].endswith("+00:00")
    with zipfile.ZipFile(artifact_path) as zf:
        assert zf.namelist() == ["manifest.json", "model/model.json", "model/bundle.json", "triton/config.pbtxt",
                                 "triton/model.py", "golden.npz"]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert set(m["files"]) == {"model/model.json", "model/bundle.json", "triton/config.pbtxt", "triton/model.py",
                               "golden.npz"}
    assert art.read("model/model.json") == (bundle.path / "model.json").read_bytes()
    assert art.read("triton/config.pbtxt").decode() == CONFIG
    assert len(art.sha256) == 64

    golden_in, golden_out = art.golden()
    assert golden_in.dtype == np.float32 and golden_out.dtype == np.float64
    np.testing.assert_array_equal(golden_in, inputs)
    raw = bundle.booster.inplace_predict(inputs)
    np.testing.assert_allclose(golden_out, raw, rtol=0, atol=1e-6)
    # Raw output = what Triton returns: the bundle's prediction minus the offset feature.
    np.testing.assert_allclose(golden_out + inputs[:, 3], bundle.predict(inputs), atol=1e-5)
    art.check_outputs(raw.astype(np.float32).reshape(-1, 1))
    with pytest.raises(ArtifactError, match="golden row 2"):
        art.check_outputs(np.where(np.arange(25) == 2, raw + 0.1, raw))


def test_install_tree_is_idempotent(artifact_path, tmp_path):
    art = open_artifact(artifact_path)
    repo = tmp_path / "repo"
    folder = art.install(repo)
    assert folder == repo / "delay_model" / "1"
    assert sorted(p.name for p in (repo / "delay_model").iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.json", "model.py"]
    assert (repo / "delay_model" / "config.pbtxt").read_text() == CONFIG
    assert (folder / "model.py").read_text() == MODEL_PY
    assert (folder / "model.json").read_bytes() == art.read("model/model.json")
    assert oct(folder.stat().st_mode & 0o777) == "0o755"

    (folder / "__pycache__").mkdir()  # what Triton's python stub leaves: still the same install
    paths = [folder, repo / "delay_model", repo / "delay_model" / "config.pbtxt", *folder.iterdir()]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}
    assert art.install(repo) == folder
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths} == before


def test_install_replaces_different_content(artifact_path, tmp_path, bundle, inputs):
    repo = tmp_path / "repo"
    open_artifact(artifact_path).install(repo, "3")
    stale = repo / "delay_model" / "3" / "stale.txt"
    stale.write_text("left from another version")
    other_bundle = _train_bundle(tmp_path / "other", seed=5, rounds=4)
    other = package(other_bundle, tmp_path / "other.zip", triton_name="delay_model",
                    config_pbtxt=CONFIG + "# v2\n", model_py=MODEL_PY, golden_inputs=inputs)
    art = open_artifact(other)
    folder = art.install(repo, "3")
    assert not stale.exists()
    assert (folder / "model.json").read_bytes() == (other_bundle.path / "model.json").read_bytes()
    assert (repo / "delay_model" / "config.pbtxt").read_text().endswith("# v2\n")
    assert sorted(p.name for p in (repo / "delay_model").iterdir()) == ["3", "config.pbtxt"]  # no temp leftovers
    with pytest.raises(ArtifactError, match="version folder"):
        art.install(repo, "../2")


def test_fil_runtime_has_no_model_py(tmp_path, bundle, inputs):
    path = package(bundle, tmp_path / "fil.zip", triton_name="delay_model_fil", config_pbtxt='backend: "fil"\n',
                   model_py=None, golden_inputs=inputs, runtime="fil", version="12")
    art = open_artifact(path)
    assert art.manifest["runtime"] == "fil" and art.manifest["version"] == "12"
    assert "triton/model.py" not in art.manifest["files"]
    folder = art.install(tmp_path / "repo", "12")
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.json"]


def test_bundle_extracts_and_predicts_identically(artifact_path, tmp_path, bundle, inputs):
    loaded = open_artifact(artifact_path).bundle(tmp_path / "extracted")
    assert loaded.version == "7" and loaded.path == tmp_path / "extracted"
    assert loaded.feature_names == NAMES and loaded.feature_spec_hash == SPEC and loaded.offset_feature == "off"
    assert loaded.calibration == bundle.calibration and loaded.fallback == bundle.fallback
    np.testing.assert_array_equal(loaded.predict(inputs), bundle.predict(inputs))


# ----------------------------------------------------------------------------------------------- refusals
def test_refuses_missing_truncated_and_non_zip(artifact_path, tmp_path):
    _refused(tmp_path / "nope.zip", "does not exist")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(artifact_path.read_bytes()[: artifact_path.stat().st_size // 2])
    _refused(truncated, "not a ZIP file or truncated")
    text = tmp_path / "text.zip"
    text.write_text("hello")
    _refused(text, "not a ZIP file or truncated")


def test_refuses_corrupt_compressed_data(artifact_path, tmp_path):
    with zipfile.ZipFile(artifact_path) as zf:
        info = zf.getinfo("model/model.json")
    data = bytearray(artifact_path.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    _refused(corrupt, "model/model.json", "corrupt")


def test_refuses_tampered_member(artifact_path, tmp_path):
    with zipfile.ZipFile(artifact_path) as zf:
        original = bytearray(zf.read("model/model.json"))
    original[len(original) // 2] ^= 0x01
    tampered = _rewrite(artifact_path, tmp_path / "t.zip", replace={"model/model.json": bytes(original)})
    expected = _manifest(artifact_path)["files"]["model/model.json"]["sha256"]
    message = _refused(tampered, "model/model.json", "checksum mismatch", expected)
    assert "actual" in message


def test_refuses_missing_and_unlisted_members(artifact_path, tmp_path):
    _refused(_rewrite(artifact_path, tmp_path / "m.zip", drop=("triton/model.py",)), "missing", "triton/model.py")
    _refused(_rewrite(artifact_path, tmp_path / "x.zip", add={"extra.txt": b"x"}), "not listed", "extra.txt")
    _refused(_rewrite(artifact_path, tmp_path / "n.zip", drop=("manifest.json",)), "manifest.json is missing")


def test_refuses_unsafe_member_names(artifact_path, tmp_path):
    _refused(_rewrite(artifact_path, tmp_path / "slip.zip", add={"../evil": b"x"}), "'../evil'", "zip-slip")
    _refused(_rewrite(artifact_path, tmp_path / "abs.zip", add={"/etc/evil": b"x"}), "absolute path")
    _refused(_rewrite(artifact_path, tmp_path / "bs.zip", add={"model\\evil": b"x"}), "backslash")
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = _rewrite(artifact_path, tmp_path / "dup.zip", add={"golden.npz": b"x"})
    _refused(dup, "duplicate member 'golden.npz'")


def test_refuses_bad_manifest(artifact_path, tmp_path):
    m = _manifest(artifact_path)
    _refused(_rewrite(artifact_path, tmp_path / "f.zip", replace={"manifest.json": json.dumps({**m, "format": 2})
                                                                   .encode()}),
             "artifact format 2 is not supported")
    _refused(_rewrite(artifact_path, tmp_path / "k.zip", replace={"manifest.json": json.dumps({**m, "kind": "x"})
                                                                   .encode()}),
             "not an Atelier model artifact")
    _refused(_rewrite(artifact_path, tmp_path / "j.zip", replace={"manifest.json": b"{not json"}),
             "manifest.json is not valid JSON")
    _refused(_rewrite(artifact_path, tmp_path / "n.zip", replace={"manifest.json": json.dumps(
        {**m, "n_features": "4"}).encode()}), "n_features")
    no_files = {k: v for k, v in m.items() if k != "files"}
    _refused(_rewrite(artifact_path, tmp_path / "nf.zip", replace={"manifest.json": json.dumps(no_files).encode()}),
             "files must be")


def test_refuses_feature_spec_and_width_mismatch(artifact_path):
    other = feature_spec_hash("features: [a, b]\n")
    _refused(artifact_path, SPEC, other, "another feature spec than the one serving use case delays has now",
             expected_feature_spec_hash=other)
    _refused(artifact_path, "n_features mismatch", "4", "expected 5", expected_n_features=5)


def test_refuses_bundle_json_disagreeing_with_manifest(artifact_path, tmp_path):
    """A consistent-looking manifest over a bundle.json of another feature spec is refused by the hash it names."""
    with zipfile.ZipFile(artifact_path) as zf:
        data = json.loads(zf.read("model/bundle.json"))
    data["feature_spec_hash"] = "0" * 16
    new = json.dumps(data).encode()
    m = _manifest(artifact_path)
    import hashlib

    m["files"]["model/bundle.json"] = {"sha256": hashlib.sha256(new).hexdigest(), "bytes": len(new)}
    path = _rewrite(artifact_path, tmp_path / "b.zip",
                    replace={"model/bundle.json": new, "manifest.json": json.dumps(m).encode()})
    _refused(path, "model/bundle.json feature_spec_hash", "0" * 16, SPEC)


# ----------------------------------------------------------------------------------------------- package
@pytest.mark.parametrize("kwargs, fragment", [
    ({"triton_name": "../x"}, "not a safe Triton model name"),
    ({"triton_name": ".."}, "not a safe Triton model name"),
    ({"triton_name": "a/b"}, "not a safe Triton model name"),
    ({"golden_inputs": np.zeros((5, 3), np.float32)}, "golden_inputs must be 2-D"),
    ({"golden_inputs": np.zeros(4, np.float32)}, "golden_inputs must be 2-D"),
    ({"golden_inputs": np.zeros((0, 4), np.float32)}, "golden_inputs must be 2-D"),
    ({"golden_inputs": np.full((2, 4), np.inf)}, "infinite"),
    ({"model_py": None}, "needs model_py"),
    ({"runtime": "onnx"}, "runtime 'onnx'"),
    ({"config_pbtxt": 'name: "other"\n'}, "names the model 'other'"),
])
def test_package_validations_leave_nothing(tmp_path, bundle, inputs, kwargs, fragment):
    args = {"triton_name": "delay_model", "config_pbtxt": CONFIG, "model_py": MODEL_PY, "golden_inputs": inputs,
            **kwargs}
    out = tmp_path / "out" / "art.zip"
    out.parent.mkdir()
    with pytest.raises(ArtifactError, match=fragment) as e:
        package(bundle, out, **args)
    assert str(out) in str(e.value)
    assert os.listdir(out.parent) == []


def test_package_needs_a_saved_bundle(tmp_path, bundle, inputs):
    unsaved = ModelBundle("u", "m", "y", list(NAMES), {}, bundle.calibration, {}, bundle.fallback, SPEC)
    with pytest.raises(ArtifactError, match="bundle.path is None"):
        package(unsaved, tmp_path / "a.zip", triton_name="m", config_pbtxt=CONFIG, model_py=MODEL_PY,
                golden_inputs=inputs)


def test_failed_write_keeps_previous_artifact_and_no_temp(artifact_path, bundle, inputs, monkeypatch):
    before = artifact_path.read_bytes()
    original = zipfile.ZipFile.writestr

    def failing(self, info, data, *args, **kwargs):
        original(self, info, data, *args, **kwargs)
        name = info.filename if isinstance(info, zipfile.ZipInfo) else info
        if name == "triton/config.pbtxt":
            raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises(OSError, match="disk full"):
        package(bundle, artifact_path, triton_name="delay_model", config_pbtxt=CONFIG, model_py=MODEL_PY,
                golden_inputs=inputs)
    assert artifact_path.read_bytes() == before
    assert os.listdir(artifact_path.parent) == [artifact_path.name]
