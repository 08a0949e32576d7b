"""Group the visible GPUs into workers: `tp` GPUs per worker, as many workers as fit.

    python -m scripts.plan_gpus --model-path PATH [--tp auto|N] [--workers auto|N] [--gpus 0,1,...]

Prints one line `tp N`, then one line per worker: `worker 0,1` (GPU indices for CUDA_VISIBLE_DEVICES) or
`worker cpu`. The reasoning goes to stderr. GPUs are read from nvidia-smi (no torch import: this runs before
anything heavy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
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
    root = Path(model_path)
    if not root.is_dir():
        return 0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


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


def _auto_int(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.plan_gpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default="", help="checkpoint folder (its weight files size the tp)")
    parser.add_argument("--tp", type=_auto_int, default=None, help="GPUs per worker (auto)")
    parser.add_argument("--workers", type=_auto_int, default=None, help="number of workers (auto)")
    parser.add_argument("--gpus", default="", help="comma-separated GPU indices to use (default: all visible)")
    parser.add_argument("--cpu", action="store_true", help="ignore GPUs")
    args = parser.parse_args(argv)
    try:
        gpus = [] if args.cpu else select(visible_gpus(), args.gpus)
        if args.gpus and args.cpu:
            raise PlanError("--gpus and --cpu contradict each other")
        result = plan(gpus, weights_bytes(args.model_path), args.tp, args.workers)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"plan: {result.reason}", file=sys.stderr)
    print(f"tp {result.tp}")
    for group in result.groups:
        print("worker " + (",".join(group) or "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
