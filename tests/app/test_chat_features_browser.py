"""Chat features in Chromium: export a conversation (Markdown + JSON), import the JSON back (its image and its
folded reasoning included), and search the past chats by text. Stack: tests/app/conftest.py `think_ui_stack`."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.support.browser import assert_usable, open_page, pick_model, send, wait_answered, wait_idle

pytestmark = pytest.mark.browser


def chat_titles(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat-list label").all_inner_texts()]


def test_export_import_and_search(browser, think_ui_stack, tmp_path):
    page = open_page(browser, think_ui_stack["url"])
    pick_model(page, "internvl-think")
    page.locator("#think-toggle").wait_for(state="visible", timeout=10_000)
    page.locator("#think-toggle input").check()
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (220, 20, 20)).save(image)
    send(page, "scripted:think Exported question about giraffes", [image])
    wait_answered(page, 1)

    page.locator("#export-btn").click()
    links = page.locator("#exported a[download]")
    links.nth(1).wait_for(state="attached", timeout=15_000)
    hrefs = {link.get_attribute("download").rsplit(".", 1)[-1]: link.get_attribute("href") for link in links.all()}
    assert set(hrefs) == {"md", "json"}
    md = httpx.get(hrefs["md"], timeout=10).text
    assert "giraffes" in md and "![red.png](red.png)" in md and "> **Thinking**" in md
    doc = httpx.get(hrefs["json"], timeout=10).json()
    sent_image = doc["messages"][0]["content"][0]
    assert sent_image["name"] == "red.png"
    assert Image.open(io.BytesIO(base64.b64decode(sent_image["data"]))).size == (64, 48)

    page.locator("#clear-btn").click()
    page.wait_for_function("() => !document.querySelector('#chat').innerText.includes('giraffes')", timeout=10_000)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(doc))
    page.locator("#import-btn").locator("xpath=..").locator("input[type=file]").set_input_files(str(path))
    page.wait_for_function("() => document.querySelector('#chat').innerText.includes('A sun over a house.')",
                           timeout=15_000)
    assert page.locator("#chat .thought-group").count() == 1 and page.locator("#chat img").count() >= 1
    # the imported chat goes on: its image counts as this session's upload, its reasoning goes back apart
    send(page, "scripted:think And the colour?")
    page.wait_for_function("() => document.querySelectorAll('#chat .thought-group').length >= 2", timeout=30_000)
    wait_idle(page)
    assert_usable(page)
    assert "not uploaded" not in page.locator("#chat").inner_text()
    assert page.locator("#chat .thought-group").count() == 2

    page.locator("#new-chat-btn").click()
    send(page, "A chat about zebras")
    wait_answered(page, 1)
    search = page.locator("#chat-search textarea, #chat-search input").first

    def listed(n, word=""):
        """Wait until the list shows `n` chats, each with `word` in its title."""
        try:
            page.wait_for_function("([n, word]) => { const l = [...document.querySelectorAll('#chat-list label')];"
                                   " return l.length === n && l.every(e => e.innerText.includes(word)); }",
                                   arg=[n, word], timeout=10_000)
        except Exception:
            raise AssertionError(f"expected {n}: {chat_titles(page)}; search box: {search.input_value()!r}")

    listed(3)  # the first chat, its import (continued), the zebra chat
    search.fill("zebras")
    listed(1, "zebras")
    search.fill("house sun")  # words of an answer, in any order: the first chat and its import
    listed(2, "Exported")
    search.fill("okapi")
    listed(0)
    search.fill("")
    listed(3)
    page.context.close()
