"""Recall: a called ticket whose customer has not come is called again (`POST /v1/tickets/{id}/recall`).

The state stays; `ticket.recalled` goes to the log, the stream and webhooks; the customer's own stream hears
`event: recalled`, everyone else's page a plain `changed`. Refusals change nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx

from tests.conftest import LiveServer
from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import coffee, ok


async def recall_events(db: asyncpg.Connection, ticket_id: str) -> list[Any]:
    return await db.fetch(
        "SELECT data FROM events WHERE type = 'ticket.recalled' AND ticket_id = $1 ORDER BY id",
        uuid.UUID(ticket_id),
    )


async def test_a_called_ticket_is_called_again_where_staff_say(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "ana@example.com"}, headers=t.h
        ),
        201,
    )
    staff = await api.key(
        "tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id, employee_id=employee["id"]
    )
    ticket = await t.ticket(queue, order)
    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={"counter": "Desk 2"}, headers=t.h))
    assert called["id"] == ticket["id"]

    again = await client.post(
        f"/v1/tickets/{ticket['id']}/recall", json={"counter": "Desk 3"}, headers=auth(staff)
    )
    body = ok(again)
    assert (body["current_state"], body["counter"]) == (called["current_state"], "Desk 3")
    assert body["version"] == called["version"] + 1
    assert again.headers["etag"] == f'"{body["version"]}"'
    # No body at all: called again at the same counter.
    body = ok(await client.post(f"/v1/tickets/{ticket['id']}/recall", headers=auth(staff)))
    assert body["counter"] == "Desk 3"

    events = (await t.get("/v1/events", type="ticket.recalled"))["data"]
    assert [e["data"]["counter"] for e in events] == ["Desk 3", "Desk 3"]
    assert {e["data"]["employee_id"] for e in events} == {employee["id"]}
    assert events[0]["data"]["display_code"] == ticket["display_code"]
    assert events[0]["data"]["current_state"] == called["current_state"]
    from virtualq.events.envelope import display_safe

    # A wall's stream leaves the employee out, as for every event; the counter is what it shows.
    assert display_safe(events[0])["data"] == {
        key: value for key, value in events[0]["data"].items() if key != "employee_id"
    }


async def test_only_a_called_ticket_can_be_recalled_and_refusals_change_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    waiting = await t.ticket(queue, order)
    body = assert_error(
        await client.post(f"/v1/tickets/{waiting['id']}/recall", headers=t.h), 409, "conflict"
    )
    assert body["details"] == {"current_state": "received", "state_category": "waiting"}
    done = await t.ticket(queue, order)
    ok(await client.delete(f"/v1/tickets/{done['id']}", headers=t.h))
    assert_error(await client.post(f"/v1/tickets/{done['id']}/recall", headers=t.h), 409, "conflict")

    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={"counter": "Desk 1"}, headers=t.h))
    url = f"/v1/tickets/{called['id']}/recall"
    json_header = {**t.h, "Content-Type": "application/json"}
    for request in (
        {"json": {"counter": ""}},
        {"json": {"counter": "D" * 51}},
        {"json": {"counter": 2}},
        {"json": {"desk": "Desk 3"}},
        {"json": ["Desk 3"]},
        {"content": b'{"counter": '},
    ):
        extra = {"headers": json_header} if "content" in request else {"headers": t.h}
        assert_error(await client.post(url, **request, **extra), 400, "validation_error")
    assert_error(await client.post("/v1/tickets/not-a-uuid/recall", headers=t.h), 400, "validation_error")
    assert_error(await client.post(f"/v1/tickets/{uuid.uuid4()}/recall", headers=t.h), 404, "not_found")
    stale = {**t.h, "If-Match": f'"{called["version"] + 5}"'}
    assert_error(await client.post(url, headers=stale), 412, "precondition_failed")
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.post(url, headers=auth(display)), 403, "forbidden")
    other, _, _ = await coffee(client, api)
    assert_error(await client.post(url, headers=other.h), 404, "not_found")

    after = await t.get(f"/v1/tickets/{called['id']}")
    assert (after["version"], after["counter"]) == (called["version"], "Desk 1")
    assert await recall_events(db, called["id"]) == []
    assert await recall_events(db, waiting["id"]) == []


async def test_concurrent_recalls_each_count(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    await t.ticket(queue, order)
    called = ok(await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h))
    answers = await asyncio.gather(
        *(
            client.post(f"/v1/tickets/{called['id']}/recall", json={"counter": f"Desk {n}"}, headers=t.h)
            for n in range(10)
        )
    )
    assert [a.status_code for a in answers] == [200] * 10
    assert sorted(a.json()["version"] for a in answers) == [called["version"] + n for n in range(1, 11)]
    after = await t.get(f"/v1/tickets/{called['id']}")
    assert after["version"] == called["version"] + 10  # no recall lost
    events = await recall_events(db, called["id"])
    assert len(events) == 10
    # The last recall to commit says where to go: the ticket and the last event agree.
    last = events[-1]["data"]
    assert json.loads(last)["counter"] == after["counter"]


async def test_the_customer_s_own_stream_hears_the_recall(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer
) -> None:
    t, queue, order = await coffee(client, api)
    mine, behind = await t.ticket(queue, order), await t.ticket(queue, order)
    ok(await client.post(f"/v1/queues/{queue}/call-next", json={"counter": "Desk 2"}, headers=t.h))

    async def events_until_recalled(ticket: dict[str, Any], streams: httpx.AsyncClient) -> list[str]:
        """The stream's event names, up to its first `recalled` (or 3 s after the recall was sent)."""
        token = ticket["customer_page"].split("token=")[1]
        seen: list[str] = []
        async with streams.stream(
            "GET", f"/v1/public/tickets/{ticket['id']}/stream", params={"token": token}
        ) as stream:
            lines = stream.aiter_lines()
            assert await anext(lines) == ": connected"
            opened.set()
            try:
                async with asyncio.timeout(8):
                    await recalled_sent.wait()
                async with asyncio.timeout(3):
                    async for line in lines:
                        if line.startswith("event: "):
                            seen.append(line.removeprefix("event: "))
                            if seen[-1] == "recalled":
                                break
            except TimeoutError:
                pass
        return seen

    recalled_sent = asyncio.Event()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=None) as streams:
        opened = asyncio.Event()
        own = asyncio.create_task(events_until_recalled(mine, streams))
        await opened.wait()
        opened.clear()
        other = asyncio.create_task(events_until_recalled(behind, streams))
        await opened.wait()
        ok(await client.post(f"/v1/tickets/{mine['id']}/recall", headers=t.h))
        recalled_sent.set()
        own_events, other_events = await own, await other
    # (A `changed` from the call made just before may come first: the stream started before it was read.)
    assert own_events[-1:] == ["recalled"], own_events
    assert "changed" in other_events, other_events  # its line changed; nothing says whose recall it was
    assert "recalled" not in other_events, other_events


async def test_a_refused_recall_takes_no_lock(client: httpx.AsyncClient, api: Api, monkeypatch: Any) -> None:
    """A recall of a waiting ticket is refused from a plain read: a lock on it, even for an instant, would
    make a call-next at that moment skip the head of the line (SKIP LOCKED)."""
    from virtualq.tickets import line

    t, queue, order = await coffee(client, api)
    head = await t.ticket(queue, order)

    async def no_lock(*args: Any) -> Any:
        raise AssertionError("a refused recall locked the ticket")

    monkeypatch.setattr(line, "_locked", no_lock)
    assert_error(await client.post(f"/v1/tickets/{head['id']}/recall", headers=t.h), 409, "conflict")
