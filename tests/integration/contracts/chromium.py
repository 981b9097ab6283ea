"""The real browser the console tests drive: Chromium through Playwright, on this closed
network and as root (the arguments a probe of this machine kind found it needs). A test
module without Chromium or Playwright is skipped, except on CI, which installs both."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("QDSPACE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def playwright_or_skip() -> Any:
    """Playwright's sync API; skips the calling test module (at import) without Chromium
    or Playwright, but not on CI."""
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip(
            f"no chromium at {CHROMIUM}: `apt-get install chromium` (CI installs it)",
            allow_module_level=True,
        )
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")


@contextmanager
def launched(sync_api: Any) -> Iterator[Any]:
    """A headless Chromium, closed at the end of the block."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
