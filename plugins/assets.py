"""Every Asset Atelier's DAGs produce or consume, declared once. Producers list them in `outlets`."""

from __future__ import annotations

from airflow.sdk import Asset


def lake_table(table: str) -> Asset:
    """A published lake table (any use case's ingest may publish it)."""
    return Asset(name=f"lake.{table}", uri=f"atelier://lake/{table}", group="lake")
