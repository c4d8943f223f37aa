"""Real services for integration tests: started once per session with the test profile, stopped at the end.

A service that was already running (ours, from an earlier session) is reused and left running.
"""

from __future__ import annotations

import pytest

from pipelines.services import Supervisor, service_module


def _start(settings, name):
    module = service_module(name)
    module.ensure_installed(settings)
    spec = module.build_spec(settings)
    supervisor = Supervisor(settings.run_dir)
    was_running = supervisor.status(spec).state == "running"
    supervisor.up(spec)
    return supervisor, spec, was_running


@pytest.fixture(scope="session")
def supervisor(settings):
    return Supervisor(settings.run_dir)


def _service_fixture(name):
    @pytest.fixture(scope="session")
    def fixture(settings):
        supervisor, spec, was_running = _start(settings, name)
        yield spec
        if not was_running:
            supervisor.down(spec)

    return fixture


cassandra_service = _service_fixture("cassandra")
mlflow_service = _service_fixture("mlflow")
triton_service = _service_fixture("triton")
airflow_service = _service_fixture("airflow")


@pytest.fixture(scope="session")
def spark(settings):
    """One local Spark session for the whole test session (the profile's master, UTC)."""
    import logging

    from pipelines.spark import get_spark

    # py4j logs "closing" from finalizers at interpreter exit, after pytest closed the log streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    session = get_spark(settings, "atelier-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def usecase(settings):
    from pipelines.usecases import get_usecase

    return get_usecase("flights_eta", settings.usecases_path)


@pytest.fixture(scope="session")
def published_lake(spark, settings, usecase):
    """The lake tables of the test profile, ingested once if no earlier test or session published them."""
    from pipelines.lake import ingest
    from pipelines.lake.tables import Lake

    lake = Lake(settings.lake_root)
    if any(lake.current_version(t) is None for t in usecase.tables):
        ingest.stage(spark, settings, usecase, "fixture-ingest")
        ingest.validate(spark, settings, usecase, "fixture-ingest")
        ingest.publish(settings, usecase, "fixture-ingest")
    return lake
