"""What the local Airflow must not give away: its admin password (in a log, a world-readable file or a command
line) and listening sockets beyond loopback where Airflow lets us choose.

The Airflow code that prints generated passwords runs in a subprocess, so its configuration (read from the
environment at import) is exactly the one ``airflow_env`` defines, under a temporary home.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_settings
from pipelines.services import airflow
from pipelines.services.base import ServiceError, ServiceSpec, Supervisor

pytestmark = pytest.mark.timeout(120)


def _settings(tmp_path: Path, profile: str = "test"):
    return load_settings(profile=profile, environ={"ATELIER__HOME": str(tmp_path)})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_airflow_env_creates_a_private_passwords_file_with_an_admin_password(tmp_path):
    settings = _settings(tmp_path)
    env = airflow.airflow_env(settings)
    path = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert path == airflow.passwords_file(settings) and path.parent == airflow.airflow_home(settings)
    assert _mode(path) == 0o600
    password = json.loads(path.read_text())[airflow.ADMIN_USER]
    assert len(password) >= 24
    assert airflow.admin_password(settings) == password
    airflow.airflow_env(settings)
    assert airflow.admin_password(settings) == password, "a second call keeps the password"


def test_an_existing_passwords_file_is_made_private_and_kept(tmp_path):
    settings = _settings(tmp_path)
    path = airflow.passwords_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"admin": "generated-by-airflow-earlier"}) + "\n")
    path.chmod(0o644)
    airflow.airflow_env(settings)
    assert _mode(path) == 0o600
    assert airflow.admin_password(settings) == "generated-by-airflow-earlier"


def test_an_existing_passwords_file_without_the_admin_gets_one(tmp_path):
    """Else Airflow would generate the admin's password and print it."""
    settings = _settings(tmp_path)
    path = airflow.passwords_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text("")
    airflow.airflow_env(settings)
    assert _mode(path) == 0o600 and airflow.admin_password(settings)


_PRINTING_CODE_PATHS = """
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.cli.commands.standalone_command import StandaloneCommand
from airflow.configuration import conf

print("password file:", SimpleAuthManager.get_generated_password_file())
print("health check on:", conf.get("scheduler", "scheduler_health_check_server_host"),
      conf.getint("scheduler", "scheduler_health_check_server_port"))
StandaloneCommand().find_user_info()  # what `airflow standalone` runs first
SimpleAuthManager().init()  # what every component runs when it starts its auth manager
"""


def test_airflow_prints_no_password_when_it_starts_with_our_environment(tmp_path):
    settings = _settings(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= airflow.airflow_env(settings)
    password = airflow.admin_password(settings)
    assert password
    done = subprocess.run([sys.executable, "-c", _PRINTING_CODE_PATHS], env=env, capture_output=True, text=True,
                          timeout=110, cwd=tmp_path, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"password file: {airflow.passwords_file(settings)}" in output
    assert f"health check on: 127.0.0.1 {settings.airflow.scheduler_health_check_port}" in output
    assert password not in output
    assert "Password for user" not in output
    assert airflow.admin_password(settings) == password, "Airflow kept our password"
    assert _mode(airflow.passwords_file(settings)) == 0o600


def test_the_airflow_spec_declares_its_secrets_and_keeps_them_off_the_command_line(tmp_path):
    settings = _settings(tmp_path)
    spec = airflow.build_spec(settings)
    password = airflow.admin_password(settings)
    jwt_secret = spec.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert password in spec.secrets and jwt_secret in spec.secrets
    assert not any(secret in arg for secret in spec.secrets for arg in spec.argv)
    assert password not in spec.describe
    assert password not in repr(spec) and jwt_secret not in repr(spec)


def test_supervisor_refuses_a_secret_on_the_command_line_and_logs_nothing(tmp_path):
    sup = Supervisor(tmp_path / "run")
    spec = ServiceSpec(name="leaky", argv=[sys.executable, "-c", "pass", "--token=s3cret-value"],
                       health=lambda: None, secrets=("s3cret-value",))
    with pytest.raises(ServiceError, match="secret is on the command line"):
        sup.up(spec)
    log = sup.log_path("leaky")
    assert not log.exists() or "s3cret-value" not in log.read_text()
    assert sup.status(spec).state == "stopped"


def test_supervisor_log_is_private_to_its_owner(tmp_path):
    sup = Supervisor(tmp_path / "run")
    old_log = sup.log_path("quick")
    old_log.write_text("a line an older version wrote\n")
    old_log.chmod(0o644)
    spec = ServiceSpec(name="quick", argv=[sys.executable, "-c", "import time; time.sleep(30)"],
                       health=lambda: None, stop_timeout_s=5)
    try:
        sup.up(spec)
    finally:
        sup.down(spec)
    assert _mode(old_log) == 0o600
    assert "starting quick:" in old_log.read_text()


_AIRFLOW_PORT_OPTIONS = (
    "AIRFLOW__API__PORT",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
)


@pytest.mark.parametrize("profile", ["local", "test"])
def test_scheduler_health_check_listens_on_loopback(tmp_path, profile):
    settings = _settings(tmp_path, profile)
    env = airflow.airflow_env(settings)
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == settings.airflow.host == "127.0.0.1"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] == str(
        settings.airflow.scheduler_health_check_port)


def test_airflow_ports_are_distinct_within_and_across_the_local_and_test_profiles(tmp_path):
    ports = {profile: [airflow.airflow_env(_settings(tmp_path / profile, profile))[option]
                       for option in _AIRFLOW_PORT_OPTIONS]
             for profile in ("local", "test")}
    assert len(set(ports["local"])) == len(_AIRFLOW_PORT_OPTIONS), ports
    assert len(set(ports["test"])) == len(_AIRFLOW_PORT_OPTIONS), ports
    assert not set(ports["local"]) & set(ports["test"]), ports


def test_the_supervisor_checks_every_airflow_port_is_free(tmp_path):
    settings = _settings(tmp_path)
    spec = airflow.build_spec(settings)
    cfg = settings.airflow
    declared = {port: host for host, port in spec.ports.values()}
    assert declared == {cfg.port: cfg.host, cfg.scheduler_health_check_port: cfg.host,
                        cfg.worker_log_server_port: airflow.ALL_INTERFACES,
                        cfg.trigger_log_server_port: airflow.ALL_INTERFACES}
