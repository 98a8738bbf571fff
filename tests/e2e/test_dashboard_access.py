"""Accessible basics of the dashboard: labelled controls, keyboard use, readable contrast; and
a server that asks for an API token."""

from __future__ import annotations

import re
from pathlib import Path

from builtin_shapes import load_shapes
from dashboard_actions import open_dashboard, start_run, wait_for_checks, wait_for_image
from playwright.sync_api import Page, expect

from stepwatch.server.config import ServerConfig
from stepwatch.server.harness import ServerThread

# Every visible control with its accessible name; empty names are what the test looks for.
UNNAMED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter(el => el.offsetParent !== null)
    .filter(el => !(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim()))
    .map(el => el.outerHTML)"""

# WCAG 2 contrast of each element's text against the first opaque background behind it.
LOW_CONTRAST = """selectors => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => v / 255)
    .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const poor = [];
  for (const selector of selectors) {
    for (const el of document.querySelectorAll(selector)) {
      const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5) poor.push(`${selector}: ${ratio.toFixed(2)}`);
    }
  }
  return poor;
}"""
TEXT = ["body", ".muted", ".help", "label", "button", ".badge", "#connection", "figcaption", "a"]


def test_controls_are_labelled_usable_by_keyboard_and_readable(
    page: Page, server: ServerThread
) -> None:
    open_dashboard(page, server.http)
    page.locator("summary", has_text="More settings").click()
    assert page.evaluate(UNNAMED_CONTROLS) == []
    for scheme in ("dark", "light"):
        page.emulate_media(color_scheme=scheme)
        assert page.evaluate(LOW_CONTRAST, TEXT) == [], scheme

    # Words are added from the keyboard, and Enter in the form starts the run.
    page.get_by_role("button", name="Add “blue” to the prompt").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("blue circle")
    page.get_by_label("Steps", exact=True).fill("1000")
    page.get_by_label("Check every (steps)").fill("10")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#/runs/"))
    wait_for_checks(page, 1)
    assert page.evaluate(UNNAMED_CONTROLS) == []
    assert page.evaluate(LOW_CONTRAST, [*TEXT, ".progress-text", ".frame span"]) == []
    page.get_by_role("button", name="Abort").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#run-state")).to_have_text("stopped")


def test_a_server_with_an_api_token_asks_for_it_once(page: Page, tmp_path: Path) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path, token="s3cret-token")
    with ServerThread(config, load_shapes) as server:
        page.goto(f"{server.http}/#/")
        status = page.locator("#connection")
        expect(status).to_contain_text("This server needs an API token")
        page.get_by_label("This server needs an API token:").fill("wrong")
        page.get_by_role("button", name="Connect").click()
        expect(status).to_contain_text("This server needs an API token")
        page.get_by_label("This server needs an API token:").fill("s3cret-token")
        page.get_by_role("button", name="Connect").click()
        expect(status).to_have_text(re.compile("Connected"))
        # The HTTP API gets the token too: the run appears in the history with its image.
        run_id = start_run(page, server.http, steps=30, check_interval=5, early_stop=False)
        expect(page.locator("#run-state")).to_have_text("completed")
        page.goto(f"{server.http}/#/")
        wait_for_image(page, f'.history-list li[data-run-id="{run_id}"] img')
