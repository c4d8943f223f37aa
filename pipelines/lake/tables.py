"""Lake tables with atomic publication.

A table is a folder ``<root>/<table>/`` holding immutable versions (``versions/<version>/``, Parquet, maybe
partitioned) and a ``_CURRENT`` file naming the published one. Writers build a new version in
``_staging/<run_id>/``; publishing renames it into ``versions/`` and then replaces ``_CURRENT`` with
``os.replace`` -- atomic on a POSIX file system, so a reader sees the old version or the new one, never a
half-written table, and a job killed at any point leaves the published version untouched.

Each version carries ``_atelier.json`` (row count, columns, run id, time) so summaries need no Spark.
Local and shared (POSIX-mounted) file systems only; object stores would need a table format (Delta, Iceberg).

Durability: before the pointer swap every staged file and folder is fsynced, and each rename / replace is
followed by an fsync of the folder holding it, so after a power cut ``_CURRENT`` never names a version whose
files were not on disk.

Names: a table name or run id must be one honest path component (:func:`check_name` refuses empty names,
``.``, ``..``, slashes, NUL and control characters); :func:`safe_name` maps a run id to a folder name
injectively (names of ``[A-Za-z0-9_.-]`` stay as they are, any other gets a digest of the original), so two
runs never share a staging folder and a run never stages outside its own.

Publication is idempotent per (table, run id): publishing a run whose version is already current returns that
version; one whose version was superseded by a later run is refused (:class:`Superseded`), never republished.

Retention: a superseded version is kept for ``retention`` (default :data:`RETENTION`, 24 h) after it stopped
being current, so a reader that resolved ``Lake.path`` before a publish (a long Spark job) keeps reading a
whole version; the previously published version is always kept (a quick rollback). Versions never made
current (a crashed publisher's) are collected at the next publish. ``<table>/_published/<version>.json``
records when a version was published and which version it superseded (``published_at``, ``supersedes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import Settings

CURRENT = "_CURRENT"
PREVIOUS = "_PREVIOUS"
PUBLISHED = "_published"  # <version>.json: when it was published, which version it superseded
KEEP_VERSIONS = 2  # kept whatever their age: the published version and the one published before it
RETENTION = timedelta(hours=24)  # how long a superseded version outlives its supersession (longest reader)
MANIFEST = "_atelier.json"
STAGING = "_staging"


class TableNotFound(LookupError):
    pass


class UnsafeName(ValueError):
    """A table name or run id that cannot be one path component."""


class Superseded(RuntimeError):
    """The run's version was published, then replaced by a later run's: it is not published again."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    version: str
    path: str
    rows: int
    columns: list[str]
    partition_by: list[str]
    run_id: str
    created_at: str


_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGESTED = re.compile(r".*-h[0-9a-f]{16}")
_MAX_PLAIN = 120


def check_name(value: str, what: str = "run id") -> str:
    """`value` if it can name one path component; else :class:`UnsafeName` naming `what` and the value."""
    if not value:
        reason = "must not be empty"
    elif value in (".", ".."):
        reason = "'.' and '..' name folders, they cannot name a run or a table"
    elif "/" in value or "\\" in value:
        reason = "must not contain a slash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        reason = "must not contain NUL or control characters"
    else:
        return value
    raise UnsafeName(f"{what} {value!r}: {reason}")


def safe_name(run_id: str) -> str:
    """A run id as a file-name-safe string (what staging folders, versions and reports are named by).

    Deterministic and injective: a name of ``[A-Za-z0-9_.-]`` (not starting with ``.`` or ``-``, at most 120
    characters, not ending like a digest) is its own folder name; any other keeps its safe characters (the
    rest become ``_``) and gets ``-h`` + 16 hex digits of its SHA-256, so ``a:b`` and ``a+b`` differ. The result
    is never empty, ``.``, ``..``, hidden, or longer than 150 characters, and holds no slash.
    """
    if _PLAIN.fullmatch(run_id) and len(run_id) <= _MAX_PLAIN and not _DIGESTED.fullmatch(run_id):
        return run_id
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:_MAX_PLAIN] or "_"
    return f"{re.sub(r'^[.-]', '_', readable)}-h{digest}"


class Lake:
    def __init__(self, root: str | Path, *, retention: timedelta = RETENTION) -> None:
        self.root = Path(root)
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The profile's lake: ``lake.root`` with ``lake.retention_hours``."""
        return cls(settings.lake_root, retention=timedelta(hours=settings.lake.retention_hours))

    def _table(self, name: str) -> Path:
        return self.root / check_name(name, "table name")

    def staging_path(self, name: str, run_id: str) -> Path:
        return self._table(name) / STAGING / safe_name(check_name(run_id))

    def current_version(self, name: str) -> str | None:
        try:
            return (self._table(name) / CURRENT).read_text().strip() or None
        except FileNotFoundError:
            return None

    def path(self, name: str) -> str:
        """The published version's folder (what readers pass to Spark)."""
        version = self.current_version(name)
        if version is None:
            raise TableNotFound(f"lake table '{name}' has no published version under {self.root}")
        return str(self._table(name) / "versions" / version)

    def info(self, name: str) -> TableInfo:
        path = Path(self.path(name))
        manifest = json.loads((path / MANIFEST).read_text())
        known = {f.name for f in fields(TableInfo)}
        return TableInfo(name=name, version=path.name, path=str(path),
                         **{k: v for k, v in manifest.items() if k in known})

    def published_version(self, name: str, run_id: str) -> str | None:
        """The current version if `run_id` published it; None if that run has no version (any more).

        Raises :class:`Superseded` when the run's newest version was published and then replaced by a later one.
        """
        current = self.current_version(name)
        mine = self.versions_of(name, run_id)
        if not mine:
            return None
        if mine[-1] == current:
            return current
        if current and _sequence(mine[-1]) < _sequence(current):
            raise Superseded(f"run '{run_id}' published version {mine[-1]} of lake table '{name}', since "
                             f"superseded by {current}; not republishing an older run over a newer one")
        return None  # renamed in by a publisher that died before the pointer swap: never published

    def versions_of(self, name: str, run_id: str) -> list[str]:
        """The versions of ``name`` that ``run_id`` (exactly that run, never one whose id ends like it) staged
        in, oldest first, whether or not they are current."""
        folder = self._table(name) / "versions"
        if not folder.is_dir():
            return []
        suffix = safe_name(check_name(run_id))
        return sorted((p.name for p in folder.iterdir() if re.fullmatch(rf"v\d+-{re.escape(suffix)}", p.name)),
                      key=_sequence)

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).exists())

    def write_manifest(self, staged: Path, *, rows: int, columns: list[str], partition_by: list[str],
                       run_id: str) -> None:
        manifest = {"rows": rows, "columns": columns, "partition_by": partition_by, "run_id": run_id,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))

    def publish(self, name: str, run_id: str) -> str:
        """Make the staged data of `run_id` the table's published version. Returns the version id.

        Version ids carry a sequence number, so they follow publication order and never collide (a re-run of
        the same run id publishes a new version). Publishers of one table are serialised by a file lock.
        Idempotent: with nothing staged, a run whose version is current gets that version back (a retried
        task); one whose version was superseded raises :class:`Superseded`.
        """
        staged = self.staging_path(name, run_id)
        if not (staged / MANIFEST).exists():
            if (version := self.published_version(name, run_id)) is not None:
                return version
            raise TableNotFound(f"nothing staged for lake table '{name}' by run '{run_id}' ({staged})")
        table = self._table(name)
        versions = table / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        with FileLock(table / ".lock"):
            return self._swap_in(name, staged, run_id)

    def discard_staging(self, name: str, run_id: str) -> None:
        """Remove the run's staging folder, and nothing else."""
        staged = self.staging_path(name, run_id)
        if staged.parent != self._table(name) / STAGING or staged.name in ("", ".", ".."):
            raise UnsafeName(f"run id {run_id!r}: staging folder {staged} is not inside {staged.parent}")
        shutil.rmtree(staged, ignore_errors=True)

    def partitions(self, name: str, column: str) -> dict[str, int]:
        """Published partition values -> rows (from each partition's manifest; -1 when it has none)."""
        out: dict[str, int] = {}
        for folder in sorted(Path(self.path(name)).iterdir()):
            value = _partition_value(folder, column)
            if value is None:
                continue
            try:
                out[value] = int(json.loads((folder / PARTITION_MANIFEST).read_text())["rows"])
            except (FileNotFoundError, KeyError, ValueError):
                out[value] = -1
        return out

    def partition_dates(self, name: str, column: str) -> set[date]:
        """The dates of the published ``column=<ISO date>`` partitions of ``name``, from folder names alone."""
        prefix = f"{column}="
        out = set()
        for folder in Path(self.path(name)).iterdir():
            if folder.is_dir() and folder.name.startswith(prefix):
                try:
                    out.add(date.fromisoformat(folder.name[len(prefix):]))
                except ValueError:
                    continue
        return out

    def read_partitions(self, spark: SparkSession, name: str, column: str, values: Iterable[str], *,
                        merge_schema: bool = False) -> DataFrame | None:
        """The published partitions of ``name`` whose ``column`` is one of ``values``, as one Spark frame with
        ``column`` as an ISO string (None when none of them is published). Only those folders are listed and
        read: Spark given the table's folder lists every partition (and with ``merge_schema`` opens every
        file's footer), which costs seconds on a year of daily partitions."""
        from pyspark.sql import functions as F  # noqa: N812

        try:
            published = self.partitions(name, column)
        except TableNotFound:
            return None
        wanted = sorted({v for v in values if v in published})
        if not wanted:
            return None
        root = self.path(name)
        frame = (spark.read.option("basePath", root).option("mergeSchema", str(merge_schema).lower())
                 .parquet(*[f"{root}/{column}={v}" for v in wanted]))
        # Partition values come back typed (a date): the monitoring tables keep days as ISO strings.
        return frame.withColumn(column, F.col(column).cast("string"))

    def publish_partitions(self, name: str, run_id: str, *, column: str, replace: list[str],
                           columns: list[str]) -> str:
        """Publish the partitions staged by `run_id`, replacing exactly the partitions `replace` (values of
        `column`: a value in `replace` with nothing staged is dropped) and keeping every other published
        partition. Every staged partition needs its manifest (:func:`write_partition_manifest`).
        Returns the new version id."""
        staged = self.staging_path(name, run_id)
        if not staged.is_dir():
            if (version := self.published_version(name, run_id)) is not None:
                return version
            raise TableNotFound(f"nothing staged for lake table '{name}' by run '{run_id}' ({staged})")
        staged_values = {v: p for p in staged.iterdir() if (v := _partition_value(p, column)) is not None}
        outside = sorted(set(staged_values) - set(replace))
        if outside:
            raise ValueError(f"run '{run_id}' staged partitions {outside} of '{name}' outside the ones it "
                             f"replaces ({sorted(replace)})")
        unfinished = sorted(v for v, p in staged_values.items() if not (p / PARTITION_MANIFEST).exists())
        if unfinished:
            raise ValueError(f"staged partitions {unfinished} of '{name}' (run '{run_id}') have no manifest")
        table = self._table(name)
        versions = table / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        with FileLock(table / ".lock"):
            previous = self.current_version(name)
            if previous:
                for folder in (versions / previous).iterdir():
                    value = _partition_value(folder, column)
                    if value is None or value in replace:
                        continue
                    target = staged / folder.name
                    shutil.rmtree(target, ignore_errors=True)  # a crashed earlier attempt's links
                    target.mkdir()
                    for file in folder.iterdir():
                        os.link(file, target / file.name)
            rows = 0
            for folder in staged.iterdir():
                if _partition_value(folder, column) is not None:
                    rows += int(json.loads((folder / PARTITION_MANIFEST).read_text())["rows"])
            self.write_manifest(staged, rows=rows, columns=columns, partition_by=[column], run_id=run_id)
            return self._swap_in(name, staged, run_id)

    def _swap_in(self, name: str, staged: Path, run_id: str) -> str:
        """Under the table's lock: move `staged` in as the next version, make it current (atomic pointer
        swap; the old one becomes previous), collect old versions. Returns the version id."""
        table = self._table(name)
        versions = table / "versions"
        previous = self.current_version(name)
        sequence = max((_sequence(p.name) for p in versions.iterdir()), default=0) + 1
        version = f"v{sequence:06d}-{safe_name(run_id)}"
        _fsync_tree(staged)
        os.rename(staged, versions / version)
        _fsync_dir(versions)
        _fsync_dir(staged.parent)
        (table / PUBLISHED).mkdir(exist_ok=True)
        _atomic_write(table / PUBLISHED / f"{version}.json",
                      json.dumps({"published_at": time.time(), "supersedes": previous}))
        if previous:
            _atomic_write(table / PREVIOUS, previous)
        _atomic_write(table / CURRENT, version)
        self._collect_garbage(name)
        return version

    def _collect_garbage(self, name: str) -> None:
        """Keep the published version, the one published before it (a quick rollback) and every version
        superseded less than ``retention`` ago (readers that resolved it before a publish); drop the rest,
        including versions a crashed publisher renamed into place but never made current."""
        table = self._table(name)
        keep = {self.current_version(name)}
        try:
            keep.add((table / PREVIOUS).read_text().strip())
        except FileNotFoundError:
            pass
        records = table / PUBLISHED
        superseded_at: dict[str, float] = {}
        for record in records.glob("*.json") if records.is_dir() else []:
            try:
                entry = json.loads(record.read_text())
                if entry.get("supersedes"):
                    superseded_at[entry["supersedes"]] = float(entry["published_at"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
        horizon = time.time() - self.retention.total_seconds()
        for folder in (table / "versions").iterdir():
            if not folder.is_dir() or folder.name in keep or superseded_at.get(folder.name, -1.0) > horizon:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            (records / f"{folder.name}.json").unlink(missing_ok=True)


def _sequence(version: str) -> int:
    match = re.match(r"^v(\d+)-", version)
    return int(match.group(1)) if match else 0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the replace itself is durable only once its folder is


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first) under `root`, `root` included."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


# ------------------------------------------------------------------------------------ partitioned tables
# Partition-level publication: a writer replaces some partitions of a table and keeps the others.
# ``Lake.publish_partitions`` builds the new version from the run's staged partitions plus *hard links* to the
# files of every other partition of the published version (no copy, milliseconds), then swaps
# ``_CURRENT`` like ``Lake.publish``. So a replacement is one atomic pointer swap: a writer killed at any point
# leaves the published version as it was, readers see a whole version (every partition complete), and the
# files of a version are never modified, only unlinked by garbage collection (see the module docstring).
# Two runs replacing different partitions may run concurrently: each merges, under the table's publish
# lock, with the version current at that moment, so neither loses the other's partitions.
PARTITION_MANIFEST = "_partition.json"


def write_partition_manifest(partition_dir: Path, *, rows: int, run_id: str) -> None:
    """Row count and run id of one staged partition folder (``<column>=<value>/``); Spark ignores the file."""
    (partition_dir / PARTITION_MANIFEST).write_text(json.dumps({"rows": rows, "run_id": run_id}))


def _partition_value(folder: Path, column: str) -> str | None:
    prefix = f"{column}="
    return folder.name[len(prefix):] if folder.is_dir() and folder.name.startswith(prefix) else None
