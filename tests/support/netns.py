"""What every multi-host test does first: make its network namespaces, or skip with the reason when this machine
cannot (namespaces need root and iproute2; CI runs as root, so there they are always made)."""

from __future__ import annotations

import subprocess

import pytest


def create_or_skip(hosts) -> None:
    """`hosts.create()`; on failure `hosts.destroy()` (what was made goes) and a skip that says why."""
    try:
        hosts.create()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        hosts.destroy()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"cannot create network namespaces here (needs root and iproute2): {detail}")
