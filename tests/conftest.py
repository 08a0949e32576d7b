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
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():  # torch is imported only when a GPU test was collected
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the GPU machine (see docs/gpu.md)")
    for item in gpu_items:
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


@pytest.fixture(scope="session")
def v1_checkpoint(tmp_path_factory):
    """Tiny random InternVL-Chat-V1-2-format (remote-code, ps_version v1) checkpoint for the TurboMind CPU tests."""
    from tests.gpu.random_checkpoint import build_remote_v1

    return build_remote_v1(tmp_path_factory.mktemp("v1"), "tiny")


@pytest.fixture(scope="session")
def v2_checkpoint(tmp_path_factory):
    """Tiny random transformers-native (ps_version v2) checkpoint for the TurboMind CPU tests."""
    from tests.gpu.random_checkpoint import build_native_v2

    return build_native_v2(tmp_path_factory.mktemp("v2"), "tiny")


@pytest.fixture(scope="session")
def demo_checkpoint_35(tmp_path_factory):
    """The demo checkpoint built as an InternVL3.5-family checkpoint (Qwen3 text model): it has a thinking mode."""
    from workers.demo_checkpoint import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("ckpt35") / "internvl35-demo", seed=0, family="internvl3.5")
