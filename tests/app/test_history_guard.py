"""The web UI opens only media this browser session uploaded (issue 15, item 3), against a real UI process in front of
a real controller and scripted worker: forged history parts of type 'component', and files another session uploaded,
are refused with a clear message and nothing is opened or copied; uploads are deleted past the set age; the
conversation log is private (0600 files in 0700 folders)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.stack import ROOT, SCRIPTED, free_port, start_controller, start_worker

MODEL = "scripted"
SETTINGS = ("", 0.7, 0.9, 16, 1.05, 2, 4, False)  # system prompt, temperature, top_p, max tokens, rep. penalty,
# tiles, frames, think
MAX_AGE_S = 2  # for the test of the clean-up only


def _start_ui(log_dir: Path, controller_url: str, base: Path, max_age_s: int, own_cache: bool = True):
    """`own_cache`: give Gradio a cache folder to inspect; otherwise the UI picks its default."""
    cache, conv_logs = base / "gradio-cache", base / "conversations"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INTERNVL_UI_LOG_DIR": str(conv_logs),
           "INTERNVL_UI_MEDIA_MAX_AGE_S": str(max_age_s)}
    env.pop("GRADIO_TEMP_DIR", None)
    if own_cache:
        env["GRADIO_TEMP_DIR"] = str(cache)
    log = log_dir / f"ui-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--controller-url", controller_url, "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            pytest.fail("UI did not start:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(url + "/gradio_api/info", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, {"url": url, "cache": cache, "logs": conv_logs}


@pytest.fixture(scope="module")
def backend(demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, SCRIPTED, model_name=MODEL)
    try:
        yield controller.url
    finally:
        worker.stop()
        controller.stop()


@pytest.fixture(scope="module")
def ui(backend, log_dir, tmp_path_factory):
    proc, info = _start_ui(log_dir, backend, tmp_path_factory.mktemp("ui"), 3600)
    try:
        yield info
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture()
def secret_image(tmp_path) -> Path:
    """A file outside every upload folder (its colour makes its content unique to this test)."""
    path = tmp_path / "private.png"
    Image.new("RGB", (40, 30), (int(time.time() * 1000) % 255, 7, 9)).save(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copies_of(secret: Path, *folders: Path) -> list[Path]:
    digest = _digest(secret)
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.is_file() and _digest(p) == digest]


def _call(url: str, api_name: str, data: list, session: str | None = None) -> dict:
    """One event through Gradio's queue, as a browser (or a forger) sends it; returns the final message."""
    deps = httpx.get(url + "/config").json()["dependencies"]
    fn_index = next(d["id"] for d in deps if d.get("api_name") == api_name)
    session = session or uuid.uuid4().hex
    r = httpx.post(url + "/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                          "event_data": None, "trigger_id": None})
    assert r.status_code == 200, r.text
    with httpx.stream("GET", url + "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no process_completed message")


def _component_part(path: Path) -> dict:
    """Without FileData's `meta` marker, Gradio's own upload-folder check does not see the path."""
    return {"type": "component", "component": "image", "constructor_args": {}, "props": {},
            "value": {"path": str(path)}}


@pytest.mark.parametrize("exists", [True, False])
def test_forged_component_part_is_refused_and_nothing_is_opened_or_copied(ui, secret_image, exists):
    target = secret_image if exists else secret_image.with_name("absent.png")
    history = [{"role": "user", "content": [_component_part(target), {"type": "text", "text": "describe"}]}]
    done = _call(ui["url"], "regenerate", [history, MODEL, *SETTINGS])
    assert done["success"] is False
    error = str(done["output"].get("error"))
    assert "component" in error and "Nothing was opened" in error
    assert "absent" not in error and "private" not in error  # the answer tells nothing about the file system
    if exists:
        assert not _copies_of(secret_image, ui["cache"], ui["logs"]), "the named file was copied"


def test_a_file_uploaded_by_another_session_is_refused(ui, secret_image):
    from gradio_client import Client, handle_file

    owner = Client(ui["url"] + "/", verbose=False, download_files=False)  # paths as the server wrote them
    history = owner.predict({"text": "what is this?", "files": [handle_file(str(secret_image))]}, [], MODEL,
                            *SETTINGS, api_name="/chat")[0]
    again = owner.predict(history, MODEL, *SETTINGS, api_name="/regenerate")  # the owner may go on with it
    assert again[-1]["metadata"] is None, again
    uploaded = next(p["file"]["path"] for p in history[0]["content"] if p["type"] == "file")
    stolen = [{"role": "user", "content": [{"type": "file", "file": {"path": uploaded, "meta": {
        "_type": "gradio.FileData"}}}, {"type": "text", "text": "and this?"}]}]
    done = _call(ui["url"], "regenerate", [stolen, MODEL, *SETTINGS])
    # Refused as a note in the chat, not a raised error (that would leave the page locked), and never answered.
    assert done["success"] is True, done
    messages = done["output"]["data"][0]
    assert len(messages) == 2, messages  # the forged turn and the note: nothing was sent to the model
    assert "not uploaded in this session" in json.dumps(messages[-1]), messages


def test_uploads_are_private_and_deleted_after_the_set_age(backend, log_dir, tmp_path, secret_image):
    proc, ui = _start_ui(log_dir, backend, tmp_path, MAX_AGE_S, own_cache=False)
    try:
        r = httpx.post(ui["url"] + "/gradio_api/upload", files={"files": ("old.png", secret_image.read_bytes())})
        assert r.status_code == 200, r.text
        uploaded = Path(r.json()[0])
        assert uploaded.exists()
        root = uploaded.parents[1]  # <upload folder>/<hash>/old.png
        assert stat.S_IMODE(root.stat().st_mode) == 0o700, f"{root}: {oct(root.stat().st_mode)}"
        deadline = time.monotonic() + MAX_AGE_S * 5
        while uploaded.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not uploaded.exists(), f"upload still on disk {MAX_AGE_S * 5} s later (max age {MAX_AGE_S} s)"
    finally:
        proc.terminate()
        proc.wait(15)


def test_conversation_log_and_media_are_private(ui, secret_image):
    from gradio_client import Client, handle_file

    Client(ui["url"] + "/", verbose=False).predict(
        {"text": "hi", "files": [handle_file(str(secret_image))]}, [], MODEL, *SETTINGS, api_name="/chat")
    logs = ui["logs"]
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files) and any(p.parent.name == "media" for p in files)
    for path in [logs, *logs.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


def test_the_least_recently_active_session_is_forgotten_first(tmp_path, monkeypatch):
    # SessionMedia's memory is bounded (cachetools LRUCache); a look at every session (forget, unclaimed) does not
    # count as activity.
    from types import SimpleNamespace

    import app.history_guard as guard

    monkeypatch.setattr(guard, "_MAX_SESSIONS", 2)
    media = guard.SessionMedia(tmp_path, max_age_s=60)
    files = {s: tmp_path / f"{s}.png" for s in "abc"}
    session = {s: SimpleNamespace(session_hash=s) for s in "abc"}
    media.received(session["a"], [str(files["a"])])
    media.received(session["b"], [str(files["b"])])
    media.received(session["a"], [])  # a active again: b is now the least recently active
    assert media.unclaimed([str(f) for f in files.values()]) == [files["c"]]
    media.received(session["c"], [str(files["c"])])  # over the bound: b is forgotten
    assert media.unclaimed([str(f) for f in files.values()]) == [files["b"]]
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(files["b"])}}]}]
    with pytest.raises(guard.gr.Error, match="not uploaded in this session"):
        media.check(history, session["b"])
