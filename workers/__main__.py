"""`python -m workers --model-path PATH ...` (all flags: --help)."""

from __future__ import annotations

import sys

from pydantic_settings import CliApp

from common.auth import is_loopback_host
from common.logging_setup import setup_logging
from common.serve import serve
from workers.settings import WorkerSettings


def main() -> None:
    settings = CliApp.run(WorkerSettings)
    setup_logging(settings.log_level, settings.log_format)
    if not (is_loopback_host(settings.host) or settings.api_keys or settings.controller_url
            or settings.allow_unauthenticated):
        sys.exit(f"error: refusing to serve on {settings.host} without credentials: anyone who reaches this address "
                 "could use the worker. Register it with a controller (--controller-url; the controller then sends "
                 "the token it issues), give it --api-keys, bind 127.0.0.1, or pass --allow-unauthenticated if a "
                 "firewall already restricts who can reach it.")
    # Heavy imports after flag parsing, so --help is instant.
    from workers.app import create_app
    from workers.engines.select import create_engine
    from workers.model_spec import UnsupportedCheckpoint, detect_model_spec

    try:
        spec = detect_model_spec(settings.model_path)
    except (UnsupportedCheckpoint, FileNotFoundError) as exc:
        sys.exit(f"error: cannot serve {settings.model_path}: {exc}")
    engine = create_engine(settings, spec)
    serve(create_app(settings, engine), host=settings.host, port=settings.port, log_level=settings.log_level,
          head_timeout_s=settings.header_timeout_s)


if __name__ == "__main__":
    main()
