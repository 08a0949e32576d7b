"""Shared fixtures. Servers are started once per test session (importing torch+transformers costs seconds)."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine (see docs/gpu.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """The tiny random-weight InternVL checkpoint, built once per test session (seconds)."""
    from workers.demo_checkpoint import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("ckpt") / "internvl-demo", seed=0)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    """Where server processes started by tests write their logs (printed on failure by the tests that use them)."""
    return tmp_path_factory.mktemp("logs")
