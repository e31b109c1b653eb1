"""What a wall display and a supervisor need: the monitor feed and the queue's statistics (PRODUCT §4)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection
from virtualq.errors import ValidationFailed, not_found
from virtualq.kit import clock
from virtualq.queues import repository
from virtualq.queues.estimates import (
    Estimator,
    QueueSettings,
    fallback_pace,
    history_needed,
    load_departures,
    minutes_for,
    pace,
    pace_from_history,
)

MONITOR_CATEGORIES = ("waiting", "in_service", "ready")
EXCLUDE_PATTERN = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]{0,63}):(?P<value>.{0,200})$")
ACCURACY_SAMPLE = 50

MONITOR_SQL = """
SELECT * FROM (
    SELECT t.id, t.queue_id, t.type_definition_id, t.display_code, t.current_state, t.state_category,
           t.estimated_wait_minutes, t.custom_data, t.sort_key,
           CASE WHEN t.state_category = 'waiting'
                THEN row_number() OVER (PARTITION BY t.state_category = 'waiting' ORDER BY t.sort_key)
           END AS position,
           c.fname, c.lname,
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'name', coalesce(i.external_item_name, td.type_name), 'quantity', i.quantity)
                            ORDER BY i.created_at, i.id)
                       FROM ticket_items i JOIN type_definitions td ON td.id = i.item_type_definition_id
                      WHERE i.tenant_id = t.tenant_id AND i.ticket_id = t.id AND NOT i.is_deleted),
                    '[]'::jsonb) AS items
      FROM tickets t
      LEFT JOIN customers c ON c.id = t.customer_id
     WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category IN ('waiting', 'in_service', 'ready')
) shown
WHERE NOT EXISTS (
    SELECT 1 FROM unnest($3::text[], $4::text[]) AS x(field, value)
     WHERE shown.custom_data ->> x.field = x.value)
ORDER BY sort_key
"""


def parse_excludes(raw: list[str]) -> list[tuple[str, str]]:
    """`field:value` pairs: hide tickets whose custom_data[field] equals value (as text)."""
    pairs = []
    for item in raw:
        match = EXCLUDE_PATTERN.match(item)
        if match is None:
            raise ValidationFailed(
                "exclude must look like field:value (field: letters, digits, _; up to 64 characters)",
                {"field": "exclude", "value": item[:100]},
            )
        pairs.append((match["field"], match["value"]))
    return pairs


def display_name(fname: str | None, lname: str | None) -> str:
    """Privacy-safe: first name and last initial ("John S."); "Guest" without a customer."""
    first = (fname or "").strip()
    last = (lname or "").strip()
    if not first and not last:
        return "Guest"
    if not first:
        return f"{last[0]}."
    return f"{first} {last[0]}." if last else first


async def monitor(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, excludes: list[tuple[str, str]]
) -> dict[str, Any]:
    queue = await repository.get(conn, ctx.tenant_id, queue_id)
    if queue is None:
        raise not_found("queue")
    groups: dict[str, list[dict[str, Any]]] = {category: [] for category in MONITOR_CATEGORIES}
    if queue["is_active"]:
        rows = await conn.fetch(
            MONITOR_SQL,
            ctx.tenant_id,
            queue_id,
            [field for field, _ in excludes],
            [value for _, value in excludes],
        )
        estimator = Estimator(conn, ctx.tenant_id)
        estimator.remember_queue(queue)
        for row in await estimator.annotate(rows):
            items = row["items"]
            entry: dict[str, Any] = {
                "id": row["id"],
                "display_code": row["display_code"],
                "display_name": display_name(row["fname"], row["lname"]),
                "state": row["current_state"],
                "state_category": row["state_category"],
                "position": row["position"],
                "items": items,
                "item_count": sum(item["quantity"] for item in items),
            }
            if queue["show_wait_time"]:
                entry["estimated_wait_minutes"] = row["estimated_wait_minutes"]
            groups[row["state_category"]].append(entry)
    return {
        "queue_id": queue["id"],
        "queue_name": queue["name"],
        "is_active": queue["is_active"],
        "show_wait_time": queue["show_wait_time"],
        "generated_at": clock.now(),
        "groups": groups,
        "counts": {category: len(entries) for category, entries in groups.items()},
    }


async def stats(conn: Connection, ctx: TenantContext, queue_id: uuid.UUID) -> dict[str, Any]:
    queue = await repository.get(conn, ctx.tenant_id, queue_id)
    if queue is None:
        raise not_found("queue")
    now = clock.now()
    counts = await conn.fetch(
        """SELECT t.current_state, t.state_category, count(*) AS n
             FROM tickets t JOIN tenants te ON te.id = t.tenant_id
            WHERE t.tenant_id = $1 AND t.queue_id = $2
              AND (t.state_category NOT IN ('done', 'cancelled')
                   OR t.local_date = ($3::timestamptz AT TIME ZONE te.timezone)::date)
            GROUP BY 1, 2 ORDER BY 1""",
        ctx.tenant_id,
        queue_id,
        now,
    )
    by_state = {row["current_state"]: row["n"] for row in counts}
    by_category = dict.fromkeys(("waiting", "in_service", "ready", "done", "cancelled"), 0)
    for row in counts:
        by_category[row["state_category"]] += row["n"]
    settings = QueueSettings(queue["wait_estimation_method"], queue["manual_wait_minutes"])
    _, queue_wide = await load_departures(
        conn, ctx.tenant_id, queue_id, [], max(history_needed(settings.method), 6), now
    )
    minutes_per_ticket = pace(settings, [], queue_wide, now)
    if settings.method == "none":
        basis = "none"
    elif settings.method in ("manual", "custom"):
        basis = settings.method
    else:
        basis = "history" if pace_from_history(settings.method, queue_wide, now) is not None else "fallback"
    accuracy = await conn.fetchrow(
        """SELECT count(*) AS n,
                  avg(abs(original_estimated_wait_minutes - actual_wait_minutes))::float8 AS mae,
                  avg(original_estimated_wait_minutes - actual_wait_minutes)::float8 AS bias
             FROM (SELECT original_estimated_wait_minutes, actual_wait_minutes FROM tickets
                    WHERE tenant_id = $1 AND queue_id = $2 AND started_at IS NOT NULL AND started_at <= $3
                      AND actual_wait_minutes IS NOT NULL AND original_estimated_wait_minutes IS NOT NULL
                    ORDER BY started_at DESC LIMIT $4) recent""",
        ctx.tenant_id,
        queue_id,
        now,
        ACCURACY_SAMPLE,
    )
    assert accuracy is not None
    return {
        "queue_id": queue["id"],
        "generated_at": now,
        "counts_by_state": by_state,
        "counts_by_category": by_category,
        "waiting": by_category["waiting"],
        "estimation": {
            "method": settings.method,
            "basis": basis,
            "minutes_per_ticket": round(minutes_per_ticket, 2) if minutes_per_ticket is not None else None,
            "fallback_minutes_per_ticket": fallback_pace(settings),
            "current_estimate_minutes": minutes_for(by_category["waiting"] + 1, minutes_per_ticket),
        },
        "accuracy": {
            "sample_size": accuracy["n"],
            "mean_absolute_error_minutes": _round(accuracy["mae"]),
            "mean_error_minutes": _round(accuracy["bias"]),
        },
    }


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None
