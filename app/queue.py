"""Redis Streams job queue: ids only, PostgreSQL is the truth (architecture rule 1).

The API adds a job id after the job row committed (:meth:`JobQueue.enqueue`).
Workers read through one consumer group, claim the job in PostgreSQL, and
acknowledge *and delete* the entry when they are done with it, so the stream
holds only entries not yet finished. That makes reconciliation simple: a
``queued`` job whose id is not in the stream was lost (Redis restarted without
its data, or the API died between commit and XADD) and is added again.

Two lanes: urgent jobs go to ``{stream}:urgent``, routine ones to ``{stream}``;
:meth:`JobQueue.read` serves the urgent lane first, so every worker takes urgent
jobs before routine ones. A routine job that waited too long is added to the
urgent lane as well (the reconciler promotes it); whichever entry is read first
claims it, the other finds it taken and is acknowledged.
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

__all__ = ["JobMessage", "JobQueue"]


@dataclass(frozen=True)
class JobMessage:
    """One stream entry: the Redis entry id and the job id it carries."""

    entry_id: str
    job_id: uuid.UUID | None  # None for a malformed entry (acknowledged and dropped by the worker)
    #: the stream it was read from (entry ids are per stream); "" is the routine lane
    stream: str = ""


def _decode(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class JobQueue:
    """Streams ``s4ct:jobs`` (routine lane) and ``s4ct:jobs:urgent`` (urgent lane), one consumer group."""

    def __init__(self, client: redis.Redis, stream: str = "s4ct:jobs", group: str = "workers") -> None:
        self.r = client
        self.stream = stream
        self.urgent_stream = f"{stream}:urgent"
        self.group = group

    @property
    def streams(self) -> tuple[str, str]:
        """Both lanes, urgent first."""
        return (self.urgent_stream, self.stream)

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
        """Create both streams and the group if missing (idempotent)."""
        for stream in self.streams:
            try:
                self.r.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def enqueue(self, job_ids: Iterable[uuid.UUID], urgent: bool | Container[uuid.UUID] = False) -> int:
        """Add job ids to their lane: the urgent one when ``urgent`` is True or contains the id."""
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for job_id in job_ids:
            lane = urgent if isinstance(urgent, bool) else job_id in urgent
            pipe.xadd(self.urgent_stream if lane else self.stream, {"job_id": str(job_id)})
            n += 1
        if n:
            pipe.execute()
        return n

    def _lane(self, stream: Any) -> str:
        name = _decode(stream)
        return "" if name == self.stream else name

    @staticmethod
    def _messages(entries: Sequence[Any], stream: str = "") -> list[JobMessage]:
        out = []
        for entry_id, fields in entries:
            if fields is None:  # entry deleted while pending
                out.append(JobMessage(_decode(entry_id), None, stream))
                continue
            raw = {_decode(k): _decode(v) for k, v in dict(fields).items()}
            try:
                job_id: uuid.UUID | None = uuid.UUID(raw.get("job_id", ""))
            except ValueError:
                job_id = None
            out.append(JobMessage(_decode(entry_id), job_id, stream))
        return out

    def _regroup(self, err: redis.ResponseError) -> None:
        """Redis lost the stream or the group (restart without data, FLUSHALL): create them again.

        The group starts at id 0, so entries added since (by the API or the reconciler) are read.
        """
        if "NOGROUP" not in str(err):
            raise err
        self.ensure_group()

    def _xread(
        self, consumer: str, streams: Sequence[str], count: int, block_ms: int | None
    ) -> list[JobMessage]:
        try:
            resp = self.r.xreadgroup(
                self.group, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
        except redis.ResponseError as e:
            self._regroup(e)
            return []
        out: list[JobMessage] = []
        for stream, entries in cast(list[Any], resp or []):
            out.extend(self._messages(entries, self._lane(stream)))
        # urgent first (a blocking read over both lanes may answer from both)
        return sorted(out, key=lambda m: m.stream != self.urgent_stream)

    def read(self, consumer: str, count: int = 1, block_ms: int = 1000) -> list[JobMessage]:
        """New entries for ``consumer``, the urgent lane first; blocks up to ``block_ms`` when both are empty.

        At most ``count`` entries, or one more when a blocking wait is answered by both lanes at once.
        """
        out = self._xread(consumer, [self.urgent_stream], count, None)
        if len(out) < count:
            out += self._xread(consumer, [self.stream], count - len(out), None)
        if not out and block_ms > 0:
            out = self._xread(consumer, self.streams, 1, block_ms)
        return out

    def autoclaim(self, consumer: str, min_idle_ms: int, count: int = 10) -> list[JobMessage]:
        """Take over entries pending longer than ``min_idle_ms`` at other (dead) consumers, urgent first.

        XAUTOCLAIM answers 2 elements on Redis 6.2 and 3 on 7.x: index, never unpack.
        """
        out: list[JobMessage] = []
        for stream in self.streams:
            if len(out) >= count:
                break
            try:
                resp: list[Any] = self.r.xautoclaim(
                    stream, self.group, consumer, min_idle_time=min_idle_ms, count=count - len(out)
                )
            except redis.ResponseError as e:
                self._regroup(e)
                continue
            out += self._messages(resp[1], self._lane(stream)) if len(resp) > 1 else []
        return out

    def ack(self, entry: JobMessage | str) -> None:
        """Acknowledge and delete the entry (the stream keeps unfinished work only).

        A plain entry id is one of the routine lane.
        """
        entry_id, lane = (entry, "") if isinstance(entry, str) else (entry.entry_id, entry.stream)
        stream = lane or self.stream
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(stream, self.group, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()

    def job_ids_in_stream(self, batch: int = 1000) -> set[uuid.UUID]:
        """Job ids of every entry still in either lane (new or pending)."""
        ids: set[uuid.UUID] = set()
        for stream in self.streams:
            start = "-"
            while True:
                entries: list[Any] = self.r.xrange(stream, min=start, max="+", count=batch) or []
                for m in self._messages(entries):
                    if m.job_id is not None:
                        ids.add(m.job_id)
                if len(entries) < batch:
                    break
                start = "(" + _decode(entries[-1][0])
        return ids

    def depth(self) -> int:
        """Entries in both lanes (unfinished work)."""
        pipe = self.r.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xlen(stream)
        return sum(int(n) for n in pipe.execute())

    def reconcile(
        self, queued: Sequence[uuid.UUID], urgent: Container[uuid.UUID] = frozenset()
    ) -> list[uuid.UUID]:
        """Enqueue the ``queued`` job ids missing from both lanes (those in ``urgent`` to the urgent one)."""
        if not queued:
            return []
        present = self.job_ids_in_stream()
        lost = [j for j in queued if j not in present]
        self.enqueue(lost, urgent)
        return lost
