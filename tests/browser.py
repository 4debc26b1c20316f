"""Helpers the browser tests share (plain functions; the Chromium fixture itself is in conftest)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings


def screenshot_dir() -> Path:
    path = Path(os.environ.get("LABELHUB_SCREENSHOTS", settings.BASE_DIR / "var" / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"{username}-password-123")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
