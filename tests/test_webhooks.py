"""Webhooks against a real HTTP receiver on loopback (PRODUCT §5): signatures, retries with backoff,
failure, restarts mid-retry, redelivery, the test event, SSRF refusal, isolation."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import Api, assert_cancel_right_after_a_wake_up_stops, assert_error, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, ok
from virtualq import sweeper
from virtualq.app import create_app
from virtualq.kit.idempotency import REDACTED


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A tiny HTTP server: answers each POST with the next scripted behaviour (a status code, "timeout",
    "slow": 200 after half a second, "drip": 200 a byte every 0.3 s, or "close"), then with `default`."""

    script: list[int | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(headers, body, time.monotonic()))
            behaviour = self.script.pop(0) if self.script else self.default
            if behaviour == "timeout":
                await asyncio.sleep(3)
            elif behaviour == "slow":
                await asyncio.sleep(0.5)
                behaviour = 200
            elif behaviour == "drip":  # each read well within httpx's timeout, the whole far beyond it
                for byte in b"HTTP/1.1 200 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n":
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.3)
            if behaviour not in ("timeout", "close", "drip"):
                writer.write(
                    f"HTTP/1.1 {behaviour} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
        finally:
            writer.close()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"received {len(self.requests)} of {count}"
            await asyncio.sleep(0.02)
        return self.requests


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@asynccontextmanager
async def delivering(database_dsn: str, **settings: Any) -> AsyncIterator[Any]:
    """A server process's worth of app with webhook delivery on (the shared test app has it off)."""
    application = create_app(make_settings(webhook_delivery=True, **settings), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        yield application


async def shop(client: httpx.AsyncClient, api: Api) -> tuple[Tenant, str, str]:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Main")
    return t, queue["id"], order["id"]


async def subscribe(client: httpx.AsyncClient, t: Tenant, url: str, *types: str) -> dict[str, Any]:
    body = {"url": url, "event_types": list(types)}
    return ok(await client.post("/v1/webhooks", json=body, headers=t.h), 201)


async def deliveries(client: httpx.AsyncClient, t: Tenant, hook: dict[str, Any]) -> list[dict[str, Any]]:
    page = ok(await client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 100}, headers=t.h))
    return list(page["data"])


async def settled(
    client: httpx.AsyncClient,
    t: Tenant,
    hook: dict[str, Any],
    count: int,
    timeout: float = 8.0,  # noqa: ASYNC109
) -> list[dict[str, Any]]:
    """Wait until `count` deliveries are no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        found = await deliveries(client, t, hook)
        if len(found) >= count and all(d["status"] != "pending" for d in found):
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


def verify(secret: str, received: Received) -> bool:
    """What a receiver does (docs/events.md): any `v1=` may match (two while a rotation keeps the old one)."""
    pairs = [item.split("=", 1) for item in received.headers["x-virtualq-signature"].split(",")]
    timestamp = next(value for name, value in pairs if name == "t")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and any(hmac.compare_digest(expected, value) for name, value in pairs if name == "v1")


async def test_signed_delivery_of_subscribed_events(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver
) -> None:
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created", "ticket.completed")
    assert hook["secret"].startswith("whsec_")
    assert "secret" not in ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=t.h))
    inactive = await subscribe(client, t, receiver.url)
    ok(await client.patch(f"/v1/webhooks/{inactive['id']}", json={"is_active": False}, headers=t.h))
    async with delivering(database_dsn):
        ticket = await t.ticket(queue, order)
        await t.move(ticket["id"], "start_preparation")  # not subscribed
        (request,) = await receiver.wait_for(1)
        assert verify(hook["secret"], request)
        assert not verify("whsec_wrong", request)
        assert request.headers["x-virtualq-event"] == "ticket.created"
        assert request.headers["content-type"] == "application/json"
        envelope = json.loads(request.body)
        logged = ok(await client.get("/v1/events", params={"ticket_id": ticket["id"]}, headers=t.h))["data"][
            0
        ]
        assert envelope["id"] == logged["id"]
        assert envelope["occurred_at"] == logged["occurred_at"]  # the same text as the API writes
        assert envelope["type"] == "ticket.created"
        assert (envelope["ticket_id"], envelope["queue_id"], envelope["tenant_id"]) == (
            ticket["id"],
            queue,
            t.id,
        )
        assert envelope["data"]["display_code"] == ticket["display_code"]
        (delivery,) = await settled(client, t, hook, 1)
        assert request.headers["x-virtualq-delivery"] == delivery["id"]
        assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
            "succeeded",
            1,
            200,
        )
        assert delivery["event_id"] == logged["id"]
        assert delivery["attempt_log"][0]["status_code"] == 200
        assert delivery["attempt_log"][0]["duration_ms"] >= 0
        await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1  # nothing for the unsubscribed type, nothing for the inactive hook
    assert await deliveries(client, t, inactive) == []


async def test_a_rotated_secret_signs_next_to_the_old_one_for_a_while(
    client: httpx.AsyncClient,
    api: Api,
    app: Any,
    database_dsn: str,
    db: asyncpg.Connection,
    receiver: Receiver,
) -> None:
    """A secret could only be replaced by deleting the subscription (a new id, its delivery log split).
    Rotating gives a new secret, shown once; deliveries carry a signature by each secret while the old one
    is kept (a day unless told), then by the new one alone, so receivers switch without refusing any."""
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created")
    path = f"/v1/webhooks/{hook['id']}/rotate-secret"
    rotated = ok(await client.post(path, headers=t.h))  # no body: the defaults
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != hook["secret"]
    assert rotated["id"] == hook["id"]
    kept_until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23) < kept_until - datetime.now(UTC) <= timedelta(hours=24)
    async with delivering(database_dsn):
        await t.ticket(queue, order)
        (both,) = await receiver.wait_for(1)
        assert both.headers["x-virtualq-signature"].count("v1=") == 2
        assert verify(rotated["secret"], both)
        assert verify(hook["secret"], both)
        # The old one's time is up (as after a day): only the new one signs.
        await db.execute(
            "UPDATE webhooks SET previous_secret_until = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(hook["id"]),
        )
        await t.ticket(queue, order)
        (_, alone) = await receiver.wait_for(2)
        assert alone.headers["x-virtualq-signature"].count("v1=") == 1
        assert verify(rotated["secret"], alone)
        assert not verify(hook["secret"], alone)
        # Rotating with no overlap: at once only the newest.
        newest = ok(await client.post(path, json={"previous_secret_minutes": 0}, headers=t.h))
        assert newest["previous_secret_expires_at"] is None
        await t.ticket(queue, order)
        (_, _, last) = await receiver.wait_for(3)
        assert verify(newest["secret"], last)
        assert not verify(rotated["secret"], last)
        # Two rotations within one overlap (a response lost, two admins at once): the secret receivers had
        # before the first keeps signing; the one in between, current only for moments, does not.
        lost = ok(await client.post(path, headers=t.h))
        retried = ok(await client.post(path, headers=t.h))
        shown = ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=t.h))
        assert shown["previous_secret_expires_at"] == retried["previous_secret_expires_at"]
        await t.ticket(queue, order)
        (*_, overlapped) = await receiver.wait_for(4)
        assert overlapped.headers["x-virtualq-signature"].count("v1=") == 2
        assert verify(retried["secret"], overlapped)
        assert verify(newest["secret"], overlapped)
        assert not verify(lost["secret"], overlapped)
    # Once the overlap is over, the old secret is not kept.
    await db.execute(
        "UPDATE webhooks SET previous_secret_until = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(hook["id"]),
    )
    await sweeper.prune(app.state.pool, retention_days=7)
    kept = await db.fetchrow(
        "SELECT previous_secret, previous_secret_until FROM webhooks WHERE id = $1", uuid.UUID(hook["id"])
    )
    assert (kept["previous_secret"], kept["previous_secret_until"]) == (None, None)
    assert (
        ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=t.h))["previous_secret_expires_at"] is None
    )
    # Admins only, in their own tenant; a bad body changes nothing; a retry shows no secret again.
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.post(path, headers=auth(staff)), 403, "forbidden")
    stranger, _, _ = await shop(client, api)
    assert_error(await client.post(path, headers=stranger.h), 404, "not_found")
    before = await db.fetchval("SELECT secret FROM webhooks WHERE id = $1", uuid.UUID(hook["id"]))
    minutes = "previous_secret_minutes"
    for bad in ({minutes: -1}, {minutes: 10081}, {minutes: "60"}, {minutes: 1.5}, {"keep": 1}):
        assert_error(await client.post(path, json=bad, headers=t.h), 400, "validation_error")
    assert await db.fetchval("SELECT secret FROM webhooks WHERE id = $1", uuid.UUID(hook["id"])) == before
    first = await client.post(path, headers={**t.h, "Idempotency-Key": "rotate-1"})
    stored = await db.fetchval("SELECT secret FROM webhooks WHERE id = $1", uuid.UUID(hook["id"]))
    again = await client.post(path, headers={**t.h, "Idempotency-Key": "rotate-1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert first.json()["secret"] == stored
    assert again.json()["secret"] == REDACTED  # not replayed, and not kept
    assert "rotate-secret" in REDACTED
    assert await db.fetchval("SELECT secret FROM webhooks WHERE id = $1", uuid.UUID(hook["id"])) == stored


async def test_failures_are_retried_with_backoff_until_success(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver
) -> None:
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created")
    receiver.script = [500, "timeout", "close", 503]
    async with delivering(database_dsn, webhook_retry_window_seconds=30):
        await t.ticket(queue, order)
        requests = await receiver.wait_for(5, timeout=10)
        (delivery,) = await settled(client, t, hook, 1)
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"] == 5
    log = delivery["attempt_log"]
    assert [a["status_code"] for a in log] == [500, None, None, 503, 200]
    assert log[1]["error"] == "timed out"
    assert log[2]["error"] is not None
    assert {r.headers["x-virtualq-delivery"] for r in requests} == {delivery["id"]}  # the same id each time
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert all(gap > 0.02 for gap in gaps)  # never hammered: each retry waited


async def test_a_receiver_that_never_answers_is_marked_failed(
    client: httpx.AsyncClient, api: Api, database_dsn: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens there once the socket closes
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, f"http://127.0.0.1:{closed_port}/hook", "ticket.created")
    async with delivering(database_dsn, webhook_retry_window_seconds=1.0):
        await t.ticket(queue, order)
        (delivery,) = await settled(client, t, hook, 1, timeout=10)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] >= 2
    assert all(a["status_code"] is None and a["error"] for a in delivery["attempt_log"])
    assert delivery["next_attempt_at"] is None


async def test_a_restart_mid_retry_loses_nothing_and_redelivery_works(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver
) -> None:
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created")
    receiver.default = 500
    async with delivering(database_dsn, webhook_retry_base_seconds=0.5, webhook_retry_window_seconds=60):
        await t.ticket(queue, order)
        await receiver.wait_for(1)
    # The server stopped with the delivery pending; the next one picks it up.
    (pending,) = await deliveries(client, t, hook)
    assert (pending["status"], pending["attempts"]) == ("pending", 1)
    receiver.default = 200
    async with delivering(database_dsn, webhook_retry_window_seconds=60):
        (delivery,) = await settled(client, t, hook, 1)
        assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)
        first_body = receiver.requests[-1].body

        again = ok(
            await client.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/redeliver", headers=t.h)
        )
        assert again["status"] == "pending"
        await receiver.wait_for(3)
        (delivery,) = await settled(client, t, hook, 1)
        assert delivery["attempts"] == 3
        assert receiver.requests[-1].body == first_body
        assert receiver.requests[-1].headers["x-virtualq-delivery"] == delivery["id"]

        test = ok(await client.post(f"/v1/webhooks/{hook['id']}/test", headers=t.h), 201)
        assert test["event_type"] == "webhook.test"
        await receiver.wait_for(4)
        assert json.loads(receiver.requests[-1].body)["type"] == "webhook.test"
        assert receiver.requests[-1].headers["x-virtualq-event"] == "webhook.test"
        assert verify(hook["secret"], receiver.requests[-1])


async def test_private_and_loopback_targets_are_refused_by_default(
    client: httpx.AsyncClient, api: Api, database_dsn: str
) -> None:
    t, _, _ = await shop(client, api)
    strict = create_app(make_settings(webhook_allow_private_targets=False), dsn=database_dsn)
    async with (
        strict.router.lifespan_context(strict),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=strict), base_url="http://testserver") as http,
    ):
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "ftp://example.com/hook",
            "http://user:pass@example.com/hook",
            "not a url at all",
        ):
            response = await http.post("/v1/webhooks", json={"url": url}, headers=t.h)
            assert_error(response, 400, "validation_error")
        hook = ok(await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}, headers=t.h), 201)
        response = await http.patch(
            f"/v1/webhooks/{hook['id']}", json={"url": "http://10.0.0.1/"}, headers=t.h
        )
        assert_error(response, 400, "validation_error")
    listed = ok(await client.get("/v1/webhooks", headers=t.h))
    assert [h["url"] for h in listed["data"]] == ["http://127.0.0.1:9/x"]


async def test_webhooks_are_admin_only_and_tenant_isolated(client: httpx.AsyncClient, api: Api) -> None:
    t, _, _ = await shop(client, api)
    hook = await subscribe(client, t, "http://127.0.0.1:9/hook")
    stranger, _, _ = await shop(client, api)
    for method, path, body in (
        ("GET", f"/v1/webhooks/{hook['id']}", None),
        ("PATCH", f"/v1/webhooks/{hook['id']}", {"is_active": False}),
        ("DELETE", f"/v1/webhooks/{hook['id']}", None),
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries", None),
        ("POST", f"/v1/webhooks/{hook['id']}/test", None),
    ):
        assert_error(await client.request(method, path, json=body, headers=stranger.h), 404, "not_found")
    assert ok(await client.get("/v1/webhooks", headers=stranger.h))["data"] == []
    # Staff read configuration (PRODUCT §6), webhooks and their deliveries included, and change none of it;
    # display keys see none of it.
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    listed = ok(await client.get("/v1/webhooks", headers=auth(staff)))["data"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    assert ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=auth(staff)))["url"] == hook["url"]
    # A receiver's token in the URL is for admins' eyes: staff see where, not the token.
    tokened = await subscribe(client, t, "http://127.0.0.1:9/in?token=abc123&v=s3cret&sk_live_bare")
    staff_view = "http://127.0.0.1:9/in?token=redacted&v=redacted&redacted"  # a bare part too
    assert ok(await client.get(f"/v1/webhooks/{tokened['id']}", headers=auth(staff)))["url"] == staff_view
    listed = ok(await client.get("/v1/webhooks", headers=auth(staff)))["data"]
    assert {h["url"] for h in listed} == {hook["url"], staff_view}
    assert "s3cret" not in json.dumps(listed)
    assert "abc123" not in json.dumps(listed)
    assert "sk_live_bare" not in json.dumps(listed)
    admin_view = ok(await client.get(f"/v1/webhooks/{tokened['id']}", headers=t.h))["url"]
    assert admin_view == "http://127.0.0.1:9/in?token=abc123&v=s3cret&sk_live_bare"
    assert (await client.delete(f"/v1/webhooks/{tokened['id']}", headers=t.h)).status_code == 204
    ok(await client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth(staff)))
    for method, path, body in (
        ("POST", "/v1/webhooks", {"url": "https://example.com/h"}),
        ("PATCH", f"/v1/webhooks/{hook['id']}", {"is_active": False}),
        ("DELETE", f"/v1/webhooks/{hook['id']}", None),
        ("POST", f"/v1/webhooks/{hook['id']}/test", None),
    ):
        assert_error(await client.request(method, path, json=body, headers=auth(staff)), 403, "forbidden")
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.get("/v1/webhooks", headers=auth(display)), 403, "forbidden")
    for bad in ({"url": "http://127.0.0.1:9/", "event_types": ["ticket.exploded"]}, {"url": 5}, {"nope": 1}):
        assert_error(await client.post("/v1/webhooks", json=bad, headers=t.h), 400, "validation_error")
    assert ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=t.h))["is_active"] is True
    assert (await client.delete(f"/v1/webhooks/{hook['id']}", headers=t.h)).status_code == 204
    assert ok(await client.get(f"/v1/webhooks/{hook['id']}", headers=t.h))["is_active"] is False


async def test_a_stop_lets_the_attempts_in_flight_end_and_records_them(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver
) -> None:
    """A server stopping while a receiver takes its time: the attempt ends and its success is recorded, so
    the delivery is not sent again after its lease (the receiver had it)."""
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created")
    receiver.script = ["slow"]
    async with delivering(database_dsn):
        await t.ticket(queue, order)
        await receiver.wait_for(1)  # in flight: the stop begins while the receiver takes half a second
    (delivery,) = await deliveries(client, t, hook)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 1)
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("behaviour", ["timeout", "drip"])
async def test_a_stop_waits_for_an_attempt_no_longer_than_its_timeout(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver, behaviour: str
) -> None:
    """A receiver that does not answer, or answers a byte at a time: the stop waits out the attempt's own
    timeout (1 s in the tests, WEBHOOK_TIMEOUT_SECONDS, for the attempt as a whole), records it as a failed
    attempt to retry, and is done."""
    t, queue, order = await shop(client, api)
    hook = await subscribe(client, t, receiver.url, "ticket.created")
    receiver.script = [behaviour]
    async with delivering(database_dsn, webhook_retry_window_seconds=60):
        await t.ticket(queue, order)
        await receiver.wait_for(1)
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    (delivery,) = await deliveries(client, t, hook)
    assert (delivery["status"], delivery["attempts"]) == ("pending", 1)
    assert [attempt["error"] for attempt in delivery["attempt_log"]] == ["timed out"]  # recorded, not cut
    assert 0.5 < took < 2.0, took  # it waited for the attempt, and not past its timeout


async def test_a_worker_cancelled_right_after_a_wake_up_stops(app: Any) -> None:
    """Regression (see the event hub's twin in test_events): the worker's wait for work must not swallow the
    cancellation stop() sends when it arrives just as a wake-up completes."""
    from virtualq.webhooks.worker import WebhookWorker

    for settle in (0, 1, 2):
        settings = make_settings(event_poll_seconds=0.5)
        worker = WebhookWorker(app.state.system_pool, settings, app.state.metrics)
        await worker.start()
        await asyncio.sleep(0.2)  # idle, waiting to be woken
        assert worker._task is not None
        try:
            await assert_cancel_right_after_a_wake_up_stops(worker._task, worker.wake, settle)
        finally:
            await worker.stop()


async def test_a_receiver_that_hangs_holds_up_no_other_delivery(
    client: httpx.AsyncClient, api: Api, database_dsn: str
) -> None:
    """One tenant's receiver taking its whole timeout must not delay another tenant's deliveries. The worker
    attempted a claimed batch as a whole and claimed nothing more until its slowest attempt ended."""
    hanging, healthy = Receiver(script=["timeout"]), Receiver()
    await hanging.start()
    await healthy.start()
    try:
        a, b = await Tenant.create(client, api), await Tenant.create(client, api)
        hook_a, hook_b = await subscribe(client, a, hanging.url), await subscribe(client, b, healthy.url)
        async with delivering(database_dsn, webhook_timeout_seconds=3.0, webhook_retry_window_seconds=60):
            ok(await client.post(f"/v1/webhooks/{hook_a['id']}/test", headers=a.h), 201)
            await hanging.wait_for(1)  # in flight for 3 s
            sent = time.monotonic()
            ok(await client.post(f"/v1/webhooks/{hook_b['id']}/test", headers=b.h), 201)
            (received,) = await healthy.wait_for(1, timeout=5)
            assert received.at - sent < 1.5, f"held up for {received.at - sent:.2f} s behind another receiver"
            (done,) = await settled(client, b, hook_b, 1)
            assert done["status"] == "succeeded"
            (still,) = await deliveries(client, a, hook_a)
            assert (still["status"], still["attempt_log"]) == ("pending", [])  # its attempt is still running
    finally:
        await hanging.stop()
        await healthy.stop()


async def test_a_redelivery_asked_for_during_an_attempt_is_not_lost(
    client: httpx.AsyncClient, api: Api, database_dsn: str, json_logs: io.StringIO
) -> None:
    """The attempt in flight ends (here: a final failure, its retry window being over) after an admin asked
    for a redelivery: its outcome must not overwrite the redelivery, which is sent as promised."""
    receiver = Receiver(script=["timeout"], default=200)
    await receiver.start()
    try:
        t = await Tenant.create(client, api)
        hook = await subscribe(client, t, receiver.url)
        delivery = ok(await client.post(f"/v1/webhooks/{hook['id']}/test", headers=t.h), 201)
        await asyncio.sleep(0.6)  # older than the retry window below: its next failure is final
        async with delivering(database_dsn, webhook_retry_window_seconds=0.5):
            await receiver.wait_for(1)  # attempt 1 in flight (it times out after 1 s)
            path = f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}"
            assert ok(await client.post(f"{path}/redeliver", headers=t.h))["status"] == "pending"
            await receiver.wait_for(2, timeout=5)
            deadline = time.monotonic() + 5
            while True:  # until the overtaken attempt has ended too (its timeout is 1 s)
                (final,) = await settled(client, t, hook, 1)
                if len(final["attempt_log"]) == 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    finally:
        await receiver.stop()
    assert final["status"] == "succeeded", final
    assert len(receiver.requests) == 2
    assert {r.headers["x-virtualq-delivery"] for r in receiver.requests} == {delivery["id"]}
    # Both attempts are in its log, the one the redelivery overtook included.
    assert {(a["status_code"], a["error"]) for a in final["attempt_log"]} == {
        (200, None),
        (None, "timed out"),
    }
    # The overtaken attempt's failure is not the delivery's: no "delivery failed" for the operator. (Other
    # tests' deliveries left pending in the shared database may be attempted and logged meanwhile.)
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.strip()]
    events = [line["event"] for line in lines if line.get("delivery_id") == delivery["id"]]
    assert events == ["webhook_retry_scheduled"], events


async def test_retries_back_off_and_a_redelivery_starts_again_from_the_first_step(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver
) -> None:
    """Waits double per failed attempt (each between half and all of its step); a redelivery starts its
    window again, so its first retry waits the first step, not the step its count of attempts had reached
    (with the defaults, 30-60 min for a delivery that failed for 24 h)."""
    receiver.default = 500
    t = await Tenant.create(client, api)
    hook = await subscribe(client, t, receiver.url)
    base = 0.3
    async with delivering(
        database_dsn,
        webhook_retry_base_seconds=base,
        webhook_retry_max_seconds=30,
        webhook_retry_window_seconds=60,
    ):
        delivery = ok(await client.post(f"/v1/webhooks/{hook['id']}/test", headers=t.h), 201)
        first = await receiver.wait_for(4, timeout=10)
        gaps = [b.at - a.at for a, b in itertools.pairwise(first)]
        for n, gap in enumerate(gaps):  # steps 0.3, 0.6, 1.2 s; the worker polls every 0.2 s
            assert base * 2**n / 2 - 0.05 < gap < base * 2**n + 0.5, gaps
        path = f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}"
        await asyncio.sleep(0.1)  # the fourth failure recorded (its retry waits 1.2-2.4 s)
        ok(await client.post(f"{path}/redeliver", headers=t.h))
        again = await receiver.wait_for(6, timeout=10)
    after_redelivery = again[5].at - again[4].at
    assert after_redelivery < base + 0.5, (
        f"the first retry after a redelivery waited {after_redelivery:.2f} s"
    )


async def test_failed_attempts_are_logged_for_the_operator(
    client: httpx.AsyncClient, api: Api, database_dsn: str, receiver: Receiver, json_logs: io.StringIO
) -> None:
    """Failures were only in the metric and the delivery's log: a retry is an info line, the final failure
    a warning, each with the tenant, webhook and delivery, never the URL (its query may hold a token)."""
    receiver.default = 500
    t = await Tenant.create(client, api)
    hook = await subscribe(client, t, receiver.url + "?token=s3cr3t")
    async with delivering(database_dsn, webhook_retry_window_seconds=0.5):
        delivery = ok(await client.post(f"/v1/webhooks/{hook['id']}/test", headers=t.h), 201)
        (final,) = await settled(client, t, hook, 1)
    assert final["status"] == "failed"
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.strip()]
    logged = [line for line in lines if line.get("delivery_id") == delivery["id"]]
    assert [line["event"] for line in logged] == ["webhook_retry_scheduled"] * (len(logged) - 1) + [
        "webhook_delivery_failed"
    ]
    assert len(logged) == final["attempts"]
    assert {line["level"] for line in logged} == {"info", "warning"} or len(logged) == 1
    for line in logged:
        assert (line["tenant_id"], line["webhook_id"], line["status_code"]) == (t.id, hook["id"], 500)
        assert line["error"] == "HTTP 500"
    assert "s3cr3t" not in json_logs.getvalue()
