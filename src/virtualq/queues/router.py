from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from virtualq.auth.principal import StaffOrAdmin, TenantAdmin, TenantAnyRole, TenantStaff, resolve_tenant
from virtualq.db import ReadConn, WriteConn, reading, use_tenant
from virtualq.errors import Forbidden, not_found
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page
from virtualq.queues import monitor, service
from virtualq.queues.feed_cache import FeedCache
from virtualq.queues.schemas import Monitor, Queue, QueueCreate, QueueStats, QueueUpdate

router = APIRouter(tags=["queues"])


@router.post("/v1/queues", status_code=status.HTTP_201_CREATED, response_model=Queue, responses=WRITE_ERRORS)
async def create_queue(body: QueueCreate, ctx: TenantAdmin, conn: WriteConn) -> Any:
    return await service.create_queue(conn, ctx, body)


@router.get("/v1/queues", response_model=Page[Queue], responses=READ_ERRORS)
async def list_queues(ctx: TenantStaff, conn: ReadConn, page: PageQuery, filters: CommonFilterQuery) -> Any:
    """The tenant's queues by display_order."""
    rows, total = await service.list_queues(conn, ctx, filters, page)
    return page_envelope(rows, total, page)


@router.get(
    "/v1/tenants/{tenant_id}/queues", response_model=Page[Queue], responses=READ_ERRORS, tags=["tenants"]
)
async def list_tenant_queues(
    tenant_id: uuid.UUID,
    request: Request,
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
) -> Any:
    try:
        ctx = await resolve_tenant(request, principal, tenant_id)
    except Forbidden:
        raise not_found("tenant") from None
    await use_tenant(conn, ctx.tenant_id)
    rows, total = await service.list_queues(conn, ctx, filters, page)
    return page_envelope(rows, total, page)


@router.get("/v1/queues/{queue_id}", response_model=Queue, responses=READ_ERRORS)
async def get_queue(queue_id: uuid.UUID, ctx: TenantAnyRole, conn: ReadConn) -> Any:
    return await service.get_queue(conn, ctx, queue_id)


@router.patch("/v1/queues/{queue_id}", response_model=Queue, responses=WRITE_ERRORS)
@router.put("/v1/queues/{queue_id}", response_model=Queue, responses=WRITE_ERRORS)
async def update_queue(queue_id: uuid.UUID, body: QueueUpdate, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Partial update; PUT is accepted with the same meaning."""
    return await service.update_queue(conn, ctx, queue_id, body)


@router.delete("/v1/queues/{queue_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_queue(queue_id: uuid.UUID, ctx: TenantAdmin, conn: WriteConn) -> Response:
    await service.set_queue_active(conn, ctx, queue_id, active=False)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/queues/{queue_id}/enable", response_model=Queue, responses=WRITE_ERRORS)
async def enable_queue(queue_id: uuid.UUID, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Accept new tickets and forwards again."""
    return await service.set_queue_active(conn, ctx, queue_id, active=True)


@router.post("/v1/queues/{queue_id}/disable", response_model=Queue, responses=WRITE_ERRORS)
async def disable_queue(queue_id: uuid.UUID, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Stop accepting new tickets and forwards; existing tickets can still be served."""
    return await service.set_queue_active(conn, ctx, queue_id, active=False)


@router.post("/v1/queues/{queue_id}/rotate-join-link", response_model=Queue, responses=WRITE_ERRORS)
async def rotate_join_link(queue_id: uuid.UUID, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Replace the queue's self-join link (`join_page`): the old link and its QR code stop working at once.
    409 while self-join is off."""
    return await service.rotate_join_link(conn, ctx, queue_id)


@router.get(
    "/v1/queues/{queue_id}/monitor",
    response_model=Monitor,
    responses=READ_ERRORS,
)
async def queue_monitor(
    queue_id: uuid.UUID,
    request: Request,
    ctx: TenantAnyRole,
    exclude: Annotated[
        list[str],
        Query(
            max_length=20,
            description="Hide tickets whose custom_data field equals a value: `field:value`, repeatable "
            "(e.g. `channel:drive_thru`).",
        ),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=monitor.MAX_GROUP_LIMIT,
            description="At most this many tickets per group (counts are full).",
        ),
    ] = monitor.DEFAULT_GROUP_LIMIT,
) -> Response:
    """What a wall display shows: active tickets grouped by category, with privacy-safe names only.

    Readable with a display-role key. Estimates are left out when the queue's show_wait_time is false.
    A disabled queue (`is_active` false) takes no new tickets, but still shows and serves those it has.
    Each group lists the first `limit` tickets in line order; `counts` counts them all. With a display
    key, `exclude` may name only fields whose values the ticket types list (an `enum`, a `const` or a
    boolean in `custom_fields_schema`), else 403: by a free-text field a wall's key could test guesses.
    """
    excludes = monitor.parse_excludes(exclude)
    cache: FeedCache = request.app.state.feed_cache
    key = ("monitor", queue_id, ctx.principal.role, tuple(excludes), limit)

    async def compute() -> bytes:
        async with reading(request) as conn:  # a shared answer needs no connection
            return await monitor.monitor(conn, ctx, queue_id, excludes, limit)

    return Response(content=await cache.answer(ctx.tenant_id, key, compute), media_type="application/json")


@router.get("/v1/queues/{queue_id}/stats", response_model=QueueStats, responses=READ_ERRORS)
async def queue_stats(queue_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    """Counts per state and category, the current estimate and its recent accuracy (docs/estimates.md)."""
    return await monitor.stats(conn, ctx, queue_id)
