"""A transition or cancel starts from what this process last committed for the ticket (tickets/service.py,
`remember_written`), in one statement instead of a read and a write. The memory is only a guess: the write
happens only if the ticket is still at the remembered version. These tests change tickets behind the
process's back, as another process or an operator would, and check that a stale memory costs a read and never
a wrong change or a wrong refusal."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx

from tests.helpers import Api, assert_error
from tests.test_ticket_flows import coffee, ok
from virtualq.tickets import line, service
from virtualq.type_definitions import compiled as compiled_types


async def _behind_the_back(db: asyncpg.Connection, ticket_id: str, state: str, category: str) -> None:
    """Another writer's change: a new state at the next version (no history row, which the tests count)."""
    await db.execute(
        "UPDATE tickets SET current_state = $2, state_category = $3, version = version + 1 WHERE id = $1",
        uuid.UUID(ticket_id),
        state,
        category,
    )


async def _history(db: asyncpg.Connection, ticket_id: str) -> list[str | None]:
    rows = await db.fetch(
        "SELECT transition FROM ticket_history WHERE ticket_id = $1 ORDER BY id", uuid.UUID(ticket_id)
    )
    return [row["transition"] for row in rows]


def _remembered(tenant_id: str, ticket_id: str) -> Any:
    return service._last_written.get((uuid.UUID(tenant_id), uuid.UUID(ticket_id)))


async def test_a_change_made_elsewhere_is_read_before_the_transition_is_judged(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Both tickets are remembered as in_progress and were moved to ready elsewhere. From the memory
    mark_ready would be allowed and pickup refused; from what is stored, the opposite, and that decides."""
    t, queue, order = await coffee(client, api)
    tickets = [await t.ticket(queue, order) for _ in range(2)]
    for ticket in tickets:
        moved = await t.move(ticket["id"], "start_preparation")
        assert _remembered(t.id, ticket["id"])[:2] == (moved["version"], "in_progress")
        await _behind_the_back(db, ticket["id"], "ready", "ready")
    first, second = (f"/v1/tickets/{ticket['id']}/transition" for ticket in tickets)

    refused = await client.post(first, json={"transition": "mark_ready"}, headers=t.h)
    body = assert_error(refused, 400, "invalid_transition")
    assert body["details"]["current_state"] == "ready"
    assert await _history(db, tickets[0]["id"]) == [None, "start_preparation"]  # nothing written

    picked = ok(await client.post(second, json={"transition": "pickup"}, headers=t.h))
    assert (picked["current_state"], picked["version"]) == ("picked_up", moved["version"] + 2)
    assert await _history(db, tickets[1]["id"]) == [None, "start_preparation", "pickup"]
    history = ok(await client.get(f"/v1/tickets/{tickets[1]['id']}/history", headers=t.h))
    assert history[-1]["previous_state"] == "ready"  # what was stored, not what was remembered


async def test_a_stale_memory_does_not_make_a_cancel_fail(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Remembered: picked_up, from which the food order cannot be cancelled. Stored: received, from which it
    can. The cancel reads and succeeds."""
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    for transition in ("start_preparation", "mark_ready", "pickup"):
        await t.move(ticket["id"], transition)
    await _behind_the_back(db, ticket["id"], "received", "waiting")
    cancelled = ok(await client.delete(f"/v1/tickets/{ticket['id']}", headers=t.h))
    assert (cancelled["current_state"], cancelled["state_category"]) == ("cancelled", "cancelled")


async def test_if_match_is_checked_against_the_stored_version(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    moved = await t.move(ticket["id"], "start_preparation")
    await db.execute("UPDATE tickets SET version = version + 1 WHERE id = $1", uuid.UUID(ticket["id"]))
    path = f"/v1/tickets/{ticket['id']}/transition"
    remembered_tag = f'"{moved["version"]}"'
    stale = await client.post(
        path, json={"transition": "mark_ready"}, headers={**t.h, "If-Match": remembered_tag}
    )
    assert_error(stale, 412, "precondition_failed")
    stored_tag = f'"{moved["version"] + 1}"'
    done = await client.post(path, json={"transition": "mark_ready"}, headers={**t.h, "If-Match": stored_tag})
    assert ok(done)["current_state"] == "ready"


async def test_nothing_is_remembered_from_inside_a_transaction(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A transaction could still roll back, and a version remembered from it could later name another
    state."""
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    row = {
        "id": uuid.UUID(ticket["id"]),
        "version": 99,
        "current_state": "ready",
        "state_category": "ready",
        "type_definition_id": uuid.UUID(order),
    }
    created = _remembered(t.id, ticket["id"])
    assert created == (1, "received", "waiting", uuid.UUID(order), 1)  # the create's own write
    async with db.transaction():
        service.remember_written(db, uuid.UUID(t.id), row, 1)
    assert _remembered(t.id, ticket["id"]) == created
    service.remember_written(db, uuid.UUID(t.id), row, 1)
    assert _remembered(t.id, ticket["id"]) == (99, "ready", "ready", uuid.UUID(order), 1)
    # Such a memory matches no stored version: the transition reads and is judged on what is stored.
    moved = ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/transition", json={"transition": "start_preparation"}, headers=t.h
        )
    )
    assert (moved["current_state"], moved["version"]) == ("in_progress", 2)


async def test_concurrent_transitions_from_a_remembered_ticket_apply_once(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Ten requests for the same transition at once, the ticket remembered by this process: one applies it,
    the others are refused from the stored state, and the version moves by one."""
    t, queue, order = await coffee(client, api)
    for _ in range(5):
        ticket = await t.ticket(queue, order)
        moved = await t.move(ticket["id"], "start_preparation")
        path = f"/v1/tickets/{ticket['id']}/transition"
        answers = await asyncio.gather(
            *(client.post(path, json={"transition": "mark_ready"}, headers=t.h) for _ in range(10))
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200] + [400] * 9, [answer.text for answer in answers]
        stored = ok(await client.get(f"/v1/tickets/{ticket['id']}", headers=t.h))
        assert (stored["current_state"], stored["version"]) == ("ready", moved["version"] + 1)
        assert (await _history(db, ticket["id"])).count("mark_ready") == 1


async def test_call_next_remembers_the_ticket_it_called(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h))
    assert called["id"] == ticket["id"]
    assert _remembered(t.id, ticket["id"])[:3] == (called["version"], called["current_state"], "in_service")


async def test_a_new_database_connection_forgets_what_versions_named(
    client: httpx.AsyncClient, api: Api, app: Any
) -> None:
    """After a failover to a replica that lost the last commits, or a restore, a version can be written again
    with other content; every connection is new then. Opening one forgets the remembered tickets, the
    call-next plans and the compiled types (app.forget_versions)."""
    t, queue, order = await coffee(client, api)
    tickets = [await t.ticket(queue, order) for _ in range(2)]
    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h))
    assert _remembered(t.id, called["id"]) is not None
    assert line._plans
    assert compiled_types._cache
    await app.state.pool.expire_connections()  # as a failover would: every connection replaced
    ok(await client.get(f"/v1/tickets/{tickets[1]['id']}", headers=t.h))
    assert _remembered(t.id, called["id"]) is None
    assert not line._plans
    assert not compiled_types._cache
