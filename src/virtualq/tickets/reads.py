"""Reads of one ticket that arrive together share a statement.

`GET /v1/tickets/{id}` sends one cheap statement, and most of what it costs both sides is the statement's
own share, not the row's: a round trip, waking the database's backend and then the server's event loop,
bind and execute, row security's plans, a snapshot. A statement reading several tickets (`id = ANY($2)`)
pays that once.

How (kit/lines.py): a read of a tenant with fewer than IN_FLIGHT statements running leads at once, on a
connection of its own: alone, a read is exactly what it was before. Reads of the tenant arriving meanwhile
wait in the tenant's line. When a leader's statement returns, it hands everything waiting (up to
`max_batch`) to the first waiter, which becomes the next leader and reads them in one statement, then hands
over in turn.

A read only ever joins a statement that has not started, so it sees every change committed before the
request arrived, as a statement of its own would: this is not a cache.

If a batch fails in any way (an error from PostgreSQL, a lost connection, a cancelled leader), each of its
other reads runs again alone and gets its own answer: a read can be repeated safely.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from virtualq.kit.lines import ALONE, Entry, Lead, Lines, settle
from virtualq.kit.metrics import Metrics

Ticket = dict[str, Any]
# Reads the tickets with these ids (one or more) of the current tenant: the ones found, by id.
Fetch = Callable[[list[uuid.UUID]], Awaitable[dict[uuid.UUID, Ticket]]]

# Statements of one tenant's reads running at once in a process. One alone gives the largest batches, but a
# batch then waits for the one before it even with a core idle; two overlap (bench/run.py, get ticket: the
# same requests per second with 1, 2 or 4, about 10 µs less CPU per read on each side with 1; see
# docs/performance.md), and a slow statement (a batch reaching far down a long line: its positions are
# counted in one pass per line, up to the last of its tickets) holds up only half the reads.
IN_FLIGHT = 2


@dataclass
class ReadBatching:
    max_batch: int = 64  # 1: one statement per read
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        self._lines: Lines[uuid.UUID] = Lines(self.max_batch, IN_FLIGHT)

    async def read(self, tenant_id: uuid.UUID, ticket_id: uuid.UUID, fetch: Fetch) -> Ticket | None:
        """The ticket `ticket_id` of `tenant_id` (None if it has none such), read by `fetch`, alone or
        together with other reads of the tenant's tickets."""
        if self.max_batch <= 1:
            return await self._alone(fetch, ticket_id)
        turn = await self._lines.join(tenant_id, ticket_id)
        if turn is ALONE:
            return await self._alone(fetch, ticket_id)
        if not isinstance(turn, Lead):
            found: Ticket | None = turn
            return found
        return await self._lead(fetch, tenant_id, turn.batch)

    async def _lead(self, fetch: Fetch, tenant_id: uuid.UUID, batch: list[Entry[uuid.UUID]]) -> Ticket | None:
        try:
            try:
                found = await self._fetch(fetch, list({entry.item: None for entry in batch}), len(batch))
            finally:
                self._lines.hand_over(tenant_id)  # however it ends, the next batch goes ahead
        except BaseException:
            for other in batch[1:]:
                settle(other, ALONE)
            raise
        handed: set[uuid.UUID] = {batch[0].item}
        for other in batch[1:]:
            ticket = found.get(other.item)
            if ticket is not None and other.item in handed:
                ticket = dict(ticket)  # two reads of one ticket: each answer is its own to change
            handed.add(other.item)
            settle(other, ticket)
        return found.get(batch[0].item)

    async def _alone(self, fetch: Fetch, ticket_id: uuid.UUID) -> Ticket | None:
        return (await self._fetch(fetch, [ticket_id], 1)).get(ticket_id)

    async def _fetch(self, fetch: Fetch, ticket_ids: list[uuid.UUID], reads: int) -> dict[uuid.UUID, Ticket]:
        found = await fetch(ticket_ids)
        if self.metrics is not None:
            self.metrics.ticket_read_statements.inc()
            self.metrics.ticket_reads.inc(reads)
        return found
