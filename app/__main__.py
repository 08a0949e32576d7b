"""`python -m app --controller-url http://127.0.0.1:21001 --port 7860` (all flags: --help)."""

from __future__ import annotations

import logging

from pydantic_settings import CliApp

from app.settings import UISettings
from app.ui import create_app, launch_options


def main() -> None:
    settings = CliApp.run(UISettings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel("WARNING")  # the model panel polls the controller every few seconds
    demo = create_app(settings)
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(**launch_options(settings, demo))


if __name__ == "__main__":
    main()
