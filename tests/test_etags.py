"""ETag / If-Match on tickets (PRODUCT §6): every ticket answer carries its version as a strong ETag; a change
sent with a stale If-Match is 412 and changes nothing; two writers racing with the same ETag: one wins."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import LiveServer
from tests.helpers import Api, assert_error
from tests.test_ticket_flows import coffee, ok


def if_match(headers: dict[str, str], tag: str) -> dict[str, str]:
    return {**headers, "If-Match": tag}


async def test_every_ticket_answer_carries_its_etag(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    created = await client.post(
        "/v1/tickets", json={"queue_id": queue, "type_definition_id": order}, headers=t.h
    )
    assert created.headers["etag"] == f'"{created.json()["version"]}"' == '"1"'
    ticket = created.json()["id"]
    read = await client.get(f"/v1/tickets/{ticket}", headers=t.h)
    assert read.headers["etag"] == '"1"'

    tags = []
    for path, body in (
        (f"/v1/tickets/{ticket}", {"custom_data": {"note": "x"}}),
        (f"/v1/tickets/{ticket}/reorder", {"position": 1}),
        (f"/v1/queues/{queue}/call-next", {}),
        (f"/v1/tickets/{ticket}/transition", {"transition": "mark_ready"}),
    ):
        method = client.patch if path == f"/v1/tickets/{ticket}" else client.post
        response = await method(path, json=body, headers=t.h)
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == f'"{response.json()["version"]}"'
        tags.append(response.headers["etag"])
    assert len(set(tags)) == len(tags)  # each change moved the version on


async def test_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    path = f"/v1/tickets/{ticket['id']}"
    first = await client.patch(path, json={"custom_data": {"a": 1}}, headers=if_match(t.h, '"1"'))
    assert first.status_code == 200, first.text
    assert first.headers["etag"] == '"2"'

    for method, url, body in (
        ("PATCH", path, {"custom_data": {"a": 2}}),
        ("PUT", path, {"custom_data": {"a": 2}}),
        ("POST", f"{path}/transition", {"transition": "start_preparation"}),
        ("POST", f"{path}/reorder", {"position": 1}),
        ("POST", f"{path}/unassign", None),
        ("DELETE", path, None),
    ):
        stale = await client.request(method, url, json=body, headers=if_match(t.h, '"1"'))
        error = assert_error(stale, 412, "precondition_failed")
        assert error["details"]["etag"] == '"2"'
    row = await db.fetchrow(
        "SELECT version, current_state, custom_data FROM tickets WHERE id = $1", uuid.UUID(ticket["id"])
    )
    assert (row["version"], row["current_state"], row["custom_data"]) == (2, "received", '{"a": 1}')

    # Weak tags never match (strong comparison); "*" and a list containing the current tag do.
    assert_error(
        await client.patch(path, json={}, headers=if_match(t.h, 'W/"2"')), 412, "precondition_failed"
    )
    listed = await client.post(
        f"{path}/transition", json={"transition": "start_preparation"}, headers=if_match(t.h, '"9", "2"')
    )
    assert listed.status_code == 200, listed.text
    anything = await client.post(
        f"{path}/transition", json={"transition": "mark_ready"}, headers=if_match(t.h, "*")
    )
    assert anything.status_code == 200, anything.text


async def test_bad_if_match_headers_and_other_tenants(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    other, _, _ = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    path = f"/v1/tickets/{ticket['id']}"
    for bad in ("1", '"1', "abc, *", '"a" "b"', "x" * 2000):
        response = await client.patch(path, json={"custom_data": {}}, headers=if_match(t.h, bad))
        assert_error(response, 400, "validation_error")
    foreign = await client.patch(path, json={"custom_data": {}}, headers=if_match(other.h, '"1"'))
    assert_error(foreign, 404, "not_found")
    missing = await client.patch(
        f"/v1/tickets/{uuid.uuid4()}", json={"custom_data": {}}, headers=if_match(t.h, '"1"')
    )
    assert_error(missing, 404, "not_found")
    assert ok(await client.get(path, headers=t.h))["version"] == 1


@pytest.mark.parametrize("change", ["patch", "cancel"])
async def test_two_writers_with_the_same_etag_one_wins(
    change: str, client: httpx.AsyncClient, api: Api, live_server: LiveServer, db: asyncpg.Connection
) -> None:
    """Eight writers with the ETag of version 1: one wins, seven get 412. A patch locks the ticket first; a
    cancel reads without a lock and writes only if the version is unchanged, so its losers read again, find
    the version moved on, and never cancel twice."""
    t, queue, order = await coffee(client, api)
    for round_ in range(5):
        ticket = await t.ticket(queue, order)
        path = f"/v1/tickets/{ticket['id']}"
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
            answers: list[Any] = await asyncio.gather(
                *(
                    http.patch(path, json={"custom_data": {"writer": i}}, headers=if_match(t.h, '"1"'))
                    if change == "patch"
                    else http.delete(path, headers=if_match(t.h, '"1"'))
                    for i in range(8)
                )
            )
        statuses = sorted(response.status_code for response in answers)
        assert statuses == [200] + [412] * 7, (round_, [r.text for r in answers])
        winner = next(r for r in answers if r.status_code == 200).json()
        stored = ok(await client.get(path, headers=t.h))
        assert stored["version"] == 2
        if change == "patch":
            assert stored["custom_data"] == winner["custom_data"]
        else:
            assert stored["state_category"] == winner["state_category"] == "cancelled"
            history = await db.fetchval(
                "SELECT count(*) FROM ticket_history WHERE ticket_id = $1 AND new_state = 'cancelled'",
                uuid.UUID(ticket["id"]),
            )
            assert history == 1
