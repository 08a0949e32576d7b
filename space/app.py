"""Hugging Face Space entry point (README front matter: `app_file: space/app.py`). See docs/deployment.md.

Two modes, chosen by the Space's variables and secrets:

- `INTERNVL_UI_CONTROLLER_URL` set: only the web UI, a client of a controller you run elsewhere (the secret
  `INTERNVL_UI_API_KEY` when that controller requires a key). Runs on the free CPU hardware.
- not set: one process serves everything: a worker with the model (`INTERNVL_MODEL`: hub id or folder; default:
  the default model, downloaded from the hub, else the demo checkpoint with random weights), a controller, and the
  UI. Real models want GPU hardware. Worker and controller listen on loopback only; the Space exposes the UI.

Run locally the same way: `python space/app.py` (binds 0.0.0.0:7860 like a Space; GRADIO_SERVER_NAME/PORT change it).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a Space runs this file as a script; the packages live one level up

log = logging.getLogger("space")


def mode(env: dict[str, str]) -> str:
    return "ui-only" if env.get("INTERNVL_UI_CONTROLLER_URL", "").strip() else "all-in-one"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_in_thread(app, port: int, name: str, timeout_s: float = 900.0) -> None:
    """uvicorn in a daemon thread (signal handlers stay with the main thread, i.e. Gradio)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:  # the worker's startup loads the model: minutes for a big one
        if not thread.is_alive():
            raise RuntimeError(f"the in-process {name} failed to start; see the log above")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the in-process {name} did not start within {timeout_s:.0f} s")
        time.sleep(0.1)


def start_backend(env: dict[str, str]) -> str:
    """Controller + one worker in this process; returns the controller URL for the UI."""
    from controller.app import create_app as controller_app
    from controller.settings import ControllerSettings
    from scripts.resolve_model import resolve
    from workers.app import create_app as worker_app
    from workers.engines.select import create_engine
    from workers.model_spec import detect_model_spec
    from workers.settings import WorkerSettings

    folder, random_weights = resolve(env.get("INTERNVL_MODEL") or None, ROOT / "checkpoints" / "demo")
    if random_weights:
        log.warning("RANDOM WEIGHTS: serving the demo checkpoint (set INTERNVL_MODEL to a hub id for a real model)")
    secret = secrets.token_urlsafe(18)  # nobody else may register a worker with this controller
    cport, wport = _free_port(), _free_port()
    controller_url = f"http://127.0.0.1:{cport}"
    _serve_in_thread(controller_app(ControllerSettings(port=cport, registration_secret=secret)), cport, "controller")
    settings = WorkerSettings(model_path=str(folder), port=wport, controller_url=controller_url,
                              registration_secret=secret, engine=env.get("INTERNVL_ENGINE", "auto"))
    engine = create_engine(settings, detect_model_spec(folder))
    _serve_in_thread(worker_app(settings, engine), wport, "worker")
    _wait_registered(controller_url)
    return controller_url


def _wait_registered(controller_url: str, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(controller_url + "/health", timeout=5).json().get("workers", 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the in-process worker did not register with the in-process controller")
        time.sleep(0.2)


def main() -> None:
    from common.logging_setup import setup_logging

    setup_logging("info")
    env = dict(os.environ)
    from app.settings import UISettings
    from app.ui import create_app, launch_options

    overrides = {"host": env.get("GRADIO_SERVER_NAME", "0.0.0.0"), "port": int(env.get("GRADIO_SERVER_PORT", 7860))}
    if mode(env) == "all-in-one":
        overrides["controller_url"] = start_backend(env)
    settings = UISettings(**overrides)  # the rest from INTERNVL_UI_* variables
    log.info("web UI for controller %s (%s mode)", settings.controller_url, mode(env))
    demo = create_app(settings)
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(**launch_options(settings, demo))


if __name__ == "__main__":
    main()
