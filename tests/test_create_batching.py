"""Group commit for creates (tickets/batching.py): creates into one queue arriving while another create's
statement runs share the next statement. Numbers stay gap-free and in arrival order, each creator is told
its own position, a batch that PostgreSQL refuses is retried one create at a time, and a batch whose
outcome is unknown fails its creates as unavailable without stopping the line."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, coffee
from virtualq.db import _init_connection
from virtualq.errors import Unavailable
from virtualq.kit.ids import new_id
from virtualq.kit.metrics import Metrics
from virtualq.tickets.batching import Batching
from virtualq.tickets.repository import TypeChanged

# A type whose tickets start being served (walk-ins): in a batch they take a number but no place in line.
WALK_IN_FSM: dict[str, Any] = {
    "init": "at_desk",
    "states": ["at_desk", "done"],
    "transitions": [{"name": "finish", "from": "at_desk", "to": "done"}],
    "categories": {"at_desk": "in_service"},
}


def sample(app: Any, name: str) -> float:
    value = app.state.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def test_concurrent_creates_share_statements_and_keep_order(
    app: Any, client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue_id, order_id = await coffee(client, api)
    walk_in = await t.type("walk_in", WALK_IN_FSM)
    assert walk_in["state_categories"]["at_desk"] == "in_service"
    statements = sample(app, "virtualq_ticket_create_statements_total")
    created_before = sample(app, "virtualq_tickets_created_total")

    # Every fifth create is a walk-in (not in line): the others' positions must skip it.
    types = [walk_in["id"] if n % 5 == 4 else order_id for n in range(60)]
    created = await asyncio.gather(*(t.ticket(queue_id, type_id) for type_id in types))

    assert sample(app, "virtualq_tickets_created_total") - created_before == 60
    used = sample(app, "virtualq_ticket_create_statements_total") - statements
    assert used < 60, "concurrent creates into one queue should share statements"

    by_number = sorted(created, key=lambda ticket: ticket["number"])
    assert [ticket["number"] for ticket in by_number] == list(range(1, 61))
    assert [ticket["display_code"][-3:] for ticket in by_number] == [f"{n:03d}" for n in range(1, 61)]
    waiting = [ticket for ticket in by_number if ticket["state_category"] == "waiting"]
    walk_ins = [ticket for ticket in by_number if ticket["state_category"] == "in_service"]
    assert len(waiting) == 48
    assert len(walk_ins) == 12
    # Each waiting creator was told its place: its rank among the waiting tickets in number order.
    assert [ticket["position"] for ticket in waiting] == list(range(1, 49))
    assert all(ticket["position"] is None for ticket in walk_ins)
    assert all(ticket["started_at"] is not None for ticket in walk_ins)
    # The line agrees (sort keys follow the numbers), and so does each ticket read back.
    line = [row for row in await t.all_pages(f"/v1/queues/{queue_id}/tickets") if row["position"]]
    assert [row["id"] for row in line] == [ticket["id"] for ticket in waiting]
    assert [row["position"] for row in line] == list(range(1, 49))
    # One history row and one ticket.created event per ticket, the events in number order.
    tenant = uuid.UUID(t.id)
    history = await db.fetchval("SELECT count(*) FROM ticket_history WHERE tenant_id = $1", tenant)
    assert history == 60
    events = await db.fetch(
        "SELECT ticket_id FROM events WHERE tenant_id = $1 AND type = 'ticket.created' ORDER BY id", tenant
    )
    assert [str(row["ticket_id"]) for row in events] == [ticket["id"] for ticket in by_number]
    # The kept waiting count followed every row of the batches.
    kept = await db.fetchval(
        "SELECT sum(waiting) FROM queue_waiting_counts WHERE queue_id = $1", uuid.UUID(queue_id)
    )
    assert kept == 48


async def test_one_statement_per_create_when_batching_is_off(database_dsn: str, api: Api) -> None:
    from tests.conftest import make_settings
    from virtualq.app import create_app

    application = create_app(make_settings(create_batch_max=1), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            t, queue_id, order_id = await coffee(client, Api(client, api.admin_key))
            created = await asyncio.gather(*(t.ticket(queue_id, order_id) for _ in range(20)))
    assert sorted(ticket["number"] for ticket in created) == list(range(1, 21))
    assert sorted(ticket["position"] for ticket in created) == list(range(1, 21))
    assert sample(application, "virtualq_ticket_create_statements_total") == 20


# --- the batcher on its own, with real connections ----------------------------------------------------------


@pytest.fixture
async def connections(database_dsn: str) -> AsyncIterator[list[asyncpg.Connection]]:
    conns = [await asyncpg.connect(database_dsn) for _ in range(6)]
    for conn in conns:
        await _init_connection(conn)
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


def new_ticket(type_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": new_id(),
        "history_id": new_id(),
        "type_definition_id": type_id,
        "type_version": 1,
        "current_state": "received",
        "state_category": "waiting",
        "customer_id": None,
        "references_ticket_id": None,
        "estimated_wait_minutes": None,
        "ttl_minutes": None,
        "custom_data": {},
        "leaves": False,
        "ready": False,
        "done": False,
        "cancelled": False,
        "pace": 2.0,
    }


async def a_queue(client: httpx.AsyncClient, api: Api) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Main", ticket_prefix="B")
    return uuid.UUID(t.id), uuid.UUID(queue["id"]), uuid.UUID(order["id"])


async def leading(db: asyncpg.Connection, queue_id: uuid.UUID, leader: asyncpg.Connection | None) -> None:
    """Until `leader`'s statement, and no other, waits for the queue's advisory lock (which `db` holds): the
    other creates wait in the process's line. With no leader: until no statement waits for the lock (a
    cancelled one is cancelled in PostgreSQL only once its cancel request has arrived)."""
    pids = [] if leader is None else [leader.get_server_pid()]
    for _ in range(500):
        await asyncio.sleep(0.01)
        blocked = await db.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = (hashtextextended($1::text, 0) & 4294967295)::oid",
            str(queue_id),
        )
        if [row["pid"] for row in blocked] == pids:
            return
    raise AssertionError(f"the lock's waiters never became {pids}")


async def behind_the_queue_lock(
    db: asyncpg.Connection,
    batching: Batching,
    connections: list[asyncpg.Connection],
    tenant: uuid.UUID,
    queue_id: uuid.UUID,
    tickets: list[dict[str, Any]],
) -> list[Any]:
    """Create each of `tickets` on a connection of its own while `db` holds the queue's lock: the first
    create waits in PostgreSQL (a statement of its own), the others in the process's line (the next batch).
    Their rows or exceptions, in order."""

    async def create(n: int) -> Any:
        return await batching.insert(
            connections[n], tenant_id=tenant, queue_id=queue_id, timezone="UTC", prefix="B", ticket=tickets[n]
        )

    await db.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", str(queue_id))
    tasks = [asyncio.create_task(create(n)) for n in range(len(tickets))]
    await leading(db, queue_id, connections[0])
    await db.execute("SELECT pg_advisory_unlock(hashtextextended($1::text, 0))", str(queue_id))
    async with asyncio.timeout(10):
        return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_refused_batch_runs_again_one_create_at_a_time(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, connections: list[asyncpg.Connection]
) -> None:
    tenant, queue_id, type_id = await a_queue(client, api)
    batching = Batching(max_batch=64, metrics=Metrics())
    tickets = [new_ticket(type_id) for _ in range(6)]
    tickets[3]["customer_id"] = uuid.uuid4()  # no such customer: the foreign key refuses the batch

    results = await behind_the_queue_lock(db, batching, connections, tenant, queue_id, tickets)

    assert isinstance(results[3], asyncpg.ForeignKeyViolationError)
    rows = [result for n, result in enumerate(results) if n != 3]
    assert all(not isinstance(row, BaseException) for row in rows), results
    # The refused batch numbered nothing: the numbers stay gap-free, and every create got its own row.
    assert sorted(row["number"] for row in rows) == [1, 2, 3, 4, 5]
    assert {row["id"] for row in rows} == {tickets[n]["id"] for n in range(6) if n != 3}
    assert sorted(row["position"] for row in rows) == [1, 2, 3, 4, 5]
    assert rows[0]["number"] == 1  # the leader went first
    total = await db.fetchval("SELECT count(*) FROM tickets WHERE queue_id = $1", queue_id)
    assert total == 5
    assert batching.metrics is not None
    statements = batching.metrics.registry.get_sample_value("virtualq_ticket_create_statements_total")
    assert statements == 5  # the leader's, then each of the four others alone (the refused one counts none)


async def test_a_batch_with_a_changed_type_writes_nothing_and_runs_again_one_create_at_a_time(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, connections: list[asyncpg.Connection]
) -> None:
    # One create read its type at a version that is gone (the type changed since): its start state may be
    # one the type no longer has, so the statement writes nothing and the others run again alone.
    tenant, queue_id, type_id = await a_queue(client, api)
    batching = Batching(max_batch=64, metrics=Metrics())
    tickets = [new_ticket(type_id) for _ in range(4)]
    tickets[2]["type_version"] = 0

    results = await behind_the_queue_lock(db, batching, connections, tenant, queue_id, tickets)

    assert isinstance(results[2], TypeChanged), results
    rows = [result for n, result in enumerate(results) if n != 2]
    assert sorted(row["number"] for row in rows) == [1, 2, 3]  # nothing numbered for the stale batch
    assert await db.fetchval("SELECT count(*) FROM tickets WHERE queue_id = $1", queue_id) == 3
    assert await db.fetchval("SELECT count(*) FROM events WHERE queue_id = $1", queue_id) == 3
    assert batching.metrics is not None
    statements = batching.metrics.registry.get_sample_value("virtualq_ticket_create_statements_total")
    assert statements == 3  # the leader's, then the other two alone (the stale batch and create count none)


async def test_a_create_waiting_for_its_queue_never_writes_at_a_version_its_type_left(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, connections: list[asyncpg.Connection]
) -> None:
    """The create's statement waits for the queue's lock after it has started (and taken its snapshot); a
    type change meanwhile either waits for the create (the type is share-locked) or the create sees the new
    version and writes nothing. Without the lock it checked the version it had read at its start, and wrote
    its ticket at the old version (in a start state the change may have dropped)."""
    tenant, queue_id, type_id = await a_queue(client, api)
    batching = Batching(max_batch=1)
    await db.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", str(queue_id))
    create = asyncio.create_task(
        batching.insert(
            connections[0], tenant_id=tenant, queue_id=queue_id, timezone="UTC", prefix="B",
            ticket=new_ticket(type_id),
        )
    )  # fmt: skip
    try:
        await leading(db, queue_id, connections[0])
        change = connections[1]
        await change.execute("SET lock_timeout = '300ms'")
        try:
            await change.execute("UPDATE type_definitions SET version = version + 1 WHERE id = $1", type_id)
            changed = True
        except asyncpg.LockNotAvailableError:
            changed = False
    finally:
        await db.execute("SELECT pg_advisory_unlock(hashtextextended($1::text, 0))", str(queue_id))
    async with asyncio.timeout(10):
        outcome = await asyncio.gather(create, return_exceptions=True)
    written = await db.fetchval("SELECT count(*) FROM tickets WHERE queue_id = $1", queue_id)
    if changed:  # the change went first: the create must not have written at the old version
        assert isinstance(outcome[0], TypeChanged), outcome
        assert written == 0
    else:  # the change had to wait for the create
        assert not isinstance(outcome[0], BaseException), outcome
        assert written == 1


async def test_a_batch_of_unknown_outcome_fails_as_unavailable_and_the_line_goes_on(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, connections: list[asyncpg.Connection]
) -> None:
    tenant, queue_id, type_id = await a_queue(client, api)
    batching = Batching(max_batch=64)

    async def create(n: int) -> Any:
        return await batching.insert(
            connections[n],
            tenant_id=tenant,
            queue_id=queue_id,
            timezone="UTC",
            prefix="B",
            ticket=new_ticket(type_id),
        )

    await db.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", str(queue_id))
    tasks = [asyncio.create_task(create(n)) for n in range(4)]
    await leading(db, queue_id, connections[0])
    # The leader (alone in its batch) is cancelled while it waits: the next waiter leads the other three.
    tasks[0].cancel()
    await leading(db, queue_id, connections[1])
    # That leader is cancelled too: the outcome of its batch is unknown to its two followers.
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[2], Unavailable)
    assert isinstance(results[3], Unavailable)
    await leading(db, queue_id, None)
    await db.execute("SELECT pg_advisory_unlock(hashtextextended($1::text, 0))", str(queue_id))

    # Nothing was committed (the cancelled statements were cancelled in PostgreSQL), and the line is free.
    row = await create(4)
    assert row["number"] == 1
    assert row["position"] == 1
    again = await asyncio.gather(create(4), create(5))
    assert sorted(r["number"] for r in again) == [2, 3]


async def test_a_refused_create_alone_in_its_batch_lets_the_line_go_on(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, connections: list[asyncpg.Connection]
) -> None:
    # The leader's own statement (a batch of one) fails while the others wait in the process's line: they
    # must get the next statement, not wait for ever.
    tenant, queue_id, type_id = await a_queue(client, api)
    batching = Batching(max_batch=64)
    tickets = [new_ticket(type_id) for _ in range(4)]
    tickets[0]["customer_id"] = uuid.uuid4()

    results = await behind_the_queue_lock(db, batching, connections, tenant, queue_id, tickets)
    assert isinstance(results[0], asyncpg.ForeignKeyViolationError)
    assert sorted(row["number"] for row in results[1:]) == [1, 2, 3]
