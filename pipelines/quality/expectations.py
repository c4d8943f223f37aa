"""Great Expectations suites kept as data (``expectations/<suite>/suite.yaml``) and run on Spark frames.

A suite file lists expectations by their GX type and kwargs. A kwarg may reference another dataset's values
with ``{$ref: <table>.<column>}`` (e.g. ``flights.origin`` in ``airports.faa``); Atelier resolves it from the
data validated in the same run before GX sees the suite; a job-output suite's ``{$param: name}`` kwargs are
filled from the job's values (:func:`suite_with_params`). Both are resolved here, in memory, rather than
with GX's own suite parameters (``{"$PARAMETER": ...}``): GX accepts those only in value kwargs
(``value_set``, ``value``, bounds), while our suites also parametrize column names (``column``,
``column_list``: strict strings in GX) and expand ``column_pairs`` into several expectations.

Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.config import REPO_ROOT

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

EXPECTATIONS_DIR = REPO_ROOT / "expectations"


class SuiteError(ValueError):
    """A suite file is malformed or references something unknown."""


class ValidationFailed(RuntimeError):
    """Data broke its expectations; the message is the readable report."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.to_text())
        self.report = report


@dataclass
class ExpectationOutcome:
    dataset: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[Any] = field(default_factory=list)
    observed_value: Any = None


@dataclass
class ValidationReport:
    run_id: str
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_text(self) -> str:
        datasets = sorted({o.dataset for o in self.outcomes})
        head = (f"data validation {'PASSED' if self.success else 'FAILED'} for run {self.run_id}: "
                f"{len(self.outcomes) - len(self.failures)}/{len(self.outcomes)} expectations met "
                f"on {', '.join(datasets)}")
        lines = [head]
        for o in self.failures:
            args = ", ".join(f"{k}={_short(v)}" for k, v in o.kwargs.items() if k not in ("batch_id", "column"))
            column = o.kwargs.get("column")
            where = f"{o.dataset}.{column}" if column else o.dataset
            figures = (f"{o.unexpected_count} unexpected ({o.unexpected_percent:.3f}%)"
                       if o.unexpected_count is not None and o.unexpected_percent is not None
                       else f"observed {o.observed_value!r}")
            sample = f"; e.g. {o.sample[:5]}" if o.sample else ""
            lines.append(f"  FAILED {where}: {o.expectation}({args}): {figures}{sample}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "success": self.success,
                           "outcomes": [asdict(o) for o in self.outcomes]}, indent=2, default=str)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "validation.json").write_text(self.to_json())
        (folder / "validation.txt").write_text(self.to_text() + "\n")
        return folder / "validation.txt"


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} values]"
    return repr(value)


def load_suite(name: str, expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    path = expectations_dir / name / "suite.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SuiteError(f"expectation suite '{name}' not found ({path})") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list) or not data["expectations"]:
        raise SuiteError(f"{path}: needs a non-empty 'expectations' list")
    for i, exp in enumerate(data["expectations"]):
        if not isinstance(exp, dict) or not str(exp.get("type", "")).startswith("expect_"):
            raise SuiteError(f"{path}: expectations[{i}] needs a 'type' such as expect_column_values_to_not_be_null")
        if set(exp) - {"type", "kwargs", "meta"}:
            raise SuiteError(f"{path}: expectations[{i}]: unknown key(s) {sorted(set(exp) - {'type', 'kwargs', 'meta'})}")
    data["path"] = str(path)
    return data


def suite_with_params(name: str, params: dict[str, Any], expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    """A job-output suite as data: ``{$param: x}`` kwargs replaced by ``params[x]``, and a
    ``column_pairs: {$param: x}`` kwarg expanded to one expectation per ``(column_A, column_B)`` pair of
    ``params[x]``. An unknown parameter is a :class:`SuiteError` naming it."""
    suite = load_suite(name, expectations_dir)

    def value_of(value: Any) -> Any:
        if isinstance(value, dict) and "$param" in value:
            if value["$param"] not in params:
                raise SuiteError(f"{suite['path']}: unknown parameter {value['$param']!r} (known: {sorted(params)})")
            return params[value["$param"]]
        return value

    out = []
    for exp in suite["expectations"]:
        kwargs = {k: value_of(v) for k, v in (exp.get("kwargs") or {}).items()}
        if "column_pairs" in kwargs:
            pairs = kwargs.pop("column_pairs")
            out += [{**exp, "kwargs": {"column_A": a, "column_B": b, **kwargs}} for a, b in pairs]
        else:
            out.append({**exp, "kwargs": kwargs})
    return {"path": suite["path"], "expectations": out}


def references(suite: dict[str, Any]) -> set[str]:
    """The `table.column` references a suite needs resolved."""
    refs = set()
    for exp in suite["expectations"]:
        for value in (exp.get("kwargs") or {}).values():
            if isinstance(value, dict) and "$ref" in value:
                refs.add(str(value["$ref"]))
    return refs


def _resolve(suite: dict[str, Any], ref_values: dict[str, list[Any]]) -> list[dict[str, Any]]:
    resolved = []
    for exp in suite["expectations"]:
        kwargs = {}
        for key, value in (exp.get("kwargs") or {}).items():
            if isinstance(value, dict) and "$ref" in value:
                ref = str(value["$ref"])
                if ref not in ref_values:
                    raise SuiteError(f"{suite['path']}: reference {ref} is not available in this run")
                value = ref_values[ref]
            kwargs[key] = value
        resolved.append({"type": exp["type"], "kwargs": kwargs, "meta": exp.get("meta") or {}})
    return resolved


def validate_frames(frames: dict[str, tuple[DataFrame, str]], run_id: str,
                    expectations_dir: Path = EXPECTATIONS_DIR) -> ValidationReport:
    """Validate each dataset (name -> (Spark frame, suite name)) with Great Expectations on Spark.

    References between datasets (`$ref: table.column`) are resolved from the frames given here.
    """
    suites = {name: load_suite(suite_name, expectations_dir) for name, (_, suite_name) in frames.items()}
    return validate_with_suites({name: (frame, suites[name]) for name, (frame, _) in frames.items()}, run_id)


def validate_with_suites(frames: dict[str, tuple[DataFrame, dict[str, Any]]], run_id: str) -> ValidationReport:
    """Like :func:`validate_frames`, with suites given as data (``{"path": ..., "expectations": [...]}``),
    e.g. generated from a spec."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    suites = {name: suite for name, (_, suite) in frames.items()}
    ref_values: dict[str, list[Any]] = {}
    for suite in suites.values():
        for ref in references(suite):
            table, _, column = ref.partition(".")
            if table not in frames or not column:
                raise SuiteError(f"{suite['path']}: reference '{ref}' names no dataset validated in this run")
            rows = frames[table][0].select(column).distinct().collect()
            ref_values[ref] = sorted(r[0] for r in rows if r[0] is not None)

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_spark(name="atelier_spark")
    outcomes: list[ExpectationOutcome] = []
    for name, (frame, _) in frames.items():
        suite = gx.ExpectationSuite(name=f"{name}_suite")
        for exp in _resolve(suites[name], ref_values):
            try:
                suite.add_expectation_configuration(ExpectationConfiguration(**exp))
            except Exception as exc:  # noqa: BLE001 - GX raises assorted types for bad configurations
                raise SuiteError(f"{suites[name]['path']}: {exp['type']}: {exc}") from exc
        suite = context.suites.add(suite)
        batch_def = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        for res in result.results:
            details = res.result or {}
            kwargs = {k: v for k, v in res.expectation_config.kwargs.items() if k != "batch_id"}
            outcomes.append(ExpectationOutcome(
                dataset=name, expectation=res.expectation_config.type, kwargs=kwargs, success=bool(res.success),
                unexpected_count=details.get("unexpected_count"),
                unexpected_percent=details.get("unexpected_percent"),
                sample=list(details.get("partial_unexpected_list") or [])[:10],
                observed_value=details.get("observed_value"),
            ))
    return ValidationReport(run_id=run_id, outcomes=outcomes)
