"""The feature language's syntax: text -> untyped syntax tree, on the shared expression core.

The tokenizer and the precedence-climbing parser are :mod:`pipelines.lang`'s (its docstring has the lexical
rules and the binding powers); this module adds what only features have: ``true``/``false``/``null``,
function calls ``f(a, b)``, lists ``[a, b]`` and column names. Every node keeps the character offset it
starts at (a binary node: its operator's) so that errors can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.lang import COMPARISONS, Dialect, ParseError, PrattParser, Token

__all__ = ["COMPARISONS", "PBinary", "PCall", "PList", "PLiteral", "PName", "PUnary", "parse"]

DIALECT = Dialect(keywords=frozenset({"and", "or", "not", "true", "false", "null"}), punctuation="[],")
_CONSTANTS = {"true": True, "false": False, "null": None}


@dataclass(frozen=True, slots=True)
class PLiteral:
    value: object  # int, float, str, bool or None
    pos: int


@dataclass(frozen=True, slots=True)
class PName:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class PUnary:
    op: str  # "-" or "not"
    operand: object
    pos: int


@dataclass(frozen=True, slots=True)
class PBinary:
    op: str  # + - * / == != < <= > >= and or
    left: object
    right: object
    pos: int  # the operator's offset


@dataclass(frozen=True, slots=True)
class PCall:
    name: str
    args: tuple
    pos: int


@dataclass(frozen=True, slots=True)
class PList:
    items: tuple
    pos: int


class _Parser(PrattParser):
    def __init__(self, text: str):
        super().__init__(text, DIALECT)

    def parse(self):
        if self.tok.kind == "eof":
            raise ParseError("empty definition", 0)
        node = self.expression()
        tok = self.tok
        if tok.kind != "eof":
            hint = ""
            if tok.kind in ("num", "str", "ident") or (tok.kind == "op" and tok.value in "(["):
                hint = " (missing operator or comma?)"
            raise ParseError(f"unexpected {self.describe(tok)} after a complete expression{hint}", tok.pos)
        return node

    def literal(self, tok: Token) -> PLiteral:
        return PLiteral(tok.value, tok.pos)

    def unary(self, tok: Token, operand: object) -> PUnary:
        return PUnary(tok.value, operand, tok.pos)

    def binary(self, tok: Token, left: object, right: object) -> PBinary:
        return PBinary(tok.value, left, right, tok.pos)

    def atom(self, tok: Token):
        if tok.kind == "kw" and tok.value in _CONSTANTS:
            return PLiteral(_CONSTANTS[tok.value], tok.pos)
        if tok.kind == "ident":
            if self.at("op", "(") and not tok.text.startswith("`"):
                self.advance()
                return PCall(tok.value, tuple(self.arguments(")", f"to close the arguments of {tok.value}(")), tok.pos)
            return PName(tok.value, tok.pos)
        if tok.kind == "op" and tok.value == "[":
            return PList(tuple(self.arguments("]", "to close '['")), tok.pos)
        raise ParseError(f"expected an expression, found {self.describe(tok)}", tok.pos)

    def arguments(self, closer: str, context: str) -> list:
        items = []
        if self.at("op", closer):
            self.advance()
            return items
        while True:
            items.append(self.expression())
            if self.at("op", ","):
                self.advance()
            elif self.at("op", closer):
                self.advance()
                return items
            else:
                raise ParseError(f"expected ',' or '{closer}' {context}, found {self.describe(self.tok)}", self.tok.pos)


def parse(text: str):
    """Parse a definition into an untyped syntax tree; raises ``ParseError(reason, offset)``."""
    return _Parser(text).parse()
