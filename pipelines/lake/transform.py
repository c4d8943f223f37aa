"""Turn a source into a typed lake table: explicit schema, derived columns (UTC timestamps), partitioning.

Everything here is driven by the use case's ``sources.yaml``; nothing is specific to one data set.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.usecases import Derivation, TableSpec, TimezoneSpec

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import Column, DataFrame, SparkSession


class SourceError(ValueError):
    """A source cannot be read, or does not match its declared schema."""


def load_python_object(ref: str, args: Sequence[Any] = ()) -> pd.DataFrame:
    """The DataFrame ``module:attribute`` names: the attribute, or its result when callable (with ``args``)."""
    module_name, attr = ref.split(":", 1)
    try:
        with warnings.catch_warnings():  # a data package that still imports pkg_resources warns on import
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"source object '{ref}' cannot be loaded: {exc}") from exc
    if args and not callable(obj):
        raise SourceError(f"source object '{ref}' is not callable: it takes no args (got {list(args)})")
    try:
        frame = obj(*args) if callable(obj) else obj
    except Exception as exc:  # noqa: BLE001 - the package's own error, named with the source
        raise SourceError(f"source object '{ref}'{f' with args {list(args)}' if args else ''} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise SourceError(f"source object '{ref}' is a {type(frame).__name__}, not a pandas DataFrame")
    return frame


def read_source(spark: SparkSession, name: str, spec: TableSpec, path_override: str | None = None) -> DataFrame:
    """Read the raw source as it is, every declared column present (as strings for text files)."""
    from pyspark.sql import functions as F  # noqa: N812

    declared = list(spec.columns)
    if path_override or spec.source.kind in ("csv", "parquet"):
        path = path_override or spec.source.path  # type: ignore[union-attr]
        if "://" not in path and not Path(path).exists():
            where = "the --source path" if path_override else f"tables.{name}.source.path"
            raise SourceError(f"table '{name}': {where} {path!r} does not exist")
        fmt = "parquet" if path.endswith(".parquet") or (not path_override and spec.source.kind == "parquet") else "csv"
        reader = spark.read.option("header", "true").option("mode", "FAILFAST") if fmt == "csv" else spark.read
        raw = reader.format(fmt).load(path)
    else:
        frame = load_python_object(spec.source.object, spec.source.args)  # type: ignore[union-attr]
        missing = [c for c in declared if c not in frame.columns]
        if missing:
            raise SourceError(f"table '{name}': source lacks declared column(s) {missing}")
        frame = frame[declared].copy()
        # Text columns: pandas marks missing values with NaN (a float); Spark needs real nulls.
        for col in frame.columns:
            if frame[col].dtype == object:
                frame[col] = frame[col].astype("string").astype(object).where(frame[col].notna(), None)
        raw = spark.createDataFrame(frame)
    missing = [c for c in declared if c not in raw.columns]
    if missing:
        raise SourceError(f"table '{name}': source lacks declared column(s) {missing}")
    return raw.select(*[F.col(c) for c in declared])


def apply_schema(name: str, raw: DataFrame, spec: TableSpec) -> DataFrame:
    """Cast every column to its declared type; NaN becomes null (missing is null in the lake).

    A value that is present but does not fit its declared type is an error naming the column, never a null.
    """
    from pyspark.sql import functions as F  # noqa: N812

    raw_types = dict(raw.dtypes)

    def present(col: Column, dtype: str) -> Column:
        return col.isNotNull() & ~F.isnan(col) if dtype in ("double", "float") else col.isNotNull()

    def typed_column(c: str, t: str) -> Column:
        if t in ("int", "bigint") and raw_types[c] in ("string", "double", "float"):
            # "517.0" (text files written from float columns) is the integer 517; 517.5 is not an integer.
            number = F.col(c).try_cast("double")
            return F.when(~F.isnan(number) & (number == F.floor(number)), number.try_cast(t))
        value = F.col(c).try_cast(t)
        return F.when(F.isnan(value), F.lit(None)).otherwise(value) if t == "double" else value

    typed = raw.select(*[typed_column(c, t).alias(c) for c, t in spec.columns.items()])
    lost = raw.select(*[
        F.sum((present(F.col(c), raw_types[c]) & typed_column(c, t).isNull()).cast("int")).alias(c)
        for c, t in spec.columns.items()
    ]).first()
    bad = {c: lost[c] for c in spec.columns if lost[c]}
    if bad:
        detail = ", ".join(f"{c} ({n} value(s) not {spec.columns[c]})" for c, n in bad.items())
        raise SourceError(f"table '{name}': values do not match the declared schema: {detail}")
    return typed


def _part(value: str | int) -> Column:
    """A date part or clock time: a column, or a constant."""
    from pyspark.sql import functions as F  # noqa: N812

    return F.lit(value) if isinstance(value, int) else F.col(value)


def _local_time(df: DataFrame, deriv: Derivation, lookups: dict[str, DataFrame], out: str) -> DataFrame:
    from pyspark.sql import functions as F  # noqa: N812

    spec = deriv.local_time
    assert spec is not None
    year, month, day = (_part(c) for c in spec.date)
    hhmm = _part(spec.hhmm)
    minutes = F.floor(hhmm / 100) * 60 + (hhmm % 100)  # hhmm may be 2400: midnight of the next day
    wall_clock = F.timestamp_add("MINUTE", minutes, F.make_timestamp(year, month, day, F.lit(0), F.lit(0), F.lit(0)))
    tz_col = f"__tz_{out}"
    if isinstance(deriv.timezone, TimezoneSpec):
        lk = deriv.timezone.lookup
        table = lookups[lk.table].select(F.col(lk.key).alias(f"__key_{out}"), F.col(lk.column).alias(tz_col))
        df = df.join(F.broadcast(table), df[lk.match] == F.col(f"__key_{out}"), "left").drop(f"__key_{out}")
        if deriv.timezone.fallback:
            pairs = [F.lit(x) for kv in sorted(deriv.timezone.fallback.items()) for x in kv]
            df = df.withColumn(tz_col, F.coalesce(F.col(tz_col), F.create_map(*pairs)[F.col(lk.match)]))
    else:
        df = df.withColumn(tz_col, F.lit(deriv.timezone))
    # With the session time zone at UTC, the wall clock is read in the row's zone and converted to UTC;
    # java.time rules decide DST gaps (shifted forward) and overlaps (the earlier offset).
    value = F.when(F.col(tz_col).isNull(), F.lit(None)).otherwise(F.to_utc_timestamp(wall_clock, F.col(tz_col)))
    df = df.withColumn(out, value)
    if deriv.not_before:
        df = df.withColumn(out, F.when(F.col(out) < F.col(deriv.not_before),
                                       F.timestamp_add("DAY", F.lit(1), F.col(out))).otherwise(F.col(out)))
    return df.drop(tz_col)


def derive_column(deriv: Derivation) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    if deriv.utc_timestamp:
        return F.try_to_timestamp(F.col(deriv.utc_timestamp), F.lit("yyyy-MM-dd'T'HH:mm:ssX"))
    if deriv.date_parts:
        y, m, d = (_part(c) for c in deriv.date_parts)
        return F.make_date(y, m, d)
    if deriv.add_minutes:
        base, minutes = deriv.add_minutes
        return F.timestamp_micros(F.unix_micros(F.col(base)) + F.round(F.col(minutes) * 60_000_000).cast("long"))
    if deriv.concat:
        return F.concat_ws(deriv.sep, *[F.col(c).cast("string") for c in deriv.concat])
    raise AssertionError(f"unhandled derivation {deriv.kind}")


def derive(df: DataFrame, spec: TableSpec, lookups: dict[str, DataFrame]) -> DataFrame:
    for out, deriv in spec.derive.items():
        if deriv.local_time is not None:
            df = _local_time(df, deriv, lookups, out)
        else:
            df = df.withColumn(out, derive_column(deriv))
    return df.select(*spec.output_columns)


def build_table(spark: SparkSession, name: str, spec: TableSpec, lookups: dict[str, DataFrame],
                path_override: str | None = None) -> DataFrame:
    raw = read_source(spark, name, spec, path_override)
    return derive(apply_schema(name, raw, spec), spec, lookups)
