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

from virtualq.kit.clock import is_pinned

MAX_TENANTS = 10_000


class FeedCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._answers: dict[uuid.UUID, dict[Hashable, tuple[float, bytes]]] = {}
        self._generations: dict[uuid.UUID, int] = {}
        # Answers being computed, by tenant, question and generation; None: the computation failed.
        self._flights: dict[tuple[uuid.UUID, Hashable, int], asyncio.Future[bytes | None]] = {}

    async def answer(
        self, tenant_id: uuid.UUID, key: Hashable, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The kept answer, the one being computed for the same question since the tenant's last change, or
        a new one from `compute` (kept, and shared with the requests that ask meanwhile). A computation that
        fails (a refusal, a cancelled request) is not shared: each waiting request then asks on its own."""
        body, token = self.lookup(tenant_id, key)
        if body is not None:
            return body
        if token is None:
            return await compute()
        flight = (tenant_id, key, token)
        pending = self._flights.get(flight)
        if pending is not None:
            # Shielded: a waiting request that is cancelled must not cancel the answer others wait for.
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            body = await compute()
            self.store(tenant_id, key, token, body)
            return body
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._flights[flight] = future
        try:
            body = await compute()
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self._flights[flight]
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
