"""The online feature store: one suite, run against every backend (SQLite file, real Cassandra node).

Each test gets a fresh store object from ``get_online_store`` (SQLite: a new file; Cassandra: a new client on
this module's own keyspace, dropped at the end) and uses views with unique names.
"""

from __future__ import annotations

import math
import random
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipelines.stores.online import (
    ONLINE_STORES,
    FeatureRow,
    FeatureViewSchema,
    OnlineStoreError,
    ReadResult,
    WriteResult,
    get_online_store,
)

pytestmark = pytest.mark.integration

BACKENDS = sorted(ONLINE_STORES)
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
ALL_TYPES = [("price", "double"), ("clicks", "bigint"), ("country", "string"), ("is_member", "boolean")]


def _with(settings, **sections):
    """A copy of the (frozen) settings with some fields of some sections replaced."""
    update = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=update)


@pytest.fixture(scope="module")
def cassandra_settings(settings, cassandra_service):
    """Test-profile settings on a keyspace of this module's own (the store creates it; dropped at the end)."""
    keyspace = f"it_online_{uuid.uuid4().hex[:10]}"
    yield _with(settings, cassandra={"keyspace": keyspace}, online_store={"backend": "cassandra"})
    with get_online_store(_with(settings, cassandra={"keyspace": keyspace}), backend="cassandra") as store:
        store._execute("dropping the test keyspace", f"DROP KEYSPACE IF EXISTS {keyspace}")


@pytest.fixture(params=BACKENDS)
def backend_settings(request, settings, tmp_path):
    if request.param == "cassandra":
        return request.getfixturevalue("cassandra_settings")
    return _with(settings, online_store={"backend": "sqlite", "sqlite_path": str(tmp_path / "online.db")})


@pytest.fixture()
def store(backend_settings):
    st = get_online_store(backend_settings)
    yield st
    st.close()


@pytest.fixture()
def backend(store):
    return store.backend


@pytest.fixture()
def cassandra_store(cassandra_settings):
    st = get_online_store(cassandra_settings)
    yield st
    st.close()


def unique(prefix: str = "v") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def make_view(features=ALL_TYPES, keys=(("user_id", "string"),), ttl=None, name=None) -> FeatureViewSchema:
    return FeatureViewSchema(name or unique(), list(keys), list(features), ttl_seconds=ttl)


def row(key, values, event_time=T0) -> FeatureRow:
    return FeatureRow(key if isinstance(key, tuple) else (key,), values, event_time)


def one(store, view, key, now=None) -> ReadResult:
    [result] = store.read(view.name, [key if isinstance(key, tuple) else (key,)], now=now or T0)
    return result


# ---------------------------------------------------------------------------------------- schema / apply


def test_apply_is_idempotent_and_registered(store, backend_settings):
    view = make_view(ttl=3600)
    store.apply([view])
    store.write(view.name, [row("u1", {"price": 1.5})], now=T0)
    store.apply([view])  # again: no error, no data lost
    store.apply([view, make_view(name=view.name + "_b")])
    assert one(store, view, "u1").values["price"] == 1.5
    assert store.views()[view.name] == view

    # Another process (a new store object) knows the view from the store's registry, without apply().
    with get_online_store(backend_settings) as other:
        assert other.view(view.name) == view
        assert one(other, view, "u1").values == {"price": 1.5, "clicks": None, "country": None, "is_member": None}


def test_schema_evolution_adds_features(store, backend_settings):
    view = make_view(features=[("a", "double")])
    store.apply([view])
    store.write(view.name, [row("old", {"a": 1.0})])

    evolved = make_view(features=[("a", "double"), ("b", "bigint"), ("c", "string")], name=view.name, ttl=600)
    store.apply([evolved])
    store.apply([evolved])
    assert store.view(view.name) == evolved
    # Rows written before the change read the new features as None (never a default).
    assert one(store, view, "old").values == {"a": 1.0, "b": None, "c": None}
    assert store.write(view.name, [row("new", {"a": 2.0, "b": 7, "c": "x"})], now=T0) == WriteResult(1, 0)
    assert one(store, view, "new").values == {"a": 2.0, "b": 7, "c": "x"}

    # A store that cached the old schema sees the new one after refresh().
    with get_online_store(backend_settings) as other:
        other.apply([view])  # re-applying the narrower schema removes b and c from the view
        assert one(other, view, "new").values == {"a": 2.0}
        store.refresh()
        assert store.view(view.name).feature_names == ["a"]


def test_older_write_after_adding_a_feature_does_not_fill_it(store):
    """The event-time guard holds for features added later: a late, older row does not leak its value into
    the newer row's new feature (Cassandra keeps that cell, reads hide it)."""
    view = make_view(features=[("a", "double")])
    store.apply([view])
    newer, older = T0, T0 - timedelta(hours=1)
    store.write(view.name, [row("u", {"a": 2.0}, newer)])
    store.apply([make_view(features=[("a", "double"), ("b", "bigint")], name=view.name)])
    store.write(view.name, [row("u", {"a": 1.0, "b": 9}, older), row("v", {"a": 1.0, "b": 9}, older)])
    u, v = store.read(view.name, [("u",), ("v",)], now=T0)
    assert (u.values, u.event_time) == ({"a": 2.0, "b": None}, newer)
    assert (v.values, v.event_time) == ({"a": 1.0, "b": 9}, older)  # a new key takes the older row whole
    many = store.read(view.name, [("u",), ("v",), ("w",)], now=T0)
    assert [r.values for r in many] == [u.values, v.values, None]
    store.write(view.name, [row("u", {"a": 3.0, "b": 7}, newer + timedelta(seconds=1))])
    assert one(store, view, "u").values == {"a": 3.0, "b": 7}


def test_incompatible_changes_are_refused_before_any_change(store):
    view = make_view(features=[("a", "double"), ("b", "bigint")])
    store.apply([view])
    fresh = make_view()

    with pytest.raises(ValueError, match=r"feature 'a' is stored as double, cannot change it to bigint"):
        store.apply([fresh, make_view(features=[("a", "bigint")], name=view.name)])
    with pytest.raises(ValueError, match=r"entity keys cannot change"):
        store.apply([fresh, make_view(features=[("a", "double")], keys=[("account", "bigint")], name=view.name)])
    assert fresh.name not in store.views()  # checks come first: nothing was created

    store.apply([make_view(features=[("a", "double")], name=view.name)])  # drop b from the view
    with pytest.raises(ValueError, match=r"feature 'b' was removed .* cannot be added back"):
        store.apply([view])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad-Name"}, "name must match"),
        ({"keys": []}, "at least one entity key"),
        ({"keys": [("id", "double")]}, "entity key 'id' has type 'double'"),
        ({"features": [("x", "float")]}, "feature 'x' has type 'float'"),
        ({"features": [("event_time", "double")]}, "'event_time' is reserved"),
        ({"features": [("user_id", "double")]}, "'user_id' is used twice"),
        ({"ttl": 0}, "ttl_seconds must be"),
        ({"ttl": 1.5}, "ttl_seconds must be"),
    ],
)
def test_schema_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_view(**kwargs)


def test_factory_and_unknown_backend(settings):
    assert set(ONLINE_STORES) == {"sqlite", "cassandra"}
    with pytest.raises(ValueError, match="unknown online store backend 'redis'"):
        get_online_store(settings, backend="redis")


# ---------------------------------------------------------------------------------------- round trips


def test_round_trip_all_types_and_nulls(store):
    view = make_view()
    store.apply([view])
    rows = [
        row("all", {"price": -12.25, "clicks": 2**63 - 1, "country": "Zürich 🚆", "is_member": True}),
        row("zeros", {"price": 0.0, "clicks": -(2**63), "country": "", "is_member": False}),
        row("nulls", {"price": None, "clicks": None, "country": None, "is_member": None}),
        row("missing", {"clicks": 3}),  # features left out are stored as None
        row("nan", {"price": math.nan, "is_member": False}),  # NaN is "missing": stored as None
        row("inf", {"price": math.inf, "clicks": 0}),
    ]
    assert store.write(view.name, rows) == WriteResult(written=6, skipped_expired=0)
    got = {r.key[0]: r.values for r in store.read(view.name, [r.key for r in rows], now=T0)}
    assert got == {
        "all": {"price": -12.25, "clicks": 2**63 - 1, "country": "Zürich 🚆", "is_member": True},
        "zeros": {"price": 0.0, "clicks": -(2**63), "country": "", "is_member": False},
        "nulls": {"price": None, "clicks": None, "country": None, "is_member": None},
        "missing": {"price": None, "clicks": 3, "country": None, "is_member": None},
        "nan": {"price": None, "clicks": None, "country": None, "is_member": False},
        "inf": {"price": math.inf, "clicks": 0, "country": None, "is_member": None},
    }
    # Types come back exactly: a boolean is a bool (not 0/1), a bigint an int, a double a float.
    assert type(got["zeros"]["is_member"]) is bool and type(got["all"]["clicks"]) is int
    assert type(got["zeros"]["price"]) is float


def test_numpy_scalars_are_accepted(store):
    np = pytest.importorskip("numpy")
    view = make_view()
    store.apply([view])
    store.write(view.name, [row("np", {"price": np.float32(0.5), "clicks": np.int64(9), "is_member": np.bool_(True)})])
    assert one(store, view, "np").values == {"price": 0.5, "clicks": 9, "country": None, "is_member": True}


def test_event_time_and_age(store):
    view = make_view()
    store.apply([view])
    cet = timezone(timedelta(hours=1))
    event_time = datetime(2026, 3, 1, 13, 0, 0, 654321, tzinfo=cet)  # 12:00:00.654321 UTC
    store.write(view.name, [row("u", {"clicks": 1}, event_time)])
    now = datetime(2026, 3, 1, 12, 5, 0, tzinfo=UTC)
    result = one(store, view, "u", now=now)
    assert result.found
    assert result.event_time == event_time and result.event_time.tzinfo == UTC  # exact to the microsecond
    assert result.age_seconds == pytest.approx((now - event_time).total_seconds(), abs=1e-6)
    assert result.age_seconds == pytest.approx(299.345679, abs=1e-6)
    # A read "before" the event reports a negative age rather than hiding the row.
    assert one(store, view, "u", now=datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)).age_seconds < 0


def test_absent_key_is_not_found(store):
    view = make_view()
    store.apply([view])
    store.write(view.name, [row("present", {"price": 0.0})])
    assert one(store, view, "absent") == ReadResult(("absent",), False, None, None, None)
    assert store.read(view.name, []) == []


@pytest.mark.parametrize("composite", [False, True], ids=["one-key", "composite-key"])
def test_many_keys_keep_order_and_mix_found_and_absent(store, composite):
    keys = [("user_id", "string"), ("day", "bigint")] if composite else [("user_id", "string")]
    view = make_view(keys=keys, features=[("n", "bigint")])
    store.apply([view])

    def key(i):
        return (f"u{i}", i % 3) if composite else (f"u{i}",)

    present = [i for i in range(300) if i % 3 != 1]
    store.write(view.name, [row(key(i), {"n": i}) for i in present])
    wanted = [key(i) for i in random.Random(7).sample(range(300), 300)] + [key(5), key(5), key(4)]
    results = store.read(view.name, wanted, now=T0)
    assert [r.key for r in results] == wanted
    for r in results:
        i = int(r.key[0][1:])
        if i in present:
            assert (r.found, r.values, r.event_time) == (True, {"n": i}, T0)
        else:
            assert (r.found, r.values, r.event_time, r.age_seconds) == (False, None, None, None)


def test_read_many_views(store):
    a, b = make_view(features=[("x", "double")]), make_view(features=[("y", "string")], keys=[("item", "bigint")])
    store.apply([a, b])
    store.write(a.name, [row("u1", {"x": 1.0})])
    store.write(b.name, [row(42, {"y": "p"})])
    got = store.read_many_views({a.name: [("u1",), ("u2",), ("u1",)], b.name: [(42,)]}, now=T0)
    assert [r.values for r in got[a.name]] == [{"x": 1.0}, None, {"x": 1.0}]
    assert [r.key for r in got[a.name]] == [("u1",), ("u2",), ("u1",)]
    assert [r.values for r in got[b.name]] == [{"y": "p"}]
    assert got[b.name][0].age_seconds == 0.0 and got[b.name][0].event_time == T0
    with pytest.raises(ValueError, match="unknown feature view 'nope'"):
        store.read_many_views({a.name: [("u1",)], "nope": [("x",)]})


def test_read_many_views_async_reads_what_read_many_views_reads(store):
    """The asyncio read (the prediction API's) gives the synchronous read's results on every backend; the
    Cassandra store says it reads without blocking the event loop once connected, the SQLite store never."""
    import asyncio

    a = make_view(features=[("x", "double")])
    b = make_view(features=[("y", "string")], keys=[("item", "bigint"), ("shop", "string")], ttl=60)
    store.apply([a, b])
    store.write(a.name, [row(f"u{i}", {"x": float(i)}) for i in range(40)])
    store.write(b.name, [row((42, "s"), {"y": "p"}), row((7, "s"), {"y": "old"}, T0 - timedelta(seconds=50))],
                now=T0)
    requests = {a.name: [(f"u{i}",) for i in range(0, 60, 3)] + [("u3",)], b.name: [(42, "s"), (7, "s"), (1, "x")]}
    assert store.async_ready is False or store.backend == "cassandra"
    got = asyncio.run(store.read_many_views_async(requests, now=T0))
    assert store.async_ready is (store.backend == "cassandra")
    assert got == store.read_many_views(requests, now=T0)
    assert [r.found for r in got[b.name]] == [True, True, False]  # (1, "x") absent
    later = T0 + timedelta(seconds=30)  # (7, "s") has expired by then
    assert asyncio.run(store.read_many_views_async(requests, now=later)) == store.read_many_views(requests, now=later)
    with pytest.raises(ValueError, match="unknown feature view 'nope'"):
        asyncio.run(store.read_many_views_async({"nope": [("x",)]}))


# ---------------------------------------------------------------------------------------- event time


def test_older_writes_never_overwrite_newer(store):
    view = make_view()
    store.apply([view])
    t1, t2, t3 = T0, T0 + timedelta(seconds=1), T0 + timedelta(microseconds=2_000_001)
    store.write(view.name, [row("u", {"price": 2.0, "clicks": 2, "country": "new"}, t2)])
    # A late backfill (older event time) is accepted but has no effect, including its None values.
    assert store.write(view.name, [row("u", {"price": 1.0, "clicks": None, "country": "old"}, t1)]).written == 1
    now = T0 + timedelta(minutes=1)
    assert one(store, view, "u", now).values == {"price": 2.0, "clicks": 2, "country": "new", "is_member": None}
    assert one(store, view, "u", now).event_time == t2
    # A newer write replaces the whole row: a None overwrites the old value.
    store.write(view.name, [row("u", {"price": 3.0, "clicks": None}, t3)])
    result = one(store, view, "u", now)
    assert result.values == {"price": 3.0, "clicks": None, "country": None, "is_member": None}
    assert result.event_time == t3


def test_a_row_stamped_in_the_future_is_refused_whole_and_cannot_pin_the_key(store):
    # On Cassandra a row's event time is its cell timestamp: written, a future one would win every later write.
    view = make_view(features=[("v", "bigint")])
    store.apply([view])
    ahead = T0 + timedelta(days=365)
    with pytest.raises(ValueError, match=r"1 row\(s\) have an event time more than 300 s after now"):
        store.write(view.name, [row("u", {"v": 1}, T0), row("w", {"v": 9}, ahead)], now=T0)
    assert not one(store, view, "u", ahead).found and not one(store, view, "w", ahead).found
    store.write(view.name, [row("w", {"v": 2}, T0 + timedelta(hours=1))], now=T0 + timedelta(hours=1))
    assert one(store, view, "w", ahead).values == {"v": 2}


def test_versions_in_one_batch_and_replays_are_idempotent(store):
    view = make_view(features=[("v", "bigint")])
    store.apply([view])
    batch = [row(f"u{i % 10}", {"v": i}, T0 + timedelta(seconds=i)) for i in range(100)]
    random.Random(3).shuffle(batch)  # arrival order must not matter
    store.write(view.name, batch)
    keys = [(f"u{i}",) for i in range(10)]
    first = store.read(view.name, keys, now=T0)
    assert [r.values["v"] for r in first] == [90 + i for i in range(10)]
    for _ in range(2):  # replays (same rows, same event times) change nothing
        assert store.write(view.name, batch) == WriteResult(100, 0)
        assert store.read(view.name, keys, now=T0) == first


def test_same_event_time_ties(store, backend):
    """Same key and event time = same version: a replay is a no-op. Conflicting payloads at one event time are
    a producer error; the result is then backend-defined (documented in pipelines.stores.online.base)."""
    view = make_view()
    store.apply([view])
    first = {"price": 1.0, "clicks": None, "country": "b", "is_member": True}
    second = {"price": 2.0, "clicks": 5, "country": "a", "is_member": False}
    store.write(view.name, [row("replay", first)])
    store.write(view.name, [row("replay", dict(first))])
    assert one(store, view, "replay").values == first

    store.write(view.name, [row("tie", first)])
    store.write(view.name, [row("tie", second)])
    store.write(view.name, [row("tie2", second)])
    store.write(view.name, [row("tie2", first)])
    tie, tie2 = one(store, view, "tie").values, one(store, view, "tie2").values
    if backend == "sqlite":  # the later write wins, as a whole row
        assert (tie, tie2) == (second, first)
    else:  # Cassandra: per cell, order-independent: a null beats a value, else the greater value wins
        assert tie == tie2 == {"price": 2.0, "clicks": None, "country": "b", "is_member": True}


# ---------------------------------------------------------------------------------------- TTL


def test_ttl_expiry_on_read(store):
    view = make_view(ttl=60)
    store.apply([view])
    now = datetime.now(UTC)
    event_time = now - timedelta(seconds=30)
    store.write(view.name, [row("u", {"clicks": 1}, event_time)], now=now)
    assert one(store, view, "u", now=now).found
    assert one(store, view, "u", now=event_time + timedelta(seconds=60, microseconds=-1)).found
    # Expired exactly at event_time + ttl: not found, never a stale value.
    assert one(store, view, "u", now=event_time + timedelta(seconds=60)) == ReadResult(("u",), False, None, None, None)
    assert not one(store, view, "u", now=now + timedelta(days=1)).found


def test_expired_rows_are_skipped_on_write(store):
    view = make_view(ttl=60)
    store.apply([view])
    now = T0
    rows = [
        row("fresh", {"clicks": 1}, now - timedelta(seconds=59)),
        row("expired", {"clicks": 2}, now - timedelta(seconds=60)),
        row("ancient", {"clicks": 3}, now - timedelta(days=9)),
    ]
    assert store.write(view.name, rows, now=now) == WriteResult(written=1, skipped_expired=2)
    # Not stored at all: even a read at a time when they were still valid finds nothing.
    at_event = store.read(view.name, [("fresh",), ("expired",), ("ancient",)], now=now - timedelta(seconds=59))
    assert [r.found for r in at_event] == [True, False, False]


def test_cassandra_stores_event_time_as_writetime_and_remaining_ttl(cassandra_store):
    store = cassandra_store
    view, forever = make_view(ttl=3600), make_view()
    store.apply([view, forever])
    event_time = datetime.now(UTC).replace(microsecond=123456) - timedelta(seconds=100)
    before_write = datetime.now(UTC)
    store.write(view.name, [row("u", {"clicks": 1, "price": 2.0}, event_time)])
    store.write(forever.name, [row("u", {"clicks": 1}, event_time)])
    session = store._session()
    query = (
        'SELECT WRITETIME("clicks"), TTL("clicks"), TTL("price"), TTL("event_time"), "event_time" '
        'FROM "{ks}"."{table}" WHERE "user_id" = %s'
    )
    wt, ttl_clicks, ttl_price, ttl_event, stored_event = session.execute(
        query.format(ks=store.keyspace, table=view.table), ("u",)
    ).one()
    event_us = (event_time - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert wt == event_us  # USING TIMESTAMP = the event time, to the microsecond
    # remaining = ceil(ttl - (now - event_time)) at the write; Cassandra counts down from there.
    at_most = math.ceil(3600 - (before_write - event_time).total_seconds())
    for ttl in (ttl_clicks, ttl_price, ttl_event):
        assert at_most - 20 <= ttl <= at_most
    assert stored_event.replace(tzinfo=UTC) == event_time.replace(microsecond=123000)  # column: ms precision
    wt, ttl_clicks, _, _, _ = session.execute(query.format(ks=store.keyspace, table=forever.table), ("u",)).one()
    assert wt == event_us and ttl_clicks is None  # no TTL on views without one


# ---------------------------------------------------------------------------------------- validation


def test_validation_errors_name_the_view_and_field(store):
    view = make_view(keys=[("user_id", "string"), ("day", "bigint")])
    store.apply([view])
    name = view.name
    good = {"price": 1.0}

    def write_error(*rows, now=None) -> str:
        with pytest.raises(ValueError) as info:
            store.write(name, list(rows), now=now)
        return str(info.value)

    with pytest.raises(ValueError, match=r"unknown feature view 'nope'.*apply\(\)"):
        store.write("nope", [row(("u", 1), good)])
    with pytest.raises(ValueError, match=r"unknown feature view 'nope'"):
        store.read("nope", [("u", 1)])
    message = write_error(row(("u",), good))
    assert name in message and "1 value(s), expected 2" in message and "day: bigint" in message
    assert "entity key 'day' expects bigint, got str" in write_error(row(("u", "1"), good))
    assert "entity key 'day' expects bigint, got bool" in write_error(row(("u", True), good))
    assert "entity key 'user_id' must not be None" in write_error(row((None, 1), good))
    assert "entity key 'user_id' must not be an empty string" in write_error(row(("", 1), good))
    assert "feature 'price' expects double, got str" in write_error(row(("u", 1), {"price": "1.0"}))
    assert "feature 'price' expects double, got bool" in write_error(row(("u", 1), {"price": True}))
    assert "feature 'clicks' expects bigint, got float" in write_error(row(("u", 1), {"clicks": 1.0}))
    assert "outside the signed 64-bit range" in write_error(row(("u", 1), {"clicks": 2**63}))
    assert "feature 'is_member' expects boolean, got int" in write_error(row(("u", 1), {"is_member": 1}))
    assert "feature 'country' expects string, got int" in write_error(row(("u", 1), {"country": 44}))
    assert "not valid UTF-8" in write_error(row(("u", 1), {"country": "bad \udc80"}))
    assert "unknown feature(s) prise" in write_error(row(("u", 1), {"prise": 1.0}))
    assert "must be timezone-aware" in write_error(row(("u", 1), good, datetime(2026, 1, 1)))
    assert "event_time must be a timezone-aware datetime, got str" in write_error(row(("u", 1), good, "2026-01-01"))
    assert "not a FeatureRow" in write_error(("u", 1))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        store.read(name, [("u", 1)], now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match=r"entity key 'day' expects bigint"):
        store.read(name, [("u", 1), ("u", "x")])
    with pytest.raises(ValueError, match=r"keys must be a list of key tuples"):
        store.read(name, ("u", 1))
    with pytest.raises(ValueError, match=r"row 2, key \('c', 1\)\): feature 'clicks'"):
        store.write(name, [row(("a", 1), good), row(("b", 1), good), row(("c", 1), {"clicks": "x"})])
    # Nothing of a rejected batch was written, not even its valid rows.
    assert [r.found for r in store.read(name, [("a", 1), ("b", 1), ("c", 1), ("u", 1)], now=T0)] == [False] * 4


# ---------------------------------------------------------------------------------------- concurrency


def test_concurrent_writers_and_readers(store):
    """Writers race versions of the same keys (in shuffled order); readers always see whole rows of one
    version, never going back in time; the newest version wins."""
    view = make_view(features=[("version", "bigint"), ("double", "double"), ("tag", "string")])
    store.apply([view])
    keys = [(f"k{i}",) for i in range(20)]
    versions = 80
    errors: list[BaseException] = []
    stop = threading.Event()

    def payload(version):
        return {"version": version, "double": version * 2.0, "tag": f"v{version}"}

    def writer(w: int) -> None:
        try:
            mine = list(range(w, versions, 4))
            random.Random(w).shuffle(mine)
            for version in mine:
                rows = [row(k, payload(version), T0 + timedelta(seconds=version)) for k in keys]
                assert store.write(view.name, rows).written == len(keys)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        last = dict.fromkeys(keys, -1)
        try:
            while not stop.is_set():
                for result in store.read(view.name, keys, now=T0):
                    if not result.found:
                        assert last[result.key] == -1
                        continue
                    version = result.values["version"]
                    assert result.values == payload(version)  # a whole row of one version
                    assert result.event_time == T0 + timedelta(seconds=version)
                    assert version >= last[result.key]  # monotonic
                    last[result.key] = version
                single = store.read(view.name, [keys[0]], now=T0)[0]
                assert not single.found or single.values == payload(single.values["version"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=300)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors
    final = store.read(view.name, keys, now=T0)
    assert [r.values for r in final] == [payload(versions - 1)] * len(keys)


# ---------------------------------------------------------------------------------------- unavailable


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_unavailable_store_raises_clearly(backend_settings, tmp_path):
    backend = backend_settings.online_store.backend
    if backend == "cassandra":
        port = _closed_port()
        broken = _with(backend_settings, cassandra={"port": port})
        where = f"127.0.0.1:{port}"
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        broken = _with(backend_settings, online_store={"sqlite_path": str(blocker / "online.db")})
        where = str(blocker / "online.db")
    view = make_view()
    store = get_online_store(broken)  # no connection yet: constructing never fails
    try:
        for action in (
            lambda: store.write(view.name, [row("u", {"price": 1.0})]),
            lambda: store.apply([view]),
            lambda: store.read(view.name, [("u",)]),
        ):
            with pytest.raises(OnlineStoreError) as info:
                action()
            assert backend in str(info.value) and where in str(info.value)
    finally:
        store.close()


def test_cassandra_keyspace_replication_and_connection(cassandra_store, cassandra_settings):
    from pipelines.config import load_settings
    from pipelines.stores.online.cassandra import replication_for

    store = cassandra_store
    store.apply([make_view()])
    replication = store._execute(
        "reading replication", "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (store.keyspace,),
    ).one()[0]
    # The test profile manages its single node: SimpleStrategy with the configured replication factor.
    assert replication["class"].endswith("SimpleStrategy")
    assert replication["replication_factor"] == str(cassandra_settings.cassandra.replication_factor)
    # A real cluster (managed: false) gets NetworkTopologyStrategy in the local datacenter.
    assert replication_for(load_settings("cluster")) == {
        "class": "NetworkTopologyStrategy", "datacenter1": "3"}
    assert store._cluster.protocol_version == 5
    from cassandra import ConsistencyLevel

    profiles = store._cluster.profile_manager
    assert profiles.default.consistency_level == ConsistencyLevel.LOCAL_ONE  # reads
    assert profiles.profiles["atelier_online_write"].consistency_level == ConsistencyLevel.LOCAL_QUORUM


def test_cassandra_connection_lost_during_writes_is_an_error(cassandra_store, cassandra_settings):
    """A connected store whose requests fail raises (nothing reported written); a retry succeeds."""
    store = cassandra_store
    view = make_view()
    store.apply([view])
    store.write(view.name, [row("warm", {"price": 0.0})])  # connected, statements prepared
    good = get_online_store(cassandra_settings)
    # Lose every connection under the store (the shared node keeps running for the other tests).
    store._cluster.shutdown()
    rows = [row(f"u{i}", {"price": float(i)}) for i in range(50)]
    with pytest.raises(OnlineStoreError) as info:
        store.write(view.name, rows)
    assert "cassandra online store" in str(info.value) and "retry" in str(info.value)
    try:
        assert good.write(view.name, rows) == WriteResult(50, 0)  # the retry elsewhere succeeds
        assert all(r.found for r in good.read(view.name, [r.key for r in rows], now=T0))
    finally:
        good.close()


def test_cassandra_simulated_clock_stores_no_wall_clock_ttl(cassandra_store):
    """A replay of 2013 writes with now=2013: a wall-clock TTL would drop a weather row (3 h TTL) three real
    hours later although the simulated reader still finds it fresh. Reads keep expiring by event time."""
    store = cassandra_store
    view = make_view(ttl=3 * 3600)
    store.apply([view])
    simulated_now = datetime(2013, 12, 30, 12, 0, tzinfo=UTC)
    store.write(view.name, [row("u", {"clicks": 1}, simulated_now - timedelta(minutes=10))], now=simulated_now)
    [stored_ttl] = store._session().execute(
        f'SELECT TTL("clicks") FROM "{store.keyspace}"."{view.table}" WHERE "user_id" = %s', ("u",)).one()
    assert stored_ttl is None
    assert one(store, view, "u", now=simulated_now + timedelta(hours=2)).found
    assert not one(store, view, "u", now=simulated_now + timedelta(hours=3)).found


# ---------------------------------------------------------------------------------------- clear


def test_clear_deletes_every_row_and_keeps_the_view(store):
    view, other = make_view(), make_view()
    store.apply([view, other])
    store.write(view.name, [row("a", {"clicks": 1}), row("b", {"clicks": 2})], now=T0)
    store.write(other.name, [row("a", {"clicks": 3})], now=T0)
    store.clear(view.name)
    assert [r.found for r in store.read(view.name, [("a",), ("b",)], now=T0)] == [False, False]
    assert one(store, other, "a").found  # only the named view
    # Older event times can be written again after a clear (a replay restarting its clock).
    store.write(view.name, [row("a", {"clicks": 9}, T0 - timedelta(days=1))], now=T0)
    assert one(store, view, "a").values["clicks"] == 9


# ---------------------------------------------------------------------------------------- freshness


def test_newest_event_time_is_the_newest_written_and_never_goes_back(store, backend_settings):
    view = make_view()
    store.apply([view])
    assert store.newest_event_time(view.name) is None  # nothing written yet
    store.write(view.name, [row("a", {"clicks": 1}, T0 - timedelta(hours=1)), row("b", {"clicks": 2}, T0)])
    newest = store.newest_event_time(view.name)
    assert newest == T0 and newest.microsecond == 123456  # exact to the microsecond
    assert newest.utcoffset() == timedelta(0) and newest.tzinfo == UTC
    # A later write of OLDER rows (a backfill) leaves it; a newer one raises it, in any time zone.
    store.write(view.name, [row("c", {"clicks": 3}, T0 - timedelta(days=3))])
    assert store.newest_event_time(view.name) == T0
    later = (T0 + timedelta(minutes=5, microseconds=7)).astimezone(timezone(timedelta(hours=2)))
    store.write(view.name, [row("a", {"clicks": 4}, later), row("d", {"clicks": 5}, T0)])
    assert store.newest_event_time(view.name) == later
    assert store.newest_event_time(view.name).tzinfo == UTC
    # Another process reads the same value from the store.
    with get_online_store(backend_settings) as other:
        assert other.newest_event_time(view.name) == later


def test_newest_event_time_ignores_rows_skipped_as_expired(store):
    view = make_view(ttl=60)
    store.apply([view])
    expired_only = [row("x", {"clicks": 1}, T0 - timedelta(seconds=60))]
    assert store.write(view.name, expired_only, now=T0) == WriteResult(0, 1)
    assert store.newest_event_time(view.name) is None
    store.write(view.name, [row("a", {"clicks": 1}, T0 - timedelta(seconds=30))], now=T0)
    # Judged at a later now, a row NEWER than the stored one is already expired: skipped, not counted.
    newer_but_expired = [row("b", {"clicks": 2}, T0 + timedelta(minutes=10))]
    assert store.write(view.name, newer_but_expired, now=T0 + timedelta(hours=1)) == WriteResult(0, 1)
    assert store.newest_event_time(view.name) == T0 - timedelta(seconds=30)


def test_newest_event_time_under_concurrent_writers(store):
    """Writers race batches in shuffled order: the watermark ends at the greatest event time written and a
    reader never sees it go back."""
    view = make_view(features=[("version", "bigint")])
    store.apply([view])
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            mine = list(range(w, 40, 4))
            random.Random(w).shuffle(mine)
            for version in mine:
                rows = [row(f"k{i}", {"version": version}, T0 + timedelta(seconds=version, microseconds=i))
                        for i in range(5)]
                store.write(view.name, rows)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        last = None
        try:
            while not stop.is_set():
                newest = store.newest_event_time(view.name)
                assert last is None or (newest is not None and newest >= last)
                last = newest
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    watcher = threading.Thread(target=reader)
    for t in [watcher, *writers]:
        t.start()
    for t in writers:
        t.join(timeout=300)
    stop.set()
    watcher.join(timeout=60)
    assert not errors, errors
    assert store.newest_event_time(view.name) == T0 + timedelta(seconds=39, microseconds=4)


def test_clear_resets_newest_event_time(store):
    view, other = make_view(), make_view()
    store.apply([view, other])
    store.write(view.name, [row("a", {"clicks": 1}, T0)])
    store.write(other.name, [row("a", {"clicks": 1}, T0)])
    store.clear(view.name)
    assert store.newest_event_time(view.name) is None
    assert store.newest_event_time(other.name) == T0  # only the named view
    # A replay restarting its clock starts a new watermark, older than the cleared one.
    store.write(view.name, [row("a", {"clicks": 2}, T0 - timedelta(days=1))])
    assert store.newest_event_time(view.name) == T0 - timedelta(days=1)


def test_newest_event_time_of_an_unknown_view_raises(store):
    with pytest.raises(ValueError, match="unknown feature view 'no_such_view'"):
        store.newest_event_time("no_such_view")
    with pytest.raises(ValueError, match="not a valid view name"):
        store.newest_event_time("Not A View")


def test_cassandra_watermarks_are_one_row_per_write_newest_first(cassandra_store):
    """Writers only insert (no read-modify-write): one row per write, and the read takes the first row."""
    store = cassandra_store
    view = make_view()
    store.apply([view])
    for event_time in (T0, T0 - timedelta(hours=1), T0 + timedelta(hours=1, microseconds=1)):
        store.write(view.name, [row("u", {"clicks": 1}, event_time)])
    query = f'SELECT newest_us FROM "{store.keyspace}".feature_view_watermarks WHERE "view" = %s'
    stored = [us for (us,) in store._session().execute(query, (view.name,))]
    to_us = [(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
             for t in (T0 + timedelta(hours=1, microseconds=1), T0, T0 - timedelta(hours=1))]
    assert stored == to_us
    store.clear(view.name)
    assert list(store._session().execute(query, (view.name,))) == []
