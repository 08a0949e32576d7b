"""A stand-in for lmdeploy's TurboMind (the CUDA-only part), put in at lmdeploy's own seam,
`AsyncEngine._build_turbomind`, so the CPU tests run the real lmdeploy AsyncEngine (sessions, the request-handle pool,
the detokenizer, error statuses) with our engine on top.

It keeps the contract of lmdeploy 0.18's `TurboMindInstance.async_stream_infer` (turbomind/turbomind.py): `forward`
starts the request on the engine, which works on its own (here: an asyncio task producing one token per step) and
signals; a cancel only asks the engine to stop; the stream swallows a cancellation and, in its `finally`, waits until
the engine confirms (status FINISH or CANCEL), which is when TurboMind has released the sequence's KV blocks. It also
keeps two of TurboMind's fatal checks: the native ViT's pixel dtype (a TM_CHECK that stops the process) and one
request at a time per instance. Whatever would have been fatal is recorded in `violations`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def lmdeploy_dtype(requested: str, config: dict[str, Any]) -> str:
    """lmdeploy 0.18's dtype rule for one part of a checkpoint (turbomind/converter.py `_resolve_dtype`, on a GPU
    that computes both bfloat16 and float16): an explicit dtype wins; "auto" takes that part's config dtype when it
    is bfloat16 or float16, else bfloat16."""
    if requested != "auto":
        return requested
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


@dataclass
class Call:
    """One request as the engine sees it."""

    input_ids: list[int]
    embeds: Any
    ranges: Any
    multimodal: Any
    max_new_tokens: int
    gen_config: Any = None  # lmdeploy's GenerationConfig as the engine got it
    tokens: list[int] = field(default_factory=list)
    cancel_requested: bool = False
    status: str = "running"  # running | finish | cancel
    released: asyncio.Event = field(default_factory=asyncio.Event)  # the engine let go of the sequence (KV freed)
    signal: asyncio.Event = field(default_factory=asyncio.Event)


class ScriptedTurboMind:
    def __init__(self, model_path: str, engine_config, tokens: list[int]):
        cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        requested = engine_config.dtype
        llm = cfg.get("text_config") or cfg.get("llm_config") or {}
        engine_config.dtype = lmdeploy_dtype(requested, llm)  # lmdeploy writes the LLM's dtype back
        self.vision_dtype = None if engine_config.language_model_only else \
            lmdeploy_dtype(requested, cfg.get("vision_config") or {})
        self.engine_config, self.tokens = engine_config, tokens
        if self.vision_dtype is not None:  # lmdeploy's InternVitVisionModel: the native format's image_seq_length
            vision = cfg["vision_config"]  # (transformers' default 256), else from the vision config's own sizes
            seq = cfg.get("image_seq_length", 256) if "text_config" in cfg else \
                int((vision["image_size"] // vision["patch_size"]) ** 2 * cfg.get("downsample_ratio", 0.5) ** 2)
            self.source_model = SimpleNamespace(vision_model=SimpleNamespace(_image_seq_length=seq))
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.fail_status = None  # a ResponseType to answer every request with
        self.prefill = asyncio.Event()  # cleared: requests wait before their first token (a long prefill)
        self.prefill.set()
        self.step_s = 0.002

    def create_instance(self, cuda_stream_id=0):
        return ScriptedInstance(self)

    def close(self):
        pass

    async def get_health_status(self):
        return dict(alive=True, message="scripted", schedule_metrics=None)


class ScriptedInstance:
    def __init__(self, tm: ScriptedTurboMind):
        self.tm = tm
        self.call: Call | None = None

    async def async_cancel(self, session_id=None):  # model_inst.cancel(): a request, not a confirmation
        if self.call is not None:
            self.call.cancel_requested = True

    async def _engine(self, call: Call) -> None:
        await self.tm.prefill.wait()
        for _ in range(call.max_new_tokens):
            await asyncio.sleep(self.tm.step_s)
            if call.cancel_requested:
                call.status = "cancel"
                break
            call.tokens.append(self.tm.tokens[len(call.tokens) % len(self.tm.tokens)])
            call.signal.set()
        else:
            call.status = "finish"
        call.released.set()
        call.signal.set()

    async def async_stream_infer(self, session_id, input_ids, input_embeddings=None, input_embedding_ranges=None,
                                 multimodal=None, gen_config=None, stream_output=False, **kwargs):
        from lmdeploy.messages import EngineOutput, ResponseType

        if self.call is not None and not self.call.released.is_set():
            self.tm.violations.append("an instance got a new request while its previous one still ran")
        for item in multimodal or []:
            if str(item["pixel_values"].dtype).removeprefix("torch.") != self.tm.vision_dtype:
                self.tm.violations.append(f"ViT TM_CHECK: pixels {item['pixel_values'].dtype}, "
                                          f"ViT {self.tm.vision_dtype}")
        call = Call(list(input_ids), input_embeddings, input_embedding_ranges, multimodal, gen_config.max_new_tokens,
                    gen_config)
        self.tm.calls.append(call)
        self.call = call
        if self.tm.fail_status is not None:
            call.released.set()
            yield EngineOutput(self.tm.fail_status, [])
            return
        engine = asyncio.get_running_loop().create_task(self._engine(call))
        engine.add_done_callback(lambda task: call.signal.set())
        sent = 0
        try:
            while True:
                await call.signal.wait()
                call.signal.clear()
                done = call.released.is_set()
                if len(call.tokens) == sent and not done:
                    continue
                status = ResponseType.SUCCESS
                if done:
                    status = ResponseType.FINISH if call.status == "finish" else ResponseType.CANCEL
                new, sent = call.tokens[sent:], len(call.tokens)
                yield EngineOutput(status, new, logprobs=_logprobs(new, gen_config.logprobs))
                if done:
                    break
        except (GeneratorExit, asyncio.CancelledError):  # as lmdeploy: cancel and swallow
            call.cancel_requested = True
        finally:
            while not call.released.is_set() and not engine.done():  # as lmdeploy: wait for the confirmation
                await call.signal.wait()
                call.signal.clear()


def _logprobs(tokens: list[int], n: int | None) -> list[dict[int, float]] | None:
    """TurboMind's form (turbomind.py `_get_logprobs_impl`): per new token, its top n {id: logprob} with the chosen
    token always among them. Scripted: the chosen token -0.25, then ids 1, 2, ... at -1, -2, ..."""
    if not n:
        return None
    return [{**{k: -float(k) for k in range(1, n + 1) if k != t}, t: -0.25} for t in tokens]


def install(monkeypatch, tokens: list[int]) -> dict[str, ScriptedTurboMind]:
    """Make lmdeploy's AsyncEngine build a ScriptedTurboMind; the returned dict gets it under "tm". Every handle
    lmdeploy returns to its pool is checked: returning one whose request still runs in the engine is a violation
    (the next request would share a TurboMind instance with it)."""
    from lmdeploy.serve.core import AsyncEngine
    from lmdeploy.serve.managers.session_manager import RequestHandlePool

    built: dict[str, ScriptedTurboMind] = {}

    def build(self, model_path, backend_config=None, trust_remote_code=False, **kw):
        built["tm"] = ScriptedTurboMind(model_path, backend_config, tokens)
        return built["tm"]

    real_put = RequestHandlePool.put

    def put(self, handle):
        call = getattr(handle, "call", None)
        if call is not None and not call.released.is_set():
            handle.tm.violations.append("a request handle went back to the pool before TurboMind confirmed")
        real_put(self, handle)

    monkeypatch.setattr(AsyncEngine, "_build_turbomind", build)
    monkeypatch.setattr(RequestHandlePool, "put", put)
    return built


# -- our engine on it -------------------------------------------------------------------------------------------------

def pretend_gpu():
    """The GPU `TurbomindEngine.resolve` plans for on CPU: one 80 GiB card."""
    from workers.engines import turbomind_config as tc

    return tc.GpuFacts(name="test", count=1, total_bytes=80 * tc.GiB, free_bytes=79 * tc.GiB)


async def load_engine(path, monkeypatch, script: str = " the cat sat on the mat STOP and", **settings):
    """Our TurbomindEngine (WorkerSettings `settings`) on the real lmdeploy AsyncEngine, over a ScriptedTurboMind
    that streams the tokens of `script`; `eng.tm` is that ScriptedTurboMind. The caller stops the engine."""
    from workers.engines.turbomind_engine import TurbomindEngine
    from workers.model_spec import detect_model_spec
    from workers.settings import WorkerSettings

    eng = TurbomindEngine(WorkerSettings(model_path=str(path), **settings), detect_model_spec(path))
    scripted = install(monkeypatch, eng.tokenize(script))
    await eng.load(eng.resolve(pretend_gpu()), vision_device="cpu")
    eng.tm = scripted["tm"]
    return eng


def image_request(eng, images: int = 2, max_new: int = 6, stop=(), rid: str = "r1"):
    """A GenerationRequest in the engine's own prompt format with `images` one-tile images (seeded pixels)."""
    import torch

    from workers.engines.base import GenerationRequest, SamplingParams
    from workers.prompts.templates import TEMPLATES

    ph = "<img>" + "<IMG_CONTEXT>" * eng.spec.tokens_per_tile + "</img>"
    text = "".join(f"Image-{i + 1}: {ph}\n" for i in range(images)) + "Describe."
    prompt = TEMPLATES[eng.spec.template].render(eng.spec.system_message, [("user", text)])
    px = torch.randn(images, 3, 448, 448, generator=torch.Generator().manual_seed(5)) if images else None
    return GenerationRequest(request_id=rid, prompt=prompt, pixel_values=px, num_tiles=[1] * images,
                             sampling=SamplingParams(max_new_tokens=max_new, temperature=0, stop=stop))


async def collect(events) -> list:
    return [event async for event in events]
