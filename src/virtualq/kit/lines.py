"""Requests that share statements: the line behind tickets/batching.py (creates) and tickets/reads.py (reads).

Requests with the same key (a queue, a tenant) join its line. While fewer than `in_flight` statements of that
key are running, a request leads at once: it runs a statement for itself alone. Otherwise it waits. When a
leader's statement returns, the leader hands everything waiting (up to `max_batch`, in arrival order) to the
first waiter, which leads that batch in one statement of its own and hands over in turn; a leader with no
one waiting frees its place. A request only ever joins a statement that has not started.

The leader settles the others of its batch with their results, or with `ALONE` when the batch failed and
each should run alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ALONE = object()  # the batch failed: run your own statement alone


@dataclass(eq=False)
class Entry(Generic[T]):
    item: T
    outcome: asyncio.Future[Any]


@dataclass(eq=False)
class Lead(Generic[T]):
    """Handed to a waiter: lead these (its own entry first) in one statement."""

    batch: list[Entry[T]]


@dataclass(eq=False)
class _Line(Generic[T]):
    running: int = 0  # statements running, at most in_flight
    waiting: deque[Entry[T]] = field(default_factory=deque)


class Lines(Generic[T]):
    def __init__(self, max_batch: int, in_flight: int = 1) -> None:
        self.max_batch = max_batch
        self.in_flight = in_flight
        # Per event loop (each test's app runs its own) and key; a line is dropped when it empties.
        self._lines: dict[tuple[asyncio.AbstractEventLoop, Hashable], _Line[T]] = {}

    async def join(self, key: Hashable, item: T) -> Lead[T] | Any:
        """Wait for this request's turn: a `Lead` to run (the batch's live entries, its own first, and then
        `hand_over(key)` once the statement returns), or the outcome a leader settled it with (`ALONE`, or
        the result)."""
        loop = asyncio.get_running_loop()
        line = self._lines.get((loop, key))
        if line is None:
            line = self._lines[(loop, key)] = _Line()
        entry = Entry(item, loop.create_future())
        if line.running < self.in_flight:
            line.running += 1
            return Lead([entry])
        line.waiting.append(entry)
        try:
            outcome = await entry.outcome
        except asyncio.CancelledError:
            # Cancelled just as it was handed a batch: the batch's others run alone, the line goes on.
            if entry.outcome.done() and not entry.outcome.cancelled():
                handed = entry.outcome.result()
                if isinstance(handed, Lead):
                    for other in handed.batch[1:]:
                        settle(other, ALONE)
                    self.hand_over(key)
            raise
        if isinstance(outcome, Lead):
            # Less those cancelled since they were handed over.
            return Lead([entry, *(other for other in outcome.batch[1:] if not other.outcome.done())])
        return outcome

    def hand_over(self, key: Hashable) -> None:
        """A leader's statement returned (however it ended): the next batch to the first live waiter, or
        the leader's place is free."""
        loop_key = (asyncio.get_running_loop(), key)
        line = self._lines[loop_key]
        batch: list[Entry[T]] = []
        while line.waiting and len(batch) < self.max_batch:
            entry = line.waiting.popleft()
            if not entry.outcome.done():  # a cancelled waiter is skipped
                batch.append(entry)
        if batch:
            batch[0].outcome.set_result(Lead(batch))
            return
        line.running -= 1
        if not line.running:
            del self._lines[loop_key]

    def idle(self) -> bool:
        """No line has a statement running or a request waiting (for tests)."""
        return not self._lines


def settle(entry: Entry[Any], outcome: Any) -> None:
    if not entry.outcome.done():
        entry.outcome.set_result(outcome)


def fail(entry: Entry[Any], exc: BaseException) -> None:
    if not entry.outcome.done():
        entry.outcome.set_exception(exc)
