'''Atelier's feature definition language: one definition, compiled twice.

A feature is a named expression over the columns of a feature view. It is parsed and type-checked once,
at load time, then compiled to a Spark ``Column`` (batch: backfills, materialisation, training sets) and to
Python closures (online: request time). Both compilers implement the semantics below, operation by
operation, and ``tests/integration/test_feature_parity.py`` checks them against each other on generated
data (nulls, NaN, +-inf, 1e308, subnormals, unicode, DST edges, ties, empty windows).

Public API
==========
::

    from pipelines.features import parse_feature, compile_python, compile_spark, with_features

    schema = {"arr_delay": "double", "dep_delay": "double", "carrier": "string", "distance": "double",
              "sched_dep_ts": "timestamp", "dep_ts": "timestamp", "tailnum": "string"}
    delay = parse_feature("late_departure", "if(dep_delay > 15, 1, 0)", schema)     # FeatureExpr, dtype int
    hour = parse_feature("dep_hour", 'hour(sched_dep_ts, "America/New_York")', schema)
    recent = parse_feature("arr_delay_7d", 'coalesce(mean(arr_delay, "7d"), 0.0)', schema)

    f = compile_python(delay)                    # online: f(row: Mapping) -> value, a few microseconds
    f({"dep_delay": 42.0})                       # -> 1
    df2 = with_features(df, [delay, hour, recent], keys=["tailnum"], event_time="sched_dep_ts")  # offline
    aggregate_python(recent, events, event_time="sched_dep_ts", as_of=now)     # one entity, request time
    evaluate_history(recent, rows, keys=["tailnum"], event_time="sched_dep_ts")  # backfill in Python

* ``parse_feature(name, text, schema) -> FeatureExpr`` (``parse_features({name: text}, schema)`` for many):
  raises :class:`FeatureDefinitionError` naming the feature, the reason and the position. ``schema`` maps
  column names to types: ``int`` (also ``bigint``, ``long``), ``double`` (``float``), ``string``, ``bool``
  (``boolean``), ``timestamp``, ``date``. ``FeatureExpr`` has ``name``, ``dtype`` (the inferred result
  type), ``columns`` (inputs read), ``aggregations``, ``is_windowed``, ``max_window`` and ``canonical``.
* ``compile_spark(feature, keys=None, event_time=None, event_time_type="timestamp") -> Column`` and
  ``with_features(df, features, keys=None, event_time=None) -> DataFrame`` (adds one column per feature,
  named after it). Windowed features need the view's entity ``keys`` and ``event_time`` column.
* ``compile_python(feature) -> Callable[[Mapping], value]`` for a row-level feature.
* ``EntityHistory(feature, events, event_time=...)``: one entity's events sorted once; ``.as_of(t, row)``
  (request time: O(log n) for count/sum/mean, O(log n + k log k) for min/max/quantile over k events in
  the window) and ``.backfill()`` (as of each event, O(n log n) in all).
  ``aggregate_python(feature, events, event_time=, as_of=, row=None)`` is the one-shot form;
  ``evaluate_history(feature, rows, keys=, event_time=)`` backfills many entities.

Language
========
Literals: ``12`` (int, 64-bit), ``1.5``/``1e-3``/``.5`` (double), ``"text"`` or ``'text'`` (escapes
``\\n \\t \\r \\\\ \\" \\' \\0 \\uXXXX \\UXXXXXXXX``), ``true``, ``false``, ``null``. Columns by name, or
in backquotes for other names. ``#`` starts a comment. Operators, loosest first: ``or``; ``and``; ``not``;
``== != < <= > >=`` (not chainable); ``+ -``; ``* /``; unary ``-``. Keywords are lowercase.

Types are int, double, string, bool, timestamp, date. int meets double at double (an int is widened
wherever it meets a double: arithmetic, comparison, ``if``, ``coalesce``, ``clip``). Anything else must
match exactly: ``"a" + 1``, ``carrier == 3``, ``if(c, 1, "x")`` are load-time errors, as are unknown
columns or functions, wrong arity, and expressions where a literal is required.

Row-level functions (any null argument gives null unless stated):

=============================  ======================================================================
``a + b``, ``a - b``, ``a * b`` int op int is int (overflow -> null, evaluated as written: never
                                re-associated, so (i + 2**62) + 2**62 is null); otherwise double
``a / b``                       always double; division by zero (0 or -0.0) -> null
``-x``                          negation (int: -(-2**63) -> null)
comparisons, ``and or not``     SQL three-valued logic (``null and false`` is false)
``if(c, a, b)``                 ``a`` when ``c`` is true, else ``b`` (a null condition takes ``b``)
``log(x)``                      natural log; x <= 0 -> null; log(inf) = inf
``log1p(x)``                    log(1 + x); x <= -1 -> null
``abs(x)``                      same type (int: abs(-2**63) -> null)
``clip(x, lo, hi)``             min(max(x, lo), hi) (so hi wins if lo > hi); numeric, any expression
``bucketize(x, [e1, ..., en])`` number of edges <= x, in 0..n: buckets are ``[e_i, e_i+1)``, x < e1 ->
                                0, x >= en -> n, -inf -> 0, inf -> n. Edges: strictly increasing
                                number literals (= numpy.digitize(x, edges) = bisect_right(edges, x))
``coalesce(a, b, ...)``         first non-null
``is_null(x)``                  true/false, never null (NaN inputs are null, so is_null(NaN) is true)
``lower(s)``                    full Unicode lowercase mapping (Spark 4.3's: Unicode 16, final sigma);
                                nested conversions apply only the outer one: lower(upper(s)) =
                                lower(s)
``upper(s)``                    full Unicode uppercase mapping (Spark 4.3's: Unicode 16, ß -> SS);
                                upper(lower(s)) = upper(s)
``concat(a, b, ...)``           strings and ints (ints in decimal); any null -> null
``category_index(x, cats)``     ``category_index(x, ["a", "b"])`` or ``(x, [...], default)``: 0-based
                                index of x among the literal categories (strings or ints, no
                                duplicates); unknown -> default (-1 unless given); null -> null
``hash_bucket(x, n)``           CRC-32 (zlib/IEEE 802.3, as Spark's ``crc32``) of the UTF-8 bytes of x
                                (an int: of its decimal text), mod n; in 0..n-1. n: positive int
                                literal
``hour(ts, "Area/City")``       local hour 0..23 at instant ts in the IANA zone (a string literal; it
                                must be known to Python's zoneinfo at load time and to the JVM when
                                compiled for Spark: Java 17.0.15 lacks zones added in 2025, e.g.
                                America/Coyhaique)
``day_of_week(ts, tz)``         local weekday, Monday = 0 .. Sunday = 6; ``day_of_week(date)`` for
                                dates
``month(ts, tz)``               local month 1..12; ``month(date)`` for dates
``minutes_between(a, b)``       (b - a) in minutes, a double (positive when b is later)
=============================  ======================================================================

Numbers: NaN never exists inside the language. A NaN input is null at the boundary (both compilers), and
an operation whose IEEE result would be NaN (inf - inf, 0 * inf, inf / inf, mean of {inf, -inf}, a
quantile interpolating between -inf and inf) gives null. +-inf are kept (1e308 * 10 = inf, log(inf) =
inf, inf > 1e308). -0.0 equals 0.0. Timestamps are instants with microsecond precision (sub-microsecond
input is floored); Python takes a naive ``datetime`` as UTC. Time-zone functions use the IANA database of
each runtime (the JVM's and Python's: the system's or the ``tzdata`` package); they agree for every zone
from 1970 on (checked for all zones), and before 1970 except for ~90 zones the IANA database has merged
into others (e.g. Africa/Accra, Europe/Oslo), whose local mean time the JVM still knows. Timestamps must
lie in years 1..9999 (Spark's range); Python returns null for the local time where it would leave that
range.

Window aggregations
===================
``count("7d")`` (events), ``count(x, "7d")`` (non-null x), ``sum(x, w)``, ``mean(x, w)``, ``min(x, w)``,
``max(x, w)``, ``quantile(x, q, w)`` with a literal q in [0, 1]. Windows: a literal ``"<n><unit>"`` with
unit s, m, h, d or w. For each event of an entity (the view's entity keys), the aggregate covers the
entity's events whose event time is in ``(t - window, t]``: an event exactly one window old is excluded,
the current event and every event at the same instant (ties) are included. Nulls are ignored; an empty
window gives null (count gives 0). An event whose event time is null gets null aggregations (count
too) and is in no other event's window. Results: count int; sum keeps int/double; mean and quantile
double; min/max keep the type. ``quantile`` is exact with linear interpolation between closest ranks,
Spark's ``percentile``: with the window's non-null values sorted, pos = (n - 1) * q, lo = floor(pos),
hi = ceil(pos), the result is v[lo] if lo == hi or v[lo] == v[hi], else
``v[lo] + (pos - lo) * (v[hi] - v[lo])`` (Spark 4.3's formula, term for term). On finite values this is
numpy's default ``linear`` method (to rounding); with infinities it follows Spark: [-inf, 5] at 0.25 is
-inf + 0.25 * inf = NaN, hence null, while [5, inf] at 0.25 is inf.

Aggregations may be used inside row-level expressions (``coalesce(mean(arr_delay, "7d"), 0.0)``,
``arr_delay - mean(arr_delay, "30d")``, ``count(x, "1d") / count("1d")``); columns outside an aggregation
are read from the current row (in a backfill, the event itself; at request time, the ``row`` given to
``as_of``). Aggregations cannot be nested and their arguments are row-level expressions.

Floating-point sums: Spark adds a window's doubles in IEEE order; Python computes the exactly rounded sum
(an exact integer sum over the values scaled by 2**1074, so that prefix sums can be subtracted without
cancellation). They agree to within summation error (n * 2**-53 * sum|x|), and exactly on inf/NaN/null,
unless a partial sum overflows (sums beyond ~1.8e308), where Spark's order-dependent result may be inf and
Python's is the exact value. An int sum is exact and gives null beyond 64 bits (Spark: ``try_sum``, which
is null if any partial sum overflows).

Case mapping: Python 3.11 knows Unicode 14, Spark 4.3's ICU Unicode 16. The Python side patches the 110
code points whose mapping differs and the 307 whose class (cased / case-ignorable) differs for the one
context rule of root-locale lowercasing (Final_Sigma: Σ -> ς at the end of a word), both tables found by
mapping every code point in both runtimes; the parity tests re-check every code point that could differ.

Errors: :class:`FeatureDefinitionError` (a ValueError) has ``feature``, ``reason``, ``line``, ``column``;
its message reads ``feature 'name': reason (line L, column C)`` followed by the line and a caret.
'''

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.features.checker import FeatureExpr, check_feature
from pipelines.features.errors import FeatureDefinitionError
from pipelines.features.python_compiler import EntityHistory, compile_row
from pipelines.features.python_compiler import evaluate_history as _evaluate_history
from pipelines.features.tree import DTYPES

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import Column, DataFrame

__all__ = [
    "DTYPES",
    "EntityHistory",
    "FeatureDefinitionError",
    "FeatureExpr",
    "aggregate_python",
    "compile_python",
    "compile_spark",
    "evaluate_history",
    "parse_feature",
    "parse_features",
    "with_features",
]


def parse_feature(name: str, text: str, schema: Mapping[str, str]) -> FeatureExpr:
    """Parse and type-check one definition against ``schema`` ({column: type}); raises FeatureDefinitionError."""
    return check_feature(name, text, schema)


def parse_features(definitions: Mapping[str, str], schema: Mapping[str, str]) -> dict[str, FeatureExpr]:
    """Parse many definitions ({name: text}); the first error raised names its feature."""
    return {name: parse_feature(name, text, schema) for name, text in definitions.items()}


def compile_python(feature: FeatureExpr) -> Callable[[Mapping[str, Any]], Any]:
    """The online evaluator of a row-level feature: ``f(row) -> value`` (None for null).

    ``row`` is any Mapping (missing keys are null). Values: int, float, str, bool; a timestamp result is an
    aware UTC datetime, a date result a ``datetime.date``. Windowed features raise ValueError: use
    :class:`EntityHistory` or :func:`aggregate_python`.
    """
    return compile_row(feature)


def aggregate_python(feature: FeatureExpr, events: Sequence[Mapping[str, Any]], *, event_time: str, as_of: Any,
                     row: Mapping[str, Any] | None = None) -> Any:
    """A (windowed) feature for one entity as of time ``as_of``, from that entity's events (any order).

    Events later than ``as_of`` are ignored. ``row`` supplies the columns read outside aggregations. Build an
    :class:`EntityHistory` once instead when evaluating the same history at many times.
    """
    return EntityHistory(feature, events, event_time=event_time).as_of(as_of, row)


def evaluate_history(feature: FeatureExpr, rows: Sequence[Mapping[str, Any]], *, keys: Sequence[str],
                     event_time: str) -> list:
    """Python backfill: the feature as of each row's own event time, entities grouped by ``keys``; the
    same values ``with_features`` computes in Spark, in the order of ``rows``."""
    return _evaluate_history(feature, rows, keys=keys, event_time=event_time)


def compile_spark(feature: FeatureExpr, *, keys: Sequence[str] | None = None, event_time: str | None = None,
                  event_time_type: str = "timestamp") -> Column:
    """The batch evaluator: a pyspark Column. Windowed features need the entity ``keys`` and the
    ``event_time`` column (``event_time_type`` "timestamp" or "date")."""
    from pipelines.features.spark_compiler import compile_column

    return compile_column(feature, keys=keys, event_time=event_time, event_time_type=event_time_type)


def with_features(df: DataFrame, features: Sequence[FeatureExpr], *, keys: Sequence[str] | None = None,
                  event_time: str | None = None) -> DataFrame:
    """``df`` plus one column per feature (named after the feature), computed in one projection."""
    from pipelines.features.spark_compiler import compile_column, event_time_type

    et_type = event_time_type(df, event_time) if event_time and any(f.is_windowed for f in features) else "timestamp"
    return df.withColumns({f.name: compile_column(f, keys=keys, event_time=event_time, event_time_type=et_type)
                           for f in features})
