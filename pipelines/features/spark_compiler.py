"""Spark compiler: typed tree -> a pyspark ``Column`` (the offline, batch evaluator).

Written for ANSI mode (Spark 4's default) and independent of the session time zone: integer arithmetic
is exact decimal arithmetic cast back with ``try_cast`` (overflow -> null, never re-associated), division is ``try_divide`` (x / 0 -> null), every double operation that
can produce NaN is wrapped in ``nanvl(x, null)``, and time-zone conversions go through
``from_utc_timestamp`` + integer arithmetic on epoch microseconds instead of the session-zone field
extractors. Window aggregations become ``<agg>.over(Window.partitionBy(keys).orderBy(unix_micros(event
time)).rangeBetween(-(window - 1us), 0))``, i.e. event times in (t - window, t].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipelines.features.checker import (
    DATE,
    DOUBLE,
    INT,
    INT64_MIN,
    NULL,
    STRING,
    TIMESTAMP,
    Agg,
    Binary,
    Call,
    Cast,
    Column,
    FeatureExpr,
    If,
    Literal,
    Node,
    Unary,
)

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000
SPARK_TYPES = {INT: "bigint", DOUBLE: "double", STRING: "string", "bool": "boolean", TIMESTAMP: "timestamp",
               DATE: "date"}


class _Ctx:
    def __init__(self, keys: Sequence[str] | None, event_time: str | None, event_time_type: str):
        self.keys, self.event_time, self.event_time_type = keys, event_time, event_time_type


def _nan_null(c):
    from pyspark.sql import functions as F

    return F.nanvl(c, F.lit(None).cast("double"))


def _lit(value, dtype: str):
    from pyspark.sql import functions as F

    if value is None:
        return F.lit(None) if dtype == NULL else F.lit(None).cast(SPARK_TYPES[dtype])
    if dtype == INT:
        return F.lit(int(value)).cast("bigint")
    if dtype == DOUBLE:
        return F.lit(float(value))
    return F.lit(value)


def _compile(node: Node, ctx: _Ctx):
    from pyspark.sql import functions as F

    if isinstance(node, Literal):
        return _lit(node.value, node.dtype)
    if isinstance(node, Column):
        col = F.col(f"`{node.name}`")
        if node.dtype == INT:
            return col.cast("bigint")
        if node.dtype == DOUBLE:
            return _nan_null(col.cast("double"))  # NaN is null at the boundary
        return col
    if isinstance(node, Cast):
        return _compile(node.child, ctx).cast("double")
    if isinstance(node, Unary):
        x = _compile(node.child, ctx)
        if node.op == "not":
            return ~x
        if node.dtype == INT:
            return _int_arith(F.try_subtract, F.lit(0), x)
        return -x
    if isinstance(node, Binary):
        a, b = _compile(node.left, ctx), _compile(node.right, ctx)
        op = node.op
        if op == "and":
            return a & b
        if op == "or":
            return a | b
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == "<":
            return a < b
        if op == "<=":
            return a <= b
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if op == "/":
            return _nan_null(F.try_divide(a, b))
        if node.dtype == INT:
            return _int_arith({"+": F.try_add, "-": F.try_subtract, "*": F.try_multiply}[op], a, b)
        return _nan_null({"+": a + b, "-": a - b, "*": a * b}[op])
    if isinstance(node, If):
        return F.when(_compile(node.cond, ctx), _compile(node.then, ctx)).otherwise(_compile(node.other, ctx))
    if isinstance(node, Call):
        return _call(node, ctx)
    if isinstance(node, Agg):
        return _agg(node, ctx)
    raise AssertionError(node)


def _int_arith(fn, a, b):
    """bigint a (+ - *) b with overflow -> null, evaluated exactly as written.

    Computed in decimal(20,0) (exact: a product of two bigints has at most 38 digits) and brought back with
    try_cast. Plain ``try_add``/``try_multiply`` on bigints are not enough: the optimizer's
    ReorderAssociativeOperator re-associates and constant-folds chains of integral + and * (also through
    CASE WHEN), so ``(i + MAX) + -MAX`` would be ``i`` in Spark and null (overflow) in Python.
    """
    return fn(a.cast("decimal(20,0)"), b.cast("decimal(20,0)")).try_cast("bigint")


def _local_micros(ts, tz: str):
    """Epoch microseconds of the wall-clock time in ``tz`` at instant ``ts`` (session-zone independent)."""
    from pyspark.sql import functions as F

    return F.unix_micros(F.from_utc_timestamp(ts, tz))


def _floor_div(x, unit: int):
    """floor(x / unit) for a bigint x, exactly: (x - pmod(x, unit)) is a multiple of unit."""
    from pyspark.sql import functions as F

    return ((x - F.pmod(x, F.lit(unit))) / F.lit(unit)).cast("bigint")


def _call(node: Call, ctx: _Ctx):
    from pyspark.sql import functions as F

    fn, params = node.fn, node.params
    args = [_compile(a, ctx) for a in node.args]
    x = args[0]
    null = F.lit(None)
    if fn == "log":
        return F.when(x > 0.0, F.ln(x))
    if fn == "log1p":
        return F.when(x > -1.0, F.log1p(x))
    if fn == "abs":
        if node.dtype == INT:
            return F.when(x == F.lit(INT64_MIN), null.cast("bigint")).otherwise(F.abs(x))
        return F.abs(x)
    if fn == "clip":
        lo, hi = args[1], args[2]
        return F.when(x.isNull() | lo.isNull() | hi.isNull(), null.cast(SPARK_TYPES[node.dtype])) \
            .otherwise(F.least(F.greatest(x, lo), hi))
    if fn == "bucketize":
        edges = params["edges"]
        typ = INT if all(type(e) is int for e in edges) else DOUBLE
        expr = F.when(x.isNull(), null.cast("bigint"))
        for i, edge in enumerate(edges):
            expr = expr.when(x < _lit(edge, typ), F.lit(i).cast("bigint"))
        return expr.otherwise(F.lit(len(edges)).cast("bigint"))
    if fn == "coalesce":
        return F.coalesce(*args)
    if fn == "is_null":
        return x.isNull()
    if fn == "lower":
        return F.lower(x)
    if fn == "upper":
        return F.upper(x)
    if fn == "concat":
        return F.concat(*[a.cast("string") if n.dtype == INT else a for a, n in zip(args, node.args, strict=True)])
    if fn == "category_index":
        cats, default = params["categories"], params["default"]
        typ = STRING if isinstance(cats[0], str) else INT
        position = F.array_position(F.array(*[_lit(c, typ) for c in cats]), x)  # 1-based, 0 if absent
        return F.when(position == 0, F.lit(default).cast("bigint")).otherwise(position - 1)
    if fn == "hash_bucket":
        s = x.cast("string") if node.args[0].dtype == INT else x
        return F.crc32(s.cast("binary")) % F.lit(params["n"]).cast("bigint")
    if fn in ("hour", "day_of_week", "month"):
        if node.args[0].dtype == DATE:
            return (F.weekday(x) if fn == "day_of_week" else F.month(x)).cast("bigint")
        local = _local_micros(x, params["tz"])
        if fn == "hour":
            return _floor_div(F.pmod(local, F.lit(US_PER_DAY)), US_PER_HOUR)
        days = _floor_div(local, US_PER_DAY)
        if fn == "day_of_week":  # 1970-01-01 was a Thursday (3 with Monday = 0)
            return F.pmod(days + F.lit(3), F.lit(7)).cast("bigint")
        return F.month(F.date_from_unix_date(days.cast("int"))).cast("bigint")
    if fn == "minutes_between":
        start, end = args
        return (F.unix_micros(end) - F.unix_micros(start)).cast("double") / F.lit(60_000_000.0)
    raise AssertionError(fn)


def _agg(node: Agg, ctx: _Ctx):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if ctx.event_time is None:
        raise ValueError(f"{node.fn}(...) is a window aggregation: compile it with entity keys and an event-time "
                         "column (compile_spark(feature, keys=[...], event_time=...))")
    et = F.col(f"`{ctx.event_time}`")
    if ctx.event_time_type == DATE:
        order = F.unix_date(et).cast("bigint") * F.lit(US_PER_DAY)
    else:
        order = F.unix_micros(et)
    window = (Window.partitionBy(*[F.col(f"`{k}`") for k in ctx.keys]).orderBy(order)
              .rangeBetween(-(node.window_us - 1), 0))
    arg = None if node.arg is None else _compile(node.arg, ctx)
    fn = node.fn
    if fn == "count":
        value = F.count(F.lit(1) if arg is None else arg).over(window)
    elif fn == "sum":
        value = F.try_sum(arg).over(window) if node.dtype == INT else _nan_null(F.sum(arg).over(window))
    elif fn == "mean":
        value = _nan_null(F.avg(arg).over(window))
    elif fn == "min":
        value = F.min(arg).over(window)
    elif fn == "max":
        value = F.max(arg).over(window)
    elif fn == "quantile":
        value = _nan_null(F.percentile(arg, node.q).over(window))
    else:
        raise AssertionError(fn)
    # An event without an event time has no window: its aggregations are null (count too).
    return F.when(et.isNotNull(), value)


def compile_column(feature: FeatureExpr, *, keys: Sequence[str] | None = None, event_time: str | None = None,
                   event_time_type: str = TIMESTAMP) -> SparkColumn:
    if feature.is_windowed and (not keys or not event_time):
        raise ValueError(f"feature '{feature.name}' uses window aggregations: pass keys=[entity key columns] and "
                         "event_time=<timestamp or date column> to compile it")
    if event_time_type not in (TIMESTAMP, DATE):
        raise ValueError(f"the event time column must be a timestamp or a date, got {event_time_type}")
    _check_zones(feature)
    col = _compile(feature.root, _Ctx(list(keys or ()), event_time, event_time_type))
    if feature.dtype == NULL:
        return col
    return col.cast(SPARK_TYPES[feature.dtype])


def _jvm_zone_ids() -> set[str] | None:
    """The time zones the JVM of the active Spark session knows (None if there is no local JVM to ask)."""
    try:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        jvm = getattr(getattr(session, "sparkContext", None), "_jvm", None) if session is not None else None
        if jvm is None:
            return None
        return set(jvm.java.time.ZoneId.getAvailableZoneIds()) | {"UTC", "Z"}
    except Exception:  # Spark Connect, or no session: the job itself will report an unknown zone
        return None


def _check_zones(feature: FeatureExpr) -> None:
    from pipelines.features.checker import walk
    from pipelines.features.errors import FeatureDefinitionError

    zones = {node.params["tz"] for node in walk(feature.root) if isinstance(node, Call) and "tz" in node.params}
    zones |= {node.params["tz"] for agg in feature.aggregations if agg.arg is not None
              for node in walk(agg.arg) if isinstance(node, Call) and "tz" in node.params}
    if not zones:
        return
    known = _jvm_zone_ids()
    if known is None:
        return
    unknown = sorted(zones - known)
    if unknown:
        raise FeatureDefinitionError(feature.name, f"time zone {unknown[0]!r} is unknown to Spark's JVM (its time "
                                     "zone database is older than Python's): use another name for the zone")


def event_time_type(df: DataFrame, event_time: str) -> str:
    from pyspark.sql.types import DateType, TimestampType

    field = df.schema[event_time]
    if isinstance(field.dataType, TimestampType):
        return TIMESTAMP
    if isinstance(field.dataType, DateType):
        return DATE
    raise ValueError(f"event time column '{event_time}' must be a timestamp or a date, got "
                     f"{field.dataType.simpleString()}")
