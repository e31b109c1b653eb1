"""Ticket SQL. Every query takes tenant_id. Each mutation writes the row and its history in one statement."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.db import EVENTS_WRITTEN, Connection, Record, fetch_returning
from virtualq.kit.pagination import PageParams, fetch_page
from virtualq.kit.sql import Where
from virtualq.queues.estimates import forget_queue
from virtualq.tickets.rules import Effects

TICKET_COLUMNS = """t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.number, t.display_code,
    t.current_state, t.state_category, t.customer_id, t.employee_id, t.references_ticket_id,
    t.estimated_wait_minutes, t.original_estimated_wait_minutes, t.actual_wait_minutes, t.ttl_minutes,
    t.expires_at, t.escalated_at, t.custom_data, t.started_at, t.ready_at, t.completed_at, t.cancelled_at,
    t.counter, t.version, t.created_at, t.updated_at,
    coalesce(current_setting('virtualq.public_base_url', true), '') || '/t/' || t.id || '?token='
        || t.public_token AS customer_page"""

# What a change that does not lock first (tickets/service.transition_ticket) reads: no schemas (the compiled
# type is cached by version), no lock (the change checks `version` and `type_version` itself).
CURRENT_COLUMNS = """t.id, t.employee_id, t.current_state, t.state_category, t.type_definition_id,
    t.queue_id, t.version, t.created_at, t.sort_key, td.version AS type_version"""

# What a change needs of the ticket it locks: the same, and the type's machine and schema.
LOCKED_COLUMNS = f"{CURRENT_COLUMNS}, td.fsm_schema, td.custom_fields_schema"

# The 1-based rank among the queue's waiting tickets: one more than the waiting tickets ahead, counted through
# tickets_waiting_line_idx by a function that may use it under row security (migration 0013).
POSITION = """CASE WHEN t.state_category = 'waiting' THEN
    tickets_waiting_ahead(t.tenant_id, t.queue_id, t.sort_key) + 1 END AS position"""

# The display-safe summary every ticket event carries (service.event_data builds the same in Python), as
# jsonb_build_object arguments over a row with the ticket's columns.
EVENT_SUMMARY = """'display_code', display_code, 'number', number, 'current_state', current_state,
    'state_category', state_category, 'type_definition_id', type_definition_id, 'version', version"""


def ticket_event(event_type: str, extra: str, source: str = "t") -> str:
    """CTE `e` following a CTE `source` of one changed ticket: its event of `event_type`, the summary merged
    with `extra` (SQL expressions: a text and a jsonb object whose keys win, as service.event_data's do)."""
    return f"""e AS (
        INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
        SELECT tenant_id, {event_type}, queue_id, id, jsonb_build_object({EVENT_SUMMARY}) || {extra}
          FROM {source}
    )"""


# One new ticket, as insert_tickets reads it from its JSON array: `n` orders the list (1, 2, ...); the
# booleans are the init state's effects (tickets/rules.Effects); `pace` is the line's minutes per ticket;
# `type_version` the version of the type whose machine gave the start state.
NEW_TICKET_COLUMNS = """n int, id uuid, history_id uuid, type_definition_id uuid, type_version int,
    current_state text, state_category text, customer_id uuid, references_ticket_id uuid,
    estimated_wait_minutes int, ttl_minutes int, custom_data jsonb, leaves bool, ready bool, done bool,
    cancelled bool, pace float8"""


class TypeChanged(Exception):
    """A new ticket's type changed after its start state was read: nothing was inserted."""


def state_change_events(previous_state: str, transition: str, previous_employee: str | None = None) -> str:
    """CTEs `d`, `e` following a CTE `t` of changed tickets: ticket.state_changed for each, plus
    ticket.completed or ticket.cancelled for those reaching such a state (arguments: SQL expressions); with
    `previous_employee` (the assignee before the change), ticket.assigned for those the change assigned to
    someone else, as POST /assign writes it."""
    assigned = ""
    if previous_employee is not None:
        assigned = f"""
        UNION ALL
        SELECT tenant_id, 'ticket.assigned', queue_id, id,
               jsonb_build_object({EVENT_SUMMARY}, 'employee_id', employee_id,
                                  'previous_employee_id', previous_employee_id)
          FROM d WHERE employee_id IS DISTINCT FROM previous_employee_id AND employee_id IS NOT NULL"""
    return f"""d AS (
        SELECT tenant_id, queue_id, id, state_category, display_code, number, current_state,
               type_definition_id, version, employee_id,
               {previous_employee or "NULL::uuid"} AS previous_employee_id,
               jsonb_build_object({EVENT_SUMMARY}, 'previous_state', {previous_state},
                                  'transition', {transition}, 'counter', counter) AS data
          FROM t
    ), e AS (
        INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
        SELECT tenant_id, 'ticket.state_changed', queue_id, id, data FROM d
        UNION ALL
        SELECT tenant_id, CASE state_category WHEN 'done' THEN 'ticket.completed' ELSE 'ticket.cancelled' END,
               queue_id, id, data
          FROM d WHERE state_category IN ('done', 'cancelled'){assigned}
    )"""


# Category-driven timestamps; $-placeholders {leaves}, {ready}, {done}, {cancelled} are booleans. A first
# departure also records the queue whose line the ticket left (a later forward moves no departure).
TIMESTAMP_ASSIGNMENTS = """
    started_at = CASE WHEN {leaves} AND started_at IS NULL THEN now() ELSE started_at END,
    departed_queue_id = CASE WHEN {leaves} AND started_at IS NULL THEN queue_id ELSE departed_queue_id END,
    actual_wait_minutes = CASE WHEN {leaves} AND started_at IS NULL
        THEN round(extract(epoch FROM now() - created_at) / 60)::int ELSE actual_wait_minutes END,
    ready_at = CASE WHEN {ready} THEN now() ELSE ready_at END,
    completed_at = CASE WHEN {done} THEN now() ELSE completed_at END,
    cancelled_at = CASE WHEN {cancelled} THEN now() ELSE cancelled_at END"""


async def insert_tickets(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    queue_id: uuid.UUID,
    timezone: str,
    prefix: str,
    tickets: list[dict[str, Any]],
) -> list[Record]:
    """Number new tickets of one queue (per local day, consecutively in list order), insert them with their
    positions' original estimates, their first history rows and their ticket.created events, in one
    statement; each row comes back with its `position`.

    `tickets`: dicts with the keys of NEW_TICKET_COLUMNS but `n` (tickets/service.create_ticket builds them).

    The counter upsert row-locks (queue, day) until commit, so concurrent creates in one queue get
    consecutive numbers and sort keys in the same order. They first queue on a transaction advisory lock
    per queue: its waiters are woken one at a time, where every waiter for the row wakes at each commit
    and races for it (32 clients creating in one queue: 903-937 -> 1,235-1,245 statements/s, pgbench).

    A waiting ticket joins the end of the line: its position is the queue's waiting count plus the waiting
    tickets before it in the list, the count read after those locks by `queue_waiting_count` (migration
    0010: kept by triggers, so it costs no count of the line; its fresh snapshot sees every create
    committed before ours, which the statement's own snapshot, taken before it waited, would miss).
    Run in autocommit, the lock lasts one round trip.

    Each ticket's type is share-locked at the version its start state was read from (as a transition's
    type is): a type change dropping that state either waits for this statement (and then finds the new
    tickets in it, so it is refused) or comes first, and then nothing is inserted, no number is used, and
    TypeChanged is raised for the caller to read the type again.
    """
    EVENTS_WRITTEN.set(True)
    rows: list[Record] = await conn.fetch(
        f"""
        WITH queued AS (
            SELECT pg_advisory_xact_lock(hashtextextended($2::uuid::text, 0))
        ), x AS (
            SELECT * FROM jsonb_to_recordset($5::jsonb) AS x({NEW_TICKET_COLUMNS})
        ), types AS (
            SELECT td.id, td.version FROM type_definitions td
             WHERE td.id IN (SELECT x.type_definition_id FROM x) FOR SHARE
        ), fresh AS (
            SELECT WHERE NOT EXISTS (SELECT FROM x LEFT JOIN types ON types.id = x.type_definition_id
                                      WHERE types.version IS DISTINCT FROM x.type_version)
        ), counter AS (
            INSERT INTO queue_day_counters AS c (tenant_id, queue_id, local_date, last_number)
            SELECT $1, $2, (now() AT TIME ZONE $3)::date, jsonb_array_length($5::jsonb) FROM queued, fresh
            ON CONFLICT (tenant_id, queue_id, local_date)
                DO UPDATE SET last_number = c.last_number + excluded.last_number
            RETURNING local_date, last_number - jsonb_array_length($5::jsonb) AS before
        ), base AS (
            -- Volatile, so evaluated once, after the counter's lock.
            SELECT c.local_date, c.before, queue_waiting_count($1, $2) AS waiting FROM counter c
        ), placed AS (
            SELECT x.*, b.local_date, b.before + x.n AS number,
                   CASE WHEN x.state_category = 'waiting' THEN b.waiting
                       + count(*) FILTER (WHERE x.state_category = 'waiting') OVER (ORDER BY x.n) END
                       AS position
              FROM x, base b
        ), t AS (
            INSERT INTO tickets (tenant_id, id, queue_id, origin_queue_id, type_definition_id, number,
                                 display_code, local_date, current_state, state_category, customer_id,
                                 references_ticket_id,
                                 estimated_wait_minutes, original_estimated_wait_minutes, ttl_minutes,
                                 expires_at, custom_data, started_at, departed_queue_id,
                                 actual_wait_minutes, ready_at, completed_at, cancelled_at)
            SELECT $1, p.id, $2, $2, p.type_definition_id, p.number,
                   $4 || lpad(p.number::text, greatest(3, length(p.number::text)), '0'),  -- A042, A1234
                   p.local_date, p.current_state, p.state_category, p.customer_id, p.references_ticket_id,
                   p.estimated_wait_minutes,
                   coalesce(p.estimated_wait_minutes, floor(p.position * p.pace + 0.5)::int),
                   p.ttl_minutes, now() + make_interval(mins => p.ttl_minutes), p.custom_data,
                   CASE WHEN p.leaves THEN now() END, CASE WHEN p.leaves THEN $2::uuid END,
                   CASE WHEN p.leaves THEN 0 END,
                   CASE WHEN p.ready THEN now() END, CASE WHEN p.done THEN now() END,
                   CASE WHEN p.cancelled THEN now() END
              FROM placed p ORDER BY p.n  -- sort keys (a sequence default) follow the numbers
            RETURNING *
        ), h AS (
            INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state)
            SELECT t.tenant_id, p.history_id, t.id, NULL, t.current_state
              FROM t JOIN placed p ON p.id = t.id ORDER BY t.number
        ), e AS (
            INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)
            SELECT tenant_id, 'ticket.created', queue_id, id, jsonb_build_object({EVENT_SUMMARY})
              FROM t ORDER BY number
        )
        SELECT {TICKET_COLUMNS}, p.position FROM t JOIN placed p ON p.id = t.id ORDER BY t.number
        """,
        tenant_id,
        queue_id,
        timezone,
        prefix,
        tickets,
    )
    if len(rows) != len(tickets):
        raise TypeChanged
    return rows


async def get_ticket(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> Record | None:
    row: Record | None = await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS}, {POSITION} FROM tickets t WHERE t.tenant_id = $1 AND t.id = $2",
        tenant_id,
        ticket_id,
    )
    return row


# Tickets by id ($2, any number) of the tenant $1, as get_ticket reads one. The positions of the waiting ones
# are counted in one call for all their lines, in one pass over each line (migration 0016), not one count per
# ticket. (One array_agg pass builds both arrays, so the n-th queue and the n-th key are one ticket's.)
TICKETS_BY_IDS = f"""
    WITH found AS MATERIALIZED (SELECT t.* FROM tickets t WHERE t.tenant_id = $1 AND t.id = ANY($2::uuid[])),
         ahead AS (
             SELECT each.queue_id, each.waiting_key, each.ahead
               FROM (SELECT array_agg(queue_id) AS queue_ids, array_agg(sort_key) AS sort_keys FROM found
                      WHERE state_category = 'waiting') waiting
              CROSS JOIN LATERAL tickets_waiting_ahead_lines($1, waiting.queue_ids, waiting.sort_keys) each)
    SELECT {TICKET_COLUMNS}, CASE WHEN t.state_category = 'waiting' THEN a.ahead + 1 END AS position
      FROM found t LEFT JOIN ahead a ON a.queue_id = t.queue_id AND a.waiting_key = t.sort_key"""


async def get_tickets(conn: Connection, tenant_id: uuid.UUID, ticket_ids: list[uuid.UUID]) -> list[Record]:
    """The tickets of `ticket_ids` (those that exist), as get_ticket reads one."""
    rows: list[Record] = await conn.fetch(TICKETS_BY_IDS, tenant_id, ticket_ids)
    return rows


async def lock_ticket_with_type(
    conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID
) -> Record | None:
    """The ticket, row-locked until the transaction ends (serialises changes to one ticket), with its type."""
    row: Record | None = await conn.fetchrow(
        f"""SELECT {LOCKED_COLUMNS}
              FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
             WHERE t.tenant_id = $1 AND t.id = $2
               FOR UPDATE OF t FOR SHARE OF td""",
        tenant_id,
        ticket_id,
    )
    return row


def first_departure(row: Record) -> bool:
    """Did this change make the ticket's first departure from the line (the only kind the line's pace counts:
    started_at is set once)? Both timestamps are the statement's now() then."""
    return row["started_at"] is not None and row["started_at"] == row["updated_at"]


async def current_ticket(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> Record | None:
    """The ticket's state, version and type version as a change starts from them (no lock)."""
    row: Record | None = await conn.fetchrow(
        f"""SELECT {CURRENT_COLUMNS}
              FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
             WHERE t.tenant_id = $1 AND t.id = $2""",
        tenant_id,
        ticket_id,
    )
    return row


async def type_schemas(conn: Connection, type_id: uuid.UUID) -> Record | None:
    """A type's current version and schemas, to compile it (on a process's first use of that version)."""
    row: Record | None = await conn.fetchrow(
        "SELECT version, fsm_schema, custom_fields_schema FROM type_definitions WHERE id = $1", type_id
    )
    return row


STATE_CHANGE_EVENTS = state_change_events("$5::text", "$12::text", "(SELECT employee_id FROM o)")


async def apply_transition(
    conn: Connection,
    *,
    tenant_id: uuid.UUID,
    ticket_id: uuid.UUID,
    history_id: uuid.UUID,
    previous_state: str,
    new_state: str,
    category: str,
    transition: str,
    effects: Effects,
    assign_employee_id: uuid.UUID | None,
    actor_employee_id: uuid.UUID | None,
    notes: str | None,
    expected_version: int,
    type_version: int,
    counter: str | None = None,
) -> Record | None:
    """Change the state (and assignee), set the timestamps, write the history row and the events
    (ticket.state_changed, plus ticket.completed or ticket.cancelled on reaching those) — one statement.

    Only if the ticket is still at `expected_version` and its type at `type_version` (the machine the new
    state came from); None otherwise (another change came first: read again). The type row is share-locked
    until commit, so a type change cannot remove the state being entered while this change is in flight."""
    timestamps = TIMESTAMP_ASSIGNMENTS.format(leaves="$6", ready="$7", done="$8", cancelled="$9")
    row: Record | None = await conn.fetchrow(
        f"""
        WITH o AS (  -- the ticket as it was (a change since the statement's snapshot fails the version check)
            SELECT employee_id FROM tickets WHERE tenant_id = $1 AND id = $2
        ), t AS (
            UPDATE tickets SET current_state = $3, state_category = $4,
                   employee_id = coalesce($10, employee_id), {timestamps},
                   counter = CASE WHEN $4 = 'waiting' THEN NULL ELSE coalesce($17, counter) END,
                   version = version + 1, updated_at = now()
             WHERE tenant_id = $1 AND id = $2 AND version = $15
               AND EXISTS (SELECT 1 FROM type_definitions td
                            WHERE td.id = tickets.type_definition_id AND td.version = $16 FOR SHARE)
            RETURNING *
        ), h AS (
            INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state, transition,
                                        employee_id, notes)
            SELECT tenant_id, $11, id, $5, current_state, $12, $14, $13 FROM t
        ), {STATE_CHANGE_EVENTS}
        SELECT {TICKET_COLUMNS}, {POSITION}, $5::text AS previous_state FROM t
        """,
        tenant_id,
        ticket_id,
        new_state,
        category,
        previous_state,
        effects.leaves_waiting,
        effects.enters_ready,
        effects.enters_done,
        effects.enters_cancelled,
        assign_employee_id,
        history_id,
        transition,
        notes,
        actor_employee_id,
        expected_version,
        type_version,
        counter,
    )
    if row is None:
        return None
    EVENTS_WRITTEN.set(True)
    if first_departure(row):
        forget_queue(tenant_id, row["queue_id"])  # a departure changes the line's pace
    return row


async def update_ticket(
    conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    """Apply `changes` and write the ticket.updated event (naming the changed fields) in one statement."""
    assignments = ["version = version + 1", "updated_at = now()"]
    args: list[Any] = [tenant_id, ticket_id, {"changed": sorted(changes)}]
    for column in ("custom_data", "estimated_wait_minutes"):
        if column in changes:
            args.append(changes[column])
            assignments.append(f"{column} = ${len(args)}")
    if "ttl_minutes" in changes:
        args.append(changes["ttl_minutes"])
        n = len(args)
        assignments.append(f"ttl_minutes = ${n}")
        assignments.append(f"expires_at = created_at + make_interval(mins => ${n})")
        # A limit moved into the future, or removed, is not passed any more: the sweeper handles the new
        # one when it passes (its ticket.expired again), and an escalation for the old one is over.
        not_passed = f"(${n}::int IS NULL OR created_at + make_interval(mins => ${n}) > now())"
        assignments.append(f"expiry_handled_at = CASE WHEN {not_passed} THEN NULL ELSE expiry_handled_at END")
        assignments.append(f"escalated_at = CASE WHEN {not_passed} THEN NULL ELSE escalated_at END")
    row = await fetch_returning(
        conn,
        f"""WITH t AS (UPDATE tickets SET {", ".join(assignments)}
                        WHERE tenant_id = $1 AND id = $2 RETURNING *),
                 {ticket_event("'ticket.updated'", "$3::jsonb")}
            SELECT {TICKET_COLUMNS}, {POSITION} FROM t""",
        *args,
    )
    EVENTS_WRITTEN.set(True)
    return row


def _filters(tenant_id: uuid.UUID, filters: dict[str, Any]) -> Where:
    where = Where().add("t.tenant_id = {}", tenant_id)
    for column in ("queue_id", "current_state", "customer_id", "employee_id", "type_definition_id"):
        where.add_if(f"t.{column} = {{}}", filters.get(column))
    category = filters.get("state_category")
    where.add_if("t.state_category = {}", category.value if category is not None else None)
    where.add_if("t.created_at > {}", filters.get("created_after"))
    where.add_if("t.created_at < {}", filters.get("created_before"))
    where.add_if("t.expires_at < {}", filters.get("expires_before"))
    return where


async def list_tickets(
    conn: Connection, tenant_id: uuid.UUID, filters: dict[str, Any], params: PageParams
) -> tuple[list[Record], int]:
    where = _filters(tenant_id, filters)
    return await fetch_page(
        conn, f"SELECT {TICKET_COLUMNS}, {POSITION} FROM tickets t", where, "created_at, id", params
    )


async def count_tickets(conn: Connection, tenant_id: uuid.UUID, filters: dict[str, Any]) -> int:
    where = _filters(tenant_id, filters)
    count: int = await conn.fetchval(f"SELECT count(*) FROM tickets t {where.sql}", *where.args)
    return count


async def queue_tickets(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, params: PageParams
) -> tuple[list[Record], int]:
    """Active tickets in line order: waiting ones by position, then those being served."""
    # Waiting tickets first (by the line's index), then those in service or ready; only the rows up to the
    # end of the page are read, and a waiting ticket's position is its rank in that order.
    rows = await conn.fetch(
        f"""
        WITH head AS (
            (SELECT t.*, 0 AS grp FROM tickets t
              WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category = 'waiting'
              ORDER BY t.sort_key LIMIT $3::bigint + $4::bigint)
            UNION ALL
            (SELECT t.*, 1 AS grp FROM tickets t
              WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category IN ('in_service', 'ready')
              ORDER BY t.sort_key LIMIT $3::bigint + $4::bigint)
        ), ranked AS (
            SELECT t.*, row_number() OVER (ORDER BY t.grp, t.sort_key) AS rank FROM head t
        )
        SELECT {TICKET_COLUMNS}, CASE WHEN t.grp = 0 THEN t.rank END AS position,
               (SELECT count(*) FROM tickets c
                 WHERE c.tenant_id = $1 AND c.queue_id = $2
                   AND c.state_category NOT IN ('done', 'cancelled')) AS _total
          FROM ranked t
         ORDER BY t.rank
         LIMIT $3 OFFSET $4
        """,
        tenant_id,
        queue_id,
        params.limit,
        params.offset,
    )
    if rows:
        return rows, int(rows[0]["_total"])
    total: int = await conn.fetchval(
        """SELECT count(*) FROM tickets
            WHERE tenant_id = $1 AND queue_id = $2 AND state_category NOT IN ('done', 'cancelled')""",
        tenant_id,
        queue_id,
    )
    return rows, total


async def history(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        """SELECT id, ticket_id, previous_state, new_state, transition, employee_id, notes, created_at
             FROM ticket_history WHERE tenant_id = $1 AND ticket_id = $2 ORDER BY created_at, id""",
        tenant_id,
        ticket_id,
    )


async def ticket_exists(conn: Connection, tenant_id: uuid.UUID, ticket_id: uuid.UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tickets WHERE tenant_id = $1 AND id = $2)", tenant_id, ticket_id
    )
    return found
