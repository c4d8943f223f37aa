"""Feedback-loop benchmark: the replay's sustained rate through the API while it writes features, and the
feedback job's join rate over a month of prediction logs, each beside its floor measured in the same run.

Setup (bounded, loopback only, the test profile's MLflow and Triton): the registered champion (or the serving
benchmark's synthetic model), a real API server process on its own SQLite store and log folder, a lake of the
benchmark's own whose source and feature tables link to the test lake's (so the feedback tables it writes stay
out of the tests' lake).

* replay: ``--days`` days of December 2013 replayed through the API (features written as they become known,
  outcomes released 2 h after landing): requests/s in the days' loops, and including the Spark work (the
  initial materialization and the feature rows). Floor: the same request bodies sent again by the same
  client at the same concurrency (4), with no feature writes, no waves and no Spark: the API alone.
* feedback join: the replayed days' log and outcome records copied to 30 days (request ids and keys made
  unique per copy), then ``run_feedback`` over that month (ingest -> validate -> join -> metrics -> publish;
  no MLflow): predictions joined per second. Floor: Spark reading the same JSON-lines files and counting them.

Usage: ``ATELIER_PROFILE=test .venv/bin/python benchmarks/feedback.py [--days 3]``. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import load_settings  # noqa: E402

FIRST_DAY = date(2013, 12, 24)
MONTH = (date(2013, 11, 1), date(2013, 12, 1))
CONCURRENCY = 4  # the replay's default


def log(message: str) -> None:
    print(message, flush=True)


def _serving_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linked_lake(source: Path, target: Path, tables: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for table in tables:
        link = target / table
        if not link.exists():
            link.symlink_to(source / table)


async def _api_alone(url: str, token: str, bodies: list[tuple[dict, str, str]], concurrency: int) -> float:
    """The same requests with the replay's client and concurrency, but no feature writes and no waves."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                 limits=limits) as client:
        async def one(body: dict, as_of: str, rid: str) -> None:
            async with semaphore:
                r = await client.post("/v1/predict", json=body, headers={"X-Atelier-As-Of": as_of,
                                                                         "X-Request-Id": f"floor-{rid}"[:64]})
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(*b) for b in bodies))
        return time.perf_counter() - started


def _month_of_logs(log_dir: Path, outcome_dir: Path, days: list[date], work: Path) -> tuple[Path, Path, int]:
    """Copies of the replayed days' records over MONTH (ids and keys unique per copy)."""
    records = [json.loads(line) for d in days for p in sorted((log_dir / f"date={d}").glob("*.jsonl"))
               for line in p.read_text().splitlines() if line.strip()]
    outcomes = {}
    for p in outcome_dir.glob("date=*/*.jsonl"):
        for line in p.read_text().splitlines():
            o = json.loads(line)
            outcomes[o["flight_id"]] = o
    month_log, month_outcomes = work / "month-log" / "flights_eta", work / "month-outcomes" / "flights_eta"
    shutil.rmtree(month_log.parent, ignore_errors=True)
    shutil.rmtree(month_outcomes.parent, ignore_errors=True)
    n = 0
    day = MONTH[0]
    copy = 0
    while day < MONTH[1]:
        source_day = days[copy % len(days)]
        shift = day - source_day
        out_log, out_outcomes = [], []
        for r in records:
            if r["as_of"][:10] != source_day.isoformat() or r["request_id"].startswith("floor-"):
                continue  # the floor's re-sent requests are in the same log
            fid = r["request"].get("flight_id")
            new_id = f"{fid}~{copy}" if fid else None
            r2 = {**r, "request_id": f"{r['request_id']}~{copy}"[:64], "as_of": _shift(r["as_of"], shift),
                  "request": {**r["request"], "flight_id": new_id}}
            out_log.append(json.dumps(r2))
            o = outcomes.get(fid)
            if o is not None:
                out_outcomes.append(json.dumps({**o, "flight_id": new_id, "arrived_at": _shift(o["arrived_at"], shift),
                                                "event_time": _shift(o["event_time"], shift),
                                                "outcome_time": _shift(o["outcome_time"], shift)}))
        for folder, lines in ((month_log, out_log), (month_outcomes, out_outcomes)):
            by_day: dict[str, list[str]] = {}
            for line in lines:
                key = json.loads(line)["as_of" if folder is month_log else "arrived_at"][:10]
                by_day.setdefault(key, []).append(line)
            for d, chunk in by_day.items():
                target = folder / f"date={d}"
                target.mkdir(parents=True, exist_ok=True)
                with open(target / f"part-{copy}.jsonl", "a") as handle:
                    handle.write("\n".join(chunk) + "\n")
        n += len(out_log)
        day += timedelta(days=1)
        copy += 1
    return month_log.parent, month_outcomes.parent, n


def _shift(iso: str, delta: timedelta) -> str:
    from datetime import datetime

    value = datetime.fromisoformat(iso.replace("Z", "+00:00")) + delta
    return value.isoformat().replace("+00:00", "Z")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3, choices=range(1, 8), metavar="N")
    args = parser.parse_args(argv)
    started = time.monotonic()
    base = load_settings("test")
    from pipelines.featurestore.offline import feature_table_name
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.feedback import run_feedback
    from pipelines.monitoring.replay import prepare_store, replay
    from pipelines.services import Supervisor, service_module
    from pipelines.spark import get_spark
    from pipelines.stores.online import get_online_store
    from pipelines.usecases import get_usecase

    supervisor = Supervisor(base.run_dir)
    for name in ("mlflow", "triton"):
        module = service_module(name)
        module.ensure_installed(base)
        supervisor.up(module.build_spec(base))
    usecase = get_usecase("flights_eta", base.usecases_path)
    features = load_feature_set(usecase)
    bench = _serving_bench()
    name, version = bench.model_version(base, features)
    work = base.home_path / "bench" / "feedback"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lake = work / "lake"
    _linked_lake(Path(base.lake_root), lake, [*usecase.tables, *[feature_table_name("flights_eta", v.name)
                                                                  for v in features.batch_views]])
    env = {"ATELIER__ONLINE_STORE__BACKEND": "sqlite", "ATELIER__ONLINE_STORE__SQLITE_PATH": str(work / "online.db"),
           "ATELIER__LAKE__ROOT": str(lake), "ATELIER__FEEDBACK__OUTCOME_LOG_DIR": str(work / "outcomes")}
    settings = load_settings("test", environ={**os.environ, **env,
                                              "ATELIER__API__PREDICTION_LOG_DIR": str(work / "log")})
    with get_online_store(settings) as store:
        prepare_store(store, features, clear=True)
    results: dict[str, Any] = {"benchmark": "feedback", "model": f"{name}:{version}", "machine": {
        "cpus": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 2)}}
    spark = get_spark(settings, "atelier-bench-feedback")
    from pipelines.deploy.package import package_version, place_and_load

    # The API serves what the deployment loaded into Triton.
    place_and_load(base, usecase, package_version(base, name, version).path)
    server = bench.Server({**env, "ATELIER__API__MODELS": f"{{flights_eta: '{name}:{version}'}}"}, work / "log")
    try:
        days = [FIRST_DAY + timedelta(days=i) for i in range(args.days)]
        t0 = time.perf_counter()
        result = replay(settings, spark, usecase, days[0], days[-1] + timedelta(days=1),
                        api_url=f"http://127.0.0.1:{server.port}", token=server.token, concurrency=CONCURRENCY)
        replay_s = time.perf_counter() - t0
        loop_s = sum(d.wall_s for d in result.days)
        log(f"replay: {result.requests:,} requests over {args.days} day(s), {result.failed} failed, "
            f"{replay_s:.1f} s in all ({loop_s:.1f} s in the days' loops)")
        time.sleep(1.0)
        records = [json.loads(line) for p in sorted((work / "log" / "flights_eta").rglob("*.jsonl"))
                   for line in p.read_text().splitlines() if line.strip()]
        bodies = [({**r["request"], "usecase": "flights_eta",
                    "sched_dep_ts": r["request"]["sched_dep_ts"].replace("+00:00", "Z"),
                    "sched_arr_ts": r["request"]["sched_arr_ts"].replace("+00:00", "Z")}, r["as_of"], r["request_id"])
                  for r in records]
        floor_s = asyncio.run(_api_alone(f"http://127.0.0.1:{server.port}", server.token, bodies, CONCURRENCY))
        results["replay"] = {
            "days": args.days, "requests": result.requests, "failed": result.failed,
            "feature_rows_written": sum(d.feature_rows for d in result.days),
            "wall_s": round(replay_s, 2), "days_loop_s": round(loop_s, 2),
            "requests_per_s": round(result.requests / loop_s, 1),
            "requests_per_s_incl_spark": round(result.requests / replay_s, 1),
            "floor_api_only_requests_per_s": round(len(bodies) / floor_s, 1),
            "ratio_to_floor": round((result.requests / loop_s) / (len(bodies) / floor_s), 3),
        }
        log(f"replay {results['replay']}")
    finally:
        server.stop()
    month_log, month_outcomes, n = _month_of_logs(work / "log" / "flights_eta", work / "outcomes" / "flights_eta",
                                                  days, work)
    month = load_settings("test", environ={**os.environ, **env, "ATELIER__API__PREDICTION_LOG_DIR": str(month_log),
                                           "ATELIER__FEEDBACK__OUTCOME_LOG_DIR": str(month_outcomes)})
    files = [str(p) for p in sorted(month_log.rglob("*.jsonl"))]
    t0 = time.perf_counter()
    bare = spark.read.json(files).count()
    floor_read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fb = run_feedback(spark, month, usecase, *MONTH, "bench-feedback-month", log_to_mlflow=False)
    join_s = time.perf_counter() - t0
    spark.stop()
    results["feedback_month"] = {
        "log_records": n, "predictions_joined": fb.feedback_rows, "label_status": fb.label_status,
        "wall_s": round(join_s, 2), "predictions_per_s": round(fb.feedback_rows / join_s, 1),
        "floor_spark_json_read_s": round(floor_read_s, 2), "floor_rows": bare,
        "ratio_to_floor_time": round(join_s / floor_read_s, 2),
    }
    log(fb.to_text())
    results["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
