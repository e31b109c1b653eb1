"""Ticket flows end to end through the API (PRODUCT §1-§3): types, queues, tickets, items, history.

Every test builds its own account and tenant, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.helpers import Api, assert_error, auth

# --- state machines ---------------------------------------------------------------------------------------

FOOD_ORDER_FSM: dict[str, Any] = {
    "init": "received",
    "states": ["received", "in_progress", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start_preparation", "from": "received", "to": "in_progress"},
        {"name": "mark_ready", "from": "in_progress", "to": "ready"},
        {"name": "pickup", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "in_progress"], "to": "cancelled"},
    ],
    "categories": {"ready": "ready"},
}

DRINK_FSM: dict[str, Any] = {
    "init": "pending",
    "states": ["pending", "in_progress", "completed"],
    "transitions": [
        {"name": "start", "from": "pending", "to": "in_progress"},
        {"name": "complete", "from": "in_progress", "to": "completed"},
        {"name": "rework", "from": "completed", "to": "in_progress"},
    ],
    # "completed" has an exit (rework), so it would be inferred in_service; declare it done.
    "categories": {"completed": "done"},
}

DMV_FSM: dict[str, Any] = {
    "init": "submitted",
    "states": ["submitted", "documents_verified", "fee_paid", "plates_issued", "cancelled"],
    "transitions": [
        {"name": "verify", "from": "submitted", "to": "documents_verified"},
        {"name": "reject", "from": "documents_verified", "to": "submitted"},
        {"name": "pay", "from": "documents_verified", "to": "fee_paid"},
        {"name": "issue", "from": "fee_paid", "to": "plates_issued"},
        {"name": "cancel", "from": ["submitted", "documents_verified", "fee_paid"], "to": "cancelled"},
    ],
}

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["customer_name"],
    "properties": {
        "customer_name": {"type": "string", "maxLength": 40},
        "channel": {"enum": ["counter", "drive_thru"]},
    },
}


# --- helpers ----------------------------------------------------------------------------------------------


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


class Tenant:
    """A fresh account + tenant and a tenant admin key, with shortcuts for the calls the flows make."""

    def __init__(self, client: httpx.AsyncClient, world: Any) -> None:
        self.client = client
        self.world = world
        self.id: str = world.tenant_id
        self.h = auth(world.tenant_admin)

    @classmethod
    async def create(cls, client: httpx.AsyncClient, api: Api) -> Tenant:
        return cls(client, await api.world())

    async def type(self, code: str, fsm: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
        body = {"type_code": code, "type_name": code.replace("_", " ").title(), "fsm_schema": fsm, **fields}
        return ok(await self.client.post("/v1/type-definitions", json=body, headers=self.h), 201)

    async def queue(self, name: str = "Main", **fields: Any) -> dict[str, Any]:
        return ok(await self.client.post("/v1/queues", json={"name": name, **fields}, headers=self.h), 201)

    async def ticket(self, queue_id: str, type_id: str, **fields: Any) -> dict[str, Any]:
        body = {"queue_id": queue_id, "type_definition_id": type_id, **fields}
        return ok(await self.client.post("/v1/tickets", json=body, headers=self.h), 201)

    async def get(self, path: str, **params: Any) -> Any:
        return ok(await self.client.get(path, params=params, headers=self.h))

    async def move(self, ticket_id: str, transition: str, **fields: Any) -> dict[str, Any]:
        body = {"transition": transition, **fields}
        return ok(await self.client.post(f"/v1/tickets/{ticket_id}/transition", json=body, headers=self.h))

    async def move_item(self, item_id: str, transition: str, **fields: Any) -> dict[str, Any]:
        body = {"transition": transition, **fields}
        return ok(await self.client.post(f"/v1/items/{item_id}/transition", json=body, headers=self.h))

    async def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self.get(path, page=page, limit=100, **params)
            rows.extend(body["data"])
            if page >= body["pagination"]["total_pages"]:
                return rows
            page += 1


async def coffee(client: httpx.AsyncClient, api: Api) -> tuple[Tenant, str, str]:
    """A fresh tenant with the food-order type and one queue: (tenant, queue id, type id)."""
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Main")
    return t, queue["id"], order["id"]


async def ticket_rows(db: asyncpg.Connection, tenant_id: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(tenant_id))
    return count


def assert_chain(history: list[dict[str, Any]]) -> None:
    """Each entry's previous_state is the prior entry's new_state; the first has none."""
    assert history[0]["previous_state"] is None
    for before, after in itertools.pairwise(history):
        assert after["previous_state"] == before["new_state"], history
        assert ts(after["created_at"]) >= ts(before["created_at"])


# --- 1. coffee shop ---------------------------------------------------------------------------------------


async def test_coffee_shop_order_end_to_end(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    drink = await t.type("drink", DRINK_FSM)
    assert drink["state_categories"] == {
        "pending": "waiting",
        "in_progress": "in_service",
        "completed": "done",
    }
    order_type = await t.type(
        "food_order", FOOD_ORDER_FSM, custom_fields_schema=ORDER_SCHEMA, item_definition_ids=[drink["id"]]
    )
    assert order_type["item_definition_ids"] == [drink["id"]]
    assert order_type["state_categories"] == {
        "received": "waiting",
        "in_progress": "in_service",
        "ready": "ready",
        "picked_up": "done",
        "cancelled": "cancelled",
    }
    queue = await t.queue("Counter", ticket_prefix="A")

    custom = {"customer_name": "John Smith", "channel": "counter"}
    order = await t.ticket(queue["id"], order_type["id"], custom_data=custom)
    assert order["number"] == 1
    assert order["display_code"] == "A001"
    assert order["position"] == 1
    assert order["current_state"] == "received"
    assert order["state_category"] == "waiting"
    assert order["custom_data"] == custom
    assert order["tenant_id"] == t.id
    assert order["queue_id"] == queue["id"]
    assert order["type_definition_id"] == order_type["id"]
    for field in ("started_at", "ready_at", "completed_at", "cancelled_at", "actual_wait_minutes"):
        assert order[field] is None, field
    assert uuid.UUID(order["id"]).version == 7

    latte = ok(
        await client.post(
            f"/v1/tickets/{order['id']}/items",
            json={
                "item_type_definition_id": drink["id"],
                "external_item_id": "sku-latte",
                "external_item_name": "Latte",
                "quantity": 2,
                "unit_price": "4.50",
            },
            headers=t.h,
        ),
        201,
    )
    mocha = ok(
        await client.post(
            f"/v1/tickets/{order['id']}/items",
            json={"item_type_definition_id": drink["id"], "external_item_name": "Mocha"},
            headers=t.h,
        ),
        201,
    )
    assert latte["current_state"] == "pending"
    assert latte["quantity"] == 2
    assert latte["unit_price"] == "4.50"
    assert latte["ticket_id"] == order["id"]
    assert mocha["quantity"] == 1
    assert latte["started_at"] is None
    assert latte["completed_at"] is None
    listed = await t.get(f"/v1/tickets/{order['id']}/items")
    assert ids(listed) == [latte["id"], mocha["id"]]

    # The items move on their own machine.
    moved = await t.move_item(latte["id"], "start", notes="steaming milk")
    assert moved["previous_state"] == "pending"
    assert moved["current_state"] == "in_progress"
    assert moved["started_at"] is not None
    moved = await t.move_item(latte["id"], "complete")
    assert moved["current_state"] == "completed"
    assert moved["completed_at"] is not None
    await t.move_item(mocha["id"], "start")
    moved = await t.move_item(mocha["id"], "complete", notes="extra foam")
    assert moved["current_state"] == "completed"

    # The ticket: received -> in_progress -> ready -> picked_up.
    started = await t.move(order["id"], "start_preparation", notes="barista Ana")
    assert started["previous_state"] == "received"
    assert started["current_state"] == "in_progress"
    assert started["state_category"] == "in_service"
    assert started["started_at"] is not None
    assert started["actual_wait_minutes"] == 0
    assert started["position"] is None
    assert started["version"] == order["version"] + 1
    fetched = await t.get(f"/v1/tickets/{order['id']}")
    assert fetched["current_state"] == "in_progress"
    assert fetched["position"] is None
    assert fetched["started_at"] == started["started_at"]

    ready = await t.move(order["id"], "mark_ready")
    assert ready["previous_state"] == "in_progress"
    assert ready["state_category"] == "ready"
    assert ready["ready_at"] is not None
    assert ready["completed_at"] is None
    assert ready["started_at"] == started["started_at"]

    done = await t.move(order["id"], "pickup", notes="picked up by John")
    assert done["current_state"] == "picked_up"
    assert done["state_category"] == "done"
    assert done["completed_at"] is not None
    assert done["cancelled_at"] is None
    assert done["position"] is None
    assert (
        ts(order["created_at"]) <= ts(done["started_at"]) <= ts(done["ready_at"]) <= ts(done["completed_at"])
    )
    assert done["display_code"] == "A001"
    assert done["number"] == 1

    # An item can be reworked after the order was picked up; the ticket does not change.
    reworked = await t.move_item(latte["id"], "rework", notes="too cold")
    assert reworked["previous_state"] == "completed"
    assert reworked["current_state"] == "in_progress"
    after = await t.get(f"/v1/tickets/{order['id']}")
    assert after["current_state"] == "picked_up"
    assert after["version"] == done["version"]
    assert after["updated_at"] == done["updated_at"]

    history = await t.get(f"/v1/tickets/{order['id']}/history")
    assert [(e["previous_state"], e["new_state"]) for e in history] == [
        (None, "received"),
        ("received", "in_progress"),
        ("in_progress", "ready"),
        ("ready", "picked_up"),
    ]
    assert [e["transition"] for e in history] == [None, "start_preparation", "mark_ready", "pickup"]
    assert [e["notes"] for e in history] == [None, "barista Ana", None, "picked up by John"]
    assert {e["ticket_id"] for e in history} == {order["id"]}
    assert_chain(history)

    latte_history = await t.get(f"/v1/items/{latte['id']}/history")
    assert [(e["previous_state"], e["new_state"], e["transition"], e["notes"]) for e in latte_history] == [
        (None, "pending", None, None),
        ("pending", "in_progress", "start", "steaming milk"),
        ("in_progress", "completed", "complete", None),
        ("completed", "in_progress", "rework", "too cold"),
    ]
    assert {e["item_id"] for e in latte_history} == {latte["id"]}
    assert_chain(latte_history)
    mocha_history = await t.get(f"/v1/items/{mocha['id']}/history")
    assert [(e["previous_state"], e["new_state"], e["notes"]) for e in mocha_history] == [
        (None, "pending", None),
        ("pending", "in_progress", None),
        ("in_progress", "completed", "extra foam"),
    ]
    items = await t.get(f"/v1/tickets/{order['id']}/items")
    assert {i["id"]: i["current_state"] for i in items} == {
        latte["id"]: "in_progress",
        mocha["id"]: "completed",
    }


# --- 2. DMV registration ----------------------------------------------------------------------------------


async def test_dmv_registration_with_rejection_and_cancel(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    reg_type = await t.type("registration", DMV_FSM)
    fetched_type = await t.get(f"/v1/type-definitions/{reg_type['id']}")
    assert fetched_type["state_categories"] == {
        "submitted": "waiting",
        "documents_verified": "in_service",
        "fee_paid": "in_service",
        "plates_issued": "done",
        "cancelled": "cancelled",
    }
    queue = await t.queue("Registrations", ticket_prefix="R")

    reg = await t.ticket(queue["id"], reg_type["id"])
    assert reg["current_state"] == "submitted"
    assert reg["display_code"] == "R001"
    verified = await t.move(reg["id"], "verify", notes="documents complete")
    assert verified["state_category"] == "in_service"
    assert verified["started_at"] is not None
    assert verified["position"] is None

    rejected = await t.move(reg["id"], "reject", notes="validation error and resubmit")
    assert rejected["previous_state"] == "documents_verified"
    assert rejected["current_state"] == "submitted"
    assert rejected["state_category"] == "waiting"
    assert rejected["position"] == 1
    # started_at is set the first time the ticket leaves waiting, and kept.
    assert rejected["started_at"] == verified["started_at"]

    again = await t.move(reg["id"], "verify")
    assert again["started_at"] == verified["started_at"]
    paid = await t.move(reg["id"], "pay", notes="card")
    assert paid["current_state"] == "fee_paid"
    assert paid["state_category"] == "in_service"
    issued = await t.move(reg["id"], "issue")
    assert issued["current_state"] == "plates_issued"
    assert issued["state_category"] == "done"
    assert issued["completed_at"] is not None
    assert issued["cancelled_at"] is None

    history = await t.get(f"/v1/tickets/{reg['id']}/history")
    assert [(e["previous_state"], e["new_state"], e["transition"]) for e in history] == [
        (None, "submitted", None),
        ("submitted", "documents_verified", "verify"),
        ("documents_verified", "submitted", "reject"),
        ("submitted", "documents_verified", "verify"),
        ("documents_verified", "fee_paid", "pay"),
        ("fee_paid", "plates_issued", "issue"),
    ]
    assert [e["notes"] for e in history] == [
        None,
        "documents complete",
        "validation error and resubmit",
        None,
        "card",
        None,
    ]
    assert_chain(history)

    # A second registration, cancelled through DELETE.
    second = await t.ticket(queue["id"], reg_type["id"])
    assert second["number"] == 2
    assert second["position"] == 1  # the first one is no longer waiting
    cancelled = ok(await client.delete(f"/v1/tickets/{second['id']}", headers=t.h))
    assert cancelled["id"] == second["id"]
    assert cancelled["current_state"] == "cancelled"
    assert cancelled["state_category"] == "cancelled"
    assert cancelled["previous_state"] == "submitted"
    assert cancelled["cancelled_at"] is not None
    assert cancelled["completed_at"] is None
    assert cancelled["position"] is None
    still = await t.get(f"/v1/tickets/{second['id']}")
    assert still["current_state"] == "cancelled"
    assert still["cancelled_at"] == cancelled["cancelled_at"]
    second_history = await t.get(f"/v1/tickets/{second['id']}/history")
    assert [(e["previous_state"], e["new_state"], e["transition"]) for e in second_history] == [
        (None, "submitted", None),
        ("submitted", "cancelled", "cancel"),
    ]

    # No transition leads from plates_issued (or from cancelled) into a cancelled state.
    for ticket_id, state in ((reg["id"], "plates_issued"), (second["id"], "cancelled")):
        response = await client.delete(f"/v1/tickets/{ticket_id}", headers=t.h)
        body = assert_error(response, 400, "invalid_transition")
        assert body["details"]["current_state"] == state
        assert body["details"]["valid_transitions"] == []
    unchanged = await t.get(f"/v1/tickets/{reg['id']}")
    assert unchanged["current_state"] == "plates_issued"
    assert unchanged["version"] == issued["version"]
    assert len(await t.get(f"/v1/tickets/{reg['id']}/history")) == 6


# --- 3. numbers and positions -----------------------------------------------------------------------------


async def test_numbers_and_positions(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    order_type = await t.type("food_order", FOOD_ORDER_FSM)
    queue = await t.queue("Main", ticket_prefix="A")
    first, second, third = [await t.ticket(queue["id"], order_type["id"]) for _ in range(3)]
    assert [x["number"] for x in (first, second, third)] == [1, 2, 3]
    assert [x["display_code"] for x in (first, second, third)] == ["A001", "A002", "A003"]
    assert [x["position"] for x in (first, second, third)] == [1, 2, 3]

    await t.move(first["id"], "start_preparation")
    assert (await t.get(f"/v1/tickets/{first['id']}"))["position"] is None
    assert (await t.get(f"/v1/tickets/{second['id']}"))["position"] == 1
    assert (await t.get(f"/v1/tickets/{third['id']}"))["position"] == 2

    line = await t.get(f"/v1/queues/{queue['id']}/tickets")
    assert ids(line["data"]) == [second["id"], third["id"], first["id"]]
    assert [x["position"] for x in line["data"]] == [1, 2, None]
    assert [x["state_category"] for x in line["data"]] == ["waiting", "waiting", "in_service"]
    assert line["pagination"]["total"] == 3

    # A fourth ticket joins the end of the line; terminal tickets leave the queue listing.
    fourth = await t.ticket(queue["id"], order_type["id"])
    assert fourth["number"] == 4
    assert fourth["position"] == 3
    await t.move(first["id"], "mark_ready")
    await t.move(first["id"], "pickup")
    ok(await client.delete(f"/v1/tickets/{second['id']}", headers=t.h))
    line = await t.get(f"/v1/queues/{queue['id']}/tickets")
    assert ids(line["data"]) == [third["id"], fourth["id"]]
    assert [x["position"] for x in line["data"]] == [1, 2]
    assert line["pagination"]["total"] == 2

    # Numbers are per queue; an empty prefix gives a bare zero-padded code.
    other = await t.queue("Drive-thru", ticket_prefix="")
    assert other["ticket_prefix"] == ""
    elsewhere = await t.ticket(other["id"], order_type["id"])
    assert elsewhere["number"] == 1
    assert elsewhere["display_code"] == "001"
    assert elsewhere["position"] == 1
    assert (await t.get(f"/v1/tickets/{fourth['id']}"))["position"] == 2
    next_here = await t.ticket(queue["id"], order_type["id"])
    assert next_here["number"] == 5
    assert next_here["display_code"] == "A005"
    assert next_here["position"] == 3


# --- 4. ttl, PATCH ----------------------------------------------------------------------------------------


async def test_display_codes_past_999_keep_every_digit(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """ "A042" is padded to three digits; ticket 1000 was "A100" (PostgreSQL's lpad cuts a longer text to
    the width), the same code as ticket 100 of the day. Also when creates arriving together share one
    statement."""
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Busy", ticket_prefix="A")
    assert (await t.ticket(queue["id"], order["id"]))["display_code"] == "A001"
    await db.execute(
        "UPDATE queue_day_counters SET last_number = 998 WHERE queue_id = $1", uuid.UUID(queue["id"])
    )
    made = await asyncio.gather(*(t.ticket(queue["id"], order["id"]) for _ in range(4)))
    assert sorted((m["number"], m["display_code"]) for m in made) == [
        (999, "A999"),
        (1000, "A1000"),
        (1001, "A1001"),
        (1002, "A1002"),
    ]
    await db.execute(
        "UPDATE queue_day_counters SET last_number = 123455 WHERE queue_id = $1", uuid.UUID(queue["id"])
    )
    assert (await t.ticket(queue["id"], order["id"]))["display_code"] == "A123456"


async def test_ttl_and_ticket_updates(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    order_type = await t.type("food_order", FOOD_ORDER_FSM, custom_fields_schema=ORDER_SCHEMA)
    queue = await t.queue()

    plain = await t.ticket(queue["id"], order_type["id"], custom_data={"customer_name": "Kim"})
    assert plain["ttl_minutes"] is None
    assert plain["expires_at"] is None

    ticket = await t.ticket(
        queue["id"],
        order_type["id"],
        custom_data={"customer_name": "Ann", "channel": "counter"},
        ttl_minutes=30,
        estimated_wait_minutes=7,
    )
    created = ts(ticket["created_at"])
    assert ticket["ttl_minutes"] == 30
    assert abs(ts(ticket["expires_at"]) - (created + timedelta(minutes=30))) < timedelta(seconds=2)
    assert ticket["estimated_wait_minutes"] == 7
    assert ticket["original_estimated_wait_minutes"] == 7

    path = f"/v1/tickets/{ticket['id']}"
    patched = ok(await client.patch(path, json={"ttl_minutes": 90}, headers=t.h))
    assert patched["ttl_minutes"] == 90
    assert abs(ts(patched["expires_at"]) - (created + timedelta(minutes=90))) < timedelta(seconds=2)
    assert patched["custom_data"] == ticket["custom_data"]
    assert patched["version"] == ticket["version"] + 1

    bad = await client.patch(path, json={"custom_data": {"channel": "phone"}}, headers=t.h)
    body = assert_error(bad, 400, "validation_error")
    problems = body["details"]["custom_data"]
    assert {p["validator"] for p in problems} == {"required", "enum"}
    stored = await t.get(path)
    assert stored["custom_data"] == {"customer_name": "Ann", "channel": "counter"}
    assert stored["version"] == patched["version"]

    good = ok(
        await client.patch(
            path, json={"custom_data": {"customer_name": "Ann B.", "channel": "drive_thru"}}, headers=t.h
        )
    )
    assert good["custom_data"] == {"customer_name": "Ann B.", "channel": "drive_thru"}
    assert good["ttl_minutes"] == 90

    estimated = ok(await client.patch(path, json={"estimated_wait_minutes": 12}, headers=t.h))
    assert estimated["estimated_wait_minutes"] == 12
    assert estimated["original_estimated_wait_minutes"] == 7
    assert estimated["custom_data"] == good["custom_data"]
    assert (await t.get(path))["estimated_wait_minutes"] == 12

    # PUT means the same partial update.
    put = ok(await client.put(path, json={"ttl_minutes": 5}, headers=t.h))
    assert put["ttl_minutes"] == 5
    assert put["estimated_wait_minutes"] == 12
    assert put["custom_data"] == good["custom_data"]
    assert abs(ts(put["expires_at"]) - (created + timedelta(minutes=5))) < timedelta(seconds=2)

    # Out-of-range values are refused and change nothing.
    for change in ({"ttl_minutes": 0}, {"estimated_wait_minutes": -1}, {"custom_data": None}):
        assert_error(await client.patch(path, json=change, headers=t.h), 400, "validation_error")
    final = await t.get(path)
    assert final["version"] == put["version"]
    assert final["ttl_minutes"] == 5


# --- 5. list filters and count ----------------------------------------------------------------------------


async def test_list_filters_and_count(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    type_one = await t.type("food_order", FOOD_ORDER_FSM)
    type_two = await t.type("drink_order", FOOD_ORDER_FSM)
    q1 = await t.queue("Counter", ticket_prefix="C")
    q2 = await t.queue("Drive-thru", ticket_prefix="D")
    customer = ok(
        await client.post("/v1/customers", json={"fname": "John", "lname": "Smith"}, headers=t.h), 201
    )
    employee = ok(
        await client.post(
            "/v1/employees",
            json={"fname": "Ana", "lname": "Lopez", "email": f"ana-{uuid.uuid4().hex[:6]}@example.com"},
            headers=t.h,
        ),
        201,
    )

    a = await t.ticket(q1["id"], type_one["id"], customer_id=customer["id"], ttl_minutes=10)
    b = await t.ticket(q1["id"], type_two["id"])
    c = await t.ticket(q2["id"], type_one["id"])
    d = await t.ticket(q2["id"], type_two["id"])
    assert a["customer_id"] == customer["id"]
    moved = await t.move(c["id"], "start_preparation", employee_id=employee["id"])
    assert moved["employee_id"] == employee["id"]
    ok(await client.delete(f"/v1/tickets/{d['id']}", headers=t.h))
    # Another tenant's tickets never appear.
    other = await Tenant.create(client, api)
    other_type = await other.type("food_order", FOOD_ORDER_FSM)
    await other.ticket((await other.queue())["id"], other_type["id"])

    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    cases: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        ({}, [a, b, c, d]),
        ({"queue_id": q1["id"]}, [a, b]),
        ({"queue_id": q2["id"]}, [c, d]),
        ({"current_state": "received"}, [a, b]),
        ({"current_state": "in_progress"}, [c]),
        ({"current_state": "cancelled"}, [d]),
        ({"current_state": "picked_up"}, []),
        ({"state_category": "waiting"}, [a, b]),
        ({"state_category": "in_service"}, [c]),
        ({"state_category": "cancelled"}, [d]),
        ({"state_category": "done"}, []),
        ({"type_definition_id": type_one["id"]}, [a, c]),
        ({"type_definition_id": type_two["id"]}, [b, d]),
        ({"customer_id": customer["id"]}, [a]),
        ({"employee_id": employee["id"]}, [c]),
        ({"created_after": a["created_at"]}, [b, c, d]),
        ({"created_before": d["created_at"]}, [a, b, c]),
        ({"created_after": a["created_at"], "created_before": d["created_at"]}, [b, c]),
        ({"expires_before": soon}, [a]),
        ({"expires_before": a["created_at"]}, []),
        ({"queue_id": q1["id"], "type_definition_id": type_one["id"]}, [a]),
        ({"queue_id": q2["id"], "state_category": "waiting"}, []),
        ({"customer_id": str(uuid.uuid4())}, []),
    ]
    for filters, expected in cases:
        listed = await t.get("/v1/tickets", limit=100, **filters)
        assert sorted(ids(listed["data"])) == sorted(ids(expected)), filters
        assert listed["pagination"]["total"] == len(expected), filters
        counted = ok(await client.post("/v1/tickets/count", json=filters, headers=t.h))
        assert counted == {"count": len(expected)}, filters

    # Lists are ordered by creation and paginated.
    first_page = await t.get("/v1/tickets", limit=3)
    assert ids(first_page["data"]) == ids([a, b, c])
    assert first_page["pagination"] == {"page": 1, "limit": 3, "total": 4, "total_pages": 2}
    second_page = await t.get("/v1/tickets", limit=3, page=2)
    assert ids(second_page["data"]) == [d["id"]]


# --- 6. type definitions ----------------------------------------------------------------------------------


async def test_system_types_are_shared_and_read_only(client: httpx.AsyncClient, api: Api) -> None:
    code = f"sys_{uuid.uuid4().hex[:8]}"
    admin = auth(api.admin_key)
    system = ok(
        await client.post(
            "/v1/type-definitions",
            json={
                "type_code": code,
                "type_name": "Shared order",
                "fsm_schema": FOOD_ORDER_FSM,
                "is_system_defined": True,
            },
            headers=admin,
        ),
        201,
    )
    assert system["tenant_id"] is None
    assert system["is_system_defined"] is True

    first = await Tenant.create(client, api)
    second = await Tenant.create(client, api)
    for tenant in (first, second):
        visible = await tenant.all_pages("/v1/type-definitions")
        assert system["id"] in ids(visible)
        own_only = await tenant.all_pages("/v1/type-definitions", include_system="false")
        assert system["id"] not in ids(own_only)
        assert (await tenant.get(f"/v1/type-definitions/{system['id']}"))["type_code"] == code

    # Usable for tickets (a queue without an allow-list allows system types).
    queue = await first.queue()
    ticket = await first.ticket(queue["id"], system["id"])
    assert ticket["type_definition_id"] == system["id"]
    assert ticket["current_state"] == "received"
    allowing = await second.queue("Allowing", allowed_type_definition_ids=[system["id"]])
    assert (await second.ticket(allowing["id"], system["id"]))["number"] == 1

    # Read-only to tenant keys, even tenant admins.
    path = f"/v1/type-definitions/{system['id']}"
    assert_error(await client.patch(path, json={"type_name": "Mine now"}, headers=first.h), 403, "forbidden")
    assert_error(await client.delete(path, headers=first.h), 403, "forbidden")
    unchanged = ok(await client.get(path, headers=first.h))
    assert unchanged["type_name"] == "Shared order"
    assert unchanged["is_active"] is True
    # Only platform admins create system types.
    response = await client.post(
        "/v1/type-definitions",
        json={
            "type_code": f"sys_{uuid.uuid4().hex[:8]}",
            "type_name": "X",
            "fsm_schema": FOOD_ORDER_FSM,
            "is_system_defined": True,
        },
        headers=first.h,
    )
    assert_error(response, 403, "forbidden")
    # System codes are unique among system types.
    duplicate = await client.post(
        "/v1/type-definitions",
        json={
            "type_code": code,
            "type_name": "Again",
            "fsm_schema": FOOD_ORDER_FSM,
            "is_system_defined": True,
        },
        headers=admin,
    )
    assert_error(duplicate, 409, "conflict")
    # The platform admin may change a system type.
    renamed = ok(await client.patch(path, json={"type_name": "Shared order v2"}, headers=admin))
    assert renamed["type_name"] == "Shared order v2"


async def test_type_code_unique_per_tenant(client: httpx.AsyncClient, api: Api) -> None:
    first = await Tenant.create(client, api)
    second = await Tenant.create(client, api)
    original = await first.type("order", FOOD_ORDER_FSM)
    again = await client.post(
        "/v1/type-definitions",
        json={"type_code": "order", "type_name": "Order again", "fsm_schema": DMV_FSM},
        headers=first.h,
    )
    body = assert_error(again, 409, "conflict")
    assert body["details"] == {"field": "type_code"}
    listed = await first.all_pages("/v1/type-definitions", include_system="false")
    assert ids(listed) == [original["id"]]
    elsewhere = await second.type("order", DMV_FSM)
    assert elsewhere["tenant_id"] == second.id
    assert elsewhere["id"] != original["id"]
    # Another tenant's type is invisible (404) and cannot be used.
    assert_error(
        await client.get(f"/v1/type-definitions/{original['id']}", headers=second.h), 404, "not_found"
    )
    queue = await second.queue()
    response = await client.post(
        "/v1/tickets", json={"queue_id": queue["id"], "type_definition_id": original["id"]}, headers=second.h
    )
    assert_error(response, 400, "validation_error")
    # Bad codes are refused.
    for bad_code in ("Order", "1order", "order-x", "o" * 33, ""):
        response = await client.post(
            "/v1/type-definitions",
            json={"type_code": bad_code, "type_name": "Bad", "fsm_schema": FOOD_ORDER_FSM},
            headers=first.h,
        )
        assert_error(response, 400, "validation_error")


async def test_invalid_type_definitions_list_every_problem(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    long_state = "s" * 33
    broken = {
        "init": "start",
        "states": ["received", "done", "received", long_state],
        "transitions": [
            {"name": "go", "from": "nowhere", "to": "done"},
            {"name": "go2", "from": "received", "to": "elsewhere"},
        ],
        "categories": {"done": "finished"},
    }

    async def problems_of(fsm: dict[str, Any]) -> list[str]:
        response = await client.post(
            "/v1/type-definitions",
            json={"type_code": "broken", "type_name": "Broken", "fsm_schema": fsm},
            headers=t.h,
        )
        body = assert_error(response, 400, "validation_error")
        found: list[str] = body["details"]["fsm_schema"]
        assert isinstance(found, list)
        return found

    found = "\n".join(await problems_of(broken))
    for expected in (
        "init 'start' is not one of the states",
        "state 'received' is listed twice",
        "at most 32 characters",
        "from 'nowhere' is not a state",
        "to 'elsewhere' is not a state",
        "'finished' for 'done' is not one of",
    ):
        assert expected in found, found

    duplicate_name = copy.deepcopy(FOOD_ORDER_FSM)
    duplicate_name["transitions"].append({"name": "mark_ready", "from": "in_progress", "to": "cancelled"})
    assert any("mark_ready" in p and "in_progress" in p for p in await problems_of(duplicate_name))
    unknown_category_state = copy.deepcopy(FOOD_ORDER_FSM)
    unknown_category_state["categories"] = {"served": "done"}
    assert any("served" in p for p in await problems_of(unknown_category_state))
    response = await client.post(
        "/v1/type-definitions",
        json={
            "type_code": "bad_schema",
            "type_name": "Bad",
            "fsm_schema": FOOD_ORDER_FSM,
            "custom_fields_schema": {"type": "nonsense"},
        },
        headers=t.h,
    )
    body = assert_error(response, 400, "validation_error")
    assert body["details"]["custom_fields_schema"]
    assert "fsm_schema" not in body["details"]

    response = await client.post(
        "/v1/type-definitions",
        json={
            "type_code": "bad_items",
            "type_name": "Bad",
            "fsm_schema": FOOD_ORDER_FSM,
            "item_definition_ids": [str(uuid.uuid4())],
        },
        headers=t.h,
    )
    body = assert_error(response, 400, "validation_error")
    assert body["details"]["item_definition_ids"]

    # All three at once are reported together.
    response = await client.post(
        "/v1/type-definitions",
        json={
            "type_code": "bad_all",
            "type_name": "Bad",
            "fsm_schema": broken,
            "custom_fields_schema": {"type": "nonsense"},
            "item_definition_ids": [str(uuid.uuid4())],
        },
        headers=t.h,
    )
    body = assert_error(response, 400, "validation_error")
    assert {"fsm_schema", "custom_fields_schema", "item_definition_ids"} <= set(body["details"])

    # Nothing was stored.
    assert await t.all_pages("/v1/type-definitions", include_system="false") == []


async def test_type_updates_guard_live_states(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    fsm = copy.deepcopy(FOOD_ORDER_FSM)
    fsm["states"].append("on_hold")
    fsm["transitions"].append({"name": "hold", "from": "in_progress", "to": "on_hold"})
    fsm["transitions"].append({"name": "resume", "from": "on_hold", "to": "in_progress"})
    order_type = await t.type("food_order", fsm)
    assert order_type["version"] == 1
    assert order_type["state_categories"]["on_hold"] == "in_service"
    queue = await t.queue()
    ticket = await t.ticket(queue["id"], order_type["id"])
    await t.move(ticket["id"], "start_preparation")
    path = f"/v1/type-definitions/{order_type['id']}"

    # Dropping in_progress (a live ticket is in it) is refused.
    without_in_progress = {
        "init": "received",
        "states": ["received", "ready", "picked_up", "cancelled", "on_hold"],
        "transitions": [
            {"name": "mark_ready", "from": "received", "to": "ready"},
            {"name": "pickup", "from": "ready", "to": "picked_up"},
            {"name": "cancel", "from": "received", "to": "cancelled"},
        ],
    }
    response = await client.patch(path, json={"fsm_schema": without_in_progress}, headers=t.h)
    body = assert_error(response, 409, "conflict")
    assert body["details"]["states_in_use"] == ["in_progress"]
    kept = await t.get(path)
    assert kept["version"] == 1
    assert kept["fsm_schema"] == fsm

    # Dropping the unused on_hold works and bumps the version.
    updated = ok(await client.patch(path, json={"fsm_schema": FOOD_ORDER_FSM}, headers=t.h))
    assert updated["version"] == 2
    assert updated["fsm_schema"] == FOOD_ORDER_FSM
    assert "on_hold" not in updated["state_categories"]
    fetched = await t.get(path)
    assert fetched["version"] == 2
    assert fetched["state_categories"] == {
        "received": "waiting",
        "in_progress": "in_service",
        "ready": "ready",
        "picked_up": "done",
        "cancelled": "cancelled",
    }
    # The live ticket runs on the new machine: hold is gone.
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "hold"}, headers=t.h
    )
    body = assert_error(response, 400, "invalid_transition")
    assert body["details"]["valid_transitions"] == ["mark_ready", "cancel"]
    # A name-only change does not bump the version.
    renamed = ok(await client.patch(path, json={"type_name": "Kitchen order"}, headers=t.h))
    assert renamed["version"] == 2
    assert renamed["type_name"] == "Kitchen order"
    # An invalid machine on update is 400 too.
    response = await client.patch(
        path, json={"fsm_schema": {"init": "x", "states": [], "transitions": []}}, headers=t.h
    )
    assert_error(response, 400, "validation_error")

    # Listing through the tenant path.
    item_type = await t.type("drink", DRINK_FSM)
    listed = ok(
        await client.get(
            f"/v1/tenants/{t.id}/type-definitions", params={"include_system": "false"}, headers=t.h
        )
    )
    assert sorted(ids(listed["data"])) == sorted([order_type["id"], item_type["id"]])
    assert listed["pagination"]["total"] == 2
    assert all(row["state_categories"] for row in listed["data"])
    other = await Tenant.create(client, api)
    assert_error(await client.get(f"/v1/tenants/{t.id}/type-definitions", headers=other.h), 404, "not_found")


# --- 7. bad input -----------------------------------------------------------------------------------------


async def test_bad_ticket_input_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t = await Tenant.create(client, api)
    drink = await t.type("drink", DRINK_FSM)
    pastry = await t.type("pastry", None)  # an item type without a machine
    order_type = await t.type(
        "food_order", FOOD_ORDER_FSM, custom_fields_schema=ORDER_SCHEMA, item_definition_ids=[drink["id"]]
    )
    plain_type = await t.type("plain", FOOD_ORDER_FSM)
    queue = await t.queue()
    strict_queue = await t.queue("Orders only", allowed_type_definition_ids=[order_type["id"]])
    closed_queue = await t.queue("Closed")
    ok(await client.post(f"/v1/queues/{closed_queue['id']}/disable", headers=t.h))

    other = await Tenant.create(client, api)
    other_type = await other.type("food_order", FOOD_ORDER_FSM)
    other_queue = await other.queue()
    other_ticket = await other.ticket(other_queue["id"], other_type["id"])
    other_customer = ok(await client.post("/v1/customers", json={"fname": "Eve"}, headers=other.h), 201)

    valid = {"customer_name": "Ann"}
    before = await ticket_rows(db, t.id)
    assert before == 0

    async def refused(body: dict[str, Any], status: int, code: str) -> dict[str, Any]:
        envelope = assert_error(await client.post("/v1/tickets", json=body, headers=t.h), status, code)
        assert await ticket_rows(db, t.id) == 0, body
        return envelope

    def order(**fields: Any) -> dict[str, Any]:
        return {"queue_id": queue["id"], "type_definition_id": order_type["id"], **fields}

    schema_cases = [
        ({}, "required", ""),
        ({"customer_name": 5}, "type", "customer_name"),
        ({"customer_name": "Ann", "channel": "phone"}, "enum", "channel"),
        ({"customer_name": "x" * 41}, "maxLength", "customer_name"),
    ]
    for data, validator, where in schema_cases:
        body = await refused(order(custom_data=data), 400, "validation_error")
        problems = body["details"]["custom_data"]
        assert [(p["validator"], p["path"]) for p in problems] == [(validator, where)], problems
        assert all(p["message"] for p in problems)

    big = {"blob": "x" * (64 * 1024 + 1)}
    body = await refused(
        {"queue_id": queue["id"], "type_definition_id": plain_type["id"], "custom_data": big},
        400,
        "validation_error",
    )
    assert body["details"]["custom_data"][0]["validator"] == "maxSize"
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"n": deep}
    body = await refused(
        {"queue_id": queue["id"], "type_definition_id": plain_type["id"], "custom_data": deep},
        400,
        "validation_error",
    )
    assert body["details"]["custom_data"][0]["validator"] == "maxDepth"

    await refused(order(custom_data=valid, queue_id=str(uuid.uuid4())), 404, "not_found")
    await refused(order(custom_data=valid, queue_id=other_queue["id"]), 404, "not_found")
    await refused(order(custom_data=valid, queue_id=closed_queue["id"]), 409, "queue_disabled")
    await refused(
        {"queue_id": strict_queue["id"], "type_definition_id": plain_type["id"]}, 400, "type_not_allowed"
    )
    await refused(order(custom_data=valid, type_definition_id=str(uuid.uuid4())), 400, "validation_error")
    await refused(order(custom_data=valid, type_definition_id=other_type["id"]), 400, "validation_error")
    await refused(order(type_definition_id=pastry["id"]), 400, "validation_error")
    await refused(order(custom_data=valid, customer_id=other_customer["id"]), 400, "validation_error")
    await refused(order(custom_data=valid, customer_id=str(uuid.uuid4())), 400, "validation_error")
    await refused(order(custom_data=valid, references_ticket_id=other_ticket["id"]), 400, "validation_error")
    await refused(order(custom_data=valid, tenant_id=other.id), 400, "validation_error")
    await refused(order(custom_data=valid, surprise=True), 400, "validation_error")
    await refused(order(custom_data=valid, queue_id="not-a-uuid"), 400, "validation_error")
    await refused(order(custom_data=valid, ttl_minutes=0), 400, "validation_error")
    await refused(order(custom_data=valid, estimated_wait_minutes="5"), 400, "validation_error")
    await refused(order(custom_data=["not", "an", "object"]), 400, "validation_error")
    malformed = await client.post(
        "/v1/tickets", content=b'{"queue_id": ', headers={**t.h, "Content-Type": "application/json"}
    )
    assert_error(malformed, 400, "validation_error")
    assert await ticket_rows(db, t.id) == 0
    # The other tenant's ticket was not touched either.
    assert await ticket_rows(db, other.id) == 1

    # A valid ticket, then bad transitions.
    ticket = await t.ticket(queue["id"], order_type["id"], custom_data=valid)
    assert await ticket_rows(db, t.id) == 1
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "fly"}, headers=t.h
    )
    body = assert_error(response, 400, "invalid_transition")
    assert body["details"] == {
        "current_state": "received",
        "transition": "fly",
        "valid_transitions": ["start_preparation", "cancel"],
    }
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "pickup"}, headers=t.h
    )
    assert assert_error(response, 400, "invalid_transition")["details"]["current_state"] == "received"
    unchanged = await t.get(f"/v1/tickets/{ticket['id']}")
    assert unchanged["version"] == ticket["version"]
    assert unchanged["current_state"] == "received"
    assert len(await t.get(f"/v1/tickets/{ticket['id']}/history")) == 1
    for bad in (
        {},
        {"transition": ""},
        {"transition": "x" * 33},
        {"transition": "start_preparation", "x": 1},
        {"transition": "start_preparation", "employee_id": str(uuid.uuid4())},
    ):
        response = await client.post(f"/v1/tickets/{ticket['id']}/transition", json=bad, headers=t.h)
        assert_error(response, 400, "validation_error")
    assert (await t.get(f"/v1/tickets/{ticket['id']}"))["version"] == ticket["version"]

    for name in ("start_preparation", "mark_ready", "pickup"):
        await t.move(ticket["id"], name)
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "cancel"}, headers=t.h
    )
    body = assert_error(response, 400, "invalid_transition")
    assert body["details"] == {"current_state": "picked_up", "transition": "cancel", "valid_transitions": []}

    # Items: the type must be allowed by the ticket's type; item transitions follow the item's machine.
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/items", json={"item_type_definition_id": pastry["id"]}, headers=t.h
    )
    assert_error(response, 400, "type_not_allowed")
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/items", json={"item_type_definition_id": str(uuid.uuid4())}, headers=t.h
    )
    assert_error(response, 400, "validation_error")
    response = await client.post(
        f"/v1/tickets/{ticket['id']}/items",
        json={"item_type_definition_id": drink["id"], "quantity": 0},
        headers=t.h,
    )
    assert_error(response, 400, "validation_error")
    assert await t.get(f"/v1/tickets/{ticket['id']}/items") == []
    item = ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/items", json={"item_type_definition_id": drink["id"]}, headers=t.h
        ),
        201,
    )
    response = await client.post(
        f"/v1/items/{item['id']}/transition", json={"transition": "complete"}, headers=t.h
    )
    body = assert_error(response, 400, "invalid_transition")
    assert body["details"] == {
        "current_state": "pending",
        "transition": "complete",
        "valid_transitions": ["start"],
    }

    # Bad ids in paths and bad filters are 400; unknown ids are 404.
    for method, path in (
        ("GET", "/v1/tickets/not-a-uuid"),
        ("PATCH", "/v1/tickets/not-a-uuid"),
        ("DELETE", "/v1/tickets/not-a-uuid"),
        ("POST", "/v1/tickets/not-a-uuid/transition"),
        ("GET", "/v1/tickets/not-a-uuid/history"),
        ("GET", "/v1/items/123"),
        ("POST", "/v1/items/123/transition"),
        ("GET", "/v1/queues/nope/tickets"),
    ):
        body_json = {"transition": "start"} if method in ("POST", "PATCH") else None
        response = await client.request(method, path, json=body_json, headers=t.h)
        assert_error(response, 400, "validation_error")
    missing = str(uuid.uuid4())
    assert_error(await client.get(f"/v1/tickets/{missing}", headers=t.h), 404, "not_found")
    assert_error(await client.get(f"/v1/tickets/{other_ticket['id']}", headers=t.h), 404, "not_found")
    response = await client.post(
        f"/v1/tickets/{other_ticket['id']}/transition", json={"transition": "cancel"}, headers=t.h
    )
    assert_error(response, 404, "not_found")
    assert (await other.get(f"/v1/tickets/{other_ticket['id']}"))["current_state"] == "received"
    assert await ticket_rows(db, t.id) == 1


async def test_fsm_problems_are_all_reported_together(client: httpx.AsyncClient, api: Api) -> None:
    """A duplicate transition name is listed alongside the other problems, not only once they are fixed."""
    t = await Tenant.create(client, api)
    fsm = {
        "init": "start",
        "states": ["received", "done"],
        "transitions": [
            {"name": "twice", "from": "received", "to": "done"},
            {"name": "twice", "from": "received", "to": "done"},
        ],
    }
    response = await client.post(
        "/v1/type-definitions",
        json={"type_code": "broken", "type_name": "Broken", "fsm_schema": fsm},
        headers=t.h,
    )
    body = assert_error(response, 400, "validation_error")
    found = "\n".join(body["details"]["fsm_schema"])
    assert "init 'start' is not one of the states" in found, found
    assert "'twice'" in found, found


async def test_bad_ticket_filters_are_400(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    wrong: list[str] = []
    for params in (
        {"state_category": "nonsense"},
        {"queue_id": "x"},
        {"employee_id": "x"},
        {"current_state": "x" * 33},
        {"limit": 0},
        {"limit": 101},
        {"page": 0},
        {"created_after": "yesterday"},
        {"created_before": "soon"},
        {"expires_before": "2024-13-45T00:00:00Z"},
    ):
        response = await client.get("/v1/tickets", params=params, headers=t.h)
        if response.status_code != 400:
            wrong.append(f"GET /v1/tickets {params}: {response.status_code}")
        else:
            assert_error(response, 400, "validation_error")
    for body_filters in (
        {"state_category": "nonsense"},
        {"created_before": "soon"},
        {"unknown": 1},
    ):
        response = await client.post("/v1/tickets/count", json=body_filters, headers=t.h)
        if response.status_code != 400:
            wrong.append(f"POST /v1/tickets/count {body_filters}: {response.status_code}")
        else:
            assert_error(response, 400, "validation_error")
    assert wrong == []


async def test_bad_queue_input(client: httpx.AsyncClient, api: Api, db: asyncpg.Connection) -> None:
    t = await Tenant.create(client, api)
    for bad in (
        {"name": "Q", "wait_estimation_method": "fastest"},
        {"name": "Q", "max_wait_minutes": -5},
        {"name": "Q", "max_wait_minutes": 0},
        {"name": "Q", "ticket_prefix": "ABCDEFGHIJ"},
        {"name": "Q", "ticket_prefix": "A B"},
        {"name": "Q", "allowed_type_definition_ids": [str(uuid.uuid4())]},
        {"name": "Q", "show_wait_time": "yes"},
        {"name": ""},
        {"name": "Q", "surprise": 1},
    ):
        response = await client.post("/v1/queues", json=bad, headers=t.h)
        assert_error(response, 400, "validation_error")
    count = await db.fetchval("SELECT count(*) FROM queues WHERE tenant_id = $1", uuid.UUID(t.id))
    assert count == 0
    queue = await t.queue(ticket_prefix="ABCDEFGH", wait_estimation_method="manual", manual_wait_minutes=4)
    assert queue["ticket_prefix"] == "ABCDEFGH"
    assert queue["wait_estimation_method"] == "manual"
    response = await client.patch(
        f"/v1/queues/{queue['id']}", json={"wait_estimation_method": "x"}, headers=t.h
    )
    assert_error(response, 400, "validation_error")
    assert (await t.get(f"/v1/queues/{queue['id']}"))["wait_estimation_method"] == "manual"


# --- 8. workflow chaining ---------------------------------------------------------------------------------


async def test_delivery_references_kitchen_order(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    kitchen_type = await t.type("food_order", FOOD_ORDER_FSM)
    delivery_type = await t.type(
        "delivery",
        {
            "init": "awaiting_driver",
            "states": ["awaiting_driver", "out_for_delivery", "delivered", "cancelled"],
            "transitions": [
                {"name": "dispatch", "from": "awaiting_driver", "to": "out_for_delivery"},
                {"name": "deliver", "from": "out_for_delivery", "to": "delivered"},
                {"name": "cancel", "from": ["awaiting_driver", "out_for_delivery"], "to": "cancelled"},
            ],
        },
    )
    kitchen = await t.queue("Kitchen", ticket_prefix="K", allowed_type_definition_ids=[kitchen_type["id"]])
    deliveries = await t.queue(
        "Deliveries", ticket_prefix="D", allowed_type_definition_ids=[delivery_type["id"]]
    )
    order = await t.ticket(kitchen["id"], kitchen_type["id"])
    await t.move(order["id"], "start_preparation")
    before = await t.get(f"/v1/tickets/{order['id']}")
    history_before = await t.get(f"/v1/tickets/{order['id']}/history")

    delivery = await t.ticket(deliveries["id"], delivery_type["id"], references_ticket_id=order["id"])
    assert delivery["references_ticket_id"] == order["id"]
    assert delivery["display_code"] == "D001"
    assert delivery["current_state"] == "awaiting_driver"
    assert delivery["position"] == 1
    assert (await t.get(f"/v1/tickets/{delivery['id']}"))["references_ticket_id"] == order["id"]

    after = await t.get(f"/v1/tickets/{order['id']}")
    assert after == before
    assert await t.get(f"/v1/tickets/{order['id']}/history") == history_before

    # The delivery moves on; the kitchen order is still untouched.
    await t.move(delivery["id"], "dispatch")
    done = await t.move(delivery["id"], "deliver")
    assert done["state_category"] == "done"
    assert done["references_ticket_id"] == order["id"]
    assert await t.get(f"/v1/tickets/{order['id']}") == before
    # A second delivery may reference the same order, and a ticket may reference a finished one.
    again = await t.ticket(deliveries["id"], delivery_type["id"], references_ticket_id=order["id"])
    assert again["references_ticket_id"] == order["id"]
    chained = await t.ticket(kitchen["id"], kitchen_type["id"], references_ticket_id=delivery["id"])
    assert chained["references_ticket_id"] == delivery["id"]
    assert (await t.get(f"/v1/tickets/{delivery['id']}"))["version"] == done["version"]
    # Only tickets of the tenant can be referenced.
    response = await client.post(
        "/v1/tickets",
        json={
            "queue_id": deliveries["id"],
            "type_definition_id": delivery_type["id"],
            "references_ticket_id": str(uuid.uuid4()),
        },
        headers=t.h,
    )
    body = assert_error(response, 400, "validation_error")
    assert body["details"] == {"field": "references_ticket_id"}


async def test_customer_links_are_whole_links_with_a_public_base_url(
    client: httpx.AsyncClient, api: Api, database_dsn: str
) -> None:
    """`customer_page` was a path, so every integration sending it by text message or e-mail had to know
    the server's public address. With PUBLIC_BASE_URL it is the whole link, in every ticket answer; without
    it, the path as before."""
    from tests.conftest import make_settings
    from virtualq.app import create_app

    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = (await t.queue("Main"))["id"]
    made = await t.ticket(queue, order["id"])
    assert made["customer_page"].startswith(f"/t/{made['id']}?token=")
    app = create_app(make_settings(public_base_url="https://q.example.com/shop/"), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://other") as other,
    ):
        link = f"https://q.example.com/shop{made['customer_page']}"
        answers = [
            ok(await other.get(f"/v1/tickets/{made['id']}", headers=t.h)),
            ok(await other.get("/v1/tickets", params={"queue_id": queue}, headers=t.h))["data"][0],
            ok(await other.get(f"/v1/queues/{queue}/tickets", headers=t.h))["data"][0],
            ok(
                await other.post(
                    f"/v1/tickets/{made['id']}/transition",
                    json={"transition": "start_preparation"},
                    headers=t.h,
                )
            ),
        ]
        assert [a["customer_page"] for a in answers] == [link] * 4
        created = ok(
            await other.post(
                "/v1/tickets", json={"queue_id": queue, "type_definition_id": order["id"]}, headers=t.h
            ),
            201,
        )
        assert created["customer_page"].startswith(f"https://q.example.com/shop/t/{created['id']}?token=")
    assert (await t.get(f"/v1/tickets/{made['id']}"))["customer_page"] == made["customer_page"]
