"""One prompt template per InternVL family, as the family was trained (InternVL's conversation.py) and as
lmdeploy / the checkpoint's own chat template render it. Checked against those in tests/test_prompts_golden.py.

A template is data: markers around the system message, each user and each assistant turn. Rendering ends with the
assistant prefix so the model generates the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]

# Default system messages of the InternVL model code (the model's `chat()` sets them on the template).
SYSTEM_V1_2 = "Answer the questions."
SYSTEM_INTERNVL2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYSTEM_INTERNVL2_5 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass(frozen=True)
class Template:
    name: str
    system_start: str
    system_end: str
    user_start: str
    user_end: str
    assistant_start: str
    assistant_end: str
    stop_words: tuple[str, ...]
    trim_last: int = 0  # characters cut from the end (internvl_zh/vicuna end on "<bot>:" without the space)
    always_system: bool = False  # the system part and its end marker are there even without a system message

    def render(self, system: str | None, turns: list[tuple[Role, str]]) -> str:
        parts = []
        if system is not None or self.always_system:
            system = system or ""
            parts.append(f"{self.system_start}{system}{self.system_end}")
        for role, text in turns:
            if role == "user":
                parts.append(f"{self.user_start}{text}{self.user_end}")
            else:
                parts.append(f"{self.assistant_start}{text}{self.assistant_end}")
        parts.append(self.assistant_start)
        prompt = "".join(parts)
        return prompt[: len(prompt) - self.trim_last]


_CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")

TEMPLATES: dict[str, Template] = {
    # InternVL-Chat-V1-1 (LLaMA2-13B): "SYSTEM <human>: Q <bot>: A</s><human>: ...", as InternVL's conversation.py
    # renders it: the system message (empty by default) and one space always come first. lmdeploy's `internvl-zh`
    # drops that space.
    "internvl_zh": Template("internvl_zh", "", " ", "<human>: ", " ", "<bot>: ", "</s>", ("</s>",), trim_last=1,
                            always_system=True),
    # V1-2 / V1-2-Plus (Nous-Hermes-2-Yi-34B), InternVL2-1B/40B: ChatML *without* newlines between turns (MPT
    # separator style); the same format as lmdeploy's `llava-chatml`.
    "Hermes-2": Template("Hermes-2", "<|im_start|>system\n", "<|im_end|>", "<|im_start|>user\n", "<|im_end|>",
                         "<|im_start|>assistant\n", "<|im_end|>", _CHATML_STOPS),
    # V1-5, Mini-InternVL-2B, InternVL2-2B/8B/26B (InternLM2): the same no-newline ChatML.
    "internlm2-chat": Template("internlm2-chat", "<|im_start|>system\n", "<|im_end|>", "<|im_start|>user\n",
                               "<|im_end|>", "<|im_start|>assistant\n", "<|im_end|>", ("<|im_end|>",)),
    # Mini-InternVL-4B, InternVL2-4B (Phi-3-mini).
    "phi3-chat": Template("phi3-chat", "<|system|>\n", "<|end|>", "<|user|>\n", "<|end|>", "<|assistant|>\n",
                          "<|end|>", ("<|end|>", "<|endoftext|>")),
    # InternVL2.5 / 3 / 3.5 (remote-code and transformers-native): standard ChatML, newline after each turn.
    "internvl2_5": Template("internvl2_5", "<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n",
                            "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n", _CHATML_STOPS),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"no prompt template {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None


def image_placeholder(spec_image_start: str, image_token: str, image_end: str, tokens: int) -> str:
    """What one image (all its tiles) becomes in the prompt: <img> + <IMG_CONTEXT> x tokens + </img>."""
    return f"{spec_image_start}{image_token * tokens}{image_end}"
