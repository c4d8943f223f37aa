"""Data drift between a reference frame and a current frame, as an Evidently 0.7 HTML report plus a summary.

:func:`drift_report` samples both frames down to ``max_rows`` (seeded, without replacement), builds an
Evidently ``Dataset`` for each with an explicit ``DataDefinition`` (the numeric and categorical columns named
by the caller; every other column list empty, so Evidently infers nothing), runs ``DataDriftPreset`` and
writes the HTML atomically (a temporary file in the target folder, then a rename: a crash never leaves half a
report at ``path``). Per-column results are read from ``Snapshot.dict()``:

* ``metrics[i]`` with ``config.type == "evidently:metric_v2:ValueDrift"`` gives ``config.column``,
  ``config.method``, ``config.threshold`` and ``value`` (the drift score);
* ``tests[j]`` with ``bound_test.type == "evidently:bound_test:ValueDriftBoundTest"`` gives the verdict:
  ``status == "FAIL"`` means drift, matched to the metric by ``metric_config.metric_id == metrics[i].id``
  (the report runs with ``include_tests=True`` for that).

Evidently's defaults pick the method per column: above 1,000 reference rows the normed Wasserstein distance
for numeric columns (Jensen-Shannon when a numeric column has 5 distinct values or fewer) and Jensen-Shannon
for categorical ones; at 1,000 rows or fewer, K-S for numeric columns and chi-square (Z-test for two distinct
values) for categorical ones and for numeric ones with 5 distinct values or fewer. ``method`` forces one method (``"wasserstein"``, ``"psi"``, ``"ks"``, ``"jensenshannon"``,
``"chisquare"``, ...; Evidently's registered stattest names) on every column whose type it supports; columns of
the other type keep Evidently's default. Method names are reported as those registered names
(``"wasserstein"``), not Evidently's display names (``"Wasserstein distance (normed)"``).

Skipped, never an error: a column absent from either frame, a column with no usable value in either sampled
frame (all null, or for numeric columns no finite value: Evidently drops NaN and infinities and fails on what
is left empty), and a numeric column whose dtype is not numeric. Numeric columns are passed as float64 (bools
and nullable integers included), categorical ones as strings (nulls kept as nulls) so ``1`` and ``"1"`` are
the same category in both frames.

The ``title`` is the Evidently run's name and ``metadata["title"]`` (``Report.run(name=..., metadata=...)``).
Evidently 0.7's standalone HTML renders neither, so it is also written as the page's ``<title>``.

Evidently and pandas are imported inside the functions: importing this module stays cheap (DAG parsing).
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ColumnDrift", "DriftReport", "drift_report", "summary_json"]

VALUE_DRIFT_METRIC = "evidently:metric_v2:ValueDrift"
VALUE_DRIFT_TEST = "evidently:bound_test:ValueDriftBoundTest"
# Evidently stattests whose score is a p-value (drift when it is *below* the threshold); every other
# registered one is a distance or divergence (drift when at or above the threshold).
P_VALUE_METHODS = frozenset({"anderson", "chisquare", "cramer_von_mises", "empirical_mmd", "es", "fisher_exact",
                             "g_test", "ks", "mannw", "t_test", "TVD", "z"})


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift: Evidently's method (registered name), score, threshold and verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool

    @property
    def severity(self) -> float:
        """Score relative to threshold, larger is more drifted (inverted for p-value methods)."""
        if self.method in P_VALUE_METHODS:
            return self.threshold / self.score if self.score > 0 else math.inf
        return self.score / self.threshold if self.threshold > 0 else math.inf


@dataclass(frozen=True)
class DriftReport:
    """The HTML report written and the per-column drift results read from Evidently's snapshot."""

    path: Path                  # the HTML file written
    columns: list[ColumnDrift]  # one per column evaluated, most drifted first (by score relative to threshold)
    drifted_share: float        # share of evaluated columns that drifted
    seconds: float              # wall time of Evidently's run + save (not its import)
    rows_reference: int         # rows given to Evidently, after sampling to max_rows
    rows_current: int
    skipped: list[str] = field(default_factory=list)  # "column: reason", for columns not evaluated

    @property
    def drifted(self) -> list[str]:
        """Names of the drifted columns, most drifted first."""
        return [c.column for c in self.columns if c.drifted]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, *, numeric: list[str], categorical: list[str],
                 path: Path, title: str, max_rows: int = 5000, seed: int = 7,
                 method: str | None = None) -> DriftReport:
    """Write an Evidently data-drift HTML report to ``path`` and return the per-column results.

    Raises ``ValueError`` when ``current`` or ``reference`` has no rows, when a column is named both numeric and
    categorical, when ``max_rows`` is below 1, and when ``method`` is not an Evidently stattest or supports
    neither column type. See the module docstring for skipping, sampling and method selection.
    """
    if len(current) == 0:
        raise ValueError(f"drift_report({title!r}): no current rows to compare with the reference")
    if len(reference) == 0:
        raise ValueError(f"drift_report({title!r}): no reference rows to compare the current rows with")
    if max_rows < 1:
        raise ValueError(f"drift_report: max_rows must be at least 1, got {max_rows}")
    numeric, categorical = list(dict.fromkeys(numeric)), list(dict.fromkeys(categorical))
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise ValueError(f"drift_report: columns named both numeric and categorical: {both}")
    num_method, cat_method = _forced_methods(method)

    ref = _sample(reference, max_rows, seed)
    cur = _sample(current, max_rows, seed)
    skipped: list[str] = []
    num_cols = [c for c in numeric if _usable(c, ref, cur, numeric=True, skipped=skipped)]
    cat_cols = [c for c in categorical if _usable(c, ref, cur, numeric=False, skipped=skipped)]
    ref_frame = _typed(ref, num_cols, cat_cols)
    cur_frame = _typed(cur, num_cols, cat_cols)
    path = Path(path)
    import evidently.presets  # noqa: F401  (before the clock starts: the first import alone takes ~10 s)

    start = time.perf_counter()
    if num_cols or cat_cols:
        snapshot = _run(ref_frame, cur_frame, num_cols, cat_cols, title, num_method, cat_method)
        page = snapshot.get_html_str(as_iframe=False)  # what Snapshot.save_html writes
        columns = _column_results(snapshot.dict())
    else:  # Evidently fails on a dataset with no columns: say so in a page of our own
        page = _empty_page(title, skipped)
        columns = []
    _write_atomic(path, _with_title(page, title))
    seconds = time.perf_counter() - start

    columns.sort(key=lambda c: (-c.severity, c.column))
    share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftReport(path=path, columns=columns, drifted_share=share, seconds=seconds,
                       rows_reference=len(ref), rows_current=len(cur), skipped=skipped)


def summary_json(report: DriftReport) -> dict[str, Any]:
    """A small JSON-able summary of ``report`` for logs."""
    return {
        "path": str(report.path),
        "rows_reference": report.rows_reference,
        "rows_current": report.rows_current,
        "seconds": round(report.seconds, 3),
        "evaluated": len(report.columns),
        "drifted_share": round(report.drifted_share, 4),
        "drifted": report.drifted,
        "columns": [{"column": c.column, "method": c.method, "score": _json_float(c.score),
                     "threshold": c.threshold, "drifted": c.drifted} for c in report.columns],
        "skipped": list(report.skipped),
    }


def _forced_methods(method: str | None) -> tuple[str | None, str | None]:
    """The method forced on numeric and on categorical columns (None: Evidently's default)."""
    if method is None:
        return None, None
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    def supports(column_type: ColumnType) -> bool:
        try:
            get_registered_stattest(method, column_type)
        except ValueError as exc:  # StatTestNotFoundError / StatTestInvalidFeatureTypeError
            if "No stattest found" in str(exc):
                raise ValueError(f"drift_report: unknown drift method {method!r} ({exc})") from exc
            return False
        return True

    num, cat = supports(ColumnType.Numerical), supports(ColumnType.Categorical)
    if not (num or cat):
        raise ValueError(f"drift_report: method {method!r} applies to neither numeric nor categorical columns")
    return (method if num else None), (method if cat else None)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, replace=False, random_state=seed)


def _usable(column: str, ref: pd.DataFrame, cur: pd.DataFrame, *, numeric: bool, skipped: list[str]) -> bool:
    """Whether ``column`` can be evaluated; if not, append ``"column: reason"`` to ``skipped``."""
    import numpy as np
    import pandas as pd

    reasons = []
    for side, frame in (("reference", ref), ("current", cur)):
        if column not in frame.columns:
            reasons.append(f"missing from {side}")
            continue
        values = frame[column]
        if numeric and not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            reasons.append(f"not numeric in {side} (dtype {values.dtype})")
        elif numeric and not np.isfinite(values.astype("float64").to_numpy()).any():
            reasons.append(f"no finite value in {side}" if values.notna().any() else f"entirely null in {side}")
        elif not numeric and not values.notna().any():
            reasons.append(f"entirely null in {side}")
    if reasons:
        skipped.append(f"{column}: {', '.join(reasons)}")
    return not reasons


def _typed(frame: pd.DataFrame, num_cols: list[str], cat_cols: list[str]) -> pd.DataFrame:
    """Only the evaluated columns: numeric as float64, categorical as strings with nulls kept."""
    import pandas as pd

    data: dict[str, Any] = {c: frame[c].astype("float64").to_numpy() for c in num_cols}
    for c in cat_cols:
        values = frame[c]
        data[c] = values.astype(str).where(values.notna(), None).astype(object).to_numpy()
    return pd.DataFrame(data, columns=num_cols + cat_cols)


def _run(ref: pd.DataFrame, cur: pd.DataFrame, num_cols: list[str], cat_cols: list[str], title: str,
         num_method: str | None, cat_method: str | None) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=num_cols, categorical_columns=cat_cols, text_columns=[],
                                datetime_columns=[], unknown_columns=[], list_columns=[])
    preset = DataDriftPreset(columns=num_cols + cat_cols, num_method=num_method, cat_method=cat_method)
    report = Report([preset], include_tests=True)
    return report.run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                      reference_data=Dataset.from_pandas(ref, data_definition=definition),
                      name=title, metadata={"title": title})


def _column_results(snapshot: dict[str, Any]) -> list[ColumnDrift]:
    """Per-column results from ``Snapshot.dict()`` (paths in the module docstring)."""
    verdicts: dict[str, bool] = {}
    for test in snapshot.get("tests", []):
        if (test.get("bound_test") or {}).get("type") == VALUE_DRIFT_TEST:
            status = test.get("status")
            verdicts[test["metric_config"]["metric_id"]] = str(getattr(status, "value", status)) == "FAIL"
    names = _method_names()
    results = []
    for metric in snapshot.get("metrics", []):
        config = metric.get("config") or {}
        if config.get("type") != VALUE_DRIFT_METRIC:
            continue
        label = str(config.get("method"))
        method = names.get(label, label)
        score, threshold = float(metric["value"]), float(config["threshold"])
        drifted = verdicts.get(metric.get("id", ""))
        if drifted is None:  # no test result: the stattest's own rule
            drifted = score < threshold if method in P_VALUE_METHODS else score >= threshold
        results.append(ColumnDrift(column=str(config["column"]), method=method, score=score,
                                   threshold=threshold, drifted=drifted))
    return results


def _method_names() -> dict[str, str]:
    """Evidently's stattest display names (as auto-resolved methods are reported) to their registered names."""
    from evidently.legacy.calculations import stattests

    return {test.display_name: test.name for test in vars(stattests).values()
            if isinstance(test, stattests.StatTest) and test.name}


def _with_title(page: str, title: str) -> str:
    head = page.find("<head>")
    if head < 0:
        return page
    cut = head + len("<head>")
    return f"{page[:cut]}\n<title>{html.escape(title)}</title>{page[cut:]}"


def _empty_page(title: str, skipped: list[str]) -> str:
    items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped) or "<li>no columns were named</li>"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="UTF-8">\n</head>\n<body>\n'
            f"<h1>{html.escape(title)}</h1>\n<p>No column could be evaluated for drift:</p>\n<ul>{items}</ul>\n"
            "</body>\n</html>\n")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
