"""Atelier's ``atelier_health`` Triton model (the server's readiness probe), written at every Triton start.

Adding another python-backend model (from the platform venv; the server runs with explicit model control)::

    from pipelines.deploy.repository import TensorSpec, python_model_config, write_python_model

    config = python_model_config("flights_delay", inputs=[TensorSpec("FEATURES", "FP32", [-1, 12])],
                                 outputs=[TensorSpec("PROBABILITY", "FP32", [-1])])
    write_python_model(settings.triton_model_repository, "flights_delay", version=3,
                       config_pbtxt=config, model_py=MODEL_PY, files={"model.ubj": Path("model.ubj")})
    tritonclient.http.InferenceServerClient(settings.triton.http_url).load_model("flights_delay")

``model.py`` runs inside the serving venv (Debian python 3.11, numpy<2, xgboost 3.2), never the platform venv.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.deploy.repository import TensorSpec, python_model_config, write_python_model

__all__ = ["HEALTH_MODEL_NAME", "health_model_config", "write_health_model"]

HEALTH_MODEL_NAME = "atelier_health"
HEALTH_MODEL_VERSION = 1


def health_model_config() -> str:
    return python_model_config(
        HEALTH_MODEL_NAME,
        inputs=[TensorSpec("INPUT0", "FP32", [-1])],
        outputs=[TensorSpec("OUTPUT0", "FP32", [-1]), TensorSpec("RUNTIME", "STRING", [1])],
    )


def health_model_source() -> str:
    return (Path(__file__).parent / "health_model.py").read_text()


def write_health_model(repository: Path) -> Path:
    """Write ``atelier_health`` (OUTPUT0 = INPUT0 + 1, RUNTIME = JSON about its Python) into ``repository``.

    Rewrites the files only when they differ, so calling it on every start does not touch a live model.
    Returns the version folder.
    """
    repository = Path(repository)
    version_dir = repository / HEALTH_MODEL_NAME / str(HEALTH_MODEL_VERSION)
    config, source = health_model_config(), health_model_source()
    try:
        current = ((repository / HEALTH_MODEL_NAME / "config.pbtxt").read_text(), (version_dir / "model.py").read_text())
    except OSError:
        current = None
    if current == (config, source):
        return version_dir
    return write_python_model(
        repository, HEALTH_MODEL_NAME, version=HEALTH_MODEL_VERSION, config_pbtxt=config, model_py=source
    )
