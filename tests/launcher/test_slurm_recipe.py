"""deploy/slurm/internvl-ray.sbatch, run as Slurm would run it, on two "nodes" of this machine: network namespaces
(tests/support/ray_nodes.py). Slurm itself is not here, so two small stand-ins, written by the test into its own
folder, play its part: `scontrol show hostnames` lists the allocation's nodes, and `srun -w NODE CMD` runs CMD in
that node's namespace. Everything else is real: the script starts Ray's head and joins the other node to it, waits
for both, then hands over to `./launch.sh --ray` with its own arguments; the stack serves; SIGTERM (what scancel
sends) removes everything the launcher placed. The scripted engine stands in for the model (this is about the
recipe and the launcher, layers above the engine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.support.chat_http import body, worker_status
from tests.support.launched import Launched
from tests.support.netns import create_or_skip
from tests.support.ray_nodes import RayHosts
from tests.support.stack import ROOT, SCRIPTED

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "deploy" / "slurm" / "internvl-ray.sbatch"
SCONTROL = """#!/usr/bin/env bash
[[ $1 == show && $2 == hostnames ]] || exit 1
tr , '\\n' <<< "$3"
"""
SRUN = """#!/usr/bin/env bash
# srun [--option[=value] ...] -w NODE CMD...: CMD in NODE's namespace (SLURM_SHIM_NETNS: "node=namespace ...")
while [[ $1 == -* ]]; do
    if [[ $1 == -w ]]; then node=$2; shift 2; else shift; fi
done
for pair in $SLURM_SHIM_NETNS; do [[ ${pair%%=*} == "$node" ]] && exec ip netns exec "${pair#*=}" "$@"; done
echo "srun stand-in: no node $node" >&2; exit 1
"""


@pytest.fixture
def allocation(tmp_path):
    hosts = RayHosts(["head", "gpu1"], Path(f"/tmp/ivs{os.getpid()}"))
    create_or_skip(hosts)
    shims = tmp_path / "slurm-bin"
    shims.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    hosts.address = f"{hosts.ip['head']}:6379"
    env = {**hosts.env(), "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "head,gpu1",
           "SLURM_SUBMIT_DIR": str(ROOT), "RAY_HEAD_IP": hosts.ip["head"], "INTERNVL_VENV": sys.prefix,
           "SLURM_SHIM_NETNS": " ".join(f"{n}={ns}" for n, ns in hosts.ns.items()),
           "RAY_TMPDIR": str(hosts.temp_dir), "HF_HUB_OFFLINE": "1", "SCRIPTED_TOKENS": "8"}
    try:
        yield hosts, env
    finally:
        hosts.destroy()
        subprocess.run(["rm", "-rf", str(hosts.temp_dir)], check=False)


def test_the_slurm_recipe_starts_ray_and_the_stack_and_scancel_removes_it(allocation, demo_checkpoint, tmp_path):
    hosts, env = allocation
    # The batch script runs on the allocation's first node (the head).
    popen = subprocess.Popen(hosts.exec_argv("head", "bash", str(SCRIPT), "--model", str(demo_checkpoint),
                                             "--engine", SCRIPTED, "--log-dir", str(tmp_path / "logs")),
                             cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    launched = Launched(popen, tmp_path / "logs")
    try:
        launched.wait_ready(timeout=180)
        # No GPU on either node: one CPU worker, on the node that is not the head.
        assert f"node {hosts.ip['gpu1']}: worker-0 (CPU)" in launched.output
        url = f"http://{hosts.ip['head']}:21001"
        assert [w["url"] for w in worker_status(url).values()] == [f"http://{hosts.ip['gpu1']}:21002"]
        r = httpx.post(url + "/v1/chat/completions", json=body(demo_checkpoint.name, max_tokens=4), timeout=30)
        assert r.status_code == 200, r.text
        popen.send_signal(signal.SIGTERM)  # what scancel sends the batch script (exec'd into the launcher)
        popen.wait(40)
        assert "Stopping" in launched.output
        deadline = time.monotonic() + 15
        while (left := hosts.ours_left()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"left running after scancel's SIGTERM: {left}\n{launched.output}"
        assert hosts.placement_groups_left() == []
    finally:
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
