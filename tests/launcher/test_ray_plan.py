"""Where `--ray` puts workers (launcher/ray_plan.py): nodes are described, no Ray cluster is needed. The placement on a
real cluster, and what Ray does when a node goes, are tested in test_ray_cluster.py."""

from __future__ import annotations

import pytest

from launcher.gpus import PlanError
from launcher.ray_plan import RayNode, alive_nodes, choose_tp, place

HEAD, A, B = RayNode("h", "10.0.0.1", 0, True), RayNode("a", "10.0.0.2", 4), RayNode("b", "10.0.0.3", 2)
GIB = 2**30


def where(placements) -> list[tuple[int, str]]:
    return [(p.index, p.node.node_id) for p in placements]


def test_auto_fills_every_group_of_tp_gpus_on_single_nodes():
    assert where(place([HEAD, A, B], 1, None, False)) == [(0, "a"), (1, "b"), (2, "a"), (3, "b"), (4, "a"),
                                                         (5, "a")]
    two = place([HEAD, A, B], 2, None, False)
    assert where(two) == [(0, "a"), (1, "b"), (2, "a")] and {p.gpus for p in two} == {2}
    # 3 GPUs on a node and tp 2: one group there, the odd GPU stays free (tp never spans nodes).
    assert where(place([RayNode("c", "10.0.0.4", 3), B], 2, None, False)) == [(0, "c"), (1, "b")]


def test_a_number_of_workers_is_spread_over_the_nodes_and_checked():
    assert where(place([HEAD, A, B], 1, 2, False)) == [(0, "a"), (1, "b")]
    with pytest.raises(PlanError, match="4 workers x tp 2 need 4 groups of 2 GPUs on single nodes, but the cluster "
                                        "has 3 free"):
        place([HEAD, A, B], 2, 4, False)


def test_taken_gpus_are_left_alone_and_new_indices_follow():
    assert where(place([A, B], 2, None, False, taken={"a": 4}, first_index=2)) == [(2, "b")]
    assert place([A, B], 2, None, False, taken={"a": 4, "b": 2}) == []


def test_cpu_workers_go_to_the_worker_nodes_before_the_head():
    assert where(place([HEAD, A, B], 1, 2, True)) == [(0, "a"), (1, "b")]
    assert where(place([HEAD, A, B], 1, 3, True)) == [(0, "a"), (1, "b"), (2, "h")]
    assert where(place([HEAD, A, B], 1, 1, True, taken={"a": 1})) == [(0, "b")]
    assert {p.gpus for p in place([HEAD], 1, 2, False)} == {0}  # a cluster without GPUs: CPU workers


def test_tp_is_asked_or_derived_and_never_spans_a_node():
    with pytest.raises(PlanError, match="--tp 8 needs 8 GPUs on one node .* the node with the most GPUs has 4"):
        choose_tp([HEAD, A, B], 8, GIB, None)
    assert choose_tp([A, B], 2, GIB, None) == 2
    assert choose_tp([A, B], None, 40 * GIB, None) == 1  # logical GPUs: memory unknown
    assert choose_tp([A, B], None, 40 * GIB, 24 * 1024) == 4  # 40 GiB in 60% of 24 GiB GPUs: four of them


def test_alive_nodes_from_ray_nodes():
    nodes = alive_nodes([
        {"NodeID": "b", "NodeManagerAddress": "10.0.0.3", "Alive": True, "Resources": {"GPU": 2.0, "CPU": 8.0}},
        {"NodeID": "x", "NodeManagerAddress": "10.0.0.9", "Alive": False, "Resources": {"GPU": 8.0}},
        {"NodeID": "h", "NodeManagerAddress": "10.0.0.1", "Alive": True,
         "Resources": {"CPU": 4.0, "node:__internal_head__": 1.0}}])
    assert nodes == [RayNode("h", "10.0.0.1", 0, True), RayNode("b", "10.0.0.3", 2)]


def test_what_each_actor_runs_on_its_node(tmp_path):
    """The processes' command lines carry no secret (they go in the environment); workers get the GPUs Ray granted,
    bind their node's address and advertise it; the controller binds the node's address unless --host says where."""
    from launcher.ray_host import Job, build_spec, reachable_url

    secrets = {"registration_secret": "reg-secret-1", "api_key": "api-key-1"}
    base = Job("worker", 3, str(tmp_path), "127.0.0.1", 21005, controller_url="http://10.0.0.1:21001",
               model_folder=str(tmp_path), tp=2)
    worker = build_spec(base, "10.0.0.2", ["2", "3"], secrets)
    assert worker.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert worker.env["INTERNVL_WORKER_REGISTRATION_SECRET"] == "reg-secret-1"
    argv = " ".join(worker.argv)
    assert "--host 10.0.0.2 --port 21005" in argv and "--worker-url http://10.0.0.2:21005" in argv
    assert "--tp 2" in argv and "--controller-url http://10.0.0.1:21001" in argv
    cpu_worker = build_spec(base, "10.0.0.2", [], secrets)
    assert cpu_worker.env["CUDA_VISIBLE_DEVICES"] == ""
    for host, url in (("127.0.0.1", "http://10.0.0.1:21001"), ("0.0.0.0", "http://10.0.0.1:21001")):
        controller = build_spec(Job("controller", 0, str(tmp_path), host, 21001), "10.0.0.1", [], secrets)
        assert reachable_url(controller, "10.0.0.1") == url
        assert controller.env["INTERNVL_CONTROLLER_API_KEYS"] == '["api-key-1"]'
    for spec in (worker, controller):
        assert not any(secret in " ".join(spec.argv) for secret in secrets.values())
