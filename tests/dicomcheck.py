"""DICOM object checks shared by tests: dciodvfy (Debian ``dicom3tools``) and read-back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path`` (skips the test when dciodvfy is not installed)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools; `.ci/run` installs it)")
    res = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
