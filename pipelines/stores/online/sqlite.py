"""The embedded online store: one SQLite file (the default backend; ``settings.sqlite_path``).

Layout: one ``WITHOUT ROWID`` table ``fv_<view>`` per view, clustered on its entity key columns, with typed
feature columns and ``event_time_us INTEGER`` (microseconds since the epoch, UTC); the view registry in
``feature_views``; one row per view in ``feature_view_watermarks`` (``newest_us``, the newest event time
written). The database runs in WAL mode with ``synchronous=NORMAL`` (a commit survives a process crash; the
last commits may be lost on power loss — the store is rebuilt from the offline lake anyway).

Writes: one transaction per ``write`` call (``BEGIN IMMEDIATE`` + ``executemany`` of an upsert that only
replaces a row whose stored event time is <= the new one, then one upsert keeping the greater of the stored
and the new watermark): all rows and the watermark, or nothing. Reads: one statement for one key, chunks of
up to 500 keys per statement for many. Each thread gets its own connection (WAL lets readers
run beside the one writer); ``close()`` closes all of them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.stores.online.base import (
    REGISTRY_TABLE,
    WATERMARK_TABLE,
    FeatureViewSchema,
    OnlineStore,
    OnlineStoreError,
    ViewCodec,
    _Plan,
)

SQL_TYPES = {"double": "REAL", "bigint": "INTEGER", "string": "TEXT", "boolean": "BOOLEAN"}
"""Declared column types (non-STRICT tables: BOOLEAN keeps its name in the schema, stored as 0/1)."""
ATELIER_TYPES = {v: k for k, v in SQL_TYPES.items()}
READ_CHUNK = 500
RAISE_WATERMARK = (
    f'INSERT INTO {WATERMARK_TABLE} ("view", newest_us) VALUES (?, ?) '
    f'ON CONFLICT ("view") DO UPDATE SET newest_us = max(newest_us, excluded.newest_us)'
)


def q(name: str) -> str:
    """A quoted identifier (names are validated lower-case identifiers, so this is only for reserved words)."""
    return f'"{name}"'


class _ViewSql:
    """Statements and decoding for one view."""

    def __init__(self, codec: ViewCodec) -> None:
        self.view = view = codec.view
        table = q(view.table)
        keys = [q(k) for k in codec.key_names]
        feats = [q(f) for f in codec.feature_names]
        cols = keys + feats + ['"event_time_us"']
        updates = ", ".join(f"{c} = excluded.{c}" for c in feats + ['"event_time_us"'])
        self.upsert = (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates} "
            f'WHERE excluded."event_time_us" >= {table}."event_time_us"'
        )
        selected = ", ".join(feats + ['"event_time_us"'])
        self.select_one = f"SELECT {selected} FROM {table} WHERE " + " AND ".join(f"{k} = ?" for k in keys)
        self.n_keys = len(keys)
        if len(keys) == 1:
            self._select_many_prefix = f"SELECT {keys[0]}, {selected} FROM {table} WHERE {keys[0]} IN "
        else:
            # Row-value IN (VALUES ...) would scan the table; a join driven by the VALUES list searches the
            # primary key once per key.
            t_cols = ", ".join(f"t.{c}" for c in keys + feats + ['"event_time_us"'])
            self._select_many_prefix = f"SELECT {t_cols} FROM (VALUES "
            self._join = f") AS v CROSS JOIN {table} AS t ON " + " AND ".join(
                f"t.{k} = v.column{i + 1}" for i, k in enumerate(keys)
            )
        self._many: dict[int, str] = {}
        self.bool_positions = [i for i, (_, t) in enumerate(view.features) if t == "boolean"]

    def select_many(self, n: int) -> str:
        sql = self._many.get(n)
        if sql is None:
            if self.n_keys == 1:
                sql = f"{self._select_many_prefix}({', '.join('?' * n)})"
            else:
                one = "(" + ", ".join("?" * self.n_keys) + ")"
                sql = f"{self._select_many_prefix}{', '.join([one] * n)}{self._join}"
            if len(self._many) < 64:
                self._many[n] = sql
        return sql

    def decode(self, row: tuple) -> tuple | list:
        """(*features, event_time_us) from the database row: booleans back from 0/1."""
        if not self.bool_positions:
            return row
        row = list(row)
        for i in self.bool_positions:
            if row[i] is not None:
                row[i] = bool(row[i])
        return row


class SQLiteOnlineStore(OnlineStore):
    backend = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._sql: dict[str, _ViewSql] = {}
        self._closed = False
        self._prepared = False

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> SQLiteOnlineStore:
        return cls(settings.sqlite_path, **options)

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    # -- connections

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise OnlineStoreError(f"sqlite online store {self.path}: the store is closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False,
                cached_statements=256,
            )
            conn.execute("PRAGMA page_size=16384")  # only takes effect on a new database file
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
            conn.execute("PRAGMA wal_autocheckpoint=4096")  # checkpoint every 64 MiB of WAL
        except (OSError, sqlite3.Error) as exc:
            raise OnlineStoreError(f"sqlite online store {self.path}: cannot open the database: {exc}") from exc
        with self._connections_lock:
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def _fail(self, what: str, exc: Exception) -> OnlineStoreError:
        return OnlineStoreError(f"sqlite online store {self.path}: {what} failed: {type(exc).__name__}: {exc}")

    def _sql_for(self, codec: ViewCodec) -> _ViewSql:
        sql = self._sql.get(codec.view.name)
        if sql is None or sql.view is not codec.view:
            sql = self._sql[codec.view.name] = _ViewSql(codec)
        return sql

    def _view_changed(self, view: FeatureViewSchema) -> None:
        self._sql.pop(view.name, None)

    # -- apply

    def _prepare_storage(self) -> None:
        conn = self._conn()
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {REGISTRY_TABLE} (name TEXT PRIMARY KEY, definition TEXT NOT NULL, "
                f"updated_at_us INTEGER NOT NULL)"
            )
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS {WATERMARK_TABLE} ("view" TEXT PRIMARY KEY, '
                f"newest_us INTEGER NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as exc:
            raise self._fail("creating the view registry and watermarks", exc) from exc

    def _table_columns(self, view: FeatureViewSchema) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
        try:
            info = self._conn().execute(f"PRAGMA table_info({q(view.table)})").fetchall()
        except sqlite3.Error as exc:
            raise self._fail(f"reading the schema of {view.table}", exc) from exc
        if not info:
            return None
        keys = sorted((pk, name, ATELIER_TYPES.get(decl.upper(), decl)) for _, name, decl, _, _, pk in info if pk)
        other = {name: ATELIER_TYPES.get(decl.upper(), decl) for _, name, decl, _, _, pk in info if not pk}
        return [(name, t) for _, name, t in keys], other

    def _apply_plan(self, plan: _Plan) -> None:
        view = plan.view
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if plan.create:
                    cols = [f"{q(n)} {SQL_TYPES[t]} NOT NULL" for n, t in view.entity_keys]
                    cols += [f"{q(n)} {SQL_TYPES[t]}" for n, t in view.features]
                    cols.append('"event_time_us" INTEGER NOT NULL')
                    pk = ", ".join(q(n) for n in view.key_names)
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {q(view.table)} ({', '.join(cols)}, PRIMARY KEY ({pk})) "
                        f"WITHOUT ROWID"
                    )
                for name, type_name in plan.add_columns:
                    conn.execute(f"ALTER TABLE {q(view.table)} ADD COLUMN {q(name)} {SQL_TYPES[type_name]}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(f"creating/upgrading table {view.table}", exc) from exc

    def _save_view(self, view: FeatureViewSchema) -> None:
        try:
            self._conn().execute(
                f"INSERT INTO {REGISTRY_TABLE} (name, definition, updated_at_us) VALUES (?, ?, ?) "
                f"ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, "
                f"updated_at_us = excluded.updated_at_us",
                (view.name, view.to_json(), time.time_ns() // 1000),
            )
        except sqlite3.Error as exc:
            raise self._fail(f"registering view '{view.name}'", exc) from exc

    def _registry(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise self._fail("reading the view registry", exc) from exc
        except sqlite3.Error as exc:
            raise self._fail("reading the view registry", exc) from exc

    def _load_view(self, name: str) -> FeatureViewSchema | None:
        rows = self._registry(f"SELECT definition FROM {REGISTRY_TABLE} WHERE name = ?", (name,))
        return FeatureViewSchema.from_json(rows[0][0]) if rows else None

    def _load_views(self) -> dict[str, FeatureViewSchema]:
        rows = self._registry(f"SELECT name, definition FROM {REGISTRY_TABLE} ORDER BY name")
        return {name: FeatureViewSchema.from_json(definition) for name, definition in rows}

    # -- data

    def _write(self, codec: ViewCodec, params: list[list], now_us: int, newest_us: int) -> None:
        sql = self._sql_for(codec)
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql.upsert, params)
                conn.execute(RAISE_WATERMARK, (codec.view.name, newest_us))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(
                f"writing {len(params)} rows to view '{codec.view.name}' (nothing was written)", exc
            ) from exc

    def _clear(self, codec: ViewCodec) -> None:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"DELETE FROM {q(codec.view.table)}")
                conn.execute(f'DELETE FROM {WATERMARK_TABLE} WHERE "view" = ?', (codec.view.name,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._fail(f"clearing view '{codec.view.name}'", exc) from exc

    def _read_watermark(self, codec: ViewCodec) -> int | None:
        try:
            row = self._conn().execute(
                f'SELECT newest_us FROM {WATERMARK_TABLE} WHERE "view" = ?', (codec.view.name,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # a store file from before watermarks, not applied since: nothing recorded
            raise self._fail(f"reading the newest event time of view '{codec.view.name}'", exc) from exc
        except sqlite3.Error as exc:
            raise self._fail(f"reading the newest event time of view '{codec.view.name}'", exc) from exc
        return None if row is None else row[0]

    def _read(self, codec: ViewCodec, keys: list[tuple]) -> list[tuple | list | None]:
        sql = self._sql_for(codec)
        conn = self._conn()
        decode = sql.decode
        try:
            if len(keys) == 1:
                row = conn.execute(sql.select_one, keys[0]).fetchone()
                return [None if row is None else decode(row)]
            n_keys = sql.n_keys
            found: dict[tuple, tuple | list] = {}
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), READ_CHUNK):
                chunk = unique[start:start + READ_CHUNK]
                flat = [k[0] for k in chunk] if n_keys == 1 else [v for k in chunk for v in k]
                for row in conn.execute(sql.select_many(len(chunk)), flat):
                    found[tuple(row[:n_keys])] = decode(row[n_keys:])
        except sqlite3.Error as exc:
            raise self._fail(f"reading {len(keys)} keys from view '{codec.view.name}'", exc) from exc
        return [found.get(k) for k in keys]
