"""The web UI in Debian's Chromium through Playwright: upload an image and a video, see a streamed answer, Stop a
long answer (slow scripted worker), Regenerate, and save screenshots (desktop and phone) to test-artifacts/."""

from __future__ import annotations

import httpx
import pytest

from tests.support.browser import (ARTIFACTS, BOTS, PHONE, last_bot_text, open_page, pick_model, send, wait_answered,
                                   wait_idle)
from tests.support.stack import EXAMPLES
from tests.support.waiting import holds_for, settled, wait_until

pytestmark = pytest.mark.browser


def test_image_and_video_chat_streams_stop_regenerate_and_screenshots(browser, demo_ui_stack):
    url, controller = demo_ui_stack["url"], demo_ui_stack["controller"]
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, url)
    page.locator("#status-line").wait_for(state="visible", timeout=30_000)
    assert "random weights" in page.locator("#status-line").inner_text()

    # Greedy decoding: the random model then answers the same every run (sampling could end it at once).
    page.locator("#temperature input[type=number]").fill("0")
    page.locator("#temperature input[type=number]").press("Enter")
    send(page, "What do you see in <i>these</i>?", [EXAMPLES / "landscape.jpg", EXAMPLES / "bouncing_ball.mp4"])
    page.locator("#stop-btn:not([disabled])").wait_for(timeout=30_000)  # locked while streaming
    page.locator("#input textarea[disabled]").wait_for(timeout=10_000)
    wait_answered(page, 1, timeout_s=120)
    answer = last_bot_text(page)
    assert answer.strip() and "Could not answer" not in answer
    assert "<i>these</i>" in page.locator("#chat").inner_text()  # user HTML shown as text
    assert page.locator("#chat img").count() >= 1 and page.locator("#chat video").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "web-ui-desktop.png"))

    # Stop a long answer from the slow scripted worker: the worker must see the abort.
    pick_model(page, "internvl-scripted")
    answers_before = page.locator(BOTS).count()
    send(page, "Tell me a long story")
    page.wait_for_function(f"n => {{ const b = document.querySelectorAll('{BOTS}');"
                           " return b.length > n && b[b.length - 1].innerText.split(' ').length > 8; }",
                           arg=answers_before, timeout=60_000)
    page.locator("#stop-btn").click()
    wait_idle(page, timeout_s=15)
    stopped = settled(lambda: last_bot_text(page), 0.5, 10, "the stopped answer")  # an update on the wire may land
    # the scripted worker streams 40 words/s: a stream still running would add ~60 words in this window
    holds_for(lambda: last_bot_text(page) == stopped, 1.5, "the answer kept growing after Stop",
              detail=lambda: last_bot_text(page)[-300:])
    assert len(stopped.split()) < 200
    wait_until(lambda: not in_flight(controller), 10, "the worker ending the stopped answer")

    # Regenerate answers the same question again (and can be stopped again).
    page.locator("#regen-btn").click()
    page.locator("#stop-btn:not([disabled])").wait_for(timeout=15_000)
    page.wait_for_function(f"() => {{ const b = document.querySelectorAll('{BOTS}');"
                           " return b[b.length - 1].innerText.includes('word5'); }", timeout=60_000)
    page.locator("#stop-btn").click()
    wait_idle(page, timeout_s=15)
    page.screenshot(path=str(ARTIFACTS / "web-ui-after-stop.png"))

    phone = open_page(browser, url, PHONE)  # ready: the input box and the model list are there
    phone.screenshot(path=str(ARTIFACTS / "web-ui-phone.png"))


def in_flight(controller: str) -> int:
    return sum(w["in_flight"] for w in httpx.get(controller + "/workers").json()["workers"])
