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
                          env={**os.environ, "PATH": path, "TM_WHEELS": str(ROOT / "no-wheels"), **(env or {})},
                          timeout=timeout)  # not the checkout's .tm/wheels: those are for the GPU machine's Python


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
              "pydantic_settings", "mmengine"):
        assert (site / f).exists(), f
    assert not (site / "nvidia" / "__init__.py").exists()
    again = run(out, "bench", env={"TM_BUNDLE": str(tmp_path / "gone.tar.xz"), "TM_SITE": str(site)})
    assert again.returncode == 3 and "already unpacked" in (out / "gpu-check.log").read_text()


def test_installs_the_wheels_the_image_lacks(tmp_path):
    """What the bundle lacks travels as wheels in .tm/wheels; the script installs them into the site folder."""
    import zipfile

    wheels, site, out = tmp_path / "wheels", tmp_path / "site", tmp_path / "out"
    wheels.mkdir()
    (site / "lmdeploy").mkdir(parents=True)  # as if a first run had unpacked the bundle
    info = "gpu_probe-1.0.dist-info"
    with zipfile.ZipFile(wheels / "gpu_probe-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("gpu_probe/__init__.py", "VALUE = 1\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpu-probe\nVersion: 1.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    res = run(out, "tests", env={"TM_SITE": str(site), "TM_WHEELS": str(wheels)})
    log = (out / "gpu-check.log").read_text()
    assert "installing 1 wheels" in log, log
    assert (site / "gpu_probe" / "__init__.py").is_file(), log
    assert res.returncode == 4 and "lacks" in log  # then the fake site is found wanting, by name


def test_gpu_wheels_follow_the_requirements_pins():
    """bench/gpu_wheels.txt carries the worker's own versions to the GPU machine: where requirements.txt pins a
    package, the wheel list pins the same version."""
    def pins(path: Path) -> dict[str, str]:
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return {n.lower(): v for n, _, v in (line.partition("==") for line in lines if "==" in line)}

    wheels, requirements = pins(ROOT / "bench" / "gpu_wheels.txt"), pins(ROOT / "requirements.txt")
    assert "transformers" in wheels and "httptools" in wheels
    assert {n: v for n, v in wheels.items() if n in requirements} == {n: requirements[n] for n in wheels
                                                                       if n in requirements}
