"""Thinking in the browser (Chromium through Playwright): a real controller, a scripted worker on the demo
checkpoint built as InternVL3.5 whose answers think (`scripted:think`), one on the InternVL3 demo checkpoint, and
the UI process. The Think toggle shows only for the model that can think; the reasoning streams into a Thinking
section that folds above the answer once the answer starts; Stop while thinking says so; the conversation log keeps
reasoning and answer apart. Screenshot: test-artifacts/web-ui-thinking.png."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.browser import ARTIFACTS, open_page, pick_model, send, wait_idle
from tests.support.scripted_engine import THINKING_REASONING

pytestmark = pytest.mark.browser
REASONING = "".join(THINKING_REASONING)


def turns(conversations) -> list[dict]:
    return [json.loads(line) for f in sorted(conversations.glob("*.jsonl")) for line in f.read_text().splitlines()
            if json.loads(line)["type"] == "turn"]


def wait_turns(conversations, n: int, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := turns(conversations)) < n:
        assert time.monotonic() < deadline, f"{len(found)} logged turns, expected {n}"
        time.sleep(0.1)
    return found


def test_think_toggle_reasoning_folds_above_the_answer_and_is_logged_apart(browser, think_ui_stack):
    logged = len(turns(think_ui_stack["conversations"]))  # the stack is shared: other modules' turns are logged too
    page = open_page(browser, think_ui_stack["url"])
    toggle = page.locator("#think-toggle")
    pick_model(page, "internvl-plain")
    toggle.wait_for(state="hidden", timeout=10_000)
    pick_model(page, "internvl-think")
    toggle.wait_for(state="visible", timeout=10_000)
    toggle.locator("input").check()

    send(page, "scripted:think What is in the picture?")
    thought = page.locator("#chat .thought-group").last
    thought.wait_for(timeout=30_000)
    # while it thinks, the reasoning is shown as it grows, and no answer yet
    page.wait_for_function("() => document.querySelector('#chat .thought-group')?.innerText.includes('picture')",
                           timeout=10_000)
    wait_idle(page)
    assert thought.locator(".title").inner_text().startswith("Thinking")
    assert "s)" in thought.locator(".duration").inner_text()  # its duration, e.g. "(2.1s)"
    chat = page.locator("#chat").inner_text()
    assert "A sun over a house." in chat
    assert "shows a sun" not in chat, "the reasoning should be folded once the answer is there"
    assert "<think>" not in chat and "</think>" not in chat
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-ui-thinking.png"))  # folded
    thought.locator(".title").click()
    page.wait_for_function("() => document.querySelector('#chat').innerText.includes('shows a sun <b>and')",
                           timeout=5_000)  # unfolded: the reasoning, its HTML shown as text
    page.get_by_text("shows a sun <b>and", exact=False).wait_for(state="visible", timeout=5_000)
    page.wait_for_timeout(400)  # the unfolding animation, for the screenshot only
    page.screenshot(path=str(ARTIFACTS / "web-ui-thinking-open.png"))

    # copy the answer alone, or with its reasoning: as written, not as displayed (no HTML entities, no title noise)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator("#copy-answer-btn").click()
    page.wait_for_function("async () => (await navigator.clipboard.readText()) === 'A sun over a house.'",
                           timeout=5_000)
    page.locator("#copy-reasoning-btn").click()
    expected = f"Thinking:\n{REASONING.strip()}\n\nA sun over a house."
    page.wait_for_function("async (e) => (await navigator.clipboard.readText()) === e", arg=expected, timeout=5_000)

    record = wait_turns(think_ui_stack["conversations"], logged + 1)[-1]
    assert (record["reasoning"], record["answer"]) == (REASONING, "A sun over a house.")
    assert record["params"]["thinking"] is True and record["outcome"] == "ok"

    send(page, "scripted:think And now?")  # the earlier reasoning goes back apart from the earlier answer
    page.wait_for_function("() => document.querySelectorAll('#chat .thought-group').length >= 2", timeout=30_000)
    wait_idle(page)
    earlier = wait_turns(think_ui_stack["conversations"], logged + 2)[-1]["messages"][1]
    # as it was generated, its surrounding newlines too (app/messages.py display_part)
    assert earlier["role"] == "assistant" and earlier["reasoning"] == REASONING
    assert earlier["content"] == [{"type": "text", "text": "A sun over a house."}]
    page.context.close()


def test_stop_while_thinking_shows_the_thought_as_stopped(browser, think_ui_stack):
    page = open_page(browser, think_ui_stack["url"])
    pick_model(page, "internvl-think")
    page.locator("#think-toggle").wait_for(state="visible", timeout=10_000)
    page.locator("#think-toggle input").check()
    send(page, "scripted:think Think about it.")
    page.wait_for_function("() => document.querySelector('#chat .thought-group')?.innerText.includes('picture')",
                           timeout=30_000)
    page.locator("#stop-btn").click()
    wait_idle(page)
    page.wait_for_function("() => document.querySelector('#chat .thought-group .title')?.innerText"
                           ".includes('Thinking (stopped)')", timeout=10_000)
    assert "A sun over a house." not in page.locator("#chat").inner_text()
    page.context.close()
