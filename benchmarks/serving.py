"""Prediction API benchmark: end-to-end ``POST /v1/predict`` latency and throughput, the batch endpoint, and
the floor (bare in-process ``inplace_predict``) with the overhead above it split by stage.

Setup (bounded, loopback only, the test profile's services): the model is the use case's registered champion
if training has registered one, else a synthetic bundle (real XGBoost, 300 trees of depth 8 on the real
feature names) registered as ``flights_eta_serving_bench``; features of 2013-12-30 are materialized once
(Spark) into a SQLite file and a Cassandra keyspace of the benchmark's own. Then, per online store backend,
a real API server process (``python -m serving.server``, production budgets: deadline 50 ms, Triton 25 ms)
on the test Triton, driven by a lean asyncio HTTP/1.1 keep-alive client (one coroutine per connection, bytes
prepared once) over 40 real flights:

* sequential: one connection, one request at a time: P50/P95/P99;
* concurrent: for each of ``--connections`` (4, 8, 16) that many connections for ``--seconds``: throughput,
  P50/P95/P99;
* batch (SQLite): 100 flights per ``/v1/predict/batch`` request, one at a time: rows/s;
* for each phase: answers from Triton vs fallback, the server's mean time per stage (from its Prometheus
  histograms), client / API server / Triton CPU seconds;
* floor: ``inplace_predict`` in this process on the same feature row, and a direct tritonclient call.

Usage: ``ATELIER_PROFILE=test .venv/bin/python benchmarks/serving.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import REPO_ROOT, Settings, load_settings  # noqa: E402

BENCH_MODEL = "flights_eta_serving_bench"
KEYSPACE = "atelier_bench"
AS_OF = "2013-12-31T00:00:00Z"
WINDOW = (datetime(2013, 12, 30, tzinfo=UTC), datetime(2013, 12, 31, tzinfo=UTC))


def log(message: str) -> None:
    print(message, flush=True)


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "n": int(a.size)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two samples of a process set (a process that exited in between is not counted,
    one that started is counted whole)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def group_pids(pid: int) -> list[int]:
    pgid = os.getpgid(pid)
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


# ------------------------------------------------------------------------------------------------ setup


def model_version(settings: Settings, features: Any) -> tuple[str, str]:
    """(registered name, version) served throughout the run: the use case's champion at start (pinned, as
    aliases may move meanwhile), else a synthetic 300-tree bundle registered for the benchmark."""
    from pipelines.models.registry import ModelNotFound, resolve_version

    for name in ("flights_eta", BENCH_MODEL):
        try:
            return name, resolve_version(settings, name, "champion").version
        except ModelNotFound:
            continue
    import tempfile

    from tests.support.bundles import register_bundle, synthetic_bundle

    folder = Path(tempfile.mkdtemp()) / "bundle"
    ref = register_bundle(settings, synthetic_bundle(features, folder, trees=300, depth=8), BENCH_MODEL)
    return ref.name, ref.version


def store_overrides(settings: Settings, backend: str) -> dict[str, str]:
    if backend == "sqlite":
        return {"ATELIER__ONLINE_STORE__BACKEND": "sqlite",
                "ATELIER__ONLINE_STORE__SQLITE_PATH": str(settings.home_path / "bench" / "features.db")}
    return {"ATELIER__ONLINE_STORE__BACKEND": "cassandra", "ATELIER__CASSANDRA__KEYSPACE": KEYSPACE}


def ensure_features(settings: Settings, features: Any, backends: list[str], flights: list[dict]) -> None:
    """Materialize 2013-12-30 into each backend unless the first flight's rows are already there."""
    from pipelines.stores.online import get_online_store

    todo = []
    for backend in backends:
        s = load_settings("test", environ={**os.environ, **store_overrides(settings, backend)})
        try:
            with get_online_store(s) as store:
                [r] = store.read("flights_eta__aircraft_history", [(flights[0]["tailnum"],)], now=WINDOW[1])
                if r.found:
                    continue
        except Exception:  # noqa: BLE001 - view not there yet
            pass
        todo.append(s)
    if not todo:
        return
    from pipelines.featurestore import materialize
    from pipelines.spark import get_spark

    spark = get_spark(settings, "atelier-bench-serving")
    try:
        for s in todo:
            started = time.monotonic()
            for view in features.batch_views:
                materialize.materialize_view(spark, s, features, view, *WINDOW, now=WINDOW[1])
            log(f"  materialized 2013-12-30 into {s.online_store.backend} in {time.monotonic() - started:.0f} s")
    finally:
        spark.stop()


def real_flights(settings: Settings, n: int = 40) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.lake.tables import Lake

    data = ds.dataset(Lake.from_settings(settings).path("flights"), format="parquet", partitioning="hive")
    frame = data.to_table(columns=["origin", "dest", "carrier", "tailnum", "sched_dep_ts", "sched_arr_ts",
                                   "dep_delay", "flight_id"], filter=pc.field("sched_dep_date") == "2013-12-30"
                          ).to_pandas()
    frame = frame[(frame.sched_dep_ts >= "2013-12-30T21:00:00Z") & frame.tailnum.notna() & frame.dep_delay.notna()]
    return [{"origin": r.origin, "dest": r.dest, "carrier": r.carrier, "tailnum": r.tailnum,
             "sched_dep_ts": r.sched_dep_ts.isoformat(), "sched_arr_ts": r.sched_arr_ts.isoformat(),
             "dep_delay": float(r.dep_delay)} for r in frame.sort_values("flight_id").head(n).itertuples()]


class Server:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port, self.token, self.log_dir = free_port(), secrets.token_urlsafe(16), log_dir
        full = {**os.environ, "ATELIER_PROFILE": "test", "ATELIER_API_TOKEN": self.token,
                "ATELIER__API__PORT": str(self.port), "ATELIER__API__PREDICTION_LOG_DIR": str(log_dir), **env}
        self.out = (log_dir.parent / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.server"], cwd=REPO_ROOT, env=full,  # noqa: S603
                                     stdout=self.out, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the API did not become ready; see {self.out.name}")

    def metrics(self) -> dict[str, float]:
        import httpx

        out = {}
        for line in httpx.get(f"http://127.0.0.1:{self.port}/metrics").text.splitlines():
            if line.startswith(("atelier_api_stage_seconds_sum", "atelier_api_stage_seconds_count")):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def triton_calls(self) -> tuple[int, int]:
        import httpx

        details = httpx.get(f"http://127.0.0.1:{self.port}/readyz").json()["flights_eta"]
        return details["triton_calls"], details["triton_rows_coalesced"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.out.close()


def stage_means(before: dict[str, float], after: dict[str, float], endpoint: str) -> dict[str, float]:
    out = {}
    for stage in ("feature_lookup", "transform", "inference", "total"):
        key = f'{{endpoint="{endpoint}",stage="{stage}"}}'
        n = after.get(f"atelier_api_stage_seconds_count{key}", 0) - before.get(f"atelier_api_stage_seconds_count{key}", 0)
        s = after.get(f"atelier_api_stage_seconds_sum{key}", 0) - before.get(f"atelier_api_stage_seconds_sum{key}", 0)
        out[f"{stage}_mean_ms"] = round(s / n * 1e3, 3) if n else None
    return out


# ------------------------------------------------------------------------------------------------ load


def requests_bytes(flights: list[dict], token: str, path: str = "/v1/predict", batch: int = 0) -> list[bytes]:
    bodies = ([json.dumps({"requests": [flights[(i + j) % len(flights)] for j in range(batch)]}).encode()
               for i in range(4)] if batch else [json.dumps(f).encode() for f in flights])
    return [(f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nX-Atelier-As-Of: {AS_OF}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]


async def _connection(port: int, reqs: list[bytes], count: int | None, until: float, lat: list[float],
                      tally: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while (count is None or i < count) and time.perf_counter() < until:
            req = reqs[i % len(reqs)]
            i += 1
            t = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            start = head.index(b"content-length: ") + 16
            body = await reader.readexactly(int(head[start:head.index(b"\r", start)]))
            lat.append(time.perf_counter() - t)
            status = head[9:12].decode()
            key = status if status != "200" else (
                "fallback" if b'"runtime":"fallback"' in body else "triton")
            tally[key] = tally.get(key, 0) + body.count(b'"runtime":"') if status == "200" else tally.get(key, 0) + 1
    finally:
        writer.close()


def drive(port: int, reqs: list[bytes], connections: int, count: int | None, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    tally: dict[str, int] = {}
    cpu, wall = time.process_time(), time.perf_counter()
    until = wall + seconds
    per = None if count is None else max(1, count // connections)

    async def main() -> None:
        await asyncio.gather(*[_connection(port, reqs, per, until, lat, tally) for _ in range(connections)])

    asyncio.run(main())
    wall = time.perf_counter() - wall
    return {"lat": lat, "tally": tally, "wall_s": wall, "client_cpu_s": time.process_time() - cpu}


def phase(server: Server, triton_pid: int | None, reqs: list[bytes], endpoint: str, connections: int,
          count: int | None, seconds: float) -> dict[str, Any]:
    calls = server.triton_calls()
    triton_group = group_pids(triton_pid) if triton_pid else []
    before, server_cpu, triton_cpu = server.metrics(), cpu_by_pid([server.proc.pid]), cpu_by_pid(triton_group)
    run = drive(server.port, reqs, connections, count, seconds)
    server_cpu = cpu_delta(server_cpu, cpu_by_pid([server.proc.pid]))
    triton_cpu = cpu_delta(triton_cpu, cpu_by_pid(group_pids(triton_pid) if triton_pid else []))
    calls = [a - b for a, b in zip(server.triton_calls(), calls, strict=True)]
    n = len(run["lat"])
    out = {**pct(run["lat"]), "requests_per_s": round(n / run["wall_s"], 1), "answers": run["tally"],
           "connections": connections, "seconds": round(run["wall_s"], 2),
           "cpu_s": {"client": round(run["client_cpu_s"], 2), "api": round(server_cpu, 2),
                     "triton": round(triton_cpu, 2)},
           "cpu_ms_per_request": {"client": round(run["client_cpu_s"] / n * 1e3, 3),
                                  "api": round(server_cpu / n * 1e3, 3), "triton": round(triton_cpu / n * 1e3, 3)},
           "server_stages": stage_means(before, server.metrics(), endpoint),
           "triton_calls": calls[0], "rows_in_coalesced_calls": calls[1]}
    return out


def floor(settings: Settings, name: str, version: str, features_row: dict[str, Any], n: int = 2000
          ) -> dict[str, Any]:
    import tritonclient.http as httpclient

    from pipelines.deploy.triton import INPUT, triton_name
    from pipelines.models.registry import load_bundle

    bundle = load_bundle(settings, name, version=version)
    bundle.booster.set_param({"nthread": 1})  # as in the Triton model
    x = np.array([[np.nan if features_row[f] is None else features_row[f] for f in bundle.feature_names]],
                 dtype=np.float32)
    for _ in range(50):
        bundle.predict(x)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        bundle.predict(x)
        lat.append(time.perf_counter() - t)
    client = httpclient.InferenceServerClient(settings.triton.http_url)
    tlat = []
    for i in range(n // 2 + 50):
        inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        t = time.perf_counter()
        client.infer(triton_name(name, str(bundle.version)), [inp], model_version=str(bundle.version))
        if i >= 50:
            tlat.append(time.perf_counter() - t)
    client.close()
    return {"inplace_predict_in_process": pct(lat), "triton_direct_http": pct(tlat),
            "trees": len(bundle.booster.get_dump()), "features": len(bundle.feature_names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,cassandra")
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--connections", default="4,8,16", help="concurrent phases (connections each)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-requests", type=int, default=40)
    args = parser.parse_args(argv)
    started = time.monotonic()
    settings = load_settings("test")
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.services import Supervisor, service_module
    from pipelines.usecases import get_usecase

    backends = [b for b in args.backends.split(",") if b]
    supervisor = Supervisor(settings.run_dir)
    needed = ["mlflow", "triton"] + (["cassandra"] if "cassandra" in backends else [])
    for name in needed:
        module = service_module(name)
        module.ensure_installed(settings)
        supervisor.up(module.build_spec(settings))
    triton_pid = supervisor.status(service_module("triton").build_spec(settings)).pid
    features = load_feature_set(get_usecase("flights_eta", settings.usecases_path))
    name, version = model_version(settings, features)
    from pipelines.deploy.package import package_version, place_and_load

    # The API serves what the deployment loaded into Triton.
    place_and_load(settings, get_usecase("flights_eta", settings.usecases_path),
                   package_version(settings, name, version).path)
    flights = real_flights(settings)
    ensure_features(settings, features, backends, flights)
    log(f"model {name} v{version}; {len(flights)} real flights; load average {os.getloadavg()[0]:.1f}")
    results: dict[str, Any] = {"benchmark": "serving", "model": f"{name}:{version}", "machine": {
        "cpus": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 2)}}
    work = settings.home_path / "bench" / "serving"
    work.mkdir(parents=True, exist_ok=True)
    features_row = None
    for backend in backends:
        env = {**store_overrides(settings, backend), "ATELIER__API__MODELS": f"{{flights_eta: '{name}:{version}'}}"}
        server = Server(env, work / f"log-{backend}-{int(time.time())}")
        try:
            reqs = requests_bytes(flights, server.token)
            drive(server.port, reqs, 1, 300, 30)  # warm-up
            res = {"sequential": phase(server, triton_pid, reqs, "predict", 1, args.sequential, 60)}
            log(f"  {backend} sequential: {res['sequential']}")
            for c in [int(x) for x in args.connections.split(",") if x]:
                res[f"concurrent_{c}"] = phase(server, triton_pid, reqs, "predict", c, None, args.seconds)
                log(f"  {backend} concurrent x{c}: {res[f'concurrent_{c}']}")
            if backend == "sqlite":
                breqs = requests_bytes(flights, server.token, "/v1/predict/batch", batch=100)
                b = phase(server, triton_pid, breqs, "batch", 1, args.batch_requests, 60)
                b["rows_per_s"] = round(b["requests_per_s"] * 100, 1)
                res["batch_100"] = b
                log(f"  {backend} batch of 100: {b}")
        finally:
            server.stop()
        results[backend] = res
        if features_row is None:
            for path in sorted(server.log_dir.rglob("*.jsonl")):
                features_row = json.loads(path.read_text().splitlines()[0])["features_used"]
                break
    if features_row is not None:
        results["floor"] = floor(settings, name, version, features_row)
        log(f"  floor: {results['floor']}")
    results["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
