"""Typed settings loaded from YAML profiles.

A profile is a YAML file under ``config/`` (``local`` = embedded defaults on one machine, ``cluster`` = real
cluster endpoints). It is selected by ``--profile`` on the CLI or ``ATELIER_PROFILE``; ``ATELIER_CONFIG`` may
name any YAML file instead. Any key can be overridden from the environment with ``ATELIER__SECTION__KEY``
(double underscores separate levels), e.g. ``ATELIER__CASSANDRA__PORT=9142``.

Secrets (tokens, passwords) are never read from YAML: they come from the environment or Airflow connections.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"
ENV_PREFIX = "ATELIER__"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file, the key and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(_Section):
    master: str = Field("local[2]", description="Spark master URL: local[N] or spark://host:port")
    deploy_mode: Literal["client", "cluster"] = "client"
    driver_memory: str = "4g"
    executor_memory: str = "2g"
    shuffle_partitions: int = Field(8, ge=1)
    conn_id: str = Field("spark_atelier", description="Airflow connection used by SparkSubmitOperator")


class LakeSettings(_Section):
    root: str | None = Field(None, description="Lake root (local path or URI); default <home>/lake")
    retention_hours: float = Field(24.0, gt=0, description="how long a superseded table version outlives its "
                                   "supersession (longer than the longest job that reads the lake)")


class CassandraSettings(_Section):
    contact_points: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1)
    port: int = Field(9042, ge=1, le=65535)
    keyspace: str = Field("atelier", pattern=r"^[a-z][a-z0-9_]{0,47}$")
    local_dc: str = "datacenter1"
    replication_factor: int = Field(1, ge=1)
    read_consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_ONE"
    write_consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    # Only used when Atelier runs the server itself (the local profile).
    managed: bool = Field(True, description="Atelier starts a single node on loopback")
    version: str = "5.0.6"
    heap: str = "1G"
    storage_port: int = Field(7000, ge=1, le=65535)
    jmx_port: int = Field(7199, ge=1, le=65535)


class OnlineStoreSettings(_Section):
    backend: Literal["sqlite", "cassandra"] = "sqlite"
    sqlite_path: str | None = Field(None, description="default <home>/online/features.db")
    max_future_event_s: float = Field(300.0, ge=0, description="how far after the writer's clock a feature "
                                      "row's event time may be (producers' clock skew); a row further ahead is "
                                      "refused, since its event time is its version and would win every later "
                                      "write")


class MlflowSettings(_Section):
    tracking_uri: str = "http://127.0.0.1:5000"
    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)


class TritonSettings(_Section):
    managed: bool = True
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    model_repository: str | None = Field(None, description="default <home>/triton/models")

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class AirflowSettings(_Section):
    managed: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    scheduler_health_check_port: int = Field(8974, ge=1, le=65535, description="the scheduler's health-check "
                                             "server, bound to `host`")
    worker_log_server_port: int = Field(8793, ge=1, le=65535, description="task log server of the scheduler's "
                                        "LocalExecutor; Airflow binds it on all interfaces (no host option)")
    trigger_log_server_port: int = Field(8794, ge=1, le=65535, description="the triggerer's log server; Airflow "
                                         "binds it on all interfaces (no host option)")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    auth_required: bool = Field(True, description="bearer-token auth; the token comes from ATELIER_API_TOKEN")
    usecases: list[str] = Field(default_factory=lambda: ["flights_eta"], min_length=1,
                                description="use cases served; the first is the default of a request")
    model_alias: str = Field("champion", description="registry alias of the version served")
    models: dict[str, str] = Field(default_factory=dict, description="use case -> registered model name "
                                   "(default: the use case's name), or 'name:version' to pin a version")
    deadline_ms: int = Field(50, ge=5, le=60_000, description="every request ends within this time")
    feature_timeout_ms: int = Field(20, ge=1, le=60_000, description="online store read budget")
    triton_timeout_ms: int = Field(25, ge=1, le=60_000, description="Triton inference budget")
    max_batch: int = Field(256, ge=1, le=10_000, description="rows per /v1/predict/batch request")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    body_timeout_ms: int = Field(2_000, ge=10, description="a request body not received whole within this gets "
                                 "408 (+ Retry-After, connection closed): slow clients cannot hold slots")
    max_in_flight: int = Field(256, ge=1, description="requests in progress beyond this are shed (429)")
    as_of: AwareDatetime | None = Field(None, description="simulated clock for feature ages (historical data); "
                                   "None = wall clock")
    allow_as_of_header: bool = Field(False, description="accept X-Atelier-As-Of (simulated clock per request)")
    prediction_log_dir: str | None = Field(None, description="default <home>/predictions")
    prediction_log_queue: int = Field(100_000, ge=1, description="answers buffered for the log writer")
    prediction_log_max_bytes: int = Field(20 * 2**30, ge=2**20, description="the prediction log's size cap "
                                          "(all use cases); beyond it the least recently written files are "
                                          "deleted, counted and logged")
    prediction_log_retention_days: float = Field(30.0, gt=0, description="prediction log files last written "
                                                 "longer ago than this are deleted (by file time)")
    shadow_queue: int = Field(1_000, ge=1, description="requests waiting to be scored by a shadow version; "
                              "beyond it copies are dropped (counted), never the answers")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    insecure_no_auth_on_public_bind: bool = Field(
        False, description="DANGER: serve with auth_required off on a non-loopback host; without it the API "
        "refuses to start so (anyone who can reach the port could use it)")


class DeploySettings(_Section):
    routing_dir: str | None = Field(None, description="the routing tables every API replica follows; "
                                    "default <home>/routing")
    artifacts_dir: str | None = Field(None, description="packaged model artifacts (ZIP); default "
                                      "<home>/artifacts (each is also logged to its MLflow version's run)")
    routing_poll_s: float = Field(0.2, gt=0, le=5, description="how often an API replica checks its routing "
                                  "tables (a change applies within about this long)")
    drain_s: float = Field(2.0, ge=0, le=300, description="after a version leaves the routing, how long "
                           "before it is unloaded from Triton (in-flight requests finish)")
    webhook_url: str | None = Field(None, description="rollout alerts are POSTed here as JSON (besides the "
                                    "log); None = log only")
    auto_deploy: bool = Field(True, description="a models.production event (a champion promoted by the "
                              "rules) starts model_deploy's rollout; False: such runs end skipped, manual "
                              "deployments only")
    runtime: Literal["python", "fil"] = Field("python", description="Triton backend of packaged models: "
                                              "python (this machine) or fil (the cluster's Triton image)")
    golden_rows: int = Field(64, ge=1, le=10_000, description="holdout rows of the golden check")


class FeedbackSettings(_Section):
    outcome_log_dir: str | None = Field(None, description="where outcomes arrive as JSON lines (the replay "
                                        "writes them; a product system may too); default <home>/outcomes")
    mlflow_logging: bool = Field(True, description="log online metrics to the served version's MLflow run")


class Settings(_Section):
    profile: str
    home: str = Field(".atelier", description="State directory (run files, lake, logs); relative = repo root")
    tools: str = Field(".atelier/tools", description="Installed tools shared by all profiles (serving venv, jars)")
    usecases_dir: str = Field("config/usecases", description="Folder of use-case spec folders")
    spark: SparkSettings = SparkSettings()
    lake: LakeSettings = LakeSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    cassandra: CassandraSettings = CassandraSettings()
    mlflow: MlflowSettings = MlflowSettings()
    triton: TritonSettings = TritonSettings()
    airflow: AirflowSettings = AirflowSettings()
    api: ApiSettings = ApiSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    deploy: DeploySettings = DeploySettings()

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, value: str) -> str:
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError("must be a simple name such as 'local' or 'cluster'")
        return value

    # Derived locations. Everything Atelier writes on this machine lives below `home_path`.
    @property
    def home_path(self) -> Path:
        return _resolve(self.home)

    @property
    def run_dir(self) -> Path:
        return self.home_path / "run"

    @property
    def tools_dir(self) -> Path:
        return _resolve(self.tools)

    @property
    def lake_root(self) -> str:
        return self.lake.root or str(self.home_path / "lake")

    @property
    def usecases_path(self) -> Path:
        return _resolve(self.usecases_dir)

    @property
    def sqlite_path(self) -> Path:
        return _resolve(self.online_store.sqlite_path) if self.online_store.sqlite_path else (
            self.home_path / "online" / "features.db"
        )

    @property
    def prediction_log_path(self) -> Path:
        return _resolve(self.api.prediction_log_dir) if self.api.prediction_log_dir else (
            self.home_path / "predictions"
        )

    @property
    def outcome_log_path(self) -> Path:
        return _resolve(self.feedback.outcome_log_dir) if self.feedback.outcome_log_dir else (
            self.home_path / "outcomes"
        )

    @property
    def routing_path(self) -> Path:
        return _resolve(self.deploy.routing_dir) if self.deploy.routing_dir else self.home_path / "routing"

    @property
    def artifacts_path(self) -> Path:
        return _resolve(self.deploy.artifacts_dir) if self.deploy.artifacts_dir else self.home_path / "artifacts"

    @property
    def triton_model_repository(self) -> Path:
        repo = self.triton.model_repository
        return _resolve(repo) if repo else self.home_path / "triton" / "models"


def _resolve(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else REPO_ROOT / p


def profile_path(profile: str) -> Path:
    return CONFIG_DIR / f"{profile}.yaml"


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """Set ``ATELIER__A__B=value`` into data['a']['b']; values are parsed as YAML scalars/lists."""
    applied = []
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment override {key}: '{part}' is not a section")
            node = child
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment override {key}: not a valid value ({exc})") from exc
        applied.append(key)
    return applied


def validation_lines(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[str]:
    """One ``  - dotted.key: reason`` line per pydantic error (what every spec and config error lists)."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in (*prefix, *err["loc"])) or "<root>"
        reason = "unknown key (not allowed)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  - {key}: {reason.removeprefix('Value error, ')}")
    return lines


def _format_validation(source: str, exc: ValidationError) -> str:
    return "\n".join([f"invalid configuration in {source}:", *validation_lines(exc)])


def load_settings(
    profile: str | None = None,
    path: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Load and validate a profile. Raises ConfigError naming the file, the key and the reason."""
    env = dict(os.environ if environ is None else environ)
    if path is None and profile is None:
        path = env.get("ATELIER_CONFIG") or None
        profile = env.get("ATELIER_PROFILE", "local")
    if path is None:
        assert profile is not None
        path = profile_path(profile)
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none"
            raise ConfigError(f"unknown profile '{profile}': {path} does not exist (profiles: {known})")
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path}: the top level must be a mapping of sections")
    overrides = _apply_env_overrides(data, env)
    source = str(path) + (f" (with overrides {', '.join(overrides)})" if overrides else "")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (from the environment's profile). Cached: call once per process."""
    return load_settings()
