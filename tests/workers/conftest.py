"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest

from tests.support.scripted_turbomind import load_engine


@pytest.fixture
async def v1_engine(v1_checkpoint, monkeypatch):
    """Our TurbomindEngine on the real lmdeploy AsyncEngine over a scripted TurboMind (CPU), V1-format checkpoint."""
    eng = await load_engine(v1_checkpoint, monkeypatch)
    yield eng
    await eng.stop()
