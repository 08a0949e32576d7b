"""UI text in English and Chinese; Gradio picks the browser's language in the frontend (static text only)."""

from __future__ import annotations

import gradio as gr

EN = {
    "title": "InternVL Chat",
    "subtitle": "Ask about images and videos: attach them with the clip button or drop them on the box.",
    "input_placeholder": "Ask anything; attach images or videos (mp4, webm, mov, avi, gif)…",
    "chat_label": "Chat",
    "chat_placeholder": "### Welcome\nAttach an image or a video, ask a question, press Enter.\n"
                        "Try an example below, or ask for boxes: *Please provide the bounding box of the sun.*",
    "stop": "■ Stop",
    "regenerate": "↻ Regenerate",
    "undo": "↩ Undo",
    "clear": "✕ Clear",
    "settings": "Settings",
    "model": "Model",
    "refresh": "↻",
    "system_prompt": "System prompt",
    "system_placeholder": "Optional; empty uses the model's default",
    "temperature": "Temperature",
    "top_p": "Top-p",
    "max_new_tokens": "Max new tokens",
    "repetition_penalty": "Repetition penalty",
    "max_tiles": "Max tiles per image",
    "num_frames": "Frames per video",
    "sampling": "Sampling",
    "vision": "Images and video",
    "random_banner": "⚠ **Demo model with random weights.** It runs the real serving path, but its answers are noise. "
                     "Start a worker with a real InternVL checkpoint for meaningful answers.",
    "examples": "Examples",
}

ZH = {
    "title": "InternVL 对话",
    "subtitle": "就图片和视频提问：用回形针按钮添加，或直接拖到输入框。",
    "input_placeholder": "输入问题；可添加图片或视频（mp4、webm、mov、avi、gif）…",
    "chat_label": "对话",
    "chat_placeholder": "### 欢迎\n添加图片或视频，输入问题，按回车发送。\n"
                        "试试下面的示例，或让模型框出物体：*请给出太阳的边界框。*",
    "stop": "■ 停止",
    "regenerate": "↻ 重新生成",
    "undo": "↩ 撤销",
    "clear": "✕ 清空",
    "settings": "设置",
    "model": "模型",
    "refresh": "↻",
    "system_prompt": "系统提示词",
    "system_placeholder": "可选；留空则使用模型默认值",
    "temperature": "温度",
    "top_p": "Top-p",
    "max_new_tokens": "最大生成长度",
    "repetition_penalty": "重复惩罚",
    "max_tiles": "每张图片最多切块数",
    "num_frames": "每个视频采样帧数",
    "sampling": "采样",
    "vision": "图片与视频",
    "random_banner": "⚠ **演示模型使用随机权重。** 它走真实的服务链路，但回答没有意义。"
                     "请用真实的 InternVL 权重启动 worker 以获得有意义的回答。",
    "examples": "示例",
}


def make_i18n() -> gr.I18n:
    return gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH})
