"""Redis Streams job queue: ids only, PostgreSQL is the truth (architecture rule 1).

The API adds a job id after the job row committed (:meth:`JobQueue.enqueue`).
Workers read through one consumer group, claim the job in PostgreSQL, and
acknowledge *and delete* the entry when they are done with it, so the stream
holds only entries not yet finished. That makes reconciliation simple: a
``queued`` job whose id is not in the stream was lost (Redis restarted without
its data, or the API died between commit and XADD) and is added again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

__all__ = ["JobMessage", "JobQueue"]


@dataclass(frozen=True)
class JobMessage:
    """One stream entry: the Redis entry id and the job id it carries."""

    entry_id: str
    job_id: uuid.UUID | None  # None for a malformed entry (acknowledged and dropped by the worker)


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class JobQueue:
    """The ``s4ct:jobs`` stream and its consumer group."""

    def __init__(self, client: redis.Redis, stream: str = "s4ct:jobs", group: str = "workers") -> None:
        self.r = client
        self.stream = stream
        self.group = group

    @classmethod
    def from_url(cls, url: str, stream: str = "s4ct:jobs", group: str = "workers") -> JobQueue:
        client = redis.Redis.from_url(
            url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, stream, group)

    def close(self) -> None:
        self.r.close()

    def ping(self) -> None:
        self.r.ping()

    def ensure_group(self) -> None:
        """Create the stream and the group if missing (idempotent)."""
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def enqueue(self, job_ids: Iterable[uuid.UUID]) -> int:
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for job_id in job_ids:
            pipe.xadd(self.stream, {"job_id": str(job_id)})
            n += 1
        if n:
            pipe.execute()
        return n

    @staticmethod
    def _messages(entries: Sequence[Any]) -> list[JobMessage]:
        out = []
        for entry_id, fields in entries:
            if fields is None:  # entry deleted while pending
                out.append(JobMessage(_decode(entry_id), None))
                continue
            raw = {_decode(k): _decode(v) for k, v in dict(fields).items()}
            try:
                job_id: uuid.UUID | None = uuid.UUID(raw.get("job_id", ""))
            except ValueError:
                job_id = None
            out.append(JobMessage(_decode(entry_id), job_id))
        return out

    def _regroup(self, err: redis.ResponseError) -> None:
        """Redis lost the stream or the group (restart without data, FLUSHALL): create them again.

        The group starts at id 0, so entries added since (by the API or the reconciler) are read.
        """
        if "NOGROUP" not in str(err):
            raise err
        self.ensure_group()

    def read(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[JobMessage]:
        """New entries for ``consumer`` (blocks up to ``block_ms``)."""
        try:
            resp = self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        except redis.ResponseError as e:
            self._regroup(e)
            return []
        if not resp:
            return []
        out: list[JobMessage] = []
        for _stream, entries in cast(list[Any], resp):
            out.extend(self._messages(entries))
        return out

    def autoclaim(self, consumer: str, min_idle_ms: int, count: int = 10) -> list[JobMessage]:
        """Take over entries pending longer than ``min_idle_ms`` at other (dead) consumers.

        XAUTOCLAIM answers 2 elements on Redis 6.2 and 3 on 7.x: index, never unpack.
        """
        try:
            resp: list[Any] = self.r.xautoclaim(
                self.stream, self.group, consumer, min_idle_time=min_idle_ms, count=count
            )
        except redis.ResponseError as e:
            self._regroup(e)
            return []
        return self._messages(resp[1]) if len(resp) > 1 else []

    def ack(self, entry_id: str) -> None:
        """Acknowledge and delete the entry (the stream keeps unfinished work only)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def job_ids_in_stream(self, batch: int = 1000) -> set[uuid.UUID]:
        """Job ids of every entry still in the stream (new or pending)."""
        ids: set[uuid.UUID] = set()
        start = "-"
        while True:
            entries: list[Any] = self.r.xrange(self.stream, min=start, max="+", count=batch) or []
            for m in self._messages(entries):
                if m.job_id is not None:
                    ids.add(m.job_id)
            if len(entries) < batch:
                return ids
            start = "(" + _decode(entries[-1][0])

    def depth(self) -> int:
        """Entries in the stream (unfinished work)."""
        return int(self.r.xlen(self.stream))

    def reconcile(self, queued: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Enqueue the ``queued`` job ids that are missing from the stream; returns them."""
        if not queued:
            return []
        present = self.job_ids_in_stream()
        lost = [j for j in queued if j not in present]
        self.enqueue(lost)
        return lost
