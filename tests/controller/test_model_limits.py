"""The controller's model card shows limits every worker of that model accepts: field by field the tightest of the
workers' advertised limits, and of the controller's own body limit."""

from __future__ import annotations

from common.protocol import ModelCard, ModelLimits, WorkerRegistration
from controller.registry import Registry
from workers.limits import MediaLimits


def registration(worker_id: str, limits: MediaLimits, context: int) -> WorkerRegistration:
    card = ModelCard(id="m", limits=limits.advertised(context), context_length=context)
    return WorkerRegistration(worker_id=worker_id, url=f"http://127.0.0.1:1/{worker_id}", models=[card],
                              max_concurrency=4)


def test_tightest_of_the_workers_and_of_the_controller_body_limit():
    registry = Registry(expiry_s=10)
    registry.register(registration("a", MediaLimits(max_media_bytes=10, max_video_frames=32), 4096))
    registry.register(registration("b", MediaLimits(max_media_bytes=20, max_body_bytes=1000), 2048))
    (card,) = registry.model_cards()
    assert card.limits == ModelLimits(**{**MediaLimits().advertised(2048).model_dump(), "max_media_bytes": 10,
                                         "max_video_frames": 32, "max_body_bytes": 1000})
    (card,) = registry.model_cards(max_body_bytes=500)
    assert card.limits.max_body_bytes == 500 and card.workers == ["a", "b"]
    (card,) = registry.model_cards(max_body_bytes=10**9)
    assert card.limits.max_body_bytes == 1000


def test_a_card_silent_on_its_context_takes_the_other_workers_context():
    """`context_length` is optional in a card's limits (a card that does not say): the tightest of the rest is
    advertised, and registering such a worker beside another does not break /v1/models."""
    registry = Registry(expiry_s=10)
    registry.register(registration("a", MediaLimits(), 4096))
    silent = registration("b", MediaLimits(), 2048)
    silent.models[0].limits = silent.models[0].limits.model_copy(update={"context_length": None})
    registry.register(silent)
    (card,) = registry.model_cards()
    assert card.limits.context_length == 4096 and card.workers == ["a", "b"]
