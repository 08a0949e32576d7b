"""Blocks layout and event wiring. `create_app(settings)` builds everything; nothing is created at import time.

Every event has an explicit api_name (or is private) and concurrency limit, so `gradio_client` can drive the chat:
/chat, /regenerate, /undo, /clear, /stop, /models, /select_model, /vote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app import models_panel
from app.client import ControllerClient
from app.conversation_log import ConversationLog
from app.handlers import ChatHandlers
from app.history_guard import GuardedChatbot
from app.i18n import make_i18n
from app.settings import UISettings

STATIC = Path(__file__).resolve().parent.parent / "static"
EXAMPLES = STATIC / "examples"
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False},
         {"left": "\\(", "right": "\\)", "display": False}, {"left": "\\[", "right": "\\]", "display": True}]


def _examples() -> list[dict[str, Any]]:
    return [
        {"display_text": "Describe this picture in detail.", "text": "Describe this picture in detail.",
         "files": [str(EXAMPLES / "landscape.jpg")]},
        {"display_text": "Where is the sun? Give its box.",
         "text": "Please provide the bounding box coordinates of the sun.",
         "files": [str(EXAMPLES / "landscape.jpg")]},
        {"display_text": "Which day had the most visitors?", "text": "Which day had the most visitors, and how many?",
         "files": [str(EXAMPLES / "chart.png")]},
        {"display_text": "What happens in this video?", "text": "What happens in this video?",
         "files": [str(EXAMPLES / "bouncing_ball.mp4")]},
    ]


def create_app(settings: UISettings) -> gr.Blocks:
    client = ControllerClient(settings.controller_url, settings.api_key, settings.request_timeout_s,
                              settings.connect_timeout_s)
    handlers = ChatHandlers(settings, client, ConversationLog(settings.log_dir, settings.logging))
    t = make_i18n()
    limit = settings.concurrency_limit

    age = settings.media_max_age_s  # Gradio deletes its cached uploads and copies past this age
    with gr.Blocks(title="InternVL Chat", fill_height=True, fill_width=True,
                   delete_cache=(max(1, min(age // 2, 600)), age)) as demo:
        with gr.Row(elem_id="app-header"):
            gr.Markdown(f"## {t('title')}", elem_id="app-title")
            gr.Markdown(t("subtitle"), elem_id="app-subtitle")
        banner = gr.Markdown(t("random_banner"), visible=False, elem_id="random-banner")

        with gr.Sidebar(label=t("settings"), position="right", open=True, width=330, elem_id="settings"):
            with gr.Row(equal_height=False, elem_id="model-row"):
                model = gr.Dropdown(label=t("model"), choices=[], value=None, scale=5, elem_id="model-select",
                                    allow_custom_value=True)
                refresh = gr.Button(t("refresh"), scale=0, min_width=44, elem_id="refresh-models", size="sm")
            model_info = gr.Markdown(elem_id="model-info")
            system_prompt = gr.Textbox(label=t("system_prompt"), placeholder=t("system_placeholder"), lines=2,
                                       max_lines=8)
            with gr.Accordion(t("sampling"), open=True):
                temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label=t("temperature"), elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label=t("top_p"))
                max_new_tokens = gr.Slider(16, 4096, value=1024, step=16, label=t("max_new_tokens"))
                repetition_penalty = gr.Slider(1.0, 1.5, value=1.05, step=0.01, label=t("repetition_penalty"))
            with gr.Accordion(t("vision"), open=True):
                max_tiles = gr.Slider(1, 40, value=settings.default_max_tiles, step=1, label=t("max_tiles"))
                num_frames = gr.Slider(1, 64, value=settings.default_num_frames, step=1, label=t("num_frames"))

        chatbot = GuardedChatbot(label=t("chat_label"), show_label=False, elem_id="chat", scale=1, height="62vh",
                                 min_height=320, latex_delimiters=LATEX, sanitize_html=True, render_markdown=True,
                                 allow_tags=False, buttons=["copy", "copy_all"], feedback_options=("Like", "Dislike"),
                                 placeholder=t("chat_placeholder"), examples=_examples(), layout="bubble",
                                 group_consecutive_messages=False)
        box = gr.MultimodalTextbox(placeholder=t("input_placeholder"), show_label=False, elem_id="input",
                                   file_types=["image", "video", ".gif", ".avi", ".mov", ".webm", ".mkv"],
                                   file_count="multiple", sources=["upload"], lines=1, max_lines=8,
                                   autofocus=True, submit_btn=True)
        with gr.Row(elem_id="actions"):
            stop = gr.Button(t("stop"), variant="stop", interactive=False, elem_id="stop-btn", size="sm")
            regen = gr.Button(t("regenerate"), elem_id="regen-btn", size="sm")
            undo = gr.Button(t("undo"), elem_id="undo-btn", size="sm")
            clear = gr.Button(t("clear"), elem_id="clear-btn", size="sm")

        params = [model, system_prompt, temperature, top_p, max_new_tokens, repetition_penalty, max_tiles,
                  num_frames]
        controls = [stop, regen, undo, clear]

        def lock():
            return gr.MultimodalTextbox(interactive=False), gr.Button(interactive=True), \
                *[gr.Button(interactive=False)] * 3

        def unlock():
            return gr.MultimodalTextbox(interactive=True), gr.Button(interactive=False), \
                *[gr.Button(interactive=True)] * 3

        private = {"api_visibility": "private", "queue": False}
        chat_step = box.submit(lock, None, [box, *controls], **private).then(
            handlers.chat, [box, chatbot, *params], [chatbot, box], api_name="chat", concurrency_limit=limit,
            concurrency_id="generate", show_progress="hidden")
        chat_step.then(unlock, None, [box, *controls], **private)

        regen_step = regen.click(lock, None, [box, *controls], **private).then(
            handlers.regenerate_chat, [chatbot, *params], chatbot, api_name="regenerate", concurrency_limit=limit,
            concurrency_id="generate", show_progress="hidden")
        regen_step.then(unlock, None, [box, *controls], **private)

        # Cancelling the streaming task closes the HTTP stream to the controller, which aborts the generation.
        stop.click(unlock, None, [box, *controls], cancels=[chat_step, regen_step], api_name="stop",
                   concurrency_limit=None, queue=False)
        undo.click(handlers.undo, chatbot, [chatbot, box], api_name="undo", concurrency_limit=None, queue=False)
        clear.click(handlers.clear, None, [chatbot, box], api_name="clear", concurrency_limit=None, queue=False)
        chatbot.like(handlers.vote, chatbot, None, api_name="vote", concurrency_limit=None)
        chatbot.example_select(_example_to_box, None, box, api_name=False, concurrency_limit=None)

        async def refresh_models(current):
            return await models_panel.refresh(client, current)

        async def select_model(name):
            return await models_panel.select(client, name)

        for trigger, name in ((refresh.click, "models"), (demo.load, False)):
            trigger(refresh_models, model, [model, model_info, banner], api_name=name, concurrency_limit=None)
        model.input(select_model, model, [model_info, banner], api_name="select_model", concurrency_limit=None)

    demo.internvl_i18n = t  # launch() takes the translations
    return demo


def _example_to_box(evt: gr.SelectData) -> dict[str, Any]:
    value = evt.value or {}
    files = [f.get("path") if isinstance(f, dict) else f for f in value.get("files") or []]
    return {"text": value.get("text", ""), "files": files}


def launch_options(settings: UISettings, demo: gr.Blocks) -> dict[str, Any]:
    return {"server_name": settings.host, "server_port": settings.port, "share": settings.share,
            "max_file_size": f"{settings.max_upload_mb}mb", "i18n": getattr(demo, "internvl_i18n", None),
            "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="sky"),
            "css_paths": [STATIC / "style.css"], "js": (STATIC / "phone.js").read_text(),
            "allowed_paths": [str(EXAMPLES)], "show_error": True}
