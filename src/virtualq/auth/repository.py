from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where

COLUMNS = (
    "id, name, key_prefix, scope, role, account_id, tenant_id, employee_id, created_by, revoked_at, "
    "rate_limit_per_minute, rate_limit_burst, created_at, updated_at"
)


async def find_usable_key(conn: Connection, key_hash: bytes) -> Record | None:
    """The unrevoked key with this digest, whether its owner is active (account, tenant, and for a staff key
    its employee) and whether its employee is (the employee's row is under row security: `conn` must see
    every tenant's)."""
    row: Record | None = await conn.fetchrow(
        """SELECT k.id, k.scope, k.role, k.account_id, k.tenant_id, k.employee_id,
                  k.rate_limit_per_minute, k.rate_limit_burst,
                  coalesce(a.is_active, true) AND coalesce(t.is_active, true)
                      AND (k.role <> 'staff' OR coalesce(e.is_active, k.employee_id IS NULL)) AS owner_active,
                  coalesce(e.is_active, false) AS employee_active
             FROM api_keys k
             LEFT JOIN accounts a ON a.id = k.account_id
             LEFT JOIN tenants t ON t.id = k.tenant_id
             LEFT JOIN employees e ON e.id = k.employee_id
            WHERE k.key_hash = $1 AND k.revoked_at IS NULL""",
        key_hash,
    )
    return row


async def tenant_account(conn: Connection, tenant_id: uuid.UUID) -> uuid.UUID | None:
    account_id: uuid.UUID | None = await conn.fetchval(
        "SELECT account_id FROM tenants WHERE id = $1", tenant_id
    )
    return account_id


async def insert(
    conn: Connection, key_id: uuid.UUID, key_hash: bytes, prefix: str, fields: dict[str, Any]
) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO api_keys (id, name, key_prefix, key_hash, scope, role, account_id, tenant_id,
                                  employee_id, created_by, rate_limit_per_minute, rate_limit_burst)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}""",
        key_id,
        fields["name"],
        prefix,
        key_hash,
        fields["scope"],
        fields["role"],
        fields.get("account_id"),
        fields.get("tenant_id"),
        fields.get("employee_id"),
        fields.get("created_by"),
        fields.get("rate_limit_per_minute"),
        fields.get("rate_limit_burst"),
    )


async def get(conn: Connection, key_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return row


async def list_page(conn: Connection, where: Where, params: PageParams) -> tuple[list[Record], int]:
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM api_keys", where, "created_at, id", params)


async def set_limits(conn: Connection, key_id: uuid.UUID, changes: dict[str, int | None]) -> Record:
    assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    return await fetch_returning(
        conn,
        f"UPDATE api_keys SET {assignments}, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}",
        key_id,
        *changes.values(),
    )


async def revoke(conn: Connection, key_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), updated_at = now() WHERE id = $1",
        key_id,
    )


async def employee_exists(conn: Connection, tenant_id: uuid.UUID, employee_id: uuid.UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM employees WHERE tenant_id = $1 AND id = $2 AND is_active)",
        tenant_id,
        employee_id,
    )
    return found
