"""Python compiler: typed tree -> a tree of closures (the online, request-time evaluator), and the trailing
window engine (``EntityHistory``) for one entity's event list.

Values inside the evaluator: int, float (never NaN: see below), str, bool, ``int`` epoch microseconds for
timestamps (Spark's own representation), ``datetime.date`` for dates, and None for null. Inputs are
normalised at the boundary (the column readers): NaN, pandas NaT and None are null; numpy scalars become
Python ones; a naive datetime is taken as UTC. A result that is a timestamp is returned as an aware UTC
``datetime``. Everything the Spark compiler does is mirrored here operation by operation; the comments name
the Spark expression each closure stands for.
"""

from __future__ import annotations

import math
import operator
import zlib
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.features.checker import (
    BOOL,
    DATE,
    DOUBLE,
    INT,
    INT64_MAX,
    INT64_MIN,
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

Row = Mapping[str, Any]
Fn = Callable[[Any], Any]

EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_NAIVE = datetime(1970, 1, 1)
EPOCH_DATE = date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
SCALE_BITS = 1074  # every finite double is an integer multiple of 2**-1074
SCALE = 1 << SCALE_BITS

# Spark 4.3 case-maps with ICU (Unicode 16); Python 3.11's str.lower/upper know Unicode 14. These are all the
# code points where the two differ (found by mapping every code point in both); the Python side adds them.
_LOWER_EXTRA = {0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
                0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
                **{c: c + 0x20 for c in range(0x10D50, 0x10D66)},
                **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)}}
_UPPER_EXTRA = {v: k for k, v in _LOWER_EXTRA.items()}
# Lowercasing a capital sigma depends on its neighbours (Unicode's Final_Sigma: a cased letter before it, none
# after it, case-ignorable characters skipped): these are the code points whose class for that rule differs
# between ICU's Unicode 16 and Python 3.11 ("c" cased, "i" case-ignorable, "n" neither), found like the
# table above by lowercasing "A<c>Σ" and "1<c>Σ" for every code point in both.
_SIGMA_CLASS_RANGES = [
    (0x295, 0x295, "n"), (0x897, 0x897, "i"), (0xECE, 0xECE, "i"), (0x1ACF, 0x1ADD, "i"), (0x1AE0, 0x1AEB, "i"),
    (0x1C89, 0x1C8A, "c"), (0xA7CB, 0xA7CF, "c"), (0xA7D2, 0xA7D2, "c"), (0xA7D4, 0xA7D4, "c"),
    (0xA7DA, 0xA7DC, "c"), (0xA7F1, 0xA7F1, "i"), (0x10D4E, 0x10D4E, "i"), (0x10D50, 0x10D65, "c"),
    (0x10D69, 0x10D6D, "i"), (0x10D6F, 0x10D6F, "i"), (0x10D70, 0x10D85, "c"), (0x10EC5, 0x10EC5, "i"),
    (0x10EFA, 0x10EFF, "i"), (0x11241, 0x11241, "i"), (0x113BB, 0x113C0, "i"), (0x113CE, 0x113CE, "i"),
    (0x113D0, 0x113D0, "i"), (0x113D2, 0x113D2, "i"), (0x113E1, 0x113E2, "i"), (0x1171E, 0x1171E, "n"),
    (0x11B60, 0x11B60, "i"), (0x11B62, 0x11B64, "i"), (0x11B66, 0x11B66, "i"), (0x11DD9, 0x11DD9, "i"),
    (0x11F00, 0x11F01, "i"), (0x11F36, 0x11F3A, "i"), (0x11F40, 0x11F40, "i"), (0x11F42, 0x11F42, "i"),
    (0x11F5A, 0x11F5A, "i"), (0x13439, 0x13440, "i"), (0x13447, 0x13455, "i"), (0x1611E, 0x16129, "i"),
    (0x1612D, 0x1612F, "i"), (0x16D40, 0x16D42, "i"), (0x16D6B, 0x16D6C, "i"), (0x16EA0, 0x16EB8, "c"),
    (0x16EBB, 0x16ED3, "c"), (0x16FF2, 0x16FF3, "i"), (0x1DF25, 0x1DF2A, "c"), (0x1E030, 0x1E06D, "i"),
    (0x1E08F, 0x1E08F, "i"), (0x1E4EB, 0x1E4EF, "i"), (0x1E5EE, 0x1E5EF, "i"), (0x1E6E3, 0x1E6E3, "i"),
    (0x1E6E6, 0x1E6E6, "i"), (0x1E6EE, 0x1E6EF, "i"), (0x1E6F5, 0x1E6F5, "i"), (0x1E6FF, 0x1E6FF, "i"),
]
_SIGMA_CLASS = {chr(c): k for a, b, k in _SIGMA_CLASS_RANGES for c in range(a, b + 1)}
_SIGMA_CONTEXT = frozenset(_SIGMA_CLASS)
CAPITAL_SIGMA, SMALL_SIGMA, FINAL_SIGMA = "\u03a3", "\u03c3", "\u03c2"


@lru_cache(maxsize=4096)
def _sigma_class(ch: str) -> str:
    k = _SIGMA_CLASS.get(ch)
    if k is not None:
        return k
    if ("1" + ch + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA:  # Python's own class, by the same probes
        return "c"
    return "i" if ("A" + ch + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA else "n"


def _is_final_sigma(s: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and _sigma_class(s[j]) == "i":
        j -= 1
    if j < 0 or _sigma_class(s[j]) != "c":
        return False
    j = i + 1
    while j < len(s) and _sigma_class(s[j]) == "i":
        j += 1
    return j == len(s) or _sigma_class(s[j]) != "c"


def spark_lower(s: str) -> str:
    """``lower`` as Spark 4.3 (ICU, Unicode 16) computes it."""
    if s.isascii():
        return s.lower()
    if CAPITAL_SIGMA in s and not _SIGMA_CONTEXT.isdisjoint(s):
        # Only the capital sigma is context-dependent: map the rest character by character.
        s = "".join((FINAL_SIGMA if _is_final_sigma(s, i) else SMALL_SIGMA) if ch == CAPITAL_SIGMA else ch.lower()
                    for i, ch in enumerate(s))
        return s.translate(_LOWER_EXTRA)
    return s.lower().translate(_LOWER_EXTRA)


def spark_upper(s: str) -> str:
    """``upper`` as Spark 4.3 computes it (no context rules)."""
    return s.upper() if s.isascii() else s.upper().translate(_UPPER_EXTRA)


# --- boundary: reading input values -------------------------------------------------------------------------

def _bad(name: str, value: Any, want: str):
    return TypeError(f"column '{name}': expected {want} (or None), got {type(value).__name__} {value!r}")


def to_micros(value: Any, name: str = "?") -> int | None:
    """A timestamp input as epoch microseconds: aware or naive (= UTC) datetime, pandas Timestamp, numpy
    datetime64; None/NaT/NaN -> None. Sub-microsecond digits are dropped (floor), as Spark does."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value != value:  # pandas NaT
            return None
        td = value - (EPOCH_NAIVE if value.tzinfo is None else EPOCH_UTC)
        return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if type(value).__name__ == "datetime64":
        import numpy as np

        if np.isnat(value):
            return None
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, float) and value != value:
        return None
    raise _bad(name, value, "a datetime")


def to_date(value: Any, name: str = "?") -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value != value:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.date()
    if isinstance(value, date):
        return value
    if type(value).__name__ == "datetime64":
        import numpy as np

        if np.isnat(value):
            return None
        return EPOCH_DATE + timedelta(days=int(value.astype("datetime64[D]").astype(np.int64)))
    if isinstance(value, float) and value != value:
        return None
    raise _bad(name, value, "a date")


def event_micros(value: Any, name: str = "?") -> int | None:
    """An event time (timestamp or date column) as epoch microseconds; a date counts as its UTC midnight."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return (value - EPOCH_DATE).days * US_PER_DAY
    return to_micros(value, name)


def _reader(name: str, dtype: str) -> Fn:
    if dtype == DOUBLE:
        def read_double(row):
            v = row.get(name)
            if v is None:
                return None
            if type(v) is float:
                return v if v == v else None
            if isinstance(v, (bool, str, bytes)) or not hasattr(v, "__float__"):
                raise _bad(name, v, "a number")
            v = float(v)
            return v if v == v else None
        return read_double
    if dtype == INT:
        def read_int(row):
            v = row.get(name)
            if v is None or type(v) is int:
                return v
            if isinstance(v, float) or type(v).__name__.startswith("float"):
                v = float(v)
                if v != v:
                    return None
                if not v.is_integer():
                    raise _bad(name, v, "an integer")
                return int(v)
            if isinstance(v, (str, bytes)) or not hasattr(v, "__index__"):
                raise _bad(name, v, "an integer")
            return int(v)
        return read_int
    if dtype == STRING:
        def read_string(row):
            v = row.get(name)
            if v is None or type(v) is str:
                return v
            if isinstance(v, str):
                return str(v)
            if isinstance(v, float) and v != v:
                return None
            raise _bad(name, v, "a string")
        return read_string
    if dtype == BOOL:
        def read_bool(row):
            v = row.get(name)
            if v is None or v is True or v is False:
                return v
            if type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_"):
                return bool(v)
            if isinstance(v, float) and v != v:
                return None
            raise _bad(name, v, "a bool")
        return read_bool
    if dtype == TIMESTAMP:
        def read_timestamp(row):
            return to_micros(row.get(name), name)
        return read_timestamp
    if dtype == DATE:
        def read_date(row):
            return to_date(row.get(name), name)
        return read_date
    raise AssertionError(dtype)


# --- the closures -------------------------------------------------------------------------------------------

def _compile(node: Node) -> Fn:
    if isinstance(node, Literal):
        value = node.value  # the checker only makes int, double, string, bool and null literals
        return lambda row: value
    if isinstance(node, Column):
        return _reader(node.name, node.dtype)
    if isinstance(node, Cast):  # CAST(x AS DOUBLE)
        f = _compile(node.child)

        def cast(row):
            v = f(row)
            return None if v is None else float(v)
        return cast
    if isinstance(node, Unary):
        f = _compile(node.child)
        if node.op == "not":
            def not_(row):
                v = f(row)
                return None if v is None else not v
            return not_
        if node.dtype == INT:  # try_subtract(0, x)
            def neg_int(row):
                v = f(row)
                return None if v is None or v == INT64_MIN else -v
            return neg_int

        def neg(row):
            v = f(row)
            return None if v is None else -v
        return neg
    if isinstance(node, Binary):
        return _binary(node)
    if isinstance(node, If):  # CASE WHEN c THEN a ELSE b END: a null condition takes the else branch
        fc, ft, fo = _compile(node.cond), _compile(node.then), _compile(node.other)
        return lambda row: ft(row) if fc(row) is True else fo(row)
    if isinstance(node, Call):
        return _call(node)
    if isinstance(node, Agg):
        index = node.index
        return lambda row: row.aggs[index]
    raise AssertionError(node)


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _binary(node: Binary) -> Fn:
    op = node.op
    fa, fb = _compile(node.left), _compile(node.right)
    if op == "and":  # Kleene logic, as SQL
        def and_(row):
            a = fa(row)
            if a is False:
                return False
            b = fb(row)
            if b is False:
                return False
            return None if a is None or b is None else True
        return and_
    if op == "or":
        def or_(row):
            a = fa(row)
            if a is True:
                return True
            b = fb(row)
            if b is True:
                return True
            return None if a is None or b is None else False
        return or_
    if op in _COMPARE:
        cmp = _COMPARE[op]
        if isinstance(node.right, Literal):
            const = node.right.value

            def compare_const(row):
                a = fa(row)
                return None if a is None else cmp(a, const)
            return compare_const

        def compare(row):
            a = fa(row)
            if a is None:
                return None
            b = fb(row)
            return None if b is None else cmp(a, b)
        return compare
    if op == "/":  # try_divide(double, double): x / 0 -> null; NaN -> null
        def div(row):
            a = fa(row)
            if a is None:
                return None
            b = fb(row)
            if b is None or b == 0.0:
                return None
            r = a / b
            return r if r == r else None
        return div
    fn = _ARITH[op]
    if node.dtype == INT:  # try_add / try_subtract / try_multiply on bigint: overflow -> null
        def arith_int(row):
            a = fa(row)
            if a is None:
                return None
            b = fb(row)
            if b is None:
                return None
            r = fn(a, b)
            return r if INT64_MIN <= r <= INT64_MAX else None
        return arith_int
    if isinstance(node.right, Literal):
        const = node.right.value

        def arith_const(row):
            a = fa(row)
            if a is None:
                return None
            r = fn(a, const)
            return r if r == r else None
        return arith_const

    def arith(row):
        a = fa(row)
        if a is None:
            return None
        b = fb(row)
        if b is None:
            return None
        r = fn(a, b)
        return r if r == r else None
    return arith


def _local_time(micros: int, zone: ZoneInfo) -> datetime | None:
    """The wall-clock time in ``zone`` at an instant (Spark: from_utc_timestamp(ts, zone))."""
    try:
        return datetime.fromtimestamp(micros // 1_000_000, zone)
    except (OverflowError, ValueError, OSError):
        return None


def _call(node: Call) -> Fn:
    fn, params = node.fn, node.params
    fs = [_compile(a) for a in node.args]
    f = fs[0]
    if fn == "log":  # ln(x) for x > 0, else null
        log = math.log

        def log_(row):
            x = f(row)
            return None if x is None or x <= 0.0 else log(x)
        return log_
    if fn == "log1p":  # log1p(x) for x > -1, else null
        log1p = math.log1p

        def log1p_(row):
            x = f(row)
            return None if x is None or x <= -1.0 else log1p(x)
        return log1p_
    if fn == "abs":
        if node.dtype == INT:
            def abs_int(row):
                x = f(row)
                return None if x is None or x == INT64_MIN else abs(x)
            return abs_int

        def abs_(row):
            x = f(row)
            return None if x is None else abs(x)
        return abs_
    if fn == "clip":  # least(greatest(x, lo), hi), null if any is null
        flo, fhi = fs[1], fs[2]

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
    if fn == "bucketize":  # number of edges <= x
        edges = params["edges"]

        def bucketize(row):
            x = f(row)
            return None if x is None else bisect_right(edges, x)
        return bucketize
    if fn == "coalesce":
        def coalesce(row):
            for g in fs:
                v = g(row)
                if v is not None:
                    return v
            return None
        return coalesce
    if fn == "is_null":
        return lambda row: f(row) is None
    if fn == "lower":
        def lower(row):
            s = f(row)
            if s is None:
                return None
            return s.lower() if s.isascii() else spark_lower(s)
        return lower
    if fn == "upper":
        def upper(row):
            s = f(row)
            if s is None:
                return None
            return s.upper() if s.isascii() else spark_upper(s)
        return upper
    if fn == "concat":  # concat(...) with ints cast to string; any null -> null
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
    if fn == "category_index":  # array_position(categories, x) - 1, unknown -> default
        lookup = {c: i for i, c in enumerate(params["categories"])}
        default = params["default"]
        get = lookup.get

        def category_index(row):
            x = f(row)
            return None if x is None else get(x, default)
        return category_index
    if fn == "hash_bucket":  # crc32(cast(x as binary)) % n: CRC-32 (zlib/IEEE) of the UTF-8 bytes
        n = params["n"]
        crc32 = zlib.crc32
        if node.args[0].dtype == INT:
            def hash_int(row):
                x = f(row)
                return None if x is None else crc32(str(x).encode("ascii")) % n
            return hash_int

        def hash_bucket(row):
            x = f(row)
            return None if x is None else crc32(x.encode("utf-8", "surrogatepass")) % n
        return hash_bucket
    if fn in ("hour", "day_of_week", "month"):
        if node.args[0].dtype == DATE:
            if fn == "day_of_week":  # weekday(d): Monday = 0
                return lambda row: None if (d := f(row)) is None else d.weekday()
            return lambda row: None if (d := f(row)) is None else d.month
        zone = ZoneInfo(params["tz"])
        if fn == "hour":
            def hour(row):
                m = f(row)
                local = None if m is None else _local_time(m, zone)
                return None if local is None else local.hour
            return hour
        if fn == "day_of_week":
            def day_of_week(row):
                m = f(row)
                local = None if m is None else _local_time(m, zone)
                return None if local is None else local.weekday()
            return day_of_week

        def month(row):
            m = f(row)
            local = None if m is None else _local_time(m, zone)
            return None if local is None else local.month
        return month
    if fn == "minutes_between":  # (unix_micros(end) - unix_micros(start)) / 6e7
        fb = fs[1]

        def minutes_between(row):
            a = f(row)
            if a is None:
                return None
            b = fb(row)
            return None if b is None else float(b - a) / 60_000_000.0
        return minutes_between
    raise AssertionError(fn)


def _output(dtype: str) -> Callable[[Any], Any] | None:
    if dtype == TIMESTAMP:
        return lambda v: None if v is None else EPOCH_UTC + timedelta(microseconds=v)
    return None


def compile_row(feature: FeatureExpr) -> Callable[[Row], Any]:
    """A row-level feature as ``f(row) -> value``."""
    if feature.is_windowed:
        raise ValueError(f"feature '{feature.name}' uses window aggregations "
                         f"({', '.join(a.fn for a in feature.aggregations)}): evaluate it over an entity's events "
                         "with EntityHistory / aggregate_python / evaluate_history, not row by row")
    f = _compile(feature.root)
    out = _output(feature.dtype)
    if out is None:
        return f
    return lambda row: out(f(row))


# --- window aggregations ------------------------------------------------------------------------------------

class _AggRow:
    """A row plus the values of the feature's aggregations, as the outer expression of a windowed feature
    sees it."""

    __slots__ = ("row", "aggs")

    def __init__(self, row: Row, aggs: list):
        self.row, self.aggs = row, aggs

    def get(self, name: str, default: Any = None) -> Any:
        return self.row.get(name, default)


def _scaled(x: float) -> int:
    """A finite double as the exact integer x * 2**1074."""
    n, d = x.as_integer_ratio()
    return n << (SCALE_BITS - d.bit_length() + 1)


def _exact_ratio(total: int, denominator: int) -> float:
    """total / denominator, correctly rounded, with overflow to +-inf."""
    try:
        return total / denominator
    except OverflowError:
        return math.inf if (total > 0) == (denominator > 0) else -math.inf


def _double_sum(total: int, count: int, pinf: int, ninf: int, mean: bool) -> float | None:
    if count == 0:
        return None
    if pinf and ninf:
        return None  # inf + -inf is NaN: null
    if pinf:
        return math.inf
    if ninf:
        return -math.inf
    return _exact_ratio(total, SCALE * count if mean else SCALE)


def _quantile(sorted_at: Callable[[int], float], count: int, q: float) -> float | None:
    """Spark's ``percentile`` (exact, linear interpolation), term for term."""
    if count == 0:
        return None
    position = (count - 1) * q
    lower, higher = math.floor(position), math.ceil(position)
    lo_value = sorted_at(lower)
    if higher == lower:
        return lo_value
    hi_value = sorted_at(higher)
    if hi_value == lo_value:
        return lo_value
    r = lo_value + (position - lower) * (hi_value - lo_value)
    return r if r == r else None


def aggregate_values(agg: Agg, values: Sequence[Any]) -> Any:
    """One aggregation over the (non-null, in-window) values: the definition the engine implements."""
    n = len(values)
    fn = agg.fn
    if fn == "count":
        return n
    if n == 0:
        return None
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "quantile":
        ordered = sorted(values)
        return _quantile(ordered.__getitem__, n, agg.q)
    if agg.arg.dtype == INT:  # sum of bigint: exact; overflow -> null (try_sum)
        total = sum(values)
        return total if INT64_MIN <= total <= INT64_MAX else None
    pinf = sum(1 for v in values if v == math.inf)
    ninf = sum(1 for v in values if v == -math.inf)
    total = sum(_scaled(v) for v in values if v not in (math.inf, -math.inf))
    return _double_sum(total, n, pinf, ninf, mean=(fn == "mean"))


class _Fenwick:
    """Counts over value ranks: add/remove one rank, find the k-th smallest present rank, all O(log n)."""

    def __init__(self, n: int):
        self.n = n
        self.tree = [0] * (n + 1)
        self.top = 1 << max(n.bit_length() - 1, 0) if n else 0

    def add(self, rank: int, delta: int) -> None:
        i, tree, n = rank + 1, self.tree, self.n
        while i <= n:
            tree[i] += delta
            i += i & -i

    def kth(self, k: int) -> int:
        pos, rem, step, tree, n = 0, k + 1, self.top, self.tree, self.n
        while step:
            nxt = pos + step
            if nxt <= n and tree[nxt] < rem:
                pos = nxt
                rem -= tree[nxt]
            step >>= 1
        return pos


class EntityHistory:
    """One entity's events, sorted once by event time; the feature's window aggregations as of any time.

    ``as_of(t, row)`` is the request-time path: O(log n) for count/sum/mean, O(log n + k log k) for
    min/max/quantile over the k events in the window. ``backfill()`` evaluates the feature as of every
    event's own time (the event is the current row): O(n log n) in all.
    Windows are (t - window, t]: an event exactly one window old is out, events at t (ties) are in.
    """

    def __init__(self, feature: FeatureExpr, events: Sequence[Row], *, event_time: str):
        self.feature = feature
        self.event_time = event_time
        self.events = list(events)
        times = [event_micros(e.get(event_time), event_time) for e in self.events]
        self._times_by_event = times
        order = sorted((i for i, t in enumerate(times) if t is not None), key=times.__getitem__)
        self._order = order
        self._times = [times[i] for i in order]
        self._aggs = feature.aggregations
        arg_fns = [None if a.arg is None else _compile(a.arg) for a in self._aggs]
        # Per aggregation: its argument for each event in time order (None: null, or count(window)'s row).
        self._values = [[1] * len(order) if fa is None else [fa(self.events[i]) for i in order]
                        for fa in arg_fns]
        self._outer = None if isinstance(feature.root, Agg) else _compile(feature.root)
        self._out = _output(feature.dtype)
        self._prefix_cache: dict[int, tuple[list, ...]] = {}

    def _window(self, t: int, agg: Agg) -> tuple[int, int]:
        return bisect_right(self._times, t - agg.window_us), bisect_right(self._times, t)

    def _finish(self, row: Row | None, aggs: list) -> Any:
        value = aggs[0] if self._outer is None else self._outer(_AggRow(row if row is not None else {}, aggs))
        return value if self._out is None else self._out(value)

    def as_of(self, t: Any, row: Row | None = None) -> Any:
        """The feature as of time ``t`` (datetime/date/epoch-micros int), using events with time in
        (t - window, t]; ``row`` supplies the columns the feature reads outside its aggregations."""
        micros = t if type(t) is int else event_micros(t, "as_of")
        if micros is None:
            return self._finish(row, [None] * len(self._aggs))
        aggs = []
        for k, agg in enumerate(self._aggs):
            lo, hi = self._window(micros, agg)
            if agg.fn in ("count", "sum", "mean"):
                aggs.append(self._prefix_query(k, agg, lo, hi))
            else:
                aggs.append(aggregate_values(agg, [v for v in self._values[k][lo:hi] if v is not None]))
        return self._finish(row, aggs)

    def backfill(self) -> list:
        """The feature as of each event's own time, in the order the events were given; an event without an
        event time gets null aggregations (count too)."""
        n_events, n = len(self.events), len(self._times)
        per_agg = [self._sweep(k, agg) for k, agg in enumerate(self._aggs)]
        aggs_by_sorted = list(zip(*per_agg, strict=True)) if per_agg else [()] * n
        result: list = [None] * n_events
        for j, i in enumerate(self._order):
            result[i] = self._finish(self.events[i], list(aggs_by_sorted[j]))
        nulls = [None] * len(self._aggs)
        for i in range(n_events):
            if self._times_by_event[i] is None:
                result[i] = self._finish(self.events[i], nulls)
        return result

    def _prefixes(self, k: int, agg: Agg) -> tuple[list, ...]:
        """Prefix counts of non-null values and, for sum/mean, prefix exact sums (ints, or doubles scaled by
        2**1074) and prefix counts of +inf and -inf; built once per aggregation."""
        cached = self._prefix_cache.get(k)
        if cached is not None:
            return cached
        values = self._values[k]
        n = len(values)
        counts = [0] * (n + 1)
        totals, pinfs, ninfs = [0] * (n + 1), [0] * (n + 1), [0] * (n + 1)
        integral = agg.arg is not None and agg.arg.dtype == INT
        want_sums = agg.fn != "count"
        for i, v in enumerate(values):
            counts[i + 1] = counts[i]
            totals[i + 1], pinfs[i + 1], ninfs[i + 1] = totals[i], pinfs[i], ninfs[i]
            if v is None:
                continue
            counts[i + 1] += 1
            if not want_sums:
                continue
            if integral:
                totals[i + 1] += v
            elif v == math.inf:
                pinfs[i + 1] += 1
            elif v == -math.inf:
                ninfs[i + 1] += 1
            else:
                totals[i + 1] += _scaled(v)
        cached = self._prefix_cache[k] = (counts, totals, pinfs, ninfs)
        return cached

    def _prefix_query(self, k: int, agg: Agg, lo: int, hi: int) -> Any:
        counts, totals, pinfs, ninfs = self._prefixes(k, agg)
        c = counts[hi] - counts[lo]
        if agg.fn == "count":
            return c
        if agg.arg.dtype == INT:  # sum of bigint (mean's argument is always a double)
            s = totals[hi] - totals[lo]
            return None if c == 0 or not INT64_MIN <= s <= INT64_MAX else s
        return _double_sum(totals[hi] - totals[lo], c, pinfs[hi] - pinfs[lo], ninfs[hi] - ninfs[lo],
                           mean=(agg.fn == "mean"))

    def _sweep(self, k: int, agg: Agg) -> list:
        """The aggregation as of each sorted event's time: prefix sums for count/sum/mean; for min/max/quantile
        an order-statistics tree over value ranks, slid along with the window. O(n log n)."""
        times, n, window, values = self._times, len(self._times), agg.window_us, self._values[k]
        fn = agg.fn
        out: list = [None] * n
        ordered = fn in ("min", "max", "quantile")
        if ordered:
            present = [v is not None for v in values]
            ranked = sorted((i for i in range(n) if present[i]), key=values.__getitem__)
            rank_of = {i: r for r, i in enumerate(ranked)}
            by_rank = [values[i] for i in ranked]
            if fn == "quantile":
                by_rank = [float(v) for v in by_rank]
            tree = _Fenwick(len(ranked))
            in_window = added = removed = 0
        lo = j = 0
        while j < n:
            t = times[j]
            hi = bisect_right(times, t, j)  # ties at t are all in
            while times[lo] <= t - window:  # exactly one window old is out
                lo += 1
            if not ordered:
                value = self._prefix_query(k, agg, lo, hi)
            else:
                while added < hi:
                    if present[added]:
                        tree.add(rank_of[added], 1)
                        in_window += 1
                    added += 1
                while removed < lo:
                    if present[removed]:
                        tree.add(rank_of[removed], -1)
                        in_window -= 1
                    removed += 1
                if in_window == 0:
                    value = None
                elif fn == "min":
                    value = by_rank[tree.kth(0)]
                elif fn == "max":
                    value = by_rank[tree.kth(in_window - 1)]
                else:
                    value = _quantile(lambda r: by_rank[tree.kth(r)], in_window, agg.q)
            for m in range(j, hi):
                out[m] = value
            j = hi
        return out


def evaluate_history(feature: FeatureExpr, rows: Sequence[Row], *, keys: Sequence[str], event_time: str) -> list:
    """Backfill a (windowed or row-level) feature over many entities' events: rows are grouped by ``keys``
    (nulls form their own group, as in Spark), each entity's aggregations are evaluated as of each of its
    events. Returns the values in the order of ``rows``."""
    rows = list(rows)
    if not feature.is_windowed:
        f = compile_row(feature)
        return [f(r) for r in rows]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        key = tuple(_key_value(r.get(k)) for k in keys)
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(rows)
    for indices in groups.values():
        values = EntityHistory(feature, [rows[i] for i in indices], event_time=event_time).backfill()
        for i, v in zip(indices, values, strict=True):
            out[i] = v
    return out


def _key_value(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        return v.item()
    return v
