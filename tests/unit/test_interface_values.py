"""Lake values as the JSON the API's strict request schema takes (``pipelines.interface.json_value``): the
replay and the demo build their requests with it."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest

from pipelines.interface import json_value


@pytest.mark.parametrize(("value", "dtype", "expected"), [
    (pd.Timestamp("2013-12-30 06:00"), "timestamp", "2013-12-30T06:00:00Z"),
    (pd.Timestamp("2013-12-30 06:00", tz="America/New_York"), "timestamp", "2013-12-30T11:00:00Z"),
    (datetime(2013, 12, 30, 6, tzinfo=UTC), "timestamp", "2013-12-30T06:00:00Z"),
    (date(2013, 1, 2), "date", "2013-01-02"),
    (3.0, "int", 3),
    (7, "double", 7.0),
    (1, "bool", True),
    ("JFK", "string", "JFK"),
])
def test_values_get_the_json_type_of_their_lake_type(value, dtype, expected):
    answer = json_value(value, dtype)
    assert answer == expected and type(answer) is type(expected)


@pytest.mark.parametrize(("value", "dtype"), [(None, "double"), (float("nan"), "double"), (pd.NaT, "timestamp")])
def test_missing_values_become_null(value, dtype):
    assert json_value(value, dtype) is None
