"""NVIDIA Triton Inference Server (CPU only, python backend), installed from PyPI and run by the Supervisor.

Install (:func:`ensure_installed`)
    * ``<tools>/serving-venv``: a venv made from Debian's ``/usr/bin/python3`` (3.11), with the exact versions of
      ``constraints/serving.txt`` (nvidia-pytriton, numpy<2, xgboost 3.2, tritonclient, pandas...). It must be
      Debian's Python: the python backend stub embeds Debian's ``libpython3.11.so``, and another 3.11 build's
      standard library (pyenv's 3.11.7) breaks it.
    * The ``nvidia-pytriton`` wheel ships a real ``tritonserver`` binary (``pytriton/tritonserver/bin``), its
      backends and per-Python-version stubs, and its shared libraries in ``nvidia_pytriton.libs``. We run that
      binary directly (not PyTriton's ``Triton.bind``), with a copy of the wheel's backends in
      ``<tools>/triton/backends`` where ``python/triton_python_backend_stub`` is the wheel's 3.11 stub.
    * ``<tools>/triton/.installed`` is written last; it records the hash of ``constraints/serving.txt`` (and the
      layout version), so editing the constraints reinstalls and an interrupted install is redone. The pip/uv
      output goes to ``<tools>/triton/install.log``.

Run (:func:`build_spec`)
    * ``--model-control-mode=explicit --load-model=*``: every model in the repository is loaded at start, and later
      models/versions are (re)loaded and unloaded through the repository API (``load_model``/``unload_model`` in
      tritonclient, ``POST /v2/repository/models/<name>/load``). Explicit mode is what deployment code needs: a load
      call returns only when the new version serves (or with the load error), and nothing changes behind its back
      as it writes files; in poll mode those API calls are refused and changes appear at the next poll, errors
      only in the log.
    * ``--exit-on-error=false``: a broken model in the repository is logged and left unavailable instead of
      stopping the whole server at start. Readiness is therefore checked on ``atelier_health`` (a python-backend
      model written into the repository at every start), not only on the server.
    * Loopback only: ``--http-address``/``--grpc-address``/``--metrics-address`` are the configured host
      (127.0.0.1 by default).
    * Which Python runs ``model.py``: the stub embeds libpython, which finds its ``sys.prefix`` by looking up
      ``python3`` on ``PATH`` and reading the ``pyvenv.cfg`` beside it -- the same way a venv's interpreter finds
      it. So the server runs with ``<serving-venv>/bin`` first on ``PATH`` (and ``VIRTUAL_ENV`` set), which makes
      every python-backend model run in the serving venv with its site-packages (numpy<2, xgboost), and nothing
      from the platform venv. ``atelier_health``'s RUNTIME output reports ``sys.prefix`` to prove it.
      (Without it the stub falls back to bare ``/usr`` and ``import numpy`` fails.) ``PYTHONHOME``/``PYTHONPATH``
      are blanked and other venvs' ``bin`` folders dropped from ``PATH``. ``LD_LIBRARY_PATH`` holds the wheel's
      ``nvidia_pytriton.libs``. ``EXECUTION_ENV_PATH`` (per-model conda-pack archives) is not needed.
    * Start takes ~1.5 s here; ``start_timeout_s`` is 60 s, which is also how long a start whose ``atelier_health``
      fails to load takes to report it (the Supervisor then shows the log tail, which names the error).
    * The python backend talks to each model's stub through a ``/dev/shm`` region. Ours are named
      ``atelier_triton_<http port>_<uuid>`` (``shm-region-prefix-name``), because some regions outlive their
      server: a model whose ``initialize`` fails during a repository-API load leaks its 1 MiB region (a python
      backend bug), and so can a stop that skips unloading models. :func:`build_spec` removes this instance's
      regions once no process maps them and they are over a minute old.
    * Stop: the Supervisor's SIGTERM makes Triton finish in-flight requests, unload models (each stub runs
      ``finalize``) and exit, ~2 s here. ``--exit-timeout-secs=5`` bounds that; a client that keeps an HTTP
      connection open uses up the whole timeout, after which Triton exits without unloading. The argv starts with
      a bash reaper loop (see ``_REAPER``) so python stubs never outlive the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pipelines.config import REPO_ROOT, Settings
from pipelines.deploy.health import HEALTH_MODEL_NAME, write_health_model
from pipelines.services.base import NotReady, ServiceError, ServiceSpec, tail

NAME = "triton"
SYSTEM_PYTHON = Path("/usr/bin/python3")
PYTHON_VERSION = "3.11"
CONSTRAINTS = REPO_ROOT / "constraints" / "serving.txt"
LAYOUT_VERSION = 1  # bump when the layout under <tools>/triton changes, so existing installs are redone


@dataclass(frozen=True)
class TritonInstall:
    """Where everything lives once :func:`ensure_installed` has run."""

    venv: Path
    home: Path  # <tools>/triton

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{PYTHON_VERSION}" / "site-packages"

    @property
    def wheel_dir(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def server(self) -> Path:
        return self.wheel_dir / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def wheel_stub(self) -> Path:
        return self.wheel_dir / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"

    @property
    def backends(self) -> Path:
        return self.home / "backends"

    @property
    def stub(self) -> Path:
        return self.backends / "python" / "triton_python_backend_stub"

    @property
    def stamp(self) -> Path:
        return self.home / ".installed"

    @property
    def log(self) -> Path:
        return self.home / "install.log"


def install_paths(settings: Settings) -> TritonInstall:
    return TritonInstall(venv=settings.tools_dir / "serving-venv", home=settings.tools_dir / "triton")


def _constraints_hash() -> str:
    try:
        return hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()
    except OSError as exc:
        raise ServiceError(f"{NAME}: cannot read {CONSTRAINTS}: {exc}") from exc


def _pinned(package: str) -> str:
    for line in CONSTRAINTS.read_text().splitlines():
        if line.split("==")[0].strip().lower() == package:
            return line.strip()
    raise ServiceError(f"{NAME}: {CONSTRAINTS} does not pin {package}")


def _expected_stamp() -> dict:
    return {"constraints_sha256": _constraints_hash(), "layout": LAYOUT_VERSION, "python": str(SYSTEM_PYTHON)}


def _is_installed(paths: TritonInstall) -> bool:
    try:
        stamp = json.loads(paths.stamp.read_text())
    except (OSError, ValueError):
        return False
    return stamp == _expected_stamp() and all(
        p.exists() for p in (paths.python, paths.server, paths.stub, paths.backends / "python" / "libtriton_python.so")
    )


def ensure_installed(settings: Settings) -> None:
    """Create/refresh the serving venv and the Triton install dir. Fast no-op when the stamp matches."""
    paths = install_paths(settings)
    if _is_installed(paths):
        return
    # Installs are serialised between processes (a test session and `atelier bootstrap` may race).
    paths.home.mkdir(parents=True, exist_ok=True)
    with FileLock(paths.home / ".install.lock"):
        if _is_installed(paths):  # another process finished it while we waited
            return
        paths.stamp.unlink(missing_ok=True)
        _check_system_python()
        with open(paths.log, "w") as log:
            log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} installing Triton serving venv from {CONSTRAINTS}\n")
            log.flush()
            _make_venv(paths, log)
            _run(log, paths, [str(paths.python), "-m", "pip", "install", "--disable-pip-version-check",
                              _pinned("uv")], "installing uv into the serving venv")
            _run(log, paths, [str(paths.venv / "bin" / "uv"), "pip", "install", "--python", str(paths.python),
                              "-r", str(CONSTRAINTS)], f"installing {CONSTRAINTS.name}")
            _check_venv(paths, log)
        _prepare_backends(paths)
        _check_shared_libraries(paths)
        paths.stamp.write_text(json.dumps(_expected_stamp(), indent=2) + "\n")


def _check_system_python() -> None:
    if not SYSTEM_PYTHON.exists():
        raise ServiceError(
            f"{NAME}: {SYSTEM_PYTHON} is missing; Triton's python backend needs Debian's Python {PYTHON_VERSION}: "
            f"apt-get install python3 python3-venv libpython{PYTHON_VERSION}"
        )
    probe = subprocess.run(  # noqa: S603
        [str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2]); import venv, ensurepip"],
        capture_output=True, text=True, env=_clean_env(),
    )
    version = probe.stdout.strip().splitlines()[0] if probe.stdout.strip() else "?"
    if version != PYTHON_VERSION:
        raise ServiceError(
            f"{NAME}: {SYSTEM_PYTHON} is Python {version}, but the Triton python backend stub shipped by "
            f"nvidia-pytriton is built for {PYTHON_VERSION} (Debian 12's python3)"
        )
    if probe.returncode != 0:
        raise ServiceError(
            f"{NAME}: {SYSTEM_PYTHON} cannot create venvs (no venv/ensurepip module): apt-get install python3-venv"
        )


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would point a Python at another installation."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE"}}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep)
        if p and not (Path(p) / "pyvenv.cfg").exists() and not (Path(p).parent / "pyvenv.cfg").exists()
    )
    return env


def _venv_is_debian_python(paths: TritonInstall) -> bool:
    try:
        cfg = dict(
            line.split("=", 1) for line in (paths.venv / "pyvenv.cfg").read_text().splitlines() if "=" in line
        )
    except OSError:
        return False
    cfg = {k.strip(): v.strip() for k, v in cfg.items()}
    return (cfg.get("home") == str(SYSTEM_PYTHON.parent) and cfg.get("version", "").startswith(PYTHON_VERSION + ".")
            and paths.python.exists())


def _make_venv(paths: TritonInstall, log) -> None:
    if _venv_is_debian_python(paths):
        log.write(f"reusing {paths.venv}\n")
        return
    # Missing, or made from another Python (e.g. pyenv's): start over.
    _run(log, paths, [str(SYSTEM_PYTHON), "-m", "venv", "--clear", str(paths.venv)], "creating the serving venv",
         hint="if ensurepip is missing: apt-get install python3-venv")


def _run(log, paths: TritonInstall, argv: list[str], what: str, hint: str = "") -> None:
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    started = time.monotonic()
    proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # noqa: S603
                          env=_clean_env())
    log.write(f"(exit {proc.returncode} after {time.monotonic() - started:.1f} s)\n")
    log.flush()
    if proc.returncode != 0:
        raise ServiceError(
            f"{NAME}: {what} failed (exit {proc.returncode}); see {paths.log}"
            + (f" ({hint})" if hint else "") + f":\n{tail(paths.log)}"
        )


def _check_venv(paths: TritonInstall, log) -> None:
    probe = (
        "import json, numpy, xgboost, pytriton, tritonclient.http, tritonclient.grpc;"
        "print(json.dumps({'numpy': numpy.__version__, 'xgboost': xgboost.__version__}))"
    )
    _run(log, paths, [str(paths.python), "-c", probe], "importing numpy/xgboost/pytriton/tritonclient in the venv")
    missing = [p for p in (paths.server, paths.wheel_stub, paths.wheel_dir / "backends" / "python", paths.libs)
               if not p.exists()]
    if missing:
        raise ServiceError(
            f"{NAME}: the nvidia-pytriton wheel in {paths.venv} lacks {', '.join(map(str, missing))}; "
            f"check the nvidia-pytriton pin in {CONSTRAINTS}"
        )


def _prepare_backends(paths: TritonInstall) -> None:
    """<tools>/triton/backends = the wheel's backends + the Python 3.11 stub inside the python backend."""
    staging = paths.home / "backends.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(paths.wheel_dir / "backends", staging, symlinks=True)
    stub = staging / "python" / "triton_python_backend_stub"
    shutil.copy2(paths.wheel_stub, stub)
    stub.chmod(0o755)
    shutil.rmtree(paths.backends, ignore_errors=True)
    os.replace(staging, paths.backends)


def _runtime_env(paths: TritonInstall) -> dict[str, str]:
    env = _clean_env()
    env["PATH"] = os.pathsep.join([str(paths.venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = str(paths.venv)
    # The Supervisor merges this into its own environment, so unset-by-emptiness (Python ignores empty values).
    env["PYTHONHOME"] = ""
    env["PYTHONPATH"] = ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [str(paths.libs), os.environ.get("LD_LIBRARY_PATH", "")] if p
    )
    return env


def _check_shared_libraries(paths: TritonInstall) -> None:
    env = _runtime_env(paths)
    for binary in (paths.server, paths.stub, paths.backends / "python" / "libtriton_python.so"):
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)  # noqa: S603,S607
        missing = [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]
        if missing:
            hint = f" (apt-get install libpython{PYTHON_VERSION})" if any("libpython" in m for m in missing) else ""
            raise ServiceError(f"{NAME}: {binary} needs shared libraries that are missing: {', '.join(missing)}{hint}")


def _get(url: str, timeout_s: float = 2.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL we built
            return response.read()
    except urllib.error.HTTPError as exc:
        raise NotReady(f"GET {url} -> HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NotReady(f"GET {url}: {exc}") from None


def shm_prefix(settings: Settings) -> str:
    """Name prefix of this instance's python-backend shared-memory regions in /dev/shm."""
    return f"atelier_triton_{settings.triton.http_port}_"


def remove_stale_shm_regions(prefix: str, min_age_s: float = 60.0, shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Delete ``<shm_dir>/<prefix>*`` files that no process maps and that are older than ``min_age_s``."""
    candidates = []
    now = time.time()
    for path in shm_dir.glob(f"{prefix}*"):
        try:
            if now - path.stat().st_mtime >= min_age_s:
                candidates.append(path)
        except OSError:
            continue
    if not candidates:
        return []
    mapped: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            maps = (proc / "maps").read_text()
        except OSError:
            continue
        if prefix in maps:
            mapped.update(line.split()[-1] for line in maps.splitlines() if prefix in line)
    removed = []
    for path in candidates:
        if str(path) not in mapped:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# tritonserver runs as the child of this small bash loop, which survives the Supervisor's SIGTERM to the process
# group and reaps the server the moment it exits. Why: each python-backend stub stays alive while its parent
# tritonserver "exists" (kill(ppid, 0)), and an exited but unreaped server (a zombie of the process that started it,
# e.g. a pytest session or `atelier demo`) still does. When the server stops without unloading its models (it
# does when a client keeps an HTTP connection open past --exit-timeout-secs), the stubs would then linger until
# the Supervisor's SIGKILL. With the reaper they notice within ~0.3 s and exit. The loop exits with the server's
# status; a trap (not an ignore) is used so the server does not inherit an ignored SIGTERM.
_REAPER = (
    "trap ':' TERM INT; \"$@\" & child=$!; "
    "while :; do wait \"$child\"; status=$?; kill -0 \"$child\" 2>/dev/null || exit \"$status\"; done"
)


def build_spec(settings: Settings) -> ServiceSpec:
    """The tritonserver command line for this profile (call :func:`ensure_installed` first).

    Makes sure the model repository exists and holds ``atelier_health`` (rewritten only if it differs).
    """
    paths = install_paths(settings)
    cfg = settings.triton
    repository = settings.triton_model_repository
    repository.mkdir(parents=True, exist_ok=True)
    write_health_model(repository)
    remove_stale_shm_regions(shm_prefix(settings))
    argv = [
        "/bin/bash", "-c", _REAPER, "triton-reaper",
        str(paths.server),
        f"--model-repository={repository}",
        f"--backend-directory={paths.backends}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(settings)}",
        "--model-control-mode=explicit",
        "--load-model=*",
        "--exit-on-error=false",
        "--strict-readiness=false",
        f"--http-address={cfg.host}",
        f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.host}",
        f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.host}",
        f"--metrics-port={cfg.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
    ]
    base = f"http://{cfg.host}:{cfg.http_port}"

    def health() -> None:
        _get(f"{base}/v2/health/ready")
        _get(f"{base}/v2/models/{HEALTH_MODEL_NAME}/ready")

    return ServiceSpec(
        name=NAME,
        argv=argv,
        health=health,
        ports={"http": (cfg.host, cfg.http_port), "grpc": (cfg.host, cfg.grpc_port),
               "metrics": (cfg.host, cfg.metrics_port)},
        env=_runtime_env(paths),
        cwd=paths.home,
        start_timeout_s=60.0,
        stop_timeout_s=30.0,
        describe=f"Triton HTTP {base}, gRPC {cfg.grpc_url}, metrics http://{cfg.host}:{cfg.metrics_port}/metrics, "
                 f"models {repository}",
    )
