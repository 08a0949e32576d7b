"""Start the web UI (`python -m app`, a real process) on a free port against a controller; stop it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.stack import ROOT, free_port


@dataclass
class UIProcess:
    url: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_ui(controller_url: str, log_dir: Path, conversation_dir: Path, *extra: str,
             root: Path = ROOT, env: dict[str, str | None] | None = None) -> UIProcess:
    """`root`: the checkout whose app/ runs (benchmarks compare two). `env`: variables to set (None: to unset)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"ui-{port}.log"
    env = {k: v for k, v in {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1", **(env or {})}.items()
           if v is not None}
    with open(log_path, "ab") as out:
        popen = subprocess.Popen([sys.executable, "-m", "app", "--controller-url", controller_url, "--port", str(port),
                                  "--log-dir", str(conversation_dir), *extra], cwd=root, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    ui = UIProcess(f"http://127.0.0.1:{port}", popen, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError("UI exited:\n" + log_path.read_text()[-3000:])
        try:
            if httpx.get(ui.url + "/gradio_api/info", timeout=2).status_code == 200:
                return ui
        except httpx.HTTPError:
            time.sleep(0.2)
    ui.stop()
    raise RuntimeError("UI did not start:\n" + log_path.read_text()[-3000:])
