"""Tokenizer and Pratt parser of the feature language: text -> untyped syntax tree.

No ``eval`` and no Python ``ast``: a hand-written scanner and a precedence-climbing (Pratt) parser. Every
node keeps the character offset it starts at so that errors can point at it. Binding power, lowest first:

    or  <  and  <  not (prefix)  <  == != < <= > >= (non-associative)  <  + -  <  * /  <  unary -  <  call, ()

``+ - * /`` and ``and``/``or`` associate to the left; comparisons do not chain (``a < b < c`` is an error).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.features.errors import _ParseError

DIGITS = frozenset("0123456789")
IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
IDENT_CHARS = IDENT_START | DIGITS
KEYWORDS = {"and", "or", "not", "true", "false", "null"}
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
# Longest first, so "<=" wins over "<".
OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "(", ")", "[", "]", ",")
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


# --- tokens -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "num", "str", "ident", "kw", "op", "eof"
    value: object
    pos: int
    text: str


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == "#":  # comment to the end of the line
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        if c in DIGITS or (c == "." and i + 1 < n and text[i + 1] in DIGITS):
            i = _scan_number(text, i)
            raw = text[start:i]
            if i < n and text[i] in IDENT_CHARS:
                raise _ParseError(f"invalid number literal '{raw}{text[i]}'", start)
            if any(ch in raw for ch in ".eE"):
                value: object = float(raw)
                if value in (float("inf"), float("-inf")):
                    raise _ParseError(f"number literal {raw} is out of the range of a double", start)
            else:
                value = int(raw)
            tokens.append(Token("num", value, start, raw))
            continue
        if c in IDENT_START:
            while i < n and text[i] in IDENT_CHARS:
                i += 1
            word = text[start:i]
            tokens.append(Token("kw" if word in KEYWORDS else "ident", word, start, word))
            continue
        if c == "`":  # quoted identifier: a column whose name is not a plain identifier
            end = text.find("`", i + 1)
            if end == -1:
                raise _ParseError("unterminated quoted name (missing closing `)", start)
            name = text[i + 1:end]
            if not name:
                raise _ParseError("empty quoted name", start)
            i = end + 1
            tokens.append(Token("ident", name, start, text[start:i]))
            continue
        if c in "\"'":
            value, i = _scan_string(text, i)
            tokens.append(Token("str", value, start, text[start:i]))
            continue
        for hint in ("**", "&&", "||", "<>"):
            if text.startswith(hint, i):
                raise _ParseError(HINTS[hint], start)
        for op in OPERATORS:
            if text.startswith(op, i):
                i += len(op)
                tokens.append(Token("op", op, start, op))
                break
        else:
            if c in HINTS:
                raise _ParseError(HINTS[c], start)
            raise _ParseError(f"unexpected character {c!r}", start)
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
            raise _ParseError("invalid number literal: exponent has no digits", i)
    return i


def _scan_string(text: str, i: int) -> tuple[str, int]:
    quote, start, n = text[i], i, len(text)
    i += 1
    out: list[str] = []
    while True:
        if i >= n:
            raise _ParseError("unterminated string literal", start)
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\n":
            raise _ParseError("unterminated string literal (strings cannot span lines; use \\n)", start)
        if c == "\\":
            if i + 1 >= n:
                raise _ParseError("unterminated string literal", start)
            e = text[i + 1]
            if e in ESCAPES:
                out.append(ESCAPES[e])
                i += 2
                continue
            if e in "uU":
                width = 4 if e == "u" else 8
                digits = text[i + 2:i + 2 + width]
                if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise _ParseError(f"invalid \\{e} escape: needs {width} hex digits", i)
                code = int(digits, 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise _ParseError(f"invalid \\{e} escape: not a Unicode scalar value", i)
                out.append(chr(code))
                i += 2 + width
                continue
            raise _ParseError(f"unknown escape \\{e}", i)
        out.append(c)
        i += 1


# --- syntax tree --------------------------------------------------------------------------------------------

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


BINARY_POWER = {"or": 10, "and": 20, **{op: 40 for op in COMPARISONS}, "+": 50, "-": 50, "*": 60, "/": 60}
NOT_POWER = 30
NEG_POWER = 70


class _Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, op: str, context: str) -> Token:
        tok = self.tok
        if tok.kind == "op" and tok.value == op:
            return self.advance()
        raise _ParseError(f"expected '{op}' {context}, found {_describe(tok)}", tok.pos)

    def parse(self):
        if self.tok.kind == "eof":
            raise _ParseError("empty definition", 0)
        node = self.expression(0)
        if self.tok.kind != "eof":
            tok = self.tok
            hint = ""
            if tok.kind in ("num", "str", "ident") or (tok.kind == "op" and tok.value in "(["):
                hint = " (missing operator or comma?)"
            raise _ParseError(f"unexpected {_describe(tok)} after a complete expression{hint}", tok.pos)
        return node

    def expression(self, min_power: int):
        left = self.prefix()
        while True:
            tok = self.tok
            op = tok.value if tok.kind in ("op", "kw") else None
            power = BINARY_POWER.get(op) if isinstance(op, str) else None
            if power is None or power <= min_power:
                return left
            self.advance()
            right = self.expression(power)
            if op in COMPARISONS and self.tok.value in COMPARISONS and self.tok.kind == "op":
                raise _ParseError("comparisons cannot be chained: write (a < b) and (b < c)", self.tok.pos)
            left = PBinary(op, left, right, tok.pos)

    def prefix(self):
        tok = self.advance()
        if tok.kind == "num" or tok.kind == "str":
            return PLiteral(tok.value, tok.pos)
        if tok.kind == "kw":
            if tok.value in ("true", "false"):
                return PLiteral(tok.value == "true", tok.pos)
            if tok.value == "null":
                return PLiteral(None, tok.pos)
            if tok.value == "not":
                return PUnary("not", self.expression(NOT_POWER), tok.pos)
            raise _ParseError(f"expected an expression, found '{tok.value}'", tok.pos)
        if tok.kind == "ident":
            if self.tok.kind == "op" and self.tok.value == "(" and not tok.text.startswith("`"):
                self.advance()
                args = self.arguments(")", f"to close the arguments of {tok.value}(")
                return PCall(tok.value, tuple(args), tok.pos)
            return PName(tok.value, tok.pos)
        if tok.kind == "op":
            if tok.value == "-":
                return PUnary("-", self.expression(NEG_POWER), tok.pos)
            if tok.value == "(":
                inner = self.expression(0)
                self.expect(")", "to close '('")
                return inner
            if tok.value == "[":
                return PList(tuple(self.arguments("]", "to close '['")), tok.pos)
        raise _ParseError(f"expected an expression, found {_describe(tok)}", tok.pos)

    def arguments(self, closer: str, context: str) -> list:
        items = []
        if self.tok.kind == "op" and self.tok.value == closer:
            self.advance()
            return items
        while True:
            items.append(self.expression(0))
            tok = self.tok
            if tok.kind == "op" and tok.value == ",":
                self.advance()
                continue
            if tok.kind == "op" and tok.value == closer:
                self.advance()
                return items
            raise _ParseError(f"expected ',' or '{closer}' {context}, found {_describe(tok)}", tok.pos)


def _describe(tok: Token) -> str:
    if tok.kind == "eof":
        return "end of input"
    if tok.kind == "str":
        return f"string {tok.text}"
    if tok.kind == "num":
        return f"number {tok.text}"
    if tok.kind == "ident":
        return f"name '{tok.text}'"
    return f"'{tok.text}'"


def parse(text: str):
    """Parse a definition into an untyped syntax tree; raises ``_ParseError(reason, offset)``."""
    return _Parser(text).parse()
