"""The feature DSL without Spark: parser, type checker, the Python evaluator's semantics and the window engine.

Parity with the Spark compiler is tested in tests/integration/test_feature_parity.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import zlib
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.features import (
    EntityHistory,
    FeatureDefinitionError,
    aggregate_python,
    compile_python,
    compile_spark,
    evaluate_history,
    parse_feature,
    parse_features,
)
from pipelines.features.python_compiler import aggregate_values

SCHEMA = {"i": "bigint", "j": "int", "x": "double", "y": "double", "s": "string", "t": "string", "b": "boolean",
          "c": "boolean", "ts": "timestamp", "ts2": "timestamp", "d": "date", "arr_delay": "double",
          "dep_delay": "double", "carrier": "string"}
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
INF, NAN = math.inf, math.nan


def feature(text: str, name: str = "f"):
    return parse_feature(name, text, SCHEMA)


def ev(text: str, **row):
    return compile_python(feature(text))(row)


def error(text: str, schema=None) -> FeatureDefinitionError:
    with pytest.raises(FeatureDefinitionError) as info:
        parse_feature("feat", text, SCHEMA if schema is None else schema)
    assert info.value.feature == "feat"
    assert str(info.value).startswith("feature 'feat': ")
    return info.value


# --- parser -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "canonical"), [
    ("1 + 2 * 3", "(1 + (2 * 3))"),
    ("(1 + 2) * 3", "((1 + 2) * 3)"),
    ("1 - 2 - 3", "((1 - 2) - 3)"),                      # left-associative
    ("8 / 4 / 2", "((8.0 / 4.0) / 2.0)"),
    ("i * j + i / j", "(double((i * j)) + (double(i) / double(j)))"),
    ("-x * 2", "((-x) * 2.0)"),                          # unary minus binds tighter than *
    ("-2 * 3", "(-2 * 3)"),                              # a negative literal is folded
    ("2 - -i", "(2 - (-i))"),
    ("- - x", "(-(-x))"),
    ("x + 1 > y * 2", "((x + 1.0) > (y * 2.0))"),
    ("not b and c", "((not b) and c)"),
    ("not x > 1", "(not (x > 1.0))"),                    # not binds looser than comparisons
    ("b or c and b", "(b or (c and b))"),               # and binds tighter than or
    ("b or c or b", "((b or c) or b)"),
    ("b and c and b", "((b and c) and b)"),
    ("x == y or not (i != j)", "((x == y) or (not (i != j)))"),
    ("if(b, 1, 2) + 1", "(if(b, 1, 2) + 1)"),
    ("i < x", "(double(i) < x)"),                        # int meets double at double
    ("1e3 + .5 + 2.", "((1000.0 + 0.5) + 2.0)"),
    ("  x  # a comment\n + 1", "(x + 1.0)"),
    ("`x` + 1", "(x + 1.0)"),
])
def test_precedence_associativity_and_promotion(text, canonical):
    assert feature(text).canonical == canonical


@pytest.mark.parametrize(("text", "line", "column", "reason"), [
    ("1 +", 1, 4, "expected an expression, found end of input"),
    ("(1 + 2", 1, 7, "expected ')' to close '('"),
    ("log(x,, 1)", 1, 7, "expected an expression, found ','"),
    ("x y", 1, 3, "after a complete expression (missing operator or comma?)"),
    ("x = 1", 1, 3, "use '==' to compare"),
    ("x && b", 1, 3, "use 'and'"),
    ("x <> y", 1, 3, "use '!='"),
    ("'abc", 1, 1, "unterminated string literal"),
    ('"a\\qb"', 1, 3, "unknown escape \\q"),
    ("1e", 1, 2, "exponent has no digits"),
    ("12abc", 1, 1, "invalid number literal"),
    ("x @ 1", 1, 3, "unexpected character '@'"),
    ("x < y < 1", 1, 7, "comparisons cannot be chained"),
    ("x +\n  * 2", 2, 3, "expected an expression, found '*'"),
    ("", 1, 1, "empty definition"),
    ("[1, 2]", 1, 1, "a list [...] is only allowed"),
    ("1e999", 1, 1, "out of the range of a double"),
    ("`x", 1, 1, "unterminated quoted name"),
])
def test_syntax_errors_name_the_position(text, line, column, reason):
    exc = error(text)
    assert reason in exc.reason
    assert (exc.line, exc.column) == (line, column)
    assert f"(line {line}, column {column})" in str(exc)
    assert str(exc).rstrip().endswith("^")  # a caret under the offending character


def test_literals():
    assert ev('"a\\"b\\n\\t\\u00e9\\U0001F600"') == 'a"b\n\té\U0001F600'
    assert ev("'it\\'s'") == "it's"
    assert ev("true") is True and ev("false") is False
    assert ev("9223372036854775807") == INT64_MAX
    assert ev("-9223372036854775808") == INT64_MIN
    assert ev("1.5e-3") == 0.0015
    assert feature("12").dtype == "int" and feature("12.0").dtype == "double"


def test_deep_nesting_is_a_definition_error_not_a_crash():
    exc = error("(" * 5000 + "1" + ")" * 5000)
    assert "nested too deeply" in exc.reason


# --- type checker -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "reason"), [
    # unknown names
    ("arr_dealy + 1", "unknown column 'arr_dealy' (did you mean 'arr_delay'?)"),
    ("nope", "unknown column 'nope'"),
    ("count + 1", "count is a function"),
    ("foo(x)", "unknown function 'foo'"),
    ("loog(x)", "did you mean log(x)?"),
    # mixing types
    ("s + 1", "'+' needs numbers, got string + int (use concat(a, b) to join strings)"),
    ("ts - ts2", "use minutes_between(start, end)"),
    ("b * 2", "'*' needs numbers, got bool * int"),
    ("s == 1", "cannot compare string with int"),
    ("x < s", "cannot compare double with string"),
    ("ts > d", "cannot compare timestamp with date"),
    ("if(b, 1, 'x')", "the branches of if() have different types: int and string"),
    ("if(x, 1, 2)", "the condition of if() must be a bool, got double"),
    ("coalesce(x, s)", "the arguments of coalesce() have different types"),
    ("b and x", "the right operand of 'and' must be a bool, got double"),
    ("not i", "the operand of 'not' must be a bool, got int"),
    ("-s", "the operand of unary '-' must be a number"),
    ("log(s)", "the argument of log() must be a number, got string"),
    ("lower(x)", "the argument of lower() must be a string, got double"),
    ("concat(s, x)", "the arguments of concat() must be strings or ints, got double"),
    ("hash_bucket(x, 10)", "the value of hash_bucket() must be a string or an int, got double"),
    ("category_index(s, [1, 2])", "category 1 is a int literal but the value is a string"),
    ("minutes_between(ts, d)", "the arguments of minutes_between() must be timestamps, got date"),
    ("hour(d, 'UTC')", "the first argument of hour() must be a timestamp, got date"),
    ("day_of_week(d, 'UTC')", "a date has no time zone"),
    ("mean(s, '1d')", "the argument of mean() must be a number, got string"),
    # arity
    ("log(x, 2)", "log() takes 1 argument, got 2: log(x)"),
    ("clip(x, 1)", "clip() takes 3 arguments, got 2"),
    ("if(b, 1)", "if() takes 3 arguments, got 2"),
    ("coalesce()", "coalesce() takes at least 1 argument"),
    ("count()", "count() takes 1 or 2 arguments, got 0"),
    ("quantile(x, '1d')", "quantile() takes 3 arguments, got 2"),
    ("hour(ts)", "hour() takes 2 arguments, got 1"),
    ("day_of_week(ts)", "needs an explicit time zone"),
    # literals required
    ("bucketize(x, [0, y])", "a bucket edge must be a number literal, not an expression"),
    ("bucketize(x, y)", "the edges of bucketize() must be a list of number literals"),
    ("bucketize(x, [3, 1])", "must be strictly increasing: 3 is followed by 1"),
    ("bucketize(x, [1, 1])", "must be strictly increasing"),
    ("bucketize(x, [])", "needs at least one edge"),
    ("category_index(s, [t])", "a category must be a string or integer literal"),
    ("category_index(s, t)", "the categories of category_index() must be a list of literals"),
    ("category_index(s, ['a', 'a'])", "duplicate category 'a'"),
    ("category_index(s, ['a'], j)", "the default of category_index() must be a number literal"),
    ("category_index(s, ['a'], 1.5)", "the default of category_index() must be an integer literal"),
    ("hash_bucket(s, j)", "the bucket count of hash_bucket() must be a number literal"),
    ("hash_bucket(s, 0)", "must be a positive integer literal"),
    ("hour(ts, s)", "the time zone of hour() must be a string literal"),
    ("hour(ts, 'Mars/Olympus_Mons')", "unknown time zone 'Mars/Olympus_Mons'"),
    ("hour(ts, '../etc/passwd')", "unknown time zone"),
    ("mean(x, s)", "the window of mean() must be a duration literal"),
    ("mean(x, '7')", "invalid window '7' in mean()"),
    ("mean(x, '7y')", "invalid window '7y'"),
    ("mean(x, '0d')", "invalid window '0d'"),
    ("sum(x, '40000d')", "longer than 100 years"),
    ("quantile(x, y, '1d')", "the level of quantile() must be a number literal"),
    ("quantile(x, 1.5, '1d')", "the level of quantile() must be between 0 and 1"),
    # windows
    ("mean(mean(x, '1d'), '7d')", "window aggregations cannot be nested: mean() inside mean()"),
    ("count(null, '1d')", "the argument of count() is always null"),
    # others
    ("9223372036854775808", "out of the 64-bit range"),
    ("null", "always null"),
    ("if(b, null, null)", "always null"),
])
def test_type_errors_name_the_feature_and_the_reason(text, reason):
    exc = error(text)
    assert reason in exc.reason, exc.reason


def test_error_positions_point_at_the_culprit():
    exc = error("x + log(s)")
    assert exc.column == 9  # the argument s
    exc = error("bucketize(x, [0, 1, y])")
    assert exc.column == 21


def test_bad_names_and_schemas():
    with pytest.raises(FeatureDefinitionError, match="a feature name must be an identifier"):
        parse_feature("bad name", "1", SCHEMA)
    with pytest.raises(FeatureDefinitionError, match="unknown type 'varchar'"):
        parse_feature("f", "1", {"a": "varchar"})
    with pytest.raises(FeatureDefinitionError, match="feature 'two'"):
        parse_features({"one": "x + 1", "two": "x + s"}, SCHEMA)


@pytest.mark.parametrize(("text", "dtype"), [
    ("i + j", "int"), ("i + x", "double"), ("i / j", "double"), ("-i", "int"), ("abs(x)", "double"),
    ("abs(i)", "int"), ("clip(i, 0, 10)", "int"), ("clip(i, 0, 1.5)", "double"), ("log(i)", "double"),
    ("x > 1", "bool"), ("is_null(s)", "bool"), ("if(b, i, x)", "double"), ("coalesce(i, j)", "int"),
    ("coalesce(s, 'x')", "string"), ("lower(s)", "string"), ("concat(s, i)", "string"),
    ("bucketize(x, [1])", "int"), ("category_index(s, ['a'])", "int"), ("hash_bucket(s, 3)", "int"),
    ("hour(ts, 'UTC')", "int"), ("month(d)", "int"), ("minutes_between(ts, ts2)", "double"),
    ("if(b, ts, ts2)", "timestamp"), ("coalesce(d, d)", "date"), ("null + 1", "int"), ("x == null", "bool"),
    ("count('1d')", "int"), ("count(s, '1d')", "int"), ("sum(i, '1d')", "int"), ("sum(x, '1d')", "double"),
    ("mean(i, '1d')", "double"), ("min(i, '1d')", "int"), ("max(x, '1d')", "double"),
    ("quantile(i, 0.5, '1d')", "double"), ("coalesce(mean(x, '7d'), 0)", "double"),
])
def test_result_types_are_inferred(text, dtype):
    assert feature(text).dtype == dtype


def test_feature_metadata():
    f = feature("coalesce(mean(arr_delay, '7d'), 0.0) - dep_delay + count('30d')")
    assert f.columns == ("arr_delay", "dep_delay")
    assert f.is_windowed and [a.fn for a in f.aggregations] == ["mean", "count"]
    assert f.max_window == timedelta(days=30)
    assert not feature("x + 1").is_windowed and feature("x + 1").max_window is None
    assert "FeatureExpr('f': double" in repr(f)


# --- Python evaluator: values and nulls ---------------------------------------------------------------------

def test_nulls_propagate_unless_coalesced():
    assert ev("x + 1") is None
    assert ev("x + 1", x=None) is None
    assert ev("i * 2", i=None) is None
    assert ev("s == 'a'") is None
    assert ev("lower(s)") is None
    assert ev("concat(s, 'a')", s=None) is None
    assert ev("coalesce(x, y, 3.0)", y=2.0) == 2.0
    assert ev("coalesce(x, y, 3.0)") == 3.0
    assert ev("is_null(x)") is True and ev("is_null(x)", x=1.0) is False
    assert ev("x == null", x=1.0) is None
    assert ev("null + 1") is None


@pytest.mark.parametrize(("a", "b", "and_", "or_"), [
    (True, True, True, True), (True, False, False, True), (True, None, None, True),
    (False, False, False, False), (False, None, False, None), (None, None, None, None),
])
def test_three_valued_logic(a, b, and_, or_):
    assert ev("b and c", b=a, c=b) is and_ and ev("c and b", b=a, c=b) is and_
    assert ev("b or c", b=a, c=b) is or_ and ev("c or b", b=a, c=b) is or_
    assert ev("not b", b=a) is (None if a is None else not a)


def test_if_with_a_null_condition_takes_the_else_branch():
    assert ev("if(b, 1, 2)", b=None) == 2
    assert ev("if(x > 0, 1, 2)") == 2
    assert ev("if(null, 1, 2)") == 2


def test_division():
    assert ev("x / y", x=1.0, y=0.0) is None
    assert ev("x / y", x=1.0, y=-0.0) is None
    assert ev("i / j", i=1, j=0) is None
    assert ev("x / 0") is None and ev("x / 0", x=5.0) is None
    assert ev("i / j", i=7, j=2) == 3.5
    assert ev("x / y", x=1e308, y=1e-10) == INF  # overflow is inf, as in IEEE and Spark
    assert ev("x / y", x=INF, y=INF) is None     # NaN -> null


def test_nan_is_null_and_inf_is_kept():
    assert ev("x", x=NAN) is None
    assert ev("is_null(x)", x=NAN) is True
    assert ev("x + 1", x=np.float64("nan")) is None
    assert ev("x * 10", x=1e308) == INF
    assert ev("x - y", x=INF, y=INF) is None
    assert ev("x * 0", x=INF) is None
    assert ev("x + 1", x=-INF) == -INF
    assert ev("x > 1e308", x=INF) is True
    assert ev("log(x)", x=INF) == INF
    assert ev("log1p(x)", x=INF) == INF
    assert ev("abs(x)", x=-INF) == INF
    assert ev("x == y", x=0.0, y=-0.0) is True
    assert ev("i", i=float("nan")) is None  # a pandas int column with missing values is float


def test_int_arithmetic_is_64_bit_with_overflow_to_null():
    assert ev("i + 1", i=INT64_MAX) is None
    assert ev("i - 1", i=INT64_MIN) is None
    assert ev("i * 2", i=2 ** 62) is None
    assert ev("(i + 9223372036854775807) + -9223372036854775807", i=5) is None  # no re-association
    assert ev("-i", i=INT64_MIN) is None
    assert ev("abs(i)", i=INT64_MIN) is None
    assert ev("i + j", i=INT64_MAX - 1, j=1) == INT64_MAX
    # int meets double at double, like Spark: 2**53 + 1 as a double is 2**53
    assert ev("i == x", i=2 ** 53 + 1, x=2.0 ** 53) is True
    assert ev("i / j", i=2 ** 53 + 1, j=1) == 2.0 ** 53


def test_log_and_log1p_domains():
    assert ev("log(x)", x=math.e) == pytest.approx(1.0)
    assert ev("log(x)", x=0.0) is None and ev("log(x)", x=-1.0) is None and ev("log(i)", i=0) is None
    assert ev("log1p(x)", x=-1.0) is None and ev("log1p(x)", x=-0.5) == math.log1p(-0.5)
    assert ev("log(x)", x=5e-324) == math.log(5e-324)


def test_clip():
    assert ev("clip(x, 0, 10)", x=-3.0) == 0.0
    assert ev("clip(x, 0, 10)", x=30.0) == 10.0
    assert ev("clip(x, 0, 10)", x=INF) == 10.0
    assert ev("clip(i, 0, 10)", i=4) == 4
    assert ev("clip(i, 10, 0)", i=4) == 0  # lo > hi: hi wins (min(max(x, lo), hi))
    assert ev("clip(x, y, 10)", x=1.0) is None


@pytest.mark.parametrize(("value", "bucket"), [
    (-INF, 0), (-1.0, 0), (0.0, 1), (0.5, 1), (10.0, 2), (99.999, 2), (100.0, 3), (1e308, 3), (INF, 3), (None, None),
])
def test_bucketize_edges_are_left_closed(value, bucket):
    # edges [0, 10, 100]: (-inf, 0) -> 0, [0, 10) -> 1, [10, 100) -> 2, [100, inf] -> 3
    assert ev("bucketize(x, [0, 10, 100])", x=value) == bucket
    if value is not None:
        assert bucket == int(np.digitize(value, [0, 10, 100]))


def test_bucketize_int_edges_compare_exactly():
    assert ev("bucketize(i, [9007199254740993])", i=2 ** 53) == 0
    assert ev("bucketize(i, [9007199254740993])", i=2 ** 53 + 1) == 1
    assert ev("bucketize(i, [-1, 0.5])", i=0) == 1


def test_category_index():
    cats = "category_index(carrier, ['AA', 'UA', 'DL'])"
    assert [ev(cats, carrier=c) for c in ("AA", "UA", "DL", "XX", "", "aa", None)] == [0, 1, 2, -1, -1, -1, None]
    assert ev("category_index(carrier, ['AA'], 99)", carrier="ZZ") == 99
    assert ev("category_index(i, [10, 20])", i=20) == 1
    assert ev("category_index(lower(carrier), ['aa'])", carrier="AA") == 0


# CRC-32 (zlib / IEEE 802.3) mod 1000; crc32(b"hello world") = 0x0D4A1185 = 222957957 is the textbook value. The
# same table is checked against Spark in tests/integration/test_feature_parity.py.
HASH_GOLDEN = [("", 0), ("AA", 573), ("UA", 520), ("N14228", 166), ("JFK", 919), ("ß", 839), ("日本", 756),
               ("hello world", 957), ("\x00", 757)]


def test_hash_bucket_golden_values():
    assert zlib.crc32(b"hello world") == 222957957
    for text, bucket in HASH_GOLDEN:
        assert ev("hash_bucket(s, 1000)", s=text) == bucket
    assert ev("hash_bucket(i, 1000)", i=-42) == zlib.crc32(b"-42") % 1000  # ints hash their decimal text
    assert ev("hash_bucket(s, 1)", s="anything") == 0
    assert ev("hash_bucket(s, 10)") is None
    assert ev("hash_bucket(s, 9223372036854775807)", s="AA") == 2841648573


def test_string_functions():
    assert ev("lower(s)", s="ÀB ß") == "àb ß"
    assert ev("upper(s)", s="straße") == "STRASSE"
    assert ev("lower(s)", s="ΑΣ Β") == "ας β"       # final sigma
    assert ev("lower(s)", s="\u1c89") == "\u1c8a"    # Unicode 16 mapping, as Spark's ICU
    assert ev("upper(s)", s="\u019b") == "\ua7dc"
    assert ev("lower(s)", s="\U00016ebd\u03a3") == "\U00016ebd\u03c2"  # a Unicode 16 cased letter before Σ
    assert ev("upper(lower(s))", s="\u0130") == "\u0130"  # only the outer conversion applies
    assert ev("concat(s, '-', i)", s="UA", i=-7) == "UA--7"
    assert ev("concat(s, t)", s="", t="") == ""


# --- time functions across New York's DST changes -----------------------------------------------------------

NY = "America/New_York"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("instant", "hour", "dow", "month"), [
    # 2013-03-10 (Sunday): 02:00 EST jumps to 03:00 EDT at 07:00 UTC
    (utc(2013, 3, 10, 6, 59, 59), 1, 6, 3),
    (utc(2013, 3, 10, 7, 0, 0), 3, 6, 3),
    (utc(2013, 3, 11, 3, 59, 59), 23, 6, 3),   # Sunday 23:59:59 EDT
    (utc(2013, 3, 11, 4, 0, 0), 0, 0, 3),      # Monday 00:00 EDT
    # 2013-11-03 (Sunday): 02:00 EDT falls back to 01:00 EST at 06:00 UTC; 01:xx happens twice
    (utc(2013, 11, 3, 5, 0, 0), 1, 6, 11),
    (utc(2013, 11, 3, 5, 59, 59), 1, 6, 11),
    (utc(2013, 11, 3, 6, 0, 0), 1, 6, 11),
    (utc(2013, 11, 3, 6, 59, 59), 1, 6, 11),
    (utc(2013, 11, 3, 7, 0, 0), 2, 6, 11),
    (utc(2013, 11, 1, 3, 59, 59), 23, 3, 10),  # Thursday 2013-10-31 23:59:59 EDT
    (utc(2013, 11, 1, 4, 0, 0), 0, 4, 11),
    (utc(1883, 11, 18, 16, 59, 59), 12, 6, 11),  # local mean time, -4:56:02: 12:03:57
])
def test_time_functions_in_new_york(instant, hour, dow, month):
    row = {"ts": instant}
    assert compile_python(feature(f"hour(ts, '{NY}')"))(row) == hour
    assert compile_python(feature(f"day_of_week(ts, '{NY}')"))(row) == dow
    assert compile_python(feature(f"month(ts, '{NY}')"))(row) == month
    local = instant.astimezone(ZoneInfo(NY))
    assert (local.hour, local.weekday(), local.month) == (hour, dow, month)


def test_time_functions_on_dates_and_in_utc():
    assert ev("day_of_week(d)", d=date(2013, 3, 10)) == 6
    assert ev("day_of_week(d)", d=date(2013, 3, 11)) == 0
    assert ev("month(d)", d=date(2013, 12, 31)) == 12
    assert ev("hour(ts, 'UTC')", ts=utc(2013, 3, 10, 6, 59)) == 6
    assert ev("day_of_week(ts, 'UTC')", ts=utc(2013, 3, 11, 0, 0)) == 0
    assert ev("hour(ts, 'Asia/Kolkata')", ts=utc(2013, 1, 1, 18, 30)) == 0


def test_minutes_between_counts_elapsed_time_not_wall_clock():
    assert ev("minutes_between(ts, ts2)", ts=utc(2013, 3, 10, 6), ts2=utc(2013, 3, 10, 8)) == 120.0
    assert ev("minutes_between(ts, ts2)", ts=utc(2013, 11, 3, 5), ts2=utc(2013, 11, 3, 7)) == 120.0
    assert ev("minutes_between(ts2, ts)", ts=utc(2013, 1, 1, 0, 0, 30), ts2=utc(2013, 1, 1)) == 0.5
    assert ev("minutes_between(ts, ts2)", ts=utc(2013, 1, 1), ts2=utc(2013, 1, 1, 0, 0, 0, 1)) == 1 / 60e6
    assert ev("minutes_between(ts, ts2)", ts=utc(2013, 1, 1)) is None


def test_timestamp_inputs():
    f = compile_python(feature(f"hour(ts, '{NY}')"))
    instant = utc(2013, 3, 10, 7)
    import pandas as pd

    for value in (instant, instant.replace(tzinfo=None), instant.astimezone(ZoneInfo(NY)), pd.Timestamp(instant),
                  np.datetime64("2013-03-10T07:00:00"), pd.Timestamp("2013-03-10 07:00:00.000000999", tz="UTC")):
        assert f({"ts": value}) == 3, value
    for missing in (None, pd.NaT, np.datetime64("NaT"), NAN):
        assert f({"ts": missing}) is None
    with pytest.raises(TypeError, match="column 'ts': expected a datetime"):
        f({"ts": "2013-03-10"})
    assert ev("if(b, ts, ts2)", b=True, ts=instant) == instant  # a timestamp result is an aware UTC datetime


def test_other_inputs_are_normalised_or_rejected():
    assert ev("i + 1", i=np.int64(4)) == 5
    assert ev("i + 1", i=4.0) == 5
    assert ev("x + 1", x=np.float32(0.5)) == 1.5
    assert ev("x + 1", x=2) == 3.0
    assert ev("not b", b=np.bool_(True)) is False
    assert ev("lower(s)", s=np.str_("AB")) == "ab"
    assert ev("lower(s)", s=NAN) is None
    with pytest.raises(TypeError, match="column 'x': expected a number"):
        ev("x + 1", x="1.5")
    with pytest.raises(TypeError, match="column 'i': expected an integer"):
        ev("i + 1", i=1.5)
    with pytest.raises(TypeError, match="column 's': expected a string"):
        ev("lower(s)", s=3)


# --- window aggregations ------------------------------------------------------------------------------------

T0 = utc(2013, 3, 9, 12)
US = timedelta(microseconds=1)


def events(*pairs, key="a"):
    return [{"k": key, "ts": None if t is None else T0 + t, "x": v,
             "i": int(v) if v is not None and math.isfinite(v) else None} for t, v in pairs]


def test_window_boundaries():
    w = timedelta(hours=1)
    evs = events((timedelta(0), 1.0), (w - US, 2.0), (w, 4.0), (w, 8.0), (w + US, 16.0))
    backfill = evaluate_history(feature("sum(x, '1h')"), evs, keys=["k"], event_time="ts")
    # t = w: (0, w] excludes the event exactly one hour old, includes both events at w (ties)
    assert backfill == [1.0, 3.0, 14.0, 14.0, 30.0]
    count = evaluate_history(feature("count('1h')"), evs, keys=["k"], event_time="ts")
    assert count == [1, 2, 3, 3, 4]
    history = EntityHistory(feature("count('1h')"), evs, event_time="ts")
    assert history.as_of(T0 + w - US) == 2
    assert history.as_of(T0 + w) == 3
    assert history.as_of(T0 + 2 * w) == 1          # only the event at w + 1us is younger than an hour
    assert history.as_of(T0 + 2 * w + US) == 0     # empty window: count 0
    assert history.as_of(T0 - US) == 0             # before any event


def test_ties_are_all_included_whatever_their_order():
    evs = events((timedelta(0), 5.0), (timedelta(0), 1.0), (timedelta(0), 3.0))
    assert evaluate_history(feature("max(x, '1s')"), evs, keys=["k"], event_time="ts") == [5.0, 5.0, 5.0]
    assert evaluate_history(feature("min(x, '1s')"), evs, keys=["k"], event_time="ts") == [1.0, 1.0, 1.0]


def test_empty_windows_and_nulls():
    evs = events((timedelta(0), None), (timedelta(hours=3), 2.0), (timedelta(hours=3), NAN))
    for text, expected in [("count('1h')", [1, 2, 2]), ("count(x, '1h')", [0, 1, 1]), ("sum(x, '1h')", [None, 2.0, 2.0]),
                           ("mean(x, '1h')", [None, 2.0, 2.0]), ("min(x, '1h')", [None, 2.0, 2.0]),
                           ("quantile(x, 0.5, '1h')", [None, 2.0, 2.0]),
                           ("coalesce(mean(x, '1h'), 0.0)", [0.0, 2.0, 2.0])]:
        assert evaluate_history(feature(text), evs, keys=["k"], event_time="ts") == expected, text
    history = EntityHistory(feature("mean(x, '1h')"), evs, event_time="ts")
    assert history.as_of(T0 + timedelta(hours=10)) is None


def test_null_event_times_get_null_aggregations_and_join_no_window():
    evs = events((timedelta(0), 1.0), (None, 100.0), (timedelta(minutes=1), 2.0))
    assert evaluate_history(feature("count('1h')"), evs, keys=["k"], event_time="ts") == [1, None, 2]
    assert evaluate_history(feature("sum(x, '1h')"), evs, keys=["k"], event_time="ts") == [1.0, None, 3.0]
    assert evaluate_history(feature("coalesce(sum(x, '1h'), -1.0) + x"), evs, keys=["k"],
                            event_time="ts") == [2.0, 99.0, 5.0]


def test_entities_are_grouped_by_all_keys_including_null_ones():
    rows = [{"k": k, "k2": k2, "ts": T0, "x": 1.0} for k, k2 in
            [("a", 1), ("a", 2), ("a", 1), (None, 1), (None, 1), ("b", None)]]
    f = parse_feature("n", "count('1d')", {"k": "string", "k2": "int", "ts": "timestamp", "x": "double"})
    assert evaluate_history(f, rows, keys=["k", "k2"], event_time="ts") == [2, 1, 2, 2, 2, 1]


def test_sums_are_exact_and_infinities_are_ieee():
    assert aggregate_values(feature("sum(x, '1d')").aggregations[0], [1e16, 1.0, -1e16]) == 1.0  # naive: 0.0
    evs = events((timedelta(0), 1e16), (timedelta(0), 1.0), (timedelta(0), -1e16))
    assert evaluate_history(feature("sum(x, '1d')"), evs, keys=["k"], event_time="ts") == [1.0] * 3
    assert EntityHistory(feature("mean(x, '1d')"), evs, event_time="ts").as_of(T0) == pytest.approx(1 / 3)
    agg = feature("sum(x, '1d')").aggregations[0]
    assert aggregate_values(agg, [INF, 1.0]) == INF
    assert aggregate_values(agg, [INF, -INF]) is None  # NaN -> null
    assert aggregate_values(agg, [1e308, 1e308]) == INF
    assert aggregate_values(feature("mean(x, '1d')").aggregations[0], [1e308, 1e308, -1e308]) == pytest.approx(1e308 / 3)
    assert aggregate_values(feature("sum(i, '1d')").aggregations[0], [INT64_MAX, 1]) is None
    assert aggregate_values(feature("sum(i, '1d')").aggregations[0], [INT64_MAX, 1, -1]) == INT64_MAX


def test_quantile_follows_spark_with_infinities():
    agg = feature("quantile(x, 0.25, '1d')").aggregations[0]
    assert aggregate_values(agg, [-INF, 5.0]) is None        # -inf + 0.25 * (5 - -inf) = NaN -> null
    assert aggregate_values(agg, [5.0, INF]) == INF
    assert aggregate_values(agg, [-INF, -INF, 5.0]) == -INF  # equal neighbours: no interpolation
    assert aggregate_values(agg, [0.0, 10.0]) == 2.5
    assert aggregate_values(feature("quantile(x, 0, '1d')").aggregations[0], [3.0, -INF]) == -INF
    assert aggregate_values(feature("quantile(x, 1, '1d')").aggregations[0], [3.0, 1.0]) == 3.0


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-1e300, 1e300), min_size=1, max_size=40), q=st.floats(0, 1))
def test_quantile_is_numpys_linear_method_on_finite_values(values, q):
    agg = parse_feature("q", f"quantile(x, {q!r}, '1d')", {"x": "double"}).aggregations[0]
    got = aggregate_values(agg, values)
    expected = float(np.quantile(np.array(values), q, method="linear"))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-300 + 1e-12 * max(abs(v) for v in values))


WINDOW_TEXTS = ["count('1h')", "count(x, '90m')", "sum(x, '1h')", "sum(i, '2h')", "mean(x, '30m')", "min(x, '1h')",
                "max(i, '2h')", "quantile(x, 0.3, '1h')", "quantile(i, 1, '90m')", "coalesce(mean(x, '1h'), 0.0) - x"]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 12), st.sampled_from([0, 0, 1, -1]),
                                st.one_of(st.none(), st.integers(-1000, 1000).map(float), st.just(INF))),
                      min_size=0, max_size=40))
def test_backfill_and_as_of_match_the_definition(steps):
    """The O(n log n) sweep, the request-time as_of, and a brute-force reading of the definition agree."""
    evs = [{"k": "a", "ts": T0 + timedelta(minutes=30 * s) + u * US, "x": v, "i": None if v in (None, INF) else int(v)}
           for s, u, v in steps]
    for text in WINDOW_TEXTS:
        f = feature(text)
        history = EntityHistory(f, evs, event_time="ts")
        backfill = history.backfill()
        for e, value in zip(evs, backfill, strict=True):
            assert history.as_of(e["ts"], e) == value, text
            if len(f.aggregations) == 1 and f.root is f.aggregations[0]:
                agg = f.aggregations[0]
                window = timedelta(microseconds=agg.window_us)
                inside = [o for o in evs if e["ts"] - window < o["ts"] <= e["ts"]]
                column = "x" if agg.arg is None or "x" in f.columns else "i"
                values = [1 for _ in inside] if agg.arg is None else \
                    [float(o[column]) if agg.fn in ("mean", "quantile") else o[column]
                     for o in inside if o[column] is not None]
                assert aggregate_values(agg, values) == value, text


def test_date_event_times_count_whole_days():
    f = parse_feature("n", "count('2d')", {"k": "string", "d": "date"})
    rows = [{"k": "a", "d": date(2013, 3, day)} for day in (1, 2, 3, 3, 5)]
    assert evaluate_history(f, rows, keys=["k"], event_time="d") == [1, 2, 3, 3, 1]


def test_aggregate_python_reads_the_request_row():
    f = feature("dep_delay - coalesce(mean(dep_delay, '7d'), 0.0)")
    history = [{"ts": T0 + timedelta(days=d), "dep_delay": v} for d, v in [(0, 10.0), (1, 20.0), (9, 30.0)]]
    assert aggregate_python(f, history, event_time="ts", as_of=T0 + timedelta(days=2), row={"dep_delay": 45.0}) == 30.0
    assert aggregate_python(f, history, event_time="ts", as_of=T0 + timedelta(days=20), row={"dep_delay": 1.0}) == 1.0
    assert aggregate_python(f, [], event_time="ts", as_of=T0, row={"dep_delay": 5.0}) == 5.0


def test_windowed_features_need_their_entity_and_event_time():
    f = feature("mean(x, '7d')")
    with pytest.raises(ValueError, match="uses window aggregations"):
        compile_python(f)
    with pytest.raises(ValueError, match="pass keys="):
        compile_spark(f)


# --- packaging and speed ------------------------------------------------------------------------------------

def test_importing_the_dsl_does_not_import_spark_or_pandas():
    code = ("import sys, pipelines.features as f; f.compile_python(f.parse_feature('a', 'x + 1', {'x': 'double'}));"
            "assert 'pyspark' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_row_evaluation_takes_microseconds():
    f = compile_python(feature("if(is_null(dep_delay), 0.0, log1p(abs(dep_delay))) * 2 "
                               "+ coalesce(arr_delay, 0.0) / 60 + category_index(carrier, ['AA', 'UA', 'DL'])"))
    row = {"dep_delay": 12.0, "arr_delay": None, "carrier": "UA"}
    n = 20_000
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            f(row)
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 20e-6, f"{best * 1e6:.2f} us per row"  # ~1 us on the 2-core dev machine
