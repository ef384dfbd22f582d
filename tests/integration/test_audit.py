"""The audit log through the real API and CLI: reads and deletions of results, explanations,
studies and jobs, by API key and by viewer token, with their request ids."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from typing import Any

import orjson
from cli import run_cli_on  # type: ignore[import-not-found]
from conftest import LiveApi, new_key  # type: ignore[import-not-found]
from seeding import create_job, finish_succeeded, small_zip, upload  # type: ignore[import-not-found]

from app.config import Settings
from app.db import connect


def _audit_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_on(str(settings.database_url), "audit", *args)


def test_reads_and_deletions_are_audited_with_key_and_request_id(api: LiveApi, settings: Settings) -> None:
    client = f"audit-{uuid.uuid4().hex[:8]}"
    key = new_key(settings, client)
    with connect(str(settings.database_url)) as conn:
        key_id = str(conn.execute("SELECT id FROM api_keys WHERE client = %s", (client,)).fetchone()["id"])
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    expected: list[tuple[str, str, str, str, str]] = []  # via, action, object, id, request id

    def call(c: Any, method: str, path: str, via: str, action: str, obj: str, oid: str, status: int) -> None:
        r = c.request(method, path)
        assert r.status_code == status, r.text
        expected.append((via, action, obj, oid, r.headers["X-Request-ID"]))

    with api.client(key) as c, api.client(new_key(settings, f"{client}-other")) as other:
        study = upload(c, small_zip(client))
        job = create_job(c, study)
        finish_succeeded(api, job)
        call(c, "GET", f"/v1/studies/{study}", "api_key", "read", "study", study, 200)
        call(c, "GET", f"/v1/jobs/{job}/result", "api_key", "read", "result", job, 200)
        call(c, "GET", f"/v1/jobs/{job}/explanation", "api_key", "read", "explanation", job, 200)
        token = c.post(f"/v1/jobs/{job}/viewer-token").json()["token"]
        with api.client(token) as viewer:
            call(viewer, "GET", f"/v1/jobs/{job}/result", "viewer_token", "read", "result", job, 200)
        # refused requests read nothing: not audited
        assert other.get(f"/v1/jobs/{job}/result").status_code == 404
        assert c.get(f"/v1/jobs/{uuid.uuid4()}/result").status_code == 404
        assert c.get(f"/v1/jobs/{create_job(c, study)}/result").status_code == 409
        call(c, "DELETE", f"/v1/jobs/{job}", "api_key", "delete", "job", job, 204)
        call(c, "DELETE", f"/v1/studies/{study}", "api_key", "delete", "study", study, 204)

    r = _audit_cli(settings, "--since", since, "--client", client, "--json")
    assert r.returncode == 0, r.stderr
    rows = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [(o["via"], o["action"], o["object"], o["object_id"], o["request_id"]) for o in rows] == expected
    assert {o["client"] for o in rows} == {client} and {o["key_id"] for o in rows} == {key_id}
    fields = {"at", "client", "key_id", "key", "via", "action", "object", "object_id", "request_id"}
    assert set(rows[0]) == fields  # ids and names only: nothing from the study
    assert key.startswith(rows[0]["key"])  # the key's public prefix, never the key

    table = _audit_cli(settings, "--since", since[:10], "--client", client)
    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].split()[:3] == ["at", "client", "key"], table.stderr
    assert len(lines) == 1 + len(expected) and all(client in line for line in lines[1:])
    future = _audit_cli(settings, "--since", "2999-01-01", "--json")
    assert future.returncode == 0 and future.stdout == ""
