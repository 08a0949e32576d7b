"""controller/__main__.py RELAY_MALLOC: the relay's buffers (one per network read of a stream, tens to hundreds of KiB,
joined and cut) are made again from memory the process already has, not from fresh pages that fault on first touch.
Each case runs in a process of its own: glibc's settings are per process and cannot be undone."""

from __future__ import annotations

import subprocess
import sys

from launcher.compose import ROOT

PATTERN = """
import random, resource, sys
sys.path.insert(0, {repo!r})
if {tuned}:
    from common.glibc_malloc import set_malloc
    from controller.__main__ import RELAY_MALLOC
    assert set_malloc(RELAY_MALLOC, "test")
rng, kept = random.Random(1), []
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2000):
    read = b"x" * rng.randint(64 * 1024, 600 * 1024)         # what a network read brought
    joined = read + b"y" * rng.randint(1000, 200 * 1024)     # and the next one, joined to it
    kept = [*kept[-2:], joined[:len(joined) // 2]]           # a block cut at the last complete event
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 2000)
"""


def faults_per_read(tuned: bool) -> float:
    out = subprocess.run([sys.executable, "-c", PATTERN.format(repo=str(ROOT), tuned=tuned)], check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout)


def test_relayed_buffers_cost_no_page_faults_once_the_heap_has_grown():
    default = faults_per_read(tuned=False)
    assert default > 10, f"{default} page faults per read with glibc's defaults: the pattern no longer shows the cost"
    assert faults_per_read(tuned=True) < 1
