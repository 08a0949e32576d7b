"""From an OpenAI chat request to the engine's GenerationRequest: fetch and decode media, tile within budget (or
take the pixels from the media cache when this content was preprocessed the same way before), build the family's
prompt with each image expanded to its tokens, and map the sampling fields.

Prompt conventions (InternVL model cards): a message's images and videos come before its text, as in training
('<image>\\nquestion'); with more than one image in the conversation each is labelled 'Image-k: <image>\\n', k counted
across the whole conversation; a video becomes 'Frame1: <image>\\nFrame2: <image>\\n...', one tile per frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ErrorCode, ServingError
from common.protocol import ChatCompletionRequest, ImagePart, TextPart, VideoPart
from workers.choices import SEED_MODULUS
from workers.engines.base import GenerationRequest, SamplingParams
from workers.limits import MediaLimits
from workers.media import decode_data_url, fetch_media
from workers.media_cache import Key, MediaCache, content_digest
from workers.model_spec import ModelSpec
from workers.prompts.escaping import UntrustedText
from workers.prompts.templates import get_template, image_placeholder
from workers.prompts.thinking import THINKING_SAMPLING, check_thinking, thinking_system
from workers.reasoning import THINK_START, join_reasoning
from workers.vision.budget import check_image_tokens_fit, newest_turn_budgets
from workers.vision.images import decode_image, header_pixels
from workers.vision.tiling import IMAGENET_MEAN, IMAGENET_STD, cut_tiles, normalize, square_tile
from workers.vision.video import decode_video, frame_pixels

if TYPE_CHECKING:
    import torch

    from workers.lease import Lease

DEFAULT_MAX_NEW_TOKENS = 512


@dataclass
class _Media:
    part: ImagePart | VideoPart
    label: str
    max_tiles: int = 1  # images: grid tile budget; videos: unused (1 tile per frame)
    num_frames: int = 0


async def prepare_generation(req: ChatCompletionRequest, spec: ModelSpec, limits: MediaLimits, request_id: str,
                             cache: MediaCache | None = None, lease: Lease | None = None) -> GenerationRequest:
    """With `lease` (the worker's path), decoding threads take their pixels from the worker's preprocessing budget
    and stop when the request is cancelled (workers/lease.py)."""
    in_thread = lease.in_thread if lease is not None else _in_thread
    check = lease.check if lease is not None else _never
    untrusted = UntrustedText()
    system, turns, media = _parse_messages(req, spec, limits, untrusted)
    sources = await asyncio.gather(*(_source(m, limits) for m in media))
    # In threads: hashing, decoding and the float work, and in a worker whose engine does not load torch, the first
    # call's import of torch (seconds), must not stall the event loop (heartbeats, other requests). One thread looks
    # everything up in the cache; what it lacks is preprocessed item by item in parallel.
    keys, pixels = await in_thread(_cached, media, sources, spec, cache) if media else ([], [])
    todo = [i for i, found in enumerate(pixels) if found is None]
    datas = await asyncio.gather(*(in_thread(_bytes_of, media[i], sources[i], limits) for i in todo))
    # What the uncached items decode to, from their headers, before any of them is decoded.
    costs = await in_thread(_decoded_pixels, [media[i] for i in todo], datas) if todo else []
    if sum(costs) > limits.max_request_pixels:
        raise ServingError(ErrorCode.UPLOAD_TOO_LARGE, f"the images and video frames of this request decode to "
                           f"{sum(costs):,} pixels; the limit is {limits.max_request_pixels:,} per request "
                           "(max_request_pixels): send fewer or smaller images, or fewer video frames")
    fresh = iter(await asyncio.gather(*(in_thread(_preprocess, media[i], data, spec, limits, cache, keys[i], check,
                                                  pixels=cost)
                                        for i, data, cost in zip(todo, datas, costs, strict=True))))
    pixels = [found if found is not None else next(fresh) for found in pixels]
    counts = [int(p.shape[0]) for p in pixels]
    check_image_tokens_fit(spec, sum(counts))

    expanded = iter(_expand(spec, m, n) for m, n in zip(media, counts, strict=True))
    rendered = [(role, "".join(next(expanded) if piece is None else piece for piece in pieces))
                for role, pieces in turns]
    prompt, user_spans = untrusted.split(get_template(spec.template).render(system, rendered))

    pixel_values = await in_thread(_concatenate, pixels) if pixels else None
    return GenerationRequest(request_id=request_id, prompt=prompt, pixel_values=pixel_values, user_spans=user_spans,
                             num_tiles=_tiles_per_image(media, counts), sampling=_sampling(req, spec))


def _url(part: ImagePart | VideoPart) -> str:
    return part.image_url.url if isinstance(part, ImagePart) else part.video_url.url


def _parse_messages(req: ChatCompletionRequest, spec: ModelSpec, limits: MediaLimits, untrusted: UntrustedText):
    """-> (system, turns, media). A turn is (role, pieces); a piece is text, or None where a media item's
    expansion goes (media listed in prompt order). The messages' text is wrapped by `untrusted`."""
    thinking = check_thinking(req.thinking, spec.family, spec.thinking, req.model)
    system, user_system = spec.system_message, None
    turns: list[tuple[str, list[str | None]]] = []
    media: list[_Media] = []
    user_indices = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not user_indices or req.messages[-1].role != "user":
        raise ServingError(ErrorCode.INVALID_REQUEST, "the last message must be a user message")
    newest = user_indices[-1]
    total_images = sum(isinstance(p, ImagePart) for m in req.messages if not isinstance(m.content, str)
                       for p in m.content)
    image_no = 0
    for i, msg in enumerate(req.messages):
        parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) else msg.content
        texts = [p.text for p in parts if isinstance(p, TextPart)]
        visual = [p for p in parts if not isinstance(p, TextPart)]
        if msg.role != "user" and visual:
            raise ServingError(ErrorCode.INVALID_REQUEST, f"message {i + 1} ({msg.role}) contains an image or "
                               "video; only user messages may carry media", param=f"messages[{i}]")
        if msg.role == "system":
            if i != 0:
                raise ServingError(ErrorCode.INVALID_REQUEST, f"message {i + 1}: a system message must come first",
                                   param=f"messages[{i}]")
            system = user_system = untrusted.wrap("".join(texts))
            continue
        if msg.reasoning_content is not None:
            texts = _with_reasoning(msg.role, msg.reasoning_content, texts, i)
        _refuse_image_markup(spec, texts, i)
        pieces: list[str | None] = []
        first = len(media)
        for part in visual:
            if isinstance(part, ImagePart):
                image_no += 1
                media.append(_Media(part, f"image {image_no} (message {i + 1})"))
                pieces.append(f"Image-{image_no}: " if total_images > 1 else "")
            else:
                frames = part.video_url.num_frames or req.num_frames or limits.default_num_frames
                label = f"video in message {i + 1}"
                if frames > limits.max_video_frames:
                    raise ServingError(ErrorCode.INVALID_REQUEST, f"{label} asks for {frames} frames; this server "
                                       f"samples at most {limits.max_video_frames} per video", param="num_frames")
                media.append(_Media(part, label, num_frames=frames))
            pieces.append(None)
        turns.append((msg.role, pieces + [untrusted.wrap(t) for t in texts]))
        if i == newest:
            _assign_budgets(spec, req, [m for m in media[first:] if isinstance(m.part, ImagePart)])
    if len(media) > limits.max_images_per_request:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"the conversation as a whole has {len(media)} images and "
                           f"videos (earlier turns included); this server takes at most "
                           f"{limits.max_images_per_request} per request: start a new conversation", param="messages")
    if thinking:
        system = thinking_system(user_system)
    return system, turns, media


def _with_reasoning(role: str, reasoning: str, texts: list[str], index: int) -> list[str]:
    """An earlier answer sent back with its reasoning apart goes to the model as the model wrote it, reasoning
    first (the authors' `chat()` keeps the whole response in the history); an answer that still holds its
    `<think>` section is sent as it is, so the reasoning is never there twice."""
    if role != "assistant":
        raise ServingError(ErrorCode.INVALID_REQUEST, f"message {index + 1} ({role}) has reasoning_content; only "
                           "assistant messages may", param=f"messages[{index}].reasoning_content")
    answer = "".join(texts)
    if not reasoning or answer.lstrip().startswith(THINK_START):
        return texts
    return [join_reasoning(reasoning, answer)]


def _assign_budgets(spec: ModelSpec, req: ChatCompletionRequest, newest_images: list[_Media]) -> None:
    own = [m.part.image_url.max_dynamic_patch for m in newest_images]
    for m, budget in zip(newest_images, newest_turn_budgets(spec, own, req.max_tiles), strict=True):
        m.max_tiles = budget


def _refuse_image_markup(spec: ModelSpec, texts: list[str], index: int) -> None:
    for marker in (spec.image_token, spec.image_start, spec.image_end):
        if any(marker in t for t in texts):
            raise ServingError(ErrorCode.INVALID_REQUEST, f"message {index + 1} contains the reserved image marker "
                               f"{marker!r} in its text; send images as image_url parts", param=f"messages[{index}]")


async def _source(m: _Media, limits: MediaLimits) -> str | bytes:
    """A data: URL stays text here: it is decoded in the preprocessing thread, and only when its pixels are not
    cached. Remote media is downloaded (its bytes are the cache's content key)."""
    url = _url(m.part)
    if url[:5].lower() == "data:":
        return url
    return await fetch_media(url, limits, m.label)


def _cached(media: list[_Media], sources: list[str | bytes], spec: ModelSpec,
            cache: MediaCache | None) -> tuple[list[Key | None], list[torch.Tensor | None]]:
    """Runs in a worker thread: each item's cache key (each distinct content hashed once) and its cached pixels."""
    if cache is None or not cache.enabled:
        return [None] * len(media), [None] * len(media)
    digests: dict[str | bytes, str] = {}
    keys: list[Key | None] = []
    for m, source in zip(media, sources, strict=True):
        if source not in digests:
            digests[source] = content_digest(source)
        keys.append((digests[source], *_params(m, spec)))
    return keys, [cache.get(key) for key in keys]


async def _in_thread(fn, *args, pixels: int = 0):
    return await asyncio.to_thread(fn, *args)


def _never() -> None:
    return None


def _bytes_of(m: _Media, source: str | bytes, limits: MediaLimits) -> bytes:
    """Runs in a worker thread: a data: URL's bytes (its size checked), or the downloaded bytes."""
    return decode_data_url(source, limits, m.label) if isinstance(source, str) else source


def _decoded_pixels(media: list[_Media], datas: list[bytes]) -> list[int]:
    """Pixels each item will decode to, from the file headers: an image's size, a video's frame size x frames."""
    return [frame_pixels(data) * m.num_frames if isinstance(m.part, VideoPart) else header_pixels(data)
            for m, data in zip(media, datas, strict=True)]


def _preprocess(m: _Media, data: bytes, spec: ModelSpec, limits: MediaLimits, cache: MediaCache | None,
                key: Key | None, check: Callable[[], None] = _never) -> torch.Tensor:
    """Runs in a worker thread: one media item -> its normalised tiles float32 [N, 3, S, S], kept in the cache.
    `check` raises to stop (the request was cancelled)."""
    tiles = _to_tiles(m, data, spec, limits, check)
    check()
    pixels = normalize(tiles, tuple(spec.extra.get("image_mean", IMAGENET_MEAN)),
                       tuple(spec.extra.get("image_std", IMAGENET_STD)))
    if cache is not None and key is not None:
        cache.put(key, pixels)
        if isinstance(m.part, ImagePart) and m.max_tiles > 1 and (len(tiles) == 1 or spec.use_thumbnail):
            # The 1-tile version (how the image is sent once it is in an earlier turn) is the whole image resized
            # to one tile: the thumbnail, or the only tile, of this one. Stored now, the next turn needs no decoding.
            cache.put((key[0], *_params(replace(m, max_tiles=1), spec)), pixels[-1:].clone())
    return pixels


def _params(m: _Media, spec: ModelSpec) -> tuple[object, ...]:
    """Everything besides the content that decides the pixels of `m`."""
    if isinstance(m.part, VideoPart):
        v = m.part.video_url
        return ("video", spec.image_size, m.num_frames, v.start, v.end)
    return ("image", spec.image_size, spec.dynamic, min(spec.min_tiles, m.max_tiles), m.max_tiles,
            spec.use_thumbnail)


def _concatenate(pixels: list[torch.Tensor]) -> torch.Tensor:
    """One new tensor for the engine (never a cached one itself)."""
    import torch

    return torch.cat(pixels, dim=0)


def _to_tiles(m: _Media, data: bytes, spec: ModelSpec, limits: MediaLimits,
              check: Callable[[], None] = _never) -> np.ndarray:
    """Decode + tile one media item -> uint8 [N, S, S, 3]. `check` raises to stop."""
    size = spec.image_size
    if isinstance(m.part, VideoPart):
        v = m.part.video_url
        return decode_video(data, limits, m.num_frames, v.start, v.end, m.label, tile_size=size, check=check)
    image = decode_image(data, limits, m.label, check)
    check()
    if not spec.dynamic:
        return square_tile(image, size)
    return cut_tiles(image, tile_size=size, min_tiles=min(spec.min_tiles, m.max_tiles), max_tiles=m.max_tiles,
                     use_thumbnail=spec.use_thumbnail)


def _expand(spec: ModelSpec, m: _Media, tile_count: int) -> str:
    def one(tiles: int) -> str:
        return image_placeholder(spec.image_start, spec.image_token, spec.image_end, tiles * spec.tokens_per_tile)

    if isinstance(m.part, VideoPart):
        return "".join(f"Frame{k}: {one(1)}\n" for k in range(1, tile_count + 1))
    return f"{one(tile_count)}\n"


def _tiles_per_image(media: list[_Media], counts: list[int]) -> list[int]:
    """Engines see one entry per <img>...</img> block: a video contributes one per frame."""
    out: list[int] = []
    for m, n in zip(media, counts, strict=True):
        out.extend([1] * n if isinstance(m.part, VideoPart) else [n])
    return out


def _sampling(req: ChatCompletionRequest, spec: ModelSpec) -> SamplingParams:
    stops = list(req.stop or [])
    stops += [s for s in spec.stop_words if s not in stops]
    # Thinking: the model card's sampling for the fields the request leaves unset (workers/prompts/thinking.py).
    card = {k: v for k, v in THINKING_SAMPLING.items() if k not in req.model_fields_set} if req.thinking else {}
    return SamplingParams(max_new_tokens=req.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                          temperature=card.get("temperature", req.temperature),
                          top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty,
                          stop=tuple(stops), seed=None if req.seed is None else req.seed % SEED_MODULUS,
                          **openai_sampling(req))


def openai_sampling(req: ChatCompletionRequest) -> dict:
    """The SamplingParams of OpenAI's further parameters and the field's extensions (what an engine honours of them
    was checked at admission: workers/openai_support.py)."""
    fmt = req.response_format
    response_format = None
    if fmt is not None and fmt.type == "json_object":
        response_format = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        response_format = {"type": "json_schema", "json_schema": {"name": fmt.json_schema.name,
                                                                  "schema": fmt.json_schema.schema_}}
    return dict(presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                logit_bias=tuple((int(k), v) for k, v in (req.logit_bias or {}).items()),
                logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0, response_format=response_format,
                min_p=req.min_p or 0.0, min_new_tokens=req.min_tokens or 0,
                stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=bool(req.ignore_eos),
                skip_special_tokens=req.skip_special_tokens is not False)
