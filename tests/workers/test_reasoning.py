"""The streaming reasoning parser (workers/reasoning.py) and the thinking prompt (workers/prompts/thinking.py)."""

from __future__ import annotations

import pytest

from common.errors import ErrorCode, ServingError
from workers.prompts.thinking import R1_SYSTEM_PROMPT, check_thinking, thinking_system
from workers.reasoning import AnswerSplitter, ReasoningParser, join_reasoning, split_reasoning

ANSWER = "<think>\nThe sky scatters blue light.\n</think>\n\nIt is blue."


def _stream(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    parser = ReasoningParser()
    out = [parser.feed(p) for p in pieces] + [parser.flush()]
    order = [("r", s.reasoning) for s in out if s.reasoning] + [("c", s.content) for s in out if s.content]
    return "".join(s.reasoning for s in out), "".join(s.content for s in out), order


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7])
def test_tags_split_across_deltas_at_every_size(cut):
    pieces = [ANSWER[i:i + cut] for i in range(0, len(ANSWER), cut)]
    reasoning, content, _ = _stream(pieces)
    assert reasoning == "\nThe sky scatters blue light.\n"
    assert content == "It is blue."


def test_reasoning_comes_before_content_and_nothing_of_a_tag_leaks():
    parser = ReasoningParser()
    seen = [parser.feed(p) for p in ["<", "th", "ink>", "a <b", "> c</", "thi", "nk", ">\n", "answer </think> x"]]
    reasoning = [s.reasoning for s in seen]
    content = [s.content for s in seen]
    assert "".join(reasoning) == "a <b> c"
    assert "".join(content) == "answer </think> x"  # a tag after the reasoning closed is text
    first_content = next(i for i, c in enumerate(content) if c)
    assert all(not r for r in reasoning[first_content:])
    assert not any("<" == c or "think" in r for r, c in zip(reasoning, content))


def test_missing_closing_tag_is_all_reasoning():
    reasoning, content, _ = _stream(["<think>step one, ", "step two </th"])  # cut by max_tokens mid-tag
    assert reasoning == "step one, step two </th" and content == ""


def test_no_tag_is_all_content_including_a_later_tag():
    assert _stream(["Hello", " <think>not reasoning</think>"])[:2] == ("", "Hello <think>not reasoning</think>")
    assert _stream(["<thi", "s is html"])[:2] == ("", "<this is html")
    assert _stream(["<", "b>bold"])[:2] == ("", "<b>bold")


def test_leading_whitespace_before_the_tag_and_a_short_answer_held_back_then_released():
    assert _stream(["  \n", "<think>r</think>", "a"])[:2] == ("r", "a")
    assert _stream(["<th"])[:2] == ("", "<th")  # the answer ended: it was no tag


def test_split_and_join_round_trip():
    split = split_reasoning(ANSWER)
    assert (split.reasoning, split.content) == ("\nThe sky scatters blue light.\n", "It is blue.")
    assert split_reasoning(join_reasoning(split.reasoning, split.content)) == split


def test_splitter_counts_reasoning_events_and_passes_text_through_when_off():
    splitter = AnswerSplitter(enabled=True)
    for token in ["<think>", "a", " b", "</think>", "\n", "ans"]:
        splitter.feed(token)
    assert splitter.reasoning_tokens(6) == 4  # the opening tag, two words and the closing tag
    several = AnswerSplitter(enabled=True)  # an engine event may complete several tokens (TurboMind's deltas)
    several.feed("<think>a b", 4)
    several.feed("</think>ans", 3)
    several.feed(" more", 2)
    assert several.reasoning_tokens(9) == 7
    off = AnswerSplitter(enabled=False)
    assert off.feed("<think>x</think>").content == "<think>x</think>" and off.reasoning_tokens(3) is None
    plain = AnswerSplitter(enabled=True)
    plain.feed("no thinking")
    assert plain.reasoning_tokens(2) is None


def test_thinking_prompt_is_the_authors_text_and_comes_first():
    assert R1_SYSTEM_PROMPT.startswith("You are an AI assistant that rigorously follows this response protocol:")
    assert "Enclose this entire thinking process within <think> and </think> tags." in R1_SYSTEM_PROMPT
    assert R1_SYSTEM_PROMPT.endswith("The final answer should be standalone and not reference the thinking section.")
    assert thinking_system(None) == R1_SYSTEM_PROMPT
    assert thinking_system("Answer in French.") == R1_SYSTEM_PROMPT + "\nAnswer in French."


def test_thinking_refused_for_a_family_without_it():
    assert check_thinking(True, "internvl3.5", True) is True
    assert check_thinking(None, "internvl3", False) is False and check_thinking(False, "internvl3", False) is False
    with pytest.raises(ServingError) as err:
        check_thinking(True, "internvl3", False, "demo")
    assert err.value.code == ErrorCode.THINKING_UNSUPPORTED and err.value.status == 400
    assert "internvl3" in err.value.message and err.value.param == "thinking"
