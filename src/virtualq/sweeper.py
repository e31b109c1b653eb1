"""The time-limit sweeper (PRODUCT §4), run inside each server process.

Each pass handles, across all tenants (it is a system job; every write still names the ticket's tenant):
- tickets past `expires_at`: the FSM's `expire` transition from the current state is applied when there is
  one, otherwise `escalated_at` is set; either way one `ticket.expired` event is recorded;
- waiting tickets older than their queue's `max_wait_minutes`: one `ticket.wait_exceeded` event.

Several processes may sweep at once: candidates are taken with `FOR UPDATE SKIP LOCKED` and marked handled
(`expiry_handled_at`, `wait_exceeded_at`) in the same transaction as their event, so each ticket is handled
exactly once whoever gets there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from virtualq.config import Settings
from virtualq.db import Connection, acquire, fetch_returning
from virtualq.events import repository as events
from virtualq.fsm import Category
from virtualq.kit import clock
from virtualq.kit.failing import Failing
from virtualq.kit.ids import new_id
from virtualq.kit.sql import delete_oldest, oldest_first_delete
from virtualq.pool import Pool
from virtualq.tickets import repository as tickets
from virtualq.tickets.rules import effects_of
from virtualq.tickets.service import _compile, event_data
from virtualq.webhooks import repository as webhook_log

log = structlog.get_logger("virtualq.sweeper")
EXPIRE_TRANSITION = "expire"
BATCH = 200


@dataclass
class SweepResult:
    expired: int = 0  # the expire transition was applied
    escalated: int = 0  # no expire transition: escalated_at set
    wait_exceeded: int = 0

    @property
    def total(self) -> int:
        return self.expired + self.escalated + self.wait_exceeded


DUE_FOR_EXPIRY = """
SELECT t.tenant_id, t.id, t.current_state, t.state_category, t.type_definition_id, t.queue_id, t.version,
       td.version AS type_version, td.fsm_schema, td.custom_fields_schema
  FROM tickets t JOIN type_definitions td ON td.id = t.type_definition_id
 WHERE t.expires_at <= $1 AND t.expiry_handled_at IS NULL AND t.state_category NOT IN ('done', 'cancelled')
 ORDER BY t.expires_at
 LIMIT $2
   FOR UPDATE OF t SKIP LOCKED FOR SHARE OF td
"""

MARK_WAIT_EXCEEDED = f"""
WITH due AS (
    SELECT t.tenant_id, t.id, q.max_wait_minutes
      FROM tickets t JOIN queues q ON q.tenant_id = t.tenant_id AND q.id = t.queue_id
     WHERE t.state_category = 'waiting' AND t.wait_exceeded_at IS NULL AND q.max_wait_minutes IS NOT NULL
       AND t.created_at + make_interval(mins => q.max_wait_minutes) <= $1
     ORDER BY t.created_at
     LIMIT $2
       FOR UPDATE OF t SKIP LOCKED
), marked AS (
    UPDATE tickets t SET wait_exceeded_at = $1
      FROM due WHERE t.tenant_id = due.tenant_id AND t.id = due.id
    RETURNING t.tenant_id, t.id, t.queue_id, t.display_code, t.number, t.current_state, t.state_category,
              t.type_definition_id, t.version, t.created_at, due.max_wait_minutes
)
{events.INSERT_COLUMNS}
SELECT tenant_id, 'ticket.wait_exceeded', queue_id, id,
       jsonb_build_object({tickets.EVENT_SUMMARY}, 'max_wait_minutes', max_wait_minutes,
                          'waiting_minutes', floor(extract(epoch FROM $1 - created_at) / 60)::int)
  FROM marked
RETURNING 1
"""


async def _handle_expiry(conn: Connection, row: Any, now: datetime) -> str:
    machine = _compile(
        row["type_definition_id"], row["type_version"], row["fsm_schema"], row["custom_fields_schema"]
    ).machine
    assert machine is not None
    current = row["current_state"]
    if EXPIRE_TRANSITION in machine.transitions_from(current):
        new_state = machine.apply(current, EXPIRE_TRANSITION)
        category = machine.category(new_state)
        changed = await tickets.apply_transition(
            conn,
            tenant_id=row["tenant_id"],
            ticket_id=row["id"],
            history_id=new_id(),
            previous_state=current,
            new_state=new_state,
            category=category.value,
            transition=EXPIRE_TRANSITION,
            effects=effects_of(Category(row["state_category"]), category),
            assign_employee_id=None,
            actor_employee_id=None,
            notes="expired by the time-limit sweeper",
            expected_version=row["version"],  # held by the lock above, so this always applies
            type_version=row["type_version"],
        )
        assert changed is not None
        await conn.execute(
            "UPDATE tickets SET expiry_handled_at = $3 WHERE tenant_id = $1 AND id = $2",
            row["tenant_id"],
            row["id"],
            now,
        )
        outcome, summary = "transitioned", changed
    else:
        summary = await fetch_returning(
            conn,
            """UPDATE tickets SET escalated_at = $3, expiry_handled_at = $3, version = version + 1,
                      updated_at = now()
                WHERE tenant_id = $1 AND id = $2
            RETURNING id, queue_id, display_code, number, current_state, state_category, type_definition_id,
                      version""",
            row["tenant_id"],
            row["id"],
            now,
        )
        outcome = "escalated"
    await events.record(
        conn,
        row["tenant_id"],
        "ticket.expired",
        queue_id=row["queue_id"],
        ticket_id=row["id"],
        data=event_data(summary, outcome=outcome),
    )
    return outcome


async def sweep_once(pool: Pool, now: datetime | None = None, batch: int = BATCH) -> SweepResult:
    """One pass; repeats each kind of work until a batch comes back short."""
    now = now or clock.now()
    result = SweepResult()
    while True:
        async with acquire(pool, transaction=True, system=True) as conn:
            due = await conn.fetch(DUE_FOR_EXPIRY, now, batch)
            for row in due:
                if await _handle_expiry(conn, row, now) == "transitioned":
                    result.expired += 1
                else:
                    result.escalated += 1
        if len(due) < batch:
            break
    while True:
        async with acquire(pool, transaction=True, system=True) as conn:
            marked = await conn.fetch(MARK_WAIT_EXCEEDED, now, batch)
        result.wait_exceeded += len(marked)
        if len(marked) < batch:
            break
    return result


PRUNE_EVERY_SECONDS = 3600.0
# Rows per DELETE, and DELETEs per table per pass. A prune deletes in short statements, each committed on its
# own, so none nears DB_COMMAND_TIMEOUT_SECONDS however much has piled up, holds its locks and snapshot long,
# or stalls the requests beside it for long (docs/performance.md "Table upkeep"); a pass takes at most
# PRUNE_BATCH * PRUNE_BATCHES rows of a table, and what is left is pruned at the next pass, a sweep later.
PRUNE_BATCH = 5000
PRUNE_BATCHES = 40
EXPIRED_KEYS_SQL = oldest_first_delete("idempotency_keys", "expires_at")  # idempotency_keys_expiry
EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class Pruned:
    events: int = 0
    deliveries: int = 0
    idempotency_keys: int = 0
    more: bool = False  # a table had more than a pass's worth: prune again at the next pass

    def __bool__(self) -> bool:
        return bool(self.events or self.deliveries or self.idempotency_keys)


async def prune(pool: Pool, retention_days: float) -> Pruned:
    """Delete events and finished webhook deliveries older than the retention period, idempotency keys
    past their 24 hours (oldest first, PRUNE_BATCH rows a statement, at most PRUNE_BATCHES statements per
    table; several processes may prune at once: each skips the rows another holds), and webhook secrets a
    rotation no longer keeps."""
    counts: list[int] = []
    more = False
    async with acquire(pool, transaction=False, system=True) as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        retained = now - timedelta(days=retention_days)
        for statement, before in (
            (events.PRUNE_SQL, retained),
            (webhook_log.PRUNE_SQL, retained),
            (EXPIRED_KEYS_SQL, now),
        ):
            count, since = 0, EARLIEST
            for _ in range(PRUNE_BATCHES):
                deleted, since = await delete_oldest(conn, statement, since, before, PRUNE_BATCH)
                count += deleted
                if deleted < PRUNE_BATCH:
                    break
            else:
                more = True
            counts.append(count)
        await conn.execute(webhook_log.FORGET_PREVIOUS_SECRETS)  # rotations whose overlap has ended
    pruned_events, pruned_deliveries, expired_keys = counts
    return Pruned(pruned_events, pruned_deliveries, expired_keys, more)


async def run_forever(
    pool: Pool,
    interval_seconds: float,
    settings: Settings | None = None,
    on_events: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Sweep every `interval_seconds` until cancelled; a failed pass is logged and retried next time.
    At the first pass and once an hour, also prune (`prune`), and again at every pass while a backlog is
    left. `on_events` is called after a pass that changed tickets (and so wrote events)."""
    last_prune = -math.inf  # the first pass prunes
    failing = Failing(log, "sweep_failed", level="error")
    while True:
        try:
            if settings is not None and time.monotonic() - last_prune >= PRUNE_EVERY_SECONDS:
                last_prune = time.monotonic()
                pruned = await prune(pool, settings.event_retention_days)
                if pruned.more:
                    last_prune = -math.inf  # the rest at the next pass
                if pruned:
                    log.info(
                        "pruned",
                        events=pruned.events,
                        deliveries=pruned.deliveries,
                        idempotency_keys=pruned.idempotency_keys,
                        more=pruned.more,
                    )
            result = await sweep_once(pool)
            if result.total and on_events is not None:
                await on_events()
            if result.total:
                log.info(
                    "sweep",
                    expired=result.expired,
                    escalated=result.escalated,
                    wait_exceeded=result.wait_exceeded,
                )
            failing.succeeded()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be down; the next pass tries again
            failing.failed(exc)
        await asyncio.sleep(interval_seconds)


@contextlib.asynccontextmanager
async def running(
    pool: Pool,
    interval_seconds: float,
    settings: Settings | None = None,
    on_events: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """Run the sweeper for the duration of the block (not at all when the interval is 0)."""
    if interval_seconds <= 0:
        yield None
        return
    task = asyncio.create_task(
        run_forever(pool, interval_seconds, settings, on_events), name="virtualq-sweeper"
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
