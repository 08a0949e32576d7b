"""A session's uploads: its quota, and its files removed when its page closes (the handlers with a scripted stream
source; the total quota and the temporary folders with a real UI process are in test_ui_resources.py)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from app.conversation_log import ConversationLog
from app.handlers import ChatHandlers
from app.settings import UISettings
from tests.support.ui_handlers import ScriptedStream, make


def _uploaded(folder: Path, name: str, nbytes: int) -> str:
    """A file as Gradio keeps an upload: in a folder of its own under the upload folder."""
    path = folder / name.split(".")[0] / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * nbytes)
    return str(path)


async def test_a_session_over_its_upload_quota_is_told_and_its_new_files_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    settings = UISettings(log_dir=tmp_path / "logs", logging=False, session_upload_mb=1)
    h = ChatHandlers(settings, ScriptedStream(["ok"]), ConversationLog(settings.log_dir, False), tmp_path / "work")
    session = gr.Request(session_hash="s1")
    first = _uploaded(tmp_path / "uploads", "a.png", 600_000)
    assert h.add_user_message([], {"text": "one", "files": [first]}, session) is not None
    second = _uploaded(tmp_path / "uploads", "b.png", 600_000)
    warnings = []
    monkeypatch.setattr(gr, "Warning", lambda text, duration=None: warnings.append(text))
    assert h.add_user_message([], {"text": "two", "files": [second]}, session) is None
    assert "1 MB one session may keep" in warnings[0] and "Start a new chat" in warnings[0]
    assert Path(first).exists() and not Path(second).exists() and not Path(second).parent.exists()
    other = gr.Request(session_hash="s2")  # another session has its own share
    third = _uploaded(tmp_path / "uploads", "c.png", 600_000)
    assert h.add_user_message([], {"text": "three", "files": [third]}, other) is not None


async def test_a_closed_sessions_uploads_are_removed_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    h = make(tmp_path, ScriptedStream(["ok"]))
    mine, shared = _uploaded(tmp_path / "uploads", "mine.png", 10), _uploaded(tmp_path / "uploads", "both.png", 10)
    example = str(Path(__file__).resolve().parents[2] / "static" / "examples" / "landscape.jpg")
    h.add_user_message([], {"text": "a", "files": [mine, shared, example]}, gr.Request(session_hash="s1"))
    h.add_user_message([], {"text": "b", "files": [shared]}, gr.Request(session_hash="s2"))
    h.end_session(gr.Request(session_hash="s1"))
    assert not Path(mine).exists() and not Path(mine).parent.exists()
    assert Path(shared).exists() and Path(example).exists()  # still another session's; the UI's own example
    h.end_session(gr.Request(session_hash="s2"))
    assert not Path(shared).exists()
