"""The Hugging Face Space entry point, run as a Space runs it: `python <app_file>` from the repository root, with
the `spaces` package installed (its `@spaces.GPU` is a no-op off Hugging Face, so the ZeroGPU generation path runs
in-process). Both modes chat through the web UI's API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from space.app import engine_for, mode
from tests.support.stack import ROOT, SCRIPTED, free_port, start_controller, start_worker


def front_matter() -> dict[str, str]:
    block = (ROOT / "README.md").read_text().split("---\n")[1]
    return dict(re.findall(r"^(\w+):\s*(\S+)", block, re.M))


def test_space_mode_and_engine_follow_its_variables():
    assert mode({"INTERNVL_UI_CONTROLLER_URL": "https://api.example.org"}) == "ui-only"
    assert mode({"INTERNVL_UI_CONTROLLER_URL": " "}) == mode({}) == "all-in-one"
    assert engine_for({}, spaces_installed=True) == "workers.engines.zerogpu_engine:ZeroGPUEngine"
    assert engine_for({"INTERNVL_ENGINE": "turbomind"}, spaces_installed=True) == "turbomind"
    assert engine_for({}, spaces_installed=False) == "transformers"


class Space:
    def __init__(self, tmp_path: Path, env: dict[str, str]):
        meta = front_matter()
        assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "space.log"
        full_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(self.port),
                    "INTERNVL_UI_LOG_DIR": str(tmp_path / "conversations"), "HF_HUB_OFFLINE": "1", **env}
        full_env.pop("PYTHONPATH", None)  # the app file finds its packages itself
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen([sys.executable, meta["app_file"]], cwd=ROOT, env=full_env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_page(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.popen.poll() is None and time.monotonic() < deadline, self.log()[-3000:]
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)

    def chat(self, model: str) -> list[dict]:
        from gradio_client import Client

        history, _ = Client(self.url, verbose=False).predict(
            box={"text": "Hi", "files": []}, history=[], model=model, system_prompt="", max_new_tokens=16,
            api_name="/chat")
        return history

    def stop(self) -> None:
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@pytest.mark.slow
def test_all_in_one_space_chats_in_one_process_through_the_spaces_gpu_path(tmp_path, demo_checkpoint):
    import spaces  # noqa: F401 - pinned in requirements-test.txt; the Space must run with it installed

    space = Space(tmp_path, {"INTERNVL_MODEL": str(demo_checkpoint)})
    try:
        space.wait_page()
        assert psutil.Process(space.popen.pid).children(recursive=True) == []  # one process: worker in-process
        assert "transformers-zerogpu engine" in space.log()
        history = space.chat(demo_checkpoint.name)
        assert history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"].strip(), space.log()[-3000:]
    finally:
        space.stop()


@pytest.mark.slow
def test_ui_only_space_chats_through_a_controller_elsewhere(tmp_path, demo_checkpoint, log_dir):
    controller = start_controller(log_dir)
    worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="far-model")
    space = Space(tmp_path, {"INTERNVL_UI_CONTROLLER_URL": controller.url})
    try:
        space.wait_page()
        assert "ui-only mode" in space.log()
        history = space.chat("far-model")
        assert history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"].strip()
    finally:
        space.stop()
        worker.stop()
        controller.stop()
