"""The session-wide PHI guard (tests/phi_guard.py) really catches a planted identifier."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from phi_guard import PhiGuard, guard_of, identifier_tokens  # type: ignore[import-not-found]

from app.logs import scrubber
from ml.phantom import PHI_IDENTIFIERS, FakeIdentifiers


def test_tokens_cover_both_identifier_sets() -> None:
    tokens = identifier_tokens()
    for ids in (PHI_IDENTIFIERS, FakeIdentifiers()):
        assert {ids.patient_name, ids.patient_id, ids.birth_date} <= set(tokens)
    assert "ZZFAKE" in tokens and "PHIPATIENT" in tokens  # as spelled in the phantom's file names
    assert not any(t.isdigit() and len(t) < 8 for t in tokens)  # no short numbers (ports, sizes)


@pytest.fixture
def unscrubbed() -> Iterator[None]:
    """The app's scrubber off: earlier tests of the session may have registered these identifiers."""
    saved = scrubber.tokens()
    scrubber.clear()
    try:
        yield
    finally:
        scrubber.register(saved)


def test_planted_identifiers_in_logs_are_found_and_clean_lines_are_not(
    request: pytest.FixtureRequest, unscrubbed: None
) -> None:
    guard: PhiGuard = guard_of(request.config)
    guard.excuse(request.node.nodeid)  # the planted lines also reach this test's captured output
    mark = guard.mark()
    try:
        logger.info("study 1f0c stored: 12 files, 3 series")  # ids and counts only: clean
        logging.getLogger("s4ct.selftest").warning("job a2b3 failed with too_few_slices")
        assert guard.scan_log(mark) == []
        logger.bind(study=PHI_IDENTIFIERS.patient_id).info("planted via an extra field")
        logging.getLogger("s4ct.selftest").error("planted %s", PHI_IDENTIFIERS.patient_name.lower())
        logger.debug("planted {}", "ZZFAKE_PHIPATIENT_CONSPICUOUS_SER3/0001.dcm")
        found = "\n".join(guard.scan_log(mark))
        assert PHI_IDENTIFIERS.patient_id in found
        assert PHI_IDENTIFIERS.patient_name.lower() in found
        assert "ZZFAKE" in found
    finally:
        guard.forget(mark)  # the planted lines must not fail this session
    assert guard.scan_log(mark) == []


def test_planted_identifier_in_captured_subprocess_output_is_found(pytestconfig: pytest.Config) -> None:
    """What a child process writes to the inherited stderr reaches the report sections that are scanned."""
    guard: PhiGuard = guard_of(pytestconfig)
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.stderr.write('child says {FakeIdentifiers().patient_id}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    report = pytest.TestReport(
        nodeid="planted::case",
        location=("planted", 0, "case"),
        keywords={},
        outcome="passed",
        longrepr=None,
        when="call",
        sections=[("Captured stderr call", out), ("Captured log call", "INFO clean line")],
    )
    (finding,) = guard.scan_report(report)
    assert "planted::case [Captured stderr call]" in finding and "S4CT-PHANTOM-0001" in finding
    guard.excuse(report.nodeid)
    assert guard.scan_report(report) == []


def test_planted_identifier_in_a_watched_log_file_is_found(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text(
        f"INFO study stored\nINFO reading {PHI_IDENTIFIERS.patient_name.replace('^', '_')}/0001.dcm\n"
    )
    guard = PhiGuard(tmp_path / "session.log", identifier_tokens())
    assert guard.scan_watched() == []
    guard.watched.append(log)
    found = "\n".join(guard.scan_watched())
    assert "ZZFAKE" in found and str(log) in found
