"""Tenant isolation, concurrency and display redaction for the tickets issue (PRODUCT §1-§4, §6).

Isolation: with tenant A's keys (tenant admin, tenant staff, tenant display, account admin and account staff
acting in A), every type definition, queue, ticket, item and history of a neighbour tenant B (in another
account, and in the same account) is 404 exactly like an id that does not exist, never appears in lists or
counts, and is never changed. B's ids given inside A's bodies are refused exactly like unknown ids.

Concurrency: real parallel requests (asyncio.gather over the ASGI client, real asyncpg pool) on one ticket,
one item and one or several queues: only valid transitions win, no update is lost, the history is one
consistent chain, and numbers are unique and gap-free per queue.

Display keys see the line without personal data and can change nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, World, assert_error, auth
from tests.test_ticket_flows import DRINK_FSM, FOOD_ORDER_FSM, assert_chain, ok, ts
from virtualq.tickets.router import PERSONAL_FIELDS

# idle (waiting) <-> busy (in_service) -> done: a machine that can move back and forth many times.
PING_FSM: dict[str, Any] = {
    "init": "idle",
    "states": ["idle", "busy", "done"],
    "transitions": [
        {"name": "go", "from": "idle", "to": "busy"},
        {"name": "back", "from": "busy", "to": "idle"},
        {"name": "finish", "from": "busy", "to": "done"},
    ],
}

# The tables the tickets issue writes for a tenant; a snapshot of all of them proves nothing changed.
TENANT_TABLES = (
    "type_definitions",
    "queues",
    "queue_day_counters",
    "queue_waiting_counts",
    "tickets",
    "ticket_items",
    "ticket_history",
    "item_history",
    "events",
    "employees",
)

ROLE_RANK = {"display": 0, "staff": 1, "admin": 2}


# --- helpers ----------------------------------------------------------------------------------------------


@dataclass
class Shop:
    """A tenant with one of everything the tickets issue has, and keys of every kind acting in it."""

    world: World
    h: dict[str, str]
    drink: dict[str, Any] = field(default_factory=dict)
    order: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)
    closed_queue: dict[str, Any] = field(default_factory=dict)
    ticket: dict[str, Any] = field(default_factory=dict)  # in service, with customer, employee and an item
    waiting: dict[str, Any] = field(default_factory=dict)  # waiting, references `ticket`
    item: dict[str, Any] = field(default_factory=dict)
    customer: dict[str, Any] = field(default_factory=dict)
    employee: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.world.tenant_id


async def call(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], body: Any = None
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


async def build_shop(client: httpx.AsyncClient, world: World) -> Shop:
    s = Shop(world=world, h=auth(world.tenant_admin))

    async def post(path: str, body: dict[str, Any], status: int = 201) -> Any:
        return ok(await client.post(path, json=body, headers=s.h), status)

    s.drink = await post(
        "/v1/type-definitions", {"type_code": "drink", "type_name": "Drink", "fsm_schema": DRINK_FSM}
    )
    s.order = await post(
        "/v1/type-definitions",
        {
            "type_code": "order",
            "type_name": "Order",
            "fsm_schema": FOOD_ORDER_FSM,
            "item_definition_ids": [s.drink["id"]],
        },
    )
    s.queue = await post("/v1/queues", {"name": "Main", "ticket_prefix": "M"})
    s.closed_queue = await post("/v1/queues", {"name": "Closed", "ticket_prefix": "C"})
    ok(await client.post(f"/v1/queues/{s.closed_queue['id']}/disable", headers=s.h))
    suffix = uuid.uuid4().hex[:8]
    s.customer = await post(
        "/v1/customers", {"fname": "Pat", "lname": "Quill", "email": f"pat-{suffix}@example.com"}
    )
    s.employee = await post(
        "/v1/employees", {"fname": "Em", "lname": "Ploy", "email": f"em-{suffix}@example.com"}
    )
    ticket = await post(
        "/v1/tickets",
        {
            "queue_id": s.queue["id"],
            "type_definition_id": s.order["id"],
            "customer_id": s.customer["id"],
            "custom_data": {"note": "secret"},
        },
    )
    s.item = await post(
        f"/v1/tickets/{ticket['id']}/items",
        {"item_type_definition_id": s.drink["id"], "external_item_name": "Latte"},
    )
    s.ticket = await post(
        f"/v1/tickets/{ticket['id']}/transition",
        {"transition": "start_preparation", "employee_id": s.employee["id"]},
        200,
    )
    s.waiting = await post(
        "/v1/tickets",
        {
            "queue_id": s.queue["id"],
            "type_definition_id": s.order["id"],
            "references_ticket_id": s.ticket["id"],
        },
    )
    return s


async def world_in_account(api: Api, account: World) -> World:
    """A second tenant of the same account as `account`."""
    tenant = await api.tenant(account.account_id, "Sibling")
    return World(
        account_id=account.account_id,
        tenant_id=tenant["id"],
        account_admin=account.account_admin,
        tenant_admin=await api.key("tenant", "admin", tenant_id=tenant["id"]),
    )


async def snapshot(db: asyncpg.Connection, tenant_id: str) -> dict[str, Any]:
    """Every row (every column) the tickets issue stores for a tenant."""
    tid = uuid.UUID(tenant_id)
    state: dict[str, Any] = {}
    for table in TENANT_TABLES:
        rows = await db.fetchval(
            f"SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY to_jsonb(x)::text), '[]'::jsonb)::text "
            f"FROM {table} x WHERE tenant_id = $1",
            tid,
        )
        state[table] = json.loads(rows)
    assert state["tickets"], "a snapshot of a tenant without tickets proves nothing"
    return state


def error_shape(response: httpx.Response) -> tuple[int, Any, Any, Any]:
    """What a caller learns from an error: everything except the request id."""
    body = response.json()
    return response.status_code, body.get("error"), body.get("message"), body.get("details")


def random_id() -> str:
    return str(uuid.uuid4())


async def transitions_in_parallel(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], names: list[str]
) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(client.post(path, json={"transition": name}, headers=headers) for name in names)
        )
    )


async def event_types(db: asyncpg.Connection, ticket_id: str) -> Counter[str]:
    rows = await db.fetch("SELECT type FROM events WHERE ticket_id = $1", uuid.UUID(ticket_id))
    return Counter(row["type"] for row in rows)


async def queue_line(
    client: httpx.AsyncClient, queue_id: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """Every page of GET /v1/queues/{id}/tickets."""
    rows: list[dict[str, Any]] = []
    for page in itertools.count(1):
        body = ok(
            await client.get(
                f"/v1/queues/{queue_id}/tickets", params={"page": page, "limit": 100}, headers=headers
            )
        )
        rows.extend(body["data"])
        if page >= body["pagination"]["total_pages"]:
            assert body["pagination"]["total"] == len(rows)
            return rows
    raise AssertionError("unreachable")


# --- 1. isolation -----------------------------------------------------------------------------------------


async def callers_of(api: Api, a: Shop) -> dict[str, tuple[str, dict[str, str]]]:
    """Every kind of key that can act in tenant A: name -> (role, headers)."""
    w = a.world
    tenant_staff = await api.key("tenant", "staff", key=w.tenant_admin, tenant_id=w.tenant_id)
    tenant_display = await api.key("tenant", "display", key=w.tenant_admin, tenant_id=w.tenant_id)
    account_staff = await api.key("account", "staff", account_id=w.account_id)
    return {
        "tenant admin": ("admin", auth(w.tenant_admin)),
        "tenant staff": ("staff", auth(tenant_staff)),
        "tenant display": ("display", auth(tenant_display)),
        "account admin in A": ("admin", auth(w.account_admin, w.tenant_id)),
        "account staff in A": ("staff", auth(account_staff, w.tenant_id)),
    }


def attempts_on(a: Shop, b: Shop) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, least role allowed) for every operation on one of B's resources."""
    order, drink, queue, closed = b.order["id"], b.drink["id"], b.queue["id"], b.closed_queue["id"]
    ticket, waiting, item, employee = b.ticket["id"], b.waiting["id"], b.item["id"], b.employee["id"]
    return [
        # type definitions
        ("GET", f"/v1/type-definitions/{order}", None, "staff"),
        ("PATCH", f"/v1/type-definitions/{order}", {"type_name": "Hijacked"}, "admin"),
        ("PUT", f"/v1/type-definitions/{order}", {"description": "Hijacked"}, "admin"),
        ("PATCH", f"/v1/type-definitions/{drink}", {"fsm_schema": PING_FSM}, "admin"),
        ("DELETE", f"/v1/type-definitions/{order}", None, "admin"),
        ("DELETE", f"/v1/type-definitions/{drink}", None, "admin"),
        # queues
        ("GET", f"/v1/queues/{queue}", None, "display"),
        ("PATCH", f"/v1/queues/{queue}", {"name": "Hijacked"}, "admin"),
        ("PUT", f"/v1/queues/{queue}", {"ticket_prefix": "Z"}, "admin"),
        ("DELETE", f"/v1/queues/{queue}", None, "admin"),
        ("POST", f"/v1/queues/{queue}/disable", None, "admin"),
        ("POST", f"/v1/queues/{closed}/enable", None, "admin"),
        ("GET", f"/v1/queues/{queue}/tickets", None, "display"),
        ("GET", f"/v1/queues/{queue}/monitor", None, "display"),
        ("GET", f"/v1/queues/{queue}/stats", None, "staff"),
        ("POST", f"/v1/queues/{queue}/call-next", {}, "staff"),
        # tickets
        ("GET", f"/v1/tickets/{ticket}", None, "staff"),
        ("PATCH", f"/v1/tickets/{ticket}", {"custom_data": {"note": "hijacked"}}, "staff"),
        ("PUT", f"/v1/tickets/{ticket}", {"ttl_minutes": 5, "estimated_wait_minutes": 1}, "staff"),
        ("DELETE", f"/v1/tickets/{ticket}", None, "staff"),
        ("DELETE", f"/v1/tickets/{waiting}", None, "staff"),
        ("POST", f"/v1/tickets/{ticket}/transition", {"transition": "mark_ready"}, "staff"),
        ("POST", f"/v1/tickets/{waiting}/transition", {"transition": "cancel"}, "staff"),
        ("GET", f"/v1/tickets/{ticket}/history", None, "staff"),
        ("POST", f"/v1/tickets/{waiting}/reorder", {"position": 1}, "staff"),
        ("POST", f"/v1/tickets/{waiting}/forward", {"target_queue_id": a.queue["id"]}, "staff"),
        ("POST", f"/v1/tickets/{waiting}/forward", {"target_queue_id": closed}, "staff"),
        ("POST", f"/v1/tickets/{waiting}/assign", {"employee_id": a.employee["id"]}, "staff"),
        ("POST", f"/v1/tickets/{ticket}/unassign", None, "staff"),
        ("GET", f"/v1/employees/{employee}/tickets", None, "staff"),
        # items
        ("POST", f"/v1/tickets/{ticket}/items", {"item_type_definition_id": drink}, "staff"),
        ("POST", f"/v1/tickets/{ticket}/items", {"item_type_definition_id": a.drink["id"]}, "staff"),
        ("GET", f"/v1/tickets/{ticket}/items", None, "staff"),
        ("GET", f"/v1/items/{item}", None, "staff"),
        ("PATCH", f"/v1/items/{item}", {"quantity": 9}, "staff"),
        ("PUT", f"/v1/items/{item}", {"external_item_name": "Hijacked"}, "staff"),
        ("DELETE", f"/v1/items/{item}", None, "staff"),
        ("POST", f"/v1/items/{item}/transition", {"transition": "start"}, "staff"),
        ("GET", f"/v1/items/{item}/history", None, "staff"),
    ]


def unknown_ids_instead(path: str, b: Shop) -> str:
    """The same path with every id of B replaced by an id that exists nowhere."""
    for value in (
        b.order["id"],
        b.drink["id"],
        b.queue["id"],
        b.closed_queue["id"],
        b.ticket["id"],
        b.waiting["id"],
        b.item["id"],
        b.employee["id"],
    ):
        path = path.replace(value, random_id())
    return path


@pytest.mark.parametrize("neighbour", ["other account", "same account"])
async def test_every_path_to_another_tenants_rows_is_404_like_an_unknown_id(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, neighbour: str
) -> None:
    a = await build_shop(client, await api.world())
    b_world = await api.world() if neighbour == "other account" else await world_in_account(api, a.world)
    b = await build_shop(client, b_world)
    callers = await callers_of(api, a)
    attempts = attempts_on(a, b)

    # The ids are real: B's own staff reads every one of them.
    b_staff = auth(await api.key("tenant", "staff", key=b.world.tenant_admin, tenant_id=b.id))
    for method, path, _, _ in attempts:
        if method == "GET":
            assert (await call(client, method, path, b_staff)).status_code == 200, path

    b_before = await snapshot(db, b.id)
    a_before = await snapshot(db, a.id)
    for who, (role, headers) in callers.items():
        for method, path, body, least in attempts:
            response = await call(client, method, path, headers, body)
            unknown = await call(client, method, unknown_ids_instead(path, b), headers, body)
            if ROLE_RANK[role] >= ROLE_RANK[least]:
                assert_error(response, 404, "not_found")
            else:
                assert_error(response, 403, "forbidden")
            # Nothing tells B's rows apart from rows that do not exist.
            assert error_shape(response) == error_shape(unknown), (who, method, path)

    assert await snapshot(db, b.id) == b_before, "tenant B's rows changed"
    assert await snapshot(db, a.id) == a_before, "tenant A's rows changed"


@pytest.mark.parametrize("neighbour", ["other account", "same account"])
async def test_lists_and_counts_never_include_another_tenants_rows(
    client: httpx.AsyncClient, api: Api, neighbour: str
) -> None:
    a = await build_shop(client, await api.world())
    b_world = await api.world() if neighbour == "other account" else await world_in_account(api, a.world)
    b = await build_shop(client, b_world)
    callers = await callers_of(api, a)
    mine = {a.ticket["id"], a.waiting["id"]}
    b_filters: list[dict[str, str]] = [
        {"queue_id": b.queue["id"]},
        {"type_definition_id": b.order["id"]},
        {"employee_id": b.employee["id"]},
        {"current_state": "received", "queue_id": b.queue["id"]},
    ]
    if neighbour == "other account":
        b_filters.append({"customer_id": b.customer["id"]})  # customers are shared inside one account

    for who, (role, headers) in callers.items():
        if role == "display":
            for method, path, body in (
                ("GET", "/v1/tickets", None),
                ("POST", "/v1/tickets/count", {}),
                ("GET", "/v1/type-definitions", None),
                ("GET", "/v1/queues", None),
            ):
                assert_error(await call(client, method, path, headers, body), 403, "forbidden")
            continue
        listed = ok(await client.get("/v1/tickets", params={"limit": 100}, headers=headers))
        assert {row["id"] for row in listed["data"]} == mine, who
        assert listed["pagination"]["total"] == 2
        assert {row["tenant_id"] for row in listed["data"]} == {a.id}
        assert ok(await client.post("/v1/tickets/count", json={}, headers=headers)) == {"count": 2}
        for filters in b_filters:
            listed = ok(await client.get("/v1/tickets", params=filters, headers=headers))
            assert (listed["data"], listed["pagination"]["total"]) == ([], 0), (who, filters)
            counted = ok(await client.post("/v1/tickets/count", json=filters, headers=headers))
            assert counted == {"count": 0}, (who, filters)
        types = ok(
            await client.get(
                "/v1/type-definitions", params={"limit": 100, "include_system": "false"}, headers=headers
            )
        )
        assert {row["id"] for row in types["data"]} == {a.drink["id"], a.order["id"]}, who
        with_system = ok(await client.get("/v1/type-definitions", params={"limit": 100}, headers=headers))
        assert not {b.drink["id"], b.order["id"]} & {row["id"] for row in with_system["data"]}
        queues = ok(await client.get("/v1/queues", params={"limit": 100}, headers=headers))
        assert {row["id"] for row in queues["data"]} == {a.queue["id"], a.closed_queue["id"]}, who
        items = ok(await client.get(f"/v1/tickets/{a.ticket['id']}/items", headers=headers))
        assert [row["id"] for row in items] == [a.item["id"]]
        # Another tenant named in the path is "not found" for account keys of another account, and
        # forbidden-as-not-found for everyone else: either way indistinguishable from a tenant that does
        # not exist.
        for path in ("/v1/tenants/{}/queues", "/v1/tenants/{}/type-definitions"):
            response = await client.get(path.format(b.id), headers=headers)
            if who.startswith("account") and neighbour == "same account":
                owners = {row["tenant_id"] for row in ok(response)["data"]}
                assert b.id in owners
                assert owners <= {b.id, None}  # B's own rows (the account's), and system types
            else:
                assert_error(response, 404, "not_found")
                unknown = await client.get(path.format(random_id()), headers=headers)
                assert error_shape(response) == error_shape(unknown)


async def test_naming_another_tenant_as_context_is_forbidden_like_an_unknown_tenant(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    a = await build_shop(client, await api.world())
    b = await build_shop(client, await api.world())
    sibling = await build_shop(client, await world_in_account(api, a.world))
    callers = await callers_of(api, a)
    b_before = await snapshot(db, b.id)
    sibling_before = await snapshot(db, sibling.id)
    create = {"queue_id": b.queue["id"], "type_definition_id": b.order["id"]}
    for who, (role, headers) in callers.items():
        targets = [b] if who.startswith("account") else [b, sibling]  # an account key may act in its sibling
        for target in targets:
            for method, path, body in (
                ("GET", f"/v1/queues/{target.queue['id']}/tickets", None),
                ("GET", "/v1/tickets", None),
                ("POST", "/v1/tickets", create),
                ("POST", f"/v1/tickets/{target.ticket['id']}/transition", {"transition": "mark_ready"}),
                ("POST", f"/v1/queues/{target.queue['id']}/disable", None),
            ):
                key_only = {k: v for k, v in headers.items() if k != "X-Tenant-ID"}
                response = await call(client, method, path, {**key_only, "X-Tenant-ID": target.id}, body)
                unknown = await call(client, method, path, {**key_only, "X-Tenant-ID": random_id()}, body)
                via_query = await call(client, method, f"{path}?tenant_id={target.id}", key_only, body)
                assert_error(response, 403, "forbidden")
                assert_error(via_query, 403, "forbidden")
                assert error_shape(response) == error_shape(unknown), (who, role, path)
                assert error_shape(via_query) == error_shape(unknown), (who, role, path)
    # A body tenant_id that disagrees with the context is refused, and nothing is created anywhere.
    a_before = await snapshot(db, a.id)
    headers = callers["tenant admin"][1]
    for path, body in (
        ("/v1/tickets", {"queue_id": a.queue["id"], "type_definition_id": a.order["id"]}),
        ("/v1/queues", {"name": "Sneaky"}),
        ("/v1/type-definitions", {"type_code": "sneaky", "type_name": "S", "fsm_schema": PING_FSM}),
    ):
        response = await client.post(path, json={**body, "tenant_id": b.id}, headers=headers)
        assert_error(response, 400, "validation_error")
    assert await snapshot(db, a.id) == a_before
    assert await snapshot(db, b.id) == b_before
    assert await snapshot(db, sibling.id) == sibling_before


@pytest.mark.parametrize("neighbour", ["other account", "same account"])
async def test_another_tenants_ids_inside_bodies_are_refused_like_unknown_ids(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, neighbour: str
) -> None:
    a = await build_shop(client, await api.world())
    b_world = await api.world() if neighbour == "other account" else await world_in_account(api, a.world)
    b = await build_shop(client, b_world)
    mine = a.h
    own_ticket = {"queue_id": a.queue["id"], "type_definition_id": a.order["id"]}
    combo = {"type_code": "combo", "type_name": "C", "fsm_schema": FOOD_ORDER_FSM}
    waiting, queue, order = a.waiting["id"], a.queue["id"], a.order["id"]
    b_employee = {"employee_id": b.employee["id"]}
    bad = (400, "validation_error")
    # (method, path, body naming one of B's ids, expected status and code)
    cases: list[tuple[str, str, dict[str, Any] | None, tuple[int, str]]] = [
        ("POST", "/v1/tickets", {**own_ticket, "queue_id": b.queue["id"]}, (404, "not_found")),
        ("POST", "/v1/tickets", {**own_ticket, "type_definition_id": b.order["id"]}, bad),
        ("POST", "/v1/tickets", {**own_ticket, "references_ticket_id": b.ticket["id"]}, bad),
        ("POST", "/v1/tickets", {**own_ticket, "references_ticket_id": b.waiting["id"]}, bad),
        ("POST", "/v1/queues", {"name": "X", "allowed_type_definition_ids": [b.order["id"]]}, bad),
        ("PATCH", f"/v1/queues/{queue}", {"allowed_type_definition_ids": [order, b.order["id"]]}, bad),
        ("POST", "/v1/type-definitions", {**combo, "item_definition_ids": [b.drink["id"]]}, bad),
        (
            "PATCH",
            f"/v1/type-definitions/{order}",
            {"item_definition_ids": [a.drink["id"], b.drink["id"]]},
            bad,
        ),
        ("POST", f"/v1/tickets/{waiting}/items", {"item_type_definition_id": b.drink["id"]}, bad),
        ("POST", f"/v1/tickets/{waiting}/transition", {"transition": "cancel", **b_employee}, bad),
        ("POST", f"/v1/tickets/{waiting}/assign", b_employee, bad),
        ("POST", f"/v1/tickets/{waiting}/forward", {"target_queue_id": b.queue["id"]}, (404, "not_found")),
        ("POST", f"/v1/queues/{queue}/call-next", b_employee, bad),
        ("POST", f"/v1/items/{a.item['id']}/transition", {"transition": "start", **b_employee}, bad),
        ("GET", f"/v1/employees/{b.employee['id']}/tickets", None, (404, "not_found")),
    ]
    if neighbour == "other account":  # customers are shared by the tenants of one account
        cases.append(("POST", "/v1/tickets", {**own_ticket, "customer_id": b.customer["id"]}, bad))
    b_ids = {
        b.queue["id"],
        b.order["id"],
        b.drink["id"],
        b.ticket["id"],
        b.waiting["id"],
        b.employee["id"],
        b.customer["id"],
    }
    a_before = await snapshot(db, a.id)
    b_before = await snapshot(db, b.id)
    for method, path, body, (status, code) in cases:
        response = await call(client, method, path, mine, body)
        assert_error(response, status, code)
        text = json.dumps(body)
        unknown_path = path
        for value in b_ids:
            text = text.replace(value, random_id())
            unknown_path = unknown_path.replace(value, random_id())
        unknown = await call(client, method, unknown_path, mine, json.loads(text))
        assert error_shape(response) == error_shape(unknown), (path, body)
        assert not b_ids & set(json.dumps(response.json()["details"]).split('"')), "details echo B's ids"
    assert await snapshot(db, a.id) == a_before
    assert await snapshot(db, b.id) == b_before
    # The same requests with A's own ids work: the refusals above were about tenancy, nothing else.
    referencing = {**own_ticket, "references_ticket_id": a.ticket["id"]}
    ok(await client.post("/v1/tickets", json=referencing, headers=mine), 201)
    ok(
        await client.post(
            f"/v1/tickets/{a.waiting['id']}/items",
            json={"item_type_definition_id": a.drink["id"]},
            headers=mine,
        ),
        201,
    )
    assign = {"employee_id": a.employee["id"]}
    ok(await client.post(f"/v1/tickets/{waiting}/assign", json=assign, headers=mine))


async def test_tickets_of_a_shared_system_type_stay_with_their_tenant(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    admin = auth(api.admin_key)
    body = {"type_code": f"sys_{uuid.uuid4().hex[:8]}", "type_name": "Shared", "fsm_schema": PING_FSM}
    system = ok(
        await client.post("/v1/type-definitions", json={**body, "is_system_defined": True}, headers=admin),
        201,
    )
    a = await build_shop(client, await api.world())
    b = await build_shop(client, await api.world())
    made: dict[str, list[str]] = {}
    for s, count in ((a, 2), (b, 3)):
        create = {"queue_id": s.queue["id"], "type_definition_id": system["id"]}
        made[s.id] = [
            ok(await client.post("/v1/tickets", json=create, headers=s.h), 201)["id"] for _ in range(count)
        ]
    b_before = await snapshot(db, b.id)
    by_type = {"type_definition_id": system["id"]}
    listed = ok(await client.get("/v1/tickets", params=by_type, headers=a.h))
    assert {row["id"] for row in listed["data"]} == set(made[a.id])
    assert ok(await client.post("/v1/tickets/count", json=by_type, headers=a.h)) == {"count": 2}
    waiting_of_type = {**by_type, "state_category": "waiting"}
    assert ok(await client.post("/v1/tickets/count", json=waiting_of_type, headers=a.h)) == {"count": 2}
    for ticket_id in made[b.id]:
        for method, path, payload in (
            ("GET", f"/v1/tickets/{ticket_id}", None),
            ("POST", f"/v1/tickets/{ticket_id}/transition", {"transition": "go"}),
            ("DELETE", f"/v1/tickets/{ticket_id}", None),
            ("GET", f"/v1/tickets/{ticket_id}/history", None),
        ):
            assert_error(await call(client, method, path, a.h, payload), 404, "not_found")
    # A's tickets move; B's line of the same type is untouched.
    for ticket_id in made[a.id]:
        ok(await client.post(f"/v1/tickets/{ticket_id}/transition", json={"transition": "go"}, headers=a.h))
    assert await snapshot(db, b.id) == b_before
    b_line = await queue_line(client, b.queue["id"], b.h)
    assert [row["position"] for row in b_line if row["type_definition_id"] == system["id"]] == [2, 3, 4]


# --- 2. concurrency ---------------------------------------------------------------------------------------


async def fresh_order(client: httpx.AsyncClient, api: Api) -> tuple[Shop, dict[str, Any]]:
    """A shop and a new ticket in `received` (waiting)."""
    s = await build_shop(client, await api.world())
    body = {"queue_id": s.queue["id"], "type_definition_id": s.order["id"]}
    return s, ok(await client.post("/v1/tickets", json=body, headers=s.h), 201)


async def test_twenty_identical_transitions_one_wins(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s, ticket = await fresh_order(client, api)
    responses = await transitions_in_parallel(
        client, f"/v1/tickets/{ticket['id']}/transition", s.h, ["start_preparation"] * 20
    )
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    won = winners[0].json()
    assert (won["previous_state"], won["current_state"], won["version"]) == ("received", "in_progress", 2)
    for response in responses:
        if response.status_code != 200:
            body = assert_error(response, 400, "invalid_transition")
            assert body["details"] == {
                "current_state": "in_progress",
                "transition": "start_preparation",
                "valid_transitions": ["mark_ready", "cancel"],
            }
    history = ok(await client.get(f"/v1/tickets/{ticket['id']}/history", headers=s.h))
    assert_chain(history)
    assert [(h["previous_state"], h["new_state"], h["transition"]) for h in history] == [
        (None, "received", None),
        ("received", "in_progress", "start_preparation"),
    ]
    final = ok(await client.get(f"/v1/tickets/{ticket['id']}", headers=s.h))
    assert (final["current_state"], final["state_category"], final["version"]) == (
        "in_progress",
        "in_service",
        2,
    )
    assert final["started_at"] is not None
    assert final["position"] is None
    assert (await event_types(db, ticket["id"]))["ticket.state_changed"] == 1


async def test_concurrent_start_and_cancel_keep_one_consistent_story(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s, ticket = await fresh_order(client, api)
    names = ["start_preparation", "cancel"] * 10
    responses = await transitions_in_parallel(client, f"/v1/tickets/{ticket['id']}/transition", s.h, names)
    won = sorted((r.json() for r in responses if r.status_code == 200), key=lambda t: t["version"])
    won_names = [name for name, r in zip(names, responses, strict=True) if r.status_code == 200]
    assert Counter(won_names)["cancel"] == 1, won_names  # cancelled exactly once
    assert Counter(won_names)["start_preparation"] <= 1, won_names  # started at most once
    expected_valid = {"in_progress": ["mark_ready", "cancel"], "cancelled": []}
    for name, response in zip(names, responses, strict=True):
        if response.status_code == 200:
            continue
        details = assert_error(response, 400, "invalid_transition")["details"]
        assert details["transition"] == name
        assert details["current_state"] in (
            {"cancelled"} if name == "cancel" else {"in_progress", "cancelled"}
        )
        assert details["valid_transitions"] == expected_valid[details["current_state"]]
    # Successes, in commit order, walk the machine from received to cancelled.
    path = [(t["previous_state"], t["current_state"]) for t in won]
    assert path in (
        [("received", "cancelled")],
        [("received", "in_progress"), ("in_progress", "cancelled")],
    ), path
    assert [t["version"] for t in won] == list(range(2, 2 + len(won)))
    history = ok(await client.get(f"/v1/tickets/{ticket['id']}/history", headers=s.h))
    assert_chain(history)
    assert [(h["previous_state"], h["new_state"]) for h in history[1:]] == path
    assert len({h["id"] for h in history}) == len(history) == 1 + len(won)
    final = ok(await client.get(f"/v1/tickets/{ticket['id']}", headers=s.h))
    assert (final["current_state"], final["state_category"]) == ("cancelled", "cancelled")
    assert final["version"] == 1 + len(won)
    assert final["cancelled_at"] is not None
    # It left waiting either way (by start or by cancel), which sets started_at (docs/decisions.md).
    assert final["started_at"] is not None
    assert ts(final["started_at"]) <= ts(final["cancelled_at"])
    events = await event_types(db, ticket["id"])
    assert (events["ticket.state_changed"], events["ticket.cancelled"]) == (len(won), 1)
    rows = await db.fetchval(
        "SELECT count(*) FROM ticket_history WHERE tenant_id = $1 AND ticket_id = $2",
        uuid.UUID(s.id),
        uuid.UUID(ticket["id"]),
    )
    assert rows == len(history)


async def test_twenty_concurrent_cancels_cancel_once(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s, ticket = await fresh_order(client, api)
    responses = await asyncio.gather(
        *(client.delete(f"/v1/tickets/{ticket['id']}", headers=s.h) for _ in range(20))
    )
    assert sorted(r.status_code for r in responses) == [200] + [400] * 19
    for response in responses:
        if response.status_code == 200:
            body = response.json()
            assert (body["previous_state"], body["current_state"], body["version"]) == (
                "received",
                "cancelled",
                2,
            )
        else:
            details = assert_error(response, 400, "invalid_transition")["details"]
            assert details == {"current_state": "cancelled", "transition": None, "valid_transitions": []}
    history = ok(await client.get(f"/v1/tickets/{ticket['id']}/history", headers=s.h))
    assert [(h["previous_state"], h["new_state"], h["transition"]) for h in history] == [
        (None, "received", None),
        ("received", "cancelled", "cancel"),
    ]
    events = await event_types(db, ticket["id"])
    assert (events["ticket.state_changed"], events["ticket.cancelled"]) == (1, 1)


async def test_back_and_forth_transitions_with_updates_lose_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s = await build_shop(client, await api.world())
    ping = ok(
        await client.post(
            "/v1/type-definitions",
            json={"type_code": "ping", "type_name": "Ping", "fsm_schema": PING_FSM},
            headers=s.h,
        ),
        201,
    )
    ticket = ok(
        await client.post(
            "/v1/tickets", json={"queue_id": s.queue["id"], "type_definition_id": ping["id"]}, headers=s.h
        ),
        201,
    )
    path = f"/v1/tickets/{ticket['id']}"
    names = ["go", "back"] * 10
    jobs = [client.post(f"{path}/transition", json={"transition": name}, headers=s.h) for name in names]
    jobs += [client.patch(path, json={"custom_data": {"n": n}}, headers=s.h) for n in range(10)]
    responses = await asyncio.gather(*jobs)
    moves, patches = responses[:20], responses[20:]
    assert [r.status_code for r in patches] == [200] * 10, [r.text for r in patches]
    for name, response in zip(names, moves, strict=True):
        if response.status_code != 200:
            details = assert_error(response, 400, "invalid_transition")["details"]
            # "go" fails only when busy, "back" only when idle.
            assert details["current_state"] == ("busy" if name == "go" else "idle"), details
    won = [r.json() for r in moves if r.status_code == 200]
    assert won, "no transition succeeded"
    # Every mutation saw a different version: none was lost.
    versions = sorted(r.json()["version"] for r in moves + patches if r.status_code == 200)
    assert versions == list(range(2, 2 + len(won) + 10))
    # The successful moves alternate go, back, go, ... starting from idle.
    ordered = sorted(won, key=lambda t: t["version"])
    assert [(t["previous_state"], t["current_state"]) for t in ordered] == [
        (("idle", "busy") if i % 2 == 0 else ("busy", "idle")) for i in range(len(ordered))
    ]
    history = ok(await client.get(f"{path}/history", headers=s.h))
    assert_chain(history)
    assert len(history) == 1 + len(won)
    assert [h["transition"] for h in history[1:]] == ["go" if i % 2 == 0 else "back" for i in range(len(won))]
    final = ok(await client.get(path, headers=s.h))
    assert final["version"] == 1 + len(won) + 10
    assert final["current_state"] == history[-1]["new_state"] == ("busy" if len(won) % 2 else "idle")
    last = max((r.json() for r in moves + patches if r.status_code == 200), key=lambda t: t["version"])
    assert final["custom_data"] == last["custom_data"]
    assert final["custom_data"] in [{"n": n} for n in range(10)]
    events = await event_types(db, ticket["id"])
    assert (events["ticket.state_changed"], events["ticket.updated"]) == (len(won), 10)


async def test_twenty_concurrent_item_transitions_serialize(client: httpx.AsyncClient, api: Api) -> None:
    s = await build_shop(client, await api.world())
    item_id = s.item["id"]
    names = ["start"] * 10 + ["complete"] * 10
    responses = await transitions_in_parallel(client, f"/v1/items/{item_id}/transition", s.h, names)
    won = sorted((r.json() for r in responses if r.status_code == 200), key=lambda i: i["version"])
    # "start" from pending once; "complete" only after that, once.
    assert [(i["previous_state"], i["current_state"]) for i in won] in (
        [("pending", "in_progress")],
        [("pending", "in_progress"), ("in_progress", "completed")],
    )
    for response in responses:
        if response.status_code != 200:
            assert_error(response, 400, "invalid_transition")
    history = ok(await client.get(f"/v1/items/{item_id}/history", headers=s.h))
    assert_chain(history)
    assert [(h["previous_state"], h["new_state"]) for h in history[1:]] == [
        (i["previous_state"], i["current_state"]) for i in won
    ]
    final = ok(await client.get(f"/v1/items/{item_id}", headers=s.h))
    assert final["current_state"] == history[-1]["new_state"]
    assert final["version"] == 1 + len(won)


async def test_two_hundred_concurrent_creates_number_one_queue_without_gaps(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s = await build_shop(client, await api.world())
    queue = ok(await client.post("/v1/queues", json={"name": "Rush", "ticket_prefix": "R"}, headers=s.h), 201)
    body = {"queue_id": queue["id"], "type_definition_id": s.order["id"]}
    responses = await asyncio.gather(
        *(client.post("/v1/tickets", json=body, headers=s.h) for _ in range(200))
    )
    assert [r.status_code for r in responses] == [201] * 200, {
        r.text for r in responses if r.status_code != 201
    }
    created = [r.json() for r in responses]
    assert sorted(t["number"] for t in created) == list(range(1, 201))
    assert len({t["display_code"] for t in created}) == 200
    assert {t["display_code"] for t in created} == {f"R{n:03d}" for n in range(1, 201)}
    assert len({t["id"] for t in created}) == 200
    for t in created:
        assert t["display_code"] == f"R{t['number']:03d}"
        assert t["position"] == t["number"], t  # told its real place when it joined
        assert (t["current_state"], t["state_category"]) == ("received", "waiting")
    line = await queue_line(client, queue["id"], s.h)
    assert [row["number"] for row in line] == list(range(1, 201))
    assert [row["position"] for row in line] == list(range(1, 201))
    assert ok(await client.post("/v1/tickets/count", json={"queue_id": queue["id"]}, headers=s.h)) == {
        "count": 200
    }
    tid, qid = uuid.UUID(s.id), uuid.UUID(queue["id"])
    counters = await db.fetch(
        "SELECT last_number FROM queue_day_counters WHERE tenant_id = $1 AND queue_id = $2", tid, qid
    )
    assert [row["last_number"] for row in counters] == [200]
    first_rows = await db.fetchval(
        """SELECT count(*) FROM ticket_history h
             JOIN tickets t ON t.tenant_id = h.tenant_id AND t.id = h.ticket_id
            WHERE t.tenant_id = $1 AND t.queue_id = $2
              AND h.previous_state IS NULL AND h.new_state = 'received'""",
        tid,
        qid,
    )
    assert first_rows == 200
    created_events = await db.fetchval(
        "SELECT count(*) FROM events WHERE tenant_id = $1 AND queue_id = $2 AND type = 'ticket.created'",
        tid,
        qid,
    )
    assert created_events == 200


async def test_concurrent_creates_in_several_queues_number_each_queue_on_its_own(
    client: httpx.AsyncClient, api: Api
) -> None:
    a = await build_shop(client, await api.world())
    b = await build_shop(client, await api.world())
    x = ok(await client.post("/v1/queues", json={"name": "X", "ticket_prefix": "X"}, headers=a.h), 201)
    y = ok(await client.post("/v1/queues", json={"name": "Y", "ticket_prefix": "Y"}, headers=a.h), 201)
    bx = ok(await client.post("/v1/queues", json={"name": "X", "ticket_prefix": "X"}, headers=b.h), 201)
    plan = [(a, x)] * 80 + [(a, y)] * 80 + [(b, bx)] * 40
    order = [plan[i] for i in sorted(range(len(plan)), key=lambda i: (i % 80, i))]  # interleave the queues
    responses = await asyncio.gather(
        *(
            client.post(
                "/v1/tickets", json={"queue_id": q["id"], "type_definition_id": s.order["id"]}, headers=s.h
            )
            for s, q in order
        )
    )
    assert {r.status_code for r in responses} == {201}, {r.text for r in responses if r.status_code != 201}
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for response in responses:
        ticket = response.json()
        by_queue.setdefault(ticket["queue_id"], []).append(ticket)
    for queue, count, owner in ((x, 80, a), (y, 80, a), (bx, 40, b)):
        made = by_queue[queue["id"]]
        prefix = queue["ticket_prefix"]
        assert sorted(t["number"] for t in made) == list(range(1, count + 1)), queue["name"]
        assert {t["display_code"] for t in made} == {f"{prefix}{n:03d}" for n in range(1, count + 1)}
        assert {t["tenant_id"] for t in made} == {owner.id}
        line = await queue_line(client, queue["id"], owner.h)
        assert [row["number"] for row in line] == list(range(1, count + 1))
        assert [row["position"] for row in line] == list(range(1, count + 1))
    # The queues that took no part kept their own line: A's and B's Main still hold their 2 tickets.
    for s in (a, b):
        assert [row["id"] for row in await queue_line(client, s.queue["id"], s.h)] == [
            s.waiting["id"],
            s.ticket["id"],
        ]


# --- 2b. a type change racing with transitions into the state it drops ---------------------------------

RACE_FSM: dict[str, Any] = {
    "init": "idle",
    "states": ["idle", "busy", "extra", "done"],
    "transitions": [
        {"name": "go", "from": "idle", "to": "busy"},
        {"name": "detour", "from": "busy", "to": "extra"},
        {"name": "finish", "from": ["busy", "extra"], "to": "done"},
    ],
}
RACE_FSM_WITHOUT_EXTRA: dict[str, Any] = {
    "init": "idle",
    "states": ["idle", "busy", "done"],
    "transitions": [
        {"name": "go", "from": "idle", "to": "busy"},
        {"name": "finish", "from": "busy", "to": "done"},
    ],
}


async def host_ticket(client: httpx.AsyncClient, s: Shop, item_type_id: str, code: str) -> dict[str, Any]:
    """A ticket of a new type (`code`) whose items may be of `item_type_id`."""
    host = ok(
        await client.post(
            "/v1/type-definitions",
            json={
                "type_code": code,
                "type_name": "Host",
                "fsm_schema": FOOD_ORDER_FSM,
                "item_definition_ids": [item_type_id],
            },
            headers=s.h,
        ),
        201,
    )
    body = {"queue_id": s.queue["id"], "type_definition_id": host["id"]}
    ticket: dict[str, Any] = ok(await client.post("/v1/tickets", json=body, headers=s.h), 201)
    return ticket


async def wait_for_lock_wait(db: asyncpg.Connection, table: str) -> None:
    """Until some session waits for a lock on `table`."""
    for _ in range(200):
        waiting = await db.fetchval(
            """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                WHERE c.relname = $1 AND NOT l.granted""",
            table,
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nobody waited for {table}")


@pytest.mark.parametrize("subject", ["ticket", "item"])
async def test_a_type_cannot_drop_a_state_a_concurrent_transition_is_entering(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, database_dsn: str, subject: str
) -> None:
    """PRODUCT §2: "A type whose live tickets use a state cannot drop that state" must hold under concurrency.

    Deterministic interleaving: a transition into `extra` has read the old machine and row-locked its
    ticket (or item) and is held just before writing (another session holds its history table); meanwhile
    an admin drops `extra` from the type. Either the type change waits and then sees the ticket in `extra`
    (409), or the transition uses the new machine (400) -- never both succeeding.
    """
    s = await build_shop(client, await api.world())
    code = f"race_{subject}"
    race_type = ok(
        await client.post(
            "/v1/type-definitions",
            json={"type_code": code, "type_name": "Race", "fsm_schema": RACE_FSM},
            headers=s.h,
        ),
        201,
    )
    if subject == "ticket":
        body = {"queue_id": s.queue["id"], "type_definition_id": race_type["id"]}
        target = ok(await client.post("/v1/tickets", json=body, headers=s.h), 201)["id"]
        path, history_table = f"/v1/tickets/{target}", "ticket_history"
    else:
        ticket = await host_ticket(client, s, race_type["id"], "race_host")
        target = ok(
            await client.post(
                f"/v1/tickets/{ticket['id']}/items",
                json={"item_type_definition_id": race_type["id"]},
                headers=s.h,
            ),
            201,
        )["id"]
        path, history_table = f"/v1/items/{target}", "item_history"
    ok(await client.post(f"{path}/transition", json={"transition": "go"}, headers=s.h))

    holder = await asyncpg.connect(database_dsn)
    hold = holder.transaction()
    await hold.start()
    released = False
    try:
        await holder.execute(f"LOCK TABLE {history_table} IN SHARE MODE")
        move = asyncio.create_task(
            client.post(f"{path}/transition", json={"transition": "detour"}, headers=s.h)
        )
        await wait_for_lock_wait(db, history_table)
        change = asyncio.create_task(
            client.patch(
                f"/v1/type-definitions/{race_type['id']}",
                json={"fsm_schema": RACE_FSM_WITHOUT_EXTRA},
                headers=s.h,
            )
        )
        await asyncio.wait([change], timeout=1.0)  # a correct app makes the change wait for the transition
        await hold.commit()
        released = True
        moved, changed = await asyncio.wait_for(asyncio.gather(move, change), timeout=10)
    finally:
        if not released:
            await hold.rollback()
        await holder.close()

    final = ok(await client.get(path, headers=s.h))
    machine = ok(await client.get(f"/v1/type-definitions/{race_type['id']}", headers=s.h))["fsm_schema"]
    assert final["current_state"] in machine["states"], (
        f"the {subject} is in {final['current_state']!r}, a state its type no longer has "
        f"(transition {moved.status_code}, type change {changed.status_code})"
    )
    if changed.status_code == 409:
        assert moved.status_code == 200
        assert assert_error(changed, 409, "conflict")["details"] == {"states_in_use": ["extra"]}
    else:
        assert changed.status_code == 200, changed.text
        assert_error(moved, 400, "invalid_transition")
        assert final["current_state"] == "busy"


RACE_FSM_NEW_START: dict[str, Any] = {  # RACE_FSM with its start state `idle` replaced by `ready`
    "init": "ready",
    "states": ["ready", "busy", "extra", "done"],
    "transitions": [
        {"name": "go", "from": "ready", "to": "busy"},
        {"name": "detour", "from": "busy", "to": "extra"},
        {"name": "finish", "from": ["busy", "extra"], "to": "done"},
    ],
}


@pytest.mark.parametrize("subject", ["ticket", "item"])
async def test_a_type_cannot_drop_the_start_state_a_concurrent_create_is_entering(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, database_dsn: str, subject: str
) -> None:
    """As above, for a create: it has read the type's start state and is held just before writing; an admin
    replaces that state. Before the fix the change answered 200 and the create then wrote its ticket (or
    item) in the dropped state, where no transition, cancel or call-next could move it again.

    A ticket's create (one statement) is held before it runs, so the change goes first and the create
    starts again from the new machine. An item's create share-locks its type inside its transaction
    before it is held, so the change waits for it and is then refused (the item is in `idle`).
    """
    s = await build_shop(client, await api.world())
    race_type = ok(
        await client.post(
            "/v1/type-definitions",
            json={"type_code": f"race_new_{subject}", "type_name": "Race", "fsm_schema": RACE_FSM},
            headers=s.h,
        ),
        201,
    )
    if subject == "ticket":
        url, history_table = "/v1/tickets", "ticket_history"
        body = {"queue_id": s.queue["id"], "type_definition_id": race_type["id"]}
        # This process has the type's machine compiled (a first create reads the type's schemas); that
        # ticket then leaves the start state, so that only the held create can be in it.
        first = ok(await client.post(url, json=body, headers=s.h), 201)
        for step in ("go", "finish"):
            ok(
                await client.post(
                    f"/v1/tickets/{first['id']}/transition", json={"transition": step}, headers=s.h
                )
            )
    else:
        ticket = await host_ticket(client, s, race_type["id"], "race_new_host")
        url, history_table = f"/v1/tickets/{ticket['id']}/items", "item_history"
        body = {"item_type_definition_id": race_type["id"]}
    numbers_before = await db.fetchval(
        "SELECT coalesce(max(number), 0) FROM tickets WHERE queue_id = $1", s.queue["id"]
    )

    holder = await asyncpg.connect(database_dsn)
    hold = holder.transaction()
    await hold.start()
    released = False
    try:
        await holder.execute(f"LOCK TABLE {history_table} IN SHARE MODE")
        create = asyncio.create_task(client.post(url, json=body, headers=s.h))
        await wait_for_lock_wait(db, history_table)
        # Two more creates of the ticket read the old machine too, then wait in this process for the held
        # one's statement: after it, they go together in one statement (tickets/batching.py).
        more = [
            asyncio.create_task(client.post(url, json=body, headers=s.h))
            for _ in range(2 * (subject == "ticket"))
        ]
        await asyncio.sleep(0.2)
        change = asyncio.create_task(
            client.patch(
                f"/v1/type-definitions/{race_type['id']}",
                json={"fsm_schema": RACE_FSM_NEW_START},
                headers=s.h,
            )
        )
        await asyncio.wait([change], timeout=1.0)
        await hold.commit()
        released = True
        created, changed, *others = await asyncio.wait_for(asyncio.gather(create, change, *more), timeout=10)
    finally:
        if not released:
            await hold.rollback()
        await holder.close()

    new = ok(created, 201)
    machine = ok(await client.get(f"/v1/type-definitions/{race_type['id']}", headers=s.h))["fsm_schema"]
    assert new["current_state"] in machine["states"], (
        f"the new {subject} is in {new['current_state']!r}, a state its type no longer has "
        f"(type change {changed.status_code})"
    )
    if subject == "ticket":
        ok(changed)
        assert new["current_state"] == "ready"
        # The attempts from the old machine wrote nothing: no number was used up.
        assert new["number"] == numbers_before + 1
        assert sorted((ok(r, 201)["number"], r.json()["current_state"]) for r in others) == [
            (numbers_before + 2, "ready"),
            (numbers_before + 3, "ready"),
        ]
        assert (
            ok(
                await client.post(
                    f"/v1/tickets/{new['id']}/transition", json={"transition": "go"}, headers=s.h
                )
            )["current_state"]
            == "busy"
        )
    else:
        assert assert_error(changed, 409, "conflict")["details"] == {"states_in_use": ["idle"]}
        assert new["current_state"] == "idle"


# --- 3. display keys --------------------------------------------------------------------------------------


async def test_display_keys_see_the_line_without_personal_data_and_change_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    s = await build_shop(client, await api.world())
    w = s.world
    display = auth(await api.key("tenant", "display", key=w.tenant_admin, tenant_id=s.id))
    staff = auth(await api.key("tenant", "staff", key=w.tenant_admin, tenant_id=s.id))
    hidden = ok(
        await client.post(
            "/v1/queues",
            json={"name": "Hidden", "ticket_prefix": "H", "show_wait_time": False},
            headers=s.h,
        ),
        201,
    )
    guest = ok(
        await client.post(
            "/v1/tickets",
            json={
                "queue_id": s.queue["id"],
                "type_definition_id": s.order["id"],
                "custom_data": {"allergy": "nuts"},
            },
            headers=s.h,
        ),
        201,
    )
    hidden_ticket = ok(
        await client.post(
            "/v1/tickets",
            json={
                "queue_id": hidden["id"],
                "type_definition_id": s.order["id"],
                "customer_id": s.customer["id"],
                "custom_data": {"phone": "555-0100"},
                "estimated_wait_minutes": 7,
            },
            headers=s.h,
        ),
        201,
    )
    # s.ticket: customer, employee, custom data, in service; s.waiting and guest: waiting.
    as_staff = {row["id"]: row for row in await queue_line(client, s.queue["id"], staff)}
    as_display = {row["id"]: row for row in await queue_line(client, s.queue["id"], display)}
    assert set(as_staff) == set(as_display) == {s.ticket["id"], s.waiting["id"], guest["id"]}
    full = as_staff[s.ticket["id"]]
    assert (full["customer_id"], full["employee_id"], full["custom_data"]) == (
        s.customer["id"],
        s.employee["id"],
        {"note": "secret"},
    )
    assert full["customer_page"]
    assert as_staff[guest["id"]]["custom_data"] == {"allergy": "nuts"}
    for ticket_id, row in as_display.items():
        assert (row["customer_id"], row["employee_id"], row["custom_data"], row["customer_page"]) == (
            None,
            None,
            {},
            None,
        ), row
        for name in PERSONAL_FIELDS:
            assert row[name] in (None, {}), (name, row)
        # Everything else is what staff see.
        personal = (*PERSONAL_FIELDS, "customer_page")
        public = {k: v for k, v in as_staff[ticket_id].items() if k not in personal}
        assert {k: row[k] for k in public} == public
    assert [row["position"] for row in as_display.values()] == [1, 2, None]
    text = json.dumps(list(as_display.values()))
    for secret in ("secret", "nuts", s.customer["id"], s.employee["id"], "Quill", s.customer["email"]):
        assert secret not in text, secret

    # A queue that hides wait times hides them from displays (staff still see them).
    staff_hidden = await queue_line(client, hidden["id"], staff)
    display_hidden = await queue_line(client, hidden["id"], display)
    assert [r["id"] for r in staff_hidden] == [r["id"] for r in display_hidden] == [hidden_ticket["id"]]
    assert staff_hidden[0]["estimated_wait_minutes"] == 7
    assert staff_hidden[0]["custom_data"] == {"phone": "555-0100"}
    shown = display_hidden[0]
    assert (shown["estimated_wait_minutes"], shown["original_estimated_wait_minutes"]) == (None, None)
    assert (shown["customer_id"], shown["custom_data"]) == (None, {})

    # The monitor (also readable by displays) names people privately and carries no custom data.
    monitor = await client.get(f"/v1/queues/{s.queue['id']}/monitor", headers=display)
    assert monitor.status_code == 200, monitor.text
    assert "Pat Q." in monitor.text
    for secret in ("secret", "nuts", "Quill", s.customer["email"], s.customer["id"]):
        assert secret not in monitor.text, secret

    # A display key changes nothing and reads no ticket outside the line feed.
    before = await snapshot(db, s.id)
    ticket, waiting, item = s.ticket["id"], s.waiting["id"], s.item["id"]
    create = {"queue_id": s.queue["id"], "type_definition_id": s.order["id"]}
    for method, path, body in (
        ("POST", "/v1/tickets", create),
        ("POST", f"/v1/tickets/{waiting}/transition", {"transition": "start_preparation"}),
        ("POST", f"/v1/tickets/{ticket}/transition", {"transition": "mark_ready"}),
        ("DELETE", f"/v1/tickets/{waiting}", None),
        ("PATCH", f"/v1/tickets/{waiting}", {"custom_data": {}}),
        ("PUT", f"/v1/tickets/{waiting}", {"ttl_minutes": 1}),
        ("POST", f"/v1/tickets/{waiting}/reorder", {"position": 1}),
        ("POST", f"/v1/tickets/{waiting}/assign", {"employee_id": s.employee["id"]}),
        ("POST", f"/v1/tickets/{ticket}/unassign", None),
        ("POST", f"/v1/tickets/{waiting}/forward", {"target_queue_id": hidden["id"]}),
        ("POST", f"/v1/queues/{s.queue['id']}/call-next", {}),
        ("POST", f"/v1/queues/{s.queue['id']}/disable", None),
        ("POST", f"/v1/tickets/{ticket}/items", {"item_type_definition_id": s.drink["id"]}),
        ("PATCH", f"/v1/items/{item}", {"quantity": 5}),
        ("DELETE", f"/v1/items/{item}", None),
        ("POST", f"/v1/items/{item}/transition", {"transition": "start"}),
        ("GET", f"/v1/tickets/{ticket}", None),
        ("GET", "/v1/tickets", None),
        ("POST", "/v1/tickets/count", {}),
        ("GET", f"/v1/tickets/{ticket}/history", None),
        ("GET", f"/v1/tickets/{ticket}/items", None),
        ("GET", f"/v1/items/{item}", None),
        ("GET", f"/v1/items/{item}/history", None),
        ("GET", f"/v1/queues/{s.queue['id']}/stats", None),
        ("GET", f"/v1/customers/{s.customer['id']}", None),
    ):
        assert_error(await call(client, method, path, display, body), 403, "forbidden")
    assert await snapshot(db, s.id) == before
    # The same requests are well formed: staff can do them.
    start = {"transition": "start_preparation"}
    ok(await client.post(f"/v1/tickets/{waiting}/transition", json=start, headers=staff))
    ok(await client.post("/v1/tickets", json=create, headers=staff), 201)
