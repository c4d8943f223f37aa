"""Feature rows stamped in the future are refused, and materialization applies a view's schema once, from the
driver: on the SQLite backend, no services. ``tests/integration/test_online_store.py`` runs the refusal on
every backend (Cassandra included, where a row's event time is its cell timestamp)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipelines.featurestore.materialize import _write_partition
from pipelines.stores.online import FeatureRow, FeatureViewSchema, OnlineStoreError, get_online_store
from pipelines.stores.online.base import DEFAULT_MAX_FUTURE_S
from pipelines.stores.online.sqlite import SQLiteOnlineStore

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2013, 6, 1, 12, 0, tzinfo=UTC)
VIEW = FeatureViewSchema("delays", [("origin", "string")], [("mean_delay", "double")])


def row(key: str, event_time: datetime, value: float = 1.0) -> FeatureRow:
    return FeatureRow((key,), {"mean_delay": value}, event_time)


@pytest.fixture()
def store(tmp_path):
    with SQLiteOnlineStore(tmp_path / "online.db") as st:
        st.apply([VIEW])
        yield st


def _with(settings, tmp_path, **online):
    section = settings.online_store.model_copy(
        update={"backend": "sqlite", "sqlite_path": str(tmp_path / "online.db"), **online})
    return settings.model_copy(update={"online_store": section})


def test_a_call_with_a_row_far_in_the_future_writes_nothing_and_names_the_row(store):
    fine = row("JFK", NOW - timedelta(hours=1))
    ahead = row("EWR", NOW + timedelta(days=3650))  # a producer's clock ten years off
    with pytest.raises(ValueError) as caught:
        store.write("delays", [fine, ahead], now=NOW)
    message = str(caught.value)
    assert "feature view 'delays': 1 row(s)" in message
    assert "('EWR',)" in message and "2023-05-30" in message
    assert "online_store.max_future_event_s" in message
    later = NOW + timedelta(days=4000)
    assert [r.found for r in store.read("delays", [("JFK",), ("EWR",)], now=later)] == [False, False]
    assert store.newest_event_time("delays") is None


def test_clock_skew_within_the_bound_is_accepted_and_later_writes_still_win(store):
    skewed = NOW + timedelta(seconds=DEFAULT_MAX_FUTURE_S - 1)
    assert store.write("delays", [row("JFK", skewed, 1.0)], now=NOW).written == 1
    just_over = NOW + timedelta(seconds=DEFAULT_MAX_FUTURE_S, microseconds=1)
    with pytest.raises(ValueError, match="more than 300 s after now"):
        store.write("delays", [row("JFK", just_over, 2.0)], now=NOW)
    store.write("delays", [row("JFK", NOW + timedelta(hours=1), 3.0)], now=NOW + timedelta(hours=1))
    [result] = store.read("delays", [("JFK",)], now=NOW + timedelta(hours=2))
    assert result.values == {"mean_delay": 3.0}


def test_the_bound_comes_from_the_settings(settings, tmp_path):
    strict = get_online_store(_with(settings, tmp_path, max_future_event_s=0))
    try:
        strict.apply([VIEW])
        assert strict.max_future_s == 0
        assert strict.write("delays", [row("JFK", NOW)], now=NOW).written == 1  # exactly now is not the future
        with pytest.raises(ValueError, match="more than 0 s after now"):
            strict.write("delays", [row("JFK", NOW + timedelta(microseconds=1))], now=NOW)
    finally:
        strict.close()
    assert get_online_store(_with(settings, tmp_path)).max_future_s == settings.online_store.max_future_event_s


def test_a_partition_writes_without_applying_the_schema_and_refuses_one_changed_under_it(settings, tmp_path):
    local = _with(settings, tmp_path)
    rows = [{"origin": "JFK", "event_time": NOW.replace(tzinfo=None), "mean_delay": 4.5}]
    applied = get_online_store(local)
    applied.apply([VIEW])
    applied.close()
    counts = list(_write_partition(local, VIEW, ["origin"], ["mean_delay"], NOW, iter(rows)))
    assert counts == [(1, 0)]

    wider = FeatureViewSchema("delays", [("origin", "string")], [("mean_delay", "double"), ("n", "bigint")])
    with pytest.raises(OnlineStoreError, match="changed while it was being materialized"):
        list(_write_partition(local, wider, ["origin"], ["mean_delay", "n"], NOW, iter(rows)))

    ahead = [{"origin": "LGA", "event_time": (NOW + timedelta(days=1)).replace(tzinfo=None), "mean_delay": 1.0}]
    with pytest.raises(OnlineStoreError, match=r"a feature row was refused: .*\('LGA',\)"):
        list(_write_partition(local, VIEW, ["origin"], ["mean_delay"], NOW, iter(ahead)))
