"""`python -m controller --port 21001 ...` (all flags: --help)."""

from __future__ import annotations

from pydantic_settings import CliApp

from common.glibc_malloc import M_MMAP_THRESHOLD, M_TOP_PAD, M_TRIM_THRESHOLD, set_malloc
from common.logging_setup import setup_logging
from common.serve import serve
from controller.app import create_app
from controller.settings import ControllerSettings


# The relay makes and frees a buffer of up to a few hundred KiB per network read of a stream. With glibc's defaults
# each one came from a fresh mapping or a heap grown and trimmed again, and page faults on its first touch cost as
# much as the rest of the relay: a relay on raw protocols took 22 ms of CPU per 60,000-token stream, 10.4 ms with
# these settings (vllm-router: 10.7 ms) (bench/relay_floor.py --tokens 60000, BENCHMARKS.md). Buffers under 1 MiB
# now come from a heap that keeps up to 32 MiB free before it shrinks; larger ones (a big request body) are still
# their own mappings, given back when freed.
RELAY_MALLOC = {M_MMAP_THRESHOLD: 1024 * 1024, M_TRIM_THRESHOLD: 32 * 1024 * 1024, M_TOP_PAD: 4 * 1024 * 1024}


def main() -> None:
    settings = CliApp.run(ControllerSettings)
    setup_logging(settings.log_level, settings.log_format)
    set_malloc(RELAY_MALLOC, "each relayed read may cost page faults")
    serve(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
          head_timeout_s=settings.header_timeout_s)


if __name__ == "__main__":
    main()
