"""The demo's prediction step (``serving.demo.run_demo_requests``): starts the API under the Supervisor, calls it
with real requests built from the spec alone (``real_requests``), prints answers beside what really happened,
and stops it again; and the demo's week (``pipelines.cli.demo_window``), read from the lake's partitions."""

from __future__ import annotations

import json
import os
import secrets

import pytest
from serving_fixtures import free_port, model_env

from pipelines.config import load_settings
from pipelines.services import Supervisor

pytest_plugins = ["serving_fixtures"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_requests_for_real_flights(sqlite_features, serving_model, triton_service, published_lake,
                                        monkeypatch, tmp_path):
    ref, _ = serving_model
    env = {**sqlite_features, **model_env(ref), "ATELIER__API__PORT": str(free_port()),
           "ATELIER__HOME": str(tmp_path / "home"), "ATELIER__LAKE__ROOT": str(published_lake.root),
           "ATELIER_API_TOKEN": secrets.token_urlsafe(16),
           "ATELIER__TRITON__MODEL_REPOSITORY": str(load_settings("test").triton_model_repository)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings("test", environ=dict(os.environ))
    from serving.demo import api_spec, run_demo_requests

    text = run_demo_requests(settings)
    lines = text.splitlines()
    assert "ready" in lines[0] and f"v{ref.version}" in lines[0], text
    # One row per request: its flight_id (the label's key), on the last day before the clock (2013-12-31).
    rows = [line for line in lines if line.strip().startswith("2013-12-30_")]
    assert len(rows) == 5 and all("0.8: [" in row for row in rows), text
    assert all(" triton " in row for row in rows), text
    assert any(line.strip().startswith("batch of 20:") for line in lines), text
    assert "curl -s http://127.0.0.1:" in text and "Authorization: Bearer $ATELIER_API_TOKEN" in text
    assert env["ATELIER_API_TOKEN"] not in text  # never the secret itself
    assert Supervisor(settings.run_dir).status(api_spec(settings)).state == "stopped"


def test_real_requests_are_the_last_events_before_the_clock_and_pass_the_api_schema(settings, usecase,
                                                                                    published_lake):
    import pandas as pd

    from pipelines.featurestore.spec import load_feature_set
    from serving.demo import real_requests
    from serving.schemas import RequestSchema

    clock = pd.Timestamp("2013-12-30T18:00:00Z").to_pydatetime()
    examples = real_requests(settings, usecase, 30, clock)
    assert len(examples) == 30
    flights = pd.read_parquet(published_lake.path("flights"), filters=[("sched_dep_date", "in", ["2013-12-29",
                                                                                                  "2013-12-30"])])
    flights = flights[(flights.sched_dep_ts < clock) & flights.arr_delay.notna() & flights.tailnum.notna()
                      & flights.dep_delay.notna()].sort_values(["sched_dep_ts", "flight_id"])
    assert [e["id"] for e in examples] == flights.flight_id.tail(30).tolist()
    truth = flights.set_index("flight_id")
    schema = RequestSchema(usecase, load_feature_set(usecase), max_batch=256)
    for e in examples:
        assert e["actual"] == truth.loc[e["id"], "arr_delay"]
        row = schema.single(json.dumps(e["request"]).encode())  # strict: each value has its schema's JSON type
        assert row["flight_id"] == e["id"] and row["tailnum"] == truth.loc[e["id"], "tailnum"]


def test_the_demo_week_is_the_lakes_last_one_before_the_clock(settings, usecase, published_lake):
    from pipelines.cli import demo_window

    at = {**os.environ, "ATELIER__LAKE__ROOT": str(published_lake.root)}
    assert demo_window(load_settings("test", environ=at), usecase) == ("2013-12-24", "2013-12-31")
    earlier = load_settings("test", environ={**at, "ATELIER__API__AS_OF": "2013-06-10T12:00:00Z"})
    assert demo_window(earlier, usecase) == ("2013-06-03", "2013-06-10")
    unset = load_settings("test", environ={**at, "ATELIER__API__AS_OF": ""})
    assert unset.api.as_of is None  # no clock: the data's own last day ends the week
    assert demo_window(unset, usecase) == ("2013-12-25", "2014-01-01")
