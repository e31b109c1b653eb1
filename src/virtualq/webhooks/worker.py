"""Delivers webhooks from inside each server process; several processes share the work safely.

Due deliveries are claimed with FOR UPDATE SKIP LOCKED and leased in the same statement; the HTTP call runs
outside any transaction; the outcome is recorded afterwards. A process that dies mid-call leaves a lease
that expires, and another process retries: delivery is at least once, with a stable X-VirtualQ-Delivery id
so receivers can drop duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import structlog

from virtualq import __version__
from virtualq.config import Settings
from virtualq.db import CONNECTION_ERRORS, acquire
from virtualq.errors import Unavailable
from virtualq.kit.failing import Failing
from virtualq.kit.metrics import Metrics
from virtualq.pool import Pool
from virtualq.webhooks import repository
from virtualq.webhooks.ssrf import TargetRefused, check_target

log = structlog.get_logger("virtualq.webhooks")
CONCURRENCY = 16
# Claim no more than can be attempted at once: a claimed delivery is leased (WEBHOOK_TIMEOUT_SECONDS + 30 s),
# and one that waited for a free slot when the process died would wait out that lease for nothing.
BATCH = CONCURRENCY
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 1.0
# Failures that mean the database is away for now (recording an outcome is retried), not a wrong query.
DATABASE_AWAY: tuple[type[Exception], ...] = (
    Unavailable,
    *CONNECTION_ERRORS,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def signature(secret: str, timestamp: int, body: bytes, previous: str | None = None) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (docs/events.md), and a second `v1=` by the
    previous secret while a rotation keeps it (the new one first)."""
    macs = [
        hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        for key in (secret, previous)
        if key is not None
    ]
    return f"t={timestamp}," + ",".join(f"v1={mac}" for mac in macs)


@dataclass
class WebhookWorker:
    """Up to CONCURRENCY attempts at a time. A slot that frees is filled at once from what is due, so a
    receiver that takes its whole timeout holds one slot, not the others' deliveries (every tenant's)."""

    pool: Pool
    settings: Settings
    metrics: Metrics
    client: httpx.AsyncClient | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)  # claimed (leased) and being attempted

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_seconds,
            follow_redirects=False,
            headers={"User-Agent": f"VirtualQ-Webhooks/{__version__}"},
        )
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="virtualq-webhooks")

    async def stop(self) -> None:
        """Claim nothing more, let the attempts in flight end and their outcomes be recorded (for at most
        WEBHOOK_TIMEOUT_SECONDS + 1 s), then stop. An attempt cut off mid-call would stay leased and be sent
        again once its lease ran out, although the receiver may well have had it."""
        self._stopping = True
        deadline = time.monotonic() + self.settings.webhook_timeout_seconds + 1
        task = self._task
        if task is not None:
            # A claim in progress ends and starts its attempts (its deliveries are leased); a wait ends.
            self._wake.set()
            await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inflight:
            _, cut = await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))
            if cut:  # outcomes not recorded in time (the database slow or away)
                log.warning(
                    "webhook_attempts_cut", attempts=len(cut), hint="sent again when their lease ends"
                )
                for attempt in cut:
                    attempt.cancel()
                await asyncio.gather(*cut, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    async def _run(self) -> None:
        failing = Failing(log, "webhook_worker_failed")
        while not self._stopping:
            free = CONCURRENCY - len(self._inflight)
            if free <= 0:  # every slot busy: claim again as soon as one frees
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                started = await self.run_once(free)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failing.failed(exc)
                started = 0
            else:
                failing.succeeded()
            if self._stopping:
                return
            if started < free:  # nothing more due now: until woken, or the next poll
                # asyncio.timeout, not wait_for, which can swallow stop()'s cancellation on Python 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.event_poll_seconds):
                        await self._wake.wait()
                self._wake.clear()

    async def run_once(self, limit: int = BATCH) -> int:
        """Claim up to `limit` due deliveries and start attempting each; returns how many."""
        lease = self.settings.webhook_timeout_seconds + 30
        async with acquire(self.pool, transaction=False, system=True) as conn:
            if self._stopping:  # a stop began while waiting for the connection: claim nothing more
                return 0
            claimed = await repository.claim(conn, limit, lease)
        lease_ends = time.monotonic() + lease - 1
        for row in claimed:
            attempt = asyncio.create_task(self._attempt(row, lease_ends), name="virtualq-webhook-attempt")
            self._inflight.add(attempt)
            attempt.add_done_callback(self._attempt_ended)
        return len(claimed)

    def _attempt_ended(self, attempt: asyncio.Task[None]) -> None:
        self._inflight.discard(attempt)
        if not attempt.cancelled() and (error := attempt.exception()) is not None:
            log.warning("webhook_attempt_crashed", exc_info=error)

    async def _attempt(self, row: Any, lease_ends: float) -> None:
        assert self.client is not None
        body = orjson.dumps(row["payload"])
        status_code: int | None = None
        error: str | None = None
        started = time.perf_counter()
        permanent = False
        if not row["is_active"]:
            error, permanent = "the subscription is inactive", True
        else:
            try:
                # The whole attempt within the timeout (httpx's applies to each phase, the name lookup
                # has none): a stop waits for attempts no longer than that (stop()).
                async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                    response = await self._post(row, body)
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
            except TargetRefused as exc:
                error, permanent = f"refused: {exc}", True
            except (httpx.TimeoutException, TimeoutError):
                error = "timed out"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        duration = time.perf_counter() - started
        duration_ms = round(duration * 1000)
        if row["is_active"]:
            self.metrics.webhook_duration.observe(duration)
        settings = self.settings
        if error is None:
            status = "succeeded"
        elif permanent or row["age_seconds"] >= settings.webhook_retry_window_seconds:
            status = "failed"
        else:
            status = "pending"  # retried with exponential backoff (repository.record_attempt)
        outcome = {
            "tenant_id": row["tenant_id"],
            "delivery_id": row["id"],
            "attempt": row["attempts"],
            "status": status,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "retry_base_seconds": settings.webhook_retry_base_seconds,
            "retry_max_seconds": settings.webhook_retry_max_seconds,
            "jitter": random.uniform(0.5, 1.0),
            "lease": row["lease"],
        }
        if await self._record(outcome, lease_ends) is False:
            # A redelivery asked for meanwhile overtook this attempt: the delivery goes on (due now), so
            # this attempt's outcome is not the delivery's (a final failure here is none).
            status = "pending" if error is not None else "succeeded"
        self.metrics.webhook_attempts.labels("retry" if status == "pending" else status).inc()
        if error is not None:  # the tenant's receiver, not the server: info, and warning once it is final
            (log.info if status == "pending" else log.warning)(
                "webhook_retry_scheduled" if status == "pending" else "webhook_delivery_failed",
                tenant_id=str(row["tenant_id"]),
                webhook_id=str(row["webhook_id"]),
                delivery_id=str(row["id"]),
                attempt=row["attempts"],
                status_code=status_code,
                error=error,
            )

    async def _post(self, row: Any, body: bytes) -> httpx.Response:
        assert self.client is not None
        await check_target(row["url"], self.settings.webhook_allow_private_targets)
        timestamp = int(time.time())
        return await self.client.post(
            row["url"],
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-VirtualQ-Event": row["event_type"],
                "X-VirtualQ-Delivery": str(row["id"]),
                "X-VirtualQ-Signature": signature(row["secret"], timestamp, body, row["previous_secret"]),
            },
        )

    async def _record(self, outcome: dict[str, Any], lease_ends: float) -> bool | None:
        """Record an attempt's outcome: True if it is the delivery's, False if a redelivery overtook the
        attempt (only logged), None if it could not be recorded. While the database is away, keep trying
        until the delivery's lease ends: dropping the outcome would leave a delivery that succeeded to be
        sent again once the lease runs out (and the lease is WEBHOOK_TIMEOUT_SECONDS + 30 s). Past the
        lease, another process may already be retrying it: at least once."""
        delay = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                async with acquire(self.pool, transaction=False, system=True) as conn:
                    return await repository.record_attempt(conn, **outcome)
            except DATABASE_AWAY:
                if time.monotonic() + delay >= lease_ends:
                    delivery = str(outcome["delivery_id"])
                    log.warning("webhook_outcome_lost", delivery_id=delivery, exc_info=True)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
