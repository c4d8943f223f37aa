"""MLflow tracking server and model registry: SQLite backend store, local artifact store, served artifacts."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from pipelines.config import Settings
from pipelines.services.base import ServiceError, ServiceSpec


def ensure_installed(settings: Settings) -> None:
    if not (Path(sys.executable).parent / "mlflow").exists():
        raise ServiceError("mlflow: the mlflow command is missing from the platform venv; run `make venv`")


def _health(base_url: str) -> None:
    # A real API call through the tracking store, not only the liveness route.
    url = f"{base_url}/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL built from settings
        json.loads(response.read())


def build_spec(settings: Settings) -> ServiceSpec:
    root = settings.home_path / "mlflow"
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    cfg = settings.mlflow
    base_url = f"http://{cfg.host}:{cfg.port}"
    argv = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", cfg.host, "--port", str(cfg.port),
        "--workers", "1",
    ]
    return ServiceSpec(
        name="mlflow",
        argv=argv,
        health=lambda: _health(base_url),
        ports={"http": (cfg.host, cfg.port)},
        env={"MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             # MLflow 3's server-side job runner (GenAI jobs, trace rollups) is a job runner and 8 huey consumer
             # processes: ~2 GB of RSS and ~10% of a core while idle (measured in CI), and Atelier runs no
             # MLflow jobs. Off: fewer processes, and the CPU goes to serving and Spark.
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=root,
        start_timeout_s=120,
        describe=f"tracking server and registry UI on {base_url}",
    )
