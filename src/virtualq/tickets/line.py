"""Queue operations on tickets (PRODUCT §4): call next, reorder, forward, assign, unassign."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record
from virtualq.errors import (
    Conflict,
    QueueDisabled,
    QueueEmpty,
    TypeNotAllowed,
    ValidationFailed,
    not_found,
)
from virtualq.events import repository as events
from virtualq.fsm import Category
from virtualq.queues import repository as queues
from virtualq.tickets import line_repository as line
from virtualq.tickets import repository as tickets
from virtualq.tickets.schemas import CallNextRequest, ForwardRequest, ReorderRequest
from virtualq.tickets.service import _apply, _compile, annotated, check_employee, event_data, no_way

# Call next never cancels by default: it prefers service, then ready, then done (docs/decisions.md).
CALL_TARGETS = (Category.IN_SERVICE, Category.READY, Category.DONE)


async def call_next(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, body: CallNextRequest
) -> dict[str, Any]:
    """Take the first waiting ticket nobody else is taking, move it out of waiting, assign the employee."""
    if await queues.get(conn, ctx.tenant_id, queue_id) is None:
        raise not_found("queue")
    await check_employee(conn, ctx.tenant_id, body.employee_id)
    locked = await line.lock_first_waiting(conn, ctx.tenant_id, queue_id)
    if locked is None:
        raise QueueEmpty("nobody is waiting in this queue", {"queue_id": str(queue_id)})
    machine = _compile(
        locked["type_definition_id"],
        locked["type_version"],
        locked["fsm_schema"],
        locked["custom_fields_schema"],
    ).machine
    assert machine is not None
    transition = body.transition
    if transition is None:
        for category in CALL_TARGETS:
            transition = machine.first_transition_into(locked["current_state"], [category])
            if transition is not None:
                break
    if transition is None:
        raise no_way(machine, locked["current_state"], "out of the waiting line")
    employee_id = body.employee_id or ctx.principal.employee_id
    return await _apply(conn, ctx, locked, machine, transition, employee_id, body.notes)


async def _locked(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> Record:
    locked = await tickets.lock_ticket_with_type(conn, ctx.tenant_id, ticket_id)
    if locked is None:
        raise not_found("ticket")
    return locked


async def _key_for(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, ticket_id: uuid.UUID, position: int | None
) -> Any:
    try:
        return await line.key_for_position(conn, ctx.tenant_id, queue_id, ticket_id, position)
    except OverflowError:
        raise Conflict("this line has been reordered too finely; try again after it moves on") from None


async def reorder(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: ReorderRequest
) -> dict[str, Any]:
    locked = await _locked(conn, ctx, ticket_id)
    if locked["state_category"] != Category.WAITING:
        raise ValidationFailed(
            "only a waiting ticket has a place in line",
            {"field": "position", "current_state": locked["current_state"]},
        )
    queue_id = locked["queue_id"]
    await line.lock_queue(conn, ctx.tenant_id, queue_id)
    previous = await line.waiting_position(conn, ctx.tenant_id, queue_id, locked["sort_key"])
    key = await _key_for(conn, ctx, queue_id, ticket_id, body.position)
    row = await line.move(conn, ctx.tenant_id, ticket_id, queue_id, key)
    position = await line.waiting_position(conn, ctx.tenant_id, queue_id, row["sort_key"])
    data = event_data(row, previous_position=previous, position=position, reason=body.reason)
    await events.record(
        conn, ctx.tenant_id, "ticket.reordered", queue_id=queue_id, ticket_id=ticket_id, data=data
    )
    ticket = await annotated(conn, ctx, {**dict(row), "position": position})
    ticket["previous_position"] = previous
    return ticket


async def forward(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: ForwardRequest
) -> dict[str, Any]:
    locked = await _locked(conn, ctx, ticket_id)
    if locked["queue_id"] == body.target_queue_id:
        raise ValidationFailed("the ticket is already in this queue", {"field": "target_queue_id"})
    if Category(locked["state_category"]).is_terminal:
        raise ValidationFailed(
            "a finished or cancelled ticket cannot be forwarded",
            {"field": "ticket_id", "current_state": locked["current_state"]},
        )
    target = await line.lock_queue(conn, ctx.tenant_id, body.target_queue_id)
    if target is None:
        raise not_found("queue")
    if not target["is_active"]:
        raise QueueDisabled(
            "the target queue is disabled and accepts no forwards", {"queue_id": str(target["id"])}
        )
    allowed = target["allowed_type_definition_ids"]
    if allowed and locked["type_definition_id"] not in allowed:
        raise TypeNotAllowed(
            "the target queue does not accept tickets of this type",
            {"queue_id": str(target["id"]), "type_definition_id": str(locked["type_definition_id"])},
        )
    position = body.position if locked["state_category"] == Category.WAITING else None
    key = await _key_for(conn, ctx, target["id"], ticket_id, position)
    row = await line.move(conn, ctx.tenant_id, ticket_id, target["id"], key)
    new_position = (
        await line.waiting_position(conn, ctx.tenant_id, target["id"], row["sort_key"])
        if row["state_category"] == Category.WAITING
        else None
    )
    data = event_data(
        row,
        previous_queue_id=str(locked["queue_id"]),
        queue_id=str(target["id"]),
        position=new_position,
        reason=body.reason,
    )
    await events.record(
        conn, ctx.tenant_id, "ticket.forwarded", queue_id=target["id"], ticket_id=ticket_id, data=data
    )
    ticket = await annotated(conn, ctx, {**dict(row), "position": new_position})
    ticket["previous_queue_id"] = locked["queue_id"]
    return ticket


async def assign(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, employee_id: uuid.UUID | None
) -> dict[str, Any]:
    """Assign `employee_id`, or unassign with None."""
    locked = await _locked(conn, ctx, ticket_id)
    if employee_id is not None:
        await check_employee(conn, ctx.tenant_id, employee_id)
    row = await line.set_employee(conn, ctx.tenant_id, ticket_id, employee_id)
    previous = locked["employee_id"]
    event_type = "ticket.assigned" if employee_id is not None else "ticket.unassigned"
    data = event_data(
        row,
        employee_id=str(employee_id) if employee_id else None,
        previous_employee_id=str(previous) if previous else None,
    )
    await events.record(
        conn, ctx.tenant_id, event_type, queue_id=row["queue_id"], ticket_id=ticket_id, data=data
    )
    return await annotated(conn, ctx, row)
