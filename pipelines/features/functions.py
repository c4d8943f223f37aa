"""The functions of the feature language, each declared once: its signature, its typing rule, its Python
(online) and Spark (offline) implementations and its line in the language reference.

The checker reads :data:`FUNCTIONS` and :data:`AGGREGATIONS` for arity, argument and result types; the
Python compiler calls ``Function.python``, the Spark compiler ``Function.spark`` and
``Aggregation.spark``. The reference table in :mod:`pipelines.features.dsl` is checked against the ``doc``
lines by ``tests/unit/test_feature_functions.py``. Both implementations of a function must compute the same
values (``tests/integration/test_feature_parity.py``); each Python closure's comment names the Spark
expression it mirrors where that is not obvious.

Window aggregations are evaluated in Python by one engine for all six (prefix sums, an order-statistics
tree: :class:`pipelines.features.python_compiler.EntityHistory`); only their typing and Spark side are here.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from math import log, log1p
from operator import attrgetter, methodcaller
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.features.parser import PCall, PList, PLiteral
from pipelines.features.tree import (
    BOOL,
    DATE,
    DOUBLE,
    INT,
    INT64_MAX,
    INT64_MIN,
    NULL,
    STRING,
    TIMESTAMP,
    Agg,
    Call,
    Literal,
    Node,
    is_null_literal,
    null_of,
    promote,
    unify,
)
from pipelines.features.unicode_case import spark_lower, spark_upper

Fn = Callable[[Any], Any]
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000
SPARK_TYPES = {INT: "bigint", DOUBLE: "double", STRING: "string", BOOL: "boolean", TIMESTAMP: "timestamp",
               DATE: "date"}


@dataclass(frozen=True)
class Function:
    """A row-level function.

    ``check(c, p, xs)`` is its typing rule: ``c`` the checker (whose helpers raise errors at a position),
    ``p`` the parsed call (its arity already checked against ``arity``), ``xs`` its first ``exprs`` arguments
    type-checked (all of them when ``exprs`` is None; the others are literals the rule validates itself).
    It returns the typed node: a :class:`Call` whose literal arguments are in ``params``, or a folded null.
    ``python(node, fs)`` is the closure ``row -> value`` given the closures of the call's arguments;
    ``spark(F, node, xs)`` the Column given the arguments' Columns, ``F`` being ``pyspark.sql.functions``
    (passed in so that importing the language never imports pyspark).
    """

    name: str
    signature: str
    doc: str
    arity: tuple[int, ...] | range
    check: Callable[[Any, PCall, list[Node]], Node]
    python: Callable[[Call, list[Fn]], Fn]
    spark: Callable[[Any, Call, list], Any]
    exprs: int | None = None


@dataclass(frozen=True)
class Aggregation:
    """A trailing-window aggregation: ``result`` is its type (None: its argument's); ``spark(F, node, arg,
    window)`` is its Column over the window (``arg`` None for ``count(window)``)."""

    name: str
    signature: str
    doc: str
    arity: tuple[int, ...]
    result: str | None
    spark: Callable[[Any, Agg, Any, Any], Any]


FUNCTIONS: dict[str, Function] = {}


def _function(name: str, signature: str, doc: str, **parts: Any) -> None:
    FUNCTIONS[name] = Function(name, signature, doc, **parts)


def signature(name: str) -> str:
    fn = FUNCTIONS.get(name) or AGGREGATIONS[name]
    return fn.signature


# --- shared pieces ------------------------------------------------------------------------------------------

def strict(f: Fn, g: Callable[[Any], Any]) -> Fn:
    """``g(x)`` of the argument's value, null for null: the shape of most functions and operators."""
    def strict(row):
        x = f(row)
        return None if x is None else g(x)
    return strict


def strict2(fa: Fn, fb: Fn, g: Callable[[Any, Any], Any]) -> Fn:
    """``g(a, b)``, null if either is null (``b`` is not evaluated when ``a`` is null)."""
    def strict2(row):
        a = fa(row)
        if a is None:
            return None
        b = fb(row)
        return None if b is None else g(a, b)
    return strict2


def spark_literal(F, value, dtype: str):
    if value is None:
        return F.lit(None) if dtype == NULL else F.lit(None).cast(SPARK_TYPES[dtype])
    if dtype == INT:
        return F.lit(int(value)).cast("bigint")
    if dtype == DOUBLE:
        return F.lit(float(value))
    return F.lit(value)


def spark_nan_to_null(F, c):
    return F.nanvl(c, F.lit(None).cast("double"))


def _unary_numeric(result: str | None):
    """The rule of log, log1p (double result) and abs (the argument's type)."""
    def check(c, p, xs):
        (x,) = xs
        c.numeric(x, f"the argument of {p.name}()", p.args[0])
        out = result or x.dtype
        if is_null_literal(x):
            return null_of(out, p.pos)
        if result == DOUBLE:
            x = promote(x, DOUBLE)
        return Call(p.name, (x,), out, p.pos)
    return check


# --- if, and the numeric functions --------------------------------------------------------------------------

def _check_if(c, p, xs):
    cond, a, b = xs
    if cond.dtype not in (BOOL, NULL):
        c.fail(f"the condition of if() must be a bool, got {cond.dtype}", p.args[0])
    t = unify([a.dtype, b.dtype])
    if t is None:
        c.fail(f"the branches of if() have different types: {a.dtype} and {b.dtype}", p.pos)
    if is_null_literal(cond):
        return promote(b, t)  # a null condition takes the else branch
    if t == NULL:
        return null_of(NULL, p.pos)
    return Call("if", (cond, promote(a, t), promote(b, t)), t, p.pos)


def _python_if(node, fs):  # CASE WHEN c THEN a ELSE b END: a null condition takes the else branch
    fc, ft, fo = fs
    return lambda row: ft(row) if fc(row) is True else fo(row)


_function("if", "if(condition, then, else)", "``a`` when ``c`` is true, else ``b`` (a null condition takes ``b``)",
          arity=(3,), check=_check_if, python=_python_if,
          spark=lambda F, node, xs: F.when(xs[0], xs[1]).otherwise(xs[2]))

_function("log", "log(x)", "natural log; x <= 0 -> null; log(inf) = inf",
          arity=(1,), check=_unary_numeric(DOUBLE),
          python=lambda node, fs: strict(fs[0], lambda x: None if x <= 0.0 else log(x)),
          spark=lambda F, node, xs: F.when(xs[0] > 0.0, F.ln(xs[0])))

_function("log1p", "log1p(x)", "log(1 + x); x <= -1 -> null",
          arity=(1,), check=_unary_numeric(DOUBLE),
          python=lambda node, fs: strict(fs[0], lambda x: None if x <= -1.0 else log1p(x)),
          spark=lambda F, node, xs: F.when(xs[0] > -1.0, F.log1p(xs[0])))


def _python_abs(node, fs):
    if node.dtype == INT:
        return strict(fs[0], lambda x: None if x == INT64_MIN else abs(x))
    return strict(fs[0], abs)


def _spark_abs(F, node, xs):
    (x,) = xs
    if node.dtype == INT:
        return F.when(x == F.lit(INT64_MIN), F.lit(None).cast("bigint")).otherwise(F.abs(x))
    return F.abs(x)


_function("abs", "abs(x)", "same type (int: abs(-2**63) -> null)",
          arity=(1,), check=_unary_numeric(None), python=_python_abs, spark=_spark_abs)


def _check_clip(c, p, xs):
    for x, parg, what in zip(xs, p.args, ("x", "lo", "hi"), strict=True):
        c.numeric(x, f"clip() {what}", parg)
    t = unify([x.dtype for x in xs])
    if any(is_null_literal(x) for x in xs):
        return null_of(t, p.pos)
    return Call("clip", tuple(promote(x, t) for x in xs), t, p.pos)


def _python_clip(node, fs):  # least(greatest(x, lo), hi), null if any is null
    f, flo, fhi = fs

    def clip(row):
        x = f(row)
        if x is None:
            return None
        lo, hi = flo(row), fhi(row)
        if lo is None or hi is None:
            return None
        m = x if x >= lo else lo
        return m if m <= hi else hi
    return clip


def _spark_clip(F, node, xs):
    x, lo, hi = xs
    return F.when(x.isNull() | lo.isNull() | hi.isNull(), F.lit(None).cast(SPARK_TYPES[node.dtype])) \
        .otherwise(F.least(F.greatest(x, lo), hi))


_function("clip", "clip(x, lo, hi)", "min(max(x, lo), hi) (so hi wins if lo > hi); numeric, any expression",
          arity=(3,), check=_check_clip, python=_python_clip, spark=_spark_clip)


def _check_bucketize(c, p, xs):
    (x,) = xs
    c.numeric(x, "the value of bucketize()", p.args[0])
    plist = p.args[1]
    if not isinstance(plist, PList):
        c.fail("the edges of bucketize() must be a list of number literals like [0, 10, 100]", plist)
    if not plist.items:
        c.fail("bucketize() needs at least one edge", plist.pos)
    edges = [c.literal_number(item, "a bucket edge") for item in plist.items]
    for i in range(1, len(edges)):
        if not edges[i - 1] < edges[i]:
            c.fail(f"the edges of bucketize() must be strictly increasing: {edges[i - 1]!r} is followed "
                   f"by {edges[i]!r}", plist.items[i])
    if is_null_literal(x):
        return null_of(INT, p.pos)
    if x.dtype == INT and all(type(e) is int for e in edges):
        if not all(INT64_MIN <= e <= INT64_MAX for e in edges):
            c.fail("a bucket edge is out of the 64-bit range", plist.pos)
        return Call("bucketize", (x,), INT, p.pos, {"edges": tuple(edges)})
    return Call("bucketize", (promote(x, DOUBLE),), INT, p.pos, {"edges": tuple(float(e) for e in edges)})


def _spark_bucketize(F, node, xs):
    (x,) = xs
    edges = node.params["edges"]
    typ = INT if all(type(e) is int for e in edges) else DOUBLE
    expr = F.when(x.isNull(), F.lit(None).cast("bigint"))
    for i, edge in enumerate(edges):
        expr = expr.when(x < spark_literal(F, edge, typ), F.lit(i).cast("bigint"))
    return expr.otherwise(F.lit(len(edges)).cast("bigint"))


_function("bucketize", "bucketize(x, [e1, e2, ...])",
          "number of edges <= x, in 0..n: buckets are ``[e_i, e_i+1)``, x < e1 -> 0, x >= en -> n, -inf -> 0, "
          "inf -> n. Edges: strictly increasing number literals (= numpy.digitize(x, edges) = "
          "bisect_right(edges, x))",
          arity=(2,), exprs=1, check=_check_bucketize, spark=_spark_bucketize,
          python=lambda node, fs: strict(fs[0], partial(bisect_right, node.params["edges"])))


# --- nulls and strings --------------------------------------------------------------------------------------

def _check_coalesce(c, p, xs):
    t = unify([x.dtype for x in xs])
    if t is None:
        c.fail("the arguments of coalesce() have different types: " + ", ".join(x.dtype for x in xs), p.pos)
    xs = [promote(x, t) for x in xs if not is_null_literal(x)]
    if not xs:
        return null_of(NULL, p.pos)
    if len(xs) == 1:
        return xs[0]
    return Call("coalesce", tuple(xs), t, p.pos)


def _python_coalesce(node, fs):
    def coalesce(row):
        for g in fs:
            v = g(row)
            if v is not None:
                return v
        return None
    return coalesce


_function("coalesce", "coalesce(a, b, ...)", "first non-null",
          arity=range(1, 1000), check=_check_coalesce, python=_python_coalesce,
          spark=lambda F, node, xs: F.coalesce(*xs))


def _check_is_null(c, p, xs):
    (x,) = xs
    if is_null_literal(x):
        return Literal(True, BOOL, p.pos)
    return Call("is_null", (x,), BOOL, p.pos)


def _python_is_null(node, fs):
    f = fs[0]
    return lambda row: f(row) is None


_function("is_null", "is_null(x)", "true/false, never null (NaN inputs are null, so is_null(NaN) is true)",
          arity=(1,), check=_check_is_null, python=_python_is_null, spark=lambda F, node, xs: xs[0].isNull())


def _check_case(c, p, xs):
    (x,) = xs
    if x.dtype not in (STRING, NULL):
        c.fail(f"the argument of {p.name}() must be a string, got {x.dtype}", p.args[0])
    if is_null_literal(x):
        return null_of(STRING, p.pos)
    # lower(upper(s)) is lower(s), upper(lower(s)) is upper(s): only the outer conversion applies. Spark's
    # optimizer rewrites nested case conversions so (SimplifyCaseConversionExpressions), which is not the
    # same for every string (upper(lower("\u0130")) would be "I\u0307"); the language defines it so.
    while isinstance(x, Call) and x.fn in ("lower", "upper"):
        x = x.args[0]
    return Call(p.name, (x,), STRING, p.pos)


_function("lower", "lower(s)", "full Unicode lowercase mapping (Spark 4.3's: Unicode 16, final sigma); nested "
          "conversions apply only the outer one: lower(upper(s)) = lower(s)", arity=(1,), check=_check_case,
          python=lambda node, fs: strict(fs[0], spark_lower), spark=lambda F, node, xs: F.lower(xs[0]))
_function("upper", "upper(s)", "full Unicode uppercase mapping (Spark 4.3's: Unicode 16, ß -> SS); "
          "upper(lower(s)) = upper(s)", arity=(1,), check=_check_case,
          python=lambda node, fs: strict(fs[0], spark_upper), spark=lambda F, node, xs: F.upper(xs[0]))


def _check_concat(c, p, xs):
    for x, parg in zip(xs, p.args, strict=True):
        if x.dtype not in (STRING, INT, NULL):
            c.fail(f"the arguments of concat() must be strings or ints, got {x.dtype}", parg)
    if any(is_null_literal(x) for x in xs):
        return null_of(STRING, p.pos)
    return Call("concat", tuple(xs), STRING, p.pos)


def _python_concat(node, fs):  # concat(...) with ints cast to string; any null -> null
    kinds = [a.dtype == INT for a in node.args]

    def concat(row):
        parts = []
        for g, is_int in zip(fs, kinds, strict=True):
            v = g(row)
            if v is None:
                return None
            parts.append(str(v) if is_int else v)
        return "".join(parts)
    return concat


_function("concat", "concat(a, b, ...)", "strings and ints (ints in decimal); any null -> null",
          arity=range(1, 1000), check=_check_concat, python=_python_concat,
          spark=lambda F, node, xs: F.concat(*[x.cast("string") if a.dtype == INT else x
                                               for x, a in zip(xs, node.args, strict=True)]))


# --- categories ---------------------------------------------------------------------------------------------

def _check_category_index(c, p, xs):
    (x,) = xs
    if x.dtype not in (STRING, INT, NULL):
        c.fail(f"the value of category_index() must be a string or an int, got {x.dtype}", p.args[0])
    plist = p.args[1]
    if not isinstance(plist, PList):
        c.fail('the categories of category_index() must be a list of literals like ["a", "b"]', plist)
    if not plist.items:
        c.fail("category_index() needs at least one category", plist.pos)
    cats = []
    for item in plist.items:
        value = c.constant_number(item)
        if value is None and isinstance(item, PLiteral) and isinstance(item.value, str):
            value = item.value
        if value is None or isinstance(value, float):
            c.fail("a category must be a string or integer literal", item)
        want = STRING if isinstance(value, str) else INT
        if x.dtype != NULL and want != x.dtype:
            c.fail(f"category {value!r} is a {want} literal but the value is a {x.dtype}", item)
        if value in cats:
            c.fail(f"duplicate category {value!r}", item)
        cats.append(value)
    if len({type(v) for v in cats}) > 1:
        c.fail("the categories of category_index() mix strings and integers", plist.pos)
    default = -1
    if len(p.args) == 3:
        default = c.literal_number(p.args[2], "the default of category_index()")
        if not isinstance(default, int) or not INT64_MIN <= default <= INT64_MAX:
            c.fail("the default of category_index() must be an integer literal", p.args[2])
    if is_null_literal(x):
        return null_of(INT, p.pos)
    return Call("category_index", (x,), INT, p.pos, {"categories": tuple(cats), "default": default})


def _python_category_index(node, fs):  # array_position(categories, x) - 1, unknown -> default
    get = {c: i for i, c in enumerate(node.params["categories"])}.get
    default = node.params["default"]
    return strict(fs[0], lambda x: get(x, default))


def _spark_category_index(F, node, xs):
    cats, default = node.params["categories"], node.params["default"]
    typ = STRING if isinstance(cats[0], str) else INT
    position = F.array_position(F.array(*[spark_literal(F, c, typ) for c in cats]), xs[0])  # 1-based, 0: absent
    return F.when(position == 0, F.lit(default).cast("bigint")).otherwise(position - 1)


_function("category_index", 'category_index(x, ["a", "b", ...]) or category_index(x, [...], default)',
          '``category_index(x, ["a", "b"])`` or ``(x, [...], default)``: 0-based index of x among the literal '
          "categories (strings or ints, no duplicates); unknown -> default (-1 unless given); null -> null",
          arity=(2, 3), exprs=1, check=_check_category_index, python=_python_category_index,
          spark=_spark_category_index)


def _check_hash_bucket(c, p, xs):
    (x,) = xs
    if x.dtype not in (STRING, INT, NULL):
        c.fail(f"the value of hash_bucket() must be a string or an int, got {x.dtype}", p.args[0])
    n = c.literal_number(p.args[1], "the bucket count of hash_bucket()")
    if not isinstance(n, int) or not 1 <= n <= INT64_MAX:
        c.fail("the bucket count of hash_bucket() must be a positive integer literal", p.args[1])
    if is_null_literal(x):
        return null_of(INT, p.pos)
    return Call("hash_bucket", (x,), INT, p.pos, {"n": n})


def _python_hash_bucket(node, fs):  # crc32(cast(x as binary)) % n: CRC-32 (zlib/IEEE) of the UTF-8 bytes
    n, crc32 = node.params["n"], zlib.crc32
    if node.args[0].dtype == INT:
        return strict(fs[0], lambda x: crc32(str(x).encode("ascii")) % n)
    return strict(fs[0], lambda x: crc32(x.encode("utf-8", "surrogatepass")) % n)


def _spark_hash_bucket(F, node, xs):
    s = xs[0].cast("string") if node.args[0].dtype == INT else xs[0]
    return F.crc32(s.cast("binary")) % F.lit(node.params["n"]).cast("bigint")


_function("hash_bucket", "hash_bucket(x, n)",
          "CRC-32 (zlib/IEEE 802.3, as Spark's ``crc32``) of the UTF-8 bytes of x (an int: of its decimal "
          "text), mod n; in 0..n-1. n: positive int literal",
          arity=(2,), exprs=1, check=_check_hash_bucket, python=_python_hash_bucket, spark=_spark_hash_bucket)


# --- time ---------------------------------------------------------------------------------------------------

def _check_time_part(c, p, xs):
    (x,) = xs
    if len(p.args) == 1:
        if x.dtype == TIMESTAMP:
            c.fail(f"{p.name}() of a timestamp needs an explicit time zone: {signature(p.name)}", p.pos)
        if x.dtype not in (DATE, NULL):
            c.fail(f"the argument of {p.name}() must be a date or a timestamp, got {x.dtype}", p.args[0])
        return null_of(INT, p.pos) if is_null_literal(x) else Call(p.name, (x,), INT, p.pos)
    if x.dtype == DATE and p.name != "hour":
        c.fail(f"a date has no time zone: write {p.name}(date_column) without one", p.pos)
    if x.dtype not in (TIMESTAMP, NULL):
        c.fail(f"the first argument of {p.name}() must be a timestamp, got {x.dtype}", p.args[0])
    tz = c.zone(p.args[1], p.name)
    return null_of(INT, p.pos) if is_null_literal(x) else Call(p.name, (x,), INT, p.pos, {"tz": tz})


def local_time(micros: int, zone: ZoneInfo) -> datetime | None:
    """The wall-clock time in ``zone`` at an instant (Spark: from_utc_timestamp(ts, zone))."""
    try:
        return datetime.fromtimestamp(micros // 1_000_000, zone)
    except (OverflowError, ValueError, OSError):
        return None


_PARTS = {"hour": attrgetter("hour"), "day_of_week": methodcaller("weekday"), "month": attrgetter("month")}


def _python_time_part(node, fs):  # of a date: weekday(d) (Monday = 0), month(d)
    part = _PARTS[node.fn]
    if node.args[0].dtype == DATE:
        return strict(fs[0], part)
    zone = ZoneInfo(node.params["tz"])

    def local_part(micros):
        local = local_time(micros, zone)
        return None if local is None else part(local)
    return strict(fs[0], local_part)


def spark_local_micros(F, ts, tz: str):
    """Epoch microseconds of the wall-clock time in ``tz`` at instant ``ts`` (session-zone independent)."""
    return F.unix_micros(F.from_utc_timestamp(ts, tz))


def _spark_floor_div(F, x, unit: int):
    """floor(x / unit) for a bigint x, exactly: (x - pmod(x, unit)) is a multiple of unit."""
    return ((x - F.pmod(x, F.lit(unit))) / F.lit(unit)).cast("bigint")


def _spark_time_part(F, node, xs):
    (x,) = xs
    fn = node.fn
    if node.args[0].dtype == DATE:
        return (F.weekday(x) if fn == "day_of_week" else F.month(x)).cast("bigint")
    local = spark_local_micros(F, x, node.params["tz"])
    if fn == "hour":
        return _spark_floor_div(F, F.pmod(local, F.lit(US_PER_DAY)), US_PER_HOUR)
    days = _spark_floor_div(F, local, US_PER_DAY)
    if fn == "day_of_week":  # 1970-01-01 was a Thursday (3 with Monday = 0)
        return F.pmod(days + F.lit(3), F.lit(7)).cast("bigint")
    return F.month(F.date_from_unix_date(days.cast("int"))).cast("bigint")


_TIME_PART = {"exprs": 1, "check": _check_time_part, "python": _python_time_part, "spark": _spark_time_part}
_function("hour", 'hour(ts, "Area/City")',
          "local hour 0..23 at instant ts in the IANA zone (a string literal; it must be known to Python's "
          "zoneinfo at load time and to the JVM when compiled for Spark: Java 17.0.15 lacks zones added in "
          "2025, e.g. America/Coyhaique)", arity=(2,), **_TIME_PART)
_function("day_of_week", 'day_of_week(ts, "Area/City") or day_of_week(date)',
          "local weekday, Monday = 0 .. Sunday = 6; ``day_of_week(date)`` for dates", arity=(1, 2), **_TIME_PART)
_function("month", 'month(ts, "Area/City") or month(date)', "local month 1..12; ``month(date)`` for dates",
          arity=(1, 2), **_TIME_PART)


def _check_minutes_between(c, p, xs):
    for x, parg in zip(xs, p.args, strict=True):
        if x.dtype not in (TIMESTAMP, NULL):
            c.fail(f"the arguments of minutes_between() must be timestamps, got {x.dtype}", parg)
    if any(is_null_literal(x) for x in xs):
        return null_of(DOUBLE, p.pos)
    return Call("minutes_between", tuple(xs), DOUBLE, p.pos)


_function("minutes_between", "minutes_between(start, end)",
          "(b - a) in minutes, a double (positive when b is later)",
          arity=(2,), check=_check_minutes_between,
          python=lambda node, fs: strict2(fs[0], fs[1], lambda a, b: float(b - a) / 60_000_000.0),
          spark=lambda F, node, xs: (F.unix_micros(xs[1]) - F.unix_micros(xs[0])).cast("double")
          / F.lit(60_000_000.0))


# --- window aggregations ------------------------------------------------------------------------------------

def _spark_sum(F, node, arg, window):
    if node.dtype == INT:
        return F.try_sum(arg).over(window)
    return spark_nan_to_null(F, F.sum(arg).over(window))


AGGREGATIONS: dict[str, Aggregation] = {a.name: a for a in (
    Aggregation("mean", 'mean(x, "7d")', "mean of the non-null values", (2,), DOUBLE,
                lambda F, node, arg, window: spark_nan_to_null(F, F.avg(arg).over(window))),
    Aggregation("sum", 'sum(x, "7d")', "sum; int stays int (null beyond 64 bits)", (2,), None, _spark_sum),
    Aggregation("count", 'count("7d") or count(x, "7d")', "events, or non-null values of x", (1, 2), INT,
                lambda F, node, arg, window: F.count(F.lit(1) if arg is None else arg).over(window)),
    Aggregation("quantile", 'quantile(x, 0.9, "30d")', "exact, linear interpolation (Spark's percentile)", (3,),
                DOUBLE, lambda F, node, arg, window: spark_nan_to_null(F, F.percentile(arg, node.q).over(window))),
    Aggregation("min", 'min(x, "7d")', "smallest value", (2,), None,
                lambda F, node, arg, window: F.min(arg).over(window)),
    Aggregation("max", 'max(x, "7d")', "largest value", (2,), None,
                lambda F, node, arg, window: F.max(arg).over(window)),
)}
