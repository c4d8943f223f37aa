"""Holes closed in the lake (issue 14): names that reach paths, retried publishes, durability, retention.

On plain files in ``tmp_path`` (no Spark), like ``test_lake_tables.py``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.jobs.common import base_parser
from pipelines.lake import ingest
from pipelines.lake import tables as tables_module
from pipelines.lake.tables import Lake, Superseded, UnsafeName, check_name, safe_name

pytestmark = pytest.mark.timeout(60)

AIRFLOW_IDS = ["manual__2026-12-03T06:35:45.277063+00:00", "scheduled__2026-12-03T00:00:00+00:00",
               "asset_triggered__2026-12-03T06:35:45.277063+00:00_uArCRhBg", "backfill__2026-12-01T00:00:00+00:00"]
BAD = ["", ".", "..", "a/b", "../x", "a\\b", "a\x00b", "a\nb", "\x7f"]


def stage(lake: Lake, name: str, run_id: str, payload: str = "") -> Path:
    staged = lake.staging_path(name, run_id)
    staged.mkdir(parents=True, exist_ok=True)
    (staged / "part-00000.parquet").write_text(f"{run_id}:{payload}")
    lake.write_manifest(staged, rows=1, columns=["a"], partition_by=[], run_id=run_id)
    return staged


class Clock:
    """Stands in for the tables module's `time`: publications at chosen instants."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def gmtime(self, *_):
        return time.gmtime(self.now)

    def strftime(self, fmt, t=None):
        return time.strftime(fmt, t if t is not None else time.gmtime(self.now))


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(tables_module, "time", c)
    return c


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("bad", BAD)
def test_unusable_run_ids_are_refused_before_any_path_is_built(lake, bad):
    for call in (lambda: lake.staging_path("t", bad), lambda: lake.discard_staging("t", bad),
                 lambda: lake.publish("t", bad), lambda: lake.publish_partitions("t", bad, column="d", replace=[],
                                                                                  columns=[])):
        with pytest.raises(UnsafeName, match="run id"):
            call()
    with pytest.raises(UnsafeName, match="table name"):
        lake.staging_path(bad, "run-1")
    assert not lake.root.exists()


def test_dot_and_dotdot_cannot_stage_into_the_table_or_the_staging_root_nor_discard_them(lake):
    stage(lake, "t", "run-1")
    lake.publish("t", "run-1")
    other = stage(lake, "t", "run-2")
    for bad in (".", ".."):
        with pytest.raises(UnsafeName, match=rf"run id '{bad}'"):
            lake.discard_staging("t", bad)
    assert other.exists() and Path(lake.path("t")).is_dir()
    lake.discard_staging("t", "run-2")
    assert not other.exists() and Path(lake.path("t")).is_dir()
    assert (lake.root / "t" / "_staging").is_dir()


def test_safe_name_keeps_plain_names_and_maps_the_rest_injectively():
    assert safe_name("run-1") == "run-1" and safe_name("cli__20261203T063545") == "cli__20261203T063545"
    names = [*AIRFLOW_IDS, "a:b", "a+b", "a_b", "a b", ".", "..", "", "/", "-x", ".hidden", "x" * 300,
             "x" * 300 + "y", "a/b", "a_b-h0123456789abcdef", safe_name("a:b")]
    mapped = [safe_name(n) for n in names]
    assert len(set(mapped)) == len(names), dict(zip(names, mapped, strict=True))
    for folder in mapped:
        assert folder not in ("", ".", "..") and "/" not in folder and not folder.startswith((".", "-"))
        assert len(folder) <= 150 and all(c.isalnum() or c in "_.-" for c in folder)
    assert [safe_name(n) for n in names] == mapped  # deterministic


def test_airflow_run_ids_stage_publish_and_read_back(lake):
    for run_id in AIRFLOW_IDS:
        assert check_name(run_id) == run_id
        staged = stage(lake, "t", run_id)
        assert staged.parent == lake.root / "t" / "_staging"
        assert lake.publish("t", run_id) == lake.current_version("t")
        assert lake.info("t").run_id == run_id


@pytest.mark.parametrize("bad", ["..", ".", ""])
def test_job_arguments_name_the_bad_run_id(bad, capsys):
    with pytest.raises(SystemExit):
        base_parser("x").parse_args(["--usecase", "u", "--run-id", bad])
    assert f"argument --run-id: run id '{bad}':" in capsys.readouterr().err


# ---------------------------------------------------------------- idempotent publish


def test_a_retried_publish_returns_the_version_it_already_published(lake):
    stage(lake, "t", ".x")
    version = lake.publish("t", ".x")
    assert lake.publish("t", ".x") == version
    assert sorted(p.name for p in (lake.root / "t" / "versions").iterdir()) == [version]


def test_a_superseded_run_is_not_republished(lake):
    stage(lake, "t", "run-1")
    lake.publish("t", "run-1")
    stage(lake, "t", "run-2")
    v2 = lake.publish("t", "run-2")
    with pytest.raises(Superseded, match=r"run 'run-1' published .* since superseded by " + v2):
        lake.publish("t", "run-1")
    assert lake.current_version("t") == v2


def test_ingest_publish_retried_after_it_published_succeeds(tmp_path):
    settings = SimpleNamespace(lake_root=str(tmp_path / "lake"), lake=SimpleNamespace(retention_hours=24.0))
    usecase = SimpleNamespace(tables={"airlines": None, "flights": None})
    lake = Lake.from_settings(settings)
    run_id = "manual__2026-12-03T06:35:45.277063+00:00"
    for name in usecase.tables:
        (stage(lake, name, run_id) / ingest.VALIDATED).write_text("{}")
    first = ingest.publish(settings, usecase, run_id)
    assert ingest.publish(settings, usecase, run_id) == first  # the Airflow retry
    stage(lake, "airlines", "later")
    lake.publish("airlines", "later")
    with pytest.raises(Superseded, match="airlines"):
        ingest.publish(settings, usecase, run_id)


# ---------------------------------------------------------------- durability


def test_publication_fsyncs_the_staged_files_and_every_folder_it_changes(lake, monkeypatch):
    """A power cut cannot be simulated here: this records what gets fsynced (by the descriptors' paths)."""
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    stage(lake, "t", "run-1")
    monkeypatch.setattr(tables_module.os, "fsync", record)
    version = lake.publish("t", "run-1")
    table = (lake.root / "t").resolve()
    assert str(table / "versions") in synced  # after the rename into versions/
    assert str(table / "_staging") in synced  # after the rename out of _staging/
    assert synced.count(str(table)) >= 1  # after the _CURRENT replace
    assert synced[-1] == str(table)  # the pointer swap is the last durable step
    staged_file = [p for p in synced if p.endswith("part-00000.parquet")]
    assert staged_file and synced.index(staged_file[0]) < synced.index(str(table / "versions"))
    assert lake.current_version("t") == version


# ---------------------------------------------------------------- retention


def test_a_pinned_version_survives_two_publishes_until_the_retention_has_passed(tmp_path, clock):
    lake = Lake(tmp_path / "lake", retention=timedelta(hours=24))
    stage(lake, "t", "run-1", payload="pinned")
    pinned = Path(lake.path("t") if lake.publish("t", "run-1") else "")
    for run_id in ("run-2", "run-3"):
        clock.now += 60
        stage(lake, "t", run_id)
        lake.publish("t", run_id)
    assert (pinned / "part-00000.parquet").read_text() == "run-1:pinned"
    clock.now += 24 * 3600 + 1
    stage(lake, "t", "run-4")
    lake.publish("t", "run-4")
    assert not pinned.exists()
    kept = sorted(p.name for p in (lake.root / "t" / "versions").iterdir())
    assert [v.split("-", 1)[1] for v in kept] == ["run-3", "run-4"]  # the previous one is always kept
    assert sorted(p.name for p in (lake.root / "t" / "_published").iterdir()) == [f"{v}.json" for v in kept]


def test_a_run_finds_its_own_versions_never_those_of_a_run_whose_id_ends_like_it(tmp_path):
    import pandas as pd

    from pipelines.training.dataset import read_training_set, training_set_name

    lake = Lake(tmp_path)
    name = training_set_name("uc")
    for run_id, rows in (("abc", 1), ("xyz-abc", 2)):  # published later, its folder also ends in "-abc"
        staged = lake.staging_path(name, run_id)
        staged.mkdir(parents=True)
        pd.DataFrame({"run": [run_id] * rows}).to_parquet(staged / "part-00000.parquet")
        lake.write_manifest(staged, rows=rows, columns=["run"], partition_by=[], run_id=run_id)
        lake.publish(name, run_id)
    [mine] = lake.versions_of(name, "abc")
    assert mine.endswith("-abc") and lake.versions_of(name, "xyz-abc") != [mine]
    frame, version = read_training_set(SimpleNamespace(lake_root=str(tmp_path), lake=SimpleNamespace(retention_hours=24.0)), "uc", "abc")
    assert version == mine and frame["run"].tolist() == ["abc"]


def test_the_retention_comes_from_the_profile(tmp_path):
    from pipelines.config import load_settings

    environ = {**os.environ, "ATELIER__HOME": str(tmp_path), "ATELIER__LAKE__RETENTION_HOURS": "2.5"}
    assert Lake.from_settings(load_settings("test", environ=environ)).retention == timedelta(hours=2.5)
    assert Lake.from_settings(load_settings("test", environ={})).retention == tables_module.RETENTION
