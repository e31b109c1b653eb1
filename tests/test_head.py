"""HEAD (RFC 9110 §9.3.2): every GET route answers it with the GET's status and headers and no body, over a
real server; authentication and tenant scoping apply as to the GET; metrics say HEAD."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.conftest import LiveServer
from tests.helpers import Api, auth, raw_exchange
from tests.test_operations import samples
from tests.test_ticket_flows import Tenant, coffee

# Headers that differ from one answer to the next by design.
VARYING = {"date", "x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset"}


def same_head(head: httpx.Response, get: httpx.Response) -> None:
    assert head.status_code == get.status_code, (head.status_code, get.text)
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content)
    heads = {k: v for k, v in head.headers.items() if k not in VARYING}
    gets = {k: v for k, v in get.headers.items() if k not in VARYING}
    assert heads == gets
    assert head.headers["x-request-id"] != get.headers["x-request-id"]


async def test_head_of_a_ticket_is_its_get_without_the_body(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    path = f"/v1/tickets/{ticket['id']}"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        # The plain request (the fast path) and one with a query string (FastAPI's route).
        for query in ("", f"?tenant_id={t.id}"):
            get = await http.get(path + query, headers=t.h)
            head = await http.head(path + query, headers=t.h)
            same_head(head, get)
            assert head.headers["etag"] == '"1"'
        # The same refusals as the GET, without their bodies.
        for headers, status in (
            ({}, 401),
            (auth("vq_" + "x" * 40), 401),
            (auth((await Tenant.create(client, api)).world.tenant_admin), 404),  # another tenant's key
        ):
            get = await http.get(path, headers=headers)
            head = await http.head(path, headers=headers)
            assert get.status_code == status, get.text
            same_head(head, get)
        missing = f"/v1/tickets/{uuid.uuid4()}"
        same_head(await http.head(missing, headers=t.h), await http.get(missing, headers=t.h))
        # A path without a GET route: 405 naming the methods it has, as for a GET.
        call = await http.head(f"/v1/queues/{queue}/call-next", headers=t.h)
        assert call.status_code == 405
        assert call.content == b""
        assert call.headers["allow"] == "POST"
        assert (await http.head("/no-such-path")).status_code == 404
        # Nothing changed: the ticket is as it was.
        assert (await http.get(path, headers=t.h)).json()["version"] == 1


async def test_head_of_the_health_checks_and_pages(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            same_head(await http.head(path), await http.get(path))
        metrics = await http.head("/metrics")  # its length moves with every request counted
        assert metrics.status_code == 200
        assert metrics.content == b""
        assert metrics.headers["content-type"].startswith("text/plain")


async def test_head_of_an_event_stream_ends_and_the_connection_goes_on(
    client: httpx.AsyncClient, api: Api, live_server: LiveServer, app: object
) -> None:
    """A stream's HEAD gets the stream's head and ends at once; the stream it started stops, and the same
    connection serves the next request."""
    t = await Tenant.create(client, api)
    key = t.world.tenant_admin.encode()
    registry = app.state.metrics.registry  # type: ignore[attr-defined]
    before = registry.get_sample_value("virtualq_stream_clients")  # the session's app: other tests' streams
    raw = (
        b"HEAD /v1/events/stream HTTP/1.1\r\nhost: t\r\nauthorization: Bearer " + key + b"\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
    )
    received = await raw_exchange(live_server.port, raw, b"HTTP/1.1 ", 2)
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK")
    assert b"content-type: text/event-stream" in first.lower()
    assert first.endswith(b"\r\n\r\n")
    assert second.startswith(b"200 OK")
    assert second.endswith(b'{"status":"ok"}')
    async with asyncio.timeout(10):  # the stream the HEAD opened has let go of its place in the hub
        while registry.get_sample_value("virtualq_stream_clients") > before:  # noqa: ASYNC110 - a gauge
            await asyncio.sleep(0.01)


async def test_head_is_counted_as_head(client: httpx.AsyncClient, api: Api, live_server: LiveServer) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        head = await http.head(f"/v1/tickets/{ticket['id']}", headers=t.h)
        assert head.status_code == 200
        text = (await http.get("/metrics")).text
    heads = [
        value
        for name, labels, value in samples(text, "virtualq_http_requests")
        if name == "virtualq_http_requests_total"
        and labels == {"method": "HEAD", "route": "/v1/tickets/{ticket_id}", "status": "200"}
    ]
    assert heads
    assert heads[0] >= 1
