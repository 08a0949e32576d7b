"""Text the server writes for a reader (notes in the chat, toasts, the model panel), in the reader's language.

Fixed labels are translated in the browser (app/i18n.py); everything a handler composes at run time comes from
here, in the language of the request's Accept-Language header: English, Simplified or Traditional Chinese.
"""

from __future__ import annotations

from typing import Any

EN, HANS, HANT = "en", "zh-Hans", "zh-Hant"
_HANT_REGIONS = ("tw", "hk", "mo", "hant")


def language(request: Any) -> str:
    """The reader's language from the request's Accept-Language (first listed language wins)."""
    headers = getattr(request, "headers", None) or {}
    try:
        accept = headers.get("accept-language") or ""
    except AttributeError:
        accept = ""
    for item in accept.split(","):
        tag = item.split(";")[0].strip().lower()
        if not tag or tag == "*":
            continue
        if tag.startswith("zh"):
            return HANT if any(r in tag.split("-")[1:] for r in _HANT_REGIONS) else HANS
        return EN
    return EN


def tr(key: str, lang: str = EN, **values: Any) -> str:
    entry = TEXTS[key]
    return entry.get(lang, entry[EN]).format(**values)


def ordinal(n: int, lang: str = EN) -> str:
    """'1st', '2nd' ... or '第 1 条' (message numbers as a reader counts them)."""
    if lang != EN:
        return f"第 {n} 條" if lang == HANT else f"第 {n} 条"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


TEXTS: dict[str, dict[str, str]] = {
    "empty_message": {
        EN: "Type a message or attach an image or video first.",
        HANS: "请先输入问题，或添加图片或视频。",
        HANT: "請先輸入問題，或加入圖片或影片。"},
    "nothing_to_regenerate": {
        EN: "There is no message to answer again yet.",
        HANS: "还没有可以重新回答的消息。",
        HANT: "還沒有可以重新回答的訊息。"},
    "nothing_to_undo": {
        EN: "There is nothing to undo.",
        HANS: "没有可以撤销的内容。",
        HANT: "沒有可以復原的內容。"},
    "busy": {
        EN: "An answer is still being written; press Stop first.",
        HANS: "回答还在生成中；请先按“停止”。",
        HANT: "回答仍在產生中；請先按「停止」。"},
    "bad_file": {
        EN: "'{name}' is not an image or a video this chat accepts (images: {images}; videos: {videos}).",
        HANS: "“{name}”不是本对话接受的图片或视频（图片：{images}；视频：{videos}）。",
        HANT: "「{name}」不是本對話接受的圖片或影片（圖片：{images}；影片：{videos}）。"},
    "session_quota": {
        EN: "This chat's files would take {total} MB, over the {limit} MB one session may keep. Start a new chat "
            "(its files are removed when you close the page), or send smaller files.",
        HANS: "本对话的文件将占用 {total} MB，超过每个会话可保存的 {limit} MB。请开始新对话（关闭页面时会删除其文件），或发送更小的文件。",
        HANT: "本對話的檔案將佔用 {total} MB，超過每個工作階段可保存的 {limit} MB。請開始新對話（關閉頁面時會刪除其檔案），或傳送更小的檔案。"},
    "no_model": {
        EN: "No model is served right now. Start a worker (`python -m workers --model-path PATH`); this page "
            "notices it by itself within a few seconds.",
        HANS: "目前没有可用的模型。请启动 worker（`python -m workers --model-path PATH`），本页面会在几秒内自动发现。",
        HANT: "目前沒有可用的模型。請啟動 worker（`python -m workers --model-path PATH`），本頁面會在幾秒內自動發現。"},
    "waiting_title": {EN: "⏳ Waiting", HANS: "⏳ 排队中", HANT: "⏳ 排隊中"},
    "waiting_in_line": {EN: "Waiting for a free worker, {nth} in line.",
                        HANS: "正在等待空闲的服务节点，排在第 {n} 位。", HANT: "正在等待空閒的服務節點，排在第 {n} 位。"},
    "could_not_answer": {EN: "⚠ Could not answer", HANS: "⚠ 无法回答", HANT: "⚠ 無法回答"},
    "stopped": {EN: "■ Stopped", HANS: "■ 已停止", HANT: "■ 已停止"},
    "nothing_to_export": {EN: "There is no conversation to export yet.", HANS: "还没有可导出的对话。",
                          HANT: "還沒有可匯出的對話。"},
    # the folded reasoning above an answer (app/thinking.py)
    "thinking": {EN: "Thinking", HANS: "思考过程", HANT: "思考過程"},
    "thinking_stopped": {EN: "Thinking (stopped)", HANS: "思考过程（已停止）", HANT: "思考過程（已停止）"},
    "thinking_failed": {EN: "Thinking (failed)", HANS: "思考过程（失败）", HANT: "思考過程（失敗）"},
    "thinking_cut": {EN: "Thinking (cut at the token limit: raise 'Max new tokens')",
                     HANS: "思考过程（达到长度上限：请调高“最大生成长度”）",
                     HANT: "思考過程（達到長度上限：請調高「最大生成長度」）"},
    "boxes": {EN: "Boxes: {labels}", HANS: "框选：{labels}", HANT: "框選：{labels}"},
    "n_boxes": {EN: "{n} boxes", HANS: "{n} 个框", HANT: "{n} 個框"},
    "log_failed": {
        EN: "Could not write the conversation log: {error}",
        HANS: "无法写入对话日志：{error}",
        HANT: "無法寫入對話日誌：{error}"},
    # ---- the conversation checked before sending (app/limits.py)
    "file_in_message": {
        EN: "'{name}' in your {nth} message", HANS: "您{nth}消息中的“{name}”", HANT: "您{nth}訊息中的「{name}」"},
    "file_unreadable": {
        EN: "{where} can no longer be read; press Undo and attach it again.",
        HANS: "{where}已无法读取；请按“撤销”后重新添加。",
        HANT: "{where}已無法讀取；請按「復原」後重新加入。"},
    "file_empty": {EN: "{where} is empty.", HANS: "{where}是空文件。", HANT: "{where}是空檔案。"},
    "file_too_large": {
        EN: "{where} is {size} MB; the model's server accepts at most {limit} MB per file.",
        HANS: "{where}大小为 {size} MB；模型服务器每个文件最多接受 {limit} MB。",
        HANT: "{where}大小為 {size} MB；模型伺服器每個檔案最多接受 {limit} MB。"},
    "file_too_many_pixels": {
        EN: "{where} is {w}×{h} pixels; the model's server accepts at most {limit} million pixels.",
        HANS: "{where}为 {w}×{h} 像素；模型服务器最多接受 {limit} 百万像素。",
        HANT: "{where}為 {w}×{h} 像素；模型伺服器最多接受 {limit} 百萬像素。"},
    "not_an_image": {
        EN: "{where} is not an image that can be opened.",
        HANS: "{where}不是可以打开的图片。",
        HANT: "{where}不是可以開啟的圖片。"},
    "too_many_media": {
        EN: "This conversation has {n} images and videos; the model's server accepts at most {limit} in one "
            "conversation.",
        HANS: "本对话共有 {n} 个图片和视频；模型服务器一次对话最多接受 {limit} 个。",
        HANT: "本對話共有 {n} 個圖片和影片；模型伺服器一次對話最多接受 {limit} 個。"},
    "request_too_large": {
        EN: "This conversation as a whole holds {n} files, {size} MB as sent; the server accepts at most {limit} MB "
            "at once.",
        HANS: "本对话整体共有 {n} 个文件，发送时合计 {size} MB；服务器一次最多接受 {limit} MB。",
        HANT: "本對話整體共有 {n} 個檔案，傳送時合計 {size} MB；伺服器一次最多接受 {limit} MB。"},
    "fix_media": {
        EN: "Press Undo to get your message back and remove the file, or start a new chat (Clear).",
        HANS: "请按“撤销”取回消息并移除该文件，或开始新对话（清空）。",
        HANT: "請按「復原」取回訊息並移除該檔案，或開始新對話（清除）。"},
    # ---- the model panel
    "pick_model": {EN: "Pick a model.", HANS: "请选择模型。", HANT: "請選擇模型。"},
    "served_by": {EN: "Served by: {workers}", HANS: "服务节点：{workers}", HANT: "服務節點：{workers}"},
    "worker_state": {
        EN: "`{id}` {state}, {busy} busy", HANS: "`{id}` {state}，{busy} 个进行中", HANT: "`{id}` {state}，{busy} 個進行中"},
    "up": {EN: "up", HANS: "在线", HANT: "在線"},
    "down": {EN: "down", HANS: "离线", HANT: "離線"},
    "benched": {EN: "benched (failing; retried in {s} s)", HANS: "暂停使用（连续失败；{s} 秒后重试）",
                HANT: "暫停使用（連續失敗；{s} 秒後重試）"},
    "no_workers": {EN: "none", HANS: "无", HANT: "無"},
    "context": {EN: "context {n} tokens", HANS: "上下文 {n} tokens", HANT: "上下文 {n} tokens"},
    "random_banner": {
        EN: "⚠ **Demo model with random weights**: real serving path, but its answers are noise.",
        HANS: "⚠ **演示模型（随机权重）**：服务链路是真实的，但回答没有意义。",
        HANT: "⚠ **示範模型（隨機權重）**：服務鏈路是真實的，但回答沒有意義。"},
    "controller_down": {
        EN: "⚠ The controller is not reachable; this page retries every few seconds.",
        HANS: "⚠ 无法连接控制器；本页面每隔几秒自动重试。",
        HANT: "⚠ 無法連線控制器；本頁面每隔幾秒自動重試。"},
    "no_model_banner": {
        EN: "⚠ **No model is served.** Start a worker; this page notices it by itself.",
        HANS: "⚠ **目前没有可用的模型。** 请启动 worker，本页面会自动发现。",
        HANT: "⚠ **目前沒有可用的模型。** 請啟動 worker，本頁面會自動發現。"},
    "model_not_served": {
        EN: "⚠ **{model}** is no longer served; pick another model in Settings.",
        HANS: "⚠ **{model}** 已不再提供服务；请在“设置”中选择其他模型。",
        HANT: "⚠ **{model}** 已不再提供服務；請在「設定」中選擇其他模型。"},
}

# Error notes: a headline per error code (the server's own English detail follows it), then the next step.
ERROR_HEADLINES: dict[str, dict[str, str]] = {
    "no_worker_available": {HANS: "没有可用的 worker。", HANT: "沒有可用的 worker。"},
    "model_not_found": {HANS: "所选模型当前没有提供服务。", HANT: "所選模型目前沒有提供服務。"},
    "context_length_exceeded": {HANS: "对话超出了模型的上下文长度。", HANT: "對話超出了模型的上下文長度。"},
    "invalid_image": {HANS: "有一张图片无法使用。", HANT: "有一張圖片無法使用。"},
    "invalid_video": {HANS: "有一个视频无法使用。", HANT: "有一個影片無法使用。"},
    "upload_too_large": {HANS: "文件太大。", HANT: "檔案太大。"},
    "request_too_large": {HANS: "请求太大。", HANT: "請求太大。"},
    "worker_busy": {HANS: "所有 worker 都在忙。", HANT: "所有 worker 都在忙。"},
    "worker_lost": {HANS: "worker 中途停止了响应。", HANT: "worker 中途停止了回應。"},
    "worker_timeout": {HANS: "等待回答超时。", HANT: "等待回答逾時。"},
    "controller": {HANS: "无法连接控制器。", HANT: "無法連線控制器。"},
    "unauthorized": {HANS: "控制器拒绝了本界面的密钥。", HANT: "控制器拒絕了本介面的金鑰。"},
    "invalid_request": {HANS: "请求无效。", HANT: "請求無效。"},
}
NEXT_STEPS: dict[str, dict[str, str]] = {
    "no_worker_available": {
        EN: "If the model is reconnecting (./launch.sh restarts a worker that stopped), press Regenerate in a few "
            "seconds. Otherwise start a worker: `python -m workers --model-path PATH --controller-url URL`; the "
            "model list updates by itself.",
        HANS: "如果模型正在重连（./launch.sh 会重启停止的 worker），请几秒后按“重新生成”。否则请启动 worker："
              "`python -m workers --model-path PATH --controller-url URL`；模型列表会自动更新。",
        HANT: "如果模型正在重新連線（./launch.sh 會重啟停止的 worker），請幾秒後按「重新產生」。否則請啟動 worker："
              "`python -m workers --model-path PATH --controller-url URL`；模型列表會自動更新。"},
    "controller": {
        EN: "Under ./launch.sh it is restarted within seconds: press Regenerate in a moment. Otherwise start the "
            "controller (`python -m controller`) or start this UI with the right --controller-url; this page "
            "reconnects by itself.",
        HANS: "在 ./launch.sh 下它会在几秒内自动重启：请稍后按“重新生成”。否则请启动控制器（`python -m controller`），"
              "或用正确的 --controller-url 启动本界面；页面会自动重连。",
        HANT: "在 ./launch.sh 下它會在幾秒內自動重啟：請稍後按「重新產生」。否則請啟動控制器（`python -m controller`），"
              "或用正確的 --controller-url 啟動本介面；頁面會自動重新連線。"},
    "model_not_found": {
        EN: "Pick a model that is served now (Settings).",
        HANS: "请在“设置”中选择当前在服务的模型。", HANT: "請在「設定」中選擇目前在服務的模型。"},
    "context_length_exceeded": {
        EN: "Start a new chat (Clear), lower 'Max new tokens', or use fewer images, fewer tiles per image or fewer "
            "frames per video (Settings).",
        HANS: "请开始新对话（清空），调低“最大生成长度”，或减少图片数、每张图片切块数或每个视频帧数（设置）。",
        HANT: "請開始新對話（清除），調低「最大生成長度」，或減少圖片數、每張圖片切塊數或每個影片幀數（設定）。"},
    "invalid_image": {
        EN: "Press Undo to get your message back, remove that image and try another file.",
        HANS: "请按“撤销”取回消息，移除该图片后换一个文件。", HANT: "請按「復原」取回訊息，移除該圖片後換一個檔案。"},
    "invalid_video": {
        EN: "Press Undo to get your message back, remove that video and try another file.",
        HANS: "请按“撤销”取回消息，移除该视频后换一个文件。", HANT: "請按「復原」取回訊息，移除該影片後換一個檔案。"},
    "upload_too_large": {
        EN: "Press Undo to get your message back and use a smaller or shorter file.",
        HANS: "请按“撤销”取回消息，换用更小或更短的文件。", HANT: "請按「復原」取回訊息，換用更小或更短的檔案。"},
    "request_too_large": {
        EN: "Every turn sends all earlier images and videos again: press Clear to start a new chat, or Undo and send "
            "fewer or smaller files.",
        HANS: "每一轮都会重新发送之前所有的图片和视频：请按“清空”开始新对话，或按“撤销”后发送更少或更小的文件。",
        HANT: "每一輪都會重新傳送之前所有的圖片和影片：請按「清除」開始新對話，或按「復原」後傳送更少或更小的檔案。"},
    "worker_busy": {
        EN: "Every worker is busy right now; press Regenerate in a moment.",
        HANS: "所有 worker 都在忙；请稍后按“重新生成”。", HANT: "所有 worker 都在忙；請稍後按「重新產生」。"},
    "worker_lost": {
        EN: "The worker stopped answering; press Regenerate to try another one.",
        HANS: "worker 停止了响应；请按“重新生成”换一个 worker 再试。",
        HANT: "worker 停止了回應；請按「重新產生」換一個 worker 再試。"},
    "worker_timeout": {
        EN: "The worker took too long; press Regenerate, or lower 'Max new tokens'.",
        HANS: "worker 响应太慢；请按“重新生成”，或调低“最大生成长度”。",
        HANT: "worker 回應太慢；請按「重新產生」，或調低「最大生成長度」。"},
    "unauthorized": {
        EN: "Start the UI with `--api-key KEY` matching the controller's key.",
        HANS: "请用与控制器一致的 `--api-key KEY` 启动界面。", HANT: "請用與控制器一致的 `--api-key KEY` 啟動介面。"},
    "invalid_request": {
        EN: "Check the settings and your files, then press Regenerate.",
        HANS: "请检查设置和文件，然后按“重新生成”。", HANT: "請檢查設定和檔案，然後按「重新產生」。"},
    "": {
        EN: "Press Regenerate to try again.", HANS: "请按“重新生成”重试。", HANT: "請按「重新產生」重試。"},
}
