"""All sessions' uploads together are bounded: an upload that would take Gradio's upload folder past
--total-upload-mb is refused (413) from its declared length, before its body is read. (One session's share is
checked when its message is sent, app/handlers.py; one request's size by the server's protocol,
common/bounded_http.py.) Uploads leave when their session ends or after --media-max-age-s."""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import ErrorCode, error_body

UPLOAD_PATH = "/gradio_api/upload"


class UploadQuota:
    """Pure ASGI middleware for Gradio's app (given to it through launch's `app_kwargs`)."""

    def __init__(self, app: ASGIApp, folder: str, limit_bytes: int):
        self.app = app
        self.folder = Path(folder)
        self.limit = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(UPLOAD_PATH):
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            held = folder_bytes(self.folder)
            if held + (int(declared) if declared.isdigit() else 0) > self.limit:
                await _refuse(send, f"the server's uploads are full ({held / 2**20:.0f} MB of "
                                    f"{self.limit / 2**20:.0f} MB); try again later, or send smaller files")
                return
        await self.app(scope, receive, send)


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps(error_body(ErrorCode.REQUEST_TOO_LARGE, message)).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
