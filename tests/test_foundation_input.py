"""Bad input on every foundation endpoint (accounts, tenants, customers, employees, API keys): the documented
4xx with the error envelope, and no row written or changed. Also pagination, filters and framework errors."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, ok
from virtualq.kit.middleware import request_ids

MALFORMED = [b'{"name": ', b"[1, 2]", b"42", b'"text"', b"null", b"", b"\xff\xfe", b'{"name": "a",}']
TOO_LONG = "x" * 101


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    tables = ("accounts", "tenants", "customers", "employees", "api_keys")
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in tables}


async def snapshot(db: asyncpg.Connection, table: str, row_id: str) -> dict[str, Any]:
    row = await db.fetchrow(f"SELECT * FROM {table} WHERE id = $1", uuid.UUID(row_id))
    assert row is not None
    return dict(row)


@pytest.fixture
async def world(api: Api, client: httpx.AsyncClient) -> dict[str, Any]:
    w = await api.world()
    customer = ok(
        await client.post("/v1/customers", json={"fname": "Ann"}, headers=auth(w.tenant_admin)), 201
    )
    employee = ok(
        await client.post(
            "/v1/employees",
            json={"fname": "Bo", "lname": "Li", "email": "bo@example.com"},
            headers=auth(w.tenant_admin),
        ),
        201,
    )
    return {"w": w, "customer": customer["id"], "employee": employee["id"]}


# (path template, valid base body, [(field overrides, why)])
CREATES: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
    "account": (
        "/v1/accounts",
        {"name": "Acme"},
        [
            {"name": ""},
            {"name": TOO_LONG},
            {"name": 5},
            {"name": None},
            {"billing_email": "not-an-email"},
            {"billing_address": "x" * 2001},
            {"surprise": 1},
        ],
    ),
    "tenant": (
        "/v1/tenants",
        {"name": "Shop", "account_id": "{account}"},
        [
            {"name": ""},
            {"name": TOO_LONG},
            {"account_id": "not-a-uuid"},
            {"account_id": 7},
            {"timezone": "Mars/Olympus_Mons"},
            {"timezone": ""},
            {"timezone": "localtime"},  # a file of the zoneinfo directory, not a zone; PostgreSQL lacks it
            {"timezone": "posixrules"},
            {"timezone": "Factory"},
            {"location_coordinates": {"latitude": 91, "longitude": 0}},
            {"location_coordinates": {"latitude": 0, "longitude": -181}},
            {"location_coordinates": {"latitude": "north", "longitude": 0}},
            {"location_coordinates": {"latitude": 1}},
            {"config": [1, 2]},
            {"config": "x"},
            {"is_active": "yes"},
        ],
    ),
    "customer": (
        "/v1/customers",
        {"fname": "Cy"},
        [
            {"fname": ""},
            {"fname": TOO_LONG},
            {"email": "nope"},
            {"phone": "call me"},
            {"phone": "1" * 40},
            {"id": "not-a-uuid"},
            {"account_id": "zzz"},
            {"fname": ["Cy"]},
        ],
    ),
    "employee": (
        "/v1/employees",
        {"fname": "Eve", "lname": "Ng", "email": "eve@example.com"},
        [
            {"fname": ""},
            {"lname": TOO_LONG},
            {"email": "eve"},
            {"email": None},
            {"email": 12},
            {"queue_ids": ["x"]},
            {"tenant_id": "nope"},
        ],
    ),
    "api key": (
        "/v1/api-keys",
        {"name": "k", "scope": "tenant", "role": "staff", "tenant_id": "{tenant}"},
        [
            {"scope": "galaxy"},
            {"role": "overlord"},
            {"role": None},
            {"name": ""},
            {"name": TOO_LONG},
            {"tenant_id": "nope"},
            {"scope": "platform", "tenant_id": "{tenant}"},
            {"account_id": "x"},
            {"employee_id": "x"},
        ],
    ),
}


def fill(body: dict[str, Any], world: dict[str, Any]) -> dict[str, Any]:
    w = world["w"]
    return {
        key: value.format(account=w.account_id, tenant=w.tenant_id) if isinstance(value, str) else value
        for key, value in body.items()
    }


def key_for(kind: str, api: Api, world: dict[str, Any]) -> dict[str, str]:
    w = world["w"]
    if kind == "account":
        return auth(api.admin_key)
    if kind == "tenant":
        return auth(w.account_admin)
    return auth(w.tenant_admin)


@pytest.mark.parametrize("kind", list(CREATES))
async def test_bad_create_bodies_are_400_and_write_nothing(
    kind: str, client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, world: dict[str, Any]
) -> None:
    path, base, cases = CREATES[kind]
    headers = key_for(kind, api, world)
    before = await counts(db)
    for raw in MALFORMED:
        response = await client.post(
            path, content=raw, headers={**headers, "Content-Type": "application/json"}
        )
        assert_error(response, 400, "validation_error")
    for override in cases:
        body = fill({**base, **override}, world)
        response = await client.post(path, json=body, headers=headers)
        details = assert_error(response, 400, "validation_error")["details"]
        assert details, (kind, override)
    response = await client.post(path, json=fill(base, world) | {"padding": "x" * 2_000_000}, headers=headers)
    assert_error(response, 413, "payload_too_large")
    assert await counts(db) == before
    # The valid body itself is accepted: the failures above were about the bad parts only.
    ok(await client.post(path, json=fill(base, world), headers=headers), 201)


UPDATES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "accounts": ("/v1/accounts/{id}", [{"name": ""}, {"name": None}, {"is_active": "no"}, {"x": 1}]),
    "tenants": (
        "/v1/tenants/{id}",
        [
            {"timezone": "Nowhere/City"},
            {"timezone": "localtime"},
            {"name": None},
            {"config": None},
            {"location_coordinates": {"latitude": -91, "longitude": 0}},
        ],
    ),
    "customers": ("/v1/customers/{id}", [{"email": "x"}, {"fname": TOO_LONG}, {"id": str(uuid.uuid4())}]),
    "employees": (
        "/v1/employees/{id}",
        [{"email": "x"}, {"fname": None}, {"is_active": 1}, {"tenant_id": "x"}],
    ),
}


@pytest.mark.parametrize("table", list(UPDATES))
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_bad_updates_are_400_and_change_nothing(
    table: str,
    method: str,
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    world: dict[str, Any],
) -> None:
    w = world["w"]
    ids = {"accounts": w.account_id, "tenants": w.tenant_id, "customers": world["customer"],
           "employees": world["employee"]}  # fmt: skip
    headers = auth(w.account_admin if table in ("accounts", "tenants") else w.tenant_admin)
    path_template, cases = UPDATES[table]
    path = path_template.format(id=ids[table])
    before = await snapshot(db, table, ids[table])
    for raw in MALFORMED:
        response = await client.request(
            method, path, content=raw, headers={**headers, "Content-Type": "application/json"}
        )
        assert_error(response, 400, "validation_error")
    for body in cases:
        assert_error(await client.request(method, path, json=body, headers=headers), 400, "validation_error")
    for bad_id in ("not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"):
        response = await client.request(
            method, path_template.format(id=bad_id), json={"name": "x"}, headers=headers
        )
        assert_error(response, 400, "validation_error")
    response = await client.request(
        method, path_template.format(id=uuid.uuid4()), json={"fname": "Zed"}, headers=headers
    )
    assert response.status_code in (400, 404), response.text  # unknown id (or, for accounts, unknown field)
    assert await snapshot(db, table, ids[table]) == before


async def test_bad_uuids_in_paths_are_400(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    h = auth(world["w"].tenant_admin)
    # A tenant's key may not use the account endpoints at all: refused before the path is read.
    assert_error(await client.get("/v1/accounts/nope", headers=h), 403, "forbidden")
    body = assert_error(
        await client.get("/v1/accounts/nope", headers=auth(world["w"].account_admin)), 400, "validation_error"
    )
    assert body["details"]
    for path in (
        "/v1/tenants/nope",
        "/v1/accounts/nope/tenants",
        "/v1/customers/nope",
        "/v1/employees/nope",
        "/v1/api-keys/nope",
        "/v1/tickets/nope",
        "/v1/queues/nope",
        "/v1/type-definitions/nope",
    ):
        body = assert_error(await client.get(path, headers=h), 400, "validation_error")
        assert body["details"], path
    assert_error(await client.delete("/v1/api-keys/nope", headers=h), 400, "validation_error")


async def test_conflicts_on_customer_ids_and_employee_emails(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, world: dict[str, Any]
) -> None:
    w = world["w"]
    h = auth(w.tenant_admin)
    own_id = str(uuid.uuid4())
    created = ok(await client.post("/v1/customers", json={"id": own_id, "fname": "Kim"}, headers=h), 201)
    assert created["id"] == own_id  # a client-supplied id is kept
    before = await counts(db)
    assert_error(
        await client.post("/v1/customers", json={"id": own_id, "fname": "Lee"}, headers=h), 409, "conflict"
    )
    for email in ("bo@example.com", "BO@example.com"):
        response = await client.post(
            "/v1/employees", json={"fname": "Bo", "lname": "Two", "email": email}, headers=h
        )
        assert_error(response, 409, "conflict")
    second = ok(
        await client.post(
            "/v1/employees", json={"fname": "Al", "lname": "X", "email": "al@example.com"}, headers=h
        ),
        201,
    )
    assert_error(
        await client.patch(f"/v1/employees/{second['id']}", json={"email": "bo@example.com"}, headers=h),
        409,
        "conflict",
    )
    assert (await snapshot(db, "employees", second["id"]))["email"] == "al@example.com"
    assert await counts(db) == {**before, "employees": before["employees"] + 1}
    # The same email in another tenant is fine.
    other = await api.world()
    ok(
        await client.post(
            "/v1/employees",
            json={"fname": "Bo", "lname": "Li", "email": "bo@example.com"},
            headers=auth(other.tenant_admin),
        ),
        201,
    )


async def test_pagination_totals_boundaries_and_filters(client: httpx.AsyncClient, api: Api) -> None:
    w = await api.world()
    h = auth(w.account_admin)
    made = [
        ok(await client.post("/v1/customers", json={"fname": f"C{i}"}, headers=h), 201)["id"]
        for i in range(7)
    ]
    first = ok(await client.get("/v1/customers", params={"limit": 3}, headers=h))
    assert first["pagination"] == {"page": 1, "limit": 3, "total": 7, "total_pages": 3}
    pages = [first]
    for page in (2, 3):
        pages.append(ok(await client.get("/v1/customers", params={"limit": 3, "page": page}, headers=h)))
    assert [len(p["data"]) for p in pages] == [3, 3, 1]
    assert [row["id"] for p in pages for row in p["data"]] == made  # creation order, no overlap
    beyond = ok(await client.get("/v1/customers", params={"limit": 3, "page": 9}, headers=h))
    assert beyond["data"] == []
    assert beyond["pagination"]["total"] == 7
    default = ok(await client.get("/v1/customers", headers=h))
    assert default["pagination"]["limit"] == 20
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"page": 0},
        {"page": -1},
        {"limit": "ten"},
        {"page": "1.5"},
    ):
        assert_error(await client.get("/v1/customers", params=params, headers=h), 400, "validation_error")

    assert (await client.delete(f"/v1/customers/{made[0]}", headers=h)).status_code == 204
    active = ok(await client.get("/v1/customers", params={"is_active": "true"}, headers=h))
    inactive = ok(await client.get("/v1/customers", params={"is_active": "false"}, headers=h))
    assert active["pagination"]["total"] == 6
    assert [row["id"] for row in inactive["data"]] == [made[0]]
    middle = (await client.get(f"/v1/customers/{made[3]}", headers=h)).json()["created_at"]
    after = ok(await client.get("/v1/customers", params={"created_after": middle}, headers=h))
    before = ok(await client.get("/v1/customers", params={"created_before": middle}, headers=h))
    assert [row["id"] for row in after["data"]] == made[4:]
    assert [row["id"] for row in before["data"]] == made[:3]
    for params in ({"created_after": "yesterday"}, {"created_before": "2026-13-01"}, {"is_active": "maybe"}):
        assert_error(await client.get("/v1/customers", params=params, headers=h), 400, "validation_error")


async def test_framework_errors_use_the_envelope(client: httpx.AsyncClient, api: Api) -> None:
    h = auth(api.admin_key)
    assert_error(await client.get("/v1/nothing-here", headers=h), 404, "not_found")
    assert_error(await client.get("/nowhere"), 404, "not_found")
    response = await client.request("PATCH", "/v1/accounts", json={}, headers=h)
    assert_error(response, 405, "method_not_allowed")
    # Starlette names the methods of the first matching route only (here POST); never PATCH.
    assert "PATCH" not in response.headers["allow"]
    response = await client.post(
        "/v1/accounts", content=b"name=x", headers={**h, "Content-Type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_media_type")


async def test_a_broken_or_missing_body_says_what_is_wrong(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    """Not JSON: where and why, with no field (FastAPI puts the character's position there); no body where
    one is needed: that a JSON body is, and what to send when there is nothing to set."""
    h = {**auth(world["w"].tenant_admin), "Content-Type": "application/json"}
    body = assert_error(
        await client.post("/v1/queues", content=b'{"name": ', headers=h), 400, "validation_error"
    )
    assert body["details"]["errors"] == [
        {
            "location": "body",
            "field": "",
            "message": "JSON decode error at character 9: Expecting value",
            "type": "json_invalid",
        }
    ]
    queue = (await client.post("/v1/queues", json={"name": "Q"}, headers=h)).json()
    for path in ("/v1/queues", f"/v1/tickets/{uuid.uuid4()}/transition"):  # a route and a fast path
        missing = assert_error(await client.post(path, headers=h), 400, "validation_error")
        assert missing["details"]["errors"] == [
            {
                "location": "body",
                "field": "",
                "message": "A JSON body is required (send {} when there is nothing to set).",
                "type": "missing",
            }
        ], path
    # Call-next takes no required field, so no body is needed either (it answered as above).
    empty = await client.post(f"/v1/queues/{queue['id']}/call-next", headers=auth(world["w"].tenant_admin))
    assert_error(empty, 404, "queue_empty")


async def test_a_customer_link_with_a_wrong_token_answers_as_no_ticket_and_names_the_token(
    client: httpx.AsyncClient, api: Api
) -> None:
    t = await Tenant.create(client, api)
    ticket = await t.ticket((await t.queue())["id"], (await t.type("order", FOOD_ORDER_FSM))["id"])
    token = ticket["customer_page"].split("token=")[1]
    assert (
        ok(await client.get(f"/v1/public/tickets/{ticket['id']}", params={"token": token}))["id"]
        == ticket["id"]
    )
    wrong = await client.get(f"/v1/public/tickets/{ticket['id']}", params={"token": "0" * len(token)})
    missing = await client.get(f"/v1/public/tickets/{uuid.uuid4()}", params={"token": token})
    messages = {assert_error(response, 404, "not_found")["message"] for response in (wrong, missing)}
    assert messages == {
        "no ticket matches this id and token (the token is in the ticket's customer_page link)"
    }


async def test_request_ids_are_echoed_or_generated(client: httpx.AsyncClient, api: Api) -> None:
    h = auth(api.admin_key)
    sent = "trace-abc-123"
    response = await client.get("/v1/accounts", headers={**h, "X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent
    response = await client.get("/v1/nope", headers={**h, "X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent
    assert response.json()["request_id"] == sent
    generated = await client.get("/v1/accounts", headers=h)
    assert len(generated.headers["x-request-id"]) >= 16
    assert generated.headers["x-request-id"] != sent
    # An unreasonable id (too long, or with characters unsafe for logs) is replaced, not echoed.
    for weird in ("x" * 500, "bad id with spaces", "a\tb"):
        response = await client.get("/v1/accounts", headers={**h, "X-Request-ID": weird})
        assert response.headers["x-request-id"] != weird
        assert len(response.headers["x-request-id"]) <= 128


async def test_generated_request_ids_are_distinct(client: httpx.AsyncClient, api: Api) -> None:
    h = auth(api.admin_key)
    ids = [(await client.get("/v1/accounts", headers=h)).headers["x-request-id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert {value[:16] for value in ids} == {request_ids.prefix}


def test_a_forked_process_draws_its_own_request_ids() -> None:
    # A worker forked from a process that already served requests must not repeat its ids.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_end, request_ids.next().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_id = request_ids.next()
    assert re.fullmatch(r"[0-9a-f]{32}", child_id)
    assert child_id[:16] != parent_id[:16]


async def test_a_timezone_the_database_does_not_know_is_refused_on_create_and_update(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tickets are numbered by the tenant's local day in PostgreSQL: a zone Python's list has and the
    database's lacks ("localtime" on this machine, or a zone newer than an external server's tz files)
    made every create of that tenant a 500. Such a zone is now a 400 naming the field, and nothing is
    written."""
    from virtualq.kit import schemas

    monkeypatch.setattr(schemas, "_timezones", lambda: frozenset({"UTC", "Europe/Tallinn", "Mars/Base"}))
    account = await api.account("Zones")
    headers = auth(api.admin_key)
    before = await db.fetchval("SELECT count(*) FROM tenants")
    body = {"account_id": account["id"], "name": "Red planet", "timezone": "Mars/Base"}
    response = await client.post("/v1/tenants", json=body, headers=headers)
    assert_error(response, 400, "validation_error")
    assert response.json()["details"] == {"field": "timezone"}
    assert "Mars/Base" in response.json()["message"]
    assert await db.fetchval("SELECT count(*) FROM tenants") == before
    tenant = ok(
        await client.post("/v1/tenants", json={**body, "timezone": "Europe/Tallinn"}, headers=headers), 201
    )
    for method in ("PATCH", "PUT"):
        response = await client.request(
            method, f"/v1/tenants/{tenant['id']}", json={"timezone": "Mars/Base"}, headers=headers
        )
        assert_error(response, 400, "validation_error")
    assert (await client.get(f"/v1/tenants/{tenant['id']}", headers=headers)).json()["timezone"] == (
        "Europe/Tallinn"
    )


async def test_a_null_for_a_field_that_takes_none_names_the_field(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    """An update leaves out what it keeps; null is refused where a field has no empty value. The error named
    no field and began with pydantic's "Value error, ", and the schema offered null."""
    t = await Tenant.create(client, api)
    ticket = await t.ticket((await t.queue())["id"], (await t.type("order", FOOD_ORDER_FSM))["id"])
    for method in ("PATCH", "PUT"):
        response = await client.request(
            method, f"/v1/tickets/{ticket['id']}", json={"custom_data": None}, headers=t.h
        )
        [problem] = assert_error(response, 400, "validation_error")["details"]["errors"]
        assert (problem["location"], problem["field"]) == ("body", "custom_data")
        assert problem["message"].startswith("may not be null")
    schema = app.openapi()["components"]["schemas"]["TicketUpdate"]["properties"]
    assert schema["custom_data"]["type"] == "object"
    assert "anyOf" in schema["ttl_minutes"]  # null removes the time limit
    timezone = await client.patch(f"/v1/tenants/{t.id}", json={"timezone": "Nowhere/City"}, headers=t.h)
    [problem] = assert_error(timezone, 400, "validation_error")["details"]["errors"]
    assert problem["message"].startswith("must be an IANA time zone name")
