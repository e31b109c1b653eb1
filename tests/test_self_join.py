"""Self-service join: a queue's public link (QR code, kiosk) where customers take a ticket themselves.

Turning it on and off, the form it shows, the join itself and what it writes (a ticket, a customer with
the name given, its event), refusals that change nothing, the link's replacement, tenant isolation,
concurrent joins, the per-address rate limit and the QR code.
"""

from __future__ import annotations

import asyncio
import io
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import asyncpg
import httpx
import qrcode  # type: ignore[import-untyped]
from qrcode.image.svg import SvgPathFillImage  # type: ignore[import-untyped]

from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, ok

SCHEMA = {
    "type": "object",
    "properties": {
        "party_size": {"type": "integer", "minimum": 1, "maximum": 12, "title": "Party size"},
        "seating": {"enum": ["inside", "terrace"]},
        "note": {"type": "string", "maxLength": 200},
    },
    "required": ["party_size", "seating"],
}
GOOD = {"fname": "Ana", "lname": "Lopez", "custom_data": {"party_size": 2, "seating": "terrace"}}


def token_of(queue: dict[str, Any]) -> str:
    page: str = queue["join_page"]
    assert page.startswith("/join/"), page
    return page.removeprefix("/join/")


async def restaurant(client: httpx.AsyncClient, api: Api, **queue: Any) -> tuple[Tenant, dict[str, Any], str]:
    """A tenant whose queue takes self-joined tickets of a type asking for party size and seating."""
    t = await Tenant.create(client, api)
    table = await t.type("table", FOOD_ORDER_FSM, custom_fields_schema=SCHEMA)
    made = await t.queue("Tables", ticket_prefix="T", self_join_type_definition_id=table["id"], **queue)
    return t, made, table["id"]


async def counts(db: asyncpg.Connection, t: Tenant) -> tuple[int, int]:
    """(tickets of the tenant, customers of its account)."""
    tickets = await db.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(t.id))
    customers = await db.fetchval(
        "SELECT count(*) FROM customers WHERE account_id = $1", uuid.UUID(t.world.account_id)
    )
    return tickets, customers


async def test_a_customer_joins_through_the_link_and_the_line_sees_them(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, type_id = await restaurant(client, api, manual_wait_minutes=5, wait_estimation_method="manual")
    assert queue["self_join_type_definition_id"] == type_id
    token = token_of(queue)
    assert len(token) >= 16

    form = ok(await client.get(f"/v1/public/join/{token}"))
    assert form == {
        "queue_name": "Tables",
        "accepting": True,
        "waiting": 0,
        "estimated_wait_minutes": 5,
        "show_wait_time": True,
        "fields": [  # the required fields only, in the schema's order: the optional note is staff's
            {
                "name": "party_size", "title": "Party size", "kind": "integer", "choices": None,
                "min_length": None, "max_length": None, "minimum": 1, "maximum": 12,
            },
            {
                "name": "seating", "title": "Seating", "kind": "choice", "choices": ["inside", "terrace"],
                "min_length": None, "max_length": None, "minimum": None, "maximum": None,
            },
        ],
    }  # fmt: skip

    joined = ok(await client.post(f"/v1/public/join/{token}", json=GOOD), 201)
    assert set(joined) == {
        "id", "display_code", "queue_name", "position", "estimated_wait_minutes", "customer_page"
    }  # fmt: skip
    assert (joined["display_code"], joined["position"], joined["estimated_wait_minutes"]) == ("T001", 1, 5)
    assert joined["customer_page"].startswith(f"/t/{joined['id']}?token=")

    ticket = await t.get(f"/v1/tickets/{joined['id']}")
    assert ticket["queue_id"] == queue["id"]
    assert ticket["type_definition_id"] == type_id
    assert ticket["custom_data"] == {"party_size": 2, "seating": "terrace"}
    customer = await t.get(f"/v1/customers/{ticket['customer_id']}")
    assert (customer["fname"], customer["lname"], customer["email"]) == ("Ana", "Lopez", None)
    monitor = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [(w["display_code"], w["display_name"]) for w in monitor["groups"]["waiting"]] == [
        ("T001", "Ana L.")
    ]
    events = await t.get("/v1/events", type="ticket.created")
    assert [e["ticket_id"] for e in events["data"]] == [joined["id"]]

    # The customer's own page opens with the link the answer gave.
    page_token = joined["customer_page"].split("token=")[1]
    mine = ok(await client.get(f"/v1/public/tickets/{joined['id']}", params={"token": page_token}))
    assert (mine["display_code"], mine["position"]) == ("T001", 1)

    # No name: a ticket without a customer ("Guest" on the wall), and the form now counts one waiting.
    guest = ok(await client.post(f"/v1/public/join/{token}", json={"custom_data": GOOD["custom_data"]}), 201)
    assert (guest["display_code"], guest["position"], guest["estimated_wait_minutes"]) == ("T002", 2, 10)
    assert (await t.get(f"/v1/tickets/{guest['id']}"))["customer_id"] is None
    form = ok(await client.get(f"/v1/public/join/{token}"))
    assert (form["waiting"], form["estimated_wait_minutes"]) == (2, 15)
    assert await counts(db, t) == (2, 1)


async def test_refused_joins_change_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, _ = await restaurant(client, api)
    url = f"/v1/public/join/{token_of(queue)}"
    json_header = {"Content-Type": "application/json"}

    def data(**fields: Any) -> dict[str, Any]:
        return {"json": {**GOOD, "custom_data": fields}}

    huge = b'{"fname": "' + b"a" * 2_000_000 + b'"}'
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b'{"fname": "Ana",', "headers": json_header}, 400, "validation_error"),
        ({"content": b"[]", "headers": json_header}, 400, "validation_error"),
        ({"json": {**GOOD, "email": "ana@example.com"}}, 400, "validation_error"),  # unknown field
        ({"json": {**GOOD, "fname": ""}}, 400, "validation_error"),
        ({"json": {**GOOD, "fname": "   "}}, 400, "validation_error"),
        ({"json": {**GOOD, "fname": "A" * 101}}, 400, "validation_error"),
        ({"json": {**GOOD, "lname": 7}}, 400, "validation_error"),
        ({"json": {**GOOD, "fname": "An\u0000a"}}, 400, "validation_error"),
        ({"json": {**GOOD, "custom_data": "terrace"}}, 400, "validation_error"),
        (data(party_size=2), 400, "validation_error"),  # seating missing
        (data(party_size=13, seating="terrace"), 400, "validation_error"),
        (data(party_size="2", seating="terrace"), 400, "validation_error"),
        (data(party_size=2, seating="roof"), 400, "validation_error"),
        (
            data(party_size=2, seating="inside", note="VIP, seat first"),
            400,
            "validation_error",
        ),  # staff's field
        (data(party_size=2, seating="inside", made_up="x"), 400, "validation_error"),
        ({"content": huge, "headers": json_header}, 413, "payload_too_large"),
    ]
    for request, status, code in cases:
        assert_error(await client.post(url, **request), status, code)
    body = assert_error(
        await client.post(url, json={**GOOD, "custom_data": {"party_size": 0, "seating": "inside"}}),
        400,
        "validation_error",
    )
    assert body["details"]["custom_data"][0]["path"] == "party_size"
    body = assert_error(
        await client.post(url, json={**GOOD, "custom_data": {**GOOD["custom_data"], "note": "VIP", "x": 1}}),
        400,
        "validation_error",
    )
    assert body["details"] == {"field": "custom_data", "unknown": ["note", "x"]}

    # Tokens: a malformed one is a 400 before any read; one of the right shape that is no link, a 404.
    for bad in ("short", "x" * 65, "abc$def0123456789"):
        assert_error(await client.get(f"/v1/public/join/{bad}"), 400, "validation_error")
        assert_error(await client.post(f"/v1/public/join/{bad}", json=GOOD), 400, "validation_error")
    unknown = "A" * 22
    assert_error(await client.get(f"/v1/public/join/{unknown}"), 404, "not_found")
    assert_error(await client.post(f"/v1/public/join/{unknown}", json=GOOD), 404, "not_found")
    assert_error(await client.get(f"/join/{unknown}/qr.svg"), 404, "not_found")
    assert await counts(db, t) == (0, 0)  # no ticket, and no customer left behind by a refused ticket


async def test_turning_self_join_off_and_on_and_replacing_the_link(
    client: httpx.AsyncClient, api: Api
) -> None:
    t, queue, type_id = await restaurant(client, api)
    token = token_of(queue)
    path = f"/v1/queues/{queue['id']}"
    off = ok(await client.patch(path, json={"self_join_type_definition_id": None}, headers=t.h))
    assert (off["self_join_type_definition_id"], off["join_page"]) == (None, None)
    assert_error(await client.get(f"/v1/public/join/{token}"), 404, "not_found")
    assert_error(await client.post(f"/v1/public/join/{token}", json=GOOD), 404, "not_found")
    assert_error(await client.post(f"{path}/rotate-join-link", headers=t.h), 409, "conflict")

    # On again: the same link (a printed code works again).
    on = ok(await client.patch(path, json={"self_join_type_definition_id": type_id}, headers=t.h))
    assert on["join_page"] == queue["join_page"]
    ok(await client.post(f"/v1/public/join/{token}", json=GOOD), 201)

    rotated = ok(await client.post(f"{path}/rotate-join-link", headers=t.h))
    assert rotated["join_page"] != queue["join_page"]
    assert_error(await client.post(f"/v1/public/join/{token}", json=GOOD), 404, "not_found")
    ok(await client.post(f"/v1/public/join/{token_of(rotated)}", json=GOOD), 201)
    changed = [e["data"]["changed"] for e in (await t.get("/v1/events", type="queue.updated"))["data"]]
    assert changed == [["self_join_type_definition_id"], ["self_join_type_definition_id"], ["join_page"]]

    # Only admins turn it on or replace the link.
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.post(f"{path}/rotate-join-link", headers=auth(staff)), 403, "forbidden")
    assert_error(
        await client.patch(path, json={"self_join_type_definition_id": None}, headers=auth(staff)),
        403,
        "forbidden",
    )
    # A queue made without it has no link.
    plain = await t.queue("Walk-ins")
    assert (plain["self_join_type_definition_id"], plain["join_page"]) == (None, None)


async def test_a_closed_queue_or_a_retired_type_takes_no_sign_ins(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, type_id = await restaurant(client, api)
    url = f"/v1/public/join/{token_of(queue)}"
    ok(await client.post(f"/v1/queues/{queue['id']}/disable", headers=t.h))
    assert ok(await client.get(url))["accepting"] is False
    assert assert_error(await client.post(url, json=GOOD), 409, "queue_disabled")["details"] == {}
    ok(await client.post(f"/v1/queues/{queue['id']}/enable", headers=t.h))
    assert ok(await client.get(url))["accepting"] is True

    ok(await client.patch(f"/v1/type-definitions/{type_id}", json={"is_active": False}, headers=t.h))
    assert ok(await client.get(url))["accepting"] is False
    assert assert_error(await client.post(url, json=GOOD), 409, "conflict")["details"] == {}  # no ids
    ok(await client.patch(f"/v1/type-definitions/{type_id}", json={"is_active": True}, headers=t.h))

    # The type changed after it was chosen, so that it no longer fits: its tickets would skip the line, or
    # the form could not ask for a field it requires. The link refuses until the type fits again.
    type_path = f"/v1/type-definitions/{type_id}"
    skipping = {**FOOD_ORDER_FSM, "categories": {FOOD_ORDER_FSM["init"]: "in_service"}}
    unaskable = {**SCHEMA, "properties": {**SCHEMA["properties"], "address": {"type": "object"}}}
    unaskable["required"] = [*SCHEMA["required"], "address"]
    for change in ({"fsm_schema": skipping}, {"custom_fields_schema": unaskable}):
        ok(await client.patch(type_path, json=change, headers=t.h))
        assert ok(await client.get(url))["accepting"] is False
        assert_error(await client.post(url, json=GOOD), 409, "conflict")
        ok(
            await client.patch(
                type_path, json={"fsm_schema": FOOD_ORDER_FSM, "custom_fields_schema": SCHEMA}, headers=t.h
            )
        )
        assert ok(await client.get(url))["accepting"] is True
    assert await counts(db, t) == (0, 0)

    # A deactivated tenant's link is no link.
    ok(await api.client.patch(f"/v1/tenants/{t.id}", json={"is_active": False}, headers=auth(api.admin_key)))
    assert_error(await client.get(url), 404, "not_found")
    assert_error(await client.post(url, json=GOOD), 404, "not_found")


async def test_only_a_type_a_form_can_fill_may_be_the_self_join_type(
    client: httpx.AsyncClient, api: Api
) -> None:
    t = await Tenant.create(client, api)
    other = await Tenant.create(client, api)
    table = await t.type("table", FOOD_ORDER_FSM, custom_fields_schema=SCHEMA)
    theirs = await other.type("table", FOOD_ORDER_FSM)
    nested = await t.type(
        "nested",
        FOOD_ORDER_FSM,
        custom_fields_schema={
            "type": "object",
            "properties": {"address": {"type": "object"}, "tags": {"type": "array"}, "name": {}},
            "required": ["name", "address", "tags"],
        },
    )
    served_at_once = await t.type(
        "served", {**FOOD_ORDER_FSM, "categories": {FOOD_ORDER_FSM["init"]: "in_service"}}
    )
    item = await t.type("plain", None)  # no machine: an item type
    refused = {
        str(uuid.uuid4()): "active type",
        theirs["id"]: "active type",  # another tenant's type
        nested["id"]: "address, tags",
        served_at_once["id"]: "start in line",
        item["id"]: "state machine",
    }
    for type_id, reason in refused.items():
        for request in (
            client.post(
                "/v1/queues", json={"name": "Q", "self_join_type_definition_id": type_id}, headers=t.h
            ),
            client.patch(
                f"/v1/queues/{(await t.queue('Q'))['id']}",
                json={"self_join_type_definition_id": type_id},
                headers=t.h,
            ),
        ):
            body = assert_error(await request, 400, "validation_error")
            assert body["details"]["field"] == "self_join_type_definition_id"
            assert reason in body["message"], body
    assert_error(
        await client.post(
            "/v1/queues", json={"name": "Q", "self_join_type_definition_id": "nope"}, headers=t.h
        ),
        400,
        "validation_error",
    )

    # The queue must allow the type, now and after a change of its allowed types.
    allowed_other = await t.type("other", FOOD_ORDER_FSM)
    body = assert_error(
        await client.post(
            "/v1/queues",
            json={
                "name": "Q",
                "allowed_type_definition_ids": [allowed_other["id"]],
                "self_join_type_definition_id": table["id"],
            },
            headers=t.h,
        ),
        400,
        "validation_error",
    )
    assert "allowed_type_definition_ids" in body["message"]
    queue = await t.queue("Tables", self_join_type_definition_id=table["id"])
    assert_error(
        await client.patch(
            f"/v1/queues/{queue['id']}",
            json={"allowed_type_definition_ids": [allowed_other["id"]]},
            headers=t.h,
        ),
        400,
        "validation_error",
    )
    assert (await t.get(f"/v1/queues/{queue['id']}"))["allowed_type_definition_ids"] is None


async def test_a_link_reaches_its_own_tenant_only(client: httpx.AsyncClient, api: Api) -> None:
    a, queue_a, _ = await restaurant(client, api)
    b, queue_b, _ = await restaurant(client, api)
    joined = ok(await client.post(f"/v1/public/join/{token_of(queue_a)}", json=GOOD), 201)
    ticket = await a.get(f"/v1/tickets/{joined['id']}")
    assert ticket["queue_id"] == queue_a["id"]
    assert_error(await client.get(f"/v1/tickets/{joined['id']}", headers=b.h), 404, "not_found")
    assert_error(await client.get(f"/v1/customers/{ticket['customer_id']}", headers=b.h), 404, "not_found")
    # Another tenant's admin can neither see nor replace the link.
    assert_error(await client.get(f"/v1/queues/{queue_a['id']}", headers=b.h), 404, "not_found")
    assert_error(
        await client.post(f"/v1/queues/{queue_a['id']}/rotate-join-link", headers=b.h), 404, "not_found"
    )
    assert (await a.get(f"/v1/queues/{queue_a['id']}"))["join_page"] == queue_a["join_page"]
    assert (await b.get("/v1/events", type="ticket.created"))["data"] == []
    assert queue_a["join_page"] != queue_b["join_page"]


async def test_concurrent_joins_get_distinct_numbers_and_all_stand(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, _ = await restaurant(client, api)
    url = f"/v1/public/join/{token_of(queue)}"
    answers = await asyncio.gather(
        *(client.post(url, json={**GOOD, "fname": f"Guest{n}"}) for n in range(24))
    )
    assert [a.status_code for a in answers] == [201] * 24
    codes = sorted(a.json()["display_code"] for a in answers)
    assert codes == [f"T{n:03d}" for n in range(1, 25)]
    assert sorted(a.json()["position"] for a in answers) == list(range(1, 25))
    assert await counts(db, t) == (24, 24)


async def test_joins_are_limited_per_address(database_dsn: str, client: httpx.AsyncClient, api: Api) -> None:
    from tests.conftest import make_settings
    from virtualq.app import create_app

    _, queue, _ = await restaurant(client, api)
    _, other_queue, _ = await restaurant(client, api)
    app = create_app(make_settings(self_join_rate_per_minute=60, self_join_rate_burst=2), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiosk") as limited,
    ):
        url = f"/v1/public/join/{token_of(queue)}"
        first = ok(await limited.post(url, json=GOOD), 201)
        assert first["display_code"] == "T001"
        ok(await limited.post(url, json=GOOD), 201)
        refused = await limited.post(url, json=GOOD)
        body = assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert body["details"]["limit"] == 2
        # Another queue's link has its own bucket; reading the form and the QR code has one of its own,
        # three times as large (a kiosk reads the form again after each join).
        ok(await limited.post(f"/v1/public/join/{token_of(other_queue)}", json=GOOD), 201)
        for _ in range(3):
            ok(await limited.get(url))
            assert (await limited.get(f"{queue['join_page']}/qr.svg")).status_code == 200
        assert_error(await limited.get(url), 429, "rate_limited")
        # A retry's stored answer costs a join too: replays cannot hammer the link either.
        keyed = {"Idempotency-Key": uuid.uuid4().hex}
        other_url = f"/v1/public/join/{token_of(other_queue)}"
        ok(await limited.post(other_url, json=GOOD, headers=keyed), 201)
        assert_error(await limited.post(other_url, json=GOOD, headers=keyed), 429, "rate_limited")
    form = ok(await client.get(url))
    assert form["waiting"] == 2  # the refused join wrote nothing


async def test_the_qr_code_holds_the_whole_link(
    database_dsn: str, client: httpx.AsyncClient, api: Api
) -> None:
    from tests.conftest import make_settings
    from virtualq.app import create_app

    _, queue, _ = await restaurant(client, api)

    def svg(text: str) -> bytes:
        code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
        code.add_data(text)
        code.make(fit=True)
        out = io.BytesIO()
        code.make_image(image_factory=SvgPathFillImage).save(out)
        return out.getvalue()

    # A Host too long for a code (without PUBLIC_BASE_URL the link is built from it): a 400, not a 500.
    long_host = await client.get(f"{queue['join_page']}/qr.svg", headers={"Host": "h" * 250 + ".example"})
    assert assert_error(long_host, 400, "validation_error")["details"] == {"field": "Host"}

    answer = await client.get(f"{queue['join_page']}/qr.svg")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(answer.content).tag.endswith("svg")
    assert answer.content == svg(f"http://testserver{queue['join_page']}")  # this server's own address
    assert answer.content != svg(f"http://testserver/join/{'B' * 22}")

    app = create_app(make_settings(public_base_url="https://q.example.com/shop/"), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://internal") as other,
    ):
        link = f"https://q.example.com/shop{queue['join_page']}"
        shown = ok(
            await other.get(f"/v1/queues/{queue['id']}", headers=auth(api.admin_key, queue["tenant_id"]))
        )
        assert shown["join_page"] == link
        assert (await other.get(f"{queue['join_page']}/qr.svg")).content == svg(link)
        joined = ok(await other.post(f"/v1/public/join/{token_of(queue)}", json=GOOD), 201)
        assert joined["customer_page"].startswith(f"https://q.example.com/shop/t/{joined['id']}?token=")


async def test_the_public_operations_are_documented_without_a_key(client: httpx.AsyncClient) -> None:
    paths = ok(await client.get("/openapi.json"))["paths"]
    public = {path: ops for path, ops in paths.items() if path.startswith("/v1/public/")}
    assert set(public) == {
        "/v1/public/tickets/{ticket_id}",
        "/v1/public/tickets/{ticket_id}/stream",
        "/v1/public/tickets/{ticket_id}/leave",
        "/v1/public/join/{token}",
    }
    for operations in public.values():
        assert all(operation["security"] == [] for operation in operations.values())
    assert {"201", "400", "404", "409", "413", "429"} <= set(
        public["/v1/public/join/{token}"]["post"]["responses"]
    )
    assert paths["/v1/queues/{queue_id}"]["get"]["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]


async def test_a_retried_join_with_an_idempotency_key_makes_one_ticket(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A phone that lost the answer sends the join again with the same key: one ticket, the first answer.
    Everyone at the door shares the link, so its keys must be long enough to be random."""
    t, queue, _ = await restaurant(client, api)
    _, other, _ = await restaurant(client, api)
    url = f"/v1/public/join/{token_of(queue)}"
    key = uuid.uuid4().hex
    answers = await asyncio.gather(
        *(client.post(url, json=GOOD, headers={"Idempotency-Key": key}) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [201] * 5
    assert len({a.json()["id"] for a in answers}) == 1
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == [""] + ["true"] * 4
    assert await counts(db, t) == (1, 1)

    body = assert_error(
        await client.post(url, json={**GOOD, "fname": "Ben"}, headers={"Idempotency-Key": key}),
        409,
        "idempotency_conflict",
    )
    assert body["details"] == {"field": "Idempotency-Key"}
    body = assert_error(
        await client.post(url, json=GOOD, headers={"Idempotency-Key": "x" * 31}), 400, "validation_error"
    )
    assert "32" in body["message"]
    # The same key on another link is another request.
    elsewhere = ok(
        await client.post(f"/v1/public/join/{token_of(other)}", json=GOOD, headers={"Idempotency-Key": key}),
        201,
    )
    assert elsewhere["id"] != answers[0].json()["id"]
    assert await counts(db, t) == (1, 1)


async def test_a_link_replaced_during_a_join_takes_no_ticket(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, monkeypatch: Any
) -> None:
    """The link is read before the join's transaction; replaced in between, it must not take the ticket
    (it "stops working at once"). Neither does a stored answer of the old link replay."""
    from virtualq.queues import self_join

    t, queue, _ = await restaurant(client, api)
    token = token_of(queue)
    key = uuid.uuid4().hex
    ok(await client.post(f"/v1/public/join/{token}", json=GOOD, headers={"Idempotency-Key": key}), 201)
    read = self_join.queue_by_token

    async def read_then_rotate(conn: Any, given: str) -> Any:
        found = await read(conn, given)
        await db.execute(
            "UPDATE queues SET join_token = $1 WHERE id = $2", self_join.new_token(), uuid.UUID(queue["id"])
        )
        return found

    monkeypatch.setattr(self_join, "queue_by_token", read_then_rotate)
    assert_error(await client.post(f"/v1/public/join/{token}", json=GOOD), 404, "not_found")
    monkeypatch.setattr(self_join, "queue_by_token", read)
    assert await counts(db, t) == (1, 1)
    # The first join's retry, after the link was replaced: the link answers nothing any more.
    replay = await client.post(f"/v1/public/join/{token}", json=GOOD, headers={"Idempotency-Key": key})
    assert_error(replay, 404, "not_found")


async def test_changes_during_a_join_leave_nothing_and_name_no_ids(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, monkeypatch: Any
) -> None:
    """Between the link's read and the join's transaction the queue may close, or the type change so that
    its tickets would skip the line: the join is refused as it would have been a moment later."""
    from virtualq.queues import self_join

    t, queue, type_id = await restaurant(client, api)
    url = f"/v1/public/join/{token_of(queue)}"
    read = self_join.queue_by_token
    skipping = {**FOOD_ORDER_FSM, "categories": {FOOD_ORDER_FSM["init"]: "in_service"}}
    changes = [
        lambda: client.post(f"/v1/queues/{queue['id']}/disable", headers=t.h),
        lambda: client.patch(f"/v1/type-definitions/{type_id}", json={"fsm_schema": skipping}, headers=t.h),
    ]
    for change, code in zip(changes, ("queue_disabled", "conflict"), strict=True):

        async def read_then_change(conn: Any, given: str, change: Any = change) -> Any:
            found = await read(conn, given)
            ok(await change())
            return found

        monkeypatch.setattr(self_join, "queue_by_token", read_then_change)
        body = assert_error(await client.post(url, json=GOOD), 409, code)
        assert body["details"] == {}
        monkeypatch.setattr(self_join, "queue_by_token", read)
        ok(await client.post(f"/v1/queues/{queue['id']}/enable", headers=t.h))
    assert await counts(db, t) == (0, 0)
