"""The access model (PRODUCT §6, docs/access.md): no key, bad keys, revoked keys, every scope and role against
every endpoint group, key issuance rules, tenant context, and isolation between accounts and tenants."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import make_settings
from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, ok
from virtualq.app import create_app
from virtualq.db import create_pool

SCOPES = ("platform", "account", "tenant")
ROLES = ("admin", "staff", "display")


@dataclass
class Fixture:
    account_id: str
    tenant_id: str
    queue_id: str
    type_id: str
    ticket_id: str
    customer_id: str
    employee_id: str
    keys: dict[tuple[str, str], str]


async def build(client: httpx.AsyncClient, api: Api) -> Fixture:
    world = await api.world()
    h = auth(world.tenant_admin)
    order = ok(
        await client.post(
            "/v1/type-definitions",
            json={"type_code": "order", "type_name": "Order", "fsm_schema": FOOD_ORDER_FSM},
            headers=h,
        ),
        201,
    )
    queue = ok(await client.post("/v1/queues", json={"name": "Main"}, headers=h), 201)
    ticket = ok(
        await client.post(
            "/v1/tickets", json={"queue_id": queue["id"], "type_definition_id": order["id"]}, headers=h
        ),
        201,
    )
    customer = ok(await client.post("/v1/customers", json={"fname": "Ann"}, headers=h), 201)
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "Bo", "lname": "Li", "email": "bo@example.com"}, headers=h
        ),
        201,
    )
    keys: dict[tuple[str, str], str] = {}
    for role in ROLES:
        keys[("platform", role)] = await api.key("platform", role)
        keys[("account", role)] = await api.key("account", role, account_id=world.account_id)
        keys[("tenant", role)] = await api.key("tenant", role, tenant_id=world.tenant_id)
    return Fixture(
        world.account_id,
        world.tenant_id,
        queue["id"],
        order["id"],
        ticket["id"],
        customer["id"],
        employee["id"],
        keys,
    )


def unique() -> str:
    return uuid.uuid4().hex[:10]


# (name, method, path, body, expected success status, who may) — `who` takes (scope, role).
Case = tuple[str, str, Callable[[Fixture], str], Callable[[Fixture], Any], int, Callable[[str, str], bool]]


def admin(scope: str, role: str) -> bool:
    return role == "admin"


def above_tenant_admin(scope: str, role: str) -> bool:
    return role == "admin" and scope in ("platform", "account")


def staff_or_admin(scope: str, role: str) -> bool:
    return role in ("admin", "staff")


def anyone(scope: str, role: str) -> bool:
    return True


CASES: list[Case] = [
    ("list accounts", "GET", lambda f: "/v1/accounts", lambda f: None, 200,
     above_tenant_admin),
    ("create account", "POST", lambda f: "/v1/accounts", lambda f: {"name": "New"}, 201,
     lambda s, r: (s, r) == ("platform", "admin")),
    ("get account", "GET", lambda f: f"/v1/accounts/{f.account_id}", lambda f: None, 200,
     above_tenant_admin),
    ("create tenant", "POST", lambda f: "/v1/tenants",
     lambda f: {"account_id": f.account_id, "name": "T"}, 201, above_tenant_admin),
    ("list tenants", "GET", lambda f: "/v1/tenants", lambda f: None, 200, staff_or_admin),
    ("account tenants", "GET", lambda f: f"/v1/accounts/{f.account_id}/tenants", lambda f: None, 200,
     staff_or_admin),
    ("get tenant", "GET", lambda f: f"/v1/tenants/{f.tenant_id}", lambda f: None, 200, staff_or_admin),
    ("patch tenant", "PATCH", lambda f: f"/v1/tenants/{f.tenant_id}", lambda f: {"description": "x"}, 200,
     admin),
    ("list customers", "GET", lambda f: "/v1/customers", lambda f: None, 200, staff_or_admin),
    ("create customer", "POST", lambda f: "/v1/customers",
     lambda f: {"fname": "Cy", "account_id": f.account_id}, 201, staff_or_admin),
    ("get customer", "GET", lambda f: f"/v1/customers/{f.customer_id}", lambda f: None, 200, staff_or_admin),
    ("list employees", "GET", lambda f: "/v1/employees", lambda f: None, 200, staff_or_admin),
    ("tenant employees", "GET", lambda f: f"/v1/tenants/{f.tenant_id}/employees", lambda f: None, 200,
     staff_or_admin),
    ("create employee", "POST", lambda f: "/v1/employees",
     lambda f: {"fname": "E", "lname": "F", "email": f"{unique()}@example.com"}, 201, admin),
    ("patch employee", "PATCH", lambda f: f"/v1/employees/{f.employee_id}", lambda f: {"role": "lead"}, 200,
     admin),
    ("list api keys", "GET", lambda f: "/v1/api-keys", lambda f: None, 200, admin),
    ("create api key", "POST", lambda f: "/v1/api-keys",
     lambda f: {"name": "k", "scope": "tenant", "role": "display", "tenant_id": f.tenant_id}, 201, admin),
    ("create type", "POST", lambda f: "/v1/type-definitions",
     lambda f: {"type_code": f"t_{unique()}", "type_name": "T", "fsm_schema": FOOD_ORDER_FSM}, 201, admin),
    ("list types", "GET", lambda f: "/v1/type-definitions", lambda f: None, 200, staff_or_admin),
    ("create queue", "POST", lambda f: "/v1/queues", lambda f: {"name": "Q"}, 201, admin),
    ("list queues", "GET", lambda f: "/v1/queues", lambda f: None, 200, staff_or_admin),
    ("get queue", "GET", lambda f: f"/v1/queues/{f.queue_id}", lambda f: None, 200, anyone),
    ("patch queue", "PATCH", lambda f: f"/v1/queues/{f.queue_id}", lambda f: {"description": "d"}, 200,
     admin),
    ("create ticket", "POST", lambda f: "/v1/tickets",
     lambda f: {"queue_id": f.queue_id, "type_definition_id": f.type_id}, 201, staff_or_admin),
    ("list tickets", "GET", lambda f: "/v1/tickets", lambda f: None, 200, staff_or_admin),
    ("get ticket", "GET", lambda f: f"/v1/tickets/{f.ticket_id}", lambda f: None, 200, staff_or_admin),
    ("ticket history", "GET", lambda f: f"/v1/tickets/{f.ticket_id}/history", lambda f: None, 200,
     staff_or_admin),
    ("queue tickets", "GET", lambda f: f"/v1/queues/{f.queue_id}/tickets", lambda f: None, 200, anyone),
    ("monitor", "GET", lambda f: f"/v1/queues/{f.queue_id}/monitor", lambda f: None, 200, anyone),
    ("stats", "GET", lambda f: f"/v1/queues/{f.queue_id}/stats", lambda f: None, 200, staff_or_admin),
    ("reorder", "POST", lambda f: f"/v1/tickets/{f.ticket_id}/reorder", lambda f: {"position": 1}, 200,
     staff_or_admin),
]  # fmt: skip


async def test_every_scope_and_role_against_every_endpoint_group(client: httpx.AsyncClient, api: Api) -> None:
    f = await build(client, api)
    wrong: list[str] = []
    for name, method, path, body, success, who in CASES:
        for scope in SCOPES:
            for role in ROLES:
                # Tenant-bound keys carry their tenant; the others name it (ignored where not needed).
                headers = auth(f.keys[(scope, role)], f.tenant_id if scope != "tenant" else None)
                payload = body(f)
                response = (
                    await client.request(method, path(f), json=payload, headers=headers)
                    if payload is not None
                    else await client.request(method, path(f), headers=headers)
                )
                expected = success if who(scope, role) else 403
                if response.status_code != expected:
                    wrong.append(f"{name} as {scope} {role}: {response.status_code} (wanted {expected})")
                elif expected == 403:
                    assert response.json()["error"] == "forbidden"
    assert wrong == []


async def tenant_key(client: httpx.AsyncClient, f: Fixture, role: str) -> dict[str, Any]:
    """A new key of the fixture's tenant with `role`, issued by its tenant admin: the answer, with the key."""
    body = {"name": f"{role} key", "scope": "tenant", "role": role, "tenant_id": f.tenant_id}
    return ok(await client.post("/v1/api-keys", json=body, headers=auth(f.keys[("tenant", "admin")])), 201)


async def test_missing_malformed_unknown_and_revoked_keys(client: httpx.AsyncClient, api: Api) -> None:
    f = await build(client, api)
    path = f"/v1/queues/{f.queue_id}/tickets"
    tenant = {"X-Tenant-ID": f.tenant_id}
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "vq_" + "a" * 43},  # no scheme
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer vq_" + "x" * 43},  # well formed, unknown
        {"Authorization": "Bearer " + "vq_" + "z" * 5000},
        {"X-API-Key": "vq_nope"},
    ]
    for headers in attempts:
        for endpoint in ("/v1/accounts", path, "/v1/api-keys"):
            body = assert_error(
                await client.get(endpoint, headers={**headers, **tenant}), 401, "unauthorized"
            )
            assert "vq_" not in body["message"]

    # The same key works through X-API-Key; revoking it takes effect on the very next request.
    admin_key = f.keys[("tenant", "admin")]
    victim = await tenant_key(client, f, "staff")
    ok(await client.get(path, headers={"X-API-Key": victim["key"]}))
    ok(await client.get(path, headers=auth(victim["key"])))
    assert (await client.delete(f"/v1/api-keys/{victim['id']}", headers=auth(admin_key))).status_code == 204
    assert_error(await client.get(path, headers=auth(victim["key"])), 401, "unauthorized")
    assert_error(await client.get(path, headers={"X-API-Key": victim["key"]}), 401, "unauthorized")

    # A key whose tenant is deactivated is refused (403), and works again once the tenant is back.
    staff = f.keys[("tenant", "staff")]
    account_admin = auth(f.keys[("account", "admin")])
    assert (await client.delete(f"/v1/tenants/{f.tenant_id}", headers=account_admin)).status_code == 204
    assert_error(await client.get(path, headers=auth(staff)), 403, "forbidden")
    ok(await client.patch(f"/v1/tenants/{f.tenant_id}", json={"is_active": True}, headers=account_admin))
    ok(await client.get(path, headers=auth(staff)))


async def test_key_issuance_stays_inside_the_callers_scope(client: httpx.AsyncClient, api: Api) -> None:
    f = await build(client, api)
    other = await build(client, api)
    account_admin = auth(f.keys[("account", "admin")])
    tenant_admin = auth(f.keys[("tenant", "admin")])

    def key_body(scope: str, **owner: str) -> dict[str, Any]:
        return {"name": "k", "scope": scope, "role": "admin", **owner}

    refused = [
        (account_admin, key_body("platform")),
        (account_admin, key_body("account", account_id=other.account_id)),
        (account_admin, key_body("tenant", tenant_id=other.tenant_id)),
        (tenant_admin, key_body("platform")),
        (tenant_admin, key_body("account", account_id=f.account_id)),
        (tenant_admin, key_body("tenant", tenant_id=other.tenant_id)),
    ]
    before = ok(await client.get("/v1/api-keys", params={"limit": 100}, headers=auth(api.admin_key)))
    for headers, body in refused:
        response = await client.post("/v1/api-keys", json=body, headers=headers)
        assert response.status_code in (403, 404), (body, response.text)
        assert response.json()["error"] in ("forbidden", "not_found")
    after = ok(await client.get("/v1/api-keys", params={"limit": 100}, headers=auth(api.admin_key)))
    assert after["pagination"]["total"] == before["pagination"]["total"]

    created = ok(
        await client.post(
            "/v1/api-keys", json=key_body("tenant", tenant_id=f.tenant_id), headers=account_admin
        ),
        201,
    )
    assert created["key"].startswith("vq_")
    # The tenant may be named by X-Tenant-ID, as everywhere else; within the caller's scope all the same.
    by_header = ok(
        await client.post(
            "/v1/api-keys", json=key_body("tenant"), headers={**account_admin, "X-Tenant-ID": f.tenant_id}
        ),
        201,
    )
    assert by_header["tenant_id"] == f.tenant_id
    by_parameter = await client.post(
        "/v1/api-keys", params={"tenant_id": f.tenant_id}, json=key_body("tenant"), headers=account_admin
    )
    assert ok(by_parameter, 201)["tenant_id"] == f.tenant_id
    outside = await client.post(
        "/v1/api-keys", json=key_body("tenant"), headers={**account_admin, "X-Tenant-ID": other.tenant_id}
    )
    assert_error(outside, 403, "forbidden")
    disagree = await client.post(
        "/v1/api-keys",
        json=key_body("tenant", tenant_id=f.tenant_id),
        headers={**auth(api.admin_key), "X-Tenant-ID": other.tenant_id},
    )
    assert assert_error(disagree, 400, "validation_error")["details"] == {"field": "tenant_id"}
    shown = ok(await client.get(f"/v1/api-keys/{created['id']}", headers=account_admin))
    assert "key" not in shown
    assert created["key"] not in str(ok(await client.get("/v1/api-keys", headers=account_admin)))

    # Lists show only keys within reach.
    listed = ok(await client.get("/v1/api-keys", params={"limit": 100}, headers=tenant_admin))
    assert listed["data"]
    assert all(key["tenant_id"] == f.tenant_id for key in listed["data"])
    listed = ok(await client.get("/v1/api-keys", params={"limit": 100}, headers=account_admin))
    assert all(key["account_id"] == f.account_id or key["tenant_id"] == f.tenant_id for key in listed["data"])
    other_ids = {
        key["id"]
        for key in ok(
            await client.get(
                "/v1/api-keys", params={"limit": 100}, headers=auth(other.keys[("account", "admin")])
            )
        )["data"]
    }
    assert other_ids.isdisjoint({key["id"] for key in listed["data"]})
    for other_key_id in list(other_ids)[:3]:
        assert_error(
            await client.get(f"/v1/api-keys/{other_key_id}", headers=account_admin), 404, "not_found"
        )
        assert_error(
            await client.delete(f"/v1/api-keys/{other_key_id}", headers=account_admin), 404, "not_found"
        )


async def test_tenant_context_rules(client: httpx.AsyncClient, api: Api) -> None:
    f = await build(client, api)
    other = await build(client, api)
    account_admin = f.keys[("account", "admin")]
    tenant_admin = f.keys[("tenant", "admin")]
    platform_admin = f.keys[("platform", "admin")]

    assert_error(await client.get("/v1/queues", headers=auth(account_admin)), 400, "validation_error")
    assert_error(await client.get("/v1/queues", headers=auth(platform_admin)), 400, "validation_error")
    assert_error(
        await client.get("/v1/queues", headers=auth(account_admin, "not-a-uuid")), 400, "validation_error"
    )
    assert_error(
        await client.get("/v1/queues", headers=auth(account_admin, other.tenant_id)), 403, "forbidden"
    )
    assert_error(
        await client.get("/v1/queues", headers=auth(tenant_admin, other.tenant_id)), 403, "forbidden"
    )
    assert_error(
        await client.get("/v1/queues", headers=auth(platform_admin, str(uuid.uuid4()))), 404, "not_found"
    )
    # Header and parameter both given and different → 400; the parameter alone works.
    response = await client.get(
        "/v1/queues", params={"tenant_id": other.tenant_id}, headers=auth(account_admin, f.tenant_id)
    )
    assert_error(response, 400, "validation_error")
    listed = ok(
        await client.get("/v1/queues", params={"tenant_id": f.tenant_id}, headers=auth(account_admin))
    )
    assert [q["id"] for q in listed["data"]] == [f.queue_id]
    # A body tenant_id that disagrees with the context → 400, and nothing is created.
    response = await client.post(
        "/v1/queues", json={"name": "Sneaky", "tenant_id": other.tenant_id}, headers=auth(tenant_admin)
    )
    assert_error(response, 400, "validation_error")
    names = [
        q["name"]
        for q in ok(await client.get("/v1/queues", headers=auth(other.keys[("tenant", "admin")])))["data"]
    ]
    assert "Sneaky" not in names


async def test_accounts_cannot_see_or_touch_each_other(client: httpx.AsyncClient, api: Api) -> None:
    mine = await build(client, api)
    theirs = await build(client, api)
    their_admin = auth(theirs.keys[("account", "admin")])
    before = {
        "tenant": ok(await client.get(f"/v1/tenants/{theirs.tenant_id}", headers=their_admin)),
        "customer": ok(await client.get(f"/v1/customers/{theirs.customer_id}", headers=their_admin)),
        "employee": ok(
            await client.get(
                f"/v1/employees/{theirs.employee_id}", headers=auth(theirs.keys[("tenant", "admin")])
            )
        ),
    }
    for scope in ("account", "tenant"):
        for role in ("admin", "staff"):
            h = auth(mine.keys[(scope, role)])
            # Lists never contain their rows, whatever the filters say.
            for path, params in (
                ("/v1/tenants", {}),
                ("/v1/tenants", {"account_id": theirs.account_id}),
                ("/v1/customers", {}),
                ("/v1/customers", {"account_id": theirs.account_id}),
            ):
                response = await client.get(path, params=params, headers=h)
                if response.status_code == 200:
                    seen = {row["id"] for row in response.json()["data"]}
                    assert seen.isdisjoint({theirs.tenant_id, theirs.customer_id}), (scope, role, path)
                else:
                    assert response.status_code in (403, 404), response.text
            response = await client.get(f"/v1/accounts/{theirs.account_id}/tenants", headers=h)
            assert_error(response, 404, "not_found")
            # Reads, changes and deletes of their rows: 404, never 403 (no existence leak).
            for method, path, body in (
                ("GET", f"/v1/tenants/{theirs.tenant_id}", None),
                ("PATCH", f"/v1/tenants/{theirs.tenant_id}", {"name": "Mine now"}),
                ("PUT", f"/v1/tenants/{theirs.tenant_id}", {"name": "Mine now"}),
                ("DELETE", f"/v1/tenants/{theirs.tenant_id}", None),
                ("GET", f"/v1/customers/{theirs.customer_id}", None),
                ("PATCH", f"/v1/customers/{theirs.customer_id}", {"fname": "Mallory"}),
                ("PUT", f"/v1/customers/{theirs.customer_id}", {"fname": "Mallory"}),
                ("DELETE", f"/v1/customers/{theirs.customer_id}", None),
                ("GET", f"/v1/employees/{theirs.employee_id}", None),
                ("PATCH", f"/v1/employees/{theirs.employee_id}", {"fname": "Mallory"}),
                ("DELETE", f"/v1/employees/{theirs.employee_id}", None),
                ("GET", f"/v1/accounts/{theirs.account_id}", None),
                ("PATCH", f"/v1/accounts/{theirs.account_id}", {"name": "Mine now"}),
            ):
                headers = (
                    h
                    if "employees" not in path or scope == "tenant"
                    else auth(mine.keys[(scope, role)], mine.tenant_id)
                )
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code in (403, 404), (scope, role, method, path, response.text)
                # No existence leak: their row gets exactly the answer a row that does not exist gets.
                ghost = path.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
                nothing = await client.request(method, ghost, json=body, headers=headers)
                assert (response.status_code, response.json()["error"]) == (
                    nothing.status_code,
                    nothing.json()["error"],
                ), (scope, role, method, path)
    after = {
        "tenant": ok(await client.get(f"/v1/tenants/{theirs.tenant_id}", headers=their_admin)),
        "customer": ok(await client.get(f"/v1/customers/{theirs.customer_id}", headers=their_admin)),
        "employee": ok(
            await client.get(
                f"/v1/employees/{theirs.employee_id}", headers=auth(theirs.keys[("tenant", "admin")])
            )
        ),
    }
    assert after == before


BROKEN_BODIES = {
    "not JSON": b'{"name": ',  # FastAPI: a validation error of type json_invalid
    "not UTF-8": b'{"name": "\xff\xfe"}',  # FastAPI: a 400 HTTPException, "error parsing the body"
    "nested too deep": b'{"name": "x", "config": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # likewise
}


async def test_a_body_that_cannot_be_parsed_is_refused_after_the_caller(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    """FastAPI parses a body before the route's dependencies run: without care, a caller with no key or a
    bad one would hear 400 for a broken body where every other request of theirs hears 401. Every route
    that authenticates and takes a body, with each way a body can fail to parse: no key, an unknown key and
    a revoked key get 401; a valid key that may use every route (a platform admin's) gets the 400."""
    f = await build(client, api)
    admin_key, platform_key = f.keys[("tenant", "admin")], f.keys[("platform", "admin")]
    revoked = await tenant_key(client, f, "admin")
    assert (await client.delete(f"/v1/api-keys/{revoked['id']}", headers=auth(admin_key))).status_code == 204
    tenant = {"X-Tenant-ID": f.tenant_id, "Content-Type": "application/json"}
    routes = [
        (method, route.path)
        for route in app.routes
        if getattr(route, "body_field", None) is not None
        and route.path.startswith("/v1/")
        and not route.path.startswith("/v1/public/")  # no key: a self-join's link is its own (test_self_join)
        for method in sorted(route.methods)
    ]
    assert len(routes) >= 15, routes  # every write of the API, not a handful
    checked = 0
    for method, template in routes:
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
        for broken in BROKEN_BODIES.values():
            for headers in ({}, auth("vq_" + "x" * 43), auth(revoked["key"])):
                response = await client.request(method, path, content=broken, headers={**headers, **tenant})
                assert_error(response, 401, "unauthorized")
            response = await client.request(
                method, path, content=broken, headers={**auth(platform_key), **tenant}
            )
            assert_error(response, 400, "validation_error")
        checked += 1
    assert checked == len(routes)
    response = await client.post(
        "/v1/queues", content=BROKEN_BODIES["not JSON"], headers={**auth(admin_key), **tenant}
    )
    assert assert_error(response, 400, "validation_error")["message"] == "The request body is not valid JSON."


async def test_a_broken_body_meets_the_role_scope_and_tenant_checks_first(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    """A valid key that its role, its scope or its tenant keeps off a route hears that refusal for a broken
    body too. For every route that takes a body, each caller below sends each broken body and a body that
    parses but fits no schema (a JSON string): the answers must be the same. The latter is refused by the
    route's dependencies (the checks of the caller) if they refuse it, else by its schema (400); checks that
    need the row a path names never run for it."""
    f = await build(client, api)
    foreign = await api.world()
    admin, other = f.keys[("tenant", "admin")], foreign.tenant_id
    callers: dict[str, tuple[dict[str, str], str]] = {  # name: (headers, query string)
        "tenant display": (auth(f.keys[("tenant", "display")]), ""),
        "tenant staff": (auth(f.keys[("tenant", "staff")]), ""),
        "tenant admin": (auth(admin), ""),
        "account staff": (auth(f.keys[("account", "staff")], f.tenant_id), ""),
        "platform staff": (auth(f.keys[("platform", "staff")], f.tenant_id), ""),
        "tenant admin, another tenant": (auth(admin, other), ""),
        "tenant admin, another tenant by parameter": (auth(admin), f"?tenant_id={other}"),
        "tenant admin, another tenant in braces": ({**auth(admin), "X-Tenant-ID": f"{{{other}}}"}, ""),
        "tenant admin, not a UUID": ({**auth(admin), "X-Tenant-ID": f"uuid:{other}"}, ""),
        "tenant admin, header and parameter disagree": (auth(admin, f.tenant_id), f"?tenant_id={other}"),
        "account admin, another account": (auth(f.keys[("account", "admin")], other), ""),
        "platform admin, unknown tenant": (auth(f.keys[("platform", "admin")], str(uuid.uuid4())), ""),
    }  # fmt: skip
    routes = [
        (method, route.path)
        for route in app.routes
        if getattr(route, "body_field", None) is not None
        and route.path.startswith("/v1/")
        and not route.path.startswith("/v1/public/")  # no key: a self-join's link is its own (test_self_join)
        for method in sorted(route.methods)
    ]
    answers: dict[str, set[int]] = {name: set() for name in callers}
    wrong: list[str] = []
    for method, template in routes:
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
        for name, (headers, query) in callers.items():
            sent = {**headers, "Content-Type": "application/json"}
            probe = await client.request(
                method, path + query, content=b'"no schema takes a string"', headers=sent
            )
            wanted = (probe.status_code, probe.json()["error"])
            answers[name].add(probe.status_code)
            for broken in BROKEN_BODIES.values():
                response = await client.request(method, path + query, content=broken, headers=sent)
                got = (response.status_code, response.json()["error"])
                if got != wanted:
                    wrong.append(f"{method} {template} as {name}: {got}, wanted {wanted}")
    assert wrong == [], "\n".join(wrong)
    # Each kind of refusal was met, so the comparisons above covered it.
    assert answers["tenant display"] == {403}  # no route that takes a body is open to displays
    assert answers["tenant admin"] == {400, 403}  # the account routes and creating tenants: scope
    for name in ("tenant staff", "account staff", "platform staff", "account admin, another account"):
        assert answers[name] == {400, 403}, name
    for name in ("another tenant", "another tenant by parameter", "another tenant in braces"):
        assert answers[f"tenant admin, {name}"] == {400, 403}, name
    assert answers["tenant admin, not a UUID"] == {400, 403}  # 403: the scope checks, which read no tenant
    assert answers["tenant admin, header and parameter disagree"] == {400, 403}
    assert answers["platform admin, unknown tenant"] == {400, 404}


async def test_a_broken_body_whose_caller_cannot_be_checked_is_a_503(database_dsn: str, api: Api) -> None:
    """A key this process has not cached must be looked up; with the database gone, the broken body's answer
    is the 503 any request of that caller would get (retry shortly), not a 400 or a 500."""
    world = await api.world()
    app = create_app(make_settings(), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        working = app.state.pool
        with socket.socket() as closed:  # a port nobody listens on: every connect is refused
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        app.state.pool = await create_pool(
            make_settings(), f"postgresql://nobody@127.0.0.1:{port}/gone", sizes=(0, 1)
        )
        try:
            response = await http.post(
                "/v1/queues",
                content=b'{"name": ',
                headers={**auth(world.tenant_admin), "Content-Type": "application/json"},
            )
            assert_error(response, 503, "unavailable")
            assert response.headers["retry-after"] == "1"
        finally:
            await app.state.pool.close()
            app.state.pool = working
        # The database back: the same request is refused for its body.
        response = await http.post(
            "/v1/queues",
            content=b'{"name": ',
            headers={**auth(world.tenant_admin), "Content-Type": "application/json"},
        )
        assert_error(response, 400, "validation_error")
