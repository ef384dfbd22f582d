"""The HTTP edge: limits and authentication applied before any route reads a body (docs/security.md).

:class:`EdgeGuard` is pure ASGI middleware (no ``BaseHTTPMiddleware``: nothing is wrapped in
extra tasks or buffered behind the route's back). For every HTTP request, in this order:

1. more than ``max_header_count`` header fields, or more than ``max_header_bytes`` of them →
   431 ``headers_too_large`` (the server's parser refuses a larger block still arriving, 400);
2. a ``/v1`` path needs ``Authorization: Bearer`` with a valid API key or viewer token, checked
   before one byte of the body is read → 401 ``unauthorized`` (a viewer token outside its job's
   read routes → 403 ``forbidden``); the caller lands in ``scope["state"]`` (``client``,
   ``principal``) for the routes' :func:`app.api.deps.get_client`; an authenticated client over
   its request rate → 429 ``rate_limited`` (:mod:`app.quotas`), also before the body is read;
3. an upload route's body is passed through a clock: no byte for ``body_idle_timeout_s``, or
   less than ``body_min_bytes_per_s`` on average once that long has passed → 408
   ``request_timeout``; more raw bytes than the upload cap (multipart fields and framing,
   chunked bodies included) → 413 ``payload_too_large``;
4. any other body is read here, with the same clock, up to ``max_json_bytes`` (413 beyond,
   from the declared ``Content-Length`` before reading when there is one), and replayed
   to the route.

A refusal of a request whose body was not read closes the connection, so that the body
is never drained. Header bytes and header read time are bounded by the server itself
(:mod:`app.api.server`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import psycopg
import psycopg_pool
import redis
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.keys import VIEWER_TOKEN_PREFIX, Principal
from app.config import Settings
from app.errors import ServiceError
from app.logs import logger
from app.repository import hash_api_key

__all__ = ["UPLOAD_ROUTES", "EdgeGuard", "EdgeLimits"]

#: (method, path pattern) of the routes whose body is a study upload (app/uploads.py caps it)
UPLOAD_ROUTES: tuple[tuple[str, str], ...] = (("POST", r"/v1/studies"), ("POST", r"/v1/dicomweb/studies"))
#: multipart framing and form fields allowed on top of the upload cap
UPLOAD_FRAMING_BYTES = 1 << 20
#: what a viewer token may read: GET of its job's status, result and explanation
_VIEWER_ROUTE = re.compile(r"/v1/jobs/([0-9a-fA-F-]{36})(?:/result|/explanation)?")


@dataclass(frozen=True)
class EdgeLimits:
    max_header_count: int
    max_header_bytes: int
    max_json_bytes: int
    max_upload_bytes: int
    body_idle_timeout_s: float
    body_min_bytes_per_s: int

    @classmethod
    def from_settings(cls, s: Settings) -> EdgeLimits:
        return cls(
            max_header_count=s.max_header_count,
            max_header_bytes=s.max_header_bytes,
            max_json_bytes=s.max_json_bytes,
            max_upload_bytes=s.max_upload_bytes + UPLOAD_FRAMING_BYTES,
            body_idle_timeout_s=s.body_idle_timeout_s,
            body_min_bytes_per_s=s.body_min_bytes_per_s,
        )


def _closing(code: str, detail: str) -> ServiceError:
    err = ServiceError(code, detail)
    err.headers["Connection"] = "close"  # the rest of the body is not read: never drain it
    return err


class _BodyClock:
    """``receive`` with an idle timeout, a floor on the average rate and a cap on the bytes."""

    def __init__(self, receive: Receive, limits: EdgeLimits, cap: int) -> None:
        self._receive, self.limits, self.cap = receive, limits, cap
        self.received = 0
        self.started: float | None = None

    async def __call__(self) -> Message:
        idle = self.limits.body_idle_timeout_s
        if self.started is None:
            self.started = time.monotonic()
        with anyio.move_on_after(idle) as waited:
            message = await self._receive()
        if waited.cancelled_caught:
            raise _closing("request_timeout", f"no body byte arrived for {idle:g} s")
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if self.received > self.cap:
            raise _closing("payload_too_large", f"the request body exceeds {self.cap} bytes")
        elapsed = time.monotonic() - self.started
        floor = self.limits.body_min_bytes_per_s
        if floor and message.get("more_body") and elapsed > idle and self.received < floor * elapsed:
            raise _closing("request_timeout", f"the body arrives slower than {floor} bytes/s")
        return message


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() != "0")


def _bearer(scope: Scope) -> str | None:
    scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _viewer_may(scope: Scope, principal: Principal) -> bool:
    match = _VIEWER_ROUTE.fullmatch(scope["path"])
    return (
        scope["method"] in ("GET", "HEAD")
        and match is not None
        and principal.jobs is not None
        and match[1].lower() in principal.jobs
    )


class EdgeGuard:
    """Pure ASGI middleware: header count, authentication, body clock and caps (module docstring)."""

    def __init__(
        self, app: ASGIApp, limits: EdgeLimits, upload_routes: Sequence[tuple[str, str]] = UPLOAD_ROUTES
    ) -> None:
        self.app, self.limits = app, limits
        self.uploads = [(m, re.compile(p)) for m, p in upload_routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except ServiceError as err:
            if _has_body(scope):
                err.headers["Connection"] = "close"
            rid = scope.get("state", {}).get("request_id")
            response = JSONResponse(err.body(rid), status_code=err.http_status, headers=err.headers or None)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        lim = self.limits
        if len(scope["headers"]) > lim.max_header_count:
            raise ServiceError("headers_too_large", f"more than {lim.max_header_count} header fields")
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if size + sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > lim.max_header_bytes:
            raise ServiceError(
                "headers_too_large", f"the request line and headers exceed {lim.max_header_bytes} bytes"
            )
        path: str = scope["path"]
        if path == "/v1" or path.startswith("/v1/"):
            principal = await self._authenticate(scope)
            scope.setdefault("state", {}).update(client=principal.client, principal=principal)
            quotas = scope["app"].state.services.quotas
            if not quotas.unlimited(principal.client):  # 429 rate_limited, before any body is read
                await run_in_threadpool(quotas.admit, principal.client)
        if any(m == scope["method"] and p.fullmatch(path) for m, p in self.uploads):
            return _BodyClock(receive, self.limits, self.limits.max_upload_bytes)
        if _has_body(scope):
            return await self._buffered(scope, receive)
        return receive

    async def _authenticate(self, scope: Scope) -> Principal:
        token = _bearer(scope)
        if token is None:
            raise ServiceError("unauthorized", "send Authorization: Bearer <api key>")
        services = scope["app"].state.services
        try:
            if token.startswith(VIEWER_TOKEN_PREFIX):
                principal = await services.viewer_tokens.resolve(token, services.keys)
                if principal is None:
                    raise ServiceError("unauthorized", "unknown or expired viewer token")
                if not _viewer_may(scope, principal):
                    raise ServiceError("forbidden", "a viewer token only reads its own job")
                return principal  # type: ignore[no-any-return]
            client = await services.keys.client_for_key(token)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, redis.RedisError) as e:
            logger.warning("credential check unavailable: {}", type(e).__name__)
            raise ServiceError("service_unavailable", "credentials cannot be checked now; retry") from None
        if client is None:
            raise ServiceError("unauthorized", "unknown or revoked API key")
        return Principal(client, hash_api_key(token))

    async def _buffered(self, scope: Scope, receive: Receive) -> Receive:
        cap = self.limits.max_json_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise ServiceError("payload_too_large", f"the request body exceeds {cap} bytes")
        clock = _BodyClock(receive, self.limits, cap)
        chunks: list[bytes] = []
        while True:
            message = await clock()
            if message["type"] != "http.request":  # the client left: the route sees the disconnect
                return _replay([message], receive)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return _replay([body], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
