"""Typed settings (``pipelines/config.py``): the shipped profiles, validation errors that name the file, the
key and the reason, environment overrides, profile/file selection and the derived paths.

Every call passes ``environ`` explicitly so the developer's (or conftest's) environment never leaks in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import CONFIG_DIR, REPO_ROOT, ConfigError, Settings, load_settings, profile_path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO / "config").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    return str(info.value)


# ---------------------------------------------------------------- shipped profiles


def test_repo_root_and_config_dir_point_at_this_checkout():
    assert REPO_ROOT == REPO
    assert CONFIG_DIR == REPO / "config"
    assert profile_path("cluster") == REPO / "config" / "cluster.yaml"


def test_the_three_profiles_are_shipped():
    assert SHIPPED == ["cluster", "local", "test"]


@pytest.mark.parametrize("profile", SHIPPED)
def test_every_shipped_profile_loads(profile):
    settings = load_settings(profile, environ={})
    assert isinstance(settings, Settings)
    assert settings.profile == profile
    assert settings.usecases_path == REPO / "config" / "usecases"
    assert (settings.usecases_path / "flights_eta" / "usecase.yaml").is_file()


def test_cluster_profile_is_a_secured_replicated_cluster():
    s = load_settings("cluster", environ={})
    assert s.api.auth_required is True
    assert s.online_store.backend == "cassandra"
    assert s.cassandra.replication_factor == 3
    assert len(s.cassandra.contact_points) >= 3
    assert s.cassandra.write_consistency == "LOCAL_QUORUM"
    # Nothing is started by Atelier on a cluster.
    assert not any([s.cassandra.managed, s.mlflow.managed, s.triton.managed, s.airflow.managed])
    assert s.spark.master.startswith("spark://")
    assert s.lake_root == "/data/lake"
    assert s.home_path == Path("/var/lib/atelier")


def test_local_profile_is_embedded_and_test_profile_keeps_auth_on():
    local = load_settings("local", environ={})
    assert local.online_store.backend == "sqlite"
    assert local.cassandra.managed and local.mlflow.managed and local.triton.managed and local.airflow.managed
    assert local.cassandra.replication_factor == 1
    assert local.api.auth_required is False  # demo convenience, local only
    assert load_settings("test", environ={}).api.auth_required is True


def _ports(s: Settings) -> dict[str, int]:
    return {
        "cassandra": s.cassandra.port, "cassandra.storage": s.cassandra.storage_port,
        "cassandra.jmx": s.cassandra.jmx_port, "mlflow": s.mlflow.port, "triton.http": s.triton.http_port,
        "triton.grpc": s.triton.grpc_port, "triton.metrics": s.triton.metrics_port, "airflow": s.airflow.port,
        "airflow.health": s.airflow.scheduler_health_check_port, "airflow.worker_logs": s.airflow.worker_log_server_port,
        "airflow.trigger_logs": s.airflow.trigger_log_server_port, "api": s.api.port,
    }


def test_test_profile_never_collides_with_a_running_local_demo():
    local, test = load_settings("local", environ={}), load_settings("test", environ={})
    local_ports, test_ports = _ports(local), _ports(test)
    assert len(set(local_ports.values())) == len(local_ports), local_ports
    assert len(set(test_ports.values())) == len(test_ports), test_ports
    assert not set(local_ports.values()) & set(test_ports.values())
    assert test.home_path != local.home_path
    assert test.cassandra.keyspace != local.cassandra.keyspace
    assert test.mlflow.tracking_uri.endswith(f":{test.mlflow.port}")
    assert local.mlflow.tracking_uri.endswith(f":{local.mlflow.port}")


def test_settings_are_frozen():
    s = load_settings("test", environ={})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError for frozen instances
        s.cassandra.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- validation errors


def test_unknown_key_names_file_dotted_key_and_reason(tmp_path):
    path = write(tmp_path, "profile: mine\ncassandra:\n  prot: 9042\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg
    assert "cassandra.prot" in msg
    assert "unknown key" in msg


def test_unknown_top_level_section_is_named(tmp_path):
    path = write(tmp_path, "profile: mine\ncasandra:\n  port: 9042\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "casandra" in msg and "unknown key" in msg


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "profile: mine\ncassandra: {port: \"abc\"}\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg
    assert "cassandra.port" in msg
    assert "unknown key" not in msg
    assert "integer" in msg  # the reason


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("cassandra: {port: 70000}", "cassandra.port"),
        ("cassandra: {replication_factor: 0}", "cassandra.replication_factor"),
        ("cassandra: {keyspace: Bad-Name}", "cassandra.keyspace"),
        ("cassandra: {contact_points: []}", "cassandra.contact_points"),
        ("cassandra: {write_consistency: TWO}", "cassandra.write_consistency"),
        ("online_store: {backend: redis}", "online_store.backend"),
        ("spark: {deploy_mode: yarn}", "spark.deploy_mode"),
        ("spark: {shuffle_partitions: 0}", "spark.shuffle_partitions"),
        ("api: {auth_required: maybe}", "api.auth_required"),
        ("triton: {http_port: -1}", "triton.http_port"),
    ],
)
def test_out_of_range_or_wrong_values_name_their_key(tmp_path, yaml_text, key):
    path = write(tmp_path, f"profile: mine\n{yaml_text}\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg and f"{key}:" in msg


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, "profile: mine\ncassandra: {port: abc, prot: 1}\nmlflow: {port: 0}\n")
    msg = error_of(path=path, environ={})
    assert "cassandra.port" in msg and "cassandra.prot" in msg and "mlflow.port" in msg


def test_missing_profile_name_is_reported(tmp_path):
    path = write(tmp_path, "cassandra: {port: 9042}\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "profile" in msg


def test_profile_name_must_be_simple(tmp_path):
    path = write(tmp_path, "profile: 'my profile!'\n")
    msg = error_of(path=path, environ={})
    assert "profile:" in msg and "simple name" in msg


def test_empty_file_is_an_empty_mapping_and_fails_on_the_missing_profile(tmp_path):
    path = write(tmp_path, "# nothing here\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "profile" in msg


def test_minimal_file_gets_all_defaults(tmp_path):
    s = load_settings(path=write(tmp_path, "profile: mine\n"), environ={})
    assert s.cassandra.port == 9042
    assert s.online_store.backend == "sqlite"
    assert s.api.auth_required is True  # secure by default
    assert s.home == ".atelier"


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "profile: mine\ncassandra: {port: 9042\n")
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "not valid YAML" in msg


@pytest.mark.parametrize("text", ["- profile: mine\n- cassandra: {}\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_names_the_file(tmp_path, text):
    path = write(tmp_path, text)
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "top level must be a mapping" in msg


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(path=path, environ={})
    assert str(path) in msg and "does not exist" in msg


def test_unknown_profile_lists_the_known_profiles():
    msg = error_of(profile="staging", environ={})
    assert "unknown profile 'staging'" in msg
    assert "cluster, local, test" in msg


# ---------------------------------------------------------------- environment overrides


def test_env_override_applies_and_keeps_the_rest():
    base = load_settings("test", environ={})
    s = load_settings("test", environ={"ATELIER__CASSANDRA__PORT": "9999"})
    assert s.cassandra.port == 9999
    assert s.cassandra.keyspace == base.cassandra.keyspace
    assert s.cassandra.storage_port == base.cassandra.storage_port
    assert s.mlflow == base.mlflow


def test_env_overrides_parse_yaml_values_and_reach_every_level():
    s = load_settings("test", environ={
        "ATELIER__CASSANDRA__CONTACT_POINTS": "[10.0.0.1, 10.0.0.2]",
        "ATELIER__API__AUTH_REQUIRED": "false",
        "ATELIER__HOME": "/tmp/atelier-elsewhere",
        "ATELIER__LAKE__ROOT": "/mnt/lake",
        "ATELIER__SPARK__MASTER": "local[4]",
    })
    assert s.cassandra.contact_points == ["10.0.0.1", "10.0.0.2"]
    assert s.api.auth_required is False
    assert s.home_path == Path("/tmp/atelier-elsewhere")
    assert s.lake_root == "/mnt/lake"
    assert s.spark.master == "local[4]"


def test_env_override_creates_a_section_missing_from_the_file(tmp_path):
    path = write(tmp_path, "profile: mine\n")
    s = load_settings(path=path, environ={"ATELIER__TRITON__HTTP_PORT": "18500"})
    assert s.triton.http_port == 18500
    assert s.triton.grpc_port == 8001


def test_unrelated_variables_are_ignored():
    base = load_settings("test", environ={})
    s = load_settings("test", environ={"ATELIER_API_TOKEN": "secret", "ATELIER__": "x", "ATELIERX__A": "1",
                                       "PATH": "/bin"})
    assert s == base


def test_bad_override_names_the_override_and_the_key():
    msg = error_of(profile="test", environ={"ATELIER__CASSANDRA__PORT": "notaport"})
    assert "ATELIER__CASSANDRA__PORT" in msg
    assert "cassandra.port" in msg
    assert str(profile_path("test")) in msg


def test_override_of_an_unknown_key_is_an_unknown_key():
    msg = error_of(profile="test", environ={"ATELIER__CASSANDRA__PROT": "1"})
    assert "ATELIER__CASSANDRA__PROT" in msg and "cassandra.prot" in msg and "unknown key" in msg


def test_override_below_a_scalar_is_rejected():
    msg = error_of(profile="test", environ={"ATELIER__PROFILE__NAME": "x"})
    assert "ATELIER__PROFILE__NAME" in msg and "'profile' is not a section" in msg


def test_explicit_environ_isolates_from_the_process_environment(monkeypatch):
    monkeypatch.setenv("ATELIER__CASSANDRA__PORT", "1234")
    assert load_settings("test", environ={}).cassandra.port == 19042
    # ... and without `environ` the process environment is read.
    assert load_settings("test").cassandra.port == 1234


# ---------------------------------------------------------------- selecting the profile / file


def test_atelier_config_selects_a_file(tmp_path):
    path = write(tmp_path, "profile: custom\ncassandra: {port: 29042}\n", name="custom.yaml")
    s = load_settings(environ={"ATELIER_CONFIG": str(path), "ATELIER_PROFILE": "cluster"})
    assert s.profile == "custom"
    assert s.cassandra.port == 29042


def test_atelier_config_errors_name_that_file(tmp_path):
    path = write(tmp_path, "profile: custom\nbogus: 1\n", name="custom.yaml")
    msg = error_of(environ={"ATELIER_CONFIG": str(path)})
    assert str(path) in msg and "bogus" in msg


def test_atelier_profile_selects_a_profile_and_local_is_the_default():
    assert load_settings(environ={"ATELIER_PROFILE": "cluster"}).profile == "cluster"
    assert load_settings(environ={}).profile == "local"
    assert load_settings(environ={"ATELIER_CONFIG": ""}).profile == "local"


def test_explicit_profile_or_path_wins_over_the_environment(tmp_path):
    path = write(tmp_path, "profile: custom\n", name="custom.yaml")
    env = {"ATELIER_CONFIG": str(path), "ATELIER_PROFILE": "cluster"}
    assert load_settings("test", environ=env).profile == "test"
    other = write(tmp_path, "profile: other\n", name="other.yaml")
    assert load_settings(path=other, environ=env).profile == "other"


# ---------------------------------------------------------------- derived paths


def test_relative_home_is_relative_to_the_repo_root_not_the_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings("test", environ={})
    assert s.home_path == REPO / ".atelier" / "test"
    assert s.run_dir == REPO / ".atelier" / "test" / "run"
    assert s.lake_root == str(REPO / ".atelier" / "test" / "lake")
    assert s.triton_model_repository == REPO / ".atelier" / "test" / "triton" / "models"


def test_tools_dir_is_shared_by_all_profiles():
    dirs = {p: load_settings(p, environ={}).tools_dir for p in SHIPPED}
    assert set(dirs.values()) == {REPO / ".atelier" / "tools"}, dirs
    # ... even though the homes differ.
    assert len({load_settings(p, environ={}).home_path for p in SHIPPED}) == len(SHIPPED)


def test_sqlite_path_default_and_explicit(tmp_path):
    s = load_settings("local", environ={})
    assert s.sqlite_path == REPO / ".atelier" / "online" / "features.db"
    rel = load_settings("local", environ={"ATELIER__ONLINE_STORE__SQLITE_PATH": "data/x.db"})
    assert rel.sqlite_path == REPO / "data" / "x.db"
    absolute = load_settings("local", environ={"ATELIER__ONLINE_STORE__SQLITE_PATH": str(tmp_path / "f.db")})
    assert absolute.sqlite_path == tmp_path / "f.db"


def test_home_with_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings(path=write(tmp_path, "profile: mine\nhome: ~/atelier-home\n"), environ={})
    assert s.home_path == tmp_path / "atelier-home"
    assert s.tools_dir == REPO / ".atelier" / "tools"


def test_triton_urls():
    s = load_settings("test", environ={})
    assert s.triton.http_url == "127.0.0.1:18000"
    assert s.triton.grpc_url == "127.0.0.1:18001"
