"""The in-process event hub: reads new events from the log once and hands them to this process's stream
clients (and wakes the webhook worker).

It wakes when this process commits events (`events_committed`, called after the commit), on a notification
from another process — Redis pub/sub when REDIS_URL is set, else PostgreSQL LISTEN/NOTIFY, sent by each
process after its commits, coalesced, outside the writing transactions (migration 0011) — and also polls
every `poll_seconds`, so a lost notification (or an event written by anything else) only delays delivery.
The log in PostgreSQL is the source of truth: the hub keeps only a cursor.

Each client has a bounded buffer; a client that falls `buffer_size` events behind is dropped (its stream ends)
and resumes from its last event id, so a slow client cannot grow the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from virtualq.db import acquire
from virtualq.events import repository
from virtualq.events.cursor import Cursor
from virtualq.events.envelope import concerns_queue, cursor_of, display_safe, envelope, sse_message
from virtualq.kit.failing import Failing
from virtualq.kit.metrics import Metrics
from virtualq.pool import Pool

log = structlog.get_logger("virtualq.events")
CHANNEL = "virtualq_events"
REDIS_CHANNEL = "virtualq:events"
BATCH = 500
BEHIND_RETRY_SECONDS = 0.02
HEARTBEAT_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream
PING = b"event: changed\ndata: {}\n\n"
# To a ping-only subscriber following one ticket (the customer's page): that ticket was called again.
RECALLED = b"event: recalled\ndata: {}\n\n"
# A publish after a commit waits no longer than this (redis-py's own socket timeout is 5 s).
PUBLISH_TIMEOUT_SECONDS = 0.5
# A notification that API keys (or their accounts/tenants) changed: every process drops its key cache.
KEYS_CHANGED = b"keys"
KEY_RECHECK_SECONDS = 60.0


@dataclass(eq=False)
class Subscriber:
    tenant_id: uuid.UUID
    display: bool
    queue_id: uuid.UUID | None
    ticket_id: uuid.UUID | None
    types: frozenset[str]
    start: Cursor
    buffer: asyncio.Queue[bytes | None]  # ready-to-send SSE messages; None ends the stream
    dropped: bool = False
    # Instead of the filters above: any predicate, and a bare "changed" ping instead of the event.
    match: Callable[[dict[str, Any]], bool] | None = None
    ping_only: bool = False
    # The client already has every event up to this cursor (it resumed from one this hub has not read yet:
    # another process's stream, or the log read through GET /v1/events): those are not sent again.
    seen: Cursor | None = None
    # The hash of the API key the stream was opened with (None: not a stored key): checked again when keys
    # change, and the stream ended once the key is revoked or its account, tenant or employee deactivated.
    key: bytes | None = None

    def wants(self, event: dict[str, Any]) -> bool:
        if self.match is not None:
            return self.match(event)
        return (
            (not self.types or event["type"] in self.types)
            and (self.queue_id is None or concerns_queue(event, str(self.queue_id)))
            and (self.ticket_id is None or event["ticket_id"] == str(self.ticket_id))
        )


@dataclass
class EventHub:
    pool: Pool
    dsn: str
    metrics: Metrics
    redis: Any = None
    poll_seconds: float = 1.0
    buffer_size: int = 1000
    cursor: Cursor = (0, 0)
    listeners: list[Callable[[], None]] = field(default_factory=list)
    # Called with the tenant of every event read from the log, whoever wrote it (caches drop their answers).
    tenant_listeners: list[Callable[[uuid.UUID], None]] = field(default_factory=list)
    on_keys_changed: Callable[[], None] | None = None
    # Whether streams opened with the key of this hash may go on (auth/principal.key_still_usable).
    key_usable: Callable[[bytes], Awaitable[bool]] | None = None
    # This process's notifications carry it, so that its own listener can ignore them.
    token: bytes = field(default_factory=lambda: uuid.uuid4().hex.encode())
    _subscribers: dict[uuid.UUID, set[Subscriber]] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _notify: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _listen_task: asyncio.Task[None] | None = None
    _notify_task: asyncio.Task[None] | None = None
    _recheck_task: asyncio.Task[None] | None = None
    _recheck_again: bool = False
    _periodic_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with acquire(self.pool, transaction=False, system=True) as conn:
            self.cursor = await repository.horizon(conn)
        self._task = asyncio.create_task(self._run(), name="virtualq-event-hub")
        self._listen_task = asyncio.create_task(self._listen(), name="virtualq-event-listener")
        if self.redis is None:
            self._notify_task = asyncio.create_task(self._notify_others(), name="virtualq-event-notifier")
        self._periodic_task = asyncio.create_task(self._recheck_now_and_then(), name="virtualq-stream-keys")

    async def stop(self) -> None:
        for task in (
            self._periodic_task,
            self._recheck_task,
            self._notify_task,
            self._listen_task,
            self._task,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                self._close(subscriber)

    def wake(self) -> None:
        self._wake.set()

    async def events_committed(self) -> None:
        """This process committed events: wake this hub now, and the other processes' hubs — through Redis
        (bounded: a Redis that hangs delays the caller by PUBLISH_TIMEOUT_SECONDS at most), or through one
        `pg_notify` sent in the background, coalesced with every commit that comes while one is on its way."""
        self._wake.set()
        if self.redis is not None:
            await publish(self.redis, self.token)
        else:
            self._notify.set()

    # --- subscriptions --------------------------------------------------------------------------------------

    def subscribe(
        self,
        tenant_id: uuid.UUID,
        *,
        display: bool,
        queue_id: uuid.UUID | None = None,
        ticket_id: uuid.UUID | None = None,
        types: frozenset[str] = frozenset(),
        match: Callable[[dict[str, Any]], bool] | None = None,
        ping_only: bool = False,
        after: Cursor | None = None,
        key: bytes | None = None,
    ) -> Subscriber:
        """From now on, every event past `subscriber.start` reaches the subscriber's buffer, and past
        `after` too when the client resumes from a later cursor than this hub has read."""
        subscriber = Subscriber(
            tenant_id,
            display,
            queue_id,
            ticket_id,
            types,
            self.cursor,
            asyncio.Queue(self.buffer_size),
            match=match,
            ping_only=ping_only,
            seen=after if after is not None and after > self.cursor else None,
            key=key,
        )
        self._subscribers.setdefault(tenant_id, set()).add(subscriber)
        self.metrics.stream_clients.inc()
        return subscriber

    async def messages(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        """The subscriber's messages as they come, a heartbeat comment when it is quiet, until it is
        dropped or the server stops; unsubscribes at the end however the stream ends."""
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        message = await subscriber.buffer.get()
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            self.unsubscribe(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.tenant_id)
        if subscribers is not None and subscriber in subscribers:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.tenant_id]
            self.metrics.stream_clients.dec()

    def end(self, subscriber: Subscriber) -> None:
        """End the subscriber's stream now (the server is stopping): what its buffer holds is dropped, no
        event reaches it any more, a replay from the log stops (events/router.py); the client resumes from
        its last id."""
        subscriber.dropped = True
        self._close(subscriber)

    def _close(self, subscriber: Subscriber) -> None:
        """End the subscriber's stream: empty its buffer and leave the end marker."""
        while not subscriber.buffer.empty():
            subscriber.buffer.get_nowait()
        subscriber.buffer.put_nowait(None)

    # --- the loop -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failing = Failing(log, "event_hub_read_failed")
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns instead of raising when it is
            # cancelled just as the wake-up completes, and stop() would wait for this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                behind = await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; the next wake or poll tries again
                failing.failed(exc)
                await asyncio.sleep(self.poll_seconds)
                continue
            failing.succeeded()
            if behind:
                # Committed events the read could not take (behind an older transaction still running, or
                # settled just after it): look again shortly.
                await asyncio.sleep(BEHIND_RETRY_SECONDS)
                self._wake.set()

    async def _drain(self) -> bool:
        # A batch never exceeds half a buffer, and clients get the loop between batches: a client that
        # keeps up is never dropped by one burst.
        batch = max(1, min(BATCH, self.buffer_size // 2))
        async with acquire(self.pool, transaction=False, system=True) as conn:
            while True:
                rows = await repository.read(
                    conn, tenant_id=None, after=self.cursor, limit=batch, plan_once=True
                )
                if rows:
                    self._dispatch(rows)
                    self.cursor = cursor_of(rows[-1])
                    for listener in self.listeners:
                        listener()
                    await asyncio.sleep(0)
                if len(rows) < batch:
                    return await repository.waiting(conn, self.cursor)

    def _dispatch(self, rows: list[Any]) -> None:
        self.metrics.events_dispatched.inc(len(rows))
        for row in rows:
            tenant_id = uuid.UUID(str(row["tenant_id"]))
            for listener in self.tenant_listeners:
                listener(tenant_id)
            subscribers = self._subscribers.get(tenant_id)
            if not subscribers:
                continue
            event = envelope(row)
            # Each message is encoded once per event, however many clients receive it.
            full: bytes | None = None
            safe: bytes | None = None
            for subscriber in list(subscribers):
                if subscriber.seen is not None:
                    if cursor_of(row) <= subscriber.seen:
                        continue
                    subscriber.seen = None  # rows come in cursor order: every later one is new to it
                if subscriber.dropped or not subscriber.wants(event):
                    continue
                if subscriber.ping_only:
                    recalled = (
                        event["type"] == "ticket.recalled"
                        and subscriber.ticket_id is not None
                        and event["ticket_id"] == str(subscriber.ticket_id)
                    )
                    message = RECALLED if recalled else PING
                elif subscriber.display:
                    message = safe = safe or sse_message(display_safe(event))
                else:
                    message = full = full or sse_message(event)
                try:
                    subscriber.buffer.put_nowait(message)
                except asyncio.QueueFull:
                    subscriber.dropped = True
                    self.metrics.stream_drops.inc()
                    self._close(subscriber)

    # --- notifications --------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake on notifications; reconnect with a pause when the source goes away."""
        failing = Failing(log, "event_listener_lost")
        while True:
            try:
                if self.redis is not None:
                    await self._listen_redis(failing.succeeded)
                else:
                    await self._listen_postgres(failing.succeeded)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failing.failed(exc)
            await asyncio.sleep(self.poll_seconds)

    # --- keys of open streams ------------------------------------------------------------------------------

    def keys_changed(self) -> None:
        """A key was revoked or changed, or an account, tenant or employee (de)activated, here or in another
        process: forget cached keys, and check the keys of the open streams again."""
        if self.on_keys_changed is not None:
            self.on_keys_changed()
        self._recheck_keys()

    def _recheck_keys(self) -> None:
        if self.key_usable is None:
            return
        if self._recheck_task is not None and not self._recheck_task.done():
            self._recheck_again = True  # a change during a check: check once more after it
            return
        self._recheck_task = asyncio.create_task(self._recheck(), name="virtualq-stream-key-check")

    async def _recheck(self) -> None:
        """End the streams whose key may no longer read: each client reconnects and hears why (401/403)."""
        assert self.key_usable is not None
        while True:
            self._recheck_again = False
            keys = {s.key for subs in self._subscribers.values() for s in subs if s.key is not None}
            for key in keys:
                try:
                    usable = await self.key_usable(key)
                except Exception:  # the database away: those streams go on until the next check
                    log.warning("stream_key_check_failed", exc_info=True)
                    continue
                if usable:
                    continue
                ended = [s for subs in self._subscribers.values() for s in subs if s.key == key]
                for subscriber in ended:
                    self.end(subscriber)
                log.info("streams_of_a_refused_key_ended", streams=len(ended))
            if not self._recheck_again:
                return

    async def _recheck_now_and_then(self) -> None:
        """Also without a notification (one lost, a key that expired by other means): every minute."""
        while True:
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            self._recheck_keys()

    def _notified(self, payload: bytes) -> None:
        if payload == KEYS_CHANGED:
            self.keys_changed()
        elif payload != self.token:  # this process's own commits woke it already
            self._wake.set()

    async def _notify_others(self) -> None:
        """One NOTIFY at a time: commits made while one is sent are announced by the next."""
        failing = Failing(log, "event_notify_failed")
        while True:
            await self._notify.wait()
            self._notify.clear()
            try:
                async with acquire(self.pool, transaction=False, system=True) as conn:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self.token.decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the others' polls deliver; try again with the next commit
                failing.failed(exc)
                await asyncio.sleep(self.poll_seconds)
            else:
                failing.succeeded()

    async def _listen_postgres(self, listening: Callable[[], None]) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "virtualq-listener"})
        lost = asyncio.Event()
        try:
            await conn.add_listener(CHANNEL, lambda _c, _p, _ch, payload: self._notified(payload.encode()))
            conn.add_termination_listener(lambda _: lost.set())
            listening()
            self._wake.set()  # catch up on anything committed while we were not listening
            await lost.wait()
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _listen_redis(self, listening: Callable[[], None]) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(REDIS_CHANNEL)
            listening()
            self._wake.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._notified(message.get("data") or b"")
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def publish(redis: Any, message: bytes = b"1") -> None:
    """Tell every process's hub (through Redis) that events were committed (or keys changed).

    Called after a commit, before the response: bounded, so that a Redis that hangs (paused, partitioned)
    delays no write by more than PUBLISH_TIMEOUT_SECONDS."""
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await redis.publish(REDIS_CHANNEL, message)
    except Exception as exc:  # a lost notification only delays delivery until the next poll
        _publishing.failed(exc)
    else:
        _publishing.succeeded()


# Every write publishes: while Redis is away, one line a minute, not a traceback per request.
_publishing = Failing(log, "event_publish_failed")
