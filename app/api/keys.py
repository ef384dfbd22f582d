"""API keys and viewer tokens as the HTTP edge resolves them (docs/security.md).

- :class:`KeyCache`: key hash → client, known *and* unknown keys cached (bounded LRU), so a
  repeated unknown key costs no database query; a key that is not even well formed costs
  none at all; at most a few look-ups of uncached keys run at once (a flood of random keys
  cannot take the database pool).
- :class:`RevocationListener`: each API process subscribes to a Redis channel on which
  ``service4ct apikey revoke`` publishes the revoked key's hash (:func:`broadcast_revocation`);
  the key leaves every cache at once. Should the subscription drop, the cache is cleared
  when it comes back (a revocation may have been missed), and the cache TTL bounds the rest.
- :class:`ViewerTokens`: short-lived read-only tokens scoped to one job (and its parent), kept
  in Redis under their hash; a token stops with the key that issued it.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import redis
from starlette.concurrency import run_in_threadpool

from app.logs import logger
from app.repository import hash_api_key

__all__ = [
    "REVOKED_CHANNEL",
    "VIEWER_TOKEN_PREFIX",
    "KeyCache",
    "Principal",
    "RevocationListener",
    "ViewerTokens",
    "broadcast_revocation",
    "well_formed_key",
]

#: ``create_api_key``: "s4ct_" + secrets.token_urlsafe(32) (43 characters)
_KEY_FORMAT = re.compile(r"s4ct_[A-Za-z0-9_-]{43}")
VIEWER_TOKEN_PREFIX = "s4cv_"
_VIEWER_FORMAT = re.compile(r"s4cv_[A-Za-z0-9_-]{43}")
REVOKED_CHANNEL = "s4ct:api-keys:revoked"
_VIEWER_KEY = "s4ct:viewer-token:"


def well_formed_key(key: str) -> bool:
    """Whether ``key`` could be an API key at all (anything else is refused without a query)."""
    return _KEY_FORMAT.fullmatch(key) is not None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a client by its key, or by a viewer token limited to ``jobs``."""

    client: str
    key_hash: str
    jobs: frozenset[str] | None = None  # None: the whole key; else the job ids a viewer token may read

    @property
    def viewer(self) -> bool:
        return self.jobs is not None


class KeyCache:
    """Key hash → client (None: unknown or revoked), cached ``ttl_s``; ``lookup`` queries the database."""

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        ttl_s: float,
        *,
        max_entries: int = 50_000,
        lookups_at_once: int = 4,
    ) -> None:
        self.lookup, self.ttl_s, self.max_entries = lookup, ttl_s, max_entries
        self.lookups = 0  # database look-ups made (observability and tests)
        self._entries: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._at_once = lookups_at_once
        self._gate: anyio.Semaphore | None = None

    def get(self, key_hash: str) -> tuple[bool, str | None]:
        """(cached, client); an expired entry is not cached."""
        with self._lock:
            hit = self._entries.get(key_hash)
            if hit is None:
                return False, None
            if time.monotonic() - hit[1] >= self.ttl_s:
                del self._entries[key_hash]
                return False, None
            self._entries.move_to_end(key_hash)
            return True, hit[0]

    def put(self, key_hash: str, client: str | None) -> None:
        with self._lock:
            self._entries[key_hash] = (client, time.monotonic())
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def evict(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    async def client_for_hash(self, key_hash: str) -> str | None:
        found, client = self.get(key_hash)
        if found:
            return client
        if self._gate is None:
            self._gate = anyio.Semaphore(self._at_once)
        async with self._gate:
            found, client = self.get(key_hash)  # looked up by another request meanwhile
            if found:
                return client
            self.lookups += 1
            client = await run_in_threadpool(self.lookup, key_hash)
        self.put(key_hash, client)
        return client

    async def client_for_key(self, key: str) -> str | None:
        if not well_formed_key(key):
            return None
        return await self.client_for_hash(hash_api_key(key))


def broadcast_revocation(client: redis.Redis, key_hash: str) -> int:
    """Tell every API process that ``key_hash`` is revoked; the number of processes listening."""
    return int(client.publish(REVOKED_CHANNEL, key_hash))


class RevocationListener:
    """A daemon thread evicting revoked keys from ``cache`` as :func:`broadcast_revocation` announces them."""

    def __init__(self, client: redis.Redis, cache: KeyCache, retry_s: float = 1.0) -> None:
        self.client, self.cache, self.retry_s = client, cache, retry_s
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="s4ct-key-revocations", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.subscribed.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(REVOKED_CHANNEL)
                while not self._stop.is_set():
                    self._handle(pubsub.get_message(timeout=0.5))
            except Exception as e:  # Redis down: retry; the cache TTL bounds a missed revocation
                self.subscribed.clear()
                logger.warning("key revocation channel unavailable ({}); retrying", type(e).__name__)
                self._stop.wait(self.retry_s)
            finally:
                pubsub.close()

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        if message["type"] == "subscribe":
            self.cache.clear()  # revocations published while we were not subscribed were missed
            self.subscribed.set()
        elif message["type"] == "message":
            data = message["data"]
            self.cache.evict(data.decode() if isinstance(data, bytes) else str(data))


class ViewerTokens:
    """Viewer tokens in Redis: ``s4ct:viewer-token:<sha256>`` → who issued it and the jobs it reads."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client, self.ttl_s = client, ttl_s

    def issue(self, principal: Principal, jobs: Iterable[str]) -> str:
        token = VIEWER_TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = {"client": principal.client, "key_hash": principal.key_hash, "jobs": sorted(set(jobs))}
        self.client.set(_VIEWER_KEY + hash_api_key(token), json.dumps(record), ex=self.ttl_s)
        return token

    def _record(self, token: str) -> dict[str, Any] | None:
        raw = self.client.get(_VIEWER_KEY + hash_api_key(token))
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record

    async def resolve(self, token: str, keys: KeyCache) -> Principal | None:
        """The token's principal while it lives and the key that issued it is still valid."""
        if _VIEWER_FORMAT.fullmatch(token) is None:
            return None
        record = await run_in_threadpool(self._record, token)
        if record is None:
            return None
        client = await keys.client_for_hash(record["key_hash"])
        if client is None or client != record["client"]:
            return None
        return Principal(client, record["key_hash"], frozenset(record["jobs"]))
