'''Promotion rules: the language a use case's ``rules.yaml`` speaks, and the lifecycle's transition table.

A rule says when a candidate model moves to the next lifecycle stage::

    WHEN metrics[mae] <= 5 AND metrics[coverage_90] >= 0.88
         AND metrics[mae] < champion.metrics[mae] * 0.98
    THEN PROMOTE TO staging

Public API
==========
::

    from pipelines.lifecycle import ModelFacts, parse_rule, evaluate, load_rules, check_transition

    rule = parse_rule(text, known_metrics={"mae", "coverage_90"})   # Rule, or RuleError
    decision = evaluate(rule, ModelFacts(metrics={"mae": 4.1, "coverage_90": 0.9}), champion=None)
    decision.promote, decision.target_stage, decision.failing_clauses, decision.notes
    rules = load_rules(yaml.safe_load(f), source="config/usecases/flights_eta/rules.yaml")
    check_transition("staging", "production")                       # None, or RuleError

* ``parse_rule(text, known_metrics=None) -> Rule``. ``Rule`` has ``text`` (the source), ``target_stage``,
  ``condition`` (the AST, made of the frozen dataclasses ``Num``, ``Str``, ``Ref``, ``Neg``, ``BinOp``,
  ``Compare``, ``Not``, ``And``, ``Or``), ``name``, ``clauses`` (the top-level AND operands),
  ``metrics`` (metric names read) and ``canonical`` (also ``str(rule)``): a normalised printing that parses
  back to the same AST.
* ``evaluate(rule, candidate, champion) -> Decision``; ``ModelFacts(metrics, params, tags)``.
  ``Decision(promote, target_stage, clauses: list[ClauseResult], rule_text, no_champion)`` with
  ``failing_clauses`` (e.g. ``"metrics[mae] <= 5 (6.2 <= 5) is false"``) and ``notes``.
* ``load_rules(data, source, known_metrics=None) -> list[Rule]`` validates a parsed ``rules.yaml``
  mapping (a pydantic model: ``rules`` is a list of rule texts or ``{name, when, description}``, nothing
  else); ``load_rules_file(path, known_metrics=None)`` reads and validates the file.
* ``STAGES``, ``ALLOWED_TRANSITIONS``, ``allowed_targets(stage)``, ``check_transition(from_stage, to_stage)``.
* Every error is a :class:`RuleError` (a ``ValueError``) whose message names the reason, the position
  (line and column, 1-based) and shows the offending line with a caret under the position; ``load_rules``
  errors also name the file and the rule (index and name).

Language
========
``WHEN <condition> THEN PROMOTE TO <stage>``. Keywords (``WHEN THEN PROMOTE TO AND OR NOT``) and the
reference namespaces (``metrics params tags champion``) are case-insensitive; metric/param/tag names are
case-sensitive; stage names are case-insensitive and normalised to lowercase. Whitespace, including
newlines, is free. Numbers, strings, hints and the binding powers are the feature language's: both languages
share one tokenizer and parser core, :mod:`pipelines.lang` (rules have no ``#`` comments: a folded YAML
scalar is one line).

Operands:

=================================  ===================================================================
``12``, ``0.5``, ``.5``, ``1e-3``  numbers (finite; ``1e999`` is an error)
``"text"``, ``'text'``             strings on one line; escapes ``\\\\ \\" \\' \\n \\t \\r \\0 \\uXXXX \\UXXXXXXXX``
``metrics[name]``                  a candidate metric: a number
``champion.metrics[name]``         the same metric of the current champion: a number
``params[name]``                   a candidate parameter: string or number (decided when evaluated)
``tags[name]``                     a candidate tag: a string
=================================  ===================================================================

Names inside brackets are ``[A-Za-z0-9_][A-Za-z0-9_.:/-]*`` (e.g. ``coverage_90``, ``val.rmse``).

Operators, loosest first: ``OR``; ``AND``; ``NOT``; comparisons ``< <= > >= == !=`` (exactly one per
comparison: ``a < b < c`` is an error, write ``a < b AND b < c``); ``+ -``; ``* /``; unary ``-``. Binary
operators are left-associative. Parentheses group both conditions and arithmetic. A condition must be
built of comparisons: ``WHEN metrics[mae] THEN ...`` is an error.

Types, checked at parse time: arithmetic needs numbers; a number cannot be compared with a string;
strings support only ``==`` and ``!=``. ``params[...]`` is either, so it passes the static check and is
coerced when evaluated: against a number (or in arithmetic) it must parse as a number (``"6"`` does), against a
string a numeric param is printed (``6.0`` -> ``"6"``, ``0.1`` -> ``"0.1"``); two params are compared as
numbers when both are numeric, else as strings.

Semantics of evaluation
=======================
* The decision is made per **clause**: the top-level ``AND`` operands (``OR``/``NOT``/parenthesised
  groups stay one clause). ``promote`` is true when every clause holds. Each ``ClauseResult`` records its
  canonical text, the values it saw (``values``: reference -> value, ``None`` when absent), the clause with
  the values substituted (``substituted``), whether it held, and a ``reason`` when it was not a plain
  true/false; ``str(result)`` is ``"metrics[mae] <= 5 (6.2 <= 5) is false"``. A model that fails stays
  where it is; ``Decision.failing_clauses`` lists the failing ones.
* **No champion** (``champion=None``): a clause that references ``champion.*`` is *waived*: it counts as
  held (there is no champion to beat), its reason says so, ``Decision.no_champion`` is true and the
  reason is in ``Decision.notes``. Clauses without ``champion.*`` are evaluated as usual, so put absolute
  bounds (``metrics[mae] <= 5``) in clauses of their own. A champion that lacks the metric is *not*
  waived: that comparison is unknown (below).
* **Unknown values** never crash the evaluation. A missing metric/param/tag, a metric that is NaN or not a
  number, a param that is not numeric where a number is needed, a division by zero or an arithmetic
  result that is NaN make that comparison *unknown*, with the reason recorded. Inside a clause unknown
  follows three-valued (Kleene) logic: ``NOT unknown`` is unknown, ``false AND unknown`` is false, ``true
  OR unknown`` is true; a clause holds only when it is true, so an unknown clause fails with its reason
  (``NOT metrics[drift] > 0.1`` does not pass because drift is missing).
* Comparisons between numbers are exact IEEE comparisons (``inf`` metrics are allowed).

Lifecycle stages and transitions
================================
``exploration -> training -> evaluation -> staging -> production -> archived``. Allowed moves
(:data:`ALLOWED_TRANSITIONS`): one step forward (no skipping: a model reaches production only through
evaluation and staging), ``production -> staging`` (demotion / rollback), any live stage -> ``archived``.
``archived`` is terminal, moving to the stage a model is already in is an error, and every other move
(e.g. ``production -> training``, ``training -> staging``) raises :class:`RuleError`.
'''

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from pipelines.lang import COMPARISONS, Dialect, ParseError, PrattParser, Token, pointer, quote

__all__ = [
    "ALLOWED_TRANSITIONS",
    "STAGES",
    "And",
    "BinOp",
    "ClauseResult",
    "Compare",
    "Decision",
    "ModelFacts",
    "Neg",
    "Not",
    "Num",
    "Or",
    "Ref",
    "Rule",
    "RuleError",
    "Str",
    "allowed_targets",
    "check_transition",
    "evaluate",
    "load_rules",
    "load_rules_file",
    "parse_rule",
]

STAGES: tuple[str, ...] = ("exploration", "training", "evaluation", "staging", "production", "archived")

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "exploration": frozenset({"training", "archived"}),
    "training": frozenset({"evaluation", "archived"}),
    "evaluation": frozenset({"staging", "archived"}),
    "staging": frozenset({"production", "archived"}),
    "production": frozenset({"staging", "archived"}),  # production -> staging: demotion / rollback
    "archived": frozenset(),
}


# --------------------------------------------------------------------------------------------- errors
class RuleError(ValueError):
    """A rule that cannot be parsed, type-checked or loaded, or a transition that is not allowed."""

    def __init__(self, reason: str, text: str | None = None, position: int | None = None,
                 source: str | None = None, rule: str | None = None):
        self.reason = reason
        self.text = text
        self.position = position
        self.source = source
        self.rule = rule
        super().__init__(self._render())

    def _render(self) -> str:
        head = ""
        if self.source is not None:
            head += f"{self.source}: "
        if self.rule is not None:
            head += f"{self.rule}: "
        msg = head + self.reason
        if self.text is not None and self.position is not None:
            msg += pointer(self.text, self.position)[2]
        return msg

    def in_context(self, source: str, rule: str) -> RuleError:
        return RuleError(self.reason, self.text, self.position, source, rule)


# ------------------------------------------------------------------------------------------------ AST
@dataclass(frozen=True)
class Num:
    value: int | float


@dataclass(frozen=True)
class Str:
    value: str


@dataclass(frozen=True)
class Ref:
    """``metrics[name]`` (scope ``candidate``) / ``champion.metrics[name]`` (scope ``champion``) /
    ``params[name]`` / ``tags[name]``."""

    kind: str  # "metrics" | "params" | "tags"
    name: str
    scope: str = "candidate"  # "candidate" | "champion"


@dataclass(frozen=True)
class Neg:
    operand: Any


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * /
    left: Any
    right: Any


@dataclass(frozen=True)
class Compare:
    op: str  # < <= > >= == !=
    left: Any
    right: Any


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class And:
    left: Any
    right: Any


@dataclass(frozen=True)
class Or:
    left: Any
    right: Any


# ---------------------------------------------------------------------------------------------- printer
_ARITH_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _fmt_value(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _ref_text(r: Ref) -> str:
    base = f"{r.kind}[{r.name}]"
    return f"champion.{base}" if r.scope == "champion" else base


def _arith_prec(n: Any) -> int:
    if isinstance(n, BinOp):
        return _ARITH_PREC[n.op]
    if isinstance(n, Neg):
        return 3
    return 4


def _bool_prec(n: Any) -> int:
    return {Or: 1, And: 2, Not: 3}.get(type(n), 4)


def _show(n: Any, values: Mapping[str, Any] | None = None) -> str:
    """Canonical text; with ``values``, references are replaced by the values seen."""
    if isinstance(n, Num):
        return repr(n.value) if isinstance(n.value, float) else str(n.value)
    if isinstance(n, Str):
        return quote(n.value)
    if isinstance(n, Ref):
        text = _ref_text(n)
        return _fmt_value(values.get(text)) if values is not None else text
    if isinstance(n, Neg):
        inner = _show(n.operand, values)
        return f"-({inner})" if _arith_prec(n.operand) < 3 else f"-{inner}"
    if isinstance(n, BinOp):
        p = _ARITH_PREC[n.op]
        left, right = _show(n.left, values), _show(n.right, values)
        if _arith_prec(n.left) < p:
            left = f"({left})"
        if _arith_prec(n.right) <= p:
            right = f"({right})"
        return f"{left} {n.op} {right}"
    if isinstance(n, Compare):
        return f"{_show(n.left, values)} {n.op} {_show(n.right, values)}"
    if isinstance(n, Not):
        inner = _show(n.operand, values)
        return f"NOT ({inner})" if _bool_prec(n.operand) < 3 else f"NOT {inner}"
    if isinstance(n, And | Or):
        p = _bool_prec(n)
        word = "AND" if isinstance(n, And) else "OR"
        left, right = _show(n.left, values), _show(n.right, values)
        if _bool_prec(n.left) < p:
            left = f"({left})"
        if _bool_prec(n.right) <= p:
            right = f"({right})"
        return f"{left} {word} {right}"
    raise TypeError(f"not a rule AST node: {n!r}")


def _refs(n: Any) -> Iterable[Ref]:
    if isinstance(n, Ref):
        yield n
    elif isinstance(n, Neg | Not):
        yield from _refs(n.operand)
    elif isinstance(n, BinOp | Compare | And | Or):
        yield from _refs(n.left)
        yield from _refs(n.right)


def _and_operands(n: Any) -> list[Any]:
    if isinstance(n, And):
        return _and_operands(n.left) + _and_operands(n.right)
    return [n]


# ------------------------------------------------------------------------------------------------ Rule
@dataclass(frozen=True)
class Rule:
    text: str
    target_stage: str
    condition: Any
    name: str | None = field(default=None, compare=False)

    @property
    def canonical(self) -> str:
        return f"WHEN {_show(self.condition)} THEN PROMOTE TO {self.target_stage}"

    @property
    def clauses(self) -> list[Any]:
        return _and_operands(self.condition)

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(r.name for r in _refs(self.condition) if r.kind == "metrics")

    def __str__(self) -> str:
        return self.canonical


# ---------------------------------------------------------------------------------------------- parser
# The tokenizer and the precedence climbing are pipelines.lang's; this parser builds typed rule nodes,
# (node, type) pairs, and checks the types as it goes so that every error points where it arises.
_DIALECT = Dialect(keywords=frozenset({"when", "then", "promote", "to", "and", "or", "not"}), ignore_case=True,
                   punctuation="[].", bracket_name=re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*"),
                   comments=False)  # a folded YAML scalar is one line: a comment would swallow THEN
_NAMESPACES = ("metrics", "params", "tags", "champion")
_NUMBER, _STRING, _ANY, _CONDITION = "number", "string", "string or number", "condition"
_ORDERING = {"<", "<=", ">", ">="}
_OPERAND = "expected a number, a string, metrics[...], champion.metrics[...], params[...], tags[...] or '('"


class _Parser(PrattParser):
    END, NAME = "end of rule", ""

    def __init__(self, text: str, known_metrics: set[str] | frozenset[str] | None):
        super().__init__(text, _DIALECT)
        self.known = known_metrics

    def expect_kw(self, word: str, context: str) -> None:
        if not self.at("kw", word):
            raise ParseError(f"expected {word.upper()} {context}, found {self.describe(self.tok)}", self.tok.pos)
        self.advance()

    def rule(self) -> tuple[Any, str]:
        self.expect_kw("when", "at the start of a rule")
        condition = self.condition(self.expression())
        self.expect_kw("then", "after the condition")
        self.expect_kw("promote", "after THEN")
        self.expect_kw("to", "after PROMOTE")
        t = self.advance()
        known = f"known stages: {', '.join(STAGES)}"
        if t.kind != "ident":
            raise ParseError(f"expected a stage name after PROMOTE TO, found {self.describe(t)}; {known}", t.pos)
        stage = t.text.lower()
        if stage not in STAGES:
            hint = difflib.get_close_matches(stage, STAGES, n=1, cutoff=0.5)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            raise ParseError(f"unknown stage {t.text!r}; {did}{known}", t.pos)
        if self.tok.kind != "eof":
            raise ParseError(f"unexpected {self.describe(self.tok)} after the target stage", self.tok.pos)
        return condition, stage

    def condition(self, typed: tuple[Any, str]) -> Any:
        """The node of a condition. A value where a condition belongs is reported at the token after it."""
        if typed[1] != _CONDITION:
            raise ParseError(f"expected a comparison operator (< <= > >= == !=), found {self.describe(self.tok)}",
                             self.tok.pos)
        return typed[0]

    def literal(self, tok: Token) -> tuple[Any, str]:
        return (Num(tok.value), _NUMBER) if tok.kind == "num" else (Str(tok.value), _STRING)

    def unary(self, tok: Token, operand: tuple[Any, str]) -> tuple[Any, str]:
        if tok.value == "not":
            return Not(self.condition(operand)), _CONDITION
        node, ty = operand
        if ty in (_STRING, _CONDITION):
            raise ParseError(f"type error: unary '-' needs a number, got {ty} {_show(node)}", tok.pos)
        return Neg(node), _NUMBER

    def infix(self, tok: Token, left: tuple[Any, str], power: int) -> tuple[Any, str]:
        if tok.value in ("and", "or"):
            self.condition(left)
        return super().infix(tok, left, power)

    def binary(self, tok: Token, left: tuple[Any, str], right: tuple[Any, str]) -> tuple[Any, str]:
        op, (a, at), (b, bt) = tok.value, left, right
        if op in ("and", "or"):
            return (And if op == "and" else Or)(a, self.condition(right)), _CONDITION
        if op in COMPARISONS:
            if _CONDITION in (at, bt) or {at, bt} == {_NUMBER, _STRING}:
                raise ParseError(f"type error: cannot compare {at} {_show(a)} with {bt} {_show(b)} using '{op}'",
                                 tok.pos)
            if op in _ORDERING and _STRING in (at, bt):
                raise ParseError(f"type error: strings can only be compared with == or !=, not '{op}'", tok.pos)
            return Compare(op, a, b), _CONDITION
        for node, ty in (left, right):
            if ty in (_STRING, _CONDITION):
                raise ParseError(f"type error: '{op}' needs numbers, got {ty} {_show(node)}", tok.pos)
        return BinOp(op, a, b), _NUMBER

    def atom(self, tok: Token) -> tuple[Any, str]:
        if tok.kind == "ident" and tok.text.lower() in _NAMESPACES:
            return self.reference(tok.text.lower())
        if tok.kind == "ident":
            hint = difflib.get_close_matches(tok.value.lower(), _NAMESPACES, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ParseError(f"unknown name {tok.value!r}: {_OPERAND}{did}", tok.pos)
        raise ParseError(f"{_OPERAND}, found {self.describe(tok)}", tok.pos)

    def reference(self, kind: str) -> tuple[Any, str]:
        scope = "candidate"
        if kind == "champion":
            self.expect(".", "after champion (champion.metrics[...])")
            t = self.advance()
            if t.kind != "ident" or t.text.lower() != "metrics":
                raise ParseError("expected metrics after 'champion.' (only champion.metrics[...] is supported), "
                                 f"found {self.describe(t)}", t.pos)
            scope, kind = "champion", "metrics"
        self.expect("[", f"after {kind}")
        name = self.advance()  # the dialect reads a name after every '['
        self.expect("]")
        if kind == "metrics" and self.known is not None and name.value not in self.known:
            did = _suggest(name.value, self.known)
            known = ", ".join(sorted(self.known)) or "none"
            raise ParseError(f"unknown metric {name.value!r}{did} (known metrics: {known})", name.pos)
        return Ref(kind, name.value, scope), {"metrics": _NUMBER, "tags": _STRING, "params": _ANY}[kind]


def _suggest(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name (case-insensitive first), else ``""``."""
    known = sorted(known)
    folded = [k for k in known if k.lower() == name.lower()]
    hint = folded or difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def parse_rule(text: str, known_metrics: set[str] | frozenset[str] | None = None, *,
               name: str | None = None) -> Rule:
    """Parse and type-check one rule; raises :class:`RuleError` (see the module docstring)."""
    if not isinstance(text, str):
        raise RuleError(f"a rule must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RuleError("empty rule: expected 'WHEN <condition> THEN PROMOTE TO <stage>'")
    try:
        cond, stage = _Parser(text, known_metrics).rule()
    except ParseError as e:
        raise RuleError(e.reason, text, e.offset) from None
    except RecursionError:
        raise RuleError("the rule is nested too deeply") from None
    return Rule(text=text, target_stage=stage, condition=cond, name=name)


# -------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class ModelFacts:
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str | float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClauseResult:
    text: str
    held: bool
    values: dict[str, Any]
    substituted: str
    reason: str | None = None
    waived: bool = False

    def __str__(self) -> str:
        if self.waived:
            return f"{self.text} is waived: {self.reason}"
        s = f"{self.text} ({self.substituted}) is {'true' if self.held else 'false'}"
        return f"{s}: {self.reason}" if self.reason else s


@dataclass(frozen=True)
class Decision:
    promote: bool
    target_stage: str
    clauses: list[ClauseResult]
    rule_text: str = ""
    no_champion: bool = False

    @property
    def failing_clauses(self) -> list[str]:
        return [str(c) for c in self.clauses if not c.held]

    @property
    def notes(self) -> list[str]:
        return [str(c) for c in self.clauses if c.waived]

    def __str__(self) -> str:
        if self.promote:
            return f"promote to {self.target_stage}" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        return f"stay (not promoted to {self.target_stage}): " + "; ".join(self.failing_clauses)


class _Unknown(Exception):
    pass


class _Evaluator:
    def __init__(self, candidate: ModelFacts, champion: ModelFacts | None):
        self.candidate = candidate
        self.champion = champion
        self.values: dict[str, Any] = {}
        self.reasons: list[str] = []

    def unknown(self, reason: str) -> _Unknown:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return _Unknown(reason)

    # values
    def lookup(self, r: Ref) -> Any:
        text = _ref_text(r)
        facts = self.champion if r.scope == "champion" else self.candidate
        assert facts is not None  # champion clauses are waived before evaluation when there is no champion
        table = getattr(facts, r.kind) or {}
        who = "champion" if r.scope == "champion" else "candidate"
        if r.name not in table:
            self.values[text] = None
            raise self.unknown(f"{text} is missing from the {who}")
        v = table[r.name]
        self.values[text] = v
        if r.kind == "metrics":
            if isinstance(v, str) or not isinstance(v, int | float):
                raise self.unknown(f"{text} is not a number ({v!r})")
            if math.isnan(v):
                raise self.unknown(f"{text} is NaN")
        elif r.kind == "tags" and not isinstance(v, str):
            raise self.unknown(f"{text} is not a string ({v!r})")
        return v

    def as_number(self, node: Any, v: Any) -> float:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return v
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                raise self.unknown(f"{_show(node)} = {quote(v)} is not a number") from None
            if math.isnan(f):
                raise self.unknown(f"{_show(node)} is NaN")
            return f
        raise self.unknown(f"{_show(node)} = {v!r} is not a number")

    def value(self, n: Any) -> Any:
        if isinstance(n, Num | Str):
            return n.value
        if isinstance(n, Ref):
            return self.lookup(n)
        if isinstance(n, Neg):
            return -self.as_number(n.operand, self.value(n.operand))
        if isinstance(n, BinOp):
            a = self.as_number(n.left, self.value(n.left))
            b = self.as_number(n.right, self.value(n.right))
            if n.op == "/":
                if b == 0:
                    raise self.unknown(f"division by zero in {_show(n)}")
                r = a / b
            else:
                r = a + b if n.op == "+" else a - b if n.op == "-" else a * b
            if isinstance(r, float) and math.isnan(r):
                raise self.unknown(f"{_show(n)} is NaN")
            return r
        raise TypeError(f"not an arithmetic node: {n!r}")

    def compare(self, n: Compare) -> bool:
        # Evaluate both sides first so that every value seen is recorded even if one side is unknown.
        results: list[Any] = []
        issue: _Unknown | None = None
        for side in (n.left, n.right):
            try:
                results.append(self.value(side))
            except _Unknown as e:
                issue = issue or e
                results.append(None)
        if issue is not None:
            raise issue
        a, b = results
        numeric_a = not isinstance(a, str) or (isinstance(n.left, Ref) and n.left.kind == "params")
        numeric_b = not isinstance(b, str) or (isinstance(n.right, Ref) and n.right.kind == "params")
        if isinstance(a, str) and isinstance(b, str):
            both_params = all(isinstance(s, Ref) and s.kind == "params" for s in (n.left, n.right))
            if both_params and _is_numeric(a) and _is_numeric(b):
                a, b = float(a), float(b)
            elif n.op in _ORDERING:
                raise self.unknown(f"cannot order strings with '{n.op}' in {_show(n)}")
        elif isinstance(a, str) or isinstance(b, str):
            # One side is a string, the other a number: only a params side can bridge the two.
            if isinstance(a, str) and isinstance(n.left, Ref) and n.left.kind == "params" and numeric_b:
                a = self.as_number(n.left, a)
            elif isinstance(b, str) and isinstance(n.right, Ref) and n.right.kind == "params" and numeric_a:
                b = self.as_number(n.right, b)
            elif isinstance(n.left, Ref) and n.left.kind == "params":
                a = _param_str(a)
            elif isinstance(n.right, Ref) and n.right.kind == "params":
                b = _param_str(b)
            else:  # pragma: no cover - excluded by the static type check
                raise self.unknown(f"cannot compare {a!r} with {b!r}")
            if isinstance(a, str) and n.op in _ORDERING:
                raise self.unknown(f"cannot order strings with '{n.op}' in {_show(n)}")
        return _OPS[n.op](a, b)

    def truth(self, n: Any) -> bool | None:
        """Three-valued: None is unknown (the reason is in ``self.reasons``)."""
        if isinstance(n, Compare):
            try:
                return self.compare(n)
            except _Unknown:
                return None
        if isinstance(n, Not):
            t = self.truth(n.operand)
            return None if t is None else not t
        if isinstance(n, And):
            a, b = self.truth(n.left), self.truth(n.right)
            if a is False or b is False:
                return False
            return None if a is None or b is None else True
        if isinstance(n, Or):
            a, b = self.truth(n.left), self.truth(n.right)
            if a is True or b is True:
                return True
            return None if a is None or b is None else False
        raise TypeError(f"not a condition node: {n!r}")


def _is_numeric(s: str) -> bool:
    try:
        return not math.isnan(float(s))
    except ValueError:
        return False


def _param_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def evaluate(rule: Rule, candidate: ModelFacts, champion: ModelFacts | None = None) -> Decision:
    """Evaluate ``rule`` for ``candidate`` against ``champion`` (``None``: there is none). Never raises for
    missing or bad values: see "Semantics of evaluation" in the module docstring."""
    results: list[ClauseResult] = []
    no_champion = False
    for clause in rule.clauses:
        text = _show(clause)
        if champion is None and any(r.scope == "champion" for r in _refs(clause)):
            no_champion = True
            results.append(ClauseResult(text, True, {}, text, "no champion to compare against", waived=True))
            continue
        ev = _Evaluator(candidate, champion)
        t = ev.truth(clause)
        reason = "; ".join(ev.reasons) if t is None else None
        results.append(ClauseResult(text, t is True, dict(ev.values), _show(clause, ev.values), reason))
    return Decision(all(c.held for c in results), rule.target_stage, results, rule.text, no_champion)


# ------------------------------------------------------------------------------------------------ loading
class _RuleEntry(BaseModel):
    """One item of ``rules:``: a mapping, or the rule text alone."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = Field(None, pattern=r"\S")
    when: StrictStr
    description: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_alone(cls, data: Any) -> Any:
        return {"when": data} if isinstance(data, str) else data


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[_RuleEntry] | None = None


def _rule_label(i: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, Mapping) else None
    return f"rule #{i} ({name!r})" if isinstance(name, str) and name.strip() else f"rule #{i}"


def _invalid(exc: ValidationError, data: Any, source: str) -> RuleError:
    """The first problem pydantic found, said in the words of the rules file (file, rule, reason)."""
    errors = exc.errors()
    loc, kind, value = errors[0]["loc"], errors[0]["type"], errors[0]["input"]
    extra = ", ".join(sorted(str(e["loc"][-1]) for e in errors
                             if e["type"] == "extra_forbidden" and e["loc"][:-1] == loc[:-1]))
    if not loc:
        return RuleError(f"expected a mapping with a 'rules' list, got {type(value).__name__}", source=source)
    if loc[0] != "rules":
        return RuleError(f"unknown top-level key(s) {extra}; expected only 'rules'", source=source)
    if len(loc) == 1:
        return RuleError(f"'rules' must be a list, got {type(value).__name__}", source=source)
    where = _rule_label(int(loc[1]), data["rules"][loc[1]])
    if len(loc) == 2:
        reason = f"expected a rule string or a mapping, got {type(value).__name__}"
    elif kind == "extra_forbidden":
        reason = f"unknown key(s) {extra}; expected name, when, description"
    elif kind == "missing":
        reason = "missing 'when' (the rule text)"
    elif loc[2] == "name":
        reason = f"'name' must be a non-empty string, got {value!r}"
    else:
        reason = f"'{loc[2]}' must be a string, got {type(value).__name__}"
    return RuleError(reason, source=source, rule=where)


def load_rules(data: Any, source: str, known_metrics: set[str] | frozenset[str] | None = None) -> list[Rule]:
    """Validate a parsed ``rules.yaml``: ``{"rules": [<rule text> | {"name": str, "when": <rule text>,
    "description": str}, ...]}``. Errors name ``source``, the rule (index and name) and the reason."""
    if data is None:
        return []
    try:
        entries = _RulesFile.model_validate(data).rules or []
    except ValidationError as exc:
        raise _invalid(exc, data, source) from None
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = _rule_label(i, {"name": entry.name})
        if entry.name is not None:
            if entry.name in seen:
                raise RuleError(f"duplicate rule name {entry.name!r} (also rule #{seen[entry.name]})", source=source,
                                rule=where)
            seen[entry.name] = i
        try:
            rules.append(parse_rule(entry.when, known_metrics, name=entry.name))
        except RuleError as e:
            raise e.in_context(source, where) from None
    return rules


def load_rules_file(path: str | Path, known_metrics: set[str] | frozenset[str] | None = None) -> list[Rule]:
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RuleError(f"invalid YAML: {e}", source=str(p)) from None
    return load_rules(data, str(p), known_metrics)


# -------------------------------------------------------------------------------------------- transitions
def allowed_targets(stage: str) -> frozenset[str]:
    _check_stage(stage, "stage")
    return ALLOWED_TRANSITIONS[stage]


def _check_stage(stage: Any, role: str) -> None:
    if stage not in STAGES:
        raise RuleError(f"unknown {role} {stage!r}; known stages: {', '.join(STAGES)}")


def check_transition(from_stage: str, to_stage: str) -> None:
    """Raise :class:`RuleError` unless moving a model from ``from_stage`` to ``to_stage`` is allowed."""
    _check_stage(from_stage, "source stage")
    _check_stage(to_stage, "target stage")
    if from_stage == to_stage:
        raise RuleError(f"transition {from_stage} -> {to_stage}: the model is already in {from_stage}")
    allowed = ALLOWED_TRANSITIONS[from_stage]
    if to_stage not in allowed:
        options = ", ".join(s for s in STAGES if s in allowed) or f"none ({from_stage} is terminal)"
        raise RuleError(f"transition {from_stage} -> {to_stage} is not allowed; from {from_stage}: {options}")
