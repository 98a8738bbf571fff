"""The dashboard in a real browser: a real stepwatch server on a loopback port, real Chromium.

Chromium is the Debian package at ``/usr/bin/chromium`` (``make test`` installs it when it can);
Playwright drives it and never downloads a browser of its own.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from pathlib import Path

import pytest
from builtin_shapes import load_shapes
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from stepwatch.server.config import ServerConfig
from stepwatch.server.harness import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: How long a page may take to show what a test waits for (runs share two busy cores).
WAIT_MS = 45_000
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="session")
def dashboard_built() -> None:
    """The dashboard must have been built (``make`` does it) and be found as package data."""
    dist = importlib.resources.files("stepwatch.client") / "dashboard" / "dist"
    assert (dist / "index.html").is_file(), (
        "the dashboard is not built: run `make client/dashboard/dist/index.html` "
        "(npm ci + npm run build in client/dashboard)"
    )


# Module scope: Playwright's sync API holds an asyncio loop of its own in the main thread while
# it runs, which the anyio tests of other folders must not find there.
@pytest.fixture(scope="module")
def server(
    dashboard_built: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("e2e-data"))
    with ServerThread(config, load_shapes) as running:
        yield running


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: apt-get install chromium (make test does)"
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own storage) with one page, at laptop size. The test fails
    if the dashboard's code throws anywhere in the context."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    thrown: list[str] = []
    context.on("weberror", lambda error: thrown.append(str(error.error)))
    page = context.new_page()
    yield page
    context.close()
    assert thrown == [], thrown
