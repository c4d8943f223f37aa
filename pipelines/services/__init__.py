"""The local services Atelier runs itself (the `local` and `test` profiles).

Each service module exposes ``ensure_installed(settings)`` (idempotent; installs what it can, or raises
ServiceError saying what to install) and ``build_spec(settings) -> ServiceSpec``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from pipelines.config import Settings
from pipelines.services.base import ServiceError, ServiceSpec, ServiceStatus, Supervisor

__all__ = ["SERVICE_NAMES", "ServiceError", "ServiceSpec", "ServiceStatus", "Supervisor", "service_module",
           "managed_services"]

# Start order matters: Airflow tasks talk to the others.
SERVICE_NAMES = ("cassandra", "mlflow", "triton", "airflow")


def service_module(name: str) -> ModuleType:
    import importlib

    if name not in SERVICE_NAMES:
        raise ServiceError(f"unknown service '{name}' (known: {', '.join(SERVICE_NAMES)})")
    return importlib.import_module(f"pipelines.services.{name}")


@dataclass(frozen=True)
class ManagedService:
    name: str
    ensure_installed: Callable[[Settings], None]
    build_spec: Callable[[Settings], ServiceSpec]


def managed_services(settings: Settings, names: list[str] | tuple[str, ...] | None = None) -> list[ManagedService]:
    """The services this profile runs itself, in start order (services with managed: false are skipped)."""
    selected = list(names) if names else list(SERVICE_NAMES)
    unknown = [n for n in selected if n not in SERVICE_NAMES]
    if unknown:
        raise ServiceError(f"unknown service '{unknown[0]}' (known: {', '.join(SERVICE_NAMES)})")
    result = []
    for name in SERVICE_NAMES:
        if name not in selected:
            continue
        if not getattr(settings, name).managed:
            continue
        module = service_module(name)
        result.append(ManagedService(name, module.ensure_installed, module.build_spec))
    return result
