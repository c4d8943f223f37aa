"""Deployment benchmark: what a rollout costs the requests it serves, and how long rollouts take.

Setup (bounded, loopback only, the test profile's services): the use case's champion (or the serving
benchmark's synthetic model) registered again as three versions of ``flights_eta_deploy_bench`` (a base, an
identical candidate, and the candidate biased by +60 label units), features of 2013-12-30 in the serving
benchmark's SQLite file, a routing table of the benchmark's own, one API server process (production
budgets), the lean asyncio client of ``benchmarks/serving.py`` over 40 real flights at ``--connections``.

Phases, all in one run (same machine state):

* ``steady``: the base version alone;
* ``rollout``: a canary of the identical candidate (steps 20 -> 50 -> 100 %, ``--bake`` s each) while the load
  runs: latency during the rollout, failed requests, and the time from the trigger to 100 %;
* ``shadow``: the base answering with the candidate shadowing every request, against ``steady`` again right
  after (``steady_after``);
* ``rollback``: a canary of the biased candidate: the time from its first step's start to the routing that
  takes it out (judge + drain);
* ``floor``: bare in-process ``inplace_predict`` and a direct tritonclient call of the base version.

Ratios are quoted against ``steady`` measured in the same run. Usage:
``ATELIER_PROFILE=test .venv/bin/python benchmarks/deploy.py``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import load_settings  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
bench = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

MODEL = "flights_eta_deploy_bench"


def register(settings: Any, base: Any, kind: str, folder: Path, delta: float = 0.0) -> str:
    import numpy as np

    from pipelines.deploy.package import golden_inputs
    from pipelines.models.bundle import ModelBundle
    from tests.support.bundles import register_bundle

    booster = base.booster
    if delta:
        from pipelines.deploy.drills import continue_training

        matrix = golden_inputs(settings, base, 500)
        booster = continue_training(base, matrix, np.full(len(matrix), delta))
    bundle = ModelBundle(**{**{k: getattr(base, k) for k in (
        "usecase", "label", "feature_names", "feature_defaults", "calibration", "feature_ranges", "fallback",
        "feature_spec_hash", "lineage", "offset_feature")}, "model_name": MODEL})
    bundle.save(folder / kind, booster)
    return register_bundle(settings, bundle, MODEL, alias=f"bench_{kind}").version


def ratios(phase: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    return {k: round(phase[k] / base[k], 3) for k in ("p50_ms", "p95_ms", "p99_ms") if base.get(k)}


def drive_phase(server: Any, reqs: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    run = bench.drive(server.port, reqs, connections, None, seconds)
    n = len(run["lat"])
    return {**bench.pct(run["lat"]), "requests_per_s": round(n / run["wall_s"], 1), "answers": run["tally"],
            "failed": sum(v for k, v in run["tally"].items() if k not in ("triton", "fallback"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bake", type=float, default=5.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-deploy-"))
    env = {**bench.store_overrides(load_settings("test"), "sqlite"),
           "ATELIER__DEPLOY__ROUTING_DIR": str(work / "routing"), "ATELIER__DEPLOY__DRAIN_S": "1",
           "ATELIER__API__MODELS": f"{{flights_eta: '{MODEL}'}}",
           "ATELIER__API__PREDICTION_LOG_DIR": str(work / "log")}
    settings = load_settings("test", environ={**os.environ, **env})
    from pipelines.deploy.rollout import deploy
    from pipelines.deploy.routing import Route, RoutingStore
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.models.registry import load_bundle
    from pipelines.services import Supervisor, service_module
    from pipelines.usecases import get_usecase

    supervisor = Supervisor(settings.run_dir)
    for name in ("mlflow", "triton"):
        module = service_module(name)
        module.ensure_installed(settings)
        supervisor.up(module.build_spec(settings))
    features = load_feature_set(get_usecase("flights_eta", settings.usecases_path))
    name, version = bench.model_version(settings, features)
    flights = bench.real_flights(settings)
    bench.ensure_features(settings, features, ["sqlite"], flights)
    base_bundle = load_bundle(settings, name, version=version)
    versions = {kind: register(settings, base_bundle, kind, work, delta) for kind, delta in
                (("base", 0.0), ("good", 0.0), ("biased", 60.0))}
    bench.log(f"model {name} v{version} as {MODEL} {versions}; load average {os.getloadavg()[0]:.1f}")
    first = deploy(settings, "flights_eta", versions["base"], strategy="direct", by="bench")
    assert first.status == "completed", first.reason
    results: dict[str, Any] = {"benchmark": "deploy", "model": f"{name}:{version}", "connections": args.connections,
                               "machine": {"cpus": os.cpu_count(), "load_avg_start": round(os.getloadavg()[0], 2)}}
    server = bench.Server(env, work / "log")
    fast = {"canary.steps": [20, 50, 100], "canary.bake_s": args.bake, "canary.min_requests": 100,
            "canary.max_bake_s": args.bake * 6, "canary.check_every_s": 1.0, "analysis.min_requests": 60}
    try:
        reqs = bench.requests_bytes(flights, server.token)
        bench.drive(server.port, reqs, 1, 300, 30)  # warm-up
        results["steady"] = drive_phase(server, reqs, args.connections, args.seconds)
        bench.log(f"  steady: {results['steady']}")

        def rollout(kind: str, out: dict[str, Any]) -> None:
            t0 = time.monotonic()
            out["result"] = deploy(settings, "flights_eta", versions[kind], strategy="canary", overrides=fast,
                                   by="bench")
            out["seconds"] = time.monotonic() - t0

        for kind, label in (("good", "rollout"), ("biased", "rollback")):
            box: dict[str, Any] = {}
            worker = threading.Thread(target=rollout, args=(kind, box))
            worker.start()
            phases = []
            while worker.is_alive():
                phases.append(bench.drive(server.port, reqs, args.connections, None, 2.0))
            worker.join()
            lat = [x for p in phases for x in p["lat"]]
            tally: dict[str, int] = {}
            for p in phases:
                for k, v in p["tally"].items():
                    tally[k] = tally.get(k, 0) + v
            r = box["result"]
            steps = {s["step"]: datetime.fromisoformat(s["at"]) for s in r.steps}
            out = {**bench.pct(lat), "answers": tally, "status": r.status,
                   "failed": sum(v for k, v in tally.items() if k not in ("triton", "fallback")),
                   "trigger_to_end_s": round(box["seconds"], 1),
                   "steps": [(s["step"], s["verdict"]) for s in r.steps]}
            if label == "rollback" and "rollback" in steps:
                judged = [s for s in r.steps if s["step"].startswith("canary")]
                out["failing_step_to_rollback_s"] = round(
                    (steps["rollback"] - datetime.fromisoformat(judged[-1]["at"])).total_seconds()
                    + settings.deploy.drain_s, 2)
                out["first_step_bake_s"] = judged[-1].get("baked_s")
            results[label] = out
            bench.log(f"  {label}: {out}")
        from pipelines.deploy.package import package_version, place_and_load

        place_and_load(settings, get_usecase("flights_eta", settings.usecases_path),
                       package_version(settings, MODEL, versions["base"]).path)
        store = RoutingStore(settings.routing_path)
        table = store.read("flights_eta")
        primary = table.primary.version
        shadowed = store.write(table.with_routes([Route(primary, "primary", 1.0),
                                                  Route(versions["base"], "shadow", 1.0)]),
                               expected_version=table.version, by="bench", reason="shadow benchmark")
        time.sleep(2.0)
        results["shadow"] = drive_phase(server, reqs, args.connections, args.seconds)
        bench.log(f"  shadow: {results['shadow']}")
        store.write(shadowed.with_routes([Route(primary, "primary", 1.0)]), expected_version=shadowed.version,
                    by="bench", reason="shadow benchmark ended")
        time.sleep(2.0)
        results["steady_after"] = drive_phase(server, reqs, args.connections, args.seconds)
        bench.log(f"  steady after: {results['steady_after']}")
    finally:
        server.stop()
    for label in ("rollout", "rollback", "shadow"):
        results[label]["ratio_to_steady"] = ratios(results[label], results["steady"])
    results["shadow"]["ratio_to_steady_after"] = ratios(results["shadow"], results["steady_after"])
    row = None
    for path in sorted((work / "log").rglob("*.jsonl")):
        row = json.loads(path.read_text().splitlines()[0])["features_used"]
        break
    if row is not None:
        results["floor"] = bench.floor(settings, MODEL, primary, row, n=1000)
    results["machine"]["load_avg_end"] = round(os.getloadavg()[0], 2)
    results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
