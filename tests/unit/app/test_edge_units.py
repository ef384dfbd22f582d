"""Units of the HTTP edge: the key cache (negative entries, LRU bound, TTL, concurrent misses),
the key format, the upload gate's per-client share and the banner's URL redaction."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from app.api.keys import KeyCache, well_formed_key
from app.devstack.serve import _redact
from app.errors import ServiceError
from app.uploads import UploadGate

KEY = "s4ct_" + "k" * 43


def test_key_format() -> None:
    assert well_formed_key(KEY)
    for bad in ("", "s4ct_", "s4ct_" + "k" * 42, "s4ct_" + "k" * 44, "s4cv_" + "k" * 43, "s4ct_" + "!" * 43):
        assert not well_formed_key(bad), bad


def test_key_cache_caches_misses_bounds_entries_and_expires() -> None:
    seen: list[str] = []

    def lookup(key_hash: str) -> str | None:
        seen.append(key_hash)
        return "client" if key_hash.startswith("known") else None

    cache = KeyCache(lookup, ttl_s=0.3, max_entries=3)

    async def run() -> None:
        assert await cache.client_for_key("not a key") is None  # never looked up
        assert [await cache.client_for_hash("unknown") for _ in range(5)] == [None] * 5
        assert await cache.client_for_hash("known-1") == "client"
        assert seen == ["unknown", "known-1"] and cache.lookups == 2
        for h in ("a", "b", "c"):  # the LRU drops the oldest entries beyond 3
            await cache.client_for_hash(h)
        assert cache.get("unknown") == (False, None) and cache.get("c") == (True, None)
        cache.evict("c")
        assert cache.get("c") == (False, None)
        await cache.client_for_hash("known-2")
        time.sleep(0.35)
        assert cache.get("known-2") == (False, None)  # expired

    anyio.run(run)


def test_concurrent_misses_of_one_key_query_once() -> None:
    def lookup(key_hash: str) -> str | None:
        time.sleep(0.05)
        return None

    cache = KeyCache(lookup, ttl_s=10, lookups_at_once=1)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(cache.client_for_hash, "same")

    anyio.run(run)
    assert cache.lookups == 1


def test_one_client_holds_at_most_its_share_of_upload_slots() -> None:
    gate = UploadGate(limit=2, wait_s=0.2, per_client=1)
    outcome: dict[str, Any] = {}

    async def hold(client: str, release: anyio.Event) -> None:
        async with gate.slot(client):
            await release.wait()

    async def run() -> None:
        release = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, "a", release)
            await anyio.sleep(0.01)
            with pytest.raises(ServiceError) as busy:  # a's second upload: its share is taken
                async with gate.slot("a"):
                    pass
            outcome["a"] = busy.value
            async with gate.slot("b"):  # b still gets the other slot
                outcome["b_in_use"] = gate.in_use
            release.set()

    anyio.run(run)
    assert outcome["a"].code == "server_busy" and "this client" in outcome["a"].detail
    assert outcome["a"].headers["Retry-After"]
    assert outcome["b_in_use"] == 2 and gate.in_use == 0 and not gate._clients


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://…@127.0.0.1:6379/0", "hunter2"),
        ("postgresql://s4ct:pw123@127.0.0.1:5432/db", "postgresql://…@127.0.0.1:5432/db", "pw123"),
        ("unix:///var/run/redis.sock?password=topsecret", "unix:///var/run/redis.sock?…", "topsecret"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None),
    ],
)
def test_the_serve_banner_redacts_credentials(url: str, shown: str, secret: str | None) -> None:
    assert _redact(url) == shown
    assert secret is None or secret not in _redact(url)
