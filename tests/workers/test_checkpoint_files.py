"""Checkpoint facts read in one place (workers/checkpoint_files.py): the language model's config in both formats, and
weight bytes as both the launcher's GPU plan and TurboMind's sizing see them."""

from __future__ import annotations

import json

from launcher.gpus import weights_bytes
from workers.checkpoint_files import language_model_config, weight_bytes
from workers.engines import turbomind_config as tc


def test_the_language_model_config_of_both_formats():
    assert language_model_config({"llm_config": {"hidden_size": 8}}) == {"hidden_size": 8}  # remote code
    assert language_model_config({"text_config": {"hidden_size": 9}}) == {"hidden_size": 9}  # transformers-native
    assert language_model_config({"architectures": ["LlamaForCausalLM"]}) == {}


def test_the_launcher_and_turbomind_size_the_weights_alike(demo_checkpoint, v1_checkpoint):
    for folder in (demo_checkpoint, v1_checkpoint):
        facts = tc.CheckpointFacts.read(folder)
        total = weight_bytes(folder).total
        assert total > 0 and weights_bytes(folder) == total == facts.llm_weight_bytes + facts.vision_weight_bytes
    assert 0 < weight_bytes(v1_checkpoint).vision < weight_bytes(v1_checkpoint).total


def test_bin_weights_count_by_file_size_and_no_folder_is_zero(tmp_path):
    (tmp_path / "pytorch_model-1.bin").write_bytes(b"x" * 1000)
    (tmp_path / "pytorch_model-2.bin").write_bytes(b"x" * 24)
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert weight_bytes(tmp_path).total == 1024 and weight_bytes(tmp_path).vision == 0
    assert weights_bytes(tmp_path / "missing") == 0
