"""Copy the last answer, with its reasoning or without, in the page (no server round trip).

Gradio's own copy button under an answer copies the whole group of bot messages as shown (the Thinking section's
title and text included, HTML entities and all). These two buttons copy what a reader means: the last answer's text
as the model wrote it, or its reasoning and then the answer. The history's text is display text (app/messages.py
escapes HTML); the browser's own parser undoes that (a <textarea> holds text, nothing in it runs).
"""

from __future__ import annotations

# (history) -> []: writes the clipboard; `with_reasoning` is substituted below.
_JS = """
(history) => {
  const text = (m) => typeof m.content === 'string' ? m.content :
      (Array.isArray(m.content) ? m.content : [m.content]).filter((p) => p && p.type === 'text')
          .map((p) => p.text).join('');
  const plain = (s) => { const t = document.createElement('textarea'); t.innerHTML = s; return t.value; };
  const msgs = history || [];
  let i = msgs.length - 1;
  while (i >= 0 && (msgs[i].role !== 'assistant' || (msgs[i].metadata && msgs[i].metadata.title))) i--;
  if (i < 0) return [];
  let out = plain(text(msgs[i])).trim();
  const before = msgs[i - 1];
  if (WITH_REASONING && before && before.metadata && before.metadata.id === 'thinking') {
    out = before.metadata.title + ':\\n' + plain(text(before)).trim() + '\\n\\n' + out;
  }
  navigator.clipboard.writeText(out);
  return [];
}
"""

COPY_ANSWER_JS = _JS.replace("WITH_REASONING", "false")
COPY_WITH_REASONING_JS = _JS.replace("WITH_REASONING", "true")
