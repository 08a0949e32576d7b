"""The launcher's modes: all (controller + workers + UI), controller, worker, ui, test.

It resolves the model and plans the GPUs in-process (nothing heavy is imported here: the processes import torch
and gradio themselves, in parallel), starts the processes, prints their start-up lines and the time to ready, then
supervises them until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time
from pathlib import Path

from launcher import cli
from launcher.compose import LOOPBACK, ROOT, Stack, local_host, port_in_use, shown_host, split_worker_url
from launcher.gpus import PlanError, plan_for, weights_bytes
from launcher.models import ResolveError, resolve
from launcher.settings import LaunchSettings
from launcher.supervisor import Service, StartupFailed, Supervisor


class Stop(BaseException):
    """Ctrl-C or SIGTERM: stop everything (raised in the main thread by the signal handler)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class UserError(Exception):
    """Something to fix in the command line or the environment; printed without a traceback."""


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


_KV_MSG = re.compile(r'level=(\w+) logger=(\S+) .*?msg="(.*?)"(?: |$)')
_QUIET_LOGGERS = ("uvicorn", "httpx", "httpcore", "internvl.access")


def echo_line(service: Service, line: str) -> None:
    """A start-up log line worth showing: the process's own progress, warnings, errors (not access logs)."""
    m = _KV_MSG.search(line)
    if m:
        level, logger, msg = m.groups()
        if logger.startswith(_QUIET_LOGGERS) and level not in ("warning", "error", "critical"):
            return
        line = msg if level == "info" else f"{level}: {msg}"
    elif not line.strip() or "HTTP Request:" in line:
        return
    print(f"    {service.name} | {line[:200]}", flush=True)


def _install_signal_handlers() -> None:
    def handler(signum, _frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop is enough; a second Ctrl-C must not interrupt it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stop(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def random_banner(asked: bool) -> None:
    why = ("The checkpoint given with --model says its weights are random (random_weights)." if asked else
           "No --model was given and no real checkpoint could be loaded (no hub access, nothing cached).")
    rule = "#" * 97
    print(f"\n  {rule}", flush=True)
    for line in ("RANDOM WEIGHTS: serving the demo checkpoint. Its answers are noise.", why,
                 "For real answers: ./launch.sh --model /path/to/InternVL-checkpoint  (or a hub id)"):
        print(f"  #  {line:<92} #")
    print(f"  {rule}\n", flush=True)


def ready_block(elapsed: float, rows: list[tuple[str, str]], log_dir: Path, random_weights: bool) -> None:
    say(f"Ready in {elapsed:.1f} s.")
    for label, value in rows + [("Logs:", str(log_dir)), ("Stop:", "Ctrl-C (stops everything the launcher "
                                                                     "started)")]:
        print(f"    {label:<9} {value}")
    if random_weights:
        print("    (demo checkpoint: RANDOM WEIGHTS, answers are noise)")
    print("    (crashed processes are restarted; their logs say why)", flush=True)


# ---------------------------------------------------------------------------------------------------- pieces


def _check_port(host: str, port: int, flag: str) -> None:
    if port_in_use(host, port):
        raise UserError(f"port {port} is already in use (another launcher running?); choose another with {flag}")


def _model(s: LaunchSettings) -> tuple[Path, bool]:
    demo_dir = s.demo_dir if s.demo_dir.is_absolute() else ROOT / s.demo_dir
    try:
        folder, random_weights = resolve(s.model, demo_dir)
    except (ResolveError, FileExistsError) as exc:
        raise UserError(str(exc)) from None
    say(f"Model: {folder}")
    if random_weights:
        random_banner(asked=bool(s.model))
    return folder, random_weights


def _plan(s: LaunchSettings, folder: Path):
    try:
        plan = plan_for(folder, s.tp_number(), s.workers_number(), s.gpus, s.cpu)
    except PlanError as exc:
        raise UserError(str(exc)) from None
    say(f"Plan: {plan.reason}")
    if not plan.groups[0] and s.engine == "turbomind":
        raise UserError("--engine turbomind needs a GPU and none is visible; use --engine transformers (CPU)")
    return plan


def _start_workers(sup: Supervisor, stack: Stack, s: LaunchSettings, folder: Path, controller_url: str,
                   host: str, advertised_base: str, first_port: int, secret: str | None,
                   extra_args: list[str]) -> None:
    plan = _plan(s, folder)
    for i, group in enumerate(plan.groups):
        port = first_port + i
        _check_port(host, port, "--worker-port")
        sup.start(stack.worker(i, model_path=folder, engine=s.engine, tp=plan.tp, gpus=group, host=host, port=port,
                               controller_url=controller_url, advertised_base=advertised_base,
                               registration_secret=secret, allow_unauthenticated=s.allow_unauthenticated,
                               extra_args=extra_args))
        say(f"worker-{i}: {'GPUs ' + ','.join(group) if group else 'CPU'}, port {port} "
            f"(log: {stack.log_dir / f'worker-{i}.log'})")


# ---------------------------------------------------------------------------------------------------- modes


def run_all(s: LaunchSettings, sup: Supervisor, stack: Stack, extra: list[str], t0: float) -> tuple[list, bool]:
    # Everything is on this machine: a random registration secret keeps anyone else from registering workers.
    secret = s.registration_secret or secrets.token_urlsafe(18)
    controller_url = f"http://{local_host(s.host)}:{s.controller_port}"
    _check_port(s.host, s.controller_port, "--controller-port")
    _check_port(s.host, s.port, "--port")
    # Controller and UI need no model: they import while the model is resolved and the workers load it.
    sup.start(stack.controller(s.host, s.controller_port, secret, s.api_key))
    sup.start(stack.ui(s.host, s.port, controller_url, s.api_key))
    folder, random_weights = _model(s)
    _start_workers(sup, stack, s, folder, controller_url, "127.0.0.1", "http://127.0.0.1", s.worker_port, secret,
                   extra)
    sup.wait_ready(s.start_timeout_s, t0)
    shown = shown_host(s.host)
    return [("Web UI:", f"http://{shown}:{s.port}"),
            ("API:", f"http://{shown}:{s.controller_port}/v1  (OpenAI-compatible)"),
            ("Metrics:", f"http://{shown}:{s.controller_port}/metrics")], random_weights


def run_controller(s: LaunchSettings, sup: Supervisor, stack: Stack, extra: list[str], t0: float):
    if not s.registration_secret and s.host not in LOOPBACK:
        warn("without --registration-secret this controller accepts workers from this machine only")
    _check_port(s.host, s.controller_port, "--controller-port")
    sup.start(stack.controller(s.host, s.controller_port, s.registration_secret, s.api_key))
    sup.wait_ready(s.start_timeout_s, t0)
    shown = shown_host(s.host)
    return [("API:", f"http://{shown}:{s.controller_port}/v1  (OpenAI-compatible)"),
            ("Metrics:", f"http://{shown}:{s.controller_port}/metrics")], False


def run_worker(s: LaunchSettings, sup: Supervisor, stack: Stack, extra: list[str], t0: float):
    if not s.controller_url:
        raise UserError("worker mode needs --controller-url URL (the controller to register with)")
    first_port = s.worker_port
    if s.worker_url:
        try:
            base, port = split_worker_url(s.worker_url)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        first_port = port or first_port
    elif s.host in LOOPBACK:
        base = "http://127.0.0.1"
    else:
        raise UserError(f"--host {s.host}: also pass --worker-url http://ADDRESS:{s.worker_port} (an address "
                        "the controller reaches)")
    if s.host in LOOPBACK and not re.match(r"https?://(127\.|localhost|\[::1\])", base):
        warn(f"this worker binds {s.host} but advertises {base}; a controller on another machine cannot reach it: "
             "add --host 0.0.0.0 (or that interface's address)")
    if not s.registration_secret and not re.match(r"https?://(127\.|localhost|\[::1\])", s.controller_url):
        warn("a controller on another host accepts this worker only with --registration-secret (the same on both)")
    folder, random_weights = _model(s)
    _start_workers(sup, stack, s, folder, s.controller_url, s.host, base, first_port, s.registration_secret, extra)
    sup.wait_ready(s.start_timeout_s, t0)
    n = sum(1 for x in sup.services if x.name.startswith("worker-"))
    return [("Workers:", f"{n} registered with {s.controller_url} as {base}:{first_port}...")], random_weights


def run_ui(s: LaunchSettings, sup: Supervisor, stack: Stack, extra: list[str], t0: float):
    controller_url = s.controller_url or f"http://127.0.0.1:{s.controller_port}"
    _check_port(s.host, s.port, "--port")
    sup.start(stack.ui(s.host, s.port, controller_url, s.api_key))
    sup.wait_ready(s.start_timeout_s, t0)
    return [("Web UI:", f"http://{shown_host(s.host)}:{s.port}"), ("API:", controller_url)], False


def run_ray(s: LaunchSettings, sup, stack: Stack, extra: list[str], t0: float) -> tuple[list, bool]:
    """The whole stack on a Ray cluster (launcher/ray_stack.py); `sup` is its RayStack."""
    nodes = sup.connect()
    controller_url = sup.start_front(str(stack.log_dir))
    if not s.api_key:
        warn(f"the controller listens on {controller_url} (workers on other nodes reach it there): without "
             "--api-key anyone on that network can use the API")
    folder, random_weights = _model(s)
    demo_dir = s.demo_dir if s.demo_dir.is_absolute() else ROOT / s.demo_dir
    sup.wait_ready(s.start_timeout_s, t0, roles=("controller",))
    try:
        reason = sup.plan_workers(nodes, str(folder), s.model, str(demo_dir), weights_bytes(folder), extra)
    except PlanError as exc:
        raise UserError(str(exc)) from None
    say(f"Plan: {reason}")
    sup.wait_ready(s.start_timeout_s, t0)
    say("Placed (node -> process):")
    sup.show_plan()
    ui = next(h.info for h in sup.hosted if h.job.role == "ui")
    return [("Web UI:", f"{ui['url']}  (on node {ui['ip']})"),
            ("API:", f"{controller_url}/v1  (OpenAI-compatible)"),
            ("Metrics:", f"{controller_url}/metrics"),
            ("Scale:", f"./launch.sh scale N --ray {s.ray}")], random_weights


def run_scale(s: LaunchSettings) -> int:
    from launcher.ray_control import scale

    if not s.ray:
        raise UserError("scale talks to a launcher running on a Ray cluster: add --ray ADDRESS (or auto)")
    say(f"Asking the launcher on the Ray cluster {s.ray} for {s.workers} worker(s)")
    for line in scale(s.ray, int(s.workers)).splitlines():
        print(f"    {line}", flush=True)
    return 0


MODES = {"all": run_all, "controller": run_controller, "worker": run_worker, "ui": run_ui}


def run_tests(args: list[str]) -> int:
    """pytest in this process's place (launch.sh has set up the test extras and Chromium)."""
    say(f"Running the tests: pytest {' '.join(args)}")
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    command = cli.parse_or_exit(sys.argv[1:] if argv is None else argv)
    if command.mode == "test":
        return run_tests(command.test_args)
    s = command.settings
    if s.host not in LOOPBACK and command.mode != "worker" and not s.api_key:
        warn(f"--host {s.host} exposes the API to the network without an API key; consider --api-key")
    log_dir = (s.log_dir if s.log_dir.is_absolute() else ROOT / s.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if command.mode == "scale":
        try:
            return run_scale(s)
        except (UserError, StartupFailed) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2 if isinstance(exc, UserError) else 1
    if s.ray and command.mode != "all":
        print(f"error: --ray runs the whole stack (controller, web UI and workers), not {command.mode} mode",
              file=sys.stderr, flush=True)
        return 2
    if s.ray:
        from launcher.ray_stack import RayStack

        sup, run = RayStack(s, say), run_ray
    else:
        sup, run = Supervisor(say, s.max_restarts, s.quick_crash_s, s.stop_timeout_s, echo=echo_line), \
            MODES[command.mode]
    _install_signal_handlers()
    try:
        rows, random_weights = run(s, sup, Stack(log_dir), command.worker_args, t0)
        sup.echo = None
        ready_block(time.monotonic() - t0, rows, log_dir, random_weights)
        while sup.supervise_once():
            time.sleep(0.25)
        say("error: nothing is left running")
        return 1
    except Stop as stop:
        return 128 + stop.signum
    except (UserError, StartupFailed) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, UserError) else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop()
