"""The application factory. Nothing connects at import time; the lifespan opens and closes resources."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

from virtualq import __version__, migrate, sweeper
from virtualq.accounts.router import router as accounts_router
from virtualq.auth.principal import CALLER_CHECKS, authenticate, key_still_usable
from virtualq.auth.router import me_router
from virtualq.auth.router import router as api_keys_router
from virtualq.config import Settings
from virtualq.customers.router import router as customers_router
from virtualq.db import acquire, create_pool
from virtualq.employees.router import router as employees_router
from virtualq.events.hub import CHANNEL, KEYS_CHANGED, EventHub, publish
from virtualq.events.router import router as events_router
from virtualq.health.router import router as health_router
from virtualq.kit.application import Application
from virtualq.kit.cache import TtlCache
from virtualq.kit.exception_handlers import install_exception_handlers
from virtualq.kit.fastpath import FastDispatch, index_routes
from virtualq.kit.idempotency import IdempotencyMiddleware
from virtualq.kit.metrics import Metrics
from virtualq.kit.middleware import RequestContextMiddleware
from virtualq.kit.ratelimit import RateLimiter
from virtualq.kit.routing import refuse_stray_bodies, refuse_unknown_query
from virtualq.logging import get_logger
from virtualq.queues.feed_cache import FeedCache
from virtualq.queues.router import router as queues_router
from virtualq.tenants.router import router as tenants_router
from virtualq.tickets import line, service
from virtualq.tickets.batching import Batching
from virtualq.tickets.reads import ReadBatching
from virtualq.tickets.router import router as tickets_router
from virtualq.type_definitions import compiled as compiled_types
from virtualq.type_definitions.router import router as type_definitions_router
from virtualq.web.join import pages as join_pages
from virtualq.web.join import public as join_public
from virtualq.web.router import pages as web_pages
from virtualq.web.router import public as public_router
from virtualq.webhooks.router import router as webhooks_router
from virtualq.webhooks.worker import WebhookWorker

log = get_logger("virtualq.app")
SYSTEM_POOL_SIZES = (1, 4)
GC_THRESHOLDS = (10_000, 20, 20)

DESCRIPTION = """\
VirtualQ replaces physical lines with virtual ones.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key: <key>`). Tenant-scoped endpoints act on the
tenant named by the `X-Tenant-ID` header or the `tenant_id` parameter (a tenant-bound key defaults to its
own).
Every error is `{"error", "message", "details", "request_id"}`.
Every `GET` also answers `HEAD`: the same status and headers (`ETag`, `Content-Length`), no body.
"""


def forget_versions() -> None:
    """Forget what this process learnt by version: the tickets as its last writes left them, the call-next
    plans and the compiled types. Each is trusted only while a version names one content, which a database
    that lost its last commits (a failover to a lagging replica, a restore) breaks: the same version can be
    written again with other content. Every connection is new then, so this runs whenever the request pool
    opens one (also as it grows or replaces idle connections; a forgotten entry only costs a read). The
    background work does not use these memories for its writes (the sweeper locks and reads)."""
    service.forget_last_written()
    line.forget_plans()
    compiled_types.forget()


def create_app(
    settings: Settings, dsn: str | None = None, query_logger: Callable[[Any], None] | None = None
) -> FastAPI:
    """`dsn` overrides settings.database_url (the CLI passes the embedded server's)."""
    database_dsn = dsn or settings.database_url
    if database_dsn is None:
        raise ValueError("create_app needs a database: set DATABASE_URL or pass dsn")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings, database_dsn, query_logger, on_connect=forget_versions)
        app.state.pool.on_wait = app.state.metrics.pool_waited
        # The background work that spans tenants (event hub, webhook worker, sweeper) has its own few
        # connections: it never waits behind requests, and the request pool's connections keep their
        # tenant scope instead of flipping to 'system' and back (a round trip each way).
        app.state.system_pool = await create_pool(settings, database_dsn, sizes=SYSTEM_POOL_SIZES)
        app.state.redis = limiter_redis = None
        if settings.redis_url:
            # Imported only when configured: redis-py costs a process ~20 MB (docs/performance.md).
            import redis.asyncio as aioredis

            app.state.redis = aioredis.from_url(settings.redis_url)
            # Its own client with short timeouts: a Redis that hangs must not hold requests up.
            limiter_redis = aioredis.from_url(
                settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
        app.state.rate_limiter = RateLimiter(limiter_redis)
        hub = EventHub(
            app.state.system_pool,
            database_dsn,
            app.state.metrics,
            redis=app.state.redis,
            poll_seconds=settings.event_poll_seconds,
            buffer_size=settings.stream_buffer_events,
        )
        worker = WebhookWorker(app.state.system_pool, settings, app.state.metrics)
        hub.listeners.append(worker.wake)
        hub.on_keys_changed = app.state.key_cache.clear
        hub.key_usable = functools.partial(key_still_usable, app)
        hub.tenant_listeners.append(app.state.feed_cache.forget)
        app.state.event_hub, app.state.webhook_worker = hub, worker
        # After a commit that wrote events (db._committed, the sweeper): this hub now, the others notified.
        app.state.on_events_committed = hub.events_committed
        if app.state.redis is not None:
            redis = app.state.redis

            async def keys_changed_redis() -> None:
                await publish(redis, KEYS_CHANGED)

            app.state.on_keys_changed = keys_changed_redis
        else:
            pool = app.state.pool

            async def keys_changed_postgres() -> None:
                async with acquire(pool, transaction=False) as conn:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, KEYS_CHANGED.decode())

            app.state.on_keys_changed = keys_changed_postgres
        await hub.start()
        if settings.webhook_delivery:
            await worker.start()
        # Everything loaded at start-up lives as long as the process: keep it out of the collector's scans,
        # and collect the young generation less often (request garbage is short-lived).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("started", env=settings.env, redis=settings.redis_url is not None)
        # With several worker processes, each refreshes its pool gauges for the others' scrapes.
        pool_gauges = (
            asyncio.create_task(app.state.metrics.refresh_pool_forever(), name="virtualq-pool-gauges")
            if app.state.metrics.multiprocess
            else None
        )
        try:
            async with sweeper.running(
                app.state.system_pool, settings.sweeper_interval_seconds, settings, hub.events_committed
            ):
                yield
        finally:
            if pool_gauges is not None:
                pool_gauges.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pool_gauges
            await worker.stop()
            await hub.stop()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            if limiter_redis is not None:
                await limiter_redis.aclose()
            await app.state.pool.close()
            await app.state.system_pool.close()
            app.state.pool = app.state.system_pool = None
            app.state.metrics.process_ended()
            log.info("stopped")

    app = Application(
        title="VirtualQ API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by web/router.py, with Swagger UI's files from a package instead of a CDN
        redoc_url=None,
        # Metrics are Prometheus (kit/metrics.py) and logs structlog; FastAPI's own OpenTelemetry hooks would
        # only ask, on every request, whether a provider has been configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.pool = None
    app.state.redis = None
    app.state.on_events_committed = None
    app.state.on_keys_changed = None
    app.state.rate_limiter = RateLimiter(None)
    # API keys for AUTH_CACHE_SECONDS (a revocation elsewhere is seen within that); tenant -> account kept.
    app.state.key_cache = TtlCache(settings.auth_cache_seconds)
    app.state.tenant_accounts = TtlCache(3600.0)
    app.state.head_revision = migrate.head_revision()
    app.state.metrics = metrics = Metrics()
    app.state.feed_cache = FeedCache(settings.feed_cache_seconds, metrics.shared_answer)
    app.state.create_batching = Batching(settings.create_batch_max, metrics)
    app.state.read_batching = ReadBatching(settings.read_batch_max, metrics)
    metrics.track_pool(lambda: app.state.pool)

    install_exception_handlers(app, authenticate, CALLER_CHECKS)
    for router in (
        health_router,
        accounts_router,
        tenants_router,
        customers_router,
        employees_router,
        api_keys_router,
        me_router,
        type_definitions_router,
        queues_router,
        tickets_router,
        events_router,
        webhooks_router,
        public_router,
        join_public,
        web_pages,
        join_pages,
    ):
        # The routes themselves, not a wrapper per router: FastAPI's included-router matching costs
        # about 0.4 ms per request with this many routes (docs/performance.md).
        app.router.routes.extend(router.routes)
    app.router.redirect_slashes = False  # a trailing slash is a 404 naming the path without it
    refuse_stray_bodies(app.router.routes)
    refuse_unknown_query(app.router.routes)
    index_routes(app.router)

    # Innermost of our middleware: the fast paths answer ahead of the exception middleware and the router.
    app.add_middleware(FastDispatch)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        production=settings.is_production,
    )
    # Outermost: every answer a browser may read carries the CORS headers, including those given before the
    # app runs (413, 415, 431 from the request context, idempotent replays and their 409s).
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "X-Tenant-ID",
                "X-Request-ID",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "Last-Event-ID",  # a fetch-based event stream resuming from its last id
            ],
            expose_headers=[
                "X-Request-ID",
                "ETag",
                "Idempotent-Replayed",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
        )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    from virtualq.kit.routing import ErrorBody

    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer vq_...`.",
    }
    components["securitySchemes"]["apiKeyHeader"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    components.setdefault("parameters", {})["IdempotencyKey"] = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a retry safe: the first request with this key does the work, and a retry (same "
        "API key, path, query, tenant and JSON body) gets its answer back with `Idempotent-Replayed: true`; "
        "another request with the key is 409 `idempotency_conflict`. Kept 24 hours.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
        "example": "order-4711",
    }
    # The errors (PRODUCT §6) that do not depend on what an operation does; routes document their own.
    common_errors = {
        "409": "Conflicts with existing data, or an Idempotency-Key reused with a different request "
        "(conflict, idempotency_conflict).",
        "413": "Request body too large (payload_too_large).",
        "415": "The body is not JSON (unsupported_media_type); send `Content-Type: application/json`.",
        "429": "Over this API key's rate limit (rate_limited); retry after `Retry-After` seconds.",
        "503": "The database is unavailable (unavailable); retry after `Retry-After` seconds.",
    }
    for path, operations in schema.get("paths", {}).items():
        if path in ("/healthz", "/metrics"):
            continue  # answered without the database or a key
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            # Our validation failures are 400 with the error envelope, never FastAPI's 422.
            responses.pop("422", None)
            statuses = ["503"]  # every other operation reads the database, which may be unavailable
            if path.startswith("/v1/public/"):
                operation["security"] = []  # no API key: the link's token (a customer's page, a join link)
            elif path != "/readyz":
                operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
            if path.startswith("/v1/") and not path.startswith("/v1/public/"):
                statuses.append("429")  # every API key is rate limited
                if method == "post":
                    statuses.append("409")  # an Idempotency-Key reused with another request
                    parameters = operation.setdefault("parameters", [])
                    parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
            if "requestBody" in operation:
                statuses += ["413", "415"]
            for status in statuses:
                if status not in responses:
                    error = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    responses[status] = {
                        "description": common_errors[status],
                        "content": {"application/json": error},
                    }
    app.openapi_schema = schema
    return schema
