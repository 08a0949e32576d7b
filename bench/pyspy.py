"""Where a server process's time goes during one benchmark phase: py-spy (bench/requirements-routers.txt) samples it
from outside, and the busy samples are summed by function, self and inclusive.

    with profiled(pid, Path("relay.txt")):   # py-spy's raw (collapsed stacks) file
        ...the phase...
    print_top(Path("relay.txt"))

Idle samples (the event loop waiting in epoll/select) are left out by py-spy itself, so the shares are of the time
the process was busy.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")


def available() -> bool:
    return PY_SPY.exists() or shutil.which("py-spy") is not None


@contextlib.contextmanager
def profiled(pid: int, out: Path, rate: int = 250, native: bool = False) -> Iterator[None]:
    """py-spy records `pid` while the block runs; SIGINT makes it write `out` and stop."""
    cmd = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out),
           *(["--native"] if native else ["--nonblocking"])]  # native stacks need the process paused per sample
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def summarize(raw: Path) -> tuple[int, collections.Counter, collections.Counter]:
    """(busy samples, self samples by frame, inclusive samples by frame) from a raw collapsed-stack file."""
    total, own, incl = 0, collections.Counter(), collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return total, own, incl


def print_top(raw: Path, n: int = 25) -> None:
    if not raw.exists():
        print(f"  no profile at {raw}")
        return
    total, own, incl = summarize(raw)
    if not total:
        print(f"  {raw.name}: no busy samples")
        return
    print(f"  {raw.name}: {total} busy samples; self time by function:")
    for frame, k in own.most_common(n):
        print(f"    {100 * k / total:5.1f}%  {frame}")
    print("  inclusive (function and what it calls; the event loop's own frames, in every sample, left out):")
    for frame, k in [(f, k) for f, k in incl.most_common() if k < 0.9 * total][:n]:
        print(f"    {100 * k / total:5.1f}%  {frame}")
