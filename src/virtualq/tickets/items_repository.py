"""Ticket item SQL. Every query takes tenant_id; item changes are recorded in the item's own history."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.tickets.rules import Effects

ITEM_COLUMNS = """i.id, i.ticket_id, i.item_type_definition_id, i.current_state, i.external_item_id,
    i.external_item_name, i.quantity, i.unit_price, i.custom_data, i.started_at, i.completed_at, i.version,
    i.created_at, i.updated_at"""


async def insert_item(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    item_id: uuid.UUID,
    history_id: uuid.UUID,
    ticket_id: uuid.UUID,
    state: str | None,
    effects: Effects | None,
    fields: dict[str, Any],
) -> Record:
    """The item and (when its type has a machine) its first history row, in one statement."""
    return await fetch_returning(
        conn,
        f"""
        WITH i AS (
            INSERT INTO ticket_items (tenant_id, id, ticket_id, item_type_definition_id, current_state,
                                      external_item_id, external_item_name, quantity, unit_price, custom_data,
                                      started_at, completed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                    CASE WHEN $11 THEN now() END, CASE WHEN $12 THEN now() END)
            RETURNING *
        ), h AS (
            INSERT INTO item_history (tenant_id, id, item_id, previous_state, new_state)
            SELECT tenant_id, $13, id, NULL, current_state FROM i WHERE current_state IS NOT NULL
        )
        SELECT {ITEM_COLUMNS} FROM i
        """,
        tenant_id,
        item_id,
        ticket_id,
        fields["item_type_definition_id"],
        state,
        fields.get("external_item_id"),
        fields.get("external_item_name"),
        fields["quantity"],
        fields.get("unit_price"),
        fields["custom_data"],
        bool(effects and effects.leaves_waiting),
        bool(effects and effects.enters_done),
        history_id,
    )


async def list_items(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        f"""SELECT {ITEM_COLUMNS} FROM ticket_items i
             WHERE i.tenant_id = $1 AND i.ticket_id = $2 AND NOT i.is_deleted ORDER BY i.created_at, i.id""",
        tenant_id,
        ticket_id,
    )


async def get_item(conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(
        f"""SELECT {ITEM_COLUMNS} FROM ticket_items i
             WHERE i.tenant_id = $1 AND i.id = $2 AND NOT i.is_deleted""",
        tenant_id,
        item_id,
    )
    return row


async def lock_item_with_type(conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(
        """SELECT i.id, i.ticket_id, i.current_state, i.item_type_definition_id, td.version AS type_version,
                  td.fsm_schema, td.custom_fields_schema
             FROM ticket_items i JOIN type_definitions td ON td.id = i.item_type_definition_id
            WHERE i.tenant_id = $1 AND i.id = $2 AND NOT i.is_deleted
              FOR UPDATE OF i FOR SHARE OF td""",
        tenant_id,
        item_id,
    )
    return row


async def apply_item_transition(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    item_id: uuid.UUID,
    history_id: uuid.UUID,
    previous_state: str,
    new_state: str,
    transition: str,
    effects: Effects,
    employee_id: uuid.UUID | None,
    notes: str | None,
) -> Record:
    return await fetch_returning(
        conn,
        f"""
        WITH i AS (
            UPDATE ticket_items SET current_state = $3,
                   started_at = CASE WHEN $4 AND started_at IS NULL THEN now() ELSE started_at END,
                   completed_at = CASE WHEN $5 THEN now() ELSE completed_at END,
                   version = version + 1, updated_at = now()
             WHERE tenant_id = $1 AND id = $2
            RETURNING *
        ), h AS (
            INSERT INTO item_history (tenant_id, id, item_id, previous_state, new_state, transition,
                                      employee_id, notes)
            SELECT tenant_id, $6, id, $7, current_state, $8, $9, $10 FROM i
        )
        SELECT {ITEM_COLUMNS}, $7::text AS previous_state FROM i
        """,
        tenant_id,
        item_id,
        new_state,
        effects.leaves_waiting,
        effects.enters_done,
        history_id,
        previous_state,
        transition,
        employee_id,
        notes,
    )


async def update_item(
    conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    assignments = ["version = version + 1", "updated_at = now()"]
    args: list[Any] = [tenant_id, item_id]
    for column in ("external_item_id", "external_item_name", "quantity", "unit_price", "custom_data"):
        if column in changes:
            args.append(changes[column])
            assignments.append(f"{column} = ${len(args)}")
    return await fetch_returning(
        conn,
        f"""WITH i AS (UPDATE ticket_items SET {", ".join(assignments)}
                        WHERE tenant_id = $1 AND id = $2 RETURNING *)
            SELECT {ITEM_COLUMNS} FROM i""",
        *args,
    )


async def delete_item(conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID) -> None:
    """Soft delete: the row and its history stay for the record."""
    await conn.execute(
        "UPDATE ticket_items SET is_deleted = true, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        item_id,
    )


async def item_history(conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        """SELECT id, item_id, previous_state, new_state, transition, employee_id, notes, created_at
             FROM item_history WHERE tenant_id = $1 AND item_id = $2 ORDER BY created_at, id""",
        tenant_id,
        item_id,
    )


async def item_exists(conn: Connection, tenant_id: uuid.UUID, item_id: uuid.UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM ticket_items WHERE tenant_id = $1 AND id = $2)", tenant_id, item_id
    )
    return found
