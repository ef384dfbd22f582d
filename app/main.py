"""The FastAPI application: routers, middleware (request id, metrics, errors), lifespan.

:func:`create_app` builds the app around a :class:`~app.config.Settings`. On
start it opens the database pool, refuses to run on an unmigrated database,
connects Redis and S3, and reads the weights manifest (torch is never imported
in this process).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import start_http_server
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.cors import add_cors, set_bucket_cors
from app.api.deps import Services
from app.api.edge import EdgeGuard, EdgeLimits
from app.api.routes import (
    dicom,
    dicomweb,
    docs,
    explanations,
    feedback,
    health,
    jobs,
    models,
    performance,
    studies,
    viewer,
    webhook,
)
from app.config import Settings
from app.db import Database
from app.drift import DriftCollector
from app.errors import ALL_ERROR_CODES, ServiceError, from_input_error, from_model_error
from app.logs import logger
from app.metrics import ApiMetrics
from app.migrate import check
from app.queue import JobQueue
from app.repository import job_state_counts, oldest_queued_age_s
from app.storage import StorageError, storage_from_settings
from app.uploads import mmap_large_buffers
from ml.errors import InputError, ModelUnavailable
from ml.model import Manifest

__all__ = ["build_services", "create_app"]

DESCRIPTION = """
Chest-CT triage: upload a DICOM study (ZIP), queue a prediction, poll its status,
read the probability of pathology with its operating points, and fetch saliency maps
in the geometry of the source series.

**The demo model is not for clinical use.** Production weights come from the operator
through the weights manifest.

Authentication: `Authorization: Bearer <api key>` on every `/v1` route.
POST routes honour `Idempotency-Key`.

### Error codes
Every error body is `{"error": "<code>", "detail": "<text>", "request_id": "<id>"}`.

| code | meaning |
|---|---|
""" + "\n".join(f"| `{c}` | {t} |" for c, t in ALL_ERROR_CODES.items())


def build_services(settings: Settings) -> Services:
    """Connect to PostgreSQL (checked migrated), Redis and S3; read the manifest."""
    settings.require_services()
    assert settings.database_url and settings.redis_url and settings.s3_access_key and settings.s3_secret_key
    db = Database(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max, name="s4ct-api"
    )
    db.open()
    try:
        with db.conn() as conn:
            check(conn)
        queue = JobQueue.from_url(settings.redis_url, settings.stream, settings.group)
        queue.ensure_group()
        storage = storage_from_settings(settings)
        storage.ping()
        manifest = Manifest.load(settings.manifest_path)
    except BaseException:
        db.close()
        raise
    return Services(settings=settings, db=db, storage=storage, queue=queue, manifest=manifest)


class RequestContext:
    """Pure ASGI middleware: request id, access log, metrics, and a JSON 500 for the unexpected."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, header: str) -> None:
        self.app, self.metrics, self.header = app, metrics, header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == self.header), "")
        if not rid or len(rid) > 128 or not rid.isprintable():
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500, "sent": False}
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (self.header, rid.encode())]
            await send(message)

        try:
            with logger.contextualize(request_id=rid):
                await self.app(scope, receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error in {} {}", scope["method"], _route(scope))
            if not status["sent"]:
                body = ServiceError("internal_error").body(rid)
                await JSONResponse(body, status_code=500)(scope, receive, send_wrapper)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - t0)


def _route(scope: Scope) -> str:
    r = scope.get("route")
    return getattr(r, "path", "unmatched") if r is not None else "unmatched"


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _error(request: Request, err: ServiceError) -> JSONResponse:
    return JSONResponse(err.body(_rid(request)), status_code=err.http_status, headers=err.headers or None)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The API. Without ``services`` they are built from ``settings`` at startup (and closed at exit)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        mmap_large_buffers()  # freed upload part buffers go back to the OS (bounded RSS after bursts)
        svc = services if services is not None else build_services(settings)
        app.state.services = svc
        svc.revocations.start()
        metrics_server = _serve_metrics(app, settings)
        if settings.s3_cors_origins:
            await run_in_threadpool(_bucket_cors, svc, settings.s3_cors_origins)
        app.state.metrics.watch_queue(lambda: _counts(svc), svc.queue.depth, lambda: _oldest_queued_age(svc))
        app.state.metrics.registry.register(DriftCollector(svc.db, svc.manifest, settings))
        logger.info("API ready (model default {})", svc.manifest.default)
        try:
            yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            svc.revocations.stop()
            if own:
                svc.close()

    app = FastAPI(
        title="Service4CT",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # app/api/routes/docs.py: self-hosted assets, off with docs_enabled=false
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        openapi_tags=[
            {"name": "studies", "description": "DICOM study upload and management"},
            {"name": "jobs", "description": "Predictions, their status, results and explanations"},
            {"name": "models", "description": "Servable models (from the weights manifest)"},
            {"name": "health", "description": "Probes and metrics"},
            {"name": "webhooks", "description": "The client's default webhook URL and event selection"},
        ],
    )
    app.state.metrics = ApiMetrics()
    app.state.settings = settings

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(request, exc)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(request, from_input_error(exc))

    @app.exception_handler(ModelUnavailable)
    async def _model_error(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return _error(request, from_model_error(exc))

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        logger.info("client disconnected during {} {}", request.method, request.url.path)
        return _error(request, ServiceError("validation_error", "the client disconnected mid-request"))

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        logger.warning("object store error: {}", exc)
        return _error(request, ServiceError("service_unavailable", "the object store is unavailable; retry"))

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: {}", type(exc).__name__)
        return _error(request, ServiceError("service_unavailable", "the database is unavailable; retry"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:  # no "input" echo: values could carry anything
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return _error(request, ServiceError("validation_error", "; ".join(parts) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI: a body it cannot decode (e.g. JSON that is not UTF-8)
            return _error(request, ServiceError("validation_error", "the request body could not be parsed"))
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        if code is None:
            code = "validation_error" if exc.status_code < 500 else "internal_error"
        err = ServiceError(code, http_status=exc.status_code)
        err.headers.update(exc.headers or {})  # e.g. the Allow header of a 405 (RFC 9110)
        return _error(request, err)

    # viewer: /viewer/{job_id}, not in the schema
    for module in (studies, jobs, explanations, dicom, dicomweb, models, health, viewer, webhook):
        app.include_router(module.router)
    app.include_router(viewer.token_router)
    for module in (feedback, performance):  # feedback and live performance
        app.include_router(module.router)
    if settings.docs_enabled:
        app.include_router(docs.router)
    app.add_middleware(EdgeGuard, limits=EdgeLimits.from_settings(settings))  # inside RequestContext
    add_cors(app, settings)  # outside EdgeGuard: preflights need no credentials
    app.add_middleware(RequestContext, metrics=app.state.metrics, header=settings.request_id_header)
    return app


def _serve_metrics(app: FastAPI, settings: Settings) -> Any:
    """Prometheus ``/metrics`` on its own port (never the API's), or None when not configured."""
    if settings.metrics_port is None:
        return None
    server, _thread = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=app.state.metrics.registry
    )
    app.state.metrics_port = int(server.server_port)
    logger.info("metrics on {}:{}", settings.metrics_host, app.state.metrics_port)
    return server


def _bucket_cors(svc: Services, origins: list[str]) -> None:
    try:
        set_bucket_cors(svc.storage, origins)
        logger.info("bucket CORS: GET allowed from {} origin(s)", len(origins))
    except StorageError as e:  # the API still serves; browsers of other origins cannot read files
        logger.warning("the object store refused bucket CORS ({}): set it there (docs/security.md)", e.code)


def _oldest_queued_age(svc: Services) -> float:
    with svc.db.conn() as conn:
        return oldest_queued_age_s(conn)


def _counts(svc: Services) -> dict[str, int]:
    with svc.db.conn() as conn:
        return job_state_counts(conn)


def app_from_env() -> Any:
    """uvicorn factory: ``uvicorn --factory app.main:app_from_env`` (settings from S4CT_*)."""
    from app.config import load_settings

    return create_app(load_settings())
