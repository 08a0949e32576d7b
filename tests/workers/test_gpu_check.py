"""bench/gpu_check.sh on a machine without a GPU: it unpacks the TurboMind bundle into the layout TurboMind's RUNPATH
expects, then stops with a readable message and its own exit status, writing its log to the output folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
# The shared folder beside the checkout (../shared), or beside a worktree's parent.
BUNDLE = next((p for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
               if (p / "gpu" / "turbomind-bundle-cp312.tar.xz").is_file()), ROOT.parent / "shared") \
    / "gpu" / "turbomind-bundle-cp312.tar.xz"


def run(*args, env=None, timeout=300):
    # python3 = this interpreter (torch, but no CUDA here)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **(env or {})}, timeout=timeout)


def test_usage_errors_are_exit_2(tmp_path):
    assert run().returncode == 2
    bad = run(tmp_path / "out", "everything")
    assert bad.returncode == 2 and "unknown phase 'everything'" in (tmp_path / "out" / "gpu-check.log").read_text()


def test_missing_bundle_is_named(tmp_path):
    res = run(tmp_path / "out", env={"TM_BUNDLE": str(tmp_path / "nope.tar.xz"), "TM_SITE": str(tmp_path / "site")})
    assert res.returncode == 4 and "no bundle at" in res.stdout and "copy ../shared/gpu" in res.stdout


@pytest.mark.skipif(not BUNDLE.is_file(), reason=f"the TurboMind bundle is not at {BUNDLE} on this machine")
def test_unpacks_the_bundle_then_stops_without_a_gpu(tmp_path):
    shutil.copy(BUNDLE, tmp_path / BUNDLE.name)
    site, out = tmp_path / "site", tmp_path / "out"
    res = run(out, "tests", env={"TM_BUNDLE": str(tmp_path / BUNDLE.name), "TM_SITE": str(site)})
    assert res.returncode == 3, res.stdout + res.stderr
    log = (out / "gpu-check.log").read_text()
    assert "sees no CUDA GPU" in log and "STOPPED" in log
    for f in ("lmdeploy/turbomind/_turbomind.cpython-312-x86_64-linux-gnu.so",
              "nvidia/cuda_runtime/lib/libcudart.so.12", "nvidia/cublas/lib/libcublas.so.12", "nvidia/cublas/lib/libcublasLt.so.12", "fastapi", "uvicorn",
              "sse_starlette", "pydantic_settings", "mmengine"):
        assert (site / f).exists(), f
    assert not (site / "nvidia" / "__init__.py").exists()
    again = run(out, "bench", env={"TM_BUNDLE": str(tmp_path / "gone.tar.xz"), "TM_SITE": str(site)})
    assert again.returncode == 3 and "already unpacked" in (out / "gpu-check.log").read_text()
