"""deploy/Dockerfile, read (no Docker engine runs on these machines, so the image is not built here): it installs
the pinned requirements, gives launch.sh its virtualenv, builds the demo checkpoint where the cpu-demo manifests
look for it, runs as a numeric non-root user behind tini, and its build context keeps what the image runs."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import subprocess

from launcher.compose import ROOT
from tests.deploy.manifests import DEPLOY, KUBERNETES, containers, render

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _all(word: str) -> list[str]:
    return [rest for w, rest in instructions() if w == word]


def test_cuda_base_and_the_pinned_requirements():
    args = " ".join(_all("ARG"))
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\w+-ubuntu", args) and _all("FROM") == ["${CUDA_IMAGE}"]
    assert "requirements.txt requirements-cluster.txt /app/" in _all("COPY")
    runs = " ".join(_all("RUN"))
    assert "python3 -m venv /opt/venv" in runs
    assert "pip install --no-cache-dir -r /app/requirements.txt -r /app/requirements-cluster.txt" in runs
    # the requirements are installed before the code is copied: a code change reuses the 8 GB layer
    order = [w + " " + r for w, r in instructions()]
    assert order.index("COPY requirements.txt requirements-cluster.txt /app/") < order.index("COPY . /app")


def test_the_image_has_the_manifests_ray_with_the_agent_kuberay_probes():
    # KubeRay's probes ask the dashboard agent, which only ray[default] serves; same Ray as the venv and rayVersion
    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements-cluster.txt").read_text().splitlines()]
    ray = importlib.metadata.version("ray")
    assert f"ray[default]=={ray}" in pins
    for where in ("kuberay", "overlays/kuberay-cpu-demo"):
        [cluster] = [o for o in render(KUBERNETES / where) if o["kind"] == "RayCluster"]
        assert cluster["spec"]["rayVersion"] == ray


def test_launch_sh_uses_the_image_virtualenv_and_installs_nothing():
    env = " ".join(_all("ENV"))
    assert "INTERNVL_VENV=/opt/venv" in env and "PATH=/opt/venv/bin:$PATH" in env and "PYTHONPATH=/app" in env
    # What INTERNVL_VENV does, on the real script: hand over to the launcher at once (dry run: no launcher start).
    done = subprocess.run([str(ROOT / "launch.sh"), "controller", "--host", "0.0.0.0"], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "INTERNVL_VENV": str(ROOT / ".venv"),
                                                      "INTERNVL_LAUNCH_DRY_RUN": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-m launcher controller --host 0.0.0.0") and "Install" not in done.stdout


def test_runs_as_a_numeric_user_behind_tini():
    [user] = _all("USER")
    assert user.isdigit() and int(user) != 0  # runAsNonRoot can check only a numeric user
    assert _all("ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
    assert _all("CMD") == ['["./launch.sh", "--help"]']


def test_the_demo_checkpoint_is_where_the_cpu_demo_serves_it():
    runs = " ".join(_all("RUN"))
    built = re.search(r"python -m workers.demo_checkpoint (\S+)", runs).group(1)
    # the launcher's default demo folder, relative to the image's /app: ./launch.sh --cpu finds it there too
    assert _all("WORKDIR") == ["/app"] and built == "/app/checkpoints/demo"
    for where, variable in (("overlays/cpu-demo", "INTERNVL_WORKER_MODEL_PATH"),
                            ("overlays/kuberay-cpu-demo", "INTERNVL_MODEL")):
        maps = [o for o in render(KUBERNETES / where) if o["kind"] == "ConfigMap"]
        assert [m["data"][variable] for m in maps] == [built], where


def test_every_pod_runs_this_image_through_its_entrypoint():
    for directory in ("base", "overlays/gpu", "overlays/cpu-demo", "kuberay", "overlays/kuberay-cpu-demo"):
        for obj in render(KUBERNETES / directory):
            for label, _pod, c in containers(obj):
                assert c["image"].split(":")[0].endswith("internvl-serve"), label
                # no `command`: tini stays PID 1; the Ray pods name tini themselves (KubeRay's command override)
                assert "command" not in c or c["command"][:2] == ["/usr/bin/tini", "--"], label


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


def test_build_context_keeps_the_code_and_leaves_local_state_out():
    patterns = [p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for local in (".git", ".venv", "logs", "checkpoints", "tests"):
        assert _ignored(local, patterns), local
    needed = ["launch.sh", "requirements.txt", "requirements-cluster.txt", "static"] + [p.name for p in ROOT.iterdir()
                                                            if (p / "__main__.py").is_file() or p.name == "common"]
    assert {"controller", "workers", "app", "launcher", "common"} <= set(needed)
    assert [n for n in needed if _ignored(n, patterns)] == []
