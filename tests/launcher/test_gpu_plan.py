"""How the launcher groups GPUs into workers (launcher/gpus.py); no GPU needed: the GPUs are described."""

from __future__ import annotations

import pytest

from launcher.gpus import Gpu, PlanError, parse_nvidia_smi, plan, select

GIB = 2**30


def gpus(n: int, gib: int) -> list[Gpu]:
    return [Gpu(str(i), gib * 1024) for i in range(n)]


def test_no_gpu_means_cpu_workers():
    assert plan([], 5 * GIB).groups == [[]]
    assert plan([], 5 * GIB, workers=2).groups == [[], []]
    with pytest.raises(PlanError, match="needs GPUs"):
        plan([], GIB, tp=2)


def test_small_model_gets_one_worker_per_gpu():
    p = plan(gpus(4, 80), 2 * GIB)
    assert p.tp == 1 and p.groups == [["0"], ["1"], ["2"], ["3"]]


def test_tp_grows_until_the_weights_fit():
    # 40 GiB of weights on 24 GiB GPUs: one or two GPUs hold too little next to the cache; four do.
    p = plan(gpus(8, 24), 40 * GIB)
    assert p.tp == 4 and p.groups == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]


def test_explicit_tp_and_workers():
    assert plan(gpus(4, 80), GIB, tp=2, workers=1).groups == [["0", "1"]]
    with pytest.raises(PlanError, match="need 6 GPUs"):
        plan(gpus(4, 80), GIB, tp=2, workers=3)
    with pytest.raises(PlanError, match="--tp 8 needs 8 GPUs"):
        plan(gpus(4, 80), GIB, tp=8)


def test_gpu_selection_and_nvidia_smi_parsing():
    found = parse_nvidia_smi("0, 81559\n1, 81559\nNo devices were found\n")
    assert found == [Gpu("0", 81559), Gpu("1", 81559)]
    assert select(found, "1") == [Gpu("1", 81559)]
    with pytest.raises(PlanError, match="visible GPUs are: 0,1"):
        select(found, "0,5")
