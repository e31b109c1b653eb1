from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response, status

from virtualq.auth.principal import TenantAdmin, TenantStaff
from virtualq.db import ReadConn, WriteConn
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS
from virtualq.kit.schemas import Page
from virtualq.webhooks import service
from virtualq.webhooks.schemas import (
    Delivery,
    SecretRotation,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookUpdate,
)

router = APIRouter(tags=["webhooks"])


def _allow_private(request: Request) -> bool:
    allowed: bool = request.app.state.settings.webhook_allow_private_targets
    return allowed


@router.post("/v1/webhooks", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated,
             responses=WRITE_ERRORS)  # fmt: skip
async def create_webhook(body: WebhookCreate, request: Request, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Subscribe a URL to event types (empty: all). The signing secret is in this response only (a retry
    with the same Idempotency-Key gets the subscription without it). URLs that resolve to private or
    loopback addresses are refused unless the server allows them."""
    request.state.idempotency_redact = "secret"
    return await service.create(conn, ctx, body, _allow_private(request))


@router.get("/v1/webhooks", response_model=Page[Webhook], responses=READ_ERRORS)
async def list_webhooks(ctx: TenantStaff, conn: ReadConn, page: PageQuery) -> Any:
    """Staff see each URL with its password and query values replaced by `redacted`."""
    rows, total = await service.list_page(conn, ctx, page)
    return page_envelope([service.for_reader(row, ctx) for row in rows], total, page)


@router.get("/v1/webhooks/{webhook_id}", response_model=Webhook, responses=READ_ERRORS)
async def get_webhook(webhook_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    """Staff see the URL with its password and query values replaced by `redacted`."""
    return service.for_reader(await service.get(conn, ctx, webhook_id), ctx)


@router.patch("/v1/webhooks/{webhook_id}", response_model=Webhook, responses=WRITE_ERRORS)
@router.put("/v1/webhooks/{webhook_id}", response_model=Webhook, responses=WRITE_ERRORS)
async def update_webhook(
    webhook_id: uuid.UUID, body: WebhookUpdate, request: Request, ctx: TenantAdmin, conn: WriteConn
) -> Any:
    return await service.update(conn, ctx, webhook_id, body, _allow_private(request))


@router.post("/v1/webhooks/{webhook_id}/rotate-secret", response_model=WebhookCreated, responses=WRITE_ERRORS)
async def rotate_webhook_secret(
    webhook_id: uuid.UUID,
    request: Request,
    ctx: TenantAdmin,
    conn: WriteConn,
    body: Annotated[SecretRotation | None, Body()] = None,
) -> Any:
    """A new signing secret, in this response only. Deliveries are signed with both the new and the old
    one (two `v1=` values) for `previous_secret_minutes` (a day unless told), so that receivers can switch
    without refusing any; then with the new one alone. Rotating again during that time keeps the secret
    from before it (the one receivers may still have) and drops the one in between."""
    request.state.idempotency_redact = "secret"
    return await service.rotate_secret(conn, ctx, webhook_id, body or SecretRotation())


@router.delete("/v1/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_webhook(webhook_id: uuid.UUID, ctx: TenantAdmin, conn: WriteConn) -> Response:
    """Stop delivering: the subscription is deactivated (its delivery log stays readable)."""
    await service.deactivate(conn, ctx, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=Page[Delivery], responses=READ_ERRORS)
async def list_deliveries(
    webhook_id: uuid.UUID,
    ctx: TenantStaff,
    conn: ReadConn,
    page: PageQuery,
    status_filter: Annotated[Literal["pending", "succeeded", "failed"] | None, Query(alias="status")] = None,
) -> Any:
    """Newest first, each with every attempt (status code, error, duration)."""
    rows, total = await service.deliveries(conn, ctx, webhook_id, status_filter, page)
    return page_envelope(rows, total, page)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", response_model=Delivery, responses=READ_ERRORS
)
async def get_delivery(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn
) -> Any:
    return await service.get_delivery(conn, ctx, webhook_id, delivery_id)


@router.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response_model=Delivery,
    responses=WRITE_ERRORS,
)
async def redeliver(
    webhook_id: uuid.UUID, delivery_id: uuid.UUID, request: Request, ctx: TenantAdmin, conn: WriteConn
) -> Any:
    """Send this delivery again now (same delivery id), with a fresh retry window."""
    result = await service.redeliver(conn, ctx, webhook_id, delivery_id)
    request.app.state.webhook_worker.wake()
    return result


@router.post(
    "/v1/webhooks/{webhook_id}/test", status_code=status.HTTP_201_CREATED, response_model=Delivery,
    responses=WRITE_ERRORS,
)  # fmt: skip
async def test_webhook(webhook_id: uuid.UUID, request: Request, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Queue a `webhook.test` delivery to this subscription; follow it in the delivery log."""
    result = await service.send_test(conn, ctx, webhook_id)
    request.app.state.webhook_worker.wake()
    return result
