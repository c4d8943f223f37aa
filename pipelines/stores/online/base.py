"""The online feature store interface, shared by every backend (SQLite embedded, Cassandra).

An online store keeps, per feature view and entity key, the LATEST row of feature values and the event time
those values describe. The semantics below hold for every backend; ``tests/integration/test_online_store.py``
runs one suite against all of them.

Versioning by event time
    A row's ``event_time`` is its version. A write replaces the stored row of its key as a whole (every
    feature, nulls included) only if its event time is >= the stored one; an older write is accepted and has
    no effect (also on features added to the view after the stored row was written). Replays and late
    backfills are therefore safe, and a failed write can always be retried as a whole. Ties (same key, same event time) are the same version: replaying the same data is a no-op. Two
    *different* payloads with the same event time are a producer error (a correction must carry a newer event
    time); what is kept then is backend-defined: SQLite keeps the later write; Cassandra resolves each cell on
    its own by its timestamp-tie rule (a null beats a value, otherwise the greater value wins), independent
    of arrival order.

TTL
    With ``ttl_seconds`` set, a row whose ``event_time + ttl <= now`` is expired: reads return it as not found,
    and writes skip it (counted in ``WriteResult.skipped_expired``). Reads decide expiry from the row's event
    time and the caller's ``now``, never from storage clocks, so results are the same on every backend; the
    Cassandra backend additionally stores cells with the remaining TTL so expired data is reclaimed.

Nulls and absent keys
    ``None`` is a stored value ("missing feature") and reads back as ``None``. A feature left out of a row's
    ``values`` is stored as ``None``. NaN doubles are stored as ``None`` (SQLite cannot store NaN, and a NaN
    feature means "missing" here). An absent or expired key reads back as ``found=False, values=None``.

Errors
    Bad input (unknown view, unknown feature, wrong key arity or type, wrong value type, naive datetimes) raises
    ``ValueError`` naming the view and the field, before anything is written: ``write`` validates the whole
    call first (so pass rows in batches, e.g. up to ~100k per call). No implicit conversions beyond int ->
    double and numpy scalars -> Python values. A storage failure raises :class:`OnlineStoreError` naming the
    backend and where it is (path, hosts); a write that raises may have stored some of its rows (Cassandra)
    or none (SQLite) and is never reported as done: retry it (a replay is harmless, see above).

Future event times
    ``write`` refuses (ValueError, nothing written) a call holding a row whose event time is more than
    ``max_future_s`` (default 300 s of clock skew) after ``now``: an event time is a row's version, so a row
    stamped in the future (a producer's wrong clock or time zone) would win over every correct write until
    that time came.

Views
    ``apply`` records each view's schema in the store itself (table ``feature_views``), so any process can
    read and write a view without knowing its schema in advance; a store caches schemas, ``refresh()``
    forgets them after another process changed a view. Instances are thread-safe.

Freshness
    Every ``write`` also raises the view's watermark (table ``feature_view_watermarks``) to the newest event
    time among the rows it wrote, so ``newest_event_time`` answers "how fresh is this view" with one small
    read, never a scan of the view's rows.
"""

from __future__ import annotations

import abc
import json
import math
import numbers
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, ClassVar

from pipelines.timestamps import EPOCH, from_micros, to_micros

FEATURE_TYPES = ("double", "bigint", "string", "boolean")
"""Feature value types. double = IEEE float64, bigint = signed 64-bit integer, string = UTF-8 text."""
KEY_TYPES = ("bigint", "string")
"""Entity key column types (no doubles: float equality makes poor keys; no booleans: not an entity)."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,44}$")
"""View, key and feature names: lower-case identifiers that fit in a Cassandra table name with its prefix."""
RESERVED_COLUMNS = frozenset({"event_time", "event_time_us"})
TABLE_PREFIX = "fv_"
"""Each view is stored in table ``fv_<view name>`` (both backends); the view registry in ``feature_views``, the
views' newest event times (watermarks) in ``feature_view_watermarks``."""
REGISTRY_TABLE = "feature_views"
WATERMARK_TABLE = "feature_view_watermarks"

MAX_TTL_SECONDS = 630_720_000
"""20 years: Cassandra's maximum TTL."""
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1

_US = 1_000_000
_LAST = itemgetter(-1)
DEFAULT_MAX_FUTURE_S = 300.0  # clock skew tolerated between a producer and the writer (OnlineStore.max_future_s)


class OnlineStoreError(RuntimeError):
    """The store could not do what was asked (unreachable, timed out, storage error).

    The message names the backend and where it is. A write that raised is not done: retry it (writes are
    versioned by event time, so a replay is harmless).
    """


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class FeatureViewSchema:
    """A feature view: entity key columns, typed feature columns and an optional TTL.

    ``entity_keys`` and ``features`` are ``(name, type)`` pairs; key types from :data:`KEY_TYPES`, feature types
    from :data:`FEATURE_TYPES`. Order matters: keys are passed as tuples in ``entity_keys`` order.
    """

    name: str
    entity_keys: list[tuple[str, str]]
    features: list[tuple[str, str]]
    ttl_seconds: int | None = None

    def __post_init__(self) -> None:
        where = f"feature view '{self.name}'"
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(f"{where}: the name must match {NAME_PATTERN.pattern}")
        keys = _pairs(self.entity_keys, where, "entity_keys")
        features = _pairs(self.features, where, "features")
        object.__setattr__(self, "entity_keys", keys)
        object.__setattr__(self, "features", features)
        if not keys:
            raise ValueError(f"{where}: at least one entity key is required")
        seen: set[str] = set()
        for kind, pairs, types in (("entity key", keys, KEY_TYPES), ("feature", features, FEATURE_TYPES)):
            for name, type_name in pairs:
                if not NAME_PATTERN.match(name):
                    raise ValueError(f"{where}: {kind} name '{name}' must match {NAME_PATTERN.pattern}")
                if name in RESERVED_COLUMNS:
                    raise ValueError(f"{where}: {kind} name '{name}' is reserved by the online store")
                if name in seen:
                    raise ValueError(f"{where}: column name '{name}' is used twice")
                seen.add(name)
                if type_name not in types:
                    raise ValueError(
                        f"{where}: {kind} '{name}' has type '{type_name}'; allowed: {', '.join(types)}"
                    )
        ttl = self.ttl_seconds
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_SECONDS
        ):
            raise ValueError(f"{where}: ttl_seconds must be None or an int in 1..{MAX_TTL_SECONDS}, got {ttl!r}")

    @property
    def key_names(self) -> list[str]:
        return [name for name, _ in self.entity_keys]

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]

    @property
    def table(self) -> str:
        return TABLE_PREFIX + self.name

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name, "entity_keys": [list(p) for p in self.entity_keys],
            "features": [list(p) for p in self.features], "ttl_seconds": self.ttl_seconds,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureViewSchema:
        data = json.loads(text)
        return cls(
            name=data["name"], entity_keys=[tuple(p) for p in data["entity_keys"]],
            features=[tuple(p) for p in data["features"]], ttl_seconds=data.get("ttl_seconds"),
        )


def _pairs(value: Any, where: str, what: str) -> list[tuple[str, str]]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{where}: {what} must be a list of (name, type) pairs")
    pairs = []
    for item in value:
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
            raise ValueError(f"{where}: {what} must be a list of (name, type) pairs, got {item!r}")
        name, type_name = item
        if not isinstance(name, str) or not isinstance(type_name, str):
            raise ValueError(f"{where}: {what} must be a list of (name, type) pairs of strings, got {item!r}")
        pairs.append((name, type_name))
    return pairs


@dataclass(slots=True)
class FeatureRow:
    """One entity's feature values at ``event_time`` (timezone-aware; stored as UTC, microsecond precision)."""

    key: tuple
    values: dict[str, Any]
    event_time: datetime


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int
    """Rows the store accepted (durably, at the configured consistency). Includes rows that had no effect
    because the stored row is newer (not detectable on Cassandra without a read)."""
    skipped_expired: int
    """Rows not written because their event_time + ttl <= now."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    key: tuple
    found: bool
    values: dict[str, Any] | None
    event_time: datetime | None
    """The event time of the returned values (UTC)."""
    age_seconds: float | None
    """now - event_time (negative if the event time is in the future)."""


# ------------------------------------------------------------------------------------------ validation


class _Bad(Exception):
    """A value does not fit its column; the message says why."""


class _Slow(Exception):
    """Internal: a row needs the full (slow) checks."""


def _numpy_scalar(v: Any) -> Any:
    """A numpy scalar as the Python value (no numpy import needed); anything else unchanged."""
    if type(v).__module__ == "numpy" and hasattr(v, "item"):
        return v.item()
    return v


def _to_double(v: Any) -> float | None:
    t = type(v)
    if t is float:
        return None if v != v else v
    if t is int:
        return float(v)
    v = _numpy_scalar(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _Bad(f"expects double, got {type(v).__name__} {v!r:.60}")
    v = float(v)
    return None if math.isnan(v) else v


def _to_bigint(v: Any) -> int:
    if type(v) is not int:
        v = _numpy_scalar(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise _Bad(f"expects bigint, got {type(v).__name__} {v!r:.60}")
        v = int(v)
    if not BIGINT_MIN <= v <= BIGINT_MAX:
        raise _Bad(f"expects bigint, {v} is outside the signed 64-bit range")
    return v


def _to_string(v: Any) -> str:
    if type(v) is not str:
        if not isinstance(v, str):
            raise _Bad(f"expects string, got {type(v).__name__} {v!r:.60}")
        v = str(v)
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Bad(f"expects string, {v!r:.60} is not valid UTF-8 ({exc.reason})") from None
    return v


def _to_boolean(v: Any) -> bool:
    if type(v) is bool:
        return v
    v = _numpy_scalar(v)
    if type(v) is not bool:
        raise _Bad(f"expects boolean, got {type(v).__name__} {v!r:.60}")
    return v


def _to_key_string(v: Any) -> str:
    v = _to_string(v)
    if not v:
        raise _Bad("must not be an empty string")
    return v


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "double": _to_double, "bigint": _to_bigint, "string": _to_string, "boolean": _to_boolean,
}
KEY_CONVERTERS: dict[str, Callable[[Any], Any]] = {"bigint": _to_bigint, "string": _to_key_string}


def now_micros(now: datetime | None) -> int:
    if now is None:
        return to_micros(datetime.now(UTC), "now")
    return to_micros(now, "now")


class ViewCodec:
    """Validation and conversion for one view: rows into parameter lists, stored values into ReadResults.

    Parameter lists are ``[*key values, *feature values, event_time_us]`` in schema order.
    """

    def __init__(self, view: FeatureViewSchema) -> None:
        self.view = view
        self.where = f"feature view '{view.name}'"
        self.key_names = view.key_names
        self.feature_names = view.feature_names
        self.n_keys = len(view.entity_keys)
        self._key_convs = [(name, KEY_CONVERTERS[t]) for name, t in view.entity_keys]
        self._feature_convs = [(name, CONVERTERS[t]) for name, t in view.features]
        self._feature_set = frozenset(self.feature_names)
        self.ttl_us = view.ttl_seconds * _US if view.ttl_seconds is not None else None
        self.key_doc = "(" + ", ".join(f"{n}: {t}" for n, t in view.entity_keys) + ")"
        self._rows_fast = self._compile_rows()

    def future_error(self, params: list[list], now_us: int, max_future_s: float) -> str:
        """The message refusing rows stamped more than ``max_future_s`` after ``now_us`` (see write)."""
        bound = now_us + round(max_future_s * 1_000_000)
        ahead = [p for p in params if p[-1] > bound]
        first = max(ahead, key=_LAST)
        return (f"{self.where}: {len(ahead)} row(s) have an event time more than {max_future_s:g} s after now "
                f"({from_micros(now_us).isoformat()}); the latest: key {tuple(first[:self.n_keys])!r:.80}, "
                f"event_time {from_micros(first[-1]).isoformat()}. An event time is the row's version, so it "
                "would win over every later write until then; nothing was written (fix the producer's clock or "
                "time zone, or raise online_store.max_future_event_s)")

    # -- keys

    def key(self, key: Any, where: str = "") -> list:
        """The key as a list of validated column values; ValueError naming the view and the key column."""
        if type(key) is not tuple:
            if isinstance(key, list):
                key = tuple(key)
            else:
                raise ValueError(
                    f"{self.where}{where}: a key must be a tuple {self.key_doc}, got {type(key).__name__} "
                    f"{key!r:.60}"
                )
        if len(key) != self.n_keys:
            raise ValueError(
                f"{self.where}{where}: key {key!r:.80} has {len(key)} value(s), expected {self.n_keys} "
                f"{self.key_doc}"
            )
        out = []
        for (name, conv), value in zip(self._key_convs, key, strict=True):
            if value is None:
                raise ValueError(f"{self.where}{where}: entity key '{name}' must not be None")
            try:
                out.append(conv(value))
            except _Bad as exc:
                raise ValueError(f"{self.where}{where}: entity key '{name}' {exc}") from None
        return out

    def keys(self, keys: Sequence[Any]) -> list[tuple]:
        if isinstance(keys, (str, bytes, tuple)) or not isinstance(keys, Sequence):
            raise ValueError(
                f"{self.where}: keys must be a list of key tuples {self.key_doc}, got {type(keys).__name__}"
            )
        return [tuple(self.key(k, f" (key {i})")) for i, k in enumerate(keys)]

    # -- writes

    def rows(self, rows: Iterable[FeatureRow], now_us: int) -> tuple[list[list], int]:
        """Validate every row; returns (parameter lists of the rows to write, count skipped as expired)."""
        if isinstance(rows, FeatureRow):
            raise ValueError(f"{self.where}: write() takes an iterable of FeatureRow, got a single FeatureRow")
        return self._rows_fast(rows, now_us)

    def row(self, row: Any, i: int) -> list:
        """One row's parameter list (with event_time_us last), fully checked; ValueError naming the field."""
        where = self.where
        try:
            key, values, event_time = row.key, row.values, row.event_time
        except AttributeError:
            raise ValueError(f"{where}: row {i} is a {type(row).__name__}, not a FeatureRow") from None
        params = self.key(key, f" (row {i})")
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} (row {i}): values must be a dict, got {type(values).__name__}")
        if not self._feature_set.issuperset(values):
            unknown = sorted(str(n) for n in values if n not in self._feature_set)
            raise ValueError(
                f"{where} (row {i}): unknown feature(s) {', '.join(unknown)} "
                f"(features: {', '.join(self.feature_names)})"
            )
        for name, conv in self._feature_convs:
            value = values.get(name)
            if value is not None:
                try:
                    value = conv(value)
                except _Bad as exc:
                    raise ValueError(f"{where} (row {i}, key {key!r:.60}): feature '{name}' {exc}") from None
            params.append(value)
        params.append(to_micros(event_time, f"{where} (row {i}): event_time"))
        return params

    def _compile_rows(self) -> Callable[[Iterable[FeatureRow], int], tuple[list[list], int]]:
        """A validator specialised for this view (the write path's main CPU cost): exact-type checks of every
        value inline, without a function call per value; anything else — conversions (int to double, numpy
        scalars, other timezones) and every error — goes through :meth:`row`.

        The generated code only ever contains identifiers validated by NAME_PATTERN.
        """
        fast = {
            "double": "({v} is None or (type({v}) is float and {v} == {v}))",
            "bigint": "({v} is None or (type({v}) is int and _MIN <= {v} <= _MAX))",
            "string": "({v} is None or (type({v}) is str and {v}.isascii()))",
            "boolean": "({v} is None or type({v}) is bool)",
        }
        key_fast = {
            "bigint": "(type({v}) is int and _MIN <= {v} <= _MAX)",
            "string": "(type({v}) is str and {v} != '' and {v}.isascii())",
        }
        features = self.view.features
        namespace: dict[str, Any] = {
            "_Slow": _Slow, "_datetime": datetime, "_UTC": UTC, "_EPOCH": EPOCH, "_MIN": BIGINT_MIN,
            "_MAX": BIGINT_MAX, "_feature_set": self._feature_set, "_row": self.row,
        }
        lines = [
            "def _rows(rows, now_us):",
            "    out = []",
            "    append = out.append",
            "    skipped = 0",
            "    for i, row in enumerate(rows):",
            "        try:",
            "            key = row.key",
            "            values = row.values",
            "            event_time = row.event_time",
            f"            if type(key) is not tuple or len(key) != {self.n_keys} or type(values) is not dict:",
            "                raise _Slow",
            "            if type(event_time) is not _datetime or event_time.tzinfo is not _UTC:",
            "                raise _Slow",
        ]
        key_names = []
        for j, (_, type_name) in enumerate(self.view.entity_keys):
            v = f"k{j}"
            key_names.append(v)
            lines.append(f"            {v} = key[{j}]")
            lines.append(f"            if not {key_fast[type_name].format(v=v)}:")
            lines.append("                raise _Slow")
        lines += [
            "            d = event_time - _EPOCH",
            "            event_us = (d.days * 86400 + d.seconds) * 1000000 + d.microseconds",
        ]
        indent = "            "
        lines.append(f"{indent}if not _feature_set.issuperset(values):")
        lines.append(f"{indent}    raise _Slow")
        if features:
            lines.append(f"{indent}get = values.get")
        names = list(key_names)
        for j, (name, type_name) in enumerate(features):
            v = f"f{j}"
            names.append(v)
            lines.append(f"{indent}{v} = get({name!r})")
            lines.append(f"{indent}if not {fast[type_name].format(v=v)}:")
            lines.append(f"{indent}    raise _Slow")
        lines.append(f"{indent}params = [{', '.join(names)}, event_us]")
        # Anything unusual: the full checks and conversions (and every error message).
        lines += [
            "        except (_Slow, AttributeError):",
            "            params = _row(row, i)",
            "            event_us = params[-1]",
        ]
        if self.ttl_us is not None:
            lines += [
                f"        if event_us + {self.ttl_us} <= now_us:",
                "            skipped += 1",
                "            continue",
            ]
        lines += ["        append(params)", "    return out, skipped"]
        exec("\n".join(lines), namespace)  # noqa: S102 - identifiers validated by NAME_PATTERN
        return namespace["_rows"]

    # -- reads

    def result(self, key: tuple, stored: tuple | list | None, now_us: int) -> ReadResult:
        """A ReadResult from ``stored`` = (*feature values in schema order, event_time_us) or None."""
        if stored is None:
            return ReadResult(key, False, None, None, None)
        event_us = stored[-1]
        if event_us is None or (self.ttl_us is not None and event_us + self.ttl_us <= now_us):
            return ReadResult(key, False, None, None, None)
        values = dict(zip(self.feature_names, stored, strict=False))  # stored[-1] is not a feature
        return ReadResult(key, True, values, from_micros(event_us), (now_us - event_us) / _US)

    @staticmethod
    def missing(key: tuple) -> ReadResult:
        return ReadResult(key, False, None, None, None)


# ------------------------------------------------------------------------------------------ the store


@dataclass
class _Plan:
    view: FeatureViewSchema
    create: bool
    add_columns: list[tuple[str, str]] = field(default_factory=list)


class OnlineStore(abc.ABC):
    """The online feature store. Thread-safe: one instance may be shared by the threads of a process."""

    backend: ClassVar[str]
    max_future_s: float = DEFAULT_MAX_FUTURE_S
    """How far after ``now`` a written row's event time may be (clock skew between producers, seconds);
    ``get_online_store`` sets it from ``online_store.max_future_event_s``. See "Future event times"."""

    def __init__(self) -> None:
        self._codecs: dict[str, ViewCodec] = {}
        self._codecs_lock = threading.Lock()
        self._apply_lock = threading.Lock()

    # -- public API

    def apply(self, views: Iterable[FeatureViewSchema]) -> None:
        """Create or upgrade the storage of ``views``. Idempotent.

        Supported changes: adding features (existing rows read them as None until rewritten), removing
        features (reads no longer return them; the column stays in storage, unmaintained, so the name cannot
        be reused), changing the TTL (applies to reads at once). Changing entity keys or a feature's type, or
        re-adding a removed feature, raises ValueError before any change is made.
        """
        views = list(views)
        names = set()
        for view in views:
            if not isinstance(view, FeatureViewSchema):
                raise ValueError(f"apply() takes FeatureViewSchema objects, got {type(view).__name__}")
            if view.name in names:
                raise ValueError(f"feature view '{view.name}' is given twice")
            names.add(view.name)
        with self._apply_lock:
            self._prepare_storage()
            plans = [self._plan(view) for view in views]  # every check first: nothing changes on error
            for plan in plans:
                self._apply_plan(plan)
                self._save_view(plan.view)
                with self._codecs_lock:
                    self._codecs[plan.view.name] = ViewCodec(plan.view)
                self._view_changed(plan.view)

    def write(
        self, view_name: str, rows: Iterable[FeatureRow], *, now: datetime | None = None
    ) -> WriteResult:
        """Upsert ``rows`` (see the module doc for event-time and TTL semantics).

        Every row is validated before anything is written. ``now`` (default: the current time) only decides
        which rows are already expired and, on Cassandra, the remaining TTL stored with each row.
        """
        codec = self._codec(view_name)
        now_us = now_micros(now)
        params, skipped = codec.rows(rows, now_us)
        if params:
            # Taken before _write, which may reuse the parameter lists (Cassandra rewrites them in place).
            newest_us = max(map(_LAST, params))
            if newest_us > now_us + round(self.max_future_s * 1_000_000):
                raise ValueError(codec.future_error(params, now_us, self.max_future_s))
            self._write(codec, params, now_us, newest_us)
        return WriteResult(len(params), skipped)

    def read(
        self, view_name: str, keys: Sequence[tuple], now: datetime | None = None
    ) -> list[ReadResult]:
        """The latest row of each key, in the order of ``keys``; absent or expired keys are found=False."""
        codec = self._codec(view_name)
        now_us = now_micros(now)
        normalized = codec.keys(keys)
        if not normalized:
            return []
        stored = self._read(codec, normalized)
        return [codec.result(k, s, now_us) for k, s in zip(keys, stored, strict=True)]

    def read_many_views(
        self, requests: Mapping[str, Sequence[tuple]], now: datetime | None = None
    ) -> dict[str, list[ReadResult]]:
        """``read`` for several views at one ``now``: {view name: results in the order of its keys}."""
        if now is None:
            now = datetime.now(UTC)
        return {name: self.read(name, keys, now=now) for name, keys in requests.items()}

    @property
    def async_ready(self) -> bool:
        """True when :meth:`read_many_views_async` runs on an event loop without blocking it (a backend that
        reads over the network with the driver's asynchronous requests, once connected). False by default."""
        return False

    async def read_many_views_async(
        self, requests: Mapping[str, Sequence[tuple]], now: datetime | None = None
    ) -> dict[str, list[ReadResult]]:
        """:meth:`read_many_views` for asyncio callers. This default runs the synchronous read in the caller's
        thread (fine for an embedded store, whose reads take microseconds); a backend that waits on the
        network overrides it and says so with :attr:`async_ready`."""
        return self.read_many_views(requests, now)

    def clear(self, view_name: str) -> None:
        """Delete every row of a view (its schema stays applied). For simulations that restart the clock
        (``atelier replay``): rows are versioned by event time, so a store that already holds later rows
        would otherwise keep them."""
        self._clear(self._codec(view_name))

    def newest_event_time(self, view_name: str) -> datetime | None:
        """The newest event time written to the view (UTC, to the microsecond), or None if nothing was written
        since it was applied or last cleared; one small read, never a scan of the view's rows.

        It counts the rows ``write`` accepted, not those skipped as expired, and never goes back: a later write
        of older rows leaves it, and so do rows that expire afterwards. The Cassandra backend keeps each write's
        watermark for the view's TTL (30 days without one): once the write that set it is older than that, it
        may read an older time or None there.
        """
        newest_us = self._read_watermark(self._codec(view_name))
        return None if newest_us is None else from_micros(newest_us)

    def views(self) -> dict[str, FeatureViewSchema]:
        """Every view applied to this store (read from the store's registry)."""
        found = self._load_views()
        with self._codecs_lock:
            for name, view in found.items():
                if name not in self._codecs or self._codecs[name].view != view:
                    self._codecs[name] = ViewCodec(view)
        return found

    def view(self, name: str) -> FeatureViewSchema:
        return self._codec(name).view

    def refresh(self) -> None:
        """Forget cached view schemas (e.g. after another process applied a change)."""
        with self._codecs_lock:
            self._codecs.clear()

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> OnlineStore:
        """The store configured by ``settings`` (pipelines.config.Settings); ``options`` for the constructor."""
        raise NotImplementedError

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The store cannot be used afterwards."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared machinery

    def _codec(self, view_name: str) -> ViewCodec:
        codec = self._codecs.get(view_name)
        if codec is not None:
            return codec
        if not isinstance(view_name, str) or not NAME_PATTERN.match(view_name):
            raise ValueError(f"unknown feature view {view_name!r} (not a valid view name)")
        view = self._load_view(view_name)
        if view is None:
            known = sorted(self._load_views())
            raise ValueError(
                f"unknown feature view '{view_name}' in the {self.backend} online store "
                f"(known: {', '.join(known) or 'none'}); apply() its schema first"
            )
        codec = ViewCodec(view)
        with self._codecs_lock:
            return self._codecs.setdefault(view_name, codec)

    def _plan(self, view: FeatureViewSchema) -> _Plan:
        columns = self._table_columns(view)
        if columns is None:
            return _Plan(view, create=True)
        stored_keys, stored_other = columns
        where = f"feature view '{view.name}'"
        if stored_keys != list(view.entity_keys):
            raise ValueError(
                f"{where}: entity keys cannot change (stored: {_doc(stored_keys)}, given: "
                f"{_doc(view.entity_keys)}); create a new view instead"
            )
        if "event_time" not in stored_other and "event_time_us" not in stored_other:
            raise ValueError(f"{where}: table {view.table} exists but was not created by the online store")
        registered = self._load_view(view.name)
        add = []
        for name, type_name in view.features:
            stored_type = stored_other.get(name)
            if stored_type is None:
                add.append((name, type_name))
            elif registered is not None and name not in registered.feature_names:
                raise ValueError(
                    f"{where}: feature '{name}' was removed from this view earlier and its column holds stale "
                    f"values; it cannot be added back under the same name"
                )
            elif stored_type != type_name:
                raise ValueError(
                    f"{where}: feature '{name}' is stored as {stored_type}, cannot change it to {type_name}; "
                    f"add a feature with a new name instead"
                )
        return _Plan(view, create=False, add_columns=add)

    def _view_changed(self, view: FeatureViewSchema) -> None:  # noqa: B027 - optional hook
        """Hook: drop per-view caches (prepared statements) after apply."""

    # -- backend hooks

    @abc.abstractmethod
    def _prepare_storage(self) -> None:
        """Create the keyspace/registry if needed (called by apply)."""

    @abc.abstractmethod
    def _table_columns(self, view: FeatureViewSchema) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
        """(key columns in key order, {other column: type}) of the view's table, None if it does not exist."""

    @abc.abstractmethod
    def _apply_plan(self, plan: _Plan) -> None: ...

    @abc.abstractmethod
    def _save_view(self, view: FeatureViewSchema) -> None: ...

    @abc.abstractmethod
    def _load_view(self, name: str) -> FeatureViewSchema | None: ...

    @abc.abstractmethod
    def _load_views(self) -> dict[str, FeatureViewSchema]: ...

    @abc.abstractmethod
    def _write(self, codec: ViewCodec, params: list[list], now_us: int, newest_us: int) -> None:
        """Write validated parameter lists, then raise the view's watermark to ``newest_us`` (the greatest
        event_time_us of ``params``; in the rows' transaction where the backend has one); raise
        OnlineStoreError unless every row and the watermark were stored."""

    @abc.abstractmethod
    def _clear(self, codec: ViewCodec) -> None:
        """Delete every row of the view and its watermark."""

    @abc.abstractmethod
    def _read_watermark(self, codec: ViewCodec) -> int | None:
        """The view's watermark (µs since the epoch), None if none is stored."""

    @abc.abstractmethod
    def _read(self, codec: ViewCodec, keys: list[tuple]) -> list[tuple | list | None]:
        """Per key (same order): (*feature values in schema order, event_time_us) or None."""


def _doc(pairs: Sequence[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"{n}: {t}" for n, t in pairs) + ")"
