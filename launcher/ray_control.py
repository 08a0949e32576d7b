"""The launcher's named actor on a Ray cluster, and `./launch.sh scale N`, which talks to it.

One launcher per cluster: its actor's name (`launcher` in the `internvl` Ray namespace) is taken while it runs. The
actor lives on the controller's node, is owned by the launcher (it ends with it), and holds the wanted number of
workers and the credentials that the actors of the stack fetch at run time (launcher/ray_host.py).
"""

from __future__ import annotations

import time

from launcher.supervisor import StartupFailed

NAMESPACE = "internvl"
CONTROL_NAME = "launcher"


def connect(address: str) -> None:
    """Join the cluster at `address` as a driver; StartupFailed, said plainly, when there is none (Ray itself would
    retry for minutes, logging as it goes)."""
    import socket

    if address != "auto":
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as exc:
            raise StartupFailed(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start its head there "
                                f"first: ray start --head --port {port} (docs/deployment.md, 'More than one "
                                "machine')") from None
    import ray

    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level="warning", log_to_driver=False,
                 configure_logging=False)
    except ConnectionError as exc:
        raise StartupFailed(f"--ray {address}: {exc} (on a node of the cluster, or give the head's HOST:PORT)") \
            from None


class Control:
    """The launcher's named actor, on the controller's node: the wanted number of workers (`./launch.sh scale N`)
    and the credentials the worker actors fetch at run time (so they are never an actor's argument)."""

    def __init__(self):
        self.asked: tuple[int, int | None] = (0, None)  # (generation, workers)
        self.done: tuple[int, str] = (0, "")  # (generation reached, the plan as printed)
        self._secrets: dict = {}

    def keep_secrets(self, boxed: list) -> None:
        import ray

        self._secrets = ray.get(boxed[0])  # a reference in the call, the value fetched here

    def secrets(self) -> dict:
        return self._secrets

    def set_workers(self, n: int) -> int:
        self.asked = (self.asked[0] + 1, n)
        return self.asked[0]

    def wanted(self) -> tuple[int, int | None]:
        return self.asked

    def report(self, generation: int, plan: str) -> None:
        self.done = (generation, plan)

    def status(self) -> tuple[int, str]:
        return self.done


def scale(address: str, workers: int, timeout_s: float = 60.0) -> str:
    """`./launch.sh scale N`: ask the launcher running on the cluster at `address` for N workers; its new plan."""
    import ray

    connect(address)
    try:
        try:
            control = ray.get_actor(CONTROL_NAME, namespace=NAMESPACE)
        except ValueError:
            raise StartupFailed(f"no launcher runs on the Ray cluster at {address} (no actor '{CONTROL_NAME}' in "
                                f"namespace '{NAMESPACE}'); start one with ./launch.sh --ray {address}") from None
        generation = ray.get(control.set_workers.remote(workers), timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reached, plan = ray.get(control.status.remote(), timeout=30)
            if reached >= generation:
                return plan
            time.sleep(0.5)
        raise StartupFailed(f"the launcher did not take the new number of workers within {timeout_s:.0f} s")
    finally:
        ray.shutdown()
