"""Training-serving parity of the feature DSL: every definition evaluated by the Spark compiler and by the
Python compiler over the same generated data must give the same values.

One local[2] SparkSession for the module; each hypothesis example is ONE DataFrame of many rows with all
features computed in one projection (one Spark job per example). Rows include nulls, NaN, +-inf, 1e308,
subnormals, int64 extremes, empty and non-ASCII strings, timestamps around DST transitions and before
1883 (local mean time offsets with seconds); event sequences include ties, events exactly one window
apart (and one microsecond either side), null keys, null event times and empty windows.

Comparison: ints, strings, bools, dates and timestamps exactly; doubles both null, or the same infinity,
or within 1e-9 relative. Window sums of arbitrary doubles are compared within the summation error bound
(1e-9 of the window's sum of |x|), the only documented difference between the compilers.
"""

from __future__ import annotations

import math
import os
import random
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines.features import (
    FeatureDefinitionError,
    compile_python,
    evaluate_history,
    parse_feature,
    with_features,
)
from pipelines.features.unicode_case import _LOWER_EXTRA, _UPPER_EXTRA
from pipelines.timestamps import to_micros

pytestmark = pytest.mark.integration

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
N_ROWS = 200
EXAMPLES = int(os.environ.get("FEATURE_PARITY_EXAMPLES", "15"))
# No shrinking: every shrink step would be a Spark job, and a failure message already names the feature, the
# row and both values.
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


# `spark`: the session-wide local Spark session of tests/integration/conftest.py (shared, never stopped here).


# --- generated data -----------------------------------------------------------------------------------------

def _micros(dt: datetime) -> int:
    return to_micros(dt)


def _from_micros(m: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=m)


HOUR = 3_600_000_000
DST_EDGES = [_micros(datetime(*args, tzinfo=UTC)) for args in [
    (2013, 3, 10, 7), (2013, 11, 3, 6),            # America/New_York spring forward / fall back
    (2013, 3, 31, 1), (2013, 10, 27, 1),           # Europe/London
    (2013, 4, 6, 15), (2013, 10, 5, 15, 30),       # Australia/Lord_Howe (30-minute DST)
    (2013, 3, 11, 4), (2013, 1, 1, 5),             # New York local midnights
    (1883, 11, 18, 17),                            # New York leaves local mean time (-4:56:02)
]]

FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 15.0, 1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324,
                     2.2250738585072014e-308, 1e-300, math.inf, -math.inf, math.nan, 2.0 ** 53, 2.0 ** 53 + 2]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-100, 100),
)
BIGINTS = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 2, 15, INT64_MIN, INT64_MAX, INT64_MIN + 1, 2 ** 53 + 1, -(2 ** 53) - 1, 2 ** 31]),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-100, 100),
)
INTS = st.one_of(st.none(), st.integers(-(2 ** 31), 2 ** 31 - 1), st.integers(-20, 20))
CASE_CHARS = [chr(c) for c in (*_LOWER_EXTRA, *_UPPER_EXTRA)]
STRINGS = st.one_of(
    st.none(),
    st.sampled_from(["", "AA", "UA", "aa", "ß", "İ", "Σ", "ΑΣ", "ΑΣ Β", "ﬁ", "\x00", "日本", "a b", *CASE_CHARS]),
    st.text(st.characters(codec="utf-8"), max_size=6),
    st.text(st.sampled_from("aAbBσΣςß İı" + "".join(CASE_CHARS[:6])), max_size=5),
)
TIMESTAMPS = st.one_of(
    st.none(),
    st.integers(_micros(datetime(1850, 1, 1, tzinfo=UTC)), _micros(datetime(2150, 1, 1, tzinfo=UTC))).map(_from_micros),
    st.tuples(st.sampled_from(DST_EDGES), st.integers(-3 * HOUR, 3 * HOUR)).map(lambda p: _from_micros(p[0] + p[1])),
    st.tuples(st.sampled_from(DST_EDGES), st.sampled_from([-HOUR, -1_000_000, -1, 0, 1, 1_000_000, HOUR - 1, HOUR]))
    .map(lambda p: _from_micros(p[0] + p[1])),
)
DATES = st.one_of(st.none(), st.dates(date(1850, 1, 1), date(2150, 12, 31)))
BOOLS = st.one_of(st.none(), st.booleans())

ROW_SCHEMA = {"i": "bigint", "j": "int", "x": "double", "y": "double", "s": "string", "t": "string",
              "b": "boolean", "c": "boolean", "ts": "timestamp", "ts2": "timestamp", "d": "date"}


def _assemble(columns: dict, n: int = N_ROWS):
    """n rows from hypothesis-drawn pools of values per column, mixed by a hypothesis-drawn seed: many rows
    and every combination of extremes, at a small cost in hypothesis' data budget (and still shrinkable)."""
    pools = st.fixed_dictionaries({c: st.lists(s, min_size=1, max_size=24) for c, s in columns.items()})

    def build(args):
        pool, seed = args
        rng = random.Random(seed)
        return [{c: rng.choice(values) for c, values in pool.items()} for _ in range(n)]
    return st.tuples(pools, st.integers(0, 2 ** 32)).map(build)


ROWS = _assemble({"i": BIGINTS, "j": INTS, "x": FLOATS, "y": FLOATS, "s": STRINGS, "t": STRINGS, "b": BOOLS,
                  "c": BOOLS, "ts": TIMESTAMPS, "ts2": TIMESTAMPS, "d": DATES})


def _spark_schema(schema: dict[str, str]):
    from pyspark.sql.types import (
        BooleanType,
        DateType,
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    types = {"bigint": LongType(), "int": IntegerType(), "double": DoubleType(), "string": StringType(),
             "boolean": BooleanType(), "timestamp": TimestampType(), "date": DateType()}
    return StructType([StructField("rid", LongType(), False)]
                      + [StructField(name, types[typ]) for name, typ in schema.items()])


def _frame(spark, schema: dict[str, str], rows: list[dict]):
    names = list(schema)
    return spark.createDataFrame([(n, *(r[c] for c in names)) for n, r in enumerate(rows)], _spark_schema(schema))


def _collect(df, features) -> dict[int, dict]:
    """Feature values by row id; timestamps as epoch micros (the JVM->Python conversion uses the local zone)."""
    from pyspark.sql import functions as F

    cols = [F.unix_micros(F.col(f.name)).alias(f.name) if f.dtype == "timestamp" else F.col(f.name)
            for f in features]
    return {r["rid"]: r.asDict() for r in df.select("rid", *cols).collect()}


def _same(a, b, dtype: str, scale: float = 0.0) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if dtype != "double":
        return type(a) is type(b) and a == b
    if math.isnan(a) or math.isnan(b):
        return False  # NaN never leaves either compiler
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * scale)


def _python_value(feature, value):
    if feature.dtype == "timestamp" and value is not None:
        return to_micros(value)
    return value


def _assert_rows_parity(spark, features, rows):
    spark_out = _collect(with_features(_frame(spark, ROW_SCHEMA, rows), features), features)
    problems = []
    for f in features:
        py = compile_python(f)
        for n, row in enumerate(rows):
            a, b = _python_value(f, py(row)), spark_out[n][f.name]
            if not _same(a, b, f.dtype):
                problems.append(f"{f.name} = {f.text!r}\n    row {row}\n    python {a!r}  spark {b!r}")
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:5])


# --- every row-level function -------------------------------------------------------------------------------

ROW_FEATURES = [
    "i + j", "i - j", "i * j", "i / j", "-i", "i * 2 + 1", "i + x", "j - y", "x + y", "x - y", "x * y",
    "x / y", "-x", "x / 0", "i / 0", "2 * x - y / 3",
    "x < y", "x == y", "x != y", "i <= x", "i > j", "j >= 0", "s < t", "s == t", "s != 'AA'", "b == c",
    "b < c", "ts < ts2", "ts == ts2", "d >= d", "x > 1e308", "i == 9007199254740993",
    "b and c", "b or c", "not b", "(x > 0) and b", "(x > 0) or (i > 0)", "not (b or c) and x <= y",
    "if(b, x, y)", "if(x > y, i, j)", "if(b, s, t)", "if(is_null(x), -1.0, x)", "if(c, i, x)",
    "log(x)", "log(i)", "log1p(x)", "log1p(j)", "log(abs(x) + 1) * 2 - y",
    "abs(i)", "abs(x)", "abs(j)",
    "clip(x, -1.5, 100)", "clip(i, j, 1000)", "clip(x, y, 10.0)", "clip(j, 5, -5)",
    "bucketize(x, [-1e300, -1, 0, 0.5, 15, 1e308])", "bucketize(i, [-100, 0, 1, 100])", "bucketize(j, [0.5, 2.5])",
    "bucketize(i, [-9223372036854775808, 9223372036854775807])",
    "coalesce(x, y, 0.0)", "coalesce(i, j)", "coalesce(s, t, 'none')", "coalesce(i, x)", "coalesce(ts, ts2)",
    "coalesce(d, d)",
    "is_null(x)", "is_null(s)", "is_null(ts)", "is_null(d)", "is_null(i / j)",
    "lower(s)", "upper(s)", "upper(lower(t))", "lower(concat(s, t))",
    "concat(s, '|', t)", "concat(s, i)", "concat(j, '-', i)",
    'category_index(s, ["", "AA", "UA", "ß", "Σ", "日本"])', "category_index(lower(s), ['aa', 'ß'], 99)",
    "category_index(i, [0, 1, -1, 9223372036854775807], 99)", "category_index(j, [-20, 0, 20])",
    "hash_bucket(s, 10)", "hash_bucket(i, 7)", "hash_bucket(concat(s, t), 1000003)", "hash_bucket(j, 1)",
    "hash_bucket(t, 9223372036854775807)",
    'hour(ts, "America/New_York")', 'hour(ts, "UTC")', 'hour(ts, "Asia/Kolkata")', 'hour(ts, "Australia/Lord_Howe")',
    'hour(ts2, "Europe/London")', 'hour(ts, "Pacific/Chatham")',
    'day_of_week(ts, "America/New_York")', 'day_of_week(ts, "Pacific/Kiritimati")', 'day_of_week(ts2, "UTC")',
    'month(ts, "America/New_York")', 'month(ts2, "Australia/Sydney")', "day_of_week(d)", "month(d)",
    "minutes_between(ts, ts2)", "minutes_between(ts2, ts)", "minutes_between(ts, ts) == 0",
    "if(b, ts, ts2)",
    "if(x > 0 and not b, bucketize(x, [1, 10]), category_index(lower(s), ['aa', 'ß']))",
    "coalesce(log(x), log1p(y), -1.0) * 1e300",
]


def _parse_all(texts, schema, prefix):
    return [parse_feature(f"{prefix}{n}", text, schema) for n, text in enumerate(texts)]


@SETTINGS
@given(rows=ROWS)
def test_every_row_function_agrees(spark, rows):
    _assert_rows_parity(spark, _parse_all(ROW_FEATURES, ROW_SCHEMA, "f"), rows)


# --- random expressions -------------------------------------------------------------------------------------

LEAVES = {
    "int": st.sampled_from(["i", "j", "0", "1", "-1", "7", "9223372036854775807", "-9223372036854775807", "null"]),
    "double": st.sampled_from(["x", "y", "0.0", "-0.0", "1.5", "1e308", "-1e308", "5e-324", "0.1", "null"]),
    "string": st.sampled_from(["s", "t", "''", "'a'", "'ß'", "'Σ'", "null"]),
    "bool": st.sampled_from(["b", "c", "true", "false", "null"]),
    "timestamp": st.sampled_from(["ts", "ts2"]),
}
ZONES = ["America/New_York", "UTC", "Australia/Lord_Howe", "Asia/Kathmandu"]


@st.composite
def expressions(draw, dtype: str, depth: int = 4) -> str:
    if depth == 0 or draw(st.integers(0, 4)) == 0:
        return draw(LEAVES[dtype])

    def sub(t):
        return draw(expressions(t, depth - 1))

    num = st.sampled_from(["int", "double"])
    if dtype == "int":
        choice = draw(st.integers(0, 9))
        if choice <= 2:
            return f"({sub('int')} {draw(st.sampled_from(['+', '-', '*']))} {sub('int')})"
        options = [
            lambda: f"(-{sub('int')})", lambda: f"abs({sub('int')})",
            lambda: f"clip({sub('int')}, {sub('int')}, {sub('int')})",
            lambda: f"bucketize({sub(draw(num))}, [-10, 0, 0.5, 1e300])",
            lambda: f"category_index({sub('string')}, ['a', 'A', 'ß', 'SS', ''])",
            lambda: f"hash_bucket({sub(draw(st.sampled_from(['string', 'int'])))}, 13)",
            lambda: f"hour({sub('timestamp')}, '{draw(st.sampled_from(ZONES))}')",
            lambda: f"if({sub('bool')}, {sub('int')}, {sub('int')})",
            lambda: f"coalesce({sub('int')}, {sub('int')})",
        ]
        return draw(st.sampled_from(options))()
    if dtype == "double":
        options = [
            lambda: f"({sub('double')} {draw(st.sampled_from(['+', '-', '*', '/']))} {sub(draw(num))})",
            lambda: f"({sub(draw(num))} / {sub(draw(num))})",
            lambda: f"log({sub(draw(num))})", lambda: f"log1p({sub(draw(num))})", lambda: f"abs({sub('double')})",
            lambda: f"(-{sub('double')})", lambda: f"clip({sub('double')}, -1e10, {sub(draw(num))})",
            lambda: f"minutes_between({sub('timestamp')}, {sub('timestamp')})",
            lambda: f"if({sub('bool')}, {sub('double')}, {sub(draw(num))})",
            lambda: f"coalesce({sub('double')}, {sub(draw(num))}, 0.25)",
        ]
        return draw(st.sampled_from(options))()
    if dtype == "bool":
        options = [
            lambda: f"({sub(draw(num))} {draw(st.sampled_from(['<', '<=', '==', '!=', '>', '>=']))} {sub(draw(num))})",
            lambda: f"({sub('string')} {draw(st.sampled_from(['<', '==', '>=']))} {sub('string')})",
            lambda: f"({sub('bool')} {draw(st.sampled_from(['and', 'or']))} {sub('bool')})",
            lambda: f"(not {sub('bool')})", lambda: f"is_null({sub(draw(st.sampled_from(list(LEAVES))))})",
            lambda: f"({sub('timestamp')} < {sub('timestamp')})",
            lambda: f"if({sub('bool')}, {sub('bool')}, {sub('bool')})",
        ]
        return draw(st.sampled_from(options))()
    if dtype == "string":
        options = [
            lambda: f"lower({sub('string')})", lambda: f"upper({sub('string')})",
            lambda: f"concat({sub('string')}, {sub(draw(st.sampled_from(['string', 'int'])))})",
            lambda: f"if({sub('bool')}, {sub('string')}, {sub('string')})",
            lambda: f"coalesce({sub('string')}, {sub('string')})",
        ]
        return draw(st.sampled_from(options))()
    return draw(LEAVES[dtype])


RANDOM_EXPRESSIONS = st.lists(st.sampled_from(["int", "double", "bool", "string"]).flatmap(expressions),
                              min_size=40, max_size=40)


@SETTINGS
@given(rows=ROWS, texts=RANDOM_EXPRESSIONS)
def test_random_expressions_agree(spark, rows, texts):
    features = []
    for n, text in enumerate(texts):
        try:
            features.append(parse_feature(f"r{n}", text, ROW_SCHEMA))
        except FeatureDefinitionError as exc:
            assert "always null" in exc.reason, exc  # the generator only builds well-typed expressions
    _assert_rows_parity(spark, features, rows)


# --- window aggregations ------------------------------------------------------------------------------------

MINUTE = 60_000_000
BASE = _micros(datetime(2013, 3, 9, 12, tzinfo=UTC))
WINDOW_SCHEMA = {"k": "string", "k2": "int", "et": "timestamp", "ed": "date", "v": "double", "u": "double",
                 "g": "double", "w": "bigint", "s": "string"}
# Sums of v are exact in IEEE arithmetic whatever the order (multiples of 1/1024 below 2**40), so sum/mean
# of v must match exactly even with inf/-inf/NaN/null mixed in; u has every extreme (count/min/max/quantile);
# g is arbitrary finite doubles, whose sums are compared within the summation error bound.
DYADIC = st.integers(-(2 ** 40), 2 ** 40).map(lambda n: n / 1024.0)
VALUES = _assemble({
    "v": st.one_of(st.none(), DYADIC, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])),
    "u": FLOATS,
    "g": st.one_of(st.none(), st.floats(-1e6, 1e6), st.floats(-1e300, 1e300), st.sampled_from([math.inf, math.nan])),
    "w": st.one_of(st.none(), st.integers(-(2 ** 40), 2 ** 40), st.integers(-3, 3)),
    "s": st.one_of(st.none(), st.sampled_from(["a", "b", ""])),
})


@st.composite
def events(draw):
    """Events of a few entities (keys k, k2; k may be null) on a 30-minute grid over `span` steps (a short
    span: dense windows and many ties; a long one: sparse and empty windows), some 1 microsecond off the
    grid, some without an event time."""
    rows = draw(VALUES)
    span = draw(st.sampled_from([0, 1, 3, 8, 30, 200]))
    null_rate = draw(st.sampled_from([0.0, 0.05]))
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    for row in rows:
        row["k"] = rng.choice(["a", "b", "c", None])
        row["k2"] = rng.choice([1, 2])
        step, jitter = rng.randint(0, span), rng.choice([0, 0, 0, 0, 1, -1])
        row["et"] = None if rng.random() < null_rate else _from_micros(BASE + step * 30 * MINUTE + jitter)
        row["ed"] = None if rng.random() < null_rate else date(2013, 3, 1) + timedelta(days=rng.randint(0, span // 8))
    return rows


EVENTS = events()

WINDOW_FEATURES = [
    'count("1h")', 'count(v, "2h")', 'count(u, "30m")', 'count(s, "1d")',
    'sum(v, "90m")', 'sum(w, "1d")', 'sum(w, "30m")', 'sum(if(s == "a", 1, 0), "1d")',
    'mean(v, "2h")', 'mean(w, "30m")', 'mean(v, "1d")',
    'min(u, "1h")', 'max(u, "2h")', 'min(w, "90m")', 'max(w, "1d")',
    'quantile(u, 0.5, "2h")', 'quantile(u, 0.9, "1d")', 'quantile(w, 0, "1h")', 'quantile(w, 1, "1h")',
    'quantile(v, 0.25, "30m")', 'quantile(u, 0.333, "90m")', 'quantile(log1p(abs(u)), 0.75, "1d")',
    'mean(log1p(abs(u)), "2h")',
    'coalesce(mean(v, "1h"), 0.0) - v', 'count(v, "1d") / count("1d")', 'max(u, "1h") - min(u, "1h")',
    'if(count("1h") > 2, mean(w, "1h"), -1.0)', 'concat(s, "-", count("1h"))', 'count("1s")', 'count("1w")',
]
# Sums of arbitrary doubles, each with the feature giving its error scale (sum or mean of |g|).
SUM_FEATURES = [('sum(g, "2h")', 'sum(abs(g), "2h")'), ('mean(g, "1d")', 'mean(abs(g), "1d")'),
                ('sum(g, "30m")', 'sum(abs(g), "30m")')]


def _assert_window_parity(spark, rows, *, keys, event_time):
    features = _parse_all(WINDOW_FEATURES + [s for s, _ in SUM_FEATURES], WINDOW_SCHEMA, "w")
    scales = {f.name: parse_feature("scale", scale, WINDOW_SCHEMA)
              for f, (_, scale) in zip(features[len(WINDOW_FEATURES):], SUM_FEATURES, strict=True)}
    df = with_features(_frame(spark, WINDOW_SCHEMA, rows), features, keys=keys, event_time=event_time)
    spark_out = _collect(df, features)
    problems = []
    for f in features:
        py = evaluate_history(f, rows, keys=keys, event_time=event_time)
        scale = (evaluate_history(scales[f.name], rows, keys=keys, event_time=event_time) if f.name in scales
                 else [0.0] * len(rows))
        for n, row in enumerate(rows):
            a, b = py[n], spark_out[n][f.name]
            if not _same(a, b, f.dtype, scale[n] or 0.0):
                problems.append(f"{f.name} = {f.text!r} at row {n} {row}\n    python {a!r}  spark {b!r}")
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:5])


@SETTINGS
@given(rows=EVENTS)
def test_window_aggregations_agree(spark, rows):
    _assert_window_parity(spark, rows, keys=["k", "k2"], event_time="et")


@settings(SETTINGS, max_examples=5)
@given(rows=EVENTS)
def test_window_aggregations_agree_on_a_date_event_time(spark, rows):
    _assert_window_parity(spark, rows, keys=["k"], event_time="ed")


def test_window_boundaries_exactly(spark):
    """(t - window, t]: an event exactly one window old is out, one microsecond younger is in, ties are in."""
    w = 3_600_000_000
    times = [0, 1, w - 1, w, w, w + 1, 2 * w, 2 * w]
    rows = [{"k": "a", "k2": 1, "et": _from_micros(BASE + t), "ed": None, "v": float(n), "u": None, "g": None,
             "w": n, "s": None} for n, t in enumerate(times)]
    features = _parse_all(['count("1h")', 'sum(w, "1h")', 'min(w, "1h")', 'max(w, "1h")'], WINDOW_SCHEMA, "b")
    out = _collect(with_features(_frame(spark, WINDOW_SCHEMA, rows), features, keys=["k"], event_time="et"),
                   features)
    # Windows: t=0: {0}; t=1: {0,1}; t=w-1: {0,1,2}; t=w: (0, w] = {1,2,3,4}; t=w+1: (1, w+1] = {2,3,4,5};
    # t=2w: (w, 2w] = {5,6,7}.
    expected = {"b0": [1, 2, 3, 4, 4, 4, 3, 3], "b1": [0, 1, 3, 10, 10, 14, 18, 18],
                "b2": [0, 0, 0, 1, 1, 2, 5, 5], "b3": [0, 1, 2, 4, 4, 5, 7, 7]}
    for f in features:
        assert [out[n][f.name] for n in range(len(rows))] == expected[f.name], f.text
        assert evaluate_history(f, rows, keys=["k"], event_time="et") == expected[f.name], f.text


# --- single facts checked against Spark ---------------------------------------------------------------------

def test_lower_upper_agree_on_every_code_point_that_could_differ(spark):
    """Every code point Python case-maps or does not know (unassigned in its Unicode version) below U+20000,
    plus a sample of the rest: alone (lower and upper) and as the neighbour of a capital sigma, whose
    lowercase depends on whether its neighbours are cased or case-ignorable."""
    import unicodedata

    from pyspark.sql import functions as F

    cps = [c for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF
           and (chr(c).lower() != chr(c) or chr(c).upper() != chr(c) or unicodedata.category(chr(c)) == "Cn")]
    cps += list(range(0x20000, 0x110000, 97))
    rows = [(chr(c), f"A{chr(c)}\u03a3", f"1{chr(c)}\u03a3", f"\u03a3{chr(c)}") for c in cps]
    df = spark.createDataFrame(rows, "s string, p string, q string, r string")
    schema = {"s": "string", "p": "string", "q": "string", "r": "string"}
    features = _parse_all(["lower(s)", "upper(s)", "lower(p)", "lower(q)", "lower(concat('A', r))"], schema, "c")
    got = df.select(*[F.col(c) for c in schema], *[F.lower("s"), F.upper("s"), F.lower("p"), F.lower("q"),
                                                    F.lower(F.concat(F.lit("A"), F.col("r")))]).collect()
    python = [compile_python(f) for f in features]
    bad = []
    for r in got:
        row = {c: r[c] for c in schema}
        for n, f in enumerate(features):
            if python[n](row) != r[4 + n]:
                bad.append((f.text, ascii(row), ascii(python[n](row)), ascii(r[4 + n])))
    assert not bad, bad[:10]


# CRC-32 (zlib / IEEE) mod 1000; crc32(b"hello world") = 0x0D4A1185 = 222957957 is the textbook value. The
# same table is in tests/unit/test_feature_dsl.py (Python side).
HASH_GOLDEN = [("", 0), ("AA", 573), ("UA", 520), ("N14228", 166), ("JFK", 919), ("ß", 839), ("日本", 756),
               ("hello world", 957), ("\x00", 757)]


def test_hash_bucket_golden_values_in_spark(spark):
    feature = parse_feature("h", "hash_bucket(s, 1000)", {"s": "string"})
    df = spark.createDataFrame([(s,) for s, _ in HASH_GOLDEN], "s string")
    got = [r.h for r in with_features(df, [feature]).collect()]
    assert got == [bucket for _, bucket in HASH_GOLDEN]


def test_time_zones_agree_between_python_and_the_jvm(spark):
    """Every IANA zone both runtimes know gives the same local wall clock (hence hour, weekday, month) around
    2013's DST changes (and, but for merged zones, in 1890); the few only Python knows (its tzdata is newer than the JVM's) are
    refused when compiling for Spark. The compilers' own zone conversion, with the zone as a column."""
    from zoneinfo import ZoneInfo, available_timezones

    from pyspark.sql import functions as F

    from pipelines.features.functions import local_time, spark_local_micros

    jvm_zones = set(spark.sparkContext._jvm.java.time.ZoneId.getAvailableZoneIds())
    python_zones = {z for z in available_timezones() if "/" in z and not z.startswith(("posix/", "right/"))}
    python_only = sorted(python_zones - jvm_zones)
    assert len(python_only) <= 5, python_only
    zones = sorted(python_zones & jvm_zones) + ["UTC"]
    instants = [datetime(2013, m, d, h, tzinfo=UTC) for m, d in [(3, 10), (3, 31), (10, 27), (11, 3)]
                for h in (0, 6, 7)] + [datetime(1890, 1, 1, 12, 34, 56, tzinfo=UTC)]
    df = spark.createDataFrame([(z, t) for z in zones for t in instants], "tz string, ts timestamp")
    got = df.select("tz", F.unix_micros("ts").alias("ts"), spark_local_micros(F, F.col("ts"), F.col("tz")).alias("local"))
    bad = []
    for r in got.collect():
        local = local_time(r.ts, ZoneInfo(r.tz))
        expected = _micros(local.replace(tzinfo=UTC)) + r.ts % 1_000_000
        if expected != r.local:
            bad.append((r.tz, _from_micros(r.ts), local, _from_micros(r.local)))
    assert not [b for b in bad if b[1].year >= 1970], bad[:10]
    # Before 1970 the IANA database keeps one history for zones it merged (Africa/Accra is a link to
    # Africa/Abidjan); the JVM's copy keeps their old local mean times. Documented; not the flights' zones.
    early = {b[0] for b in bad}
    assert len(early) < 120 and not early & {"America/New_York", "America/Chicago", "America/Denver",
                                             "America/Los_Angeles", "America/Puerto_Rico", "Europe/London",
                                             "UTC"}, sorted(early)
    for z in python_only:
        feature = parse_feature("new_zone", f'hour(ts, "{z}")', {"ts": "timestamp"})  # Python knows it
        with pytest.raises(FeatureDefinitionError, match="unknown to Spark"):
            with_features(df, [feature])
