"""The filmstrip has every check's preview for every viewer (the live owner, a late watcher, a
reloaded tab, a run opened from the history), from the thumbnails the server keeps; a
300-check run stays light; and a run a killed server left behind says how it ended."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from builtin_shapes import load_shapes
from dashboard_actions import (
    OUTPUT,
    chart_checks,
    chart_steps,
    open_dashboard,
    start_run,
    stored_run,
    wait_for_checks,
    wait_for_image,
)
from playwright.sync_api import Browser, Page, expect

from stepwatch.server.config import ServerConfig
from stepwatch.server.harness import ServerThread
from stepwatch.server.store import INTERRUPTED

# How many frames of the strip show a decoded image, and how many frames there are, once every
# frame was scrolled into view (frames load their image only near the visible part).
LOADED_FRAMES = """async () => {
  const strip = document.querySelector('#filmstrip');
  for (let x = 0; x <= strip.scrollWidth; x += strip.clientWidth / 2) {
    strip.scrollLeft = x;
    await new Promise(r => setTimeout(r, 60));
  }
  const deadline = Date.now() + 20000;
  const count = () => [...strip.querySelectorAll('img')]
    .filter(img => img.complete && img.naturalWidth > 0).length;
  while (count() < strip.querySelectorAll('img').length && Date.now() < deadline)
    await new Promise(r => setTimeout(r, 100));
  const checks = Number(document.querySelector('#quality-chart').dataset.checks);
  return [count(), strip.querySelectorAll('li[data-step]').length, checks];
}"""


def number(value: float) -> str:
    """A setting as the dashboard writes it (whole numbers bare, others to two places)."""
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def every_frame_shown(page: Page, checks: int) -> None:
    """The strip has a frame per check (at least ``checks`` of a run that goes on), and each
    frame's image is loaded."""
    expect(page.locator("#filmstrip li[data-step]")).not_to_have_count(0)
    loaded, frames, charted = page.evaluate(LOADED_FRAMES)
    assert loaded == frames == charted >= checks


def test_every_viewer_sees_every_checks_preview(
    page: Page, browser: Browser, server: ServerThread
) -> None:
    run_id = start_run(page, server.http, steps=480, check_interval=5)
    wait_for_checks(page, 6)

    # A late watcher: its replay carried one preview; the rest come from the server's store.
    watcher_context = browser.new_context(viewport={"width": 1280, "height": 900})
    watcher = watcher_context.new_page()
    try:
        open_dashboard(watcher, server.http, f"#/runs/{run_id}")
        wait_for_checks(watcher, 6)
        seen = chart_checks(watcher)
        every_frame_shown(watcher, seen)
    finally:
        watcher_context.close()

    # The owner's tab, reloaded, shows every earlier preview too.
    page.reload()
    wait_for_checks(page, seen)
    seen = chart_checks(page)
    every_frame_shown(page, seen)
    page.get_by_role("button", name="Stop and keep image").click()
    expect(page.locator("#run-state")).to_have_text("stopped")
    steps = [entry["step"] for entry in stored_run(page, server.http, run_id)["history"]]

    # Opened from the history after the run: every check, every preview.
    open_dashboard(page, server.http)
    page.locator(f'.history-list li[data-run-id="{run_id}"] a').click()
    expect(page.locator("#run-state")).to_have_text("stopped")
    wait_for_checks(page, len(steps))
    assert chart_steps(page) == steps
    every_frame_shown(page, len(steps))


def test_a_300_check_run_stays_light_and_reachable(page: Page, server: ServerThread) -> None:
    start_run(page, server.http, steps=300, check_interval=1)
    expect(page.locator("#run-state")).to_have_attribute("data-state", "finished")
    wait_for_checks(page, 300)
    frames = page.locator("#filmstrip li[data-step]")
    expect(frames).to_have_count(300)
    # Only the frames near the visible part of the strip have loaded their image.
    assert page.locator("#filmstrip img[src]").count() < 60
    # The closed table of checks is not drawn; opened, it has a row per check.
    assert page.locator(".checks-table tbody tr").count() == 0
    assert page.evaluate("document.getElementsByTagName('*').length") < 4000
    page.locator("summary", has_text="Checks as a table").click()
    expect(page.locator(".checks-table tbody tr")).to_have_count(300)

    # The strip is one stop of the Tab key; the arrow keys move along it.
    assert page.locator('#filmstrip button[tabindex="0"]').count() == 1
    page.locator('#filmstrip button[tabindex="0"]').focus()
    page.keyboard.press("Home")
    expect(page.locator("#filmstrip button").first).to_be_focused()
    page.keyboard.press("ArrowRight")
    focused = page.locator("#filmstrip button").nth(1)
    expect(focused).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#run-image figcaption")).to_contain_text("Preview at step 2")
    page.keyboard.press("Tab")
    expect(page.locator("#filmstrip button:focus")).to_have_count(0)


@pytest.fixture
def killable_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``stepwatch serve`` on the built-in model, in a process of its own (to be killed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "stepwatch.client.cli", "serve", "--port", str(port)]
    command += ["--data", str(tmp_path)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("stepwatch: serving on http://"):
                break
        else:
            raise AssertionError(f"stepwatch serve exited with {process.wait()}")
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def test_a_run_the_killed_server_left_says_it_failed_and_keeps_its_checks(
    page: Page, tmp_path: Path, killable_server: tuple[subprocess.Popen[str], int]
) -> None:
    process, port = killable_server
    base = f"http://127.0.0.1:{port}"
    start_run(page, base, steps=1000, check_interval=5)
    wait_for_checks(page, 4)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    expect(page.locator("#connection")).to_contain_text("Disconnected from the server")
    seen = chart_checks(page)

    with ServerThread(ServerConfig(port=0, data_dir=tmp_path), load_shapes, port=port):
        expect(page.locator("#connection")).to_contain_text("Connected")
        state = page.locator("#run-state")
        expect(state).to_have_text("failed")
        expect(state).to_have_attribute("data-reason", "failed")
        expect(page.locator(".form-error")).to_contain_text(INTERRUPTED)
        assert chart_checks(page) >= seen
        every_frame_shown(page, chart_checks(page))
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=OUTPUT / "dashboard-after-a-crash.png", full_page=True)


def test_the_dashboard_shows_what_stepwatch_generate_saw(
    page: Page, server: ServerThread, tmp_path: Path
) -> None:
    out = tmp_path / "generated.png"
    socket_url = server.http.replace("http://", "ws://") + "/ws"
    command = [sys.executable, "-m", "stepwatch.client.cli", "generate", "large red circle"]
    command += ["--server", socket_url, "--steps", "40", "--check-interval", "4", "--seed", "11"]
    command += ["--json", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    run_id = events[0]["run_id"]
    checks = [event for event in events if event["type"] == "check"]
    finished = events[-1]
    assert finished["type"] == "finished" and checks

    # The same run opened from the history: the same steps, scores and decisions, a frame per
    # check with the same thumbnail, and the same final image.
    open_dashboard(page, server.http)
    page.locator(f'.history-list li[data-run-id="{run_id}"] a').click()
    expect(page.locator("#run-state")).to_have_attribute("data-reason", finished["reason"])
    wait_for_checks(page, len(checks))
    page.locator("summary", has_text="Checks as a table").click()
    rows = page.locator(".checks-table tbody tr")
    expect(rows).to_have_count(len(checks))
    decisions = {"continue": "continue", "raise_cfg": "CFG raised", "early_stop": "early stop"}
    assert [row.split("\t") for row in rows.all_inner_texts()] == [
        [str(c["step"]), f"{c['score']:.2f}", number(c["threshold"]), number(c["cfg"]),
         decisions[c["decision"]]]
        for c in checks
    ]  # fmt: skip
    every_frame_shown(page, len(checks))
    for check in checks:
        kept = page.request.get(f"{server.http}/api/runs/{run_id}/previews/{check['step']}")
        assert kept.body() == base64.b64decode(check["preview"]["data"])
    wait_for_image(page, "#final-image")
    shown = page.evaluate(
        "async () => { const r = await fetch(document.querySelector('#final-image').src);"
        " const bytes = new Uint8Array(await r.arrayBuffer());"
        " return btoa(String.fromCharCode(...bytes)); }"
    )
    assert base64.b64decode(shown) == out.read_bytes()
