"""Webhook signatures and the delivery backoff."""

from __future__ import annotations

import random

from app.outbox import backoff_s
from app.webhooks import sign, verify


def test_webhook_signature_roundtrip_and_tamper() -> None:
    body = b'{"job_id":"x","state":"succeeded"}'
    header = sign("s3cret", body, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert verify("s3cret", body, header, now=1_700_000_100)
    assert not verify("other", body, header, now=1_700_000_100)
    assert not verify("s3cret", body + b" ", header, now=1_700_000_100)
    assert not verify("s3cret", body, header, now=1_700_001_000)  # too old: replay refused
    assert not verify("s3cret", body, "garbage", now=1_700_000_100)


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    rng = random.Random(0)
    delays = [backoff_s(n, 2.0, 60.0, rng) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        nominal = min(60.0, 2.0 * 2 ** (n - 1))
        assert 0.8 * nominal <= d <= 1.2 * nominal


def test_v2_signature_covers_the_delivery_id_and_the_event() -> None:
    body = b'{"job_id":"x","state":"succeeded"}'
    header = sign("s3cret", body, timestamp=1_700_000_000, delivery="42", event="job.succeeded")
    t, v1, v2 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and v2.startswith("v2=") and len(v2) == 3 + 64
    now = 1_700_000_100
    assert verify("s3cret", body, header, now=now)  # v1 receivers keep working
    assert verify("s3cret", body, header, now=now, delivery="42", event="job.succeeded")
    assert not verify("s3cret", body, header, now=now, delivery="43", event="job.succeeded")
    assert not verify("s3cret", body, header, now=now, delivery="42", event="job.failed")
    assert not verify("s3cret", body + b" ", header, now=now, delivery="42", event="job.succeeded")
    assert not verify("other", body, header, now=now, delivery="42", event="job.succeeded")
    v1_only = sign("s3cret", body, timestamp=1_700_000_000)  # a v2 check needs the v2 MAC
    assert not verify("s3cret", body, v1_only, now=now, delivery="42", event="job.succeeded")


def test_during_a_rotation_either_secret_verifies_and_a_third_does_not() -> None:
    body, t = b'{"event":"job.started"}', 1_700_000_000
    header = sign(["new", "old"], body, timestamp=t, delivery="7", event="job.started")
    assert header.startswith(f"t={t},v1=") and header.count("v1=") == header.count("v2=") == 2
    assert header == sign("new", body, timestamp=t, delivery="7", event="job.started") + "," + sign(
        "old", body, timestamp=t, delivery="7", event="job.started"
    ).removeprefix(f"t={t},")
    for secret in ("new", "old"):
        assert verify(secret, body, header, now=t, delivery="7", event="job.started")
        assert verify(secret, body, header, now=t)  # v1 too
    assert not verify("other", body, header, now=t, delivery="7", event="job.started")
    assert not verify("old", body, header, now=t, delivery="8", event="job.started")
    assert not verify("new", body, f"t={t - 1}," + header, now=t, delivery="7", event="job.started")
