"""Static type checker: untyped syntax tree + column schema -> typed tree (the input of both compilers).

The typed tree (:mod:`.tree`) is small and explicit, so that the two compilers cannot disagree about what it
means:

* every implicit int -> double promotion is a :class:`Cast` node (comparisons, ``if``, ``coalesce``, ``clip``
  and arithmetic that mix int and double, and both operands of ``/``);
* a ``null`` literal takes the type its context gives it; null-propagating operations on a ``null`` literal
  are folded to a typed ``null`` here, so no compiler ever sees an untyped null except as a whole result;
* literal-only arguments (windows, quantile levels, bucket edges, categories, time zones, bucket counts,
  defaults) are validated and moved out of the argument list into ``params``.

Operators are typed here; each function's typing rule is in its declaration in :mod:`.functions`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from pipelines.features.errors import FeatureDefinitionError, _ParseError
from pipelines.features.functions import AGGREGATIONS, FUNCTIONS, signature
from pipelines.features.parser import COMPARISONS, PBinary, PCall, PList, PLiteral, PName, PUnary, parse
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
    Binary,
    Column,
    Literal,
    Node,
    Unary,
    format_node,
    is_null_literal,
    null_of,
    promote,
    unify,
)

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

def _pos(at) -> int | None:
    """The offset of an error: given as a number, or the parsed node it is about."""
    return at if at is None or isinstance(at, int) else getattr(at, "pos", 0)


class _Checker:
    def __init__(self, schema: Mapping[str, str]):
        self.schema = schema
        self.columns: dict[str, str] = {}
        self.aggs: list[Agg] = []

    # -- helpers (the typing rules in functions.py use them too); ``at`` is an offset or a parsed node
    def fail(self, reason: str, at):
        raise _ParseError(reason, _pos(at))

    def numeric(self, node: Node, what: str, at) -> None:
        if node.dtype not in (INT, DOUBLE, NULL):
            self.fail(f"{what} must be a number, got {node.dtype}", at)

    def literal_string(self, parg, what: str) -> str:
        if isinstance(parg, PLiteral) and isinstance(parg.value, str):
            return parg.value
        self.fail(f"{what} must be a string literal (a constant in quotes), not an expression", parg)

    @staticmethod
    def constant_number(p) -> int | float | None:
        if isinstance(p, PLiteral) and type(p.value) in (int, float):
            return p.value
        if isinstance(p, PUnary) and p.op == "-":
            inner = _Checker.constant_number(p.operand)
            return None if inner is None else -inner
        return None

    def literal_number(self, parg, what: str) -> int | float:
        value = self.constant_number(parg)
        if value is None:
            self.fail(f"{what} must be a number literal, not an expression", parg)
        return value

    def window(self, parg, fn: str) -> tuple[int, str]:
        if not (isinstance(parg, PLiteral) and isinstance(parg.value, str)):
            self.fail(f"the window of {fn}() must be a duration literal like \"7d\" (units s, m, h, d, w), "
                      "not an expression", parg)
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
                      f"{signature(pcall.name)}", pcall.pos)

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
            return null_of(NULL, p.pos)
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
            if p.name in FUNCTIONS or p.name in AGGREGATIONS:
                hint = f" ({p.name} is a function: {signature(p.name)})"
            self.fail(f"unknown column '{p.name}'{hint}", p.pos)
        self.columns[p.name] = dtype
        return Column(p.name, dtype, p.pos)

    def unary(self, p: PUnary, in_agg) -> Node:
        if p.op == "-":
            if isinstance(p.operand, PLiteral) and type(p.operand.value) in (int, float):
                return self.literal(PLiteral(-p.operand.value, p.pos))
            x = self.check(p.operand, in_agg)
            self.numeric(x, "the operand of unary '-'", p.pos)
            if is_null_literal(x):
                return x
            if isinstance(x, Literal) and x.dtype == DOUBLE:
                return Literal(-x.value, x.dtype, p.pos)
            return Unary("neg", x, x.dtype, p.pos)
        x = self.check(p.operand, in_agg)
        if x.dtype not in (BOOL, NULL):
            self.fail(f"the operand of 'not' must be a bool, got {x.dtype}", p.pos)
        return null_of(BOOL, p.pos) if is_null_literal(x) else Unary("not", x, BOOL, p.pos)

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
            if t == NULL or is_null_literal(a) or is_null_literal(b):
                return null_of(BOOL, p.pos)  # a comparison with null is null
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
        if is_null_literal(a) or is_null_literal(b):
            return null_of(t, p.pos)
        return Binary(op, promote(a, t), promote(b, t), t, p.pos)

    def call(self, p: PCall, in_agg) -> Node:
        if p.name in AGGREGATIONS:
            return self.aggregation(p, in_agg)
        fn = FUNCTIONS.get(p.name)
        if fn is None:
            close = difflib.get_close_matches(p.name, sorted(FUNCTIONS.keys() | AGGREGATIONS.keys()), n=1)
            hint = f" (did you mean {signature(close[0])}?)" if close else ""
            self.fail(f"unknown function '{p.name}'{hint}", p.pos)
        self.arity(p, fn.arity)
        return fn.check(self, p, [self.check(a, in_agg) for a in p.args[:fn.exprs]])

    def aggregation(self, p: PCall, in_agg) -> Agg:
        fn, spec = p.name, AGGREGATIONS[p.name]
        if in_agg:
            self.fail(f"window aggregations cannot be nested: {fn}() inside {in_agg}()", p.pos)
        self.arity(p, spec.arity)
        window_us, window_text = self.window(p.args[-1], fn)
        q = None
        if fn == "quantile":
            q = self.literal_number(p.args[1], "the level of quantile()")
            if not 0.0 <= q <= 1.0:
                self.fail(f"the level of quantile() must be between 0 and 1, got {q!r}", p.args[1])
            q = float(q)
        arg = None
        if len(p.args) > 1:
            arg = self.check(p.args[0], fn)
            if is_null_literal(arg):
                self.fail(f"the argument of {fn}() is always null", p.args[0])
            if fn != "count":
                self.numeric(arg, f"the argument of {fn}()", p.args[0])
        if spec.result == DOUBLE:
            arg = promote(arg, DOUBLE)
        agg = Agg(fn, arg, window_us, window_text, spec.result or arg.dtype, p.pos, q=q, index=len(self.aggs))
        self.aggs.append(agg)
        return agg


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
