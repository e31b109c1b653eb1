"""The connection pool: asyncpg connections lent to one task at a time.

asyncpg's own `Pool` costs about 16 µs of CPU for each acquire and release, more than a whole `SELECT 1`
(docs/performance.md): every checkout wraps the connection in a proxy object, waits under `asyncio.timeout`
even when a connection is idle, and every release runs in a shielded task of its own, resets the connection
under another timeout and rearms an inactivity timer. A request here holds a connection for one or two
statements, so that was a tenth of the server's CPU per request.

This pool lends the connection itself. Taking an idle one and giving it back are plain list operations with
no await; only a caller that finds none idle waits (for a connection given back, or for a slot to open a new
one in, within its timeout). What asyncpg's pool did that this one keeps:

- at most `max_size` connections, opened as needed, `min_size` of them at start;
- a connection that closed (the server restarted, a network cut) is dropped when it is next taken or given
  back, and its slot opens a new one;
- a connection given back after its task was interrupted (cancelled, timed out, a protocol error) may be in
  the middle of a statement: it is closed (the server cancels the statement first), never lent again; so
  is one given back inside a transaction (the app's transactions end before their connection goes back, so
  that would be a bug elsewhere, not to be carried into the next request);
- connections idle for `max_idle_seconds` are closed (and opened again when needed);
- `expire_connections()` replaces every connection (idle ones at once, busy ones when given back);
- `close()` waits for the busy connections and those still opening (up to `close_timeout`) and closes
  everything.

And one thing asyncpg's pool did by counting queries (50,000 per connection): a connection older than
`max_lifetime_seconds` is closed when it is given back or found idle, and a new one opened when needed, so
that a server process's caches (catalog, plans) never grow for ever and connections move to a new server
behind the same address (a failover, a pooler) within that time. Each connection's lifetime is drawn
between 90 and 100 % of the setting, so that connections opened together are not all replaced together.

What it does not do: reset session state on give-back (the app leaves none: see `db.PooledConnection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("virtualq.pool")

Connection = asyncpg.Connection

# Exceptions that can interrupt a statement half way: the connection may still be waiting for the server's
# answer (or cancelling it), so it must not be lent again. Anything else was raised either by the server
# (which then answered in full) or by code running between statements.
INTERRUPTING: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def settled(exc_type: type[BaseException] | None) -> bool:
    """Can a connection whose user stopped with `exc_type` (None: no exception) be lent again? asyncpg's
    DataError (an argument it could not encode) is raised before anything is sent."""
    if exc_type is None or issubclass(exc_type, asyncpg.DataError):
        return True
    return issubclass(exc_type, Exception) and not issubclass(exc_type, INTERRUPTING)


class PoolClosedError(asyncpg.InterfaceError):
    """The pool is closing or closed."""


class Pool:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Connection]],
        *,
        min_size: int,
        max_size: int,
        max_idle_seconds: float = 300.0,
        max_lifetime_seconds: float = 0.0,  # 0: for ever
        close_timeout: float = 10.0,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"pool sizes need 0 <= min_size <= max_size and max_size >= 1: {min_size}, {max_size}"
            )
        self._connect = connect
        self._min_size = min_size
        self._max_size = max_size
        self._max_idle_seconds = max_idle_seconds
        self._max_lifetime_seconds = max_lifetime_seconds
        self._close_timeout = close_timeout
        self._size = 0  # open, being opened, or a slot promised to a waiter
        self._idle: list[tuple[Connection, float]] = []  # (connection, given back at): most recent last
        self._busy: set[Connection] = set()
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._generation: dict[Connection, int] = {}
        self._current_generation = 0
        self._retire_at: dict[Connection, float] = {}  # monotonic time after which it is not lent again
        self._opening = 0  # connects in progress
        self._opened = asyncio.Event()  # set when the last connect in progress ends while closing
        self._closing = False
        self._all_back: asyncio.Event | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Called when a take had to wait for a connection to be given back: the seconds it waited, and
        # whether it gave up (the metrics' pool wait histogram). Takes that found one free never call it.
        self.on_wait: Callable[[float, bool], None] | None = None

    # -- sizes (the metrics' gauges) ------------------------------------------------------------------------

    def get_size(self) -> int:
        return self._size

    def get_idle_size(self) -> int:
        return len(self._idle)

    def get_min_size(self) -> int:
        return self._min_size

    def get_max_size(self) -> int:
        return self._max_size

    # -- lending -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open `min_size` connections; if any fails, close the others and raise."""
        opened = await asyncio.gather(
            *(self._open(None) for _ in range(self._min_size)), return_exceptions=True
        )
        failure = next((each for each in opened if isinstance(each, BaseException)), None)
        for each in opened:
            if not isinstance(each, BaseException):
                self.give_back(each)
        if failure is not None:
            await self.close()
            raise failure

    def acquire(self, wait_seconds: float | None = None) -> Checkout:
        """`async with pool.acquire(wait_seconds) as conn:` — the connection goes back when the block ends."""
        return Checkout(self, wait_seconds)

    async def take(self, wait_seconds: float | None = None) -> Connection:
        """A connection for this task alone until `give_back`: an idle one at once, else a new one while the
        pool is below `max_size`, else the next one given back (TimeoutError after `wait_seconds`). No
        `asyncio.timeout` unless it has to wait: that costs as much as taking an idle connection."""
        if self._closing:
            raise PoolClosedError("the connection pool is closed")
        idle = self._idle
        while idle:
            conn = idle.pop()[0]
            if conn.is_closed() or (self._retire_at and time.monotonic() >= self._retire_at[conn]):
                self._drop(conn)
                continue
            self._busy.add(conn)
            return conn
        if self._size < self._max_size:
            return await self._open(wait_seconds)
        return await self._wait(wait_seconds)

    def give_back(self, conn: Connection, *, reusable: bool = True) -> None:
        """Return a connection taken from this pool. `reusable=False` when its user was interrupted (see
        `settled`): the connection is closed instead of lent again."""
        if conn not in self._busy:
            # Given back twice, or after terminate() or close() gave up on it: lending it again would give
            # one connection to two tasks.
            if not conn.is_closed():
                log.warning("pool_give_back_of_a_connection_not_lent")
            return
        if (
            not reusable
            or self._closing
            or conn.is_closed()
            or conn.is_in_transaction()
            or self._generation.get(conn) != self._current_generation
            or (self._retire_at and time.monotonic() >= self._retire_at[conn])
        ):
            self._busy.discard(conn)
            self._drop(conn)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # still busy: it changes hands
                return
        self._busy.discard(conn)
        self._idle.append((conn, time.monotonic()))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._max_idle_seconds, self._close_idle)

    async def expire_connections(self) -> None:
        """Replace every connection: the idle ones now, the busy ones when they are given back (as after a
        failover, when every connection must be a new one)."""
        self._current_generation += 1
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._drop(conn)

    # -- closing -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse new takers, wait up to `close_timeout` for busy connections and for connections still
        opening (each is closed as soon as it opens), close everything."""
        if self._closing:
            return
        self._stop_lending()
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._drop(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        if self._busy:
            self._all_back = asyncio.Event()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._all_back.wait()
            except TimeoutError:
                log.warning("pool_close_busy_connections_terminated", connections=len(self._busy))
                for conn in list(self._busy):
                    self._busy.discard(conn)
                    conn.terminate()
                    self._drop(conn)
        if self._opening:
            try:
                async with asyncio.timeout_at(max(deadline, loop.time() + 0.1)):
                    await self._opened.wait()
            except TimeoutError:  # a connect that hangs is its caller's to time out
                log.warning("pool_close_connects_still_in_progress", connects=self._opening)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def terminate(self) -> None:
        """Close every connection at once, busy ones included."""
        self._stop_lending()
        for conn in [*(each for each, _ in self._idle), *self._busy]:
            conn.terminate()
        # Connections still opening, and slots promised to waiters, leave the count when they finish.
        self._size -= len(self._idle) + len(self._busy)
        self._idle.clear()
        self._busy.clear()
        self._generation.clear()
        self._retire_at.clear()

    def _stop_lending(self) -> None:
        """Refuse new takers, fail the waiting ones, stop the idle sweep."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the connection pool is closed"))

    # -- inside ------------------------------------------------------------------------------------------

    async def _open(self, wait_seconds: float | None, *, reserved: bool = False) -> Connection:
        """Open a connection in a slot `reserved` for this caller (counted in `_size`), or in a new one."""
        if self._closing:  # a waiter promised a slot just before close(): nothing may open now
            if reserved:
                self._size -= 1
                self._slot_freed()
            raise PoolClosedError("the connection pool is closed")
        if not reserved:
            self._size += 1
        self._opening += 1
        try:
            async with asyncio.timeout(wait_seconds):
                conn = await self._connect()
        except BaseException:
            self._size -= 1
            self._slot_freed()
            raise
        finally:
            self._opening -= 1
            if self._closing and not self._opening:
                self._opened.set()
        if self._closing:  # closed while this one was opening
            self._size -= 1
            self._background(_close_quietly(conn, self._close_timeout))
            raise PoolClosedError("the connection pool is closed")
        self._generation[conn] = self._current_generation
        if self._max_lifetime_seconds > 0:
            lifetime = self._max_lifetime_seconds * random.uniform(0.9, 1.0)  # spread, not a secret
            self._retire_at[conn] = time.monotonic() + lifetime
        self._busy.add(conn)
        return conn

    async def _wait(self, wait_seconds: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        started = loop.time()
        deadline = None if wait_seconds is None else started + wait_seconds
        try:
            async with asyncio.timeout_at(deadline):
                conn = await waiter
        except BaseException as exc:
            if isinstance(exc, TimeoutError) and self.on_wait is not None:
                self.on_wait(loop.time() - started, True)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # given to this task just as it stopped waiting: pass it on
                if handed is None:
                    self._size -= 1
                    self._slot_freed()
                else:
                    self.give_back(handed)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # already taken off by give_back or _slot_freed
                    self._waiters.remove(waiter)
            raise
        if self.on_wait is not None:
            self.on_wait(loop.time() - started, False)
        if conn is not None:
            return conn
        # A slot opened (a connection was dropped) and was reserved for this task: open one in it.
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        return await self._open(remaining, reserved=True)

    def _drop(self, conn: Connection) -> None:
        """Stop counting `conn`, close it in the background and free its slot. asyncpg's `close()` first
        has the server cancel a statement still running (one its user was interrupted in), then says
        goodbye; terminating the socket instead would leave that statement running to its end."""
        self._generation.pop(conn, None)
        self._retire_at.pop(conn, None)
        self._size -= 1
        if not conn.is_closed():
            self._background(_close_quietly(conn, self._close_timeout))
        self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot is free: promise it to the first waiter, who opens a connection in it."""
        if self._closing:
            if not self._busy and self._all_back is not None:
                self._all_back.set()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)
                return

    def _close_idle(self) -> None:
        """Close the connections idle for `max_idle_seconds` (the minimum too: a connection idle that long
        may have been dropped by a firewall on the way, and is opened again when needed, as asyncpg's pool
        did); look again when the next one is due."""
        self._sweep = None
        now = time.monotonic()
        idle = self._idle
        while idle and now - idle[0][1] >= self._max_idle_seconds:
            self._drop(idle.pop(0)[0])
        if idle:
            wait = max(self._max_idle_seconds - (now - idle[0][1]), 0.0)
            self._sweep = asyncio.get_running_loop().call_later(wait, self._close_idle)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Checkout:
    """`async with pool.acquire(wait_seconds) as conn:` — a class rather than a generator-based context
    manager, which costs a generator and its helper per use."""

    __slots__ = ("_conn", "_pool", "_wait_seconds")

    def __init__(self, pool: Pool, wait_seconds: float | None) -> None:
        self._pool = pool
        self._wait_seconds = wait_seconds
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        self._conn = await self._pool.take(self._wait_seconds)
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give_back(conn, reusable=settled(exc_type))


async def _close_quietly(conn: Connection, close_seconds: float) -> None:
    try:
        await conn.close(timeout=close_seconds)
    except Exception:
        conn.terminate()
