"""features.yaml: the flights spec loads; every kind of mistake fails at load time naming view, feature, reason."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.featurestore.materialize import online_schema
from pipelines.featurestore.spec import load_feature_set, parse_duration
from pipelines.usecases import SpecError, load_usecase

FLIGHTS = Path(__file__).resolve().parents[2] / "config" / "usecases" / "flights_eta"


def test_flights_feature_set():
    features = load_feature_set(load_usecase(FLIGHTS))
    assert [v.name for v in features.batch_views] == ["aircraft_history", "route_stats", "origin_weather"]
    assert features.views["aircraft_history"].keys == ("tailnum",)
    assert features.views["route_stats"].keys == ("origin", "dest")
    assert features.views["route_stats"].lookback == timedelta(days=30)
    assert features.views["origin_weather"].ttl == timedelta(hours=3)
    p90 = next(f for f in features.views["route_stats"].features if f.name == "route_arr_delay_p90_30d")
    assert p90.dtype == "double" and p90.default == 40.0 and p90.sla == timedelta(days=3)
    assert {f.on_stale for v in features.batch_views for f in v.features} == {"serve_stale", "use_default", "reject"}
    assert [f.name for f in features.request_views[0].features][:2] == ["sched_dep_hour", "sched_dep_dow"]
    schema = online_schema("flights_eta", features.views["route_stats"])
    assert schema.entity_keys == [("origin", "string"), ("dest", "string")]
    assert ("route_flights_30d", "bigint") in schema.features and schema.ttl_seconds == 30 * 86400


@pytest.fixture
def spec_folder(tmp_path):
    folder = tmp_path / "flights_eta"
    shutil.copytree(FLIGHTS, folder)
    return folder


def _edit(folder: Path, mutate) -> None:
    path = folder / "features.yaml"
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))


def _view(data, name):
    return data["feature_views"][name]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: _view(d, "aircraft_history")["features"].update(bad={"expr": 'mean(arrival_delay, "7d")', "default": 0}),
     "feature_views.aircraft_history.features.bad"),
    (lambda d: _view(d, "aircraft_history")["features"].update(bad={"expr": 'mean(arrival_delay, "7d")', "default": 0}),
     "arrival_delay"),
    (lambda d: _view(d, "route_stats")["features"].update(bad={"expr": "carrier + 1", "default": 0}),
     "feature_views.route_stats.features.bad"),
    (lambda d: _view(d, "route_stats")["features"].update(bad={"expr": 'mean(arr_delay, "soon")', "default": 0}),
     "feature_views.route_stats.features.bad"),
    (lambda d: _view(d, "route_stats")["features"].update(bad={"expr": "arr_delay"}), "needs a default"),
    (lambda d: _view(d, "route_stats").update(entity="runway"), "unknown entity 'runway'"),
    (lambda d: _view(d, "route_stats").update(source="trains"), "unknown lake table 'trains'"),
    (lambda d: _view(d, "route_stats").update(event_time="carrier"), "'carrier' is not a timestamp column"),
    (lambda d: _view(d, "route_stats").update(ttl="a month"), "feature_views.route_stats.ttl"),
    (lambda d: _view(d, "route_stats").pop("ttl"), "a batch view needs a ttl"),
    (lambda d: _view(d, "route_stats").update(colour="blue"), "colour: unknown key"),
    (lambda d: _view(d, "request")["features"].update(bad={"expr": 'mean(dep_delay, "7d")'}),
     "a request feature cannot aggregate"),
    (lambda d: _view(d, "origin_weather")["features"].update(tail_flights_7d={"expr": "temp", "default": 0}),
     "also defined in view 'aircraft_history'"),
    (lambda d: _view(d, "origin_weather")["features"]["wx_temp"].update(on_stale="shrug"), "on_stale"),
    (lambda d: d["label"].update(column="arrival"), "label: 'arrival' is not a column of 'flights'"),
])
def test_spec_mistakes_are_named(spec_folder, mutate, message):
    _edit(spec_folder, mutate)
    with pytest.raises(SpecError) as error:
        load_feature_set(load_usecase(spec_folder))
    assert message in str(error.value)
    assert str(spec_folder / "features.yaml") in str(error.value)


def test_durations():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("7 days")
