"""`python -m app --controller-url http://127.0.0.1:21001 --port 7860` (all flags: --help)."""

from __future__ import annotations

import logging

from pydantic_settings import CliApp

from app.memory import map_large_buffers
from app.settings import UISettings
from app.temp_folders import ui_temp_folders


def main() -> None:
    settings = CliApp.run(UISettings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel("WARNING")  # the model panel polls the controller every few seconds
    map_large_buffers()
    with ui_temp_folders() as generated:  # before gradio is imported: it reads GRADIO_TEMP_DIR then
        from app.ui import create_app, launch_options

        demo = create_app(settings, generated)
        demo.queue(default_concurrency_limit=settings.concurrency_limit)
        demo.launch(**launch_options(settings, demo))


if __name__ == "__main__":
    main()
