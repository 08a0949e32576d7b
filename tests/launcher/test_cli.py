"""The launcher's command line, run as a user would: `./launch.sh ...` (with the test's virtualenv, so nothing is
installed). Every flag is listed with its environment variable; mistakes are errors that say what to type."""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.cli import env_of, flag_of, parse
from launcher.settings import LaunchSettings
from tests.support.stack import ROOT, free_port


def launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch.sh"), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "INTERNVL_VENV": sys.prefix, **(env or {})}, cwd="/")


def test_help_lists_every_flag_with_its_environment_variable():
    r = launch("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines
    for name in LaunchSettings.model_fields:
        assert flag_of(name) in text and env_of(name) in text, name
    for mode in ("controller", "worker", "ui", "test"):
        assert f"./launch.sh {mode}" in text


def test_unknown_and_bad_flags_are_errors_that_say_what_to_type(tmp_path):
    for args, message in [(["--prot", "8000"], "unknown flag --prot; did you mean --port?"),
                          (["--controler-url", "x"], "did you mean --controller-url?"),
                          (["--tp", "two"], "--tp takes a positive number or 'auto'"),
                          (["--port"], "--port: expected one argument"),
                          (["--engine", "vllm"], "--engine takes auto, turbomind, transformers or module.path"),
                          (["--api-key", "a b"], "letters, digits"),
                          (["stray"], "unexpected argument 'stray'"),
                          (["worker"], "needs --controller-url"),
                          (["worker", "--controller-url", "http://10.0.0.1:21001", "--host", "0.0.0.0",
                            "--log-dir", str(tmp_path)], "also pass --worker-url")]:
        r = launch(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)


def test_environment_variables_set_flags_and_flags_win(monkeypatch):
    monkeypatch.setenv("INTERNVL_PORT", "9000")
    monkeypatch.setenv("INTERNVL_TP", "2")
    command = parse(["--port", "9100"])
    assert command.mode == "all" and command.settings.port == 9100 and command.settings.tp_number() == 2
    monkeypatch.setenv("INTERNVL_TP", "0")
    assert "INTERNVL_TP" in launch(env={"INTERNVL_TP": "0"}).stderr


def test_engines_given_as_module_class_and_worker_args_pass_through():
    command = parse(["worker", "--engine", "my_pkg.engines:FastEngine", "--controller-url", "http://c:1/", "--",
                     "--max-concurrency", "4", "--tp", "9"])
    assert command.mode == "worker" and command.settings.engine == "my_pkg.engines:FastEngine"
    assert command.settings.controller_url == "http://c:1"
    assert command.worker_args == ["--max-concurrency", "4", "--tp", "9"]  # after --: the worker's, not ours
    assert parse(["workers"]).mode == "worker"
    assert parse(["test", "-x", "--bogus"]).test_args == ["-x", "--bogus"]


def test_ray_flags_and_scale_are_checked_before_anything_starts(tmp_path):
    for args, message in [(["--ray", "head-without-port"], "--ray takes auto or the head's HOST:PORT"),
                          (["scale"], "scale takes the number of workers: ./launch.sh scale N --ray ADDRESS"),
                          (["scale", "0", "--ray", "auto"], "--workers takes a positive number"),
                          (["scale", "2", "--log-dir", str(tmp_path)], "add --ray ADDRESS"),
                          (["worker", "--ray", "auto", "--controller-url", "http://10.0.0.1:21001",
                            "--log-dir", str(tmp_path)], "--ray runs the whole stack")]:
        r = launch(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    nobody = f"127.0.0.1:{free_port()}"
    for args in (["--ray", nobody, "--cpu"], ["scale", "2", "--ray", nobody]):
        r = launch(*args, "--log-dir", str(tmp_path))
        assert r.returncode == 1 and f"no Ray cluster answers at {nobody}" in r.stderr, r.stderr
    command = parse(["scale", "3", "--ray", "10.0.0.1:6379"])
    assert command.mode == "scale" and command.settings.workers_number() == 3
    assert command.settings.ray == "10.0.0.1:6379"
