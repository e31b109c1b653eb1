"""A customer leaves the line from their own page (`POST /v1/public/tickets/{id}/leave`, the link's token).

Only a waiting ticket, through its type's cancel transition; a call-next at the same instant wins or loses
as a whole; wrong tokens and refusals change nothing."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import DRINK_FSM, FOOD_ORDER_FSM, Tenant, coffee, ok


def token_of(ticket: dict[str, str]) -> str:
    return ticket["customer_page"].split("token=")[1]


async def test_a_waiting_customer_leaves_the_line(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    mine, behind = await t.ticket(queue, order), await t.ticket(queue, order)
    assert behind["position"] == 2
    url = f"/v1/public/tickets/{mine['id']}/leave"

    left = ok(await client.post(url, headers={"X-Ticket-Token": token_of(mine)}))
    assert (left["state_category"], left["position"]) == ("cancelled", None)
    assert left["display_code"] == mine["display_code"]
    assert (await t.get(f"/v1/tickets/{behind['id']}"))["position"] == 1
    history = await t.get(f"/v1/tickets/{mine['id']}/history")
    assert history[-1]["notes"] == "left the line (the customer's page)"
    assert history[-1]["employee_id"] is None
    cancelled = (await t.get("/v1/events", type="ticket.cancelled"))["data"]
    assert [e["ticket_id"] for e in cancelled] == [mine["id"]]
    # Again: it is no longer in line (409), and the token in the query works as the header does.
    body = assert_error(await client.post(url, params={"token": token_of(mine)}), 409, "conflict")
    assert body["details"]["state_category"] == "cancelled"


async def test_wrong_tokens_and_refusals_change_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    mine, other = await t.ticket(queue, order), await t.ticket(queue, order)
    url = f"/v1/public/tickets/{mine['id']}/leave"
    for headers in ({}, {"X-Ticket-Token": "0" * 64}, {"X-Ticket-Token": token_of(other)}):
        assert_error(await client.post(url, headers=headers), 404, "not_found")
    unknown = f"/v1/public/tickets/{uuid.uuid4()}/leave"
    assert_error(await client.post(unknown, headers={"X-Ticket-Token": token_of(mine)}), 404, "not_found")
    assert_error(await client.post("/v1/public/tickets/nope/leave"), 400, "validation_error")
    assert_error(
        await client.post(url, headers={"X-Ticket-Token": token_of(mine)}, params={"tokn": "x"}),
        400,
        "validation_error",
    )

    # Called: staff decide from here.
    ok(await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h))
    body = assert_error(await client.post(url, headers={"X-Ticket-Token": token_of(mine)}), 409, "conflict")
    assert body["details"] == {"current_state": "in_progress", "state_category": "in_service"}
    # A type with no way to a cancelled state: the page offers no button, and the API says to ask.
    drink = await t.type("drink_ticket", DRINK_FSM)
    plain = await t.ticket(queue, drink["id"])
    shown = ok(await client.get(f"/v1/public/tickets/{plain['id']}", params={"token": token_of(plain)}))
    assert (shown["state_category"], shown["can_leave"]) == ("waiting", False)
    assert ok(await client.get(f"/v1/public/tickets/{other['id']}", params={"token": token_of(other)}))[
        "can_leave"
    ]
    assert not ok(await client.get(f"/v1/public/tickets/{mine['id']}", params={"token": token_of(mine)}))[
        "can_leave"
    ]
    assert_error(
        await client.post(
            f"/v1/public/tickets/{plain['id']}/leave", headers={"X-Ticket-Token": token_of(plain)}
        ),
        409,
        "conflict",
    )
    rows = await db.fetch(
        "SELECT state_category FROM tickets WHERE tenant_id = $1 ORDER BY number", uuid.UUID(t.id)
    )
    assert [r["state_category"] for r in rows] == ["in_service", "waiting", "waiting"]
    assert (await t.get("/v1/events", type="ticket.cancelled"))["data"] == []


async def test_leaving_while_a_counter_calls_is_one_or_the_other(client: httpx.AsyncClient, api: Api) -> None:
    """The customer at the head of the line leaves at the instant a counter calls next: either they left and
    the counter got the next customer, or they were called and the leave is refused. Never both."""
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = (await t.queue("Race"))["id"]
    for _ in range(12):
        head, second = await t.ticket(queue, order["id"]), await t.ticket(queue, order["id"])
        left, called = await asyncio.gather(
            client.post(f"/v1/public/tickets/{head['id']}/leave", headers={"X-Ticket-Token": token_of(head)}),
            client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h),
        )
        state = (await t.get(f"/v1/tickets/{head['id']}"))["state_category"]
        if left.status_code == 200:
            assert state == "cancelled"
            assert called.json()["id"] == second["id"]
        else:
            assert_error(left, 409, "conflict")
            assert state == "in_service"
            assert called.json()["id"] == head["id"]
        # Clear the line for the next round.
        for ticket in await t.all_pages(f"/v1/queues/{queue}/tickets"):
            ok(await client.delete(f"/v1/tickets/{ticket['id']}", headers=t.h))


async def test_a_stale_memory_of_the_ticket_does_not_refuse_a_leave(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """This process remembers the ticket as called (it made that change); another process has since put it
    back in line. The leave must be decided by the database, not by the memory."""
    t = await Tenant.create(client, api)
    fsm = {
        **FOOD_ORDER_FSM,
        "transitions": [
            *FOOD_ORDER_FSM["transitions"],
            {"name": "requeue", "from": "in_progress", "to": "received"},
        ],
    }
    order = await t.type("order", fsm)
    queue = (await t.queue("Main"))["id"]
    mine = await t.ticket(queue, order["id"])
    await t.move(mine["id"], "start_preparation")  # remembered here as in progress
    await db.execute(  # another process's requeue, as its statement would write it
        "UPDATE tickets SET current_state = 'received', state_category = 'waiting', version = version + 1 "
        "WHERE id = $1",
        uuid.UUID(mine["id"]),
    )
    left = ok(
        await client.post(
            f"/v1/public/tickets/{mine['id']}/leave", headers={"X-Ticket-Token": token_of(mine)}
        )
    )
    assert left["state_category"] == "cancelled"


async def test_a_deactivated_business_s_tickets_cannot_be_left(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    mine = await t.ticket(queue, order)
    ok(await client.patch(f"/v1/tenants/{t.id}", json={"is_active": False}, headers=auth(api.admin_key)))
    url = f"/v1/public/tickets/{mine['id']}/leave"
    assert_error(await client.post(url, headers={"X-Ticket-Token": token_of(mine)}), 404, "not_found")
    state = await db.fetchval("SELECT state_category FROM tickets WHERE id = $1", uuid.UUID(mine["id"]))
    assert state == "waiting"
