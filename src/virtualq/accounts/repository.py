from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where, set_clause

COLUMNS = "id, name, billing_email, billing_address, is_active, created_at, updated_at"


async def insert(conn: Connection, account_id: uuid.UUID, fields: dict[str, Any]) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO accounts (id, name, billing_email, billing_address)
            VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}""",
        account_id,
        fields["name"],
        fields.get("billing_email"),
        fields.get("billing_address"),
    )


async def get(conn: Connection, account_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM accounts WHERE id = $1", account_id)
    return row


async def list_page(conn: Connection, where: Where, params: PageParams) -> tuple[list[Record], int]:
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM accounts", where, "created_at, id", params)


async def update(conn: Connection, account_id: uuid.UUID, changes: dict[str, Any]) -> Record | None:
    assignments, values = set_clause(changes, first_param=2)
    row: Record | None = await conn.fetchrow(
        f"UPDATE accounts SET {assignments} WHERE id = $1 RETURNING {COLUMNS}", account_id, *values
    )
    return row
