"""What a wall display and a supervisor need: the monitor feed and the queue's statistics (PRODUCT §4)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from virtualq.auth.principal import Role, TenantContext
from virtualq.db import Connection
from virtualq.errors import Forbidden, ValidationFailed, not_found
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
DEFAULT_GROUP_LIMIT = 100
MAX_GROUP_LIMIT = 1000

# The whole feed is built by PostgreSQL as one JSON text: the response is sent as is, with no per-ticket work
# in Python. $1 tenant, $2 queue, $3/$4 exclude fields/values, $5 per-group limit, $6/$7 type ids and their
# paces (minutes per ticket) for the estimates.
DISPLAY_NAME = """CASE
    WHEN coalesce(btrim(c.fname), '') = '' AND coalesce(btrim(c.lname), '') = '' THEN 'Guest'
    WHEN coalesce(btrim(c.fname), '') = '' THEN left(btrim(c.lname), 1) || '.'
    WHEN coalesce(btrim(c.lname), '') = '' THEN btrim(c.fname)
    ELSE btrim(c.fname) || ' ' || left(btrim(c.lname), 1) || '.' END"""
ESTIMATE = """CASE WHEN v.state_category = 'waiting' THEN coalesce(v.estimated_wait_minutes,
    floor(v.position * (SELECT x.pace FROM unnest($6::uuid[], $7::float8[]) AS x(type_id, pace)
                         WHERE x.type_id = v.type_definition_id) + 0.5)::int) END"""
MONITOR_SQL = """
WITH line AS (
    SELECT t.id, t.type_definition_id, t.display_code, t.current_state, t.state_category,
           t.estimated_wait_minutes, t.custom_data, t.sort_key, t.customer_id, t.counter,
           CASE WHEN t.state_category = 'waiting'
                THEN row_number() OVER (PARTITION BY t.state_category = 'waiting' ORDER BY t.sort_key)
           END AS position
      FROM tickets t
     WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category IN ('waiting', 'in_service', 'ready')
), shown AS (
    SELECT l.*, row_number() OVER (PARTITION BY l.state_category ORDER BY l.sort_key) AS rank_in_group
      FROM line l
     WHERE NOT EXISTS (SELECT 1 FROM unnest($3::text[], $4::text[]) AS x(field, value)
                        WHERE l.custom_data ->> x.field = x.value)
), counts AS (
    SELECT count(*) FILTER (WHERE state_category = 'waiting') AS waiting,
           count(*) FILTER (WHERE state_category = 'in_service') AS in_service,
           count(*) FILTER (WHERE state_category = 'ready') AS ready
      FROM shown
), entries AS (
    SELECT v.state_category, v.sort_key, json_build_object(
               'id', v.id, 'display_code', v.display_code, 'display_name', {display_name},
               'state', v.current_state, 'state_category', v.state_category, 'position', v.position,
               'counter', v.counter,
               {estimate_field}
               'items', coalesce(i.items, '[]'::json), 'item_count', coalesce(i.item_count, 0)) AS entry
      FROM shown v
      LEFT JOIN customers c ON c.id = v.customer_id
      LEFT JOIN LATERAL (
            SELECT json_agg(json_build_object('name', coalesce(it.external_item_name, td.type_name),
                                              'quantity', it.quantity)
                            ORDER BY it.created_at, it.id) AS items,
                   sum(it.quantity)::int AS item_count
              FROM ticket_items it JOIN type_definitions td ON td.id = it.item_type_definition_id
             WHERE it.tenant_id = $1 AND it.ticket_id = v.id AND NOT it.is_deleted) i ON true
     WHERE v.rank_in_group <= $5
)
SELECT json_build_object(
    'waiting', coalesce((SELECT json_agg(entry ORDER BY sort_key) FROM entries
                          WHERE state_category = 'waiting'), '[]'::json),
    'in_service', coalesce((SELECT json_agg(entry ORDER BY sort_key) FROM entries
                             WHERE state_category = 'in_service'), '[]'::json),
    'ready', coalesce((SELECT json_agg(entry ORDER BY sort_key) FROM entries
                        WHERE state_category = 'ready'), '[]'::json)
)::text AS groups,
(SELECT row_to_json(counts) FROM counts)::text AS counts
"""
MONITOR_WITH_ESTIMATES = MONITOR_SQL.format(
    display_name=DISPLAY_NAME, estimate_field=f"'estimated_wait_minutes', {ESTIMATE},"
)
MONITOR_WITHOUT_ESTIMATES = MONITOR_SQL.format(display_name=DISPLAY_NAME, estimate_field="")
# For a display key's `exclude`: per field, whether every active type (the tenant's, or a system type) that
# declares it lists its values (enum, const or a boolean). Fields no type declares are not in the answer.
CATEGORICAL_FIELDS_SQL = """
SELECT f.field, bool_and(coalesce(spec ? 'enum' OR spec ? 'const' OR spec ->> 'type' = 'boolean', false))
       AS categorical
  FROM unnest($2::text[]) AS f(field)
  JOIN type_definitions td ON (td.tenant_id = $1 OR td.tenant_id IS NULL) AND td.is_active
 CROSS JOIN LATERAL (SELECT td.custom_fields_schema -> 'properties' -> f.field AS spec) s
 WHERE jsonb_typeof(s.spec) = 'object'
 GROUP BY f.field"""
WAITING_TYPES_SQL = """SELECT DISTINCT type_definition_id FROM tickets
                        WHERE tenant_id = $1 AND queue_id = $2 AND state_category = 'waiting'"""


async def _check_display_excludes(conn: Connection, tenant_id: uuid.UUID, fields: list[str]) -> None:
    """A display key (a wall, its key often within reach) may hide tickets only by a field whose values the
    ticket types list (a channel, a pickup point): by a free-text field, which tickets stay shown would tell
    it whether someone's custom data holds a guessed value (a name, a phone number)."""
    rows = await conn.fetch(CATEGORICAL_FIELDS_SQL, tenant_id, sorted(set(fields)))
    categorical = {row["field"] for row in rows if row["categorical"]}
    for field in fields:
        if field not in categorical:
            raise Forbidden(
                "a display key may exclude only by a field whose values the ticket types list (an enum, "
                f"such as a channel); {field!r} is not one: declare its values in the types' "
                "custom_fields_schema, or filter with a staff key",
                {"field": "exclude", "value": field},
            )


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


async def monitor(
    conn: Connection,
    ctx: TenantContext,
    queue_id: uuid.UUID,
    excludes: list[tuple[str, str]],
    limit: int = DEFAULT_GROUP_LIMIT,
) -> bytes:
    """The feed as JSON bytes, ready to send (see `Monitor` in schemas.py for its shape)."""
    queue = await repository.get(conn, ctx.tenant_id, queue_id)
    if queue is None:
        raise not_found("queue")
    if excludes and ctx.principal.role is Role.DISPLAY:
        await _check_display_excludes(conn, ctx.tenant_id, [field for field, _ in excludes])
    # A disabled queue takes no new tickets, but those already in it are still served (PRODUCT §4), so the
    # wall display keeps showing them; `is_active` tells it to say the queue is closed to newcomers.
    type_ids: list[uuid.UUID] = []
    paces: list[float | None] = []
    if queue["show_wait_time"]:
        type_ids = [row[0] for row in await conn.fetch(WAITING_TYPES_SQL, ctx.tenant_id, queue_id)]
        estimator = Estimator(conn, ctx.tenant_id)
        estimator.remember_queue(queue)
        await estimator.paces_for((queue_id, type_id) for type_id in type_ids)
        paces = [estimator.pace_of(queue_id, type_id) for type_id in type_ids]
    args: list[Any] = [
        ctx.tenant_id,
        queue_id,
        [field for field, _ in excludes],
        [value for _, value in excludes],
        limit,
    ]
    if queue["show_wait_time"]:
        row = await conn.fetchrow(MONITOR_WITH_ESTIMATES, *args, type_ids, paces)
    else:
        row = await conn.fetchrow(MONITOR_WITHOUT_ESTIMATES, *args)
    assert row is not None
    groups: str = row["groups"]
    counts: str = row["counts"]
    head = orjson.dumps(
        {
            "queue_id": str(queue["id"]),
            "queue_name": queue["name"],
            "is_active": queue["is_active"],
            "show_wait_time": queue["show_wait_time"],
            "generated_at": clock.now(),
        },
        option=orjson.OPT_UTC_Z,
    )
    return head[:-1] + b',"groups":' + groups.encode() + b',"counts":' + counts.encode() + b"}"


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
                    WHERE tenant_id = $1 AND departed_queue_id = $2 AND started_at IS NOT NULL
                      AND started_at <= $3
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
