"""Which checkpoint the launcher serves for --model (launcher/models.py): a folder, a hub id, or the demo."""

from __future__ import annotations

import pytest

from launcher.models import ResolveError, resolve


def test_model_folder_must_be_a_checkpoint(tmp_path):
    with pytest.raises(ResolveError, match="no config.json"):
        resolve(str(tmp_path), tmp_path / "demo")
    with pytest.raises(ResolveError, match="no such folder"):
        resolve(str(tmp_path / "missing"), tmp_path / "demo")


def test_named_hub_model_is_never_replaced_by_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ResolveError, match="--model /path/to/checkpoint"):
        resolve("OpenGVLab/InternVL3-1B-hf", tmp_path / "demo")


def test_no_model_and_no_hub_serves_the_demo_checkpoint(tmp_path, monkeypatch, demo_checkpoint):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder, random_weights = resolve(None, demo_checkpoint)  # an existing build is reused, not rebuilt
    assert folder == demo_checkpoint.resolve() and random_weights
    assert resolve(str(demo_checkpoint), tmp_path / "unused") == (demo_checkpoint.resolve(), True)
