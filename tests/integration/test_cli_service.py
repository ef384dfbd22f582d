"""The operator commands against real services: migrate, apikey, and refusal to start unmigrated."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from conftest import LiveApi  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect

ROOT = Path(__file__).resolve().parents[2]


def _cli(settings: Settings, *args: str, db_url: str | None = None, timeout: float = 120) -> Any:
    assert settings.s3_access_key and settings.s3_secret_key
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    env.update(
        {
            "S4CT_DATABASE_URL": db_url or str(settings.database_url),
            "S4CT_REDIS_URL": str(settings.redis_url),
            "S4CT_S3_ENDPOINT": str(settings.s3_endpoint),
            "S4CT_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "S4CT_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "S4CT_S3_BUCKET": settings.s3_bucket,
            "S4CT_DEVICE": "cpu",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_migrate_is_idempotent_and_apikey_works(stack: Any, settings: Settings, api: LiveApi) -> None:
    url = stack.create_database("cli_" + uuid.uuid4().hex[:8])
    first = _cli(settings, "migrate", db_url=url)
    assert first.returncode == 0 and "0001_init.sql" in first.stdout, first.stderr
    again = _cli(settings, "migrate", db_url=url)
    assert again.returncode == 0 and "up to date" in again.stdout
    created = _cli(settings, "apikey", "create", "laravel-prod", "--label", "horizon")
    assert created.returncode == 0, created.stderr
    lines = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    key = lines["api key"].strip()
    assert key.startswith("s4ct_") and "webhook secret" in lines
    with connect(str(settings.database_url)) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE client = 'laravel-prod'").fetchall()
    assert stored and all(key not in r["key_hash"] for r in stored)  # only the hash is stored
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/models").status_code == 200
    listed = _cli(settings, "apikey", "list")
    assert "laravel-prod" in listed.stdout and key not in listed.stdout
    key_id = lines["key id"].strip()
    assert _cli(settings, "apikey", "revoke", key_id).returncode == 0
    assert _cli(settings, "apikey", "revoke", key_id).returncode == 2


def test_api_and_worker_refuse_an_unmigrated_database(stack: Any, settings: Settings) -> None:
    url = stack.create_database("bare_" + uuid.uuid4().hex[:8])
    for cmd in (["worker"], ["api", "--port", "0"]):
        r = _cli(settings, *cmd, db_url=url)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert "service4ct migrate" in r.stderr, r.stderr


def test_missing_settings_are_named(settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "api"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "S4CT_DATABASE_URL" in r.stderr


def test_dicomweb_endpoints_of_a_client(settings: Settings) -> None:
    assert _cli(settings, "apikey", "create", "site-pacs-cli").returncode == 0
    pacs = "http://pacs.hospital.test:8042/dicom-web"
    assert _cli(settings, "dicomweb", "add", "site-pacs-cli", pacs + "/", "--role", "source").returncode == 0
    assert _cli(settings, "dicomweb", "add", "site-pacs-cli", pacs).returncode == 0  # destination
    other = "http://other.hospital.test/dicom-web"
    assert _cli(settings, "dicomweb", "add", "site-pacs-cli", other).returncode == 0  # replaces it
    listed = _cli(settings, "dicomweb", "list", "site-pacs-cli").stdout.split()
    assert listed == ["source", pacs, "destination", other]
    assert _cli(settings, "dicomweb", "add", "site-pacs-cli", "ftp://x", "--role", "source").returncode == 2
    assert _cli(settings, "dicomweb", "add", "site-pacs-cli", pacs, "--role", "both").returncode == 2
    assert _cli(settings, "dicomweb", "remove", "site-pacs-cli", pacs, "--role", "source").returncode == 0
    assert _cli(settings, "dicomweb", "remove", "site-pacs-cli", pacs, "--role", "source").returncode == 2
    assert _cli(settings, "dicomweb", "list", "site-pacs-cli").stdout.split() == ["destination", other]
