"""Materialization into both online stores (SQLite and Cassandra, real), read-back with freshness ages,
event-time versioning on re-runs and replays, the skew check, and a store that is down."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from pipelines.config import load_settings
from pipelines.featurestore import materialize, offline, skew
from pipelines.featurestore.spec import load_feature_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEC_24, DEC_27, DEC_31 = (datetime(2013, 12, d, tzinfo=UTC) for d in (24, 27, 31))


@pytest.fixture(scope="module")
def features(usecase):
    return load_feature_set(usecase)


@pytest.fixture(scope="module", params=["sqlite", "cassandra"])
def store_settings(request, settings, tmp_path_factory):
    if request.param == "cassandra":
        request.getfixturevalue("cassandra_service")
        keyspace = "atelier_test_materialize"
        overrides = {"ATELIER__ONLINE_STORE__BACKEND": "cassandra", "ATELIER__CASSANDRA__KEYSPACE": keyspace}
    else:
        db = tmp_path_factory.mktemp("online") / "features.db"
        overrides = {"ATELIER__ONLINE_STORE__BACKEND": "sqlite", "ATELIER__ONLINE_STORE__SQLITE_PATH": str(db)}
    return load_settings("test", environ={**os.environ, **overrides})


def _read(store_settings, features, view, keys, now):
    from pipelines.stores.online import get_online_store

    with get_online_store(store_settings) as store:
        return store.read(materialize.online_view_name(features.usecase, view.name), keys, now=now)


def _expected_latest(spark, published_lake, view, start, end):
    rows = materialize.latest_per_entity(offline.compute_view(spark, published_lake, view, start, end), view)
    return {tuple(r[k] for k in view.keys): r for r in rows.collect()}


@pytest.fixture(scope="module")
def materialized(spark, store_settings, features, published_lake):
    results = {v.name: materialize.materialize_view(spark, store_settings, features, v, DEC_27, DEC_31, now=DEC_31)
               for v in features.batch_views}
    return results


def test_materialized_rows_read_back_with_ages(materialized, spark, store_settings, features, published_lake):
    for view in features.batch_views:
        expected = _expected_latest(spark, published_lake, view, DEC_27, DEC_31)
        assert materialized[view.name].written == len(expected) > 0
        keys = sorted(expected)[:50] + [tuple(f"NOPE{i}" for i in range(len(view.keys)))]
        results = _read(store_settings, features, view, keys, DEC_31)
        assert [r.key for r in results] == keys
        assert results[-1].found is False and results[-1].values is None  # absent: explicit, not zeros
        for result in results[:-1]:
            row = expected[result.key]
            assert result.found
            assert result.event_time == row["event_time"].replace(tzinfo=UTC)
            assert result.age_seconds == (DEC_31 - result.event_time).total_seconds()
            for name in view.feature_names:
                assert skew.values_match(result.values[name], row[name]), (view.name, result.key, name)


def test_rerun_is_idempotent_and_old_intervals_never_overwrite(materialized, spark, store_settings, features):
    view = features.views["aircraft_history"]
    keys = sorted(_expected_latest(spark, _lake(store_settings), view, DEC_27, DEC_31))[:40]
    before = _read(store_settings, features, view, keys, DEC_31)
    again = materialize.materialize_view(spark, store_settings, features, view, DEC_27, DEC_31, now=DEC_31)
    assert again.written == materialized[view.name].written
    # An older interval replayed afterwards (a late backfill) leaves the newer values in place.
    materialize.materialize_view(spark, store_settings, features, view, DEC_24, DEC_27, now=DEC_31)
    after = _read(store_settings, features, view, keys, DEC_31)
    assert [(r.key, r.event_time, r.values) for r in after] == [(r.key, r.event_time, r.values) for r in before]


def _lake(settings):
    from pipelines.lake.tables import Lake

    return Lake.from_settings(settings)


def test_skew_check_passes(materialized, spark, store_settings, features):
    report = skew.run_skew_check(spark, store_settings, features, f"test-skew-{store_settings.online_store.backend}",
                                 DEC_31)
    assert report.success, report.to_text()
    assert report.found_online > 50
    assert all(f.compared > 0 and f.mismatches == 0 for f in report.features)
    text = (store_settings.home_path / "reports" / "flights_eta" / "skew" /
            f"test-skew-{store_settings.online_store.backend}.txt").read_text()
    assert text.startswith("skew check PASSED")


def test_skew_check_detects_a_tampered_online_value(materialized, spark, store_settings, features):
    from pipelines.stores.online import FeatureRow, get_online_store

    view = features.views["route_stats"]
    keys = skew._sample_keys(spark, _lake(store_settings), view, features.skew_check.sample_size, DEC_31)
    name = materialize.online_view_name(features.usecase, view.name)
    with get_online_store(store_settings) as store:
        # Positive values only: at equal write timestamps Cassandra keeps the greater cell, and for positive
        # doubles the greater bytes are the greater number, so 999.0 replaces them on both backends.
        victims = [r for r in store.read(name, keys, now=DEC_31)
                   if r.found and 0 <= (r.values["route_arr_delay_mean_30d"] or -1) < 999][:10]
        assert victims
        # Same event time (same version), other values: what a buggy online transform would write.
        store.write(name, [FeatureRow(r.key, {**r.values, "route_arr_delay_mean_30d": 999.0}, r.event_time)
                           for r in victims], now=DEC_31)
    with pytest.raises(skew.SkewDetected) as detected:
        skew.run_skew_check(spark, store_settings, features, "test-skew-tampered", DEC_31)
    text = str(detected.value)
    assert "FAIL route_stats.route_arr_delay_mean_30d" in text
    assert "ok   route_stats.route_air_time_mean_30d" in text
    materialize.materialize_view(spark, store_settings, features, view, DEC_27, DEC_31, now=DEC_31)


def test_materialize_job_with_cassandra_down_fails_clearly(settings, published_lake, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {**os.environ, "ATELIER_PROFILE": "test", "ATELIER__ONLINE_STORE__BACKEND": "cassandra",
           "ATELIER__CASSANDRA__PORT": str(closed_port)}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.jobs.features", "materialize", "--usecase", "flights_eta",
         "--run-id", "down", "--start", "2013-12-30", "--end", "2013-12-31", "--view", "origin_weather"],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "ATELIER JOB FAILED: OnlineStoreError" in out.stderr
    assert f"127.0.0.1:{closed_port}" in out.stderr
    assert "materialized" not in out.stderr  # nothing reported written


def test_bad_intervals_fail_early(settings):
    env = {**os.environ, "ATELIER_PROFILE": "test"}
    for args, message in ((["--start", "2013-12-31", "--end", "2013-12-01"], "empty interval"),
                          (["--start", "yesterday", "--end", "2013-12-01"], "is not an ISO date"),
                          (["--start", "2013-12-01", "--end", "2013-12-02", "--view", "nope"], "unknown feature view")):
        out = subprocess.run([sys.executable, "-m", "pipelines.jobs.features", "materialize", "--usecase",
                              "flights_eta", "--run-id", "bad", *args], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
