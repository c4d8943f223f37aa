"""The Atelier console inside Airflow's UI, driven in a real headless browser (Debian's chromium through
Playwright) against the test session's real Airflow API server, MLflow and routing store.

Signs in through Airflow's own login form, reads the models page against the registry, follows the
keyboard path (skip link, section navigation), checks every form control and chart is labelled, and rolls a
use case back from the Actions page: the confirmation starts a ``model_lifecycle`` DAG run as the signed-in
user, and the routing table changes. Screenshots of each step are kept under ``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from pipelines.config import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHOTS = REPO_ROOT / "test-artifacts" / "console"


@pytest.fixture(scope="module")
def base(airflow_service, settings):
    return f"http://{settings.airflow.host}:{settings.airflow.port}"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from pipelines.services.browser import ensure_browser

    executable = ensure_browser(install=False)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(executable), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, base, settings, registered_model):
    """A signed-in page: Airflow's login form, then back to the console."""
    from pipelines.services.airflow import ADMIN_USER, admin_password

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{base}/atelier/")
    assert "/auth/login" in page.url  # no session: Airflow's login, with the way back
    page.fill("input[name=username]", ADMIN_USER)
    page.fill("input[name=password]", admin_password(settings))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/atelier/.*"))
    yield page
    context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_console_needs_an_airflow_session(base):
    request = urllib.request.Request(f"{base}/atelier/usecases/flights_eta/models")
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(request, timeout=30)
    assert answer.value.code == 303
    assert "/auth/login" in answer.value.headers["Location"]


def test_an_api_client_reads_it_with_a_bearer_token(base, settings):
    from pipelines.cli import _airflow_client

    client = _airflow_client(settings)
    token = client._token
    # Airflow knows the plugin: the app at /atelier and the "Atelier" navigation entry shown in its UI.
    plugins = {p["name"]: p for p in client._request("GET", "/api/v2/plugins")["plugins"]}
    assert [a["url_prefix"] for a in plugins["atelier_console"]["fastapi_apps"]] == ["/atelier"]
    assert [v["name"] for v in plugins["atelier_console"]["external_views"]] == ["Atelier"]
    request = urllib.request.Request(f"{base}/atelier/usecases/flights_eta/rollouts",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.build_opener(_NoRedirect).open(request, timeout=60) as page:
        assert page.status == 200 and b'id="main"' in page.read()
    forged = urllib.request.Request(request.full_url, headers={"Authorization": "Bearer not-a-jwt"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(_NoRedirect).open(forged, timeout=30)
    assert answer.value.code == 303  # an invalid token is no session: back to Airflow's login


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_models_page_shows_the_registry(page, base, settings, registered_model):
    from pipelines.models.registry import resolve_version

    page.goto(f"{base}/atelier/")
    _shot(page, "01-usecases")
    assert page.get_by_role("link", name="flights_eta").count() >= 1
    page.get_by_role("link", name="flights_eta").first.click()
    page.wait_for_url(re.compile(r".*/usecases/flights_eta/models$"))
    page.wait_for_selector(".chart .main-svg")  # plotly.js (served by the console itself) drew the chart
    _shot(page, "02-models")
    ref = resolve_version(settings, registered_model.name, version=registered_model.version)
    row = page.locator("tbody tr", has=page.locator(f"th:text-is('v{ref.version}')"))
    assert row.count() == 1
    assert ref.stage in row.inner_text()
    for alias in ref.aliases:
        assert alias in row.inner_text()
    # The training report of the version opens from its row, sandboxed away from the session.
    report = row.get_by_role("link", name="Training report")
    with page.expect_response(lambda r: "/report" in r.url) as answer:
        report.click()
    assert answer.value.status == 200
    assert "sandbox" in answer.value.headers["content-security-policy"]
    assert registered_model.name in page.content()
    _shot(page, "03-training-report")


def test_keyboard_path_and_labels(page, base):
    page.goto(f"{base}/atelier/usecases/flights_eta/actions")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # The section navigation is reachable by Tab alone, in order, and Enter follows a link.
    page.goto(f"{base}/atelier/usecases/flights_eta/actions")
    names = []
    for _ in range(12):
        page.keyboard.press("Tab")
        names.append(page.evaluate("document.activeElement.textContent.trim()"))
        if names[-1] == "Rollouts":
            break
    assert names[:2] == ["Skip to content", "Atelier"] and names[-1] == "Rollouts", names
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/rollouts$"))
    # Every control has a label, every chart an accessible name, every table a caption.
    for path in ("actions", "models", "drift", "rollouts", "freshness", "online", "audit"):
        page.goto(f"{base}/atelier/usecases/flights_eta/{path}")
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
            .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)""")
        assert unlabelled == [], (path, unlabelled)
        assert page.evaluate("[...document.querySelectorAll('.chart')].every(c => c.getAttribute('aria-label'))")
        assert page.evaluate("[...document.querySelectorAll('table')].every(t => t.caption)")
        assert page.locator("h1").count() == 1
        _shot(page, f"04-{path}")


def test_a_bad_field_is_named_and_nothing_starts(page, base, settings):
    from pipelines.console.actions import audit_log

    before = len(audit_log(settings, "flights_eta", limit=1000))
    page.goto(f"{base}/atelier/usecases/flights_eta/actions")
    page.fill("#train-start", "2013-02-30")
    with page.expect_response(lambda r: r.url.endswith("/actions/train")) as answer:
        page.get_by_role("button", name="Review training run").click()
    assert answer.value.status == 422
    field = page.locator("#train-start")
    assert field.get_attribute("aria-invalid") == "true"
    assert "not a calendar date" in page.locator(f"#{field.get_attribute('aria-describedby')}").inner_text()
    _shot(page, "05-field-error")
    assert len(audit_log(settings, "flights_eta", limit=1000)) == before


def test_rollback_from_the_console_changes_the_routing(page, base, settings, registered_model):
    """Actions -> Roll back -> confirmation -> a model_lifecycle run as `admin` -> the canary is gone."""
    from pipelines.cli import _airflow_client
    from pipelines.deploy.routing import Route, RoutingStore, RoutingTable

    store = RoutingStore(settings.routing_path)
    saved = store.read("flights_eta")
    primary = registered_model.version
    # A canary in service beside the primary. Its version is a number no registry holds: a rollback only
    # takes it out of the routing (and unloads it from Triton, which tolerates a model it never loaded).
    canary = str(int(primary) + 1000)
    table = store.write(RoutingTable("flights_eta", registered_model.name,
                                     (Route(primary, "primary", 0.9), Route(canary, "canary", 0.1)), "canary"),
                        expected_version=None, by="test_console", reason="a canary to roll back")
    client = _airflow_client(settings)
    client.wait_for_dag("model_lifecycle")
    try:
        page.goto(f"{base}/atelier/usecases/flights_eta/rollouts")
        assert f"v{canary}" in page.locator("#traffic-split").inner_text()
        page.goto(f"{base}/atelier/usecases/flights_eta/actions")
        page.fill("#rollback-why", "browser test: the canary looks wrong")
        page.get_by_role("button", name="Review rollback").click()
        page.wait_for_selector("#confirm")
        _shot(page, "06-confirm-rollback")
        conf = json.loads(page.locator("pre").inner_text())
        assert conf == {"action": "rollback", "usecase": "flights_eta", "version": None, "stage": None,
                        "why": "browser test: the canary looks wrong"}
        page.click("#confirm")
        link = page.wait_for_selector("#run-link")
        _shot(page, "07-rollback-started")
        run_id = re.search(r"/dags/model_lifecycle/runs/(.+)$", link.get_attribute("href")).group(1)
        run_id = urllib.request.unquote(run_id)
        result = client.wait_for_run("model_lifecycle", run_id, timeout_s=600)
        assert result.state == "success", result.failed_tasks
        run = client._request("GET", f"/api/v2/dags/model_lifecycle/dagRuns/{urllib.request.quote(run_id, safe='')}")
        assert run["triggering_user_name"] == "admin"
        after = store.read("flights_eta")
        assert after.version > table.version
        assert [(r.version, r.role, r.weight) for r in after.routes] == [(primary, "primary", 1.0)]
        assert after.updated_by.startswith("admin via model_lifecycle/")
        page.goto(f"{base}/atelier/usecases/flights_eta/rollouts")
        assert f"v{canary}" not in page.locator("#traffic-split").inner_text()
        page.goto(f"{base}/atelier/usecases/flights_eta/audit")
        assert "roll flights_eta back" in page.locator("#console-actions").inner_text()
        _shot(page, "08-audit")
    finally:
        current = store.read("flights_eta")
        if saved is not None:
            store.write(saved, expected_version=None, by="test_console", reason="restore the table before the test")
        elif current is not None:
            import shutil

            shutil.rmtree(store.current_path("flights_eta").parent)


def test_a_tampered_confirmation_is_refused(page, base):
    page.goto(f"{base}/atelier/usecases/flights_eta/actions")
    page.fill("#rollback-why", "checking the confirmation")
    page.get_by_role("button", name="Review rollback").click()
    page.wait_for_selector("#confirm")
    page.evaluate("document.querySelector('input[name=why]').value = 'something else'")
    with page.expect_response(lambda r: r.url.endswith("/run")) as answer:
        page.click("#confirm")
    assert answer.value.status == 403
    assert "does not match" in page.content()


def test_move_a_stage_from_the_console(page, base, settings, registered_model):
    """Actions -> Move -> confirmation -> a model_lifecycle run as `admin` -> the version is archived, audited.

    The version moved is a second registry version of the fixture's run, made for this test in `evaluation`
    (so no other test's champion or challenger moves)."""
    from pipelines.cli import _airflow_client
    from pipelines.lifecycle.registry import audit_trail
    from pipelines.models.registry import BUNDLE_ARTIFACT_PATH, STAGE_TAG, client

    c = client(settings)
    version = c.create_model_version(registered_model.name, f"runs:/{registered_model.run_id}/{BUNDLE_ARTIFACT_PATH}",
                                     run_id=registered_model.run_id, tags={STAGE_TAG: "evaluation"}).version
    page.goto(f"{base}/atelier/usecases/flights_eta/actions")
    page.select_option("#move-version", str(version))
    page.select_option("#move-stage", "archived")
    page.fill("#move-why", "browser test: superseded")
    page.get_by_role("button", name="Review stage move").click()
    page.wait_for_selector("#confirm")
    page.click("#confirm")
    link = page.wait_for_selector("#run-link")
    run_id = urllib.request.unquote(re.search(r"/runs/(.+)$", link.get_attribute("href")).group(1))
    result = _airflow_client(settings).wait_for_run("model_lifecycle", run_id, timeout_s=600)
    assert result.state == "success", result.failed_tasks
    mv = c.get_model_version(registered_model.name, version)
    assert mv.tags[STAGE_TAG] == "archived"
    last = audit_trail(dict(mv.tags))[-1]
    assert (last["from"], last["to"], last["why"]) == ("evaluation", "archived", "browser test: superseded")
    assert last["by"] == f"admin via model_lifecycle/{run_id}"
    page.goto(f"{base}/atelier/usecases/flights_eta/models")
    row = page.locator("tbody tr", has=page.locator(f"th:text-is('v{version}')"))
    assert "archived" in row.inner_text()
    _shot(page, "09-moved")
