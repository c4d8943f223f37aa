"""A missing system prerequisite stops the bootstrap with the line to run, naming the service.

The machine has Java 17, Maven and Debian's python3: each test hides one of them (PATH, JAVA_HOME, the
module's path constant) and runs the real check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_settings
from pipelines.services import ServiceError, cassandra, triton


@pytest.fixture
def fresh_settings(tmp_path):
    # A tools folder where nothing is installed yet, so the checks before any download run.
    return load_settings("test", environ={"ATELIER__TOOLS": str(tmp_path / "tools"),
                                          "ATELIER__HOME": str(tmp_path / "home")})


def test_missing_maven_names_the_package(fresh_settings, monkeypatch, tmp_path):
    java = cassandra.find_java()  # the machine's Java 17 (found under /usr/lib/jvm even without PATH)
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(only_java))
    with pytest.raises(ServiceError, match=r"cassandra: mvn not found .*apt-get install maven"):
        cassandra.ensure_installed(fresh_settings)
    assert not list((tmp_path / "tools").glob("cassandra-*"))  # nothing half-installed


def test_wrong_java_names_the_package(monkeypatch, tmp_path):
    fake_home = tmp_path / "jdk8"
    (fake_home / "bin").mkdir(parents=True)
    java = fake_home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "1.8.0_392"\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(fake_home))
    monkeypatch.setenv("PATH", str(fake_home / "bin"))
    monkeypatch.setattr(cassandra, "_java_candidates", lambda: [str(java)])
    with pytest.raises(ServiceError, match=r"Java 17 not found \(found only Java 8 at .*apt-get install openjdk-17"):
        cassandra.find_java()


def test_missing_debian_python_names_the_packages(fresh_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(triton, "SYSTEM_PYTHON", tmp_path / "no" / "python3")
    with pytest.raises(ServiceError, match=r"triton: .*python3 is missing.*apt-get install python3 python3-venv"):
        triton.ensure_installed(fresh_settings)


def test_python_without_venv_module_names_the_package(fresh_settings, monkeypatch, tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3.11\necho 'No module named ensurepip' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(triton, "SYSTEM_PYTHON", Path(fake))
    with pytest.raises(ServiceError, match=r"cannot create venvs .*apt-get install python3-venv"):
        triton.ensure_installed(fresh_settings)
