"""The Cassandra online store (the ``cluster`` profile's backend; also runs on the local single node).

DDL is managed by Atelier (:meth:`CassandraOnlineStore.apply`):

* the keyspace (``settings.cassandra.keyspace``), created if missing with the replication that
  :func:`replication_for` derives from the settings: ``SimpleStrategy`` with ``replication_factor`` when
  Atelier runs the node itself (``cassandra.managed: true`` = the local and test profiles: one node, no
  datacenters to speak of), ``NetworkTopologyStrategy {local_dc: replication_factor}`` otherwise (a real
  cluster). An existing keyspace's replication is never changed by the store (that is an operator's
  decision with a repair to follow);
* one table ``fv_<view>`` per view, one partition per entity key (``PRIMARY KEY ((k1, k2))``), a column per
  feature and ``event_time timestamp``; the view registry in table ``feature_views``;
* the watermarks in ``feature_view_watermarks``: one partition per view, one row per write (``newest_us``,
  the newest event time it wrote, clustered newest first), so the watermark is read as the partition's first
  row. Concurrent writers (many Spark partitions) only ever insert: no read-modify-write, no race, no
  lightweight transaction. Each row lives for the view's TTL (30 days without one, or on a simulated clock),
  so a view's partition holds about one TTL's worth of writes.

Writes are ``INSERT ... USING TIMESTAMP <event_time in µs> AND TTL <remaining s>`` from prepared statements,
so Cassandra's last-write-wins IS the event-time guard (an older event never overwrites a newer one, on
every replica, whatever the arrival order), and expired data is dropped by Cassandra. ``remaining = ttl -
(now - event_time)`` rounded up to whole seconds (never earlier than the logical expiry); rows already
expired are skipped and counted. A write on a simulated clock (``now`` more than an hour from the wall
clock: a replay of 2013, a backfill) is stored without TTL, since wall-clock seconds would expire it at the
wrong moment of the simulated time; reads decide expiry from event times either way. Rows are sent with a bounded number of requests in flight at the write
consistency (LOCAL_QUORUM by default). Rows with the same replicas are grouped into small UNLOGGED batches
(at most ``batch_rows`` rows and ``batch_bytes`` bytes, under Cassandra's batch warning thresholds): every
row keeps its own timestamp and TTL, the coordinator is a replica of every row in the batch (token-aware),
and the per-request cost of the Python driver — which bounds throughput on small machines — is paid once
per batch. ``batch_rows=1`` sends one request per row.

Reads run at LOCAL_ONE by default; token-aware and DC-aware routing with ``local_dc``; protocol v5. Many-key
reads on a single-column key use ``IN`` per group of keys with the same replicas (one local request per
replica set); composite keys are read with one request per key; in both cases with a bounded number of
requests in flight. The event time of a row is read back as ``WRITETIME(event_time)`` (µs, exact). ``read_many_views_async`` sends the
same requests from an event loop (the prediction API) with the driver's callbacks, no worker thread.

Failures (node down, timeouts) raise :class:`OnlineStoreError` naming the store, hosts and keyspace. A failed
write may have stored some of its rows; it is never reported as done and can be retried as a whole.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pipelines.stores.online.base import (
    MAX_TTL_SECONDS,
    REGISTRY_TABLE,
    WATERMARK_TABLE,
    FeatureViewSchema,
    OnlineStore,
    OnlineStoreError,
    ReadResult,
    ViewCodec,
    _Plan,
    now_micros,
)

CQL_TYPES = {"double": "double", "bigint": "bigint", "string": "text", "boolean": "boolean"}
ATELIER_TYPES = {"double": "double", "bigint": "bigint", "text": "string", "varchar": "string",
                 "boolean": "boolean", "timestamp": "timestamp"}
WRITE_PROFILE = "atelier_online_write"
DDL_PROFILE = "atelier_online_ddl"
_CELL_OVERHEAD = 20  # bytes Cassandra counts per cell in a batch's size (timestamp, TTL, deletion time, …)
_ROW_OVERHEAD = 48


def replication_for(settings: Any) -> dict[str, str]:
    """The keyspace replication for these settings: SimpleStrategy when Atelier manages the (single) node,
    NetworkTopologyStrategy {local_dc: replication_factor} for an external cluster."""
    c = settings.cassandra
    if c.managed:
        return {"class": "SimpleStrategy", "replication_factor": str(c.replication_factor)}
    return {"class": "NetworkTopologyStrategy", c.local_dc: str(c.replication_factor)}


SIMULATED_CLOCK_US = 3_600_000_000
"""A write whose ``now`` is more than this far from the wall clock is on a simulated clock."""
WATERMARK_TTL_SECONDS = 30 * 86400
"""How long a write's watermark row lives for views without a TTL (and on a simulated clock)."""


def wall_micros() -> int:
    return time.time_ns() // 1000


def q(name: str) -> str:
    return f'"{name}"'


def _cql_map(mapping: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in mapping.items()) + "}"


def _describe_error(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        detail = "; ".join(f"{host}: {err}" for host, err in errors.items())
        message = exc.args[0] if exc.args else type(exc).__name__
        return f"{type(exc).__name__}: {message} ({detail})"
    return f"{type(exc).__name__}: {exc}"


def _results(plans: list[tuple], now_us: int) -> dict[str, list[ReadResult]]:
    return {name: [codec.result(k, found.get(n), now_us) for k, n in zip(keys, normalized, strict=True)]
            for name, codec, keys, normalized, found in plans}


def _settle(future: asyncio.Future, rows: Any, exc: BaseException | None = None) -> None:
    """Resolve ``future`` (on its event loop) with a request's rows or its error, unless it is cancelled."""
    if not future.done():
        if exc is None:
            future.set_result(rows)
        else:
            future.set_exception(exc)


class _InFlight:
    """A bounded window of asynchronous requests; remembers the first failure."""

    def __init__(self, session: Any, limit: int, profile: str) -> None:
        self._session = session
        self._limit = limit
        self._profile = profile
        self._cond = threading.Condition(threading.Lock())
        self._pending = 0
        self.acked_rows = 0
        self.error: BaseException | None = None

    def submit(self, statement: Any, rows: int) -> bool:
        """Send ``statement`` once a slot is free; False (nothing sent) once a request has failed."""
        with self._cond:
            while self._pending >= self._limit and self.error is None:
                self._cond.wait()
            if self.error is not None:
                return False
            self._pending += 1
        try:
            future = self._session.execute_async(statement, execution_profile=self._profile)
        except Exception as exc:  # noqa: BLE001 - e.g. the session was shut down; reported by the caller
            self._failed(exc)
            return False
        future.add_callbacks(self._done, self._failed, callback_args=(rows,))
        return True

    def _done(self, _result: Any, rows: int) -> None:
        with self._cond:
            self._pending -= 1
            self.acked_rows += rows
            self._cond.notify()

    def _failed(self, exc: BaseException) -> None:
        with self._cond:
            self._pending -= 1
            if self.error is None:
                self.error = exc
            self._cond.notify_all()

    def wait(self) -> None:
        """Until every request sent has completed (each has the driver's request timeout)."""
        with self._cond:
            while self._pending > 0:
                self._cond.wait()


class _Statements:
    """Prepared statements of one view."""

    def __init__(self, store: CassandraOnlineStore, codec: ViewCodec) -> None:
        self.view = view = codec.view
        session = store._session()
        table = f"{q(store.keyspace)}.{q(view.table)}"
        keys = [q(k) for k in codec.key_names]
        feats = [q(f) for f in codec.feature_names]
        cols = keys + feats + ['"event_time"']
        self.insert = session.prepare(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"USING TIMESTAMP ? AND TTL ?"
        )
        self.insert.is_idempotent = True  # explicit timestamps: a retry cannot change the outcome
        # Features added to the view after its table was created can hold a cell from a write OLDER than the
        # row's version (Cassandra resolves each cell alone: an old row replayed after the column was added
        # fills the new cell, which no newer write has set). Their write times are read too, and a cell
        # older than the row's event time reads as None — the row a newer write made, as on SQLite.
        added = store._added_features(view.name)
        late = [f for f in codec.feature_names if f in added]
        self.late_positions = [codec.feature_names.index(f) for f in late]
        self.n_features = len(feats)
        selected = ", ".join(feats + ['WRITETIME("event_time")'] + [f"WRITETIME({q(f)})" for f in late])
        where = " AND ".join(f"{k} = ?" for k in keys)
        self.select_one = session.prepare(f"SELECT {selected} FROM {table} WHERE {where}")
        self.select_one.is_idempotent = True
        self.select_in = None
        if len(keys) == 1:
            self.select_in = session.prepare(f"SELECT {keys[0]}, {selected} FROM {table} WHERE {keys[0]} IN ?")
            self.select_in.is_idempotent = True
        n_keys = len(keys)
        self.text_positions = [i for i, (_, t) in enumerate(view.entity_keys + view.features) if t == "string"]
        fixed = {"double": 8, "bigint": 8, "boolean": 1, "string": 0}
        self.base_size = (_ROW_OVERHEAD + _CELL_OVERHEAD * (len(cols))
                          + sum(fixed[t] for _, t in view.entity_keys + view.features) + 8)
        self.n_keys = n_keys

    def decode(self, row: tuple | None) -> tuple | list | None:
        """(*features, event_time µs) from a selected row, hiding late-feature cells older than the row."""
        if row is None or not self.late_positions:
            return row
        n = self.n_features
        out = list(row[: n + 1])
        event_us = row[n]
        for position, written_us in zip(self.late_positions, row[n + 1:], strict=True):
            if written_us is not None and event_us is not None and written_us < event_us:
                out[position] = None
        return out


class _WatermarkStatements:
    """Prepared statements of the watermark table (one partition per view, newest row first)."""

    def __init__(self, store: CassandraOnlineStore) -> None:
        session = store._session()
        table = f"{q(store.keyspace)}.{WATERMARK_TABLE}"
        self.insert = session.prepare(f'INSERT INTO {table} ("view", newest_us) VALUES (?, ?) USING TTL ?')
        self.insert.is_idempotent = True  # the same row again: a retry cannot change the outcome
        self.select = session.prepare(f'SELECT newest_us FROM {table} WHERE "view" = ? LIMIT 1')
        self.select.is_idempotent = True
        self.delete = session.prepare(f'DELETE FROM {table} WHERE "view" = ?')


@functools.lru_cache(maxsize=1)
def _routed_statement_class() -> type:
    """A BoundStatement with a routing key given from outside: the driver cannot compute one for ``k IN ?``,
    but every key of our IN queries has the same replicas, so the first key's routing key is the right one."""
    from cassandra.query import BoundStatement

    class RoutedBoundStatement(BoundStatement):
        atelier_routing_key: bytes | None = None

        @property
        def routing_key(self) -> bytes | None:
            return self.atelier_routing_key

    return RoutedBoundStatement


def _routed(prepared: Any, values: tuple, routing_key: bytes) -> Any:
    bound = _routed_statement_class()(prepared).bind(values)
    bound.atelier_routing_key = routing_key
    return bound


class CassandraOnlineStore(OnlineStore):
    backend = "cassandra"

    def __init__(
        self,
        contact_points: list[str],
        *,
        port: int = 9042,
        keyspace: str = "atelier",
        local_dc: str = "datacenter1",
        replication: dict[str, str] | None = None,
        read_consistency: str = "LOCAL_ONE",
        write_consistency: str = "LOCAL_QUORUM",
        protocol_version: int = 5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 2.0,
        write_timeout_s: float = 10.0,
        ddl_timeout_s: float = 60.0,
        write_window: int = 32,
        read_window: int = 64,
        batch_rows: int = 10,
        batch_bytes: int = 4608,
        in_keys: int = 25,
    ) -> None:
        super().__init__()
        self.contact_points = list(contact_points)
        self.port = port
        self.keyspace = keyspace
        self.local_dc = local_dc
        self.replication = replication or {"class": "SimpleStrategy", "replication_factor": "1"}
        self.read_consistency = read_consistency
        self.write_consistency = write_consistency
        self.protocol_version = protocol_version
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.ddl_timeout_s = ddl_timeout_s
        self.write_window = max(1, write_window)
        self.read_window = max(1, read_window)
        self.batch_rows = max(1, batch_rows)
        self.batch_bytes = batch_bytes
        self.in_keys = max(1, in_keys)
        self._cluster: Any = None
        self._sess: Any = None
        self._connect_lock = threading.Lock()
        self._statements: dict[str, _Statements] = {}
        self._watermarks: _WatermarkStatements | None = None
        self._statements_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> CassandraOnlineStore:
        c = settings.cassandra
        return cls(
            c.contact_points, port=c.port, keyspace=c.keyspace, local_dc=c.local_dc,
            replication=replication_for(settings), read_consistency=c.read_consistency,
            write_consistency=c.write_consistency, **options,
        )

    @property
    def where(self) -> str:
        hosts = ", ".join(f"{h}:{self.port}" for h in self.contact_points)
        return f"cassandra online store ({hosts}, keyspace {self.keyspace})"

    def __repr__(self) -> str:
        return f"CassandraOnlineStore({self.contact_points!r}, port={self.port}, keyspace={self.keyspace!r})"

    # -- connection

    def _session(self) -> Any:
        session = self._sess
        if session is not None:
            return session
        with self._connect_lock:
            if self._sess is not None:
                return self._sess
            if self._closed:
                raise OnlineStoreError(f"{self.where}: the store is closed")
            from cassandra import ConsistencyLevel
            from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
            from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
            from cassandra.query import tuple_factory

            def profile(consistency: str, timeout: float, token_aware: bool = True) -> ExecutionProfile:
                policy = DCAwareRoundRobinPolicy(local_dc=self.local_dc)
                return ExecutionProfile(
                    load_balancing_policy=TokenAwarePolicy(policy) if token_aware else policy,
                    consistency_level=ConsistencyLevel.name_to_value[consistency],
                    request_timeout=timeout, row_factory=tuple_factory,
                )

            cluster = Cluster(
                self.contact_points, port=self.port, protocol_version=self.protocol_version,
                connect_timeout=self.connect_timeout_s, control_connection_timeout=self.connect_timeout_s,
                compression=False,  # small rows on a fast network: compression only costs client CPU
                execution_profiles={
                    EXEC_PROFILE_DEFAULT: profile(self.read_consistency, self.read_timeout_s),
                    WRITE_PROFILE: profile(self.write_consistency, self.write_timeout_s),
                    DDL_PROFILE: profile("LOCAL_QUORUM", self.ddl_timeout_s, token_aware=False),
                },
                application_name="atelier-online-store",
            )
            try:
                session = cluster.connect()
            except Exception as exc:  # noqa: BLE001 - NoHostAvailable, timeouts, protocol errors
                cluster.shutdown()
                raise OnlineStoreError(f"{self.where}: cannot connect: {_describe_error(exc)}") from exc
            self._cluster, self._sess = cluster, session
            return session

    def close(self) -> None:
        with self._connect_lock:
            self._closed = True
            cluster, self._cluster, self._sess = self._cluster, None, None
        if cluster is not None:
            cluster.shutdown()

    def _execute(self, what: str, query: Any, params: Any = None, profile: str = DDL_PROFILE) -> Any:
        try:
            return self._session().execute(query, params, execution_profile=profile)
        except OnlineStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(f"{self.where}: {what} failed: {_describe_error(exc)}") from exc

    def _statements_for(self, codec: ViewCodec) -> _Statements:
        st = self._statements.get(codec.view.name)
        if st is not None and st.view is codec.view:
            return st
        with self._statements_lock:
            st = self._statements.get(codec.view.name)
            if st is None or st.view is not codec.view:
                try:
                    st = _Statements(self, codec)
                except OnlineStoreError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise OnlineStoreError(
                        f"{self.where}: preparing statements for view '{codec.view.name}' failed: "
                        f"{_describe_error(exc)}"
                    ) from exc
                self._statements[codec.view.name] = st
            return st

    def _watermark_statements(self) -> _WatermarkStatements:
        """Raises the driver's error as is (InvalidRequest if the table does not exist)."""
        st = self._watermarks
        if st is not None:
            return st
        with self._statements_lock:
            if self._watermarks is None:
                self._watermarks = _WatermarkStatements(self)
            return self._watermarks

    def _view_changed(self, view: FeatureViewSchema) -> None:
        with self._statements_lock:
            self._statements.pop(view.name, None)

    # -- DDL and the registry

    def _prepare_storage(self) -> None:
        ks = q(self.keyspace)
        self._execute(
            f"creating keyspace {self.keyspace}",
            f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {_cql_map(self.replication)}",
        )
        self._execute(
            "creating the view registry",
            f"CREATE TABLE IF NOT EXISTS {ks}.{REGISTRY_TABLE} (name text PRIMARY KEY, definition text, "
            f"added_features set<text>, updated_at timestamp)",
        )
        present = {name for (name,) in self._execute(
            "reading the registry schema",
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
            (self.keyspace, REGISTRY_TABLE),
        )}
        if "added_features" not in present:  # a registry from before added_features existed
            self._execute(
                "upgrading the view registry",
                f"ALTER TABLE {ks}.{REGISTRY_TABLE} ADD added_features set<text>",
            )
        # newest_us is a bigint of µs, not a timestamp: a timestamp column holds milliseconds only.
        self._execute(
            "creating the watermark table",
            f'CREATE TABLE IF NOT EXISTS {ks}.{WATERMARK_TABLE} ("view" text, newest_us bigint, '
            f'PRIMARY KEY ("view", newest_us)) WITH CLUSTERING ORDER BY (newest_us DESC)',
        )

    def _table_columns(self, view: FeatureViewSchema) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
        rows = self._execute(
            f"reading the schema of {view.table}",
            "SELECT column_name, kind, position, type FROM system_schema.columns "
            "WHERE keyspace_name = %s AND table_name = %s",
            (self.keyspace, view.table),
        ).all()
        if not rows:
            return None
        if any(kind == "clustering" for _, kind, _, _ in rows):
            raise ValueError(
                f"feature view '{view.name}': table {self.keyspace}.{view.table} exists with clustering "
                f"columns; it was not created by the online store"
            )
        keys = sorted((pos, name, ATELIER_TYPES.get(t, t)) for name, kind, pos, t in rows if kind == "partition_key")
        other = {name: ATELIER_TYPES.get(t, t) for name, kind, _, t in rows if kind == "regular"}
        return [(name, t) for _, name, t in keys], other

    def _apply_plan(self, plan: _Plan) -> None:
        view = plan.view
        table = f"{q(self.keyspace)}.{q(view.table)}"
        if plan.create:
            cols = [f"{q(n)} {CQL_TYPES[t]}" for n, t in view.entity_keys + view.features]
            cols.append('"event_time" timestamp')
            pk = ", ".join(q(n) for n in view.key_names)
            self._execute(
                f"creating table {view.table}",
                f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)}, PRIMARY KEY (({pk})))",
            )
        if plan.add_columns:
            added = ", ".join(f"{q(n)} {CQL_TYPES[t]}" for n, t in plan.add_columns)
            # Recorded first: a feature in added_features is read with its write time (see _Statements).
            self._execute(
                f"registering the features added to view '{view.name}'",
                f"UPDATE {q(self.keyspace)}.{REGISTRY_TABLE} SET added_features = added_features + %s "
                f"WHERE name = %s",
                ({n for n, _ in plan.add_columns}, view.name),
            )
            try:
                self._execute(f"adding columns to {view.table}", f"ALTER TABLE {table} ADD ({added})")
            except OnlineStoreError:
                # Another process may have added them meanwhile; fine if the table now has them.
                columns = self._table_columns(view)
                present = columns[1] if columns else {}
                if any(present.get(n) != t for n, t in plan.add_columns):
                    raise

    def _save_view(self, view: FeatureViewSchema) -> None:
        self._execute(
            f"registering view '{view.name}'",
            f"INSERT INTO {q(self.keyspace)}.{REGISTRY_TABLE} (name, definition, updated_at) "
            f"VALUES (%s, %s, toTimestamp(now()))",
            (view.name, view.to_json()),
        )

    def _registry(self, query: str, params: tuple = ()) -> list[tuple]:
        from cassandra import InvalidRequest

        try:
            return self._session().execute(query, params, execution_profile=DDL_PROFILE).all()
        except InvalidRequest:
            return []  # no keyspace or no registry yet: nothing applied
        except OnlineStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(f"{self.where}: reading the view registry failed: {_describe_error(exc)}") from exc

    def _load_view(self, name: str) -> FeatureViewSchema | None:
        rows = self._registry(
            f"SELECT definition FROM {q(self.keyspace)}.{REGISTRY_TABLE} WHERE name = %s", (name,)
        )
        return FeatureViewSchema.from_json(rows[0][0]) if rows else None

    def _added_features(self, name: str) -> set[str]:
        rows = self._registry(
            f"SELECT added_features FROM {q(self.keyspace)}.{REGISTRY_TABLE} WHERE name = %s", (name,)
        )
        return set(rows[0][0] or ()) if rows else set()

    def _load_views(self) -> dict[str, FeatureViewSchema]:
        rows = self._registry(f"SELECT name, definition FROM {q(self.keyspace)}.{REGISTRY_TABLE}")
        return {name: FeatureViewSchema.from_json(d) for name, d in sorted(rows)}

    # -- data

    def _write(self, codec: ViewCodec, params: list[list], now_us: int, newest_us: int) -> None:
        from cassandra.query import BatchStatement, BatchType

        st = self._statements_for(codec)
        try:  # before any row is sent: a keyspace without the watermark table fails with nothing written
            watermarks = self._watermark_statements()
        except OnlineStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(
                f"{self.where}: preparing the watermark statements failed: {_describe_error(exc)} (a keyspace "
                f"from before table {WATERMARK_TABLE} existed needs one apply() of its views); nothing was "
                f"written"
            ) from exc
        session = self._session()
        metadata = self._cluster.metadata
        keyspace = self.keyspace
        ttl_us = codec.ttl_us
        if ttl_us is not None and abs(now_us - wall_micros()) > SIMULATED_CLOCK_US:
            # A simulated clock (a replay, a backfill judged at its interval's end): Cassandra counts a TTL in
            # wall-clock seconds, which have no relation to simulated ones, so a cell could vanish while the
            # simulated reader still finds it fresh. Store without TTL; reads still expire by event time.
            ttl_us = None
        insert = st.insert
        batching = self.batch_rows > 1
        batch_rows, batch_bytes = self.batch_rows, self.batch_bytes
        text_positions, base_size = st.text_positions, st.base_size
        window = _InFlight(session, self.write_window, WRITE_PROFILE)
        groups: dict[frozenset, list] = {}  # replica set -> [statements, size]

        def send(statements: list) -> bool:
            if len(statements) == 1:
                return window.submit(statements[0], 1)
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for statement in statements:
                batch.add(statement)
            batch.is_idempotent = True
            return window.submit(batch, len(statements))

        sent = True
        try:
            for p in params:
                event_us = p[-1]
                p[-1] = event_us // 1000  # the event_time column (ms); the cell timestamps carry the µs
                p.append(event_us)
                if ttl_us is None:
                    p.append(0)
                else:  # ceil((event_time + ttl - now) / 1 s) >= 1: rows already expired were skipped
                    p.append(min(MAX_TTL_SECONDS, -((now_us - event_us - ttl_us) // 1_000_000)))
                bound = insert.bind(p)
                if not batching:
                    sent = window.submit(bound, 1)
                else:
                    values = bound.values
                    size = base_size + sum(len(values[i]) for i in text_positions if values[i] is not None)
                    group_key = frozenset(metadata.get_replicas(keyspace, bound.routing_key))
                    group = groups.get(group_key)
                    if group is None:
                        group = groups[group_key] = [[], 0]
                    elif len(group[0]) >= batch_rows or group[1] + size > batch_bytes:
                        sent = send(group[0])
                        group[0], group[1] = [], 0
                    group[0].append(bound)
                    group[1] += size
                if not sent:
                    break
            if sent:
                for statements, _ in groups.values():
                    if statements and not send(statements):
                        break
        except Exception as exc:  # noqa: BLE001 - a driver error while sending
            window.wait()
            raise OnlineStoreError(
                f"{self.where}: writing {len(params)} rows to view '{codec.view.name}' failed after "
                f"{window.acked_rows} were acknowledged: {_describe_error(exc)}; the write is not done, "
                f"retry it (replaying rows is safe)"
            ) from exc
        window.wait()
        if window.error is not None or window.acked_rows != len(params):
            raise OnlineStoreError(
                f"{self.where}: writing {len(params)} rows to view '{codec.view.name}' failed "
                f"({window.acked_rows} acknowledged before the error): "
                f"{_describe_error(window.error) if window.error else 'not all rows were acknowledged'}; "
                f"the write is not done, retry it (replaying rows is safe)"
            )
        # After every row was acknowledged, so the watermark never names a row that is not stored. It lives
        # for the view's TTL from now (no row it names lives longer), or 30 days where a wall-clock TTL has no
        # meaning (no TTL, a simulated clock).
        watermark_ttl = ttl_us // 1_000_000 if ttl_us is not None else WATERMARK_TTL_SECONDS
        try:
            session.execute(
                watermarks.insert, (codec.view.name, newest_us, watermark_ttl), execution_profile=WRITE_PROFILE
            )
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(
                f"{self.where}: writing {len(params)} rows to view '{codec.view.name}': the rows were stored but "
                f"recording the view's newest event time failed: {_describe_error(exc)}; the write is not "
                f"done, retry it (replaying rows is safe)"
            ) from exc

    def _clear(self, codec: ViewCodec) -> None:
        self._execute(f"truncating {codec.view.table}", f"TRUNCATE {q(self.keyspace)}.{q(codec.view.table)}")
        # Rows first: a clear that fails in between keeps the old watermark (and raises), never loses it early.
        try:
            delete = self._watermark_statements().delete
        except OnlineStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(
                f"{self.where}: preparing the watermark statements failed: {_describe_error(exc)}"
            ) from exc
        self._execute(
            f"deleting the watermark of view '{codec.view.name}'", delete, (codec.view.name,), profile=WRITE_PROFILE
        )

    def _read_watermark(self, codec: ViewCodec) -> int | None:
        from cassandra import InvalidRequest

        try:
            select = self._watermark_statements().select
        except InvalidRequest:
            return None  # a keyspace from before watermarks, not applied since: nothing recorded
        except OnlineStoreError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(
                f"{self.where}: preparing the watermark statements failed: {_describe_error(exc)}"
            ) from exc
        try:
            row = self._session().execute(select, (codec.view.name,)).one()
        except Exception as exc:  # noqa: BLE001
            raise OnlineStoreError(
                f"{self.where}: reading the newest event time of view '{codec.view.name}' failed: "
                f"{_describe_error(exc)}"
            ) from exc
        return None if row is None else row[0]

    def _read(self, codec: ViewCodec, keys: list[tuple]) -> list[tuple | list | None]:
        st = self._statements_for(codec)
        session = self._session()
        if len(keys) == 1:
            try:
                return [st.decode(session.execute(st.select_one, keys[0]).one())]
            except Exception as exc:  # noqa: BLE001
                raise self._read_error(codec, len(keys), exc) from exc
        found: dict[tuple, Any] = {}
        self._run_reads(self._read_requests(st, keys, found), {codec.view.name: (codec, len(keys))})
        return [found.get(k) for k in keys]

    def read_many_views(
        self, requests: Mapping[str, Sequence[tuple]], now: datetime | None = None
    ) -> dict[str, list[ReadResult]]:
        """Every view's keys read concurrently (one bounded window of requests for all of them)."""
        now_us = now_micros(now)
        plans, pending = self._plan_reads(requests)
        self._run_reads(pending, {name: (codec, len(keys)) for name, codec, keys, _, _ in plans})
        return _results(plans, now_us)

    @property
    def async_ready(self) -> bool:
        return self._sess is not None  # connecting blocks: the first read connects in a worker thread

    async def read_many_views_async(
        self, requests: Mapping[str, Sequence[tuple]], now: datetime | None = None
    ) -> dict[str, list[ReadResult]]:
        """``read_many_views`` without blocking the event loop: the same prepared statements sent with
        ``execute_async``, their callbacks resolving asyncio futures (``call_soon_threadsafe``), so no worker
        thread is involved (a thread hop per lookup costs ~1 ms of CPU on two busy cores). Same validation,
        decoding and TTL/age rules as ``read``; driver errors are raised as they are."""
        loop = asyncio.get_running_loop()
        now_us = now_micros(now)
        session = self._session()
        plans, pending = self._plan_reads(requests)
        waits = []
        for statement, key, st, found in pending:
            future = loop.create_future()
            response = session.execute_async(statement)
            response.add_callbacks(lambda rows, f=future: loop.call_soon_threadsafe(_settle, f, rows),
                                   errback=lambda exc, f=future: loop.call_soon_threadsafe(_settle, f, None, exc))
            waits.append((future, key, st, found))
        for future, key, st, found in waits:
            rows = await future
            if key is not None:
                if rows:
                    found[key] = st.decode(rows[0])
            else:
                for row in rows:
                    found[(row[0],)] = st.decode(row[1:])
        return _results(plans, now_us)

    def _plan_reads(self, requests: Mapping[str, Sequence[tuple]]) -> tuple[list[tuple], list[tuple]]:
        """(per view: name, codec, keys, normalized keys, where its rows go; every request to send). Every
        view's keys are validated before any statement is prepared."""
        plans = []
        for name, keys in requests.items():
            codec = self._codec(name)
            plans.append((name, codec, keys, codec.keys(keys), {}))
        pending: list[tuple[Any, tuple | None, _Statements, dict]] = []
        for _, codec, _, normalized, found in plans:
            pending += self._read_requests(self._statements_for(codec), normalized, found)
        return plans, pending

    def _read_requests(
        self, st: _Statements, keys: list[tuple], found: dict
    ) -> list[tuple[Any, tuple | None, _Statements, dict]]:
        """(statement, the key it reads or None for an IN query, statements, where results go) per request."""
        unique = list(dict.fromkeys(keys))
        if st.select_in is None or len(unique) == 1:
            return [(st.select_one.bind(key), key, st, found) for key in unique]
        # One IN query per group of keys with the same replicas, routed to one of them.
        metadata = self._cluster.metadata
        groups: dict[frozenset, list] = {}
        for key in unique:
            routing_key = st.select_one.bind(key).routing_key
            replicas = frozenset(metadata.get_replicas(self.keyspace, routing_key))
            groups.setdefault(replicas, [routing_key, []])[1].append(key[0])
        requests = []
        for routing_key, values in groups.values():
            for start in range(0, len(values), self.in_keys):
                chunk = values[start:start + self.in_keys]
                if len(chunk) == 1:
                    requests.append((st.select_one.bind((chunk[0],)), (chunk[0],), st, found))
                else:
                    requests.append((_routed(st.select_in, (chunk,), routing_key), None, st, found))
        return requests

    def _run_reads(self, requests: list, what: dict[str, tuple[ViewCodec, int]]) -> None:
        session = self._session()
        try:
            for start in range(0, len(requests), self.read_window):
                wave = requests[start:start + self.read_window]
                futures = [session.execute_async(statement) for statement, _, _, _ in wave]
                for (_, key, st, found), future in zip(wave, futures, strict=True):
                    if key is not None:
                        row = future.result().one()
                        if row is not None:
                            found[key] = st.decode(row)
                    else:
                        for row in future.result():
                            found[(row[0],)] = st.decode(row[1:])
        except Exception as exc:  # noqa: BLE001
            if len(what) == 1:
                [(codec, n)] = what.values()
                raise self._read_error(codec, n, exc) from exc
            raise OnlineStoreError(
                f"{self.where}: reading views {', '.join(sorted(what))} failed: {_describe_error(exc)}"
            ) from exc

    def _read_error(self, codec: ViewCodec, n_keys: int, exc: BaseException) -> OnlineStoreError:
        return OnlineStoreError(
            f"{self.where}: reading {n_keys} keys from view '{codec.view.name}' failed: {_describe_error(exc)}"
        )
