"""Time to "Ready" of `./launch.sh` (demo stack, warm: virtualenv installed, demo checkpoint built, no hub), this
tree against an older revision, alternating runs so both see the same load.

    python bench/startup_bench.py --old-rev df6b41c --runs 3

Each side runs from its own scratch copy (`git archive`) with the demo checkpoint already in checkpoints/demo,
INTERNVL_VENV=this interpreter's virtualenv and HF_HUB_OFFLINE=1. Prints every run, the medians, the ratio, the
load average around the runs, and per process when each became ready (from the new launcher's output).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.stack import free_port  # noqa: E402


def scratch_copy(rev: str | None, dest: Path, demo: Path) -> Path:
    dest.mkdir(parents=True)
    if rev is None:  # this working tree as a clone would have it
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, files):
            if (ROOT / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    shutil.copytree(demo, dest / "checkpoints" / "demo")
    return dest


def cpu_seconds(root: psutil.Process) -> tuple[float, float]:
    """(CPU seconds used so far by `root` and everything it started, of which the worker's), load-independent."""
    total = worker = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            used = t.user + t.system + t.children_user + t.children_system  # children_*: the reaped helpers
            total += used
            if p.cmdline()[1:3] == ["-m", "workers"]:
                worker = used
        except psutil.NoSuchProcess:
            pass
    return total, worker


def one_run(checkout: Path, timeout: float = 300) -> tuple[float, list[str], tuple[float, float]]:
    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "INTERNVL_VENV": sys.prefix, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    t0 = time.monotonic()
    popen = subprocess.Popen(["./launch.sh", "--port", str(ports[0]), "--controller-port", str(ports[1]),
                              "--worker-port", str(ports[2])], cwd=checkout, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in popen.stdout:
            lines.append(line.rstrip())
            if line.startswith("==> Ready"):
                return time.monotonic() - t0, lines, cpu_seconds(psutil.Process(popen.pid))
            if time.monotonic() - t0 > timeout:
                break
        raise RuntimeError("not ready:\n" + "\n".join(lines[-30:]))
    finally:
        os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
        time.sleep(1)  # let the ports and the CPU settle between runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-rev", required=True, help="git revision of the launch.sh to compare against")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from workers.demo_checkpoint import ensure_demo_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        demo, _ = ensure_demo_checkpoint(Path(tmp) / "demo")
        sides = {"old": scratch_copy(args.old_rev, Path(tmp) / "old", demo),
                 "new": scratch_copy(None, Path(tmp) / "new", demo)}
        one_run(sides["new"])  # warm the page cache for both (same interpreter and libraries)
        times: dict[str, list[float]] = {"old": [], "new": []}
        cpu: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        loads = [os.getloadavg()[0]]
        phases = []
        for i in range(args.runs):
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                took, lines, used = one_run(sides[side])
                times[side].append(took)
                cpu[side].append(used)
                loads.append(os.getloadavg()[0])
                print(f"run {i + 1} {side}: ready in {took:.1f} s (load {loads[-1]:.1f}); CPU {used[0]:.1f} s in "
                      f"all, {used[1]:.1f} s in the worker", flush=True)
                if side == "new":
                    phases.append([m.group(0) for line in lines if (m := re.search(r"\S+ ready \([\d.]+ s\)", line))])
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"\nmedian time to Ready: old {old:.1f} s, new {new:.1f} s, new/old {new / old:.2f}")
    print(f"1-min load average during the runs: {min(loads):.1f} .. {max(loads):.1f} on {os.cpu_count()} CPUs")
    for side in ("old", "new"):
        total = statistics.median(c[0] for c in cpu[side])
        worker = statistics.median(c[1] for c in cpu[side])
        print(f"{side}: median CPU to Ready {total:.1f} s in all, {worker:.1f} s in the worker (the critical path); "
              f"on 2 idle cores at least {max(worker, total / 2):.1f} s")
    print("new launcher, per process (last run): " + ", ".join(phases[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
