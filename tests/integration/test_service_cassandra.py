"""The single-node Cassandra that Atelier runs itself: installed, started by the supervisor, used with the driver."""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid

import pytest

from pipelines.config import load_settings
from pipelines.services import ServiceError, Supervisor
from pipelines.services import cassandra as cassandra_module

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(settings, cassandra_service):
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    profile = ExecutionProfile(
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=settings.cassandra.local_dc), request_timeout=30
    )
    cluster = Cluster(
        settings.cassandra.contact_points, port=settings.cassandra.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=10,
    )
    sess = cluster.connect()
    yield sess
    cluster.shutdown()


@pytest.fixture()
def keyspace(session):
    name = f"it_cassandra_{uuid.uuid4().hex[:12]}"
    session.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    yield name
    session.execute(f"DROP KEYSPACE IF EXISTS {name}")


def test_installed_once_and_idempotent(settings, cassandra_service):
    stamp = cassandra_module.install_dir(settings) / cassandra_module.STAMP
    assert cassandra_module.is_installed(settings)
    before = stamp.stat().st_mtime_ns
    cassandra_module.ensure_installed(settings)  # a no-op the second time
    assert stamp.stat().st_mtime_ns == before
    recorded = json.loads(stamp.read_text())
    assert recorded["version"] == settings.cassandra.version
    assert f"cassandra-all-{settings.cassandra.version}.jar" in recorded["jars"]
    for jar in recorded["jars"]:
        assert (cassandra_module.lib_dir(settings) / jar).is_file(), jar


def test_supervisor_reports_it_running_and_healthy(settings, cassandra_service):
    status = Supervisor(settings.run_dir).status(cassandra_service)
    assert status.state == "running", status
    assert f"127.0.0.1:{settings.cassandra.port}" in status.detail
    assert cassandra_service.ports["cql"] == ("127.0.0.1", settings.cassandra.port)
    release = cassandra_module.check_health("127.0.0.1", settings.cassandra.port)
    assert release == settings.cassandra.version


def test_server_uses_the_profile_configuration(session, settings):
    row = session.execute("SELECT cluster_name, listen_address, listen_port, rpc_port FROM system.local").one()
    assert row.cluster_name == f"atelier-{settings.profile}"
    assert str(row.listen_address) == "127.0.0.1"
    assert row.listen_port == settings.cassandra.storage_port
    assert row.rpc_port == settings.cassandra.port
    data_dir = settings.home_path / "cassandra" / "data" / "system"
    assert data_dir.is_dir() and any(data_dir.iterdir())


def test_keyspace_table_write_and_read(session, keyspace):
    replication = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
    ).one().replication
    assert replication["class"].endswith("SimpleStrategy")
    assert replication["replication_factor"] == "1"

    session.execute(
        f"CREATE TABLE {keyspace}.features (entity text, feature text, ts timestamp, value double, "
        f"PRIMARY KEY ((entity), feature))"
    )
    insert = session.prepare(f"INSERT INTO {keyspace}.features (entity, feature, ts, value) VALUES (?, ?, ?, ?)")
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    rows = {(f"user-{i % 7}", f"f{i}"): float(i) * 1.5 for i in range(50)}
    for (entity, feature), value in rows.items():
        session.execute(insert, (entity, feature, now, value))

    got = {(r.entity, r.feature): r.value for r in session.execute(f"SELECT entity, feature, value FROM {keyspace}.features")}
    assert got == rows
    one = session.execute(
        f"SELECT value, ts FROM {keyspace}.features WHERE entity = %s AND feature = %s", ("user-3", "f10")
    ).one()
    assert one.value == 15.0
    assert one.ts.replace(tzinfo=dt.UTC) == now
    count = session.execute(f"SELECT count(*) FROM {keyspace}.features WHERE entity = %s", ("user-0",)).one()
    assert count.count == len([k for k in rows if k[0] == "user-0"])


def test_using_timestamp_last_write_wins(session, keyspace):
    session.execute(f"CREATE TABLE {keyspace}.kv (k text PRIMARY KEY, v text)")
    select = f"SELECT v, WRITETIME(v) AS wt FROM {keyspace}.kv WHERE k = %s"

    session.execute(f"INSERT INTO {keyspace}.kv (k, v) VALUES ('a', 'newer') USING TIMESTAMP 2000")
    # An older write arriving later does not overwrite the newer value.
    session.execute(f"INSERT INTO {keyspace}.kv (k, v) VALUES ('a', 'older') USING TIMESTAMP 1000")
    row = session.execute(select, ("a",)).one()
    assert (row.v, row.wt) == ("newer", 2000)

    # Nor does an older delete remove it.
    session.execute(f"DELETE FROM {keyspace}.kv USING TIMESTAMP 1500 WHERE k = 'a'")
    row = session.execute(select, ("a",)).one()
    assert (row.v, row.wt) == ("newer", 2000)

    # A newer write does overwrite it, and a newer delete removes it.
    session.execute(f"UPDATE {keyspace}.kv USING TIMESTAMP 3000 SET v = 'newest' WHERE k = 'a'")
    row = session.execute(select, ("a",)).one()
    assert (row.v, row.wt) == ("newest", 3000)
    session.execute(f"DELETE FROM {keyspace}.kv USING TIMESTAMP 4000 WHERE k = 'a'")
    assert session.execute(select, ("a",)).one() is None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("purpose", ["cql", "storage", "jmx"])
def test_taken_port_is_a_clear_service_error(tmp_path, purpose):
    key = {"cql": "PORT", "storage": "STORAGE_PORT", "jmx": "JMX_PORT"}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        # Free ports for the others, so that only `purpose` collides; own home so the running node's
        # configuration is left alone.
        environ = {f"ATELIER__CASSANDRA__{k}": str(_free_port()) for p, k in key.items() if p != purpose}
        environ[f"ATELIER__CASSANDRA__{key[purpose]}"] = str(taken)
        environ["ATELIER__HOME"] = str(tmp_path / "home")
        settings = load_settings("test", environ=environ)
        spec = cassandra_module.build_spec(settings)
        assert spec.ports[purpose] == ("127.0.0.1", taken)

        supervisor = Supervisor(tmp_path / "run")
        with pytest.raises(ServiceError) as info:
            supervisor.up(spec)
    message = str(info.value)
    assert "cassandra" in message
    assert f"127.0.0.1:{taken}" in message
    assert purpose in message
    # Nothing was started.
    assert supervisor.status(spec).state == "stopped"
    assert not (tmp_path / "run" / "cassandra.pid").exists()
