"""deploy/kubernetes renders with `kubectl kustomize` and every object passes the Kubernetes API's schemas
(kubernetes-validate, strict) or, for the operators' kinds, their required structure; probes, secrets, GPUs, /dev/shm
and autoscaling say what the stack needs. Each broken variant below is caught. No cluster is involved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy import checks
from tests.deploy.manifests import KUBERNETES, ManifestError, check_tree, kubectl, kustomizations, render


@pytest.fixture(scope="module")
def rendered():
    return check_tree()


def test_every_kustomization_renders_and_passes_the_schemas(rendered):
    # check_tree raised on the first object a cluster would refuse; here: nothing was left out.
    assert set(rendered) == {"base", "models", "overlays/cpu-demo", "overlays/gpu", "overlays/gpu-keda", "kuberay",
                             "overlays/kuberay-cpu-demo"}
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "RayCluster", "ScaledObject",
                     "ServiceMonitor"}


def test_probes_ask_each_process_on_its_own_port(rendered):
    assert checks.probe_problems(rendered) == []


def test_credentials_come_only_from_the_secret(rendered):
    assert checks.secret_problems(rendered) == []


def test_gpu_workers_ask_for_their_gpus_and_a_memory_dev_shm(rendered):
    assert checks.gpu_problems(rendered) == []


def test_every_claim_mounted_is_created_with_it(rendered):
    assert checks.volume_problems(rendered) == []


def test_keda_scales_workers_on_requests_waiting(rendered):
    assert checks.autoscaling_problems(rendered) == []


def test_namespaced_overlays_keep_every_object_together(rendered):
    for where, objects in rendered.items():
        if where in ("base", "models"):
            continue  # bases: the overlay that uses them sets the namespace
        assert {o["metadata"].get("namespace") for o in objects} != {None}, where
        assert len({o["metadata"].get("namespace") for o in objects}) == 1, where


# -------------------------------------------------------------------------------- broken manifests are caught


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path} (the mutation no longer applies: update it)"
    path.write_text(text.replace(old, new, 1))


SCHEMA_BREAKS = {
    "misspelt field": ("base/worker.yaml", "readinessProbe:", "readinesProbe:", "readinesProbe"),
    "wrong type": ("base/controller.yaml", "containerPort: 21001", "containerPort: twenty-one", "containerPort"),
    "RayCluster group without maxReplicas": ("kuberay/raycluster.yaml", "      maxReplicas: 4\n", "",
                                             "'maxReplicas' is a required property"),
    "RayCluster pod template field misspelt": ("kuberay/raycluster.yaml", "terminationGracePeriodSeconds",
                                               "terminationGracePeriod", "terminationGracePeriod"),
    "KEDA metadata not a string": ("overlays/gpu-keda/scaledobject.yaml", 'threshold: "4"', "threshold: 4",
                                   "is not of type 'string'"),
    "kustomization names a missing folder": ("overlays/gpu/kustomization.yaml", "- ../../models",
                                             "- ../../modelz", "kubectl kustomize"),
}


@pytest.mark.parametrize("name", SCHEMA_BREAKS)
def test_a_manifest_a_cluster_would_refuse_fails(tmp_path, name):
    file, old, new, said = SCHEMA_BREAKS[name]
    shutil.copytree(KUBERNETES, tmp_path / "k")
    _edit(tmp_path / "k" / file, old, new)
    with pytest.raises(ManifestError, match=said):
        check_tree(tmp_path / "k")


MEANING_BREAKS = {
    "liveness on the wrong path": ("base/worker.yaml", "path: /health, port: http}\n            periodSeconds: 15",
                                   "path: /healthz, port: http}\n            periodSeconds: 15", checks.probe_problems,
                                   "livenessProbe asks /healthz"),
    "probe on a port nobody binds": ("base/controller.yaml", "--port\", \"21001\"", "--port\", \"21009\"",
                                     checks.probe_problems, "the process binds --port 21009"),
    "a literal secret": ("base/controller.yaml",
                         "valueFrom:\n                secretKeyRef: {name: internvl-secrets, key: registration-secret}",
                         "value: hunter2", checks.secret_problems,
                         "INTERNVL_CONTROLLER_REGISTRATION_SECRET is not taken from the Secret"),
    "a secret on the command line": ("base/ui.yaml", '"--port", "7860",', '"--port", "7860", "--api-key", "k",',
                                     checks.secret_problems, "--api-key on the command line"),
    "no /dev/shm": ("base/worker.yaml", "            - {name: dshm, mountPath: /dev/shm}\n", "",
                    checks.gpu_problems, "/dev/shm is not a memory emptyDir"),
    "GPUs and TP disagree": ("overlays/gpu/kustomization.yaml", "INTERNVL_WORKER_TP=1", "INTERNVL_WORKER_TP=2",
                             checks.gpu_problems, "1 GPUs but INTERNVL_WORKER_TP=2"),
    "a claim left mounted when its volume is dropped": (
        "overlays/kuberay-cpu-demo/kustomization.yaml",
        "      - op: remove\n        path: /spec/headGroupSpec/template/spec/volumes/0\n",
        "", checks.volume_problems, "mounts claim internvl-models, which this render does not create"),
    "KEDA on another metric": ("overlays/gpu-keda/scaledobject.yaml", "internvl:num_requests_waiting",
                               "internvl_requests_in_flight", checks.autoscaling_problems,
                               "not on internvl:num_requests_waiting"),
}


@pytest.mark.parametrize("name", MEANING_BREAKS)
def test_a_manifest_that_validates_but_misconfigures_the_stack_fails(tmp_path, name):
    file, old, new, check, said = MEANING_BREAKS[name]
    shutil.copytree(KUBERNETES, tmp_path / "k")
    _edit(tmp_path / "k" / file, old, new)
    problems = check(check_tree(tmp_path / "k"))
    assert any(said in p for p in problems), problems


def test_rendering_needs_no_cluster(tmp_path):
    # KUBECONFIG is /dev/null in render(): the pinned kubectl renders alone; a typo'd directory is an error
    assert kubectl()
    with pytest.raises(ManifestError, match="kubectl kustomize"):
        render(tmp_path / "nowhere")
    assert len(kustomizations()) == 7
