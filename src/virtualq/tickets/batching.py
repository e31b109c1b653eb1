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
create of the batch stands, and each runs again alone, so that each request gets its own error. If the
outcome is unknown (the connection was lost, the leader was cancelled), the others answer 503 like a lost
reply of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from virtualq.db import EVENTS_WRITTEN, Connection, Record
from virtualq.errors import Unavailable
from virtualq.kit.metrics import Metrics
from virtualq.tickets import repository


@dataclass(frozen=True)
class _Queue:
    """Where the batch's tickets go: the key of a line (with the event loop) and the statement's arguments."""

    tenant_id: uuid.UUID
    queue_id: uuid.UUID
    timezone: str
    prefix: str


@dataclass(eq=False)
class _Entry:
    ticket: dict[str, Any]
    outcome: asyncio.Future[Any]


@dataclass(eq=False)
class _Lead:
    """Handed to a waiter: run these (it is the first) in one statement."""

    batch: list[_Entry]


_ALONE = object()  # the batch failed: run your create alone


@dataclass(eq=False)
class _Line:
    busy: bool = False
    waiting: deque[_Entry] = field(default_factory=deque)


# Per event loop (each test's app runs its own) and per queue; a line is dropped when it empties.
_lines: dict[tuple[asyncio.AbstractEventLoop, uuid.UUID, uuid.UUID], _Line] = {}


@dataclass
class Batching:
    max_batch: int = 64  # 1: one statement per create
    metrics: Metrics | None = None

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
        loop = asyncio.get_running_loop()
        key = (loop, tenant_id, queue_id)
        line = _lines.get(key)
        if line is None:
            line = _lines[key] = _Line()
        entry = _Entry(ticket, loop.create_future())
        if not line.busy:
            line.busy = True
            batch = [entry]
        else:
            line.waiting.append(entry)
            try:
                outcome = await entry.outcome
            except asyncio.CancelledError:
                # Cancelled just as it was handed a batch: the batch's others run alone, the line goes on.
                if entry.outcome.done() and not entry.outcome.cancelled():
                    handed = entry.outcome.result()
                    if isinstance(handed, _Lead):
                        for other in handed.batch[1:]:
                            _settle(other, _ALONE)
                        self._hand_over(key, line)
                raise
            if outcome is _ALONE:
                return (await self._run(conn, queue, [ticket]))[0]
            if not isinstance(outcome, _Lead):
                row: Record = outcome
                return row
            batch = outcome.batch
        return await self._lead(conn, queue, key, line, batch)

    async def _lead(
        self,
        conn: Connection,
        queue: _Queue,
        key: tuple[asyncio.AbstractEventLoop, uuid.UUID, uuid.UUID],
        line: _Line,
        batch: list[_Entry],
    ) -> Record:
        mine = batch[0]
        batch = [mine, *(entry for entry in batch[1:] if not entry.outcome.done())]  # less the cancelled
        try:
            try:
                rows = await self._run(conn, queue, [entry.ticket for entry in batch])
            finally:
                self._hand_over(key, line)  # however it ends, the next batch goes ahead
        except asyncpg.PostgresError:
            if len(batch) == 1:
                raise
            # Rolled back as a whole: each create runs again alone and gets its own answer.
            for other in batch[1:]:
                _settle(other, _ALONE)
            return (await self._run(conn, queue, [mine.ticket]))[0]
        except BaseException:
            # Unknown outcome (connection lost, cancelled): as a lost reply for every create of the batch.
            for other in batch[1:]:
                _fail(other, Unavailable("The database is unavailable; retry shortly."))
            raise
        by_id = {row["id"]: row for row in rows}
        for other in batch[1:]:
            _settle(other, by_id[other.ticket["id"]])
        return by_id[mine.ticket["id"]]

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

    def _hand_over(self, key: tuple[asyncio.AbstractEventLoop, uuid.UUID, uuid.UUID], line: _Line) -> None:
        """The next batch to the first live waiter, or the line is idle."""
        batch: list[_Entry] = []
        while line.waiting and len(batch) < self.max_batch:
            entry = line.waiting.popleft()
            if not entry.outcome.done():  # a cancelled waiter is skipped
                batch.append(entry)
        if batch:
            batch[0].outcome.set_result(_Lead(batch))
            return
        line.busy = False
        if _lines.get(key) is line:
            del _lines[key]


def _settle(entry: _Entry, outcome: Any) -> None:
    if not entry.outcome.done():
        entry.outcome.set_result(outcome)


def _fail(entry: _Entry, exc: BaseException) -> None:
    if not entry.outcome.done():
        entry.outcome.set_exception(exc)
