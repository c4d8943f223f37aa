"""Every Asset Atelier's DAGs produce or consume, declared once.

A DAG run is for one use case, so its tasks emit only that use case's Assets: a task's outlet is an
:class:`AssetAlias` (``usecase_outlet``) and the task adds the events of its use case's Assets to it
(``emit``). Declaring every use case's Assets as outlets would emit all of them on each success, and start
every use case's consumers. DAGs scheduled on an Asset are triggered by events added through an alias.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.sdk import Asset, AssetAlias


def usecase_outlet(dag_id: str, task_id: str) -> AssetAlias:
    """The outlet of a task that emits only its run's use case's Assets (through ``emit``)."""
    return AssetAlias(name=f"{dag_id}.{task_id}", group="atelier")


def emit(outlet_events: Any, alias: AssetAlias, assets: Iterable[Asset], extra: dict[str, Any] | None = None) -> None:
    """Add one event per Asset to the task's alias outlet (``outlet_events`` from the task's context)."""
    for asset in assets:
        outlet_events[alias].add(asset, extra=extra or {})


def lake_table(table: str) -> Asset:
    """A published lake table (any use case's ingest may publish it)."""
    return Asset(name=f"lake.{table}", uri=f"atelier://lake/{table}", group="lake")


def feature_view(usecase: str, view: str) -> Asset:
    """A feature view's rows in the online store (materialized for an interval)."""
    return Asset(name=f"features.{usecase}.{view}", uri=f"atelier://features/{usecase}/{view}", group="features")


def offline_features(usecase: str) -> Asset:
    """A use case's offline feature tables (the point-in-time training sets read them)."""
    return Asset(name=f"offline_features.{usecase}", uri=f"atelier://offline-features/{usecase}", group="features")


def retrain_request(usecase: str) -> Asset:
    """A request to retrain a use case's model (drift alerts and operators emit it; model_train consumes it)."""
    return Asset(name=f"retrain.{usecase}", uri=f"atelier://retrain/{usecase}", group="models")


def model_production() -> Asset:
    """A model version reached production (became champion); the event's extra names the use case, the model
    and the version. The deployment DAG consumes it."""
    return Asset(name="models.production", uri="atelier://models/production", group="models")


def predictions(usecase: str) -> Asset:
    """A use case's batch predictions lake table (``predictions__<usecase>``, partitioned by day); the
    feedback loop and drift checks read it."""
    return Asset(name=f"predictions.{usecase}", uri=f"atelier://lake/predictions__{usecase}", group="predictions")


def feedback(usecase: str) -> Asset:
    """A use case's feedback tables (``served__``, ``outcomes__``, ``feedback__``, ``online_metrics__<usecase>``)
    were republished by ``monitoring_feedback``; drift checks and deployment analysis read them."""
    return Asset(name=f"feedback.{usecase}", uri=f"atelier://lake/feedback__{usecase}", group="monitoring")
