"""Type definitions visible to a tenant are its own plus the system types (tenant_id IS NULL)."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where, set_clause

COLUMNS = (
    "id, tenant_id, type_code, type_name, description, doc, custom_fields_schema, fsm_schema, "
    "item_definition_ids, is_system_defined, is_active, version, created_at, updated_at"
)


async def insert(
    conn: Connection, type_id: uuid.UUID, tenant_id: uuid.UUID | None, fields: dict[str, Any]
) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO type_definitions (id, tenant_id, type_code, type_name, description, doc,
                                          custom_fields_schema, fsm_schema, item_definition_ids)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}""",
        type_id,
        tenant_id,
        fields["type_code"],
        fields["type_name"],
        fields.get("description"),
        fields.get("doc"),
        fields.get("custom_fields_schema"),
        fields.get("fsm_schema"),
        fields.get("item_definition_ids", []),
    )


async def get_visible(
    conn: Connection, tenant_id: uuid.UUID | None, type_id: uuid.UUID, *, for_share: bool = False
) -> Record | None:
    """A type of `tenant_id` or a system type; with `tenant_id` None, system types only. With `for_share`,
    share-locked until the transaction ends: its machine cannot change (a change waits) while something
    is written in one of its states."""
    row: Record | None = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM type_definitions WHERE id = $1 AND (tenant_id IS NULL OR tenant_id = $2)"
        + (" FOR SHARE" if for_share else ""),
        type_id,
        tenant_id,
    )
    return row


async def list_page(
    conn: Connection,
    tenant_id: uuid.UUID | None,
    filters: CommonFilters,
    include_system: bool,
    params: PageParams,
) -> tuple[list[Record], int]:
    where = Where()
    if include_system:
        where.add("(tenant_id IS NULL OR tenant_id = {})", tenant_id)
    else:
        where.add("tenant_id = {}", tenant_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM type_definitions", where, "created_at, id", params)


async def update(conn: Connection, type_id: uuid.UUID, changes: dict[str, Any], bump_version: bool) -> Record:
    assignments, values = set_clause(changes, first_param=2)
    if bump_version:
        assignments += ", version = version + 1"
    return await fetch_returning(
        conn, f"UPDATE type_definitions SET {assignments} WHERE id = $1 RETURNING {COLUMNS}", type_id, *values
    )


async def count_visible(conn: Connection, tenant_id: uuid.UUID | None, type_ids: list[uuid.UUID]) -> int:
    """How many of `type_ids` are active types visible to `tenant_id` (its own or system types)."""
    found: int = await conn.fetchval(
        """SELECT count(*) FROM type_definitions
            WHERE id = ANY($1::uuid[]) AND is_active AND (tenant_id IS NULL OR tenant_id = $2)""",
        type_ids,
        tenant_id,
    )
    return found


async def live_states_in_use(conn: Connection, type_id: uuid.UUID) -> list[str]:
    """States held by non-terminal tickets or items of this type (any tenant: system types are shared)."""
    rows = await conn.fetch(
        """SELECT current_state FROM tickets
            WHERE type_definition_id = $1 AND state_category NOT IN ('done', 'cancelled')
           UNION
           SELECT current_state FROM ticket_items
            WHERE item_type_definition_id = $1 AND NOT is_deleted AND current_state IS NOT NULL""",
        type_id,
    )
    return sorted(row["current_state"] for row in rows)
