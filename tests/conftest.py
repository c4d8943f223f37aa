"""Shared fixtures. Every test runs with the `test` profile (own ports, own home under .atelier/test)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ATELIER_PROFILE", "test")


@pytest.fixture(scope="session")
def settings():
    from pipelines.config import load_settings

    return load_settings("test")
