"""A run started with input images shows them beside its preview: an image-to-image run's init
image, uploaded and started by the Python client, appears on its page in real Chromium."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dashboard_actions import open_dashboard
from playwright.sync_api import Page, expect

from stepwatch.client import connect
from stepwatch.server.config import ServerConfig
from stepwatch.server.engine.model import describe_pipeline
from stepwatch.server.harness import ServerThread

# The server tests' tiny random-weight pipelines (built offline in a second).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from tiny_image_models import make_img2img_pipeline, picture  # noqa: E402


@pytest.fixture(scope="module")
def image_server(
    dashboard_built: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    model = describe_pipeline("img2img", make_img2img_pipeline(seed=3))
    config = ServerConfig(port=0, data_dir=tmp_path_factory.mktemp("e2e-inputs"))
    with ServerThread(config, lambda c: [model]) as running:
        yield running


async def run_with_an_init_image(url: str) -> tuple[str, str]:
    async with connect(url) as session:
        upload = await session.upload(picture((48, 32)))
        run = await session.generate(
            "red circle", image=upload.id, strength=0.5, steps=8, check_interval=2
        )
        await run.result()
        return run.run_id, upload.id


def test_a_run_page_shows_the_init_image_beside_the_preview(
    image_server: ServerThread, page: Page
) -> None:
    # Playwright's sync API holds this thread's event loop: the client runs in a thread of its own.
    with ThreadPoolExecutor(1) as worker:
        run_id, upload_id = worker.submit(
            asyncio.run, run_with_an_init_image(image_server.url)
        ).result()
    open_dashboard(page, image_server.http, f"#/runs/{run_id}")
    shown = page.locator("#run-inputs #input-image")
    expect(shown).to_be_visible()
    expect(shown).to_have_attribute("src", f"/api/uploads/{upload_id}")
    expect(page.locator("#run-inputs figcaption")).to_have_text("Init image")
    # The image really loaded: the uploaded 48×32 picture, not a broken link.
    page.wait_for_function(
        "() => document.querySelector('#input-image').naturalWidth === 48", timeout=20_000
    )
    expect(page.locator("#final-image")).to_be_visible()
