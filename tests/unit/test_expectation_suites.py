"""Expectation suites kept as data (``expectations/*/suite.yaml``, ``pipelines/quality/expectations.py``).

Static checks, no Spark and no Great Expectations import: every shipped suite loads, is used by the table of
the same name in a shipped use case's ``sources.yaml``, names only columns that table outputs, and references
(``$ref: table.column``) only columns of tables validated in the same run. Malformed suites fail with the
path; the text report of a failure names what failed and how.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.quality.expectations import (
    EXPECTATIONS_DIR,
    ExpectationOutcome,
    SuiteError,
    ValidationFailed,
    ValidationReport,
    _resolve,
    load_suite,
    references,
)
from pipelines.usecases import load_usecase

REPO = Path(__file__).resolve().parents[2]
# Suites that guard a job's output rather than an ingested table (their kwargs take `{$param: ...}` values the
# job fills in; tests/unit/test_batch_partitions.py checks the predictions suite, the feedback tests the others).
OUTPUT_SUITES = ["feedback", "online_metrics", "outcomes", "predictions", "served"]
SUITES = sorted(p.parent.name for p in (REPO / "expectations").glob("*/suite.yaml")
                if p.parent.name not in OUTPUT_SUITES)
USECASES = REPO / "config" / "usecases"


@pytest.fixture(scope="module")
def tables():
    """Every shipped use case's lake tables (a table name is one lake table whichever use case declares it)."""
    out = {}
    for folder in sorted(p.parent for p in USECASES.glob("*/usecase.yaml")):
        out.update(load_usecase(folder).tables)
    return out


def column_kwargs(kwargs: dict[str, Any]) -> list[str]:
    """Column names in an expectation's kwargs: `column`, `column_A`/`column_B`, `column_list`, ..."""
    names: list[str] = []
    for key, value in kwargs.items():
        if key == "column" or key.startswith("column_"):
            names.extend([value] if isinstance(value, str) else list(value))
    return names


def test_expectations_dir_is_the_repo_folder():
    assert EXPECTATIONS_DIR == REPO / "expectations"
    assert SUITES == ["airlines", "airports", "flights", "planes", "wagepan", "weather"]
    # No stray folders without a suite.
    assert sorted(p.name for p in EXPECTATIONS_DIR.iterdir() if p.is_dir()) == sorted(SUITES + OUTPUT_SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_every_suite_loads(name):
    suite = load_suite(name)
    assert suite["path"] == str(REPO / "expectations" / name / "suite.yaml")
    assert suite["expectations"]
    for exp in suite["expectations"]:
        assert exp["type"].startswith("expect_")
        assert isinstance(exp.get("kwargs", {}), dict)


def test_every_table_is_guarded_by_the_suite_of_its_name_and_every_suite_is_used(tables):
    assert {name: t.expectations for name, t in tables.items()} == {name: name for name in tables}
    assert sorted(t.expectations for t in tables.values()) == SUITES


@pytest.mark.parametrize("name", SUITES)
def test_column_kwargs_name_columns_of_the_table(name, tables):
    table = next(t for t in tables.values() if t.expectations == name)
    columns = set(table.output_columns)
    used = [(exp["type"], col) for exp in load_suite(name)["expectations"]
            for col in column_kwargs(exp.get("kwargs") or {})]
    assert used, f"suite {name} checks no column at all"
    unknown = [(t, c) for t, c in used if c not in columns]
    assert unknown == [], f"suite {name} names columns its table does not output: {unknown}"


@pytest.mark.parametrize("name", SUITES)
def test_refs_name_output_columns_of_validated_tables(name, tables):
    for ref in references(load_suite(name)):
        table, sep, column = ref.partition(".")
        assert sep and table and column, ref
        assert table in tables, f"{name}: $ref {ref} names no table of a shipped use case"
        assert column in tables[table].output_columns, f"{name}: $ref {ref} names no column of {table}"
        # validate_frames only resolves references to tables that are validated in the same run.
        assert tables[table].expectations, f"{name}: $ref {ref} names a table without a suite"


def test_the_referential_checks_are_there():
    assert references(load_suite("flights")) == {"airports.faa", "airlines.carrier"}
    assert references(load_suite("weather")) == {"airports.faa"}
    assert references(load_suite("airlines")) == set()


def test_column_kwargs_helper_sees_every_form():
    assert column_kwargs({"column": "a", "value_set": [1]}) == ["a"]
    assert column_kwargs({"column_list": ["a", "b"]}) == ["a", "b"]
    assert column_kwargs({"column_A": "a", "column_B": "b", "min_value": 1}) == ["a", "b"]


# ---------------------------------------------------------------- malformed suites


def write_suite(root: Path, name: str, content: Any) -> Path:
    path = root / name / "suite.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"expectations": [{"kwargs": {"column": "a"}}]}, r"expectations\[0\] needs a 'type'"),
        ({"expectations": [{"type": "expect_table_row_count_to_be_between"}, {"type": "column_not_null"}]},
         r"expectations\[1\] needs a 'type'"),
        ({"expectations": ["expect_column_values_to_not_be_null"]}, r"expectations\[0\] needs a 'type'"),
        ({"expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"},
                            "kwarg": {"mostly": 0.9}}]}, r"expectations\[0\]: unknown key\(s\) \['kwarg'\]"),
        ({"expectations": []}, "non-empty 'expectations' list"),
        ({"expectations": None}, "non-empty 'expectations' list"),
        ({"expectation": [{"type": "expect_table_row_count_to_be_between"}]}, "non-empty 'expectations' list"),
        ("- type: expect_table_row_count_to_be_between\n", "non-empty 'expectations' list"),
        ("", "non-empty 'expectations' list"),
        ("expectations: [{type: expect_x\n", "not valid YAML"),
    ],
)
def test_malformed_suites_raise_with_the_path(tmp_path, content, reason):
    path = write_suite(tmp_path, "bad", content)
    with pytest.raises(SuiteError, match=reason) as info:
        load_suite("bad", tmp_path)
    assert str(path) in str(info.value)


def test_missing_suite_names_it_and_the_path(tmp_path):
    with pytest.raises(SuiteError) as info:
        load_suite("nope", tmp_path)
    assert "'nope'" in str(info.value) and str(tmp_path / "nope" / "suite.yaml") in str(info.value)


def test_meta_and_missing_kwargs_are_allowed(tmp_path):
    write_suite(tmp_path, "ok", {"expectations": [
        {"type": "expect_table_row_count_to_be_between", "meta": {"notes": "x"}}]})
    suite = load_suite("ok", tmp_path)
    assert references(suite) == set()
    assert _resolve(suite, {}) == [{"type": "expect_table_row_count_to_be_between", "kwargs": {},
                                    "meta": {"notes": "x"}}]


def test_references_are_resolved_to_values(tmp_path):
    write_suite(tmp_path, "s", {"expectations": [
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "origin", "value_set": {"$ref": "airports.faa"}, "mostly": 0.9}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "origin"}},
    ]})
    suite = load_suite("s", tmp_path)
    assert references(suite) == {"airports.faa"}
    resolved = _resolve(suite, {"airports.faa": ["EWR", "JFK", "LGA"]})
    assert resolved[0]["kwargs"] == {"column": "origin", "value_set": ["EWR", "JFK", "LGA"], "mostly": 0.9}
    assert resolved[1] == {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "origin"},
                           "meta": {}}
    # The loaded suite itself is not modified.
    assert suite["expectations"][0]["kwargs"]["value_set"] == {"$ref": "airports.faa"}
    with pytest.raises(SuiteError, match=r"reference airports.faa is not available") as info:
        _resolve(suite, {})
    assert str(tmp_path / "s" / "suite.yaml") in str(info.value)


# ---------------------------------------------------------------- the readable report


def failed_in_set() -> ExpectationOutcome:
    return ExpectationOutcome(
        dataset="flights", expectation="expect_column_values_to_be_in_set",
        kwargs={"column": "origin", "value_set": [f"A{i:02d}" for i in range(12)], "mostly": 0.97,
                "batch_id": "flights-all"},
        success=False, unexpected_count=3, unexpected_percent=0.75,
        sample=["XXX", "YYY", "ZZZ", "QQQ", "WWW", "VVV", "UUU"],
    )


def test_report_of_a_failure_names_column_expectation_count_and_sample():
    ok = ExpectationOutcome(dataset="airports", expectation="expect_column_values_to_not_be_null",
                            kwargs={"column": "faa"}, success=True, unexpected_count=0, unexpected_percent=0.0)
    report = ValidationReport(run_id="run-7", outcomes=[ok, failed_in_set()])
    assert not report.success and report.failures == [report.outcomes[1]]
    text = report.to_text()
    head, *rest = text.splitlines()
    assert head == "data validation FAILED for run run-7: 1/2 expectations met on airports, flights"
    assert len(rest) == 1  # only failures are listed
    line = rest[0]
    assert "FAILED flights.origin: expect_column_values_to_be_in_set(" in line
    assert "3 unexpected (0.750%)" in line
    assert "e.g. ['XXX', 'YYY', 'ZZZ', 'QQQ', 'WWW']" in line and "VVV" not in line  # first five only
    assert "value_set=[12 values]" in line and "mostly=0.97" in line
    assert "batch_id" not in line and "column=" not in line


def test_report_of_a_table_level_failure_shows_the_observed_value():
    outcome = ExpectationOutcome(dataset="airlines", expectation="expect_table_row_count_to_be_between",
                                 kwargs={"min_value": 1}, success=False, observed_value=0)
    text = ValidationReport("r", [outcome]).to_text()
    assert "FAILED airlines: expect_table_row_count_to_be_between(min_value=1): observed 0" in text
    assert "e.g." not in text


def test_passing_report_and_validation_failed(tmp_path):
    ok = ExpectationOutcome(dataset="planes", expectation="expect_column_values_to_be_unique",
                            kwargs={"column": "tailnum"}, success=True)
    assert ValidationReport("r", [ok]).to_text() == "data validation PASSED for run r: 1/1 expectations met on planes"

    report = ValidationReport("r2", [ok, failed_in_set()])
    err = ValidationFailed(report)
    assert str(err) == report.to_text() and err.report is report

    txt = report.save(tmp_path / "reports")
    assert txt.read_text() == report.to_text() + "\n"
    saved = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert saved["run_id"] == "r2" and saved["success"] is False
    assert [o["success"] for o in saved["outcomes"]] == [True, False]
    assert saved["outcomes"][1]["unexpected_count"] == 3
