"""The one module both engines use to turn generated tokens into the text a client sees
(workers/engines/text_stream.py): stop strings cut across deltas and tokens, multi-byte characters split across
tokens, with the demo checkpoint's real byte-level BPE tokenizer (which splits a CJK character into byte tokens)."""

from __future__ import annotations

import pytest

from workers.engines.text_stream import REPLACEMENT, IncrementalDecoder, StopStrings


@pytest.fixture(scope="module")
def tokenizer(demo_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_checkpoint)


def stream(tokenizer, ids, stops=()):
    decoder, cut, deltas = IncrementalDecoder(tokenizer), StopStrings(stops), []
    for token_id in ids:
        deltas.append(cut.feed(decoder.push(token_id)))
        if cut.hit:
            break
    if not cut.hit:
        deltas.append(cut.feed(decoder.flush()))
        deltas.append("" if cut.hit else cut.flush())
    return [d for d in deltas if d], cut.hit


def test_stop_string_split_across_deltas_is_cut_and_not_emitted():
    s = StopStrings(("STOP",))
    assert [s.feed(x) for x in ["ab", "cS", "TO", "Pxyz"]] == ["ab", "c", "", ""] and s.hit
    assert s.feed("more") == "" and s.flush() == ""


def test_held_back_text_comes_out_once_it_cannot_be_a_stop_string():
    s = StopStrings(("STOP",))
    assert s.feed("aST") == "a" and s.feed("x") == "STx" and not s.hit
    assert s.feed("ab ST") == "ab " and s.flush() == "ST"


def test_the_earliest_stop_string_wins():
    s = StopStrings(("END", "ND"))
    assert s.feed("xxEND yy") == "xx" and s.hit
    assert StopStrings(()).feed("anything STOP") == "anything STOP"


def test_stop_string_split_across_tokens(tokenizer):
    ids = tokenizer("the cat sat on the mat STOP and more", add_special_tokens=False).input_ids
    assert not any("STOP" in tokenizer.decode([i]) for i in ids), "STOP must span several tokens here"
    deltas, hit = stream(tokenizer, ids, ("STOP",))
    assert hit and "".join(deltas) == "the cat sat on the mat "


def test_multibyte_characters_split_across_tokens_never_show_half(tokenizer):
    text = "猫が好き, café, 🐈 ok"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids), "some character must span several tokens"
    deltas, hit = stream(tokenizer, ids)
    assert not hit and all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == text


def test_multibyte_stop_string(tokenizer):
    ids = tokenizer("答えは猫です。次に", add_special_tokens=False).input_ids
    deltas, hit = stream(tokenizer, ids, ("。",))
    assert hit and "".join(deltas) == "答えは猫です"
