"""The MLflow server Atelier runs: tracking, proxied artifacts and the model registry, for real."""

from __future__ import annotations

import pytest

from pipelines.services import ServiceError, Supervisor, service_module

pytestmark = pytest.mark.integration


def test_tracking_artifacts_and_registry(mlflow_service, settings, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    experiment = mlflow.set_experiment("atelier-service-test")
    note = tmp_path / "note.txt"
    note.write_text("hello from the test")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        mlflow.log_param("alpha", 0.5)
        mlflow.log_metric("mae", 4.2)
        mlflow.log_artifact(str(note))
    client = MlflowClient(settings.mlflow.tracking_uri)
    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"alpha": "0.5"}
    assert stored.data.metrics == {"mae": 4.2}
    # Artifacts go through the server (--serve-artifacts) into the profile's artifact store.
    downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert open(downloaded).read() == "hello from the test"
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((settings.home_path / "mlflow" / "artifacts").rglob("note.txt"))

    name = "atelier-service-test-model"
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # registered by an earlier session against the same store
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/note.txt", run.info.run_id)
    client.set_registered_model_alias(name, "challenger", version.version)
    assert client.get_model_version_by_alias(name, "challenger").version == version.version


def test_port_taken_is_a_clear_error(settings, tmp_path):
    import socket

    from pipelines.config import load_settings

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = load_settings("test", environ={"ATELIER__MLFLOW__PORT": str(port),
                                               "ATELIER__HOME": str(tmp_path / "home")})
        spec = service_module("mlflow").build_spec(other)
        with pytest.raises(ServiceError, match=rf"mlflow: http port 127.0.0.1:{port} is already in use"):
            Supervisor(tmp_path / "run").up(spec)
