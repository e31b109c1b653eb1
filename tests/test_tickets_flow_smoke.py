from __future__ import annotations

import httpx

from tests.helpers import Api, auth

COFFEE_FSM = {
    "init": "received",
    "states": ["received", "in_progress", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start_preparation", "from": "received", "to": "in_progress"},
        {"name": "mark_ready", "from": "in_progress", "to": "ready"},
        {"name": "pickup", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "in_progress"], "to": "cancelled"},
    ],
}


async def test_coffee_order_smoke(client: httpx.AsyncClient, api: Api) -> None:
    world = await api.world()
    h = auth(world.tenant_admin)
    r = await client.post(
        "/v1/type-definitions",
        json={"type_code": "food_order", "type_name": "Food order", "fsm_schema": COFFEE_FSM},
        headers=h,
    )
    assert r.status_code == 201, r.text
    type_id = r.json()["id"]
    r = await client.post("/v1/queues", json={"name": "Main", "ticket_prefix": "A"}, headers=h)
    assert r.status_code == 201, r.text
    queue_id = r.json()["id"]
    r = await client.post(
        "/v1/tickets", json={"queue_id": queue_id, "type_definition_id": type_id}, headers=h
    )
    assert r.status_code == 201, r.text
    ticket = r.json()
    assert ticket["display_code"] == "A001"
    assert ticket["position"] == 1
    r = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "mark_ready"}, headers=h
    )
    assert r.status_code == 400, r.text
    assert r.json()["details"]["valid_transitions"] == ["start_preparation", "cancel"]
    r = await client.post(
        f"/v1/tickets/{ticket['id']}/transition", json={"transition": "start_preparation"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["previous_state"] == "received"
    assert r.json()["started_at"] is not None
    r = await client.get(f"/v1/tickets/{ticket['id']}/history", headers=h)
    assert [e["new_state"] for e in r.json()] == ["received", "in_progress"]
