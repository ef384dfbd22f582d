"""The operator commands against real services: migrate, apikey, and refusal to start unmigrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli import run_cli  # type: ignore[import-not-found]
from conftest import LiveApi, wait_for  # type: ignore[import-not-found]

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
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/models").status_code == 200  # cached as valid in the API now
        revoked = _cli(settings, "apikey", "revoke", key_id)
        done = time.monotonic()
        assert revoked.returncode == 0 and "dropped by" in revoked.stdout, revoked.stdout
        assert "dropped by 0 " not in revoked.stdout  # this module's API listens
        # the revocation is broadcast through Redis: refused at once, not after the cache TTL
        wait_for(lambda: c.get("/v1/models").status_code == 401, timeout=5, interval=0.05, what="revocation")
        assert time.monotonic() - done < 1.0
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


def test_a_database_that_is_not_utf8_is_refused_before_anything_is_written(
    stack: Any, settings: Settings
) -> None:
    """SQL_ASCII (initdb without a locale): psycopg returns text as bytes there, so the runner would
    not recognise its own ledger. migrate, api and worker refuse it with a stable code instead."""
    import psycopg
    from psycopg import sql

    from app.migrate import DatabaseEncodingError, check, migrate

    name = "ascii_" + uuid.uuid4().hex[:8]
    with psycopg.connect(stack.postgres.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    url = stack.postgres.url_for(name)
    with connect(url) as conn:
        row = conn.execute("SELECT 'x'::text AS v").fetchone()
        assert row is not None and row["v"] == b"x"  # the hazard the check guards against
        for call in (migrate, check):
            with pytest.raises(DatabaseEncodingError, match="database_encoding_unsupported"):
                call(conn)
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS ok").fetchone()
        assert exists is not None and exists["ok"] is False  # nothing was written
    for cmd in (["migrate"], ["api", "--port", "0"]):
        r = _cli(settings, *cmd, db_url=url)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert "error: database_encoding_unsupported" in r.stderr and "SQL_ASCII" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_operator_commands_find_the_stack_serve_published(
    settings: Settings, api: LiveApi, tmp_path: Path
) -> None:
    from app.devstack.serve import CONNECTION_FILE, publish_connection

    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    env["S4CT_VAR_DIR"] = str(tmp_path)

    def cli(*args: str) -> Any:
        return run_cli(*args, timeout=120, env=env)

    # nothing published: the error says where it looked
    missing = cli("apikey", "list")
    assert missing.returncode == 2 and str(tmp_path) in missing.stderr, missing.stderr
    # what a running `service4ct serve` (this process, here) publishes: owner-only, no environment needed
    path = publish_connection(settings, tmp_path)
    assert path == tmp_path / CONNECTION_FILE and path.stat().st_mode & 0o777 == 0o600
    created = cli("apikey", "create", "from-var", "--label", "no env")
    assert created.returncode == 0, created.stderr
    key = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)["api key"].strip()
    with httpx.Client(base_url=api.base, headers={"Authorization": f"Bearer {key}"}) as c:
        assert c.get("/v1/jobs").status_code == 200
    assert "from-var" in cli("apikey", "list").stdout
    assert cli("migrate").stdout.strip() == "database is up to date"
    # a file left by a serve that is gone is ignored
    data = json.loads(path.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({**data, "pid": dead.pid}))
    assert cli("apikey", "list").returncode == 2


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
