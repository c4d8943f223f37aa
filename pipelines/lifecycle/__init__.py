"""Model lifecycle (Gallery-style): promotion rules and the stage transition table.

The rule language, its evaluation semantics and the transitions are documented in
:mod:`pipelines.lifecycle.rules`.
"""

from pipelines.lifecycle.rules import (
    ALLOWED_TRANSITIONS,
    STAGES,
    ClauseResult,
    Decision,
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

__all__ = [
    "ALLOWED_TRANSITIONS",
    "STAGES",
    "ClauseResult",
    "Decision",
    "ModelFacts",
    "Rule",
    "RuleError",
    "allowed_targets",
    "check_transition",
    "evaluate",
    "load_rules",
    "load_rules_file",
    "parse_rule",
]
