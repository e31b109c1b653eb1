from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from virtualq.db import acquire, get_pool
from virtualq.logging import get_logger

router = APIRouter(tags=["operations"])
log = get_logger("virtualq.health")
# A Redis that hangs (paused, partitioned) is reported as unreachable this fast, not after redis-py's 5 s.
REDIS_PING_TIMEOUT_SECONDS = 1.0
# A database that does not answer (locked out, overloaded, paused) is reported as unreachable this fast, not
# after the pool's 10 s wait for a connection or the 30 s command timeout, which outlast any probe's timeout.
DATABASE_CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/", include_in_schema=False)
async def root() -> dict[str, str]:
    """Where things are, for whoever opens the server's address."""
    return {
        "name": "VirtualQ",
        "api": "/v1",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz",
        "metrics": "/metrics",
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is down or migrations are pending."}})
async def readyz(request: Request) -> Any:
    """Ready to serve: the database answers and is migrated to this build's revision; Redis answers if set."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_SECONDS):
            async with acquire(get_pool(request), transaction=False) as conn:
                revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        expected = request.app.state.head_revision
        checks["database"] = "ok" if revision == expected else f"at revision {revision}, expected {expected}"
    except Exception as exc:  # any failure means "not ready"
        log.warning("readiness check failed", dependency="database", error=type(exc).__name__)
        checks["database"] = "unreachable"
    redis = request.app.state.redis
    if redis is not None:
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT_SECONDS):
                await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            log.warning("readiness check failed", dependency="redis", error=type(exc).__name__)
            checks["redis"] = "unreachable"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus exposition format."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
