"""What the rendered manifests must say beyond their schemas. Each check takes {kustomization: objects} (from
manifests.check_tree) and returns the problems it found, so a test can show that a broken manifest is caught."""

from __future__ import annotations

import re

from tests.deploy.manifests import containers, find, pod_templates, where

SECRET_NAME = "internvl-secrets"
SECRET_KEYS = {"api-key", "registration-secret"}
_SECRET_LIKE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
_SECRET_FLAGS = ("--api-key", "--api-keys", "--registration-secret", "--password", "--token")
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# The plain stack: container name -> (module it runs, probe path). Gradio has no /health: the UI's page is what
# the launcher waits for too.
PLAIN = {"controller": ("controller", "/health"), "worker": ("workers", "/health"), "ui": ("app", "/")}
GPU_PLAIN = ("base", "overlays/gpu", "overlays/gpu-keda")


def _flag(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def _plain_containers(objects: list[dict]):
    for obj in objects:
        if obj["kind"] == "Deployment":
            for label, pod, c in containers(obj):
                if c["name"] in PLAIN:
                    yield label, pod, c


def probe_problems(rendered: dict[str, list[dict]]) -> list[str]:
    """Startup, readiness and liveness probes: HTTP GET on the process's health path, on the port it binds."""
    problems = []
    for where_, objects in rendered.items():
        for label, _pod, c in _plain_containers(objects):
            module, path = PLAIN[c["name"]]
            bound = _flag(c.get("args", []), "--port")
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind, {}).get("httpGet")
                if not probe:
                    problems.append(f"{where_}: {label}: no HTTP {kind}")
                elif probe.get("path") != path:
                    problems.append(f"{where_}: {label}: {kind} asks {probe.get('path')}, {module} answers {path}")
                elif str(_port_number(c, probe.get("port"))) != bound:
                    problems.append(f"{where_}: {label}: {kind} on port {probe.get('port')}, the process binds "
                                    f"--port {bound}")
        for obj in objects:
            if obj["kind"] != "RayCluster":
                continue
            head = obj["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            for kind in ("startupProbe", "readinessProbe"):
                probe = head.get(kind, {}).get("httpGet") or {}
                if probe.get("path") != "/health" or _port_number(head, probe.get("port")) != 21001:
                    problems.append(f"{where_}: {where(obj)} head: {kind} must ask the controller's /health on "
                                    f"21001, asks {probe}")
    return problems


def _composed_of_secrets(value: str, secret_vars: set[str]) -> bool:
    """'["$(API_KEY)"]': only references to secret-sourced variables, plus punctuation."""
    refs = _REF.findall(value)
    return bool(refs) and set(refs) <= secret_vars and not re.search(r"\w", _REF.sub("", value))


def secret_problems(rendered: dict[str, list[dict]]) -> list[str]:
    """Credentials only from the Secret through secretKeyRef: never a literal, never on a command line, never in a
    ConfigMap, and no Secret object in the repository."""
    problems = []
    for where_, objects in rendered.items():
        for obj in objects:
            if obj["kind"] == "Secret":
                problems.append(f"{where_}: {where(obj)}: a Secret in the manifests (create it in the cluster)")
            if obj["kind"] == "ConfigMap":
                problems += [f"{where_}: {where(obj)}: {k} looks like a credential" for k in obj.get("data", {})
                             if _SECRET_LIKE.search(k)]
            for label, _pod, c in containers(obj):
                secret_vars = set()
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        secret_vars.add(var["name"])
                        if ref.get("name") != SECRET_NAME or ref.get("key") not in SECRET_KEYS:
                            problems.append(f"{where_}: {label}: {var['name']} reads {ref}, not one of "
                                            f"{SECRET_NAME}'s keys {sorted(SECRET_KEYS)}")
                    elif _SECRET_LIKE.search(var["name"]) and not _composed_of_secrets(var.get("value", ""),
                                                                                        secret_vars):
                        problems.append(f"{where_}: {label}: {var['name']} is not taken from the Secret")
                for source in c.get("envFrom", []):
                    if "configMapRef" not in source:
                        problems.append(f"{where_}: {label}: envFrom {source} (only ConfigMaps; secrets one by one)")
                argv = " ".join(c.get("command", []) + c.get("args", []))
                problems += [f"{where_}: {label}: {flag} on the command line" for flag in _SECRET_FLAGS
                             if re.search(rf"(^|\s){re.escape(flag)}(=|\s|$)", argv)]
    return problems


def _worker_config(objects: list[dict], container: dict) -> dict:
    data = {}
    for source in container.get("envFrom", []):
        data.update(find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    return data


def _shm_problems(where_: str, label: str, pod: dict, c: dict) -> list[str]:
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"), None)
    volume = mount and next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), None)
    if not volume or volume.get("emptyDir", {}).get("medium") != "Memory":
        return [f"{where_}: {label}: /dev/shm is not a memory emptyDir (a container's default is 64 MiB)"]
    return []


def gpu_problems(rendered: dict[str, list[dict]]) -> list[str]:
    """GPU workers ask for their GPUs (as many as their tensor parallelism), tolerate GPU nodes' taint, and have a
    memory /dev/shm; the CPU demo asks for none and serves the checkpoint built into the image."""
    problems = []
    for where_ in GPU_PLAIN:
        objects = rendered[where_]
        worker = find(objects, "Deployment", "internvl-worker")
        for label, pod, c in containers(worker):
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            tp = _worker_config(objects, c).get("INTERNVL_WORKER_TP")
            if not isinstance(gpus, int) or gpus < 1:
                problems.append(f"{where_}: {label}: no nvidia.com/gpu limit")
            elif str(gpus) != tp:
                problems.append(f"{where_}: {label}: {gpus} GPUs but INTERNVL_WORKER_TP={tp}")
            if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])):
                problems.append(f"{where_}: {label}: no toleration for nvidia.com/gpu nodes")
            problems += _shm_problems(where_, label, pod, c)
    demo = rendered["overlays/cpu-demo"]
    for label, pod, c in containers(find(demo, "Deployment", "internvl-worker")):
        config = _worker_config(demo, c)
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
            problems.append(f"overlays/cpu-demo: {label}: asks for a GPU")
        if config.get("INTERNVL_WORKER_DEVICE") != "cpu" or config.get("INTERNVL_WORKER_ENGINE") != "transformers":
            problems.append(f"overlays/cpu-demo: {label}: not the transformers engine on CPU: {config}")
        problems += _shm_problems("overlays/cpu-demo", label, pod, c)
    for obj in rendered["overlays/kuberay-cpu-demo"]:
        problems += [f"overlays/kuberay-cpu-demo: {label}: asks for a GPU" for label, _pod, c in containers(obj)
                     if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
        if obj["kind"] == "ConfigMap" and obj["data"].get("INTERNVL_CPU") != "true":
            problems.append(f"overlays/kuberay-cpu-demo: {where(obj)}: the launcher is not told --cpu")
    for obj in rendered["kuberay"]:
        if obj["kind"] != "RayCluster":
            continue
        head = obj["spec"]["headGroupSpec"]
        if head.get("rayStartParams", {}).get("num-gpus") != "0":
            problems.append(f"kuberay: {where(obj)}: the head must declare no GPUs (workers go to GPU pods)")
        head_pod = head["template"]["spec"]
        problems += _shm_problems("kuberay", f"{where(obj)} head", head_pod, head_pod["containers"][0])
        for group in obj["spec"].get("workerGroupSpecs", []):
            pod = group["template"]["spec"]
            for c in pod["containers"]:
                label = f"{where(obj)} {group['groupName']} {c['name']}"
                if not c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"):
                    problems.append(f"kuberay: {label}: no nvidia.com/gpu limit")
                problems += _shm_problems("kuberay", label, pod, c)
    return problems


def volume_problems(rendered: dict[str, list[dict]]) -> list[str]:
    """In a render that is applied as it is (an overlay), every claim a pod mounts is one it creates."""
    problems = []
    for where_, objects in rendered.items():
        if where_ in ("base", "models"):
            continue  # bases: the overlays bring the volume
        claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
        for obj in objects:
            for part, template in pod_templates(obj):
                problems += [f"{where_}: {where(obj)} {part}: mounts claim {v['persistentVolumeClaim']['claimName']}, "
                             "which this render does not create" for v in template.get("spec", {}).get("volumes", [])
                             if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in claims]
    return problems


def autoscaling_problems(rendered: dict[str, list[dict]]) -> list[str]:
    """KEDA scales the worker Deployment on the controller's internvl:num_requests_waiting for the model served,
    fed by a ServiceMonitor that scrapes the controller with its API key."""
    problems = []
    objects = rendered["overlays/gpu-keda"]
    worker = find(objects, "Deployment", "internvl-worker")
    served = _worker_config(objects, worker["spec"]["template"]["spec"]["containers"][0])
    model = served.get("INTERNVL_WORKER_MODEL_NAME") or served["INTERNVL_WORKER_MODEL_PATH"].rstrip("/").split("/")[-1]
    if "replicas" in worker["spec"]:
        problems.append("gpu-keda: the worker Deployment sets replicas, which every apply would reset under KEDA")
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    if len(scaled) != 1 or scaled[0]["spec"]["scaleTargetRef"]["name"] != "internvl-worker":
        problems.append("gpu-keda: one ScaledObject must target Deployment internvl-worker")
    for so in scaled:
        for trigger in so["spec"]["triggers"]:
            query = trigger["metadata"].get("query", "")
            if trigger["type"] != "prometheus" or "internvl:num_requests_waiting" not in query:
                problems.append(f"gpu-keda: trigger {trigger['type']} {query!r} is not on "
                                "internvl:num_requests_waiting")
            elif f'model="{model}"' not in query:
                problems.append(f"gpu-keda: the query {query!r} does not name the model served ({model})")
    service = find(objects, "Service", "internvl-controller")
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        labels = monitor["spec"]["selector"].get("matchLabels", {})
        if not labels or any(service["metadata"].get("labels", {}).get(k) != v for k, v in labels.items()):
            problems.append(f"gpu-keda: {where(monitor)} does not select Service/internvl-controller")
        for endpoint in monitor["spec"].get("endpoints", []):
            if endpoint.get("port") not in [p.get("name") for p in service["spec"]["ports"]]:
                problems.append(f"gpu-keda: {where(monitor)} scrapes port {endpoint.get('port')}, not the Service's")
            if endpoint.get("authorization", {}).get("credentials", {}).get("key") != "api-key":
                problems.append(f"gpu-keda: {where(monitor)} scrapes /metrics without the API key")
    return problems


def all_problems(rendered: dict[str, list[dict]]) -> list[str]:
    return probe_problems(rendered) + secret_problems(rendered) + gpu_problems(rendered) + \
        volume_problems(rendered) + autoscaling_problems(rendered)

