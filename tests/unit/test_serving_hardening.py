"""Issue 14's holes in the prediction API closed so far, each with a test: weak or placeholder tokens, auth
off on a public bind, internal error text in /readyz (the lost half-open probe: test_serving_resilience.py)."""

from __future__ import annotations

import os
import secrets

import pytest

from pipelines.config import REPO_ROOT, load_settings
from serving.app import MIN_TOKEN_CHARS, create_app
from serving.server import check_bind, is_loopback, serve
from serving.service import PredictionService

GOOD_TOKEN = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    overrides = {"ATELIER__HOME": str(tmp / "home"), "ATELIER__ONLINE_STORE__SQLITE_PATH": str(tmp / "f.db"),
                 "ATELIER__API__PREDICTION_LOG_DIR": str(tmp / "log")}
    return load_settings("test", environ={**os.environ, **overrides})


def _api(settings, **changes):
    return settings.model_copy(update={"api": settings.api.model_copy(update=changes)})


# ---------------------------------------------------------------------------------------------- tokens


def _env_example_token() -> str:
    for line in (REPO_ROOT / "docker" / ".env.example").read_text().splitlines():
        if line.startswith("ATELIER_API_TOKEN="):
            return line.partition("=")[2].strip()
    raise AssertionError("docker/.env.example has no ATELIER_API_TOKEN line")


@pytest.mark.parametrize("token, expected", [
    ("", "is not set"),
    (_env_example_token(), "placeholder"),
    ("change-me-" + "x" * 40, "placeholder"),
    ("s3cret", "characters long"),
    ("a" * (MIN_TOKEN_CHARS - 1), "characters long"),
])
def test_weak_tokens_refuse_to_start_naming_the_setting(settings, token, expected):
    with pytest.raises(RuntimeError, match=expected) as err:
        create_app(settings, PredictionService(settings), token=token)
    assert "ATELIER_API_TOKEN" in str(err.value)


def test_random_tokens_of_the_test_generators_are_accepted(settings):
    # tests/integration and benchmarks generate secrets.token_urlsafe(16) or (24): 22 or 32 characters.
    for token in (secrets.token_urlsafe(16), secrets.token_urlsafe(24), secrets.token_hex(16)):
        create_app(settings, PredictionService(settings), token=token)


def test_token_is_checked_only_when_auth_is_on(settings):
    create_app(_api(settings, auth_required=False), PredictionService(settings), token="")


# ---------------------------------------------------------------------------------------------- bind


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("api.example", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_auth_off_on_a_public_bind_refuses_to_start(settings, monkeypatch):
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: ran.append(kw))
    open_api = _api(settings, auth_required=False)
    with pytest.raises(RuntimeError, match=r"api.auth_required is off.*0\.0\.0\.0.*insecure_no_auth_on_public_bind"):
        serve(open_api, host="0.0.0.0", port=18199)  # noqa: S104
    assert ran == []
    check_bind(open_api, "127.0.0.1")  # loopback: fine
    check_bind(settings, "0.0.0.0")  # noqa: S104 - auth on: fine
    check_bind(_api(settings, auth_required=False, insecure_no_auth_on_public_bind=True), "0.0.0.0")  # noqa: S104


def test_profiles_keep_starting():
    """The demo's local profile (auth off) binds loopback; cluster and test keep auth on."""
    for profile in ("local", "cluster", "test"):
        s = load_settings(profile, environ={})
        check_bind(s, s.api.host)


def test_readyz_names_a_missing_model_but_never_shows_internal_error_text(settings, monkeypatch, caplog):
    import asyncio

    import pipelines.models.registry as registry
    from serving.service import public_load_error

    svc = PredictionService(settings)
    rt = svc.runtime(None)
    leaks = {
        RuntimeError("open /srv/atelier/secrets/bundle.pkl: permission denied (pid 4242)"):
            "the model bundle could not be loaded (RuntimeError; details in the API log)",
        registry.RegistryUnavailable("MLflow at http://10.0.0.7:5000 is unreachable: ConnectError"):
            "the model registry is unreachable or failing (details in the API log)",
    }
    for exc, shown in leaks.items():
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(registry, "load_bundle", fail)
        with caplog.at_level("WARNING", logger="atelier.serving"):
            asyncio.run(svc._load_bundle(rt))
        _, details = svc.readiness()
        assert details[rt.name]["bundle_error"] == shown
        assert str(exc) in caplog.text  # the operator still gets the whole text, in the API's log
    missing = registry.ModelNotFound("registered model 'atelier_x' has no alias 'champion'; aliases: none")
    assert public_load_error(missing) == str(missing)  # the registry's own words: what to train or promote


def test_a_body_that_stalls_gets_408_in_time_while_other_clients_are_answered(settings):
    """A real uvicorn on a loopback port, at the default api.body_timeout_ms: a client that sends its headers
    and part of its body, then stalls, gets 408 with Retry-After and a closed connection; a client that
    sends its request meanwhile is answered."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    timeout_s = settings.api.body_timeout_ms / 1000
    svc = PredictionService(settings)
    app = create_app(settings, svc, token=GOOD_TOKEN)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        slow = socket.create_connection(("127.0.0.1", port), timeout=timeout_s + 10)
        started = time.monotonic()
        slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + GOOD_TOKEN.encode() + b"\r\nContent-Length: 400\r\n\r\n"
                     b'{"origin": "JFK", ')
        other = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # the stalled body holds nobody up
        assert other.status_code == 200
        reply = b""
        while chunk := slow.recv(65536):  # until the server closes the connection
            reply += chunk
        waited = time.monotonic() - started
        slow.close()
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
        assert b'"error":"body_timeout"' in payload
        assert timeout_s <= waited < timeout_s + 5  # it waited for the deadline, and not much beyond it
    finally:
        server.should_exit = True
        thread.join(10)
