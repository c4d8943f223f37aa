"""Airflow for the local profiles: `airflow standalone` (API server + UI, scheduler, DAG processor,
triggerer) on a SQLite metadata database under the profile's home, serving this repository's DAGs.

`airflow_env(settings)` is the one place the Airflow environment is defined; the service, the CLI's
`atelier airflow ...` passthrough and the tests all use it, so they see the same metadata database and
connections.
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


def airflow_home(settings: Settings) -> Path:
    return settings.home_path / "airflow"


def _jwt_secret(home: Path) -> str:
    """A per-installation random secret kept in a 0600 file (never in config or the repository)."""
    path = home / ".jwt_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


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
        "AIRFLOW__API__HOST": cfg.host,
        "AIRFLOW__API__PORT": str(cfg.port),
        "AIRFLOW__API__BASE_URL": f"http://{cfg.host}:{cfg.port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        f"AIRFLOW_CONN_{settings.spark.conn_id.upper()}": json.dumps(spark_conn),
        "ATELIER_PROFILE": settings.profile,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "GX_ANALYTICS_ENABLED": "False",
        **python_env(),
    }


def admin_password(settings: Settings) -> str | None:
    """The generated admin password of the simple auth manager (written by Airflow at first start)."""
    path = airflow_home(settings) / "simple_auth_manager_passwords.json.generated"
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
    return ServiceSpec(
        name="airflow",
        argv=[str(Path(sys.executable).parent / "airflow"), "standalone"],
        health=lambda: _health(base_url),
        ports={"api": (cfg.host, cfg.port)},
        env=airflow_env(settings),
        cwd=airflow_home(settings),
        start_timeout_s=300,
        stop_timeout_s=45,
        describe=f"UI and REST API on {base_url} (user {ADMIN_USER}; password in "
                 f"{airflow_home(settings) / 'simple_auth_manager_passwords.json.generated'})",
    )
