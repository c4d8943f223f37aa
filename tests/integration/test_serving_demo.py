"""The demo's prediction step (``serving.demo.run_demo_requests``): starts the API under the Supervisor, calls it
for real flights, prints answers beside what really happened, and stops it again."""

from __future__ import annotations

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
    rows = [line for line in lines if line.strip().split(" ")[0][:2].isalnum() and "m [" in line]
    assert len(rows) == 5, text
    assert all(" triton " in row for row in rows), text
    assert any(line.strip().startswith("batch of 20:") for line in lines), text
    assert "curl -s http://127.0.0.1:" in text and "Authorization: Bearer $ATELIER_API_TOKEN" in text
    assert env["ATELIER_API_TOKEN"] not in text  # never the secret itself
    assert Supervisor(settings.run_dir).status(api_spec(settings)).state == "stopped"
