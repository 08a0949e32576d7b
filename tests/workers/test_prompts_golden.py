"""Prompts checked against lmdeploy's chat templates (0.18 registers `llava-chatml` = V1-2's Hermes-2 format
and `internvl-zh` = V1-1, less its system separator) and against the demo checkpoint's own tokenizer chat template
(the InternVL 2.5/3 "-hf" format). lmdeploy 0.18 no longer registers internlm2 / phi3 / internvl2_5 templates (it
reads them from the real checkpoint's tokenizer); for those, lmdeploy's own BaseChatTemplate renderer is driven with
the markers of InternVL's conversation.py, so the rendering logic (system, turns, generation prefix) is still
lmdeploy's."""

from __future__ import annotations

import pytest
from lmdeploy.model import MODELS, BaseChatTemplate

from workers.prompts.templates import SYSTEM_V1_2, get_template

CONVERSATIONS = [
    [{"role": "user", "content": "<image>\nWhat is this?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Image-1: <image>\nImage-2: <image>\nCompare."},
     {"role": "assistant", "content": "They differ."}, {"role": "user", "content": "How?"}],
]


def _ours(name: str, messages: list[dict], default_system: str | None) -> str:
    system = default_system
    turns = []
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        else:
            turns.append((m["role"], m["content"]))
    return get_template(name).render(system, turns)


def test_lmdeploy_0_18_registry_has_what_we_compare_with():
    assert "llava-chatml" in MODELS.module_dict and "internvl-zh" in MODELS.module_dict
    assert "internvl-zh-hermes2" not in MODELS.module_dict  # the old V1-2 name is gone (DESIGN.md)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_v1_2_hermes2_equals_lmdeploy_llava_chatml(messages):
    ref = MODELS.get("llava-chatml")()
    assert ref.meta_instruction == SYSTEM_V1_2
    assert _ours("Hermes-2", messages, SYSTEM_V1_2) == ref.messages2prompt(messages)
    # llava-chatml ends every turn with <|im_end|>; that must be one of our stop words
    assert ref.eoa in get_template("Hermes-2").stop_words


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_v1_1_is_lmdeploy_internvl_zh_with_the_system_separator(messages):
    """InternVL's conversation.py puts one space after the (possibly empty) system message; lmdeploy does not
    (tests/workers/test_prompt_v1_1.py has the exact bytes)."""
    ref = MODELS.get("internvl-zh")()
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    rendered = ref.messages2prompt(messages)
    assert rendered.startswith(system)
    assert _ours("internvl_zh", messages, None) == system + " " + rendered[len(system):]
    assert ref.eoa in get_template("internvl_zh").stop_words


# Markers from InternVL's conversation.py (the model code's own templates), rendered by lmdeploy's engine.
_CONVERSATION_PY = {
    "internlm2-chat": dict(system="<|im_start|>system\n", eosys="<|im_end|>", user="<|im_start|>user\n",
                           eoh="<|im_end|>", assistant="<|im_start|>assistant\n", eoa="<|im_end|>"),
    "phi3-chat": dict(system="<|system|>\n", eosys="<|end|>", user="<|user|>\n", eoh="<|end|>",
                      assistant="<|assistant|>\n", eoa="<|end|>"),
    "internvl2_5": dict(system="<|im_start|>system\n", eosys="<|im_end|>\n", user="<|im_start|>user\n",
                        eoh="<|im_end|>\n", assistant="<|im_start|>assistant\n", eoa="<|im_end|>\n"),
}


@pytest.mark.parametrize("name", sorted(_CONVERSATION_PY))
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_internlm2_phi3_internvl25_render_like_lmdeploy(name, messages):
    rendered = BaseChatTemplate(meta_instruction="SYS", **_CONVERSATION_PY[name]).messages2prompt(messages)
    assert _ours(name, messages, "SYS") == rendered


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from workers.demo_checkpoint import build_demo_checkpoint

    path = build_demo_checkpoint(tmp_path_factory.mktemp("demo"), seed=0)
    return path, AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_native_format_equals_the_checkpoint_chat_template(demo_tokenizer, messages):
    from workers.model_spec import detect_model_spec

    path, tokenizer = demo_tokenizer
    spec = detect_model_spec(path)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert _ours(spec.template, messages, spec.system_message) == expected
