"""Turn a ServingError from the controller into a message that says what happened and what to do next.

Chosen by error code (never by matching message text); the server's own message comes first because it names
the specifics (which model, which file, how many tokens).
"""

from __future__ import annotations

from common.errors import ErrorCode, ServingError

_NEXT_STEP: dict[ErrorCode, str] = {
    ErrorCode.NO_WORKER: "If the model is reconnecting (./launch.sh restarts a worker or controller that stopped), "
                         "press Regenerate in a few seconds. Otherwise Start a worker: `python -m workers --model-path "
                         "PATH --controller-url URL`, then press ↻ next to the model list.",
    ErrorCode.MODEL_NOT_FOUND: "Press ↻ next to the model list and pick a model that is served now.",
    ErrorCode.CONTEXT_TOO_LONG: "Start a new chat (Clear), lower 'Max new tokens', or use fewer images, fewer tiles per "
                                "image or fewer frames per video (Settings).",
    ErrorCode.INVALID_IMAGE: "Press Undo to get your message back, remove that image and try another file.",
    ErrorCode.INVALID_VIDEO: "Press Undo to get your message back, remove that video and try another file.",
    ErrorCode.UPLOAD_TOO_LARGE: "Press Undo to get your message back and use a smaller or shorter file.",
    ErrorCode.REQUEST_TOO_LARGE: "Every turn sends all earlier images and videos again: press Clear to start a new "
                                 "chat, or Undo and send fewer or smaller files.",
    ErrorCode.WORKER_BUSY: "Every worker is busy right now; press Regenerate in a moment.",
    ErrorCode.WORKER_LOST: "The worker stopped answering; press Regenerate to try another one.",
    ErrorCode.WORKER_TIMEOUT: "The worker took too long; press Regenerate, or lower 'Max new tokens'.",
    ErrorCode.UNAUTHORIZED: "Start the UI with `--api-key KEY` matching the controller's key.",
    ErrorCode.INVALID_REQUEST: "Check the settings and your files, then press Regenerate.",
}


def describe(err: ServingError) -> str:
    message = err.message.rstrip(".")
    message = message[:1].upper() + message[1:]
    step = _NEXT_STEP.get(err.code, "Press Regenerate to try again.")
    return f"{message}.\n\n{step}"
