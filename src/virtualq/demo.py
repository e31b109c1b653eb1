"""Demo data: a coffee chain and a DMV office, built through the public API (so it is exactly what a client
could build), with keys for each role and the URLs of the three pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

ORDER_FSM = {
    "init": "received",
    "states": ["received", "preparing", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start", "from": "received", "to": "preparing"},
        {"name": "mark_ready", "from": "preparing", "to": "ready"},
        {"name": "pick_up", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "preparing"], "to": "cancelled"},
    ],
    "categories": {"ready": "ready"},
}
DRINK_FSM = {
    "init": "pending",
    "states": ["pending", "in_progress", "completed"],
    "transitions": [
        {"name": "start", "from": "pending", "to": "in_progress"},
        {"name": "complete", "from": "in_progress", "to": "completed"},
        {"name": "rework", "from": "completed", "to": "in_progress"},
    ],
    "categories": {"completed": "done"},
}
REGISTRATION_FSM = {
    "init": "submitted",
    "states": ["submitted", "documents_verified", "fee_paid", "plates_issued", "cancelled"],
    "transitions": [
        {"name": "verify_documents", "from": "submitted", "to": "documents_verified"},
        {"name": "reject", "from": "documents_verified", "to": "submitted"},
        {"name": "pay_fee", "from": "documents_verified", "to": "fee_paid"},
        {"name": "issue_plates", "from": "fee_paid", "to": "plates_issued"},
        {"name": "cancel", "from": ["submitted", "documents_verified", "fee_paid"], "to": "cancelled"},
    ],
}
LICENCE_FSM = {
    "init": "applied",
    "states": ["applied", "photo_taken", "issued", "cancelled"],
    "transitions": [
        {"name": "take_photo", "from": "applied", "to": "photo_taken"},
        {"name": "issue", "from": "photo_taken", "to": "issued"},
        {"name": "cancel", "from": ["applied", "photo_taken"], "to": "cancelled"},
    ],
}
TEST_FSM = {
    "init": "checked_in",
    "states": ["checked_in", "testing", "passed", "failed", "cancelled"],
    "transitions": [
        {"name": "start_test", "from": "checked_in", "to": "testing"},
        {"name": "pass", "from": "testing", "to": "passed"},
        {"name": "fail", "from": "testing", "to": "failed"},
        {"name": "cancel", "from": "checked_in", "to": "cancelled"},
    ],
    "categories": {"failed": "done"},
}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {"channel": {"enum": ["counter", "drive_thru", "app"]}, "note": {"type": "string"}},
}


@dataclass
class Place:
    name: str
    tenant_id: str
    queues: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    tickets: list[dict[str, Any]] = field(default_factory=list)
    join_page: str | None = None  # the self-join link of the first queue, where it has one


class _Api:
    def __init__(self, client: httpx.AsyncClient, key: str, tenant_id: str | None = None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}
        if tenant_id:
            self.headers["X-Tenant-ID"] = tenant_id

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.client.post(path, json=body if body is not None else {}, headers=self.headers)
        if response.status_code >= 400:
            raise RuntimeError(f"{path}: {response.status_code} {response.text}")
        return response.json()


async def _keys(admin: _Api, tenant_id: str) -> dict[str, str]:
    keys = {}
    for role in ("admin", "staff", "display"):
        created = await admin.post(
            "/v1/api-keys", {"name": f"demo {role}", "scope": "tenant", "role": role, "tenant_id": tenant_id}
        )
        keys[role] = created["key"]
    return keys


async def coffee(client: httpx.AsyncClient, admin_key: str) -> Place:
    admin = _Api(client, admin_key)
    account = await admin.post("/v1/accounts", {"name": "Seattle Coffee Co."})
    tenant = await admin.post(
        "/v1/tenants",
        {
            "account_id": account["id"],
            "name": "Downtown Seattle Coffee",
            "timezone": "America/Los_Angeles",
            "location_name": "Pike St",
            "location_coordinates": {"latitude": 47.61, "longitude": -122.34},
        },
    )
    place = Place("Downtown Seattle Coffee", tenant["id"])
    api = _Api(client, admin_key, tenant["id"])
    drink = await api.post(
        "/v1/type-definitions", {"type_code": "drink", "type_name": "Drink", "fsm_schema": DRINK_FSM}
    )
    pastry = await api.post("/v1/type-definitions", {"type_code": "pastry", "type_name": "Pastry"})
    order = await api.post(
        "/v1/type-definitions",
        {
            "type_code": "food_order",
            "type_name": "Food order",
            "fsm_schema": ORDER_FSM,
            "custom_fields_schema": ORDER_SCHEMA,
            "item_definition_ids": [drink["id"], pastry["id"]],
        },
    )
    queue = await api.post(
        "/v1/queues",
        # Customers may also order at the door, from a QR code (self-join).
        {"name": "Main counter", "ticket_prefix": "C", "manual_wait_minutes": 3,
         "self_join_type_definition_id": order["id"]},
    )  # fmt: skip
    place.queues["Main counter"] = queue["id"]
    place.join_page = queue["join_page"]
    for fname, lname, email in (("Ana", "Lopez", "ana@example.com"), ("Ben", "Okafor", "ben@example.com")):
        await api.post("/v1/employees", {"fname": fname, "lname": lname, "email": email, "role": "barista"})
    customers = [
        await api.post(
            "/v1/customers",
            {"account_id": account["id"], "fname": fname, "lname": lname, "email": email, "phone": phone},
        )
        for fname, lname, email, phone in (
            ("Jane", "Doe", "jane@example.com", "+1 206 555 0101"),
            ("John", "Smith", "john@example.com", "+1 206 555 0102"),
            ("Priya", "Natarajan", "priya@example.com", "+1 206 555 0103"),
        )
    ]
    orders = [
        ("Latte", 2, customers[0]["id"], "counter"),
        ("Cappuccino", 1, customers[1]["id"], "app"),
        ("Flat white", 1, None, "counter"),
        ("Mocha", 3, customers[2]["id"], "drive_thru"),
        ("Americano", 1, None, "counter"),
        ("Chai latte", 1, None, "app"),
    ]
    for drink_name, quantity, customer_id, channel in orders:
        ticket = await api.post(
            "/v1/tickets",
            {
                "queue_id": queue["id"],
                "type_definition_id": order["id"],
                "customer_id": customer_id,
                "custom_data": {"channel": channel},
            },
        )
        await api.post(
            f"/v1/tickets/{ticket['id']}/items",
            {"item_type_definition_id": drink["id"], "external_item_name": drink_name, "quantity": quantity},
        )
        place.tickets.append(ticket)
    croissant = {"item_type_definition_id": pastry["id"], "external_item_name": "Croissant"}
    await api.post(f"/v1/tickets/{place.tickets[0]['id']}/items", croissant)
    await api.post(f"/v1/queues/{queue['id']}/call-next")
    await api.post(f"/v1/queues/{queue['id']}/call-next")
    await api.post(f"/v1/tickets/{place.tickets[0]['id']}/transition", {"transition": "mark_ready"})
    place.keys = await _keys(admin, tenant["id"])
    return place


async def dmv(client: httpx.AsyncClient, admin_key: str) -> Place:
    admin = _Api(client, admin_key)
    account = await admin.post("/v1/accounts", {"name": "State Department of Licensing"})
    tenant = await admin.post(
        "/v1/tenants", {"account_id": account["id"], "name": "Seattle DMV", "timezone": "America/Los_Angeles"}
    )
    place = Place("Seattle DMV", tenant["id"])
    api = _Api(client, admin_key, tenant["id"])
    types = {}
    for code, name, fsm in (
        ("registration", "Vehicle registration", REGISTRATION_FSM),
        ("licence", "Driver licence", LICENCE_FSM),
        ("driving_test", "Driving test", TEST_FSM),
    ):
        types[code] = await api.post(
            "/v1/type-definitions", {"type_code": code, "type_name": name, "fsm_schema": fsm}
        )
    for name, prefix, code in (
        ("Registration", "R", "registration"),
        ("Licences", "L", "licence"),
        ("Testing", "T", "driving_test"),
    ):
        queue = await api.post(
            "/v1/queues",
            {"name": name, "ticket_prefix": prefix, "allowed_type_definition_ids": [types[code]["id"]],
             "wait_estimation_method": "manual", "manual_wait_minutes": 8},
        )  # fmt: skip
        place.queues[name] = queue["id"]
        for _ in range(4):
            place.tickets.append(
                await api.post(
                    "/v1/tickets", {"queue_id": queue["id"], "type_definition_id": types[code]["id"]}
                )
            )
        await api.post(f"/v1/queues/{queue['id']}/call-next")
    for fname, lname, email in (("Carla", "Reyes", "carla@dmv.example"), ("Dev", "Patel", "dev@dmv.example")):
        await api.post("/v1/employees", {"fname": fname, "lname": lname, "email": email, "role": "clerk"})
    place.keys = await _keys(admin, tenant["id"])
    return place


def urls(base: str, place: Place) -> dict[str, str]:
    first, *others = place.queues.values()
    extra = f"?queues={','.join(others)}" if others else ""
    waiting = [t for t in place.tickets if t["state_category"] == "waiting"]
    ticket = waiting[-1] if waiting else place.tickets[-1]

    def whole(link: str) -> str:
        # A whole link when the server has PUBLIC_BASE_URL, else a path on the server's own address.
        return link if link.startswith("http") else f"{base}{link}"

    found = {
        "display": f"{base}/display/queues/{first}{extra}#key={place.keys['display']}",
        "console": f"{base}/console/queues/{first}#key={place.keys['staff']}",
        "customer": whole(ticket["customer_page"]),
    }
    if place.join_page:
        found["join"] = whole(place.join_page)
        found["join QR"] = whole(place.join_page) + "/qr.svg"
    return found


async def build(client: httpx.AsyncClient, admin_key: str) -> list[Place]:
    return [await coffee(client, admin_key), await dmv(client, admin_key)]
