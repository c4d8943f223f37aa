"""The Evidently drift report on small synthetic frames, with real Evidently (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring.evidently_report import DriftReport, drift_report, summary_json

ROWS = 2_000
NUMERIC = ["shifted_num", "stable_num", "null_in_current", "missing_in_current"]
CATEGORICAL = ["shifted_cat", "stable_cat"]


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({
        "shifted_num": rng.normal(10.0, 3.0, ROWS),
        "stable_num": rng.normal(0.0, 1.0, ROWS),
        "shifted_cat": rng.choice(["a", "b", "c"], ROWS, p=[0.7, 0.2, 0.1]),
        "stable_cat": rng.choice(["x", "y"], ROWS, p=[0.5, 0.5]),
        "null_in_current": rng.normal(0.0, 1.0, ROWS),
        "missing_in_current": rng.normal(0.0, 1.0, ROWS),
    })
    current = pd.DataFrame({
        "shifted_num": rng.normal(10.0 + 2 * 3.0, 3.0, ROWS),  # shifted by 2 std
        "stable_num": rng.normal(0.0, 1.0, ROWS),
        "shifted_cat": rng.choice(["a", "b", "c"], ROWS, p=[0.1, 0.2, 0.7]),
        "stable_cat": rng.choice(["x", "y"], ROWS, p=[0.5, 0.5]),
        "null_in_current": np.full(ROWS, np.nan),
    })
    return reference, current


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> DriftReport:
    reference, current = frames()
    path = tmp_path_factory.mktemp("drift") / "nested" / "drift.html"
    return drift_report(reference, current, numeric=NUMERIC, categorical=CATEGORICAL, path=path,
                        title="unit drift check", max_rows=1_500)


def test_shifted_columns_drift_and_stable_ones_do_not(report: DriftReport) -> None:
    by_name = {c.column: c for c in report.columns}
    assert set(by_name) == {"shifted_num", "stable_num", "shifted_cat", "stable_cat"}
    assert by_name["shifted_num"].drifted and by_name["shifted_cat"].drifted
    assert not by_name["stable_num"].drifted and not by_name["stable_cat"].drifted
    assert report.drifted_share == pytest.approx(0.5)
    assert {c.column for c in report.columns[:2]} == {"shifted_num", "shifted_cat"}  # most drifted first
    # Above 1,000 reference rows Evidently's defaults: normed Wasserstein (numeric), Jensen-Shannon (categorical).
    assert by_name["shifted_num"].method == "wasserstein"
    assert by_name["shifted_cat"].method == "jensenshannon"
    assert all(c.threshold == pytest.approx(0.1) for c in report.columns)


def test_sampled_and_skipped(report: DriftReport) -> None:
    assert (report.rows_reference, report.rows_current) == (1_500, 1_500)
    assert report.skipped == ["null_in_current: entirely null in current",
                              "missing_in_current: missing from current"]


def test_html_written_with_columns_and_title(report: DriftReport) -> None:
    assert report.path.is_file()
    page = report.path.read_text(encoding="utf-8")
    for column in ("shifted_num", "stable_num", "shifted_cat", "stable_cat"):
        assert column in page
    assert "<title>unit drift check</title>" in page
    assert [p.name for p in report.path.parent.iterdir()] == ["drift.html"]  # no temp file left behind


def test_summary_json(report: DriftReport) -> None:
    summary = summary_json(report)
    json.dumps(summary)
    assert set(summary["drifted"]) == {"shifted_num", "shifted_cat"}
    assert summary["evaluated"] == 4 and len(summary["skipped"]) == 2


def test_forced_method_applies_where_supported(tmp_path: Path) -> None:
    reference, current = frames()
    forced = drift_report(reference, current, numeric=["shifted_num"], categorical=["shifted_cat"],
                          path=tmp_path / "ks.html", title="ks", max_rows=500, method="ks")
    methods = {c.column: c.method for c in forced.columns}
    assert methods["shifted_num"] == "ks"  # K-S is numeric only: the categorical column keeps the default
    assert all(c.drifted for c in forced.columns)
    with pytest.raises(ValueError, match="unknown drift method"):
        drift_report(reference, current, numeric=["shifted_num"], categorical=[], path=tmp_path / "x.html",
                     title="x", method="no_such_test")


def test_no_evaluable_column_still_writes_a_page(tmp_path: Path) -> None:
    reference, current = frames()
    empty = drift_report(reference, current, numeric=["missing_in_current"], categorical=["not_anywhere"],
                         path=tmp_path / "empty.html", title="nothing", max_rows=100)
    assert empty.columns == [] and empty.drifted_share == 0.0 and len(empty.skipped) == 2
    assert "not_anywhere" in empty.path.read_text(encoding="utf-8")


def test_empty_current_raises(tmp_path: Path) -> None:
    reference, current = frames()
    with pytest.raises(ValueError, match="no current rows"):
        drift_report(reference, current.iloc[0:0], numeric=NUMERIC, categorical=CATEGORICAL,
                     path=tmp_path / "r.html", title="empty")
    assert not (tmp_path / "r.html").exists()
