"""`GET /v1/me`: the calling key as the server sees it, and the employee it acts as."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import Tenant, ok


async def test_each_key_sees_itself(client: httpx.AsyncClient, api: Api) -> None:
    t = await Tenant.create(client, api)
    queue = await t.queue("Front")
    ana = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "ana@example.com"}, headers=t.h
        ),
        201,
    )
    ok(await client.put(f"/v1/employees/{ana['id']}/queues", json={"queue_ids": [queue["id"]]}, headers=t.h))
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=ana["id"])
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)

    me = ok(await client.get("/v1/me", headers=auth(staff)))
    assert (me["scope"], me["role"], me["tenant_id"], me["account_id"]) == (
        "tenant", "staff", t.id, t.world.account_id
    )  # fmt: skip
    assert me["employee"] == {"id": ana["id"], "fname": "Ana", "lname": "Lopez", "queue_ids": [queue["id"]]}
    keys = ok(await client.get("/v1/api-keys", headers=t.h))["data"]
    assert me["key_id"] in {k["id"] for k in keys if k["employee_id"] == ana["id"]}

    shown = ok(await client.get("/v1/me", headers=auth(display)))
    assert (shown["role"], shown["employee"]) == ("display", None)
    # A display key made with an employee still gets no staff names (personal data).
    wall = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id, employee_id=ana["id"])
    assert ok(await client.get("/v1/me", headers=auth(wall)))["employee"] is None
    platform = ok(await client.get("/v1/me", headers=auth(api.admin_key)))
    assert (platform["key_id"], platform["scope"], platform["tenant_id"]) == (None, "platform", None)
    account = ok(await client.get("/v1/me", headers=auth(t.world.account_admin)))
    assert (account["scope"], account["account_id"], account["tenant_id"]) == (
        "account",
        t.world.account_id,
        None,
    )

    # An admin key attributed to someone who left still works, attributed to no one (docs/access.md).
    boss = ok(
        await client.post(
            "/v1/employees", json={"fname": "Bo", "lname": "Sand", "email": "bo@example.com"}, headers=t.h
        ),
        201,
    )
    bound_admin = await api.key(
        "tenant", "admin", key=t.world.tenant_admin, tenant_id=t.id, employee_id=boss["id"]
    )
    assert ok(await client.get("/v1/me", headers=auth(bound_admin)))["employee"]["fname"] == "Bo"
    assert (await client.delete(f"/v1/employees/{boss['id']}", headers=t.h)).status_code == 204
    for _ in range(40):  # the key cache forgets within a second
        if ok(await client.get("/v1/me", headers=auth(bound_admin)))["employee"] is None:
            break
        await asyncio.sleep(0.05)
    assert ok(await client.get("/v1/me", headers=auth(bound_admin)))["employee"] is None

    assert_error(await client.get("/v1/me"), 401, "unauthorized")
    assert_error(await client.get("/v1/me", headers=auth("vq_" + "x" * 43)), 401, "unauthorized")
    assert_error(
        await client.get("/v1/me", params={"tenant_id": t.id}, headers=auth(staff)), 400, "validation_error"
    )
