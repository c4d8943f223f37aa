"""Triton Inference Server as Atelier runs it: installed from PyPI, python backend, under the Supervisor.

Everything here talks to a real tritonserver (started by the session's `triton_service` fixture, or by the test
itself on other ports) with the real tritonclient from the platform venv; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import load_settings
from pipelines.deploy.health import HEALTH_MODEL_NAME
from pipelines.deploy.repository import TensorSpec, model_versions, python_model_config, write_python_model
from pipelines.services import ServiceError, Supervisor, triton

pytestmark = pytest.mark.integration

ECHO_MODEL_PY = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = np.float32(float(config["parameters"]["scale"]["string_value"]))
        self.version = np.int64(int(args["model_version"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * self.scale).astype(np.float32)),
                pb_utils.Tensor("VERSION", np.array([self.version], dtype=np.int64)),
            ]))
        return responses
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(settings):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(settings.triton.http_url, network_timeout=30.0)


def _grpc(settings):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(settings.triton.grpc_url)


def _check_runtime(raw: bytes, settings) -> None:
    runtime = json.loads(raw)
    venv = triton.install_paths(settings).venv
    # The model must run in the serving venv (Debian's 3.11 + numpy<2), not the platform venv or bare /usr.
    assert runtime["prefix"] == str(venv)
    assert runtime["base_prefix"] == "/usr"
    assert runtime["python"].startswith("3.11.")
    assert runtime["numpy"].startswith("1."), runtime
    assert runtime["model"] == HEALTH_MODEL_NAME


def test_health_model_over_http(triton_service, settings):
    import tritonclient.http as httpclient

    client = _http(settings)
    values = np.array([1.0, 2.5, -3.0, 1e6], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(values.shape), "FP32")
    inp.set_data_from_numpy(values)
    result = client.infer(HEALTH_MODEL_NAME, [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.array([2.0, 3.5, -2.0, 1e6 + 1], dtype=np.float32))
    runtime = result.as_numpy("RUNTIME")
    assert runtime.shape == (1,)
    _check_runtime(runtime[0], settings)


def test_health_model_over_grpc(triton_service, settings):
    import tritonclient.grpc as grpcclient

    client = _grpc(settings)
    values = np.linspace(-50, 50, 10_001, dtype=np.float32)
    inp = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    inp.set_data_from_numpy(values)
    result = client.infer(HEALTH_MODEL_NAME, [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0"),
                                                             grpcclient.InferRequestedOutput("RUNTIME")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values + np.float32(1))
    _check_runtime(result.as_numpy("RUNTIME")[0], settings)


def test_server_metadata_health_and_metrics(triton_service, settings):
    http, grpc = _http(settings), _grpc(settings)
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert http.is_model_ready(HEALTH_MODEL_NAME) and grpc.is_model_ready(HEALTH_MODEL_NAME)

    meta = http.get_server_metadata()
    assert meta["name"] == "triton"
    assert tuple(int(p) for p in meta["version"].split(".")[:2]) >= (2, 40)
    assert "model_repository" in meta["extensions"]
    assert grpc.get_server_metadata().version == meta["version"]

    config = http.get_model_config(HEALTH_MODEL_NAME)
    assert config["backend"] == "python"
    assert [i["name"] for i in config["input"]] == ["INPUT0"]
    assert {o["name"] for o in config["output"]} == {"OUTPUT0", "RUNTIME"}
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert index[HEALTH_MODEL_NAME]["state"] == "READY"

    # Metrics come from their own port and count the inferences made above (and by the Supervisor's checks).
    import urllib.request

    with urllib.request.urlopen(f"http://{settings.triton.host}:{settings.triton.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    counts = [line for line in metrics.splitlines()
              if line.startswith("nv_inference_request_success{") and f'model="{HEALTH_MODEL_NAME}"' in line]
    assert counts, metrics[:2000]


def test_listens_on_loopback_only(triton_service, settings):
    wanted = {settings.triton.http_port, settings.triton.grpc_port, settings.triton.metrics_port}
    listening: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) in wanted:  # 0A = LISTEN
                listening.setdefault(int(port_hex, 16), set()).add(address)
    assert set(listening) == wanted, listening
    # 127.0.0.1 only; gRPC binds it as the IPv4-mapped IPv6 address ::ffff:127.0.0.1.
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert all(addresses <= loopback for addresses in listening.values()), listening


def test_shm_cleanup_keeps_regions_of_the_running_server(triton_service, settings):
    prefix = triton.shm_prefix(settings)
    in_use = set()
    for pid in _pids_mentioning(str(settings.triton_model_repository)):
        maps = Path(f"/proc/{pid}/maps").read_text()
        in_use.update(line.split()[-1] for line in maps.splitlines() if f"/dev/shm/{prefix}" in line)
    assert in_use, "the server and its stub should map regions named with our prefix"
    removed = triton.remove_stale_shm_regions(prefix, min_age_s=0)
    assert not in_use & {str(p) for p in removed}
    assert all(Path(p).exists() for p in in_use)
    assert _http(settings).is_model_ready(HEALTH_MODEL_NAME)


def test_supervisor_reports_running_and_install_is_a_noop(triton_service, settings):
    assert Supervisor(settings.run_dir).status(triton_service).state == "running"
    paths = triton.install_paths(settings)
    stamp_mtime = paths.stamp.stat().st_mtime_ns
    started = time.monotonic()
    triton.ensure_installed(settings)
    assert time.monotonic() - started < 2.0
    assert paths.stamp.stat().st_mtime_ns == stamp_mtime
    assert json.loads(paths.stamp.read_text())["constraints_sha256"] == triton._constraints_hash()


def test_load_new_model_versions_through_the_repository_api(triton_service, settings):
    """What deployment code does: write a version into the repository, load it, serve it, unload it."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = _http(settings)
    repository = settings.triton_model_repository
    name = "atelier_test_echo"
    shutil.rmtree(repository / name, ignore_errors=True)

    def config(scale: float) -> str:
        return python_model_config(
            name, inputs=[TensorSpec("X", "FP32", [-1])],
            outputs=[TensorSpec("Y", "FP32", [-1]), TensorSpec("VERSION", "INT64", [1])],
            parameters={"scale": str(scale)},
        )

    def infer() -> tuple[np.ndarray, int]:
        inp = httpclient.InferInput("X", [3], "FP32")
        inp.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
        result = client.infer(name, [inp])
        return result.as_numpy("Y"), int(result.as_numpy("VERSION")[0])

    try:
        write_python_model(repository, name, version=1, config_pbtxt=config(2.0), model_py=ECHO_MODEL_PY)
        assert not client.is_model_ready(name)  # explicit mode: files alone change nothing
        client.load_model(name)
        y, version = infer()
        np.testing.assert_array_equal(y, [2, 4, 6])
        assert version == 1

        write_python_model(repository, name, version=2, config_pbtxt=config(10.0), model_py=ECHO_MODEL_PY)
        assert infer()[1] == 1  # still version 1 until reloaded
        client.load_model(name)
        y, version = infer()
        np.testing.assert_array_equal(y, [10, 20, 30])
        assert version == 2
        assert model_versions(repository, name) == [1, 2]

        client.unload_model(name)
        deadline = time.monotonic() + 30
        while client.is_model_ready(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(InferenceServerException):
            infer()
        assert client.is_model_ready(HEALTH_MODEL_NAME)
    finally:
        try:
            client.unload_model(name)
        except InferenceServerException:
            pass
        shutil.rmtree(repository / name, ignore_errors=True)


def test_taken_port_is_a_service_error_naming_service_and_port(tmp_path, settings):
    triton.ensure_installed(settings)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        other = load_settings("test", environ={
            "ATELIER__HOME": str(tmp_path / "home"),
            "ATELIER__TRITON__HTTP_PORT": str(_free_port()),
            "ATELIER__TRITON__GRPC_PORT": str(taken),
            "ATELIER__TRITON__METRICS_PORT": str(_free_port()),
        })
        spec = triton.build_spec(other)
        supervisor = Supervisor(other.run_dir)
        try:
            with pytest.raises(ServiceError) as err:
                supervisor.up(spec)
        finally:
            supervisor.down(spec)
    message = str(err.value)
    assert "triton" in message and f"127.0.0.1:{taken}" in message and "grpc" in message, message


def _pids_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in _pids_mentioning(text):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            found.append(f"{pid}: {cmdline[:200]!r}")
        except OSError:
            continue
    return found


def test_second_instance_starts_serves_and_stops_without_leftovers(tmp_path, settings):
    """A whole lifecycle on other ports and another repository: up, infer, down, and no process of it remains.

    The client keeps its HTTP connection open while the server stops (as a long-lived prediction API would), which
    makes tritonserver exit without unloading its models; its python stub must still go away promptly.
    """
    import tritonclient.http as httpclient

    triton.ensure_installed(settings)
    other = load_settings("test", environ={
        "ATELIER__HOME": str(tmp_path / "home"),
        "ATELIER__TRITON__HTTP_PORT": str(_free_port()),
        "ATELIER__TRITON__GRPC_PORT": str(_free_port()),
        "ATELIER__TRITON__METRICS_PORT": str(_free_port()),
    })
    repository = other.triton_model_repository
    assert not repository.exists()
    spec = triton.build_spec(other)
    assert (repository / HEALTH_MODEL_NAME / "1" / "model.py").is_file()
    supervisor = Supervisor(other.run_dir)
    try:
        started = time.monotonic()
        assert supervisor.up(spec).state == "running"
        assert time.monotonic() - started < 60
        stubs = [p for p in _processes_mentioning(str(repository)) if "triton_python_backend_stub" in p]
        assert len(stubs) == 1, stubs
        client = httpclient.InferenceServerClient(other.triton.http_url)
        inp = httpclient.InferInput("INPUT0", [2], "FP32")
        inp.set_data_from_numpy(np.array([41, -1], dtype=np.float32))
        np.testing.assert_array_equal(client.infer(HEALTH_MODEL_NAME, [inp]).as_numpy("OUTPUT0"), [42, 0])
    finally:
        stopping = time.monotonic()
        stopped = supervisor.down(spec)
        stop_s = time.monotonic() - stopping
    client.close()
    assert stopped
    assert stop_s < spec.stop_timeout_s - 5, f"stop took {stop_s:.1f} s: something was only ended by SIGKILL"
    assert supervisor.status(spec).state == "stopped"
    assert _processes_mentioning(str(repository)) == []
    prefix = triton.shm_prefix(other)
    triton.remove_stale_shm_regions(prefix, min_age_s=0)
    assert list(Path("/dev/shm").glob(f"{prefix}*")) == []
