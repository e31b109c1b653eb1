from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where, set_clause

# Coordinates are two columns (with CHECKs) but one object in the API.
COLUMNS = """id, account_id, name, description, location_name, location_address,
    CASE WHEN latitude IS NULL THEN NULL
         ELSE jsonb_build_object('latitude', latitude, 'longitude', longitude) END AS location_coordinates,
    timezone, config, is_active, created_at, updated_at"""


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """API fields → column values."""
    columns = dict(fields)
    if "location_coordinates" in columns:
        coordinates = columns.pop("location_coordinates")
        columns["latitude"] = coordinates["latitude"] if coordinates else None
        columns["longitude"] = coordinates["longitude"] if coordinates else None
    return columns


async def insert(
    conn: Connection, tenant_id: uuid.UUID, account_id: uuid.UUID, fields: dict[str, Any]
) -> Record:
    columns = _columns(fields)
    return await fetch_returning(
        conn,
        f"""INSERT INTO tenants (id, account_id, name, description, location_name, location_address,
                                 latitude, longitude, timezone, config)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}""",
        tenant_id,
        account_id,
        columns["name"],
        columns.get("description"),
        columns.get("location_name"),
        columns.get("location_address"),
        columns.get("latitude"),
        columns.get("longitude"),
        columns["timezone"],
        columns["config"],
    )


async def get(conn: Connection, tenant_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM tenants WHERE id = $1", tenant_id)
    return row


async def list_page(conn: Connection, where: Where, params: PageParams) -> tuple[list[Record], int]:
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM tenants", where, "created_at, id", params)


async def update(conn: Connection, tenant_id: uuid.UUID, changes: dict[str, Any]) -> Record | None:
    assignments, values = set_clause(_columns(changes), first_param=2)
    row: Record | None = await conn.fetchrow(
        f"UPDATE tenants SET {assignments} WHERE id = $1 RETURNING {COLUMNS}", tenant_id, *values
    )
    return row


async def account_is_active(conn: Connection, account_id: uuid.UUID) -> bool | None:
    active: bool | None = await conn.fetchval("SELECT is_active FROM accounts WHERE id = $1", account_id)
    return active


async def knows_timezone(conn: Connection, name: str) -> bool:
    """Whether the database knows the zone: it numbers tickets by the tenant's local day in it, so a name
    Python's zone list has and its own lacks would fail every create (~7 ms: the view reads the zone files;
    only when a tenant's zone is set)."""
    known: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)", name)
    return known
