"""The connection pool (virtualq.pool) and the one place that opens transactions: one request = one
transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any

import asyncpg
import orjson
import structlog
from fastapi import Depends, Request

from virtualq.config import Settings
from virtualq.errors import Unavailable
from virtualq.pool import Pool, settled

log = structlog.get_logger("virtualq.db")

Connection = asyncpg.Connection
Record = asyncpg.Record

# Errors that mean "the database is not there right now" rather than "the query is wrong".
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


def _encode_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="text"
        )


# Row-level security (migration 0008): which tenant's rows the statements of this task may see. Set from the
# authenticated tenant (auth.principal.resolve_tenant); '' matches no tenant; SYSTEM is for work that spans
# tenants and is asked for explicitly, `acquire(..., system=True)`.
SYSTEM = "system"
# How long a request waits for a pooled connection before it answers 503.
POOL_TIMEOUT_SECONDS = 10.0
DB_SCOPE: ContextVar[str] = ContextVar("db_scope", default="")
APP_ROLE = "virtualq_app"


class PooledConnection(asyncpg.Connection):
    """A pooled connection, which remembers the row-security scope it was last set to. Nothing resets it
    when it goes back to the pool: the app leaves no session state behind except that scope, which `acquire`
    sets on every use (no SET of its own, LISTEN, advisory locks or cursors on pooled connections); asyncpg's
    reset (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) cost a round trip per
    request."""

    _vq_scope: str | None = None

    def vq_scope(self) -> str | None:
        return self._vq_scope

    def vq_remember_scope(self, scope: str) -> None:
        self._vq_scope = scope


async def _use_scope(conn: Connection, scope: str) -> None:
    """Point the connection's `virtualq.tenant_id` at `scope`, unless it already is (no round trip then).
    Set outside any transaction, so a rollback cannot undo it behind the memo's back."""
    if conn.vq_scope() != scope:  # type: ignore[attr-defined]
        await conn.execute("SELECT set_config('virtualq.tenant_id', $1, false)", scope)
        conn.vq_remember_scope(scope)  # type: ignore[attr-defined]


async def create_pool(
    settings: Settings,
    dsn: str,
    query_logger: Callable[[Any], None] | None = None,
    sizes: tuple[int, int] | None = None,
    on_connect: Callable[[], None] | None = None,
) -> Pool:
    """`query_logger` sees every statement (tests count queries per request with it); `sizes` overrides
    DB_POOL_MIN_SIZE / DB_POOL_MAX_SIZE; `on_connect` runs whenever the pool opens a connection, before
    anything uses it."""
    min_size, max_size = sizes or (settings.db_pool_min_size, settings.db_pool_max_size)

    async def connect() -> Connection:
        if on_connect is not None:
            on_connect()
        conn = await asyncpg.connect(
            dsn,
            command_timeout=settings.db_command_timeout_seconds,
            connection_class=PooledConnection,
            server_settings={"application_name": "virtualq", "timezone": "UTC"},
        )
        try:
            await _init_connection(conn)
            # Act as the application role, which row-level security always applies to (migration 0008).
            await conn.execute(f"SET ROLE {APP_ROLE}")
            if settings.public_base_url:  # ticket answers' customer_page (tickets/repository.TICKET_COLUMNS)
                await conn.execute(
                    "SELECT set_config('virtualq.public_base_url', $1, false)", settings.public_base_url
                )
        except BaseException:
            conn.terminate()
            raise
        if query_logger is not None:
            conn.add_query_logger(query_logger)
        return conn

    pool = Pool(
        connect,
        min_size=min_size,
        max_size=max_size,
        max_lifetime_seconds=settings.db_pool_max_lifetime_seconds,
    )
    await pool.start()
    return pool


async def use_tenant(conn: Connection, tenant_id: Any) -> None:
    """Scope an already-acquired connection to `tenant_id`, for code that learns its tenant only after the
    connection was opened (a tenant named in the path, a key created for a tenant). Inside a transaction the
    setting is local to it, so a rollback cannot leave the connection's memo wrong."""
    DB_SCOPE.set(str(tenant_id))
    if conn.is_in_transaction():
        await conn.execute("SELECT set_config('virtualq.tenant_id', $1, true)", str(tenant_id))
    else:
        await _use_scope(conn, str(tenant_id))


@asynccontextmanager
async def acquire(
    pool: Pool, *, transaction: bool, system: bool = False, unscoped: bool = False
) -> AsyncIterator[Connection]:
    """A pooled connection scoped to the current tenant (DB_SCOPE), or to every tenant with `system=True`.

    `unscoped=True` leaves the connection's scope as it is (saving a round trip when it differs): only for
    statements on tables without row security (api_keys, accounts, tenants, idempotency_keys)."""
    try:
        conn = await pool.take(POOL_TIMEOUT_SECONDS)
    except CONNECTION_ERRORS as exc:
        raise Unavailable("The database is unavailable; retry shortly.") from exc
    reusable = False
    try:
        if not unscoped:
            await _use_scope(conn, SYSTEM if system else DB_SCOPE.get())
        if transaction:
            async with conn.transaction():
                yield conn
        else:
            yield conn
        reusable = True
    except Exception as exc:
        reusable = settled(type(exc))
        # The server went away mid-request and asyncpg reported it as a closed connection or a protocol
        # state error (InterfaceError, InternalClientError) rather than a connection error: that is
        # "unavailable" (503), not a bug (500). Errors already answered with 503 pass unchanged.
        if conn.is_closed() and not isinstance(
            exc, (Unavailable, *CONNECTION_ERRORS, asyncpg.PostgresConnectionError)
        ):
            raise Unavailable("The database is unavailable; retry shortly.") from exc
        raise
    finally:
        # Given back without an await; one interrupted mid-statement is closed, not lent again (pool.settled).
        pool.give_back(conn, reusable=reusable)


async def fetch_returning(conn: Connection, sql: str, *args: Any) -> Record:
    """For INSERT ... RETURNING, which always yields its row."""
    row: Record | None = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


# Set by the event log's writers; after a commit, the app wakes its event hub and tells the other processes.
EVENTS_WRITTEN: ContextVar[bool] = ContextVar("events_written", default=False)


def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def reading(request: Request) -> AbstractAsyncContextManager[Connection]:
    """The connection of a read-only endpoint (ReadConn)."""
    return acquire(get_pool(request), transaction=False)


async def _read_connection(request: Request) -> AsyncIterator[Connection]:
    async with reading(request) as conn:
        yield conn


async def _system_read_connection(request: Request) -> AsyncIterator[Connection]:
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        yield conn


def request_state(request: Request) -> dict[str, Any]:
    """The request's state as the dict under `request.state`: a missing name is a `.get()` here, where
    `getattr(request.state, name, default)` raises and catches an AttributeError (about 2 µs)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def after_commit(request: Request, callback: Callable[[], Awaitable[None]]) -> None:
    """Run `callback` once this request's transaction has committed (not at all if it rolls back)."""
    state = request_state(request)
    state["after_commit"] = [*state.get("after_commit", ()), callback]


# An idempotent POST's claim becomes 'committed' in the same transaction as its work (kit/idempotency.py).
MARK_IDEMPOTENCY_COMMITTED = "UPDATE idempotency_keys SET state = 'committed' WHERE owner = $1 AND key = $2"


@asynccontextmanager
async def _writing(request: Request, *, transaction: bool) -> AsyncIterator[Connection]:
    EVENTS_WRITTEN.set(False)
    try:
        async with acquire(get_pool(request), transaction=transaction) as conn:
            yield conn
            claim = request_state(request).get("idempotency")
            if claim is not None:
                assert transaction, "an idempotency claim commits with the work, in one transaction"
                await conn.execute(MARK_IDEMPOTENCY_COMMITTED, *claim)
    except BaseException:
        # Without a transaction, a statement that wrote before the failure stands: say so as after a commit.
        if not transaction and EVENTS_WRITTEN.get():
            await _committed(request)
        raise
    await _committed(request)


async def _committed(request: Request) -> None:
    # Committed: this process's shared answers for the tenant (queues/feed_cache.py) are stale now; drop
    # them before the client hears back, so it reads its own write.
    state = request_state(request)
    tenant = state.get("tenant")
    if tenant is not None:
        request.app.state.feed_cache.forget(tenant)
    # A failure from here on (a notification, a cache flush elsewhere) must not turn the answer into an
    # error, or the client would retry a change that stands.
    callbacks = list(state.get("after_commit", ()))
    notify = request.app.state.on_events_committed
    if EVENTS_WRITTEN.get() and notify is not None:
        callbacks.append(notify)
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            log.warning("after_commit_failed", exc_info=True)


async def _write_transaction(request: Request) -> AsyncIterator[Connection]:
    async with _writing(request, transaction=True) as conn:
        yield conn


def writing_transaction(request: Request) -> AbstractAsyncContextManager[Connection]:
    """What `WriteConn` gives a route, for one that learns its tenant only inside its body (self-join)."""
    return _writing(request, transaction=True)


def writing_statement(request: Request) -> AbstractAsyncContextManager[Connection]:
    """For endpoints whose change is one statement (a transition, which checks the version it read and is
    retried when another change came first; a create; a call-next): no BEGIN and COMMIT round trips. With
    an Idempotency-Key the same statements run in a transaction, so that the key's claim commits with the
    change."""
    return _writing(request, transaction=request_state(request).get("idempotency") is not None)


async def _write_statement(request: Request) -> AsyncIterator[Connection]:
    async with writing_statement(request) as conn:
        yield conn


# scope="function": the transaction commits before the response is sent, so a 2xx means committed.
ReadConn = Annotated[Connection, Depends(_read_connection, scope="function")]
# Reads across tenants, for endpoints that authorise by other means (a ticket's secret token).
SystemReadConn = Annotated[Connection, Depends(_system_read_connection, scope="function")]
WriteConn = Annotated[Connection, Depends(_write_transaction, scope="function")]
# One-statement changes (transition, create, call-next): autocommit unless an Idempotency-Key is claimed.
StatementConn = Annotated[Connection, Depends(_write_statement, scope="function")]
