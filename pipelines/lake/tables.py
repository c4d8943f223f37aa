"""Lake tables with atomic publication.

A table is a folder ``<root>/<table>/`` holding immutable versions (``versions/<version>/``, Parquet, maybe
partitioned) and a ``_CURRENT`` file naming the published one. Writers build a new version in
``_staging/<run_id>/``; publishing renames it into ``versions/`` and then replaces ``_CURRENT`` with
``os.replace`` -- atomic on a POSIX file system, so a reader sees the old version or the new one, never a
half-written table, and a job killed at any point leaves the published version untouched.

Each version carries ``_atelier.json`` (row count, columns, run id, time) so summaries need no Spark.
Local and shared (POSIX-mounted) file systems only; object stores would need a table format (Delta, Iceberg).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CURRENT = "_CURRENT"
PREVIOUS = "_PREVIOUS"
KEEP_VERSIONS = 2  # what garbage collection keeps: the published version and the one published before it
MANIFEST = "_atelier.json"


class TableNotFound(LookupError):
    pass


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


def safe_name(run_id: str) -> str:
    """A run id as a file-name-safe string (what staging folders, versions and reports are named by)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]


class Lake:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _table(self, name: str) -> Path:
        return self.root / name

    def staging_path(self, name: str, run_id: str) -> Path:
        return self._table(name) / "_staging" / safe_name(run_id)

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
        return TableInfo(name=name, version=path.name, path=str(path), **manifest)

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
        """
        staged = self.staging_path(name, run_id)
        if not (staged / MANIFEST).exists():
            raise TableNotFound(f"nothing staged for lake table '{name}' by run '{run_id}' ({staged})")
        table = self._table(name)
        versions = table / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        with FileLock(table / ".lock"):
            return self._swap_in(name, staged, run_id)

    def discard_staging(self, name: str, run_id: str) -> None:
        shutil.rmtree(self.staging_path(name, run_id), ignore_errors=True)

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
        os.rename(staged, versions / version)
        if previous:
            _atomic_write(table / PREVIOUS, previous)
        _atomic_write(table / CURRENT, version)
        self._collect_garbage(name)
        return version

    def _collect_garbage(self, name: str) -> None:
        """Keep the published version and the one published before it (a quick rollback); drop the rest,
        including versions a crashed publisher renamed into place but never made current."""
        table = self._table(name)
        keep = {self.current_version(name)}
        try:
            keep.add((table / PREVIOUS).read_text().strip())
        except FileNotFoundError:
            pass
        for old in (table / "versions").iterdir():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)


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


# ------------------------------------------------------------------------------------ partitioned tables
# Partition-level publication: a writer replaces some partitions of a table and keeps the others.
# ``Lake.publish_partitions`` builds the new version from the run's staged partitions plus *hard links* to the
# files of every other partition of the published version (no copy, milliseconds), then swaps
# ``_CURRENT`` like ``Lake.publish``. So a replacement is one atomic pointer swap: a writer killed at any point
# leaves the published version as it was, readers see a whole version (every partition complete), and the
# files of a version are never modified, only unlinked by garbage collection once two newer versions exist.
# Two runs replacing different partitions may run concurrently: each merges, under the table's publish
# lock, with the version current at that moment, so neither loses the other's partitions.
PARTITION_MANIFEST = "_partition.json"


def write_partition_manifest(partition_dir: Path, *, rows: int, run_id: str) -> None:
    """Row count and run id of one staged partition folder (``<column>=<value>/``); Spark ignores the file."""
    (partition_dir / PARTITION_MANIFEST).write_text(json.dumps({"rows": rows, "run_id": run_id}))


def _partition_value(folder: Path, column: str) -> str | None:
    prefix = f"{column}="
    return folder.name[len(prefix):] if folder.is_dir() and folder.name.startswith(prefix) else None
