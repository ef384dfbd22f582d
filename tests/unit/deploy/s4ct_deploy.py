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

_INTERP = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def setting_env_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields} | EXTRA_ENV


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose-style ``${VAR:-default}`` / ``${VAR}`` / ``$$`` with ``env`` (default: no variables set)."""
    env = env or {}
    out = _INTERP.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), value)
    return out.replace("$$", "$")


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
