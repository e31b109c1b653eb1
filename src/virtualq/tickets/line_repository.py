"""SQL for the waiting line: call next, reorder, forward, assignment. Every query takes tenant_id.

Order is the numeric `sort_key`: new tickets take the next value of a global sequence (FIFO); a ticket moved
between two neighbours takes the midpoint of their keys, so nobody else's row is rewritten. Positions are
computed (rank among waiting tickets), so they are 1..N without gaps whatever happens to the keys.
"""

from __future__ import annotations

import uuid
from decimal import Decimal, localcontext
from typing import Any

from virtualq.db import EVENTS_WRITTEN, Connection, Record, fetch_returning
from virtualq.tickets.repository import (
    LOCKED_COLUMNS,
    POSITION,
    TICKET_COLUMNS,
    TIMESTAMP_ASSIGNMENTS,
    state_change_events,
    ticket_event,
)


async def lock_first_waiting(conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID) -> Record | None:
    """The first waiting ticket nobody else holds, row-locked: concurrent callers get different tickets."""
    row: Record | None = await conn.fetchrow(
        f"""SELECT {LOCKED_COLUMNS}
              FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
             WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category = 'waiting'
             ORDER BY t.sort_key
             LIMIT 1
               FOR UPDATE OF t SKIP LOCKED FOR SHARE OF td""",
        tenant_id,
        queue_id,
    )
    return row


PEEK_FIRST_WAITING = """SELECT t.id, t.type_definition_id, td.version AS type_version, t.current_state
  FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
 WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category = 'waiting'
 ORDER BY t.sort_key
 LIMIT 1"""


# Of several queues, the one whose first waiting ticket comes first: sort keys come from one sequence, so they
# order tickets across queues as within one (the earliest to join, or the one moved ahead). Each queue's head
# is one step of tickets_waiting_line_idx.
FIRST_WAITING_QUEUE = """SELECT q.id FROM unnest($2::uuid[]) AS q(id)
  CROSS JOIN LATERAL (SELECT t.sort_key FROM tickets t
                       WHERE t.tenant_id = $1 AND t.queue_id = q.id AND t.state_category = 'waiting'
                       ORDER BY t.sort_key LIMIT 1) head
 ORDER BY head.sort_key LIMIT 1"""


async def first_waiting_queue(
    conn: Connection, tenant_id: uuid.UUID, queue_ids: list[uuid.UUID]
) -> uuid.UUID | None:
    queue_id: uuid.UUID | None = await conn.fetchval(FIRST_WAITING_QUEUE, tenant_id, queue_ids)
    return queue_id


async def peek_first_waiting(conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID) -> Record | None:
    """The id, type, type version and state of the first waiting ticket, without locking it (so that learning
    a call plan never holds a ticket another counter would take)."""
    row: Record | None = await conn.fetchrow(PEEK_FIRST_WAITING, tenant_id, queue_id)
    return row


# Columns call_first_waiting adds to the called ticket's (not part of the answer).
CALL_FACTS = ("queue_found", "candidate_id", "candidate_type", "candidate_type_version", "candidate_state")

CALL_TIMESTAMPS = TIMESTAMP_ASSIGNMENTS.format(
    leaves="m.leaves", ready="m.ready", done="m.done", cancelled="m.cancelled"
)
CALL_FIRST_WAITING = f"""
WITH q AS (
    SELECT id FROM queues WHERE tenant_id = $1 AND id = $2
), c AS (
    SELECT t.id, t.type_definition_id, t.current_state, t.employee_id, td.version AS type_version
      FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
     WHERE t.tenant_id = $1 AND t.queue_id = $2 AND t.state_category = 'waiting'
     ORDER BY t.sort_key
     LIMIT 1
       FOR UPDATE OF t SKIP LOCKED FOR SHARE OF td
), m AS (
    SELECT c.id AS ticket_id, c.employee_id AS previous_employee_id, p.*
      FROM c JOIN unnest($3::uuid[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::bool[], $10::bool[], $11::bool[], $12::bool[])
                  AS p(type_id, type_version, from_state, via, to_state, to_category,
                       leaves, ready, done, cancelled)
        ON p.type_id = c.type_definition_id AND p.type_version = c.type_version
       AND p.from_state = c.current_state
), t AS (
    UPDATE tickets SET current_state = m.to_state, state_category = m.to_category,
           employee_id = coalesce($13, employee_id),
           {CALL_TIMESTAMPS},
           counter = CASE WHEN m.to_category = 'waiting' THEN NULL ELSE coalesce($16, counter) END,
           version = version + 1, updated_at = now()
      FROM m
     WHERE tickets.tenant_id = $1 AND tickets.id = m.ticket_id
    RETURNING tickets.*, m.via, m.from_state, m.previous_employee_id
), h AS (
    INSERT INTO ticket_history (tenant_id, id, ticket_id, previous_state, new_state, transition,
                                employee_id, notes)
    SELECT tenant_id, $14, id, from_state, current_state, via, $13, $15 FROM t
), {state_change_events("from_state", "via", "previous_employee_id")}
SELECT EXISTS (SELECT 1 FROM q) AS queue_found, c.id AS candidate_id, c.type_definition_id AS candidate_type,
       c.type_version AS candidate_type_version, c.current_state AS candidate_state,
       {TICKET_COLUMNS}, {POSITION}, t.from_state AS previous_state
  FROM (SELECT 1) AS one LEFT JOIN c ON true LEFT JOIN t ON true
"""


async def call_first_waiting(
    conn: Connection,
    tenant_id: uuid.UUID,
    queue_id: uuid.UUID,
    plan: Any,
    *,
    employee_id: uuid.UUID | None,
    history_id: uuid.UUID,
    notes: str | None,
    counter: str | None = None,
) -> Record:
    """Call the first waiting ticket nobody else holds, in one statement: lock it (SKIP LOCKED, so concurrent
    callers get different tickets), move it by the transition `plan` gives for its type version and state,
    write its history and events. The row says whether the queue exists and which ticket was first; the
    ticket's columns are null when there was none or the plan has no entry for it (then nothing changed)."""
    row = await fetch_returning(
        conn,
        CALL_FIRST_WAITING,
        tenant_id,
        queue_id,
        *plan.columns,
        employee_id,
        history_id,
        notes,
        counter,
    )
    if row["id"] is not None:
        EVENTS_WRITTEN.set(True)
    return row


async def lock_queue(conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID) -> Record | None:
    """Serialises moves within one line. NO KEY UPDATE does not block ticket inserts' foreign-key checks."""
    row: Record | None = await conn.fetchrow(
        """SELECT id, is_active, allowed_type_definition_ids FROM queues
            WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE""",
        tenant_id,
        queue_id,
    )
    return row


async def waiting_position(conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, sort_key: Any) -> int:
    position: int = await conn.fetchval(
        "SELECT tickets_waiting_ahead($1, $2, $3) + 1",
        tenant_id,
        queue_id,
        sort_key,
    )
    return position


async def key_for_position(
    conn: Connection, tenant_id: uuid.UUID, queue_id: uuid.UUID, ticket_id: uuid.UUID, position: int | None
) -> Decimal | None:
    """A sort key that puts the ticket at `position` (clamped to 1..N) among the queue's other waiting
    tickets; None means "the end of the line" (the caller takes a fresh sequence value)."""
    if position is None:
        return None
    row = await conn.fetchrow(
        """WITH others AS (
               SELECT sort_key, row_number() OVER (ORDER BY sort_key) AS rank FROM tickets
                WHERE tenant_id = $1 AND queue_id = $2 AND state_category = 'waiting' AND id <> $3)
           SELECT (SELECT count(*) FROM others) AS n,
                  (SELECT sort_key FROM others WHERE rank = $4 - 1) AS before,
                  (SELECT sort_key FROM others WHERE rank = $4) AS after""",
        tenant_id,
        queue_id,
        ticket_id,
        position,
    )
    assert row is not None
    if position > row["n"]:
        return None
    before, after = row["before"], row["after"]
    if before is None:
        key: Decimal = after - 1
        return key
    with localcontext() as context:
        context.prec = 80
        middle: Decimal = (before + after) / 2
    if not before < middle < after:
        raise OverflowError("no sort key left between two neighbours")
    return middle


async def move(
    conn: Connection,
    tenant_id: uuid.UUID,
    ticket_id: uuid.UUID,
    queue_id: uuid.UUID,
    sort_key: Decimal | None,
    event_type: str,
    event_extra: dict[str, Any],
) -> Record:
    """Put the ticket in `queue_id` at `sort_key` (None: the end of the line) and write its event
    (`event_extra` and the new `position` on top of the summary) in one statement. The result carries the
    ticket's new position among the waiting: the statement sees the line as it was before the move, so the
    count leaves out the ticket's own old row."""
    row = await fetch_returning(
        conn,
        f"""WITH t AS (
                UPDATE tickets
                   SET queue_id = $3, sort_key = coalesce($4::numeric, nextval('ticket_sort_key_seq')),
                       -- a counter belongs to the queue that called: a forward leaves it behind
                       counter = CASE WHEN queue_id = $3 THEN counter END,
                       version = version + 1, updated_at = now()
                 WHERE tenant_id = $1 AND id = $2 RETURNING *
            ), p AS (
                SELECT t.*, CASE WHEN t.state_category = 'waiting' THEN
                    tickets_waiting_ahead(t.tenant_id, t.queue_id, t.sort_key, t.id) + 1 END AS position
                  FROM t
            ), {ticket_event("$5::text", "jsonb_build_object('position', position) || $6::jsonb", "p")}
            SELECT {TICKET_COLUMNS}, t.sort_key, t.position FROM p t""",
        tenant_id,
        ticket_id,
        queue_id,
        sort_key,
        event_type,
        event_extra,
    )
    EVENTS_WRITTEN.set(True)
    return row


# ticket.assigned or ticket.unassigned ($3: the new employee or NULL; $4: the previous one).
ASSIGNMENT_EVENT = ticket_event(
    "CASE WHEN $3::uuid IS NULL THEN 'ticket.unassigned' ELSE 'ticket.assigned' END",
    "jsonb_build_object('employee_id', $3::uuid, 'previous_employee_id', $4::uuid)",
)


async def set_employee(
    conn: Connection,
    tenant_id: uuid.UUID,
    ticket_id: uuid.UUID,
    employee_id: uuid.UUID | None,
    previous_employee_id: uuid.UUID | None,
) -> Record:
    """Assign, or with None unassign, and write ticket.assigned or ticket.unassigned in one statement."""
    row = await fetch_returning(
        conn,
        f"""WITH t AS (UPDATE tickets SET employee_id = $3, version = version + 1, updated_at = now()
                        WHERE tenant_id = $1 AND id = $2 RETURNING *),
                 {ASSIGNMENT_EVENT}
            SELECT {TICKET_COLUMNS}, {POSITION} FROM t""",
        tenant_id,
        ticket_id,
        employee_id,
        previous_employee_id,
    )
    EVENTS_WRITTEN.set(True)
    return row


RECALL_EVENT = ticket_event(
    "'ticket.recalled'", "jsonb_build_object('counter', counter, 'employee_id', $4::uuid)"
)


async def recall(
    conn: Connection,
    tenant_id: uuid.UUID,
    ticket_id: uuid.UUID,
    counter: str | None,
    employee_id: uuid.UUID | None,
) -> Record:
    """Call a called ticket again (its counter changed if given), and write ticket.recalled, in one
    statement."""
    row = await fetch_returning(
        conn,
        f"""WITH t AS (UPDATE tickets SET counter = coalesce($3, counter), version = version + 1,
                               updated_at = now()
                        WHERE tenant_id = $1 AND id = $2 RETURNING *),
                 {RECALL_EVENT}
            SELECT {TICKET_COLUMNS}, {POSITION} FROM t""",
        tenant_id,
        ticket_id,
        counter,
        employee_id,
    )
    EVENTS_WRITTEN.set(True)
    return row
