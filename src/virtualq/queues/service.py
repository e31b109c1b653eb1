from __future__ import annotations

import uuid

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record
from virtualq.errors import Conflict, ValidationFailed, not_found
from virtualq.events import repository as events
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters
from virtualq.queues import repository, self_join
from virtualq.queues.estimates import forget_queue
from virtualq.queues.schemas import QueueCreate, QueueUpdate
from virtualq.type_definitions import repository as types


async def _check_allowed_types(
    conn: Connection, tenant_id: uuid.UUID, type_ids: list[uuid.UUID] | None
) -> None:
    if type_ids and await types.count_visible(conn, tenant_id, type_ids) != len(type_ids):
        raise ValidationFailed(
            "allowed_type_definition_ids must name active types of this tenant or system types",
            {"field": "allowed_type_definition_ids"},
        )


async def create_queue(conn: Connection, ctx: TenantContext, body: QueueCreate) -> Record:
    if body.tenant_id is not None and body.tenant_id != ctx.tenant_id:
        raise ValidationFailed(
            "tenant_id in the body disagrees with the tenant context", {"field": "tenant_id"}
        )
    fields = body.model_dump(exclude={"tenant_id"})
    if fields["allowed_type_definition_ids"] is not None:
        fields["allowed_type_definition_ids"] = list(dict.fromkeys(fields["allowed_type_definition_ids"]))
    await _check_allowed_types(conn, ctx.tenant_id, fields["allowed_type_definition_ids"])
    if fields["self_join_type_definition_id"] is not None:
        await self_join.check_type(
            conn, ctx.tenant_id, fields["self_join_type_definition_id"], fields["allowed_type_definition_ids"]
        )
        fields["join_token"] = self_join.new_token()
    return await repository.insert(conn, ctx.tenant_id, new_id(), fields)


async def get_queue(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, *, for_change: bool = False
) -> Record:
    row = await repository.get(conn, ctx.tenant_id, queue_id, for_change=for_change)
    if row is None:
        raise not_found("queue")
    return row


async def list_queues(
    conn: Connection, ctx: TenantContext, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    return await repository.list_page(conn, ctx.tenant_id, filters, params)


async def update_queue(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, body: QueueUpdate
) -> Record:
    current = await get_queue(conn, ctx, queue_id, for_change=True)
    changes = body.changes()
    if not changes:
        return current
    if changes.get("allowed_type_definition_ids") is not None:
        changes["allowed_type_definition_ids"] = list(dict.fromkeys(changes["allowed_type_definition_ids"]))
        await _check_allowed_types(conn, ctx.tenant_id, changes["allowed_type_definition_ids"])
    join_type = changes.get(self_join.FIELD, current[self_join.FIELD])
    if join_type is not None and (self_join.FIELD in changes or "allowed_type_definition_ids" in changes):
        allowed = changes.get("allowed_type_definition_ids", current["allowed_type_definition_ids"])
        await self_join.check_type(conn, ctx.tenant_id, join_type, allowed)
        if current["join_token"] is None:
            changes["join_token"] = self_join.new_token()  # kept when self-join is turned off and on
    # Opening or closing the queue through PATCH is announced as /enable and /disable announce it.
    toggled = "is_active" in changes and changes["is_active"] != current["is_active"]
    changed = sorted(name for name in changes if name not in ("is_active", "join_token"))
    if not changed and not toggled:
        return current
    row = await repository.update(conn, ctx.tenant_id, queue_id, changes)
    forget_queue(ctx.tenant_id, queue_id)  # its estimation settings may have changed
    if changed:
        await events.record(
            conn, ctx.tenant_id, "queue.updated", queue_id=queue_id, ticket_id=None, data={"changed": changed}
        )
    if toggled:
        event_type = "queue.enabled" if changes["is_active"] else "queue.disabled"
        await events.record(conn, ctx.tenant_id, event_type, queue_id=queue_id, ticket_id=None, data={})
    return row


async def set_queue_active(conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, active: bool) -> Record:
    current = await get_queue(conn, ctx, queue_id, for_change=True)
    if current["is_active"] == active:
        return current
    row = await repository.update(conn, ctx.tenant_id, queue_id, {"is_active": active})
    event_type = "queue.enabled" if active else "queue.disabled"
    await events.record(conn, ctx.tenant_id, event_type, queue_id=queue_id, ticket_id=None, data={})
    return row


async def rotate_join_link(conn: Connection, ctx: TenantContext, queue_id: uuid.UUID) -> Record:
    """A new self-join link; the old one stops working at once (a printed code is replaced)."""
    current = await get_queue(conn, ctx, queue_id, for_change=True)
    if current[self_join.FIELD] is None:
        raise Conflict(
            "self-join is off for this queue: set self_join_type_definition_id first",
            {"field": self_join.FIELD},
        )
    row = await repository.update(conn, ctx.tenant_id, queue_id, {"join_token": self_join.new_token()})
    await events.record(
        conn,
        ctx.tenant_id,
        "queue.updated",
        queue_id=queue_id,
        ticket_id=None,
        data={"changed": ["join_page"]},
    )
    return row
