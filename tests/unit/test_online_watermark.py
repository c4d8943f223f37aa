"""The online store's freshness watermark (``OnlineStore.newest_event_time``) on the SQLite backend, no services.

The same behaviour on every backend is covered by ``tests/integration/test_online_store.py``; these tests add
what only SQLite can show cheaply: the watermark is part of the rows' transaction, and a store file from
before watermarks reads None until it is applied again.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipelines.stores.online import FeatureRow, FeatureViewSchema, OnlineStoreError, WriteResult
from pipelines.stores.online.base import WATERMARK_TABLE
from pipelines.stores.online.sqlite import SQLiteOnlineStore

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_view(name: str = "clicks", ttl: int | None = None) -> FeatureViewSchema:
    return FeatureViewSchema(name, [("user_id", "string")], [("clicks", "bigint")], ttl_seconds=ttl)


def row(key: str, event_time: datetime, clicks: int = 1) -> FeatureRow:
    return FeatureRow((key,), {"clicks": clicks}, event_time)


@pytest.fixture()
def path(tmp_path):
    return tmp_path / "online.db"


@pytest.fixture()
def store(path):
    with SQLiteOnlineStore(path) as st:
        st.apply([make_view()])
        yield st


def test_none_before_any_write(store):
    assert store.newest_event_time("clicks") is None


def test_the_newest_row_written_over_several_batches_never_going_back(store):
    store.write("clicks", [row("a", T0 - timedelta(hours=2)), row("b", T0 - timedelta(hours=1))])
    assert store.newest_event_time("clicks") == T0 - timedelta(hours=1)
    store.write("clicks", [row("a", T0), row("c", T0 - timedelta(days=1))])
    assert store.newest_event_time("clicks") == T0
    # Written later with OLDER event times (a backfill): the watermark stays.
    store.write("clicks", [row("d", T0 - timedelta(days=30)), row("a", T0 - timedelta(minutes=1))])
    assert store.newest_event_time("clicks") == T0
    store.write("clicks", [row("e", T0 + timedelta(microseconds=1))])
    assert store.newest_event_time("clicks") == T0 + timedelta(microseconds=1)


def test_value_is_utc_and_exact_to_the_microsecond(store):
    # Given in another time zone (the validator's slow path); read back in UTC.
    event_time = T0.astimezone(timezone(timedelta(hours=-5)))
    store.write("clicks", [row("a", event_time)])
    newest = store.newest_event_time("clicks")
    assert newest == T0 == store.read("clicks", [("a",)], now=T0)[0].event_time
    assert newest.tzinfo is UTC and newest.utcoffset() == timedelta(0)
    assert (newest.second, newest.microsecond) == (0, 123456)


def test_rows_skipped_as_expired_do_not_count(path):
    with SQLiteOnlineStore(path) as store:
        store.apply([make_view("short", ttl=60)])
        assert store.write("short", [row("x", T0 - timedelta(seconds=60))], now=T0) == WriteResult(0, 1)
        assert store.newest_event_time("short") is None
        store.write("short", [row("a", T0 - timedelta(seconds=30)), row("b", T0 - timedelta(hours=1))], now=T0)
        assert store.newest_event_time("short") == T0 - timedelta(seconds=30)
        # Newer than the watermark but expired at this write's now: skipped, and not counted.
        late = [row("c", T0 + timedelta(minutes=10))]
        assert store.write("short", late, now=T0 + timedelta(hours=1)) == WriteResult(0, 1)
        assert store.newest_event_time("short") == T0 - timedelta(seconds=30)


def test_clear_resets_it_for_the_named_view_only(store):
    store.apply([make_view("other")])
    store.write("clicks", [row("a", T0)])
    store.write("other", [row("a", T0)])
    store.clear("clicks")
    assert store.newest_event_time("clicks") is None
    assert store.newest_event_time("other") == T0
    store.write("clicks", [row("a", T0 - timedelta(days=1))])  # a replay restarting its clock
    assert store.newest_event_time("clicks") == T0 - timedelta(days=1)


def test_unknown_view_raises_value_error(store):
    with pytest.raises(ValueError, match="unknown feature view 'nope'.*known: clicks"):
        store.newest_event_time("nope")
    with pytest.raises(ValueError, match="not a valid view name"):
        store.newest_event_time("Not A View")


def test_invalid_batch_moves_nothing(store):
    store.write("clicks", [row("a", T0)])
    bad = [row("b", T0 + timedelta(hours=1)), FeatureRow(("c",), {"clicks": "many"}, T0 + timedelta(hours=2))]
    with pytest.raises(ValueError, match="feature 'clicks'"):
        store.write("clicks", bad)
    assert store.newest_event_time("clicks") == T0


def test_watermark_is_in_the_rows_transaction(store, path):
    """A write whose watermark cannot be stored stores none of its rows either."""
    store.write("clicks", [row("a", T0)])
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON {WATERMARK_TABLE} BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(OnlineStoreError, match="nothing was written.*refused"):
        store.write("clicks", [row("b", T0 + timedelta(hours=1))])
    assert not store.read("clicks", [("b",)], now=T0)[0].found
    assert store.newest_event_time("clicks") == T0


def test_another_store_object_reads_it(store, path):
    store.write("clicks", [row("a", T0)])
    with SQLiteOnlineStore(path) as other:
        assert other.newest_event_time("clicks") == T0


def test_concurrent_writers_end_at_the_newest(store):
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for version in range(w, 40, 4):
                store.write("clicks", [row(f"k{version}", T0 + timedelta(seconds=version))])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert store.newest_event_time("clicks") == T0 + timedelta(seconds=39)


def test_store_file_from_before_watermarks(path):
    """Reads None until the views are applied again (apply creates the table; every writer applies first)."""
    with SQLiteOnlineStore(path) as store:
        store.apply([make_view()])
        store.write("clicks", [row("a", T0)])
    with sqlite3.connect(path) as conn:
        conn.execute(f"DROP TABLE {WATERMARK_TABLE}")
    with SQLiteOnlineStore(path) as store:
        assert store.newest_event_time("clicks") is None
        store.apply([make_view()])
        store.write("clicks", [row("b", T0 - timedelta(minutes=1))])
        assert store.newest_event_time("clicks") == T0 - timedelta(minutes=1)
