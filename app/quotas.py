"""Per-client quotas of the API: a request rate shared by every API process, and a cap on queued jobs.

- **Rate** (429 ``rate_limited``): each authenticated request is counted in Redis with the
  generic cell rate algorithm (GCRA), one key per client, in one Lua script, so that every
  API process shares the count and a refusal carries the exact ``Retry-After``. A client may
  send a burst of ``rate`` requests, then one every ``60 / rate`` seconds. If Redis cannot be
  reached the request is let through (the limit protects the service; an outage of its
  counter must not take the API down with it), a warning is logged, and the check is skipped
  for the next few seconds, so that only one request in that time waits for Redis to fail.
- **Queued jobs** (429 ``quota_exceeded``): counted in PostgreSQL inside the transaction that
  creates the job, under a lock on the client's row, so that concurrent creations in several
  API processes cannot overshoot.

A client's own limits (``service4ct client quota``) override the defaults in the settings;
both default to no limit.
"""

from __future__ import annotations

import math
import threading
import time

import psycopg
import psycopg_pool
import redis

from app.config import Settings
from app.db import Conn, Database
from app.errors import ServiceError
from app.logs import logger
from app.repository.quotas import ClientQuota, get_quota, lock_queued_jobs

__all__ = ["Quotas", "check_queued_jobs"]

#: KEYS[1] the client's key; ARGV[1] seconds per request; ARGV[2] burst (requests).
#: Returns "0" when the request is admitted, else the seconds to wait (a decimal string).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat + interval - burst * interval - now
if wait > 0 then return tostring(wait) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return '0'
"""

_QUOTA_TTL_S = 5.0  # a changed quota takes effect in every API process within this many seconds
_REDIS_BACKOFF_S = 5.0  # after a failed check, requests go unchecked for this long


class Quotas:
    """The rate limiter of one API process (its Redis counter and a short cache of client quotas)."""

    def __init__(self, settings: Settings, db: Database, r: redis.Redis, prefix: str = "s4ct:rate:") -> None:
        self.settings, self.db, self.prefix = settings, db, prefix
        self._script = r.register_script(_GCRA)
        self._cache: dict[str, tuple[ClientQuota, float]] = {}
        self._lock = threading.Lock()
        self._unchecked_until = 0.0

    def quota(self, client: str) -> ClientQuota:
        """The client's quota (cached for a few seconds)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(client)
        if hit is not None and now - hit[1] < _QUOTA_TTL_S:
            return hit[0]
        try:
            with self.db.conn() as conn:
                quota = get_quota(conn, client) or ClientQuota()
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            logger.warning("quota of {} not read ({}): the defaults apply", client, type(e).__name__)
            return ClientQuota()
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[client] = (quota, now)
        return quota

    def unlimited(self, client: str) -> bool:
        """True when ``client`` is known, without I/O, to have no rate limit (the API's fast path)."""
        if self.settings.rate_limit_per_minute is not None:
            return False
        with self._lock:
            hit = self._cache.get(client)
        fresh = hit is not None and time.monotonic() - hit[1] < _QUOTA_TTL_S
        return hit is not None and fresh and hit[0].rate_limit_per_minute is None

    def rate_limit(self, client: str) -> int | None:
        """Requests per minute allowed to ``client`` (None: unlimited)."""
        return self.quota(client).rate_limit_per_minute or self.settings.rate_limit_per_minute

    def admit(self, client: str) -> None:
        """Count one request of ``client``; 429 ``rate_limited`` with ``Retry-After`` over its rate."""
        rate = self.rate_limit(client)
        if rate is None or time.monotonic() < self._unchecked_until:
            return
        try:
            wait = float(self._script(keys=[self.prefix + client], args=[60.0 / rate, rate]))
        except redis.RedisError as e:
            self._unchecked_until = time.monotonic() + _REDIS_BACKOFF_S
            logger.warning(
                "rate limits not checked for {:.0f} s: Redis unreachable ({})",
                _REDIS_BACKOFF_S,
                type(e).__name__,
            )
            return
        if wait > 0:
            err = ServiceError(
                "rate_limited", f"over {rate} requests per minute; retry after the Retry-After seconds"
            )
            err.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            raise err


def check_queued_jobs(conn: Conn, client: str, settings: Settings) -> None:
    """Inside the job-creating transaction: 429 ``quota_exceeded`` when the client's queue is full."""
    queued, own = lock_queued_jobs(conn, client)
    limit = own or settings.max_queued_jobs_per_client
    if limit is not None and queued >= limit:
        err = ServiceError(
            "quota_exceeded", f"{queued} jobs queued, the maximum is {limit}; retry when some have started"
        )
        err.headers["Retry-After"] = str(settings.quota_retry_after_s)
        raise err
