"""PHI scrubbing of log records."""

from __future__ import annotations

import io
import json
import logging

from app.logs import REDACTED, PhiScrubber, logger, scrubber, setup_logging


def test_scrubber_redacts_registered_tokens_case_insensitively() -> None:
    s = PhiScrubber()
    assert s.scrub("nothing registered") == "nothing registered"
    s.register(["DOE^JANE", "DOE", "JANE", "PID-0042", "ab"])  # 'ab' too short to register
    assert s.scrub("patient doe^jane id PID-0042 lab ab") == f"patient {REDACTED} id {REDACTED} lab ab"
    assert s.scrub_value({"k": ["Jane", 3]}) == {"k": [REDACTED, 3]}


def test_log_records_are_scrubbed_in_json_sink_including_std_logging() -> None:
    buf = io.StringIO()
    setup_logging("DEBUG", json=True, sink=buf)
    try:
        scrubber.register(["SMITH^JOHN", "S4CT-FAKE-991"])
        logger.bind(study="S4CT-FAKE-991").info("loaded SMITH^JOHN")
        logging.getLogger("ml.something").warning("std logging mentions s4ct-fake-991")
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        text = buf.getvalue()
        assert len(lines) == 2
        assert "SMITH" not in text and "fake-991" not in text.lower()  # (bare digits can be a thread id)
        assert REDACTED in lines[0]["record"]["message"]
    finally:
        scrubber.clear()
        setup_logging("WARNING")


def test_exception_text_is_scrubbed() -> None:
    buf = io.StringIO()
    setup_logging("DEBUG", json=False, sink=buf)
    try:
        name = "".join(["DOE", "^", "JANE"])  # not a literal: tracebacks quote source lines
        scrubber.register([name])
        try:
            raise ValueError(f"bad PatientName {name}")
        except ValueError:
            logger.exception("decode failed")
        text = buf.getvalue()
        assert "decode failed" in text and "ValueError" in text
        assert "DOE^JANE" not in text and REDACTED in text
    finally:
        scrubber.clear()
        setup_logging("WARNING")


def test_urls_in_log_records_lose_their_credentials_and_query() -> None:
    """httpx logs each request's URL (INFO, std logging): a callback URL's secrets stay out."""
    buf = io.StringIO()
    setup_logging("DEBUG", json=True, sink=buf)
    try:
        logging.getLogger("httpx").info(
            'HTTP Request: POST https://bob:hunter2@hooks.example/cb?token=t0psecret "HTTP/1.1 200 OK"'
        )
        logger.info("services: redis redis://:r3dispw@127.0.0.1:6379/0")
        text = buf.getvalue()
        assert len(text.splitlines()) == 2
        assert "hunter2" not in text and "t0psecret" not in text and "r3dispw" not in text
        assert "https://***@hooks.example/cb?…" in text
    finally:
        setup_logging("WARNING")
