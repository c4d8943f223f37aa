"""Batch prediction: score an interval's entities from the lake and publish the predictions as a lake table.

    plan (no Spark: fails early)  interval -> days; the model version by alias or number; the entity
                                  partitions of those days; the offline feature tables' coverage
    score (Spark)                 entities of the days -> point-in-time features (``offline.training_set``,
                                  the code training uses) -> Arrow batches of the feature columns in an
                                  iterator pandas UDF -> ``inplace_predict`` and calibrated intervals, the
                                  bundle broadcast once and loaded once per Python worker
    stage, validate, publish      Parquet partitioned by day under the run's staging folder -> Great
                                  Expectations (``expectations/predictions``) on the staged files ->
                                  ``Lake.publish_partitions`` replaces exactly the interval's days

The table ``predictions__<usecase>`` is a lake table partitioned by the entity source's partition column
(``sched_dep_date`` for flights). A version is the previous one with the interval's partitions swapped
(hard links for the rest), made current by an atomic pointer swap: a run killed at any point or failing
validation leaves the published partitions as they were, and runs over different intervals can overlap.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.featurestore.offline import EVENT_DATE, EVENT_TIME, feature_table_name
from pipelines.featurestore.spec import FeatureSet, FeatureView, load_feature_set
from pipelines.lake.tables import Lake, TableNotFound

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from pipelines.config import Settings
    from pipelines.models.bundle import ModelBundle
    from pipelines.models.registry import VersionRef
    from pipelines.usecases import UseCase

log = logging.getLogger("atelier.batch")

SUITE = "predictions"
PREDICTION = "prediction"
META_COLUMNS = ("model_name", "model_version", "run_id")


class BatchPredictError(ValueError):
    """The interval, the entities or the features cannot be scored; the message says which and why."""


def predictions_table(usecase: str) -> str:
    return f"predictions__{usecase}"


def interval_columns(levels: list[str]) -> list[str]:
    """``["0.8", "0.9"]`` -> ``lower_80, upper_80, lower_90, upper_90``."""
    out = []
    for level in levels:
        pct = f"{float(level) * 100:g}".replace(".", "_")
        out += [f"lower_{pct}", f"upper_{pct}"]
    return out


def set_columns(levels: list[str]) -> list[str]:
    """``["0.8", "0.9"]`` -> ``set_80, set_90`` (a classifier's prediction sets, classes joined by ``|``)."""
    return [f"set_{f'{float(level) * 100:g}'.replace('.', '_')}" for level in levels]


def output_columns(bundle: ModelBundle) -> list[tuple[str, str]]:
    """The scored columns and their Spark types. Regression: ``prediction`` and the intervals' bounds.
    Classification: ``prediction`` (the positive class's probability; for multi-class, the top class's),
    ``predicted_class``, one ``probability_<class>`` per class and one ``set_<pct>`` per level."""
    levels = [f"{level:g}" for level in bundle.calibration.levels]
    if not bundle.is_classifier:
        return [(PREDICTION, "double"), *[(c, "double") for c in interval_columns(levels)]]
    return [(PREDICTION, "double"), ("predicted_class", "string"),
            *[(f"probability_{c}", "double") for c in bundle.classes], *[(c, "string") for c in set_columns(levels)]]


def interval_days(start: datetime, end: datetime) -> list[date]:
    """The days an interval [start, end) touches (a daily data interval gives one day)."""
    if start >= end:
        raise BatchPredictError(f"empty interval: start {start.isoformat()} is not before end {end.isoformat()}")
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass
class Plan:
    """What a run will do, checked before Spark starts."""

    usecase: str
    table: str
    start: datetime
    end: datetime
    days: list[date]
    entity_table: str
    partition_column: str
    key: str
    event_time: str
    model: VersionRef
    run_id: str

    @property
    def day_values(self) -> list[str]:
        return [d.isoformat() for d in self.days]


@dataclass
class BatchResult:
    table: str
    version: str
    run_id: str
    model_name: str
    model_version: str
    days: list[str]
    input_rows: int
    output_rows: int
    partitions: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    report: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def plan(settings: Settings, usecase: UseCase, start: datetime, end: datetime, run_id: str,
         alias: str | None = None, version: str | None = None, lake: Lake | None = None) -> Plan:
    """Check the interval, the model and the inputs without Spark; raise with a readable reason."""
    from pipelines.models.registry import resolve_version

    features = load_feature_set(usecase)
    if features.label is None:
        raise BatchPredictError(f"use case '{usecase.name}' declares no label (features.yaml): "
                                "batch prediction scores the label's entities")
    days = interval_days(start, end)
    lake = lake or Lake.from_settings(settings)
    spec = features.label
    entity_table = usecase.tables[spec.source]
    if len(entity_table.partition_by) != 1:
        raise BatchPredictError(f"lake table '{spec.source}' must be partitioned by one (date) column to be "
                                f"scored by day; it is partitioned by {entity_table.partition_by}")
    partition_column = entity_table.partition_by[0]
    model = resolve_version(settings, usecase.name, alias=None if version else (alias or "champion"),
                            version=version)
    try:
        available = lake.partition_dates(spec.source, partition_column)
    except TableNotFound as exc:
        raise BatchPredictError(f"no entities to score: {exc}") from None
    if not available.intersection(days):
        span = f"{min(available)} .. {max(available)}" if available else "none"
        raise BatchPredictError(
            f"empty interval: lake table '{spec.source}' has no {partition_column} partition in "
            f"[{days[0]}, {days[-1]}] (interval {start.isoformat()} .. {end.isoformat()}); "
            f"partitions available: {span}")
    check_feature_coverage(lake, features, start, end)
    return Plan(usecase.name, predictions_table(usecase.name), start, end, days, spec.source, partition_column,
                spec.keys[0] if len(spec.keys) == 1 else "__label_id", spec.event_time, model, run_id)


def check_feature_coverage(lake: Lake, features: FeatureSet, start: datetime, end: datetime) -> None:
    """Every offline feature table exists and reaches the interval: its latest ``event_date`` partition is
    no older than the interval's last day minus the view's TTL (else every row would silently get the
    defaults), and no day is missing from the TTL window of the interval's first day to that latest day."""
    problems = []
    for view in features.batch_views:
        name = feature_table_name(features.usecase, view.name)
        try:
            dates = lake.partition_dates(name, EVENT_DATE)
        except TableNotFound:
            problems.append(f"offline feature table '{name}' is not published (run features_offline)")
            continue
        ttl = view.ttl or timedelta(0)
        needed_last = (end - timedelta(days=1) - ttl).date()
        if not dates or max(dates) < needed_last:
            latest = max(dates).isoformat() if dates else "no partitions"
            problems.append(f"offline feature table '{name}' ends at {latest}: the interval "
                            f"{start.date()} .. {(end - timedelta(microseconds=1)).date()} needs {EVENT_DATE} "
                            f"partitions up to at least {needed_last} (TTL {ttl}); run features_offline")
            continue
        window_first = max((start - ttl).date(), min(dates))
        window_last = min((end - timedelta(microseconds=1)).date(), max(dates))
        # A day is missing when the view's source has events on it and the feature table has none: a source
        # with events on few days (a yearly panel) has few partitions, and that is no gap.
        missing = sorted(source_event_days(lake, view, window_first, window_last) - dates)
        if missing:
            shown = ", ".join(d.isoformat() for d in missing[:5]) + (" ..." if len(missing) > 5 else "")
            problems.append(f"offline feature table '{name}' lacks {EVENT_DATE} partition(s) {shown} "
                            f"inside the interval's feature window")
    if problems:
        raise BatchPredictError("missing feature partitions:\n  " + "\n  ".join(problems))


def source_event_days(lake: Lake, view: FeatureView, first: date, last: date) -> set[date]:
    """The UTC days in [first, last] on which the view's source table has events (its ``event_time``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    times = ds.dataset(lake.path(view.source), format="parquet", partitioning="hive").to_table(
        columns=[view.event_time]).column(0)
    days = pc.unique(pc.cast(pc.drop_null(times), pa.date32())).to_pylist()
    return {d for d in days if first <= d <= last}


# ------------------------------------------------------------------------------------------ scoring
_WORKER_BUNDLES: dict[str, ModelBundle] = {}


def bundle_files(bundle: ModelBundle) -> dict[str, bytes]:
    """The bundle's files as bytes: what the driver broadcasts to the executors."""
    if bundle.path is None:
        raise BatchPredictError("the model bundle has no folder to ship to the executors")
    return {p.name: p.read_bytes() for p in sorted(bundle.path.iterdir()) if p.is_file()}


def worker_bundle(key: str, files: Any, version: str, threads: int = 1, loads: Any = None) -> ModelBundle:
    """The bundle of `key`, loaded once per Python worker process from the broadcast files (``loads``, an
    accumulator, counts the loads)."""
    from pipelines.models.bundle import ModelBundle

    bundle = _WORKER_BUNDLES.get(key)
    if bundle is None:
        folder = Path(tempfile.gettempdir()) / "atelier-bundles" / key
        if not (folder / "bundle.json").exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
            for name, data in files.value.items():
                (tmp / name).write_bytes(data)
            try:
                os.rename(tmp, folder)
            except OSError:  # another worker of this machine won the race: same immutable content
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        bundle = ModelBundle.load(folder, version=version)
        # Spark already runs one task per core: one XGBoost thread per task avoids oversubscription.
        bundle.booster.set_param({"nthread": threads})
        _WORKER_BUNDLES[key] = bundle
        if loads is not None:
            loads.add(1)
    return bundle


def predict_frame(features: pd.DataFrame, bundle: ModelBundle) -> pd.DataFrame:
    """Prediction and calibrated intervals (a classifier: probabilities, class and prediction sets) for a
    batch of feature rows (columns in any order)."""
    import numpy as np
    import pandas as pd

    matrix = bundle.matrix(features)
    if bundle.is_classifier:
        margins = bundle.margins(matrix)
        proba = bundle.predict_proba(margins=margins)
        classes = np.asarray(bundle.classes, dtype=object)
        columns: dict[str, Any] = {
            PREDICTION: proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1),
            "predicted_class": classes[proba.argmax(axis=1)],
            **{f"probability_{c}": proba[:, k] for k, c in enumerate(bundle.classes)}}
        for level, members in bundle.prediction_sets(margins, matrix).items():
            columns[set_columns([level])[0]] = ["|".join(classes[row]) for row in members]
        return pd.DataFrame(columns, index=features.index)
    predictions = bundle.predict(matrix)
    out = {PREDICTION: predictions}
    for level, (low, high) in bundle.intervals(predictions, matrix).items():
        lo_name, hi_name = interval_columns([level])
        out[lo_name], out[hi_name] = low, high
    return pd.DataFrame(out, index=features.index)


def score(spark: SparkSession, frame: DataFrame, bundle: ModelBundle, run_id: str,
          loads: Any = None) -> DataFrame:
    """``frame`` (the model's features among its columns) with predictions, intervals, model and run id.

    The bundle's files are broadcast once; each Python worker loads them once (``worker_bundle``) and
    scores its Arrow batches with ``inplace_predict`` in an iterator pandas UDF that receives only the
    model's feature columns (the other columns never leave the JVM). ``loads`` (an accumulator) counts
    worker loads."""
    import hashlib

    import pandas as pd
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    missing = [f for f in bundle.feature_names if f not in frame.columns]
    if missing:
        raise BatchPredictError(f"model {bundle.model_name} v{bundle.version} needs features {missing} that the "
                                f"use case's features.yaml does not produce (retrain, or pin a matching version)")
    files = bundle_files(bundle)
    digest = hashlib.sha256(b"".join(files[n] for n in sorted(files))).hexdigest()[:12]
    key = f"{bundle.model_name}-{bundle.version}-{digest}"
    shipped = spark.sparkContext.broadcast(files)
    typed = output_columns(bundle)
    outputs = [name for name, _ in typed]
    version = str(bundle.version)

    # Only module-level functions are referenced here: they are pickled by reference, so the workers use
    # this module's per-process bundle cache.
    def predict_batches(batches):  # type: ignore[no-untyped-def]
        worker = worker_bundle(key, shipped, version, loads=loads)
        for features in batches:
            yield predict_frame(features, worker)

    # Real (not string) annotations: Spark reads them to choose the iterator-of-batches UDF kind.
    predict_batches.__annotations__ = {"batches": Iterator[pd.DataFrame], "return": Iterator[pd.DataFrame]}
    spark_types = {"double": DoubleType(), "string": StringType()}
    predict_udf = F.pandas_udf(predict_batches, StructType([StructField(c, spark_types[t], True) for c, t in typed]))

    scored = "__atelier_scored"
    dropped = [c for c in frame.columns if c in (*outputs, *META_COLUMNS)]  # a feature may not shadow an output
    result = frame.drop(*dropped).withColumn(scored, predict_udf(F.struct(*[F.col(f) for f in bundle.feature_names])))
    meta = {"model_name": bundle.model_name, "model_version": version, "run_id": run_id}
    return result.select(*[c for c in result.columns if c != scored], *[F.col(f"{scored}.{c}").alias(c) for c in outputs],
                         *[F.lit(v).alias(k) for k, v in meta.items()])


# ------------------------------------------------------------------------------------------ the run
def read_predictions(spark: SparkSession, lake: Lake, usecase: str, days: list[date] | None = None) -> DataFrame:
    """The published predictions of a use case (all days, or only `days` of its date partition column, the
    entity table's: partition pruning). The version read is fixed when this is called."""
    from pyspark.sql import functions as F  # noqa: N812

    name = predictions_table(usecase)
    frame = spark.read.parquet(lake.path(name))
    if days is not None:
        partition_by = lake.info(name).partition_by
        if not partition_by:
            raise BatchPredictError(f"lake table '{name}' is not partitioned by date: it cannot be read by day")
        frame = frame.where(F.col(partition_by[0]).isin([F.lit(d) for d in days]))
    return frame


def read_entities(spark: SparkSession, lake: Lake, p: Plan) -> DataFrame:
    from pyspark.sql import functions as F  # noqa: N812

    frame = spark.read.parquet(lake.path(p.entity_table))
    return frame.where(F.col(p.partition_column).isin([F.lit(d) for d in p.days]))


def interval_feature_tables(spark: SparkSession, lake: Lake, features: FeatureSet,
                            p: Plan) -> dict[str, DataFrame]:
    """Each view's offline rows that can matter to the interval's entities: event time within the TTL
    before the interval (one extra day each side for entities whose local day straddles UTC days). The
    as-of join ignores older rows anyway, so this only prunes work (partition pruning on ``event_date``)."""
    from pyspark.sql import functions as F  # noqa: N812

    lo_day, hi_day = p.days[0] - timedelta(days=1), p.days[-1] + timedelta(days=2)
    tables = {}
    for view in features.batch_views:
        ttl = view.ttl or timedelta(0)
        lo = datetime.combine(lo_day, datetime.min.time(), UTC) - ttl
        hi = datetime.combine(hi_day, datetime.min.time(), UTC)
        frame = spark.read.parquet(lake.path(feature_table_name(features.usecase, view.name)))
        tables[view.name] = frame.where((F.col(EVENT_DATE) >= F.lit(lo.date())) & (F.col(EVENT_DATE) <= F.lit(hi.date()))
                                        & (F.col(EVENT_TIME) >= F.lit(lo)) & (F.col(EVENT_TIME) < F.lit(hi)))
    return tables


def features_frame(spark: SparkSession, lake: Lake, features: FeatureSet, p: Plan, entities: DataFrame,
                   defaults: dict[str, Any] | None = None) -> DataFrame:
    """The entities with their point-in-time features, by the training set's code. A missing or expired
    feature takes ``defaults`` (the bundle's, what the online API serves too) or else the spec's default."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.featurestore.offline import training_set

    assert features.label is not None
    frame = training_set(spark, lake, features, None, None, tables=interval_feature_tables(spark, lake, features, p),
                         labels=entities, with_defaults=False)
    defaults = defaults or {}
    for view in features.batch_views:
        for feature in view.features:
            value = defaults.get(feature.name, feature.default)
            frame = frame.withColumn(feature.name, F.coalesce(F.col(feature.name), F.lit(value).cast(
                frame.schema[feature.name].dataType)))
    # The label is what is being predicted: not known when scoring, never carried into the output.
    frame = frame.drop(features.label.column)
    partition = entities.select(p.key, p.partition_column)
    return frame.join(partition, p.key, "inner")


def interval_pairs(levels: list[str], prediction: str = PREDICTION) -> list[tuple[str, str]]:
    """``(a, b)`` column pairs with ``a >= b`` when intervals nest outwards around the prediction:
    lower_90 <= lower_80 <= prediction <= upper_80 <= upper_90 (levels ascending)."""
    cols = interval_columns(levels)
    lowers, uppers = cols[0::2], cols[1::2]
    pairs = [(prediction, lowers[0]), (uppers[0], prediction)]
    pairs += [(lowers[i], lowers[i + 1]) for i in range(len(lowers) - 1)]
    pairs += [(uppers[i + 1], uppers[i]) for i in range(len(uppers) - 1)]
    return pairs


def validate_output(frame: DataFrame, p: Plan, input_rows: int, levels: list[str], settings: Settings,
                    intervals: bool = True):
    """Great Expectations on the staged predictions (suite ``expectations/predictions``, parameters filled
    in; a classifier's output, ``intervals`` false, has no intervals to nest). Returns the report; raises
    ``ValidationFailed`` (report saved) on a violation."""
    from pipelines.quality.expectations import ValidationFailed, suite_with_params, validate_with_suites

    params: dict[str, Any] = {"input_rows": input_rows, "key": p.key, "partition": p.partition_column,
                              "ordered": interval_pairs(levels) if intervals else []}
    report = validate_with_suites({p.table: (frame, suite_with_params(SUITE, params))}, p.run_id)
    folder = settings.home_path / "reports" / p.usecase / "batch_predict" / _safe(p.run_id)
    report.save(folder)
    if not report.success:
        raise ValidationFailed(report)
    return report


def _safe(run_id: str) -> str:
    from pipelines.lake.tables import safe_name

    return safe_name(run_id)


def run(spark: SparkSession, settings: Settings, usecase: UseCase, p: Plan, loads: Any = None,
        bundle: ModelBundle | None = None) -> BatchResult:
    """Score the plan's interval and publish its partitions (see the module docstring). ``bundle`` (default:
    the plan's registered version, downloaded once) is for tests that score a bundle folder directly."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.lake.tables import write_partition_manifest
    from pipelines.models.registry import load_bundle

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    lake = Lake.from_settings(settings)
    features = load_feature_set(usecase)
    bundle = bundle or load_bundle(settings, p.model.name, version=p.model.version)
    if bundle.feature_spec_hash and usecase.path.joinpath("features.yaml").exists():
        from pipelines.models.bundle import feature_spec_hash

        current = feature_spec_hash(usecase.path.joinpath("features.yaml").read_text())
        if current != bundle.feature_spec_hash:
            log.warning("model %s v%s was trained with another features.yaml (hash %s, now %s): features are "
                        "computed by today's definitions", p.model.name, p.model.version,
                        bundle.feature_spec_hash, current)
    entities = read_entities(spark, lake, p)
    input_rows = entities.count()
    if input_rows == 0:
        raise BatchPredictError(f"empty interval: no rows of '{p.entity_table}' on {p.days[0]} .. {p.days[-1]}")
    timings["read_entities"] = time.perf_counter() - t0

    frame = features_frame(spark, lake, features, p, entities, bundle.feature_defaults)
    scored = score(spark, frame, bundle, p.run_id, loads)
    # One file per day, rows in key order: a re-run writes the same rows in the same order.
    scored = scored.repartition(F.col(p.partition_column)).sortWithinPartitions(p.key)
    lake.discard_staging(p.table, p.run_id)
    staged = lake.staging_path(p.table, p.run_id)
    t1 = time.perf_counter()
    scored.write.mode("overwrite").partitionBy(p.partition_column).parquet(str(staged))
    timings["join_score_write"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    written = spark.read.parquet(str(staged))
    counts = {str(r[0]): int(r[1]) for r in written.groupBy(p.partition_column).count().collect()}
    levels = [f"{level:g}" for level in bundle.calibration.levels]
    try:
        report = validate_output(written, p, input_rows, levels, settings, intervals=not bundle.is_classifier)
    except Exception:
        lake.discard_staging(p.table, p.run_id)
        raise
    timings["validate"] = time.perf_counter() - t2
    for value, rows in counts.items():
        write_partition_manifest(staged / f"{p.partition_column}={value}", rows=rows, run_id=p.run_id)
    version = lake.publish_partitions(p.table, p.run_id, column=p.partition_column, replace=p.day_values,
                                      columns=written.columns)
    timings["total"] = time.perf_counter() - t0
    return BatchResult(p.table, version, p.run_id, p.model.name, p.model.version, p.day_values, input_rows,
                       sum(counts.values()), dict(sorted(counts.items())), {k: round(v, 2) for k, v in timings.items()},
                       report.to_text().splitlines()[0])
