"""What a person trips over in the first seconds of a run, on a laptop and a phone, with the
keyboard and with axe-core; and what a user of other image tools expects to find."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dashboard_actions import (
    OUTPUT,
    RUN_URL,
    open_dashboard,
    start_run,
    stored_run,
    wait_for_checks,
    wait_for_image,
)
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from stepwatch.server.harness import ServerThread

AXE = Path(__file__).resolve().parents[2] / "client/dashboard/node_modules/axe-core/axe.min.js"


def axe_violations(page: Page) -> list[str]:
    """What axe-core finds on the page: ``rule (impact): the first offending element``."""
    page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [f"{v['id']} ({v['impact']}): {v['nodes'][0]['html'][:120]}" for v in found]


def test_a_queued_run_reads_right_and_another_tab_of_the_browser_steers_it(
    page: Page, server: ServerThread
) -> None:
    first = start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 1)
    queued = start_run(page, server.http, words=("blue", "square"), steps=40, check_interval=5)
    parameters = stored_run(page, server.http, queued)["parameters"]

    # The run waits: its page says so in words, with the settings the server stored for it.
    expect(page.locator("#run-title")).to_have_text("blue square")
    expect(page.locator("#run-state")).to_have_text("queued")
    progress = page.locator("#run-progress-text")
    expect(progress).to_have_text("Queued: 1 run ahead")
    expect(page.locator("#steer-threshold")).to_have_value(str(parameters["quality_threshold"]))
    expect(page.locator("#steer-cfg")).to_have_value(re.compile(rf"^{parameters['cfg']:g}"))
    expect(page.locator("#filmstrip")).to_contain_text("Previews appear here at every check")
    placeholder = page.locator("#run-log li").first
    expect(placeholder).to_contain_text("Nothing yet")
    # On one or two lines, not a word a line.
    assert placeholder.bounding_box()["height"] < 60  # type: ignore[index]

    # A second tab of the same browser steers the runs this browser started.
    other = page.context.new_page()
    open_dashboard(other, server.http, f"#/runs/{queued}")
    expect(other.locator("#steer-readonly")).to_have_count(0)
    other.get_by_role("button", name="Abort").click()
    expect(other.locator("#run-state")).to_have_text("stopped")
    expect(page.locator("#run-state")).to_have_text("stopped")
    open_dashboard(other, server.http, f"#/runs/{first}")
    other.get_by_role("button", name="Abort").click()
    expect(other.locator("#run-state")).to_have_text("stopped")


def test_the_run_page_is_within_reach_on_a_laptop_and_a_phone(
    page: Page, browser: Browser, server: ServerThread
) -> None:
    page.set_viewport_size({"width": 1440, "height": 900})
    open_dashboard(page, server.http)
    expect(page.get_by_role("button", name="Start run")).to_be_in_viewport()
    assert page.locator("h1").count() == 1

    phone_context = browser.new_context(viewport={"width": 390, "height": 844})
    phone = phone_context.new_page()
    try:
        open_dashboard(phone, server.http)
        for word in ("red", "circle"):
            phone.get_by_role("button", name=f"Add “{word}” to the prompt").click()
        phone.get_by_label("Steps", exact=True).fill("200")
        phone.get_by_label("Check every (steps)").fill("1")
        phone.get_by_label("Threshold", exact=True).fill("0.05")
        phone.get_by_label("No early stop before step").fill("150")
        phone.get_by_role("button", name="Start run").click()
        phone.wait_for_url(RUN_URL)
        # The run page opens at its top, not where the form's button was.
        expect(phone.locator("#run-title")).to_have_text("red circle")
        assert phone.evaluate("window.scrollY") == 0
        expect(phone.locator("#run-title")).to_be_in_viewport()
        expect(phone.locator(".run-meta")).to_contain_text("check every step")

        # An early stop that waits for min_steps says so.
        expect(phone.locator("#latest-reason")).to_contain_text("min_steps 150")
        # Aborting (no image) is the button that looks dangerous; keeping the image is not.
        abort = phone.get_by_role("button", name="Abort (no image)")
        keep = phone.get_by_role("button", name="Stop and keep image")
        expect(abort).to_have_class(re.compile(r"\bdanger\b"))
        expect(keep).not_to_have_class(re.compile(r"\bdanger\b"))
        keep.click()
        expect(phone.locator("#run-state")).to_have_text("stopped")
        expect(phone.locator("#steer-ack")).to_have_text(
            re.compile(r"Stop applied at step \d+; the run has finished after \d+ steps\.")
        )
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        OUTPUT.mkdir(exist_ok=True)
        phone.screenshot(path=OUTPUT / "dashboard-phone-stopped.png", full_page=True)
    finally:
        phone_context.close()


def test_axe_finds_nothing_on_the_home_and_run_pages(page: Page, server: ServerThread) -> None:
    start_run(page, server.http, steps=1000, check_interval=5)
    wait_for_checks(page, 3)
    expect(page.locator("#filmstrip img[src]")).not_to_have_count(0)
    assert axe_violations(page) == []
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("#run-state")).to_have_text("stopped")
    open_dashboard(page, server.http)
    expect(page.locator(".history-list li").first).to_be_visible()
    assert axe_violations(page) == []


# A stand-in for the browser's notifications (headless Chromium shows none), at its interface.
NOTIFICATIONS = """
window.notified = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.notified.push({title, body: options.body}); }
};
"""


def test_what_a_user_of_other_image_tools_expects(
    page: Page, server: ServerThread, tmp_path: Path
) -> None:
    page.context.add_init_script(NOTIFICATIONS)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    words = ("large", "green", "square", "light")
    run_id = start_run(page, server.http, words=words, steps=480, check_interval=10)
    wait_for_checks(page, 2)
    # The tab's title shows how far the run is, then how it ended, and a notification says so.
    expect(page).to_have_title(re.compile(r"^\d+% · large green square light · stepwatch$"))
    page.get_by_role("button", name="Stop and keep image").click()
    expect(page).to_have_title("stopped · large green square light · stepwatch")
    notified = page.evaluate("window.notified")
    assert len(notified) == 1 and notified[0]["title"] == "stepwatch: stopped"
    parameters = stored_run(page, server.http, run_id)["parameters"]

    # Copy the seed, or all the parameters as text.
    page.get_by_role("button", name="Copy seed").click()
    assert page.evaluate("navigator.clipboard.readText()") == str(parameters["seed"])
    page.get_by_role("button", name="Copy parameters").click()
    text = page.evaluate("navigator.clipboard.readText()")
    assert text.startswith("large green square light\n") and f"Seed: {parameters['seed']}" in text

    # The downloaded PNG carries the parameters as text chunks.
    wait_for_image(page, "#final-image")
    expect(page.locator("#download-png")).to_have_attribute("data-parameters", "true")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download PNG").click()
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    with Image.open(saved) as image:
        image.load()  # checks every chunk's CRC
        assert image.size == (parameters["width"], parameters["height"])
        assert image.text["parameters"] == text  # type: ignore[attr-defined]
        kept = json.loads(image.text["stepwatch"])  # type: ignore[attr-defined]
        assert kept == {"run_id": run_id, **parameters}

    # A larger view of the image, closed with Escape.
    page.get_by_role("button", name="Enlarge the run's final image").click()
    large = page.locator("#enlarged-image")
    expect(large).to_be_visible()
    assert large.bounding_box()["width"] > 500  # type: ignore[index]
    page.keyboard.press("Escape")
    expect(large).to_be_hidden()

    # Re-run with these settings: the form holds them, the seed included.
    page.get_by_role("link", name="Re-run with these settings").click()
    expect(page.locator("#rerun-note")).to_contain_text(run_id)
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("large green square light")
    expect(page.get_by_label("Seed", exact=True)).to_have_value(str(parameters["seed"]))
    expect(page.get_by_label("Steps", exact=True)).to_have_value("480")
    expect(page.get_by_label("Check every (steps)")).to_have_value("10")

    # The history is searched by the prompt's words, and a run deleted from it.
    card = page.locator(f'.history-list li[data-run-id="{run_id}"]')
    expect(card).to_be_visible()
    page.get_by_label("Search").fill("green square")
    expect(page.locator(".history-list li")).to_have_count(1)
    expect(card).to_be_visible()
    page.get_by_label("Search").fill("no such words")
    expect(page.locator(".history-list li")).to_have_count(0)
    expect(page.locator(".column-lists")).to_contain_text("No finished run’s prompt has")
    page.get_by_label("Search").fill("green square")
    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name="Delete the run").click()
    expect(card).to_have_count(0)
    assert page.request.get(f"{server.http}/api/runs/{run_id}").status == 404


# The longest run of pixels (CSS px) along the threshold's row of the chart, between two steps,
# with no pixel of the threshold's colour (its dashes leave gaps of 4 px).
THRESHOLD_GAP = """([threshold, fromStep, toStep, lastStep]) => {
  const box = document.querySelector('#quality-chart');
  const canvas = box.querySelector('canvas');
  const over = box.querySelector('.u-over').getBoundingClientRect();
  const at = canvas.getBoundingClientRect();
  const ratio = canvas.width / at.width;
  const rgb = getComputedStyle(box).getPropertyValue('--chart-threshold').trim();
  const probe = document.createElement('canvas').getContext('2d');
  probe.fillStyle = rgb;
  probe.fillRect(0, 0, 1, 1);
  const want = probe.getImageData(0, 0, 1, 1).data;
  const x = step => over.left - at.left + (step / lastStep) * over.width;
  const y = Math.round((over.top - at.top + (1 - threshold) * over.height) * ratio);
  const context = canvas.getContext('2d');
  let gap = 0, longest = 0;
  for (let px = Math.ceil(x(fromStep) + 2); px < x(toStep) - 2; px += 1) {
    let seen = false;
    for (const dy of [-1, 0, 1]) {
      const [r, g, b] = context.getImageData(Math.round(px * ratio), y + dy, 1, 1).data;
      seen ||= Math.abs(r - want[0]) + Math.abs(g - want[1]) + Math.abs(b - want[2]) < 90;
    }
    gap = seen ? 0 : gap + 1;
    longest = Math.max(longest, gap);
  }
  return longest;
}"""


def test_a_high_threshold_shows_through_the_marks_labels(page: Page, server: ServerThread) -> None:
    start_run(page, server.http, steps=480, check_interval=5)
    wait_for_checks(page, 2)
    page.get_by_label("Threshold", exact=True).fill("0.97")
    ack = page.locator("#steer-ack")
    expect(ack).to_have_text(re.compile(r"→ 0\.97, applied from step \d+"))
    set_at = int(re.findall(r"from step (\d+)", ack.inner_text())[0])
    wait_for_checks(page, 5)
    page.get_by_role("button", name="Stop and keep image").click()
    expect(ack).to_have_text(re.compile(r"Stop applied at step \d+; the run has finished"))
    stop_at, last = map(
        int, re.findall(r"step (\d+); the run has finished after (\d+)", ack.inner_text())[0]
    )
    # The owner's change is labelled "threshold 0.97" at the top of the plot, on the line's row.
    page.wait_for_timeout(500)  # the chart's last draw
    assert page.evaluate(THRESHOLD_GAP, [0.97, set_at, stop_at, last]) <= 8
