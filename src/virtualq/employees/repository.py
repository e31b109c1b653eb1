"""Every query here takes tenant_id: employees are tenant data."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where, set_clause

COLUMNS = "id, tenant_id, fname, lname, email, role, queue_ids, is_active, created_at, updated_at"


async def insert(
    conn: Connection, tenant_id: uuid.UUID, employee_id: uuid.UUID, fields: dict[str, Any]
) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO employees (tenant_id, id, fname, lname, email, role)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}""",
        tenant_id,
        employee_id,
        fields["fname"],
        fields["lname"],
        fields["email"],
        fields["role"],
    )


async def get(conn: Connection, tenant_id: uuid.UUID, employee_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM employees WHERE tenant_id = $1 AND id = $2", tenant_id, employee_id
    )
    return row


async def list_page(
    conn: Connection, tenant_id: uuid.UUID, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    where = Where().add("tenant_id = {}", tenant_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM employees", where, "created_at, id", params)


async def update(
    conn: Connection, tenant_id: uuid.UUID, employee_id: uuid.UUID, changes: dict[str, Any]
) -> Record | None:
    assignments, values = set_clause(changes, first_param=3)
    row: Record | None = await conn.fetchrow(
        f"UPDATE employees SET {assignments} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}",
        tenant_id,
        employee_id,
        *values,
    )
    return row
