"""The TypeScript client (clients/typescript) against the real service: the API on loopback, a
worker in this process, the embedded PostgreSQL, Redis and S3. Node drives it (``node --test``).

Skips with a clear message where Node/npm are missing or ``npm ci`` cannot run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveApi, new_key  # type: ignore[import-not-found]

from app.config import Settings
from clients import generate
from ml.phantom import make_study


def test_the_typescript_client_against_the_service(
    api: LiveApi, worker: Any, settings: Settings, tmp_path: Path
) -> None:
    reason = generate.node_modules()
    if reason is not None:
        pytest.skip(f"TypeScript client not tested: {reason}")
    generate.build_typescript()
    study = tmp_path / "study.zip"
    make_study(study, seed=11, label=1)
    env = {
        **os.environ,
        "S4CT_API_BASE": api.base,
        "S4CT_API_KEY": new_key(settings, "ts-client"),
        "S4CT_STUDY_ZIP": str(study),
    }
    done = subprocess.run(
        ["node", "--test", "--test-concurrency=1", "test/client.test.mjs"],
        check=False,
        cwd=generate.TS,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "# fail 0" in done.stdout
