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
from s4ct_deploy import (
    COMPOSE,
    REQUIRED,
    ROOT,
    SECRETS_ENV,
    MissingVariableError,
    interpolate,
    setting_env_names,
    settings_from_env,
)

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
    redis = urlsplit(env["S4CT_REDIS_URL"])
    cmd = [interpolate(str(a)) for a in services["redis"]["command"]]
    assert redis.password == cmd[cmd.index("--requirepass") + 1] == env_of(services["redis"])["REDISCLI_AUTH"]
    minio = env_of(services["minio"])
    init = env_of(services["minio-init"])
    # the services use the user minio-init creates, never MinIO's root account
    assert (env["S4CT_S3_ACCESS_KEY"], env["S4CT_S3_SECRET_KEY"]) == (
        init["S3_ACCESS_KEY"],
        init["S3_SECRET_KEY"],
    )
    assert env["S4CT_S3_ACCESS_KEY"] != minio["MINIO_ROOT_USER"]
    assert (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    for name in APP_SERVICES:
        assert not set(env_of(services[name]).values()) & {minio["MINIO_ROOT_PASSWORD"]}, name
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
    assert interpolate("${A:?set A}", {"A": "a"}) == "a"
    with pytest.raises(MissingVariableError, match="set A"):
        interpolate("${A:?set A}", {})


SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "S3_ROOT_USER",
    "S3_ROOT_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
)


def _walk_strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _walk_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _walk_strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_compose_refuses_to_start_without_its_secrets() -> None:
    """No fixed credential falls back: each secret is ``${NAME:?...}`` wherever it is used."""
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(\W[^}]*)?\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)
        env = {k: v for k, v in SECRETS_ENV.items() if k != name}
        with pytest.raises(MissingVariableError, match=name):
            for s in _walk_strings(compose()):
                interpolate(s, env)
    example = (ROOT / ".env.example").read_text()
    assert set(re.findall(r"^([A-Z0-9_]+)=", example, re.M)) >= set(SECRETS)
    assert re.search(r"^/?\.env$", (ROOT / ".gitignore").read_text(), re.M), ".env must be ignored by git"


def test_minio_is_published_on_loopback_only_and_the_service_user_is_least_privilege() -> None:
    services = compose()["services"]
    assert [p.split(":")[0] for p in services["minio"]["ports"]] == ["127.0.0.1"]
    script = interpolate(" ".join(services["minio-init"]["command"]))
    for step in (
        "mc admin policy create s4ct service4ct-app",
        'mc admin user add s4ct "$S3_ACCESS_KEY" "$S3_SECRET_KEY"',
        'mc admin policy attach s4ct service4ct-app --user "$S3_ACCESS_KEY"',
    ):
        assert step in script, step
    policy = json.loads(script[script.index("{") : script.rindex("}") + 1])
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {
        "arn:aws:s3:::service4ct",
        "arn:aws:s3:::service4ct/*",
        "arn:aws:s3:::service4ct-models",
        "arn:aws:s3:::service4ct-models/*",
    }
    models = next(st for st in policy["Statement"] if "arn:aws:s3:::service4ct-models" in st["Resource"])
    assert not any(a.startswith(("s3:Put", "s3:Delete", "s3:*")) for a in models["Action"])


def test_registry_images_are_pinned_by_digest() -> None:
    services = compose()["services"]
    for name in ("postgres", "redis", "minio", "minio-init"):
        image = interpolate(services[name]["image"], {})
        assert re.search(r"@sha256:[0-9a-f]{64}$", image), (name, image)


class _TagLoader(yaml.SafeLoader):
    """Reads compose's !override / !reset tags (a merge directive; the value itself here)."""


for _tag in ("!override", "!reset"):
    _TagLoader.add_constructor(_tag, lambda loader, node: loader.construct_sequence(node, deep=True))


def test_offline_override_swaps_only_the_stores_and_the_bucket_job() -> None:
    offline = yaml.load((ROOT / "deploy/docker/offline/compose.yml").read_text(), Loader=_TagLoader)
    services = offline["services"]
    assert set(services) == {"postgres", "redis", "minio", "minio-init"}
    for name in ("postgres", "redis", "minio"):
        assert interpolate(services[name]["image"], {}).startswith("localhost/service4ct-offline/"), name
    assert services["minio"]["command"] == []  # MinIO's `server /data` does not reach SeaweedFS
    assert interpolate(services["minio-init"]["image"], {}) == "service4ct-api:local"
    script = services["minio-init"]["command"][0]
    assert all(f'"{b}"' in script for b in ("service4ct", "service4ct-models"))
    images = (ROOT / "deploy/docker/offline/Dockerfile").read_text()
    for target in ("postgres", "redis", "s3"):
        assert f" AS {target}\n" in images, target


def test_staged_start_knows_the_stores_and_one_shots() -> None:
    services = compose()["services"]
    script = (ROOT / "deploy/docker/stack.sh").read_text()
    one_shots = sorted(n for n, s in services.items() if s.get("restart") == "no")
    stores = sorted(n for n, s in services.items() if "build" not in s and s.get("restart") != "no")
    listed = re.search(r"^one_shots=\((.*)\)$", script, re.M)[1].split()  # type: ignore[index]
    assert listed == ["minio-init", "migrate"] and sorted(listed) == one_shots
    assert sorted(re.search(r"^stores=\((.*)\)$", script, re.M)[1].split()) == stores  # type: ignore[index]
    # the order of the stages
    up = script[script.index("  up)") :]
    assert up.index('"${stores[@]}"') < up.index('"${one_shots[@]}"') < up.index('"${apps[@]}"')
