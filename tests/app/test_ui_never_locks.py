"""No action, in any state, leaves the page unusable (issue 12 item 1), in Chromium against the real stack.

Each case ends with the input editable, Stop off, Regenerate/Undo/Clear on and no error badge; problems are a
toast or a note in the chat.
"""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from tests.support.browser import (BOTS, assert_usable, last_bot_text, open_page, pick_model, send, toast_texts,
                                   wait_idle)
from tests.support.stack import SCRIPTED, start_controller, start_worker
from tests.support.ui_process import start_ui
from tests.support.waiting import holds_for, settled, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture()
def page(browser, ui_stack):
    page = open_page(browser, ui_stack["url"])
    yield page
    page.context.close()


def test_whitespace_message_is_a_toast_and_leaves_the_page_usable(page):
    send(page, "   \n  ")
    page.locator(".toast-body").first.wait_for(timeout=10_000)
    assert any("Type a message" in t for t in toast_texts(page))
    assert_usable(page)
    pick_model(page, "internvl-fast")
    send(page, "now a real question")  # and the chat still works
    page.locator(BOTS).first.wait_for(timeout=30_000)
    wait_idle(page)
    assert "I see 0 images" in last_bot_text(page)


def test_regenerate_and_undo_on_an_empty_chat_leave_the_page_usable(page):
    page.locator("#regen-btn").click()
    page.locator(".toast-body").first.wait_for(timeout=10_000)
    assert any("no message to answer again" in t for t in toast_texts(page))
    assert_usable(page)
    page.locator("#undo-btn").click()
    holds_for(lambda: page.locator(BOTS).count() == 0, 0.5, "no message appears after Undo on an empty chat")
    assert_usable(page)
    assert page.locator(BOTS).count() == 0


def test_stop_before_the_first_token_and_while_streaming_unlocks_every_time(page, ui_stack):
    def slow_turns():
        lines = [json.loads(line) for f in ui_stack["conversations"].glob("*.jsonl") for line in f.read_text().splitlines()]
        return [t for t in lines if t["type"] == "turn" and t["model"] == "internvl-slow"]

    earlier = len(slow_turns())  # the UI stack is shared: other modules' turns on this model are in its log too
    pick_model(page, "internvl-slow")
    send(page, "scripted:hang=* wait for it")  # the worker sleeps 30 s before its first token
    page.locator("#stop-btn:enabled").wait_for(timeout=10_000)
    page.wait_for_timeout(500)  # the stimulus: Stop half a second into the worker's 30 s wait for its first token
    page.locator("#stop-btn").click()
    assert_usable(page)
    page.locator("#clear-btn").click()  # the unanswered message would be sent again with the next one
    for i in range(4):  # stopping again and again never ends in an error badge
        send(page, f"Tell me a long story {i}")
        page.wait_for_function(f"() => {{ const b = document.querySelectorAll('{BOTS}');"
                               " return b.length && b[b.length - 1].innerText.includes('word5'); }", timeout=30_000)
        page.locator("#stop-btn").click()
        assert_usable(page)
        stopped = settled(lambda: last_bot_text(page), 0.3, 10, "the stopped answer")  # one already on the wire
        # 40 words/s: a stream still running would add ~28 words in this window
        holds_for(lambda: last_bot_text(page) == stopped, 0.7, "the answer kept growing after Stop")

    # a turn is logged once its stream has closed
    wait_until(lambda: len(slow_turns()) >= earlier + 5, 10, "the five stopped turns logged", interval=0.2,
               detail=lambda: f"logged so far: {[(t['turn'], t['outcome']) for t in slow_turns()[earlier:]]}")
    assert [t["outcome"] for t in slow_turns()[earlier:]] == ["stopped"] * 5  # item 11: logged as stopped


def test_a_file_the_server_cannot_read_is_named_in_a_note(page, tmp_path):
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    pick_model(page, "internvl-fast")
    send(page, "what is this?", [broken])
    page.locator(BOTS).first.wait_for(timeout=30_000)
    assert_usable(page)
    note = last_bot_text(page)
    assert "holiday.png" in note and "1st message" in note, note


def test_worker_gone_and_controller_gone_are_notes_and_the_page_stays_usable(browser, demo_checkpoint, log_dir,
                                                                               tmp_path):
    controller = start_controller(log_dir, heartbeat_expiry_s=2.0)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="internvl-solo",
                          env={"SCRIPTED_TOKENS": "8", "SCRIPTED_RATE": "0"})
    ui = start_ui(controller.url, log_dir, tmp_path / "conversations")
    page = open_page(browser, ui.url)
    try:
        send(page, "hello")
        page.locator(BOTS).first.wait_for(timeout=30_000)
        wait_idle(page)

        worker.stop(signal.SIGKILL)
        wait_until(lambda: not httpx.get(controller.url + "/v1/models").json()["data"], 15,
                   "the controller dropping the killed worker", interval=0.2)
        # the status line above the chat says so, without reloading (the panel refreshes itself)
        page.locator("#status-line").filter(has_text="No model is served").wait_for(timeout=15_000)
        send(page, "are you there?")
        page.wait_for_function(f"() => document.querySelectorAll('{BOTS}').length >= 2", timeout=30_000)
        assert_usable(page)
        assert "start a worker" in last_bot_text(page).lower()

        controller.stop(signal.SIGKILL)
        send(page, "and now?")
        page.wait_for_function(f"() => document.querySelectorAll('{BOTS}').length >= 3", timeout=30_000)
        assert_usable(page)
        assert "the controller at" in last_bot_text(page) and "start the controller" in last_bot_text(page).lower()
        page.locator("#status-line").filter(has_text="controller is not reachable").wait_for(timeout=15_000)
    finally:
        page.context.close()
        ui.stop()
        worker.stop()
        controller.stop()
