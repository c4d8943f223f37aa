"""A single-node Apache Cassandra 5.0 on loopback, for the `local` and `test` profiles.

Installed from Maven Central with Maven (``config/cassandra/pom.xml``: ``cassandra-all`` and its runtime
dependencies) into ``<tools>/cassandra-<version>/lib``, shared by all profiles. Each profile's node keeps its
configuration and data under ``<home>/cassandra/`` and is run directly as ``java ... CassandraDaemon`` (no
tarball, no ``bin/cassandra`` script), with the JVM options Cassandra 5.0 ships for Java 17.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from functools import lru_cache
from pathlib import Path
from string import Template

from pipelines.config import CONFIG_DIR, Settings
from pipelines.services.base import NotReady, ServiceError, ServiceSpec, wait_for_port

NAME = "cassandra"
HOST = "127.0.0.1"
JAVA_MAJOR = 17
"""Cassandra 5.0 runs on Java 11 or 17; Atelier uses 17 (the JVM options below are Cassandra's for 17)."""
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
TEMPLATE_DIR = CONFIG_DIR / "cassandra"
POM = TEMPLATE_DIR / "pom.xml"
STAMP = ".installed"
MVN_TIMEOUT_S = 1800

JAVA_INSTALL_HINT = "apt-get install openjdk-17-jre-headless"
MVN_INSTALL_HINT = "apt-get install maven"

# From Cassandra 5.0's conf/jvm-server.options and conf/jvm17-server.options. Left out on purpose:
# -XX:+AlwaysPreTouch (slow start, commits the whole heap at once) and the GC logging options.
JVM_OPTIONS = [
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+UseNUMA",
    "-XX:+PerfDisableSharedMem",
    "-XX:+ExitOnOutOfMemoryError",  # as Cassandra's start-up check recommends: never run on after an OOM
    "-Djava.net.preferIPv4Stack=true",
    # G1, as in jvm17-server.options.
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    # JPMS: what Cassandra reaches into on Java 17.
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    # Netty, as in jvm17-server.options.
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

# A single node that is its own seed has nobody to wait for: skip gossip settling and shorten ring delay.
FAST_START_OPTIONS = [
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=1000",
    "-Dcassandra.superuser_setup_delay_ms=0",
    # No native jemalloc/sigar here (cassandra-env.sh sets the same when it finds no jemalloc).
    "-Dcassandra.libjemalloc=-",
]


# --------------------------------------------------------------------------------------------- install


def install_dir(settings: Settings) -> Path:
    return settings.tools_dir / f"cassandra-{settings.cassandra.version}"


def lib_dir(settings: Settings) -> Path:
    return install_dir(settings) / "lib"


def is_installed(settings: Settings) -> bool:
    root = install_dir(settings)
    jar = root / "lib" / f"cassandra-all-{settings.cassandra.version}.jar"
    return (root / STAMP).is_file() and jar.is_file()


@lru_cache(maxsize=32)
def _java_major(java: str) -> int | None:
    """The major version `java -version` reports, or None if it does not run."""
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" means Java 8


def _java_candidates() -> list[str]:
    candidates = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    candidates += [str(p) for p in sorted(Path("/usr/lib/jvm").glob(f"*{JAVA_MAJOR}*/bin/java"))]
    seen: set[str] = set()
    return [c for c in candidates if not (c in seen or seen.add(c))]


def find_java() -> str:
    """A `java` of major version 17: $JAVA_HOME's, the one on PATH, or one under /usr/lib/jvm."""
    found = []
    for java in _java_candidates():
        major = _java_major(java)
        if major == JAVA_MAJOR:
            return java
        if major is not None:
            found.append(f"Java {major} at {java}")
    others = f" (found only {', '.join(found)}; Cassandra 5.0 runs on Java 17)" if found else ""
    raise ServiceError(f"{NAME}: Java {JAVA_MAJOR} not found{others}: {JAVA_INSTALL_HINT}")


def ensure_installed(settings: Settings) -> None:
    """Fetch cassandra-all and its runtime dependencies into <tools>/cassandra-<version>/lib (once)."""
    find_java()
    if is_installed(settings):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(f"{NAME}: mvn not found (needed to fetch Cassandra's jars): {MVN_INSTALL_HINT}")
    version = settings.cassandra.version
    target = install_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent, version)
    # Fetch into a temporary sibling and rename it into place only once complete, so that an interrupted
    # or failed fetch never looks installed.
    staging = Path(tempfile.mkdtemp(prefix=f".cassandra-{version}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the installed tree is not
    try:
        lib = staging / "lib"
        argv = [
            mvn, "-q", "-B", "-f", str(POM), f"-Dcassandra.version={version}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib}",
        ]
        try:
            proc = subprocess.run(  # noqa: S603 - argv built here
                argv, cwd=staging, capture_output=True, text=True, timeout=MVN_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(
                f"{NAME}: fetching Cassandra {version} with Maven took over {MVN_TIMEOUT_S} s; try again"
            ) from exc
        main_jar = lib / f"cassandra-all-{version}.jar"
        if proc.returncode != 0 or not main_jar.is_file():
            output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise ServiceError(
                f"{NAME}: could not fetch org.apache.cassandra:cassandra-all:{version} and its dependencies "
                f"with Maven (exit {proc.returncode}); check the version (settings cassandra.version) and "
                f"that Maven Central is reachable. Command: {' '.join(argv)}\n{output}"
            )
        _extract_hotspot_compiler(main_jar, staging / "conf")
        jars = sorted(p.name for p in lib.glob("*.jar"))
        (staging / STAMP).write_text(json.dumps({"version": version, "jars": jars}, indent=1) + "\n")
        if target.exists() and not is_installed(settings):
            shutil.rmtree(target)  # a leftover without a stamp (not ours to trust)
        try:
            staging.rename(target)
        except OSError:
            if not is_installed(settings):  # another process may have finished first; that is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(parent: Path, version: str) -> None:
    """Drop fetches that a killed process left half-done (older than any fetch can take)."""
    cutoff = time.time() - 2 * MVN_TIMEOUT_S
    for path in parent.glob(f".cassandra-{version}.*"):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _extract_hotspot_compiler(jar: Path, conf: Path) -> None:
    """Cassandra's JIT directives (META-INF/hotspot_compiler), used with -XX:CompileCommandFile."""
    conf.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(jar) as zf:
        try:
            data = zf.read("META-INF/hotspot_compiler")
        except KeyError:
            return
    (conf / "hotspot_compiler").write_bytes(data)


# --------------------------------------------------------------------------------------------- run


def node_dir(settings: Settings) -> Path:
    return settings.home_path / NAME


def _write_if_changed(path: Path, content: str) -> None:
    if path.exists() and path.read_text() == content:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)


def render_config(settings: Settings) -> Path:
    """Write <home>/cassandra/conf/{cassandra.yaml,logback.xml}; returns the conf directory."""
    node = node_dir(settings)
    dirs = {key: node / sub for key, sub in (
        ("data_dir", "data"), ("commitlog_dir", "commitlog"), ("saved_caches_dir", "saved_caches"),
        ("hints_dir", "hints"), ("cdc_raw_dir", "cdc_raw"),
    )}
    conf = node / "conf"
    for path in (conf, *dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    c = settings.cassandra
    values = {
        # json.dumps quotes strings the YAML way (YAML is a superset of JSON).
        "cluster_name": json.dumps(f"atelier-{settings.profile}"),
        "storage_port": str(c.storage_port),
        "native_port": str(c.port),
        **{key: json.dumps(str(path)) for key, path in dirs.items()},
    }
    template = Template((TEMPLATE_DIR / "cassandra.yaml.tmpl").read_text())
    _write_if_changed(conf / "cassandra.yaml", template.substitute(values))
    _write_if_changed(conf / "logback.xml", (TEMPLATE_DIR / "logback.xml").read_text())
    return conf


def _java_or_default() -> str:
    try:
        return find_java()
    except ServiceError:
        return "java"  # `up` then fails naming it; `status` still works without Java


def build_argv(settings: Settings) -> list[str]:
    c = settings.cassandra
    node = node_dir(settings)
    conf = render_config(settings)
    home = install_dir(settings)
    lib = home / "lib"
    argv = [_java_or_default(), *JVM_OPTIONS, f"-Xms{c.heap}", f"-Xmx{c.heap}"]
    jamm = sorted(lib.glob("jamm-*.jar"))
    if jamm:
        argv.append(f"-javaagent:{jamm[-1]}")  # as cassandra-env.sh: exact object sizes for memtables
    if (home / "conf" / "hotspot_compiler").is_file():
        argv += ["-XX:CompileCommand=quiet", f"-XX:CompileCommandFile={home / 'conf' / 'hotspot_compiler'}"]
    argv += [
        *FAST_START_OPTIONS,
        f"-Dcassandra.config={(conf / 'cassandra.yaml').as_uri()}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={node}",
        f"-Dcassandra.logdir={node / 'logs'}",
        f"-Dcassandra.jmx.local.port={c.jmx_port}",
        f"-Dlogback.configurationFile={(conf / 'logback.xml').as_uri()}",
        f"-Dcassandra.triggers_dir={node / 'triggers'}",
        f"-Djava.io.tmpdir={node / 'tmp'}",
        "-cp", f"{lib}/*",
        MAIN_CLASS,
    ]
    for sub in ("tmp", "triggers"):
        (node / sub).mkdir(parents=True, exist_ok=True)
    return argv


def check_health(host: str, port: int, timeout_s: float = 5.0) -> str:
    """Run a real CQL query; returns the server's release_version, raises while the node does not answer."""
    wait_for_port(host, port, timeout_s=1.0)  # cheap first: no driver set-up while the port is closed
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=timeout_s)
    cluster = Cluster(
        [host], port=port, connect_timeout=timeout_s, control_connection_timeout=timeout_s,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        schema_metadata_enabled=False, token_metadata_enabled=False,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
    finally:
        cluster.shutdown()
    if row is None or not row.release_version:
        raise NotReady(f"{NAME} on {host}:{port} returned no release_version")
    return str(row.release_version)


def build_spec(settings: Settings) -> ServiceSpec:
    c = settings.cassandra
    port = c.port
    return ServiceSpec(
        name=NAME,
        argv=build_argv(settings),
        health=lambda: check_health(HOST, port),
        ports={"cql": (HOST, c.port), "storage": (HOST, c.storage_port), "jmx": (HOST, c.jmx_port)},
        env={"CASSANDRA_HOME": str(install_dir(settings))},
        cwd=node_dir(settings),
        start_timeout_s=180.0,
        stop_timeout_s=60.0,
        describe=f"CQL on {HOST}:{port} (Cassandra {c.version})",
    )
