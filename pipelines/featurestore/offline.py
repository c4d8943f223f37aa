"""The offline store: feature tables computed by Spark from the lake, and point-in-time training sets.

A view's feature table has one row per (entity key, event time): the view's features as of that event,
computed with the Spark compiler of the feature language. Rows with a null key or event time are never
known, so they are not in the table.

A training set joins, for every labelled event at time T, each view's latest row with event time <= T
(never later: ties at T are included, since they were known at T), and only if that row is younger than the
view's TTL; otherwise the features are null and then take their declared defaults. The join is an as-of
join done with one sort per view (labels and feature rows unioned, ordered by time, last known row carried
forward), so it scales with the data instead of with a range join.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pipelines.featurestore.spec import FeatureSet, FeatureView
from pipelines.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

EVENT_TIME = "event_time"
EVENT_DATE = "event_date"


def feature_table_name(usecase: str, view: str) -> str:
    return f"features__{usecase}__{view}"


def _between(column: Column, start: datetime | None, end: datetime | None) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    cond = F.lit(True)
    if start is not None:
        cond = cond & (column >= F.lit(start))
    if end is not None:
        cond = cond & (column < F.lit(end))
    return cond


def compute_view(spark: SparkSession, lake: Lake, view: FeatureView, start: datetime | None = None,
                 end: datetime | None = None, source: DataFrame | None = None) -> DataFrame:
    """The view's feature rows with event time in [start, end) (all when open), reading only the source
    history the windows need (start - lookback)."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.features.dsl import with_features

    if view.kind != "batch":
        raise ValueError(f"view '{view.name}' is a request view: it has no stored rows")
    src = source if source is not None else spark.read.parquet(lake.path(view.source))
    read_from = start - view.lookback if start is not None else None
    src = src.where(F.col(view.event_time).isNotNull() & _between(F.col(view.event_time), read_from, end))
    for key in view.keys:
        src = src.where(F.col(key).isNotNull())
    computed = with_features(src, [f.expr for f in view.features], keys=list(view.keys),
                             event_time=view.event_time)
    computed = computed.where(_between(F.col(view.event_time), start, end))
    # Several source rows of one entity at one instant: windowed values are equal (ties are in each other's
    # window); row-level values are reduced deterministically.
    rows = computed.groupBy(*view.keys, F.col(view.event_time).alias(EVENT_TIME)).agg(
        *[F.max(f.name).alias(f.name) for f in view.features])
    return rows.withColumn(EVENT_DATE, F.to_date(F.col(EVENT_TIME)))


def write_view_table(spark: SparkSession, lake: Lake, usecase: str, view: FeatureView, run_id: str) -> int:
    """Compute the whole feature table of a view and publish it atomically in the lake. Returns rows."""
    name = feature_table_name(usecase, view.name)
    path = lake.staging_path(name, run_id)
    compute_view(spark, lake, view).write.mode("overwrite").partitionBy(EVENT_DATE).parquet(str(path))
    rows = spark.read.parquet(str(path)).count()
    lake.write_manifest(path, rows=rows, columns=[*view.keys, EVENT_TIME, *view.feature_names, EVENT_DATE],
                        partition_by=[EVENT_DATE], run_id=run_id)
    lake.publish(name, run_id)
    return rows


def as_of_join(labels: DataFrame, table: DataFrame, view: FeatureView, time_column: str,
               row_id: str) -> DataFrame:
    """For each label row: the view's latest row with event time <= the label's time, within the TTL.

    Returns row_id, one column per feature (null when no row qualifies) and `<view>__event_time`.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    keys = list(view.keys)
    fv = f"__{view.name}__fv"
    left = labels.select(F.col(row_id).alias("__row_id"), *keys, F.col(time_column).alias("__ts"),
                         F.lit(1).alias("__is_label"), F.lit(None).alias(fv))
    right_struct = F.struct(F.col(EVENT_TIME).alias("__fts"), *[F.col(f) for f in view.feature_names])
    right = table.select(F.lit(None).cast(labels.schema[row_id].dataType).alias("__row_id"), *keys,
                         F.col(EVENT_TIME).alias("__ts"), F.lit(0).alias("__is_label"), right_struct.alias(fv))
    # At equal times a feature row sorts before the label: a value known at T is usable at T.
    window = (Window.partitionBy(*keys).orderBy("__ts", "__is_label")
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    carried = left.unionByName(right, allowMissingColumns=False).withColumn(
        fv, F.last(F.col(fv), ignorenulls=True).over(window))
    joined = carried.where(F.col("__is_label") == 1)
    fts = F.col(f"{fv}.__fts")
    fresh = fts.isNotNull()
    if view.ttl is not None:
        fresh = fresh & ((F.unix_micros(F.col("__ts")) - F.unix_micros(fts)) < int(view.ttl.total_seconds() * 1e6))
    return joined.select(
        "__row_id",
        *[F.when(fresh, F.col(f"{fv}.{f}")).alias(f) for f in view.feature_names],
        F.when(fresh, fts).alias(f"{view.name}__event_time"),
    )


def _relevant_rows(table: DataFrame, view: FeatureView, start: datetime | None,
                   end: datetime | None) -> DataFrame:
    """The feature rows a label in [start, end) can be given: event time < end, and not older than the TTL
    before start (such a row is stale for every label of the window, and so is an older one it hides).
    Filtering on the date partition too lets Spark skip the other days' files."""
    from pyspark.sql import functions as F  # noqa: N812

    since = start - view.ttl if start is not None and view.ttl is not None else None
    table = table.where(_between(F.col(EVENT_TIME), since, end))
    if EVENT_DATE in table.columns:  # the partition column: one day of slack each side of the time bounds
        day = F.col(EVENT_DATE)
        if since is not None:
            table = table.where(day >= F.lit((since - timedelta(days=1)).date()))
        if end is not None:
            table = table.where(day <= F.lit((end + timedelta(days=1)).date()))
    return table


def training_set(spark: SparkSession, lake: Lake, features: FeatureSet, start: datetime | None = None,
                 end: datetime | None = None, tables: dict[str, DataFrame] | None = None,
                 labels: DataFrame | None = None, with_defaults: bool = True,
                 extra_columns: list[str] | tuple[str, ...] = ()) -> DataFrame:
    """Point-in-time training set: every labelled event in [start, end) with all features as of its time.

    `tables` (view -> feature table) defaults to the published offline feature tables; `labels` to the label
    source rows with a non-null label; `extra_columns` are label-source columns kept as they are (e.g. for
    evaluation segments).
    """
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.features.dsl import with_features

    spec = features.label
    if spec is None:
        raise ValueError(f"use case '{features.usecase}' declares no label in features.yaml")
    if labels is None:
        labels = spark.read.parquet(lake.path(spec.source)).where(F.col(spec.column).isNotNull())
    labels = labels.where(F.col(spec.event_time).isNotNull() & _between(F.col(spec.event_time), start, end))
    row_id = spec.keys[0] if len(spec.keys) == 1 else "__label_id"
    if len(spec.keys) > 1:
        labels = labels.withColumn(row_id, F.concat_ws("\u0001", *[F.col(k).cast("string") for k in spec.keys]))

    result = labels
    for view in features.request_views:
        result = with_features(result, [f.expr for f in view.features])
    request_names = [f for v in features.request_views for f in v.feature_names]
    key_columns = sorted({k for v in features.batch_views for k in v.keys})
    result = result.select(*dict.fromkeys([*spec.keys, row_id, spec.event_time, spec.column, *key_columns,
                                           *extra_columns, *request_names]))
    # Each view is joined as of the same label rows: the joins are siblings, not nested, so the plan reads the
    # labels once per view instead of twice per level.
    base = result
    for view in features.batch_views:
        if tables is not None and view.name in tables:
            table = tables[view.name]
        else:
            table = spark.read.parquet(lake.path(feature_table_name(features.usecase, view.name)))
        joined = as_of_join(base, _relevant_rows(table, view, start, end), view, spec.event_time, row_id)
        result = result.join(joined, result[row_id] == joined["__row_id"], "left").drop("__row_id")
    if with_defaults:
        for view in features.batch_views:
            for feature in view.features:
                result = result.withColumn(feature.name, F.coalesce(F.col(feature.name), F.lit(feature.default)
                                                                    .cast(result.schema[feature.name].dataType)))
    return result
