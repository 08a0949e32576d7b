"""The model selector and the status line above the chat: filled from the controller, refreshed by a timer.

The panel says which workers serve the chosen model (up or down, how many answers in progress); the status line
above the chat says what a reader must know even with the settings closed (no model, controller unreachable,
random-weight demo model, the chosen model gone). 'Max new tokens' is bounded by the model's context length. The
Think toggle is shown only for a model whose card lists the 'thinking' capability.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.client import ControllerClient
from app.errors import describe
from app.limits import max_new_tokens_bound, served_limits
from app.texts import EN, tr
from common.errors import ServingError


async def model_overview(client: ControllerClient, lang: str = EN) -> tuple[list[dict[str, Any]], str | None]:
    """(model cards with worker details, error text or None). Never raises: the panel shows the problem."""
    try:
        cards = await client.models()
        workers = {w.worker_id: w for w in await client.workers()}
    except ServingError as err:
        return [], describe(err, lang)
    out = []
    for card in cards:
        served_by = [workers[w] for w in card.workers or [] if w in workers] or \
            [w for w in workers.values() if card.id in w.models]
        out.append({"id": card.id, "random_weights": card.random_weights, "family": card.family,
                    "thinking": "thinking" in (card.capabilities or []),
                    "engine": card.engine, "context_length": served_limits(card).context_length, "card": card,
                    "workers": [{"id": w.worker_id, "healthy": w.healthy, "in_flight": w.in_flight,
                                 "benched_for_s": w.benched_for_s if w.benched else None} for w in served_by]})
    return out, None


def describe_model(cards: list[dict[str, Any]], model: str | None, error: str | None,
                   lang: str = EN) -> tuple[str, str]:
    """(markdown under the selector, markdown of the status line above the chat; '' hides it)."""
    if error:
        return f"⚠ {error}", tr("controller_down", lang)
    if not cards:
        return "⚠ " + tr("no_model", lang), tr("no_model_banner", lang)
    card = next((c for c in cards if c["id"] == model), None)
    if card is None:
        return tr("pick_model", lang), tr("model_not_served", lang, model=model) if model else ""
    facts = [x for x in (card["family"], card["engine"]) if x]
    if card["context_length"]:
        facts.append(tr("context", lang, n=card["context_length"]))
    workers = ", ".join(tr("worker_state", lang, id=w["id"], state=_state(w, lang), busy=w["in_flight"])
                        for w in card["workers"]) or tr("no_workers", lang)
    info = " · ".join(facts) + "\n\n" + tr("served_by", lang, workers=workers)
    return info.strip(), tr("random_banner", lang) if card["random_weights"] else ""


def _state(worker: dict[str, Any], lang: str) -> str:
    if worker.get("benched_for_s") is not None:  # its circuit breaker is open (controller/breaker.py)
        return tr("benched", lang, s=round(worker["benched_for_s"]))
    return tr("up" if worker["healthy"] else "down", lang)


def _card(cards: list[dict[str, Any]], model: str | None):
    return next((c["card"] for c in cards if c["id"] == model), None)


def _slider(cards: list[dict[str, Any]], model: str | None, current: float | None) -> Any:
    bound = max_new_tokens_bound(served_limits(_card(cards, model)))
    value = min(int(current or 1024), bound)
    return gr.Slider(maximum=bound, value=value)


def _think_toggle(cards: list[dict[str, Any]], model: str | None) -> Any:
    """Visible for a model that can think; hidden and off for any other (a hidden toggle must not stay on)."""
    can = any(c["id"] == model and c["thinking"] for c in cards)
    return gr.Checkbox(visible=True) if can else gr.Checkbox(visible=False, value=False)


async def refresh(client: ControllerClient, current: str | None, max_new_tokens: float | None,
                  lang: str = EN) -> tuple[Any, str, Any, Any, Any]:
    """(dropdown, model info, status line, max-new-tokens slider, Think toggle). Keeps the reader's choice while it
    is served."""
    cards, error = await model_overview(client, lang)
    ids = [c["id"] for c in cards]
    value = current if current in ids or (error and current) else (ids[0] if ids else None)
    info, status = describe_model(cards, value, error, lang)
    return (gr.Dropdown(choices=ids or ([current] if current else []), value=value), info,
            gr.Markdown(status, visible=bool(status)), _slider(cards, value, max_new_tokens),
            _think_toggle(cards, value))


async def select(client: ControllerClient, model: str | None, max_new_tokens: float | None,
                 lang: str = EN) -> tuple[str, Any, Any, Any]:
    cards, error = await model_overview(client, lang)
    info, status = describe_model(cards, model, error, lang)
    return (info, gr.Markdown(status, visible=bool(status)), _slider(cards, model, max_new_tokens),
            _think_toggle(cards, model))
