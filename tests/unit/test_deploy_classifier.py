"""A classifier's rollout: canary, shadow and A/B judge regression errors, so they are refused for it with the
reason (before anything is packaged or routed); the routing table is left as it was."""

from __future__ import annotations

import pytest

from pipelines.config import load_settings
from pipelines.deploy.rollout import deploy
from pipelines.deploy.routing import Route, RoutingStore, RoutingTable


@pytest.mark.parametrize("strategy", ["canary", "shadow", "ab"])
def test_a_classifier_s_canary_shadow_and_ab_are_refused_with_the_reason(tmp_path, strategy):
    settings = load_settings("test", environ={"ATELIER__HOME": str(tmp_path / "home")})
    store = RoutingStore(settings.routing_path)
    store.write(RoutingTable("union_membership", "union_membership", (Route("3", "primary", 1.0),)),
                expected_version=None, by="test", reason="v3 serves")
    before = store.read("union_membership")
    result = deploy(settings, "union_membership", "4", strategy=strategy, alert=False)
    assert result.status == "refused"
    assert f"{strategy} for a classifier is planned" in result.reason and "strategy direct" in result.reason
    assert store.read("union_membership") == before
