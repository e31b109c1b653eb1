"""The time-limit sweeper (PRODUCT §4, src/virtualq/sweeper.py), driven by `sweep_once(pool, now)`.

The sweeper is global: one pass looks at every tenant's tickets. So that each pass here sees only this file's
tickets, they are placed in 1999 (`created_at` / `expires_at` set directly) and swept with a `now` in 1999:
nothing else in the test database is due then, which lets the tests assert exact pass results. Whatever a
test leaves unhandled is disarmed when it ends (no expiry, no max wait), so it never reaches other sweeps.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import Api
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, assert_chain, ok, ts
from virtualq import sweeper
from virtualq.app import create_app
from virtualq.sweeper import SweepResult

# `expire` leaves waiting and serving, not on_hold: a ticket on hold is escalated instead.
EXPIRING_FSM: dict[str, Any] = {
    "init": "waiting",
    "states": ["waiting", "serving", "on_hold", "done", "expired", "cancelled_by_guest"],
    "transitions": [
        {"name": "serve", "from": "waiting", "to": "serving"},
        {"name": "hold", "from": "serving", "to": "on_hold"},
        {"name": "finish", "from": ["serving", "on_hold"], "to": "done"},
        {"name": "expire", "from": ["waiting", "serving"], "to": "expired"},
        {"name": "cancel", "from": "waiting", "to": "cancelled_by_guest"},
    ],
    "categories": {"expired": "cancelled", "cancelled_by_guest": "cancelled"},
}

EPOCH = datetime(1999, 3, 1, 12, 0, tzinfo=UTC)


def epoch(day: int, minutes: float = 0) -> datetime:
    """A distinct day of 1999 per test, and minutes from its noon."""
    return EPOCH + timedelta(days=day, minutes=minutes)


@pytest.fixture
async def mine(db: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """The test's tenant ids; afterwards their leftover tickets can no longer become due for anyone."""
    tenant_ids: list[str] = []
    yield tenant_ids
    ids = [uuid.UUID(x) for x in tenant_ids]
    await db.execute("UPDATE tickets SET expires_at = NULL WHERE tenant_id = ANY($1::uuid[])", ids)
    await db.execute("UPDATE queues SET max_wait_minutes = NULL WHERE tenant_id = ANY($1::uuid[])", ids)


@dataclass
class Setup:
    t: Tenant
    queue: str
    expiring: str  # EXPIRING_FSM: has `expire`
    plain: str  # FOOD_ORDER_FSM: no `expire`


async def setup(client: httpx.AsyncClient, api: Api, mine: list[str], **queue_fields: Any) -> Setup:
    t = await Tenant.create(client, api)
    mine.append(t.id)
    expiring = await t.type("expiring", EXPIRING_FSM)
    plain = await t.type("plain", FOOD_ORDER_FSM)
    queue = await t.queue("Line", **queue_fields)
    return Setup(t, queue["id"], expiring["id"], plain["id"])


async def place(db: asyncpg.Connection, ticket_ids: list[str], created_at: datetime) -> None:
    """Move tickets' creation to `created_at`; their expiry (if they have a ttl) moves with it."""
    await db.execute(
        """UPDATE tickets SET created_at = $2::timestamptz,
                  expires_at = CASE WHEN ttl_minutes IS NULL THEN NULL
                                    ELSE $2::timestamptz + make_interval(mins => ttl_minutes) END
            WHERE id = ANY($1::uuid[])""",
        [uuid.UUID(i) for i in ticket_ids],
        created_at,
    )


async def events_of(db: asyncpg.Connection, ticket_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch("SELECT * FROM events WHERE ticket_id = $1 ORDER BY id", uuid.UUID(ticket_id))
    return [(row["type"], json.loads(row["data"])) for row in rows]


def of_type(events: list[tuple[str, dict[str, Any]]], event_type: str) -> list[dict[str, Any]]:
    return [data for kind, data in events if kind == event_type]


async def sweep(app: Any, now: datetime, batch: int = sweeper.BATCH) -> SweepResult:
    return await sweeper.sweep_once(app.state.pool, now=now, batch=batch)


# --- expiry -------------------------------------------------------------------------------------------------


async def test_expire_transition_is_applied_once(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, mine: list[str]
) -> None:
    s = await setup(client, api, mine)
    t = s.t
    waiting = await t.ticket(s.queue, s.expiring, ttl_minutes=10)
    serving = await t.ticket(s.queue, s.expiring, ttl_minutes=10)
    await t.move(serving["id"], "serve")
    on_the_dot = await t.ticket(s.queue, s.expiring, ttl_minutes=30)
    now = epoch(0)
    await place(db, [waiting["id"], serving["id"]], now - timedelta(minutes=30))  # expired at -20
    await place(db, [on_the_dot["id"]], now - timedelta(minutes=30))  # expires exactly now
    before = {x["id"]: await t.get(f"/v1/tickets/{x['id']}") for x in (waiting, serving, on_the_dot)}

    assert await sweep(app, now) == SweepResult(expired=3, escalated=0, wait_exceeded=0)

    for ticket, previous in ((waiting, "waiting"), (serving, "serving"), (on_the_dot, "waiting")):
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert (got["current_state"], got["state_category"]) == ("expired", "cancelled")
        assert got["cancelled_at"] is not None
        assert got["escalated_at"] is None
        assert got["position"] is None
        assert got["estimated_wait_minutes"] is None
        assert got["version"] == before[ticket["id"]]["version"] + 1
        history = await t.get(f"/v1/tickets/{ticket['id']}/history")
        last = history[-1]
        assert (last["previous_state"], last["new_state"], last["transition"]) == (
            previous,
            "expired",
            "expire",
        )
        assert last["employee_id"] is None
        assert last["notes"]
        assert [h["transition"] for h in history].count("expire") == 1

        events = await events_of(db, ticket["id"])
        expired = of_type(events, "ticket.expired")
        assert len(expired) == 1
        assert expired[0]["outcome"] == "transitioned"
        assert expired[0]["current_state"] == "expired"
        assert expired[0]["state_category"] == "cancelled"
        assert expired[0]["display_code"] == ticket["display_code"]
        assert expired[0]["version"] == got["version"]
        changed = [e for e in of_type(events, "ticket.state_changed") if e["transition"] == "expire"]
        assert len(changed) == 1
        assert (changed[0]["previous_state"], changed[0]["current_state"]) == (previous, "expired")
        assert len(of_type(events, "ticket.cancelled")) == 1  # it entered a cancelled-category state
        # The expiry is the ticket's last word: the state change and the expiry signal, in that order.
        assert [kind for kind, _ in events][-1] == "ticket.expired"
    # The waiting one left the line by expiring: it got started_at/actual_wait like any departure.
    got = await t.get(f"/v1/tickets/{waiting['id']}")
    assert got["started_at"] is not None
    assert got["actual_wait_minutes"] is not None

    # Sweeping again, now or later, does nothing more.
    snapshot = {x["id"]: await events_of(db, x["id"]) for x in (waiting, serving, on_the_dot)}
    assert await sweep(app, now) == SweepResult()
    assert await sweep(app, now + timedelta(days=1)) == SweepResult()
    for ticket_id, events in snapshot.items():
        assert await events_of(db, ticket_id) == events
        assert [h["transition"] for h in await t.get(f"/v1/tickets/{ticket_id}/history")].count("expire") == 1


async def test_no_expire_transition_escalates_once(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, mine: list[str]
) -> None:
    s = await setup(client, api, mine)
    t = s.t
    plain = await t.ticket(s.queue, s.plain, ttl_minutes=5)  # FOOD_ORDER_FSM has no expire at all
    on_hold = await t.ticket(s.queue, s.expiring, ttl_minutes=5)  # expire exists, but not from on_hold
    await t.move(on_hold["id"], "serve")
    await t.move(on_hold["id"], "hold")
    in_progress = await t.ticket(s.queue, s.plain, ttl_minutes=5)
    await t.move(in_progress["id"], "start_preparation")
    tickets = [plain, on_hold, in_progress]
    now = epoch(1)
    await place(db, [x["id"] for x in tickets], now - timedelta(minutes=60))
    before = {x["id"]: await t.get(f"/v1/tickets/{x['id']}") for x in tickets}
    history_before = {x["id"]: await t.get(f"/v1/tickets/{x['id']}/history") for x in tickets}
    events_before = {x["id"]: await events_of(db, x["id"]) for x in tickets}

    assert await sweep(app, now) == SweepResult(expired=0, escalated=3, wait_exceeded=0)

    for ticket in tickets:
        old = before[ticket["id"]]
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert ts(got["escalated_at"]) == now
        assert (got["current_state"], got["state_category"]) == (old["current_state"], old["state_category"])
        assert got["cancelled_at"] is None
        assert got["version"] == old["version"] + 1
        assert got["position"] == old["position"]
        assert await t.get(f"/v1/tickets/{ticket['id']}/history") == history_before[ticket["id"]]
        events = await events_of(db, ticket["id"])
        new = events[len(events_before[ticket["id"]]) :]
        assert [kind for kind, _ in new] == ["ticket.expired"]
        assert new[0][1]["outcome"] == "escalated"
        assert new[0][1]["current_state"] == old["current_state"]
        assert new[0][1]["version"] == got["version"]
    # The escalated ticket still waits in line.
    assert (await t.get(f"/v1/tickets/{plain['id']}"))["position"] == 1

    assert await sweep(app, now) == SweepResult()
    assert await sweep(app, now + timedelta(hours=5)) == SweepResult()
    for ticket in tickets:
        assert ts((await t.get(f"/v1/tickets/{ticket['id']}"))["escalated_at"]) == now
        assert len(of_type(await events_of(db, ticket["id"]), "ticket.expired")) == 1
    # An escalated ticket can still be served normally.
    served = await t.move(plain["id"], "start_preparation")
    assert served["current_state"] == "in_progress"


async def test_tickets_not_due_are_untouched(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, mine: list[str]
) -> None:
    s = await setup(client, api, mine)
    t = s.t
    fresh = await t.ticket(s.queue, s.expiring, ttl_minutes=60)  # expires 30 minutes after now
    no_ttl = await t.ticket(s.queue, s.expiring)
    done = await t.ticket(s.queue, s.expiring, ttl_minutes=5)
    await t.move(done["id"], "serve")
    await t.move(done["id"], "finish")
    cancelled = await t.ticket(s.queue, s.expiring, ttl_minutes=5)
    ok(await client.delete(f"/v1/tickets/{cancelled['id']}", headers=t.h))
    plain_done = await t.ticket(s.queue, s.plain, ttl_minutes=5)
    for transition in ("start_preparation", "mark_ready", "pickup"):
        await t.move(plain_done["id"], transition)
    tickets = [fresh, no_ttl, done, cancelled, plain_done]
    now = epoch(2)
    await place(db, [x["id"] for x in tickets], now - timedelta(minutes=30))
    assert await db.fetchval("SELECT expires_at FROM tickets WHERE id = $1", uuid.UUID(no_ttl["id"])) is None
    before = {x["id"]: await t.get(f"/v1/tickets/{x['id']}") for x in tickets}
    events_before = {x["id"]: await events_of(db, x["id"]) for x in tickets}

    assert await sweep(app, now) == SweepResult()
    assert await sweep(app, now + timedelta(minutes=29, seconds=59)) == SweepResult()

    for ticket in tickets:
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert got == before[ticket["id"]]
        assert await events_of(db, ticket["id"]) == events_before[ticket["id"]]

    # Its time comes: only the fresh one expires; terminal and ttl-less tickets never do.
    assert await sweep(app, now + timedelta(minutes=30)) == SweepResult(expired=1)
    assert (await t.get(f"/v1/tickets/{fresh['id']}"))["current_state"] == "expired"
    assert await sweep(app, now + timedelta(days=300)) == SweepResult()
    for ticket in tickets[1:]:
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        for field in ("current_state", "version", "escalated_at", "updated_at"):
            assert got[field] == before[ticket["id"]][field], field
        assert of_type(await events_of(db, ticket["id"]), "ticket.expired") == []


# --- max wait -----------------------------------------------------------------------------------------------


async def test_wait_exceeded_is_signalled_once_per_waiting_ticket(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, mine: list[str]
) -> None:
    s = await setup(client, api, mine, max_wait_minutes=15)
    t = s.t
    late = await t.ticket(s.queue, s.plain)
    boundary = await t.ticket(s.queue, s.plain)
    young = await t.ticket(s.queue, s.plain)
    served = await t.ticket(s.queue, s.plain)
    await t.move(served["id"], "start_preparation")
    # Past both its ttl and the max wait: escalated (still waiting), and signalled.
    escalated = await t.ticket(s.queue, s.plain, ttl_minutes=5)
    # Past both too, but its expire transition takes it out of the line first: no wait signal.
    expired = await t.ticket(s.queue, s.expiring, ttl_minutes=5)
    # Another queue without a max wait never signals.
    patient_queue = ok(await client.post("/v1/queues", json={"name": "Patient"}, headers=t.h), 201)
    patient = await t.ticket(patient_queue["id"], s.plain)

    now = epoch(3)
    await place(db, [late["id"], escalated["id"], expired["id"]], now - timedelta(minutes=20))
    await place(db, [boundary["id"]], now - timedelta(minutes=15))
    await place(db, [young["id"]], now - timedelta(minutes=14, seconds=59))
    await place(db, [served["id"]], now - timedelta(minutes=600))
    await place(db, [patient["id"]], now - timedelta(minutes=600))

    assert await sweep(app, now) == SweepResult(expired=1, escalated=1, wait_exceeded=3)

    for ticket, waited in ((late, 20), (boundary, 15), (escalated, 20)):
        signals = of_type(await events_of(db, ticket["id"]), "ticket.wait_exceeded")
        assert len(signals) == 1, ticket
        data = signals[0]
        assert data["max_wait_minutes"] == 15
        assert data["waiting_minutes"] == waited
        assert data["display_code"] == ticket["display_code"]
        assert data["number"] == ticket["number"]
        assert (data["current_state"], data["state_category"]) == ("received", "waiting")
        assert data["type_definition_id"] == s.plain
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert got["current_state"] == "received"  # a signal, not a change
        # The signal changes nothing on the ticket (the escalation, for one of them, did).
        assert got["version"] == ticket["version"] + (ticket is escalated)
        assert data["version"] == got["version"]
    for ticket in (young, served, expired, patient):
        assert of_type(await events_of(db, ticket["id"]), "ticket.wait_exceeded") == [], ticket
    assert (await t.get(f"/v1/tickets/{expired['id']}"))["current_state"] == "expired"

    # Repeated sweeps do not signal again; the young ticket is signalled once its time comes.
    assert await sweep(app, now) == SweepResult()
    assert await sweep(app, now + timedelta(seconds=1)) == SweepResult(wait_exceeded=1)
    assert await sweep(app, now + timedelta(hours=3)) == SweepResult()
    for ticket in (late, boundary, escalated, young):
        assert len(of_type(await events_of(db, ticket["id"]), "ticket.wait_exceeded")) == 1
    for ticket in (served, expired, patient):
        assert of_type(await events_of(db, ticket["id"]), "ticket.wait_exceeded") == []
    young_signal = of_type(await events_of(db, young["id"]), "ticket.wait_exceeded")[0]
    assert young_signal["waiting_minutes"] == 15


# --- several sweepers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sweepers", "batch"), [(2, sweeper.BATCH), (2, 7), (4, 7)])
async def test_concurrent_sweepers_handle_each_ticket_exactly_once(
    client: httpx.AsyncClient,
    api: Api,
    app: Any,
    db: asyncpg.Connection,
    mine: list[str],
    sweepers: int,
    batch: int,
) -> None:
    s = await setup(client, api, mine)  # no max wait: these only expire
    t = s.t
    slow = ok(await client.post("/v1/queues", json={"name": "Slow", "max_wait_minutes": 5}, headers=t.h), 201)
    expiring = await asyncio.gather(*(t.ticket(s.queue, s.expiring, ttl_minutes=10) for _ in range(30)))
    escalating = await asyncio.gather(*(t.ticket(s.queue, s.plain, ttl_minutes=10) for _ in range(30)))
    waiting = await asyncio.gather(*(t.ticket(slow["id"], s.plain) for _ in range(60)))
    now = epoch(10 + batch + sweepers)
    await place(db, [x["id"] for x in [*expiring, *escalating, *waiting]], now - timedelta(minutes=30))

    results = await asyncio.gather(*(sweep(app, now, batch) for _ in range(sweepers)))

    assert sum(r.expired for r in results) == 30
    assert sum(r.escalated for r in results) == 30
    assert sum(r.wait_exceeded for r in results) == 60
    assert sum(r.total for r in results) == 120
    ids = [uuid.UUID(x["id"]) for x in [*expiring, *escalating, *waiting]]
    counts = await db.fetch(
        """SELECT ticket_id, type, count(*) AS n FROM events
            WHERE ticket_id = ANY($1::uuid[]) AND type IN ('ticket.expired', 'ticket.wait_exceeded')
            GROUP BY 1, 2""",
        ids,
    )
    per_ticket = {(row["ticket_id"], row["type"]): row["n"] for row in counts}
    assert set(per_ticket.values()) == {1}
    expected = {(uuid.UUID(x["id"]), "ticket.expired") for x in [*expiring, *escalating]} | {
        (uuid.UUID(x["id"]), "ticket.wait_exceeded") for x in waiting
    }
    assert set(per_ticket) == expected
    outcomes = await db.fetch(
        "SELECT ticket_id, data->>'outcome' AS outcome FROM events "
        "WHERE ticket_id = ANY($1::uuid[]) AND type = 'ticket.expired'",
        ids,
    )
    by_outcome = collections.Counter(row["outcome"] for row in outcomes)
    assert by_outcome == {"transitioned": 30, "escalated": 30}
    assert {row["ticket_id"] for row in outcomes if row["outcome"] == "transitioned"} == {
        uuid.UUID(x["id"]) for x in expiring
    }
    history = await db.fetch(
        """SELECT ticket_id, count(*) AS n FROM ticket_history
            WHERE ticket_id = ANY($1::uuid[]) AND transition = 'expire' GROUP BY 1""",
        ids,
    )
    assert {row["ticket_id"]: row["n"] for row in history} == {uuid.UUID(x["id"]): 1 for x in expiring}
    changed = await db.fetchval(
        """SELECT count(*) FROM events WHERE ticket_id = ANY($1::uuid[]) AND type = 'ticket.state_changed'
              AND data->>'transition' = 'expire'""",
        ids,
    )
    assert changed == 30
    states = await db.fetch(
        "SELECT current_state, escalated_at IS NOT NULL AS escalated, count(*) AS n FROM tickets "
        "WHERE id = ANY($1::uuid[]) GROUP BY 1, 2",
        ids,
    )
    assert {(row["current_state"], row["escalated"]): row["n"] for row in states} == {
        ("expired", False): 30,
        ("received", True): 30,
        ("received", False): 60,
    }
    # Nothing is left for anyone.
    assert (
        await asyncio.gather(*(sweep(app, now, batch) for _ in range(sweepers))) == [SweepResult()] * sweepers
    )


async def test_sweeper_racing_staff_on_the_same_tickets_keeps_every_history_consistent(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, mine: list[str]
) -> None:
    s = await setup(client, api, mine)
    t = s.t
    tickets = await asyncio.gather(*(t.ticket(s.queue, s.expiring, ttl_minutes=10) for _ in range(40)))
    now = epoch(30)
    await place(db, [x["id"] for x in tickets], now - timedelta(minutes=30))

    async def serve(ticket: dict[str, Any]) -> int:
        response = await client.post(
            f"/v1/tickets/{ticket['id']}/transition", json={"transition": "serve"}, headers=t.h
        )
        if response.status_code == 400:
            body = response.json()
            assert body["error"] == "invalid_transition"
            assert body["details"]["current_state"] == "expired"
        return response.status_code

    outcome = await asyncio.gather(
        sweep(app, now, 5),
        *(serve(x) for x in tickets[::2]),
        sweep(app, now, 5),
        *(serve(x) for x in tickets[1::2]),
    )
    sweeps = [r for r in outcome if isinstance(r, SweepResult)]
    statuses = [r for r in outcome if not isinstance(r, SweepResult)]
    assert set(statuses) <= {200, 400}
    # Tickets served first were locked or not yet due for the sweeper: the next pass finishes them.
    sweeps.append(await sweep(app, now))
    assert sum(r.expired for r in sweeps) == 40
    assert sum(r.escalated + r.wait_exceeded for r in sweeps) == 0

    served_first = 0
    for ticket in tickets:
        history = await t.get(f"/v1/tickets/{ticket['id']}/history")
        assert_chain(history)
        assert [h["transition"] for h in history][1:] in (["expire"], ["serve", "expire"])
        served_first += history[1]["transition"] == "serve"
        events = await events_of(db, ticket["id"])
        assert [d["outcome"] for d in of_type(events, "ticket.expired")] == ["transitioned"]
        assert (await t.get(f"/v1/tickets/{ticket['id']}"))["current_state"] == "expired"
    assert served_first == statuses.count(200)


# --- the background task ----------------------------------------------------------------------------------


async def test_the_server_sweeps_in_the_background_and_stops_with_it(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, database_dsn: str, mine: list[str]
) -> None:
    s = await setup(client, api, mine)
    t = s.t
    due = await t.ticket(s.queue, s.expiring, ttl_minutes=5)
    await db.execute(
        "UPDATE tickets SET expires_at = now() - interval '1 minute' WHERE id = $1", uuid.UUID(due["id"])
    )
    application = create_app(make_settings(sweeper_interval_seconds=0.2), dsn=database_dsn)
    state = None
    heard: list[str] = []
    await db.add_listener("virtualq_events", lambda _c, _p, _ch, payload: heard.append(payload))
    async with application.router.lifespan_context(application):
        tasks = [task for task in asyncio.all_tasks() if task.get_name() == "virtualq-sweeper"]
        assert len(tasks) == 1
        task = tasks[0]
        assert not task.done()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            state = await db.fetchval("SELECT current_state FROM tickets WHERE id = $1", uuid.UUID(due["id"]))
            if state == "expired":
                break
            await asyncio.sleep(0.05)
        assert state == "expired"
        await asyncio.sleep(0.5)  # a few more passes: still handled only once
        assert not task.done()
        # The pass that wrote the expiry's events told the other processes (no trigger does: 0011).
        assert application.state.event_hub.token.decode() in heard
    assert task.done()
    assert not [x for x in asyncio.all_tasks() if x.get_name() == "virtualq-sweeper"]
    events = await events_of(db, due["id"])
    assert [data["outcome"] for data in of_type(events, "ticket.expired")] == ["transitioned"]
    assert [h["transition"] for h in await t.get(f"/v1/tickets/{due['id']}/history")] == [None, "expire"]

    # Stopped: a ticket that becomes due now stays as it is.
    later = await t.ticket(s.queue, s.expiring, ttl_minutes=5)
    await db.execute(
        "UPDATE tickets SET expires_at = now() - interval '1 minute' WHERE id = $1", uuid.UUID(later["id"])
    )
    await asyncio.sleep(0.5)
    assert (await t.get(f"/v1/tickets/{later['id']}"))["current_state"] == "waiting"
    assert of_type(await events_of(db, later["id"]), "ticket.expired") == []
