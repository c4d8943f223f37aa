"""Deployment and progressive delivery for real: artifacts packaged from MLflow versions, loaded into the test
Triton beside the serving version, two API replicas following one routing table under bounded load on
loopback (real flights, real online features), and the rollout controller judging candidates.

One environment is shared by the module (the expensive part): the routing table, the two replicas, the
registered variants. Bake times are short (seconds, not minutes); the judge's thresholds are the spec's.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from deploy_support import (
    SLOW_MODEL_PY_PATCH,
    TEST_MODEL,
    Load,
    flip_byte,
    register_variant,
    served_matrix,
    wait_until,
)
from serving_fixtures import AS_OF, ApiServer

from pipelines.config import load_settings
from pipelines.deploy.drills import continue_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["serving_fixtures"]

# The production judge (alpha, tolerances) on shorter steps. How long a step may bake follows from the judge:
# its always-valid bound shows a candidate's error rate within the 1-point tolerance after ~450 answers with no
# error at all (more when Triton timeouts on a busy machine add some on both arms); the paced load (120/s) gives
# a 20% canary 24 answers a second, so ~19 s. 60 s leaves room for that (production: 1200 s).
FAST = {"canary.steps": [20, 50, 100], "canary.bake_s": 3, "canary.min_requests": 80, "canary.max_bake_s": 60,
        "canary.check_every_s": 1, "analysis.min_requests": 60, "analysis.min_segment_requests": 25}


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", _Receiver.received
    server.shutdown()


@pytest.fixture(scope="module")
def deploy_rows(published_lake):
    """Real flights of 2013-12-30 from noon (UTC), with tail numbers and flight ids, as request rows; and
    their real arrival delays (the outcomes)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    data = ds.dataset(published_lake.path("flights"), format="parquet", partitioning="hive")
    frame = data.to_table(columns=["origin", "dest", "carrier", "tailnum", "sched_dep_ts", "sched_arr_ts",
                                   "dep_delay", "arr_delay", "flight_id"],
                          filter=(pc.field("sched_dep_date") == "2013-12-30")).to_pandas()
    frame = frame[(frame.sched_dep_ts >= "2013-12-30T12:00:00Z") & frame.tailnum.notna() & frame.dep_delay.notna()
                  & frame.arr_delay.notna()].sort_values("flight_id")
    rows = [{"origin": r.origin, "dest": r.dest, "carrier": r.carrier, "tailnum": r.tailnum,
             "sched_dep_ts": r.sched_dep_ts.isoformat(), "sched_arr_ts": r.sched_arr_ts.isoformat(),
             "dep_delay": float(r.dep_delay), "flight_id": r.flight_id} for r in frame.itertuples(index=False)]
    outcomes = [{"flight_id": r.flight_id, "arr_delay": float(r.arr_delay)} for r in frame.itertuples(index=False)]
    assert len(rows) >= 300 and {r["origin"] for r in rows} == {"EWR", "JFK", "LGA"}
    return rows, outcomes


@pytest.fixture(scope="module")
def env(tmp_path_factory, sqlite_features, webhook):
    tmp = tmp_path_factory.mktemp("deploy")
    return {**sqlite_features, "ATELIER__DEPLOY__ROUTING_DIR": str(tmp / "routing"),
            "ATELIER__DEPLOY__DRAIN_S": "1", "ATELIER__DEPLOY__WEBHOOK_URL": webhook[0],
            "ATELIER__API__MODELS": f"{{flights_eta: '{TEST_MODEL}'}}",
            "ATELIER__API__PREDICTION_LOG_DIR": str(tmp / "log"),
            "ATELIER__FEEDBACK__OUTCOME_LOG_DIR": str(tmp / "outcomes"),
            "ATELIER__API__DEADLINE_MS": "1000"}  # a starved CI machine must not turn a late answer into a 503


@pytest.fixture(scope="module")
def dsettings(env):
    return load_settings("test", environ={**os.environ, **env})


@pytest.fixture(scope="module")
def stack(dsettings, env, serving_model, deploy_rows, tmp_path_factory):
    """The base version serving through a routing table, two API replicas on it, the variants registered."""
    import numpy as np

    from pipelines.deploy.rollout import deploy

    _, trained = serving_model
    folder = tmp_path_factory.mktemp("variants")
    rows, outcomes = deploy_rows
    out = Path(env["ATELIER__FEEDBACK__OUTCOME_LOG_DIR"]) / "flights_eta" / "date=2013-12-31"  # they arrive after as_of
    out.mkdir(parents=True)
    (out / "deploytest.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outcomes))
    versions = {"base": register_variant(dsettings, trained, "base", folder / "base")}
    first = deploy(dsettings, "flights_eta", versions["base"], strategy="direct", by="test")
    assert first.status == "completed", first
    log_dir = Path(env["ATELIER__API__PREDICTION_LOG_DIR"])
    replicas = [ApiServer(env, log_dir=log_dir).start()]
    try:
        replicas.append(ApiServer(env, log_dir=log_dir, token=replicas[0].token).start())  # one token, one fleet
        headers = {**replicas[0].headers, "X-Atelier-As-Of": AS_OF}
        with httpx.Client(base_url=replicas[0].url, headers=headers, timeout=30) as client:
            for i, row in enumerate(rows):
                assert client.post("/v1/predict", json=row, headers={"X-Request-Id": f"warm-{i}"}).status_code == 200
        time.sleep(1.0)  # the log writer's flush
        matrix, origins = served_matrix(log_dir, trained.feature_names)
        ewr = np.array([o == "EWR" for o in origins])
        booster = continue_training(trained, matrix, 45.0 * ewr, rounds=6, depth=6)
        shift = booster.inplace_predict(matrix) - trained.booster.inplace_predict(matrix)
        assert abs(float(np.median(shift[ewr])) - 45) < 3 and abs(float(np.median(shift[~ewr]))) < 2
        versions["ewr45"] = register_variant(dsettings, trained, "ewr45", folder / "ewr45", booster=booster)
        biased = continue_training(trained, matrix, np.full(len(matrix), 60.0), rounds=1, depth=1)
        versions["bias60"] = register_variant(dsettings, trained, "bias60", folder / "bias60", booster=biased)
        for kind in ("good", "slow", "good2"):
            versions[kind] = register_variant(dsettings, trained, kind, folder / kind)
        versions["spec"] = register_variant(dsettings, trained, "spec", folder / "spec", spec_hash="0" * 16)
        yield replicas, versions, headers
    finally:
        for r in replicas:
            r.stop()


def _load(stack, rows) -> Load:
    replicas, _, headers = stack
    load = Load([r.url for r in replicas], headers, rows)
    load.start()
    return load


def _routing(dsettings):
    from pipelines.deploy.routing import RoutingStore

    return RoutingStore(dsettings.routing_path).read("flights_eta")


def _check_answers(load: Load, allowed: set[str]) -> None:
    assert load.failed() == 0, (load.statuses, load.errors[:3])
    assert load.answers, "the load got no answers"
    for a in load.answers:
        assert a["model"]["version"] in allowed, a["model"]
        assert isinstance(a["routing"]["version"], int) and a["routing"]["version"] >= 1
        assert a["routing"]["role"] in ("primary", "canary", "arm")


def test_a_good_version_reaches_100_percent_with_zero_failed_requests(stack, dsettings, deploy_rows):
    from pipelines.deploy.rollout import deploy
    from pipelines.lake.tables import Lake
    from pipelines.models.registry import resolve_version

    _, versions, _ = stack
    before = _routing(dsettings)
    load = _load(stack, deploy_rows[0])
    try:
        result = deploy(dsettings, "flights_eta", versions["good"], strategy="canary", overrides=FAST, by="test")
    finally:
        load.stop()
    assert result.status == "completed", (result.reason, result.steps)
    steps = [s["step"] for s in result.steps]
    assert steps[:3] == ["package", "load", "golden"] and "canary 20%" in steps and "canary 50%" in steps
    assert all(s["verdict"] == "pass" for s in result.steps), result.steps
    after = _routing(dsettings)
    assert after.primary.version == versions["good"] and len(after.routes) == 1
    assert after.version > before.version
    _check_answers(load, {before.primary.version, versions["good"]})
    seen = {a["model"]["version"] for a in load.answers}
    assert seen == {before.primary.version, versions["good"]}, seen  # both answered during the rollout
    for s in result.steps:
        if s["step"].startswith("canary"):
            assert s["requests"]["candidate"] >= FAST["canary.min_requests"]
    assert result.steps[2]["max_abs_diff"] <= 1e-6
    # The ledger: the lake table and the MLflow version.
    table = Lake(dsettings.lake_root).path("deployments__flights_eta")
    import pandas as pd

    ledger = pd.read_parquet(table)
    mine = ledger[ledger.rollout_id == result.rollout_id]
    assert list(mine.sort_values("seq").step) == steps and set(mine.status) == {"completed"}
    tags = resolve_version(dsettings, TEST_MODEL, version=versions["good"]).tags
    assert json.loads(tags[f"atelier.rollout.{result.rollout_id}"])["status"] == "completed"
    # The old version left Triton and its repository.
    assert not (dsettings.triton_model_repository / f"{TEST_MODEL}.v{before.primary.version}").exists()


def _judged_rollback(stack, dsettings, deploy_rows, kind, **kw):
    from pipelines.deploy.rollout import deploy

    _, versions, _ = stack
    before = _routing(dsettings)
    load = _load(stack, deploy_rows[0])
    try:
        result = deploy(dsettings, "flights_eta", versions[kind], strategy="canary", overrides=FAST, by="test", **kw)
        after = _routing(dsettings)
        time.sleep(0.5)
        tail_start = len(load.answers)
        time.sleep(1.0)
    finally:
        load.stop()
    assert result.status == "rolled_back", (result.status, result.reason)
    assert after.primary.version == before.primary.version and len(after.routes) == 1
    _check_answers(load, {before.primary.version, versions[kind]})
    assert {a["model"]["version"] for a in load.answers[tail_start:]} == {before.primary.version}
    canary_steps = [s for s in result.steps if s["step"].startswith("canary")]
    return result, canary_steps, versions[kind]


def test_a_version_biased_by_60_minutes_is_rolled_back_at_its_first_step(stack, dsettings, deploy_rows, webhook):
    from pipelines.lifecycle.registry import audit_trail
    from pipelines.models.registry import resolve_version

    result, canary_steps, version = _judged_rollback(stack, dsettings, deploy_rows, "bias60")
    assert len(canary_steps) == 1 and canary_steps[0]["step"] == "canary 20%"
    assert canary_steps[0]["verdict"] == "fail"
    failing = {(c["name"], c["segment"]) for c in canary_steps[0]["checks"] if c["verdict"] == "fail"}
    assert {("prediction_shift", "all"), ("online_mae", "all")} <= failing, failing
    first = result.reason.split(": ", 1)[1]
    assert first.split(" ", 1)[1].startswith("[all]"), result.reason  # the global findings come first
    trail = audit_trail(resolve_version(dsettings, TEST_MODEL, version=version).tags)
    assert trail[-1]["event"] == "deploy_rolled_back" and "prediction_shift" in trail[-1]["why"]
    alerts = [a for a in webhook[1] if a.get("version") == version]
    assert alerts and alerts[-1]["event"] == "rollout_rolled_back"
    assert not (dsettings.triton_model_repository / f"{TEST_MODEL}.v{version}").exists()


def test_a_version_wrong_only_for_ewr_is_caught_by_the_segment_judgment(stack, dsettings, deploy_rows):
    result, canary_steps, _ = _judged_rollback(stack, dsettings, deploy_rows, "ewr45")
    failing = [c for c in canary_steps[-1]["checks"] if c["verdict"] == "fail"]
    segments = {c["segment"] for c in failing}
    assert "origin=EWR" in segments, failing
    assert not segments & {"origin=JFK", "origin=LGA"}, failing
    assert "origin=EWR" in result.reason


def test_a_slow_version_is_rolled_back_on_latency(stack, dsettings, deploy_rows, env):
    """20 ms more per call, at the production Triton budget (25 ms): its calls run out of time, the API
    answers them with the fallback (no request fails), and the judge rolls it back at its first step."""
    from pipelines.deploy.triton import MODEL_SOURCE

    source = MODEL_SOURCE.read_text()
    assert SLOW_MODEL_PY_PATCH[0] in source
    slow = source.replace(*SLOW_MODEL_PY_PATCH)
    result, canary_steps, version = _judged_rollback(stack, dsettings, deploy_rows, "slow", model_source=slow)
    assert len(canary_steps) == 1
    checks = {c["name"]: c for c in canary_steps[0]["checks"] if c["segment"] == "all"}
    failing = {name for name, c in checks.items() if c["verdict"] == "fail"}
    assert failing & {"latency_p95", "latency_p99", "error_rate"}, checks
    assert checks["latency_p95"]["candidate"] > checks["latency_p95"]["primary"] + 10, checks["latency_p95"]
    # What the failed calls were: Triton calls that ran out of their budget (then the open circuit).
    logged = [json.loads(line) for path in Path(env["ATELIER__API__PREDICTION_LOG_DIR"]).rglob("*.jsonl")
              for line in path.read_text().splitlines()]
    kinds = {r["error"] for r in logged if r["model"]["version"] == version and r["error"]}
    assert kinds and kinds <= {"timeout", "circuit_open"}, kinds


def test_a_corrupt_artifact_and_a_feature_spec_mismatch_are_refused_before_any_traffic(stack, dsettings, tmp_path,
                                                                                       deploy_rows):
    from pipelines.deploy.package import package_version
    from pipelines.deploy.rollout import deploy

    _, versions, _ = stack
    before = _routing(dsettings)
    load = _load(stack, deploy_rows[0][:50])
    try:
        good = package_version(dsettings, TEST_MODEL, versions["good2"])
        corrupt = tmp_path / "corrupt.zip"
        flip_byte(good.path, corrupt, "model/model.json")
        refused = deploy(dsettings, "flights_eta", versions["good2"], strategy="canary", overrides=FAST, by="test",
                         artifact=corrupt)
        mismatch = deploy(dsettings, "flights_eta", versions["spec"], strategy="canary", overrides=FAST, by="test")
    finally:
        load.stop()
    assert refused.status == "refused" and refused.steps[-1]["step"] == "verify", refused
    assert "model/model.json" in refused.reason
    assert mismatch.status == "refused" and "another feature spec" in mismatch.reason, mismatch.reason
    assert _routing(dsettings).version == before.version  # no traffic moved
    _check_answers(load, {before.primary.version})
    assert not (dsettings.triton_model_repository / f"{TEST_MODEL}.v{versions['spec']}").exists()


def test_two_replicas_apply_a_routing_change_within_a_second_and_rollback_under_load(stack, dsettings, deploy_rows):
    from pipelines.deploy.package import package_version, place_and_load
    from pipelines.deploy.rollout import rollback
    from pipelines.deploy.routing import Route, RoutingStore
    from pipelines.usecases import get_usecase

    replicas, versions, _ = stack
    store = RoutingStore(dsettings.routing_path)
    table = store.read("flights_eta")
    primary = table.primary.version
    place_and_load(dsettings, get_usecase("flights_eta", dsettings.usecases_path),
                   package_version(dsettings, TEST_MODEL, versions["good2"]).path)
    load = _load(stack, deploy_rows[0])
    try:
        # Load the candidate into both replicas at weight 0 first (a new version's bundle is fetched once).
        warm = store.write(table.with_routes([Route(primary, "primary", 1.0), Route(versions["good2"], "canary", 0.0)]),
                           expected_version=table.version, by="test", reason="warm")

        def applied(version: int) -> bool:
            return all(httpx.get(f"{r.url}/readyz", timeout=2).json()["flights_eta"]["routing_version"] == version
                       for r in replicas)

        wait_until(lambda: applied(warm.version), 30, "both replicas on the warm-up routing")
        half = store.write(warm.with_routes([Route(primary, "primary", 0.5), Route(versions["good2"], "canary", 0.5)]),
                           expected_version=warm.version, by="test", reason="half")
        took = wait_until(lambda: applied(half.version), 5, "both replicas on the 50/50 routing")
        assert took < 1.0, f"the replicas took {took:.2f} s to apply a routing change"
        wait_until(lambda: sum(1 for a in load.answers[-200:] if a["model"]["version"] == versions["good2"]) > 50,
                   20, "the canary answering")
        final = rollback(dsettings, "flights_eta", reason="operator test", by="test")
        assert final.primary.version == primary and len(final.routes) == 1
        wait_until(lambda: applied(final.version), 5, "both replicas on the rollback")
        mark = len(load.answers)
        time.sleep(1.0)
    finally:
        load.stop()
    _check_answers(load, {primary, versions["good2"]})
    assert {a["model"]["version"] for a in load.answers[mark:]} == {primary}
    routing_versions = {a["routing"]["version"] for a in load.answers}
    assert {half.version, final.version} <= routing_versions


def test_a_shadow_scores_copies_after_the_answers_and_is_never_returned(stack, dsettings, deploy_rows, env):
    from pipelines.deploy.rollout import deploy

    _, versions, _ = stack
    primary = _routing(dsettings).primary.version
    load = _load(stack, deploy_rows[0])
    try:
        result = deploy(dsettings, "flights_eta", versions["good2"], strategy="shadow", by="test",
                        overrides={"shadow.duration_s": 6, "shadow.min_requests": 100})
    finally:
        load.stop()
    assert result.status == "shadow_done", result.reason
    shadow_step = next(s for s in result.steps if s["step"] == "shadow")
    assert shadow_step["n"] >= 100
    assert shadow_step["n_outcomes"] >= 100 and result.decision == "no significant difference", shadow_step
    _check_answers(load, {primary})  # a shadow never answers
    logged = [json.loads(line) for path in Path(env["ATELIER__API__PREDICTION_LOG_DIR"]).rglob("*.jsonl")
              for line in path.read_text().splitlines()]
    shadows = [r for r in logged if r["route"] == "shadow" and r["model"]["version"] == versions["good2"]]
    answered = {a["request_id"] for a in load.answers}
    assert len(shadows) >= 100 and {r["request_id"] for r in shadows} <= answered
    # The same trees: a shadow's answer equals the primary's, unless one of them ran out of its Triton budget
    # on a busy machine and the fallback answered.
    primaries = {r["request_id"]: r for r in logged if r["route"] == "primary"}
    for r in shadows:
        p = primaries[r["request_id"]]
        if "fallback" not in (p["model"]["runtime"], r["model"]["runtime"]):
            assert abs(p["prediction"]["arr_delay"] - r["prediction"]["arr_delay"]) < 1e-6, (p, r)
    assert _routing(dsettings).primary.version == primary and len(_routing(dsettings).routes) == 1


def test_ab_on_replayed_traffic_reports_srm_arm_maes_with_intervals_and_a_decision(stack, dsettings, env, spark,
                                                                                  tmp_path_factory, usecase):
    from datetime import date

    from pipelines.deploy.rollout import deploy
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.replay import prepare_store, replay
    from pipelines.stores.online import get_online_store

    _, versions, _ = stack
    primary = _routing(dsettings).primary.version
    # Its own API and store: a replay writes the features of its day as they became known.
    db = tmp_path_factory.mktemp("ab-online") / "features.db"
    ab_env = {**env, "ATELIER__ONLINE_STORE__SQLITE_PATH": str(db), "ATELIER__API__ALLOW_AS_OF_HEADER": "true"}
    ab_settings = load_settings("test", environ={**os.environ, **ab_env})
    with get_online_store(ab_settings) as online:
        prepare_store(online, load_feature_set(usecase), clear=True)
    server = ApiServer(ab_env, log_dir=Path(env["ATELIER__API__PREDICTION_LOG_DIR"])).start()
    finished = threading.Event()
    results = {}

    def run_ab() -> None:
        results["ab"] = deploy(ab_settings, "flights_eta", versions["bias60"], strategy="ab", by="test",
                               overrides={"ab.duration_s": 900}, done=finished.is_set)

    worker = threading.Thread(target=run_ab, daemon=True)
    try:
        worker.start()
        wait_until(lambda: _routing(dsettings).strategy == "ab", 120, "the A/B routing", every_s=0.2)
        time.sleep(1.0)
        played = replay(ab_settings, spark, "flights_eta", date(2013, 12, 29), date(2013, 12, 30), api_url=server.url,
                        token=server.token)
        finished.set()
        worker.join(300)
    finally:
        finished.set()
        server.stop()
    assert played.failed == 0 and played.answered > 500
    result = results["ab"]
    assert result.status == "ab_done", (result.status, result.reason)
    report = json.loads(Path(result.report).with_suffix(".json").read_text())
    assert report["srm"]["verdict"] == "pass", report["srm"]
    assert report["n_control"] > 100 and report["n_treatment"] > 100
    assert report["mae_treatment"] > report["mae_control"] + 20  # B is biased by 60 minutes
    low, high = report["ci"]
    assert low <= report["difference"] <= high and low > 0
    assert result.decision == "control wins"
    assert "<svg" in Path(result.report).read_text()
    assert _routing(dsettings).primary.version == primary and len(_routing(dsettings).routes) == 1


def test_model_deploy_through_airflow(airflow_service, settings, serving_model):
    """From the trigger form: the profile's own routing table ends with the version serving all traffic
    (a first deployment is direct; a re-run finds it serving: unchanged)."""
    from pipelines.cli import _airflow_client
    from pipelines.deploy.routing import RoutingStore

    ref, _ = serving_model
    client = _airflow_client(settings)
    client.wait_for_dag("model_deploy")
    run_id = client.trigger("model_deploy", {"usecase": "flights_eta", "version": ref.version, "strategy": "direct"})
    result = client.wait_for_run("model_deploy", run_id, timeout_s=600)
    assert result.state == "success", result.failed_tasks
    table = RoutingStore(settings.routing_path).read("flights_eta")
    assert table is not None and table.primary.version == ref.version and len(table.routes) == 1
    from pipelines.deploy.rollout import history

    [record] = [r for r in history(settings, "flights_eta", limit=50) if r["rollout_id"] == run_id]
    assert record["status"] in ("completed", "unchanged") and record["candidate"] == ref.version
    if record["status"] == "completed":
        assert [s["step"] for s in record["steps"]] == ["package", "load", "golden", "promote"]
