"""Answers of the line's shared read endpoints (the monitor feed, queue tickets), kept per process for up to
FEED_CACHE_SECONDS and dropped as soon as anything in their tenant changes.

Every wall display of a queue asks the same question; one query answers all of them until the line moves.
A tenant's answers are dropped when this process commits a change that wrote events (before the client
gets its answer, so a writer always reads its own write), and when the event hub sees any event of the
tenant (changes made through other processes, the sweeper). The time limit bounds what events do not cover:
estimates drifting with the clock, type renames. A generation per tenant keeps an answer computed before a
change from being stored after it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Hashable

from virtualq.kit.clock import is_pinned

MAX_TENANTS = 10_000


class FeedCache:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._answers: dict[uuid.UUID, dict[Hashable, tuple[float, bytes]]] = {}
        self._generations: dict[uuid.UUID, int] = {}

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
