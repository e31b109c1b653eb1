"""Wait-time estimates (PRODUCT §4). The arithmetic is pure code; `Estimator` loads what it needs.

The formula, its fallbacks and the accuracy figure are written out in docs/estimates.md.

Pace is measured from departures: tickets of the queue (and, first, of the same type) that left the waiting
line. For consecutive departures i-1, i (ordered by `started_at`) the *busy interval* is

    started_at[i] - max(started_at[i-1], created_at[i])

i.e. how long the line took to hand out one more ticket while somebody was waiting for it (an idle gap when
nobody waited does not count). The pace is the mean busy interval, and a waiting ticket at position p is
estimated to wait round(p x pace) minutes.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from virtualq.db import Connection, Record
from virtualq.kit import clock
from virtualq.kit.cache import MISSING, TtlCache
from virtualq.kit.responses import project_rows, record_dict

# With fewer busy intervals than this, the history is too thin to trust: fall back (docs/estimates.md).
MIN_SAMPLES = 3
# The fallback pace when the queue has no manual_wait_minutes: minutes per ticket.
DEFAULT_MINUTES_PER_TICKET = 5.0
ROLLING_WINDOW = timedelta(minutes=60)
# rolling_average looks at no more than this many departures inside its window.
ROLLING_MAX_SAMPLES = 100
RECENT = {"average_recent_3": 3, "average_recent_5": 5}


@dataclass(frozen=True)
class Departure:
    created_at: datetime
    started_at: datetime


@dataclass(frozen=True)
class QueueSettings:
    method: str
    manual_wait_minutes: int | None


def busy_intervals(departures: Sequence[Departure]) -> list[float]:
    """Minutes between consecutive departures (oldest first), counting only time somebody was waiting."""
    ordered = sorted(departures, key=lambda d: d.started_at)
    intervals = []
    for previous, current in itertools.pairwise(ordered):
        since = max(previous.started_at, current.created_at)
        intervals.append(max(0.0, (current.started_at - since).total_seconds() / 60))
    return intervals


def pace_from_history(method: str, departures: Sequence[Departure], now: datetime) -> float | None:
    """Minutes per ticket from history alone; None when the history is too thin for `method`."""
    if method in RECENT:
        wanted = RECENT[method]
        latest = sorted(departures, key=lambda d: d.started_at)[-(wanted + 1) :]
        intervals = busy_intervals(latest)
    elif method == "rolling_average":
        ordered = sorted(departures, key=lambda d: d.started_at)
        window_start = now - ROLLING_WINDOW
        # The departure just before the window anchors the first interval inside it.
        inside = [i for i, d in enumerate(ordered) if window_start <= d.started_at <= now]
        if not inside:
            return None
        intervals = busy_intervals(ordered[max(0, inside[0] - 1) : inside[-1] + 1])
    else:
        return None
    if len(intervals) < MIN_SAMPLES:
        return None
    return sum(intervals) / len(intervals)


def fallback_pace(settings: QueueSettings) -> float:
    if settings.manual_wait_minutes is not None:
        return float(settings.manual_wait_minutes)
    return DEFAULT_MINUTES_PER_TICKET


# `custom`: the extension point. Register a function (queue settings, departures of the ticket's type,
# departures of the whole queue, now) -> minutes per ticket, or None to use the fallback.
CustomPace = Callable[[QueueSettings, Sequence[Departure], Sequence[Departure], datetime], float | None]
_custom: CustomPace | None = None


def register_custom_pace(function: CustomPace | None) -> None:
    global _custom
    _custom = function


def pace(
    settings: QueueSettings,
    type_departures: Sequence[Departure],
    queue_departures: Sequence[Departure],
    now: datetime,
) -> float | None:
    """Minutes per ticket ahead, or None when the queue estimates nothing (`none`)."""
    method = settings.method
    if method == "none":
        return None
    if method == "manual":
        return fallback_pace(settings)
    if method == "custom":
        found = _custom(settings, type_departures, queue_departures, now) if _custom else None
        return found if found is not None else fallback_pace(settings)
    for history in (type_departures, queue_departures):
        found = pace_from_history(method, history, now)
        if found is not None:
            return found
    return fallback_pace(settings)


def minutes_for(position: int, minutes_per_ticket: float | None) -> int | None:
    if minutes_per_ticket is None:
        return None
    return math.floor(position * minutes_per_ticket + 0.5)


def history_needed(method: str) -> int:
    """How many departures to load for `method` (one more than the intervals it averages)."""
    if method in RECENT:
        return RECENT[method] + 1
    if method == "rolling_average":
        return ROLLING_MAX_SAMPLES + 1
    if method == "custom":
        return ROLLING_MAX_SAMPLES + 1
    return 0


async def load_departures(
    conn: Connection,
    tenant_id: uuid.UUID,
    queue_id: uuid.UUID,
    type_ids: Iterable[uuid.UUID],
    limit: int,
    now: datetime,
) -> tuple[dict[uuid.UUID, list[Departure]], list[Departure]]:
    """The latest `limit` departures per type, and of the whole queue, in one round trip: tickets that left
    this queue's line (wherever they are now: a forward after the call moves no departure)."""
    if limit <= 0:
        return {}, []
    rows = await conn.fetch(
        """
        SELECT k.type_id, d.created_at, d.started_at
          FROM unnest($3::uuid[]) AS k(type_id)
          CROSS JOIN LATERAL (
                SELECT created_at, started_at FROM tickets
                 WHERE tenant_id = $1 AND departed_queue_id = $2 AND type_definition_id = k.type_id
                   AND started_at IS NOT NULL AND started_at <= $5
                 ORDER BY started_at DESC LIMIT $4) d
        UNION ALL
        SELECT NULL, created_at, started_at FROM (
                SELECT created_at, started_at FROM tickets
                 WHERE tenant_id = $1 AND departed_queue_id = $2 AND started_at IS NOT NULL
                   AND started_at <= $5
                 ORDER BY started_at DESC LIMIT $4) q
        """,
        tenant_id,
        queue_id,
        list(dict.fromkeys(type_ids)),
        limit,
        now,
    )
    by_type: dict[uuid.UUID, list[Departure]] = {}
    queue_wide: list[Departure] = []
    for row in rows:
        departure = Departure(row["created_at"], row["started_at"])
        if row["type_id"] is None:
            queue_wide.append(departure)
        else:
            by_type.setdefault(row["type_id"], []).append(departure)
    return by_type, queue_wide


QUEUE_SETTINGS_SQL = """SELECT id, wait_estimation_method, manual_wait_minutes, show_wait_time
                          FROM queues WHERE tenant_id = $1 AND id = ANY($2::uuid[])"""


# Paces per (tenant, queue): {type id: minutes per ticket}. A pace only changes when a ticket leaves the line
# for the first time (forget_queue is called then, in this process; a ticket sent back to the line and called
# again keeps its first started_at, so it changes no pace) or the queue's settings change; other processes'
# changes are seen within PACE_CACHE_SECONDS.
PACE_CACHE_SECONDS = 1.0
_pace_cache = TtlCache(PACE_CACHE_SECONDS, max_size=20_000)


def forget_queue(tenant_id: uuid.UUID, queue_id: uuid.UUID) -> None:
    _pace_cache.delete((tenant_id, queue_id))


class Estimator:
    """Computes live estimates for rows of one tenant, loading each queue's pace once per request."""

    def __init__(self, conn: Connection, tenant_id: uuid.UUID, now: datetime | None = None) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.now = now or clock.now()
        self._paces: dict[tuple[uuid.UUID, uuid.UUID], float | None] = {}
        self._settings: dict[uuid.UUID, QueueSettings] = {}
        self.show_wait_time: dict[uuid.UUID, bool] = {}

    def remember_queue(self, queue: Record | dict[str, Any]) -> None:
        """Use a queue row the caller already has instead of loading its settings again."""
        self._settings[queue["id"]] = QueueSettings(
            queue["wait_estimation_method"], queue["manual_wait_minutes"]
        )
        self.show_wait_time[queue["id"]] = queue["show_wait_time"]

    async def paces_for(self, pairs: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Load the pace of every (queue, type) pair not loaded yet (from the shared cache if it has it)."""
        cached = not clock.is_pinned()  # a pinned clock (tests, tools) always computes afresh
        missing: dict[uuid.UUID, set[uuid.UUID]] = {}
        for queue_id, type_id in pairs:
            if (queue_id, type_id) in self._paces:
                continue
            known = _pace_cache.get((self.tenant_id, queue_id)) if cached else MISSING
            if known is not MISSING and type_id in known:
                self._paces[(queue_id, type_id)] = known[type_id]
            else:
                missing.setdefault(queue_id, set()).add(type_id)
        if not missing:
            return
        unknown = [queue_id for queue_id in missing if queue_id not in self._settings]
        if unknown:
            for row in await self.conn.fetch(QUEUE_SETTINGS_SQL, self.tenant_id, unknown):
                self.remember_queue(row)
        for queue_id, type_ids in missing.items():
            settings = self._settings.get(queue_id)
            if settings is None:
                continue
            by_type, queue_wide = await load_departures(
                self.conn, self.tenant_id, queue_id, type_ids, history_needed(settings.method), self.now
            )
            computed = {
                type_id: pace(settings, by_type.get(type_id, []), queue_wide, self.now)
                for type_id in type_ids
            }
            for type_id, value in computed.items():
                self._paces[(queue_id, type_id)] = value
            if cached:
                known = _pace_cache.get((self.tenant_id, queue_id))
                _pace_cache.put(
                    (self.tenant_id, queue_id), {**(known if known is not MISSING else {}), **computed}
                )

    def pace_of(self, queue_id: uuid.UUID, type_id: uuid.UUID) -> float | None:
        return self._paces.get((queue_id, type_id))

    async def annotate(
        self, rows: Sequence[Record | dict[str, Any]], fields: tuple[str, ...] | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts with the live `estimated_wait_minutes` of each waiting ticket; with `fields`, only
        those (a response model's, in its order: they must include the columns an estimate reads).

        A staff override (estimated_wait_minutes stored on the ticket) wins; tickets not waiting have none.
        """
        result = [record_dict(row) for row in rows] if fields is None else project_rows(rows, fields)
        waiting = []
        for row in result:
            if row["state_category"] == "waiting":
                waiting.append(row)
            else:
                row["estimated_wait_minutes"] = None
        if not waiting:
            return result
        await self.paces_for({(row["queue_id"], row["type_definition_id"]) for row in waiting})
        paces = self._paces
        for row in waiting:
            position = row.get("position")
            if row["estimated_wait_minutes"] is None and position is not None:
                row["estimated_wait_minutes"] = minutes_for(
                    position, paces.get((row["queue_id"], row["type_definition_id"]))
                )
        return result
