"""Liveness and readiness (open routes, no API key); Prometheus metrics are on their own port (app.main)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.repository import last_worker_heartbeat_age
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Any:
    return {"status": "ok", "checks": {}}


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: PostgreSQL, Redis and S3 reachable, a worker heartbeat is fresh",
    responses={503: {"model": Health, "description": "a dependency is unreachable"}},
)
def readyz(services: ServicesDep) -> Any:
    checks: dict[str, str] = {}
    ok = True
    age: float | None = None
    try:
        with services.db.conn() as conn:
            conn.execute("SELECT 1")
            age = last_worker_heartbeat_age(conn)
        checks["postgres"] = "ok"
    except Exception as e:
        ok, checks["postgres"] = False, f"unreachable ({type(e).__name__})"
    for name, probe in (("redis", services.queue.ping), ("s3", services.storage.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as e:
            ok, checks[name] = False, f"unreachable ({type(e).__name__})"
    if age is None:
        checks["worker"] = "none registered"
    else:
        fresh = age <= services.settings.worker_stale_s
        checks["worker"] = f"heartbeat {age:.0f} s ago" + ("" if fresh else " (stale)")
        ok = ok and (fresh or not services.settings.require_worker)
    if age is None and services.settings.require_worker:
        ok = False
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)
