"""Which use cases one run of a per-use-case DAG covers (``plugins.intervals.covered_usecases``)."""

from __future__ import annotations

import pytest

from plugins.intervals import covered_usecases

OFFERED = ["flights_eta", "churn"]
SOURCES = {"flights_eta": ["lake.flights", "lake.weather"], "churn": ["lake.customers", "lake.weather"]}


def test_a_scheduled_run_covers_every_use_case_offered():
    assert covered_usecases(OFFERED, {}) == OFFERED
    assert covered_usecases(OFFERED, None) == OFFERED


def test_a_run_that_names_a_use_case_covers_only_that_one():
    assert covered_usecases(OFFERED, {"usecase": "churn", "start": "2013-12-01"}) == ["churn"]
    assert covered_usecases(OFFERED, {"usecase": "churn"}, ["lake.flights"], SOURCES) == ["churn"]


def test_a_use_case_the_dag_does_not_offer_is_refused_by_name():
    with pytest.raises(ValueError, match="usecase 'taxi' is not one this DAG offers"):
        covered_usecases(OFFERED, {"usecase": "taxi"})


@pytest.mark.parametrize(("fired", "expected"), [
    (["lake.flights"], ["flights_eta"]),
    (["lake.customers", "lake_ingest.publish"], ["churn"]),
    (["lake.weather"], ["flights_eta", "churn"]),
    (["lake.airports"], []),
])
def test_an_asset_triggered_run_covers_the_use_cases_whose_sources_were_published(fired, expected):
    assert covered_usecases(OFFERED, {}, fired, SOURCES) == expected


def test_without_triggering_events_an_asset_scheduled_dag_covers_every_use_case():
    assert covered_usecases(OFFERED, {}, [], SOURCES) == OFFERED
