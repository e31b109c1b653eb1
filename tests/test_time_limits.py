"""The time-limit sweeper (PRODUCT §4): expiry by an `expire` transition or escalation, one wait_exceeded
signal per ticket, each handled exactly once even with two sweepers at once; and the in-process task."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import make_settings
from tests.helpers import Api
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant
from virtualq import sweeper
from virtualq.app import create_app

EXPIRING_FSM: dict[str, Any] = {
    "init": "waiting",
    "states": ["waiting", "serving", "done", "expired"],
    "transitions": [
        {"name": "serve", "from": "waiting", "to": "serving"},
        {"name": "finish", "from": "serving", "to": "done"},
        {"name": "expire", "from": ["waiting", "serving"], "to": "expired"},
    ],
    "categories": {"expired": "cancelled"},
}


async def events_of(db: asyncpg.Connection, ticket_id: str, event_type: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT data FROM events WHERE ticket_id = $1 AND type = $2 ORDER BY id",
        uuid.UUID(ticket_id),
        event_type,
    )
    return [json.loads(row["data"]) for row in rows]


async def age(db: asyncpg.Connection, ticket_id: str, minutes: int) -> None:
    """Pretend the ticket was created `minutes` ago (its expiry moves with it)."""
    await db.execute(
        """UPDATE tickets SET created_at = now() - make_interval(mins => $2),
                  expires_at = CASE WHEN ttl_minutes IS NULL THEN NULL
                                    ELSE now() - make_interval(mins => $2 - ttl_minutes) END
            WHERE id = $1""",
        uuid.UUID(ticket_id),
        minutes,
    )


async def setup(client: httpx.AsyncClient, api: Api, **queue_fields: Any) -> tuple[Tenant, str, str, str]:
    t = await Tenant.create(client, api)
    expiring = await t.type("expiring", EXPIRING_FSM)
    plain = await t.type("plain", FOOD_ORDER_FSM)
    queue = await t.queue("Line", **queue_fields)
    return t, queue["id"], expiring["id"], plain["id"]


async def test_expiry_transitions_or_escalates_once(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    t, queue, expiring, plain = await setup(client, api)
    with_expire = await t.ticket(queue, expiring, ttl_minutes=10)
    without = await t.ticket(queue, plain, ttl_minutes=10)
    fresh = await t.ticket(queue, expiring, ttl_minutes=60)
    no_ttl = await t.ticket(queue, expiring)
    finished = await t.ticket(queue, expiring, ttl_minutes=10)
    await t.move(finished["id"], "serve")
    await t.move(finished["id"], "finish")
    for ticket in (with_expire, without, fresh, no_ttl, finished):
        await age(db, ticket["id"], 30)

    await sweeper.sweep_once(app.state.pool)

    expired = await t.get(f"/v1/tickets/{with_expire['id']}")
    assert (expired["current_state"], expired["state_category"]) == ("expired", "cancelled")
    assert expired["cancelled_at"] is not None
    history = await t.get(f"/v1/tickets/{with_expire['id']}/history")
    assert [h["transition"] for h in history] == [None, "expire"]
    assert [e["outcome"] for e in await events_of(db, with_expire["id"], "ticket.expired")] == [
        "transitioned"
    ]
    assert len(await events_of(db, with_expire["id"], "ticket.state_changed")) == 1

    escalated = await t.get(f"/v1/tickets/{without['id']}")
    assert escalated["current_state"] == "received"
    assert escalated["escalated_at"] is not None
    assert [e["outcome"] for e in await events_of(db, without["id"], "ticket.expired")] == ["escalated"]

    for untouched in (fresh, no_ttl, finished):
        assert await events_of(db, untouched["id"], "ticket.expired") == []
        assert (await t.get(f"/v1/tickets/{untouched['id']}"))["escalated_at"] is None
    assert (await t.get(f"/v1/tickets/{fresh['id']}"))["current_state"] == "waiting"

    # Sweeping again changes nothing more.
    await sweeper.sweep_once(app.state.pool)
    assert len(await events_of(db, with_expire["id"], "ticket.expired")) == 1
    assert len(await events_of(db, without["id"], "ticket.expired")) == 1
    assert len(await t.get(f"/v1/tickets/{with_expire['id']}/history")) == 2

    # Time passes for the fresh ticket too: its turn comes later, once.
    await age(db, fresh["id"], 61)
    await sweeper.sweep_once(app.state.pool)
    assert (await t.get(f"/v1/tickets/{fresh['id']}"))["current_state"] == "expired"


async def test_a_limit_extended_after_it_passed_is_handled_again_when_the_new_one_passes(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    """An escalated ticket given more time (PATCH ttl_minutes) kept `escalated_at` though it was within its
    limit again, and the sweeper never looked at it again: the limit in force passed in silence. Now a
    limit moved into the future (or removed) ends the escalation, and the new one is handled when it
    passes. A limit changed to one that has also passed is not handled twice."""
    t, queue, _, plain = await setup(client, api)
    extended, removed, shortened = [await t.ticket(queue, plain, ttl_minutes=10) for _ in range(3)]
    for ticket in (extended, removed, shortened):
        await age(db, ticket["id"], 30)
    await sweeper.sweep_once(app.state.pool)
    for ticket in (extended, removed, shortened):
        assert (await t.get(f"/v1/tickets/{ticket['id']}"))["escalated_at"] is not None

    patch = "/v1/tickets/{}"
    given = await t.client.patch(patch.format(extended["id"]), json={"ttl_minutes": 60}, headers=t.h)
    assert given.status_code == 200, given.text
    assert given.json()["escalated_at"] is None
    assert datetime.fromisoformat(given.json()["expires_at"]) > datetime.now(UTC)
    none = await t.client.patch(patch.format(removed["id"]), json={"ttl_minutes": None}, headers=t.h)
    assert (none.json()["expires_at"], none.json()["escalated_at"]) == (None, None)
    still = await t.client.patch(patch.format(shortened["id"]), json={"ttl_minutes": 20}, headers=t.h)
    assert still.json()["escalated_at"] is not None  # 30 minutes old: past 20 too, already handled

    await sweeper.sweep_once(app.state.pool)  # nothing is due yet
    for ticket in (extended, removed, shortened):
        assert len(await events_of(db, ticket["id"], "ticket.expired")) == 1
    await age(db, extended["id"], 90)  # the new limit, 60 minutes, has passed
    await age(db, removed["id"], 90)
    await sweeper.sweep_once(app.state.pool)
    assert [e["outcome"] for e in await events_of(db, extended["id"], "ticket.expired")] == ["escalated"] * 2
    assert (await t.get(f"/v1/tickets/{extended['id']}"))["escalated_at"] is not None
    assert len(await events_of(db, removed["id"], "ticket.expired")) == 1
    assert len(await events_of(db, shortened["id"], "ticket.expired")) == 1


async def test_wait_exceeded_is_signalled_once_per_ticket(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    t, queue, expiring, _ = await setup(client, api, max_wait_minutes=15)
    late = await t.ticket(queue, expiring)
    young = await t.ticket(queue, expiring)
    served = await t.ticket(queue, expiring)
    await t.move(served["id"], "serve")
    await age(db, late["id"], 20)
    await age(db, served["id"], 20)
    await age(db, young["id"], 5)
    # A queue without max_wait_minutes never signals.
    t2, q2, ty2, _ = await setup(client, api)
    patient = await t2.ticket(q2, ty2)
    await age(db, patient["id"], 600)

    for _ in range(3):
        await sweeper.sweep_once(app.state.pool)
    signals = await events_of(db, late["id"], "ticket.wait_exceeded")
    assert len(signals) == 1
    assert signals[0]["max_wait_minutes"] == 15
    assert signals[0]["waiting_minutes"] >= 20
    assert signals[0]["display_code"] == late["display_code"]
    for quiet in (young, served):
        assert await events_of(db, quiet["id"], "ticket.wait_exceeded") == []
    assert await events_of(db, patient["id"], "ticket.wait_exceeded") == []
    assert (await t.get(f"/v1/tickets/{late['id']}"))["current_state"] == "waiting"  # a signal, not a change


async def test_two_sweepers_at_once_handle_each_ticket_once(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    t, queue, expiring, plain = await setup(client, api, max_wait_minutes=5)
    created = await asyncio.gather(
        *(t.ticket(queue, expiring if i % 2 else plain, ttl_minutes=10) for i in range(60)),
        *(t.ticket(queue, expiring) for _ in range(40)),
    )
    ids = [uuid.UUID(c["id"]) for c in created]
    await db.execute(
        """UPDATE tickets SET created_at = now() - interval '30 minutes',
                  expires_at = CASE WHEN ttl_minutes IS NULL THEN NULL ELSE now() - interval '20 minutes' END
            WHERE id = ANY($1::uuid[])""",
        ids,
    )
    now = datetime.now(UTC) + timedelta(seconds=1)
    results = await asyncio.gather(
        sweeper.sweep_once(app.state.pool, now=now, batch=7),
        sweeper.sweep_once(app.state.pool, now=now, batch=7),
        sweeper.sweep_once(app.state.pool, now=now),
    )
    counts = await db.fetch(
        "SELECT type, ticket_id, count(*) AS n FROM events WHERE ticket_id = ANY($1::uuid[]) "
        "AND type IN ('ticket.expired', 'ticket.wait_exceeded') GROUP BY 1, 2",
        ids,
    )
    expired = {row["ticket_id"]: row["n"] for row in counts if row["type"] == "ticket.expired"}
    exceeded = {row["ticket_id"]: row["n"] for row in counts if row["type"] == "ticket.wait_exceeded"}
    assert set(expired) == set(ids[:60])
    assert set(expired.values()) == {1}
    # Tickets that expired into a cancelled state are no longer waiting; the rest of the 100 were signalled.
    still_waiting = {
        row["id"]
        for row in await db.fetch(
            "SELECT id FROM tickets WHERE id = ANY($1::uuid[]) AND state_category = 'waiting'", ids
        )
    }
    assert set(exceeded) == still_waiting
    assert set(exceeded.values()) == {1}
    assert len(still_waiting) == 30 + 40  # the escalated half of the expiring ones, and the 40 without ttl
    history = await db.fetch(
        "SELECT ticket_id, count(*) AS n FROM ticket_history WHERE ticket_id = ANY($1::uuid[]) "
        "AND transition = 'expire' GROUP BY 1",
        ids,
    )
    assert len(history) == 30
    assert {row["n"] for row in history} == {1}
    handled = sum(r.expired + r.escalated for r in results)
    assert handled >= 60  # other tests' leftovers may be swept too, ours exactly once (checked above)


async def test_the_server_runs_the_sweeper_in_the_background(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, database_dsn: str
) -> None:
    t, queue, expiring, _ = await setup(client, api)
    ticket = await t.ticket(queue, expiring, ttl_minutes=5)
    await age(db, ticket["id"], 10)
    application = create_app(make_settings(sweeper_interval_seconds=0.2), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        for _ in range(50):
            state = await db.fetchval(
                "SELECT current_state FROM tickets WHERE id = $1", uuid.UUID(ticket["id"])
            )
            if state == "expired":
                break
            await asyncio.sleep(0.1)
        task = next(task for task in asyncio.all_tasks() if task.get_name() == "virtualq-sweeper")
    assert state == "expired"
    assert task.done()  # stopped with the server
