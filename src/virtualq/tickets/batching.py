"""Group commit for ticket creation: creates into one queue that arrive while another create's statement is
running in this process go into the queue's next statement together.

Every create in a queue waits for the queue's day counter (gap-free numbers), held for one statement and
its commit. One ticket per statement, 32 clients creating in one queue queue up behind each other for a
whole round trip each; a statement that numbers and inserts everything that arrived meanwhile pays one
round trip, one lock and one WAL flush for all of them.

How: the first create of a queue (the leader) runs its statement at once, on its own connection. Creates
arriving meanwhile wait in the queue's line. When the leader's statement returns, it hands everything
waiting (up to `max_batch`) to the first waiter, which becomes the next leader and runs them in one
statement on its own connection, then hands over in turn. Numbers and positions follow arrival order.

If a batch's statement fails with an error from PostgreSQL (the statement was rolled back: autocommit), no
create of the batch stands, and each runs again alone, so that each request gets its own error; likewise
when one of the batch's types changed after its create read it (nothing is written then). If the
outcome is unknown (the connection was lost, the leader was cancelled), the others answer 503 like a lost
reply of their own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from virtualq.db import EVENTS_WRITTEN, Connection, Record
from virtualq.errors import Unavailable
from virtualq.kit.lines import ALONE, Entry, Lead, Lines, fail, settle
from virtualq.kit.metrics import Metrics
from virtualq.tickets import repository


@dataclass(frozen=True)
class _Queue:
    """Where the batch's tickets go: the key of a line and the statement's arguments."""

    tenant_id: uuid.UUID
    queue_id: uuid.UUID
    timezone: str
    prefix: str


@dataclass
class Batching:
    max_batch: int = 64  # 1: one statement per create
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        # One statement at a time per queue: each holds the queue's counter until it commits.
        self._lines: Lines[dict[str, Any]] = Lines(self.max_batch)

    async def insert(
        self,
        conn: Connection,
        *,
        tenant_id: uuid.UUID,
        queue_id: uuid.UUID,
        timezone: str,
        prefix: str,
        ticket: dict[str, Any],
    ) -> Record:
        """Insert one new ticket (repository.insert_tickets' keys), batched with other creates into the
        same queue unless the connection is in a transaction (its change must commit with it)."""
        EVENTS_WRITTEN.set(True)  # this request's change writes events, whoever sends the statement
        queue = _Queue(tenant_id, queue_id, timezone, prefix)
        if self.max_batch <= 1 or conn.is_in_transaction():
            return (await self._run(conn, queue, [ticket]))[0]
        turn = await self._lines.join((tenant_id, queue_id), ticket)
        if turn is ALONE:
            return (await self._run(conn, queue, [ticket]))[0]
        if not isinstance(turn, Lead):
            row: Record = turn
            return row
        return await self._lead(conn, queue, turn.batch)

    async def _lead(self, conn: Connection, queue: _Queue, batch: list[Entry[dict[str, Any]]]) -> Record:
        mine = batch[0]
        try:
            try:
                rows = await self._run(conn, queue, [entry.item for entry in batch])
            finally:
                self._lines.hand_over((queue.tenant_id, queue.queue_id))  # the next batch goes ahead
        except (asyncpg.PostgresError, repository.TypeChanged):
            if len(batch) == 1:
                raise
            # Rolled back (or, a type having changed, not written) as a whole: each create runs again alone
            # and gets its own answer.
            for other in batch[1:]:
                settle(other, ALONE)
            return (await self._run(conn, queue, [mine.item]))[0]
        except BaseException:
            # Unknown outcome (connection lost, cancelled): as a lost reply for every create of the batch.
            for other in batch[1:]:
                fail(other, Unavailable("The database is unavailable; retry shortly."))
            raise
        by_id = {row["id"]: row for row in rows}
        for other in batch[1:]:
            settle(other, by_id[other.item["id"]])
        return by_id[mine.item["id"]]

    async def _run(self, conn: Connection, queue: _Queue, tickets: list[dict[str, Any]]) -> list[Record]:
        numbered = [{**ticket, "n": n} for n, ticket in enumerate(tickets, 1)]
        rows = await repository.insert_tickets(
            conn,
            tenant_id=queue.tenant_id,
            queue_id=queue.queue_id,
            timezone=queue.timezone,
            prefix=queue.prefix,
            tickets=numbered,
        )
        if self.metrics is not None:
            self.metrics.create_statements.inc()
            self.metrics.tickets_created.inc(len(rows))
        return rows
