"""Process-wide services of the API and the request dependencies (auth, services)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.keys import KeyCache, Principal, RevocationListener, ViewerTokens
from app.callbacks import Resolver, system_resolver
from app.config import Settings
from app.db import Database
from app.errors import ServiceError
from app.model_status import ModelStatus
from app.queue import JobQueue
from app.quotas import Quotas
from app.repository import client_for_key_hash
from app.storage import Storage
from app.uploads import UploadGate
from ml.model import Manifest

__all__ = ["Caller", "Client", "Services", "ServicesDep", "get_caller", "get_client", "get_services"]


@dataclass
class Services:
    """Everything the routes use; built once in the app's lifespan."""

    settings: Settings
    db: Database
    storage: Storage
    queue: JobQueue
    manifest: Manifest
    uploads: UploadGate = field(init=False)
    keys: KeyCache = field(init=False)
    viewer_tokens: ViewerTokens = field(init=False)
    revocations: RevocationListener = field(init=False)
    quotas: Quotas = field(init=False)
    #: which models of the manifest can be served (weights present, sha256 right)
    models: ModelStatus = field(init=False)
    #: resolves callback hosts when a job is created (tests stub it)
    callback_resolver: Resolver = system_resolver

    def __post_init__(self) -> None:
        s = self.settings
        self.uploads = UploadGate(s.max_concurrent_uploads, s.upload_wait_s, per_client=s.uploads_per_client)
        self.keys = KeyCache(self._lookup, s.key_cache_ttl_s)
        self.viewer_tokens = ViewerTokens(self.queue.r, s.viewer_token_ttl_s)
        self.revocations = RevocationListener(self.queue.r, self.keys)
        self.quotas = Quotas(s, self.db, self.queue.r)
        self.models = ModelStatus(
            self.manifest,
            s.manifest_path.parent,
            self.storage.object_exists,
            local_files=s.api_checks_weight_files,
        )

    def _lookup(self, key_hash: str) -> str | None:
        with self.db.conn() as conn:
            return client_for_key_hash(conn, key_hash)

    def close(self) -> None:
        self.revocations.stop()
        self.db.close()
        self.queue.close()


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


#: declares the scheme in the OpenAPI document (every route that needs a client lists it); the
#: header itself is checked by the edge middleware (app/api/edge.py) before any body is read
_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey", description="`Authorization: Bearer <api key>`")


async def get_caller(
    request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None
) -> Principal:
    """Who is calling, as the edge middleware authenticated it (401 ``unauthorized`` otherwise)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise ServiceError("unauthorized", "send Authorization: Bearer <api key>")
    return principal


Caller = Annotated[Principal, Depends(get_caller)]


async def get_client(caller: Caller) -> str:
    """The calling client (its name scopes every study and job)."""
    return caller.client


Client = Annotated[str, Depends(get_client)]
