"""Process-wide services of the API and the request dependencies (auth, services)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db import Database
from app.errors import ServiceError
from app.model_status import ModelStatus
from app.queue import JobQueue
from app.repository import client_for_key
from app.storage import Storage
from app.uploads import UploadGate
from ml.model import Manifest

__all__ = ["Client", "Services", "ServicesDep", "get_client", "get_services"]

_KEY_TTL_S = 10.0  # a revoked key stops working within this many seconds


@dataclass
class Services:
    """Everything the routes use; built once in the app's lifespan."""

    settings: Settings
    db: Database
    storage: Storage
    queue: JobQueue
    manifest: Manifest
    uploads: UploadGate = field(init=False)
    #: which models of the manifest can be served (weights present, sha256 right)
    models: ModelStatus = field(init=False)
    _keys: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.uploads = UploadGate(self.settings.max_concurrent_uploads, self.settings.upload_wait_s)
        self.models = ModelStatus(
            self.manifest, self.settings.manifest_path.parent, self.storage.object_exists
        )

    def close(self) -> None:
        self.db.close()
        self.queue.close()

    def cached_client(self, key: str) -> tuple[bool, str | None]:
        """(cache hit, client) for an API key; misses are cached too."""
        with self._lock:
            hit = self._keys.get(key)
        if hit is not None and time.monotonic() - hit[1] < _KEY_TTL_S:
            return True, hit[0]
        return False, None

    def client_of(self, key: str) -> str | None:
        """The client of an API key (cached for a few seconds, misses included)."""
        found, client = self.cached_client(key)
        if found:
            return client
        now = time.monotonic()
        with self.db.conn() as conn:
            client = client_for_key(conn, key)
        with self._lock:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key] = (client, now)
        return client


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


#: declares the scheme in the OpenAPI document (every route that needs a client lists it);
#: the header is checked below, so that a refusal is our 401 ``unauthorized`` body
_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description="`Authorization: Bearer <api key>`")


async def get_client(
    request: Request,
    services: ServicesDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> str:
    """The calling client, from ``Authorization: Bearer <api key>`` (401 ``unauthorized`` otherwise).

    Async on purpose: a cached key costs no thread hop; only a cache miss queries the database.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = token.strip()
    if scheme.lower() != "bearer" or not key:
        raise ServiceError("unauthorized", "send Authorization: Bearer <api key>")
    found, client = services.cached_client(key)
    if not found:
        client = await run_in_threadpool(services.client_of, key)
    if client is None:
        raise ServiceError("unauthorized", "unknown or revoked API key")
    request.state.client = client
    return client


Client = Annotated[str, Depends(get_client)]
