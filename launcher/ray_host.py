"""The Ray actor that runs one process of the stack (controller, web UI or a worker) on the node Ray placed it on.

The actor is a small supervisor for its one process: it builds the process's command line and environment with the
same code as the local launcher (launcher/compose.py), on its node (node address, the GPUs Ray granted), starts it,
and restarts it when it dies, with the local rule for quick crashes in a row (launcher/supervisor.py). Ray restarts
the actor itself when its node or its own process goes away (`max_restarts`): then the process starts again
wherever Ray re-placed the actor's placement group.

Secrets reach the actor at run time, from the launcher's named actor (launcher/ray_stack.py, Control), and go to the
process in its environment: they never appear on a command line, in an actor's or a task's arguments (which Ray
keeps for restarts and its dashboard may show), or in any log.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher.compose import Stack
from launcher.supervisor import ServiceSpec, StartupFailed, Supervisor


@dataclass(frozen=True)
class Job:
    """What one actor runs: everything but the secrets (fetched from the launcher's named actor)."""

    role: str  # "controller" | "ui" | "worker"
    index: int  # worker index (0 for the others)
    log_dir: str
    host: str  # --host: the UI binds it; the controller binds it unless it is a loopback address
    port: int  # the process's port (a worker's: --worker-port + index, unique in the cluster)
    controller_url: str = ""
    model_folder: str = ""  # as resolved on the launcher's machine
    model_arg: str | None = None  # --model as given: resolved again on a node that lacks model_folder
    demo_dir: str = ""
    engine: str = "auto"
    tp: int = 1
    allow_unauthenticated: bool = False
    extra_args: list[str] = field(default_factory=list)
    max_restarts: int = 5
    quick_crash_s: float = 60.0
    stop_timeout_s: float = 7.0
    start_timeout_s: float = 900.0

    @property
    def name(self) -> str:
        return f"worker-{self.index}" if self.role == "worker" else self.role


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _model_on_this_node(job: Job) -> Path:
    if Path(job.model_folder).is_dir():
        return Path(job.model_folder)
    from launcher.models import resolve  # a hub id into this node's cache; the demo checkpoint built here

    return resolve(job.model_arg, Path(job.demo_dir))[0]


def build_spec(job: Job, ip: str, gpus: list[str], secrets: dict[str, str | None]) -> ServiceSpec:
    """The process for `job` on the node at `ip` holding `gpus` (what Ray granted; [] for a CPU worker)."""
    stack = Stack(Path(job.log_dir))
    secret, api_key = secrets.get("registration_secret"), secrets.get("api_key")
    if job.role == "controller":
        host = ip if job.host in ("127.0.0.1", "localhost", "::1") else job.host  # workers on other nodes reach it
        return stack.controller(host, job.port, secret, api_key)
    if job.role == "ui":
        return stack.ui(job.host, job.port, job.controller_url, api_key)
    return stack.worker(job.index, model_path=_model_on_this_node(job), engine=job.engine, tp=job.tp, gpus=gpus,
                        host=ip, port=job.port, controller_url=job.controller_url, advertised_base=f"http://{ip}",
                        registration_secret=secret, allow_unauthenticated=job.allow_unauthenticated,
                        extra_args=job.extra_args)


def reachable_url(spec: ServiceSpec, ip: str) -> str:
    """The process's base URL as other nodes reach it (a process bound to every interface: at the node's address)."""
    host, port = spec.argv[spec.argv.index("--host") + 1], spec.argv[spec.argv.index("--port") + 1]
    return f"http://{ip if host in ('0.0.0.0', '::', '') else host}:{port}"


class ProcessHost:
    """Made a Ray actor by the launcher (launcher/ray_stack.py) with the resources and restart policy it needs."""

    def __init__(self, job: Job, control_name: str):
        import ray

        self.job = job
        self.ip = node_ip()
        granted = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        # Ray sets CUDA_VISIBLE_DEVICES for what it granted; the process gets the same, so a CPU worker none.
        self.gpus = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(granted)).split(",") if granted else []
        self.started = time.time()
        self.replaced = ray.get_runtime_context().was_current_actor_reconstructed
        self._events: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.state = "starting"  # -> ready -> (given_up | failed | stopped)
        self.reason = ""
        secrets = ray.get(ray.get_actor(control_name).secrets.remote())  # same namespace as the launcher
        try:
            spec = build_spec(job, self.ip, self.gpus, secrets)
        except Exception as exc:  # e.g. the model cannot be had on this node: said by poll(), not a dead actor
            self.state, self.reason, self.url = "failed", f"cannot start here: {type(exc).__name__}: {exc}", ""
            self._thread = None
            return
        self.url = reachable_url(spec, self.ip)
        # One thread spawns, watches and stops the process: it lives as long as the process should, so the
        # process's parent-death signal (set by spawn) fires only when this actor goes.
        self._thread = threading.Thread(target=self._supervise, args=(spec,), name=f"host-{job.name}", daemon=True)
        self._thread.start()

    def _say(self, text: str) -> None:
        with self._lock:
            self._events.append(text)

    def _supervise(self, spec: ServiceSpec) -> None:
        job = self.job
        sup = Supervisor(self._say, job.max_restarts, job.quick_crash_s, job.stop_timeout_s)
        try:
            sup.start(spec)
            if not self.replaced:  # the first start, watched by the user: a failure stops it (local rule)
                try:
                    sup.wait_ready(job.start_timeout_s, time.monotonic(), until=self._stopping.is_set)
                except StartupFailed as exc:
                    self.state, self.reason = "failed", str(exc)
                    return
            # Placed again by Ray (its node went): a failing start is a crash like any other, retried.
            while not self._stopping.is_set():
                if not sup.supervise_once():
                    self.state = "given_up"
                    self.reason = f"{job.name} was given up after {job.max_restarts} quick crashes in a row"
                    return
                if sup.services[0].ready:
                    self.state = "ready"
                elif self.state == "ready":
                    self.state = "restarting"
                self._stopping.wait(0.25)
        finally:
            sup.stop()
            if self.state in ("starting", "ready", "restarting"):
                self.state = "stopped"

    # ------------------------------------------------------------------------------------------------ methods

    def poll(self) -> dict:
        """Where this runs and how it is, plus what happened since the last poll (the launcher prints it)."""
        with self._lock:
            events, self._events = self._events, []
        return {"name": self.job.name, "ip": self.ip, "gpus": self.gpus, "url": self.url, "state": self.state,
                "reason": self.reason, "events": events, "pid": os.getpid(), "host": socket.gethostname(),
                "started": self.started}

    def stop(self) -> str:
        """Stop the process (SIGTERM, SIGKILL after the grace period); returns once it is gone."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.job.stop_timeout_s + 10)
        return self.state
