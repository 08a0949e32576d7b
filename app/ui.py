"""Blocks layout and event wiring. `create_app(settings)` builds everything; nothing is created at import time.

Every event has an explicit api_name (or is private) and concurrency limit, so `gradio_client` can drive the chat:
/chat, /regenerate, /undo, /clear, /models, /select_model, /vote (a client stops an answer with `job.cancel()`).

Locking and unlocking the input while an answer streams happens in the browser (`js=` steps, no server round
trip); the unlock step runs after the answer ends whether it succeeded, failed or was stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import httpx
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from app import models_panel, past_chats
from app.copy_answer import COPY_ANSWER_JS, COPY_WITH_REASONING_JS
from app.client import ControllerClient
from app.conversation_log import ConversationLog
from app.handlers import ChatHandlers
from app.history_guard import GuardedChatbot
from app.i18n import labels, make_i18n
from app.settings import UISettings
from app.texts import language
from app.upload_quota import UploadQuota
from common.bounded_http import bounded_http, make_default
from common.media_types import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

STATIC = Path(__file__).resolve().parent.parent / "static"
EXAMPLES = STATIC / "examples"
# A lone '$' is ordinary text (prices, shell variables); inline math uses \( \) as InternVL writes it.
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "\\(", "right": "\\)", "display": False},
         {"left": "\\[", "right": "\\]", "display": True}]
MODEL_REFRESH_S = 5.0
FONTS = ["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Noto Sans",
         "PingFang SC", "PingFang TC", "Hiragino Sans GB", "Microsoft YaHei", "Microsoft JhengHei",
         "Noto Sans CJK SC", "Noto Sans CJK TC", "Source Han Sans SC", "WenQuanYi Micro Hei", "sans-serif"]


def _update(**props: Any) -> str:
    return "{__type__: 'update', " + ", ".join(f"{k}: {str(v).lower()}" for k, v in props.items()) + "}"


# Outputs: [input box, stop, regenerate, undo, clear, new chat]
LOCK_JS = f"() => [{_update(interactive=False)}, {_update(interactive=True)}, " + \
    ", ".join([_update(interactive=False)] * 4) + "]"
UNLOCK_JS = f"() => [{_update(interactive=True)}, {_update(interactive=False)}, " + \
    ", ".join([_update(interactive=True)] * 4) + "]"


def _examples(lang: str = "en") -> list[dict[str, Any]]:
    """The welcome card's examples in the reader's language (Gradio does not translate example props)."""
    t = labels(lang).__getitem__
    return [
        {"display_text": t("ex_describe"), "text": t("ex_describe"), "files": [str(EXAMPLES / "landscape.jpg")]},
        {"display_text": t("ex_ground"), "text": t("ex_ground_prompt"), "files": [str(EXAMPLES / "landscape.jpg")]},
        {"display_text": t("ex_chart"), "text": t("ex_chart_prompt"), "files": [str(EXAMPLES / "chart.png")]},
        {"display_text": t("ex_video"), "text": t("ex_video"), "icon": str(EXAMPLES / "bouncing_ball.jpg"),
         "files": [str(EXAMPLES / "bouncing_ball.mp4")]},
    ]


def _served_model_ids(settings: UISettings) -> list[str]:
    """The models served at start-up, so the API description lists them; the page refreshes the list itself."""
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        data = httpx.get(settings.controller_url.rstrip("/") + "/v1/models", headers=headers, timeout=3.0).json()
        return [m["id"] for m in data.get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return []


def create_app(settings: UISettings, work_dir: Path | None = None) -> gr.Blocks:
    """`work_dir`: where generated files go (app/temp_folders.py); None: a new temporary folder."""
    client = ControllerClient(settings.controller_url, settings.api_key, settings.request_timeout_s,
                              settings.connect_timeout_s)
    handlers = ChatHandlers(settings, client, ConversationLog(settings.log_dir, settings.logging), work_dir)
    t = make_i18n()
    limit = settings.concurrency_limit
    model_ids = _served_model_ids(settings)

    age = settings.media_max_age_s  # Gradio deletes its cached uploads and copies past this age
    with gr.Blocks(title="InternVL Chat", fill_height=True, fill_width=True,
                   delete_cache=(max(1, min(age // 2, 600)), age)) as demo:
        with gr.Row(elem_id="app-header"):
            gr.Markdown(f"## {t('title')}", elem_id="app-title")
            gr.Markdown(t("subtitle"), elem_id="app-subtitle")
        status = gr.Markdown("", visible=False, elem_id="status-line")
        saved = gr.BrowserState([], storage_key="internvl-chats")
        chat_id = gr.State(None)

        with gr.Sidebar(label=t("chats"), position="left", open=True, width=250, elem_id="chats"):
            new_chat = gr.Button(t("new_chat"), elem_id="new-chat-btn", size="sm", variant="secondary")
            chat_search = gr.Textbox(placeholder=t("search_chats"), show_label=False, elem_id="chat-search",
                                     max_lines=1)
            chat_list = gr.Radio(label=t("past_chats"), choices=[], value=None, elem_id="chat-list")
            export_btn = gr.Button(t("export_chat"), elem_id="export-btn", size="sm")
            exported = gr.File(label=t("exported"), file_count="multiple", visible=False, interactive=False,
                               elem_id="exported")
            import_btn = gr.UploadButton(t("import_chat"), file_types=[".json"], elem_id="import-btn", size="sm")

        with gr.Sidebar(label=t("settings"), position="right", open=True, width=330, elem_id="settings"):
            with gr.Row(equal_height=False, elem_id="model-row"):
                model = gr.Dropdown(label=t("model"), choices=model_ids, value=model_ids[0] if model_ids else None,
                                    scale=5, elem_id="model-select", allow_custom_value=True)
                refresh = gr.Button(t("refresh"), scale=0, min_width=44, elem_id="refresh-models", size="sm")
            model_info = gr.Markdown(elem_id="model-info")
            system_prompt = gr.Textbox(label=t("system_prompt"), placeholder=t("system_placeholder"), lines=2,
                                       max_lines=8)
            # shown only for models whose card lists the 'thinking' capability (app/models_panel.py)
            think = gr.Checkbox(label=t("think"), value=False, visible=False, elem_id="think-toggle")
            with gr.Accordion(t("sampling"), open=True):
                temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label=t("temperature"), elem_id="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label=t("top_p"))
                max_new_tokens = gr.Slider(16, 4096, value=1024, step=16, label=t("max_new_tokens"),
                                           elem_id="max-new-tokens")
                repetition_penalty = gr.Slider(1.0, 1.5, value=1.05, step=0.01, label=t("repetition_penalty"))
            with gr.Accordion(t("vision"), open=True):
                max_tiles = gr.Slider(1, 40, value=settings.default_max_tiles, step=1, label=t("max_tiles"))
                num_frames = gr.Slider(1, 64, value=settings.default_num_frames, step=1, label=t("num_frames"))

        chatbot = GuardedChatbot(label="history", show_label=False, elem_id="chat", scale=1, min_height=240,
                                 latex_delimiters=LATEX, sanitize_html=True, render_markdown=True, allow_tags=False,
                                 buttons=["copy", "copy_all"], feedback_options=("Like", "Dislike"),
                                 placeholder=t("chat_placeholder"), examples=_examples(), layout="bubble",
                                 group_consecutive_messages=True, editable="user", autoscroll=True)
        box = gr.MultimodalTextbox(label="message", placeholder=t("input_placeholder"), show_label=False,
                                   elem_id="input",  # the categories for pasted files; the list for the rest
                                   file_types=["image", "video", *sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)],
                                   file_count="multiple", sources=["upload"], lines=1, max_lines=8,
                                   autofocus=True, submit_btn=True)
        with gr.Row(elem_id="actions"):
            stop = gr.Button(t("stop"), variant="stop", interactive=False, elem_id="stop-btn", size="sm")
            regen = gr.Button(t("regenerate"), elem_id="regen-btn", size="sm")
            undo = gr.Button(t("undo"), elem_id="undo-btn", size="sm")
            clear = gr.Button(t("clear"), elem_id="clear-btn", size="sm")
            copy_answer = gr.Button(t("copy_answer"), elem_id="copy-answer-btn", size="sm")
            copy_reasoning = gr.Button(t("copy_with_reasoning"), elem_id="copy-reasoning-btn", size="sm")
        timer = gr.Timer(MODEL_REFRESH_S)

        params = [model, system_prompt, temperature, top_p, max_new_tokens, repetition_penalty, max_tiles,
                  num_frames, think]
        locked = [box, stop, regen, undo, clear, new_chat]
        browser_only = {"api_visibility": "private", "queue": False}
        generating = {"concurrency_limit": limit, "concurrency_id": "generate", "show_progress": "hidden"}

        def answer(first_step, fn, inputs, outputs, api_name):
            """lock (first_step) -> fn streams -> unlock (in the browser, also after a failure) -> the chat saved
            in this browser's list."""
            step = first_step.then(fn, inputs, outputs, api_name=api_name, **generating)
            step.then(None, None, locked, js=UNLOCK_JS, **browser_only).then(
                past_chats.save, [chatbot, chat_id, saved], [saved, chat_id, chat_list], **browser_only)
            step.failure(None, None, locked, js=UNLOCK_JS, **browser_only)
            return step

        def lock_in_browser(trigger):
            return trigger(None, None, locked, js=LOCK_JS, **browser_only)

        def apply_edit(history, edit: gr.EditData, request: gr.Request):
            # the edit's data reaches only the first step of a chain: this step applies it (and locks)
            return handlers.apply_edit(history, edit, request), gr.update(interactive=False), \
                gr.update(interactive=True), *[gr.update(interactive=False)] * 4

        chat_step = answer(lock_in_browser(box.submit), handlers.chat, [box, chatbot, *params], [chatbot, box], "chat")
        regen_step = answer(lock_in_browser(regen.click), handlers.regenerate_chat, [chatbot, *params], chatbot,
                            "regenerate")
        edit_step = answer(chatbot.edit(apply_edit, chatbot, [chatbot, *locked], **browser_only),
                           handlers.regenerate_chat, [chatbot, *params], chatbot, False)

        # Cancelling the streaming event closes the HTTP stream to the controller, which aborts the generation.
        stop.click(None, None, locked, js=UNLOCK_JS, cancels=[chat_step, regen_step, edit_step],
                   **browser_only).then(handlers.stopped, chatbot, chatbot, **browser_only).then(
            past_chats.save, [chatbot, chat_id, saved], [saved, chat_id, chat_list], **browser_only)
        undo.click(handlers.undo, chatbot, [chatbot, box], api_name="undo", concurrency_limit=None, queue=False)
        clear.click(handlers.clear, None, [chatbot, box], api_name="clear", concurrency_limit=None, queue=False)
        for trigger in (clear.click, new_chat.click):
            trigger(past_chats.start_new, saved, [chatbot, chat_id, chat_list], **browser_only)
        chat_list.input(past_chats.open_chat, [chat_list, saved], [chatbot, chat_id], **browser_only)
        copy_answer.click(None, chatbot, None, js=COPY_ANSWER_JS, **browser_only)
        copy_reasoning.click(None, chatbot, None, js=COPY_WITH_REASONING_JS, **browser_only)
        chat_search.change(past_chats.search, [chat_search, saved], chat_list, **browser_only)
        export_btn.click(_shown(handlers.export_chat), chatbot, exported, **browser_only)
        import_btn.upload(handlers.import_chat, import_btn, [chatbot, chat_id], **browser_only).then(
            past_chats.save, [chatbot, chat_id, saved], [saved, chat_id, chat_list], **browser_only)
        chatbot.like(handlers.vote, chatbot, None, api_name="vote", concurrency_limit=None)
        chatbot.example_select(_example_to_box, None, box, api_name=False, concurrency_limit=None)

        async def refresh_models(current, max_tokens, request: gr.Request):
            return await models_panel.refresh(client, current, max_tokens, language(request))

        async def select_model(name, max_tokens, request: gr.Request):
            return await models_panel.select(client, name, max_tokens, language(request))

        panel = [model, model_info, status, max_new_tokens, think]
        refresh.click(refresh_models, [model, max_new_tokens], panel, api_name="models", concurrency_limit=None)
        for trigger in (demo.load, timer.tick):
            trigger(refresh_models, [model, max_new_tokens], panel, api_visibility="private", concurrency_limit=None,
                    show_progress="hidden")
        model.input(select_model, [model, max_new_tokens], [model_info, status, max_new_tokens, think],
                    api_name="select_model", concurrency_limit=None)
        demo.load(past_chats.listing, saved, chat_list, **browser_only)
        demo.load(_localized_examples, None, chatbot, **browser_only)
        demo.unload(handlers.end_session)

    demo.internvl_i18n = t  # launch() takes the translations
    return demo


def _shown(export):
    """The export's files in the (otherwise hidden) download box."""
    def run(history, request: gr.Request):
        files = export(history, request)
        return gr.File(value=files, visible=bool(files))
    return run


def _localized_examples(request: gr.Request) -> Any:
    return gr.Chatbot(examples=_examples(language(request)))


def _example_to_box(evt: gr.SelectData) -> dict[str, Any]:
    value = evt.value or {}
    files = [f.get("path") if isinstance(f, dict) else f for f in value.get("files") or []]
    return {"text": value.get("text", ""), "files": files}


def launch_options(settings: UISettings, demo: gr.Blocks) -> dict[str, Any]:
    # Gradio starts its own uvicorn: the bounds on request heads and declared bodies go in as its default protocol.
    # One request's body: a whole session's uploads at most (an upload request may carry several files).
    make_default(bounded_http(head_timeout_s=settings.header_timeout_s,
                              max_body_bytes=(settings.session_upload_mb + 1) * 1024 * 1024))
    return {"server_name": settings.host, "server_port": settings.port, "share": settings.share,
            "max_file_size": f"{settings.max_upload_mb}mb", "i18n": getattr(demo, "internvl_i18n", None),
            "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", font=FONTS),
            "css_paths": [STATIC / "style.css"], "js": (STATIC / "phone.js").read_text(),
            "allowed_paths": [str(EXAMPLES)], "show_error": True,
            # Gradio's own run history would keep a second, unencrypted copy of every conversation in the browser
            # (inputs and outputs of up to 100 runs, rewritten every 500 ms while an answer streams): the past chats
            # list is this app's one copy, and the rewriting made the page slower as chats accumulated.
            "run_history": False,
            "app_kwargs": {"middleware": [Middleware(UploadQuota, folder=get_upload_folder(),
                                                     limit_bytes=settings.total_upload_mb * 1024 * 1024)]}}
