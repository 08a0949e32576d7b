"""`./launch.sh --ray auto|HOST:PORT`: the stack placed on a Ray cluster and kept there by Ray.

The launcher is a Ray driver. It owns (not detached) one actor per process of the stack (launcher/ray_host.py): the
controller and the web UI on the head node (or on the nodes with `--ray-controller-resource`), and one worker per
placement group of `tp` GPUs on one node (STRICT_PACK, aimed at the node the plan chose; launcher/ray_plan.py). Ray
restarts an actor whose process or node dies (`max_restarts=-1`), re-placing its placement group on another node with
free GPUs; the actor restarts its own process after a crash, and gives up after quick crashes in a row, as the local
launcher does. The controller stays the one registry and request path: workers register with it like any other.

A named actor (`launcher` in the `internvl` Ray namespace) takes the wanted number of workers from
`./launch.sh scale N --ray ADDRESS`. On Ctrl-C / SIGTERM every actor stops its process, then actors and placement
groups are removed; if the launcher dies without that, Ray removes what it owned (actors and placement groups of a
driver end with it) and each process gets SIGTERM from its parent's death.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from launcher.gpus import PlanError
from launcher.ray_control import CONTROL_NAME, NAMESPACE, Control, connect
from launcher.ray_host import Job, ProcessHost
from launcher.ray_plan import HEAD_RESOURCE, Placement, RayNode, alive_nodes, choose_tp, describe, place
from launcher.settings import LaunchSettings
from launcher.supervisor import StartupFailed

POLL_EVERY_S = 0.5
REPORT_WITHIN_S = 30.0


@dataclass
class Hosted:
    job: Job
    actor: object
    pg: object | None = None
    info: dict | None = None
    poll_ref: object | None = None
    away: bool = False  # its node or actor process is gone; Ray is restarting it
    waiting: bool = False  # added when no node had room: placed when one has
    gone: bool = False


class RayStack:
    """The Ray counterpart of launcher.supervisor.Supervisor: start, supervise_once, stop."""

    def __init__(self, s: LaunchSettings, say: Callable[[str], None]):
        self.s = s
        self.say = say
        self.echo = None  # main.py's interface; Ray mode prints events as they come
        self.hosted: list[Hosted] = []
        self.control = None
        self.tp = 1
        self.cpu = s.cpu
        self.base_job: Job | None = None
        self.generation = 0
        self._next_poll = 0.0
        self._unreported: tuple[int, float] | None = None  # a scale request whose plan `scale` waits for
        self._host_class = None

    # ------------------------------------------------------------------------------------------------ starting

    def connect(self) -> list[RayNode]:
        import ray

        connect(self.s.ray)
        s = self.s
        nodes = alive_nodes(ray.nodes())
        front = next(iter(self._front()))
        if not any(front in n["Resources"] for n in ray.nodes() if n.get("Alive")):
            raise StartupFailed(f"no node of the Ray cluster has the resource {front!r} for the controller and the "
                                "web UI; start one with ray start --resources '{\"" + front + "\": 1}'")
        try:
            self.control = ray.remote(Control).options(name=CONTROL_NAME, num_cpus=0, resources=self._front()).remote()
            box = [ray.put({"registration_secret": s.registration_secret or secrets.token_urlsafe(18),
                            "api_key": s.api_key})]
            ray.get(self.control.keep_secrets.remote(box), timeout=60)
        except ValueError:  # the name is taken
            raise StartupFailed("another launcher already runs on this Ray cluster (its named actor "
                                f"'{CONTROL_NAME}' in namespace '{NAMESPACE}' exists); stop it first") from None
        shown = [f"{n.ip} ({n.gpus} GPUs{', head' if n.is_head else ''})" for n in nodes]
        self.say(f"Ray cluster: {', '.join(shown)}")
        return nodes

    def _front(self) -> dict:
        """Where the controller, the web UI and the named actor go."""
        return {self.s.ray_controller_resource or HEAD_RESOURCE: 0.001}

    def _actor(self, job: Job, resources: dict | None = None, pg=None, gpus: int = 0):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options: dict = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0, "num_gpus": gpus,
                         "max_concurrency": 4}  # poll and stop are answered while the process starts
        if pg is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        if resources:
            options["resources"] = resources
        if self._host_class is None:
            self._host_class = ray.remote(ProcessHost)
        return self._host_class.options(**options).remote(job, CONTROL_NAME)

    def start_front(self, log_dir: str) -> str:
        """Controller and web UI actors; returns the controller's URL (on its node's address)."""
        import ray

        s = self.s
        self.base_job = Job("worker", 0, log_dir, s.host, s.worker_port, engine=s.engine,
                            allow_unauthenticated=s.allow_unauthenticated, max_restarts=s.max_restarts,
                            quick_crash_s=s.quick_crash_s, stop_timeout_s=s.stop_timeout_s,
                            start_timeout_s=s.start_timeout_s)
        where = self._front()
        controller = Hosted(replace(self.base_job, role="controller", port=s.controller_port), None)
        controller.actor = self._actor(controller.job, where)
        self.hosted.append(controller)
        controller.info = ray.get(controller.actor.poll.remote(), timeout=s.start_timeout_s)
        url = controller.info["url"]
        ui = Hosted(replace(self.base_job, role="ui", port=s.port, controller_url=url), None)
        ui.actor = self._actor(ui.job, where)
        self.hosted.append(ui)
        self.base_job = replace(self.base_job, controller_url=url)
        return url

    def plan_workers(self, nodes: list[RayNode], model_folder: str, model_arg: str | None, demo_dir: str,
                     model_bytes: int, extra_args: list[str]) -> str:
        s = self.s
        self.cpu = s.cpu or not any(n.gpus for n in nodes)
        self.tp = 1 if self.cpu else choose_tp(nodes, s.tp_number(), model_bytes, self._gpu_memory(nodes))
        self.base_job = replace(self.base_job, model_folder=model_folder, model_arg=model_arg, demo_dir=demo_dir,
                                tp=self.tp, extra_args=list(extra_args))
        placements = place(nodes, self.tp, s.workers_number(), self.cpu)
        for p in placements:
            self._add_worker(p)
        return describe(nodes, self.tp, placements)

    def _gpu_memory(self, nodes: list[RayNode]) -> int | None:
        """Memory of the smallest GPU of the node with the most GPUs, from its nvidia-smi; None without one."""
        if self.s.tp_number() is not None or not any(n.gpus for n in nodes):
            return None
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from launcher.gpus import visible_gpus

        node = max(nodes, key=lambda n: n.gpus)
        probe = ray.remote(visible_gpus).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node.node_id, soft=False))
        gpus = ray.get(probe.remote(), timeout=60)
        return min((g.memory_mib for g in gpus), default=None)

    def _add_worker(self, p: Placement | None, index: int | None = None) -> Hosted:
        """A placement group for one worker (aimed at its planned node; anywhere when `p` is None), its actor."""
        from ray.util.placement_group import placement_group

        index = p.index if p is not None else index
        bundle = {"GPU": self.tp} if not self.cpu else {"CPU": 1}
        pg = placement_group([bundle], strategy="STRICT_PACK", name=f"internvl-worker-{index}",
                             _soft_target_node_id=p.node.node_id if p is not None else None)
        job = replace(self.base_job, index=index, port=self.s.worker_port + index)
        hosted = Hosted(job, self._actor(job, pg=pg, gpus=0 if self.cpu else self.tp), pg, waiting=p is None)
        self.hosted.append(hosted)
        return hosted

    def wait_ready(self, timeout_s: float, since: float, roles: tuple[str, ...] = ("controller", "ui", "worker")) \
            -> None:
        """Until the processes of `roles` are ready; a process that fails while starting stops everything.

        The launcher waits for the controller before it places workers: a worker that cannot reach its controller
        for a while counts as failing to start (launcher/health.py), and a busy node can start the controller late.
        """
        deadline = time.monotonic() + timeout_s
        hosted = [h for h in self.hosted if h.job.role in roles]
        while not all(h.info and h.info["state"] == "ready" for h in hosted):
            self._poll_all(starting=True, since=since)
            if time.monotonic() > deadline:
                late = ", ".join(h.job.name for h in hosted if not (h.info and h.info["state"] == "ready"))
                raise StartupFailed(f"not ready after {timeout_s:.0f} s: {late} (a placement group Ray could not "
                                    "place stays pending: `ray status` shows the demands)")
            time.sleep(0.2)

    def plan_lines(self) -> list[str]:
        """node -> worker -> GPUs, as placed now."""
        by_node: dict[str, list[str]] = {}
        for h in self._live():
            if not h.info or h.away:
                where, what = "(none yet)", "waiting for free resources"
            else:
                where = h.info["ip"]
                what = f"GPUs {','.join(h.info['gpus'])}" if h.info["gpus"] else "CPU"
                what = what if h.job.role == "worker" else h.info["url"]
            by_node.setdefault(where, []).append(f"{h.job.name} ({what})")
        return [f"node {node}: {', '.join(items)}" for node, items in sorted(by_node.items())]

    def show_plan(self) -> str:
        lines = self.plan_lines()
        for line in lines:
            print(f"    {line}", flush=True)
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------------ running

    def _live(self) -> list[Hosted]:
        return [h for h in self.hosted if not h.gone]

    def _poll_all(self, starting: bool = False, since: float = 0.0) -> None:
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

        for h in self._live():
            if h.poll_ref is None:
                h.poll_ref = h.actor.poll.remote()
        refs = [h.poll_ref for h in self._live()]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        done = set(done)
        for h in self._live():
            if h.poll_ref not in done:
                continue
            ref, h.poll_ref = h.poll_ref, None
            try:
                info = ray.get(ref, timeout=1)
            except (ActorUnavailableError, GetTimeoutError):
                if not h.away:
                    h.away = True
                    where = h.info["ip"] if h.info else "its node"
                    self.say(f"{h.job.name}: its process on {where} is gone (node lost or actor died); Ray is "
                             "placing it again")
                continue
            except (ActorDiedError, RayActorError) as exc:
                h.gone = True
                why = f"{h.job.name} is gone for good: {str(exc).splitlines()[0]}"
                if starting:
                    raise StartupFailed(why) from None
                self.say(f"error: {why}")
                continue
            self._took(h, info, starting, since)

    def _took(self, h: Hosted, info: dict, starting: bool, since: float) -> None:
        moved = h.info is not None and (info["pid"], info["ip"]) != (h.info["pid"], h.info["ip"])
        h.info, h.away = info, False
        if moved:
            gpus = f"GPUs {','.join(info['gpus'])}" if info["gpus"] else "CPU"
            self.say(f"{h.job.name} placed again by Ray: node {info['ip']}, {gpus}")
        for event in info["events"]:
            self.say(f"[{info['ip']}] {event}")
        if info["state"] in ("failed", "given_up"):
            if starting:
                raise StartupFailed(f"{h.job.name} on node {info['ip']}: {info['reason']}")
            self.say(f"error: {h.job.name} on node {info['ip']} is left stopped: {info['reason']}. The rest keeps "
                     "running.")
            self._remove(h)

    def supervise_once(self) -> bool:
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL_EVERY_S
            self._poll_all()
            self._scale()
        return any(not h.gone for h in self.hosted)

    # ------------------------------------------------------------------------------------------------ scaling

    def workers(self) -> list[Hosted]:
        return [h for h in self._live() if h.job.role == "worker"]

    def _taken(self) -> dict[str, int]:
        """GPUs (or CPU workers) our placed placement groups hold per node id."""
        from ray.util import placement_group_table

        taken: dict[str, int] = {}
        for h in self.workers():
            table = placement_group_table(h.pg)
            node = table.get("bundles_to_node_id", {}).get(0)
            if table.get("state") == "CREATED" and node:
                taken[node] = taken.get(node, 0) + (1 if self.cpu else self.tp)
        return taken

    def _scale(self) -> None:
        import ray

        try:
            generation, wanted = ray.get(self.control.wanted.remote(), timeout=5)
        except ray.exceptions.RayError:
            return
        if generation != self.generation:
            self.generation = generation
            self._scale_to(wanted)
            self._unreported = (generation, time.monotonic() + REPORT_WITHIN_S)
        # `scale` prints the plan once the new workers are placed (or what is placed by then)
        placed = all(h.info or h.waiting for h in self.workers())
        if self._unreported and (placed or time.monotonic() > self._unreported[1]):
            ray.get(self.control.report.remote(self._unreported[0], "\n".join(self.plan_lines())))
            self._unreported = None

    def _nodes(self) -> list[RayNode]:
        import ray

        return alive_nodes(ray.nodes())

    def _scale_to(self, wanted: int) -> None:
        current = sorted(self.workers(), key=lambda h: h.job.index)
        if wanted < len(current):
            for h in current[wanted:]:
                self.say(f"scale {wanted}: stopping {h.job.name}")
                self._remove(h)
            return
        taken = self._taken()
        used = {h.job.index for h in current}
        free_indices = [i for i in range(wanted + len(used)) if i not in used][:wanted - len(current)]
        try:
            placements = place(self._nodes(), self.tp, len(free_indices), self.cpu, taken)
        except PlanError:
            placements = place(self._nodes(), self.tp, None, self.cpu, taken)  # what fits now; the rest waits
        for n, index in enumerate(free_indices):
            p = replace(placements[n], index=index) if n < len(placements) else None
            where = f"node {p.node.ip}" if p else "no free GPUs now: placed when a node with free GPUs joins"
            self.say(f"scale {wanted}: adding worker-{index} ({where})")
            self._add_worker(p, index)

    # ------------------------------------------------------------------------------------------------ stopping

    def _remove(self, h: Hosted, timeout_s: float | None = None) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        h.gone = True
        if not h.info or h.away:  # never placed, or its node is gone: nothing to stop gracefully
            timeout_s = 1
        try:
            ray.get(h.actor.stop.remote(), timeout=timeout_s or self.s.stop_timeout_s + 10)
        except ray.exceptions.RayError:
            pass  # not reachable: killing the actor ends its process (parent-death signal)
        ray.kill(h.actor, no_restart=True)
        if h.pg is not None:
            remove_placement_group(h.pg)

    def stop(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        live = self._live()
        if live:
            self.say("Stopping " + " ".join(h.job.name for h in live) + " on the Ray cluster")
        # Workers and UI together (each actor stops its process: SIGTERM, SIGKILL after the grace), the
        # controller last, so workers can unregister.
        for group in ([h for h in live if h.job.role != "controller"], [h for h in live if h.job.role == "controller"]):
            refs = [h.actor.stop.remote() for h in group if h.info and not h.away]  # not those never placed
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=self.s.stop_timeout_s + 10)
            for h in group:
                self._remove(h, timeout_s=1)
        if self.control is not None:
            ray.kill(self.control, no_restart=True)
        ray.shutdown()
