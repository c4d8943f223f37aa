"""Online feature store benchmark: write throughput and read latency of each backend, beside raw baselines.

For each backend (SQLite file, the test profile's Cassandra node on loopback):

* writes: ``--rows`` rows (default 200,000) of a 15-feature view (10 double, 3 bigint, 1 string,
  1 boolean; one string entity key; TTL 7 days) through ``OnlineStore.write`` — validation, event-time upsert
  and TTL included — beside a raw-driver baseline of the same rows into a table of the same shape, the rows
  already converted to parameter tuples (only the database work is timed):
  SQLite: ``sqlite3`` ``executemany`` of a plain INSERT in one transaction (same pragmas);
  Cassandra: ``execute_concurrent_with_args`` of a plain prepared INSERT (no timestamp, no TTL), concurrency
  64, same consistency. The Cassandra store is also measured with ``batch_rows=1`` (one request per row,
  on the first ``--per-row-rows`` rows);
* reads through ``OnlineStore.read`` of 1 key and of 50 keys per call (90% present, 10% absent), one call
  at a time: P50/P95/P99 latency and calls/s, keys/s. For Cassandra also a raw-driver 1-key read.

Bounded: fixed counts, a ``--max-seconds`` budget (later phases are skipped once it is spent), loopback only.
Cassandra is started through the Supervisor with the test profile (or a running one is reused; a node
started here is stopped at the end); the benchmark keyspace is dropped at the end.

Usage: ``ATELIER_PROFILE=test .venv/bin/python benchmarks/online_store.py [--backends sqlite,cassandra]``.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import Settings, load_settings  # noqa: E402
from pipelines.stores.online import FeatureRow, FeatureViewSchema, OnlineStore, get_online_store  # noqa: E402

FEATURES = (
    [(f"d{i}", "double") for i in range(10)]
    + [(f"n{i}", "bigint") for i in range(3)]
    + [("segment", "string"), ("active", "boolean")]
)
KEYS = [("user_id", "string")]
TTL_SECONDS = 7 * 86400
SEGMENTS = ["bronze", "silver", "gold", "platinum"]


def log(message: str) -> None:
    print(message, flush=True)


def make_rows(n: int, seed: int = 42) -> list[FeatureRow]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        values: dict[str, Any] = {f"d{j}": rng.random() * 100 for j in range(10)}
        values.update({f"n{j}": rng.randrange(1_000_000) for j in range(3)})
        values["segment"] = SEGMENTS[i % 4]
        values["active"] = i % 3 == 0
        rows.append(FeatureRow((f"user-{i:07d}",), values, now - timedelta(seconds=rng.randrange(3600))))
    return rows


def as_tuples(rows: list[FeatureRow]) -> list[tuple]:
    names = [n for n, _ in FEATURES]
    return [(r.key[0], *(r.values[n] for n in names)) for r in rows]


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    n = len(s)

    def p(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] / 1e6, 3)

    total_s = sum(s) / 1e9
    return {"calls": n, "p50_ms": p(0.50), "p95_ms": p(0.95), "p99_ms": p(0.99),
            "max_ms": round(s[-1] / 1e6, 3), "calls_per_s": round(n / total_s, 1)}


def bench_reads(store: OnlineStore, view: str, n_rows: int, calls: int, keys_per_call: int, seed: int) -> dict:
    rng = random.Random(seed)
    requests = []
    for _ in range(calls):
        requests.append([
            (f"user-{rng.randrange(n_rows):07d}",) if rng.random() < 0.9 else (f"absent-{rng.randrange(10**9)}",)
            for _ in range(keys_per_call)
        ])
    for keys in requests[: max(1, calls // 20)]:  # warm-up: connections, statement caches, JIT
        store.read(view, keys)
    gc.collect()
    samples = []
    found = 0
    for keys in requests:
        t = time.perf_counter_ns()
        results = store.read(view, keys)
        samples.append(time.perf_counter_ns() - t)
        found += sum(r.found for r in results)
    out = percentiles(samples)
    out["keys_per_call"] = keys_per_call
    out["keys_per_s"] = round(out["calls_per_s"] * keys_per_call, 1)
    out["found_fraction"] = round(found / (calls * keys_per_call), 3)
    return out


def timed_write(store: OnlineStore, view: str, rows: list[FeatureRow]) -> dict:
    gc.collect()
    t = time.perf_counter()
    result = store.write(view, rows)
    elapsed = time.perf_counter() - t
    assert result.written == len(rows), result
    return {"rows": len(rows), "seconds": round(elapsed, 3), "rows_per_s": round(len(rows) / elapsed, 1)}


# ------------------------------------------------------------------------------------------------ SQLite


def bench_sqlite(settings: Settings, rows: list[FeatureRow], args: argparse.Namespace, out: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        path = Path(tmp) / "online.db"
        # Baseline: the same rows as tuples, one executemany in one transaction, same pragmas, same shape.
        raw_path = Path(tmp) / "raw.db"
        conn = sqlite3.connect(raw_path, isolation_level=None)
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        sql_type = {"double": "REAL", "bigint": "INTEGER", "string": "TEXT", "boolean": "BOOLEAN"}
        cols = ", ".join(f"{n} {sql_type[t]}" for n, t in FEATURES)
        conn.execute(f"CREATE TABLE raw (user_id TEXT NOT NULL PRIMARY KEY, {cols}) WITHOUT ROWID")
        tuples = as_tuples(rows)
        gc.collect()
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO raw VALUES ({', '.join('?' * (len(FEATURES) + 1))})", tuples)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - t
        conn.close()
        del tuples
        out["write_baseline_raw_executemany"] = {
            "rows": len(rows), "seconds": round(elapsed, 3), "rows_per_s": round(len(rows) / elapsed, 1)}
        log(f"sqlite  raw executemany : {out['write_baseline_raw_executemany']}")

        store_settings = settings.model_copy(update={"online_store": settings.online_store.model_copy(
            update={"backend": "sqlite", "sqlite_path": str(path)})})
        with get_online_store(store_settings) as store:
            view = FeatureViewSchema("bench", KEYS, FEATURES, ttl_seconds=TTL_SECONDS)
            store.apply([view])
            out["write_store"] = timed_write(store, view.name, rows)
            log(f"sqlite  store.write      : {out['write_store']}")
            out["write_store_replay"] = timed_write(store, view.name, rows)  # every row hits the upsert guard
            log(f"sqlite  store.write again: {out['write_store_replay']}")
            out["db_bytes"] = sum(p.stat().st_size for p in Path(tmp).glob("online.db*"))
            out["read_1"] = bench_reads(store, view.name, len(rows), args.reads_1, 1, seed=1)
            log(f"sqlite  read 1 key       : {out['read_1']}")
            out["read_50"] = bench_reads(store, view.name, len(rows), args.reads_50, 50, seed=2)
            log(f"sqlite  read 50 keys     : {out['read_50']}")


# ------------------------------------------------------------------------------------------------ Cassandra


def ensure_cassandra(settings: Settings, stack: ExitStack) -> dict:
    """Start the test profile's node through the Supervisor (or reuse a running one), as the tests do."""
    from pipelines.services import Supervisor, service_module

    module = service_module("cassandra")
    module.ensure_installed(settings)
    spec = module.build_spec(settings)
    supervisor = Supervisor(settings.run_dir)
    was_running = supervisor.status(spec).state == "running"
    t = time.perf_counter()
    supervisor.up(spec)
    if not was_running:
        stack.callback(supervisor.down, spec)
    return {"reused_running_node": was_running, "start_seconds": round(time.perf_counter() - t, 1),
            "release": module.check_health("127.0.0.1", settings.cassandra.port)}


def bench_cassandra(settings: Settings, rows: list[FeatureRow], args: argparse.Namespace, out: dict,
                    deadline: float) -> None:
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.concurrent import execute_concurrent_with_args
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    with ExitStack() as stack:
        out["node"] = ensure_cassandra(settings, stack)
        keyspace = "atelier_bench"
        c = settings.cassandra
        bench_settings = settings.model_copy(update={
            "cassandra": c.model_copy(update={"keyspace": keyspace}),
            "online_store": settings.online_store.model_copy(update={"backend": "cassandra"}),
        })
        store = stack.enter_context(get_online_store(bench_settings))
        stack.callback(lambda: store._execute("dropping the benchmark keyspace", f"DROP KEYSPACE IF EXISTS {keyspace}"))
        view = FeatureViewSchema("bench", KEYS, FEATURES, ttl_seconds=TTL_SECONDS)
        view_unbatched = FeatureViewSchema("bench_per_row", KEYS, FEATURES, ttl_seconds=TTL_SECONDS)
        store.apply([view, view_unbatched])

        # Raw driver baseline: same cluster options, a plain prepared INSERT, execute_concurrent_with_args.
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c.local_dc)),
            consistency_level=ConsistencyLevel.name_to_value[c.write_consistency], request_timeout=10,
            row_factory=tuple_factory,
        )
        cluster = Cluster(c.contact_points, port=c.port, protocol_version=5, compression=False,
                          execution_profiles={EXEC_PROFILE_DEFAULT: profile})
        stack.callback(cluster.shutdown)
        session = cluster.connect()
        cql_type = {"double": "double", "bigint": "bigint", "string": "text", "boolean": "boolean"}
        cols = ", ".join(f"{n} {cql_type[t]}" for n, t in FEATURES)
        session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.raw (user_id text PRIMARY KEY, {cols}, "
                        f"event_time timestamp)", timeout=60)
        names = ["user_id", *(n for n, _ in FEATURES), "event_time"]
        insert = session.prepare(f"INSERT INTO {keyspace}.raw ({', '.join(names)}) "
                                 f"VALUES ({', '.join('?' * len(names))})")
        params = [(*t, r.event_time) for t, r in zip(as_tuples(rows), rows, strict=True)]
        execute_concurrent_with_args(session, insert, params[:2000], concurrency=64)  # warm-up
        gc.collect()
        t = time.perf_counter()
        results = execute_concurrent_with_args(session, insert, params, concurrency=64)
        elapsed = time.perf_counter() - t
        assert all(ok for ok, _ in results)
        del results, params
        out["write_baseline_raw_execute_concurrent"] = {
            "rows": len(rows), "seconds": round(elapsed, 3), "rows_per_s": round(len(rows) / elapsed, 1),
            "concurrency": 64}
        log(f"cassandra raw execute_concurrent : {out['write_baseline_raw_execute_concurrent']}")

        store.write(view.name, rows[:2000])  # warm-up (prepares, connections)
        out["write_store"] = timed_write(store, view.name, rows)
        out["write_store"].update(batch_rows=store.batch_rows, batch_bytes=store.batch_bytes,
                                  window=store.write_window)
        log(f"cassandra store.write (batched)  : {out['write_store']}")
        if time.monotonic() < deadline:
            store.batch_rows = 1  # one request per row (no batching), on the first --per-row-rows rows
            out["write_store_per_row"] = timed_write(store, view_unbatched.name, rows[: args.per_row_rows])
            out["write_store_per_row"].update(batch_rows=1, window=store.write_window)
            store.batch_rows = 10
            log(f"cassandra store.write (per row)  : {out['write_store_per_row']}")
        else:
            out["write_store_per_row"] = "skipped: time budget spent"

        # Reads (the rows are dropped first so that garbage collection does not walk them).
        n_rows = len(rows)
        rows.clear()
        gc.collect()
        select = session.prepare(
            f"SELECT {', '.join(n for n, _ in FEATURES)}, WRITETIME(event_time) FROM {keyspace}.{view.table} "
            f"WHERE user_id = ?")
        rng = random.Random(3)
        raw_samples = []
        for i in range(args.reads_1 // 2 + 100):
            key = f"user-{rng.randrange(n_rows):07d}"
            t0 = time.perf_counter_ns()
            session.execute(select, (key,)).one()
            if i >= 100:
                raw_samples.append(time.perf_counter_ns() - t0)
        out["read_1_baseline_raw_driver"] = percentiles(raw_samples)
        log(f"cassandra raw driver read 1 key  : {out['read_1_baseline_raw_driver']}")
        out["read_1"] = bench_reads(store, view.name, n_rows, args.reads_1, 1, seed=1)
        log(f"cassandra read 1 key             : {out['read_1']}")
        if time.monotonic() < deadline:
            out["read_50"] = bench_reads(store, view.name, n_rows, args.reads_50, 50, seed=2)
            log(f"cassandra read 50 keys           : {out['read_50']}")
        else:
            out["read_50"] = "skipped: time budget spent"


# ------------------------------------------------------------------------------------------------ main

TARGETS = {  # backend: (write rows/s at least, 1-key read P95 ms at most)
    "sqlite": (100_000, 1.0),
    "cassandra": (20_000, 2.0),
}


def targets(report: dict) -> dict:
    out = {}
    for backend, (rows_per_s, p95_ms) in TARGETS.items():
        figures = report.get(backend)
        if not isinstance(figures, dict):
            continue
        write, read = figures.get("write_store"), figures.get("read_1")
        out[backend] = {
            "write_rows_per_s_target": rows_per_s,
            "write_met": isinstance(write, dict) and write["rows_per_s"] >= rows_per_s,
            "read_1_p95_ms_target": p95_ms,
            "read_1_p95_met": isinstance(read, dict) and read["p95_ms"] <= p95_ms,
        }
    return out



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,cassandra")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--reads-1", type=int, default=5000, help="1-key read calls per backend")
    parser.add_argument("--reads-50", type=int, default=1000, help="50-key read calls per backend")
    parser.add_argument("--per-row-rows", type=int, default=50_000,
                        help="rows for the Cassandra store without batching (batch_rows=1)")
    parser.add_argument("--max-seconds", type=float, default=900, help="budget; later phases are skipped")
    parser.add_argument("--profile", default="test")
    args = parser.parse_args()
    if args.rows > 1_000_000 or args.reads_1 > 100_000 or args.reads_50 > 20_000:
        parser.error("counts are bounded: --rows <= 1e6, --reads-1 <= 1e5, --reads-50 <= 2e4")
    settings = load_settings(args.profile)
    started = time.monotonic()
    deadline = started + args.max_seconds
    report: dict[str, Any] = {
        "benchmark": "online_store",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version, "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "view": {"entity_keys": KEYS, "features": len(FEATURES), "ttl_seconds": TTL_SECONDS},
        "rows": args.rows,
    }
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if time.monotonic() > deadline:
            report[backend] = "skipped: time budget spent"
            continue
        log(f"== {backend}: generating {args.rows} rows")
        rows = make_rows(args.rows)
        out: dict[str, Any] = {}
        report[backend] = out
        t = time.monotonic()
        if backend == "sqlite":
            bench_sqlite(settings, rows, args, out)
        elif backend == "cassandra":
            bench_cassandra(settings, rows, args, out, deadline)
        else:
            parser.error(f"unknown backend {backend}")
        out["phase_seconds"] = round(time.monotonic() - t, 1)
        del rows
        gc.collect()
    report["targets"] = targets(report)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
