"""Static type checker: untyped syntax tree + column schema -> typed tree (the input of both compilers).

The typed tree is small and explicit, so that the two compilers cannot disagree about what it means:

* every implicit int -> double promotion is a :class:`Cast` node (comparisons, ``if``, ``coalesce``, ``clip``
  and arithmetic that mix int and double, and both operands of ``/``);
* a ``null`` literal takes the type its context gives it; null-propagating operations on a ``null`` literal
  are folded to a typed ``null`` here, so no compiler ever sees an untyped null except as a whole result;
* literal-only arguments (windows, quantile levels, bucket edges, categories, time zones, bucket counts,
  defaults) are validated and moved out of the argument list into ``params``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pipelines.features.errors import FeatureDefinitionError, _ParseError
from pipelines.features.parser import COMPARISONS, PBinary, PCall, PList, PLiteral, PName, PUnary, parse

# --- types --------------------------------------------------------------------------------------------------

INT, DOUBLE, STRING, BOOL, TIMESTAMP, DATE = "int", "double", "string", "bool", "timestamp", "date"
NULL = "null"  # the type of a bare null literal, before its context types it
DTYPES = (INT, DOUBLE, STRING, BOOL, TIMESTAMP, DATE)
NUMERIC = (INT, DOUBLE)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# Schema type names accepted in a column schema: the DSL's own and the lake's (sources.yaml) spellings.
SCHEMA_TYPES = {
    "int": INT, "bigint": INT, "long": INT, "integer": INT, "smallint": INT, "tinyint": INT,
    "double": DOUBLE, "float": DOUBLE,
    "string": STRING,
    "bool": BOOL, "boolean": BOOL,
    "timestamp": TIMESTAMP,
    "date": DATE,
}

WINDOW_UNITS = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000, "w": 604_800_000_000}
WINDOW_RE = re.compile(r"^([1-9][0-9]*)([smhdw])$")


def normalize_schema(schema: Mapping[str, str]) -> dict[str, str]:
    """Map a ``{column: type}`` schema (DSL or lake spellings) to DSL types; raises ValueError on unknown types."""
    out = {}
    for name, typ in schema.items():
        dtype = SCHEMA_TYPES.get(str(typ).strip().lower())
        if dtype is None:
            raise ValueError(f"column '{name}': unknown type '{typ}' (known: {', '.join(sorted(SCHEMA_TYPES))})")
        out[name] = dtype
    return out


# --- typed tree ---------------------------------------------------------------------------------------------

class Node:
    __slots__ = ("dtype", "pos")

    def children(self) -> tuple[Node, ...]:
        return ()


class Literal(Node):
    __slots__ = ("value",)

    def __init__(self, value: Any, dtype: str, pos: int = 0):
        self.value, self.dtype, self.pos = value, dtype, pos


class Column(Node):
    __slots__ = ("name",)

    def __init__(self, name: str, dtype: str, pos: int = 0):
        self.name, self.dtype, self.pos = name, dtype, pos


class Cast(Node):
    """int -> double (the only implicit conversion)."""

    __slots__ = ("child",)

    def __init__(self, child: Node):
        self.child, self.dtype, self.pos = child, DOUBLE, child.pos

    def children(self):
        return (self.child,)


class Unary(Node):
    __slots__ = ("op", "child")  # op: "neg" or "not"

    def __init__(self, op: str, child: Node, dtype: str, pos: int):
        self.op, self.child, self.dtype, self.pos = op, child, dtype, pos

    def children(self):
        return (self.child,)


class Binary(Node):
    __slots__ = ("op", "left", "right")  # + - * / == != < <= > >= and or

    def __init__(self, op: str, left: Node, right: Node, dtype: str, pos: int):
        self.op, self.left, self.right, self.dtype, self.pos = op, left, right, dtype, pos

    def children(self):
        return (self.left, self.right)


class If(Node):
    __slots__ = ("cond", "then", "other")

    def __init__(self, cond: Node, then: Node, other: Node, dtype: str, pos: int):
        self.cond, self.then, self.other, self.dtype, self.pos = cond, then, other, dtype, pos

    def children(self):
        return (self.cond, self.then, self.other)


class Call(Node):
    """A row-level function; literal-only arguments are in ``params``."""

    __slots__ = ("fn", "args", "params")

    def __init__(self, fn: str, args: tuple[Node, ...], dtype: str, pos: int, params: dict | None = None):
        self.fn, self.args, self.dtype, self.pos, self.params = fn, tuple(args), dtype, pos, params or {}

    def children(self):
        return self.args


class Agg(Node):
    """A trailing-window aggregation: ``fn`` over ``arg`` (None for ``count(window)``) in (t - window, t]."""

    __slots__ = ("fn", "arg", "window_us", "window_text", "q", "index")

    def __init__(self, fn: str, arg: Node | None, window_us: int, window_text: str, dtype: str, pos: int,
                 q: float | None = None, index: int = 0):
        self.fn, self.arg, self.window_us, self.window_text = fn, arg, window_us, window_text
        self.dtype, self.pos, self.q, self.index = dtype, pos, q, index

    def children(self):
        return (self.arg,) if self.arg is not None else ()


def walk(node: Node):
    yield node
    for child in node.children():
        yield from walk(child)


def format_node(node: Node) -> str:
    """Canonical, fully parenthesised text of a typed tree (promotions shown as ``double(x)``)."""
    if isinstance(node, Literal):
        return _format_literal(node.value)
    if isinstance(node, Column):
        return node.name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node.name) else f"`{node.name}`"
    if isinstance(node, Cast):
        return f"double({format_node(node.child)})"
    if isinstance(node, Unary):
        return f"(-{format_node(node.child)})" if node.op == "neg" else f"(not {format_node(node.child)})"
    if isinstance(node, Binary):
        return f"({format_node(node.left)} {node.op} {format_node(node.right)})"
    if isinstance(node, If):
        return f"if({format_node(node.cond)}, {format_node(node.then)}, {format_node(node.other)})"
    if isinstance(node, Call):
        parts = [format_node(a) for a in node.args]
        for key, value in node.params.items():
            if key == "edges" or key == "categories":
                parts.append("[" + ", ".join(_format_literal(v) for v in value) + "]")
            else:
                parts.append(_format_literal(value))
        return f"{node.fn}({', '.join(parts)})"
    if isinstance(node, Agg):
        parts = [format_node(node.arg)] if node.arg is not None else []
        if node.q is not None:
            parts.append(repr(node.q))
        parts.append(_format_literal(node.window_text))
        return f"{node.fn}({', '.join(parts)})"
    raise TypeError(node)


def _format_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return repr(value)


# --- the checked feature ------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class FeatureExpr:
    """A parsed, type-checked feature definition: the input of ``compile_spark`` and ``compile_python``.

    ``dtype`` is the result type (int, double, string, bool, timestamp or date); ``columns`` the input
    columns it reads (sorted); ``aggregations`` its window aggregations in order of appearance (empty for a
    row-level feature); ``canonical`` a fully parenthesised rendering, handy in logs and reviews.
    """

    name: str
    text: str
    root: Node
    dtype: str
    columns: tuple[str, ...]
    column_types: Mapping[str, str]
    aggregations: tuple[Agg, ...] = field(default=())

    @property
    def is_windowed(self) -> bool:
        return bool(self.aggregations)

    @property
    def max_window(self) -> timedelta | None:
        """The longest trailing window (how much history a point-in-time lookup needs), or None."""
        if not self.aggregations:
            return None
        return timedelta(microseconds=max(a.window_us for a in self.aggregations))

    @property
    def canonical(self) -> str:
        return format_node(self.root)

    def __repr__(self) -> str:
        return f"FeatureExpr({self.name!r}: {self.dtype} = {self.canonical})"


# --- the checker --------------------------------------------------------------------------------------------

ROW_FUNCTIONS = {
    "if", "log", "log1p", "abs", "clip", "bucketize", "coalesce", "is_null", "lower", "upper", "concat",
    "category_index", "hash_bucket", "hour", "day_of_week", "month", "minutes_between",
}
AGGREGATIONS = {"mean", "sum", "count", "quantile", "min", "max"}
SIGNATURES = {
    "if": "if(condition, then, else)",
    "log": "log(x)", "log1p": "log1p(x)", "abs": "abs(x)", "clip": "clip(x, lo, hi)",
    "bucketize": "bucketize(x, [e1, e2, ...])",
    "coalesce": "coalesce(a, b, ...)", "is_null": "is_null(x)", "lower": "lower(s)", "upper": "upper(s)",
    "concat": "concat(a, b, ...)",
    "category_index": 'category_index(x, ["a", "b", ...]) or category_index(x, [...], default)',
    "hash_bucket": "hash_bucket(x, n)",
    "hour": 'hour(ts, "Area/City")', "day_of_week": 'day_of_week(ts, "Area/City") or day_of_week(date)',
    "month": 'month(ts, "Area/City") or month(date)', "minutes_between": "minutes_between(start, end)",
    "mean": 'mean(x, "7d")', "sum": 'sum(x, "7d")', "count": 'count("7d") or count(x, "7d")',
    "quantile": 'quantile(x, 0.9, "30d")', "min": 'min(x, "7d")', "max": 'max(x, "7d")',
}


def _is_null(node: Node) -> bool:
    """A null literal, typed or not (``null``, or an expression already folded to null)."""
    return isinstance(node, Literal) and node.value is None


def _null(dtype: str, pos: int) -> Literal:
    return Literal(None, dtype, pos)


def promote(node: Node, target: str) -> Node:
    """Give ``node`` the type ``target``: a typed null, an int widened to double, or itself."""
    if node.dtype == target:
        return node
    if node.dtype == NULL:
        return _null(target, node.pos)
    if node.dtype == INT and target == DOUBLE:
        if isinstance(node, Literal):
            return Literal(None if node.value is None else float(node.value), DOUBLE, node.pos)
        return Cast(node)
    raise AssertionError(f"cannot promote {node.dtype} to {target}")


def unify(types: list[str]) -> str | None:
    """The common type of ``types`` (nulls ignored; int and double meet at double), or None if none."""
    concrete = {t for t in types if t != NULL}
    if not concrete:
        return NULL
    if len(concrete) == 1:
        return concrete.pop()
    if concrete <= {INT, DOUBLE}:
        return DOUBLE
    return None


class _Checker:
    def __init__(self, schema: Mapping[str, str]):
        self.schema = schema
        self.columns: dict[str, str] = {}
        self.aggs: list[Agg] = []

    # -- helpers
    def fail(self, reason: str, pos: int | None):
        raise _ParseError(reason, pos)

    def numeric(self, node: Node, what: str, pos: int) -> None:
        if node.dtype not in (INT, DOUBLE, NULL):
            self.fail(f"{what} must be a number, got {node.dtype}", pos)

    def literal_string(self, parg, what: str) -> str:
        if isinstance(parg, PLiteral) and isinstance(parg.value, str):
            return parg.value
        self.fail(f"{what} must be a string literal (a constant in quotes), not an expression", _pos(parg))

    def literal_number(self, parg, what: str) -> int | float:
        value = _constant_number(parg)
        if value is None:
            self.fail(f"{what} must be a number literal, not an expression", _pos(parg))
        return value

    def window(self, parg, fn: str) -> tuple[int, str]:
        if not (isinstance(parg, PLiteral) and isinstance(parg.value, str)):
            self.fail(f"the window of {fn}() must be a duration literal like \"7d\" (units s, m, h, d, w), "
                      "not an expression", _pos(parg))
        m = WINDOW_RE.match(parg.value.strip())
        if not m:
            self.fail(f"invalid window {parg.value!r} in {fn}(): expected a positive whole number and a unit, "
                      "like \"90m\", \"12h\", \"7d\" (units s, m, h, d, w)", parg.pos)
        micros = int(m.group(1)) * WINDOW_UNITS[m.group(2)]
        if micros > 100 * 366 * WINDOW_UNITS["d"]:
            self.fail(f"window {parg.value!r} in {fn}() is longer than 100 years", parg.pos)
        return micros, parg.value.strip()

    def zone(self, parg, fn: str) -> str:
        name = self.literal_string(parg, f"the time zone of {fn}()")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
                raise ValueError(name)
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(f"unknown time zone {name!r} in {fn}(): use an IANA zone name like \"America/New_York\" "
                      "or \"UTC\"", parg.pos)
        return name

    def arity(self, pcall: PCall, allowed: tuple[int, ...] | range) -> None:
        n = len(pcall.args)
        if n not in allowed:
            if isinstance(allowed, range):
                want = f"at least {allowed.start}"
            else:
                want = " or ".join(str(a) for a in allowed)
            self.fail(f"{pcall.name}() takes {want} argument{'s' if allowed != (1,) else ''}, got {n}: "
                      f"{SIGNATURES[pcall.name]}", pcall.pos)

    # -- the walk
    def check(self, p, in_agg: str | None = None) -> Node:
        if isinstance(p, PLiteral):
            return self.literal(p)
        if isinstance(p, PName):
            return self.column(p)
        if isinstance(p, PUnary):
            return self.unary(p, in_agg)
        if isinstance(p, PBinary):
            return self.binary(p, in_agg)
        if isinstance(p, PCall):
            return self.call(p, in_agg)
        if isinstance(p, PList):
            self.fail("a list [...] is only allowed as the edges of bucketize() or the categories of "
                      "category_index()", p.pos)
        raise AssertionError(p)

    def literal(self, p: PLiteral) -> Literal:
        v = p.value
        if v is None:
            return _null(NULL, p.pos)
        if isinstance(v, bool):
            return Literal(v, BOOL, p.pos)
        if isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                self.fail(f"integer literal {v} is out of the 64-bit range (write it as a double, e.g. {v}.0)",
                          p.pos)
            return Literal(v, INT, p.pos)
        if isinstance(v, float):
            return Literal(v, DOUBLE, p.pos)
        return Literal(v, STRING, p.pos)

    def column(self, p: PName) -> Column:
        dtype = self.schema.get(p.name)
        if dtype is None:
            close = difflib.get_close_matches(p.name, list(self.schema), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if p.name in ROW_FUNCTIONS or p.name in AGGREGATIONS:
                hint = f" ({p.name} is a function: {SIGNATURES[p.name]})"
            self.fail(f"unknown column '{p.name}'{hint}", p.pos)
        self.columns[p.name] = dtype
        return Column(p.name, dtype, p.pos)

    def unary(self, p: PUnary, in_agg) -> Node:
        if p.op == "-":
            if isinstance(p.operand, PLiteral) and type(p.operand.value) in (int, float):
                return self.literal(PLiteral(-p.operand.value, p.pos))
            x = self.check(p.operand, in_agg)
            self.numeric(x, "the operand of unary '-'", p.pos)
            if _is_null(x):
                return x
            if isinstance(x, Literal) and x.dtype == DOUBLE:
                return Literal(-x.value, x.dtype, p.pos)
            return Unary("neg", x, x.dtype, p.pos)
        x = self.check(p.operand, in_agg)
        if x.dtype not in (BOOL, NULL):
            self.fail(f"the operand of 'not' must be a bool, got {x.dtype}", p.pos)
        return _null(BOOL, p.pos) if _is_null(x) else Unary("not", x, BOOL, p.pos)

    def binary(self, p: PBinary, in_agg) -> Node:
        a, b = self.check(p.left, in_agg), self.check(p.right, in_agg)
        op = p.op
        if op in ("and", "or"):
            for side, x in (("left", a), ("right", b)):
                if x.dtype not in (BOOL, NULL):
                    self.fail(f"the {side} operand of '{op}' must be a bool, got {x.dtype}", p.pos)
            return Binary(op, promote(a, BOOL), promote(b, BOOL), BOOL, p.pos)
        if op in COMPARISONS:
            t = unify([a.dtype, b.dtype])
            if t is None:
                self.fail(f"cannot compare {a.dtype} with {b.dtype} using '{op}'", p.pos)
            if t == NULL or _is_null(a) or _is_null(b):
                return _null(BOOL, p.pos)  # a comparison with null is null
            return Binary(op, promote(a, t), promote(b, t), BOOL, p.pos)
        # arithmetic
        for x in (a, b):
            if x.dtype not in (INT, DOUBLE, NULL):
                hint = ""
                if x.dtype == STRING and op == "+":
                    hint = " (use concat(a, b) to join strings)"
                elif x.dtype in (TIMESTAMP, DATE) and op == "-":
                    hint = " (use minutes_between(start, end) for the time between two timestamps)"
                self.fail(f"'{op}' needs numbers, got {a.dtype} {op} {b.dtype}{hint}", p.pos)
        if op == "/":
            t = DOUBLE
        else:
            t = unify([a.dtype, b.dtype])
        if _is_null(a) or _is_null(b):
            return _null(t, p.pos)
        return Binary(op, promote(a, t), promote(b, t), t, p.pos)

    def call(self, p: PCall, in_agg) -> Node:
        fn = p.name
        if fn in AGGREGATIONS:
            return self.aggregation(p, in_agg)
        if fn not in ROW_FUNCTIONS:
            close = difflib.get_close_matches(fn, sorted(ROW_FUNCTIONS | AGGREGATIONS), n=1)
            hint = f" (did you mean {SIGNATURES[close[0]]}?)" if close else ""
            self.fail(f"unknown function '{fn}'{hint}", p.pos)
        return getattr(self, f"fn_{fn}")(p, in_agg)

    def args(self, p: PCall, in_agg, start: int = 0, stop: int | None = None) -> list[Node]:
        return [self.check(a, in_agg) for a in p.args[start:stop]]

    def fn_if(self, p, in_agg):
        self.arity(p, (3,))
        cond, a, b = self.args(p, in_agg)
        if cond.dtype not in (BOOL, NULL):
            self.fail(f"the condition of if() must be a bool, got {cond.dtype}", _pos(p.args[0]))
        t = unify([a.dtype, b.dtype])
        if t is None:
            self.fail(f"the branches of if() have different types: {a.dtype} and {b.dtype}", p.pos)
        if _is_null(cond):
            return promote(b, t)  # a null condition takes the else branch
        if t == NULL:
            return _null(NULL, p.pos)
        return If(cond, promote(a, t), promote(b, t), t, p.pos)

    def _unary_numeric(self, p, in_agg, result: str | None):
        self.arity(p, (1,))
        (x,) = self.args(p, in_agg)
        self.numeric(x, f"the argument of {p.name}()", _pos(p.args[0]))
        out = result or x.dtype
        if _is_null(x):
            return _null(out, p.pos)
        if result == DOUBLE:
            x = promote(x, DOUBLE)
        return Call(p.name, (x,), out, p.pos)

    def fn_log(self, p, in_agg):
        return self._unary_numeric(p, in_agg, DOUBLE)

    def fn_log1p(self, p, in_agg):
        return self._unary_numeric(p, in_agg, DOUBLE)

    def fn_abs(self, p, in_agg):
        return self._unary_numeric(p, in_agg, None)

    def fn_clip(self, p, in_agg):
        self.arity(p, (3,))
        xs = self.args(p, in_agg)
        for x, parg, what in zip(xs, p.args, ("x", "lo", "hi"), strict=True):
            self.numeric(x, f"clip() {what}", _pos(parg))
        t = unify([x.dtype for x in xs])
        if any(_is_null(x) for x in xs):
            return _null(t, p.pos)
        return Call("clip", tuple(promote(x, t) for x in xs), t, p.pos)

    def fn_bucketize(self, p, in_agg):
        self.arity(p, (2,))
        x = self.check(p.args[0], in_agg)
        self.numeric(x, "the value of bucketize()", _pos(p.args[0]))
        plist = p.args[1]
        if not isinstance(plist, PList):
            self.fail("the edges of bucketize() must be a list of number literals like [0, 10, 100]", _pos(plist))
        if not plist.items:
            self.fail("bucketize() needs at least one edge", plist.pos)
        edges = [self.literal_number(item, "a bucket edge") for item in plist.items]
        for i in range(1, len(edges)):
            if not edges[i - 1] < edges[i]:
                self.fail(f"the edges of bucketize() must be strictly increasing: {edges[i - 1]!r} is followed "
                          f"by {edges[i]!r}", _pos(plist.items[i]))
        if _is_null(x):
            return _null(INT, p.pos)
        if x.dtype == INT and all(type(e) is int for e in edges):
            if not all(INT64_MIN <= e <= INT64_MAX for e in edges):
                self.fail("a bucket edge is out of the 64-bit range", plist.pos)
            return Call("bucketize", (x,), INT, p.pos, {"edges": tuple(edges)})
        return Call("bucketize", (promote(x, DOUBLE),), INT, p.pos, {"edges": tuple(float(e) for e in edges)})

    def fn_coalesce(self, p, in_agg):
        self.arity(p, range(1, 1000))
        xs = self.args(p, in_agg)
        t = unify([x.dtype for x in xs])
        if t is None:
            self.fail("the arguments of coalesce() have different types: "
                      + ", ".join(x.dtype for x in xs), p.pos)
        xs = [promote(x, t) for x in xs if not _is_null(x)]
        if not xs:
            return _null(NULL, p.pos)
        if len(xs) == 1:
            return xs[0]
        return Call("coalesce", tuple(xs), t, p.pos)

    def fn_is_null(self, p, in_agg):
        self.arity(p, (1,))
        (x,) = self.args(p, in_agg)
        if _is_null(x):
            return Literal(True, BOOL, p.pos)
        return Call("is_null", (x,), BOOL, p.pos)

    def _string_fn(self, p, in_agg):
        self.arity(p, (1,))
        (x,) = self.args(p, in_agg)
        if x.dtype not in (STRING, NULL):
            self.fail(f"the argument of {p.name}() must be a string, got {x.dtype}", _pos(p.args[0]))
        if _is_null(x):
            return _null(STRING, p.pos)
        # lower(upper(s)) is lower(s), upper(lower(s)) is upper(s): only the outer conversion applies. Spark's
        # optimizer rewrites nested case conversions so (SimplifyCaseConversionExpressions), which is not the
        # same for every string (upper(lower("\u0130")) would be "I\u0307"); the language defines it so.
        while isinstance(x, Call) and x.fn in ("lower", "upper"):
            x = x.args[0]
        return Call(p.name, (x,), STRING, p.pos)

    fn_lower = _string_fn
    fn_upper = _string_fn

    def fn_concat(self, p, in_agg):
        self.arity(p, range(1, 1000))
        xs = self.args(p, in_agg)
        for x, parg in zip(xs, p.args, strict=True):
            if x.dtype not in (STRING, INT, NULL):
                self.fail(f"the arguments of concat() must be strings or ints, got {x.dtype}", _pos(parg))
        if any(_is_null(x) for x in xs):
            return _null(STRING, p.pos)
        return Call("concat", tuple(xs), STRING, p.pos)

    def fn_category_index(self, p, in_agg):
        self.arity(p, (2, 3))
        x = self.check(p.args[0], in_agg)
        if x.dtype not in (STRING, INT, NULL):
            self.fail(f"the value of category_index() must be a string or an int, got {x.dtype}", _pos(p.args[0]))
        plist = p.args[1]
        if not isinstance(plist, PList):
            self.fail('the categories of category_index() must be a list of literals like ["a", "b"]',
                      _pos(plist))
        if not plist.items:
            self.fail("category_index() needs at least one category", plist.pos)
        cats = []
        for item in plist.items:
            value = _constant_number(item)
            if value is None and isinstance(item, PLiteral) and isinstance(item.value, str):
                value = item.value
            if value is None or isinstance(value, float):
                self.fail("a category must be a string or integer literal", _pos(item))
            want = STRING if isinstance(value, str) else INT
            if x.dtype != NULL and want != x.dtype:
                self.fail(f"category {value!r} is a {want} literal but the value is a {x.dtype}", _pos(item))
            if value in cats:
                self.fail(f"duplicate category {value!r}", _pos(item))
            cats.append(value)
        if len({type(c) for c in cats}) > 1:
            self.fail("the categories of category_index() mix strings and integers", plist.pos)
        default = -1
        if len(p.args) == 3:
            default = self.literal_number(p.args[2], "the default of category_index()")
            if not isinstance(default, int) or not INT64_MIN <= default <= INT64_MAX:
                self.fail("the default of category_index() must be an integer literal", _pos(p.args[2]))
        if _is_null(x):
            return _null(INT, p.pos)
        return Call("category_index", (x,), INT, p.pos, {"categories": tuple(cats), "default": default})

    def fn_hash_bucket(self, p, in_agg):
        self.arity(p, (2,))
        x = self.check(p.args[0], in_agg)
        if x.dtype not in (STRING, INT, NULL):
            self.fail(f"the value of hash_bucket() must be a string or an int, got {x.dtype}", _pos(p.args[0]))
        n = self.literal_number(p.args[1], "the bucket count of hash_bucket()")
        if not isinstance(n, int) or not 1 <= n <= INT64_MAX:
            self.fail("the bucket count of hash_bucket() must be a positive integer literal", _pos(p.args[1]))
        if _is_null(x):
            return _null(INT, p.pos)
        return Call("hash_bucket", (x,), INT, p.pos, {"n": n})

    def _time_part(self, p, in_agg, allow_date: bool):
        self.arity(p, (1, 2) if allow_date else (2,))
        x = self.check(p.args[0], in_agg)
        if len(p.args) == 1:
            if x.dtype == TIMESTAMP:
                self.fail(f"{p.name}() of a timestamp needs an explicit time zone: {SIGNATURES[p.name]}", p.pos)
            if x.dtype not in (DATE, NULL):
                self.fail(f"the argument of {p.name}() must be a date or a timestamp, got {x.dtype}",
                          _pos(p.args[0]))
            return _null(INT, p.pos) if _is_null(x) else Call(p.name, (x,), INT, p.pos)
        if x.dtype == DATE and allow_date:
            self.fail(f"a date has no time zone: write {p.name}(date_column) without one", p.pos)
        if x.dtype not in (TIMESTAMP, NULL):
            self.fail(f"the first argument of {p.name}() must be a timestamp, got {x.dtype}", _pos(p.args[0]))
        tz = self.zone(p.args[1], p.name)
        return _null(INT, p.pos) if _is_null(x) else Call(p.name, (x,), INT, p.pos, {"tz": tz})

    def fn_hour(self, p, in_agg):
        return self._time_part(p, in_agg, allow_date=False)

    def fn_day_of_week(self, p, in_agg):
        return self._time_part(p, in_agg, allow_date=True)

    def fn_month(self, p, in_agg):
        return self._time_part(p, in_agg, allow_date=True)

    def fn_minutes_between(self, p, in_agg):
        self.arity(p, (2,))
        xs = self.args(p, in_agg)
        for x, parg in zip(xs, p.args, strict=True):
            if x.dtype not in (TIMESTAMP, NULL):
                self.fail(f"the arguments of minutes_between() must be timestamps, got {x.dtype}", _pos(parg))
        if any(_is_null(x) for x in xs):
            return _null(DOUBLE, p.pos)
        return Call("minutes_between", tuple(xs), DOUBLE, p.pos)

    def aggregation(self, p: PCall, in_agg) -> Agg:
        fn = p.name
        if in_agg:
            self.fail(f"window aggregations cannot be nested: {fn}() inside {in_agg}()", p.pos)
        if fn == "count":
            self.arity(p, (1, 2))
        elif fn == "quantile":
            self.arity(p, (3,))
        else:
            self.arity(p, (2,))
        window_us, window_text = self.window(p.args[-1], fn)
        q = None
        if fn == "quantile":
            q = self.literal_number(p.args[1], "the level of quantile()")
            if not 0.0 <= q <= 1.0:
                self.fail(f"the level of quantile() must be between 0 and 1, got {q!r}", _pos(p.args[1]))
            q = float(q)
        arg = None
        if len(p.args) > 1:
            arg = self.check(p.args[0], fn)
            if _is_null(arg):
                self.fail(f"the argument of {fn}() is always null", _pos(p.args[0]))
            if fn != "count":
                self.numeric(arg, f"the argument of {fn}()", _pos(p.args[0]))
        if fn == "count":
            dtype = INT
        elif fn in ("mean", "quantile"):
            dtype = DOUBLE
            arg = promote(arg, DOUBLE)
        else:  # sum, min, max keep the argument's type
            dtype = arg.dtype
        agg = Agg(fn, arg, window_us, window_text, dtype, p.pos, q=q, index=len(self.aggs))
        self.aggs.append(agg)
        return agg


def _pos(p) -> int:
    return getattr(p, "pos", 0)


def _constant_number(p) -> int | float | None:
    if isinstance(p, PLiteral) and type(p.value) in (int, float):
        return p.value
    if isinstance(p, PUnary) and p.op == "-":
        inner = _constant_number(p.operand)
        return None if inner is None else -inner
    return None


NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_feature(name: str, text: str, schema: Mapping[str, str]) -> FeatureExpr:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FeatureDefinitionError(str(name), "a feature name must be an identifier (letters, digits, _)")
    if not isinstance(text, str):
        raise FeatureDefinitionError(name, f"the definition must be a string, got {type(text).__name__}")
    try:
        types = normalize_schema(schema)
    except ValueError as exc:
        raise FeatureDefinitionError(name, f"invalid schema: {exc}") from None
    checker = _Checker(types)
    try:
        root = checker.check(parse(text))
        if root.dtype == NULL:
            raise _ParseError("the definition is always null, so it has no type", 0)
    except _ParseError as exc:
        raise FeatureDefinitionError(name, exc.reason, text, exc.offset) from None
    except RecursionError:
        raise FeatureDefinitionError(name, "the definition is nested too deeply") from None
    return FeatureExpr(name=name, text=text, root=root, dtype=root.dtype, columns=tuple(sorted(checker.columns)),
                       column_types=dict(sorted(checker.columns.items())), aggregations=tuple(checker.aggs))
