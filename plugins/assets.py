"""Every Asset Atelier's DAGs produce or consume, declared once. Producers list them in `outlets`."""

from __future__ import annotations

from airflow.sdk import Asset


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
