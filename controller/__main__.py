"""`python -m controller --port 21001 ...` (all flags: --help)."""

from __future__ import annotations

import logging

import uvicorn
from pydantic_settings import CliApp

from controller.app import create_app
from controller.settings import ControllerSettings


def main() -> None:
    settings = CliApp.run(ControllerSettings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
