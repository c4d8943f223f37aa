"""Airflow for the local profiles: `airflow standalone` (API server + UI, scheduler, DAG processor,
triggerer) on a SQLite metadata database under the profile's home, serving this repository's DAGs.

`airflow_env(settings)` is the one place the Airflow environment is defined; the service, the CLI's
`atelier airflow ...` passthrough and the tests all use it, so they see the same metadata database and
connections.

What listens where (Airflow 3.3): the API server and the scheduler's health-check server on the profile's
`airflow.host` (loopback locally). The task log server (the scheduler's LocalExecutor) and the triggerer's log
server listen on all interfaces: Airflow has a port option for them but no host option (`serve_logs` runs
uvicorn with host ""), and `standalone` starts the scheduler and triggerer itself, so it cannot pass their
`--skip-serve-logs`. Each profile gives them its own ports (checked free at start). For a machine others can
reach, that is an open gap: a firewall rule, or running the components without `standalone`, closes it.

The admin's password is generated here, before Airflow first starts, into a 0600 file that Airflow is told to
use: Airflow would otherwise generate it itself and print it into the service log.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.request
from pathlib import Path

from pipelines.config import REPO_ROOT, Settings
from pipelines.services.base import ServiceError, ServiceSpec
from pipelines.spark import python_env

ADMIN_USER = "admin"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - where Airflow's log servers listen; only checked to be free
PASSWORDS_FILE_NAME = "simple_auth_manager_passwords.json.generated"


def airflow_home(settings: Settings) -> Path:
    return settings.home_path / "airflow"


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's passwords file (named explicitly in the Airflow environment)."""
    return airflow_home(settings) / PASSWORDS_FILE_NAME


def _jwt_secret(home: Path) -> str:
    """A per-installation random secret kept in a 0600 file (never in config or the repository)."""
    path = home / ".jwt_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _admin_passwords(home: Path) -> Path:
    """The simple auth manager's passwords file, 0600, holding an admin password before Airflow starts.

    Airflow (3.3) generates the password of a user missing from this file and prints it, i.e. into the
    service log; `standalone` only skips that when the file exists. So the file exists, with our admin in it,
    before Airflow ever runs, and only its owner can read it (Airflow would create it 0644).
    """
    path = home / PASSWORDS_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        try:
            passwords = json.loads(path.read_text() or "{}")
        except ValueError:
            return path  # not ours to repair; Airflow reports the broken file itself
        if isinstance(passwords, dict) and ADMIN_USER not in passwords:
            passwords[ADMIN_USER] = secrets.token_urlsafe(24)
            path.write_text(json.dumps(passwords) + "\n")
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({ADMIN_USER: secrets.token_urlsafe(24)}) + "\n")
    return path


def airflow_env(settings: Settings) -> dict[str, str]:
    home = airflow_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    cfg = settings.airflow
    spark_conn = {"conn_type": "spark", "host": settings.spark.master,
                  "extra": {"deploy-mode": settings.spark.deploy_mode, "spark-binary": "spark-submit"}}
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{cfg.host}:{cfg.port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_admin_passwords(home)),
        "AIRFLOW__API__HOST": cfg.host,
        "AIRFLOW__API__PORT": str(cfg.port),
        "AIRFLOW__API__BASE_URL": f"http://{cfg.host}:{cfg.port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": cfg.host,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(cfg.scheduler_health_check_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.worker_log_server_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(cfg.trigger_log_server_port),
        f"AIRFLOW_CONN_{settings.spark.conn_id.upper()}": json.dumps(spark_conn),
        "ATELIER_PROFILE": settings.profile,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "GX_ANALYTICS_ENABLED": "False",
        **python_env(),
    }


def admin_password(settings: Settings) -> str | None:
    """The admin password of the simple auth manager (generated by `airflow_env` before Airflow's first start)."""
    path = passwords_file(settings)
    try:
        return json.loads(path.read_text()).get(ADMIN_USER)
    except (OSError, ValueError):
        return None


def ensure_installed(settings: Settings) -> None:
    if not (Path(sys.executable).parent / "airflow").exists():
        raise ServiceError("airflow: the airflow command is missing from the platform venv; run `make venv`")


def _health(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=3) as response:  # noqa: S310
        health = json.loads(response.read())
    for part in ("metadatabase", "scheduler"):
        status = (health.get(part) or {}).get("status")
        if status != "healthy":
            raise RuntimeError(f"{part} is {status or 'unknown'}")


def build_spec(settings: Settings) -> ServiceSpec:
    cfg = settings.airflow
    base_url = f"http://{cfg.host}:{cfg.port}"
    env = airflow_env(settings)
    return ServiceSpec(
        name="airflow",
        argv=[str(Path(sys.executable).parent / "airflow"), "standalone"],
        health=lambda: _health(base_url),
        ports={"api": (cfg.host, cfg.port),
               "scheduler health check": (cfg.host, cfg.scheduler_health_check_port),
               "worker log server (all interfaces)": (ALL_INTERFACES, cfg.worker_log_server_port),
               "triggerer log server (all interfaces)": (ALL_INTERFACES, cfg.trigger_log_server_port)},
        env=env,
        cwd=airflow_home(settings),
        start_timeout_s=300,
        stop_timeout_s=45,
        secrets=tuple(filter(None, (env["AIRFLOW__API_AUTH__JWT_SECRET"], admin_password(settings)))),
        describe=f"UI and REST API on {base_url} (user {ADMIN_USER}; password in {passwords_file(settings)})",
    )
