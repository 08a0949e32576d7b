"""The stack in one process, for hosts that run one process only (a Hugging Face Space): the controller and one
worker serve from uvicorn threads on loopback ports, with a random registration secret; the caller runs the web UI
in the main thread (Gradio keeps the signal handlers). Model resolution is the launcher's (launcher/models.py)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path

import httpx

from launcher.compose import ROOT, free_port
from launcher.models import resolve

log = logging.getLogger("launcher.inprocess")

ZEROGPU_ENGINE = "workers.engines.zerogpu_engine:ZeroGPUEngine"


def serve_in_thread(app, port: int, name: str, timeout_s: float = 900.0) -> None:
    """uvicorn in a daemon thread; returns once it serves (a worker's start-up loads the model: minutes)."""
    import uvicorn

    from common.bounded_http import bounded_http
    from common.serve import proxy_headers

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           http=bounded_http(), proxy_headers=proxy_headers(app)))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the in-process {name} failed to start; see the log above")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the in-process {name} did not start within {timeout_s:.0f} s")
        time.sleep(0.1)


def wait_registered(controller_url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(controller_url + "/health", timeout=5).json().get("workers", 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the in-process worker did not register with the in-process controller")
        time.sleep(0.2)


def start_backend(model: str | None, engine: str = "auto", demo_dir: Path = ROOT / "checkpoints" / "demo") -> str:
    """Controller + one worker in this process; returns the controller URL for the UI.

    engine: a worker `--engine` value; ZEROGPU_ENGINE runs generation inside `@spaces.GPU`.
    """
    from controller.app import create_app as controller_app
    from controller.settings import ControllerSettings
    from workers.app import create_app as worker_app
    from workers.engines.select import create_engine
    from workers.model_spec import detect_model_spec
    from workers.settings import WorkerSettings

    folder, random_weights = resolve(model, demo_dir)
    if random_weights:
        log.warning("RANDOM WEIGHTS: serving the demo checkpoint (set INTERNVL_MODEL to a hub id for a real model)")
    secret = secrets.token_urlsafe(18)  # nobody else may register a worker with this controller
    cport, wport = free_port(), free_port()
    controller_url = f"http://127.0.0.1:{cport}"
    serve_in_thread(controller_app(ControllerSettings(port=cport, registration_secret=secret)), cport, "controller")
    settings = WorkerSettings(model_path=str(folder), port=wport, controller_url=controller_url,
                              registration_secret=secret, engine=engine, body_parsers=0)  # one process: no helpers
    worker_engine = create_engine(settings, detect_model_spec(folder))
    log.info("in-process worker: %s engine, model %s", worker_engine.name, folder)
    serve_in_thread(worker_app(settings, worker_engine), wport, "worker")
    wait_registered(controller_url)
    return controller_url
