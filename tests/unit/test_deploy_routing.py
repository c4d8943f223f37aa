"""The routing table, the deployment spec and the prediction-log tail, without services."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.deploy.routing import Route, RoutingConflict, RoutingError, RoutingStore, RoutingTable
from pipelines.deploy.spec import load_deployment_spec
from pipelines.deploy.window import LogTail
from pipelines.usecases import SpecError, get_usecase


def table(*routes: Route, **kw) -> RoutingTable:
    return RoutingTable(usecase="flights_eta", model="flights_eta", routes=tuple(routes), **kw)


def test_a_canary_gets_its_weight_and_a_request_keeps_its_route():
    t = table(Route("1", "primary", 0.8), Route("2", "canary", 0.2), rollout_id="r1")
    picks = Counter(t.choose(f"req-{i}").version for i in range(20_000))
    assert abs(picks["2"] / 20_000 - 0.2) < 0.015
    assert all(t.choose(f"req-{i}").version == t.choose(f"req-{i}").version for i in range(200))
    zero = table(Route("1", "primary", 1.0), Route("2", "canary", 0.0))
    assert {zero.choose(f"req-{i}").version for i in range(2_000)} == {"1"}  # draining: never answers
    assert zero.versions == ["1", "2"]  # but stays loaded


def test_ab_arms_are_sticky_by_key_and_shadows_sample_by_request():
    t = table(Route("1", "primary", 0.5, arm="A"), Route("2", "arm", 0.5, arm="B"), strategy="ab",
              rollout_id="ab1", sticky_key="tailnum")
    for tail in ("N1", "N22", "N333"):
        assert len({t.choose(f"r{i}", tail).version for i in range(50)}) == 1
    arms = Counter(t.choose("x", f"N{i}").arm for i in range(10_000))
    assert abs(arms["B"] / 10_000 - 0.5) < 0.02
    s = table(Route("1", "primary", 1.0), Route("3", "shadow", 0.25))
    shadowed = sum(bool(s.shadowed(f"r{i}")) for i in range(10_000))
    assert abs(shadowed / 10_000 - 0.25) < 0.02
    assert {s.choose(f"r{i}").version for i in range(500)} == {"1"}  # a shadow never answers


@pytest.mark.parametrize("routes, kw, field", [
    ((Route("1", "canary", 1.0),), {}, "exactly one primary"),
    ((Route("1", "primary", 0.7), Route("2", "canary", 0.2)), {}, "sum to 0.9"),
    ((Route("1", "primary", 1.0), Route("1", "canary", 0.0)), {}, "routes[1].version 1 appears twice"),
    ((Route("x", "primary", 1.0),), {}, "routes[0].version"),
    ((Route("1", "boss", 1.0),), {}, "routes[0].role"),
    ((Route("1", "primary", 1.5),), {}, "routes[0].weight"),
    ((Route("1", "primary", 0.5, arm="A"), Route("2", "arm", 0.5, arm="B")), {}, "sticky_key"),
    ((Route("1", "primary", 1.0),), {"strategy": "yolo"}, "routing.strategy"),
])
def test_invalid_tables_name_the_field(routes, kw, field):
    with pytest.raises(RoutingError, match=field.replace("[", r"\[").replace("]", r"\]")):
        table(*routes, **kw)
    with pytest.raises(RoutingError, match="routing.usecase"):
        RoutingTable(usecase="../etc", model="m", routes=(Route("1", "primary", 1.0),))


def test_writes_are_versioned_and_compare_and_swap(tmp_path):
    store = RoutingStore(tmp_path)
    assert store.read("flights_eta") is None
    first = store.write(table(Route("1", "primary", 1.0)), expected_version=0, by="t", reason="first")
    assert first.version == 1 and store.read("flights_eta") == first
    second = store.write(first.with_routes([Route("1", "primary", 0.9), Route("2", "canary", 0.1)]),
                         expected_version=1, by="t", reason="canary")
    with pytest.raises(RoutingConflict, match="moved to version 2"):
        store.write(first.with_routes([Route("3", "primary", 1.0)]), expected_version=1, by="t", reason="stale")
    assert [t.version for t in store.history("flights_eta")] == [1, 2] and store.read("flights_eta") == second
    (tmp_path / "flights_eta" / "current.json").write_text("{not json")
    with pytest.raises(RoutingError, match="not JSON"):
        store.read("flights_eta")


def test_deployment_spec_overrides_and_errors(settings):
    usecase = get_usecase("flights_eta", settings.usecases_path)
    spec = load_deployment_spec(usecase, {"canary.bake_s": 5, "canary.max_bake_s": 10, "analysis.alpha": 0.05})
    assert spec.canary.bake_s == 5 and spec.analysis.alpha == 0.05 and spec.ab.sticky_key == "tailnum"
    assert spec.analysis.segments == ["origin", "carrier"]
    for overrides, where in (({"canary.steps": [50, 20, 100]}, "canary.steps"),
                             ({"canary.bake_s": 100, "canary.max_bake_s": 10}, "max_bake_s"),
                             ({"ab.weights": {"A": 0.7, "C": 0.3}}, "ab.weights"),
                             ({"analysis.alpha": 0.9}, "analysis.alpha"),
                             ({"canary.colour": "blue"}, "canary.colour")):
        with pytest.raises(SpecError, match=where):
            load_deployment_spec(usecase, overrides)


def test_the_log_tail_reads_whole_lines_once_and_joins_outcomes(tmp_path):
    since = datetime.now(UTC) - timedelta(seconds=1)
    log_dir, outcomes = tmp_path / "log", tmp_path / "outcomes"
    (log_dir / "date=2013-12-31").mkdir(parents=True)
    (outcomes / "date=2013-12-31").mkdir(parents=True)

    def record(i: int, version: str) -> str:
        return json.dumps({"request_id": f"r{i}", "logged_at": datetime.now(UTC).isoformat(), "as_of":
                           "2013-12-31T00:00:00Z", "model": {"version": version, "runtime": "triton"},
                           "routing": {"version": 3, "role": "canary" if version == "2" else "primary"},
                           "route": "canary" if version == "2" else "primary", "latency_ms": 4.0, "error": None,
                           "prediction": {"arr_delay": 10.0}, "interval": {"0.8": {"arr_delay": [0, 20]},
                                                                            "0.9": {"arr_delay": [-5, 25]}},
                           "request": {"origin": "EWR", "carrier": "UA", "flight_id": f"f{i}"}})

    part = log_dir / "date=2013-12-31" / "part-1.jsonl"
    part.write_text(record(1, "1") + "\n" + record(2, "2")[:30])  # the second line is still being written
    tail = LogTail(log_dir, outcomes, "arr_delay", ["origin", "carrier"], ["flight_id"], "arr_delay", since)
    assert tail.poll() == 1
    part.write_text(record(1, "1") + "\n" + record(2, "2") + "\n")
    (outcomes / "date=2013-12-31" / "o.jsonl").write_text(json.dumps({"flight_id": "f2", "arr_delay": 40.0}) + "\n")
    assert tail.poll() == 1 and tail.poll() == 0 and tail.malformed == 0
    frame = tail.frame({"1": "primary", "2": "candidate"})
    row = frame[frame.request_id == "r2"].iloc[0]
    assert row.arm == "candidate" and row.abs_error == 30.0 and row.covered == 0.0 and row.origin == "EWR"
    assert frame[frame.request_id == "r1"].abs_error.isna().all()
