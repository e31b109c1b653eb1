"""Event log SQL. Every event belongs to a tenant; writers pass the connection of the change's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from virtualq.db import EVENTS_WRITTEN, Connection, Record
from virtualq.events.cursor import Cursor
from virtualq.kit.sql import Where, oldest_first_delete

# As a CTE fragment: `INSERT INTO events ... SELECT ... FROM <cte>` inside a mutation's statement.
INSERT_COLUMNS = "INSERT INTO events (tenant_id, type, queue_id, ticket_id, data)"

ENVELOPE_COLUMNS = "tx_id::text::bigint AS tx, id, type, tenant_id, queue_id, ticket_id, occurred_at, data"
# Only events of transactions that can no longer commit anything that sorts earlier.
SETTLED = "tx_id < pg_snapshot_xmin(pg_current_snapshot())"
# Committed events after a cursor that a read has not taken (see `waiting`): settled ones, then those behind
# an older transaction still running. One statement, so both parts see the same snapshot.
WAITING_SQL = """SELECT (SELECT tx_id FROM events
                          WHERE (tx_id, id) > ((SELECT $1::xid8), $2::bigint)
                            AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
                          ORDER BY tx_id, id LIMIT 1) IS NOT NULL
                     OR (SELECT tx_id FROM events WHERE tx_id > pg_snapshot_xmin(pg_current_snapshot())
                          ORDER BY tx_id LIMIT 1) IS NOT NULL"""


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
    EVENTS_WRITTEN.set(True)


async def record_for_item(
    conn: Connection, tenant_id: uuid.UUID, event_type: str, ticket_id: uuid.UUID, data: dict[str, Any]
) -> None:
    """An item event, filed under the item's ticket and that ticket's current queue."""
    await conn.execute(
        f"""{INSERT_COLUMNS}
            SELECT $1, $2, queue_id, id, $4 FROM tickets WHERE tenant_id = $1 AND id = $3""",
        tenant_id,
        event_type,
        ticket_id,
        data,
    )
    EVENTS_WRITTEN.set(True)


async def read(
    conn: Connection,
    *,
    tenant_id: uuid.UUID | None,
    after: Cursor,
    until: Cursor | None = None,
    types: Sequence[str] = (),
    queue_id: uuid.UUID | None = None,
    ticket_id: uuid.UUID | None = None,
    limit: int = 100,
    plan_once: bool = False,
) -> list[Record]:
    """Settled events after `after` (and at most `until`), in cursor order. tenant_id None: every tenant
    (the in-process event hub only).

    plan_once (the hub, which reads with one limit for ever): PostgreSQL otherwise plans this statement
    afresh on every call, because a custom plan for the cursor's value looks cheaper than the generic one,
    and each planning probes the end of the cursor index for the column's actual maximum (about 200
    buffers, more than executing the read). With the cursor's transaction behind a sub-select (an InitPlan:
    unknown when planning, so no probe) and the limit written into the statement, the generic plan costs
    what a custom one does and is kept after the first five calls: the same index scan
    (docs/performance.md)."""
    where = Where()
    where.add_if("tenant_id = {}", tenant_id)
    where.args += [after[0], after[1]]
    n = len(where.args)
    after_tx = f"(SELECT ${n - 1}::xid8)" if plan_once else f"${n - 1}::xid8"
    where.add_constant(f"(tx_id, id) > ({after_tx}, ${n}::bigint)")
    if until is not None:
        where.args += [until[0], until[1]]
        n = len(where.args)
        where.add_constant(f"(tx_id, id) <= (${n - 1}::xid8, ${n}::bigint)")
    where.add_constant(SETTLED)
    if types:
        where.add("type = ANY ({}::text[])", list(types))
    # The queue's own events, and the forwards out of it (events/envelope.concerns_queue).
    where.add_if(
        "(queue_id = {0} OR (type = 'ticket.forwarded' AND data ->> 'previous_queue_id' = {0}::text))",
        queue_id,
    )
    where.add_if("ticket_id = {}", ticket_id)
    if plan_once:
        limit_sql = str(int(limit))
    else:
        where.args.append(limit)
        limit_sql = f"${len(where.args)}"
    rows: list[Record] = await conn.fetch(
        f"SELECT {ENVELOPE_COLUMNS} FROM events {where.sql} ORDER BY tx_id, id LIMIT {limit_sql}",
        *where.args,
    )
    return rows


async def horizon(conn: Connection, tenant_id: uuid.UUID | None = None) -> Cursor:
    """The newest settled event's cursor (of one tenant, or of every tenant): everything at or before it is
    final. (0, 0) when there is none."""
    where = "" if tenant_id is None else "tenant_id = $1 AND"
    row = await conn.fetchrow(
        f"""SELECT tx_id::text::bigint AS tx, id FROM events WHERE {where} {SETTLED}
             ORDER BY tx_id DESC, id DESC LIMIT 1""",
        *(() if tenant_id is None else (tenant_id,)),
    )
    return (row["tx"], row["id"]) if row else (0, 0)


async def waiting(conn: Connection, after: Cursor) -> bool:
    """Committed events after `after` that a read has not taken: settled since the read, or behind an older
    transaction still running. The hub asks after a read that came back short, and looks again shortly
    when the answer is yes: a commit between its read and this check (settling what the read could not
    take yet) is then not left for the next poll, since both parts of the check see one snapshot.

    Behind a running transaction means `tx_id >= xmin`, and no committed row has `tx_id = xmin` (xmin is the
    oldest transaction still running), so that scan starts past xmin, and the settled one stops before it:
    a long transaction that wrote many events (all at xmin, not visible yet) is skipped instead of checked
    entry by entry. Ordered LIMIT 1 subqueries rather than EXISTS: the planner takes the index for them even
    on a table of 10 rows, where for EXISTS it took a sequential scan while the table was small, and the
    connection kept that cached plan as the table grew; the cursor's transaction sits behind a sub-select so
    that the plan is made once (see `read`; docs/performance.md)."""
    return bool(await conn.fetchval(WAITING_SQL, after[0], after[1]))


# The sweeper prunes the log a batch at a time, oldest first (events_occurred_idx), and moves each tenant's
# prune mark up to the newest cursor it deleted, in the same statement (migration 0018): a resume
# from before the mark is told that events after its cursor are gone (`gap`). Two prunes at once write the
# same tenant's mark in turn; the mark only moves forward.
PRUNE_SQL = oldest_first_delete(
    "events",
    "occurred_at",
    returning="tenant_id, tx_id, id",
    then="""marked AS (
    INSERT INTO event_prune_marks AS m (tenant_id, tx_id, id)
    SELECT DISTINCT ON (tenant_id) tenant_id, tx_id, id FROM pruned ORDER BY tenant_id, tx_id DESC, id DESC
    ON CONFLICT (tenant_id) DO UPDATE SET tx_id = excluded.tx_id, id = excluded.id, pruned_at = now()
     WHERE (excluded.tx_id, excluded.id) > (m.tx_id, m.id)
)""",
)

Gap = Literal["expired", "unknown_cursor"]


async def gap(conn: Connection, tenant_id: uuid.UUID, after: Cursor) -> Gap | None:
    """Whether a client resuming after `after` has missed events it can no longer get:
    - "unknown_cursor": the cursor's transaction is one this database has not reached yet, so the cursor
      comes from another database (a restore into a new cluster, a copy); the log cannot resume from it;
    - "expired": the prune has deleted events of the tenant after the cursor (older than the retention);
    - None: nothing is missing; every event after the cursor is still in the log (or still to come)."""
    row = await conn.fetchrow(
        """SELECT $2::xid8 >= pg_snapshot_xmax(pg_current_snapshot()) AS ahead,
                  EXISTS (SELECT 1 FROM event_prune_marks
                           WHERE tenant_id = $1 AND (tx_id, id) > ($2::xid8, $3::bigint)) AS expired""",
        tenant_id,
        after[0],
        after[1],
    )
    assert row is not None
    if row["ahead"]:
        return "unknown_cursor"
    return "expired" if row["expired"] else None
