from __future__ import annotations

import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from virtualq.auth.principal import Role, TenantContext
from virtualq.db import Connection, Record
from virtualq.errors import ValidationFailed, not_found
from virtualq.kit import clock
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.webhooks import repository
from virtualq.webhooks.schemas import SecretRotation, WebhookCreate, WebhookUpdate
from virtualq.webhooks.ssrf import TargetRefused, check_target

REDACTED = "redacted"


async def _check_url(url: str, allow_private: bool) -> None:
    try:
        await check_target(url, allow_private)
    except TargetRefused as exc:
        raise ValidationFailed(str(exc), {"field": "url"}) from None


async def create(
    conn: Connection, ctx: TenantContext, body: WebhookCreate, allow_private: bool
) -> dict[str, Any]:
    await _check_url(body.url, allow_private)
    secret = new_secret()
    fields = body.model_dump()
    fields["event_types"] = list(dict.fromkeys(fields["event_types"]))
    row = await repository.insert(conn, ctx.tenant_id, new_id(), secret, fields)
    return {**dict(row), "secret": secret}


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def rotate_secret(
    conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID, body: SecretRotation
) -> dict[str, Any]:
    secret = new_secret()
    row = await repository.rotate_secret(
        conn, ctx.tenant_id, webhook_id, secret, body.previous_secret_minutes
    )
    if row is None:
        raise not_found("webhook")
    return {**dict(row), "secret": secret}


async def get(conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID) -> Record:
    row = await repository.get(conn, ctx.tenant_id, webhook_id)
    if row is None:
        raise not_found("webhook")
    return row


def redact_url(url: str) -> str:
    """`url` with its query's values replaced (a receiver's token is often there; credentials before the host
    are refused when the URL is set), a bare part (`?sk_live_...`, no `=`) whole. Staff read subscriptions;
    only admins, who can change them, see the whole URL."""
    parts = urlsplit(url)
    query = "&".join(
        f"{name}={REDACTED}" if sep else REDACTED
        for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def for_reader(row: Record, ctx: TenantContext) -> Record | dict[str, Any]:
    if ctx.principal.role is Role.ADMIN:
        return row
    return {**dict(row), "url": redact_url(row["url"])}


async def update(
    conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID, body: WebhookUpdate, allow_private: bool
) -> Record:
    current = await get(conn, ctx, webhook_id)
    changes = body.changes()
    if not changes:
        return current
    if "url" in changes:
        await _check_url(changes["url"], allow_private)
    if "event_types" in changes:
        changes["event_types"] = list(dict.fromkeys(changes["event_types"]))
    return await repository.update(conn, ctx.tenant_id, webhook_id, changes)


async def deactivate(conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID) -> None:
    await get(conn, ctx, webhook_id)
    await repository.update(conn, ctx.tenant_id, webhook_id, {"is_active": False})


async def list_page(conn: Connection, ctx: TenantContext, params: PageParams) -> tuple[list[Record], int]:
    return await repository.list_page(conn, ctx.tenant_id, params)


async def deliveries(
    conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID, status: str | None, params: PageParams
) -> tuple[list[Record], int]:
    await get(conn, ctx, webhook_id)
    return await repository.deliveries(conn, ctx.tenant_id, webhook_id, status, params)


async def get_delivery(
    conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> Record:
    row = await repository.get_delivery(conn, ctx.tenant_id, webhook_id, delivery_id)
    if row is None:
        raise not_found("delivery")
    return row


async def redeliver(
    conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> Record:
    if not await repository.redeliver(conn, ctx.tenant_id, webhook_id, delivery_id):
        raise not_found("delivery")
    return await get_delivery(conn, ctx, webhook_id, delivery_id)


async def send_test(conn: Connection, ctx: TenantContext, webhook_id: uuid.UUID) -> Record:
    """A `webhook.test` delivery to this subscription only; it is not an event of the log."""
    webhook = await get(conn, ctx, webhook_id)
    delivery_id = new_id()
    payload = {
        "id": None,
        "type": "webhook.test",
        "tenant_id": str(ctx.tenant_id),
        "queue_id": None,
        "ticket_id": None,
        "occurred_at": clock.now().isoformat().replace("+00:00", "Z"),
        "data": {"webhook_id": str(webhook["id"]), "message": "VirtualQ test delivery"},
    }
    await repository.insert_delivery(conn, ctx.tenant_id, delivery_id, webhook["id"], "webhook.test", payload)
    return await get_delivery(conn, ctx, webhook_id, delivery_id)
