"""What the web UI process leaves on disk (issue 22, item 3), through the real `python -m app` process: no folder
after a clean stop (SIGTERM, as supervisors stop it), with or without GRADIO_TEMP_DIR; uploads of all sessions
together bounded, refused from their declared length."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.support.stack import free_port
from tests.support.ui_process import start_ui

NO_CONTROLLER = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the UI starts all the same


def _upload(url: str, name: str, nbytes: int) -> httpx.Response:
    return httpx.post(url + "/gradio_api/upload", files={"files": (name, b"\0" * nbytes, "image/png")}, timeout=30)


@pytest.mark.parametrize("gradio_temp_dir", [False, True], ids=["default", "GRADIO_TEMP_DIR"])
def test_a_clean_stop_leaves_no_folder(tmp_path, log_dir, gradio_temp_dir):
    system_tmp = tmp_path / "tmp"  # the system's temporary folder, as this UI process sees it
    system_tmp.mkdir()
    env = {"TMPDIR": str(system_tmp), "GRADIO_TEMP_DIR": None}
    if gradio_temp_dir:
        env["GRADIO_TEMP_DIR"] = str(tmp_path / "operator-temp")
    ui = start_ui(NO_CONTROLLER, log_dir, tmp_path / "conversations", env=env)
    try:
        assert _upload(ui.url, "photo.png", 1000).status_code == 200
        if not gradio_temp_dir:
            assert list(system_tmp.iterdir())  # its folder is there while it runs
    finally:
        ui.popen.send_signal(signal.SIGTERM)
        ui.popen.wait(20)
    assert list(system_tmp.iterdir()) == []
    if gradio_temp_dir:
        assert not list((tmp_path / "operator-temp").glob("internvl-ui-*"))  # our folder in the operator's went too


def test_uploads_of_all_sessions_together_are_bounded(tmp_path, log_dir):
    ui = start_ui(NO_CONTROLLER, log_dir, tmp_path / "conversations", "--total-upload-mb", "1",
                  env={"TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": None})
    try:
        assert _upload(ui.url, "a.png", 600_000).status_code == 200
        refused = _upload(ui.url, "b.png", 600_000)
        assert refused.status_code == 413
        error = refused.json()["error"]
        assert error["code"] == "request_too_large" and "uploads are full" in error["message"]
        assert _upload(ui.url, "small.png", 1000).status_code == 200  # what still fits is taken
    finally:
        ui.stop()


def test_memory_returns_near_idle_after_large_refused_messages(demo_checkpoint, tmp_path, log_dir):
    """Large pasted messages, each refused as too long for the model, do not leave the UI holding their copies."""
    from gradio_client import Client

    from tests.support.raw_http import rss_mib
    from tests.support.stack import SCRIPTED, start_controller, start_worker

    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="m")
    ui = start_ui(controller.url, log_dir, tmp_path / "conversations", env={"TMPDIR": str(tmp_path)})
    try:
        client = Client(ui.url + "/", verbose=False, download_files=False)
        settings = ("", 0.7, 0.9, 32, 1.05, 2, 4)
        client.predict({"text": "hi", "files": []}, [], "m", *settings, api_name="/chat")
        idle = rss_mib(ui.popen.pid)
        pasted = ("word " * 2_000_000)[:6_000_000]
        peak = idle
        for _ in range(3):
            history, _ = client.predict({"text": pasted, "files": []}, [], "m", *settings, api_name="/chat")
            assert history[-1]["metadata"]["id"] == "error"  # refused: far beyond the model's context
            peak = max(peak, rss_mib(ui.popen.pid))
        deadline = time.monotonic() + 30
        while rss_mib(ui.popen.pid) > idle + 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        now = rss_mib(ui.popen.pid)
        assert now <= idle + 40, f"idle {idle:.0f} MiB, peak {peak:.0f}, now {now:.0f}"
    finally:
        ui.stop()
        worker.stop()
        controller.stop()
