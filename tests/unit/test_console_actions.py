"""The console's actions (form checks, the exact DAG run they plan, the audit file) and its app's request
handling. Authentication is Airflow's and is exercised for real in tests/integration/test_console.py; here
the app's user dependency is replaced by a fixed user so the handlers can be called without an API server."""

from __future__ import annotations

import re

import pytest

from pipelines.console import actions
from pipelines.console.actions import ActionError, plan


@pytest.fixture()
def home_settings(settings, tmp_path):
    return settings.model_copy(update={"home": str(tmp_path)})


@pytest.mark.parametrize("action, form, field, message", [
    ("train", {"start": "2013-02-30"}, "start", "not a calendar date"),
    ("train", {"start": "13-02-01"}, "start", "ISO date"),
    ("train", {"start": "2013-06-01", "end": "2013-05-01"}, "end", "after start"),
    ("deploy", {"version": "../3"}, "version", "registry version number"),
    ("deploy", {"strategy": "yolo"}, "strategy", "one of canary"),
    ("move", {"version": "3", "stage": "prod", "why": "x"}, "stage", "one of exploration"),
    ("move", {"version": "3", "stage": "production"}, "why", "is required"),
    ("move", {"stage": "production", "why": "x"}, "version", "is required"),
    ("rollback", {"why": "  "}, "why", "is required"),
    ("rollback", {"why": "x" * 501}, "why", "at most 500"),
    ("retrain", {}, "why", "is required"),
])
def test_a_wrong_field_is_named(settings, action, form, field, message):
    with pytest.raises(ActionError) as error:
        plan(settings, action, "flights_eta", form)
    assert error.value.field == field and message in error.value.message


def test_unknown_action_and_usecase(settings):
    with pytest.raises(ActionError, match="action: one of"):
        plan(settings, "drop_tables", "flights_eta", {})
    with pytest.raises(ActionError, match="usecase: unknown use case '../x'"):
        plan(settings, "train", "../x", {})


def test_plans_are_the_dags_params(settings):
    assert plan(settings, "train", "flights_eta", {"start": "2013-06-01"}).conf == {
        "usecase": "flights_eta", "start": "2013-06-01", "end": None}
    deploy = plan(settings, "deploy", "flights_eta", {"version": "4", "strategy": "shadow"})
    assert (deploy.dag_id, deploy.conf) == ("model_deploy", {"usecase": "flights_eta", "version": "4",
                                                             "strategy": "shadow", "overrides": {}})
    move = plan(settings, "move", "flights_eta", {"version": "4", "stage": "archived", "why": "superseded"})
    assert (move.dag_id, move.conf["action"], move.conf["stage"]) == ("model_lifecycle", "move", "archived")
    retrain = plan(settings, "retrain", "flights_eta", {"why": "June drift"})
    assert retrain.asset == "retrain.flights_eta" and retrain.conf == {"reason": "June drift", "params": {}}


def test_the_retrain_asset_name_is_the_dags():
    from plugins.assets import retrain_request

    assert actions.RETRAIN_ASSET.format(usecase="flights_eta") == retrain_request("flights_eta").name


def test_the_lifecycle_dag_takes_every_planned_param():
    """The plans' keys are exactly the model_lifecycle DAG's params (a renamed param would break the console)."""
    import ast

    from pipelines.config import REPO_ROOT

    tree = ast.parse((REPO_ROOT / "dags" / "model_lifecycle.py").read_text())
    params = next(n for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "params")
    keys = {k.value for k in params.value.keys}
    for action, form in (("rollback", {"why": "x"}), ("move", {"version": "2", "stage": "staging", "why": "x"})):
        assert set(actions.ACTIONS[action]("flights_eta", form).conf) == keys, action


def test_audit_file_appends_and_skips_a_torn_line(home_settings):
    for i in range(3):
        actions._append(home_settings, {"at": str(i), "usecase": "flights_eta" if i != 1 else "other", "n": i})
    path = home_settings.home_path / "audit" / "console.jsonl"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with open(path, "a") as handle:
        handle.write('{"at": "torn')  # a crash mid-line
    assert [r["n"] for r in actions.audit_log(home_settings, "flights_eta")] == [2, 0]
    assert [r["n"] for r in actions.audit_log(home_settings)] == [2, 1, 0]


def test_execute_records_a_refusal(home_settings):
    """Airflow unreachable: the action is recorded as refused with the reason, nothing claimed started."""
    p = plan(home_settings, "rollback", "flights_eta", {"why": "test"})
    record = actions.execute(home_settings, p, user="ann", token="t", base_url="http://127.0.0.1:9")
    assert record["outcome"] == "refused" and "not reachable" in record["error"]
    assert actions.audit_log(home_settings)[0]["user"] == "ann"


# -- the app, with a fixed user in place of Airflow's session check


class _User:
    def get_name(self) -> str:
        return "ann"

    def get_id(self) -> str:
        return "ann"


@pytest.fixture()
def client(monkeypatch, home_settings):
    from fastapi.testclient import TestClient

    from plugins.console import app as console

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-secret-" + "x" * 20)
    monkeypatch.setattr(console, "_settings", lambda: home_settings)
    console.app.dependency_overrides[console._user] = _User
    yield TestClient(console.app)
    console.app.dependency_overrides.clear()


def test_unknown_names_are_404_pages(client):
    for path in ("/usecases/nope/models", "/usecases/..%2Fetc/models", "/usecases/flights_eta/drift/2013-13/report",
                 "/usecases/flights_eta/drift/2013-12-30/report", "/static/../app.py"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "<h1>404</h1>" in answer.text and "Traceback" not in answer.text


def test_the_confirmation_is_bound_to_user_and_plan(client):
    answer = client.post("/usecases/flights_eta/actions/rollback", data={"why": "a bad canary"})
    assert answer.status_code == 200 and "model_lifecycle" in answer.text
    token = re.search(r'name="confirmation" value="([^"]+)"', answer.text).group(1)
    # Changing what was confirmed, or a token this console did not sign, is refused before anything runs.
    changed = client.post("/usecases/flights_eta/actions/rollback/run", data={"why": "else", "confirmation": token})
    assert changed.status_code == 403 and "does not match" in changed.text
    forged = client.post("/usecases/flights_eta/actions/rollback/run", data={"why": "a bad canary",
                                                                           "confirmation": "x.y.z"})
    assert forged.status_code == 403
    from plugins.console.app import _signer

    assert _signer().loads(token)["user"] == "ann"


def test_a_bad_field_shows_the_form_again_with_the_message(client):
    answer = client.post("/usecases/flights_eta/actions/move", data={"version": "1", "stage": "prod", "why": "x"})
    assert answer.status_code == 422
    assert 'aria-invalid="true"' in answer.text and "one of exploration" in answer.text


def test_panels_without_their_source_say_so(client):
    """A fresh home: no lake tables, no reports. Each page answers 200 and names what is missing."""
    for path, expected in (("/usecases/flights_eta/online", "monitoring_feedback"),
                           ("/usecases/flights_eta/drift", "monitoring_drift"),
                           ("/usecases/flights_eta/rollouts", "Nothing deployed")):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert expected in answer.text, (path, answer.text[-2000:])


def test_plotly_is_served_from_the_package(client):
    answer = client.get("/static/plotly.min.js")
    assert answer.status_code == 200 and b"plotly.js" in answer.content[:2000]
    assert answer.headers["content-type"].startswith("text/javascript")


def test_online_figures_per_version_are_weighted_by_labelled_outcomes():
    import pandas as pd

    from pipelines.console.data import online_by_version

    frame = pd.DataFrame({"model_version": ["1", "1", "2"], "prediction_day": ["2013-12-24", "2013-12-25", "2013-12-25"],
                          "predictions": [100, 300, 50], "labelled": [100, 100, 0], "mae": [10.0, 20.0, float("nan")],
                          "coverage_80": [0.8, 0.6, float("nan")]})
    out = online_by_version(frame)
    assert out["1"] == {"predictions": 400, "labelled": 200, "days": 2, "mae": 15.0, "coverage_80": 0.7}
    assert out["2"]["labelled"] == 0 and out["2"]["mae"] != out["2"]["mae"]  # no outcome yet: NaN, not 0
