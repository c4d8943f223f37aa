"""`atelier`: the platform's command line.

    atelier [--profile P] bootstrap [SERVICE...]      install what the local services need
    atelier [--profile P] services up|down|status [SERVICE...]
    atelier [--profile P] lake ingest --usecase U     stage, validate, publish in one process (no Airflow)
    atelier [--profile P] lake show [--usecase U]     published tables, versions, row counts
    atelier [--profile P] dags trigger DAG_ID [--conf JSON]   through Airflow's REST API, waiting for the end
    atelier [--profile P] airflow ARGS...             the airflow CLI, with Atelier's Airflow environment
    atelier [--profile P] config                      the effective settings
    atelier [--profile P] serve [--host H] [--port N] the prediction API (uvicorn; OpenAPI at /docs)
    atelier [--profile P] models list [--usecase U]   registered versions: stage, aliases, holdout metrics
    atelier [--profile P] models history MODEL VERSION       the version's audited lifecycle moves
    atelier [--profile P] models move MODEL VERSION STAGE --why TEXT   a manual (audited) lifecycle move
    atelier [--profile P] models retrain [--usecase U] [--why TEXT] [--params JSON]   a retrain request (Asset)
    atelier [--profile P] replay --usecase U --from D --to D [--rate N] [--label-delay 2h]   real traffic -> API
    atelier [--profile P] monitor metrics [--usecase U] [--from D] [--to D] [--segment S]   online metrics
    atelier [--profile P] monitor findings [--usecase U] [--column C] [--segment S[=V]] [--severity L] [--day D]
    atelier [--profile P] monitor incidents [--usecase U]   drift incidents (one retraining each)
    atelier [--profile P] deploy start --version N [--strategy canary|shadow|ab|direct] [--set K=V]   a rollout
    atelier [--profile P] deploy status|history|rollback [--usecase U] [--reason TEXT]   routing and rollouts
    atelier [--profile P] deploy drill [--bias 60]   a biased copy of the serving version as a canary (rolled back)
    atelier [--profile P] demo                        the main job on embedded defaults
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, Settings, load_settings
from pipelines.jobs.common import run_id_arg
from pipelines.orchestration import AirflowApiError
from pipelines.services import ServiceError, Supervisor, managed_services
from pipelines.usecases import SpecError, get_usecase, list_usecases


class CliError(RuntimeError):
    pass


def _services(settings: Settings, names: list[str]):
    services = managed_services(settings, names or None)
    if not services:
        print(f"profile '{settings.profile}' manages no local services (all are external).")
    return services


def cmd_bootstrap(settings: Settings, args: argparse.Namespace) -> None:
    for service in _services(settings, args.names):
        started = time.monotonic()
        service.ensure_installed(settings)
        print(f"  {service.name:<10} installed ({time.monotonic() - started:.1f} s)")
    if args.browser:
        from pipelines.services.browser import ensure_browser

        started = time.monotonic()
        print(f"  {'browser':<10} {ensure_browser()} ({time.monotonic() - started:.1f} s)")


def cmd_services(settings: Settings, args: argparse.Namespace) -> None:
    supervisor = Supervisor(settings.run_dir)
    services = _services(settings, args.names)
    if args.action == "down":
        services = list(reversed(services))
    for service in services:
        if args.action == "up":
            service.ensure_installed(settings)
            started = time.monotonic()
            status = supervisor.up(service.build_spec(settings))
            print(f"  {status.name:<10} {status.state:<9} pid {status.pid}  {status.detail} "
                  f"({time.monotonic() - started:.1f} s)")
        elif args.action == "down":
            stopped = supervisor.down(service.build_spec(settings))
            print(f"  {service.name:<10} {'stopped' if stopped else 'was not running'}")
        else:
            status = supervisor.status(service.build_spec(settings))
            print(f"  {status.name:<10} {status.state:<9} {('pid ' + str(status.pid)) if status.pid else ''}  "
                  f"{status.detail}")
    if args.action != "status":
        print(f"  logs and pid files: {settings.run_dir}")


def cmd_lake(settings: Settings, args: argparse.Namespace) -> None:
    from pipelines.lake import ingest

    usecase = get_usecase(args.usecase or _default_usecase(settings), settings.usecases_path)
    if args.action == "ingest":
        from pipelines.jobs.lake_ingest import expected_failures
        from pipelines.jobs.lake_ingest import main as ingest_main

        run_id = args.run_id or f"cli__{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            ingest_main(["all", "--usecase", usecase.name, "--run-id", run_id, "--profile", settings.profile,
                         *[f"--source={s}" for s in args.source]])
        except expected_failures() as exc:
            raise CliError(f"lake ingest failed, nothing was published:\n{exc}") from None
    _print_lake(settings, ingest.summary(settings, usecase))


def _print_lake(settings: Settings, infos) -> None:
    if not infos:
        print(f"  the lake at {settings.lake_root} has no published tables yet")
        return
    print(f"  lake: {settings.lake_root}")
    for info in infos:
        parts = f"partitioned by {', '.join(info.partition_by)}" if info.partition_by else "unpartitioned"
        print(f"  {info.name:<10} {info.rows:>9,} rows  {parts:<30} version {info.version}")


def _default_usecase(settings: Settings) -> str:
    names = list_usecases(settings.usecases_path)
    if not names:
        raise CliError(f"no use cases under {settings.usecases_path}")
    return names[0]


def _airflow_client(settings: Settings):
    from pipelines.orchestration import AirflowClient
    from pipelines.services.airflow import ADMIN_USER, admin_password

    password = os.environ.get("ATELIER_AIRFLOW_PASSWORD") or admin_password(settings)
    if not password:
        raise CliError("no Airflow password: start Airflow with `atelier services up airflow` "
                       "(it generates one) or set ATELIER_AIRFLOW_PASSWORD")
    cfg = settings.airflow
    return AirflowClient(f"http://{cfg.host}:{cfg.port}", os.environ.get("ATELIER_AIRFLOW_USER", ADMIN_USER), password)


def trigger_and_wait(settings: Settings, dag_id: str, conf: dict, timeout_s: float = 900.0) -> str:
    client = _airflow_client(settings)
    client.wait_for_dag(dag_id)
    run_id = client.trigger(dag_id, conf)
    client.set_paused(dag_id, False)
    print(f"  triggered {dag_id} run {run_id}; waiting (follow it in the UI at "
          f"http://{settings.airflow.host}:{settings.airflow.port}/dags/{dag_id})")
    result = client.wait_for_run(dag_id, run_id, timeout_s=timeout_s)
    if result.state != "success":
        logs = settings.home_path / "airflow" / "logs"
        raise CliError(f"{dag_id} run {run_id} {result.state} (failed tasks: {', '.join(result.failed_tasks)}); "
                       f"task logs under {logs} and in the UI")
    print(f"  {dag_id} run {run_id} succeeded in {result.seconds:.0f} s")
    return run_id


def cmd_dags(settings: Settings, args: argparse.Namespace) -> None:
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        raise CliError(f"--conf is not valid JSON: {exc}") from None
    trigger_and_wait(settings, args.dag_id, conf)


def cmd_airflow(settings: Settings, args: argparse.Namespace) -> None:
    from pipelines.services.airflow import airflow_env

    env = {**os.environ, **airflow_env(settings)}
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    os.execve(airflow, [airflow, *args.airflow_args], env)


def cmd_config(settings: Settings, args: argparse.Namespace) -> None:
    print(json.dumps(settings.model_dump(mode="json"), indent=2))


DEMO_DAYS = 7


def demo_window(settings: Settings, usecase) -> tuple[str, str]:
    """The week the demo materializes, scores, replays and monitors: the last ``DEMO_DAYS`` days of the label's
    source table in the lake (its date partitions), ending at the profile's clock (``api.as_of``) when that is
    earlier; ISO dates, end exclusive. For the flights use case: 2013-12-24 .. 2013-12-31."""
    from datetime import timedelta

    from pipelines.featurestore.spec import load_feature_set
    from pipelines.lake.tables import Lake

    label = load_feature_set(usecase).label
    if label is None:
        raise CliError(f"use case '{usecase.name}' has no label (features.yaml `label`): the demo needs one")
    table = usecase.tables[label.source]
    partition = table.partition_by[0] if table.partition_by else None
    if partition is None or table.output_schema.get(partition) != "date":
        raise CliError(f"the demo's window comes from the date partitions of the label's source table "
                       f"'{label.source}': give it `partition_by: [<a date column>]` in sources.yaml")
    days = Lake.from_settings(settings).partition_dates(label.source, partition)
    if not days:
        raise CliError(f"lake table '{label.source}' has no {partition} partition: run the lake ingest first")
    end = max(days) + timedelta(days=1)
    if settings.api.as_of is not None:
        end = min(end, settings.api.as_of.date())
    return (end - timedelta(days=DEMO_DAYS)).isoformat(), end.isoformat()


def demo_clock(settings: Settings, window: tuple[str, str]):  # noqa: ANN201 - datetime
    """The clock the demo's online steps run on: its window's end (midnight UTC); for the flights use case
    that is ``api.as_of``, another use case's data may end years away from it (sent as X-Atelier-As-Of)."""
    from datetime import UTC, datetime

    end = datetime.fromisoformat(window[1]).replace(tzinfo=UTC)
    if settings.api.as_of is not None and end.date() == settings.api.as_of.date():
        return settings.api.as_of
    return end


def _is_classifier(usecase) -> bool:
    from pipelines.training.spec import load_model_spec

    try:
        return load_model_spec(usecase).task != "regression"
    except Exception:  # noqa: BLE001 - no model.yaml: the training step has said so
        return False


def _print_online_sample(settings: Settings, usecase, window: tuple[str, str]) -> None:
    from pipelines.featurestore.materialize import online_view_name
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.jobs.common import parse_time
    from pipelines.stores.online import get_online_store

    features = load_feature_set(usecase)
    now = parse_time(window[1])
    with get_online_store(settings) as store:
        for view in features.batch_views:
            name = online_view_name(usecase.name, view.name)
            rows = store.read(name, _recent_keys(settings, view, now), now=now)
            found = [r for r in rows if r.found]
            if not found:
                print(f"  {view.name:<17} no rows online")
                continue
            r = found[0]
            shown = ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.values.items())
            print(f"  {view.name:<17} {len(found)} sampled keys online; {r.key}: {shown} "
                  f"(age {r.age_seconds / 3600:.1f} h)")
    reports = sorted((settings.home_path / "reports" / usecase.name / "skew").glob("*.txt"),
                     key=lambda p: p.stat().st_mtime)
    if reports:
        print(f"  skew report: {reports[-1]} ({reports[-1].read_text().splitlines()[0]})")


def _recent_keys(settings: Settings, view, now, limit: int = 5) -> list[tuple]:
    """A few entity keys with the latest source events up to `now` (read from the lake)."""
    import pandas as pd

    from pipelines.lake.tables import Lake

    frame = pd.read_parquet(Lake.from_settings(settings).path(view.source), columns=[*view.keys, view.event_time])
    frame = frame.assign(_t=pd.to_datetime(frame[view.event_time], utc=True)).dropna()
    recent = frame[frame._t <= now].sort_values("_t", ascending=False, kind="stable")
    return [tuple(k) for k in recent[list(view.keys)].drop_duplicates().head(limit).itertuples(index=False)]


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    started = time.monotonic()
    demo_started = datetime.now(UTC).isoformat()
    usecase = get_usecase(args.usecase or _default_usecase(settings), settings.usecases_path)
    print(f"Atelier demo: profile '{settings.profile}', use case '{usecase.name}'")
    print("1. services")
    cmd_services(settings, argparse.Namespace(action="up", names=[]))
    print("2. lake ingest through Airflow (stage -> validate with Great Expectations -> publish)")
    trigger_and_wait(settings, "lake_ingest", {"usecase": usecase.name})
    print("3. the lake")
    from pipelines.lake import ingest

    _print_lake(settings, ingest.summary(settings, usecase))
    reports = sorted((settings.home_path / "reports" / usecase.name / "lake_ingest").glob("*/validation.txt"),
                     key=lambda p: p.stat().st_mtime)
    if reports:
        print(f"  validation report: {reports[-1]}")
    window = demo_window(settings, usecase)
    print(f"4. features: materialize the data's last week ({window[0]} .. {window[1]}) into the online store, "
          "then the skew check")
    trigger_and_wait(settings, "features_materialize", {"usecase": usecase.name, "start": window[0], "end": window[1]})
    _print_online_sample(settings, usecase, window)
    print("5. training: PIT training set -> Great Expectations -> XGBoost -> holdout vs baselines -> MLflow -> "
          "promotion rules")
    trigger_and_wait(settings, "model_train", {"usecase": usecase.name})
    _print_training(settings, usecase)
    _require_champion(settings, usecase)
    print("6. batch predictions: the champion scores the week's entities on Spark, back into the lake")
    trigger_and_wait(settings, "batch_predict", {"usecase": usecase.name, "start": window[0], "end": window[1]})
    _print_batch(settings, usecase)
    print("7. deployment: model_deploy through Airflow (package -> verify -> load beside -> golden check -> "
          "rollout: direct for a first deployment, else a canary judged on live traffic) while the API answers")
    _demo_deploy(settings, usecase, demo_started, window)
    print("8. online predictions: the prediction API (online features, Triton, uncertainty) for real requests")
    from serving.demo import run_demo_requests

    print(run_demo_requests(settings, usecase, clock=demo_clock(settings, window)))
    print("9. the feedback loop: the week replayed through the API on its simulated clock (features written as "
          "they became known, outcomes as they arrive), then monitoring_feedback through Airflow")
    if "feedback" not in usecase.extra:
        print(f"  skipped: use case '{usecase.name}' has no feedback.yaml (no outcome delays to replay, no feedback "
              "loop)")
    elif _is_classifier(usecase):
        print("  skipped: the feedback loop's metrics are regression metrics today (classification: planned)")
    else:
        _demo_feedback(settings, usecase, window)
    print("10. drift monitoring: monitoring_drift through Airflow over the replayed week (indicators per column x "
          "segment x statistic, thresholds learned from each one's history, Evidently report, alerts, retraining)")
    if not (usecase.extra.get("monitoring") or {}).get("monitoring"):
        print(f"  skipped: use case '{usecase.name}' has no monitoring.yaml")
    elif "feedback" not in usecase.extra or _is_classifier(usecase):
        print("  skipped: drift monitoring reads the replayed week's served predictions (step 9 did not run)")
    else:
        _demo_drift(settings, usecase, window)
    print("11. the Atelier console in Airflow's UI (Browse > Atelier): each page through the API server, signed in")
    _demo_console(settings, usecase)
    print("12. where things are")
    supervisor = Supervisor(settings.run_dir)
    for service in managed_services(settings):
        status = supervisor.status(service.build_spec(settings))
        print(f"  {status.name:<10} {status.state:<9} {status.detail}")
    print(f"done in {time.monotonic() - started:.0f} s. Services keep running; stop them with `make down`.")


def _demo_console(settings: Settings, usecase) -> None:
    import urllib.request

    from pipelines.console import data

    base = f"http://{settings.airflow.host}:{settings.airflow.port}"
    token = _airflow_client(settings)._token
    for section in ("models", "online", "rollouts", "freshness", "drift", "actions", "audit"):
        url = f"{base}/atelier/usecases/{usecase.name}/{section}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as page:  # noqa: S310 - the local API server
            body = page.read().decode(errors="replace")
        if 'id="main"' not in body or "Not available: could not be read" in body:
            raise CliError(f"the console page {url} did not render (answered {page.url}): is the plugin loaded? "
                           f"see {settings.run_dir / 'airflow.log'}")
        print(f"  {page.status} {url} ({len(body):,} bytes, {time.monotonic() - started:.1f} s)")
    models = data.model_versions(settings, usecase.name)
    print("  models: " + ", ".join(f"v{v['version']} {v['stage']}{' (' + ','.join(v['aliases']) + ')' if v['aliases'] else ''}"
                                   for v in models["versions"]))
    fresh = data.freshness(settings, usecase.name)
    print("  freshness at " + f"{fresh['clock']:%Y-%m-%d %H:%M}: " + ", ".join(
        f"{v['view']} {v['status']}" + (f" ({v['age_s'] / 3600:.1f} h)" if v["age_s"] is not None else "")
        for v in fresh["views"]))
    heat = data.drift_heatmap(settings, usecase.name)
    print(f"  drift heat map: {len(heat['columns'])} columns x {len(heat['days'])} days with findings; "
          f"{len(heat['incidents'])} incident(s)")


def _demo_drift(settings: Settings, usecase, window: tuple[str, str]) -> None:
    from pipelines.monitoring.alerts import run_result

    # A new version's first run also profiles its training reference (minutes on 2 cores; then cached).
    run_id = trigger_and_wait(settings, "monitoring_drift", {"usecase": usecase.name,
                                                             "start": window[0], "end": window[1]},
                               timeout_s=2400)
    r = run_result(settings, usecase.name, run_id)
    per_day = r["indicators"]
    print(f"  {sum(per_day.values()):,} indicators over {len(per_day)} days ({min(per_day.values()):,}.."
          f"{max(per_day.values()):,} a day), rows scanned: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(r["rows_scanned"].items())))
    totals: dict[str, int] = {}
    for day in r["findings"].values():
        for severity, n in day.items():
            totals[severity] = totals.get(severity, 0) + n
    print("  findings: " + (", ".join(f"{s} {totals[s]:,}" for s in ("high", "medium", "low") if s in totals)
                            or "none") + " (atelier monitor findings --usecase " + usecase.name + ")")
    for f in r["top_findings"][:6]:
        print(f"    {f['day']} {f['severity']:<6} {f['message']}")
    for inc in r["incidents"]:
        print(f"  incident {inc['incident_id']} ({inc['findings']} finding(s)): {inc['reason']}")
    for req in r["retrain"]:
        print(f"  retrain.{usecase.name} emitted for {req['incident_id']}: window {req['params']['start']}.."
              f"{req['params']['end']} (model_train runs on it)")
    if not r["incidents"]:
        print("  no incident: the served week looks like what the champion was trained on; no retraining")
    for day, link in sorted(r["reports"].items()):
        print(f"  Evidently report {day}: {link}")


# Short bakes so the demo's canary takes about a minute (deployment.yaml's are minutes per step).
DEMO_DEPLOY_OVERRIDES = {"canary.steps": [20, 50, 100], "canary.bake_s": 15, "canary.min_requests": 60,
                         "canary.max_bake_s": 90, "canary.check_every_s": 5, "analysis.min_requests": 50}


@contextlib.contextmanager
def _api_running(settings: Settings, usecase: str) -> Iterator[None]:
    """The prediction API serving ``usecase`` up for the block (``serving.demo.demo_api``)."""
    from serving.demo import demo_api

    try:
        with demo_api(settings, usecase):
            yield
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def _demo_deploy(settings: Settings, usecase, since: str, window: tuple[str, str]) -> None:
    """``since``: when the demo started (ISO, UTC): its rollouts are printed."""
    import threading
    from collections import Counter

    import httpx

    from pipelines.deploy.rollout import history
    from serving.demo import real_requests, served_usecases

    headers = {"Authorization": f"Bearer {os.environ.get('ATELIER_API_TOKEN', '')}"} if settings.api.auth_required else {}
    clock = demo_clock(settings, window)
    if clock != settings.api.as_of:
        headers["X-Atelier-As-Of"] = clock.isoformat().replace("+00:00", "Z")
    extra = {} if served_usecases(settings, usecase.name)[0] == usecase.name else {"usecase": usecase.name}
    rows = [{**e["request"], **extra} for e in real_requests(settings, usecase, 200, clock)]
    if not rows:
        raise CliError(f"no real {usecase.name} events with a known outcome in the day before {clock.isoformat()}: "
                       "no traffic for the rollout")
    statuses: Counter = Counter()
    versions: Counter = Counter()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=_api_base(settings), headers=headers, timeout=10) as client:
            i = 0
            while not stop.is_set():
                try:
                    r = client.post("/v1/predict", json=rows[i % len(rows)], headers={"X-Request-Id": f"demo-deploy-{i}"})
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        a = r.json()
                        versions[(a["model"]["version"], a["model"]["runtime"], a["routing"]["version"])] += 1
                except httpx.HTTPError:
                    statuses["transport error"] += 1
                i += 1
                time.sleep(0.01)

    drill = None
    with _api_running(settings, usecase.name):
        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        try:
            if _is_classifier(usecase):
                print("  a classifier's champion is deployed directly by model_deploy when it reaches production "
                      "(canary, shadow and A/B analysis for classifiers: planned); its rollouts:")
            else:
                trigger_and_wait(settings, "model_deploy", {"usecase": usecase.name,
                                                            "overrides": DEMO_DEPLOY_OVERRIDES})
            # The champion's rollouts: the one its models.production event started (a first deployment is
            # direct), then this trigger's.
            for record in reversed(history(settings, usecase.name, limit=5)):
                if record["started_at"] >= since:
                    _print_rollout(record)
            if _is_classifier(usecase):
                print("  drill: skipped (the drill's biased copy shifts a regressor's predictions; for a "
                      "classifier: planned)")
            else:
                print("  drill: a copy of the serving version with every prediction 60 minutes late, as a canary "
                      "under the same traffic:")
                drill = _drill(settings, usecase.name, 60.0, DEMO_DEPLOY_OVERRIDES)
        finally:
            stop.set()
            worker.join(30)
    if drill is not None:
        _print_rollout(drill.to_dict())
    failed = sum(n for k, n in statuses.items() if k != 200)
    print(f"  {sum(statuses.values()):,} requests during the deployments, {failed} failed; answered by (version, "
          "runtime, routing version): " + ", ".join(f"{k}: {n}" for k, n in sorted(versions.items())))


def _drill(settings: Settings, usecase: str, bias: float, overrides: dict[str, Any] | None = None):  # noqa: ANN202
    """A biased copy of the serving version, registered and deployed as a canary (it should be rolled back)."""
    from pipelines.deploy.drills import register_biased_copy
    from pipelines.deploy.rollout import deploy, model_name, status

    table = status(settings, usecase)["routing"]
    if table is None:
        raise CliError(f"{usecase} has no routing table: deploy a version first (atelier deploy start)")
    primary = next(r["version"] for r in table["routes"] if r["role"] == "primary")
    version = register_biased_copy(settings, model_name(settings, usecase), primary, bias,
                                   by=f"cli:{os.environ.get('USER', 'user')}")
    return deploy(settings, usecase, version, strategy="canary", overrides=overrides, by="drill")


def _demo_feedback(settings: Settings, usecase, window: tuple[str, str]) -> None:
    from datetime import date

    from pipelines.monitoring.replay import replay
    from pipelines.monitoring.report import metrics_frame, metrics_text
    from pipelines.spark import get_spark
    from serving.demo import wait_until_ready

    first, end = (date.fromisoformat(d) for d in window)
    with _api_running(settings, usecase.name):
        if wait_until_ready(_api_base(settings)).status_code != 200:
            raise CliError("the prediction API is not ready: see .atelier/run/api.log")
        spark = get_spark(settings, "atelier-demo-replay")
        try:
            result = replay(settings, spark, usecase.name, first, end, api_url=_api_base(settings),
                            token=os.environ.get("ATELIER_API_TOKEN") or None, progress=_print_replay_day)
        finally:
            spark.stop()
    loop_s = sum(d.wall_s for d in result.days)
    print(f"  replayed {result.requests:,} requests in {result.wall_s:.0f} s, {loop_s:.0f} s of them sending "
          f"requests and writing features ({result.requests / max(loop_s, 1e-9):.0f} requests/s), the rest "
          f"Spark computing the features: {result.answered:,} answered, {result.failed:,} failed")
    trigger_and_wait(settings, "monitoring_feedback", {"usecase": usecase.name, "start": window[0], "end": window[1]})
    frame = metrics_frame(settings, usecase.name, start=window[0])
    print("  online metrics per day (atelier monitor metrics; the last day's late labels are still pending):")
    print("\n".join("    " + line for line in metrics_text(frame).splitlines()))
    last = sorted(frame.prediction_day.unique())[-2]
    print(f"  per origin on {last}:")
    print("\n".join("    " + line for line in metrics_text(frame[frame.prediction_day == last],
                                                           segment="origin").splitlines()))
    skew = sorted((settings.home_path / "reports" / usecase.name / "served_skew").glob("*.txt"),
                  key=lambda p: p.stat().st_mtime)
    if skew:
        print(f"  served-feature skew: {skew[-1].read_text().splitlines()[0][:160]}")
    from pipelines.monitoring.recalibration import calibration_dir, load_current

    for version in sorted(frame.model_version.astype(str).unique()):
        name = str(frame[frame.model_version.astype(str) == version].model_name.iloc[0])
        current = load_current(calibration_dir(settings, usecase.name, name, version))
        if current is not None:
            print(f"  intervals of {name} v{version} recalibrated from the outcomes: {current[0]} (the API serves it "
                  "and names it in every answer)")


def cmd_models(settings: Settings, args: argparse.Namespace) -> None:
    from pipelines.lifecycle.registry import audit_trail, transition
    from pipelines.lifecycle.rules import RuleError
    from pipelines.models.registry import RegistryUnavailable, client, resolve_version

    try:
        if args.action == "list":
            name = args.model or args.usecase or _default_usecase(settings)
            c = client(settings)
            versions = sorted(c.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
            if not versions:
                print(f"no registered versions of '{name}' (train it: DAG model_train)")
            for mv in versions:
                mv = c.get_model_version(name, mv.version)  # search results carry no aliases
                metrics = c.get_run(mv.run_id).data.metrics
                tags = dict(mv.tags or {})
                gate = json.loads(tags.get("atelier.gate", "{}"))
                verdict = ("" if not gate else f"  gate {gate['rule']}: "
                           + ("passed" if gate["passed"] else "failed: " + "; ".join(gate["failing"])))
                main = (f"auc {metrics.get('auc', float('nan')):.3f}  log_loss "
                        f"{metrics.get('log_loss', float('nan')):.3f}" if "log_loss" in metrics
                        else f"mae {metrics.get('mae', float('nan')):6.2f}")
                print(f"{name} v{mv.version:<4} {tags.get('atelier.stage', '?'):<11} "
                      f"{','.join(mv.aliases or []) or '-':<11} {main}  "
                      f"coverage_90 {metrics.get('coverage_90', float('nan')):.3f}{verdict}")
        elif args.action == "retrain":
            from plugins.assets import retrain_request

            usecase = args.usecase or _default_usecase(settings)
            params = json.loads(args.params) if args.params else {}
            event = _airflow_client(settings).emit_asset_event(
                retrain_request(usecase).name, {"reason": args.why or "requested from the CLI", "params": params})
            print(f"retrain request for {usecase} recorded (asset event {event.get('id')}); model_train runs on it")
        elif args.action == "history":
            ref = resolve_version(settings, args.model, version=args.version)
            for entry in audit_trail(ref.tags):
                print(f"{entry['at']}  {entry['from'] or '-':>11} -> {entry['to']:<11} by {entry['by']}: {entry['why']}")
        else:
            if not args.why:
                raise CliError("models move needs --why (it is kept in the audit trail)")
            by = f"cli:{os.environ.get('USER') or 'unknown'}"
            entry = transition(settings, args.model, args.version, args.stage, by=by, why=args.why)
            print(f"{args.model} v{args.version}: {entry['from']} -> {entry['to']} (by {by})")
    except (RuleError, RegistryUnavailable, LookupError, json.JSONDecodeError) as exc:
        raise CliError(str(exc)) from None


def training_summary(metrics: dict[str, float]) -> str:
    """One line of a training run's holdout figures, from whatever it logged: the objective's main metric
    against each baseline, then the coverage of each level's intervals (regression) or prediction sets
    (classification)."""
    classifier = "log_loss" in metrics
    main = ["auc", "log_loss"] if classifier else ["mae"]
    baselines = sorted({k.removeprefix("baseline_").rsplit(f"_{main[-1]}", 1)[0] for k in metrics
                        if k.startswith("baseline_") and k.endswith(f"_{main[-1]}")})
    head = ", ".join(f"{m} {metrics[m]:.3f}" for m in main if m in metrics)
    against = "; ".join(f"{b} " + ", ".join(f"{m} {metrics[f'baseline_{b}_{m}']:.3f}" for m in main
                                            if f"baseline_{b}_{m}" in metrics) for b in baselines)
    levels = sorted(int(k.removeprefix("coverage_")) for k in metrics
                    if k.startswith("coverage_") and k.removeprefix("coverage_").isdigit())
    width = "set_size" if classifier else "interval_width"
    cover = ", ".join(f"{pct}% -> {metrics[f'coverage_{pct}']:.3f}"
                      + (f" (mean {width.replace('_', ' ')} {metrics[f'{width}_{pct}']:.2f})"
                         if f"{width}_{pct}" in metrics else "") for pct in levels)
    kind = "prediction-set" if classifier else "interval"
    return (f"holdout {head}" + (f" (baselines: {against})" if against else "")
            + (f"; {kind} coverage {cover}" if cover else ""))


def _print_training(settings: Settings, usecase) -> None:
    from pipelines.models.registry import client
    from pipelines.training.pipeline import experiment_name

    c = client(settings)
    experiment = c.get_experiment_by_name(experiment_name(usecase.name))
    runs = c.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    if not runs:
        print("  no finished training run")
        return
    print(f"  {training_summary(runs[0].data.metrics)}")
    cmd_models(settings, argparse.Namespace(action="list", model=None, usecase=usecase.name))
    report = settings.home_path / "reports" / usecase.name / "training"
    latest = sorted(report.glob("*/report.html"), key=lambda p: p.stat().st_mtime)
    if latest:
        print(f"  training report: {latest[-1]}")
    print(f"  in MLflow: {settings.mlflow.tracking_uri}/#/experiments/{experiment.experiment_id}/runs/"
          f"{runs[0].info.run_id} (artifacts: atelier/report/report.html)")


def _require_champion(settings: Settings, usecase) -> None:
    """The steps after training score and serve the champion: stop with the reason when there is none."""
    from pipelines.models.registry import ModelNotFound, resolve_version

    try:
        resolve_version(settings, usecase.name, alias="champion")
    except ModelNotFound:
        raise CliError(f"no champion of '{usecase.name}': no version has passed the promotion rules "
                       f"({usecase.path / 'rules.yaml'}; the gate's verdicts are listed above), and batch "
                       "scoring, deployment and the online API need one") from None


def _print_batch(settings: Settings, usecase) -> None:
    from pipelines.lake.tables import Lake

    lake = Lake.from_settings(settings)
    name = f"predictions__{usecase.name}"
    info = lake.info(name)
    days = lake.partitions(name, info.partition_by[0]) if info.partition_by else {}
    shown = ", ".join(f"{d} {n:,}" for d, n in sorted(days.items())[-7:])
    print(f"  {name}: {info.rows:,} rows, version {info.version}; rows per day: {shown}")
    print(f"  at {info.path}")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from serving.server import serve

    try:
        serve(settings, args.host, args.port)
    except RuntimeError as exc:  # e.g. auth required and no ATELIER_API_TOKEN
        raise CliError(str(exc)) from None


def _api_base(settings: Settings) -> str:
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host  # noqa: S104
    return f"http://{host}:{settings.api.port}"


def _day(text: str, what: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(f"{what}: '{text}' is not an ISO date such as 2013-12-24") from None


def cmd_replay(settings: Settings, args: argparse.Namespace) -> None:
    from datetime import timedelta

    from pipelines.featurestore.spec import parse_duration
    from pipelines.monitoring.replay import ReplayError, replay
    from pipelines.spark import get_spark

    usecase = args.usecase or _default_usecase(settings)
    start, last = _day(args.from_, "--from"), _day(args.to, "--to")
    if last < start:
        raise CliError(f"--to {last} is before --from {start}")
    try:
        delay = parse_duration(args.label_delay) if args.label_delay else None
    except ValueError as exc:
        raise CliError(f"--label-delay: {exc}") from None
    if args.rate is not None and args.rate <= 0:
        raise CliError("--rate must be a positive number of requests per second")
    token = os.environ.get("ATELIER_API_TOKEN") or None
    spark = get_spark(settings, f"atelier-replay-{usecase}")
    try:
        result = replay(settings, spark, usecase, start, last + timedelta(days=1), api_url=args.api or _api_base(settings),
                        token=token, rate=args.rate, label_delay=delay, concurrency=args.concurrency,
                        reset=not args.no_reset, drain=not args.no_drain, progress=_print_replay_day)
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    finally:
        spark.stop()
    print(f"replayed {result.requests:,} requests over {len(result.days)} day(s) in {result.wall_s:.0f} s "
          f"({result.requests / max(result.wall_s, 1e-9):.0f}/s): {result.answered:,} answered, {result.failed:,} failed; "
          f"outcomes in {result.outcome_log} ({result.outcomes_pending} still pending)")


def _print_replay_day(day) -> None:
    print(f"  {day.day}: {day.requests:>5,} requests ({day.answered:,} answered, {day.failed:,} failed), "
          f"{day.feature_rows:>5,} feature rows written, {day.outcomes_released:>5,} outcomes released, "
          f"{day.wall_s:.1f} s", flush=True)


def cmd_monitor(settings: Settings, args: argparse.Namespace) -> None:
    from pipelines.lake.tables import TableNotFound
    from pipelines.monitoring.report import metrics_frame, metrics_text

    usecase = args.usecase or _default_usecase(settings)
    try:
        if args.action == "findings":
            from pipelines.monitoring.findings import findings_frame, findings_text

            start, end = (args.day, args.day) if args.day else (args.from_, args.to)
            frame = findings_frame(settings, usecase, start=start, end=end, column=args.column,
                                   segment=None if args.segment == "all" else args.segment,
                                   severity=args.severity, source=args.source_table, kind=args.kind)
            print(findings_text(frame, limit=args.limit))
        elif args.action == "incidents":
            from pipelines.monitoring.findings import incidents_frame, incidents_text

            print(incidents_text(incidents_frame(settings, usecase)))
        else:
            frame = metrics_frame(settings, usecase, start=args.from_, end=args.to, source=args.source)
            print(metrics_text(frame, segment=args.segment, version=args.version))
    except (TableNotFound, ValueError) as exc:
        raise CliError(str(exc)) from None


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--set takes key=value (for example canary.bake_s=10), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_rollout(r: dict[str, Any]) -> None:
    print(f"rollout {r['rollout_id']}: {r['model']} v{r['candidate']} ({r['strategy']}) against "
          f"{'v' + str(r['primary']) if r.get('primary') else 'nothing serving'}: {r['status']}")
    for step in r.get("steps", []):
        extra = ""
        if "requests" in step:
            extra = f" requests {step['requests']}"
        print(f"  {step['step']:<14} {step['verdict']:<12}{extra} {step.get('reason', '')[:200]}")
    if r.get("reason"):
        print(f"  -> {r['reason'][:400]}")
    if r.get("report"):
        print(f"  report: {r['report']}")


def cmd_deploy(settings: Settings, args: argparse.Namespace) -> None:
    from pipelines.deploy import rollout
    from pipelines.deploy.routing import RoutingError

    usecase = args.usecase or _default_usecase(settings)
    try:
        if args.action == "start":
            if not args.version:
                raise CliError("deploy start needs --version (the registry version to deploy)")
            result = rollout.deploy(settings, usecase, args.version, strategy=args.strategy,
                                    overrides=_overrides(args.set), by=f"cli:{os.environ.get('USER', 'user')}",
                                    artifact=Path(args.artifact) if args.artifact else None)
            _print_rollout(result.to_dict())
            if result.status in ("refused", "rolled_back"):
                raise CliError(f"v{args.version} was {result.status.replace('_', ' ')}: {result.reason[:300]}")
        elif args.action == "status":
            state = rollout.status(settings, usecase)
            table = state["routing"]
            if table is None:
                print(f"{usecase}: no routing table (nothing deployed through Atelier yet)")
            else:
                print(f"{usecase}: routing version {table['version']} ({table['strategy']}, {table['updated_at']}, "
                      f"by {table['updated_by']}: {table['reason']})")
                for route in table["routes"]:
                    print(f"  v{route['version']:<5} {route['role']:<8} weight {route['weight']:g}"
                          + (f" arm {route['arm']}" if route.get("arm") else ""))
            if state["latest_rollout"]:
                _print_rollout(state["latest_rollout"])
        elif args.action == "history":
            for item in rollout.history(settings, usecase, limit=args.limit):
                print(f"{item['started_at'][:19]}  {item['rollout_id']:<40} v{item['candidate']:<5} "
                      f"{item['strategy']:<7} {item['status']:<12} {item.get('reason', '')[:120]}")
        elif args.action == "drill":
            result = _drill(settings, usecase, args.bias, _overrides(args.set))
            _print_rollout(result.to_dict())
            if result.status != "rolled_back":
                raise CliError(f"the drill's biased version was not rolled back ({result.status}): {result.reason}")
        else:
            table = rollout.rollback(settings, usecase, reason=args.reason or "operator rollback",
                                     by=f"cli:{os.environ.get('USER', 'user')}")
            print(f"{usecase}: routing version {table.version}: v{table.primary.version} serves all traffic")
    except (rollout.RolloutBusy, RoutingError, SpecError, RuntimeError) as exc:
        if isinstance(exc, CliError):
            raise
        raise CliError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="Atelier ML platform")
    parser.add_argument("--profile", help="settings profile: local (default), test, cluster, ... "
                        "(or set ATELIER_PROFILE / ATELIER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="install what the local services need")
    p.add_argument("names", nargs="*")
    p.add_argument("--browser", action="store_true", help="also the headless browser the UI tests drive (chromium)")
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("services", help="start, stop or show the local services")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("lake", help="ingest or show the lake")
    p.add_argument("action", choices=["ingest", "show"])
    p.add_argument("--usecase")
    p.add_argument("--run-id", type=run_id_arg)
    p.add_argument("--source", action="append", default=[], metavar="TABLE=PATH")
    p.set_defaults(func=cmd_lake)

    p = sub.add_parser("dags", help="trigger a DAG through Airflow's REST API and wait for it")
    p.add_argument("action", choices=["trigger"])
    p.add_argument("dag_id")
    p.add_argument("--conf", default="{}")
    p.set_defaults(func=cmd_dags)

    p = sub.add_parser("airflow", help="run the airflow CLI with Atelier's Airflow environment")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("serve", help="run the prediction API (settings.api; OpenAPI at /docs)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="registered model versions and their lifecycle")
    p.add_argument("action", choices=["list", "history", "move", "retrain"])
    p.add_argument("model", nargs="?")
    p.add_argument("version", nargs="?")
    p.add_argument("stage", nargs="?")
    p.add_argument("--usecase")
    p.add_argument("--why")
    p.add_argument("--params", help="retrain: model_train params as JSON, e.g. '{\"start\": \"2013-06-01\"}'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("replay", help="drive real historical traffic through the running prediction API")
    p.add_argument("--usecase")
    p.add_argument("--from", dest="from_", required=True, help="first simulated day (ISO date)")
    p.add_argument("--to", required=True, help="last simulated day, inclusive (ISO date)")
    p.add_argument("--rate", type=float, help="at most this many requests per second (default: as fast as answered)")
    p.add_argument("--label-delay", help="outcomes arrive this long after they happen (default: feedback.yaml)")
    p.add_argument("--api", help="the API's URL (default: settings.api, loopback)")
    p.add_argument("--concurrency", type=int, default=4, choices=range(1, 65), metavar="N")
    p.add_argument("--no-reset", action="store_true", help="keep the online store's rows (only if none is "
                   "later than --from)")
    p.add_argument("--no-drain", action="store_true", help="stop releasing outcomes at the end of --to")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("monitor", help="what the feedback loop and the drift monitor measured")
    p.add_argument("action", choices=["metrics", "findings", "incidents"])
    p.add_argument("--usecase")
    p.add_argument("--from", dest="from_", help="first day (ISO date)")
    p.add_argument("--to", help="last day, inclusive (ISO date)")
    p.add_argument("--day", help="findings: one day (ISO date)")
    p.add_argument("--segment", default="all", help="metrics: a segment of feedback.yaml (default: all); "
                   "findings: a segment of monitoring.yaml or a value of it (carrier, carrier=B6)")
    p.add_argument("--column", help="findings: a column (request.dep_delay, or just dep_delay)")
    p.add_argument("--severity", default="medium", help="findings: the lowest severity shown (low, medium, high)")
    p.add_argument("--kind", choices=["drift", "quality", "online"], help="findings: only this kind")
    p.add_argument("--source-table", help="findings: only this source (served, outcomes, lake.<table>)")
    p.add_argument("--limit", type=int, default=50, help="findings: at most this many lines")
    p.add_argument("--source", default="online", choices=["online", "batch"])
    p.add_argument("--version", help="only this model version")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("deploy", help="deploy a model version (canary, shadow, A/B, direct), see or roll back")
    p.add_argument("action", choices=["start", "status", "history", "rollback", "drill"])
    p.add_argument("--usecase")
    p.add_argument("--version", help="start: the registry version to deploy")
    p.add_argument("--strategy", choices=["canary", "shadow", "ab", "direct"],
                   help="start: default deployment.yaml's strategy")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="start: override deployment.yaml, e.g. --set canary.bake_s=10 (repeatable)")
    p.add_argument("--artifact", help="start: deploy this artifact ZIP instead of packaging the version")
    p.add_argument("--reason", help="rollback: why (recorded in the audit trail)")
    p.add_argument("--limit", type=int, default=20, help="history: how many rollouts")
    p.add_argument("--bias", type=float, default=60.0, help="drill: the shift of the biased copy (label units)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("config", help="print the effective settings")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="the main job on embedded defaults")
    p.add_argument("--usecase")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(profile=args.profile) if args.profile else load_settings()
        if args.profile:
            os.environ["ATELIER_PROFILE"] = args.profile
        args.func(settings, args)
    except (ConfigError, SpecError, ServiceError, AirflowApiError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
