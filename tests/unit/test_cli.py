"""The `atelier` command: readable errors (exit 2, no traceback) and the commands that need no services."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def atelier(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "ATELIER_PROFILE": "test", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_config_prints_effective_settings():
    out = atelier("config", env_extra={"ATELIER__CASSANDRA__PORT": "19999"})
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert settings["profile"] == "test"
    assert settings["cassandra"]["port"] == 19999


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--profile", "nope", "config"], {}, "unknown profile 'nope'"),
    (["config"], {"ATELIER__CASSANDRA__PORT": "notaport"}, "cassandra.port"),
    (["config"], {"ATELIER__SPARK__BOGUS": "1"}, "spark.bogus: unknown key"),
    (["services", "status", "nosuchservice"], {}, "unknown service 'nosuchservice'"),
    (["lake", "show", "--usecase", "nosuchusecase"], {}, "unknown use case 'nosuchusecase' (known: flights_eta, union_membership)"),
    (["dags", "trigger", "lake_ingest", "--conf", "{not json"], {}, "--conf is not valid JSON"),
    (["replay", "--from", "2013-12-24", "--to", "2013-12-20"], {}, "--to 2013-12-20 is before --from 2013-12-24"),
    (["replay", "--from", "yesterday", "--to", "2013-12-20"], {}, "--from: 'yesterday' is not an ISO date"),
    (["replay", "--from", "2013-12-24", "--to", "2013-12-25", "--label-delay", "soon"], {},
     "--label-delay: 'soon' is not a duration"),
    (["replay", "--from", "2013-12-24", "--to", "2013-12-25", "--rate", "0"], {}, "--rate must be a positive"),
    (["monitor", "metrics"], {"ATELIER__LAKE__ROOT": "/nonexistent-lake"}, "no online metrics for use case"),
    (["deploy", "start"], {}, "deploy start needs --version"),
    (["deploy", "start", "--version", "1", "--set", "canary.bake_s"], {}, "--set takes key=value"),
    (["deploy", "start", "--version", "1", "--set", "canary.steps=[50, 10]"], {}, "canary.steps: steps must increase"),
    (["deploy", "rollback"], {"ATELIER__DEPLOY__ROUTING_DIR": "/nonexistent-routing"}, "has no routing table"),
    (["deploy", "drill"], {"ATELIER__DEPLOY__ROUTING_DIR": "/nonexistent-routing"}, "has no routing table"),
])
def test_user_mistakes_are_clear_errors(args, env, message):
    out = atelier(*args, env_extra=env)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_deploy_status_without_a_routing_table(tmp_path):
    out = atelier("deploy", "status", env_extra={"ATELIER__DEPLOY__ROUTING_DIR": str(tmp_path / "routing"),
                                                 "ATELIER__HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr
    assert "no routing table (nothing deployed through Atelier yet)" in out.stdout


def test_status_of_stopped_services_in_a_fresh_home(tmp_path):
    out = atelier("services", "status", env_extra={"ATELIER__HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines()}
    assert lines == {"cassandra": "stopped", "mlflow": "stopped", "triton": "stopped", "airflow": "stopped"}


def test_cluster_profile_manages_no_local_services():
    out = atelier("--profile", "cluster", "services", "status")
    assert out.returncode == 0, out.stderr
    assert "manages no local services" in out.stdout


def test_the_training_summary_reads_whatever_the_run_logged():
    from pipelines.cli import training_summary

    regression = {"mae": 8.4, "baseline_departure_delay_mae": 11.2, "baseline_route_mean_mae": 30.1,
                  "coverage_80": 0.81, "coverage_90": 0.9, "interval_width_80": 25.0, "interval_width_90": 33.0}
    assert training_summary(regression) == (
        "holdout mae 8.400 (baselines: departure_delay mae 11.200; route_mean mae 30.100); interval coverage "
        "80% -> 0.810 (mean interval width 25.00), 90% -> 0.900 (mean interval width 33.00)")
    classifier = {"auc": 0.91, "log_loss": 0.31, "baseline_prior_auc": 0.5, "baseline_prior_log_loss": 0.55,
                  "baseline_last_year_log_loss": 0.6, "baseline_last_year_auc": 0.8, "coverage_90": 0.91,
                  "set_size_90": 1.2}
    assert training_summary(classifier) == (
        "holdout auc 0.910, log_loss 0.310 (baselines: last_year auc 0.800, log_loss 0.600; prior auc 0.500, "
        "log_loss 0.550); prediction-set coverage 90% -> 0.910 (mean set size 1.20)")
