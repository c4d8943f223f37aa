"""The monitoring spec (pipelines/monitoring/drift_spec.py): the flights ETA spec loads, and every broken key is
refused with a SpecError that names it."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from pipelines.config import get_settings
from pipelines.featurestore.spec import load_feature_set
from pipelines.monitoring.drift_spec import MonitoringSpec, Segment, load_monitoring_spec
from pipelines.usecases import SpecError, UseCase, get_usecase

CROSSES = [("origin", "carrier"), ("origin", "dest"), ("carrier", "dest"), ("origin", "hour"), ("carrier", "hour")]


@pytest.fixture(scope="module")
def usecase() -> UseCase:
    return get_usecase("flights_eta", get_settings().usecases_path)


@pytest.fixture(scope="module")
def features(usecase):
    return load_feature_set(usecase)


@pytest.fixture(scope="module")
def spec(usecase, features) -> MonitoringSpec:
    return load_monitoring_spec(usecase, features)


def raw_spec(usecase: UseCase) -> dict:
    """A deep copy of the use case's raw ``monitoring:`` mapping (the tests change it freely)."""
    return copy.deepcopy(usecase.extra["monitoring"]["monitoring"])


def with_monitoring(usecase: UseCase, raw: dict | None) -> UseCase:
    # UseCase is a frozen pydantic model: model_copy is its dataclasses.replace.
    return usecase.model_copy(update={"extra": {**usecase.extra, "monitoring": {"monitoring": raw}}})


def load_error(usecase: UseCase, features, raw: dict) -> str:
    with pytest.raises(SpecError) as exc:
        load_monitoring_spec(with_monitoring(usecase, raw), features)
    message = str(exc.value)
    assert str(usecase.path / "monitoring.yaml") in message
    return message


def test_the_flights_monitoring_spec_loads(spec):
    assert spec.usecase == "flights_eta"
    assert list(spec.segments) == ["origin", "carrier", "dest", "hour"]
    assert spec.segments["origin"] == Segment(column="origin")
    assert spec.segments["hour"].column == "sched_dep_hour"
    assert spec.segments["hour"].buckets == [9, 12, 15, 18, 21]
    assert spec.crosses == CROSSES
    assert spec.categorical == ["origin", "carrier", "dest"]
    assert set(spec.sources) == {"flights", "weather"}
    assert spec.sources["flights"].day == "sched_dep_date"
    assert spec.sources["weather"].segments == {"origin": "origin"}
    assert spec.cooldown == timedelta(days=14) and spec.retrain_window == timedelta(days=90)
    assert spec.anomaly.z_low <= spec.anomaly.z_medium <= spec.anomaly.z_high


def test_grouping_is_overall_then_each_segment_then_the_crosses(spec):
    names = {name: seg.column for name, seg in spec.segments.items()}
    sets = spec.grouping(names)
    assert sets[0] == ()
    assert sets[1:5] == [("origin",), ("carrier",), ("dest",), ("hour",)]
    assert sets[5:] == CROSSES
    assert len(sets) == len(set(sets))


def test_grouping_keeps_only_the_crosses_whose_segments_are_all_present(spec):
    # The weather table only has an origin column: no cross applies to it.
    assert spec.grouping({"origin": "origin"}) == [(), ("origin",)]
    assert spec.grouping({"origin": "origin", "carrier": "carrier"}) == [
        (), ("origin",), ("carrier",), ("origin", "carrier")]
    assert spec.grouping({}) == [()]


def test_a_usecase_without_monitoring_is_told_what_to_add(usecase, features):
    with pytest.raises(SpecError, match="no monitoring"):
        load_monitoring_spec(with_monitoring(usecase, None), features)


def test_defaults_apply_to_a_minimal_spec(usecase, features):
    spec = load_monitoring_spec(with_monitoring(usecase, {"segments": {"origin": "origin"}}), features)
    assert spec.segments == {"origin": Segment(column="origin")}
    assert spec.crosses == [] and spec.sources == {}
    assert spec.min_rows == 30 and spec.cooldown == timedelta(days=14) and spec.retrain_window == timedelta(days=120)


def _segments(raw: dict, **extra) -> dict:
    return {**raw, "segments": {**raw["segments"], **extra}}


# (change to the raw spec, text the error must hold)
BROKEN = {
    "unknown segment column": (
        lambda r: _segments(r, route="no_such_column"),
        "monitoring.segments.route: 'no_such_column' is neither a request column nor a feature"),
    "segment name not an identifier": (
        lambda r: _segments(r, Route="origin"), "monitoring.segments.Route: not a lower-case identifier"),
    "buckets not increasing": (
        lambda r: _segments(r, hour={"column": "sched_dep_hour", "buckets": [12, 9]}),
        "monitoring.segments.hour.Segment.buckets: must be a non-empty, strictly increasing list"),
    "unknown key in a segment": (
        lambda r: _segments(r, hour={"column": "sched_dep_hour", "bucket": [9]}), "bucket: unknown key"),
    "cross of an unknown segment": (
        lambda r: {**r, "crosses": [["origin", "route"]]}, "monitoring.crosses.0: unknown segment 'route'"),
    "cross of one segment": (
        lambda r: {**r, "crosses": [["origin", "carrier"], ["origin", "origin"]]},
        "monitoring.crosses.1: a cross names two or more different segments"),
    "unknown top-level key": (lambda r: {**r, "colour": "blue"}, "monitoring.colour: unknown key"),
    "unknown nested key": (
        lambda r: {**r, "retrain": {**r["retrain"], "cooldwn": "3d"}}, "monitoring.retrain.cooldwn: unknown key"),
    "cooldown not a duration": (
        lambda r: {**r, "retrain": {**r["retrain"], "cooldown": "abc"}},
        "monitoring.retrain.cooldown: 'abc' is not a duration"),
    "window not a duration": (
        lambda r: {**r, "retrain": {**r["retrain"], "window": "ninety days"}}, "monitoring.retrain.window:"),
    "z thresholds out of order": (
        lambda r: {**r, "anomaly": {**r["anomaly"], "z_low": 12, "z_high": 10}},
        "monitoring.anomaly: z_low <= z_medium <= z_high"),
    "window_days out of range": (
        lambda r: {**r, "anomaly": {**r["anomaly"], "window_days": 3}}, "monitoring.anomaly.window_days"),
    "min_rows not an int": (lambda r: {**r, "min_rows": "many"}, "monitoring.min_rows"),
    "alert severity not a level": (
        lambda r: {**r, "alerts": {**r["alerts"], "min_severity": "urgent"}}, "monitoring.alerts.min_severity"),
    "categorical names a numeric column": (
        lambda r: {**r, "categorical": ["origin", "dep_delay"]},
        "monitoring.categorical: 'dep_delay' is not a string request column"),
    "categorical names no request column": (
        lambda r: {**r, "categorical": ["colour"]}, "monitoring.categorical: 'colour' is not a string request column"),
    "exclude names no request column": (
        lambda r: {**r, "exclude": ["colour"]}, "monitoring.exclude: 'colour' is not a request column"),
    "source names no table": (
        lambda r: {**r, "sources": {**r["sources"], "runways": {"day": "obs_date"}}},
        "monitoring.sources.runways: not a table of this use case"),
    "source day not a date column": (
        lambda r: {**r, "sources": {**r["sources"], "weather": {**r["sources"]["weather"], "day": "temp"}}},
        "monitoring.sources.weather.day: 'temp' is not a date column of 'weather'"),
    "source segment not a segment": (
        lambda r: {**r, "sources": {**r["sources"], "weather": {**r["sources"]["weather"],
                                                                 "segments": {"station": "origin"}}}},
        "monitoring.sources.weather.segments.station: not a segment of monitoring.segments"),
    "source segment column missing": (
        lambda r: {**r, "sources": {**r["sources"], "weather": {**r["sources"]["weather"],
                                                                 "segments": {"carrier": "carrier"}}}},
        "monitoring.sources.weather.segments.carrier: 'weather' has no column 'carrier'"),
    "source exclude column missing": (
        lambda r: {**r, "sources": {**r["sources"], "weather": {**r["sources"]["weather"], "exclude": ["nope"]}}},
        "monitoring.sources.weather.exclude: 'weather' has no column 'nope'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_spec_is_refused_naming_the_key(usecase, features, case):
    change, expected = BROKEN[case]
    assert expected in load_error(usecase, features, change(raw_spec(usecase)))


def test_every_problem_is_listed_at_once(usecase, features):
    raw = raw_spec(usecase)
    raw = {**_segments(raw, route="no_such_column"), "crosses": [["origin", "nowhere"]],
           "retrain": {**raw["retrain"], "cooldown": "abc"}}
    message = load_error(usecase, features, raw)
    for key in ("monitoring.segments.route", "monitoring.crosses.0", "monitoring.retrain.cooldown"):
        assert key in message


def test_the_raw_spec_is_not_changed_by_loading(usecase, features):
    before = raw_spec(usecase)
    load_monitoring_spec(usecase, features)
    assert usecase.extra["monitoring"]["monitoring"] == before
