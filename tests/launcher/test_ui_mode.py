"""`./launch.sh ui` against a controller that is not there (yet, or restarting), then a controller without a worker
(one being restarted): the page stays up and a chat gets a note that says the model is reconnecting; once both are
there, the same page chats."""

from __future__ import annotations

import pytest

from tests.support.launched import start_launcher
from tests.support.stack import SCRIPTED, free_port, start_controller, start_worker

pytestmark = pytest.mark.slow


def test_ui_says_reconnecting_while_the_controller_is_away_then_chats(tmp_path, demo_checkpoint, log_dir):
    from gradio_client import Client

    controller_port, ui_port = free_port(), free_port()
    launched = start_launcher(["ui", "--controller-url", f"http://127.0.0.1:{controller_port}", "--port",
                               str(ui_port)], tmp_path / "logs")
    controller = worker = None
    try:
        launched.wait_ready()
        client = Client(f"http://127.0.0.1:{ui_port}", verbose=False)
        history, _ = client.predict(box={"text": "Hi", "files": []}, history=[], model="demo", system_prompt="",
                                    max_new_tokens=16, api_name="/chat")
        note = str(history[-1]["content"])
        assert "reconnecting to the model" in note.lower(), history

        controller = start_controller(log_dir, port=controller_port)
        history, _ = client.predict(box={"text": "Hi", "files": []}, history=[], model="demo", system_prompt="",
                                    max_new_tokens=16, api_name="/chat")  # no worker yet: it may be restarting
        assert "reconnecting" in str(history[-1]["content"]).lower(), history

        worker = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="demo")
        history, _ = client.predict(box={"text": "Hi", "files": []}, history=[], model="demo", system_prompt="",
                                    max_new_tokens=16, api_name="/chat")
        assert history[-1]["role"] == "assistant" and "reconnecting" not in str(history[-1]["content"]).lower()
    finally:
        launched.kill_all()
        for proc in (worker, controller):
            if proc is not None:
                proc.stop()
