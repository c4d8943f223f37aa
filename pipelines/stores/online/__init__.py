"""The online feature store: one interface (:class:`OnlineStore`), two backends.

``settings.online_store.backend`` picks the backend:

* ``sqlite`` — embedded, one file at ``settings.sqlite_path`` (the local default);
* ``cassandra`` — ``settings.cassandra`` (the cluster profile; also runs on the local single node).

Backends are imported on first use, so the Cassandra driver is only loaded when it is the backend.
See :mod:`pipelines.stores.online.base` for the semantics every backend implements.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipelines.stores.online.base import (
    FEATURE_TYPES,
    KEY_TYPES,
    FeatureRow,
    FeatureViewSchema,
    OnlineStore,
    OnlineStoreError,
    ReadResult,
    WriteResult,
)

__all__ = [
    "FEATURE_TYPES", "KEY_TYPES", "ONLINE_STORES", "FeatureRow", "FeatureViewSchema", "OnlineStore",
    "OnlineStoreError", "ReadResult", "WriteResult", "get_online_store", "online_store_class",
]

ONLINE_STORES: dict[str, str] = {
    "sqlite": "pipelines.stores.online.sqlite:SQLiteOnlineStore",
    "cassandra": "pipelines.stores.online.cassandra:CassandraOnlineStore",
}
"""Backend name -> "module:class" (imported lazily by :func:`online_store_class`)."""


def online_store_class(backend: str) -> type[OnlineStore]:
    try:
        target = ONLINE_STORES[backend]
    except KeyError:
        raise ValueError(
            f"unknown online store backend '{backend}' (known: {', '.join(sorted(ONLINE_STORES))})"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_online_store(settings: Any, backend: str | None = None, **options: Any) -> OnlineStore:
    """The online store configured by ``settings`` (``backend`` overrides settings.online_store.backend).

    Connections are opened on first use, so this never fails because a server is down; the first
    operation raises :class:`OnlineStoreError` instead.
    """
    cls = online_store_class(backend or settings.online_store.backend)
    store = cls.from_settings(settings, **options)  # type: ignore[attr-defined]
    store.max_future_s = settings.online_store.max_future_event_s
    return store
