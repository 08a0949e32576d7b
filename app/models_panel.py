"""The model selector: fill it from the controller, say which workers serve the chosen model, flag demo weights."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.client import ControllerClient
from app.errors import describe
from common.errors import ServingError


async def model_overview(client: ControllerClient) -> tuple[list[dict[str, Any]], str | None]:
    """(model cards with worker details, error text or None). Never raises: the panel shows the problem."""
    try:
        cards = await client.models()
        workers = {w.worker_id: w for w in await client.workers()}
    except ServingError as err:
        return [], describe(err)
    out = []
    for card in cards:
        served_by = [workers[w] for w in card.workers or [] if w in workers] or \
            [w for w in workers.values() if card.id in w.models]
        out.append({"id": card.id, "random_weights": card.random_weights, "family": card.family,
                    "engine": card.engine, "workers": [{"id": w.worker_id, "healthy": w.healthy,
                                                        "in_flight": w.in_flight} for w in served_by]})
    return out, None


def describe_model(cards: list[dict[str, Any]], model: str | None, error: str | None) -> tuple[str, bool]:
    """(markdown under the selector, whether the random-weights banner shows)."""
    if error:
        return f"⚠ {error}", False
    if not cards:
        return ("⚠ No model is served yet. Start a worker: `python -m workers --model-path PATH`, "
                "then press ↻."), False
    card = next((c for c in cards if c["id"] == model), None)
    if card is None:
        return "Pick a model.", False
    kind = " · ".join(x for x in (card["family"], card["engine"]) if x)
    workers = ", ".join(f"`{w['id']}` {'(up)' if w['healthy'] else '(down)'} {w['in_flight']} busy"
                        for w in card["workers"]) or "none"
    return f"{kind}\n\nServed by: {workers}" if kind else f"Served by: {workers}", card["random_weights"]


async def refresh(client: ControllerClient, current: str | None) -> tuple[Any, str, Any]:
    cards, error = await model_overview(client)
    ids = [c["id"] for c in cards]
    value = current if current in ids else (ids[0] if ids else None)
    info, random_weights = describe_model(cards, value, error)
    return gr.Dropdown(choices=ids, value=value), info, gr.Markdown(visible=random_weights)


async def select(client: ControllerClient, model: str | None) -> tuple[str, Any]:
    cards, error = await model_overview(client)
    info, random_weights = describe_model(cards, model, error)
    return info, gr.Markdown(visible=random_weights)
