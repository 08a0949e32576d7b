"""Fixed UI labels in English, Simplified and Traditional Chinese; the browser picks by its language (zh-TW, zh-HK
and zh-Hant get Traditional). Text composed at run time (notes, toasts, model info) is in app/texts.py."""

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
    "think": "Think (reason before answering)",
    "sampling": "Sampling",
    "vision": "Images and video",
    "examples": "Examples",
    "chats": "Chats",
    "new_chat": "+ New chat",
    "past_chats": "Past chats (kept in this browser)",
    "delete_chat": "Delete this chat",
    "search_chats": "Search chats",
    "export_chat": "⤓ Export this chat",
    "import_chat": "⤒ Import a chat (.json)",
    "exported": "Exported (Markdown to read, JSON to import)",
    "ex_describe": "Describe this picture in detail.",
    "ex_ground": "Where is the sun? Give its box.",
    "ex_ground_prompt": "Please provide the bounding box coordinates of the sun.",
    "ex_chart": "Which day had the most visitors?",
    "ex_chart_prompt": "Which day had the most visitors, and how many?",
    "ex_video": "What happens in this video?",
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
    "think": "思考（先推理再回答）",
    "sampling": "采样",
    "vision": "图片与视频",
    "examples": "示例",
    "chats": "对话",
    "new_chat": "+ 新对话",
    "past_chats": "历史对话（保存在本浏览器中）",
    "delete_chat": "删除此对话",
    "search_chats": "搜索对话",
    "export_chat": "⤓ 导出此对话",
    "import_chat": "⤒ 导入对话（.json）",
    "exported": "已导出（Markdown 供阅读，JSON 可再导入）",
    "ex_describe": "详细描述这张图片。",
    "ex_ground": "太阳在哪里？给出它的框。",
    "ex_ground_prompt": "请给出太阳的边界框坐标。",
    "ex_chart": "哪一天的访客最多？",
    "ex_chart_prompt": "哪一天的访客最多？有多少人？",
    "ex_video": "这个视频里发生了什么？",
}

ZH_HANT = {
    "title": "InternVL 對話",
    "subtitle": "就圖片和影片提問：用迴紋針按鈕加入，或直接拖到輸入框。",
    "input_placeholder": "輸入問題；可加入圖片或影片（mp4、webm、mov、avi、gif）…",
    "chat_label": "對話",
    "chat_placeholder": "### 歡迎\n加入圖片或影片，輸入問題，按 Enter 送出。\n"
                        "試試下面的範例，或讓模型框出物體：*請給出太陽的邊界框。*",
    "stop": "■ 停止",
    "regenerate": "↻ 重新產生",
    "undo": "↩ 復原",
    "clear": "✕ 清除",
    "settings": "設定",
    "model": "模型",
    "refresh": "↻",
    "system_prompt": "系統提示詞",
    "system_placeholder": "選填；留空則使用模型預設值",
    "temperature": "溫度",
    "top_p": "Top-p",
    "max_new_tokens": "最大生成長度",
    "repetition_penalty": "重複懲罰",
    "max_tiles": "每張圖片最多切塊數",
    "num_frames": "每個影片取樣幀數",
    "think": "思考（先推理再回答）",
    "sampling": "取樣",
    "vision": "圖片與影片",
    "examples": "範例",
    "chats": "對話",
    "new_chat": "+ 新對話",
    "past_chats": "歷史對話（儲存在本瀏覽器中）",
    "delete_chat": "刪除此對話",
    "search_chats": "搜尋對話",
    "export_chat": "⤓ 匯出此對話",
    "import_chat": "⤒ 匯入對話（.json）",
    "exported": "已匯出（Markdown 供閱讀，JSON 可再匯入）",
    "ex_describe": "詳細描述這張圖片。",
    "ex_ground": "太陽在哪裡？給出它的框。",
    "ex_ground_prompt": "請給出太陽的邊界框座標。",
    "ex_chart": "哪一天的訪客最多？",
    "ex_chart_prompt": "哪一天的訪客最多？有多少人？",
    "ex_video": "這個影片裡發生了什麼？",
}


def make_i18n() -> gr.I18n:
    hant = {tag: ZH_HANT for tag in ("zh-TW", "zh-HK", "zh-MO", "zh-Hant")}
    return gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH, "zh-Hans": ZH}, **hant)


def labels(lang: str) -> dict[str, str]:
    """The label table for a language of app/texts.py (for props Gradio does not translate, e.g. examples)."""
    return {"zh-Hans": ZH, "zh-Hant": ZH_HANT}.get(lang, EN)
