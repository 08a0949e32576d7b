"""JSON schemas for the custom resources our manifests use (KubeRay RayCluster, KEDA ScaledObject, Prometheus
Operator ServiceMonitor).

kubernetes-validate ships the schemas of Kubernetes' own kinds only. The operators' CRDs are large generated files
that we do not vendor, so these schemas state what those CRDs require, written from their API references (KubeRay
ray.io/v1, KEDA keda.sh/v1alpha1, prometheus-operator monitoring.coreos.com/v1):

- the required fields (RayCluster: spec.headGroupSpec.template; each workerGroupSpec: groupName, minReplicas,
  maxReplicas, template. ScaledObject: scaleTargetRef.name, triggers[].type and .metadata. ServiceMonitor: selector);
- the types the API server would enforce (integers, maps of strings: KEDA's trigger metadata and Ray's
  rayStartParams are string maps, so `threshold: 4` is refused while `threshold: "4"` is not);
- `additionalProperties: false` on the objects we fill in, listing only fields the CRDs define: the API server would
  silently prune a misspelt field (`workerGroupSpec`), which is worse than an error, so here it is an error.

The pod templates inside a RayCluster are checked against Kubernetes' own PodTemplateSpec schema (manifests.py).
"""

from __future__ import annotations

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_POD_TEMPLATE = {"type": "object"}  # checked separately against Kubernetes' PodTemplateSpec
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}


def _obj(required: list[str], **properties) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA,
                           "spec": spec}}


_WORKER_GROUP = _obj(
    ["groupName", "minReplicas", "maxReplicas", "template"],
    groupName={"type": "string", "minLength": 1}, replicas={"type": "integer", "minimum": 0},
    minReplicas={"type": "integer", "minimum": 0}, maxReplicas={"type": "integer", "minimum": 0},
    idleTimeoutSeconds={"type": "integer"}, numOfHosts={"type": "integer", "minimum": 1},
    rayStartParams=_STRING_MAP, labels=_STRING_MAP, resources=_STRING_MAP, suspend={"type": "boolean"},
    scaleStrategy={"type": "object"}, template=_POD_TEMPLATE)

RAY_CLUSTER = _resource("ray.io/v1", "RayCluster", _obj(
    ["headGroupSpec"],
    rayVersion={"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
    enableInTreeAutoscaling={"type": "boolean"}, autoscalerOptions={"type": "object"}, suspend={"type": "boolean"},
    headServiceAnnotations=_STRING_MAP, gcsFaultToleranceOptions={"type": "object"},
    headGroupSpec=_obj(["template"], rayStartParams=_STRING_MAP, serviceType={"enum": ["ClusterIP", "NodePort",
                                                                                      "LoadBalancer"]},
                       enableIngress={"type": "boolean"}, headService={"type": "object"}, labels=_STRING_MAP,
                       resources=_STRING_MAP, template=_POD_TEMPLATE),
    workerGroupSpecs={"type": "array", "items": _WORKER_GROUP}))

_POLICY = _obj(["type", "value", "periodSeconds"], type={"enum": ["Pods", "Percent"]},
               value={"type": "integer", "minimum": 1}, periodSeconds={"type": "integer", "minimum": 1})
_SCALING_RULES = _obj([], stabilizationWindowSeconds={"type": "integer", "minimum": 0},
                      selectPolicy={"enum": ["Max", "Min", "Disabled"]},
                      policies={"type": "array", "items": _POLICY})

SCALED_OBJECT = _resource("keda.sh/v1alpha1", "ScaledObject", _obj(
    ["scaleTargetRef", "triggers"],
    scaleTargetRef=_obj(["name"], name={"type": "string", "minLength": 1}, kind={"type": "string"},
                        apiVersion={"type": "string"}, envSourceContainerName={"type": "string"}),
    minReplicaCount={"type": "integer", "minimum": 0}, maxReplicaCount={"type": "integer", "minimum": 1},
    idleReplicaCount={"type": "integer", "minimum": 0}, pollingInterval={"type": "integer", "minimum": 1},
    cooldownPeriod={"type": "integer", "minimum": 0}, initialCooldownPeriod={"type": "integer", "minimum": 0},
    fallback={"type": "object"},
    advanced=_obj([], restoreToOriginalReplicaCount={"type": "boolean"}, scalingModifiers={"type": "object"},
                  horizontalPodAutoscalerConfig=_obj([], name={"type": "string"},
                                                     behavior=_obj([], scaleUp=_SCALING_RULES,
                                                                   scaleDown=_SCALING_RULES))),
    triggers={"type": "array", "minItems": 1, "items": _obj(
        ["type", "metadata"], type={"type": "string", "minLength": 1}, name={"type": "string"},
        metricType={"enum": ["AverageValue", "Value", "Utilization"]}, useCachedMetrics={"type": "boolean"},
        authenticationRef=_obj(["name"], name={"type": "string"}, kind={"type": "string"}),
        metadata=_STRING_MAP)}))

_SECRET_KEY = _obj(["name", "key"], name={"type": "string", "minLength": 1}, key={"type": "string", "minLength": 1},
                   optional={"type": "boolean"})
SERVICE_MONITOR = _resource("monitoring.coreos.com/v1", "ServiceMonitor", _obj(
    ["selector"],
    selector={"type": "object", "properties": {"matchLabels": _STRING_MAP}},
    namespaceSelector={"type": "object"}, jobLabel={"type": "string"},
    endpoints={"type": "array", "items": _obj(
        [], port={"type": "string"}, targetPort={"type": ["string", "integer"]}, path={"type": "string"},
        scheme={"enum": ["http", "https", "HTTP", "HTTPS"]},
        interval={"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
        scrapeTimeout={"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
        authorization=_obj(["credentials"], type={"type": "string"}, credentials=_SECRET_KEY))}))

BY_KIND = {("ray.io/v1", "RayCluster"): RAY_CLUSTER, ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
           ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR}
