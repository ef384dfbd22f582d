"""docker-compose.yml: valid against the official Compose spec schema, wired as the service needs.

No Docker engine runs here: the file is checked statically. The schema is the Compose
specification's own JSON schema as vendored by check-jsonschema (``vendor.compose-spec``).
"""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import json
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from s4ct_deploy import COMPOSE, REQUIRED, interpolate, setting_env_names, settings_from_env

from app.worker.runner import Worker

APP_SERVICES = ("api", "worker", "worker-cpu", "migrate")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_schema() -> dict[str, Any]:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text())
    return schema


def validate(doc: dict[str, Any]) -> None:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(doc)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: interpolate(str(v)) for k, v in env.items()}


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    schema = compose_schema()
    assert "compose" in json.dumps(schema.get("title", "") or schema.get("$id", "")).lower()
    validate(compose())


def test_the_schema_check_is_not_vacuous() -> None:
    bad = copy.deepcopy(compose())
    bad["services"]["api"]["depends_on"]["postgres"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(compose())
    bad["services"]["api"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_services_profiles_and_gpu_reservation() -> None:
    services = compose()["services"]
    assert {"api", "worker", "worker-cpu", "postgres", "redis", "minio", "minio-init", "migrate"} <= set(
        services
    )
    gpu = services["worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert env_of(cpu)["S4CT_DEVICE"] == "cpu" and env_of(gpu)["S4CT_DEVICE"] == "cuda"
    for name in ("worker", "worker-cpu"):
        assert services[name]["build"]["target"] == "worker"
    for name in ("api", "migrate"):
        assert services[name]["build"]["target"] == "api"
    assert services["migrate"]["command"] == ["service4ct", "migrate"]


def test_stores_are_the_versions_and_modes_the_service_needs() -> None:
    services = compose()["services"]
    pg_major = int(re.search(r"postgres:(\d+)", services["postgres"]["image"])[1])  # type: ignore[index]
    assert pg_major >= 16
    redis_major = int(re.search(r"redis:(\d+)", services["redis"]["image"])[1])  # type: ignore[index]
    assert redis_major >= 7  # XAUTOCLAIM, and KEDA's lag trigger
    cmd = services["redis"]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    # the bucket the service uses is created by the one-shot
    init = " ".join(services["minio-init"]["command"])
    bucket = env_of(services["api"])["S4CT_S3_BUCKET"]
    assert f"mc mb --ignore-existing s4ct/{bucket}" in interpolate(init)
    assert "mc mb --ignore-existing s4ct/service4ct-models" in interpolate(init)


def test_healthchecks_and_startup_order() -> None:
    services = compose()["services"]
    one_shots = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shots == {"migrate", "minio-init"}
    for name, svc in services.items():
        if name not in one_shots:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc.get("restart") == "unless-stopped", name
        for dep, cond in svc.get("depends_on", {}).items():
            want = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert cond == {"condition": want}, (name, dep)
    for name in ("api", "worker", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert set(deps) == {"postgres", "redis", "minio", "minio-init", "migrate"}, name
    assert set(services["migrate"]["depends_on"]) == {"postgres"}


def test_worker_stop_grace_covers_the_drain() -> None:
    drain_s = inspect.signature(Worker.stop).parameters["drain_s"].default
    for name in ("worker", "worker-cpu"):
        grace = compose()["services"][name]["stop_grace_period"]
        seconds = int(grace.removesuffix("s"))
        assert seconds >= drain_s + 30, (name, grace)


def test_every_s4ct_variable_is_a_setting_and_the_required_ones_are_set() -> None:
    services = compose()["services"]
    known = setting_env_names()
    for name in APP_SERVICES:
        env = env_of(services[name])
        unknown = sorted(k for k in env if k.startswith("S4CT_") and k not in known)
        assert unknown == [], f"{name}: not settings: {unknown}"
        settings = settings_from_env(env)
        settings.require_services()
        for field in REQUIRED:
            assert getattr(settings, field) is not None, (name, field)
        assert not settings.embedded
    for name, svc in services.items():  # no S4CT_* typo hides in the stores' environments either
        for k in svc.get("environment", {}) or {}:
            assert not k.startswith("S4CT_") or k in known, (name, k)


def test_connection_settings_match_the_services_they_point_at() -> None:
    services = compose()["services"]
    env = env_of(services["api"])
    db = urlsplit(env["S4CT_DATABASE_URL"])
    pg = {k: interpolate(str(v)) for k, v in services["postgres"]["environment"].items()}
    assert (db.hostname, db.port) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert urlsplit(env["S4CT_REDIS_URL"]).hostname == "redis"
    assert urlsplit(env["S4CT_S3_ENDPOINT"]).hostname == "minio"
    minio = {k: interpolate(str(v)) for k, v in services["minio"]["environment"].items()}
    assert env["S4CT_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env["S4CT_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter secrets
    # all app containers see the same connection settings
    for name in APP_SERVICES:
        other = env_of(services[name])
        for field in REQUIRED:
            key = "S4CT_" + field.upper()
            assert other[key] == env[key], (name, key)
    # the API listens where the port mapping and healthcheck expect it
    assert env["S4CT_HOST"] == "0.0.0.0" and env["S4CT_PORT"] == "8000"
    assert services["api"]["ports"] == ["${API_PORT:-8000}:8000"]


def test_interpolation_helper() -> None:
    assert interpolate("${A:-x}/${B}/$$C", {"B": "b"}) == "x/b/$C"
    assert interpolate("${A-y}", {"A": "a"}) == "a"
