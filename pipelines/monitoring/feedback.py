"""The feedback loop on Spark: the prediction log and the outcomes as lake tables, their join, online metrics.

    served__<usecase>          the API's prediction log, one row per answer (deduplicated by request id),
                               partitioned by ``served_date`` (the day of the request's clock)
    outcomes__<usecase>        outcomes as they arrived (the outcome log), one row per label key (the
                               earliest arrival wins), partitioned by ``arrival_date``
    feedback__<usecase>        every online and batch prediction with its outcome: actual, error, covered
                               flags, label lag, or why there is none (``pending``, ``missing``, ``no_key``),
                               partitioned by ``prediction_day``
    online_metrics__<usecase>  per day, source (online/batch), model version and segment value: MAE, RMSE,
                               bias, coverage and width per level, fallback / stale / defaulted rates,
                               label-lag percentiles; partitioned by ``prediction_day``

A run over an interval ingests the interval's log and outcome days, then re-joins the prediction days from
``max_label_lag`` before the interval to its end with every outcome that arrived before the interval's end:
late labels update earlier days on a later run, and a re-run of the same interval publishes the same rows.
Each table is staged, checked by Great Expectations, and published partition by partition (an atomic
pointer swap): a failed check or a killed job leaves the published days as they were.

Log lines that are not whole JSON records (a crash mid-write), or lack the request id, the clock or the
prediction, are counted and reported, never published; a record seen twice (a rotated file re-read, a
retried request, a replay run twice) counts once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.batch.predict import interval_pairs, predictions_table
from pipelines.config import Settings
from pipelines.featurestore.spec import FeatureSet
from pipelines.lake.tables import Lake, write_partition_manifest
from pipelines.monitoring.spec import FeedbackSpec
from pipelines.quality.expectations import suite_with_params

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.usecases import UseCase

__all__ = ["FeedbackResult", "days_between", "feedback_table", "metrics_table", "outcomes_table", "run_feedback",
           "served_table"]

log = logging.getLogger("atelier.feedback")

SERVED_DATE, ARRIVAL_DATE, PREDICTION_DAY = "served_date", "arrival_date", "prediction_day"
CORRUPT = "_corrupt_record"
# How a spec type is read from a JSON log (ints as doubles: a default of 0.0 in an int feature must not make
# the record unreadable; cast afterwards) and what it is stored as.
READ_TYPES = {"string": "string", "double": "double", "int": "double", "bool": "boolean", "timestamp": "string",
              "date": "string"}
STORE_TYPES = {"string": "string", "double": "double", "int": "bigint", "bool": "boolean", "timestamp": "timestamp",
               "date": "date"}


def served_table(usecase: str) -> str:
    return f"served__{usecase}"


def outcomes_table(usecase: str) -> str:
    return f"outcomes__{usecase}"


def feedback_table(usecase: str) -> str:
    return f"feedback__{usecase}"


def metrics_table(usecase: str) -> str:
    return f"online_metrics__{usecase}"


def days_between(start: date, end: date) -> list[date]:
    """[start, end) day by day."""
    return [start + timedelta(days=i) for i in range((end - start).days)]


def level_suffix(level: str | float) -> str:
    return f"{float(level) * 100:g}".replace(".", "_")


@dataclass
class IngestReport:
    table: str
    days: list[str]
    lines: int = 0
    rejected: int = 0
    duplicates: int = 0
    rows: int = 0
    rows_by_day: dict[str, int] = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)
    version: str | None = None


@dataclass
class FeedbackResult:
    usecase: str
    run_id: str
    interval: list[str]
    rejoined_days: list[str]
    served: IngestReport
    outcomes: IngestReport
    feedback_rows: int
    label_status: dict[str, int]
    metrics_rows: int
    mlflow_logged: int
    calibrations: list[str]
    versions: dict[str, str | None]

    def to_text(self) -> str:
        s, o = self.served, self.outcomes
        lines = [
            f"feedback {self.usecase} {self.interval[0]}..{self.interval[-1]} (run {self.run_id})",
            f"  prediction log: {s.lines:,} lines, {s.rows:,} predictions, {s.duplicates:,} duplicates counted once, "
            f"{s.rejected:,} rejected (corrupt or incomplete)",
            f"  outcomes: {o.lines:,} lines, {o.rows:,} outcomes, {o.duplicates:,} duplicates, {o.rejected:,} rejected",
            f"  joined days {self.rejoined_days[0]}..{self.rejoined_days[-1]}: {self.feedback_rows:,} predictions "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.label_status.items())),
            f"  online metrics: {self.metrics_rows:,} rows; logged to MLflow for {self.mlflow_logged} version-day(s)",
            f"  intervals recalibrated: {', '.join(self.calibrations) or 'no (nothing labelled, or not configured)'}",
        ]
        for example in s.rejected_examples[:3]:
            lines.append(f"  rejected line: {example[:160]}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ reading logs


def _json_lines(spark: SparkSession, files: list[str], schema: Any) -> DataFrame:
    from pyspark.sql import functions as F  # noqa: N812

    frame = (spark.read.schema(schema).option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
             .json(files))
    # Spark refuses queries that read only the corrupt-record column of an uncached scan.
    return frame.withColumn("_source_file", F.input_file_name()).cache()


def _day_files(folder: Path, day: date) -> list[str]:
    part = folder / f"date={day.isoformat()}"
    return sorted(str(p) for p in part.glob("*.jsonl")) if part.is_dir() else []


def _log_schema(usecase: UseCase, features: FeatureSet, output: str) -> Any:
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DoubleType,
        MapType,
        StringType,
        StructField,
        StructType,
        _parse_datatype_string,
    )

    from pipelines.interface import outcome_key_columns, request_columns

    request = {**request_columns(usecase, features), **outcome_key_columns(usecase, features)}
    request_struct = StructType([StructField(c, _parse_datatype_string(READ_TYPES[t])) for c, (t, _) in
                                 request.items()])
    feature_struct = StructType([StructField(f.name, _parse_datatype_string(READ_TYPES.get(f.dtype, "double")))
                                 for v in features.views.values() for f in v.features])
    view_report = StructType([StructField("age_seconds", DoubleType()), StructField("status", StringType()),
                              StructField("action", StringType())])
    return StructType([
        StructField("request_id", StringType()), StructField("usecase", StringType()),
        StructField("as_of", StringType()), StructField("logged_at", StringType()),
        StructField("prediction", StructType([StructField(output, DoubleType())])),
        StructField("interval", MapType(StringType(), StructType([StructField(output, ArrayType(DoubleType()))]))),
        StructField("confidence", StructType([StructField("level", StringType())])),
        StructField("model", StructType([StructField("name", StringType()), StructField("version", StringType()),
                                         StructField("runtime", StringType())])),
        StructField("features", MapType(StringType(), view_report)),
        StructField("degraded", BooleanType()),
        StructField("route", StringType()), StructField("calibration", StringType()),
        StructField("request", request_struct), StructField("features_used", feature_struct),
        StructField(CORRUPT, StringType()),
    ]), request


def _outcome_schema(spec: FeedbackSpec, usecase: UseCase) -> Any:
    from pyspark.sql.types import StringType, StructField, StructType, _parse_datatype_string

    label = spec.label
    schema = usecase.tables[label.source].output_schema
    fields = [StructField(k, _parse_datatype_string(READ_TYPES[schema[k]])) for k in label.keys]
    fields += [StructField(label.column, _parse_datatype_string(READ_TYPES.get(schema[label.column], "double"))),
               StructField("event_time", StringType()), StructField("outcome_time", StringType()),
               StructField("arrived_at", StringType()), StructField("source", StringType()),
               StructField(CORRUPT, StringType())]
    return StructType(fields)


def _typed(column: Column, dtype: str) -> Column:
    if dtype == "timestamp":
        return _timestamp(column)
    return column.cast(STORE_TYPES.get(dtype, "double"))


def _timestamp(column: Column) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    return F.to_timestamp(column)


def _stage_days(lake: Lake, name: str, run_id: str, frame: DataFrame, column: str, days: list[str],
                suite: dict[str, Any], order: list[str]) -> tuple[str, dict[str, int]]:
    """Write the frame partitioned by ``column`` into staging, validate it, replace exactly ``days``."""
    from pyspark.sql import functions as F  # noqa: N812

    from pipelines.quality.expectations import ValidationFailed, validate_with_suites

    spark = frame.sparkSession
    order = [c for c in order if c in frame.columns]  # an interval with nothing in it has no other columns
    lake.discard_staging(name, run_id)
    staged = lake.staging_path(name, run_id)
    (frame.repartition(F.col(column)).sortWithinPartitions(*order)
     .write.mode("overwrite").partitionBy(column).parquet(str(staged)))
    written = spark.read.parquet(str(staged)) if any(staged.glob(f"{column}=*")) else None
    counts: dict[str, int] = {}
    if written is not None:
        counts = {str(r[0]): int(r[1]) for r in written.groupBy(column).count().collect()}
        report = validate_with_suites({name: (written, suite)}, run_id)
        if not report.success:
            lake.discard_staging(name, run_id)
            raise ValidationFailed(report)
    else:
        staged.mkdir(parents=True, exist_ok=True)
    for value, rows in counts.items():
        write_partition_manifest(staged / f"{column}={value}", rows=rows, run_id=run_id)
    columns = written.columns if written is not None else frame.columns
    version = lake.publish_partitions(name, run_id, column=column, replace=days, columns=columns)
    return version, counts


# ---------------------------------------------------------------------------------------------- served table


def ingest_served(spark: SparkSession, settings: Settings, usecase: UseCase, features: FeatureSet,
                  levels: list[str], output: str, days: list[date], run_id: str) -> IngestReport:
    """The days' prediction-log files -> ``served__<usecase>`` (those days replaced)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    lake = Lake.from_settings(settings)
    name = served_table(usecase.name)
    folder = settings.prediction_log_path / usecase.name
    files = [f for d in days for f in _day_files(folder, d)]
    report = IngestReport(name, [d.isoformat() for d in days])
    schema, request = _log_schema(usecase, features, output)
    if files:
        raw = _json_lines(spark, files, schema)
        report.lines = raw.count()
        complete = (F.col(CORRUPT).isNull() & F.col("request_id").isNotNull() & F.col("as_of").isNotNull()
                    & _timestamp(F.col("as_of")).isNotNull() & F.col(f"prediction.{output}").isNotNull())
        bad = raw.where(~complete)
        report.rejected = bad.count()
        report.rejected_examples = [r[0] or "(fields missing)" for r in bad.select(CORRUPT).limit(3).collect()]
        good = raw.where(complete)
        first = Window.partitionBy("request_id").orderBy(F.col("logged_at").asc_nulls_last(), "_source_file")
        good = good.withColumn("_n", F.row_number().over(first))
        unique = good.where("_n = 1")
        request_cols = [_typed(F.col(f"request.{c}"), t).alias(c) for c, (t, _) in request.items()]
        feature_cols = [_typed(F.col(f"features_used.{f.name}"), f.dtype).alias(f.name)
                        for v in features.views.values() for f in v.features]
        as_of = _timestamp(F.col("as_of"))
        interval_cols = []
        for level in levels:
            bounds = F.col("interval").getItem(level).getField(output)
            interval_cols += [bounds.getItem(0).alias(f"lower_{level_suffix(level)}"),
                              bounds.getItem(1).alias(f"upper_{level_suffix(level)}")]
        statuses = F.map_values(F.col("features"))
        frame = unique.select(
            "request_id", "usecase", as_of.alias("as_of"), _timestamp(F.col("logged_at")).alias("logged_at"),
            F.col("model.name").alias("model_name"), F.col("model.version").alias("model_version"),
            F.col("model.runtime").alias("runtime"), F.coalesce(F.col("route"), F.lit("primary")).alias("route"),
            F.col("calibration"),
            F.col(f"prediction.{output}").alias("prediction"), *interval_cols,
            F.coalesce(F.col("degraded"), F.lit(False)).alias("degraded"),
            (F.col("model.runtime") == "fallback").alias("fallback"),
            F.col("confidence.level").alias("confidence"),
            F.size(F.filter(statuses, lambda s: s.getField("action") == "default")).alias("views_defaulted"),
            F.size(F.filter(statuses, lambda s: s.getField("status") == "stale")).alias("views_stale"),
            F.map_from_entries(F.transform(F.map_entries(F.col("features")), lambda e: F.struct(
                e.getField("key"), e.getField("value").getField("status")))).alias("feature_status"),
            F.map_from_entries(F.transform(F.map_entries(F.col("features")), lambda e: F.struct(
                e.getField("key"), e.getField("value").getField("age_seconds")))).alias("feature_age_s"),
            F.struct(*request_cols).alias("request"), F.struct(*feature_cols).alias("features"),
            F.date_format(as_of, "yyyy-MM-dd").alias(SERVED_DATE),
        ).where(F.col(SERVED_DATE).isin(report.days))
        report.duplicates = good.count() - unique.count()
    else:
        frame = spark.createDataFrame([], "request_id string, served_date string")
    params = {"partition": SERVED_DATE, "ordered": interval_pairs(levels)}
    report.version, report.rows_by_day = _stage_days(lake, name, run_id, frame, SERVED_DATE, report.days,
                                                     suite_with_params("served", params), [SERVED_DATE, "request_id"])
    report.rows = sum(report.rows_by_day.values())
    return report


# -------------------------------------------------------------------------------------------- outcomes table


def ingest_outcomes(spark: SparkSession, settings: Settings, usecase: UseCase, spec: FeedbackSpec,
                    days: list[date], run_id: str) -> IngestReport:
    """The days' outcome-log files -> ``outcomes__<usecase>`` (those arrival days replaced)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    lake = Lake.from_settings(settings)
    name = outcomes_table(usecase.name)
    label = spec.label
    files = [f for d in days for f in _day_files(settings.outcome_log_path / usecase.name, d)]
    report = IngestReport(name, [d.isoformat() for d in days])
    if files:
        raw = _json_lines(spark, files, _outcome_schema(spec, usecase))
        report.lines = raw.count()
        complete = F.col(CORRUPT).isNull() & _timestamp(F.col("arrived_at")).isNotNull()
        for k in label.keys:
            complete = complete & F.col(k).isNotNull()
        bad = raw.where(~complete)
        report.rejected = bad.count()
        report.rejected_examples = [r[0] or "(fields missing)" for r in bad.select(CORRUPT).limit(3).collect()]
        good = raw.where(complete).select(
            *label.keys, F.col(label.column).cast("double").alias(label.column),
            _timestamp(F.col("event_time")).alias("event_time"), _timestamp(F.col("outcome_time")).alias("outcome_time"),
            _timestamp(F.col("arrived_at")).alias("arrived_at"), F.coalesce(F.col("source"), F.lit("log")).alias("source"),
            "_source_file")
        first = Window.partitionBy(*label.keys).orderBy("arrived_at", "_source_file")
        ranked = good.withColumn("_n", F.row_number().over(first))
        unique = ranked.where("_n = 1").drop("_n", "_source_file")
        report.duplicates = good.count() - unique.count()
        frame = unique.withColumn(ARRIVAL_DATE, F.date_format("arrived_at", "yyyy-MM-dd")).where(
            F.col(ARRIVAL_DATE).isin(report.days))
    else:
        frame = spark.createDataFrame([], f"{label.keys[0]} string, {ARRIVAL_DATE} string")
    report.version, report.rows_by_day = _stage_days(lake, name, run_id, frame, ARRIVAL_DATE, report.days,
                                                     suite_with_params("outcomes", {"partition": ARRIVAL_DATE, "keys": [*label.keys, ARRIVAL_DATE]}),
                                                     [ARRIVAL_DATE, *label.keys])
    report.rows = sum(report.rows_by_day.values())
    return report


# ---------------------------------------------------------------------------------------------------- join


def _segment(frame_columns: set[str], request_columns: set[str], column: str, online: bool) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    if online:
        source = F.col(f"request.{column}") if column in request_columns else F.col(f"features.{column}")
    elif column in frame_columns:
        source = F.col(column)
    else:
        return F.lit(None).cast("string")
    return source.cast("string")


def build_feedback(spark: SparkSession, settings: Settings, usecase: UseCase, features: FeatureSet,
                   spec: FeedbackSpec, levels: list[str], days: list[str], cutoff: datetime,
                   calibration_segment: str | None = None) -> DataFrame:
    """Online and batch predictions of ``days`` with the outcomes that arrived before ``cutoff``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    lake = Lake.from_settings(settings)
    label = spec.label
    intervals = [f"{side}_{level_suffix(lv)}" for lv in levels for side in ("lower", "upper")]
    parts = []
    served = lake.read_partitions(spark, served_table(usecase.name), SERVED_DATE, days)
    if served is not None:
        request_columns = {f.name for f in served.schema["request"].dataType.fields}
        parts.append(served.select(
            F.lit("online").alias("source"), F.col("request_id").alias("prediction_id"),
            F.col(SERVED_DATE).alias(PREDICTION_DAY), F.col("as_of").alias("predicted_at"),
            "model_name", "model_version", "route", "calibration",
            *[F.col(f"request.{k}").alias(k) for k in label.keys],
            *[_segment(set(), request_columns, c, True).alias(f"seg__{s}") for s, c in spec.segments.items()],
            (F.col(f"features.{calibration_segment}").cast("double") if calibration_segment
             else F.lit(None).cast("double")).alias("cal_segment"),
            "prediction", *intervals, "fallback", "degraded", "views_defaulted", "views_stale"))
    partition = usecase.tables[label.source].partition_by
    if partition:
        batch = lake.read_partitions(spark, predictions_table(usecase.name), partition[0], days)
        if batch is not None:
            columns = set(batch.columns)
            key_id = F.concat_ws("|", *[F.col(k).cast("string") for k in label.keys])
            parts.append(batch.select(
                F.lit("batch").alias("source"), F.concat(F.lit("batch-"), key_id).alias("prediction_id"),
                F.col(partition[0]).cast("string").alias(PREDICTION_DAY),
                (F.col(label.event_time) if label.event_time in columns else F.lit(None).cast("timestamp"))
                .alias("predicted_at"),
                "model_name", F.col("model_version").cast("string").alias("model_version"),
                F.lit("batch").alias("route"), F.lit(None).cast("string").alias("calibration"),
                *label.keys,
                *[_segment(columns, set(), c, False).alias(f"seg__{s}") for s, c in spec.segments.items()],
                (F.col(calibration_segment).cast("double") if calibration_segment in columns
                 else F.lit(None).cast("double")).alias("cal_segment"),
                "prediction", *intervals, F.lit(False).alias("fallback"), F.lit(False).alias("degraded"),
                F.lit(0).alias("views_defaulted"), F.lit(0).alias("views_stale")))
    if not parts:
        return spark.createDataFrame([], f"source string, prediction_id string, {PREDICTION_DAY} string")
    predictions = parts[0]
    for part in parts[1:]:
        predictions = predictions.unionByName(part)

    outcomes = spark.read.parquet(lake.path(outcomes_table(usecase.name))) if lake.current_version(
        outcomes_table(usecase.name)) else None
    if outcomes is not None:
        outcomes = outcomes.where(F.col("arrived_at") < F.lit(cutoff))
        first = Window.partitionBy(*label.keys).orderBy("arrived_at")
        outcomes = (outcomes.withColumn("_n", F.row_number().over(first)).where("_n = 1")
                    .select(*label.keys, F.col(label.column).alias("actual"), "arrived_at"))
        joined = predictions.join(outcomes, list(label.keys), "left")
    else:
        joined = predictions.withColumn("actual", F.lit(None).cast("double")).withColumn(
            "arrived_at", F.lit(None).cast("timestamp"))
    has_key = F.lit(True)
    for k in label.keys:
        has_key = has_key & F.col(k).isNotNull()
    lag_limit = int(spec.max_label_lag.total_seconds())
    waited = F.unix_timestamp(F.lit(cutoff)) - F.unix_timestamp("predicted_at")
    status = (F.when(~has_key, "no_key").when(F.col("actual").isNotNull(), "labelled")
              .when(F.col("arrived_at").isNotNull(), "missing")  # arrived without a value: e.g. cancelled
              .when(waited > lag_limit, "missing").otherwise("pending"))
    out = joined.withColumn("label_status", status).withColumn("error", F.col("prediction") - F.col("actual"))
    out = out.withColumn("abs_error", F.abs("error"))
    for lv in levels:
        sfx = level_suffix(lv)
        out = out.withColumn(f"covered_{sfx}", F.when(F.col("actual").isNotNull(), (
            (F.col("actual") >= F.col(f"lower_{sfx}")) & (F.col("actual") <= F.col(f"upper_{sfx}")))))
        out = out.withColumn(f"width_{sfx}", F.col(f"upper_{sfx}") - F.col(f"lower_{sfx}"))
    out = out.withColumn("label_lag_s", F.when(F.col("actual").isNotNull(), (
        F.unix_micros("arrived_at") - F.unix_micros("predicted_at")) / 1e6))
    return out


def online_metrics(feedback: DataFrame, spec: FeedbackSpec, levels: list[str]) -> DataFrame:
    """Per day, source, model version and segment value (``all`` overall): the metrics of the module doc."""
    from pyspark.sql import functions as F  # noqa: N812

    labelled = F.col("label_status") == "labelled"

    def when_labelled(column: Column) -> Column:
        return F.when(labelled, column)

    aggregations = [
        F.count(F.lit(1)).alias("predictions"), F.sum(labelled.cast("int")).alias("labelled"),
        F.sum((F.col("label_status") == "missing").cast("int")).alias("missing"),
        F.sum((F.col("label_status") == "pending").cast("int")).alias("pending"),
        F.sum((F.col("label_status") == "no_key").cast("int")).alias("no_key"),
        F.avg(when_labelled(F.col("abs_error"))).alias("mae"),
        F.sqrt(F.avg(when_labelled(F.col("error") * F.col("error")))).alias("rmse"),
        F.avg(when_labelled(F.col("error"))).alias("bias"),
    ]
    for lv in levels:
        sfx = level_suffix(lv)
        aggregations += [F.avg(when_labelled(F.col(f"covered_{sfx}").cast("double"))).alias(f"coverage_{sfx}"),
                         F.avg(when_labelled(F.col(f"width_{sfx}"))).alias(f"width_{sfx}")]
    aggregations += [
        F.avg(F.col("fallback").cast("double")).alias("fallback_rate"),
        F.avg((F.col("views_stale") > 0).cast("double")).alias("stale_rate"),
        F.avg((F.col("views_defaulted") > 0).cast("double")).alias("defaulted_rate"),
        F.percentile(when_labelled(F.col("label_lag_s")), 0.5).alias("label_lag_p50_s"),
        F.percentile(when_labelled(F.col("label_lag_s")), 0.9).alias("label_lag_p90_s"),
        F.percentile(when_labelled(F.col("label_lag_s")), 0.99).alias("label_lag_p99_s"),
    ]
    keys = [PREDICTION_DAY, "source", "model_name", "model_version"]
    frames = [feedback.groupBy(*keys).agg(*aggregations).select(
        *keys, F.lit("all").alias("segment"), F.lit("all").alias("segment_value"),
        *[a for a in _agg_names(levels)])]
    for segment in spec.segments:
        column = f"seg__{segment}"
        frames.append(feedback.groupBy(*keys, column).agg(*aggregations).select(
            *keys, F.lit(segment).alias("segment"), F.coalesce(F.col(column), F.lit("(null)")).alias("segment_value"),
            *_agg_names(levels)))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def _agg_names(levels: list[str]) -> list[str]:
    names = ["predictions", "labelled", "missing", "pending", "no_key", "mae", "rmse", "bias"]
    for lv in levels:
        names += [f"coverage_{level_suffix(lv)}", f"width_{level_suffix(lv)}"]
    return names + ["fallback_rate", "stale_rate", "defaulted_rate", "label_lag_p50_s", "label_lag_p90_s",
                    "label_lag_p99_s"]


# ----------------------------------------------------------------------------------------------- the whole run


def run_feedback(spark: SparkSession, settings: Settings, usecase: UseCase, start: date, end: date,
                 run_id: str, *, log_to_mlflow: bool | None = None) -> FeedbackResult:
    """Ingest the interval [start, end)'s log and outcome days, re-join and measure (see the module doc)."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.interface import OutputSpec
    from pipelines.monitoring.spec import load_feedback_spec
    from pipelines.training.spec import load_model_spec

    if start >= end:
        raise ValueError(f"empty interval: {start} is not before {end}")
    features = load_feature_set(usecase)
    spec = load_feedback_spec(usecase, features)
    model = load_model_spec(usecase)
    levels = [f"{lv:g}" for lv in model.calibration.levels]
    output = OutputSpec.load(usecase, spec.label.column).name
    lake = Lake.from_settings(settings)
    interval = days_between(start, end)
    served = ingest_served(spark, settings, usecase, features, levels, output, interval, run_id)
    outcomes = ingest_outcomes(spark, settings, usecase, spec, interval, run_id)

    lag_days = max(1, -(-int(spec.max_label_lag.total_seconds()) // 86400))
    rejoin = [d.isoformat() for d in days_between(start - timedelta(days=lag_days), end)]
    cutoff = datetime(end.year, end.month, end.day, tzinfo=UTC)
    joined = build_feedback(spark, settings, usecase, features, spec, levels, rejoin, cutoff,
                            model.calibration.segment_by).cache()
    feedback_version, feedback_counts = _stage_days(
        lake, feedback_table(usecase.name), run_id, joined, PREDICTION_DAY, rejoin,
        suite_with_params("feedback", {"partition": PREDICTION_DAY}),
        [PREDICTION_DAY, "source", "prediction_id"])
    status = {r[0]: int(r[1]) for r in joined.groupBy("label_status").count().collect()} if feedback_counts else {}
    metrics = online_metrics(joined, spec, levels) if feedback_counts else spark.createDataFrame(
        [], f"{PREDICTION_DAY} string")
    metrics_version, metrics_counts = _stage_days(
        lake, metrics_table(usecase.name), run_id, metrics, PREDICTION_DAY, rejoin,
        suite_with_params("online_metrics", {"partition": PREDICTION_DAY}),
        [PREDICTION_DAY, "source", "model_version", "segment", "segment_value"])
    joined.unpersist()
    recalibrated: list[str] = []
    if spec.recalibration is not None and feedback_counts:
        from pipelines.monitoring.recalibration import recalibrate_days

        records = recalibrate_days(spark, settings, usecase, interval, spec.recalibration)
        recalibrated = sorted({r["id"] for r in records if r["as_of"] == max(x["as_of"] for x in records)})
    logged = 0
    if (settings.feedback.mlflow_logging if log_to_mlflow is None else log_to_mlflow) and metrics_counts:
        logged = log_online_metrics(settings, spark.read.parquet(lake.path(metrics_table(usecase.name)))
                                    .where("segment = 'all' AND source = 'online'")
                                    .where(_in_days(rejoin)).toPandas(), levels)
    return FeedbackResult(usecase.name, run_id, [d.isoformat() for d in interval], rejoin, served, outcomes,
                          sum(feedback_counts.values()), status, sum(metrics_counts.values()), logged, recalibrated,
                          {"served": served.version, "outcomes": outcomes.version, "feedback": feedback_version,
                           "online_metrics": metrics_version})


def _in_days(days: list[str]) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    return F.col(PREDICTION_DAY).isin(days)


ONLINE_METRICS_LOGGED = ("mae", "rmse", "bias", "labelled", "predictions", "fallback_rate", "stale_rate",
                         "defaulted_rate", "label_lag_p50_s")


def log_online_metrics(settings: Settings, frame: Any, levels: list[str]) -> int:
    """Log each (version, day)'s overall online metrics to that version's MLflow run, as ``online_<metric>``
    with the day as timestamp and step (days since 1970): the registry shows online beside offline figures,
    and a re-run logs the same points. Returns the version-days logged."""
    import math

    from mlflow.entities import Metric

    from pipelines.models.registry import client, resolve_version

    names = [*ONLINE_METRICS_LOGGED, *[f"{m}_{level_suffix(lv)}" for lv in levels for m in ("coverage", "width")]]
    c = client(settings)
    runs: dict[tuple[str, str], str] = {}
    logged = 0
    for row in frame.sort_values([PREDICTION_DAY]).itertuples(index=False):
        key = (row.model_name, str(row.model_version))
        if key not in runs:
            runs[key] = resolve_version(settings, key[0], version=key[1], mlflow_client=c).run_id
        value = getattr(row, PREDICTION_DAY)
        day = value if isinstance(value, date) else date.fromisoformat(str(value))
        ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        step = (day - date(1970, 1, 1)).days
        metrics = [Metric(f"online_{n}", float(getattr(row, n)), ts, step) for n in names
                   if getattr(row, n) is not None and not (isinstance(getattr(row, n), float)
                                                           and math.isnan(getattr(row, n)))]
        if metrics:
            c.log_batch(runs[key], metrics=metrics)
            logged += 1
    for (name, version), _ in runs.items():
        latest = frame[(frame.model_name == name) & (frame.model_version.astype(str) == version)].sort_values(
            PREDICTION_DAY).iloc[-1]
        c.set_model_version_tag(name, version, "atelier.online", json.dumps({
            "day": str(latest[PREDICTION_DAY]), "mae": _num(latest["mae"]), "labelled": int(latest["labelled"]),
            **{f"coverage_{level_suffix(lv)}": _num(latest[f"coverage_{level_suffix(lv)}"]) for lv in levels}}))
    return logged


def _num(value: Any) -> float | None:
    import math

    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def check_served_skew(spark: SparkSession, settings: Settings, usecase: UseCase, start: date, end: date,
                      run_id: str) -> Any:
    """The served-feature skew check (:mod:`pipelines.monitoring.served_skew`) on the interval's served
    predictions; None when nothing was served in it. Raises ``ServedSkewDetected`` above the spec's threshold."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.monitoring.served_skew import served_skew

    features = load_feature_set(usecase)
    lake = Lake.from_settings(settings)
    served = lake.read_partitions(spark, served_table(usecase.name), SERVED_DATE,
                        [d.isoformat() for d in days_between(start, end)])
    if served is None:
        return None
    return served_skew(spark, lake, features, served, sample=features.skew_check.sample_size, seed=0,
                       run_id=run_id, home=settings.home_path)


def feedback_labels(spark: SparkSession, lake: Lake, features: FeatureSet, start: datetime,
                    end: datetime) -> tuple[DataFrame, dict[str, Any]]:
    """Training labels of [start, end): the label source's rows, where the feedback loop's labelled online
    answers replace them (their logged request columns and the outcome that arrived), plus the lineage:
    the outcome tables and their versions, the days and the rows used."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    label = features.label
    assert label is not None
    usecase = features.usecase
    joined = (spark.read.parquet(lake.path(feedback_table(usecase)))
              .where((F.col("source") == "online") & (F.col("label_status") == "labelled")
                     & (F.col("predicted_at") >= F.lit(start)) & (F.col("predicted_at") < F.lit(end)))
              .select(F.col("prediction_id").alias("request_id"), F.col("actual"),
                      F.col(PREDICTION_DAY).cast("string").alias(PREDICTION_DAY)))
    served = spark.read.parquet(lake.path(served_table(usecase))).select("request_id", "request")
    rows = joined.join(served, "request_id").select("request.*", F.col("actual").alias(label.column),
                                                    PREDICTION_DAY, "request_id")
    first = Window.partitionBy(*label.keys).orderBy(PREDICTION_DAY, "request_id")
    rows = rows.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n", "request_id").cache()
    days = sorted(r[0] for r in rows.select(PREDICTION_DAY).distinct().collect())
    used = rows.count()
    rows = rows.drop(PREDICTION_DAY)
    source = spark.read.parquet(lake.path(label.source)).where(F.col(label.column).isNotNull())
    merged = source.join(rows.select(*label.keys), list(label.keys), "left_anti").unionByName(
        rows, allowMissingColumns=True)
    lineage = {"tables": {t: lake.current_version(t) for t in (feedback_table(usecase), served_table(usecase),
                                                              outcomes_table(usecase))},
               "days": days, "rows": used, "replaces": f"{label.source}.{label.column} for those keys"}
    return merged, lineage
