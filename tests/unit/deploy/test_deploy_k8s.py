"""deploy/k8s: every manifest valid against the Kubernetes JSON schemas, and wired as the service needs.

Built-in kinds are validated strictly (unknown fields are errors) with the schemas that
kubernetes-validate ships, for the oldest and the newest Kubernetes version targeted. KEDA's
ScaledObject is a CRD (no schema package ships it): it is checked against the fields KEDA
documents for ``keda.sh/v1alpha1`` and its ``redis-streams`` trigger, and its HPA behaviour
against the real ``autoscaling/v2`` schema.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource
from s4ct_deploy import K8S, REQUIRED, load_yaml_docs, setting_env_names, settings_from_env

from app.config import Settings
from app.worker.runner import Worker

#: the oldest Kubernetes targeted (1.29, or the oldest the installed package ships) and the newest
K8S_VERSIONS = ("1.29.0" if "1.29.0" in kv.all_versions() else kv.all_versions()[0], kv.latest_version())

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
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
                        "scalingModifiers": {"type": "object"},
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
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
#: metadata keys of KEDA's redis-streams scaler
REDIS_STREAMS_KEYS = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def k8s_fragment(filename: str) -> jsonschema.protocols.Validator:
    """A strict validator for one definition of the newest Kubernetes schemas kubernetes-validate ships."""
    version = kv.all_versions()[-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv.schema_contents(f"{folder}/{filename}", version)
    defs = kv.schema_contents(f"{folder}/_definitions.json", version)
    registry: Registry[Any] = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path, doc) for doc in load_yaml_docs(path)]
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, (kind, name)
    return hits[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from envFrom (ConfigMap/Secret of deploy/k8s) and env."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(find("ConfigMap", src["configMapRef"]["name"])["data"])
        if "secretRef" in src:
            env.update(find("Secret", src["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    images = {i["name"] for i in kust["images"]}
    used = {
        c["image"].split(":")[0]
        for _, d in manifests()
        if d["kind"] in ("Deployment", "Job")
        for c in pod_spec(d)["containers"]
    }
    assert used == images == {"service4ct-api", "service4ct-worker"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_are_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = set()
    for _, doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kv.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "Job",
    } <= checked


def test_the_kubernetes_schema_check_is_not_vacuous() -> None:
    doc = copy.deepcopy(find("Deployment", "service4ct-worker"))
    pod_spec(doc)["containers"][0]["livenesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        kv.validate(doc, kv.latest_version(), strict=True)
    doc = copy.deepcopy(find("Deployment", "service4ct-worker"))
    pod_spec(doc)["terminationGracePeriodSeconds"] = "90"
    with pytest.raises(jsonschema.ValidationError):
        kv.validate(doc, kv.latest_version(), strict=True)


def test_keda_scaled_object_on_the_job_stream() -> None:
    so = find("ScaledObject", "service4ct-worker")
    jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    k8s_fragment("horizontalpodautoscalerbehavior-autoscaling-v2.json").validate(behavior)

    worker = find("Deployment", "service4ct-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    env = container_env(pod_spec(worker)["containers"][0])
    defaults = Settings()
    modes = set()
    stream = env.get("S4CT_STREAM", defaults.stream)
    lagged = set()
    for trig in so["spec"]["triggers"]:
        meta = trig["metadata"]
        assert trig["type"] == "redis-streams"
        assert set(meta) <= REDIS_STREAMS_KEYS, set(meta) - REDIS_STREAMS_KEYS
        assert meta["stream"] in (stream, f"{stream}:urgent")  # the routine and the urgent lane
        if "lagCount" in meta:
            lagged.add(meta["stream"])
        assert meta["consumerGroup"] == env.get("S4CT_GROUP", defaults.group)
        for key in ("addressFromEnv", "passwordFromEnv"):  # resolved from the worker's environment
            assert meta[key] in env, key
        assert ":" in env[meta["addressFromEnv"]]  # host:port, not a URL
        if "lagCount" in meta:
            modes.add("lag")
            assert int(meta["activationLagCount"]) >= 1
        if "pendingEntriesCount" in meta:
            modes.add("pending")
            held = int(env["S4CT_PREFETCH"]) + int(env["S4CT_MAX_BATCH"])
            assert int(meta["pendingEntriesCount"]) == held  # a busy worker's share of the PEL
    assert modes == {"lag", "pending"}
    assert lagged == {stream, f"{stream}:urgent"}  # a backlog in either lane adds workers
    bad = copy.deepcopy(so)
    bad["spec"]["triggers"][0]["metadata"]["lagCount"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCALED_OBJECT_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        k8s_fragment("horizontalpodautoscalerbehavior-autoscaling-v2.json").validate(
            {"scaleDown": {"stabilizationWindowSecond": 600}}
        )


def test_api_probes_service_hpa_and_pdb() -> None:
    api = find("Deployment", "service4ct-api")
    c = pod_spec(api)["containers"][0]
    assert c["args"] == ["service4ct", "api"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    env = container_env(c)
    assert int(env["S4CT_PORT"]) == port and env["S4CT_HOST"] == "0.0.0.0"
    assert "replicas" not in api["spec"]  # owned by the HPA
    # /metrics (every client's volume) on its own port, scraped there, not published by the Service
    metrics_port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert int(env["S4CT_METRICS_PORT"]) == metrics_port != port and env["S4CT_METRICS_HOST"] == "0.0.0.0"
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = find("Service", "service4ct-api")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    hpa = find("HorizontalPodAutoscaler", "service4ct-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "service4ct-api",
    }
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in c["resources"]["requests"]  # CPU utilisation needs a request
    for name, deploy in (
        ("service4ct-api", api),
        ("service4ct-worker", find("Deployment", "service4ct-worker")),
    ):
        pdb = find("PodDisruptionBudget", name)
        assert (
            pdb["spec"]["selector"]["matchLabels"].items()
            <= deploy["spec"]["template"]["metadata"]["labels"].items()
        )


def test_worker_gpu_and_drain() -> None:
    worker = find("Deployment", "service4ct-worker")
    spec = pod_spec(worker)
    c = spec["containers"][0]
    assert c["args"] == ["service4ct", "worker"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in worker["spec"]  # owned by KEDA
    env = container_env(c)
    assert env["S4CT_DEVICE"] == "cuda"
    metrics_port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert int(env["S4CT_WORKER_METRICS_PORT"]) == metrics_port and env["S4CT_HOST"] == "0.0.0.0"
    assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    # SIGTERM: stop reading, drain held jobs (drain_s), join threads, stop the webhook sender
    drain_s = inspect.signature(Worker.stop).parameters["drain_s"].default
    webhook_stop = float(env.get("S4CT_WEBHOOK_TIMEOUT_S", Settings().webhook_timeout_s)) + 2
    needed = drain_s + 2 * 5 + webhook_stop + 10
    assert spec["terminationGracePeriodSeconds"] >= needed
    # a read-only root: everything the worker writes lies on a volume
    mounts = {Path(m["mountPath"]) for m in c["volumeMounts"]}
    for path in (env["S4CT_WORK_DIR"], env["S4CT_WEIGHTS_CACHE_DIR"], "/tmp/matplotlib", "/dev/shm"):
        assert any(Path(path).is_relative_to(m) for m in mounts), path


def test_migrate_job() -> None:
    job = find("Job", "service4ct-migrate")
    c = pod_spec(job)["containers"][0]
    assert c["args"] == ["service4ct", "migrate"]
    assert c["image"].startswith("service4ct-api:")
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def test_containers_run_as_non_root_with_a_read_only_root() -> None:
    for _, doc in manifests():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]


def test_every_s4ct_variable_is_a_setting_and_each_container_gets_the_required_ones() -> None:
    known = setting_env_names()
    for _, doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret"):
            keys = doc.get("data", {}) | doc.get("stringData", {})
            unknown = sorted(k for k in keys if k.startswith("S4CT_") and k not in known)
            assert unknown == [], (doc["metadata"]["name"], unknown)
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for c in pod_spec(doc)["containers"]:
            env = container_env(c)
            unknown = sorted(k for k in env if k.startswith("S4CT_") and k not in known)
            assert unknown == [], (doc["metadata"]["name"], unknown)
            settings = settings_from_env(env)
            settings.require_services()
            assert all(getattr(settings, f) is not None for f in REQUIRED)
            assert settings.webhook_allow_private is False  # production
            assert settings.log_json is True


def test_manifests_name_the_images_make_images_builds() -> None:
    """deploy/docker/build.sh tags service4ct-{api,worker}:<project version>: the names used here."""
    import tomllib

    version = tomllib.loads((K8S.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    build = (K8S.parents[1] / "deploy" / "docker" / "build.sh").read_text()
    assert '"$ENGINE" tag "$image" "${image%:*}:$version"' in build
    assert "service4ct-api:local" in build and "service4ct-worker:local" in build
    roles = {"service4ct-api": "api", "service4ct-worker": "worker"}
    for _, d in manifests():
        if d["kind"] in ("Deployment", "Job"):
            for c in pod_spec(d)["containers"]:
                name, _, tag = c["image"].partition(":")
                assert name in roles and tag == version, c["image"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {i["newTag"] for i in kust["images"]} == {version}
