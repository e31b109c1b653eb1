"""Each queue's waiting count (`queue_waiting_counts`, migration 0010), which gives a new ticket its
position without counting the line: filled by the migration, kept by triggers through every way a ticket
joins or leaves a line, and equal to the real count after concurrent traffic through the API."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from tests.helpers import Api
from tests.test_distribution import run
from tests.test_queue_operations import call, coffee, forward, line_of
from virtualq import migrate

KEPT = """SELECT queue_id, sum(waiting)::int AS n FROM queue_waiting_counts GROUP BY queue_id
          HAVING sum(waiting) <> 0 ORDER BY queue_id"""
REAL = """SELECT queue_id, count(*)::int AS n FROM tickets WHERE state_category = 'waiting'
          GROUP BY queue_id ORDER BY queue_id"""


async def kept_and_real(conn: asyncpg.Connection) -> tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]:
    kept = {row["queue_id"]: row["n"] for row in await conn.fetch(KEPT)}
    real = {row["queue_id"]: row["n"] for row in await conn.fetch(REAL)}
    return kept, real


TENANT, QUEUE_A, QUEUE_B = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def ticket_sql(number: int, queue: uuid.UUID, category: str) -> str:
    return f"""INSERT INTO tickets (tenant_id, id, queue_id, origin_queue_id, type_definition_id, number,
                                    display_code, local_date, current_state, state_category)
               VALUES ('{TENANT}', '{uuid.uuid4()}', '{queue}', '{queue}', (SELECT id FROM type_definitions),
                       {number}, 'T{number:03d}', current_date, '{category}', '{category}');"""


ROWS = f"""
INSERT INTO accounts (id, name) VALUES ('{uuid.uuid4()}', 'Counts');
INSERT INTO tenants (id, account_id, name) VALUES ('{TENANT}', (SELECT id FROM accounts), 'Counts');
INSERT INTO type_definitions (id, tenant_id, type_code, type_name)
     VALUES ('{uuid.uuid4()}', '{TENANT}', 'plain', 'Plain');
INSERT INTO queues (tenant_id, id, name)
     VALUES ('{TENANT}', '{QUEUE_A}', 'A'), ('{TENANT}', '{QUEUE_B}', 'B');
{ticket_sql(1, QUEUE_A, "waiting")}
{ticket_sql(2, QUEUE_A, "waiting")}
{ticket_sql(3, QUEUE_A, "waiting")}
{ticket_sql(4, QUEUE_A, "in_service")}
{ticket_sql(5, QUEUE_B, "waiting")}
{ticket_sql(6, QUEUE_B, "waiting")}
{ticket_sql(7, QUEUE_B, "done")}
"""


async def _changes(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:

        async def check(expected: dict[uuid.UUID, int]) -> None:
            assert await kept_and_real(conn) == (expected, expected)
            for queue, n in expected.items():
                assert await conn.fetchval("SELECT queue_waiting_count($1, $2)", TENANT, queue) == n

        await check({QUEUE_A: 3, QUEUE_B: 2})
        by_number = "UPDATE tickets SET {} WHERE number = $1"
        await conn.execute(by_number.format("current_state = 'called'"), 1)  # still waiting: no change
        await check({QUEUE_A: 3, QUEUE_B: 2})
        await conn.execute(by_number.format("state_category = 'in_service'"), 1)  # leaves A's line
        await check({QUEUE_A: 2, QUEUE_B: 2})
        await conn.execute(by_number.format(f"queue_id = '{QUEUE_A}'"), 5)  # forwarded B -> A, waiting
        await check({QUEUE_A: 3, QUEUE_B: 1})
        await conn.execute(  # sent back to the line, in another queue
            by_number.format(f"queue_id = '{QUEUE_B}', state_category = 'waiting'"), 4
        )
        await check({QUEUE_A: 3, QUEUE_B: 2})
        await conn.execute(by_number.format(f"queue_id = '{QUEUE_B}'"), 7)  # done: moves, counts nowhere
        await check({QUEUE_A: 3, QUEUE_B: 2})
        await conn.execute("DELETE FROM tickets WHERE number = $1", 2)
        await check({QUEUE_A: 2, QUEUE_B: 2})
        await conn.execute(ticket_sql(8, QUEUE_B, "waiting") + ticket_sql(9, QUEUE_B, "cancelled"))
        await check({QUEUE_A: 2, QUEUE_B: 3})
        await conn.execute("UPDATE tickets SET state_category = 'cancelled' WHERE state_category = 'waiting'")
        await check({})
        await conn.execute("UPDATE tickets SET state_category = 'waiting' WHERE number IN (1, 3, 8)")
        await check({QUEUE_A: 2, QUEUE_B: 1})
    finally:
        await conn.close()


def test_the_migration_fills_the_counts_and_the_triggers_keep_them(empty_database: str) -> None:
    migrate.upgrade(empty_database, "0009")
    asyncio.run(run(empty_database, ROWS))
    migrate.upgrade(empty_database)  # 0010 counts the lines that exist
    asyncio.run(_changes(empty_database))
    migrate.downgrade(empty_database, "0009")
    migrate.upgrade(empty_database)
    counts = asyncio.run(_kept_and_real_on(empty_database))
    assert counts[0] == counts[1] != {}


async def _kept_and_real_on(dsn: str) -> tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        return await kept_and_real(conn)
    finally:
        await conn.close()


async def test_concurrent_creates_calls_and_cancels_keep_the_count(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue_id, order_id, ids = await coffee(client, api, tickets=20)
    other = await t.queue("Other")

    def create(queue: str) -> Any:
        return client.post(
            "/v1/tickets", json={"queue_id": queue, "type_definition_id": order_id}, headers=t.h
        )

    jobs = [create(queue_id) for _ in range(30)] + [create(other["id"]) for _ in range(10)]
    jobs += [call(client, t, queue_id) for _ in range(12)]
    jobs += [client.delete(f"/v1/tickets/{ticket_id}", headers=t.h) for ticket_id in ids[15:]]
    jobs += [forward(client, t, ticket_id, target_queue_id=other["id"]) for ticket_id in ids[12:15]]
    results = await asyncio.gather(*jobs)
    assert {r.status_code for r in results} <= {200, 201, 400}, [r.text for r in results]
    created = [r.json() for r in results[:40]]
    assert [r.status_code for r in results[:40]] == [201] * 40
    called = [r for r in results[40:52] if r.status_code == 200]
    assert len(called) == 12
    kept, real = await kept_and_real(db)
    tenant_queues = {uuid.UUID(queue_id), uuid.UUID(other["id"])}
    assert {q: n for q, n in kept.items() if q in tenant_queues} == {
        q: n for q, n in real.items() if q in tenant_queues
    }
    assert real[uuid.UUID(queue_id)] == 20 + 30 - 12 - 5 - 3
    # Each new ticket was told a place within its line (two may share one: a call in between).
    for queue, most in ((queue_id, 20 + 30), (other["id"], 10 + 3)):
        positions = [c["position"] for c in created if c["queue_id"] == queue]
        assert min(positions) >= 1
        assert max(positions) <= most
    assert len(await line_of(t, queue_id)) == real[uuid.UUID(queue_id)]


async def _truncations(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        before = {QUEUE_A: 3, QUEUE_B: 2}
        assert await kept_and_real(conn) == (before, before)
        # In the truncating transaction the counts are gone; rolled back, they come back with the tickets.
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("TRUNCATE tickets CASCADE")
        assert await conn.fetchval("SELECT count(*) FROM queue_waiting_counts") == 0
        await transaction.rollback()
        assert await kept_and_real(conn) == (before, before)

        await conn.execute("TRUNCATE tickets CASCADE")
        assert await conn.fetchval("SELECT count(*) FROM queue_waiting_counts") == 0
        assert await conn.fetchval("SELECT queue_waiting_count($1, $2)", TENANT, QUEUE_A) == 0
        # New tickets count from zero again: no position behind a truncated ticket.
        await conn.execute(ticket_sql(10, QUEUE_A, "waiting") + ticket_sql(11, QUEUE_A, "waiting"))
        assert await kept_and_real(conn) == ({QUEUE_A: 2}, {QUEUE_A: 2})
        # A role under row security, scoped to another tenant, that may truncate: the counts it cannot see
        # go too (the trigger deletes as the owner).
        await conn.execute("GRANT TRUNCATE ON ALL TABLES IN SCHEMA public TO virtualq_app")
        await conn.execute(f"SET ROLE virtualq_app; SET virtualq.tenant_id = '{uuid.uuid4()}'")
        assert await conn.fetchval("SELECT count(*) FROM queue_waiting_counts") == 0  # none visible
        await conn.execute("TRUNCATE tickets CASCADE")
        await conn.execute("RESET ROLE; RESET virtualq.tenant_id")
        assert await kept_and_real(conn) == ({}, {})
        await conn.execute(ticket_sql(14, QUEUE_A, "waiting"))
        assert await kept_and_real(conn) == ({QUEUE_A: 1}, {QUEUE_A: 1})
        # A TRUNCATE that reaches tickets only by cascading (from their type; queues, and so the counts'
        # own rows, stay) empties the counts as well.
        await conn.execute("TRUNCATE type_definitions CASCADE")
        assert await conn.fetchval("SELECT count(*) FROM queues") == 2
        assert await kept_and_real(conn) == ({}, {})
    finally:
        await conn.close()


async def _truncate_and_count(dsn: str) -> dict[uuid.UUID, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE tickets CASCADE")
        return (await kept_and_real(conn))[0]
    finally:
        await conn.close()


def test_truncating_tickets_empties_the_counts(empty_database: str) -> None:
    """TRUNCATE fires no row triggers: migration 0015's statement trigger empties the counts with it."""
    migrate.upgrade(empty_database)
    asyncio.run(run(empty_database, ROWS))
    asyncio.run(_truncations(empty_database))
    # Without the trigger (before 0015) the counts outlived the tickets: what the test above would catch.
    migrate.downgrade(empty_database, "0014")
    new_type = f"""INSERT INTO type_definitions (id, tenant_id, type_code, type_name)
                    VALUES ('{uuid.uuid4()}', '{TENANT}', 'plain', 'Plain');"""
    asyncio.run(run(empty_database, new_type + ticket_sql(12, QUEUE_B, "waiting")))
    assert asyncio.run(_truncate_and_count(empty_database)) == {QUEUE_B: 1}
    migrate.upgrade(empty_database)
    asyncio.run(run(empty_database, "DELETE FROM queue_waiting_counts"))
    asyncio.run(run(empty_database, ticket_sql(13, QUEUE_B, "waiting")))
    assert asyncio.run(_truncate_and_count(empty_database)) == {}
