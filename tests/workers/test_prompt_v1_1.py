"""InternVL-Chat-V1-1 (`internvl_zh`) prompt bytes as InternVL's own conversation.py renders them (the format V1-1
was trained on): the system message, then one space, then the turns; so with an empty system message the prompt
starts with a space. lmdeploy's `internvl-zh` drops that space (docs/preprocessing.md)."""

from __future__ import annotations

from lmdeploy.model import MODELS

from workers.prompts.templates import get_template

V1_1 = get_template("internvl_zh")


def test_no_system_message_starts_with_one_space():
    assert V1_1.render(None, [("user", "<image>\nWhat is this?")]) == " <human>: <image>\nWhat is this? <bot>:"
    assert V1_1.render("", [("user", "Hi")]) == " <human>: Hi <bot>:"


def test_system_message_then_one_space_then_the_turns():
    turns = [("user", "Hi"), ("assistant", "Hello."), ("user", "How?")]
    assert V1_1.render("Be brief.", turns) == "Be brief. <human>: Hi <bot>: Hello.</s><human>: How? <bot>:"


def test_differs_from_lmdeploy_only_by_that_space():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "How?"}]
    lmdeploy = MODELS.get("internvl-zh")().messages2prompt(messages)
    ours = V1_1.render(None, [(m["role"], m["content"]) for m in messages])
    assert ours == " " + lmdeploy
