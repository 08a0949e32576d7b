"""The web UI's test stacks: a real controller, scripted workers (the layer under test is the UI) or the demo model,
the UI process, and one Chromium per module."""

from __future__ import annotations

import pytest

from tests.support.browser import launch_browser
from tests.support.stack import SCRIPTED, spawn_worker, start_controller, start_worker, wait_worker
from tests.support.ui_process import start_ui


@pytest.fixture(scope="session")
def ui_stack(demo_checkpoint, log_dir, tmp_path_factory):
    """-> dict(url, controller, conversations): models 'internvl-slow' (40 words/s, 2000 words: for Stop) and
    'internvl-fast' (as fast as it can, 24 words)."""
    controller = start_controller(log_dir)
    slow = spawn_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="internvl-slow",
                        env={"SCRIPTED_TOKENS": "2000", "SCRIPTED_RATE": "40"})
    fast = spawn_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="internvl-fast",
                        env={"SCRIPTED_TOKENS": "24", "SCRIPTED_RATE": "0"})
    for w in (slow, fast):
        wait_worker(w, controller.url)
    conversations = tmp_path_factory.mktemp("conversations")
    ui = start_ui(controller.url, log_dir, conversations)
    yield {"url": ui.url, "controller": controller, "conversations": conversations, "workers": [slow, fast],
           "log_dir": log_dir, "checkpoint": demo_checkpoint}
    ui.stop()
    for proc in (slow, fast, controller):
        proc.stop()


@pytest.fixture(scope="session")
def demo_ui_stack(demo_checkpoint, log_dir, tmp_path_factory):
    """-> dict(url, controller (its URL), conversations): 'internvl-demo' (the transformers engine on the demo
    checkpoint: real answers from the real model code) and 'internvl-scripted' (40 words/s, 2000 words: for Stop)."""
    controller = start_controller(log_dir)
    demo = start_worker(log_dir, demo_checkpoint, controller.url)
    slow = start_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="internvl-scripted",
                        env={"SCRIPTED_TOKENS": "2000", "SCRIPTED_RATE": "40"})
    conversations = tmp_path_factory.mktemp("demo-conversations")
    ui = start_ui(controller.url, log_dir, conversations)
    yield {"url": ui.url, "controller": controller.url, "conversations": conversations}
    ui.stop()
    for proc in (slow, demo, controller):
        proc.stop()


@pytest.fixture(scope="module")
def browser():
    # Per module, not per session: Playwright's sync API runs an event loop in this thread until it stops, and every
    # async test collected after a still-running browser would fail with "cannot be called from a running event loop".
    with launch_browser() as b:
        yield b


@pytest.fixture(scope="session")
def think_ui_stack(demo_checkpoint, demo_checkpoint_35, log_dir, tmp_path_factory):
    """-> dict(url, conversations): 'internvl-think' (scripted, demo checkpoint built as InternVL3.5, 8 tokens/s:
    `scripted:think` answers think) and 'internvl-plain' (scripted, InternVL3 demo checkpoint), and the UI."""
    controller = start_controller(log_dir)
    think = spawn_worker(log_dir, demo_checkpoint_35, controller.url, engine=SCRIPTED, model_name="internvl-think",
                         env={"SCRIPTED_RATE": "8"})  # ~2 s of reasoning: time to see it stream, and to Stop it
    plain = spawn_worker(log_dir, demo_checkpoint, controller.url, engine=SCRIPTED, model_name="internvl-plain",
                         env={"SCRIPTED_RATE": "0"})
    for w in (think, plain):
        wait_worker(w, controller.url)
    conversations = tmp_path_factory.mktemp("think-conversations")
    ui = start_ui(controller.url, log_dir, conversations)
    yield {"url": ui.url, "conversations": conversations}
    ui.stop()
    for proc in (think, plain, controller):
        proc.stop()
