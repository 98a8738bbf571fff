"""A run started, watched and steered from the dashboard, as its owner sees it."""

from __future__ import annotations

import re

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
from playwright.sync_api import Page, expect

from stepwatch.server.harness import ServerThread


def test_start_watch_steer_and_stop_a_run(page: Page, server: ServerThread) -> None:
    run_id = start_run(page, server.http, steps=1000, check_interval=5)
    expect(page.locator("#run-title")).to_have_text("red circle")
    expect(page.locator("#run-state")).to_have_text("running")

    # A point per check, and a preview per check in the filmstrip.
    wait_for_checks(page, 2)
    seen = chart_checks(page)
    wait_for_checks(page, seen + 1)
    expect(page.locator("#filmstrip img")).not_to_have_count(0)
    wait_for_image(page, "#latest-preview")
    assert all(step % 5 == 0 for step in chart_steps(page))

    # The threshold moves: the run acknowledges the step it took effect, and the line follows.
    assert page.locator("#quality-chart").get_attribute("data-threshold") != "0.9"
    page.get_by_label("Threshold", exact=True).fill("0.9")
    ack = page.locator("#steer-ack")
    expect(ack).to_have_text(re.compile(r"Threshold 0\.\d+ → 0\.90, applied from step \d+\."))
    expect(page.locator("#quality-chart")).to_have_attribute("data-threshold", "0.9")
    expect(page.locator(".chart-key")).to_contain_text("threshold 0.90")
    owner_changed = re.compile(r"Threshold 0\.\d+ → 0\.90 set by the owner")
    expect(page.locator("#run-log")).to_contain_text(owner_changed)
    wait_for_checks(page, chart_checks(page) + 1)  # a check after the change, before the stop
    page.get_by_role("button", name="Stop and keep image").click()
    expect(page.locator("#run-state")).to_have_text("stopped")
    # Checks after the change report the new threshold (in the table, drawn once it is opened).
    page.locator("summary", has_text="Checks as a table").click()
    expect(page.locator(".checks-table td", has_text="0.90").first).to_be_attached()
    expect(ack).to_have_text(re.compile(r"Stop applied at step \d+"))
    expect(page.locator("#final-image")).to_be_visible()
    wait_for_image(page, "#final-image")
    expect(page.get_by_role("button", name="Stop and keep image")).to_be_disabled()

    # Every check the server stored is a point of the chart, in order.
    stored = stored_run(page, server.http, run_id)
    assert stored["reason"] == "stopped"
    assert chart_steps(page) == [entry["step"] for entry in stored["history"]]

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "dashboard-finished-run.png", full_page=True)


def test_the_owners_cfg_holds_and_the_dashboard_says_automatic_cfg_is_paused(
    page: Page, server: ServerThread
) -> None:
    start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 1)
    note = page.locator("#steer-cfg-note")
    expect(note).to_contain_text("The policy may raise CFG")
    page.get_by_label("CFG", exact=True).fill("2.5")
    page.get_by_role("button", name="Apply CFG").click()
    ack = page.locator("#steer-ack")
    expect(ack).to_have_text(re.compile(r"CFG [\d.]+ → 2\.50?, applied from step \d+\."))
    expect(note).to_have_text(
        re.compile(r"Automatic CFG paused: you set CFG at step \d+; it holds for the rest")
    )
    page.get_by_role("button", name="Abort (no image)").click()
    expect(page.locator("#run-state")).to_have_attribute("data-state", "finished")


def test_a_refused_start_is_explained_at_its_field(page: Page, server: ServerThread) -> None:
    open_dashboard(page, server.http)
    page.get_by_label("Prompt", exact=True).fill("red dog")
    page.get_by_role("button", name="Start run").click()
    alert = page.locator(".start-form .form-error")
    expect(alert).to_contain_text("The model cannot read this prompt.")
    expect(alert).to_contain_text("dog")
    expect(alert.locator("code")).to_have_text("invalid_prompt")
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("aria-invalid", "true")
    assert "#/runs/" not in page.url


def test_a_link_to_an_unknown_run_says_so(page: Page, server: ServerThread) -> None:
    open_dashboard(page, server.http, "#/runs/no-such-run")
    expect(page.get_by_role("heading", name="Run not found")).to_be_visible()
    page.get_by_role("link", name="Back to the runs").click()
    expect(page.get_by_role("button", name="Start run")).to_be_visible()


def test_a_run_at_the_models_defaults_forms_its_image_and_ends_by_itself(
    page: Page, server: ServerThread
) -> None:
    run_id = start_run(
        page,
        server.http,
        words=("large", "blue", "triangle", "light"),
        steps=40,
        check_interval=4,
        early_stop=True,
    )
    state = page.locator("#run-state")
    expect(state).to_have_attribute("data-state", "finished")
    wait_for_image(page, "#final-image")
    stored = stored_run(page, server.http, run_id)
    assert stored["reason"] in ("early_stop", "completed")
    expect(state).to_have_attribute("data-reason", stored["reason"])
    history = [entry["step"] for entry in stored["history"]]
    assert chart_steps(page) == history == list(range(4, 4 * len(history) + 1, 4))
    expect(page.locator("#filmstrip img")).to_have_count(len(history))
    # The model's adherence verifier passes the formed image.
    assert stored["final_score"] >= 0.5

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "dashboard-completed-run.png", full_page=True)
