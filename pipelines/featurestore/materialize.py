"""Materialization: the interval's feature rows, computed by Spark, written to the online store.

Incremental by data interval: only rows whose event time falls in [start, end) are computed (reading the
source history their windows need) and, per entity, only the latest of them is written. Writes are versioned
by event time in every online store, so a re-run or a retry of the same interval is harmless, and an older
interval replayed later never overwrites newer values. A failed write fails the job: nothing is reported
written that was not. The view's schema is applied once, by the driver, before any executor writes; a row
stamped further in the future than ``online_store.max_future_event_s`` fails the job, naming it (its event
time would win over every later write).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipelines.config import Settings
from pipelines.featurestore.offline import EVENT_TIME, compute_view
from pipelines.featurestore.spec import FeatureSet, FeatureView
from pipelines.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.stores.online.base import FeatureViewSchema

STORE_TYPES = {"int": "bigint", "double": "double", "string": "string", "bool": "boolean"}
WRITE_BATCH = 5_000


def online_view_name(usecase: str, view: str) -> str:
    return f"{usecase}__{view}"


def online_schema(usecase: str, view: FeatureView) -> FeatureViewSchema:
    from pipelines.stores.online.base import FeatureViewSchema

    key_types = {"string": "string", "int": "bigint", "bigint": "bigint"}
    return FeatureViewSchema(
        name=online_view_name(usecase, view.name),
        entity_keys=[(k, key_types[t]) for k, t in zip(view.keys, view.key_types, strict=True)],
        features=[(f.name, STORE_TYPES[f.dtype]) for f in view.features],
        ttl_seconds=int(view.ttl.total_seconds()) if view.ttl else None,
    )


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    start: datetime | None
    end: datetime | None
    entities: int
    written: int
    skipped_expired: int


def latest_per_entity(rows: DataFrame, view: FeatureView) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    order = Window.partitionBy(*view.keys).orderBy(F.col(EVENT_TIME).desc())
    return rows.withColumn("__rank", F.row_number().over(order)).where("__rank = 1").drop("__rank")


def _write_partition(settings: Settings, schema: FeatureViewSchema, keys: list[str], names: list[str],
                     now: datetime | None, rows: Any) -> Any:
    """Runs on the executors: one store client per partition, batched writes, counts returned."""
    from pipelines.stores.online import OnlineStoreError, get_online_store
    from pipelines.stores.online.base import FeatureRow

    store = get_online_store(settings)
    written = skipped = 0
    try:
        # The driver applied the schema once (concurrent DDL from every partition would race on a cluster);
        # a partition only checks that the stored schema is still the one this job computed.
        stored = store.view(schema.name)
        if stored != schema:
            raise OnlineStoreError(f"feature view '{schema.name}' changed while it was being materialized "
                                   f"(another job applied a different schema: {stored} instead of {schema}); re-run")
        batch: list[FeatureRow] = []

        def flush() -> None:
            nonlocal written, skipped
            if batch:
                try:
                    result = store.write(schema.name, batch, now=now)
                except ValueError as exc:  # a row the store refuses (e.g. stamped in the future): name it
                    raise OnlineStoreError(f"a feature row was refused: {exc}") from None
                written += result.written
                skipped += result.skipped_expired
                batch.clear()

        for row in rows:
            event_time = row[EVENT_TIME]
            if event_time.tzinfo is None:
                event_time = event_time.replace(tzinfo=UTC)
            batch.append(FeatureRow(tuple(row[k] for k in keys), {n: row[n] for n in names}, event_time))
            if len(batch) >= WRITE_BATCH:
                flush()
        flush()
    finally:
        store.close()
    yield written, skipped


def apply_schema(settings: Settings, schema: FeatureViewSchema) -> None:
    """Create or upgrade the view's storage, once, from the driver, before any partition writes."""
    from pipelines.stores.online import get_online_store

    store = get_online_store(settings)
    try:
        store.apply([schema])
    finally:
        store.close()


def materialize_view(spark: SparkSession, settings: Settings, features: FeatureSet, view: FeatureView,
                     start: datetime | None, end: datetime | None, now: datetime | None = None,
                     source: DataFrame | None = None) -> MaterializeResult:
    lake = Lake.from_settings(settings)
    schema = online_schema(features.usecase, view)
    rows = latest_per_entity(compute_view(spark, lake, view, start, end, source=source), view)
    rows = rows.select(*view.keys, EVENT_TIME, *view.feature_names)
    if settings.online_store.backend == "sqlite":
        rows = rows.coalesce(1)  # one writer: SQLite serialises writers anyway
    keys, names = list(view.keys), view.feature_names
    apply_schema(settings, schema)
    try:
        counts = rows.rdd.mapPartitions(
            lambda part: _write_partition(settings, schema, keys, names, now, part)).collect()
    except Exception as exc:  # noqa: BLE001 - Spark wraps executor errors; surface the store's own message
        from pipelines.stores.online import OnlineStoreError

        text = str(exc)
        marker = "OnlineStoreError: "
        if marker in text:
            message = text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
            raise OnlineStoreError(f"materializing {view.name} failed, nothing is reported written: {message}") from None
        raise
    written = sum(c[0] for c in counts)
    skipped = sum(c[1] for c in counts)
    return MaterializeResult(view.name, start, end, written + skipped, written, skipped)
