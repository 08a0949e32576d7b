"""The web UI in Debian's Chromium through Playwright: upload an image and a video, see a streamed answer, Stop a
long answer (slow scripted worker), Regenerate, and save screenshots (desktop and phone) to test-artifacts/."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.support.stack import ROOT
from tests.app.test_ui_client import EXAMPLES, ui_stack  # noqa: F401  (shared session fixture)

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def open_page(browser, url, width=1400, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#input textarea").wait_for(timeout=60_000)
    return page


def bot_text(page) -> str:
    bots = page.locator("#chat .message-row.bot-row, #chat [data-testid='bot']")
    return bots.last.inner_text() if bots.count() else ""


def wait_idle(page, timeout=120):
    """Streaming is over when the input box is editable again and Stop is disabled."""
    page.locator("#input textarea:not([disabled])").wait_for(timeout=timeout * 1000)
    page.locator("#stop-btn[disabled], #stop-btn:disabled").wait_for(timeout=timeout * 1000)


def send(page, text, files=()):
    if files:
        page.locator("#input input[type=file]").first.set_input_files([str(f) for f in files])
        page.locator("#input .thumbnail-item, #input .thumbnail-image").first.wait_for(timeout=30_000)
    page.locator("#input textarea").fill(text)
    page.locator("#input textarea").press("Enter")


def test_image_and_video_chat_streams_stop_regenerate_and_screenshots(browser, ui_stack):  # noqa: F811
    url, controller, _ = ui_stack
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, url)
    page.locator("#random-banner").wait_for(state="visible", timeout=30_000)
    assert "random weights" in page.locator("#random-banner").inner_text()

    # Greedy decoding: the random model then answers the same every run (sampling could end it at once).
    page.locator("#temperature input[type=number]").fill("0")
    page.locator("#temperature input[type=number]").press("Enter")
    send(page, "What do you see in <i>these</i>?", [EXAMPLES / "landscape.jpg", EXAMPLES / "bouncing_ball.mp4"])
    page.locator("#stop-btn:not([disabled])").wait_for(timeout=30_000)  # locked while streaming
    page.locator("#input textarea[disabled]").wait_for(timeout=10_000)
    page.wait_for_function("() => document.querySelectorAll('#chat .bot-row, #chat [data-testid=bot]').length > 0",
                           timeout=120_000)
    wait_idle(page)
    answer = bot_text(page)
    page.screenshot(path=str(ARTIFACTS / "web-ui-desktop.png"))
    assert answer.strip() and "Could not answer" not in answer
    assert "<i>these</i>" in page.locator("#chat").inner_text()  # user HTML shown as text
    assert page.locator("#chat img").count() >= 1 and page.locator("#chat video").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "web-ui-desktop.png"))

    # Stop a long answer from the slow scripted worker: the worker must see the abort.
    page.locator("#model-select input").click()
    page.get_by_role("option", name="internvl-scripted").click()
    answers_before = page.locator("#chat .bot-row, #chat [data-testid=bot]").count()
    send(page, "Tell me a long story")
    page.wait_for_function("n => { const b = document.querySelectorAll('#chat .bot-row, #chat [data-testid=bot]');"
                           " return b.length > n && b[b.length - 1].innerText.split(' ').length > 8; }",
                           arg=answers_before, timeout=60_000)
    page.locator("#stop-btn").click()
    wait_idle(page, timeout=15)
    time.sleep(0.5)  # an update already on the wire when Stop was pressed may still land
    stopped = bot_text(page)
    time.sleep(1.5)  # the scripted worker streams 40 words/s: a stream still running would add ~60 words
    assert bot_text(page) == stopped, "the answer kept growing after Stop"
    assert len(stopped.split()) < 200
    deadline = time.monotonic() + 10
    while sum(w["in_flight"] for w in httpx.get(controller + "/workers").json()["workers"]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(w["in_flight"] for w in httpx.get(controller + "/workers").json()["workers"]) == 0

    # Regenerate answers the same question again (and can be stopped again).
    page.locator("#regen-btn").click()
    page.locator("#stop-btn:not([disabled])").wait_for(timeout=15_000)
    page.wait_for_function("() => { const b = document.querySelectorAll('#chat .bot-row, #chat [data-testid=bot]');"
                           " return b[b.length - 1].innerText.includes('word5'); }", timeout=60_000)
    page.locator("#stop-btn").click()
    wait_idle(page, timeout=15)
    page.screenshot(path=str(ARTIFACTS / "web-ui-after-stop.png"))

    phone = open_page(browser, url, 390, 844)
    phone.wait_for_timeout(1500)
    phone.screenshot(path=str(ARTIFACTS / "web-ui-phone.png"))
