"""`python -m controller --port 21001 ...` (all flags: --help)."""

from __future__ import annotations

import uvicorn
from pydantic_settings import CliApp

from common.bounded_http import bounded_http
from common.logging_setup import setup_logging
from controller.app import create_app
from controller.settings import ControllerSettings


def main() -> None:
    settings = CliApp.run(ControllerSettings)
    setup_logging(settings.log_level, settings.log_format)
    # log_config=None: uvicorn's loggers go through setup_logging's handler (request ids, one format).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None, access_log=False, timeout_graceful_shutdown=5,
                http=bounded_http(head_timeout_s=settings.header_timeout_s))


if __name__ == "__main__":
    main()
