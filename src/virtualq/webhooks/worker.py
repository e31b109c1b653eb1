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


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (docs/webhooks.md)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential with "equal jitter": half the step fixed, half random."""
    step: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


@dataclass
class WebhookWorker:
    pool: Pool
    settings: Settings
    metrics: Metrics
    client: httpx.AsyncClient | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    _busy: bool = False  # attempting a batch (claimed, leased): a stop lets it finish

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
        task = self._task
        if task is not None:
            if self._busy:
                done, _ = await asyncio.wait({task}, timeout=self.settings.webhook_timeout_seconds + 1)
                if not done:  # outcomes not recorded in time (the database slow or away)
                    log.warning("webhook_attempts_cut", hint="sent again once their lease ends")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._busy = True
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook_worker_failed", exc_info=True)
                worked = 0
            finally:
                self._busy = False
            if self._stopping:
                return
            if worked < BATCH:
                # asyncio.timeout, not wait_for, which can swallow stop()'s cancellation on Python 3.11.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.event_poll_seconds):
                        await self._wake.wait()
                self._wake.clear()

    async def run_once(self) -> int:
        """Claim and attempt one batch of due deliveries; returns how many."""
        lease = self.settings.webhook_timeout_seconds + 30
        async with acquire(self.pool, transaction=False, system=True) as conn:
            if self._stopping:  # a stop began while waiting for the connection: claim nothing more
                return 0
            claimed = await repository.claim(conn, BATCH, lease)
        if not claimed:
            return 0
        lease_ends = time.monotonic() + lease - 1
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(row: Any) -> None:
            async with semaphore:
                await self._attempt(row, lease_ends)

        # Every attempt runs to its end even if another fails (none is left running unobserved).
        outcomes = await asyncio.gather(*(one(row) for row in claimed), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                log.warning("webhook_attempt_failed", exc_info=outcome)
        return len(claimed)

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
        duration_ms = round((time.perf_counter() - started) * 1000)
        settings = self.settings
        if error is None:
            status, retry_in = "succeeded", None
        elif permanent or row["age_seconds"] >= settings.webhook_retry_window_seconds:
            status, retry_in = "failed", None
        else:
            status = "pending"
            retry_in = backoff_seconds(
                row["attempts"], settings.webhook_retry_base_seconds, settings.webhook_retry_max_seconds
            )
        self.metrics.webhook_attempts.labels("retry" if status == "pending" else status).inc()
        outcome = {
            "tenant_id": row["tenant_id"],
            "delivery_id": row["id"],
            "attempt": row["attempts"],
            "status": status,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "retry_in_seconds": retry_in,
        }
        await self._record(outcome, lease_ends)

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
                "X-VirtualQ-Signature": signature(row["secret"], timestamp, body),
            },
        )

    async def _record(self, outcome: dict[str, Any], lease_ends: float) -> None:
        """Record an attempt's outcome. While the database is away, keep trying until the delivery's lease
        ends: dropping the outcome would leave a delivery that succeeded to be sent again once the lease runs
        out (and the lease is WEBHOOK_TIMEOUT_SECONDS + 30 s). Past the lease, another process may already be
        retrying it: at least once."""
        delay = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                async with acquire(self.pool, transaction=False, system=True) as conn:
                    await repository.record_attempt(conn, **outcome)
                return
            except DATABASE_AWAY:
                if time.monotonic() + delay >= lease_ends:
                    delivery = str(outcome["delivery_id"])
                    log.warning("webhook_outcome_lost", delivery_id=delivery, exc_info=True)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)
