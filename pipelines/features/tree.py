"""The feature language's types and its typed tree: what the checker produces and both compilers read.

The tree is small and explicit, so that the two compilers cannot disagree about what it means: every
implicit int -> double promotion is a :class:`Cast` node, a ``null`` literal carries the type its context
gives it, and literal-only arguments of a function are in its ``params`` (see :mod:`.checker`).
"""

from __future__ import annotations

import operator
import re
from typing import Any

# --- types --------------------------------------------------------------------------------------------------

INT, DOUBLE, STRING, BOOL, TIMESTAMP, DATE = "int", "double", "string", "bool", "timestamp", "date"
NULL = "null"  # the type of a bare null literal, before its context types it
DTYPES = (INT, DOUBLE, STRING, BOOL, TIMESTAMP, DATE)
NUMERIC = (INT, DOUBLE)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# The binary operators both compilers apply as Python operators (to values, or to Spark Columns).
COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge}
ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul}

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


class Call(Node):
    """A row-level function (``if`` too); literal-only arguments are in ``params``."""

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


def is_null_literal(node: Node) -> bool:
    """A null literal, typed or not (``null``, or an expression already folded to null)."""
    return isinstance(node, Literal) and node.value is None


def null_of(dtype: str, pos: int) -> Literal:
    return Literal(None, dtype, pos)


def promote(node: Node, target: str) -> Node:
    """Give ``node`` the type ``target``: a typed null, an int widened to double, or itself."""
    if node.dtype == target:
        return node
    if node.dtype == NULL:
        return null_of(target, node.pos)
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

