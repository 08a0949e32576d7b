"""The web UI's memory after large pasted messages, each refused as too long for the model (issue 22, item 3).

    .venv/bin/python bench/ui_memory_bench.py                  # 10 messages of 10 MB, then 60 s idle (~6 min)
    .venv/bin/python bench/ui_memory_bench.py --messages 3 --idle-s 10

Real processes on loopback: a controller, a scripted worker (tests/support/scripted_engine.py) with the demo
checkpoint's context, the web UI (`python -m app`), driven through gradio_client's /chat. Prints the UI's RSS once
idle after one turn, after each message, and after the idle time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.raw_http import rss_mib  # noqa: E402
from tests.support.stack import SCRIPTED, start_controller, start_worker  # noqa: E402
from tests.support.ui_process import start_ui  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--message-mb", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=60.0)
    args = parser.parse_args()

    from gradio_client import Client

    from workers.demo_checkpoint import build_demo_checkpoint

    work = Path(tempfile.mkdtemp(prefix="ui-memory-bench-"))
    checkpoint = build_demo_checkpoint(work / "ckpt", seed=0)
    controller = start_controller(work)
    worker = start_worker(work, checkpoint, controller.url, engine=SCRIPTED, model_name="m")
    ui = start_ui(controller.url, work, work / "conversations")
    try:
        client = Client(ui.url + "/", verbose=False, download_files=False)
        settings = ("", 0.7, 0.9, 32, 1.05, 2, 4)
        client.predict({"text": "hi", "files": []}, [], "m", *settings, api_name="/chat")
        print(f"idle after one turn: {rss_mib(ui.popen.pid):.0f} MiB")
        pasted = ("word " * int(args.message_mb * 2**20 / 5 + 1))[:int(args.message_mb * 1e6)]
        for i in range(args.messages):
            client.predict({"text": pasted, "files": []}, [], "m", *settings, api_name="/chat")
            print(f"after message {i + 1}: {rss_mib(ui.popen.pid):.0f} MiB")
        time.sleep(args.idle_s)
        print(f"after {args.idle_s:.0f} s idle: {rss_mib(ui.popen.pid):.0f} MiB")
        log_bytes = sum(f.stat().st_size for f in (work / "conversations").rglob("*") if f.is_file())
        print(f"conversation log: {log_bytes / 1024:.0f} KiB")
    finally:
        ui.stop()
        worker.stop()
        controller.stop()


if __name__ == "__main__":
    main()
