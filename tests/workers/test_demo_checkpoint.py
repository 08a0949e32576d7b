"""The demo checkpoint: deterministic, loadable by transformers' own Auto classes, labelled as random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.demo_checkpoint import (IMG_CONTEXT, SPECIAL_TOKENS, TILE, TOKENS_PER_TILE, build_demo_checkpoint,
                                     ensure_demo_checkpoint, is_demo_checkpoint, main)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    # Same path as tests/workers/test_transformers_engine.py: the second module reuses the build.
    path, _ = ensure_demo_checkpoint(tmp_path_factory.getbasetemp() / "demo-checkpoint-seed0", seed=0)
    return path


def test_same_seed_gives_identical_bytes_and_other_seed_differs(demo_checkpoint, tmp_path, capsys):
    again = build_demo_checkpoint(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (again / name).read_bytes() == (demo_checkpoint / name).read_bytes(), name

    assert main([str(tmp_path / "seed1"), "--seed", "1"]) == 0
    assert "built" in capsys.readouterr().out
    other = (tmp_path / "seed1" / "model.safetensors").read_bytes()
    assert other != (demo_checkpoint / "model.safetensors").read_bytes()
    assert (tmp_path / "seed1" / "tokenizer.json").read_bytes() == (demo_checkpoint / "tokenizer.json").read_bytes()


def test_cli_reuses_a_complete_checkpoint_and_refuses_foreign_folders(demo_checkpoint, tmp_path, capsys):
    before = (demo_checkpoint / "model.safetensors").stat().st_mtime_ns
    assert main([str(demo_checkpoint), "--seed", "0"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (demo_checkpoint / "model.safetensors").stat().st_mtime_ns == before
    assert is_demo_checkpoint(demo_checkpoint, seed=0) and not is_demo_checkpoint(demo_checkpoint, seed=1)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main([str(foreign)]) == 2
    assert "not a demo checkpoint" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_labelled_as_random_weights(demo_checkpoint):
    config = json.loads((demo_checkpoint / "config.json").read_text())
    assert config["random_weights"] is True
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    assert "random" in (demo_checkpoint / "README.md").read_text().lower()


def test_tokenizer_keeps_special_tokens_whole(demo_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_checkpoint)
    assert 400 <= len(tokenizer) <= 1000
    for token in SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1, token
        assert tokenizer.convert_ids_to_tokens(ids) == [token]
        assert tokenizer.decode(ids) == token
    text = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is this?<|im_end|>\n"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.eos_token == "<|im_end|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_processor_and_model_agree_on_tiles_and_tokens(demo_checkpoint):
    """transformers' own processor expands an image into tiles and placeholder tokens, and the model consumes them;
    the vision tower's output length per tile is what TOKENS_PER_TILE claims."""
    from transformers import AutoProcessor, InternVLForConditionalGeneration, InternVLProcessor

    processor = AutoProcessor.from_pretrained(demo_checkpoint)
    assert isinstance(processor, InternVLProcessor)
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessor"
    assert type(processor.video_processor).__name__ == "InternVLVideoProcessor"
    assert processor.image_processor.crop_to_patches
    assert (processor.image_processor.min_patches, processor.image_processor.max_patches) == (1, 12)
    model = InternVLForConditionalGeneration.from_pretrained(demo_checkpoint).eval()

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 170, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    tiles = inputs["pixel_values"].shape[0]
    assert tiles > 1  # a wide image is cut into several tiles (+ thumbnail)
    assert tuple(inputs["pixel_values"].shape[1:]) == (3, TILE, TILE)
    context_id = processor.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    assert int((inputs["input_ids"] == context_id).sum()) == tiles * TOKENS_PER_TILE

    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"][:1])
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        assert features.shape[:2] == (1, TOKENS_PER_TILE)
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(set(new_tokens)) >= 5, "random weights should still produce varied tokens"
