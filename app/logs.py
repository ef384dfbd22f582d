"""Logging: loguru with a JSON or text sink, std-logging interception, PHI scrubbing.

Nothing should ever log a patient identifier in the first place (architecture rule 7);
the scrubber is the second line of defence. Identifier values read from a study's
headers are registered with :data:`scrubber` and replaced by ``[redacted]`` in
every log record (message and extra fields) from then on.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loguru import logger

from app.callbacks import redact_urls

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["REDACTED", "PhiScrubber", "logger", "scrubber", "setup_logging"]

REDACTED = "[redacted]"


class PhiScrubber:
    """Redacts registered identifier strings (case-insensitive) from text."""

    def __init__(self, max_tokens: int = 10_000) -> None:
        self._tokens: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self._max = max_tokens

    def register(self, tokens: Iterable[str]) -> None:
        new = {t for t in tokens if len(t) >= 3}
        with self._lock:
            if new <= self._tokens:
                return
            self._tokens |= new
            if len(self._tokens) > self._max:  # bounded memory in a long-running worker
                self._tokens = set(list(self._tokens)[-self._max :])
            alts = sorted(self._tokens, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(t) for t in alts), re.IGNORECASE)

    def tokens(self) -> frozenset[str]:
        """The registered identifier strings (to restore after :meth:`clear`)."""
        with self._lock:
            return frozenset(self._tokens)

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._pattern = None

    def scrub(self, text: str) -> str:
        pat = self._pattern
        return pat.sub(REDACTED, text) if pat is not None else text

    def scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub_value(v) for v in value)
        return value


scrubber = PhiScrubber()


class ScrubbedError(Exception):
    """Stands in for a logged exception whose message went through the scrubber."""


def _patch(record: Record) -> None:
    # every top-level text field: the message, and any raw copy of it a loguru version
    # adds (loguru 0.8 serialises the unformatted ``template`` beside the message)
    fields: dict[str, Any] = record  # type: ignore[assignment]
    for key, value in list(fields.items()):
        if isinstance(value, str):
            fields[key] = redact_urls(scrubber.scrub(value))
    for k, v in list(record["extra"].items()):
        record["extra"][k] = scrubber.scrub_value(v)
    exc = record["exception"]
    if exc is not None and exc.value is not None:
        # exception texts may quote header values: log a scrubbed copy of the message
        scrubbed = ScrubbedError(
            f"{exc.type.__name__ if exc.type else 'Error'}: {scrubber.scrub(str(exc.value))}"
        )
        record["exception"] = exc._replace(type=ScrubbedError, value=scrubbed)


class _InterceptHandler(logging.Handler):
    """Routes std-logging records (ml/, libraries) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=None).log(level, record.getMessage())


def setup_logging(level: str = "INFO", json: bool = False, sink: Any = None) -> None:
    """Configure the process-wide logger once (call at process start)."""
    logger.remove()
    logger.configure(patcher=_patch)
    fmt = "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level} {name}: {message} {extra}"
    logger.add(
        sink or sys.stderr, level=level.upper(), serialize=json, format=fmt, backtrace=False, diagnose=False
    )
    # std-logging records below the level are dropped before they are formatted: botocore's DEBUG
    # records of an upload part quote the whole part (measured: 2 s of CPU and +100 MiB of API RSS
    # for a 64 MiB upload when every record was formatted and then dropped by loguru)
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(
        handlers=[_InterceptHandler()], level=numeric if isinstance(numeric, int) else 0, force=True
    )
