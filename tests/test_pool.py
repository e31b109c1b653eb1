"""The connection pool (virtualq.pool) against a real PostgreSQL: lending, waiting, limits, and what it does
with connections that closed, were interrupted, or were left in a transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pydantic
import pytest

from tests.conftest import make_settings
from virtualq.db import create_pool
from virtualq.pool import Pool, PoolClosedError, settled


class Opener:
    """The pool's connect function, counting connections and able to fail on demand."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.opened = 0
        self.fail_with: BaseException | None = None

    async def __call__(self) -> asyncpg.Connection:
        if self.fail_with is not None:
            raise self.fail_with
        conn = await asyncpg.connect(self.dsn)
        self.opened += 1
        return conn


@pytest.fixture
async def make_pool(database_dsn: str) -> AsyncIterator[Callable[..., Any]]:
    pools: list[Pool] = []

    async def make(min_size: int = 0, max_size: int = 2, **options: Any) -> tuple[Pool, Opener]:
        opener = Opener(database_dsn)
        pool = Pool(opener, min_size=min_size, max_size=max_size, **options)
        await pool.start()
        pools.append(pool)
        return pool, opener

    yield make
    for pool in pools:
        await pool.close()


async def backend_alive(db: asyncpg.Connection, pid: int) -> bool:
    alive: bool = await db.fetchval("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", pid)
    return alive


async def wait_until_gone(db: asyncpg.Connection, pid: int) -> None:
    async with asyncio.timeout(5):
        while await backend_alive(db, pid):  # noqa: ASYNC110 - PostgreSQL's catalog, polled
            await asyncio.sleep(0.02)


async def test_start_opens_the_minimum_and_an_idle_connection_is_lent_again(make_pool: Any) -> None:
    pool, opener = await make_pool(min_size=2, max_size=4)
    assert (pool.get_size(), pool.get_idle_size(), opener.opened) == (2, 2, 2)
    pids = set()
    for _ in range(20):
        async with pool.acquire() as conn:
            pids.add(conn.get_server_pid())
            assert await conn.fetchval("SELECT 1") == 1
    assert opener.opened == 2  # nothing opened beyond the two idle ones
    assert len(pids) == 1  # the most recently given back is lent first
    assert (pool.get_size(), pool.get_idle_size()) == (2, 2)


async def test_no_more_than_max_size_and_one_task_per_connection(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=3)
    holders: dict[int, int] = {}
    most = 0
    done = 0

    async def work(n: int) -> None:
        nonlocal most, done
        async with pool.acquire(wait_seconds=10) as conn:
            key = id(conn)
            assert key not in holders, "a connection lent to two tasks at once"
            holders[key] = n
            most = max(most, len(holders))
            assert await conn.fetchval("SELECT $1::int", n) == n
            await asyncio.sleep(0.001)
            del holders[key]
        done += 1

    await asyncio.gather(*(work(n) for n in range(60)))
    assert done == 60
    assert most == 3
    assert opener.opened == 3
    assert pool.get_size() == 3


async def test_a_waiter_times_out_and_leaves_nothing_behind(make_pool: Any) -> None:
    pool, _ = await make_pool(max_size=1)
    held = await pool.take()
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await pool.take(wait_seconds=0.2)
    assert 0.15 < asyncio.get_running_loop().time() - started < 2
    pool.give_back(held)
    async with pool.acquire(wait_seconds=1) as conn:  # the slot was not lost
        assert conn is held
    assert pool.get_size() == 1


async def test_a_waiter_cancelled_as_a_connection_reaches_it_passes_it_on(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=1)
    held = await pool.take()
    first = asyncio.ensure_future(pool.take(wait_seconds=5))
    second = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)  # both wait
    pool.give_back(held)  # handed to the first waiter...
    first.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(2):
        conn = await second  # the connection went on to the second
    assert conn is held
    pool.give_back(conn)
    assert (pool.get_size(), pool.get_idle_size(), opener.opened) == (1, 1, 1)


async def test_a_connection_interrupted_mid_statement_is_closed_and_its_statement_cancelled(
    make_pool: Any, db: Any
) -> None:
    pool, _ = await make_pool(max_size=1)
    conn = await pool.take()
    pid = conn.get_server_pid()

    async def interrupted() -> None:
        async with pool.acquire() as conn, asyncio.timeout(0.2):
            await conn.execute("SELECT pg_sleep(30)")

    pool.give_back(conn)
    with pytest.raises(TimeoutError):
        await interrupted()
    assert pool.get_size() == 0
    started = asyncio.get_running_loop().time()
    await wait_until_gone(db, pid)  # the sleep cancelled, the backend gone: not left running for 30 s
    assert asyncio.get_running_loop().time() - started < 5
    async with pool.acquire(wait_seconds=5) as fresh:
        assert fresh.get_server_pid() != pid
        assert await fresh.fetchval("SELECT 2") == 2


async def test_an_error_from_the_server_keeps_the_connection(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=1)
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()

    async def failing(sql: str | None) -> None:
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            if sql is None:
                raise LookupError("raised by the code between statements")
            await conn.execute(sql)

    with pytest.raises(asyncpg.DivisionByZeroError):
        await failing("SELECT 1 / 0")
    with pytest.raises(LookupError, match="between statements"):
        await failing(None)
    async with pool.acquire() as conn:
        assert conn.get_server_pid() == pid
    assert opener.opened == 1


def test_which_exceptions_leave_a_connection_lendable() -> None:
    assert settled(None)
    assert settled(asyncpg.UniqueViolationError)
    assert settled(ValueError)
    assert settled(asyncpg.DataError)  # an argument asyncpg could not encode: nothing was sent
    assert not settled(asyncio.CancelledError)
    assert not settled(TimeoutError)
    assert not settled(asyncpg.InterfaceError)
    assert not settled(ConnectionResetError)
    assert not settled(KeyboardInterrupt)


async def test_a_connection_the_server_closed_is_replaced(make_pool: Any, db: Any) -> None:
    pool, opener = await make_pool(min_size=1, max_size=1)
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
    assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    await wait_until_gone(db, pid)
    await asyncio.sleep(0.05)  # the client notices the closed socket
    async with pool.acquire(wait_seconds=5) as conn:
        assert conn.get_server_pid() != pid
        assert await conn.fetchval("SELECT 3") == 3
    assert (pool.get_size(), opener.opened) == (1, 2)


async def test_a_connection_given_back_inside_a_transaction_is_not_lent_again(
    make_pool: Any, db: Any
) -> None:
    pool, _ = await make_pool(max_size=1)
    conn = await pool.take()
    pid = conn.get_server_pid()
    await conn.execute("BEGIN")
    await conn.execute("CREATE TEMPORARY TABLE leftover (x int)")
    pool.give_back(conn)
    await wait_until_gone(db, pid)
    async with pool.acquire(wait_seconds=5) as fresh:
        assert fresh.get_server_pid() != pid
        assert not fresh.is_in_transaction()


async def test_a_dropped_connection_frees_its_slot_for_a_waiter(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=1)
    held = await pool.take()
    waiting = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)
    pool.give_back(held, reusable=False)  # terminated: the waiter opens a new connection in its slot
    async with asyncio.timeout(5):
        conn = await waiting
    assert conn is not held
    assert held.is_closed()
    assert (pool.get_size(), opener.opened) == (1, 2)
    pool.give_back(conn)


async def test_a_failed_connect_frees_its_slot(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=1)
    opener.fail_with = OSError("refused")
    with pytest.raises(OSError, match="refused"):
        await pool.take(wait_seconds=1)
    assert pool.get_size() == 0
    opener.fail_with = None
    async with pool.acquire(wait_seconds=5) as conn:
        assert await conn.fetchval("SELECT 4") == 4
    assert pool.get_size() == 1


async def test_expire_connections_replaces_every_connection(make_pool: Any, db: Any) -> None:
    pool, opener = await make_pool(min_size=2, max_size=2)
    busy = await pool.take()
    async with pool.acquire() as idle:
        idle_pid = idle.get_server_pid()
    busy_pid = busy.get_server_pid()
    await pool.expire_connections()
    await wait_until_gone(db, idle_pid)  # the idle one at once
    assert await backend_alive(db, busy_pid)
    pool.give_back(busy)
    await wait_until_gone(db, busy_pid)  # the busy one when given back
    async with pool.acquire(wait_seconds=5) as conn:
        assert conn.get_server_pid() not in (idle_pid, busy_pid)
    assert opener.opened == 3


async def test_connections_idle_too_long_are_closed_and_opened_again_when_needed(make_pool: Any) -> None:
    pool, opener = await make_pool(min_size=1, max_size=3, max_idle_seconds=0.2)
    taken = [await pool.take() for _ in range(3)]
    for conn in taken[:2]:
        pool.give_back(conn)
    await asyncio.sleep(0.1)
    pool.give_back(taken[2])  # idle for less time than the other two
    assert pool.get_size() == 3
    async with asyncio.timeout(3):
        while pool.get_size() > 1:  # noqa: ASYNC110 - closed by a timer inside the pool
            await asyncio.sleep(0.02)
    assert [conn.is_closed() for conn in taken[:2]] == [True, True]
    assert not taken[2].is_closed()
    async with asyncio.timeout(3):
        while pool.get_size() > 0:  # noqa: ASYNC110 - the minimum too, once idle that long
            await asyncio.sleep(0.02)
    assert taken[2].is_closed()
    async with pool.acquire(wait_seconds=5) as conn:
        assert await conn.fetchval("SELECT 6") == 6
    assert opener.opened == 4


async def test_close_waits_for_busy_connections_and_refuses_new_takers(make_pool: Any) -> None:
    pool, _ = await make_pool(max_size=1)
    held = await pool.take()
    waiting = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the busy connection
    with pytest.raises(PoolClosedError):
        await waiting
    with pytest.raises(PoolClosedError):
        await pool.take()
    assert await held.fetchval("SELECT 5") == 5  # still usable by its holder
    pool.give_back(held)
    async with asyncio.timeout(5):
        await closing
    assert held.is_closed()
    assert pool.get_size() == 0


async def test_close_terminates_connections_not_given_back_in_time(make_pool: Any) -> None:
    pool, _ = await make_pool(max_size=1, close_timeout=0.2)
    held = await pool.take()
    async with asyncio.timeout(5):
        await pool.close()
    assert held.is_closed()
    assert pool.get_size() == 0


def test_sizes_are_checked() -> None:
    async def never() -> asyncpg.Connection:
        raise AssertionError

    with pytest.raises(ValueError, match="pool sizes"):
        Pool(never, min_size=3, max_size=2)
    with pytest.raises(ValueError, match="pool sizes"):
        Pool(never, min_size=0, max_size=0)


async def test_a_connection_given_back_twice_is_lent_once(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=2)
    conn = await pool.take()
    pool.give_back(conn)
    pool.give_back(conn)  # a bug elsewhere: ignored, not a second idle entry
    assert pool.get_idle_size() == 1
    first, second = await pool.take(), await pool.take()
    assert first is not second
    assert opener.opened == 2
    pool.give_back(first)
    pool.give_back(second)


async def test_terminate_fails_the_waiters(make_pool: Any) -> None:
    pool, _ = await make_pool(max_size=1)
    held = await pool.take()
    waiting = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)
    pool.terminate()
    async with asyncio.timeout(1):
        with pytest.raises(PoolClosedError):
            await waiting
    assert held.is_closed()
    pool.give_back(held)  # after terminate: nothing happens
    assert pool.get_size() == 0


async def test_a_connection_past_its_lifetime_is_replaced(make_pool: Any, db: Any) -> None:
    """max_lifetime_seconds: a connection older than its lifetime (90 to 100 % of the setting) is closed when
    given back, or when found idle, and the next taker gets a new one."""
    pool, opener = await make_pool(max_size=2, max_lifetime_seconds=0.3)
    busy = await pool.take()
    async with pool.acquire() as idle:
        idle_pid = idle.get_server_pid()
    busy_pid = busy.get_server_pid()
    async with pool.acquire() as again:  # young: the same connection is lent again
        assert again.get_server_pid() == idle_pid
    await asyncio.sleep(0.35)
    pool.give_back(busy)  # old: closed, not kept
    await wait_until_gone(db, busy_pid)
    assert pool.get_idle_size() == 1  # the idle one waits to be taken
    async with pool.acquire(wait_seconds=5) as conn:  # and is then too old to lend as well
        assert conn.get_server_pid() not in (idle_pid, busy_pid)
    await wait_until_gone(db, idle_pid)
    assert opener.opened == 3
    assert pool.get_size() == 1


async def test_a_connection_within_its_lifetime_is_kept(make_pool: Any) -> None:
    pool, opener = await make_pool(max_size=1, max_lifetime_seconds=60)
    for _ in range(20):
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    assert opener.opened == 1


async def test_close_waits_for_a_connection_still_opening_and_closes_it(
    make_pool: Any, db: Any, database_dsn: str
) -> None:
    """A connect in progress when close() starts: close() returns only once that connection is open and
    closed again, so nothing the pool opened outlives it."""
    pool, opener = await make_pool(max_size=1)
    opened: list[asyncpg.Connection] = []
    release = asyncio.Event()

    async def slow_connect() -> asyncpg.Connection:
        await release.wait()
        conn = await asyncpg.connect(database_dsn)
        opened.append(conn)
        return conn

    pool._connect = slow_connect  # the next connection takes its time to open
    taking = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the connect in progress
    release.set()
    async with asyncio.timeout(5):
        await closing
    with pytest.raises(PoolClosedError):
        await taking
    assert len(opened) == 1
    assert opened[0].is_closed()
    assert pool.get_size() == 0
    assert opener.opened == 0


async def test_the_lifetime_setting_is_checked_and_reaches_the_app_pool(database_dsn: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="db_pool_max_lifetime_seconds"):
        make_settings(db_pool_max_lifetime_seconds=-1)
    assert make_settings().db_pool_max_lifetime_seconds == 1800
    pool = await create_pool(make_settings(db_pool_max_lifetime_seconds=0.2), database_dsn, sizes=(1, 1))
    try:
        async with pool.acquire() as conn:
            first = conn.get_server_pid()
        await asyncio.sleep(0.25)
        async with pool.acquire(wait_seconds=5) as conn:
            assert conn.get_server_pid() != first
    finally:
        await pool.close()


async def test_a_waiter_promised_a_slot_just_before_close_opens_nothing(make_pool: Any) -> None:
    """A dropped connection promises its slot to the first waiter, which opens a connection in it once it
    runs. If close() comes first, the waiter must not open one after the pool is gone."""
    pool, opener = await make_pool(max_size=1)
    held = await pool.take()
    waiting = asyncio.ensure_future(pool.take(wait_seconds=5))
    await asyncio.sleep(0.01)
    pool.give_back(held, reusable=False)  # dropped: its slot is promised to the waiter
    async with asyncio.timeout(5):
        await pool.close()  # before the waiter has run
        with pytest.raises(PoolClosedError):
            await waiting
    assert opener.opened == 1
    assert pool.get_size() == 0


async def test_waits_for_a_connection_are_measured_and_takes_that_find_one_are_not(
    make_pool: Callable[..., Any],
) -> None:
    """Pool.on_wait feeds virtualq_db_pool_wait_seconds and _timeouts_total (kit/metrics.py): only a take
    that had to wait reports, with how long it waited and whether it gave up."""
    from virtualq.kit.metrics import Metrics

    pool, _ = await make_pool(max_size=1)
    metrics = Metrics()
    pool.on_wait = metrics.pool_waited
    held = await pool.take()
    pool.give_back(held)
    again = await pool.take()  # an idle one: no wait, nothing reported

    async def give_back_later() -> None:
        await asyncio.sleep(0.15)
        pool.give_back(again)

    handing = asyncio.create_task(give_back_later())
    waited = await pool.take(wait_seconds=5)
    await handing
    with pytest.raises(TimeoutError):
        await pool.take(wait_seconds=0.05)
    pool.give_back(waited)

    def value(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    assert value("virtualq_db_pool_wait_seconds_count") == 2  # the wait that got one, the one that gave up
    assert 0.15 + 0.05 <= value("virtualq_db_pool_wait_seconds_sum") < 1.0
    assert value("virtualq_db_pool_wait_timeouts_total") == 1
    assert "virtualq_db_pool_wait_timeouts_created" not in metrics.exposition().decode()
