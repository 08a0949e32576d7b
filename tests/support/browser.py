"""Playwright helpers for the web UI tests: Debian's Chromium, a page per viewport and language, and the checks
that say the page is usable (input editable, Stop off, the other buttons on, no error badge)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.stack import ROOT

# As `./launch.sh test` finds it: CHROMIUM (a name on PATH or a path), else `chromium` on PATH.
CHROMIUM = shutil.which(os.environ.get("CHROMIUM", "chromium")) or os.environ.get("CHROMIUM", "chromium")
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
BOTS = "#chat .bot-row"
THUMBNAILS = '#input [aria-label="File thumbnail"]'
ARTIFACTS = ROOT / "test-artifacts"  # screenshots


def launch_browser():
    """A context manager yielding a headless Chromium (skips the test when Chromium is not installed)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    class _Browser:
        def __enter__(self):
            self._p = sync_playwright().start()
            self.browser = self._p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            return self.browser

        def __exit__(self, *exc):
            self.browser.close()
            self._p.stop()

    return _Browser()


def open_page(browser, url: str, viewport=DESKTOP, locale: str = "en-US"):
    phone = viewport["width"] < 768
    context = browser.new_context(viewport=viewport, locale=locale, is_mobile=phone, has_touch=phone)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#input textarea").wait_for(timeout=60_000)
    page.locator("#model-select input").wait_for(state="attached", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#model-select input')?.value", timeout=30_000)
    return page


def wait_answered(page, answers: int, timeout_s: float = 60) -> None:
    """The chat shows `answers` bot messages and is idle again. Right after Enter the page may not be locked yet, so
    idleness alone could be the moment before the turn began."""
    page.wait_for_function(f"n => document.querySelectorAll('{BOTS}').length >= n", arg=answers,
                           timeout=timeout_s * 1000)
    wait_idle(page, timeout_s)


def wait_idle(page, timeout_s: float = 60) -> None:
    """The answer is over when the input box is editable again and Stop is off."""
    page.locator("#input textarea:not([disabled])").wait_for(timeout=timeout_s * 1000)
    page.locator("#stop-btn:disabled").wait_for(timeout=timeout_s * 1000)


def assert_usable(page) -> None:
    """Nothing is left locked or in an error state."""
    wait_idle(page, 15)
    for button in ("#regen-btn", "#undo-btn", "#clear-btn"):
        assert page.locator(button).is_enabled(), f"{button} left disabled"
    assert page.locator("#stop-btn").is_disabled()
    # a status tracker shows an error badge unless it is hidden (a hidden one may still hold the word)
    badges = page.locator("#chat [data-testid=status-tracker]:not(.hide) .error, "
                          "#input [data-testid=status-tracker]:not(.hide) .error")
    assert badges.count() == 0, f"an error badge is shown: {badges.first.evaluate('e => e.outerHTML')[:600]}"


def send(page, text: str, files=()) -> None:
    if files:
        page.locator("#input input[type=file]").first.set_input_files([str(f) for f in files])
        # a file's thumbnail appears once its upload is done: wait for all of them, not only the first
        page.wait_for_function(f"n => document.querySelectorAll('{THUMBNAILS}').length >= n", arg=len(files),
                               timeout=30_000)
    page.locator("#input textarea").fill(text)
    page.locator("#input textarea").press("Enter")


def pick_model(page, name: str) -> None:
    phone = page.viewport_size["width"] < 768
    if phone:
        page.locator("#settings .toggle-button").click()
    page.locator("#model-select input").click()
    page.get_by_role("option", name=name).click()
    if phone:
        page.locator("#settings .toggle-button").click()


def last_bot_text(page) -> str:
    bots = page.locator(BOTS)
    return bots.last.inner_text() if bots.count() else ""


def toast_texts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()
