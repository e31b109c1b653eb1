"""Answers of the line's shared read endpoints (the monitor feed, queue tickets), kept per process for up to
FEED_CACHE_SECONDS and dropped as soon as anything in their tenant changes.

Every wall display of a queue asks the same question; one query answers all of them until the line moves.
A tenant's answers are dropped when this process commits a change that wrote events (before the client
gets its answer, so a writer always reads its own write), and when the event hub sees any event of the
tenant (changes made through other processes, the sweeper). The time limit bounds what events do not cover:
estimates drifting with the clock, type renames. A generation per tenant keeps an answer computed before a
change from being stored after it.

Requests that miss while the same answer is being computed wait for that computation instead of starting
their own (`answer`): when an answer expires or a change drops it, the displays and clients asking at that
moment cost one query and one JSON build, not one each (docs/performance.md: 32 clients recomputing at
once were queue tickets' and the monitor's p99).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable

from virtualq.errors import AppError
from virtualq.kit.clock import is_pinned

MAX_TENANTS = 10_000
# What a computation came to: the answer, a refusal (the same for everyone asking), or None (it failed for
# its own reasons, or was cancelled: ask again).
Outcome = bytes | AppError | None


class FeedCache:
    def __init__(self, seconds: float, counted: Callable[[str], None] = lambda outcome: None) -> None:
        self.seconds = seconds
        # Told how each `answer` went (kept, computed, waited, uncached): kit/metrics.py counts them.
        self._counted = counted
        self._answers: dict[uuid.UUID, dict[Hashable, tuple[float, bytes]]] = {}
        self._generations: dict[uuid.UUID, int] = {}
        # Answers being computed, by tenant, question and generation: what each one came to.
        self._flights: dict[tuple[uuid.UUID, Hashable, int], asyncio.Future[Outcome]] = {}

    async def answer(
        self, tenant_id: uuid.UUID, key: Hashable, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The kept answer, the one being computed for the same question since the tenant's last change, or
        a new one from `compute` (kept, and shared with the requests that ask meanwhile). A refusal is the
        same for everyone asking the same question, so it is shared too; a computation that fails for its
        own reasons (its request cancelled, the database gone) is not: one of the waiting requests then
        computes for the others. Nothing is shared with the cache off or the clock pinned."""
        while True:
            body, token = self.lookup(tenant_id, key)
            if body is not None:
                self._counted("kept")
                return body
            if token is None:
                self._counted("uncached")
                return await compute()
            flight = (tenant_id, key, token)
            pending = self._flights.get(flight)
            if pending is None:
                self._counted("computed")
                return await self._lead(flight, compute)
            # Shielded: a waiting request that is cancelled must not cancel the answer others wait for.
            outcome = await asyncio.shield(pending)
            if isinstance(outcome, bytes):
                self._counted("waited")
                return outcome
            if isinstance(outcome, AppError):
                raise type(outcome)(outcome.message, dict(outcome.details))

    async def _lead(
        self, flight: tuple[uuid.UUID, Hashable, int], compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._flights[flight] = future
        try:
            body = await compute()
        except AppError as refusal:
            future.set_result(refusal)
            raise
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self._flights[flight]
        tenant_id, key, token = flight
        self.store(tenant_id, key, token, body)
        future.set_result(body)
        return body

    def lookup(self, tenant_id: uuid.UUID, key: Hashable) -> tuple[bytes | None, int | None]:
        """The cached answer (or None) and a token to `store` a fresh one with (None: do not store)."""
        if self.seconds <= 0 or is_pinned():
            return None, None
        generation = self._generations.get(tenant_id, 0)
        entry = self._answers.get(tenant_id, {}).get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1], generation
        return None, generation

    def store(self, tenant_id: uuid.UUID, key: Hashable, token: int | None, body: bytes) -> None:
        if token is None or token != self._generations.get(tenant_id, 0):
            return  # the tenant changed while this answer was being computed
        if tenant_id not in self._answers and len(self._answers) >= MAX_TENANTS:
            self._answers.clear()
        self._answers.setdefault(tenant_id, {})[key] = (time.monotonic() + self.seconds, body)

    def forget(self, tenant_id: uuid.UUID) -> None:
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
        self._answers.pop(tenant_id, None)
