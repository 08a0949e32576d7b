"""The settings of one answer, as the page's controls give them: one value passed from the Gradio-facing handlers
(`chat`, `regenerate_chat`, whose positional parameters are the /chat and /regenerate API) down to the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    """In the order of the page's controls (ui.py `params`), which is the order Gradio passes them in."""

    model: str | None
    system_prompt: str
    temperature: float
    top_p: float
    max_new_tokens: float  # Gradio sliders give floats
    repetition_penalty: float
    max_tiles: float
    num_frames: float
    thinking: bool = False

    def request_fields(self) -> dict[str, Any]:
        """The chat request's sampling and media fields (the model and messages are added by the caller)."""
        return {"temperature": float(self.temperature), "top_p": float(self.top_p),
                "max_tokens": int(self.max_new_tokens), "repetition_penalty": float(self.repetition_penalty),
                "max_tiles": int(self.max_tiles), "num_frames": int(self.num_frames),
                **({"thinking": True} if self.thinking else {})}
