"""The limits a worker enforces: the request limits (declared once, in common/limits.py, with where each is
checked) and the worker's own media policy, which no card advertises."""

from __future__ import annotations

from pydantic import Field

from common.limits import MiB, ModelLimits, RequestLimits

class MediaLimits(RequestLimits):
    """What the worker's checks read (workers/media.py, pipeline.py, vision/); the worker's settings inherit it."""

    allow_remote_media: bool = Field(False, description="fetch http(s) image/video URLs (private, loopback and "
                                     "link-local targets are refused even when on)")

    def advertised(self, context_length: int) -> ModelLimits:
        """What the model card tells clients: the request limits, and the engine's context."""
        return ModelLimits(**self.model_dump(include=set(RequestLimits.model_fields)), context_length=context_length)


def mb(n: int | float) -> str:
    """Bytes as people read file sizes in errors (MiB, labelled MB as file managers do)."""
    return f"{n / MiB:.1f} MB"
