"""Python compiler: typed tree -> a tree of closures (the online, request-time evaluator), and the trailing
window engine (``EntityHistory``) for one entity's event list.

Values inside the evaluator: int, float (never NaN: see below), str, bool, ``int`` epoch microseconds for
timestamps (Spark's own representation), ``datetime.date`` for dates, and None for null. Inputs are
normalised at the boundary (the column readers): NaN, pandas NaT and None are null; numpy scalars become
Python ones; a naive datetime is taken as UTC. A result that is a timestamp is returned as an aware UTC
``datetime``. Everything the Spark compiler does is mirrored here operation by operation; the comments name
the Spark expression each closure stands for (the functions' closures are in :mod:`.functions`).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pipelines.features import tree
from pipelines.features.checker import FeatureExpr
from pipelines.features.functions import FUNCTIONS, strict, strict2
from pipelines.features.tree import (
    ARITH,
    BOOL,
    COMPARE,
    DATE,
    DOUBLE,
    INT,
    INT64_MAX,
    INT64_MIN,
    STRING,
    TIMESTAMP,
)
from pipelines.timestamps import from_micros, to_micros

Row = Mapping[str, Any]
Fn = Callable[[Any], Any]

EPOCH_DATE = date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
SCALE_BITS = 1074  # every finite double is an integer multiple of 2**-1074
SCALE = 1 << SCALE_BITS

# --- boundary: reading input values -------------------------------------------------------------------------

def _bad(name: str, value: Any, want: str):
    return TypeError(f"column '{name}': expected {want} (or None), got {type(value).__name__} {value!r}")


def timestamp_micros(value: Any, name: str = "?") -> int | None:
    """A timestamp input as epoch microseconds: an aware or naive (= UTC) datetime, pandas Timestamp, numpy
    datetime64; None/NaT/NaN -> None. Sub-microsecond digits are dropped (floor), as Spark does."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return None if value != value else to_micros(value, name, naive_is_utc=True)  # value != value: NaT
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
    return timestamp_micros(value, name)


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
            return timestamp_micros(row.get(name), name)
        return read_timestamp
    if dtype == DATE:
        def read_date(row):
            return to_date(row.get(name), name)
        return read_date
    raise AssertionError(dtype)


# --- the closures -------------------------------------------------------------------------------------------

def _compile(node: tree.Node) -> Fn:
    if isinstance(node, tree.Literal):
        value = node.value  # the checker only makes int, double, string, bool and null literals
        return lambda row: value
    if isinstance(node, tree.Column):
        return _reader(node.name, node.dtype)
    if isinstance(node, tree.Cast):  # CAST(x AS DOUBLE)
        return strict(_compile(node.child), float)
    if isinstance(node, tree.Unary):
        f = _compile(node.child)
        if node.op == "not":
            return strict(f, operator.not_)
        if node.dtype == INT:  # try_subtract(0, x)
            return strict(f, lambda v: None if v == INT64_MIN else -v)
        return strict(f, operator.neg)
    if isinstance(node, tree.Binary):
        return _binary(node)
    if isinstance(node, tree.Call):
        return FUNCTIONS[node.fn].python(node, [_compile(a) for a in node.args])
    if isinstance(node, tree.Agg):
        index = node.index
        return lambda row: row.aggs[index]
    raise AssertionError(node)


def _kleene(fa: Fn, fb: Fn, decisive: bool) -> Fn:
    """``and`` (decisive False) and ``or`` (decisive True) in SQL's three-valued logic."""
    def kleene(row):
        a = fa(row)
        if a is decisive:
            return decisive
        b = fb(row)
        if b is decisive:
            return decisive
        return None if a is None or b is None else not decisive
    return kleene


def _binary(node: tree.Binary) -> Fn:
    op = node.op
    fa, fb = _compile(node.left), _compile(node.right)
    if op in ("and", "or"):
        return _kleene(fa, fb, op == "or")
    if op in COMPARE:
        return strict2(fa, fb, COMPARE[op])
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
    # int: try_add / try_subtract / try_multiply on bigint, overflow -> null; double: NaN -> null (out of
    # [-inf, inf], as NaN compares false)
    fn = ARITH[op]
    lo, hi = (INT64_MIN, INT64_MAX) if node.dtype == INT else (-math.inf, math.inf)

    def arith(row):
        a = fa(row)
        if a is None:
            return None
        b = fb(row)
        if b is None:
            return None
        r = fn(a, b)
        return r if lo <= r <= hi else None
    return arith


def _output(dtype: str) -> Callable[[Any], Any] | None:
    if dtype == TIMESTAMP:
        return lambda v: None if v is None else from_micros(v)
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


def aggregate_values(agg: tree.Agg, values: Sequence[Any]) -> Any:
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
        self._outer = None if isinstance(feature.root, tree.Agg) else _compile(feature.root)
        self._out = _output(feature.dtype)
        self._prefix_cache: dict[int, tuple[list, ...]] = {}

    def _window(self, t: int, agg: tree.Agg) -> tuple[int, int]:
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

    def _prefixes(self, k: int, agg: tree.Agg) -> tuple[list, ...]:
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

    def _prefix_query(self, k: int, agg: tree.Agg, lo: int, hi: int) -> Any:
        counts, totals, pinfs, ninfs = self._prefixes(k, agg)
        c = counts[hi] - counts[lo]
        if agg.fn == "count":
            return c
        if agg.arg.dtype == INT:  # sum of bigint (mean's argument is always a double)
            s = totals[hi] - totals[lo]
            return None if c == 0 or not INT64_MIN <= s <= INT64_MAX else s
        return _double_sum(totals[hi] - totals[lo], c, pinfs[hi] - pinfs[lo], ninfs[hi] - ninfs[lo],
                           mean=(agg.fn == "mean"))

    def _sweep(self, k: int, agg: tree.Agg) -> list:
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
            ranks = _Fenwick(len(ranked))
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
                        ranks.add(rank_of[added], 1)
                        in_window += 1
                    added += 1
                while removed < lo:
                    if present[removed]:
                        ranks.add(rank_of[removed], -1)
                        in_window -= 1
                    removed += 1
                if in_window == 0:
                    value = None
                elif fn == "min":
                    value = by_rank[ranks.kth(0)]
                elif fn == "max":
                    value = by_rank[ranks.kth(in_window - 1)]
                else:
                    value = _quantile(lambda r: by_rank[ranks.kth(r)], in_window, agg.q)
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
