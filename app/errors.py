"""Turn a ServingError from the controller into a message that says what happened and what to do next.

Chosen by error code (never by matching message text). In English the server's own message comes first because it
names the specifics (which model, which file, how many tokens); in Chinese a translated headline comes first and the
server's detail follows it.
"""

from __future__ import annotations

from app.client import CONTROLLER
from app.texts import EN, ERROR_HEADLINES, NEXT_STEPS
from common.errors import ServingError


def describe(err: ServingError, lang: str = EN) -> str:
    message = err.message.rstrip(".")
    message = message[:1].upper() + message[1:]
    code = "controller" if err.param == CONTROLLER else err.code.value
    steps = NEXT_STEPS.get(code, NEXT_STEPS[""])
    step = steps.get(lang, steps[EN])
    headline = ERROR_HEADLINES.get(code, {}).get(lang)
    if lang != EN:
        return f"{headline or ''}（{message}）\n\n{step}"
    return f"{message}.\n\n{step}"
