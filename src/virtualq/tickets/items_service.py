"""Ticket items: components with their own (optional) state machine, independent of the ticket's state."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record
from virtualq.errors import InvalidTransition, TypeNotAllowed, ValidationFailed, not_found
from virtualq.events import repository as events
from virtualq.fsm import TransitionRejected
from virtualq.kit.ids import new_id
from virtualq.tickets import items_repository as repository
from virtualq.tickets.rules import effects_of
from virtualq.tickets.schemas import ItemCreate, ItemUpdate, TransitionRequest
from virtualq.tickets.service import check_custom_data, check_employee
from virtualq.type_definitions import repository as types
from virtualq.type_definitions.compiled import compiled


async def add_item(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: ItemCreate) -> Record:
    ticket_type = await conn.fetchrow(
        """SELECT td.item_definition_ids
             FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
            WHERE t.tenant_id = $1 AND t.id = $2""",
        ctx.tenant_id,
        ticket_id,
    )
    if ticket_type is None:
        raise not_found("ticket")
    # Share-locked until the item is written (this runs in a transaction): a change of the item type's
    # machine that drops the start state waits, then finds the item in it and is refused.
    item_type = await types.get_visible(conn, ctx.tenant_id, body.item_type_definition_id, for_share=True)
    if item_type is None or not item_type["is_active"]:
        raise ValidationFailed(
            "item_type_definition_id names no active type of this tenant",
            {"field": "item_type_definition_id"},
        )
    if item_type["id"] not in ticket_type["item_definition_ids"]:
        raise TypeNotAllowed(
            "this ticket's type does not allow items of this type",
            {"item_type_definition_id": str(item_type["id"])},
        )
    compiled_type = compiled(
        item_type["id"], item_type["version"], item_type["fsm_schema"], item_type["custom_fields_schema"]
    )
    check_custom_data(compiled_type, body.custom_data)
    machine = compiled_type.machine
    state = machine.init if machine else None
    effects = effects_of(None, machine.category(machine.init)) if machine else None
    row = await repository.insert_item(
        conn,
        tenant_id=ctx.tenant_id,
        item_id=new_id(),
        history_id=new_id(),
        ticket_id=ticket_id,
        state=state,
        effects=effects,
        fields=body.model_dump(),
    )
    await events.record_for_item(conn, ctx.tenant_id, "item.created", ticket_id, _item_data(row))
    return row


def _item_data(row: Record, **extra: Any) -> dict[str, Any]:
    return {
        "item_id": str(row["id"]),
        "item_type_definition_id": str(row["item_type_definition_id"]),
        "current_state": row["current_state"],
        "quantity": row["quantity"],
        **extra,
    }


async def list_items(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> list[Record]:
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tickets WHERE tenant_id = $1 AND id = $2)", ctx.tenant_id, ticket_id
    )
    if not exists:
        raise not_found("ticket")
    return await repository.list_items(conn, ctx.tenant_id, ticket_id)


async def get_item(conn: Connection, ctx: TenantContext, item_id: uuid.UUID) -> Record:
    row = await repository.get_item(conn, ctx.tenant_id, item_id)
    if row is None:
        raise not_found("item")
    return row


async def _locked(conn: Connection, ctx: TenantContext, item_id: uuid.UUID) -> Record:
    locked = await repository.lock_item_with_type(conn, ctx.tenant_id, item_id)
    if locked is None:
        raise not_found("item")
    return locked


async def update_item(conn: Connection, ctx: TenantContext, item_id: uuid.UUID, body: ItemUpdate) -> Record:
    locked = await _locked(conn, ctx, item_id)
    changes = body.changes()
    if not changes:
        return await get_item(conn, ctx, item_id)
    if "custom_data" in changes:
        check_custom_data(
            compiled(
                locked["item_type_definition_id"],
                locked["type_version"],
                locked["fsm_schema"],
                locked["custom_fields_schema"],
            ),
            changes["custom_data"],
        )
    return await repository.update_item(conn, ctx.tenant_id, item_id, changes)


async def delete_item(conn: Connection, ctx: TenantContext, item_id: uuid.UUID) -> None:
    locked = await _locked(conn, ctx, item_id)
    await repository.delete_item(conn, ctx.tenant_id, item_id)
    await events.record_for_item(
        conn, ctx.tenant_id, "item.deleted", locked["ticket_id"], {"item_id": str(item_id)}
    )


async def transition_item(
    conn: Connection, ctx: TenantContext, item_id: uuid.UUID, request: TransitionRequest
) -> Record:
    await check_employee(conn, ctx.tenant_id, request.employee_id)
    locked = await _locked(conn, ctx, item_id)
    machine = compiled(
        locked["item_type_definition_id"],
        locked["type_version"],
        locked["fsm_schema"],
        locked["custom_fields_schema"],
    ).machine
    current = locked["current_state"]
    if machine is None or current is None:
        raise InvalidTransition(
            "this item's type has no state machine",
            {"current_state": None, "transition": request.transition, "valid_transitions": []},
        )
    try:
        new_state = machine.apply(current, request.transition)
    except TransitionRejected as exc:
        raise InvalidTransition(
            str(exc),
            {
                "current_state": current,
                "transition": request.transition,
                "valid_transitions": exc.valid_transitions,
            },
        ) from None
    row = await repository.apply_item_transition(
        conn,
        tenant_id=ctx.tenant_id,
        item_id=item_id,
        history_id=new_id(),
        previous_state=current,
        new_state=new_state,
        transition=request.transition,
        effects=effects_of(machine.category(current), machine.category(new_state)),
        employee_id=request.employee_id or ctx.principal.employee_id,
        notes=request.notes,
    )
    await events.record_for_item(
        conn,
        ctx.tenant_id,
        "item.state_changed",
        row["ticket_id"],
        _item_data(row, previous_state=current, transition=request.transition),
    )
    return row


async def item_history(conn: Connection, ctx: TenantContext, item_id: uuid.UUID) -> list[Record]:
    if not await repository.item_exists(conn, ctx.tenant_id, item_id):
        raise not_found("item")
    return await repository.item_history(conn, ctx.tenant_id, item_id)
