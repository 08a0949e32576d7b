"""The web UI's temporary folders: made when it starts, removed when it stops cleanly (Ctrl-C or SIGTERM).

Without GRADIO_TEMP_DIR: one private folder `internvl-ui-*` in the system's temporary folder holds Gradio's uploads
(`uploads/`, set as GRADIO_TEMP_DIR before Gradio is imported: it reads the variable then) and the UI's generated
files (`generated/`: grounding previews). With GRADIO_TEMP_DIR set, the operator's folder holds both, the generated
files in a folder of ours, and nothing is made in the system's temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def ui_temp_folders() -> Iterator[Path]:
    """-> the folder for generated files. Enter before importing gradio."""
    given = os.environ.get("GRADIO_TEMP_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        own = Path(tempfile.mkdtemp(prefix="internvl-ui-", dir=given))
    else:
        # Uploads go to a folder only this user can read (Gradio's default, /tmp/gradio, follows the umask).
        own = Path(tempfile.mkdtemp(prefix="internvl-ui-"))
        (own / "uploads").mkdir(mode=0o700)
        os.environ["GRADIO_TEMP_DIR"] = str(own / "uploads")
    generated = own / "generated"
    generated.mkdir(mode=0o700)
    # SIGTERM (a supervisor's stop) would end the process without unwinding; as an interrupt, Gradio's launch()
    # closes its server and returns, and the folders go below.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield generated
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(own, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
