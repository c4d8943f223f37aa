"""The served-skew comparison without Spark: value equality, serving conditions, counts and the report."""

from __future__ import annotations

import math

import pytest

from pipelines.monitoring.served_skew import (
    FeatureCheck,
    ServedRow,
    ServedSkewDetected,
    ServedSkewReport,
    ViewCheck,
    compare_served,
    serving_condition,
    values_match,
)

DAY_S = 86_400.0
TAIL = ViewCheck("aircraft_history", "batch", 7 * DAY_S, (
    FeatureCheck("aircraft_history", "tail_arr_delay_mean_7d", "double", 0.0, 2 * DAY_S, "serve_stale"),
    FeatureCheck("aircraft_history", "tail_flights_7d", "int", 0, 2 * DAY_S, "use_default"),
))
REQUEST = ViewCheck("request", "request", None, (
    FeatureCheck("request", "sched_dep_hour", "int"),
    FeatureCheck("request", "carrier", "string"),
))
VIEWS = [TAIL, REQUEST]


def row(rid, served, offline, status="fresh", served_age=3600.0, offline_age=3600.0):
    return ServedRow(rid, "2013-12-10T12:00:00.000000Z", served, offline, {"aircraft_history": status},
                     {"aircraft_history": served_age}, {"aircraft_history": offline_age})


GOOD = {"tail_arr_delay_mean_7d": 12.5, "tail_flights_7d": 4, "sched_dep_hour": 7, "carrier": "DL"}


@pytest.mark.parametrize(("served", "offline", "dtype", "equal"), [
    (1.0, 1.0 + 1e-12, "double", True),
    (1.0, 1.0 + 1e-6, "double", False),
    (0.0, 0.0, "double", True),
    (1e-300, 0.0, "double", False),
    (math.inf, math.inf, "double", True),
    (math.inf, 1e308, "double", False),
    (None, None, "double", True),
    (None, 0.0, "double", False),
    (math.nan, None, "double", True),  # the log cannot hold NaN: it is null
    (3, 3.0, "int", True),  # a JSON log may hand an int back as 3.0
    (3, 3.5, "int", False),
    (2**62 + 1, 2**62, "int", False),  # exact, not through floats
    (True, 1, "int", False),
    (0, None, "int", False),
    ("DL", "DL", "string", True),
    ("DL", "dl", "string", False),
    (True, True, "bool", True),
    (True, 1, "bool", False),
])
def test_values_match(served, offline, dtype, equal):
    assert values_match(served, offline, dtype) is equal
    assert values_match(offline, served, dtype) is equal


@pytest.mark.parametrize(("status", "served_age", "offline_age", "condition"), [
    ("fresh", 3600.0, 3600.0, None),
    ("stale", 3 * DAY_S, 3 * DAY_S, None),  # serve_stale: the same row as offline must give the same values
    ("fresh", 3600.0, 3600.0005, None),  # float seconds of the same microsecond event time
    ("unavailable", None, 3600.0, "unavailable"),
    ("missing", None, 3600.0, "missing_online"),
    ("missing", None, None, None),  # no row either side: both give the defaults, compared
    ("no_key", None, None, None),
    ("fresh", -60.0, None, "future_row"),
    ("stale", 8 * DAY_S, None, "past_ttl"),
    ("stale", 7 * DAY_S, None, "past_ttl"),  # expired at exactly the TTL, as the join and the store say
    ("fresh", 7200.0, 3600.0, "different_row"),
    ("fresh", 3600.0, None, "different_row"),
])
def test_serving_condition(status, served_age, offline_age, condition):
    assert serving_condition(TAIL, status, served_age, offline_age) == condition


def test_equal_rows_have_no_mismatch():
    skews, conditions = compare_served([row(f"r{i}", GOOD, dict(GOOD)) for i in range(3)], VIEWS)
    assert [(s.feature, s.compared, s.mismatches) for s in skews] == [
        ("tail_arr_delay_mean_7d", 3, 0), ("tail_flights_7d", 3, 0), ("sched_dep_hour", 3, 0), ("carrier", 3, 0)]
    assert conditions == []


def test_mismatches_are_counted_per_feature_with_largest_differences():
    rows = [row(f"r{i}", {**GOOD, "sched_dep_hour": 7 + i}, GOOD) for i in range(8)]
    rows.append(row("r-null", {**GOOD, "sched_dep_hour": None}, GOOD))
    skews, _ = compare_served(rows, VIEWS, max_examples=3)
    hour = next(s for s in skews if s.feature == "sched_dep_hour")
    assert (hour.compared, hour.mismatches) == (9, 8)
    assert hour.rate == pytest.approx(8 / 9)
    # The largest first; a null has no difference, but it is an example.
    assert [(d["request_id"], d["abs_diff"]) for d in hour.largest_differences] == [("r7", 7.0), ("r6", 6.0),
                                                                                     ("r5", 5.0)]
    assert [e["request_id"] for e in hour.examples] == ["r1", "r2", "r3"]
    assert hour.examples[0] == {"request_id": "r1", "as_of": "2013-12-10T12:00:00.000000Z", "served": 8,
                                "offline": 7}
    assert all(s.mismatches == 0 for s in skews if s.feature != "sched_dep_hour")


def test_serving_conditions_are_set_aside_not_compared():
    defaults = {**GOOD, "tail_arr_delay_mean_7d": 0.0, "tail_flights_7d": 0}
    rows = [
        row("down", defaults, GOOD, "unavailable", None, 3600.0),
        row("gap", defaults, GOOD, "missing", None, 3600.0),
        row("old", {**GOOD, "tail_arr_delay_mean_7d": 99.0}, defaults, "stale", 8 * DAY_S, None),
        # Stale past the SLA, inside the TTL: the mean is served stale (compared), the count by policy default.
        row("policy", {**GOOD, "tail_flights_7d": 0}, GOOD, "stale", 3 * DAY_S, 3 * DAY_S),
        row("ok", GOOD, GOOD),
    ]
    skews, conditions = compare_served(rows, VIEWS)
    by_name = {s.feature: s for s in skews}
    assert (by_name["tail_arr_delay_mean_7d"].compared, by_name["tail_arr_delay_mean_7d"].mismatches) == (2, 0)
    assert (by_name["tail_flights_7d"].compared, by_name["tail_flights_7d"].mismatches) == (1, 0)
    # Request features do not depend on the store: compared on every row.
    assert by_name["sched_dep_hour"].compared == 5
    assert [(c.view, c.condition, c.rows, c.examples) for c in conditions] == [
        ("aircraft_history", "missing_online", 1, ["gap"]),
        ("aircraft_history", "past_ttl", 1, ["old"]),
        ("aircraft_history", "stale_default", 1, ["policy"]),
        ("aircraft_history", "unavailable", 1, ["down"]),
    ]
    assert next(c for c in conditions if c.condition == "stale_default").features == ["tail_flights_7d"]


def test_a_stale_value_that_differs_from_its_own_offline_row_is_skew():
    served = {**GOOD, "tail_arr_delay_mean_7d": 13.5, "tail_flights_7d": 0}
    skews, conditions = compare_served([row("stale", served, GOOD, "stale", 3 * DAY_S, 3 * DAY_S)], VIEWS)
    assert next(s for s in skews if s.feature == "tail_arr_delay_mean_7d").mismatches == 1
    assert [c.condition for c in conditions] == ["stale_default"]


def report(features):
    return ServedSkewReport("flights_eta", "r1", "2026-01-01T00:00:00+00:00", 0.01, 500, 200, 7,
                            ["2013-12-10T05:00:00Z", "2013-12-10T23:00:00Z"], {"4": 200}, features, [])


def test_report_fails_above_the_threshold_and_names_the_feature():
    rows = [row(f"r{i}", {**GOOD, "sched_dep_hour": 12 if i < 3 else 7}, GOOD) for i in range(200)]
    skews, conditions = compare_served(rows, VIEWS)
    failing = report(skews)
    assert failing.failed_features == ["sched_dep_hour"] and not failing.success  # 1.5% > 1%
    text = failing.to_text()
    assert "FAILED" in text and "FAIL request.sched_dep_hour: 3/200 mismatched (1.50%)" in text
    assert "ok   aircraft_history.tail_flights_7d: 0/200" in text
    exc = ServedSkewDetected(failing)
    assert exc.features == ["sched_dep_hour"] and str(exc).startswith("served-feature skew in sched_dep_hour")
    data = failing.to_dict()
    assert data["failed_features"] == ["sched_dep_hour"] and data["features"][2]["rate"] == 0.015

    at_threshold = [row(f"r{i}", {**GOOD, "sched_dep_hour": 12 if i < 2 else 7}, GOOD) for i in range(200)]
    assert report(compare_served(at_threshold, VIEWS)[0]).success  # 1.0% is not above 1%
