"""launch.sh's virtualenv handling, run for real in a scratch copy of the script: it creates a virtualenv and runs
pip, on stand-in requirement sets that pip finds already satisfied (no download). INTERNVL_LAUNCH_DRY_RUN stops it
just before it would hand over to the launcher, which that scratch virtualenv does not have. And `./launch.sh
test`'s Chromium step, against stand-in `apt-get` and `id` commands first on PATH (apt is never really run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import ROOT


@pytest.fixture
def checkout(tmp_path) -> Path:
    shutil.copy2(ROOT / "launch.sh", tmp_path / "launch.sh")
    (tmp_path / "requirements.txt").write_text("pip\n")
    (tmp_path / "requirements-test.txt").write_text("pip>=1\n")
    return tmp_path


def launch(checkout: Path, *args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("INTERNVL_VENV", "INTERNVL_VENV_DIR", "CHROMIUM")}
    r = subprocess.run(["./launch.sh", *args], cwd=checkout, capture_output=True, text=True, timeout=240,
                       env={**base, "INTERNVL_LAUNCH_DRY_RUN": "1", "INTERNVL_LOG_DIR": str(checkout / "logs"),
                            **(env or {})})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
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


@pytest.mark.slow
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


def _stub(path: Path, script: str) -> None:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.fixture
def chromium_step(checkout, tmp_path):
    """-> run(uid, apt_installs, chromium=None) -> (stdout, the apt-get calls as "DEBIAN_FRONTEND ARGS" lines).
    An existing virtualenv as it is (INTERNVL_VENV: no pip); `id -u` says `uid`; the stand-in apt-get records its
    calls and, when `apt_installs`, creates `chromium` (CHROMIUM names a path under tmp_path unless given)."""
    venv, stubs = tmp_path / "venv", tmp_path / "stubs"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3"))
    stubs.mkdir()
    calls = tmp_path / "apt-calls"

    def run(uid: int, apt_installs: bool, chromium: str | None = None) -> tuple[str, list[str]]:
        target = chromium or str(tmp_path / "installed" / "chromium")
        _stub(stubs / "id", f'[ "$1" = -u ] && echo {uid} || exec /usr/bin/id "$@"\n')
        make = f'mkdir -p "$(dirname {target})"; printf "#!/bin/sh\\n" > {target}; chmod +x {target}'
        _stub(stubs / "apt-get", f'echo "$DEBIAN_FRONTEND $*" >> {calls}\n'
                                 + (f'[ "$1" = install ] && {{ {make}; }}\n' if apt_installs else "") + "exit 0\n")
        out = launch(checkout, "test", "-x", env={"INTERNVL_VENV": str(venv), "CHROMIUM": target,
                                                  "PATH": f"{stubs}:{os.environ['PATH']}"})
        return out, calls.read_text().splitlines() if calls.exists() else []

    return run


def test_test_installs_chromium_as_root_with_apt_get(chromium_step):
    out, calls = chromium_step(uid=0, apt_installs=True)
    assert "Installing Chromium for the browser tests" in out and "skipped" not in out
    assert calls == ["noninteractive update -qq",
                     "noninteractive install -y -qq --no-install-recommends chromium fonts-dejavu-core"]
    assert "-m launcher test -x" in out  # then on to pytest, as before
    out, calls = chromium_step(uid=0, apt_installs=True)  # now installed: nothing more to do
    assert "Chromium" not in out and len(calls) == 2


def test_test_says_the_browser_tests_are_skipped_when_chromium_cannot_be_installed(chromium_step):
    out, calls = chromium_step(uid=1000, apt_installs=True)  # not root: apt-get is not tried
    assert calls == [] and "is missing, so the browser tests will be skipped" in out
    out, calls = chromium_step(uid=0, apt_installs=False)  # apt-get ran but no Chromium came of it
    assert len(calls) == 2 and "could not be installed" in out and "browser tests will be skipped" in out
    assert "-m launcher test -x" in out


def test_test_skips_the_chromium_step_when_chromium_is_on_path(chromium_step, tmp_path):
    on_path = tmp_path / "stubs" / "chromium"
    _stub(on_path, "exit 0\n")
    for chromium in ("chromium", str(on_path)):  # the default name on PATH; CHROMIUM naming a path
        out, calls = chromium_step(uid=0, apt_installs=True, chromium=chromium)
        assert calls == [] and "Chromium" not in out, out
