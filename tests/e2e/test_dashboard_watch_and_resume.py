"""Watching a run from a second page, and a page that reloads or loses the server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
from builtin_shapes import load_shapes
from dashboard_actions import (
    OUTPUT,
    chart_checks,
    chart_steps,
    open_dashboard,
    start_run,
    stored_run,
    wait_for_checks,
)
from playwright.sync_api import Browser, Page, WebSocket, expect

from stepwatch.server.config import ServerConfig
from stepwatch.server.harness import ServerThread


def test_a_second_page_watches_the_same_checks(
    page: Page, browser: Browser, server: ServerThread
) -> None:
    run_id = start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 2)

    # Someone opens the run's link in a browser of their own: a watcher, not the owner.
    watcher_context = browser.new_context(viewport={"width": 390, "height": 844})
    watcher = watcher_context.new_page()
    try:
        # They find it among the live runs; its page has a link they can share.
        open_dashboard(watcher, server.http)
        watcher.locator(f'.live-list a[href="#/runs/{run_id}"]').click()
        assert watcher.url == f"{server.http}/#/runs/{run_id}"
        expect(watcher.locator("#run-title")).to_have_text("red circle")
        expect(watcher.locator("#steer-readonly")).to_contain_text("You are watching this run")
        expect(watcher.get_by_role("button", name="Stop and keep image")).to_have_count(0)
        wait_for_checks(watcher, chart_checks(page) + 1)
        expect(watcher.locator("#filmstrip img")).not_to_have_count(0)

        page.get_by_role("button", name="Stop and keep image").click()
        expect(watcher.locator("#run-state")).to_have_text("stopped")
        expect(watcher.locator("#final-image")).to_be_visible()
        expect(page.locator("#run-state")).to_have_text("stopped")
        history = [entry["step"] for entry in stored_run(page, server.http, run_id)["history"]]
        assert chart_steps(watcher) == chart_steps(page) == history
        # At phone width nothing sticks out sideways.
        assert watcher.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        OUTPUT.mkdir(exist_ok=True)
        watcher.screenshot(path=OUTPUT / "dashboard-watcher-phone.png", full_page=True)
    finally:
        watcher_context.close()


def test_a_reloaded_page_resumes_and_keeps_control(page: Page, server: ServerThread) -> None:
    run_id = start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 3)
    before = chart_steps(page)

    page.reload()
    expect(page.locator("#connection")).to_have_text(re.compile("Connected"))
    wait_for_checks(page, len(before) + 1)
    assert chart_steps(page)[: len(before)] == before
    expect(page.locator("#run-state")).to_have_text("running")

    # The control token survived the reload: this tab still steers the run.
    page.get_by_label("Threshold", exact=True).fill("0.95")
    expect(page.locator("#steer-ack")).to_have_text(re.compile(r"→ 0\.95, applied from step"))
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("#run-state")).to_have_text("stopped")
    expect(page.locator("#run-image")).to_contain_text("No final image")
    assert stored_run(page, server.http, run_id)["image_url"] is None


def test_a_dropped_connection_resumes_from_the_last_event_seen(
    page: Page, server: ServerThread
) -> None:
    hellos: list[dict[str, Any]] = []

    def watch_socket(socket: WebSocket) -> None:
        def sent(payload: bytes | str) -> None:
            frame = msgpack.unpackb(payload) if isinstance(payload, bytes) else {}
            if frame.get("type") == "hello":
                hellos.append(frame)

        socket.on("framesent", sent)

    page.on("websocket", watch_socket)
    run_id = start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 2)

    server.drop_connections()
    expect(page.locator("#connection")).to_contain_text("Disconnected from the server")
    expect(page.locator("#connection")).to_have_text(re.compile("Connected"))
    before = chart_checks(page)
    wait_for_checks(page, before + 2)
    page.get_by_role("button", name="Stop and keep image").click()
    expect(page.locator("#run-state")).to_have_text("stopped")

    # The second hello asked for the run from the last event the page had seen, and the chart
    # has every check once, none missed while the connection was down.
    resumed = hellos[1]["resume"]
    assert [point["run_id"] for point in resumed] == [run_id]
    assert resumed[0]["after_seq"] > 0
    history = [entry["step"] for entry in stored_run(page, server.http, run_id)["history"]]
    assert chart_steps(page) == history == list(range(5, 5 * len(history) + 1, 5))


def test_the_page_says_when_the_server_is_gone_and_reconnects(page: Page, tmp_path: Path) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path)
    with ServerThread(config, load_shapes) as first:
        run_id = start_run(page, first.http, steps=1000, check_interval=5)
        wait_for_checks(page, 1)
        port = first.port
    # The server shut down: the run ended with it, and the page says the connection is gone.
    expect(page.locator("#run-state")).to_have_text("server shut down")
    status = page.locator("#connection")
    expect(status).to_contain_text("Disconnected from the server")
    expect(status).to_contain_text("Reconnecting in")
    page.goto(f"{first.http}/#/")
    start = page.get_by_role("button", name="Start run")
    expect(start).to_be_disabled()

    # Back on the same address, the page reconnects by itself; the run is in the history.
    with ServerThread(config, load_shapes, port=port):
        expect(status).to_have_text(re.compile("Connected"))
        expect(start).to_be_enabled()
        card = page.locator(f'.history-list li[data-run-id="{run_id}"]')
        expect(card).to_contain_text("server shut down")
        expect(card.locator(".sparkline polyline")).to_have_count(1)
        # Its page shows what the store kept: the state, the checks and no live controls.
        card.get_by_role("link").click()
        expect(page.locator("#run-state")).to_have_text("server shut down")
        wait_for_checks(page, 1)
        expect(page.locator("#steer-readonly")).to_have_text(
            "The run has finished; there is nothing left to steer."
        )
        expect(page.get_by_role("button", name="Stop and keep image")).to_have_count(0)
