"""MLflow as the model repository: find a registered version (by alias or number) and load its bundle.

All of Atelier's MLflow access goes through this module's :func:`client` and translates MLflow's exceptions
in one place (:func:`mlflow_errors`): a missing model, version or alias is :class:`ModelNotFound`, anything
else (server down, refused, failing) is :class:`RegistryUnavailable` naming the tracking URI.

A use case's models are registered under one name (the model spec's ``name``, by default the use case's
name). Each version's run holds the bundle under the artifact path ``atelier/bundle``; a version is
immutable, so a downloaded bundle is cached under ``<home>/models/<name>/<version>`` and reused.
Lifecycle stages are version tags (``atelier.stage``), roles are aliases (``champion``, ``challenger``):
see :mod:`pipelines.lifecycle.registry`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.models.bundle import ModelBundle

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.config import Settings

__all__ = ["BUNDLE_ARTIFACT_PATH", "ModelNotFound", "RegistryUnavailable", "VersionRef", "client",
           "load_bundle", "mlflow_errors", "registry_error", "resolve_version"]

BUNDLE_ARTIFACT_PATH = "atelier/bundle"
STAGE_TAG = "atelier.stage"


class ModelNotFound(LookupError):
    """No registered model, version or alias by that name; the message says what exists."""


class RegistryUnavailable(RuntimeError):
    """The MLflow server cannot be reached (after retries); the message names the URI."""


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str
    stage: str | None
    aliases: tuple[str, ...]
    tags: dict[str, str]


def client(settings: Settings) -> MlflowClient:
    import os

    from mlflow import MlflowClient

    # Fail fast instead of MLflow's default of several minutes of retries when the server is down; callers
    # (Airflow tasks) retry at their own level.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    return MlflowClient(tracking_uri=settings.mlflow.tracking_uri, registry_uri=settings.mlflow.tracking_uri)


NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def registry_error(settings: Settings | str, exc: Exception) -> ModelNotFound | RegistryUnavailable:
    """Atelier's exception for an MLflow one: not found -> ModelNotFound, anything else -> RegistryUnavailable.
    ``settings``: the settings, or the tracking URI of the client that failed."""
    uri = settings if isinstance(settings, str) else settings.mlflow.tracking_uri
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    code = getattr(exc, "error_code", "") or ""
    if code in NOT_FOUND_CODES or first.startswith(NOT_FOUND_CODES):
        return ModelNotFound(first.removeprefix("RESOURCE_DOES_NOT_EXIST: ")[:300])
    return RegistryUnavailable(f"MLflow at {uri} is unreachable or failing: {type(exc).__name__}: {first[:300]}")


@contextmanager
def mlflow_errors(settings: Settings | str) -> Iterator[None]:
    """Run MLflow calls with their exceptions translated by :func:`registry_error`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise registry_error(settings, exc) from None


def _unavailable(settings: Settings, exc: Exception) -> RegistryUnavailable:
    err = registry_error(settings, exc)
    if isinstance(err, RegistryUnavailable):
        return err
    return RegistryUnavailable(f"MLflow at {settings.mlflow.tracking_uri}: {err}")


def _ref(mv: Any) -> VersionRef:
    tags = dict(mv.tags or {})
    return VersionRef(mv.name, str(mv.version), mv.run_id, tags.get(STAGE_TAG), tuple(mv.aliases or ()), tags)


def resolve_version(settings: Settings, name: str, alias: str | None = None,
                    version: str | int | None = None, mlflow_client: MlflowClient | None = None) -> VersionRef:
    """The registered version named by ``version`` or ``alias`` (``champion`` when neither is given)."""
    from mlflow.exceptions import MlflowException, RestException

    c = mlflow_client or client(settings)
    try:
        if version is not None:
            mv = c.get_model_version(name, str(version))
        else:
            mv = c.get_model_version_by_alias(name, alias or "champion")
        return _ref(mv)
    except RestException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise _unavailable(settings, exc) from None
        what = f"version {version}" if version is not None else f"alias '{alias or 'champion'}'"
        known = ""
        try:
            rm = c.get_registered_model(name)
            known = f"; aliases: {', '.join(sorted(rm.aliases)) or 'none'}"
        except MlflowException:
            known = "; the model is not registered at all (train it first: DAG model_train)"
        raise ModelNotFound(f"registered model '{name}' has no {what}{known}") from None
    except MlflowException as exc:
        raise _unavailable(settings, exc) from None


def load_bundle(settings: Settings, name: str, alias: str | None = None, version: str | int | None = None,
                cache_dir: Path | None = None) -> ModelBundle:
    """Download (once) and load the bundle of a registered version; ``bundle.version`` is set."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    ref = resolve_version(settings, name, alias, version)
    cache = (cache_dir or settings.home_path / "models") / name / ref.version
    if not (cache / "bundle.json").exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{ref.version}.", dir=cache.parent))
        try:
            local = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=BUNDLE_ARTIFACT_PATH,
                                                        dst_path=str(tmp),
                                                        tracking_uri=settings.mlflow.tracking_uri)
            if not cache.exists():  # else another process cached it meanwhile
                Path(local).rename(cache)
        except MlflowException as exc:
            raise _unavailable(settings, exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ModelBundle.load(cache, version=ref.version)
