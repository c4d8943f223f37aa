"""Partition-level publication (``Lake.publish_partitions``) and the batch job's checks that need no Spark.

Tables here are folders of small files laid out like Spark's partitioned Parquet output
(``<column>=<value>/part-*``). Crashes are real: a publisher process is SIGKILLed mid-write, or fails at the
exact step between moving its version into place and swapping ``_CURRENT``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.batch.predict import (
    BatchPredictError,
    check_feature_coverage,
    interval_columns,
    interval_days,
    interval_pairs,
)
from pipelines.featurestore.spec import load_feature_set
from pipelines.lake import tables as tables_module
from pipelines.lake.tables import CURRENT, PARTITION_MANIFEST, Lake, write_partition_manifest
from pipelines.quality.expectations import SuiteError, suite_with_params
from pipelines.usecases import load_usecase

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)
TABLE = "predictions__demo"
COL = "day"


def stage_days(lake: Lake, run_id: str, days: list[str], payload: str = "", files: int = 2) -> Path:
    staged = lake.staging_path(TABLE, run_id)
    for day in days:
        folder = staged / f"{COL}={day}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            (folder / f"part-{i:05d}.parquet").write_text(f"{run_id}:{day}:{i}:{payload}")
        write_partition_manifest(folder, rows=files * 10, run_id=run_id)
    return staged


def publish(lake: Lake, run_id: str, days: list[str], payload: str = "", replace: list[str] | None = None) -> str:
    stage_days(lake, run_id, days, payload)
    return lake.publish_partitions(TABLE, run_id, column=COL, replace=replace or days, columns=["x", COL])


def snapshot(folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != tables_module.MANIFEST}


def test_replaces_only_the_interval_days_and_keeps_the_others(tmp_path):
    lake = Lake(tmp_path)
    publish(lake, "backfill", ["2013-01-01", "2013-01-02", "2013-01-03"], payload="old")
    before = snapshot(lake.path(TABLE))
    version = publish(lake, "daily-02", ["2013-01-02"], payload="new")
    after = snapshot(lake.path(TABLE))
    assert lake.current_version(TABLE) == version
    assert lake.partitions(TABLE, COL) == {"2013-01-01": 20, "2013-01-02": 20, "2013-01-03": 20}
    assert lake.info(TABLE).rows == 60 and lake.info(TABLE).partition_by == [COL]
    for day in ("2013-01-01", "2013-01-03"):
        kept = {k: v for k, v in after.items() if k.startswith(f"{COL}={day}/")}
        assert kept == {k: v for k, v in before.items() if k.startswith(f"{COL}={day}/")}
    replaced = Path(lake.path(TABLE)) / f"{COL}=2013-01-02" / "part-00000.parquet"
    assert replaced.read_text() == "daily-02:2013-01-02:0:new"


def test_kept_partitions_are_hard_links_and_old_versions_stay_readable(tmp_path):
    lake = Lake(tmp_path)
    publish(lake, "r1", ["2013-01-01", "2013-01-02"], payload="one")
    first = Path(lake.path(TABLE))
    first_content = snapshot(first)
    publish(lake, "r2", ["2013-01-02"], payload="two")
    second = Path(lake.path(TABLE))
    a, b = first / f"{COL}=2013-01-01" / "part-00000.parquet", second / f"{COL}=2013-01-01" / "part-00000.parquet"
    assert os.stat(a).st_ino == os.stat(b).st_ino  # no copy
    # A reader still on the previous version sees it unchanged (versions are never modified in place).
    assert snapshot(first) == first_content


def test_a_replaced_day_with_nothing_staged_is_dropped(tmp_path):
    lake = Lake(tmp_path)
    publish(lake, "r1", ["2013-01-01", "2013-01-02"])
    publish(lake, "r2", ["2013-01-01"], replace=["2013-01-01", "2013-01-02"])
    assert set(lake.partitions(TABLE, COL)) == {"2013-01-01"}


def test_staging_outside_the_replaced_days_or_without_manifests_is_refused(tmp_path):
    lake = Lake(tmp_path)
    stage_days(lake, "r1", ["2013-01-01", "2013-01-05"])
    with pytest.raises(ValueError, match=r"outside the ones it replaces"):
        lake.publish_partitions(TABLE, "r1", column=COL, replace=["2013-01-01"], columns=[COL])
    (lake.staging_path(TABLE, "r1") / f"{COL}=2013-01-05" / PARTITION_MANIFEST).unlink()
    with pytest.raises(ValueError, match=r"have no manifest"):
        lake.publish_partitions(TABLE, "r1", column=COL, replace=["2013-01-01", "2013-01-05"], columns=[COL])
    assert lake.current_version(TABLE) is None


def test_crash_between_moving_the_version_and_the_pointer_swap_leaves_the_table_intact(tmp_path, monkeypatch):
    """The exact step: the new version folder is renamed into versions/, then writing _CURRENT fails."""
    lake = Lake(tmp_path)
    publish(lake, "r1", ["2013-01-01", "2013-01-02"], payload="old")
    before, version = snapshot(lake.path(TABLE)), lake.current_version(TABLE)
    real = tables_module._atomic_write

    def crash_on_current(path: Path, text: str) -> None:
        if path.name == CURRENT:
            raise OSError("simulated crash before the pointer swap")
        real(path, text)

    monkeypatch.setattr(tables_module, "_atomic_write", crash_on_current)
    with pytest.raises(OSError, match="simulated crash"):
        publish(lake, "r2", ["2013-01-02"], payload="new")
    monkeypatch.setattr(tables_module, "_atomic_write", real)
    assert lake.current_version(TABLE) == version and snapshot(lake.path(TABLE)) == before
    # The next publication succeeds and collects the orphan version.
    publish(lake, "r3", ["2013-01-02"], payload="newer")
    versions = sorted(p.name for p in (tmp_path / TABLE / "versions").iterdir())
    assert len(versions) == 2 and not any("r2" in v for v in versions)


def test_publisher_killed_while_writing_leaves_the_published_days_intact(tmp_path):
    lake = Lake(tmp_path)
    publish(lake, "r1", ["2013-01-01", "2013-01-02"], payload="old")
    before, version = snapshot(lake.path(TABLE)), lake.current_version(TABLE)
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipelines.lake.tables import Lake
        staged = Lake({str(tmp_path)!r}).staging_path({TABLE!r}, "killed")
        folder = staged / "{COL}=2013-01-02"
        folder.mkdir(parents=True)
        for i in range(100000):
            (folder / f"part-{{i:05d}}.parquet").write_text("half")
            if i == 5:
                print("writing", flush=True)
            time.sleep(0.01)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert lake.current_version(TABLE) == version and snapshot(lake.path(TABLE)) == before
    # A re-run discards the half-written staging folder first (the batch job does), then publishes.
    lake.discard_staging(TABLE, "killed")
    publish(lake, "killed", ["2013-01-02"], payload="rerun")
    assert (Path(lake.path(TABLE)) / f"{COL}=2013-01-02" / "part-00000.parquet").read_text().endswith(":rerun")
    assert len(list((Path(lake.path(TABLE)) / f"{COL}=2013-01-02").glob("part-*"))) == 2


def _publish_many(root: str, days: list[str], run_prefix: str) -> None:
    lake = Lake(root)
    for i, day in enumerate(days):
        publish(lake, f"{run_prefix}-{i}", [day], payload=run_prefix)


def test_concurrent_runs_over_different_intervals_lose_nothing(tmp_path):
    days_a = [f"2013-02-{d:02d}" for d in range(1, 15)]
    days_b = [f"2013-03-{d:02d}" for d in range(1, 15)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publish_many, args=(str(tmp_path), days, name))
             for days, name in ((days_a, "a"), (days_b, "b"))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=50)
        assert p.exitcode == 0
    lake = Lake(tmp_path)
    assert sorted(lake.partitions(TABLE, COL)) == sorted(days_a + days_b)
    assert lake.info(TABLE).rows == 20 * 28


def test_old_versions_are_collected_but_shared_files_survive(tmp_path):
    lake = Lake(tmp_path, retention=timedelta(0))
    publish(lake, "r0", ["2013-01-01"], payload="keep")
    for i in range(1, 5):
        publish(lake, f"r{i}", ["2013-01-02"], payload=str(i))
    assert len(list((tmp_path / TABLE / "versions").iterdir())) == 2
    kept = Path(lake.path(TABLE)) / f"{COL}=2013-01-01" / "part-00000.parquet"
    assert kept.read_text() == "r0:2013-01-01:0:keep"


# ---------------------------------------------------------------------------------- batch job checks
def test_interval_days():
    day = timedelta(days=1)
    start = datetime(2013, 6, 10, tzinfo=UTC)
    assert interval_days(start, start + day) == [start.date()]
    assert [d.day for d in interval_days(start, start + 3 * day)] == [10, 11, 12]
    assert [d.day for d in interval_days(start, start + timedelta(hours=30))] == [10, 11]
    with pytest.raises(BatchPredictError, match="empty interval"):
        interval_days(start, start)


def test_interval_columns():
    assert interval_columns(["0.8", "0.9"]) == ["lower_80", "upper_80", "lower_90", "upper_90"]
    assert interval_columns(["0.95"]) == ["lower_95", "upper_95"]


def test_suite_parameters_are_filled_and_pairs_expanded():
    suite = suite_with_params("predictions", {"input_rows": 987, "key": "flight_id", "partition": "sched_dep_date",
                                              "ordered": [("prediction", "lower_80"), ("upper_80", "prediction")]})
    exps = suite["expectations"]
    assert {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 987}} in exps
    assert {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "flight_id"}} in exps
    pairs = [e["kwargs"] for e in exps if e["type"] == "expect_column_pair_values_a_to_be_greater_than_b"]
    assert pairs == [{"column_A": "prediction", "column_B": "lower_80", "or_equal": True},
                     {"column_A": "upper_80", "column_B": "prediction", "or_equal": True}]
    with pytest.raises(SuiteError, match="unknown parameter 'input_rows'"):
        suite_with_params("predictions", {})


def test_interval_pairs_nest_outwards():
    assert interval_pairs(["0.8", "0.9"]) == [("prediction", "lower_80"), ("upper_80", "prediction"),
                                              ("lower_80", "lower_90"), ("upper_90", "upper_80")]


@pytest.fixture
def features():
    return load_feature_set(load_usecase(REPO / "config" / "usecases" / "flights_eta"))


def source_tables(lake: Lake, features, days: list[str]) -> None:
    """Each batch view's source table with one event at noon UTC on each of ``days``."""
    import pandas as pd

    for source, column in {view.source: view.event_time for view in features.batch_views}.items():
        staged = lake.staging_path(source, "r")
        staged.mkdir(parents=True)
        times = pd.to_datetime([f"{d}T12:00:00Z" for d in days], utc=True)
        pd.DataFrame({column: times}).to_parquet(staged / "part-0.parquet")
        lake.write_manifest(staged, rows=len(days), columns=[column], partition_by=[], run_id="r")
        lake.publish(source, "r")


def feature_lake(root: Path, features, last: str, skip: tuple[str, ...] = (), absent: str | None = None) -> Lake:
    lake = Lake(root)
    year = pd_days("2013-01-01", "2013-12-31")
    source_tables(lake, features, year)
    for view in features.batch_views:
        name = f"features__{features.usecase}__{view.name}"
        if view.name == absent:
            continue
        staged = lake.staging_path(name, "r")
        day = datetime(2013, 1, 1).date()
        while day.isoformat() <= last:
            if day.isoformat() not in skip:
                (staged / f"event_date={day.isoformat()}").mkdir(parents=True)
            day += timedelta(days=1)
        lake.write_manifest(staged, rows=1, columns=["x"], partition_by=["event_date"], run_id="r")
        lake.publish(name, "r")
    return lake


def pd_days(first: str, last: str) -> list[str]:
    import pandas as pd

    return [d.date().isoformat() for d in pd.date_range(first, last, freq="D")]


def test_a_source_with_events_on_few_days_has_no_gaps(tmp_path, features):
    """A yearly panel: feature partitions only on its event days, and that is complete."""
    lake = Lake(tmp_path / "sparse")
    event_days = ["2012-12-31", "2013-05-20", "2013-06-01"]
    source_tables(lake, features, event_days)
    for view in features.batch_views:
        name = f"features__{features.usecase}__{view.name}"
        staged = lake.staging_path(name, "r")
        for day in event_days:
            (staged / f"event_date={day}").mkdir(parents=True)
        lake.write_manifest(staged, rows=1, columns=["x"], partition_by=["event_date"], run_id="r")
        lake.publish(name, "r")
    june2, june3 = datetime(2013, 6, 2, tzinfo=UTC), datetime(2013, 6, 3, tzinfo=UTC)
    check_feature_coverage(lake, features, june2, june3)
    # A day the source has events on, inside route_stats' 30-day window, gone from its feature table.
    shutil.rmtree(Path(lake.path(f"features__{features.usecase}__route_stats")) / "event_date=2013-05-20")
    with pytest.raises(BatchPredictError, match=r"route_stats' lacks event_date partition\(s\) 2013-05-20"):
        check_feature_coverage(lake, features, june2, june3)


def test_feature_coverage(tmp_path, features):
    june10, june11 = datetime(2013, 6, 10, tzinfo=UTC), datetime(2013, 6, 11, tzinfo=UTC)
    check_feature_coverage(feature_lake(tmp_path / "ok", features, "2013-12-31"), features, june10, june11)
    with pytest.raises(BatchPredictError, match=r"features__flights_eta__route_stats' is not published"):
        check_feature_coverage(feature_lake(tmp_path / "absent", features, "2013-12-31", absent="route_stats"),
                               features, june10, june11)
    with pytest.raises(BatchPredictError) as behind:
        check_feature_coverage(feature_lake(tmp_path / "behind", features, "2013-05-01"), features, june10, june11)
    assert "missing feature partitions" in str(behind.value) and "ends at 2013-05-01" in str(behind.value)
    with pytest.raises(BatchPredictError, match=r"lacks event_date partition\(s\) 2013-06-08"):
        check_feature_coverage(feature_lake(tmp_path / "gap", features, "2013-12-31", skip=("2013-06-08",)),
                               features, june10, june11)
