"""Claiming, leases, attempts and the Redis Streams queue (real PostgreSQL and Redis, no worker)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from app.config import Settings
from app.db import Conn, connect
from app.queue import JobQueue
from app.repository import (
    Job,
    claim_job,
    create_api_key,
    extend_leases,
    fail_exhausted,
    finish_job,
    insert_job,
    insert_study,
    release_job,
    requeue_expired,
    set_stage,
)


def _job(conn: Conn, max_attempts: int = 3) -> Job:
    create_api_key(conn, "q-client")
    sha = uuid.uuid4().hex * 2
    study, _ = insert_study(
        conn,
        study_id=uuid.uuid4(),
        client="q-client",
        sha256=sha,
        size_bytes=10,
        s3_key="k",
        members=1,
        uncompressed_bytes=10,
    )
    return insert_job(
        conn,
        client="q-client",
        study=study,
        model="m",
        series_uid=None,
        explain="none",
        explain_params={},
        callback_url=None,
        max_attempts=max_attempts,
    )


@pytest.fixture()
def conn(settings: Settings) -> Any:
    assert settings.database_url
    with connect(settings.database_url) as c:
        yield c


@pytest.fixture()
def jq(settings: Settings) -> Any:
    assert settings.redis_url
    q = JobQueue.from_url(settings.redis_url, f"s4ct:test:{uuid.uuid4().hex[:8]}", "workers")
    q.ensure_group()
    q.ensure_group()  # idempotent
    yield q
    q.r.delete(*q.streams)
    q.close()


def test_claim_is_exclusive_and_writes_are_guarded_by_attempt(conn: Conn) -> None:
    job = _job(conn)
    first = claim_job(conn, job.id, "w1", lease_s=30)
    assert first is not None and first.attempt == 1 and first.state == "running"
    assert claim_job(conn, job.id, "w2", lease_s=30) is None  # lease still held
    # the lease runs out (set, not slept: a stalled CI machine must not expire it early)
    conn.execute("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = %s", (job.id,))
    second = claim_job(conn, job.id, "w2", lease_s=30)
    assert second is not None and second.attempt == 2
    # the stale attempt can neither report progress, extend its lease nor finish
    assert not set_stage(conn, job.id, 1, "inference", 0.5)
    assert extend_leases(conn, [(job.id, 1)], 30) == set()
    assert finish_job(conn, job.id, 1, timings={}) is None
    assert release_job(conn, job.id, 1, "x") is None
    assert set_stage(conn, job.id, 2, "inference", 0.5)
    assert extend_leases(conn, [(job.id, 2)], 30) == {job.id}
    assert finish_job(conn, job.id, 2, timings={"total": 1.0}) is not None
    assert claim_job(conn, job.id, "w3", lease_s=30) is None  # finished jobs are never claimed again


def test_attempts_run_out_into_worker_crashed(conn: Conn) -> None:
    job = _job(conn, max_attempts=2)
    for attempt in (1, 2):
        got = claim_job(conn, job.id, f"w{attempt}", lease_s=0.1)
        assert got is not None and got.attempt == attempt
        time.sleep(0.15)
        if attempt == 1:
            assert job.id in requeue_expired(conn)
    assert claim_job(conn, job.id, "w3", lease_s=30) is None
    failed = fail_exhausted(conn)
    assert [j.id for j in failed] == [job.id]
    row = conn.execute("SELECT state, error_code FROM jobs WHERE id = %s", (job.id,)).fetchone()
    assert row == {"state": "failed", "error_code": "worker_crashed"}


def test_release_requeues_until_attempts_run_out(conn: Conn) -> None:
    job = _job(conn, max_attempts=2)
    claim_job(conn, job.id, "w", lease_s=30)
    assert release_job(conn, job.id, 1, "boom") == "queued"
    claim_job(conn, job.id, "w", lease_s=30)
    assert release_job(conn, job.id, 2, "boom") == "failed"
    row = conn.execute("SELECT state, error_code FROM jobs WHERE id = %s", (job.id,)).fetchone()
    assert row == {"state": "failed", "error_code": "internal_error"}


def test_graceful_release_is_not_charged(conn: Conn) -> None:
    job = _job(conn, max_attempts=1)
    claim_job(conn, job.id, "w", lease_s=30)
    assert release_job(conn, job.id, 1, "worker stopped", spend=False) == "queued"
    row = conn.execute("SELECT state, attempt, max_attempts FROM jobs WHERE id = %s", (job.id,)).fetchone()
    assert row == {"state": "queued", "attempt": 1, "max_attempts": 2}
    claimed = claim_job(conn, job.id, "w2", lease_s=30)
    assert claimed is not None and claimed.attempt == 2  # attempts still only grow
    assert release_job(conn, job.id, 1, "late", spend=False) is None  # the old attempt is out


def test_stream_read_ack_autoclaim_reconcile(jq: JobQueue) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    assert jq.enqueue(ids) == 3
    got = jq.read("c1", count=2, block_ms=100)
    assert [m.job_id for m in got] == ids[:2]
    jq.ack(got[0].entry_id)
    # c1 "dies" holding ids[1]: another consumer takes it over once idle
    time.sleep(0.05)
    taken = jq.autoclaim("c2", min_idle_ms=10, count=10)
    assert [m.job_id for m in taken] == [ids[1]]
    assert jq.job_ids_in_stream() == {ids[1], ids[2]}  # acked entries are deleted
    # Redis loses everything: the reconciler adds back only what is missing
    jq.r.delete(jq.stream)
    jq.ensure_group()
    extra = uuid.uuid4()
    jq.enqueue([extra])
    assert sorted(map(str, jq.reconcile([ids[1], ids[2], extra]))) == sorted(map(str, [ids[1], ids[2]]))
    assert jq.depth() == 3
    # a malformed entry is surfaced with job_id None (the worker acks and drops it)
    jq.r.xadd(jq.stream, {"job_id": "garbage"})
    msgs = jq.read("c3", count=10, block_ms=100)
    assert any(m.job_id is None for m in msgs)


def test_urgent_lane_is_read_first(jq: JobQueue) -> None:
    routine = [uuid.uuid4() for _ in range(3)]
    urgent = uuid.uuid4()
    jq.enqueue(routine)
    jq.enqueue([urgent], urgent=True)
    first = jq.read("c1", count=1, block_ms=100)
    assert [m.job_id for m in first] == [urgent] and first[0].stream == jq.urgent_stream
    nxt = jq.read("c1", count=2, block_ms=100)
    assert [m.job_id for m in nxt] == routine[:2]
    assert jq.depth() == 4
    for m in first + nxt:  # each entry is acknowledged in its own lane
        jq.ack(m)
    assert jq.depth() == 1 and jq.job_ids_in_stream() == {routine[2]}
    # a blocking read wakes for either lane; urgent entries come first
    jq.enqueue([uuid.uuid4()], urgent=True)
    assert jq.read("c2", count=5, block_ms=100)[0].stream == jq.urgent_stream
    # the reconciler puts lost jobs back in their lane; autoclaim takes over both lanes, urgent first
    jq.r.delete(*jq.streams)
    jq.ensure_group()
    lost = [uuid.uuid4(), uuid.uuid4()]
    assert jq.reconcile(lost, urgent={lost[1]}) == lost
    assert [m.job_id for m in jq.read("c3", count=2, block_ms=100)] == [lost[1], lost[0]]
    time.sleep(0.05)
    taken = jq.autoclaim("c4", min_idle_ms=10, count=10)
    assert [(m.job_id, m.stream) for m in taken] == [(lost[1], jq.urgent_stream), (lost[0], "")]


def test_queue_reports_redis_down(settings: Settings) -> None:
    q = JobQueue.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(redis.ConnectionError):
        q.ping()
