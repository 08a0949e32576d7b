"""The transformers engine with its generation inside a `@spaces.GPU` function, for Hugging Face ZeroGPU Spaces.

On ZeroGPU hardware the Space's process has no CUDA of its own: the `spaces` package patches torch, so weights put
on "cuda" at start-up land on a GPU only inside a function decorated with `@spaces.GPU`, which runs in a forked
process holding a GPU for that call and streams back what the function yields. So the generation loop runs in such
a generator function, and the token ids it yields feed the engine's usual streamer (stop strings, aborts and
counting stay in TransformersEngine). Off ZeroGPU `spaces.GPU` returns the function unchanged and the same code
runs in-process, which is what the tests exercise. `import spaces` must come before torch (space/app.py does so).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import spaces

from workers.engines.transformers_engine import GENERATION_END, TokenStreamer, TransformersEngine

_ENGINE: ZeroGPUEngine | None = None  # the one engine of this process; the forked GPU process finds it here
GPU_DURATION_S = 120  # ZeroGPU quota a call reserves; a longer answer is cut by the platform


@spaces.GPU(duration=GPU_DURATION_S)
def generate_on_gpu(inputs: dict[str, Any], generation_kwargs: dict[str, Any], seed: int | None):
    """Yields the engine's streamer items, (token ids, None): no logprobs on ZeroGPU (ZeroGPUEngine.features).
    Arguments and yields are pickled across the ZeroGPU process boundary."""
    engine = _ENGINE
    if engine is None or engine._loaded is None:
        raise RuntimeError("the ZeroGPU engine has not loaded its model")
    out: queue.SimpleQueue = queue.SimpleQueue()
    cancel = threading.Event()
    # The transformers engine's own generation, in a thread of the GPU process, into a thread queue.
    thread = threading.Thread(target=TransformersEngine.run_generation, name="zerogpu-generate", daemon=True,
                              args=(engine, engine._loaded, inputs, generation_kwargs, seed, cancel,
                                    TokenStreamer(out.put)))
    thread.start()
    try:
        while (item := out.get()) is not GENERATION_END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # also when the consumer closes the generator (abort, stop string, client gone)
        cancel.set()
        thread.join()


class ZeroGPUEngine(TransformersEngine):
    name = "transformers-zerogpu"
    # The generation arguments cross a process boundary pickled: xgrammar's compiled grammars do not, and the logprob
    # tap reads the head inside the GPU process. The rest of the transformers engine's features work alike.
    features = TransformersEngine.features - {"logprobs", "response_format"}

    async def start(self) -> None:
        global _ENGINE
        await super().start()
        _ENGINE = self

    def run_generation(self, loaded, inputs, generation_kwargs, seed, cancel, streamer) -> None:
        """Generation thread of the serving process: relays what the GPU function yields. Never raises."""
        try:
            tokens = generate_on_gpu(inputs, generation_kwargs, seed)
            try:
                for item in tokens:
                    streamer.send(item)
                    if cancel.is_set():
                        break
            finally:
                tokens.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer, which raises a ServingError
            streamer.send(exc)
        finally:
            streamer.send(GENERATION_END)
