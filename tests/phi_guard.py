"""Session-wide PHI guard: no fake patient identifier in any log line or captured output of a test run.

architecture rule 7 over the whole suite, not one test at a time:

- every loguru record (DEBUG and up) and every std-logging record that reaches the root
  logger in the test process is appended to one session file; the sink is re-attached
  before each test, because ``app.logs.setup_logging`` replaces all sinks;
- pytest's captured stdout / stderr / log of every test phase is scanned too: that
  includes what subprocesses (the CLI) write to the inherited descriptors; a
  subprocess's own log file (``service4ct serve``'s) is added with :func:`watch_log`;
- at the end of the session, any identifier of the phantom fixtures (``ml.phantom``:
  the default fake ones and the conspicuous ``PHI_IDENTIFIERS``) found there fails the run.

``tests/conftest.py`` exposes the hooks below; ``tests/unit/test_phi_guard.py`` plants an
identifier and checks that it is caught.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from loguru import logger

from ml.phantom import PHI_IDENTIFIERS, FakeIdentifiers

__all__ = [
    "PhiGuard",
    "guard_of",
    "identifier_tokens",
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_sessionfinish",
    "watch_log",
]

_KEY = pytest.StashKey["PhiGuard"]()
_EXCERPT = 60


def identifier_tokens() -> list[str]:
    """The identifier strings the phantom fixtures write into DICOM headers and file names.

    Whole values of both identifier sets, and the conspicuous name parts of
    ``PHI_IDENTIFIERS`` (file names spell ``ZZFAKE^PHIPATIENT`` as ``ZZFAKE_PHIPATIENT``).
    """
    out: set[str] = set()
    for ids in (FakeIdentifiers(), PHI_IDENTIFIERS):
        out |= {ids.patient_name, ids.patient_id, ids.birth_date, ids.accession_number}
        out |= {ids.institution_name, ids.referring_physician}
    phi = (
        PHI_IDENTIFIERS.patient_name,
        PHI_IDENTIFIERS.referring_physician,
        PHI_IDENTIFIERS.institution_name,
    )
    out |= {
        p
        for v in phi
        for p in re.split(r"[\^ _]", v)
        if len(p) >= 5 and ("ZZFAKE" in p or p.startswith("PHI"))
    }
    return sorted(out, key=lambda t: (-len(t), t))


class _FileHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(level=0)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception), self.path.open("a", encoding="utf-8") as f:
            f.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")


class PhiGuard:
    """Collects the log lines of a session into ``path`` and finds identifiers in them and in reports."""

    def __init__(self, path: Path, tokens: Iterable[str]) -> None:
        self.path = path
        self.path.touch()
        self.pattern = re.compile("|".join(re.escape(t) for t in tokens), re.IGNORECASE)
        self.findings: list[str] = []
        self.excused: set[str] = set()
        self.watched: list[Path] = []
        self._sink: int | None = None
        self._handler = _FileHandler(path)

    def attach(self) -> None:
        """(Re)attach the loguru sink and the root std-logging handler."""
        if self._sink is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._sink)
        self._sink = logger.add(
            str(self.path), level="DEBUG", format="{level} {name}: {message} {extra}", catch=True
        )
        root = logging.getLogger()
        if self._handler not in root.handlers:
            root.addHandler(self._handler)

    def detach(self) -> None:
        if self._sink is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._sink)
            self._sink = None
        logging.getLogger().removeHandler(self._handler)

    def mark(self) -> int:
        """The current end of the session file (to scan or forget what comes after)."""
        return self.path.stat().st_size

    def forget(self, mark: int) -> None:
        """Drop what was logged after ``mark`` (a self-test's planted lines)."""
        with self.path.open("r+b") as f:
            f.truncate(mark)

    def scan_text(self, text: str, where: str) -> list[str]:
        found = []
        for m in self.pattern.finditer(text):
            a, b = max(0, m.start() - _EXCERPT), m.end() + _EXCERPT
            found.append(f"{where}: {m.group(0)!r} in …{text[a:b]!r}…")
        return found

    def scan_log(self, since: int = 0) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return self.scan_text(text, f"log {self.path}")

    def scan_watched(self) -> list[str]:
        found = []
        for path in self.watched:
            if path.is_file():
                found += self.scan_text(path.read_text("utf-8", "replace"), f"log {path}")
        return found

    def excuse(self, nodeid: str) -> None:
        """Do not scan the captured output of test ``nodeid`` (a self-test that plants identifiers)."""
        self.excused.add(nodeid)

    def scan_report(self, report: pytest.TestReport) -> list[str]:
        if report.nodeid in self.excused:
            return []
        found = []
        for title, text in report.sections:
            found += self.scan_text(text, f"{report.nodeid} [{title}]")
        return found


_guard: list[PhiGuard] = []  # the session's guard (report hooks get no config)


def pytest_configure(config: pytest.Config) -> None:
    path = Path(tempfile.mkdtemp(prefix="s4ct-phi-guard-")) / "session.log"
    guard = PhiGuard(path, identifier_tokens())
    guard.attach()
    config.stash[_KEY] = guard
    _guard[:] = [guard]


def guard_of(config: pytest.Config) -> PhiGuard:
    return config.stash[_KEY]


def watch_log(path: Path) -> None:
    """Scan ``path`` at the end of the session too (a subprocess's own log file, e.g. ``serve.log``)."""
    for guard in _guard:
        guard.watched.append(Path(path))


def pytest_runtest_setup(item: pytest.Item) -> None:
    guard_of(item.config).attach()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    guard_of(item.config).attach()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for guard in _guard:
        guard.findings += guard.scan_report(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    guard = guard_of(session.config)
    guard.detach()
    findings = list(
        dict.fromkeys(guard.findings + guard.scan_log() + guard.scan_watched())
    )  # later phases repeat sections
    if not findings:
        shutil.rmtree(guard.path.parent, ignore_errors=True)
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["PHI guard: patient identifiers in the logs or captured output of this run:", *findings[:50]]
    lines.append(f"(session log kept at {guard.path})")
    if tr is not None:
        tr.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
