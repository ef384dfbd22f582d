"""How the API is served: uvicorn with the edge limits of the settings (docs/security.md).

Every way of running the API (``service4ct api``, ``service4ct serve``, the integration
tests) builds its server with :func:`uvicorn_config`:

- the h11 protocol (not httptools), whose parser refuses request lines plus headers over
  ``max_header_bytes`` (400);
- :func:`header_timeout_protocol`: a connection that has not delivered a complete request
  line and header block within ``header_timeout_s`` of connecting (or of the first byte of
  its next request) gets 408 ``request_timeout`` and is closed — a half-sent or trickled
  header never holds a connection;
- ``limit_concurrency``: a request that finds more than that many connections open or
  requests in progress (itself included) gets 503 ``overloaded`` with ``Retry-After`` in the
  stable JSON error format, and its connection is closed. The protocol counts (uvicorn's own
  ``limit_concurrency``, which answers plain text, is left off).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import h11
import uvicorn
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Settings
from app.errors import ServiceError

__all__ = ["header_timeout_protocol", "uvicorn_config"]


#: the Retry-After (seconds) of a 503 ``overloaded``
OVERLOADED_RETRY_AFTER_S = 1


def _overloaded_app(app: ASGIApp, protocol: H11Protocol, limit: int, request_id_header: str) -> ASGIApp:
    """``app`` behind ``limit``: counted when the request's task runs (its task and connection included)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (len(protocol.connections) > limit or len(protocol.tasks) > limit):
            rid = uuid.uuid4().hex
            err = ServiceError("overloaded", f"more than {limit} connections or requests in progress; retry")
            headers = {
                "Retry-After": str(OVERLOADED_RETRY_AFTER_S),
                "Connection": "close",
                request_id_header: rid,
            }
            answer = JSONResponse(err.body(rid), status_code=err.http_status, headers=headers)
            await answer(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


def _timeout_response(request_id_header: str) -> bytes:
    rid = uuid.uuid4().hex
    err = ServiceError("request_timeout", "the request line and headers did not arrive in time")
    body = json.dumps(err.body(rid)).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
        f"{request_id_header.lower()}: {rid}\r\n\r\n"
    )
    return head.encode("ascii") + body


def header_timeout_protocol(
    timeout_s: float, request_id_header: str = "X-Request-ID", limit_concurrency: int | None = None
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's line and headers.

    With ``limit_concurrency``, a request beyond it is answered 503 ``overloaded`` (JSON).
    """
    response = _timeout_response(request_id_header)

    class HeaderDeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if limit_concurrency is not None:
                self.app = _overloaded_app(self.app, self, limit_concurrency, request_id_header)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return HeaderDeadlineH11Protocol


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The server of ``app`` on ``settings.host:port`` with the edge limits (``overrides`` win)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": header_timeout_protocol(
            settings.header_timeout_s, settings.request_id_header, settings.limit_concurrency
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "log_level": "warning",
        "access_log": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
