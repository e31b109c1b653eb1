"""Webhook SQL. Every query takes tenant_id, except the worker's claim of due deliveries (a system job)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from virtualq.db import Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where, oldest_first_delete, set_clause

COLUMNS = """id, tenant_id, url, event_types, description, is_active, created_at, updated_at,
    CASE WHEN previous_secret_until > now() THEN previous_secret_until END AS previous_secret_expires_at"""
DELIVERY_COLUMNS = """d.id, d.webhook_id, d.event_type, d.event_cursor AS event_id, d.status, d.attempts,
    CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at, d.last_status_code,
    d.last_error, d.last_duration_ms, d.created_at, d.updated_at, d.payload,
    coalesce((SELECT json_agg(json_build_object('attempt', a.attempt, 'status_code', a.status_code,
                                                 'error', a.error, 'duration_ms', a.duration_ms,
                                                 'created_at', a.created_at) ORDER BY a.attempt)
                FROM webhook_attempts a WHERE a.tenant_id = d.tenant_id AND a.delivery_id = d.id),
             '[]'::json) AS attempt_log"""


async def insert(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, secret: str, fields: dict[str, Any]
) -> Record:
    return await fetch_returning(
        conn,
        f"""INSERT INTO webhooks (tenant_id, id, url, event_types, description, is_active, secret)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}""",
        tenant_id,
        webhook_id,
        fields["url"],
        fields["event_types"],
        fields.get("description"),
        fields["is_active"],
        secret,
    )


async def get(conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2", tenant_id, webhook_id
    )
    return row


async def list_page(conn: Connection, tenant_id: uuid.UUID, params: PageParams) -> tuple[list[Record], int]:
    where = Where().add("tenant_id = {}", tenant_id)
    return await fetch_page(conn, f"SELECT {COLUMNS} FROM webhooks", where, "created_at, id", params)


async def update(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    assignments, values = set_clause(changes, first_param=3)
    return await fetch_returning(
        conn,
        f"UPDATE webhooks SET {assignments} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}",
        tenant_id,
        webhook_id,
        *values,
    )


async def deliveries(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, status: str | None, params: PageParams
) -> tuple[list[Record], int]:
    where = Where().add("d.tenant_id = {}", tenant_id).add("d.webhook_id = {}", webhook_id)
    where.add_if("d.status = {}", status)
    return await fetch_page(
        conn,
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d",
        where,
        "created_at DESC, id DESC",
        params,
    )


async def get_delivery(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> Record | None:
    row: Record | None = await conn.fetchrow(
        f"""SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
             WHERE d.tenant_id = $1 AND d.webhook_id = $2 AND d.id = $3""",
        tenant_id,
        webhook_id,
        delivery_id,
    )
    return row


async def insert_delivery(
    conn: Connection,
    tenant_id: uuid.UUID,
    delivery_id: uuid.UUID,
    webhook_id: uuid.UUID,
    event_type: str,
    payload: dict[str, Any],
) -> None:
    await conn.execute(
        """INSERT INTO webhook_deliveries (tenant_id, id, webhook_id, event_type, payload)
           VALUES ($1, $2, $3, $4, $5)""",
        tenant_id,
        delivery_id,
        webhook_id,
        event_type,
        payload,
    )


async def redeliver(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID
) -> bool:
    """Due again now, with a fresh retry window (attempts keep counting)."""
    result: str = await conn.execute(
        """UPDATE webhook_deliveries
              SET status = 'pending', next_attempt_at = now(), created_at = now(), updated_at = now()
            WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3""",
        tenant_id,
        webhook_id,
        delivery_id,
    )
    return result.endswith(" 1")


# --- the worker (across tenants) ---------------------------------------------------------------------------

CLAIM = """
WITH due AS (
    SELECT tenant_id, id FROM webhook_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now()
     ORDER BY next_attempt_at
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
  FROM due, webhooks w
 WHERE d.tenant_id = due.tenant_id AND d.id = due.id AND w.tenant_id = d.tenant_id AND w.id = d.webhook_id
RETURNING d.tenant_id, d.id, d.webhook_id, d.event_type, d.payload, d.attempts, d.next_attempt_at AS lease,
          extract(epoch FROM now() - d.created_at)::float8 AS age_seconds, w.url, w.secret, w.is_active,
          CASE WHEN w.previous_secret_until > now() THEN w.previous_secret END AS previous_secret
"""


async def claim(conn: Connection, limit: int, lease_seconds: float) -> list[Record]:
    """Take due deliveries for this process: each is leased (pushed into the future) in the same statement,
    so a process that dies mid-delivery leaves it to be retried when the lease runs out. `lease` is the
    time written: record_attempt changes the delivery only if it still holds it."""
    return await conn.fetch(CLAIM, limit, lease_seconds)


async def record_attempt(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    delivery_id: uuid.UUID,
    attempt: int,
    status: str,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    retry_base_seconds: float,
    retry_max_seconds: float,
    jitter: float,
    lease: datetime,
) -> bool:
    """Log the attempt, and set the delivery's outcome unless it changed since the claim that wrote `lease`
    (a redelivery asked for meanwhile is due now and stays so: the outcome of an attempt it overtook must
    not end it). True if the outcome was set.

    A `pending` outcome is retried after `retry_base_seconds` doubled for each attempt logged since the
    delivery's `created_at` (its event, or its last redelivery: a redelivery starts again from the base), at
    most `retry_max_seconds`, times `jitter` (0.5 to 1: "equal jitter", half the step fixed, half random)."""
    updated: bool | None = await conn.fetchval(
        """WITH prior AS (
               SELECT count(*) AS n FROM webhook_attempts a
                WHERE a.tenant_id = $1 AND a.delivery_id = $2
                  AND a.created_at >= (SELECT created_at FROM webhook_deliveries
                                        WHERE tenant_id = $1 AND id = $2)
           ), d AS (
               UPDATE webhook_deliveries
                  SET status = $4, last_status_code = $5, last_error = $6, last_duration_ms = $7,
                      next_attempt_at = CASE WHEN $4 = 'pending' THEN now() + make_interval(secs =>
                              least($9::float8, $8::float8 * power(2, least((SELECT n FROM prior), 60)))
                              * $10::float8)
                          ELSE next_attempt_at END,
                      updated_at = now()
                WHERE tenant_id = $1 AND id = $2 AND status = 'pending' AND next_attempt_at = $11
               RETURNING id
           ), a AS (
               -- Dated when the attempt began: one a redelivery overtook began before the redelivery, so
               -- it is not counted in the redelivered delivery's backoff (prior, above).
               INSERT INTO webhook_attempts (tenant_id, delivery_id, attempt, status_code, error, duration_ms,
                                             created_at)
               SELECT $1, $2, $3, $5, $6, $7, now() - make_interval(secs => $7 / 1000.0)
                WHERE EXISTS (SELECT FROM webhook_deliveries WHERE tenant_id = $1 AND id = $2)
           )
           SELECT EXISTS (SELECT FROM d)""",
        tenant_id,
        delivery_id,
        attempt,
        status,
        status_code,
        error,
        duration_ms,
        retry_base_seconds,
        retry_max_seconds,
        jitter,
        lease,
    )
    return bool(updated)


# The sweeper prunes finished deliveries a batch at a time, oldest first (webhook_deliveries_finished_idx,
# migration 0017).
PRUNE_SQL = oldest_first_delete("webhook_deliveries", "updated_at", "status <> 'pending'")


async def rotate_secret(
    conn: Connection, tenant_id: uuid.UUID, webhook_id: uuid.UUID, secret: str, keep_minutes: int
) -> Record | None:
    """The new secret signs from now on; the one it replaces signs too for `keep_minutes` (0: neither old one
    signs any more). A rotation while an earlier one's overlap runs keeps the secret from before that
    overlap, the one receivers may still have: the secret it replaces was current only for the overlap (a
    response that was lost, two admins rotating at once) and stops signing."""
    row: Record | None = await conn.fetchrow(
        f"""UPDATE webhooks
               SET previous_secret = CASE WHEN $4 = 0 THEN NULL
                                          WHEN previous_secret_until > now() THEN previous_secret
                                          ELSE secret END,
                   previous_secret_until = CASE WHEN $4 > 0 THEN now() + make_interval(mins => $4) END,
                   secret = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = $2
         RETURNING {COLUMNS}""",
        tenant_id,
        webhook_id,
        secret,
        keep_minutes,
    )
    return row


# An overlap that has ended: the old secret signs nothing any more and is not kept (the sweeper's prune).
FORGET_PREVIOUS_SECRETS = """UPDATE webhooks SET previous_secret = NULL, previous_secret_until = NULL
                              WHERE previous_secret_until <= now()"""
