"""What a person does on the dashboard, as the browser tests do it, and what they read off it.

The chart is a canvas; the page states what it drew in data attributes of ``#quality-chart``
(``data-checks``, ``data-steps``, ``data-threshold``), which is what these helpers read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

#: Where the tests leave screenshots for people to look at.
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
RUN_URL = re.compile(r"#/runs/([^/?#]+)$")


def open_dashboard(page: Page, base_url: str, route: str = "#/") -> None:
    """Load the dashboard and wait until it is connected."""
    page.goto(f"{base_url}/{route}")
    expect(page.locator("#connection")).to_have_text(re.compile("Connected"))


def start_run(
    page: Page,
    base_url: str,
    *,
    words: tuple[str, ...] = ("red", "circle"),
    steps: int,
    check_interval: int,
    early_stop: bool = False,
) -> str:
    """Fill in the form (the prompt from the vocabulary's words), start, return the run id."""
    open_dashboard(page, base_url)
    for word in words:
        page.get_by_role("button", name=f"Add “{word}” to the prompt").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(" ".join(words))
    page.get_by_label("Steps", exact=True).fill(str(steps))
    page.get_by_label("Check every (steps)").fill(str(check_interval))
    page.get_by_label("Stop early once quality holds").set_checked(early_stop)
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(RUN_URL)
    match = RUN_URL.search(page.url)
    assert match is not None
    return match.group(1)


def chart_checks(page: Page) -> int:
    return int(page.locator("#quality-chart").get_attribute("data-checks") or 0)


def chart_steps(page: Page) -> list[int]:
    text = page.locator("#quality-chart").get_attribute("data-steps") or ""
    return [int(step) for step in text.split(",") if step]


def wait_for_checks(page: Page, count: int) -> None:
    """Wait until the chart shows at least ``count`` checks."""
    page.wait_for_function(
        "count => Number(document.querySelector('#quality-chart')?.dataset.checks) >= count",
        arg=count,
    )


def stored_run(page: Page, base_url: str, run_id: str) -> dict[str, Any]:
    """The run as the server's HTTP API reports it."""
    response = page.request.get(f"{base_url}/api/runs/{run_id}")
    assert response.ok, response.status
    record: dict[str, Any] = response.json()
    return record


def wait_for_image(page: Page, selector: str) -> None:
    """Wait until the image at ``selector`` has a source and is decoded (a broken image, or
    one without a source yet, has no width)."""
    page.wait_for_function(
        "selector => { const image = document.querySelector(selector);"
        " return Boolean(image?.src) && image.complete && image.naturalWidth > 0; }",
        arg=selector,
    )
