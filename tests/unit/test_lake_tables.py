"""Lake tables with atomic publication (``pipelines/lake/tables.py``), on plain files (no Spark).

A "table version" here is a folder of small data files plus the manifest, like Spark's Parquet output. The
tests publish, switch versions, collect garbage, and kill writers at awkward moments, checking that readers
(``Lake.path``) only ever see a complete, published folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.lake import tables as tables_module
from pipelines.lake.tables import CURRENT, KEEP_VERSIONS, MANIFEST, Lake, TableInfo, TableNotFound

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def stage(lake: Lake, name: str, run_id: str, files: int = 3, payload: str = "") -> Path:
    """Write a staged version: `files` data files, then (last, as the ingest does) the manifest."""
    staged = lake.staging_path(name, run_id)
    staged.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (staged / f"part-{i:05d}.parquet").write_text(f"{run_id}:{i}:{payload}")
    lake.write_manifest(staged, rows=files * 10, columns=["a", "b"], partition_by=[], run_id=run_id)
    return staged


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def versions(lake: Lake, name: str) -> list[str]:
    folder = lake.root / name / "versions"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


class FrozenClock:
    """Replaces the module's `time` so every publish happens "in the same second" (deterministic names)."""

    def __init__(self, when: float = 1_700_000_000.0) -> None:
        self.when = when

    def gmtime(self, *_):
        return time.gmtime(self.when)

    def time(self):
        return self.when

    def strftime(self, fmt, t=None):
        return time.strftime(fmt, t if t is not None else time.gmtime(self.when))


@pytest.fixture
def frozen(monkeypatch) -> FrozenClock:
    clock = FrozenClock()
    monkeypatch.setattr(tables_module, "time", clock)
    return clock


# ---------------------------------------------------------------- publish / read


def test_nothing_published_yet(lake):
    assert lake.current_version("flights") is None
    with pytest.raises(TableNotFound, match="flights"):
        lake.path("flights")
    with pytest.raises(TableNotFound):
        lake.info("flights")
    assert lake.tables() == []


def test_publish_makes_the_staged_folder_current_and_readable(lake):
    staged = stage(lake, "flights", "run-1", files=4)
    expected = snapshot(staged)
    assert lake.tables() == []  # staged is not published

    version = lake.publish("flights", "run-1")
    assert re.fullmatch(r"v\d{6}-run-1", version)
    assert lake.current_version("flights") == version
    assert (lake.root / "flights" / CURRENT).read_text().strip() == version
    path = Path(lake.path("flights"))
    assert path == lake.root / "flights" / "versions" / version
    assert snapshot(path) == expected
    assert not staged.exists()
    assert lake.tables() == ["flights"]
    assert not list((lake.root / "flights").glob(f".{CURRENT}*"))  # no pointer temp file left behind

    info = lake.info("flights")
    assert isinstance(info, TableInfo)
    assert (info.name, info.version, info.path) == ("flights", version, str(path))
    assert info.rows == 40 and info.columns == ["a", "b"] and info.partition_by == [] and info.run_id == "run-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info.created_at)


def test_run_ids_are_made_path_safe(lake):
    run_id = "manual__2024-01-01T00:00:00+00:00"
    staged = stage(lake, "t", run_id)
    assert staged.parent == lake.root / "t" / "_staging"
    assert "/" not in staged.name and ":" not in staged.name and "+" not in staged.name
    version = lake.publish("t", run_id)
    assert Path(lake.path("t")).parent == lake.root / "t" / "versions"
    assert lake.info("t").run_id == run_id
    assert "/" not in version


def test_publishing_without_a_manifest_raises(lake):
    with pytest.raises(TableNotFound, match="nothing staged"):
        lake.publish("flights", "run-1")
    staged = lake.staging_path("flights", "run-2")
    staged.mkdir(parents=True)
    (staged / "part-00000.parquet").write_text("half")
    with pytest.raises(TableNotFound, match="run-2"):
        lake.publish("flights", "run-2")
    assert staged.exists()  # untouched
    assert lake.current_version("flights") is None
    assert versions(lake, "flights") == []


def test_discard_staging(lake):
    stage(lake, "flights", "run-1")
    lake.publish("flights", "run-1")
    published = snapshot(Path(lake.path("flights")))
    staged = stage(lake, "flights", "run-2")
    lake.discard_staging("flights", "run-2")
    assert not staged.exists()
    lake.discard_staging("flights", "run-2")  # idempotent
    lake.discard_staging("other", "never")
    with pytest.raises(TableNotFound):
        lake.publish("flights", "run-2")
    assert snapshot(Path(lake.path("flights"))) == published


def test_tables_lists_only_published_tables(lake):
    stage(lake, "b", "r1")
    lake.publish("b", "r1")
    stage(lake, "a", "r1")
    lake.publish("a", "r1")
    stage(lake, "c", "r1")  # staged only
    assert lake.tables() == ["a", "b"]


# ---------------------------------------------------------------- switching versions, garbage collection


def test_second_publish_switches_and_keeps_the_previous_version(lake, frozen):
    stage(lake, "t", "run-1", payload="one")
    v1 = lake.publish("t", "run-1")
    stage(lake, "t", "run-2", payload="two")
    v2 = lake.publish("t", "run-2")
    assert v1 != v2
    assert lake.current_version("t") == v2
    assert lake.info("t").run_id == "run-2"
    assert (Path(lake.path("t")) / "part-00000.parquet").read_text() == "run-2:0:two"
    assert versions(lake, "t") == sorted([v1, v2])  # the one before, for a quick rollback


def test_garbage_collection_keeps_current_and_previous(tmp_path, frozen):
    """With no retention period, only the published version and the previous one survive a publish."""
    lake = Lake(tmp_path / "lake", retention=timedelta(0))
    published = []
    for i in range(1, 6):
        stage(lake, "t", f"run-{i}")
        published.append(lake.publish("t", f"run-{i}"))
        assert lake.current_version("t") == published[-1]
        assert set(versions(lake, "t")) == set(published[-KEEP_VERSIONS:])
    assert KEEP_VERSIONS == 2
    # Staging of other runs is never garbage-collected by a publish.
    staged = stage(lake, "t", "run-9")
    stage(lake, "t", "run-6")
    lake.publish("t", "run-6")
    assert staged.exists()


def test_garbage_collection_keeps_the_previously_published_version_whatever_the_run_ids(tmp_path, frozen):
    """The version kept for rollback is the one published before the current one.

    Version ids are ``<UTC second>-<run id>`` and the garbage collector keeps the last ones *by name*, so when
    publications happen within one second (or the clock steps back) the order is the run ids' alphabetical
    order, not the publication order: the previously published version is deleted and an older one kept.
    """
    lake = Lake(tmp_path / "lake", retention=timedelta(0))
    published = []
    for run_id in ("run-z", "run-a", "run-b"):
        stage(lake, "t", run_id)
        published.append(lake.publish("t", run_id))
    assert lake.current_version("t") == published[-1]
    assert published[-2] in versions(lake, "t"), (
        f"previous published version {published[-2]} was garbage-collected; kept {versions(lake, 't')}")
    assert set(versions(lake, "t")) == set(published[-KEEP_VERSIONS:])


def test_republishing_the_same_run_id_gives_a_new_current_version(lake, frozen):
    """An ingest re-run with the same run id re-stages and re-publishes (the ingest's steps are idempotent for
    a run id). Within one second both versions get the same id and the rename onto it fails."""
    stage(lake, "t", "run-1", payload="first")
    lake.publish("t", "run-1")
    stage(lake, "t", "run-1", payload="second")
    version = lake.publish("t", "run-1")
    assert lake.current_version("t") == version
    assert (Path(lake.path("t")) / "part-00000.parquet").read_text() == "run-1:0:second"


# ---------------------------------------------------------------- crashes


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    staged = Path(sys.argv[1])
    staged.mkdir(parents=True, exist_ok=True)
    for i in range(100000):
        (staged / f"part-{i:05d}.parquet").write_bytes(b"x" * 512)
        if i == 200:
            print("midway", flush=True)
        time.sleep(0.0005)
    # never reached in the test: the manifest would come last
""")


def test_writer_killed_mid_write_leaves_the_published_version_untouched(lake):
    stage(lake, "flights", "run-1", files=5)
    v1 = lake.publish("flights", "run-1")
    before = snapshot(Path(lake.path("flights")))
    info_before = lake.info("flights")

    staged = lake.staging_path("flights", "run-2")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(staged)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "midway"
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait(timeout=10) == -signal.SIGKILL
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    written = list(staged.iterdir())
    assert 200 < len(written) < 100000  # really killed midway
    assert not (staged / MANIFEST).exists()

    assert lake.current_version("flights") == v1
    assert lake.path("flights") == str(lake.root / "flights" / "versions" / v1)
    assert snapshot(Path(lake.path("flights"))) == before
    assert lake.info("flights") == info_before
    assert versions(lake, "flights") == [v1]
    # The half-written run cannot be published, and can be cleaned up.
    with pytest.raises(TableNotFound):
        lake.publish("flights", "run-2")
    lake.discard_staging("flights", "run-2")
    assert not staged.exists()
    assert lake.current_version("flights") == v1


def test_crash_between_rename_and_pointer_leaves_the_old_version_current(lake):
    stage(lake, "t", "run-1", payload="old")
    v1 = lake.publish("t", "run-1")
    before = snapshot(Path(lake.path("t")))
    # Run 2 got as far as the rename into versions/ and died before replacing _CURRENT.
    staged = stage(lake, "t", "run-2", payload="new")
    orphan = lake.root / "t" / "versions" / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-run-2"
    os.rename(staged, orphan)

    assert lake.current_version("t") == v1
    assert Path(lake.path("t")).name == v1
    assert snapshot(Path(lake.path("t"))) == before
    assert lake.info("t").run_id == "run-1"
    # A later run publishes normally and becomes current.
    stage(lake, "t", "run-3", payload="newer")
    v3 = lake.publish("t", "run-3")
    assert lake.current_version("t") == v3
    assert (Path(lake.path("t")) / "part-00000.parquet").read_text() == "run-3:0:newer"


def test_leftover_pointer_temp_file_is_ignored(lake):
    stage(lake, "t", "run-1")
    v1 = lake.publish("t", "run-1")
    # A writer died after writing its pointer temp file, before os.replace.
    (lake.root / "t" / f".{CURRENT}.999999").write_text("20991231T000000-run-x\n")
    assert lake.current_version("t") == v1
    assert Path(lake.path("t")).is_dir()


PUBLISHER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from pipelines.lake.tables import Lake
    lake = Lake(sys.argv[1])
    for i in range(2, 100000):
        run_id = f"run-{i:06d}"
        staged = lake.staging_path("t", run_id)
        staged.mkdir(parents=True, exist_ok=True)
        for j in range(20):
            (staged / f"part-{j:05d}.parquet").write_text(f"{run_id}:{j}")
        lake.write_manifest(staged, rows=20, columns=["a"], partition_by=[], run_id=run_id)
        lake.publish("t", run_id)
        if i == 4:
            print("publishing", flush=True)
        time.sleep(0.01)
""")


def _complete(folder: Path) -> bool:
    try:
        names = {p.name for p in folder.iterdir()}
    except FileNotFoundError:
        return False
    return MANIFEST in names and {f"part-{j:05d}.parquet" for j in range(20)} <= names


def test_readers_always_resolve_a_complete_folder_while_a_writer_publishes_and_dies(lake):
    root = lake.root
    stage(lake, "t", "run-000001", files=20)
    lake.publish("t", "run-000001")
    writer = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(root), str(REPO)], stdout=subprocess.PIPE,
                              text=True)
    reads, torn, seen = 0, [], set()
    try:
        assert writer.stdout.readline().strip() == "publishing"
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            folder = Path(lake.path("t"))  # never raises: there is always a published version
            reads += 1
            seen.add(folder.name)
            if not _complete(folder) and lake.current_version("t") == folder.name:
                # Incomplete and still current: a torn read (a vanished folder that is no longer current is
                # the garbage collector removing an old version, which readers must tolerate anyway).
                torn.append(folder.name)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert torn == []
    assert reads > 50 and len(seen) > 3, (reads, seen)
    # After the kill, whatever state it left: the current version is complete and readable.
    final = Path(lake.path("t"))
    assert _complete(final)
    assert lake.info("t").run_id == final.name.split("-", 1)[1]
    assert lake.current_version("t") in versions(lake, "t")
