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

from pipelines.features import tree
from pipelines.features.checker import FeatureExpr
from pipelines.features.functions import (
    AGGREGATIONS,
    FUNCTIONS,
    SPARK_TYPES,
    spark_literal,
    spark_nan_to_null,
)
from pipelines.features.tree import ARITH, COMPARE, DATE, DOUBLE, INT, NULL, TIMESTAMP

if TYPE_CHECKING:
    from pyspark.sql import Column as SparkColumn
    from pyspark.sql import DataFrame

US_PER_DAY = 86_400_000_000


class _Ctx:
    def __init__(self, keys: Sequence[str] | None, event_time: str | None, event_time_type: str):
        self.keys, self.event_time, self.event_time_type = keys, event_time, event_time_type


def _compile(node: tree.Node, ctx: _Ctx):
    from pyspark.sql import functions as F

    if isinstance(node, tree.Literal):
        return spark_literal(F, node.value, node.dtype)
    if isinstance(node, tree.Column):
        col = F.col(f"`{node.name}`")
        if node.dtype == INT:
            return col.cast("bigint")
        if node.dtype == DOUBLE:
            return spark_nan_to_null(F, col.cast("double"))  # NaN is null at the boundary
        return col
    if isinstance(node, tree.Cast):
        return _compile(node.child, ctx).cast("double")
    if isinstance(node, tree.Unary):
        x = _compile(node.child, ctx)
        if node.op == "not":
            return ~x
        if node.dtype == INT:
            return _int_arith(F.try_subtract, F.lit(0), x)
        return -x
    if isinstance(node, tree.Binary):
        a, b = _compile(node.left, ctx), _compile(node.right, ctx)
        op = node.op
        if op == "and":
            return a & b
        if op == "or":
            return a | b
        if op in COMPARE:
            return COMPARE[op](a, b)
        if op == "/":
            return spark_nan_to_null(F, F.try_divide(a, b))
        if node.dtype == INT:
            return _int_arith({"+": F.try_add, "-": F.try_subtract, "*": F.try_multiply}[op], a, b)
        return spark_nan_to_null(F, ARITH[op](a, b))
    if isinstance(node, tree.Call):
        return FUNCTIONS[node.fn].spark(F, node, [_compile(a, ctx) for a in node.args])
    if isinstance(node, tree.Agg):
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


def _agg(node: tree.Agg, ctx: _Ctx):
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
    value = AGGREGATIONS[node.fn].spark(F, node, arg, window)
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
    from pipelines.features.errors import FeatureDefinitionError

    zones = {node.params["tz"] for node in tree.walk(feature.root)
             if isinstance(node, tree.Call) and "tz" in node.params}
    zones |= {node.params["tz"] for agg in feature.aggregations if agg.arg is not None
              for node in tree.walk(agg.arg) if isinstance(node, tree.Call) and "tz" in node.params}
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
