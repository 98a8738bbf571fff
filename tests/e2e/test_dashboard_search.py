"""A search run's candidate grid in the dashboard: a cell per candidate, pruned ones greyed
out, the chosen one marked, and the compute spent against a single run's."""

from __future__ import annotations

import asyncio
import re
import threading

from dashboard_actions import OUTPUT, open_dashboard, wait_for_checks
from playwright.sync_api import Page, expect

from stepwatch.client import Result, connect
from stepwatch.protocol import SearchSettings
from stepwatch.server.harness import ServerThread


def searched(url: str) -> Result:
    """Run a pruning search of four candidates with the Python client, on a thread of its own
    (Playwright's sync API holds this thread's event loop)."""
    results: list[Result] = []

    async def search() -> None:
        async with connect(url) as sw:
            run = await sw.generate(
                "red circle", candidates=4, search=SearchSettings("prune", prune_every=2), steps=16,
                check_interval=2, early_stop=False, seed=5, sampler="dpmpp_2m",
            )  # fmt: skip
            results.append(await run.result())

    worker = threading.Thread(target=lambda: asyncio.run(search()))
    worker.start()
    worker.join(60)
    [result] = results
    return result


def test_the_grid_shows_every_candidate_and_greys_the_pruned(
    page: Page, server: ServerThread
) -> None:
    result = searched(server.url)
    assert result.reason == "completed"
    open_dashboard(page, server.http, f"#/runs/{result.run_id}")
    grid = page.locator("#candidate-grid li")
    expect(grid).to_have_count(4)
    expect(page.locator("#candidate-grid li.pruned")).to_have_count(3)
    chosen = next(c.candidate for c in result.candidates if c.fate == "chosen")
    expect(page.locator(f'#candidate-grid li[data-candidate="{chosen}"]')).to_have_attribute(
        "data-fate", "chosen"
    )
    assert result.compute is not None
    expect(page.locator("#candidates-compute")).to_contain_text(
        f"{result.compute.denoiser_evaluations} denoiser evaluations"
    )
    # A pruned candidate is drawn faded.
    opacity = page.locator("#candidate-grid li.pruned").first.evaluate(
        "element => getComputedStyle(element).opacity"
    )
    assert float(opacity) < 1
    # The chart draws a line per candidate besides the run's own.
    expect(page.locator("#quality-chart")).to_have_attribute("data-curves", "4")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "dashboard-search-curves.png", full_page=True)


def started_search(url: str, **options: object) -> tuple[str, str]:
    """Start a long search with the Python client and leave it running; its id and token."""
    started: list[tuple[str, str]] = []

    async def start() -> None:
        async with connect(url) as sw:
            run = await sw.generate("red circle", **options)  # type: ignore[arg-type]
            started.append((run.run_id, run.control_token))

    worker = threading.Thread(target=lambda: asyncio.run(start()))
    worker.start()
    worker.join(60)
    [run] = started
    return run


def test_the_owner_stops_and_keeps_candidates_from_the_grid(
    page: Page, server: ServerThread
) -> None:
    run_id, token = started_search(
        server.url, candidates=4, search=SearchSettings("best_of_n"), steps=300,
        check_interval=2, early_stop=False, seed=5, preview_size=32,
    )  # fmt: skip
    open_dashboard(page, server.http)
    # This browser holds the token, as the tab that started the run would.
    page.evaluate("([key, token]) => localStorage.setItem(key, token)", [
        f"stepwatch.control.{run_id}", token,
    ])  # fmt: skip
    open_dashboard(page, server.http, f"#/runs/{run_id}")
    cell = page.locator("#candidate-grid li")
    expect(cell).to_have_count(4)
    page.locator('#candidate-grid li[data-candidate="1"] button[data-action="stop"]').click()
    expect(page.locator('#candidate-grid li[data-candidate="1"]')).to_have_class(
        re.compile(r"\bpruned\b")
    )
    expect(page.locator('#candidate-grid li[data-candidate="1"] button')).to_have_count(0)
    expect(page.locator("#candidate-grid li.pruned")).to_have_count(1)
    page.locator('#candidate-grid li[data-candidate="2"] button[data-action="keep"]').click()
    expect(page.locator("#candidate-grid li.pruned")).to_have_count(3)
    expect(page.locator("#candidate-grid button")).to_have_count(0)  # one live: nothing to do
    wait_for_checks(page, 8)
    page.get_by_role("button", name="Stop and keep image").click()
    kept = page.locator('#candidate-grid li[data-candidate="2"]')
    expect(kept).to_have_attribute("data-fate", "chosen")
    expect(kept).to_contain_text("kept by its owner")
    expect(page.locator('#candidate-grid li[data-candidate="1"]')).to_contain_text(
        "stopped by its owner"
    )
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "dashboard-search-controls.png", full_page=True)
