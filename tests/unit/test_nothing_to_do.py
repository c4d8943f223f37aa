"""Interval jobs whose interval has no input end *skipped* with the reason (not failed), judged without Spark:
no lake before the first ingest, or no data in the interval yet (a scheduled run of today on 2013's data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.jobs import batch_predict, drift, features, feedback
from pipelines.lake.tables import Lake

USECASE = "flights_eta"


@pytest.fixture
def lake(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER__LAKE__ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("ATELIER__API__PREDICTION_LOG_DIR", str(tmp_path / "predlog"))
    monkeypatch.setenv("ATELIER__FEEDBACK__OUTCOME_LOG_DIR", str(tmp_path / "outcomes"))
    return Lake(tmp_path / "lake")


def publish(lake: Lake, table: str, column: str, rows: dict[str, list[datetime]], time_columns: list[str]) -> None:
    """A table partitioned by ``column`` (a date) whose ``time_columns`` hold the given timestamps per day."""
    staged = lake.staging_path(table, "r1")
    for day, times in rows.items():
        folder = staged / f"{column}={day}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({c: pa.array(times, pa.timestamp("us", tz="UTC")) for c in time_columns}),
                       folder / "part-0.parquet")
    lake.write_manifest(staged, rows=sum(map(len, rows.values())), columns=time_columns, partition_by=[column],
                        run_id="r1")
    lake.publish(table, "r1")


def interval(day: str, days: int = 1) -> list[str]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return ["--start", start.isoformat(), "--end", (start + timedelta(days=days)).isoformat()]


def args(step: str | None, *rest: str) -> list[str]:
    """A job's command line: its step (None for a job without steps), the use case and run id, then ``rest``."""
    return [*([step] if step else []), "--usecase", USECASE, "--run-id", "scheduled__x", *rest]


def flights_and_weather(lake: Lake) -> None:
    t = datetime(2013, 12, 30, 12, tzinfo=UTC)
    publish(lake, "flights", "sched_dep_date", {"2013-12-30": [t, t + timedelta(hours=2)]},
            ["sched_dep_ts", "arr_ts"])
    publish(lake, "weather", "obs_date", {"2013-12-30": [t]}, ["obs_ts"])


def test_before_the_first_ingest_every_interval_job_says_why_it_skips(lake):
    assert "'flights' is not published yet" in features.nothing_to_do(args("materialize", *interval("2013-12-30")))
    assert "'flights' is not published yet" in batch_predict.nothing_to_do(args(None, *interval("2013-12-30")))
    assert drift.nothing_to_do(args("run", *interval("2013-12-30"))).startswith("nothing to profile")
    assert feedback.nothing_to_do(args("run", *interval("2013-12-30"))).startswith("nothing new")


def test_an_interval_after_the_data_is_skipped_and_one_with_data_is_not(lake):
    flights_and_weather(lake)
    today = interval("2026-12-02")
    reason = features.nothing_to_do(args("materialize", *today))
    assert reason and "no 'flights' row with arr_ts in the interval" in reason
    assert "no 'weather' row with obs_ts" in reason
    assert "no sched_dep_date partition in [2026-12-02, 2026-12-03)" in batch_predict.nothing_to_do(args(None, *today))
    assert drift.nothing_to_do(args("run", *today)) is not None
    assert features.nothing_to_do(args("materialize", *interval("2013-12-30"))) is None
    assert batch_predict.nothing_to_do(args(None, *interval("2013-12-30"))) is None
    assert drift.nothing_to_do(args("run", *interval("2013-12-30"))) is None


def test_materialize_judges_by_event_time_not_by_partition(lake):
    """A flight that departs on the 30th and lands after midnight is an event of the 31st."""
    late = datetime(2013, 12, 30, 23, tzinfo=UTC)
    publish(lake, "flights", "sched_dep_date", {"2013-12-30": [late]}, ["sched_dep_ts"])
    staged = lake.staging_path("flights", "r2")
    (staged / "sched_dep_date=2013-12-30").mkdir(parents=True)
    pq.write_table(pa.table({"sched_dep_ts": pa.array([late], pa.timestamp("us", tz="UTC")),
                             "arr_ts": pa.array([late + timedelta(hours=3)], pa.timestamp("us", tz="UTC"))}),
                   staged / "sched_dep_date=2013-12-30" / "part-0.parquet")
    lake.write_manifest(staged, rows=1, columns=["sched_dep_ts", "arr_ts"], partition_by=["sched_dep_date"],
                        run_id="r2")
    lake.publish("flights", "r2")
    assert features.nothing_to_do(args("materialize", "--view", "route_stats", *interval("2013-12-31"))) is None
    assert features.nothing_to_do(args("materialize", "--view", "route_stats", *interval("2014-01-01")))


def test_feedback_with_a_log_file_in_the_interval_has_work(lake, tmp_path):
    day = tmp_path / "predlog" / USECASE / "date=2026-12-02"
    day.mkdir(parents=True)
    (day / "api-1.jsonl").write_text("{}\n")
    assert feedback.nothing_to_do(args("run", *interval("2026-12-02"))) is None
    assert feedback.nothing_to_do(args("run", *interval("2026-12-03"))) is not None


@pytest.mark.parametrize("argv", [
    args("materialize", "--start", "2013-12-31", "--end", "2013-12-30"),   # empty interval: the job's error
    args("materialize", "--start", "yesterday", "--end", "2013-12-30"),    # not a date: the job's error
    args("offline"),                                                      # not an interval step
    ["materialize", "--usecase", "no_such_usecase", "--run-id", "r", *interval("2013-12-30")],
    ["--no-such-flag"],
])
def test_what_the_check_cannot_judge_is_left_to_the_job(lake, argv):
    assert features.nothing_to_do(argv) is None


def test_the_job_entry_point_prints_the_reason_and_does_no_work(lake, capsys):
    features.main(args("materialize", *interval("2026-12-02")))   # would start Spark if it had work
    assert capsys.readouterr().out.startswith("ATELIER JOB SKIPPED: nothing to materialize")


def test_the_operator_skips_before_submitting(lake, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from plugins.operators.spark_job import AtelierSparkJobOperator

    op = AtelierSparkJobOperator(task_id="materialize", job="features",
                                 job_args=args("materialize", *interval("2026-12-02")))
    monkeypatch.setattr("airflow.providers.apache.spark.operators.spark_submit.SparkSubmitOperator.execute",
                        lambda self, context: pytest.fail("submitted a job with nothing to do"))
    with pytest.raises(AirflowSkipException, match="nothing to materialize"):
        op.execute({})
