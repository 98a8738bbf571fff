"""A search run's candidate grid in the dashboard: a cell per candidate, pruned ones greyed
out, the chosen one marked, and the compute spent against a single run's."""

from __future__ import annotations

import asyncio
import threading

from dashboard_actions import open_dashboard
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
                "red circle", candidates=4, search=SearchSettings("prune"), steps=8,
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
