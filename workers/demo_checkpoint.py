"""A tiny, randomly initialised, transformers-native InternVL checkpoint, built offline in seconds.

It exists so that the whole stack (worker, controller, UI, tests) runs without a model hub: the architecture, the
tokenizer's special tokens, the chat template and the image/video processors are real; the weights are noise, so the
answers are noise. config.json carries `"random_weights": true`, and everything that serves it says so.

    python -m workers.demo_checkpoint OUT_DIR [--seed N] [--family internvl3|internvl3.5] [--force]

`--family internvl3.5` builds the same model with a Qwen3 text model, as the InternVL3.5 "-HF" checkpoints have:
the worker reads it as an InternVL3.5 checkpoint (thinking mode included) from its config, as it reads a real one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

# Bump when the layout changes, so an old build in OUT_DIR is rebuilt rather than reused.
FORMAT_VERSION = 1

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, VIDEO]

TILE = 56  # tile side in pixels; patch 14 -> 4x4 patches -> pixel shuffle 0.5 -> 4 tokens per tile
PATCH = 14
DOWNSAMPLE = 0.5
TOKENS_PER_TILE = int((TILE // PATCH) ** 2 * DOWNSAMPLE**2)
VOCAB_SIZE = 640
CONTEXT_LENGTH = 4096
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# family -> the text model's config `model_type` (workers/model_spec.py tells the families apart by it)
TEXT_MODELS = {"internvl3": "qwen2", "internvl3.5": "qwen3"}

# Files whose presence (with a matching config) marks a finished build.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "processor_config.json", "README.md")

# ChatML, as the InternVL 2.5/3 "-hf" checkpoints use it; an image part becomes <IMG_CONTEXT>, which the
# processor expands to <img> + <IMG_CONTEXT> * n + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif part['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Enough varied text for a few hundred byte-level merges; the content does not matter, only that it is fixed.
_CORPUS = """\
You are a helpful assistant. Answer the questions about the image and the video.
What is shown in this picture? A red bicycle leans against a white wall next to a green door.
Describe the image in detail. Two children play football on a sunny beach while a dog runs after the ball.
How many people are there in the photo? There are three people standing near the window of a small cafe.
Please read the text in the image. The sign says: Open every day from 9 am to 6 pm, closed on holidays.
What happens in the video? A man pours coffee into a cup, adds milk, and then stirs it with a spoon.
Frame1: Frame2: Frame3: Frame4: Image-1: Image-2: the first frame shows a street, the last one a park.
Where is the cat? The cat is sleeping on the sofa, under a blue blanket, beside an open book.
Is it raining? No, the sky is clear and the sun is shining over the mountains and the quiet lake.
Count the apples on the table: one, two, three, four, five, six, seven, eight, nine, ten.
Give the coordinates of the car. <ref>car</ref><box>[[120, 340, 560, 780]]</box> on a 0-1000 scale.
The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.
Numbers and symbols: 0 1 2 3 4 5 6 7 8 9, 3.14, 42%, $10, (a, b), [x, y], {key: value}, #tag, @user!
Questions, answers, colors, shapes, animals, vehicles, buildings, trees, flowers, rivers, clouds.
Mixed case: Hello World, INTERNVL, Vision Language Model, Transformer, Tokenizer, Pixel Shuffle.
"""


def build_demo_checkpoint(out_dir: Path, seed: int = 0, family: str = "internvl3") -> Path:
    """Write the demo checkpoint into `out_dir` (created, must not hold other files) and return it.

    Deterministic: the same seed gives byte-identical weights and tokenizer files.
    """
    import torch
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids

    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=[TILE, TILE], patch_size=[PATCH, PATCH]),
        text_config=dict(model_type=TEXT_MODELS[family], vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=CONTEXT_LENGTH, bos_token_id=token_id(IM_START),
                         eos_token_id=token_id(IM_END), pad_token_id=token_id(PAD), tie_word_embeddings=False),
        image_token_id=token_id(IMG_CONTEXT), image_seq_length=TOKENS_PER_TILE, downsample_ratio=DOWNSAMPLE,
        tie_word_embeddings=False,
    )
    config.architectures = ["InternVLForConditionalGeneration"]

    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    _spread_logits(model, tokenizer, seed)
    model.generation_config.eos_token_id = [token_id(IM_END), token_id(PAD)]
    model.generation_config.pad_token_id = token_id(PAD)
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir)

    image_processor = GotOcr2ImageProcessor(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=12,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    video_processor = InternVLVideoProcessor(size={"height": TILE, "width": TILE}, image_mean=IMAGENET_MEAN,
                                             image_std=IMAGENET_STD)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=video_processor, image_seq_length=TOKENS_PER_TILE,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)

    _mark_random(out_dir / "config.json", seed, family)
    (out_dir / "README.md").write_text(_readme(seed, family), encoding="utf-8")
    return out_dir


def _train_tokenizer():
    """A byte-level BPE trained on the built-in corpus (deterministic: fixed corpus, fixed vocab size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer)
    # Named model-specific tokens: InternVLProcessor reads tokenizer.start_image_token & co.
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
        extra_special_tokens={"start_image_token": IMG_START, "end_image_token": IMG_END,
                              "context_image_token": IMG_CONTEXT, "video_token": VIDEO},
    )


def _spread_logits(model, tokenizer, seed: int) -> None:
    """Make random weights produce varied, printable text. With the default init (std 0.02) on a 64-wide model the
    logits are nearly flat and greedy decoding repeats one token (tied embeddings favour repeating the input token
    too). Unit-scale untied embeddings and std-0.2 text projections make the next token a varied function of the
    context. Zeroing the LM-head rows of bytes that are not printable text, and of the special tokens but
    <|im_end|>, keeps streams readable."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            weight.copy_(torch.randn(weight.shape, generator=generator))
        for name, weight in model.model.language_model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
        head = model.get_output_embeddings().weight
        never = {tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS if tok != IM_END}
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            printable = text and "\ufffd" not in text and all(ch.isprintable() or ch in " \n" for ch in text)
            if token_id in never or not printable:
                head[token_id].zero_()


def _mark_random(config_path: Path, seed: int, family: str = "internvl3") -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["random_weights"] = True
    config["demo_checkpoint"] = {"seed": seed, "format_version": FORMAT_VERSION, "family": family}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _readme(seed: int, family: str = "internvl3") -> str:
    text = TEXT_MODELS[family].capitalize()
    return f"""# InternVL demo checkpoint (random weights)

**The weights in this folder are random.** The model answers with noise. It exists to run and test the serving
stack without downloading a real model: the architecture (transformers-native `InternVLForConditionalGeneration`,
InternViT-style vision tower + {text} text model, read as an {family} checkpoint), the tokenizer's special tokens, the ChatML chat template and the
image/video processors are real; only the numbers are not.

- built by `python -m workers.demo_checkpoint OUT_DIR --seed {seed} --family {family}` (deterministic: same seed,
  same bytes)
- vision: hidden 32, 2 layers, {TILE}px tiles, patch {PATCH}; text: {text}, hidden 64, 2 layers
- {TOKENS_PER_TILE} `<IMG_CONTEXT>` tokens per tile; 1..12 tiles per image
- config.json has `"random_weights": true`; servers label the model as random weights

To serve a real model, point the worker at a real InternVL checkpoint folder instead (see docs/demo-checkpoint.md).
"""


def is_demo_checkpoint(path: Path, seed: int | None = None, family: str | None = None) -> bool:
    """True when `path` holds a complete demo checkpoint of this format (and of `seed` and `family`, when given)."""
    path = Path(path)
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        marker = json.loads((path / "config.json").read_text(encoding="utf-8")).get("demo_checkpoint") or {}
    except (OSError, ValueError):
        return False
    if marker.get("format_version") != FORMAT_VERSION:
        return False
    if family is not None and marker.get("family", "internvl3") != family:
        return False
    return seed is None or marker.get("seed") == seed


def ensure_demo_checkpoint(out_dir: Path, seed: int = 0, force: bool = False,
                           family: str = "internvl3") -> tuple[Path, bool]:
    """Build into `out_dir` unless it already holds this demo checkpoint; returns (path, built).

    Builds in a sibling temporary folder and renames it into place, so an interrupted build never looks complete.
    Refuses to overwrite a folder that holds something else unless `force`.
    """
    out_dir = Path(out_dir)
    if not force and is_demo_checkpoint(out_dir, seed, family):
        return out_dir, False
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force and not is_demo_checkpoint(out_dir):
            raise FileExistsError(f"{out_dir} is not empty and is not a demo checkpoint; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        build_demo_checkpoint(staging, seed, family)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.demo_checkpoint",
                                     description="Build the tiny random-weights InternVL demo checkpoint.")
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same bytes)")
    parser.add_argument("--family", choices=sorted(TEXT_MODELS), default="internvl3",
                        help="internvl3.5: a Qwen3 text model, read as an InternVL3.5 checkpoint (thinking mode)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR already holds it")
    args = parser.parse_args(argv)
    try:
        path, built = ensure_demo_checkpoint(args.out_dir, args.seed, args.force, args.family)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if built:
        print(f"built demo checkpoint (seed {args.seed}, RANDOM WEIGHTS) in {path}")
    else:
        print(f"reusing the demo checkpoint (seed {args.seed}) already in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
