"""The inter-process file locks (filelock): the lake's publication lock and the lifecycle's promotion lock.

Each test holds the lock the way a process of an older Atelier did (a bare ``fcntl.flock`` on the same path,
in another process), so the locks keep their paths and their flock semantics across versions.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.lake.tables import Lake
from pipelines.lifecycle.registry import promotion_lock

pytestmark = pytest.mark.timeout(60)


class FlockHolder:
    """Another process holding an exclusive flock on `path` until `release()`."""

    def __init__(self, path: Path) -> None:
        code = textwrap.dedent(f"""
            import fcntl, sys
            handle = open({str(path)!r}, "w")
            fcntl.flock(handle, fcntl.LOCK_EX)
            print("held", flush=True)
            sys.stdin.readline()
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)


@pytest.fixture
def holders():
    started: list[FlockHolder] = []

    def hold(path: Path) -> FlockHolder:
        started.append(FlockHolder(path))
        return started[-1]

    yield hold
    for holder in started:
        holder.release()


def test_promotion_lock_times_out_naming_the_model_while_another_process_holds_it(tmp_path, holders):
    settings = SimpleNamespace(home_path=tmp_path)
    (tmp_path / "locks").mkdir()
    holders(tmp_path / "locks" / "lifecycle-flights_eta.lock")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info, promotion_lock(settings, "flights_eta", timeout_s=1.0):
        pytest.fail("the lock was acquired while another process held it")
    assert 1.0 <= time.monotonic() - started < 5
    assert str(info.value) == "another lifecycle move of 'flights_eta' holds the lock for more than 1 s"
    # Another model's lock is a different file: not blocked.
    with promotion_lock(settings, "other_model", timeout_s=0.5):
        pass


def test_promotion_lock_is_taken_once_the_holder_releases_it(tmp_path, holders):
    settings = SimpleNamespace(home_path=tmp_path)
    (tmp_path / "locks").mkdir()
    holder = holders(tmp_path / "locks" / "lifecycle-m.lock")
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    with promotion_lock(settings, "m", timeout_s=10):
        assert time.monotonic() - started >= 0.4
    assert (tmp_path / "locks" / "lifecycle-m.lock").exists()  # the path stays: waiters share its inode


def test_lake_publication_waits_for_the_table_lock(tmp_path, holders):
    lake = Lake(tmp_path / "lake")
    staged = lake.staging_path("flights", "run-1")
    staged.mkdir(parents=True)
    (staged / "part-00000.parquet").write_text("x")
    lake.write_manifest(staged, rows=1, columns=["a"], partition_by=[], run_id="run-1")
    holder = holders(tmp_path / "lake" / "flights" / ".lock")
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    version = lake.publish("flights", "run-1")
    assert time.monotonic() - started >= 0.4
    assert lake.current_version("flights") == version
