"""Feature-store benchmark: point-in-time training set on all flights, and materialization write rates.

1. Offline feature tables (one per view) and the point-in-time training set for every labelled flight, on
   local Spark: seconds and rows/s.
2. The materialization write path (`_write_partition`, what each Spark partition runs) on the real rows of
   the `aircraft_history` view (all 327k event rows of 2013), into SQLite and into the local Cassandra,
   beside a raw-driver baseline on the same rows in the same run (sqlite3 executemany of a plain upsert;
   cassandra-driver execute_concurrent_with_args of a plain prepared INSERT).

Bounded: one pass each, loopback only. Needs the lake of the profile (run `atelier lake ingest` first) and
starts the profile's Cassandra if it is not running. Last output line: one JSON object of figures.

    ATELIER_PROFILE=test .venv/bin/python benchmarks/feature_store.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime

from pipelines.config import load_settings
from pipelines.featurestore import materialize, offline
from pipelines.featurestore.spec import load_feature_set
from pipelines.lake.tables import Lake
from pipelines.services import Supervisor, service_module
from pipelines.spark import get_spark
from pipelines.usecases import get_usecase


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_pit(spark, lake, usecase, features) -> dict:
    out = {}
    started = time.perf_counter()
    for view in features.batch_views:
        t = time.perf_counter()
        rows = offline.write_view_table(spark, lake, usecase.name, view, "benchmark")
        out[f"offline_{view.name}_rows"] = rows
        out[f"offline_{view.name}_s"] = round(time.perf_counter() - t, 2)
    out["offline_tables_s"] = round(time.perf_counter() - started, 2)
    t = time.perf_counter()
    path = tempfile.mkdtemp(prefix="atelier-ts-")
    offline.training_set(spark, lake, features).write.mode("overwrite").parquet(path)
    rows = spark.read.parquet(path).count()
    seconds = time.perf_counter() - t
    out.update(training_set_rows=rows, training_set_s=round(seconds, 2),
               training_set_rows_per_s=round(rows / seconds))
    # A window, as model_train builds one: only the feature rows its labels can use are read.
    start, end = datetime(2013, 9, 1, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)
    t = time.perf_counter()
    offline.training_set(spark, lake, features, start, end).write.mode("overwrite").parquet(path)
    rows = spark.read.parquet(path).count()
    out.update(training_set_window_rows=rows, training_set_window_s=round(time.perf_counter() - t, 2))
    return out


def raw_sqlite(rows, names) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(f"{tmp}/raw.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{n} REAL" for n in names)
        db.execute(f"CREATE TABLE t (tailnum TEXT PRIMARY KEY, {cols}, event_time_us INTEGER)")
        params = [(r.key[0], *[r.values[n] for n in names], int(r.event_time.timestamp() * 1e6)) for r in rows]
        marks = ", ".join("?" * (len(names) + 2))
        t = time.perf_counter()
        with db:
            db.executemany(f"INSERT OR REPLACE INTO t VALUES ({marks})", params)
        seconds = time.perf_counter() - t
        db.close()
    return len(rows) / seconds


def raw_cassandra(settings, rows, names) -> float:
    from cassandra.cluster import Cluster
    from cassandra.concurrent import execute_concurrent_with_args

    cluster = Cluster(settings.cassandra.contact_points, port=settings.cassandra.port, protocol_version=5)
    session = cluster.connect()
    session.execute("CREATE KEYSPACE IF NOT EXISTS atelier_bench_raw WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    cols = ", ".join(f"{n} double" for n in names)
    session.execute(f"CREATE TABLE IF NOT EXISTS atelier_bench_raw.t (tailnum text PRIMARY KEY, {cols}, "
                    "event_time timestamp)")
    insert = session.prepare(f"INSERT INTO atelier_bench_raw.t (tailnum, {', '.join(names)}, event_time) "
                             f"VALUES ({', '.join('?' * (len(names) + 2))})")
    params = [(r.key[0], *[None if r.values[n] is None else float(r.values[n]) for n in names], r.event_time)
              for r in rows]
    t = time.perf_counter()
    execute_concurrent_with_args(session, insert, params, concurrency=128, raise_on_first_error=True)
    seconds = time.perf_counter() - t
    cluster.shutdown()
    return len(rows) / seconds


def bench_writes(spark, lake, settings, usecase, features) -> dict:
    from pipelines.stores.online import FeatureRow

    view = features.views["aircraft_history"]
    table = spark.read.parquet(lake.path(offline.feature_table_name(usecase.name, view.name)))
    rows = [FeatureRow((r["tailnum"],), {n: r[n] for n in view.feature_names},
                       r["event_time"].replace(tzinfo=UTC)) for r in table.collect()]
    rows.sort(key=lambda r: r.event_time)
    names = view.feature_names
    out = {"write_rows": len(rows)}
    now = rows[-1].event_time
    # Without a TTL: every 2013 row is written (with it, rows older than a week before `now` are skipped).
    schema = dataclasses.replace(materialize.online_schema(usecase.name, view), name="bench_aircraft_history",
                                 ttl_seconds=None)
    spark_rows = [{**r.values, "tailnum": r.key[0], "event_time": r.event_time} for r in rows]
    for backend in ("sqlite", "cassandra"):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ATELIER__ONLINE_STORE__BACKEND": backend,
                   "ATELIER__ONLINE_STORE__SQLITE_PATH": f"{tmp}/features.db",
                   "ATELIER__CASSANDRA__KEYSPACE": "atelier_bench"}
            store_settings = load_settings(settings.profile, environ=env)
            materialize.apply_schema(store_settings, schema)  # the driver's step, before the partitions write
            t = time.perf_counter()
            written, skipped = next(materialize._write_partition(store_settings, schema, ["tailnum"], names, now,
                                                                 iter(spark_rows)))
            seconds = time.perf_counter() - t
            log(f"{backend}: {written} written, {skipped} expired, {seconds:.1f} s")
            out[f"{backend}_materialize_rows_per_s"] = round((written + skipped) / seconds)
            out[f"{backend}_skipped_expired"] = skipped
    out["sqlite_raw_rows_per_s"] = round(raw_sqlite(rows, names))
    out["cassandra_raw_rows_per_s"] = round(raw_cassandra(settings, rows, names))
    for backend in ("sqlite", "cassandra"):
        out[f"{backend}_vs_raw"] = round(out[f"{backend}_materialize_rows_per_s"] / out[f"{backend}_raw_rows_per_s"], 3)
    return out


def main() -> int:
    settings = load_settings()
    usecase = get_usecase("flights_eta", settings.usecases_path)
    features = load_feature_set(usecase)
    lake = Lake.from_settings(settings)
    if lake.current_version("flights") is None:
        log("no published lake: run `atelier lake ingest` for this profile first")
        return 2
    supervisor = Supervisor(settings.run_dir)
    cassandra = service_module("cassandra")
    cassandra.ensure_installed(settings)
    spec = cassandra.build_spec(settings)
    started_here = supervisor.status(spec).state != "running"
    supervisor.up(spec)
    spark = get_spark(settings, "atelier-bench-feature-store")
    try:
        figures = {"profile": settings.profile, "cores": os.cpu_count(), "load_start": os.getloadavg()[0]}
        figures.update(bench_pit(spark, lake, usecase, features))
        figures.update(bench_writes(spark, lake, settings, usecase, features))
        figures["load_end"] = os.getloadavg()[0]
    finally:
        spark.stop()
        if started_here:
            supervisor.down(spec)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
