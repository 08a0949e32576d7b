"""Which node of a Ray cluster each worker goes to: `tp` GPUs of one node per worker (tensor parallelism never spans
hosts), workers spread over the nodes round by round, `--cpu` workers spread the same way.

The result only names a preferred node per worker: the launcher asks Ray for a placement group there
(`_soft_target_node_id`), and Ray may put it elsewhere when that node is full or gone. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.gpus import Gpu, PlanError, plan

HEAD_RESOURCE = "node:__internal_head__"  # Ray's own resource of the head node


@dataclass(frozen=True)
class RayNode:
    node_id: str
    ip: str
    gpus: int
    is_head: bool = False


@dataclass(frozen=True)
class Placement:
    index: int
    node: RayNode  # preferred node
    gpus: int  # GPUs of its placement group (tp); 0 for a CPU worker


def alive_nodes(ray_nodes: list[dict]) -> list[RayNode]:
    """`ray.nodes()` -> the live nodes, head first, then by address."""
    nodes = [RayNode(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("GPU", 0)),
                     HEAD_RESOURCE in n["Resources"]) for n in ray_nodes if n.get("Alive")]
    return sorted(nodes, key=lambda n: (not n.is_head, n.ip))


def choose_tp(nodes: list[RayNode], tp: int | None, model_bytes: int, gpu_memory_mib: int | None) -> int:
    """`--tp` as asked, or auto: the local rule (launcher/gpus.py) on the largest node's GPUs, when their memory is
    known (nvidia-smi on that node); 1 when it is not (logical GPUs: `ray start --num-gpus N` on a CPU machine)."""
    most = max((n.gpus for n in nodes), default=0)
    if tp is not None:
        if tp > most:
            raise PlanError(f"--tp {tp} needs {tp} GPUs on one node (tensor parallelism never spans hosts), but "
                            f"the node with the most GPUs has {most}")
        return tp
    if not most or not gpu_memory_mib:
        return 1
    return plan([Gpu(str(i), gpu_memory_mib) for i in range(most)], model_bytes).tp


def _spread(slots: dict[str, int], nodes: list[RayNode], count: int, first_index: int) -> list[Placement]:
    """`count` placements taking one free slot per node per round (nodes in `nodes` order)."""
    out: list[Placement] = []
    while len(out) < count:
        placed = False
        for node in nodes:
            if len(out) < count and slots.get(node.node_id, 0) > 0:
                slots[node.node_id] -= 1
                out.append(Placement(first_index + len(out), node, 0))
                placed = True
        if not placed:
            break
    return out


def place(nodes: list[RayNode], tp: int, workers: int | None, cpu: bool, taken: dict[str, int] | None = None,
          first_index: int = 0) -> list[Placement]:
    """Placements for `workers` new workers (None: as many as the free GPU groups), given the `taken` GPUs
    (or CPU workers) per node id. More workers than free GPU groups is a PlanError saying what to change."""
    taken = taken or {}
    if cpu or not any(n.gpus for n in nodes):
        count = 1 if workers is None else workers
        order = [n for n in nodes if not n.is_head] + [n for n in nodes if n.is_head]  # the head runs the rest
        slots = {n.node_id: count for n in order}
        least_busy = sorted(order, key=lambda n: taken.get(n.node_id, 0))
        return _spread(slots, least_busy, count, first_index)
    slots = {n.node_id: (n.gpus - taken.get(n.node_id, 0)) // tp for n in nodes}
    free = sum(slots.values())
    count = free if workers is None else workers
    if count > free:
        raise PlanError(f"{count} workers x tp {tp} need {count} groups of {tp} GPUs on single nodes, but the "
                        f"cluster has {free} free ({', '.join(f'{n.ip}: {n.gpus} GPUs' for n in nodes)}); lower "
                        "--workers or --tp, or add nodes")
    gpu_nodes = sorted((n for n in nodes if slots[n.node_id] > 0), key=lambda n: -slots[n.node_id])
    return [Placement(p.index, p.node, tp) for p in _spread(slots, gpu_nodes, count, first_index)]


def describe(nodes: list[RayNode], tp: int, placements: list[Placement]) -> str:
    gpus = sum(n.gpus for n in nodes)
    kind = f"tp {tp}" if placements and placements[0].gpus else "CPU (transformers engine)"
    return (f"Ray cluster of {len(nodes)} node(s), {gpus} GPU(s); {len(placements)} worker(s), {kind}, each in a "
            "placement group of its own on one node")
