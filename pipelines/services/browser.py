"""The headless browser the console's UI tests drive: Debian's chromium (Playwright drives it through its
``executable_path``; Playwright's own browser downloads are never used).

:func:`ensure_browser` finds it, or installs the Debian package when it can (root with apt-get), or stops
with the command to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pipelines.services.base import ServiceError

CANDIDATES = ("chromium", "chromium-browser")
PACKAGE = "chromium"


def find_browser() -> Path | None:
    override = os.environ.get("ATELIER_BROWSER")
    if override:
        return Path(override) if Path(override).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def ensure_browser(*, install: bool = True) -> Path:
    """The chromium executable; installed with apt-get when missing and we are root on Debian."""
    found = find_browser()
    if found:
        return found
    apt = shutil.which("apt-get")
    if not install or apt is None or os.geteuid() != 0:
        raise ServiceError(f"browser: chromium is missing (the UI tests drive it): apt-get install {PACKAGE}, "
                           "or set ATELIER_BROWSER to a Chromium executable")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", PACKAGE]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise ServiceError(f"browser: `{' '.join(argv[1:])}` failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-400:]}")
    found = find_browser()
    if found is None:
        raise ServiceError(f"browser: {PACKAGE} was installed but no chromium executable is on PATH")
    return found
