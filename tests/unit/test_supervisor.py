"""The service supervisor (``pipelines/services/base.py``) with a real tiny service: Python's ``http.server`` on
a free loopback port, health-checked with an HTTP GET.

Covers start / no-op restart / status / stop of the whole process group, and the failures a user meets: a taken
port, a command that dies at once, a service that never gets healthy, a stale PID file pointing at somebody
else's live process (never signalled), a missing binary.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipelines.services.base import NotReady, ServiceError, ServiceSpec, Supervisor, port_is_free

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_state(pid: int) -> str | None:
    """The /proc state letter of `pid`, or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def start_time_of(pid: int) -> float:
    return psutil.Process(pid).create_time()


def clock_ticks_since_boot_of(pid: int) -> str:
    """The start time as older versions recorded it: /proc/<pid>/stat field 22, after the command name."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def http_health(port: int):
    def check() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5) as response:
            if response.status != 200:
                raise NotReady(f"HTTP {response.status}")

    return check


def never_healthy() -> None:
    raise NotReady("still warming up")


@pytest.fixture
def sup(tmp_path) -> Supervisor:
    return Supervisor(tmp_path / "run")


@pytest.fixture
def stop_after(sup):
    """Specs registered here are stopped at the end of the test whatever happened."""
    specs: list[ServiceSpec] = []
    yield specs.append
    for spec in specs:
        sup.down(spec)


def http_spec(tmp_path: Path, port: int, **overrides) -> ServiceSpec:
    served = tmp_path / "www"
    served.mkdir(exist_ok=True)
    kwargs = dict(
        name="web",
        argv=[sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(served),
              str(port)],
        health=http_health(port),
        ports={"http": ("127.0.0.1", port)},
        start_timeout_s=10.0,
        stop_timeout_s=5.0,
        describe=f"http://127.0.0.1:{port}/",
    )
    kwargs.update(overrides)
    return ServiceSpec(**kwargs)


# ---------------------------------------------------------------- the happy path


def test_port_is_free():
    port = free_port()
    assert port_is_free("127.0.0.1", port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)


def test_up_status_down(sup, tmp_path, stop_after):
    port = free_port()
    spec = http_spec(tmp_path, port)
    stop_after(spec)
    assert sup.status(spec).state == "stopped"

    status = sup.up(spec)
    assert status.state == "running"
    assert status.name == "web" and status.detail == spec.describe
    pid = status.pid
    assert pid and alive(pid)
    assert os.getpgid(pid) == pid  # its own process group
    assert not port_is_free("127.0.0.1", port)

    record = json.loads((sup.run_dir / "web.pid").read_text())
    assert record == {"pid": pid, "start_time": start_time_of(pid)}

    http_health(port)()  # a request, so the server logs one line
    log = sup.log_path("web")
    assert log == sup.run_dir / "web.log"
    assert wait_until(lambda: "GET / HTTP" in log.read_text())
    text = log.read_text()
    assert "starting web:" in text and "http.server" in text
    assert f"Serving HTTP on 127.0.0.1 port {port}" in text

    assert sup.status(spec) == status

    assert sup.down(spec) is True
    assert not alive(pid)
    assert not (sup.run_dir / "web.pid").exists()
    assert sup.status(spec).state == "stopped"
    assert port_is_free("127.0.0.1", port)
    assert sup.down(spec) is False  # nothing left to stop


def test_up_again_is_a_no_op(sup, tmp_path, stop_after):
    spec = http_spec(tmp_path, free_port())
    stop_after(spec)
    first = sup.up(spec)
    pid_file = (sup.run_dir / "web.pid").read_text()
    second = sup.up(spec)
    assert second.state == "running" and second.pid == first.pid
    assert (sup.run_dir / "web.pid").read_text() == pid_file
    assert sup.log_path("web").read_text().count("starting web:") == 1


def test_unhealthy_instance_is_reported_and_waited_for_not_restarted(sup, tmp_path, stop_after):
    port = free_port()
    broken = {"yes": False}
    real = http_health(port)

    def health():
        if broken["yes"]:
            raise NotReady("answering 503")
        real()

    spec = http_spec(tmp_path, port, health=health)
    stop_after(spec)
    pid = sup.up(spec).pid
    broken["yes"] = True
    status = sup.status(spec)
    assert status.state == "unhealthy" and status.pid == pid
    assert "NotReady" in status.detail and "answering 503" in status.detail
    broken["yes"] = False
    again = sup.up(spec)
    assert again.state == "running" and again.pid == pid
    assert sup.log_path("web").read_text().count("starting web:") == 1


def test_down_stops_the_whole_process_group(sup, tmp_path, stop_after):
    port = free_port()
    child_pid_file = tmp_path / "child.pid"
    served = tmp_path / "www"
    served.mkdir()
    server = f"{sys.executable} -u -m http.server --bind 127.0.0.1 --directory {served} {port}"
    # A long stop timeout: SIGTERM must reach every member at once (a graceful stop), not only the leader
    # with the others left to the SIGKILL escalation at the end of the timeout.
    spec = http_spec(tmp_path, port, name="grouped", stop_timeout_s=30.0,
                     argv=["bash", "-c", f"{server} & echo $! > {child_pid_file}; wait"])
    stop_after(spec)
    leader = sup.up(spec).pid
    child = int(child_pid_file.read_text())
    assert child != leader
    assert alive(leader) and alive(child)
    assert os.getpgid(child) == leader  # same group, so it is ours to stop

    started = time.monotonic()
    assert sup.down(spec) is True
    assert time.monotonic() - started < 10, "the group did not stop on SIGTERM"
    assert wait_until(lambda: not alive(child), 3.0), "the server child outlived down()"
    assert not alive(leader)
    assert port_is_free("127.0.0.1", port)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and alive(int(p.name))
                 and _pgrp(int(p.name)) == leader]
    assert leftovers == []


def _pgrp(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def test_down_escalates_to_sigkill_when_sigterm_is_ignored(sup, tmp_path):
    marker = tmp_path / "ready"
    code = (f"import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(marker)!r}).write_text('x'); time.sleep(60)")
    spec = ServiceSpec(name="stubborn", argv=[sys.executable, "-c", code],
                       health=lambda: None if marker.exists() else never_healthy(),
                       start_timeout_s=10.0, stop_timeout_s=0.5)
    pid = sup.up(spec).pid
    started = time.monotonic()
    assert sup.down(spec) is True
    assert time.monotonic() - started < 5
    assert not alive(pid)


# ---------------------------------------------------------------- failures


def test_taken_port_names_service_purpose_and_port_and_starts_nothing(sup, tmp_path):
    port = free_port()
    marker = tmp_path / "ran"
    spec = http_spec(tmp_path, port, argv=["bash", "-c", f"touch {marker}; sleep 30"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServiceError) as info:
            sup.up(spec)
    msg = str(info.value)
    assert "web" in msg and "http port" in msg and f"127.0.0.1:{port}" in msg and "already in use" in msg
    time.sleep(0.2)
    assert not marker.exists()
    assert not (sup.run_dir / "web.pid").exists()
    assert sup.status(spec).state == "stopped"


def test_command_that_exits_at_once_reports_code_and_log_tail(sup, tmp_path):
    code = "import sys; print('fatal: cannot read cassandra.yaml', file=sys.stderr); sys.exit(3)"
    spec = ServiceSpec(name="crashy", argv=[sys.executable, "-c", code], health=never_healthy,
                       start_timeout_s=10.0)
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        sup.up(spec)
    assert time.monotonic() - started < 5  # noticed the exit, did not wait for the timeout
    msg = str(info.value)
    assert "crashy" in msg and "exited with code 3" in msg
    assert "fatal: cannot read cassandra.yaml" in msg  # the log tail
    assert str(sup.log_path("crashy")) in msg
    assert not (sup.run_dir / "crashy.pid").exists()
    assert sup.status(spec).state == "stopped"


def test_never_healthy_times_out_and_stops_the_process(sup, tmp_path):
    pid_file = tmp_path / "svc.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    spec = ServiceSpec(name="sleepy", argv=[sys.executable, "-c", code], health=never_healthy,
                       start_timeout_s=1.5, stop_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        sup.up(spec)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 6
    msg = str(info.value)
    assert "sleepy" in msg and "did not become healthy" in msg
    assert "NotReady: still warming up" in msg and "stopped" in msg
    pid = int(pid_file.read_text())
    assert not alive(pid)
    assert not (sup.run_dir / "sleepy.pid").exists()
    assert sup.status(spec).state == "stopped"


def test_missing_binary(sup):
    spec = ServiceSpec(name="ghost", argv=["/nonexistent/bin/atelier-ghost-server", "--port", "1"],
                       health=never_healthy, start_timeout_s=1.0)
    with pytest.raises(ServiceError) as info:
        sup.up(spec)
    msg = str(info.value)
    assert "ghost" in msg and "/nonexistent/bin/atelier-ghost-server" in msg
    assert not (sup.run_dir / "ghost.pid").exists()
    assert sup.status(spec).state == "stopped"


# ---------------------------------------------------------------- stale PID files


@pytest.fixture
def no_signals_to(monkeypatch):
    """Fail (instead of delivering) any real signal sent to the given PIDs / process groups."""
    protected: set[int] = set()
    real_kill, real_killpg = os.kill, os.killpg

    def guard(real, target, sig):
        if sig != 0 and target in protected:
            raise AssertionError(f"signal {sig} sent to unrelated process/group {target}")
        return real(target, sig)

    monkeypatch.setattr(os, "kill", lambda pid, sig: guard(real_kill, pid, sig))
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: guard(real_killpg, pgid, sig))
    return protected


def write_pid_file(sup: Supervisor, name: str, pid: int, start_time: float | str) -> Path:
    path = sup.run_dir / f"{name}.pid"
    path.write_text(json.dumps({"pid": pid, "start_time": start_time}))
    return path


def test_stale_pid_file_of_our_own_process_is_never_signalled(sup, tmp_path, no_signals_to):
    me = os.getpid()
    no_signals_to.update({me, os.getpgid(me)})
    spec = http_spec(tmp_path, free_port())
    pid_file = write_pid_file(sup, "web", me, start_time_of(me) + 3600)  # right PID, wrong start: a recycled PID
    status = sup.status(spec)
    assert status.state == "stale" and status.pid is None
    assert sup.down(spec) is False
    assert not pid_file.exists()
    assert sup.status(spec).state == "stopped"


def test_stale_pid_file_of_an_unrelated_process(sup, tmp_path, no_signals_to, stop_after):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        no_signals_to.update({other.pid})
        spec = http_spec(tmp_path, free_port())
        stop_after(spec)
        write_pid_file(sup, "web", other.pid, start_time_of(other.pid) - 60)  # a process of a minute ago
        assert sup.status(spec).state == "stale"
        # `up` starts a fresh instance and takes over the PID file; the unrelated process is left alone.
        status = sup.up(spec)
        assert status.state == "running" and status.pid != other.pid
        assert json.loads((sup.run_dir / "web.pid").read_text())["pid"] == status.pid
        assert sup.down(spec) is True
        assert alive(other.pid) and other.poll() is None
    finally:
        no_signals_to.clear()
        other.kill()
        other.wait()


@pytest.mark.parametrize("content", ["not json", "{}", '{"pid": "x", "start_time": "1"}'])
def test_unreadable_pid_file_reads_as_stale(sup, tmp_path, content):
    spec = http_spec(tmp_path, free_port())
    (sup.run_dir / "web.pid").write_text(content)
    assert sup.status(spec).state == "stale"
    assert sup.down(spec) is False
    assert not (sup.run_dir / "web.pid").exists()


def test_pid_file_of_a_dead_process_reads_as_stale(sup, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    spec = http_spec(tmp_path, free_port())
    write_pid_file(sup, "web", dead.pid, "12345")
    assert sup.status(spec).state == "stale"
    assert sup.down(spec) is False



def test_stale_pid_file_of_an_older_version_with_a_wrong_start_time(sup, tmp_path, no_signals_to):
    me = os.getpid()
    no_signals_to.update({me, os.getpgid(me)})
    spec = http_spec(tmp_path, free_port())
    write_pid_file(sup, "web", me, "1")  # clock ticks since boot, as older versions wrote: long before us
    assert sup.status(spec).state == "stale"
    assert sup.down(spec) is False


def test_pid_file_written_by_an_older_version_still_names_our_service(sup, tmp_path, stop_after):
    """Services started before an upgrade (their start time recorded as clock ticks since boot) are still
    recognised, so `down` after an upgrade stops them."""
    spec = http_spec(tmp_path, free_port())
    stop_after(spec)
    pid = sup.up(spec).pid
    assert pid is not None
    write_pid_file(sup, "web", pid, clock_ticks_since_boot_of(pid))
    assert sup.status(spec).state == "running" and sup.status(spec).pid == pid
    assert sup.down(spec) is True
    assert not alive(pid)
