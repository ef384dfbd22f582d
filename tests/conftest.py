"""Shared fixtures. Tests use real services and real files; nothing is mocked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # helper modules (zipcraft, reference_preprocess) live beside the tests
    sys.path.insert(0, str(TESTS))

# the session-wide PHI guard (tests/phi_guard.py): its hooks, registered through this conftest
from phi_guard import (  # noqa: E402
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_sessionfinish,
)

__all__ = [
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_sessionfinish",
    "real_ct_zip",
]

REAL_CT = ROOT.parent / "shared" / "data" / "real-ct" / "cap002.zip"


@pytest.fixture(scope="session")
def real_ct_zip() -> Path:
    """The real JPEG-lossless chest CT (COVID-CT-MD sample), skipped when absent."""
    if not REAL_CT.is_file():
        pytest.skip("real CT sample ../shared/data/real-ct/cap002.zip not present")
    return REAL_CT
