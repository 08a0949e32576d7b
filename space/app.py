"""Hugging Face Space entry point (README front matter: `app_file: space/app.py`). See docs/deployment.md.

Two modes, chosen by the Space's variables and secrets:

- `INTERNVL_UI_CONTROLLER_URL` set: only the web UI, a client of a controller you run elsewhere (the secret
  `INTERNVL_UI_API_KEY` when that controller requires a key). Runs on the free CPU hardware.
- not set: one process serves everything (launcher/inprocess.py): a worker with the model (`INTERNVL_MODEL`: hub
  id or folder; default: the default model, downloaded from the hub, else the demo checkpoint with random
  weights), a controller, and the UI. Worker and controller listen on loopback only; the Space exposes the UI.
  The worker runs the transformers engine with its generation inside `@spaces.GPU` (ZeroGPU hardware; a no-op
  elsewhere), or `INTERNVL_ENGINE=turbomind` on dedicated GPU hardware.

Run locally the same way: `python space/app.py` (binds 0.0.0.0:7860 like a Space; GRADIO_SERVER_NAME/PORT change it).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

try:  # ZeroGPU: `spaces` must be imported before torch (and before gradio)
    import spaces  # noqa: F401
except ImportError:  # not on Hugging Face and not installed: the engine falls back to plain transformers
    spaces = None

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a Space runs this file as a script; the packages live one level up

log = logging.getLogger("space")


def mode(env: dict[str, str]) -> str:
    return "ui-only" if env.get("INTERNVL_UI_CONTROLLER_URL", "").strip() else "all-in-one"


def engine_for(env: dict[str, str], spaces_installed: bool) -> str:
    """The worker engine of the all-in-one mode."""
    asked = env.get("INTERNVL_ENGINE", "auto").strip() or "auto"
    if asked in ("auto", "transformers") and spaces_installed:
        from launcher.inprocess import ZEROGPU_ENGINE

        return ZEROGPU_ENGINE
    if asked == "auto":
        return "transformers"  # one process and maybe no GPU at start-up: TurboMind only when asked for
    return asked


def main() -> None:
    from common.logging_setup import setup_logging

    setup_logging("info")
    env = dict(os.environ)
    from app.settings import UISettings
    from app.ui import create_app, launch_options

    overrides = {"host": env.get("GRADIO_SERVER_NAME", "0.0.0.0"), "port": int(env.get("GRADIO_SERVER_PORT", 7860))}
    if mode(env) == "all-in-one":
        from launcher.inprocess import start_backend

        overrides["controller_url"] = start_backend(env.get("INTERNVL_MODEL") or None,
                                                    engine_for(env, spaces is not None))
    settings = UISettings(**overrides)  # the rest from INTERNVL_UI_* variables
    log.info("web UI for controller %s (%s mode)", settings.controller_url, mode(env))
    demo = create_app(settings)
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(**launch_options(settings, demo))


if __name__ == "__main__":
    main()
