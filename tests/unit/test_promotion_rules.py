"""The promotion rule language: parser, type checker, evaluation, rules.yaml loading and stage transitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.lifecycle import (
    ALLOWED_TRANSITIONS,
    STAGES,
    ModelFacts,
    Rule,
    RuleError,
    allowed_targets,
    check_transition,
    evaluate,
    load_rules,
    load_rules_file,
    parse_rule,
)
from pipelines.lifecycle.rules import And, BinOp, Compare, Neg, Not, Num, Or, Ref, Str

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = ("WHEN metrics[mae] <= 5 AND metrics[coverage_90] >= 0.88 AND metrics[mae] < champion.metrics[mae] * 0.98 "
           "THEN PROMOTE TO staging")
MAE = Ref("metrics", "mae")


def cond(text: str):
    return parse_rule(f"WHEN {text} THEN PROMOTE TO staging").condition


def holds(text: str, candidate: ModelFacts | None = None, champion: ModelFacts | None = None) -> bool:
    return evaluate(parse_rule(f"WHEN {text} THEN PROMOTE TO staging"), candidate or ModelFacts(), champion).promote


# ------------------------------------------------------------------------------------------ the example
def test_example_rule_parses():
    rule = parse_rule(EXAMPLE, known_metrics={"mae", "coverage_90", "rmse"})
    assert rule.text == EXAMPLE
    assert rule.target_stage == "staging"
    assert rule.metrics == {"mae", "coverage_90"}
    assert len(rule.clauses) == 3
    assert rule.clauses[2] == Compare("<", MAE, BinOp("*", Ref("metrics", "mae", "champion"), Num(0.98)))
    assert str(rule) == rule.canonical == EXAMPLE
    assert parse_rule(rule.canonical) == rule


def test_example_rule_promotes_a_better_model():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 4.0, "coverage_90": 0.9}),
                 ModelFacts(metrics={"mae": 4.5}))
    assert d.promote and d.target_stage == "staging" and not d.no_champion
    assert d.failing_clauses == [] and d.notes == []
    assert [c.held for c in d.clauses] == [True, True, True]
    assert d.clauses[2].values == {"metrics[mae]": 4.0, "champion.metrics[mae]": 4.5}
    assert d.clauses[2].substituted == "4.0 < 4.5 * 0.98"
    assert str(d).startswith("promote to staging")


def test_example_rule_keeps_a_worse_model_and_records_the_failing_clauses():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 6.2, "coverage_90": 0.9}),
                 ModelFacts(metrics={"mae": 6.0}))
    assert not d.promote
    assert d.failing_clauses == [
        "metrics[mae] <= 5 (6.2 <= 5) is false",
        "metrics[mae] < champion.metrics[mae] * 0.98 (6.2 < 6.0 * 0.98) is false",
    ]
    assert [c.held for c in d.clauses] == [False, True, False]
    assert d.clauses[0].values == {"metrics[mae]": 6.2} and d.clauses[0].reason is None
    assert "stay (not promoted to staging)" in str(d)


def test_champion_beaten_by_too_little_fails_only_that_clause():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 4.0, "coverage_90": 0.95}),
                 ModelFacts(metrics={"mae": 4.05}))
    assert not d.promote
    assert d.failing_clauses == ["metrics[mae] < champion.metrics[mae] * 0.98 (4.0 < 4.05 * 0.98) is false"]


# ------------------------------------------------------------------------------ precedence, associativity
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3 == 7", Compare("==", BinOp("+", Num(1), BinOp("*", Num(2), Num(3))), Num(7))),
        ("(1 + 2) * 3 == 9", Compare("==", BinOp("*", BinOp("+", Num(1), Num(2)), Num(3)), Num(9))),
        ("10 - 4 - 3 == 3", Compare("==", BinOp("-", BinOp("-", Num(10), Num(4)), Num(3)), Num(3))),
        ("8 / 4 / 2 == 1", Compare("==", BinOp("/", BinOp("/", Num(8), Num(4)), Num(2)), Num(1))),
        ("-2 * 3 < 0", Compare("<", BinOp("*", Neg(Num(2)), Num(3)), Num(0))),
        ("--1 > 0", Compare(">", Neg(Neg(Num(1))), Num(0))),
        ("1 < 2 OR 3 < 4 AND 5 < 6",
         Or(Compare("<", Num(1), Num(2)), And(Compare("<", Num(3), Num(4)), Compare("<", Num(5), Num(6))))),
        ("(1 < 2 OR 3 < 4) AND 5 < 6",
         And(Or(Compare("<", Num(1), Num(2)), Compare("<", Num(3), Num(4))), Compare("<", Num(5), Num(6)))),
        ("NOT 1 < 2 AND 3 < 4", And(Not(Compare("<", Num(1), Num(2))), Compare("<", Num(3), Num(4)))),
        ("NOT (1 < 2 AND 3 < 4)", Not(And(Compare("<", Num(1), Num(2)), Compare("<", Num(3), Num(4))))),
        ("1 < 2 AND 3 < 4 AND 5 < 6",
         And(And(Compare("<", Num(1), Num(2)), Compare("<", Num(3), Num(4))), Compare("<", Num(5), Num(6)))),
        ("((metrics[mae])) > 1", Compare(">", MAE, Num(1))),
        ("((metrics[mae] + 1) * 2 > 3)", Compare(">", BinOp("*", BinOp("+", MAE, Num(1)), Num(2)), Num(3))),
        ("1e-3 < .5", Compare("<", Num(0.001), Num(0.5))),
        ("2E+2 == 200", Compare("==", Num(200.0), Num(200))),
        ('tags[team] == "eta"', Compare("==", Ref("tags", "team"), Str("eta"))),
        ("params[lr] == 'a\\'b\\\\'", Compare("==", Ref("params", "lr"), Str("a'b\\"))),
        ("metrics[val.rmse-90] > 0", Compare(">", Ref("metrics", "val.rmse-90"), Num(0))),
    ],
)
def test_precedence_and_associativity(text, expected):
    assert cond(text) == expected
    rule = parse_rule(f"WHEN {text} THEN PROMOTE TO staging")
    assert parse_rule(rule.canonical).condition == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3 == 7", True),
        ("10 - 4 - 3 == 3", True),
        ("8 / 4 / 2 == 1", True),
        ("1 < 2 OR 3 > 4 AND 5 > 6", True),
        ("(1 < 2 OR 3 > 4) AND 5 > 6", False),
        ("NOT 1 > 2", True),
        ("-2 * -3 == 6", True),
    ],
)
def test_arithmetic_and_boolean_evaluation(text, expected):
    assert holds(text) is expected


def test_canonical_keeps_needed_parentheses():
    assert str(parse_rule("when (1 - (2 - 3)) == 2 then promote to training")) == \
        "WHEN 1 - (2 - 3) == 2 THEN PROMOTE TO training"
    assert str(parse_rule("WHEN not (1<2 or 2<3) and (1<2 or 2<3) THEN PROMOTE TO training")) == \
        "WHEN NOT (1 < 2 OR 2 < 3) AND (1 < 2 OR 2 < 3) THEN PROMOTE TO training"
    assert str(parse_rule("WHEN -(1 + 2) < 0 THEN PROMOTE TO training")) == \
        "WHEN -(1 + 2) < 0 THEN PROMOTE TO training"


# ------------------------------------------------------------------------------------- case-insensitivity
def test_keywords_and_namespaces_are_case_insensitive():
    lower = parse_rule(EXAMPLE.lower())
    mixed = parse_rule("When METRICS[mae] <= 5 And Metrics[coverage_90] >= 0.88 anD metrics[mae] < "
                       "Champion.Metrics[mae] * 0.98\n  Then Promote To STAGING")
    base = parse_rule(EXAMPLE)
    assert (lower.condition, lower.target_stage) == (base.condition, base.target_stage)
    assert (mixed.condition, mixed.target_stage) == (base.condition, base.target_stage)
    assert lower.canonical == mixed.canonical == EXAMPLE
    assert mixed.target_stage == "staging"
    assert cond("not 1 > 2 or 1 < 2") == cond("NOT 1 > 2 OR 1 < 2")


def test_names_inside_brackets_are_case_sensitive():
    with pytest.raises(RuleError, match="unknown metric 'MAE'; did you mean 'mae'"):
        parse_rule("WHEN metrics[MAE] < 1 THEN PROMOTE TO staging", known_metrics={"mae"})


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("metrics[mae] < 1 THEN PROMOTE TO staging", "expected WHEN at the start of a rule, found 'metrics'", 1),
        ("WHEN metrics[mae] < 1 PROMOTE TO staging", "expected THEN after the condition, found 'PROMOTE'", 23),
        ("WHEN metrics[mae] < 1 THEN TO staging", "expected PROMOTE after THEN, found 'TO'", 28),
        ("WHEN metrics[mae] < 1 THEN PROMOTE staging", "expected TO after PROMOTE, found 'staging'", 36),
        ("WHEN metrics[mae] < 1 THEN PROMOTE TO", "expected a stage name after PROMOTE TO, found end of rule", 38),
        ("WHEN metrics[mae] < 1 THEN PROMOTE TO staging now", "unexpected 'now' after the target stage", 47),
        ("WHEN metrics[mae] < 1 $ THEN PROMOTE TO staging", "unexpected character '$'", 23),
        ("WHEN metrics[mae] = 1 THEN PROMOTE TO staging", "use '==' to compare", 19),
        ("WHEN tags[a] == \"x THEN PROMOTE TO staging", "unterminated string literal", 17),
        ("WHEN tags[a] == \"\\q\" THEN PROMOTE TO staging", "unknown escape \\q", 18),
        ("WHEN metrics[] < 1 THEN PROMOTE TO staging", "expected a name inside [...]", 14),
        ("WHEN metrics[mae < 1 THEN PROMOTE TO staging", "expected ']', found '<'", 18),
        ("WHEN metrics mae < 1 THEN PROMOTE TO staging", "expected '[' after metrics, found 'mae'", 14),
        ("WHEN metric[mae] < 1 THEN PROMOTE TO staging", "unknown name 'metric'", 6),
        ("WHEN metric[mae] < 1 THEN PROMOTE TO staging", "did you mean 'metrics'?", 6),
        ("WHEN champion.params[x] < 1 THEN PROMOTE TO staging", "only champion.metrics[...] is supported", 15),
        ("WHEN champion[mae] < 1 THEN PROMOTE TO staging", "expected '.' after champion", 14),
        ("WHEN metrics[mae] THEN PROMOTE TO staging", "expected a comparison operator", 19),
        ("WHEN metrics[mae] < THEN PROMOTE TO staging", "expected a number, a string, metrics[...]", 21),
        ("WHEN 1 < 2 < 3 THEN PROMOTE TO staging", "comparisons cannot be chained", 12),
        ("WHEN (metrics[mae] < 1 THEN PROMOTE TO staging", "expected ')' to close '(', found 'THEN'", 24),
        ("WHEN metrics[mae] < 1) THEN PROMOTE TO staging", "expected THEN after the condition, found ')'", 22),
        ("WHEN metrics[mae] < 1e999 THEN PROMOTE TO staging", "number literal 1e999 is out of the range of a double", 21),
        ("WHEN metrics[mae] < 1.2.3 THEN PROMOTE TO staging", "invalid number literal '1.2.'", 21),
        ("WHEN metrics[mae] < 5x THEN PROMOTE TO staging", "invalid number literal '5x'", 21),
        ("WHEN metrics[mae] < 1 AND THEN PROMOTE TO staging", "found 'THEN'", 27),
    ],
)
def test_syntax_errors_name_the_position_with_a_caret(text, fragment, column):
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    err = info.value
    assert fragment in str(err)
    assert f"(line 1, column {column})" in str(err)
    _, source_line, caret_line = str(err).split("\n")
    assert source_line == "    " + text
    assert caret_line == "    " + " " * (column - 1) + "^"
    assert err.position == column - 1 and err.text == text


def test_error_position_in_a_multi_line_rule():
    text = "WHEN metrics[mae] <= 5\n  AND metrics[cov] >= 0.88 0.9\nTHEN PROMOTE TO staging"
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    msg = str(info.value)
    assert "(line 2, column 28)" in msg
    assert msg.endswith("      AND metrics[cov] >= 0.88 0.9\n" + " " * 31 + "^")


def assert_points_at(text, fragment, column):
    """The rule ``WHEN <text> THEN PROMOTE TO staging`` is refused with ``fragment``, pointing at ``column``."""
    with pytest.raises(RuleError) as info:
        parse_rule(f"WHEN {text} THEN PROMOTE TO staging")
    assert fragment in str(info.value)
    assert f"(line 1, column {column})" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("metrics[a] AND 1 < 2", "expected a comparison operator (< <= > >= == !=), found 'AND'", 17),
        ("NOT metrics[a]", "expected a comparison operator (< <= > >= == !=), found 'THEN'", 21),
        ("1 < 2 AND metrics[a] OR 2 < 3", "expected a comparison operator (< <= > >= == !=), found 'OR'", 27),
        ("(1 < 2) + 3 > 1", "type error: '+' needs numbers, got condition 1 < 2", 14),
        ("(1 < 2) == (3 < 4)", "type error: cannot compare condition 1 < 2 with condition 3 < 4 using '=='", 14),
        ("-(1 < 2) > 0", "type error: unary '-' needs a number, got condition 1 < 2", 6),
        ("metrics[a] > 1 # note", "unexpected character '#'", 21),
        ("metrics[a] && 1 < 2", "'&&' is not an operator: use 'and'", 17),
    ],
)
def test_conditions_and_values_stay_apart(text, fragment, column):
    assert_points_at(text, fragment, column)


def test_rules_and_features_share_the_lexical_rules_and_the_caret():
    from pipelines.features import FeatureDefinitionError, parse_feature

    rule = "WHEN\tmetrics[mae] < 1.5x THEN PROMOTE TO staging"
    with pytest.raises(RuleError) as rule_error:
        parse_rule(rule)
    with pytest.raises(FeatureDefinitionError) as feature_error:
        parse_feature("f", "x\t+ 1.5x", {"x": "double"})
    for err in (rule_error.value, feature_error.value):
        assert "invalid number literal '1.5x'" in str(err)
        assert str(err).splitlines()[-2].count("\t") == 0  # tabs shown as spaces, so the caret lines up
    assert str(rule_error.value).endswith("column 21)\n    " + rule.replace("\t", " ") + "\n    " + " " * 20 + "^")
    assert parse_rule('WHEN tags[a] == "\\u00e9\\r" THEN PROMOTE TO staging').condition.right == Str("\u00e9\r")
    assert str(parse_rule("WHEN tags[a] == 'a\\rb' THEN PROMOTE TO staging")).startswith('WHEN tags[a] == "a\\rb"')


def test_deep_nesting_is_a_rule_error_not_a_crash():
    with pytest.raises(RuleError, match="nested too deeply"):
        parse_rule("WHEN " + "(" * 5000 + "1 > 0" + ")" * 5000 + " THEN PROMOTE TO staging")


def test_unknown_stage_lists_the_known_ones():
    with pytest.raises(RuleError) as info:
        parse_rule("WHEN metrics[mae] < 1 THEN PROMOTE TO prod")
    msg = str(info.value)
    assert "unknown stage 'prod'; did you mean 'production'?" in msg
    assert "known stages: exploration, training, evaluation, staging, production, archived" in msg
    assert "(line 1, column 39)" in msg
    with pytest.raises(RuleError, match="unknown stage 'qa'; known stages: exploration"):
        parse_rule("WHEN metrics[mae] < 1 THEN PROMOTE TO qa")


def test_unknown_metric_suggests_the_closest_name():
    known = {"mae", "rmse", "coverage_90"}
    with pytest.raises(RuleError) as info:
        parse_rule("WHEN metrics[mae] < 5 AND metrics[coverage90] > 0.8 THEN PROMOTE TO staging", known)
    msg = str(info.value)
    assert "unknown metric 'coverage90'; did you mean 'coverage_90'? (known metrics: coverage_90, mae, rmse)" in msg
    assert "(line 1, column 35)" in msg
    with pytest.raises(RuleError, match=r"unknown metric 'mea'; did you mean 'mae'"):
        parse_rule("WHEN metrics[mae] < champion.metrics[mea] THEN PROMOTE TO staging", known)
    with pytest.raises(RuleError, match=r"unknown metric 'latency' \(known metrics"):
        parse_rule("WHEN metrics[latency] < 5 THEN PROMOTE TO staging", known)
    # without known_metrics any name is accepted; params and tags are never checked against it
    parse_rule("WHEN metrics[latency] < 5 THEN PROMOTE TO staging")
    parse_rule("WHEN params[x] == 1 AND tags[y] == 'z' THEN PROMOTE TO staging", known)


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("tags[team] > 3", "type error: cannot compare string tags[team] with number 3 using '>'", 17),
        ('metrics[mae] == "low"', 'cannot compare number metrics[mae] with string "low"', 19),
        ('"a" != 1 + 2', 'cannot compare string "a" with number 1 + 2', 10),
        ('tags[team] < "z"', "strings can only be compared with == or !=, not '<'", 17),
        ('params[opt] >= "adam"', "strings can only be compared with == or !=, not '>='", 18),
        ("tags[team] + 1 > 2", "type error: '+' needs numbers, got string tags[team]", 17),
        ('metrics[mae] * "2" > 2', "type error: '*' needs numbers, got string \"2\"", 19),
        ("-tags[team] == 'x'", "type error: unary '-' needs a number, got string tags[team]", 6),
    ],
)
def test_type_errors(text, fragment, column):
    assert_points_at(text, fragment, column)


def test_params_are_either_type_statically():
    parse_rule("WHEN params[max_depth] <= 8 AND params[opt] == 'adam' AND params[a] < params[b] * 2 "
               "THEN PROMOTE TO staging")


def test_empty_and_non_string_rules():
    with pytest.raises(RuleError, match="empty rule"):
        parse_rule("   ")
    with pytest.raises(RuleError, match="a rule must be a string, got int"):
        parse_rule(3)  # type: ignore[arg-type]


def test_rule_error_is_a_value_error():
    assert issubclass(RuleError, ValueError)


# ------------------------------------------------------------------------------------------ no champion
def test_champion_clause_is_waived_without_a_champion():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 4.0, "coverage_90": 0.9}), None)
    assert d.promote and d.no_champion
    assert d.clauses[2].held and d.clauses[2].waived
    assert d.notes == ["metrics[mae] < champion.metrics[mae] * 0.98 is waived: no champion to compare against"]
    assert "no champion to compare against" in str(d)


def test_absolute_clauses_still_apply_without_a_champion():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 7.0, "coverage_90": 0.9}), None)
    assert not d.promote and d.no_champion
    assert d.failing_clauses == ["metrics[mae] <= 5 (7.0 <= 5) is false"]


def test_rule_without_champion_reference_does_not_report_no_champion():
    d = evaluate(parse_rule("WHEN metrics[mae] < 5 THEN PROMOTE TO staging"), ModelFacts(metrics={"mae": 1}), None)
    assert d.promote and not d.no_champion and d.notes == []


def test_champion_lacking_the_metric_fails_the_clause():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 4.0, "coverage_90": 0.9}),
                 ModelFacts(metrics={"rmse": 3.0}))
    assert not d.promote
    assert d.failing_clauses == [
        "metrics[mae] < champion.metrics[mae] * 0.98 (4.0 < ? * 0.98) is false: "
        "champion.metrics[mae] is missing from the champion"
    ]
    assert d.clauses[2].values == {"metrics[mae]": 4.0, "champion.metrics[mae]": None}


# -------------------------------------------------------------------------------- missing / bad values
def test_missing_metric_fails_the_clause_with_the_reason():
    d = evaluate(parse_rule(EXAMPLE), ModelFacts(metrics={"mae": 4.0}), ModelFacts(metrics={"mae": 5.0}))
    assert not d.promote
    assert d.failing_clauses == [
        "metrics[coverage_90] >= 0.88 (? >= 0.88) is false: metrics[coverage_90] is missing from the candidate"
    ]
    assert d.clauses[1].reason == "metrics[coverage_90] is missing from the candidate"
    assert d.clauses[1].values == {"metrics[coverage_90]": None}


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"mae": math.nan}, "metrics[mae] is NaN"),
        ({"mae": "4.0"}, "metrics[mae] is not a number ('4.0')"),
        ({"mae": None}, "metrics[mae] is not a number (None)"),
        ({}, "metrics[mae] is missing from the candidate"),
    ],
)
def test_bad_metric_values_fail_with_a_reason(metrics, reason):
    d = evaluate(parse_rule("WHEN metrics[mae] <= 5 THEN PROMOTE TO staging"), ModelFacts(metrics=metrics), None)
    assert not d.promote
    assert d.clauses[0].reason == reason


def test_infinite_metrics_compare_normally():
    assert not holds("metrics[mae] <= 5", ModelFacts(metrics={"mae": math.inf}))
    assert holds("metrics[mae] > 5", ModelFacts(metrics={"mae": math.inf}))
    d = evaluate(parse_rule("WHEN metrics[a] - metrics[a] == 0 THEN PROMOTE TO staging"),
                 ModelFacts(metrics={"a": math.inf}), None)
    assert not d.promote and d.clauses[0].reason == "metrics[a] - metrics[a] is NaN"


def test_division_by_zero_fails_the_clause():
    rule = parse_rule("WHEN metrics[mae] / champion.metrics[mae] < 0.98 AND metrics[mae] < 9 THEN PROMOTE TO staging")
    d = evaluate(rule, ModelFacts(metrics={"mae": 4.0}), ModelFacts(metrics={"mae": 0.0}))
    assert not d.promote
    assert d.failing_clauses == [
        "metrics[mae] / champion.metrics[mae] < 0.98 (4.0 / 0.0 < 0.98) is false: "
        "division by zero in metrics[mae] / champion.metrics[mae]"
    ]
    assert d.clauses[1].held
    assert not holds("1 / 0 == 1") and not holds("NOT 1 / 0 == 1")


def test_unknown_follows_three_valued_logic_inside_a_clause():
    facts = ModelFacts(metrics={"a": 1.0})
    assert not holds("NOT metrics[drift] > 0.1", facts)  # missing drift never passes a negated check
    assert holds("metrics[drift] < 0.1 OR metrics[a] > 0", facts)
    assert not holds("metrics[drift] < 0.1 OR metrics[a] < 0", facts)
    d = evaluate(parse_rule("WHEN (metrics[drift] < 0.1 AND metrics[a] < 0) OR metrics[a] > 5 THEN PROMOTE TO staging"),
                 facts, None)
    assert not d.promote and d.clauses[0].reason is None  # false AND unknown is plain false
    assert d.failing_clauses == [
        "metrics[drift] < 0.1 AND metrics[a] < 0 OR metrics[a] > 5 (? < 0.1 AND 1.0 < 0 OR 1.0 > 5) is false"
    ]


# ---------------------------------------------------------------------------------------- params, tags
@pytest.mark.parametrize(
    ("text", "params", "expected"),
    [
        ("params[max_depth] <= 8", {"max_depth": "6"}, True),
        ("params[max_depth] <= 8", {"max_depth": 6.0}, True),
        ("params[max_depth] * 2 == 12", {"max_depth": "6"}, True),
        ("params[max_depth] == '6'", {"max_depth": 6.0}, True),
        ("params[lr] == '0.1'", {"lr": 0.1}, True),
        ("params[opt] == 'adam'", {"opt": "adam"}, True),
        ("params[opt] != 'adam'", {"opt": "sgd"}, True),
        ("params[a] < params[b]", {"a": "9", "b": "10"}, True),  # numeric, not lexicographic
        ("params[a] == params[b]", {"a": "x", "b": "x"}, True),
        ("params[a] == params[b]", {"a": 2.0, "b": "2"}, True),
    ],
)
def test_params_coercion(text, params, expected):
    assert holds(text, ModelFacts(params=params)) is expected


@pytest.mark.parametrize(
    ("text", "params", "reason"),
    [
        ("params[opt] > 1", {"opt": "adam"}, 'params[opt] = "adam" is not a number'),
        ("params[opt] + 1 > 1", {"opt": "adam"}, 'params[opt] = "adam" is not a number'),
        ("params[a] < params[b]", {"a": "x", "b": "y"}, "cannot order strings with '<' in params[a] < params[b]"),
        ("params[opt] == 'adam'", {}, "params[opt] is missing from the candidate"),
    ],
)
def test_params_that_cannot_be_compared_fail_with_a_reason(text, params, reason):
    d = evaluate(parse_rule(f"WHEN {text} THEN PROMOTE TO staging"), ModelFacts(params=params), None)
    assert not d.promote and d.clauses[0].reason == reason


def test_tags():
    facts = ModelFacts(tags={"team": "eta", "approved": "yes"})
    assert holds("tags[team] == 'eta' AND tags[approved] != \"no\"", facts)
    assert not holds("tags[team] == 'ops'", facts)
    d = evaluate(parse_rule("WHEN tags[reviewer] == 'ana' THEN PROMOTE TO production"), facts, None)
    assert d.failing_clauses == [
        "tags[reviewer] == \"ana\" (? == \"ana\") is false: tags[reviewer] is missing from the candidate"
    ]


# ----------------------------------------------------------------------------------------------- loading
def test_load_rules_accepts_mappings_and_strings():
    data = {"rules": [
        {"name": "to_staging", "when": EXAMPLE, "description": "beats the champion"},
        "WHEN tags[approved] == 'yes' THEN PROMOTE TO production",
    ]}
    rules = load_rules(data, "rules.yaml", known_metrics={"mae", "coverage_90"})
    assert [r.name for r in rules] == ["to_staging", None]
    assert [r.target_stage for r in rules] == ["staging", "production"]
    assert load_rules({"rules": []}, "x") == [] and load_rules({"rules": None}, "x") == []
    assert load_rules(None, "x") == []


def test_the_shipped_rules_file_loads():
    path = REPO / "config/usecases/flights_eta/rules.yaml"
    rules = load_rules_file(path)
    assert [(r.name, r.target_stage) for r in rules] == [("evaluation-to-staging", "staging"),
                                                          ("staging-to-production", "production")]


def test_load_rules_file_reports_yaml_errors(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("rules: [\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"rules.yaml: invalid YAML"):
        load_rules_file(p)
    p.write_text("rules:\n  - name: fast\n    when: WHEN metrics[mae] < 1 THEN PROMOTE TO prod\n", encoding="utf-8")
    with pytest.raises(RuleError, match=rf"^{p}: rule #0 \('fast'\): unknown stage 'prod'"):
        load_rules_file(p)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["x"], "uc/rules.yaml: expected a mapping with a 'rules' list, got list"),
        ({"rule": []}, "uc/rules.yaml: unknown top-level key(s) rule; expected only 'rules'"),
        ({"rules": "WHEN"}, "uc/rules.yaml: 'rules' must be a list, got str"),
        ({"rules": [3]}, "uc/rules.yaml: rule #0: expected a rule string or a mapping, got int"),
        ({"rules": [{"name": "a"}]}, "uc/rules.yaml: rule #0 ('a'): missing 'when' (the rule text)"),
        ({"rules": [{"name": "a", "when": 5}]}, "uc/rules.yaml: rule #0 ('a'): 'when' must be a string, got int"),
        ({"rules": [{"name": "", "when": EXAMPLE}]}, "uc/rules.yaml: rule #0: 'name' must be a non-empty string"),
        ({"rules": [{"name": "  ", "when": EXAMPLE}]}, "uc/rules.yaml: rule #0: 'name' must be a non-empty string"),
        ({"rules": [{"name": "a", "when": EXAMPLE, "description": 3}]},
         "uc/rules.yaml: rule #0 ('a'): 'description' must be a string, got int"),
        ({"rules": [{"name": "a", "when": EXAMPLE, "then": "x", "else": "y"}]},
         "uc/rules.yaml: rule #0 ('a'): unknown key(s) else, then; expected name, when, description"),
        ({"rules": [], "rule": [], "version": 1}, "uc/rules.yaml: unknown top-level key(s) rule, version; expected only"),
        ({"rules": [{"name": "a", "when": EXAMPLE, "then": "x"}]},
         "uc/rules.yaml: rule #0 ('a'): unknown key(s) then; expected name, when, description"),
        ({"rules": [{"name": "a", "when": EXAMPLE}, {"name": "a", "when": EXAMPLE}]},
         "uc/rules.yaml: rule #1 ('a'): duplicate rule name 'a' (also rule #0)"),
        ({"rules": [EXAMPLE, "WHEN metrics[mae] < THEN PROMOTE TO staging"]},
         "uc/rules.yaml: rule #1: expected a number, a string"),
        ({"rules": [{"name": "gate", "when": "WHEN metrics[rmse] < 1 THEN PROMOTE TO staging"}]},
         "uc/rules.yaml: rule #0 ('gate'): unknown metric 'rmse'"),
    ],
)
def test_load_rules_errors_name_the_file_and_the_rule(data, message):
    with pytest.raises(RuleError) as info:
        load_rules(data, "uc/rules.yaml", known_metrics={"mae", "coverage_90"})
    assert str(info.value).startswith(message)


def test_load_rules_parse_errors_keep_the_caret():
    with pytest.raises(RuleError) as info:
        load_rules({"rules": [{"name": "s", "when": "WHEN metrics[mae] < 1 < 2 THEN PROMOTE TO staging"}]}, "r.yaml")
    err = info.value
    assert err.source == "r.yaml" and err.rule == "rule #0 ('s')" and err.position == 22
    assert str(err).splitlines()[-1] == "    " + " " * 22 + "^"


# ------------------------------------------------------------------------------------------- transitions
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("exploration", "training"), ("training", "evaluation"), ("evaluation", "staging"),
        ("staging", "production"), ("production", "staging"),
        *[(s, "archived") for s in STAGES if s != "archived"],
    ],
)
def test_allowed_transitions(src, dst):
    check_transition(src, dst)
    assert dst in allowed_targets(src)


@pytest.mark.parametrize(
    ("src", "dst", "fragment"),
    [
        ("production", "training", "transition production -> training is not allowed; from production: staging, archived"),
        ("archived", "staging", "from archived: none (archived is terminal)"),
        ("archived", "exploration", "not allowed"),
        ("training", "staging", "from training: evaluation, archived"),
        ("evaluation", "production", "not allowed"),
        ("staging", "evaluation", "not allowed"),
        ("staging", "staging", "the model is already in staging"),
        ("staging", "prod", "unknown target stage 'prod'; known stages: exploration, training"),
        ("qa", "staging", "unknown source stage 'qa'"),
    ],
)
def test_forbidden_transitions(src, dst, fragment):
    with pytest.raises(RuleError) as info:
        check_transition(src, dst)
    assert fragment in str(info.value)


def test_transition_table_is_complete_and_consistent():
    assert set(ALLOWED_TRANSITIONS) == set(STAGES)
    for src, targets in ALLOWED_TRANSITIONS.items():
        assert targets <= set(STAGES) and src not in targets
    assert ALLOWED_TRANSITIONS["archived"] == frozenset()
    with pytest.raises(RuleError):
        allowed_targets("nope")


# -------------------------------------------------------------------------------------- printer property
_names = st.sampled_from(["mae", "rmse", "coverage_90", "val.mae", "p-50", "a:b/c"])
_numbers = st.one_of(
    st.integers(min_value=0, max_value=10**20).map(Num),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(Num),
)
_num_refs = st.one_of(
    _names.map(lambda n: Ref("metrics", n)),
    _names.map(lambda n: Ref("metrics", n, "champion")),
    _names.map(lambda n: Ref("params", n)),
)
_arith = st.recursive(
    st.one_of(_numbers, _num_refs),
    lambda inner: st.one_of(
        inner.map(Neg),
        st.builds(BinOp, st.sampled_from(["+", "-", "*", "/"]), inner, inner),
    ),
    max_leaves=8,
)
_string_side = st.one_of(st.text(max_size=8).map(Str), _names.map(lambda n: Ref("tags", n)))
_comparison = st.one_of(
    st.builds(Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _arith, _arith),
    st.builds(Compare, st.sampled_from(["==", "!="]), _string_side, _string_side),
)
_condition = st.recursive(
    _comparison,
    lambda inner: st.one_of(inner.map(Not), st.builds(And, inner, inner), st.builds(Or, inner, inner)),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=_condition, stage=st.sampled_from(STAGES))
def test_printer_round_trips_to_the_same_ast(condition, stage):
    rule = Rule(text="", target_stage=stage, condition=condition)
    reparsed = parse_rule(rule.canonical)
    assert reparsed.condition == condition
    assert reparsed.target_stage == stage
    assert reparsed.canonical == rule.canonical


@settings(max_examples=200, deadline=None)
@given(
    condition=_condition,
    metrics=st.dictionaries(_names, st.floats(allow_nan=True, allow_infinity=True), max_size=6),
    champion=st.one_of(st.none(), st.dictionaries(_names, st.floats(), max_size=6).map(lambda m: ModelFacts(metrics=m))),
    params=st.dictionaries(_names, st.one_of(st.text(max_size=4), st.floats()), max_size=6),
)
def test_evaluation_never_raises(condition, metrics, champion, params):
    rule = Rule(text="", target_stage="staging", condition=condition)
    d = evaluate(rule, ModelFacts(metrics=metrics, params=params), champion)
    assert d.promote == all(c.held for c in d.clauses)
    assert len(d.clauses) == len(rule.clauses)
    for c in d.clauses:
        assert c.held or c.reason is not None or "is false" in str(c)
