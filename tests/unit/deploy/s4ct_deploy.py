"""Helpers of the deployment tests: the files under test, env interpolation, settings from an env."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from app.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
REQUIREMENTS = ROOT / "requirements"

PREFIX = "S4CT_"
#: read by load_settings() itself, not a Settings field
EXTRA_ENV = {"S4CT_CONFIG_FILE"}
#: what Settings.require_services() needs in every API, worker and migrate container
REQUIRED = ("database_url", "redis_url", "s3_endpoint", "s3_access_key", "s3_secret_key")

_INTERP = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
#: an operator's .env for docker-compose.yml (it has no defaults for these: compose refuses to start)
SECRETS_ENV = {
    "POSTGRES_PASSWORD": "pg-secret-1234",
    "REDIS_PASSWORD": "redis-secret-1234",
    "S3_ROOT_USER": "s4ct-admin",
    "S3_ROOT_PASSWORD": "root-secret-1234",
    "S3_ACCESS_KEY": "service4ct",
    "S3_SECRET_KEY": "app-secret-1234",
}


class MissingVariableError(KeyError):
    """A ``${VAR:?message}`` variable is not set: compose refuses to start."""


def setting_env_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields} | EXTRA_ENV


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose-style ``${VAR:-default}`` / ``${VAR:?error}`` / ``${VAR}`` / ``$$`` with ``env``
    (default: :data:`SECRETS_ENV`); a required variable that is unset raises :class:`MissingVariableError`."""
    variables = SECRETS_ENV if env is None else env

    def sub(m: re.Match[str]) -> str:
        got = variables.get(m["name"])
        if got:
            return got
        if m["op"] and m["op"].endswith("?"):
            raise MissingVariableError(f"{m['name']}: {m['arg']}")
        return (m["arg"] or "") if m["op"] else ""

    return _INTERP.sub(sub, value).replace("$$", "$")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@contextmanager
def only_env(env: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly these S4CT_* variables in os.environ (others removed, restored after)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith(PREFIX)})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith(PREFIX)]:
            del os.environ[k]
        os.environ.update(saved)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """What ``service4ct api|worker|migrate`` would build from this environment."""
    with only_env(env):
        return load_settings()
