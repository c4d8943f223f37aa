"""Start, health-check and stop the local services Atelier runs itself.

Each service is described by a :class:`ServiceSpec` (command line, ports it needs, a health check). The
:class:`Supervisor` starts it in its own process group with its output in ``<run_dir>/<name>.log`` and its PID
(plus the process start time, so a recycled PID is never mistaken for ours) in ``<run_dir>/<name>.pid``.
It only ever signals processes whose PID file it wrote.

Secrets reach a service through its environment, never its command line: every user sees command lines
(``ps``), and the log header records it. A spec lists its secret values and a start whose command line
holds one is refused. The log itself is private to its owner (0600): services print things such as
generated credentials.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tenacity import Retrying, retry_if_not_exception_type, stop_after_delay, wait_fixed


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped; the message names it and points at its log."""


class _StartFailed(ServiceError):
    """The process started for a service exited (or died) before it was healthy: no point waiting more."""


class NotReady(Exception):
    """Raised by a health check while the service is not (yet) ready."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    health: Callable[[], None]
    """Returns when the service answers a real request; raises (anything) while it does not."""
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Named (host, port) pairs the service listens on; they must be free before it starts."""
    env: dict[str, str] = field(default_factory=dict, repr=False)  # carries secrets: never in a repr
    cwd: Path | None = None
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    describe: str = ""
    """One line for `status` and the demo summary, e.g. the UI address."""
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Values passed in `env` that must never appear on the command line (or in the log header)."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | unhealthy | stopped | stale
    pid: int | None
    detail: str = ""


START_TIME_SLACK_S = 1.0
"""How far a PID file's start time may be from the process's and still be that process. The kernel counts
start times from boot; psutil adds the boot time, which moves when the wall clock is stepped. A reused PID
belongs to a process started much later (the kernel hands out every other PID first)."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout_s: float = 1.0) -> None:
    with socket.create_connection((host, port), timeout=timeout_s):
        pass


def _start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def tail(path: Path, lines: int = 20) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


class Supervisor:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _read_pid(self, name: str) -> tuple[int, float] | None:
        try:
            record = json.loads(self._pid_path(name).read_text())
            start_time = record["start_time"]
            if isinstance(start_time, str):  # an older version's record: clock ticks since boot, as in /proc
                start_time = int(start_time) / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
            return int(record["pid"]), float(start_time)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _our_live_pid(self, name: str) -> int | None:
        """The PID we started for `name` if that very process is still alive."""
        record = self._read_pid(name)
        if record is None:
            return None
        pid, start_time = record
        now = _start_time(pid)
        return pid if now is not None and abs(now - start_time) < START_TIME_SLACK_S else None

    def status(self, spec: ServiceSpec) -> ServiceStatus:
        pid = self._our_live_pid(spec.name)
        if pid is None:
            state = "stale" if self._pid_path(spec.name).exists() else "stopped"
            return ServiceStatus(spec.name, state, None)
        try:
            spec.health()
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"; report it
            return ServiceStatus(spec.name, "unhealthy", pid, f"{type(exc).__name__}: {exc}")
        return ServiceStatus(spec.name, "running", pid, spec.describe)

    def up(self, spec: ServiceSpec) -> ServiceStatus:
        """Start `spec` unless our instance already runs healthy; wait for its health check."""
        current = self.status(spec)
        if current.state == "running":
            return current
        if current.state == "unhealthy":
            # Ours but not answering: maybe still starting. Wait for it rather than starting a second one.
            return self._wait_healthy(spec, current.pid or 0)
        for purpose, (host, port) in spec.ports.items():
            if not port_is_free(host, port):
                raise ServiceError(
                    f"{spec.name}: {purpose} port {host}:{port} is already in use by another process; "
                    f"stop it or choose another port (ATELIER__... override or profile)"
                )
        if any(secret and secret in arg for secret in spec.secrets for arg in spec.argv):
            raise ServiceError(f"{spec.name}: a secret is on the command line; pass it in the environment")
        log = self.log_path(spec.name)
        env = {**os.environ, **spec.env}
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)  # a log written by an older version may be world-readable
        with os.fdopen(fd, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.name}: "
                      f"{' '.join(spec.argv)}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(  # noqa: S603 - argv built by Atelier, no shell
                    spec.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=spec.cwd, env=env, start_new_session=True,
                )
            except OSError as exc:
                raise ServiceError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from exc
        start_time = _start_time(proc.pid)
        self._pid_path(spec.name).write_text(json.dumps({"pid": proc.pid, "start_time": start_time}))
        return self._wait_healthy(spec, proc.pid, proc)

    def _wait_healthy(self, spec: ServiceSpec, pid: int, proc: subprocess.Popen | None = None) -> ServiceStatus:
        log = self.log_path(spec.name)

        def check() -> None:
            if proc is not None and proc.poll() is not None:
                self._pid_path(spec.name).unlink(missing_ok=True)
                raise _StartFailed(f"{spec.name} exited with code {proc.returncode} while starting; "
                                   f"see {log}:\n{tail(log)}")
            if proc is None and _start_time(pid) is None:
                raise _StartFailed(f"{spec.name} (pid {pid}) died while starting; see {log}")
            spec.health()

        try:
            Retrying(stop=stop_after_delay(spec.start_timeout_s), wait=wait_fixed(0.5),
                     retry=retry_if_not_exception_type(_StartFailed), reraise=True)(check)
        except _StartFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the health check still failed at the deadline
            self.down(spec)
            raise ServiceError(
                f"{spec.name} did not become healthy within {spec.start_timeout_s:g} s (last check: "
                f"{type(exc).__name__}: {exc}); it was stopped. See {log}:\n{tail(log)}"
            ) from None
        return ServiceStatus(spec.name, "running", pid, spec.describe)

    def down(self, spec: ServiceSpec) -> bool:
        """Stop our instance of `spec` (its whole process group). Returns True if something was stopped."""
        pid = self._our_live_pid(spec.name)
        pid_path = self._pid_path(spec.name)
        if pid is None:
            pid_path.unlink(missing_ok=True)
            return False
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pid_path.unlink(missing_ok=True)
            return False
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + spec.stop_timeout_s
        while time.monotonic() < deadline and _group_alive(pgid):
            _reap(pid)
            time.sleep(0.2)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)
        _reap(pid)
        pid_path.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect our child's exit status if this process started it (else it lingers as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; treat a group whose members are all zombies as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
