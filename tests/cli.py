"""Run the service4ct command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``service4ct ARGS`` from the repository root (``env``: its whole environment, default ours)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli_on(database_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``service4ct ARGS`` configured by ``S4CT_DATABASE_URL`` alone (no other S4CT_* setting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4CT_")}
    return run_cli(*args, timeout=timeout, env={**env, "S4CT_DATABASE_URL": database_url})
