"""Group the visible GPUs into workers: `tp` GPUs per worker, as many workers as fit.

GPUs are read from nvidia-smi (no torch import: this runs before anything heavy). A worker's group becomes its
CUDA_VISIBLE_DEVICES; an empty group is a CPU worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.checkpoint_files import weight_bytes

# Weights take this share of a GPU at most; the rest is for activations, the vision tower's work and the KV cache.
WEIGHT_SHARE = 0.6
TP_CHOICES = (1, 2, 4, 8)


class PlanError(ValueError):
    """A request that cannot be met (more GPUs asked for than exist, ...); the message says what to change."""


@dataclass(frozen=True)
class Gpu:
    index: str
    memory_mib: int


@dataclass(frozen=True)
class Plan:
    tp: int
    groups: list[list[str]]  # GPU indices per worker; [] means a CPU worker
    reason: str


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Lines of `nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            gpus.append(Gpu(parts[0], int(parts[1])))
    return gpus


def visible_gpus() -> list[Gpu]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = parse_nvidia_smi(out)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() and all(v.strip().isdigit() for v in visible.split(",")):
        keep = [v.strip() for v in visible.split(",")]
        gpus = [g for g in gpus if g.index in keep]
    return gpus


def weights_bytes(model_path: str | Path) -> int:
    """The checkpoint's weight bytes, as the worker sizes them (workers/checkpoint_files.py); 0 for no folder."""
    return weight_bytes(model_path).total


def select(gpus: list[Gpu], wanted: str | None) -> list[Gpu]:
    if not wanted:
        return gpus
    ids = [w.strip() for w in wanted.split(",") if w.strip()]
    known = {g.index: g for g in gpus}
    missing = [i for i in ids if i not in known]
    if missing:
        have = ",".join(known) or "none"
        raise PlanError(f"--gpus names GPU {','.join(missing)}, but the visible GPUs are: {have}")
    return [known[i] for i in ids]


def plan(gpus: list[Gpu], model_bytes: int, tp: int | None = None, workers: int | None = None) -> Plan:
    """`tp`/`workers` None mean auto. Without GPUs: CPU workers (1 unless asked for more)."""
    if not gpus:
        if tp not in (None, 1):
            raise PlanError(f"--tp {tp} needs GPUs, and none is visible (nvidia-smi found nothing)")
        n = workers or 1
        return Plan(1, [[] for _ in range(n)], f"no GPU visible: {n} CPU worker(s), transformers engine")
    smallest = min(g.memory_mib for g in gpus) * 2**20
    if tp is None:
        fitting = [t for t in TP_CHOICES if t <= len(gpus) and model_bytes <= WEIGHT_SHARE * smallest * t]
        tp = fitting[0] if fitting else max(t for t in TP_CHOICES if t <= len(gpus))
        why = (f"weights {model_bytes / 2**30:.1f} GiB, smallest GPU {smallest / 2**30:.0f} GiB -> tp {tp}"
               + ("" if fitting else " (the model may not fit even so)"))
    else:
        if tp > len(gpus):
            raise PlanError(f"--tp {tp} needs {tp} GPUs, but only {len(gpus)} are visible/selected")
        why = f"tp {tp} as asked"
    most = len(gpus) // tp
    if workers is None:
        workers = most
    elif workers > most:
        raise PlanError(f"{workers} workers x tp {tp} need {workers * tp} GPUs, but only {len(gpus)} are "
                        "visible/selected; lower --workers or --tp")
    groups = [[g.index for g in gpus[i * tp:(i + 1) * tp]] for i in range(workers)]
    return Plan(tp, groups, f"{len(gpus)} GPU(s); {why}; {workers} worker(s)")


def plan_for(model_path: str | Path, tp: int | None, workers: int | None, gpus: str | None, cpu: bool) -> Plan:
    """The plan for these launcher settings; PlanError when they cannot be met."""
    if gpus and cpu:
        raise PlanError("--gpus and --cpu contradict each other")
    found = [] if cpu else select(visible_gpus(), gpus)
    return plan(found, weights_bytes(model_path), tp, workers)
