"""Every query takes tenant_id: queues are tenant data."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where, set_clause

COLUMNS = (
    "id, tenant_id, name, description, allowed_type_definition_ids, wait_estimation_method, show_wait_time, "
    "max_wait_minutes, manual_wait_minutes, ticket_prefix, display_order, is_active, created_at, updated_at, "
    "self_join_type_definition_id, join_token"
)
# What a queue's answer adds: the self-join link while self-join is on (the path, or the whole link with
# PUBLIC_BASE_URL, as a ticket's customer_page).
JOIN_PAGE = """CASE WHEN self_join_type_definition_id IS NOT NULL THEN
    coalesce(current_setting('virtualq.public_base_url', true), '') || '/join/' || join_token
    END AS join_page"""
OUTPUT = f"{COLUMNS}, {JOIN_PAGE}"


async def insert(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, fields: dict[str, Any]
) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO queues (tenant_id, id, name, description, allowed_type_definition_ids,
                                wait_estimation_method, show_wait_time, max_wait_minutes, manual_wait_minutes,
                                ticket_prefix, display_order, self_join_type_definition_id, join_token)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {OUTPUT}""",
        tenant_id,
        queue_id,
        fields["name"],
        fields.get("description"),
        fields.get("allowed_type_definition_ids"),
        fields["wait_estimation_method"],
        fields["show_wait_time"],
        fields.get("max_wait_minutes"),
        fields.get("manual_wait_minutes"),
        fields["ticket_prefix"],
        fields["display_order"],
        fields.get("self_join_type_definition_id"),
        fields.get("join_token"),
    )


async def get(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, *, for_change: bool = False
) -> Record | None:
    """The queue; `for_change` locks its row (as the UPDATE would, so tickets can still join) until the
    transaction ends, so that two changes compare against what the other wrote."""
    lock = " FOR NO KEY UPDATE" if for_change else ""
    row: Record | None = await conn.fetchrow(
        f"SELECT {OUTPUT} FROM queues WHERE tenant_id = $1 AND id = $2{lock}", tenant_id, queue_id
    )
    return row


async def get_for_new_ticket(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, type_id: uuid.UUID
) -> Record | None:
    """The queue a ticket joins, its tenant's timezone (ticket numbers count per local day), and the id,
    version and is_active of the ticket's type when the tenant can see it (else NULLs): one round trip."""
    row: Record | None = await conn.fetchrow(
        f"""SELECT {", ".join("q." + column.strip() for column in COLUMNS.split(","))}, te.timezone,
                   td.id AS type_id, td.version AS type_version, td.is_active AS type_is_active
              FROM queues q JOIN tenants te ON te.id = q.tenant_id
              LEFT JOIN type_definitions td ON td.id = $3 AND (td.tenant_id IS NULL OR td.tenant_id = $1)
             WHERE q.tenant_id = $1 AND q.id = $2""",
        tenant_id,
        queue_id,
        type_id,
    )
    return row


async def list_page(
    conn: Connection, tenant_id: uuid.UUID, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    where = Where().add("tenant_id = {}", tenant_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await fetch_page(
        conn, f"SELECT {OUTPUT} FROM queues", where, "display_order, created_at, id", params
    )


async def update(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    assignments, values = set_clause(changes, first_param=3)
    return await fetch_returning(
        conn,
        f"UPDATE queues SET {assignments} WHERE tenant_id = $1 AND id = $2 RETURNING {OUTPUT}",
        tenant_id,
        queue_id,
        *values,
    )
