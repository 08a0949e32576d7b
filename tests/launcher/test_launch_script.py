"""launch.sh's virtualenv handling, run for real in a scratch copy of the script: it creates a virtualenv and runs
pip, on stand-in requirement sets that pip finds already satisfied (no download). INTERNVL_LAUNCH_DRY_RUN stops it
just before it would hand over to the launcher, which that scratch virtualenv does not have."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def checkout(tmp_path) -> Path:
    shutil.copy2(ROOT / "launch.sh", tmp_path / "launch.sh")
    (tmp_path / "requirements.txt").write_text("pip\n")
    (tmp_path / "requirements-test.txt").write_text("pip>=1\n")
    return tmp_path


def launch(checkout: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("INTERNVL_VENV", "INTERNVL_VENV_DIR")}
    r = subprocess.run(["./launch.sh", *args], cwd=checkout, capture_output=True, text=True, timeout=240,
                       env={**env, "INTERNVL_LAUNCH_DRY_RUN": "1", "INTERNVL_LOG_DIR": str(checkout / "logs")})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_test_run_then_plain_run_does_not_reinstall(checkout):
    first = launch(checkout, "test", "-x")
    assert "Creating the virtualenv" in first
    assert "Installing requirements.txt" in first and "first time" in first
    assert "would run: " in first and "-m launcher test -x" in first
    markers = sorted(p.name for p in (checkout / ".venv").glob(".installed-*"))
    assert [m.rsplit("-", 1)[0] for m in markers] == [".installed-requirements-test.txt",
                                                      ".installed-requirements.txt"]

    second = launch(checkout, "--port", "8000")
    assert "Installing" not in second and "Creating" not in second
    assert "-m launcher --port 8000" in second
    assert "Installing" not in launch(checkout, "test")


def test_each_requirement_set_reinstalls_only_when_it_changes(checkout):
    launch(checkout)  # base set only
    assert len(list((checkout / ".venv").glob(".installed-*"))) == 1
    out = launch(checkout, "test")
    assert "Installing requirements-test.txt" in out and "base set is already there" in out
    assert "requirements.txt into" not in out

    (checkout / "requirements-test.txt").write_text("pip>=2\n")
    assert "Installing" not in launch(checkout)  # a plain start does not need the test extras
    assert "Installing requirements-test.txt" in launch(checkout, "test")

    (checkout / "requirements.txt").write_text("pip>=3\n")
    out = launch(checkout)
    assert "requirements.txt changed since the last install" in out and "first time" not in out
    assert len(list((checkout / ".venv").glob(".installed-requirements.txt-*"))) == 1  # the stale marker is gone
