"""Family detection from config files written per family (shapes of the real checkpoints' config.json)."""

from __future__ import annotations

import json

import pytest

from workers.model_spec import UnsupportedCheckpoint, detect_model_spec
from workers.prompts.templates import SYSTEM_INTERNVL2, SYSTEM_INTERNVL2_5, SYSTEM_V1_2

VIT_6B = {"hidden_size": 3200, "image_size": 448, "patch_size": 14}
VIT_300M = {"hidden_size": 1024, "image_size": 448, "patch_size": 14}


def _remote(template, llm_arch, vision=VIT_6B, **extra):
    cfg = {"architectures": ["InternVLChatModel"], "template": template, "downsample_ratio": 0.5,
           "force_image_size": 448, "vision_config": vision,
           "llm_config": {"architectures": [llm_arch], "max_position_embeddings": 32768}}
    cfg.update(extra)
    return cfg


DYN = dict(dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12)
CASES = {
    "V1-1": (_remote("internvl_zh", "LlamaForCausalLM"), "internvl-chat-v1-1", "internvl_zh", False, None),
    "V1-2": (_remote("Hermes-2", "LlamaForCausalLM"), "internvl-chat-v1-2", "Hermes-2", False, SYSTEM_V1_2),
    "V1-2-Plus": (_remote("Hermes-2", "LlamaForCausalLM"), "internvl-chat-v1-2", "Hermes-2", False, SYSTEM_V1_2),
    "V1-5": (_remote("internlm2-chat", "InternLM2ForCausalLM", ps_version="v1", **DYN), "internvl-chat-v1-5",
             "internlm2-chat", True, SYSTEM_INTERNVL2),
    "Mini-2B": (_remote("internlm2-chat", "InternLM2ForCausalLM", VIT_300M, ps_version="v1", **DYN),
                "mini-internvl", "internlm2-chat", True, SYSTEM_INTERNVL2),
    "Mini-4B": (_remote("phi3-chat", "Phi3ForCausalLM", VIT_300M, ps_version="v1", **DYN), "mini-internvl",
                "phi3-chat", True, SYSTEM_INTERNVL2),
    "InternVL2-8B": (_remote("internlm2-chat", "InternLM2ForCausalLM", VIT_300M, ps_version="v2", **DYN),
                     "internvl2", "internlm2-chat", True, SYSTEM_INTERNVL2),
    "InternVL2-1B": (_remote("Hermes-2", "Qwen2ForCausalLM", VIT_300M, ps_version="v2", **DYN), "internvl2",
                     "Hermes-2", True, SYSTEM_INTERNVL2),
    "InternVL2.5-8B": (_remote("internvl2_5", "InternLM2ForCausalLM", VIT_300M, ps_version="v2", **DYN),
                       "internvl2.5", "internvl2_5", True, SYSTEM_INTERNVL2_5),
    "InternVL3-8B": (_remote("internvl2_5", "Qwen2ForCausalLM", VIT_300M, ps_version="v2", **DYN), "internvl3",
                     "internvl2_5", True, SYSTEM_INTERNVL2_5),
    "InternVL3.5-8B": (_remote("internvl2_5", "Qwen3ForCausalLM", VIT_300M, ps_version="v2", **DYN),
                       "internvl3.5", "internvl2_5", True, SYSTEM_INTERNVL2_5),
}


def _write(tmp_path, config, **files):
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_remote_code_families(tmp_path, name):
    config, family, template, dynamic, system = CASES[name]
    spec = detect_model_spec(_write(tmp_path, config))
    assert (spec.family, spec.template, spec.dynamic, spec.system_message) == (family, template, dynamic, system)
    assert spec.checkpoint_format == "remote_code" and spec.tokens_per_tile == 256 and spec.image_size == 448
    assert spec.max_tiles == (12 if dynamic else 1) and spec.use_thumbnail == dynamic


def test_folder_name_is_ignored(tmp_path):
    folder = tmp_path / "InternVL2_5-8B"  # says 2.5, config says V1-2
    folder.mkdir()
    assert detect_model_spec(_write(folder, CASES["V1-2"][0])).family == "internvl-chat-v1-2"


def test_v1_2_reads_mean_std_from_its_clip_processor_config(tmp_path):
    pre = {"image_processor_type": "CLIPImageProcessor", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}
    spec = detect_model_spec(_write(tmp_path, CASES["V1-2"][0], **{"preprocessor_config.json": pre}))
    assert spec.extra["image_mean"] == (0.5, 0.5, 0.5)


NATIVE_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize("text_type,family", [("qwen2", "internvl3"), ("qwen3", "internvl3.5")])
def test_native_format(tmp_path, text_type, family):
    config = {"architectures": ["InternVLForConditionalGeneration"], "downsample_ratio": 0.5,
              "vision_config": {"image_size": [448, 448], "patch_size": [14, 14]},
              "text_config": {"model_type": text_type, "max_position_embeddings": 40960}}
    pre = {"image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1,
           "max_patches": 12, "size": {"height": 448, "width": 448}}
    spec = detect_model_spec(_write(tmp_path, config, **{"preprocessor_config.json": pre,
                                                          "processor_config.json": {"image_seq_length": 256},
                                                          "chat_template.jinja": NATIVE_TEMPLATE}))
    assert (spec.family, spec.checkpoint_format, spec.template, spec.tokens_per_tile) == (family, "native",
                                                                                           "internvl2_5", 256)
    assert spec.context_length == 40960 and not spec.random_weights


def test_demo_checkpoint_is_native_internvl3_with_random_weights(tmp_path):
    from workers.demo_checkpoint import build_demo_checkpoint

    spec = detect_model_spec(build_demo_checkpoint(tmp_path / "demo", seed=0))
    assert spec.family == "internvl3" and spec.checkpoint_format == "native" and spec.random_weights
    assert (spec.image_size, spec.tokens_per_tile, spec.max_tiles, spec.use_thumbnail) == (56, 4, 12, True)


@pytest.mark.parametrize("config,match", [
    ({"architectures": ["LlavaForConditionalGeneration"]}, "expected an InternVL checkpoint"),
    (_remote("vicuna_v1.1", "LlamaForCausalLM"), "expected one of"),
    ({"architectures": ["InternVLForConditionalGeneration"], "vision_config": {}, "text_config": {}},
     "no chat template"),
])
def test_unknown_checkpoints_are_refused_clearly(tmp_path, config, match):
    with pytest.raises(UnsupportedCheckpoint, match=match):
        detect_model_spec(_write(tmp_path, config))


def test_missing_config(tmp_path):
    with pytest.raises(UnsupportedCheckpoint, match="config.json not found"):
        detect_model_spec(tmp_path)
    assert issubclass(UnsupportedCheckpoint, ValueError)


@pytest.mark.parametrize("name", sorted(CASES))
def test_only_internvl3_5_has_a_thinking_mode(tmp_path, name):
    spec = detect_model_spec(_write(tmp_path, CASES[name][0]))
    assert spec.thinking == (name == "InternVL3.5-8B")


def test_demo_checkpoint_builds_as_internvl3_5_and_is_read_from_its_config(tmp_path):
    from workers.demo_checkpoint import build_demo_checkpoint, is_demo_checkpoint

    folder = build_demo_checkpoint(tmp_path / "internvl3-demo", seed=0, family="internvl3.5")  # name says 3
    spec = detect_model_spec(folder)
    assert (spec.family, spec.thinking, spec.llm_arch) == ("internvl3.5", True, "Qwen3ForCausalLM")
    assert is_demo_checkpoint(folder, 0, "internvl3.5") and not is_demo_checkpoint(folder, 0, "internvl3")


FLASH = _remote("internvl2_5", "Qwen3ForCausalLM", VIT_300M, ps_version="v2", flash_mode=True, **DYN)


def test_internvl3_5_flash_is_refused_naming_what_can_serve_it(tmp_path):
    with pytest.raises(UnsupportedCheckpoint) as err:
        detect_model_spec(_write(tmp_path, FLASH))
    message = str(err.value)
    assert "InternVL3.5-Flash" in message and "flash_mode" in message
    assert "lmdeploy's PyTorch engine" in message and "remote code" in message and "TurboMind" in message


def test_worker_start_refuses_a_flash_checkpoint(tmp_path):
    import subprocess
    import sys

    _write(tmp_path, FLASH)
    proc = subprocess.run([sys.executable, "-m", "workers", "--model-path", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "InternVL3.5-Flash" in proc.stderr and "lmdeploy's PyTorch engine" in proc.stderr
