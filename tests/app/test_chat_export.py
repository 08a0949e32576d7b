"""Export (Markdown, JSON) and import of a conversation, and the past-chats search (app/chat_export.py,
app/past_chats.py, the handlers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from app import past_chats
from app.chat_export import from_json, to_json, to_markdown
from app.messages import NOTE_THINKING, message_text, to_openai_messages
from common.errors import ServingError
from tests.support.ui_handlers import make


class Stream:
    async def models(self):
        return []


def conversation(tmp_path: Path) -> list[dict]:
    image = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    return [
        {"role": "user", "content": [{"type": "file", "file": {"path": str(image), "mime_type": "image/png"}},
                                     {"type": "text", "text": "What is &lt;this&gt;?"}]},
        {"role": "assistant", "content": "Red &lt;square&gt;, so a cat?",
         "metadata": {"title": "Thinking", "id": NOTE_THINKING, "status": "done", "duration": 1.5}},
        {"role": "assistant", "content": [{"type": "text", "text": "A red cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": "Worker died.", "metadata": {"title": "⚠ Could not answer", "id": "error"}},
    ]


def saved_files(tmp_path: Path):
    store = tmp_path / "imported"
    store.mkdir(exist_ok=True)

    def save(name: str, data: bytes) -> str:
        (store / name).write_bytes(data)
        return str(store / name)
    return save


def test_markdown_reads_as_the_chat_with_media_referenced_and_the_thought_quoted(tmp_path):
    md = to_markdown(conversation(tmp_path), "What is <this>?")
    assert md.startswith("# What is <this>?\n")
    assert "![cat.png](cat.png)" in md and "What is <this>?" in md
    assert "> **Thinking**, 1.5 s" in md and "> Red <square>, so a cat?" in md
    assert md.index("> Red") < md.index("A red cat.")
    assert "**InternVL** (⚠ Could not answer):" in md


def test_json_imports_back_to_the_same_conversation_with_its_files(tmp_path):
    history = conversation(tmp_path)
    doc = json.loads(to_json(history, "t"))
    assert doc["format"] == "internvl-chat" and doc["messages"][0]["content"][0]["name"] == "cat.png"
    back = from_json(json.dumps(doc), saved_files(tmp_path), max_file_bytes=2**20)
    assert [m["role"] for m in back] == [m["role"] for m in history]
    image = back[0]["content"][0]["file"]["path"]
    assert Path(image).read_bytes() == Path(history[0]["content"][0]["file"]["path"]).read_bytes()
    assert back[1]["metadata"]["id"] == NOTE_THINKING and message_text(back[1]) == message_text(history[1])
    # what the model gets from the imported chat is what it got from the original
    assert to_openai_messages(back, "", 4, 2**20) == to_openai_messages(history, "", 4, 2**20)


@pytest.mark.parametrize("doc,why", [
    ("not json", "not JSON"),
    ({"format": "other", "version": 1, "messages": []}, "not a conversation exported"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "system", "content": []}]}, "role"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "user", "content": [
        {"type": "file", "name": "../../etc/x.sh", "data": "aGk="}]}]}, "not an image or a video"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "user", "content": [
        {"type": "file", "name": "a.png", "data": "A" * 4000}]}]}, "larger than"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "assistant", "content": [
        {"type": "file", "name": "a.png", "data": "aGk="}]}]}, "file in a user message"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "user", "content": [
        {"type": "component", "component": "image"}]}]}, "a part must be text"),
    ({"format": "internvl-chat", "version": 1, "messages": [{"role": "assistant", "content": [],
                                                             "metadata": {"log": "x"}}]}, "metadata"),
])
def test_a_bad_import_is_refused_naming_the_problem_and_writes_nothing(tmp_path, doc, why):
    written = []
    with pytest.raises(ServingError, match=why):
        from_json(doc if isinstance(doc, str) else json.dumps(doc), lambda n, d: written.append(n) or n, 1024)
    assert written == []


def test_handlers_export_two_files_and_import_makes_the_files_this_sessions(tmp_path):
    handlers = make(tmp_path, Stream())
    history = conversation(tmp_path)
    md, js = handlers.export_chat(history)
    assert md.endswith(".md") and js.endswith(".json") and "A red cat." in Path(md).read_text()
    back, chat_id = handlers.import_chat(js)
    assert chat_id is None and len(back) == len(history)
    handlers.media.check(back, None)  # the imported image counts as uploaded by this session: no refusal
    assert handlers.export_chat([]) is None


def test_search_narrows_the_past_chats_by_words_in_titles_answers_and_reasoning(tmp_path):
    saved = [{"id": "a", "title": "Cats", "history": conversation(tmp_path)},
             {"id": "b", "title": "Dogs", "history": [{"role": "user", "content": "Where is the DOG park?"}]}]
    ids = lambda radio: [value for _, value in radio.choices]  # noqa: E731
    assert ids(past_chats.search("", saved)) == ["a", "b"]
    assert ids(past_chats.search("dog park", saved)) == ["b"]
    assert ids(past_chats.search("red cat", saved)) == ["a"]
    assert ids(past_chats.search("<square>", saved)) == ["a"]  # in the reasoning, as the reader saw it
    assert ids(past_chats.search("zebra", saved)) == []
