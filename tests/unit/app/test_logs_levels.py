"""Std-logging records below the configured level are never formatted (app.logs.setup_logging).

botocore's DEBUG records of an upload part quote the whole part: formatted and then dropped,
they cost the API seconds of CPU and ~100 MiB per large upload.
"""

from __future__ import annotations

import logging
from typing import Any

from app.logs import setup_logging


class _Expensive:
    formatted = 0

    def __repr__(self) -> str:
        type(self).formatted += 1
        return "<expensive>"


def test_records_below_the_level_are_not_formatted() -> None:
    lines: list[Any] = []
    setup_logging("INFO", sink=lines.append)
    try:
        lib = logging.getLogger("botocore.endpoint")
        lib.debug("Making request with params %r", _Expensive())
        assert _Expensive.formatted == 0 and not lines
        lib.warning("kept %r", _Expensive())
        assert _Expensive.formatted == 1 and any("kept <expensive>" in str(m) for m in lines)
    finally:
        setup_logging("INFO")
