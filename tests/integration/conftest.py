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


@pytest.fixture(scope="session")
def airflow_service(settings):
    """Airflow, with `features_offline` paused for the session.

    Unpaused, every lake_ingest run of the tests would start the asset cascade features_offline -> model_train
    (rebuild every offline table, train again) beside the tests that follow: ~10 minutes of the 2 cores that no
    test waits for or asserts. The tests build offline tables through the job itself (a shared fixture);
    test_airflow checks that lake_ingest's run emits the table events the cascade is scheduled on.
    """
    from pipelines.cli import _airflow_client

    supervisor, spec, was_running = _start(settings, "airflow")
    client = _airflow_client(settings)
    client.wait_for_dag("features_offline")
    client.set_paused("features_offline", True)
    yield spec
    if not was_running:
        supervisor.down(spec)


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

    lake = Lake.from_settings(settings)
    if any(lake.current_version(t) is None for t in usecase.tables):
        ingest.stage(spark, settings, usecase, "fixture-ingest")
        ingest.validate(spark, settings, usecase, "fixture-ingest")
        ingest.publish(settings, usecase, "fixture-ingest")
    return lake


@pytest.fixture(scope="session")
def offline_feature_tables(spark, settings, usecase, published_lake):
    """The offline feature tables of every batch view, written once if no earlier session published them."""
    from pipelines.featurestore import offline
    from pipelines.featurestore.spec import load_feature_set

    for view in load_feature_set(usecase).batch_views:
        if published_lake.current_version(offline.feature_table_name(usecase.name, view.name)) is None:
            offline.write_view_table(spark, published_lake, usecase.name, view, "fixture-offline")
    return published_lake


# A small, quick flights model: four months of data, 60 trees. Registered once per MLflow database (the run id
# is fixed, so a later session finds and reuses it).
FIXTURE_MODEL_OVERRIDES = {
    "data": {"start": "2013-09-01", "end": "2014-01-01", "validation_days": 30, "holdout_days": 31},
    "hyperparameters": {"n_estimators": 60},
}


@pytest.fixture(scope="session")
def registered_model(settings, spark, usecase, offline_feature_tables, mlflow_service):
    """The flights model registered in the test MLflow, pinned by version: a `VersionRef` (name, version...).

    It is promoted to production (alias champion) if no champion exists yet; tests that need a fixed model
    should use `version=ref.version`, not the alias (lifecycle tests move aliases).
    """
    from pipelines.lifecycle.registry import transition
    from pipelines.models.registry import ModelNotFound, resolve_version
    from pipelines.training.pipeline import train_usecase

    result = train_usecase(settings, spark, usecase, "fixture-registered-model", FIXTURE_MODEL_OVERRIDES,
                           triggered_by="test-fixture")
    try:
        resolve_version(settings, result.model_name, alias="champion")
    except ModelNotFound:
        stage = resolve_version(settings, result.model_name, version=result.version).stage
        for target in ("staging", "production"):
            if stage == {"staging": "evaluation", "production": "staging"}[target]:
                transition(settings, result.model_name, result.version, target, by="test-fixture",
                           why="the integration tests' model")
                stage = target
    return resolve_version(settings, result.model_name, version=result.version)
