"""The expression core the feature language (:mod:`pipelines.features`) and the promotion rules
(:mod:`pipelines.lifecycle.rules`) share: one tokenizer, one precedence-climbing (Pratt) parser and one way
of pointing at an error.

No ``eval`` and no Python ``ast``. Lexical rules, the same in both languages: whitespace is free; numbers
are ``12``, ``0.5``, ``.5``, ``1e-3`` (finite doubles; a number glued to a letter, ``_`` or ``.`` is an
error); strings are ``"..."`` or ``'...'`` on one line with the escapes of :data:`ESCAPES` plus ``\\uXXXX``
and ``\\UXXXXXXXX``; identifiers are ``[A-Za-z_][A-Za-z0-9_]*``, or any text between backticks; operators of
other languages get a hint (:data:`HINTS`). A :class:`Dialect` says what differs: the keywords (and whether
their case matters), the punctuation, whether ``[`` is followed by a raw name (the rules'
``metrics[val.rmse]``) and whether ``#`` starts a comment.

Binding power, lowest first (``+ - * /`` and ``and``/``or`` associate to the left, comparisons do not chain)::

    or  <  and  <  not (prefix)  <  == != < <= > >= (non-associative)  <  + -  <  * /  <  unary -  <  atoms, ()

A language subclasses :class:`PrattParser` and says what its atoms are and what nodes it builds. Errors are
:class:`ParseError` (a reason and a character offset); :func:`pointer` renders the offset as line, column,
the source line and a caret, the same for :class:`~pipelines.features.errors.FeatureDefinitionError` and
:class:`~pipelines.lifecycle.rules.RuleError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DIGITS = frozenset("0123456789")
IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
IDENT_CHARS = IDENT_START | DIGITS
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")  # longest first, so "<=" wins over "<"
HINTS = {
    "=": "'=' is not an operator: use '==' to compare",
    "<>": "'<>' is not an operator: use '!='",
    "&&": "'&&' is not an operator: use 'and'",
    "||": "'||' is not an operator: use 'or' (and concat(a, b) to join strings)",
    "&": "'&' is not an operator: use 'and'",
    "|": "'|' is not an operator: use 'or'",
    "!": "'!' is not an operator: use 'not' (or '!=')",
    "%": "'%' (modulo) is not supported",
    "**": "'**' (power) is not supported",
}
ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_KNOWN_ESCAPES = " ".join("\\" + letter for letter in ESCAPES) + " \\uXXXX \\UXXXXXXXX"
_QUOTED = {char: "\\" + letter for letter, char in ESCAPES.items() if letter != "'"}


class ParseError(Exception):
    """A syntax or type error at a character offset (None: no position), before a language names it."""

    def __init__(self, reason: str, offset: int | None):
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


def pointer(text: str, offset: int) -> tuple[int, int, str]:
    """``(line, column, suffix)``: the 1-based position of ``offset`` in ``text`` and the message suffix
    ``" (line L, column C)"`` followed by the source line and a caret under the position."""
    offset = max(0, min(offset, len(text)))
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    line, column = text.count("\n", 0, offset) + 1, offset - start + 1
    source = text[start:len(text) if end == -1 else end].replace("\t", " ")
    return line, column, f" (line {line}, column {column})\n    {source}\n    {' ' * (column - 1)}^"


def quote(s: str) -> str:
    """A double-quoted string literal that tokenizes back to ``s``."""
    return '"' + "".join(_QUOTED.get(c, c) for c in s) + '"'


# --- tokens -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialect:
    """What differs between the languages' lexical rules."""

    keywords: frozenset[str]
    ignore_case: bool = False  # keywords in any case; a keyword token's value is then lowercase
    punctuation: str = ""  # one-character tokens beyond the operators and ( )
    bracket_name: re.Pattern[str] | None = None  # after '[', one raw name token of this pattern
    comments: bool = True  # '#' to the end of the line


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "num", "str", "ident", "kw", "op", "name" (after '[' with Dialect.bracket_name), "eof"
    value: Any
    pos: int
    text: str


def tokenize(text: str, dialect: Dialect) -> list[Token]:
    operators = (*COMPARISONS, "+", "-", "*", "/", "(", ")", *dialect.punctuation)
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#" and dialect.comments:
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        if c in DIGITS or (c == "." and i + 1 < n and text[i + 1] in DIGITS):
            i = _scan_number(text, i)
            raw = text[start:i]
            if i < n and (text[i] in IDENT_CHARS or text[i] == "."):
                raise ParseError(f"invalid number literal '{raw}{text[i]}'", start)
            if any(ch in raw for ch in ".eE"):
                value: Any = float(raw)
                if value in (float("inf"), float("-inf")):
                    raise ParseError(f"number literal {raw} is out of the range of a double", start)
            else:
                value = int(raw)
            tokens.append(Token("num", value, start, raw))
            continue
        if c in IDENT_START:
            while i < n and text[i] in IDENT_CHARS:
                i += 1
            word = text[start:i]
            key = word.lower() if dialect.ignore_case else word
            tokens.append(Token("kw", key, start, word) if key in dialect.keywords else Token("ident", word, start, word))
            continue
        if c == "`":  # quoted identifier: a column whose name is not a plain identifier
            end = text.find("`", i + 1)
            if end == -1:
                raise ParseError("unterminated quoted name (missing closing `)", start)
            name = text[i + 1:end]
            if not name:
                raise ParseError("empty quoted name", start)
            i = end + 1
            tokens.append(Token("ident", name, start, text[start:i]))
            continue
        if c in "\"'":
            value, i = _scan_string(text, i)
            tokens.append(Token("str", value, start, text[start:i]))
            continue
        for hint in ("**", "&&", "||", "<>"):
            if text.startswith(hint, i):
                raise ParseError(HINTS[hint], start)
        op = next((op for op in operators if text.startswith(op, i)), None)
        if op is None:
            raise ParseError(HINTS.get(c, f"unexpected character {c!r}"), start)
        i += len(op)
        tokens.append(Token("op", op, start, op))
        if op == "[" and dialect.bracket_name is not None:
            while i < n and text[i].isspace():
                i += 1
            m = dialect.bracket_name.match(text, i)
            if m is None:
                raise ParseError("expected a name inside [...]", i)
            tokens.append(Token("name", m.group(), i, m.group()))
            i = m.end()
    tokens.append(Token("eof", None, n, "end of input"))
    return tokens


def _scan_number(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in DIGITS:
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i] in DIGITS:
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j] in DIGITS:
            i = j
            while i < n and text[i] in DIGITS:
                i += 1
        else:
            raise ParseError("invalid number literal: exponent has no digits", i)
    return i


def _scan_string(text: str, i: int) -> tuple[str, int]:
    quote_char, start, n = text[i], i, len(text)
    i += 1
    out: list[str] = []
    while True:
        if i >= n:
            raise ParseError("unterminated string literal", start)
        c = text[i]
        if c == quote_char:
            return "".join(out), i + 1
        if c == "\n":
            raise ParseError("unterminated string literal (strings cannot span lines; use \\n)", start)
        if c == "\\":
            if i + 1 >= n:
                raise ParseError("unterminated string literal", start)
            e = text[i + 1]
            if e in ESCAPES:
                out.append(ESCAPES[e])
                i += 2
                continue
            if e in "uU":
                width = 4 if e == "u" else 8
                digits = text[i + 2:i + 2 + width]
                if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise ParseError(f"invalid \\{e} escape: needs {width} hex digits", i)
                code = int(digits, 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise ParseError(f"invalid \\{e} escape: not a Unicode scalar value", i)
                out.append(chr(code))
                i += 2 + width
                continue
            raise ParseError(f"unknown escape \\{e} (known: {_KNOWN_ESCAPES})", i)
        out.append(c)
        i += 1


# --- parser -------------------------------------------------------------------------------------------------

BINARY_POWER = {"or": 10, "and": 20, **{op: 40 for op in COMPARISONS}, "+": 50, "-": 50, "*": 60, "/": 60}
NOT_POWER = 30
NEG_POWER = 70


class PrattParser:
    """The precedence climbing both languages share. A subclass builds the nodes (:meth:`literal`,
    :meth:`unary`, :meth:`binary`) and parses everything else that starts an operand (:meth:`atom`)."""

    END = "end of input"  # how an error names the end of the text
    NAME = "name "  # and an identifier: "name 'x'"

    def __init__(self, text: str, dialect: Dialect):
        self.text = text
        self.tokens = tokenize(text, dialect)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, kind: str, value: str) -> bool:
        return self.tok.kind == kind and self.tok.value == value

    def expect(self, op: str, context: str = "") -> Token:
        if self.at("op", op):
            return self.advance()
        where = f" {context}" if context else ""
        raise ParseError(f"expected '{op}'{where}, found {self.describe(self.tok)}", self.tok.pos)

    def describe(self, tok: Token) -> str:
        if tok.kind == "eof":
            return self.END
        if tok.kind in ("num", "str"):
            return f"{'number' if tok.kind == 'num' else 'string'} {tok.text}"
        return f"{self.NAME if tok.kind == 'ident' else ''}'{tok.text}'"

    def expression(self, min_power: int = 0) -> Any:
        left = self.prefix()
        while True:
            tok = self.tok
            power = BINARY_POWER.get(tok.value) if tok.kind in ("op", "kw") else None
            if power is None or power <= min_power:
                return left
            left = self.infix(tok, left, power)

    def infix(self, tok: Token, left: Any, power: int) -> Any:
        self.advance()
        right = self.expression(power)
        if tok.value in COMPARISONS and self.tok.kind == "op" and self.tok.value in COMPARISONS:
            raise ParseError("comparisons cannot be chained: write (a < b) and (b < c)", self.tok.pos)
        return self.binary(tok, left, right)

    def prefix(self) -> Any:
        tok = self.advance()
        if tok.kind in ("num", "str"):
            return self.literal(tok)
        if tok.kind == "kw" and tok.value == "not":
            return self.unary(tok, self.expression(NOT_POWER))
        if tok.kind == "op" and tok.value == "-":
            return self.unary(tok, self.expression(NEG_POWER))
        if tok.kind == "op" and tok.value == "(":
            inner = self.expression()
            self.expect(")", "to close '('")
            return inner
        return self.atom(tok)

    def literal(self, tok: Token) -> Any:
        raise NotImplementedError

    def unary(self, tok: Token, operand: Any) -> Any:
        raise NotImplementedError

    def binary(self, tok: Token, left: Any, right: Any) -> Any:
        raise NotImplementedError

    def atom(self, tok: Token) -> Any:
        raise NotImplementedError
