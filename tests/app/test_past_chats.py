"""The past chats list the browser keeps (app/past_chats.py): newest first, bounded in number and in size."""

from __future__ import annotations

import json

from app import past_chats


def turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}, {"role": "assistant", "content": "ok"}]


def test_a_new_chat_goes_first_and_the_oldest_go_past_the_count():
    saved = []
    for i in range(past_chats.MAX_CHATS + 3):
        saved, _, _ = past_chats.save(turn(f"question {i}"), None, saved)
    assert len(saved) == past_chats.MAX_CHATS
    assert saved[0]["title"] == f"question {past_chats.MAX_CHATS + 2}" and saved[-1]["title"] == "question 3"


def test_the_list_stays_small_enough_for_the_browser_to_store_it():
    """A list past the browser's storage quota is not written at all (Gradio keeps the old one and logs it)."""
    long_answer = "字" * (past_chats.MAX_BYTES // 3 // 3)  # a third of the budget in UTF-8 (3 bytes a character)
    saved = []
    for i in range(6):
        saved, _, _ = past_chats.save(turn(f"long chat {i}") + [{"role": "assistant", "content": long_answer}],
                                      None, saved)
    assert [c["title"] for c in saved] == ["long chat 5", "long chat 4"]
    assert len(json.dumps(saved, ensure_ascii=False).encode()) <= past_chats.MAX_BYTES
    # continuing a kept chat moves it first and keeps its id
    saved, chat_id, _ = past_chats.save(turn("long chat 4, again"), saved[1]["id"], saved)
    assert saved[0]["id"] == chat_id and [c["title"] for c in saved] == ["long chat 4, again", "long chat 5"]


def test_the_newest_chat_is_kept_whatever_its_size():
    huge = turn("huge") + [{"role": "assistant", "content": "x" * (past_chats.MAX_BYTES + 1)}]
    saved, _, _ = past_chats.save(huge, None, [{"id": "old", "title": "old", "history": turn("old")}])
    assert [c["title"] for c in saved] == ["huge"]
