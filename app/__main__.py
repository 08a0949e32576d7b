"""`python -m app --controller-url http://127.0.0.1:21001 --port 7860` (all flags: --help)."""

from __future__ import annotations

import logging
import os
import tempfile

from pydantic_settings import CliApp

from app.settings import UISettings


def main() -> None:
    settings = CliApp.run(UISettings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel("WARNING")  # the model panel polls the controller every few seconds
    # Uploads go to a folder only this user can read (Gradio's default, /tmp/gradio, follows the umask). Set before
    # gradio is imported: it reads the variable at import time.
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="internvl-ui-uploads-"))
    from app.ui import create_app, launch_options

    demo = create_app(settings)
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(**launch_options(settings, demo))


if __name__ == "__main__":
    main()
