"""Tickets across tenants and under real concurrency (issue: metadata-driven tickets).

Isolation: every ticket-issue resource of tenant B is invisible and untouchable with tenant A's keys.
Concurrency: parallel requests through the real app and pool (asyncio.gather over the ASGI client).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import DRINK_FSM, FOOD_ORDER_FSM, Tenant, assert_chain, ok


async def shop(client: httpx.AsyncClient, api: Api) -> tuple[Tenant, dict[str, Any]]:
    t = await Tenant.create(client, api)
    drink = await t.type("drink", DRINK_FSM)
    order = await t.type("order", FOOD_ORDER_FSM, item_definition_ids=[drink["id"]])
    queue = await t.queue("Main", ticket_prefix="M")
    ticket = await t.ticket(queue["id"], order["id"])
    item = ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/items",
            json={"item_type_definition_id": drink["id"], "external_item_name": "Latte"},
            headers=t.h,
        ),
        201,
    )
    return t, {"drink": drink, "order": order, "queue": queue, "ticket": ticket, "item": item}


async def state_of(db: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    """Everything the tickets issue stores for a tenant, to prove nothing changed."""
    tid = uuid.UUID(tenant_id)
    queries = {
        "types": "SELECT id, version, type_name, is_active FROM type_definitions "
        "WHERE tenant_id = $1 ORDER BY id",
        "queues": "SELECT id, name, is_active, updated_at FROM queues WHERE tenant_id = $1 ORDER BY id",
        "tickets": "SELECT id, current_state, version, queue_id, employee_id, sort_key FROM tickets "
        "WHERE tenant_id = $1 ORDER BY id",
        "items": "SELECT id, current_state, version, is_deleted FROM ticket_items "
        "WHERE tenant_id = $1 ORDER BY id",
        "history": "SELECT count(*) FROM ticket_history WHERE tenant_id = $1",
        "item_history": "SELECT count(*) FROM item_history WHERE tenant_id = $1",
    }
    return {name: [tuple(row) for row in await db.fetch(sql, tid)] for name, sql in queries.items()}


async def test_another_tenant_cannot_reach_any_ticket_resource(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    a, mine = await shop(client, api)
    b, theirs = await shop(client, api)
    before = await state_of(db, b.id)
    staff = await api.key("tenant", "staff", key=a.world.tenant_admin, tenant_id=a.id)
    callers = {
        "tenant admin": a.h,
        "tenant staff": auth(staff),
        "account admin with A's tenant": auth(a.world.account_admin, a.id),
    }
    ticket, item, queue = theirs["ticket"]["id"], theirs["item"]["id"], theirs["queue"]["id"]
    order, drink = theirs["order"]["id"], theirs["drink"]["id"]
    attempts: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/type-definitions/{order}", None),
        ("PATCH", f"/v1/type-definitions/{order}", {"type_name": "Mine"}),
        ("DELETE", f"/v1/type-definitions/{order}", None),
        ("GET", f"/v1/queues/{queue}", None),
        ("PATCH", f"/v1/queues/{queue}", {"name": "Mine"}),
        ("DELETE", f"/v1/queues/{queue}", None),
        ("POST", f"/v1/queues/{queue}/disable", None),
        ("POST", f"/v1/queues/{queue}/enable", None),
        ("GET", f"/v1/queues/{queue}/tickets", None),
        ("GET", f"/v1/tickets/{ticket}", None),
        ("PATCH", f"/v1/tickets/{ticket}", {"custom_data": {}}),
        ("PUT", f"/v1/tickets/{ticket}", {"ttl_minutes": 5}),
        ("DELETE", f"/v1/tickets/{ticket}", None),
        ("POST", f"/v1/tickets/{ticket}/transition", {"transition": "start_preparation"}),
        ("GET", f"/v1/tickets/{ticket}/history", None),
        ("POST", f"/v1/tickets/{ticket}/items", {"item_type_definition_id": drink}),
        ("GET", f"/v1/tickets/{ticket}/items", None),
        ("GET", f"/v1/items/{item}", None),
        ("PATCH", f"/v1/items/{item}", {"quantity": 3}),
        ("DELETE", f"/v1/items/{item}", None),
        ("POST", f"/v1/items/{item}/transition", {"transition": "start"}),
        ("GET", f"/v1/items/{item}/history", None),
    ]
    for who, headers in callers.items():
        for method, path, body in attempts:
            response = await client.request(method, path, json=body, headers=headers)
            if (
                who == "tenant staff"
                and method != "GET"
                and "/v1/tickets" not in path
                and "/v1/items" not in path
            ):
                assert_error(response, 403, "forbidden")  # configuration changes are admin-only anyway
            else:
                assert_error(response, 404, "not_found")
        # Lists and counts never include B's rows, whatever the filters say.
        listed = ok(await client.get("/v1/tickets", params={"queue_id": queue}, headers=headers))
        assert listed["data"] == []
        assert listed["pagination"]["total"] == 0
        counted = ok(await client.post("/v1/tickets/count", json={"queue_id": queue}, headers=headers))
        assert counted == {"count": 0}
        types = ok(await client.get("/v1/type-definitions", params={"limit": 100}, headers=headers))
        assert order not in {row["id"] for row in types["data"]}
        queues = ok(await client.get("/v1/queues", headers=headers))
        assert queue not in {row["id"] for row in queues["data"]}

    # B's ids given inside A's bodies are refused as if they did not exist.
    my_queue, my_order = mine["queue"]["id"], mine["order"]["id"]
    FSM = FOOD_ORDER_FSM
    refusals = [
        ("/v1/tickets", {"queue_id": queue, "type_definition_id": my_order}, 404, "not_found"),
        ("/v1/tickets", {"queue_id": my_queue, "type_definition_id": order}, 400, "validation_error"),
        (
            "/v1/tickets",
            {"queue_id": my_queue, "type_definition_id": my_order, "references_ticket_id": ticket},
            400,
            "validation_error",
        ),
        ("/v1/queues", {"name": "X", "allowed_type_definition_ids": [order]}, 400, "validation_error"),
        (
            "/v1/type-definitions",
            {"type_code": "combo", "type_name": "C", "fsm_schema": FSM, "item_definition_ids": [drink]},
            400,
            "validation_error",
        ),
        (f"/v1/tickets/{mine['ticket']['id']}/items", {"item_type_definition_id": drink}, 400, None),
    ]  # fmt: skip
    a_before = await state_of(db, a.id)
    for path, body, status, code in refusals:
        response = await client.post(path, json=body, headers=a.h)
        assert response.status_code == status, (path, response.text)
        if code:
            assert response.json()["error"] == code
    assert await state_of(db, a.id) == a_before
    assert await state_of(db, b.id) == before


async def test_twenty_concurrent_transitions_on_one_ticket(client: httpx.AsyncClient, api: Api) -> None:
    t, made = await shop(client, api)
    ticket_id = made["ticket"]["id"]
    names = ["start_preparation", "cancel", "mark_ready", "pickup"] * 5
    responses = await asyncio.gather(
        *(
            client.post(f"/v1/tickets/{ticket_id}/transition", json={"transition": name}, headers=t.h)
            for name in names
        )
    )
    succeeded = [r.json() for r in responses if r.status_code == 200]
    for response in responses:
        if response.status_code != 200:
            assert_error(response, 400, "invalid_transition")
    history = await t.get(f"/v1/tickets/{ticket_id}/history")
    assert_chain(history)
    # Each success moved from the state the previous success left: the history is exactly the successes.
    ordered = sorted(succeeded, key=lambda s: s["version"])
    assert [h["transition"] for h in history[1:]] == [transition_of(s) for s in ordered]
    assert [h["new_state"] for h in history[1:]] == [s["current_state"] for s in ordered]
    assert len(history) == len(succeeded) + 1
    final = await t.get(f"/v1/tickets/{ticket_id}")
    assert final["current_state"] == history[-1]["new_state"]
    assert final["version"] == 1 + len(succeeded)
    assert final["current_state"] in ("cancelled", "picked_up", "ready", "in_progress")
    versions = sorted(s["version"] for s in succeeded)
    assert versions == list(range(2, 2 + len(succeeded)))  # no two successes saw the same version


def transition_of(ticket: dict[str, Any]) -> str:
    moves = {
        ("received", "in_progress"): "start_preparation",
        ("received", "cancelled"): "cancel",
        ("in_progress", "cancelled"): "cancel",
        ("in_progress", "ready"): "mark_ready",
        ("ready", "picked_up"): "pickup",
    }
    return moves[(ticket["previous_state"], ticket["current_state"])]


async def test_two_hundred_concurrent_creates(client: httpx.AsyncClient, api: Api) -> None:
    t, made = await shop(client, api)
    first_queue = await t.queue("Rush", ticket_prefix="R")
    second_queue = await t.queue("Other", ticket_prefix="O")
    order = made["order"]["id"]
    jobs = [t.ticket(first_queue["id"], order) for _ in range(200)]
    jobs += [t.ticket(second_queue["id"], order) for _ in range(30)]
    created = await asyncio.gather(*jobs)
    rush = [c for c in created if c["queue_id"] == first_queue["id"]]
    other = [c for c in created if c["queue_id"] == second_queue["id"]]
    assert sorted(c["number"] for c in rush) == list(range(1, 201))
    assert sorted(c["number"] for c in other) == list(range(1, 31))  # each queue counts on its own
    assert len({c["display_code"] for c in rush}) == 200
    assert {c["display_code"] for c in rush} == {f"R{n:03d}" for n in range(1, 201)}
    # Each creator was told a position; the line is 1..200 in number order.
    assert sorted(c["position"] for c in rush) == list(range(1, 201))
    line = await t.all_pages(f"/v1/queues/{first_queue['id']}/tickets")
    assert [row["number"] for row in line] == list(range(1, 201))
    assert [row["position"] for row in line] == list(range(1, 201))
    for c in rush:
        assert c["position"] == c["number"]


async def test_display_keys_get_no_personal_data(client: httpx.AsyncClient, api: Api) -> None:
    t, made = await shop(client, api)
    customer = ok(
        await client.post(
            "/v1/customers", json={"fname": "Jo", "lname": "Ray", "email": "jo@example.com"}, headers=t.h
        ),
        201,
    )
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "Em", "lname": "P", "email": "em@example.com"}, headers=t.h
        ),
        201,
    )
    ticket = await t.ticket(
        made["queue"]["id"], made["order"]["id"], customer_id=customer["id"], custom_data={"note": "allergy"}
    )
    ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/assign", json={"employee_id": employee["id"]}, headers=t.h
        )
    )
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    as_display = ok(await client.get(f"/v1/queues/{made['queue']['id']}/tickets", headers=auth(display)))
    as_staff = ok(await client.get(f"/v1/queues/{made['queue']['id']}/tickets", headers=auth(staff)))
    shown = {row["id"]: row for row in as_display["data"]}[ticket["id"]]
    assert (shown["customer_id"], shown["employee_id"], shown["custom_data"]) == (None, None, {})
    full = {row["id"]: row for row in as_staff["data"]}[ticket["id"]]
    assert (full["customer_id"], full["employee_id"], full["custom_data"]) == (
        customer["id"],
        employee["id"],
        {"note": "allergy"},
    )
    for method, path, body in (
        ("POST", "/v1/tickets", {"queue_id": made["queue"]["id"], "type_definition_id": made["order"]["id"]}),
        ("POST", f"/v1/tickets/{ticket['id']}/transition", {"transition": "start_preparation"}),
        ("GET", f"/v1/tickets/{ticket['id']}", None),
        ("GET", "/v1/tickets", None),
        ("GET", f"/v1/customers/{customer['id']}", None),
    ):
        assert_error(await client.request(method, path, json=body, headers=auth(display)), 403, "forbidden")


async def test_a_committed_transition_is_not_reported_as_an_error(
    client: httpx.AsyncClient, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transition commits with its single statement; if its live estimate then cannot be computed (the
    database went away a moment later), the answer is still the change, without an estimate, not a 503 that
    would make the client repeat a change that stands."""
    from virtualq.tickets import service

    t, made = await shop(client, api)
    ticket_id = made["ticket"]["id"]

    async def unavailable(*_: Any) -> Any:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(service, "annotated", unavailable)
    response = await client.post(
        f"/v1/tickets/{ticket_id}/transition", json={"transition": "start_preparation"}, headers=t.h
    )
    monkeypatch.undo()
    body = ok(response)
    assert (body["current_state"], body["estimated_wait_minutes"]) == ("in_progress", None)
    stored = await t.get(f"/v1/tickets/{ticket_id}")
    assert (stored["current_state"], stored["version"]) == ("in_progress", body["version"])
    history = await t.get(f"/v1/tickets/{ticket_id}/history")
    assert [h["transition"] for h in history[1:]] == ["start_preparation"]
