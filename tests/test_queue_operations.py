"""Queue operations through the API (PRODUCT §4): call next, reorder, forward, assignment, employee queues,
the monitor feed — with real concurrent requests where the issue asks for them."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, ORDER_SCHEMA, Tenant, ok
from virtualq.app import create_app
from virtualq.tickets import line_repository


async def line_of(t: Tenant, queue_id: str) -> list[dict[str, Any]]:
    """The queue's waiting tickets, in line order."""
    rows = await t.all_pages(f"/v1/queues/{queue_id}/tickets")
    return [row for row in rows if row["state_category"] == "waiting"]


async def assert_positions(t: Tenant, queue_id: str, expected_ids: list[str]) -> None:
    """The waiting line is exactly `expected_ids`, with positions 1..N, and each ticket agrees on its own."""
    waiting = await line_of(t, queue_id)
    assert [row["id"] for row in waiting] == expected_ids
    assert [row["position"] for row in waiting] == list(range(1, len(expected_ids) + 1))
    for index, ticket_id in enumerate(expected_ids, start=1):
        assert (await t.get(f"/v1/tickets/{ticket_id}"))["position"] == index


async def coffee(client: httpx.AsyncClient, api: Api, tickets: int = 0) -> tuple[Tenant, str, str, list[str]]:
    t = await Tenant.create(client, api)
    order = await t.type("food_order", FOOD_ORDER_FSM)
    queue = await t.queue("Counter", ticket_prefix="C")
    ids = [(await t.ticket(queue["id"], order["id"]))["id"] for _ in range(tickets)]
    return t, queue["id"], order["id"], ids


async def call(client: httpx.AsyncClient, t: Tenant, queue_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/queues/{queue_id}/call-next", json=body, headers=t.h)


# --- call next --------------------------------------------------------------------------------------------


async def test_call_next_takes_the_line_in_order_and_reports_empty(
    client: httpx.AsyncClient, api: Api
) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=3)
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "ana@example.com"}, headers=t.h
        ),
        201,
    )
    first = ok(await call(client, t, queue_id, employee_id=employee["id"]))
    assert first["id"] == ids[0]
    assert first["previous_state"] == "received"
    assert first["current_state"] == "in_progress"  # the default: first transition into service
    assert first["state_category"] == "in_service"
    assert first["position"] is None
    assert first["employee_id"] == employee["id"]
    assert first["started_at"] is not None
    history = await t.get(f"/v1/tickets/{ids[0]}/history")
    assert history[-1]["transition"] == "start_preparation"
    assert history[-1]["employee_id"] == employee["id"]
    await assert_positions(t, queue_id, ids[1:])

    # An explicit transition is applied instead (here: straight to cancelled, which is allowed).
    second = ok(await call(client, t, queue_id, transition="cancel", notes="no show"))
    assert (second["id"], second["current_state"]) == (ids[1], "cancelled")
    # A transition the ticket cannot take changes nothing.
    bad = await call(client, t, queue_id, transition="pickup")
    body = assert_error(bad, 400, "invalid_transition")
    assert body["details"]["valid_transitions"] == ["start_preparation", "cancel"]
    assert body["details"]["ticket_id"] == ids[2]  # which ticket at the head of the line it was
    await assert_positions(t, queue_id, ids[2:])

    ok(await call(client, t, queue_id))
    empty = await call(client, t, queue_id)
    assert_error(empty, 404, "queue_empty")


async def test_call_next_attributes_to_the_key_employee(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=1)
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "Bo", "lname": "Chen", "email": "bo@example.com"}, headers=t.h
        ),
        201,
    )
    staff_key = await api.key(
        "tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=employee["id"]
    )
    called = ok(await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(staff_key)))
    assert called["id"] == ids[0]
    assert called["employee_id"] == employee["id"]
    history = await t.get(f"/v1/tickets/{ids[0]}/history")
    assert history[-1]["employee_id"] == employee["id"]


async def test_call_next_bad_input(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=1)
    assert_error(await call(client, t, str(uuid.uuid4())), 404, "not_found")
    assert_error(await call(client, t, queue_id, employee_id=str(uuid.uuid4())), 400, "validation_error")
    assert_error(await call(client, t, queue_id, transition=7), 400, "validation_error")
    assert_error(await call(client, t, queue_id, surprise=True), 400, "validation_error")
    response = await client.post(
        f"/v1/queues/{queue_id}/call-next",
        content=b"{not json",
        headers={**t.h, "Content-Type": "application/json"},
    )
    assert_error(response, 400, "validation_error")
    await assert_positions(t, queue_id, ids)  # nothing was called by any of these


async def test_display_key_cannot_call_next(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=1)
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    response = await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(display))
    assert_error(response, 403, "forbidden")
    await assert_positions(t, queue_id, ids)


async def test_a_first_call_learns_its_plan_without_locking_a_ticket(
    database_dsn: str, client: httpx.AsyncClient, api: Api
) -> None:
    """A process's first call into a queue does not know yet which transition takes the first ticket out of
    the line. It learns that from a look that locks nothing, then calls once: the call statement (which
    locks the ticket it calls) never runs without a plan for the ticket, where it would hold the ticket for
    the length of a statement, make it nothing, and let a counter calling meanwhile skip it and take the
    one behind it (a test of concurrent counters once saw that in CI: a counter got two tickets swapped)."""
    t, queue_id, _, ids = await coffee(client, api, tickets=3)
    statements: list[str] = []
    app = create_app(
        make_settings(), dsn=database_dsn, query_logger=lambda record: statements.append(record.query)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://first") as fresh,
    ):
        for expected in ids[:2]:
            statements.clear()
            response = await fresh.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=t.h)
            assert ok(response)["id"] == expected
            await asyncio.sleep(0.01)  # asyncpg hands each statement to the logger with call_soon
            calls = [query for query in statements if "FOR UPDATE OF t SKIP LOCKED" in query]
            assert len(calls) == 1, statements  # one call statement, the first time too
            looks = [query for query in statements if query == line_repository.PEEK_FIRST_WAITING]
            assert len(looks) == (1 if expected == ids[0] else 0)  # a look the first time only
        # An empty queue is looked at once, not on every call that finds nobody.
        empty = await t.queue("Empty", ticket_prefix="E")
        for attempt in range(2):
            statements.clear()
            response = await fresh.post(f"/v1/queues/{empty['id']}/call-next", json={}, headers=t.h)
            assert_error(response, 404, "queue_empty")
            await asyncio.sleep(0.01)
            looked = [query for query in statements if query == line_repository.PEEK_FIRST_WAITING]
            assert len(looked) == (1 if attempt == 0 else 0)


@pytest.mark.parametrize("counters", [2, 5, 20])
async def test_concurrent_counters_never_share_a_ticket(
    client: httpx.AsyncClient, api: Api, counters: int
) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=30)
    handed: list[list[str]] = [[] for _ in range(counters)]

    async def counter(index: int) -> None:
        while True:
            response = await call(client, t, queue_id)
            if response.status_code == 404:
                assert response.json()["error"] == "queue_empty"
                return
            assert response.status_code == 200, response.text
            handed[index].append(response.json()["id"])

    await asyncio.gather(*(counter(i) for i in range(counters)))
    everything = [ticket_id for got in handed for ticket_id in got]
    assert sorted(everything) == sorted(ids)  # every ticket handed out exactly once
    for got in handed:  # each counter received tickets in line order
        assert got == sorted(got, key=ids.index)
    for ticket_id in ids:
        history = await t.get(f"/v1/tickets/{ticket_id}/history")
        assert [h["transition"] for h in history] == [None, "start_preparation"]


async def test_concurrent_calls_take_the_front_of_the_line(client: httpx.AsyncClient, api: Api) -> None:
    """Eight simultaneous calls on a line of twenty take exactly the first eight."""
    t, queue_id, _, ids = await coffee(client, api, tickets=20)
    responses = await asyncio.gather(*(call(client, t, queue_id) for _ in range(8)))
    taken = sorted(ok(r)["id"] for r in responses)
    assert taken == sorted(ids[:8])
    await assert_positions(t, queue_id, ids[8:])


# --- reorder ----------------------------------------------------------------------------------------------


async def reorder(client: httpx.AsyncClient, t: Tenant, ticket_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/tickets/{ticket_id}/reorder", json=body, headers=t.h)


async def test_reorder_front_end_clamped_and_not_waiting(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=5)
    a, b, c, d, e = ids

    moved = ok(await reorder(client, t, d, position=1, reason="VIP"))
    assert (moved["previous_position"], moved["position"]) == (4, 1)
    await assert_positions(t, queue_id, [d, a, b, c, e])

    moved = ok(await reorder(client, t, d, position=5))
    assert (moved["previous_position"], moved["position"]) == (1, 5)
    await assert_positions(t, queue_id, [a, b, c, e, d])

    moved = ok(await reorder(client, t, a, position=99))  # beyond the end: clamped to the end
    assert (moved["previous_position"], moved["position"]) == (1, 5)
    await assert_positions(t, queue_id, [b, c, e, d, a])

    moved = ok(await reorder(client, t, a, position=3))  # into the middle
    assert (moved["previous_position"], moved["position"]) == (5, 3)
    await assert_positions(t, queue_id, [b, c, a, e, d])

    # A new ticket still joins at the end, after every moved one.
    f = (await t.ticket(queue_id, (await t.get(f"/v1/tickets/{a}"))["type_definition_id"]))["id"]
    await assert_positions(t, queue_id, [b, c, a, e, d, f])

    await t.move(b, "start_preparation")
    assert_error(await reorder(client, t, b, position=1), 400, "validation_error")
    await assert_positions(t, queue_id, [c, a, e, d, f])

    for bad in ({"position": 0}, {"position": "1"}, {"position": 1, "extra": 1}, {}):
        assert_error(await reorder(client, t, c, **bad), 400, "validation_error")
    assert_error(await reorder(client, t, str(uuid.uuid4()), position=1), 404, "not_found")
    await assert_positions(t, queue_id, [c, a, e, d, f])

    kinds = await t.get("/v1/tickets", queue_id=queue_id)
    assert kinds["pagination"]["total"] == 6


async def test_reorder_is_recorded_in_the_event_log(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, _, _, ids = await coffee(client, api, tickets=3)
    ok(await reorder(client, t, ids[2], position=1, reason="VIP"))
    rows = await db.fetch(
        "SELECT type, data FROM events WHERE ticket_id = $1 AND type = 'ticket.reordered'", uuid.UUID(ids[2])
    )
    assert len(rows) == 1
    data = json.loads(rows[0]["data"])
    assert (data["previous_position"], data["position"]) == (3, 1)
    assert data["reason"] == "VIP"


async def test_events_written_inside_the_changes_statement_carry_the_whole_payload(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Update, reorder, forward, assign and unassign write their event in the change's own statement (built
    by PostgreSQL): each event has the summary every ticket event carries, its own fields, the ticket's queue
    after the change, and exactly one row."""
    t, queue_id, _, ids = await coffee(client, api, tickets=4)
    pickup = await t.queue("Pickup", ticket_prefix="P")
    ana = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "ana@example.com"}, headers=t.h
        ),
        201,
    )

    async def only_event(ticket_id: str, event_type: str) -> tuple[str, dict[str, Any]]:
        rows = await db.fetch(
            "SELECT queue_id, data FROM events WHERE ticket_id = $1 AND type = $2",
            uuid.UUID(ticket_id),
            event_type,
        )
        assert len(rows) == 1, (event_type, rows)
        return str(rows[0]["queue_id"]), json.loads(rows[0]["data"])

    def summary(ticket: dict[str, Any]) -> dict[str, Any]:
        keys = ("display_code", "number", "current_state", "state_category", "type_definition_id", "version")
        return {key: ticket[key] for key in keys}

    updated = ok(
        await client.patch(f"/v1/tickets/{ids[0]}", json={"ttl_minutes": 90, "custom_data": {}}, headers=t.h)
    )
    assert await only_event(ids[0], "ticket.updated") == (
        queue_id,
        {**summary(updated), "changed": ["custom_data", "ttl_minutes"]},
    )

    # Down the line: the ticket's old place (1st) is before its new one, and must not count itself.
    moved = ok(await reorder(client, t, ids[0], position=3, reason="late"))
    assert (moved["previous_position"], moved["position"]) == (1, 3)
    assert await only_event(ids[0], "ticket.reordered") == (
        queue_id,
        {**summary(moved), "previous_position": 1, "position": 3, "reason": "late"},
    )

    sent = ok(await forward(client, t, ids[1], target_queue_id=pickup["id"]))
    assert sent["position"] == 1
    assert await only_event(ids[1], "ticket.forwarded") == (
        pickup["id"],
        {
            **summary(sent),
            "previous_queue_id": queue_id,
            "queue_id": pickup["id"],
            "position": 1,
            "reason": None,
        },
    )
    await t.move(ids[2], "start_preparation")  # out of the line: no position
    served = ok(await forward(client, t, ids[2], target_queue_id=pickup["id"], reason="desk 2"))
    assert served["position"] is None
    assert await only_event(ids[2], "ticket.forwarded") == (
        pickup["id"],
        {
            **summary(served),
            "previous_queue_id": queue_id,
            "queue_id": pickup["id"],
            "position": None,
            "reason": "desk 2",
        },
    )

    assigned = ok(
        await client.post(f"/v1/tickets/{ids[3]}/assign", json={"employee_id": ana["id"]}, headers=t.h)
    )
    assert await only_event(ids[3], "ticket.assigned") == (
        queue_id,
        {**summary(assigned), "employee_id": ana["id"], "previous_employee_id": None},
    )
    unassigned = ok(await client.post(f"/v1/tickets/{ids[3]}/unassign", headers=t.h))
    assert await only_event(ids[3], "ticket.unassigned") == (
        queue_id,
        {**summary(unassigned), "employee_id": None, "previous_employee_id": ana["id"]},
    )
    # A refused change writes no event.
    before = await db.fetchval("SELECT count(*) FROM events WHERE ticket_id = $1", uuid.UUID(ids[3]))
    assert_error(await reorder(client, t, ids[2], position=1), 400, "validation_error")
    assert_error(
        await client.post(
            f"/v1/tickets/{ids[3]}/assign", json={"employee_id": str(uuid.uuid4())}, headers=t.h
        ),
        400,
        "validation_error",
    )
    assert await db.fetchval("SELECT count(*) FROM events WHERE ticket_id = $1", uuid.UUID(ids[3])) == before


async def test_call_next_and_transitions_that_assign_announce_it(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """An assignment made by call-next or by a transition's employee_id is a change like POST /assign's
    (PRODUCT §5: every change has its event): ticket.assigned with the employee and the one before, after
    the state change's own events; a change that keeps the assignee announces no assignment."""
    t, queue_id, _, ids = await coffee(client, api, tickets=3)

    async def employee(name: str) -> str:
        body = {"fname": name, "lname": "X", "email": f"{name.lower()}@example.com"}
        return str(ok(await client.post("/v1/employees", json=body, headers=t.h), 201)["id"])

    ana, ben = await employee("Ana"), await employee("Ben")
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=ben)

    async def events_of(ticket_id: str) -> list[tuple[str, Any, Any]]:
        rows = await db.fetch(
            "SELECT type, data FROM events WHERE ticket_id = $1 ORDER BY tx_id, id", uuid.UUID(ticket_id)
        )
        return [
            (
                row["type"],
                json.loads(row["data"]).get("employee_id"),
                json.loads(row["data"]).get("previous_employee_id"),
            )
            for row in rows
        ]

    first = ok(await call(client, t, queue_id, employee_id=ana))
    assert await events_of(first["id"]) == [
        ("ticket.created", None, None),
        ("ticket.state_changed", None, None),
        ("ticket.assigned", ana, None),
    ]
    assigned = next(
        json.loads(row["data"])
        for row in await db.fetch(
            "SELECT type, data FROM events WHERE ticket_id = $1", uuid.UUID(first["id"])
        )
        if row["type"] == "ticket.assigned"
    )
    assert (assigned["current_state"], assigned["version"]) == (first["current_state"], first["version"])
    # The key's own employee, when the body names none.
    second = ok(await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(staff)))
    assert (await events_of(second["id"]))[-1] == ("ticket.assigned", ben, None)
    # A transition handing the ticket to someone else announces it; one keeping the assignee does not.
    ok(
        await client.post(
            f"/v1/tickets/{first['id']}/transition",
            json={"transition": "mark_ready", "employee_id": ben},
            headers=t.h,
        )
    )
    ok(
        await client.post(
            f"/v1/tickets/{first['id']}/transition",
            json={"transition": "pickup", "employee_id": ben},
            headers=t.h,
        )
    )
    assert [e for e in await events_of(first["id"])][3:] == [
        ("ticket.state_changed", None, None),
        ("ticket.assigned", ben, ana),
        ("ticket.state_changed", None, None),
        ("ticket.completed", None, None),
    ]
    # Nobody named, nobody assigned: no assignment event.
    ok(await call(client, t, queue_id))
    assert [kind for kind, _, _ in await events_of(ids[2])] == ["ticket.created", "ticket.state_changed"]


async def test_a_key_of_a_deactivated_employee_is_refused_until_they_are_active_again(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A staff key attributes its calls to its employee, who must be active (PRODUCT §4): once the employee
    is deactivated the key is refused (it would assign tickets to someone gone), at once in this process.
    An admin key attributed to them keeps working (its authority is the tenant's, and the admin who
    deactivated them may be holding it) but no longer assigns anyone."""
    t, queue_id, _, ids = await coffee(client, api, tickets=3)
    body = {"fname": "Cy", "lname": "X", "email": "cy@example.com"}
    cy = str(ok(await client.post("/v1/employees", json=body, headers=t.h), 201)["id"])
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=cy)
    admin = await api.key("tenant", "admin", key=t.world.tenant_admin, tenant_id=t.id, employee_id=cy)
    called = ok(await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(staff)))
    assert called["employee_id"] == cy
    assert (await client.delete(f"/v1/employees/{cy}", headers=auth(admin))).status_code == 204
    by_admin = ok(await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(admin)))
    assert (by_admin["id"], by_admin["employee_id"]) == (ids[1], None)
    for method, path, payload in (
        ("POST", f"/v1/queues/{queue_id}/call-next", {}),
        ("GET", f"/v1/tickets/{ids[1]}", None),
    ):
        refused = await client.request(method, path, json=payload, headers=auth(staff))
        assert "employee" in assert_error(refused, 403, "forbidden")["message"]
    assert await db.fetchval("SELECT employee_id FROM tickets WHERE id = $1", uuid.UUID(ids[1])) is None
    ok(await client.patch(f"/v1/employees/{cy}", json={"is_active": True}, headers=t.h))
    again = ok(await client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=auth(staff)))
    assert (again["id"], again["employee_id"]) == (ids[2], cy)


async def test_concurrent_reorders_and_calls_keep_positions_gap_free(
    client: httpx.AsyncClient, api: Api
) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=24)
    moves = [
        reorder(client, t, ticket_id, position=(i * 7) % 20 + 1) for i, ticket_id in enumerate(ids[4:20])
    ]
    calls = [call(client, t, queue_id) for _ in range(4)]
    results = await asyncio.gather(*moves, *calls)
    called = {r.json()["id"] for r in results[len(moves) :] if r.status_code == 200}
    assert len(called) == 4
    for response in results[: len(moves)]:
        # A ticket may have been called before its reorder ran; then the reorder is refused cleanly.
        assert response.status_code in (200, 400), response.text
    waiting = await line_of(t, queue_id)
    assert len(waiting) == 20
    assert [row["position"] for row in waiting] == list(range(1, 21))
    assert {row["id"] for row in waiting} == set(ids) - called


async def test_mixed_concurrent_line_changes_keep_both_lines_gap_free(
    client: httpx.AsyncClient, api: Api
) -> None:
    """Reorders, calls, cancels, forwards out and in, and new tickets, all at once on two lines."""
    t, queue_id, order_id, ids = await coffee(client, api, tickets=30)
    other = await t.queue("Other")
    incoming = [(await t.ticket(other["id"], order_id))["id"] for _ in range(6)]
    jobs = [reorder(client, t, ids[i], position=(i * 5) % 25 + 1) for i in range(10, 22)]
    jobs += [call(client, t, queue_id) for _ in range(3)]
    jobs += [client.delete(f"/v1/tickets/{ids[i]}", headers=t.h) for i in (5, 6, 7)]
    jobs += [forward(client, t, ids[i], target_queue_id=other["id"], position=2) for i in (22, 23)]
    jobs += [
        forward(client, t, ticket_id, target_queue_id=queue_id, position=3) for ticket_id in incoming[:4]
    ]
    jobs += [
        client.post("/v1/tickets", json={"queue_id": queue_id, "type_definition_id": order_id}, headers=t.h)
    ]
    results = await asyncio.gather(*jobs)
    for response in results:
        assert response.status_code in (200, 201, 400), response.text  # 400: the ticket was called meanwhile
    for line_id, expected in ((queue_id, 30 - 3 - 3 - 2 + 4 + 1), (other["id"], 6 - 4 + 2)):
        waiting = await line_of(t, line_id)
        assert [row["position"] for row in waiting] == list(range(1, len(waiting) + 1))
        assert len(waiting) == expected, line_id


# --- forward ----------------------------------------------------------------------------------------------


async def forward(client: httpx.AsyncClient, t: Tenant, ticket_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/tickets/{ticket_id}/forward", json=body, headers=t.h)


async def test_forward_between_queues(client: httpx.AsyncClient, api: Api) -> None:
    t, counter_id, order_id, ids = await coffee(client, api, tickets=3)
    pickup = await t.queue("Pickup", ticket_prefix="P")
    already = [(await t.ticket(pickup["id"], order_id))["id"] for _ in range(2)]

    moved = ok(await forward(client, t, ids[0], target_queue_id=pickup["id"], reason="pay at pickup"))
    assert moved["previous_queue_id"] == counter_id
    assert moved["queue_id"] == pickup["id"]
    assert moved["display_code"] == "C001"  # the customer keeps the code they were given
    assert moved["current_state"] == "received"  # the state is kept
    assert moved["position"] == 3  # joins the end
    await assert_positions(t, counter_id, ids[1:])
    await assert_positions(t, pickup["id"], [*already, ids[0]])

    moved = ok(await forward(client, t, ids[1], target_queue_id=pickup["id"], position=1))
    assert moved["position"] == 1
    await assert_positions(t, pickup["id"], [ids[1], *already, ids[0]])

    # A ticket in service keeps its state and has no position in the new line.
    await t.move(ids[2], "start_preparation")
    moved = ok(await forward(client, t, ids[2], target_queue_id=pickup["id"]))
    assert (moved["current_state"], moved["position"]) == ("in_progress", None)

    # New tickets in the origin queue keep counting from where it was.
    assert (await t.ticket(counter_id, order_id))["display_code"] == "C004"


async def test_forward_refusals_change_nothing(client: httpx.AsyncClient, api: Api) -> None:
    t, counter_id, _order_id, ids = await coffee(client, api, tickets=2)
    other_type = await t.type("other_order", FOOD_ORDER_FSM)
    closed = await t.queue("Closed")
    ok(await client.post(f"/v1/queues/{closed['id']}/disable", headers=t.h))
    picky = await t.queue("Picky", allowed_type_definition_ids=[other_type["id"]])
    stranger, stranger_queue, _, _ = await coffee(client, api)

    assert_error(await forward(client, t, ids[0], target_queue_id=closed["id"]), 409, "queue_disabled")
    assert_error(await forward(client, t, ids[0], target_queue_id=picky["id"]), 400, "type_not_allowed")
    assert_error(await forward(client, t, ids[0], target_queue_id=stranger_queue), 404, "not_found")
    assert_error(await forward(client, t, ids[0], target_queue_id=str(uuid.uuid4())), 404, "not_found")
    assert_error(await forward(client, t, ids[0], target_queue_id=counter_id), 400, "validation_error")
    assert_error(await forward(client, t, ids[0], target_queue_id="nope"), 400, "validation_error")
    assert_error(await forward(client, t, ids[0]), 400, "validation_error")
    # Another tenant cannot forward our ticket into its own queue either.
    response = await client.post(
        f"/v1/tickets/{ids[0]}/forward", json={"target_queue_id": stranger_queue}, headers=stranger.h
    )
    assert_error(response, 404, "not_found")
    await assert_positions(t, counter_id, ids)
    stranger_line = await line_of(stranger, stranger_queue)
    assert stranger_line == []

    await t.move(ids[0], "cancel")
    assert_error(await forward(client, t, ids[0], target_queue_id=picky["id"]), 400, "validation_error")


# --- assignment and employees -----------------------------------------------------------------------------


async def test_assign_unassign_and_employee_tickets(client: httpx.AsyncClient, api: Api) -> None:
    t, _queue_id, _, ids = await coffee(client, api, tickets=3)
    ana = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "a@example.com"}, headers=t.h
        ),
        201,
    )
    gone = ok(
        await client.post(
            "/v1/employees", json={"fname": "Gus", "lname": "Gone", "email": "g@example.com"}, headers=t.h
        ),
        201,
    )
    assert (await client.delete(f"/v1/employees/{gone['id']}", headers=t.h)).status_code == 204

    assigned = ok(
        await client.post(f"/v1/tickets/{ids[0]}/assign", json={"employee_id": ana["id"]}, headers=t.h)
    )
    assert assigned["employee_id"] == ana["id"]
    ok(await client.post(f"/v1/tickets/{ids[1]}/assign", json={"employee_id": ana["id"]}, headers=t.h))
    await t.move(ids[1], "start_preparation")

    mine = await t.get(f"/v1/employees/{ana['id']}/tickets")
    assert [row["id"] for row in mine["data"]] == ids[:2]
    mine = await t.get(f"/v1/employees/{ana['id']}/tickets", current_state="in_progress")
    assert [row["id"] for row in mine["data"]] == [ids[1]]
    mine = await t.get(f"/v1/employees/{ana['id']}/tickets", state_category="waiting")
    assert [row["id"] for row in mine["data"]] == [ids[0]]

    unassigned = ok(await client.post(f"/v1/tickets/{ids[0]}/unassign", headers=t.h))
    assert unassigned["employee_id"] is None
    mine = await t.get(f"/v1/employees/{ana['id']}/tickets")
    assert [row["id"] for row in mine["data"]] == [ids[1]]

    for bad in (gone["id"], str(uuid.uuid4()), "not-a-uuid"):
        response = await client.post(f"/v1/tickets/{ids[2]}/assign", json={"employee_id": bad}, headers=t.h)
        assert_error(response, 400, "validation_error")
    assert (await t.get(f"/v1/tickets/{ids[2]}"))["employee_id"] is None
    assert_error(await client.get(f"/v1/employees/{uuid.uuid4()}/tickets", headers=t.h), 404, "not_found")

    # Another tenant's employee is not ours to assign, nor are its tickets ours to list.
    stranger, _, _, stranger_ids = await coffee(client, api, tickets=1)
    response = await client.post(
        f"/v1/tickets/{ids[2]}/assign", json={"employee_id": ana["id"]}, headers=stranger.h
    )
    assert_error(response, 404, "not_found")
    response = await client.post(
        f"/v1/tickets/{stranger_ids[0]}/assign", json={"employee_id": ana["id"]}, headers=stranger.h
    )
    assert_error(response, 400, "validation_error")
    assert_error(await client.get(f"/v1/employees/{ana['id']}/tickets", headers=stranger.h), 404, "not_found")


async def test_employee_queues(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, _ = await coffee(client, api)
    second = await t.queue("Second")
    ana = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "a@example.com"}, headers=t.h
        ),
        201,
    )
    bound = ok(
        await client.put(
            f"/v1/employees/{ana['id']}/queues", json={"queue_ids": [queue_id, second["id"]]}, headers=t.h
        )
    )
    assert bound["queue_ids"] == [queue_id, second["id"]]
    bound = ok(
        await client.post(
            f"/v1/employees/{ana['id']}/assign-queues", json={"queue_ids": [second["id"]]}, headers=t.h
        )
    )
    assert bound["queue_ids"] == [second["id"]]

    stranger, stranger_queue, _, _ = await coffee(client, api)
    for bad in ([stranger_queue], [str(uuid.uuid4())], ["nope"], "x"):
        response = await client.put(f"/v1/employees/{ana['id']}/queues", json={"queue_ids": bad}, headers=t.h)
        assert_error(response, 400, "validation_error")
    response = await client.put(
        f"/v1/employees/{ana['id']}/queues", json={"queue_ids": [stranger_queue]}, headers=stranger.h
    )
    assert_error(response, 404, "not_found")
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    response = await client.put(
        f"/v1/employees/{ana['id']}/queues", json={"queue_ids": [queue_id]}, headers=auth(staff)
    )
    assert_error(response, 403, "forbidden")
    assert (await t.get(f"/v1/employees/{ana['id']}"))["queue_ids"] == [second["id"]]


async def test_line_operations_are_tenant_isolated(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, _, ids = await coffee(client, api, tickets=2)
    stranger, stranger_queue, _, _ = await coffee(client, api)
    h = stranger.h
    attempts = [
        client.post(f"/v1/queues/{queue_id}/call-next", json={}, headers=h),
        client.post(f"/v1/tickets/{ids[0]}/reorder", json={"position": 2}, headers=h),
        client.post(f"/v1/tickets/{ids[0]}/forward", json={"target_queue_id": stranger_queue}, headers=h),
        client.post(f"/v1/tickets/{ids[0]}/unassign", headers=h),
        client.get(f"/v1/queues/{queue_id}/monitor", headers=h),
        client.get(f"/v1/queues/{queue_id}/stats", headers=h),
    ]
    for response in await asyncio.gather(*attempts):
        assert_error(response, 404, "not_found")
    await assert_positions(t, queue_id, ids)


# --- monitor ----------------------------------------------------------------------------------------------


async def test_monitor_groups_names_and_privacy(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    item_type = await t.type("drink", None, custom_fields_schema={"type": "object"})
    order = await t.type(
        "food_order", FOOD_ORDER_FSM, custom_fields_schema=ORDER_SCHEMA, item_definition_ids=[item_type["id"]]
    )
    queue = await t.queue("Store", ticket_prefix="S")
    john = ok(
        await client.post(
            "/v1/customers",
            json={"fname": "John", "lname": "Smith", "email": "john@example.com", "phone": "+1 206 555 0100"},
            headers=t.h,
        ),
        201,
    )
    mono = ok(await client.post("/v1/customers", json={"fname": "Cher"}, headers=t.h), 201)

    def data(channel: str) -> dict[str, Any]:
        return {"customer_name": "whoever", "channel": channel}

    first = await t.ticket(queue["id"], order["id"], customer_id=john["id"], custom_data=data("counter"))
    await t.ticket(queue["id"], order["id"], custom_data=data("counter"))
    await t.ticket(queue["id"], order["id"], customer_id=mono["id"], custom_data=data("drive_thru"))
    served = await t.ticket(queue["id"], order["id"], custom_data=data("counter"))
    ready = await t.ticket(queue["id"], order["id"], custom_data=data("counter"))
    done = await t.ticket(queue["id"], order["id"], custom_data=data("counter"))
    for ticket_id, path in (
        (served["id"], ["start_preparation"]),
        (ready["id"], ["start_preparation", "mark_ready"]),
        (done["id"], ["start_preparation", "mark_ready", "pickup"]),
    ):
        for transition in path:
            await t.move(ticket_id, transition)
    for name, quantity in (("Latte", 2), (None, 1)):
        body: dict[str, Any] = {"item_type_definition_id": item_type["id"], "quantity": quantity}
        if name:
            body["external_item_name"] = name
        ok(await client.post(f"/v1/tickets/{first['id']}/items", json=body, headers=t.h), 201)

    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    response = await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display))
    feed = ok(response)
    assert feed["queue_name"] == "Store"
    assert feed["is_active"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", feed["generated_at"])  # as every answer
    waiting = feed["groups"]["waiting"]
    assert [(e["display_code"], e["display_name"], e["position"]) for e in waiting] == [
        ("S001", "John S.", 1),
        ("S002", "Guest", 2),
        ("S003", "Cher", 3),
    ]
    assert waiting[0]["items"] == [{"name": "Latte", "quantity": 2}, {"name": "Drink", "quantity": 1}]
    assert waiting[0]["item_count"] == 3
    assert all("estimated_wait_minutes" in e for e in waiting)
    assert [e["display_code"] for e in feed["groups"]["in_service"]] == ["S004"]
    assert [e["display_code"] for e in feed["groups"]["ready"]] == ["S005"]
    assert feed["groups"]["ready"][0]["state"] == "ready"
    assert feed["counts"] == {"waiting": 3, "in_service": 1, "ready": 1}
    text = response.text
    # Whole values only: a short fragment such as "555" can occur inside a random UUID.
    for secret in (
        "john@example.com",
        "+1 206 555 0100",
        "+12065550100",
        "Smith",
        "whoever",
        "drive_thru",
        john["id"],
    ):
        assert secret not in text

    # Exclusion on a custom_data field hides drive-thru orders; positions stay the line's real ones.
    feed = ok(
        await client.get(
            f"/v1/queues/{queue['id']}/monitor",
            params={"exclude": "channel:drive_thru"},
            headers=auth(display),
        )
    )
    assert [e["display_code"] for e in feed["groups"]["waiting"]] == ["S001", "S002"]
    feed = ok(
        await client.get(
            f"/v1/queues/{queue['id']}/monitor",
            params=[("exclude", "channel:drive_thru"), ("exclude", "channel:counter")],
            headers=auth(display),
        )
    )
    assert feed["counts"] == {"waiting": 0, "in_service": 0, "ready": 0}
    for bad in ("channel", ":x", "bad field:x", "x" * 70 + ":y"):
        response = await client.get(
            f"/v1/queues/{queue['id']}/monitor", params={"exclude": bad}, headers=auth(display)
        )
        assert_error(response, 400, "validation_error")

    # Only by a field whose values the types list (channel: an enum): by a free-text field a display key
    # could test guesses of someone's data (which tickets stay shown). Staff and admins may.
    for free in ("customer_name:whoever", "undeclared:x"):
        response = await client.get(
            f"/v1/queues/{queue['id']}/monitor",
            params=[("exclude", "channel:counter"), ("exclude", free)],
            headers=auth(display),
        )
        error = assert_error(response, 403, "forbidden")
        assert error["details"] == {"field": "exclude", "value": free.split(":")[0]}
    staff_feed = ok(
        await client.get(
            f"/v1/queues/{queue['id']}/monitor", params={"exclude": "customer_name:whoever"}, headers=t.h
        )
    )
    assert staff_feed["counts"]["waiting"] == 0

    # Each group is cut at `limit` tickets; the counts still count them all.
    feed = ok(
        await client.get(f"/v1/queues/{queue['id']}/monitor", params={"limit": 1}, headers=auth(display))
    )
    assert [e["display_code"] for e in feed["groups"]["waiting"]] == ["S001"]
    assert feed["counts"] == {"waiting": 3, "in_service": 1, "ready": 1}
    for bad_limit in ("0", "1001", "x"):
        response = await client.get(
            f"/v1/queues/{queue['id']}/monitor", params={"limit": bad_limit}, headers=auth(display)
        )
        assert_error(response, 400, "validation_error")

    # A display key sees no personal data on the queue's ticket list either.
    listing = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(display)))
    assert all(row["customer_id"] is None and row["custom_data"] == {} for row in listing["data"])
    assert "john@example.com" not in str(listing)
    # ... and cannot read tickets, customers or stats directly.
    for path in (
        f"/v1/tickets/{first['id']}",
        f"/v1/customers/{john['id']}",
        f"/v1/queues/{queue['id']}/stats",
    ):
        assert_error(await client.get(path, headers=auth(display)), 403, "forbidden")

    # Without wait times, the monitor leaves estimates out; a disabled queue still shows the tickets it has
    # (they are still served: PRODUCT §4), and says it is closed.
    ok(await client.patch(f"/v1/queues/{queue['id']}", json={"show_wait_time": False}, headers=t.h))
    feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display)))
    assert feed["show_wait_time"] is False
    assert all("estimated_wait_minutes" not in e for e in feed["groups"]["waiting"])
    open_groups = feed["groups"]
    ok(await client.post(f"/v1/queues/{queue['id']}/disable", headers=t.h))
    feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display)))
    assert feed["is_active"] is False
    assert feed["groups"] == open_groups
    assert feed["counts"] == {"waiting": 3, "in_service": 1, "ready": 1}


TRIAGE_FSM: dict[str, Any] = {
    "init": "waiting_room",
    "states": ["waiting_room", "second_wait", "desk", "gone"],
    "transitions": [
        {"name": "recheck", "from": "waiting_room", "to": "second_wait"},
        {"name": "to_desk", "from": "waiting_room", "to": "desk"},
        {"name": "call_back", "from": "second_wait", "to": "desk"},
        {"name": "leave", "from": "desk", "to": "gone"},
    ],
    "categories": {"second_wait": "waiting", "gone": "done"},
}
STUCK_FSM: dict[str, Any] = {
    "init": "limbo",
    "states": ["limbo", "gone"],
    "transitions": [{"name": "cancel", "from": "limbo", "to": "gone"}],
    "categories": {"gone": "cancelled"},
}


async def test_call_next_learns_each_type_version_and_waiting_state(
    client: httpx.AsyncClient, api: Api
) -> None:
    """Call-next is one statement once the process knows the call transition for the first ticket's type
    version and waiting state; a state it has not met, another type, a changed type and a state with no way
    out of the line must all still get the right answer."""
    t = await Tenant.create(client, api)
    triage = await t.type("triage", TRIAGE_FSM)
    stuck = await t.type("stuck", STUCK_FSM)
    queue = (await t.queue("Clinic"))["id"]
    first = await t.ticket(queue, triage["id"])
    second = await t.ticket(queue, triage["id"])
    await t.move(second["id"], "recheck")  # still waiting, in another waiting state
    third = await t.ticket(queue, stuck["id"])

    called = ok(await call(client, t, queue))
    assert (called["id"], called["previous_state"], called["current_state"]) == (
        first["id"],
        "waiting_room",
        "desk",
    )
    called = ok(await call(client, t, queue))
    assert (called["id"], called["previous_state"], called["current_state"]) == (
        second["id"],
        "second_wait",
        "desk",
    )
    history = await t.get(f"/v1/tickets/{second['id']}/history")
    assert [h["transition"] for h in history[1:]] == ["recheck", "call_back"]

    # Nothing leads from "limbo" into service, ready or done: refused, and the ticket is untouched.
    refused = assert_error(await call(client, t, queue), 400, "invalid_transition")
    assert refused["details"]["valid_transitions"] == ["cancel"]
    assert refused["details"]["ticket_id"] == third["id"]
    assert (await t.get(f"/v1/tickets/{third['id']}"))["version"] == third["version"]
    await t.move(third["id"], "cancel")

    # A new version of the type whose first way into service is another transition: used at once.
    changed = {
        **TRIAGE_FSM,
        "states": ["waiting_room", "second_wait", "window", "desk", "gone"],
        "transitions": [
            {"name": "to_window", "from": "waiting_room", "to": "window"},
            {"name": "served", "from": "window", "to": "gone"},
            *TRIAGE_FSM["transitions"],
        ],
    }
    patched = await client.patch(
        f"/v1/type-definitions/{triage['id']}", json={"fsm_schema": changed}, headers=t.h
    )
    assert ok(patched)["version"] == triage["version"] + 1
    fourth = await t.ticket(queue, triage["id"])
    called = ok(await call(client, t, queue))
    assert (called["id"], called["current_state"]) == (fourth["id"], "window")
    assert_error(await call(client, t, queue), 404, "queue_empty")
    events = ok(await client.get("/v1/events", params={"ticket_id": fourth["id"]}, headers=t.h))["data"]
    assert [e["type"] for e in events] == ["ticket.created", "ticket.state_changed"]
    assert events[-1]["data"]["transition"] == "to_window"


async def test_opening_and_closing_a_queue_is_announced_however_it_is_done(
    client: httpx.AsyncClient, api: Api
) -> None:
    """`queue.enabled` / `queue.disabled` (PRODUCT §5) whether through /enable, /disable or PATCH is_active;
    other changed fields in the same PATCH are a `queue.updated`; a change to nothing announces nothing."""
    t, counter_id, _order_id, _ids = await coffee(client, api, tickets=0)

    async def announced() -> list[tuple[str, Any]]:
        page = ok(await client.get("/v1/events", params={"queue_id": counter_id, "limit": 1000}, headers=t.h))
        return [(e["type"], e["data"].get("changed")) for e in page["data"] if e["type"].startswith("queue.")]

    path = f"/v1/queues/{counter_id}"
    ok(await client.patch(path, json={"is_active": False, "name": "Counter (closing)"}, headers=t.h))
    ok(await client.patch(path, json={"is_active": False}, headers=t.h))  # already closed: nothing to say
    ok(await client.put(path, json={"is_active": True}, headers=t.h))
    ok(await client.post(f"{path}/disable", headers=t.h))
    ok(await client.post(f"{path}/enable", headers=t.h))
    ok(await client.patch(path, json={"show_wait_time": False}, headers=t.h))
    assert await announced() == [
        ("queue.updated", ["name"]),
        ("queue.disabled", None),
        ("queue.enabled", None),
        ("queue.disabled", None),
        ("queue.enabled", None),
        ("queue.updated", ["show_wait_time"]),
    ]
    assert ok(await client.get(path, headers=t.h))["name"] == "Counter (closing)"


async def test_concurrent_closes_of_one_queue_announce_it_once(client: httpx.AsyncClient, api: Api) -> None:
    """Each change compared against a row it had not locked: ten admins closing an open queue at once all
    saw it open, and all announced `queue.disabled`. Now the first closes it and the rest find it closed."""
    t, counter_id, _order_id, _ids = await coffee(client, api, tickets=0)
    path = f"/v1/queues/{counter_id}"
    for _round in range(3):
        closes = [client.post(f"{path}/disable", headers=t.h) for _ in range(5)]
        closes += [client.patch(path, json={"is_active": False}, headers=t.h) for _ in range(5)]
        for response in await asyncio.gather(*closes):
            assert ok(response)["is_active"] is False
        opens = [client.post(f"{path}/enable", headers=t.h) for _ in range(10)]
        for response in await asyncio.gather(*opens):
            assert ok(response)["is_active"] is True
    page = ok(await client.get("/v1/events", params={"queue_id": counter_id, "limit": 1000}, headers=t.h))
    announced = [e["type"] for e in page["data"] if e["type"].startswith("queue.")]
    assert announced == ["queue.disabled", "queue.enabled"] * 3


async def test_a_call_names_the_counter_the_customer_goes_to(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Where to go ("Desk 2") travels with the call: on the ticket, in its event (display keys see it: it
    says nothing about a person), on the monitor and the customer's page. A transition may name another
    counter, or keep it; back in line the ticket has none. Named in the body only, and bounded."""
    from tests.test_ticket_flows import DMV_FSM

    t = await Tenant.create(client, api)
    dmv = await t.type("dmv", DMV_FSM)
    queue = (await t.queue("Plates", ticket_prefix="P"))["id"]
    first, second = [await t.ticket(queue, dmv["id"]) for _ in range(2)]
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)

    called = ok(await call(client, t, queue, counter="  Desk 2 "))
    assert (called["id"], called["counter"], called["current_state"]) == (
        first["id"],
        "Desk 2",
        "documents_verified",
    )
    assert (await t.get(f"/v1/tickets/{first['id']}"))["counter"] == "Desk 2"
    monitor = ok(await client.get(f"/v1/queues/{queue}/monitor", headers=auth(display)))
    assert [(e["display_code"], e["counter"]) for e in monitor["groups"]["in_service"]] == [
        ("P001", "Desk 2")
    ]
    assert [e["counter"] for e in monitor["groups"]["waiting"]] == [None]
    public = first["customer_page"].split("token=")[1]
    shown = ok(await client.get(f"/v1/public/tickets/{first['id']}", params={"token": public}))
    assert shown["counter"] == "Desk 2"
    event = await db.fetchval(
        """SELECT data FROM events WHERE ticket_id = $1 AND type = 'ticket.state_changed'
            ORDER BY tx_id DESC, id DESC LIMIT 1""",
        uuid.UUID(first["id"]),
    )
    assert json.loads(event)["counter"] == "Desk 2"
    from virtualq.events.envelope import display_safe

    assert display_safe({"data": json.loads(event)})["data"]["counter"] == "Desk 2"

    # A transition keeps it, or names another; back in line, none.
    moved = ok(
        await client.post(f"/v1/tickets/{first['id']}/transition", json={"transition": "pay"}, headers=t.h)
    )
    assert moved["counter"] == "Desk 2"
    second_called = ok(await call(client, t, queue))  # no counter given: none
    assert (second_called["id"], second_called["counter"]) == (second["id"], None)
    other = ok(
        await client.post(
            f"/v1/tickets/{second['id']}/transition",
            json={"transition": "reject", "counter": "Desk 3"},
            headers=t.h,
        )
    )
    assert (other["current_state"], other["counter"]) == ("submitted", None)  # back in line
    again = ok(await call(client, t, queue, transition="verify", counter="Window B"))  # the locking path
    assert (again["id"], again["counter"]) == (second["id"], "Window B")
    # A counter belongs to the queue that called: forwarded elsewhere, the ticket has none there.
    elsewhere = (await t.queue("Cashier"))["id"]
    forwarded = ok(
        await client.post(
            f"/v1/tickets/{second['id']}/forward", json={"target_queue_id": elsewhere}, headers=t.h
        )
    )
    assert (forwarded["queue_id"], forwarded["current_state"], forwarded["counter"]) == (
        elsewhere,
        "documents_verified",
        None,
    )
    reordered_keeps = await t.get(f"/v1/tickets/{first['id']}")
    assert reordered_keeps["counter"] == "Desk 2"

    for bad in ("", "x" * 51, 7, ["Desk"]):
        assert_error(await call(client, t, queue, counter=bad), 400, "validation_error")
        response = await client.post(
            f"/v1/tickets/{first['id']}/transition", json={"transition": "issue", "counter": bad}, headers=t.h
        )
        assert_error(response, 400, "validation_error")
    assert (await t.get(f"/v1/tickets/{first['id']}"))["current_state"] == "fee_paid"


async def test_an_employee_calls_next_across_the_queues_they_serve(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """Binding staff to queues recorded a list and did nothing with it. Call-next for an employee takes the
    waiting ticket that comes first in any queue they serve (the earliest to join, unless moved), assigns
    it to them, and says so when nobody waits anywhere; two counters at once never get the same ticket."""
    t = await Tenant.create(client, api)
    order = await t.type("food_order", FOOD_ORDER_FSM)
    counter, drive, other = [(await t.queue(name))["id"] for name in ("Counter", "Drive", "Other")]
    ana = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "L", "email": "a@x.co"}, headers=t.h
        ),
        201,
    )
    path = f"/v1/employees/{ana['id']}/call-next"
    assert_error(await client.post(path, headers=t.h), 400, "validation_error")  # serves no queue yet
    ok(
        await client.put(
            f"/v1/employees/{ana['id']}/queues", json={"queue_ids": [counter, drive]}, headers=t.h
        )
    )
    assert_error(await client.post(path, headers=t.h), 404, "queue_empty")

    first_at_drive = await t.ticket(drive, order["id"])
    elsewhere = await t.ticket(other, order["id"])  # not hers
    at_counter = await t.ticket(counter, order["id"])
    later_at_drive = await t.ticket(drive, order["id"])
    called = [ok(await client.post(path, json={"counter": "Window 1"}, headers=t.h)) for _ in range(3)]
    assert [c["id"] for c in called] == [first_at_drive["id"], at_counter["id"], later_at_drive["id"]]
    assert {(c["employee_id"], c["counter"], c["current_state"]) for c in called} == {
        (ana["id"], "Window 1", "in_progress")
    }
    assert_error(await client.post(path, headers=t.h), 404, "queue_empty")
    assert (await t.get(f"/v1/tickets/{elsewhere['id']}"))["current_state"] == "received"

    # Moved ahead counts as first; two calls at once take two different tickets.
    made = [await t.ticket(queue, order["id"]) for queue in (counter, drive, drive, counter)]
    ok(await client.post(f"/v1/tickets/{made[3]['id']}/reorder", json={"position": 1}, headers=t.h))
    assert ok(await client.post(path, headers=t.h))["id"] == made[3]["id"]
    both = await asyncio.gather(*(client.post(path, json={}, headers=t.h) for _ in range(2)))
    assert sorted(ok(r)["id"] for r in both) == sorted([made[0]["id"], made[1]["id"]])

    # Another tenant's employee is unknown here; a body naming someone else is refused.
    stranger = await Tenant.create(client, api)
    assert_error(await client.post(path, headers=stranger.h), 404, "not_found")
    bob = ok(
        await client.post(
            "/v1/employees", json={"fname": "Bob", "lname": "B", "email": "b@x.co"}, headers=t.h
        ),
        201,
    )
    assert_error(
        await client.post(path, json={"employee_id": bob["id"]}, headers=t.h), 400, "validation_error"
    )
    assert (await t.get(f"/v1/tickets/{made[2]['id']}"))["current_state"] == "received"
    # A staff key bound to Bob calls for Bob only.
    bobs_key = await api.key(
        "tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=bob["id"]
    )
    assert_error(await client.post(path, headers=auth(bobs_key)), 403, "forbidden")

    # A queue whose first ticket is held by another change at this instant, or cannot be called (its type
    # has no way out of the line), is passed over: the other queue's ticket is called, not a 404 or a 400.
    stuck_fsm = {
        "init": "w",
        "states": ["w", "x"],
        "transitions": [{"name": "cancel", "from": "w", "to": "x"}],
        "categories": {"x": "cancelled"},
    }
    stuck_type = await t.type("stuck", stuck_fsm)
    ok(
        await client.post(
            f"/v1/tickets/{made[2]['id']}/transition", json={"transition": "cancel"}, headers=t.h
        )
    )
    held, other_line = await t.ticket(counter, order["id"]), await t.ticket(drive, order["id"])
    async with db.transaction():  # the counter's only waiting ticket is being changed at this instant
        await db.execute("SELECT 1 FROM tickets WHERE id = $1 FOR UPDATE", uuid.UUID(held["id"]))
        got = ok(await client.post(path, headers=t.h))
    assert got["id"] == other_line["id"]  # not a 404 while the drive's line waits
    assert ok(await client.post(path, headers=t.h))["id"] == held["id"]
    stuck, callable_ = await t.ticket(drive, stuck_type["id"]), await t.ticket(counter, order["id"])
    assert ok(await client.post(path, headers=t.h))["id"] == callable_["id"]  # the stuck head passed over
    assert (await t.get(f"/v1/tickets/{stuck['id']}"))["current_state"] == "w"
    refused = assert_error(await client.post(path, headers=t.h), 400, "invalid_transition")
    assert refused["details"]["ticket_id"] == stuck["id"]  # only the uncallable one is left: its refusal
