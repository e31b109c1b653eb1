"""Test set-up: a real PostgreSQL (embedded, or TEST_DATABASE_URL) built by our migrations, and the real app.

Each test session gets a fresh database. Tests isolate themselves by creating their own accounts and tenants
(ids are random), so they never depend on each other's rows.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from virtualq import migrate
from virtualq.app import create_app
from virtualq.config import Settings
from virtualq.embedded_pg import EmbeddedPostgres
from virtualq.logging import configure_logging

pytest_plugins = ["tests.watchdog"]

ADMIN_KEY = "vq_test_admin_" + secrets.token_urlsafe(24)


def _with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def _admin_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """The PostgreSQL server for the run: TEST_DATABASE_URL, or an embedded one in a temporary directory."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="vq-test-pg-"))
    embedded = EmbeddedPostgres(
        data_dir,
        database="postgres",
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    dsn = embedded.start()
    try:
        yield dsn
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def database_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database for this run, built by our own migrations."""
    name = f"vq_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(server_dsn, f'CREATE DATABASE "{name}"'))
    dsn = _with_database(server_dsn, name)
    migrate.upgrade(dsn)
    try:
        yield dsn
    finally:
        asyncio.run(_admin_execute(server_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "admin_api_key": ADMIN_KEY,
        "db_pool_max_size": 20,
        "log_level": "warning",
        "sweeper_interval_seconds": 0,
        # Tests send far more than 100 requests a minute with one key; test_rate_limits turns limits on.
        "rate_limit_per_minute": 0,
        "self_join_rate_per_minute": 0,  # likewise every self-join comes from one address; tested on its own
        "event_poll_seconds": 0.2,
        # Webhook tests run their own apps with delivery on; loopback receivers are allowed in tests.
        "webhook_delivery": False,
        "webhook_allow_private_targets": True,
        "webhook_timeout_seconds": 1.0,
        "webhook_retry_base_seconds": 0.05,
        "webhook_retry_max_seconds": 0.2,
        "webhook_retry_window_seconds": 3.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def empty_database(server_dsn: str) -> Iterator[str]:
    """A database of its own with no tables, dropped afterwards: for migrations and CLI runs."""
    name = f"vq_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(server_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server_dsn, name)
    finally:
        asyncio.run(_admin_execute(server_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
async def app(database_dsn: str) -> AsyncIterator[Any]:
    application = create_app(make_settings(), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, for asserting on rows."""
    conn = await asyncpg.connect(database_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def api(client: httpx.AsyncClient) -> Any:
    from tests.helpers import Api

    return Api(client, ADMIN_KEY)


class LiveServer:
    """The session's app served over real HTTP on loopback; stop() and start() simulate a restart."""

    def __init__(self, app: Any) -> None:
        import socket

        self.app = app
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        from virtualq.kit.transport import UVICORN_OPTIONS

        # The protocol and options `virtualq serve` runs, so every test over real HTTP goes through them.
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning", **UVICORN_OPTIONS
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert self._server is not None
        assert self._task is not None
        self._server.should_exit = True
        self._server.force_exit = True  # open event streams would otherwise keep it waiting
        # Like a process that dies: every open connection is cut, not left hanging.
        for connection in list(self._server.server_state.connections):
            connection.transport.close()
        await self._task


@pytest.fixture(scope="session")
async def live_server(app: Any) -> AsyncIterator[LiveServer]:
    server = LiveServer(app)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Configure logging as production does (JSON lines) and capture everything the root logger writes."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    uvicorn_access = logging.getLogger("uvicorn.access")
    saved_disabled = uvicorn_access.disabled
    alembic_logger = logging.getLogger("alembic")
    saved_alembic_level = alembic_logger.level
    saved_structlog = structlog.get_config()
    buffer = io.StringIO()
    configure_logging("info", json=True, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        uvicorn_access.disabled = saved_disabled
        alembic_logger.setLevel(saved_alembic_level)
        structlog.configure(**saved_structlog)
        structlog.contextvars.clear_contextvars()
