from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where, set_clause

COLUMNS = "id, account_id, fname, lname, email, phone, is_active, created_at, updated_at"


async def insert(
    conn: Connection, customer_id: uuid.UUID, account_id: uuid.UUID, fields: dict[str, Any]
) -> Record | None:
    """None when the id is already taken."""
    row: Record | None = await conn.fetchrow(
        f"""INSERT INTO customers (id, account_id, fname, lname, email, phone)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}""",
        customer_id,
        account_id,
        fields.get("fname"),
        fields.get("lname"),
        fields.get("email"),
        fields.get("phone"),
    )
    return row


async def get(conn: Connection, account_id: uuid.UUID | None, customer_id: uuid.UUID) -> Record | None:
    """`account_id` None means any account (platform keys)."""
    row: Record | None = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM customers WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)",
        customer_id,
        account_id,
    )
    return row


async def list_page(conn: Connection, where: Where, params: PageParams) -> tuple[list[Record], int]:
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM customers", where, "created_at, id", params)


async def update(conn: Connection, customer_id: uuid.UUID, changes: dict[str, Any]) -> Record | None:
    assignments, values = set_clause(changes, first_param=2)
    row: Record | None = await conn.fetchrow(
        f"UPDATE customers SET {assignments} WHERE id = $1 RETURNING {COLUMNS}", customer_id, *values
    )
    return row
