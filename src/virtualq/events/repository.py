"""Event log SQL. Every event belongs to a tenant; writers pass the connection of the change's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import Connection

# As a CTE fragment: `INSERT INTO events ... SELECT ... FROM <cte>` inside a mutation's statement.
INSERT_COLUMNS = "INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)"


async def record(
    conn: Connection,
    tenant_id: uuid.UUID,
    event_type: str,
    *,
    queue_id: uuid.UUID | None,
    ticket_id: uuid.UUID | None,
    data: dict[str, Any],
) -> None:
    await conn.execute(
        f"{INSERT_COLUMNS} VALUES ($1, $2, $3, $4, $5)", tenant_id, event_type, queue_id, ticket_id, data
    )
