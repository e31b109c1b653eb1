"""Hostile input that used to reach a 500 (or the network), found by a sweep of every operation on
2026-12-01: unpaired surrogates in free-form JSON, times beyond year 9999 once in UTC, a blank state filter,
JSON Schema references that lead nowhere, back to themselves or out to a URL, malformed webhook hosts, a
request target that is no path, and lax integers. Each must be a 400 in the error envelope that changes
nothing (PRODUCT §6)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, LiveServer
from tests.helpers import Api, assert_error, auth, raw_exchange
from tests.test_ticket_flows import coffee, ok, ticket_rows
from virtualq.kit.routing import refuse_stray_bodies

SURROGATE = "\\ud800"  # as JSON writes it: a lone high surrogate, no Unicode text


def raw(body: str) -> dict[str, Any]:
    """A body sent as written (httpx would refuse to encode a lone surrogate)."""
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


async def test_unpaired_surrogates_in_free_form_json_are_400(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    before = await ticket_rows(db, t.id)
    cases = [
        (
            "POST",
            "/v1/tickets",
            f'{{"queue_id":"{queue}","type_definition_id":"{order}","custom_data":{{"k":"{SURROGATE}"}}}}',
        ),
        (
            "POST",
            "/v1/tickets",
            f'{{"queue_id":"{queue}","type_definition_id":"{order}","custom_data":{{"{SURROGATE}":1}}}}',
        ),
        ("PATCH", f"/v1/tickets/{ticket['id']}", f'{{"custom_data":{{"a":["{SURROGATE}x"]}}}}'),
        ("PATCH", f"/v1/tenants/{t.id}", f'{{"config":{{"{SURROGATE}":1}}}}'),
        (
            "POST",
            "/v1/type-definitions",
            f'{{"type_code":"zz1","type_name":"x","custom_fields_schema":{{"description":"{SURROGATE}"}}}}',
        ),
    ]
    for method, path, body in cases:
        payload = raw(body)
        response = await client.request(
            method, path, content=payload["content"], headers={**t.h, **payload["headers"]}
        )
        error = assert_error(response, 400, "validation_error")
        assert "surrogate" in json.dumps(error), error
    assert await ticket_rows(db, t.id) == before
    fetched = ok(await client.get(f"/v1/tickets/{ticket['id']}", headers=t.h))
    assert fetched["custom_data"] == ticket["custom_data"]
    # A surrogate pair is one ordinary character: accepted and kept.
    made = ok(
        await client.post(
            "/v1/tickets",
            content=f'{{"queue_id":"{queue}","type_definition_id":"{order}","custom_data":{{"e":"\\ud83d\\ude00"}}}}'.encode(),
            headers={**t.h, "content-type": "application/json"},
        ),
        201,
    )
    assert made["custom_data"] == {"e": "\U0001f600"}


async def test_times_outside_the_storable_range_in_utc_are_400(client: httpx.AsyncClient, api: Api) -> None:
    t, _, _ = await coffee(client, api)
    for param, value in (
        ("created_after", "0001-01-01T00:00:00+01:00"),
        ("created_before", "9999-12-31T23:59:59-23:59"),
        ("expires_before", "9999-12-31T23:59:59-01:00"),
    ):
        error = assert_error(
            await client.get("/v1/tickets", params={param: value}, headers=t.h), 400, "validation_error"
        )
        assert [(p["location"], p["field"]) for p in error["details"]["errors"]] == [("query", param)]
    counted = await client.post(
        "/v1/tickets/count", json={"created_before": "9999-12-31T23:59:59-23:59"}, headers=t.h
    )
    assert_error(counted, 400, "validation_error")
    # The edges themselves are fine.
    assert ok(await client.get("/v1/tickets", params={"created_after": "0001-01-01T00:00:00Z"}, headers=t.h))
    assert ok(await client.get("/v1/tickets", params={"created_before": "9999-12-31T23:59:59Z"}, headers=t.h))


async def test_a_blank_state_filter_is_400(client: httpx.AsyncClient, api: Api) -> None:
    t, _, _ = await coffee(client, api)
    for blank in (" ", "\t"):
        error = assert_error(
            await client.get("/v1/tickets", params={"current_state": blank}, headers=t.h),
            400,
            "validation_error",
        )
        assert [(p["location"], p["field"]) for p in error["details"]["errors"]] == [
            ("query", "current_state")
        ]


class Listener:
    """A loopback TCP server that only counts who connects to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/schema.json"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_schema_references_must_stay_inside_and_lead_somewhere(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A `$ref` that points to nothing, back into itself, or out to a URL was accepted; tickets of the type
    then failed with 500, and a URL was fetched by the server (from inside its network, while the event
    loop waited). Now the type is refused and nothing is fetched."""
    t, queue, _ = await coffee(client, api)
    fsm = {"init": "a", "states": ["a"], "transitions": []}
    async with Listener() as outside:
        for number, schema in enumerate(
            [
                {"$ref": "#"},
                {"$ref": "#/$defs/nope"},
                {"$ref": "urn:x"},
                {"$ref": outside.url},
                {"$dynamicRef": "#nope"},
                {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
                {
                    "properties": {"x": {"$ref": "#/$defs/n"}},
                    "$defs": {"n": {"items": {"$ref": "#/$defs/n"}}},
                },
                # To a value inside the schema, not a schema: every ticket of the type was a 500.
                {"properties": {"a": {"const": 5}, "b": {"$ref": "#/properties/a/const"}}},
                {"enum": [{"type": "nonsense"}], "properties": {"b": {"$ref": "#/enum/0"}}},
                # "%2F" is decoded before the pointer is split, as the validator reads it.
                {"$defs": {"a/b": {}}, "properties": {"a": {"$ref": "#/$defs/a%2Fb"}}},
                # A new base or a named place below the root would change what "#/..." means.
                {
                    "properties": {"a": {"$id": "https://x.example/y", "$ref": "#/$defs/z"}},
                    "$defs": {"z": {}},
                },
                {"properties": {"a": {"$anchor": "here"}}, "$ref": "#here"},
            ]
        ):
            body = {
                "type_code": f"bad{number}",
                "type_name": "Bad",
                "fsm_schema": fsm,
                "custom_fields_schema": schema,
            }
            error = assert_error(
                await client.post("/v1/type-definitions", json=body, headers=t.h), 400, "validation_error"
            )
            assert any(word in json.dumps(error) for word in ("$ref", "$dynamicRef", "$id", "$anchor")), error
        assert outside.connections == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM type_definitions WHERE tenant_id = $1 AND type_code LIKE 'bad%'",
            uuid.UUID(t.id),
        )
        == 0
    )
    # Local references that lead somewhere are fine, and are followed.
    good = {
        "type": "object",
        "$id": "https://types.example/sized",
        "properties": {
            "size": {"$ref": "#/$defs/size"},
            "$ref": {"type": "string"},
            "note": {"$ref": "#/$defs/free%20text"},
        },
        "$defs": {"size": {"enum": ["S", "M", "L"]}, "free text": {"type": "string"}},
    }
    kind = await t.type("sized", fsm, custom_fields_schema=good)
    ok(
        await client.post(
            "/v1/tickets",
            json={"queue_id": queue, "type_definition_id": kind["id"], "custom_data": {"size": "M"}},
            headers=t.h,
        ),
        201,
    )
    for custom_data in ({"size": "XL"}, {"size": "S", "note": 7}):
        refused = await client.post(
            "/v1/tickets",
            json={"queue_id": queue, "type_definition_id": kind["id"], "custom_data": custom_data},
            headers=t.h,
        )
        assert_error(refused, 400, "validation_error")
    # Types stored with a broken reference before these checks: their tickets are 400, not 500, whatever
    # the validator raises (a cycle, an unresolvable pointer, a TypeError inside a non-schema target).
    for number, stored in enumerate(
        [
            {"$ref": "#"},
            {"properties": {"a": {"const": 5}, "b": {"$ref": "#/properties/a/const"}}},
            {"enum": [{"type": "nonsense"}], "properties": {"b": {"$ref": "#/enum/0"}}},
        ]
    ):
        legacy = await t.type(f"legacy{number}", fsm, custom_fields_schema={"type": "object"})
        await db.execute(
            """UPDATE type_definitions SET custom_fields_schema = $2::jsonb, version = version + 1
                WHERE id = $1""",
            uuid.UUID(legacy["id"]),
            json.dumps(stored),
        )
        before = await ticket_rows(db, t.id)
        response = await client.post(
            "/v1/tickets",
            json={"queue_id": queue, "type_definition_id": legacy["id"], "custom_data": {"b": 1}},
            headers=t.h,
        )
        assert_error(response, 400, "validation_error")
        assert await ticket_rows(db, t.id) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://a..b/x",
        "http://" + "a" * 300 + ".example/x",
        "http://93.184.215.14/\r\nX: y",
        "http://example.com:0/hook",
        "http://exa mple.com/hook",
    ],
)
async def test_malformed_webhook_urls_are_400(client: httpx.AsyncClient, api: Api, url: str) -> None:
    t, _, _ = await coffee(client, api)
    assert_error(await client.post("/v1/webhooks", json={"url": url}, headers=t.h), 400, "validation_error")
    assert ok(await client.get("/v1/webhooks", headers=t.h))["data"] == []


async def test_a_request_target_that_is_no_path_is_not_a_500(live_server: LiveServer) -> None:
    host, port = live_server.url.split("//", 1)[1].rstrip("/").split(":")
    for method in (b"OPTIONS", b"GET"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(method + b" * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"404", status_line


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # TLS spoken to the plain-HTTP port
    ],
)
async def test_bytes_that_are_not_http_get_the_json_error_envelope(
    live_server: LiveServer, raw: bytes
) -> None:
    """uvicorn answered these with a plain-text 400; every error is the JSON envelope, with a request id."""
    received = await raw_exchange(live_server.port, raw, None)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request", received
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer == {
        "error": "validation_error",
        "message": "the request is not valid HTTP/1.1",
        "details": {},
        "request_id": headers["x-request-id"],
    }
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as after:
        assert (await after.get("/healthz")).status_code == 200  # the server goes on answering


async def test_api_key_limits_take_integers_only(client: httpx.AsyncClient, api: Api) -> None:
    await api.world()  # a tenant with keys
    keys = ok(await client.get("/v1/api-keys", headers=auth(ADMIN_KEY)))
    key_id = keys["data"][0]["id"]
    for body in ({"rate_limit_per_minute": True}, {"rate_limit_burst": "7"}, {"rate_limit_per_minute": 1.0}):
        assert_error(
            await client.patch(f"/v1/api-keys/{key_id}", json=body, headers=auth(ADMIN_KEY)),
            400,
            "validation_error",
        )
    after = ok(await client.get("/v1/api-keys", headers=auth(ADMIN_KEY)))
    assert after["data"][0]["rate_limit_per_minute"] is None
    assert after["data"][0]["rate_limit_burst"] is None


async def test_routes_that_take_no_body_refuse_one_and_do_nothing(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """enable/disable, unassign, a webhook test, DELETE...: a malformed body was ignored and the action ran.
    None, `{}` or `null` are fine; anything else is a 400 and nothing happens; a caller with no right to the
    route hears that first."""
    t, queue, _ = await coffee(client, api)
    path = f"/v1/queues/{queue}/disable"
    json_type = {"content-type": "application/json"}
    for body in (b"{bad", b'{"force": true}', b"[]", b'"x"'):
        response = await client.post(path, content=body, headers={**t.h, **json_type})
        assert_error(response, 400, "validation_error")
    assert await db.fetchval("SELECT is_active FROM queues WHERE id = $1", uuid.UUID(queue)) is True
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    refused = await client.post(path, content=b"{bad", headers={**auth(display), **json_type})
    assert_error(refused, 403, "forbidden")
    assert_error(await client.post(path, content=b"{bad", headers=json_type), 401, "unauthorized")
    for body in (b"", b"{}", b"null", b" {} "):
        ok(await client.post(path, content=body, headers={**t.h, **json_type}))
    assert await db.fetchval("SELECT is_active FROM queues WHERE id = $1", uuid.UUID(queue)) is False
    gone = await client.request(
        "DELETE", f"/v1/queues/{queue}", content=b"{bad", headers={**t.h, **json_type}
    )
    assert_error(gone, 400, "validation_error")


async def test_a_stray_body_the_parser_gives_up_on_is_a_400_not_a_500(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A stray body nested beyond the parser's stack raised RecursionError past the check: a 500, even with
    no key. Now it is the answer any unreadable body gets, after the caller's own checks; a malformed one
    names the character where parsing stopped."""
    t, queue, _ = await coffee(client, api)
    path = f"/v1/queues/{queue}/disable"
    json_type = {"content-type": "application/json"}
    for body in (b"[" * 100_000, b"[" * 5_000 + b"]" * 5_000, b'{"a": "\xff"}', b"9" * 5_000):
        response = await client.post(path, content=body, headers={**t.h, **json_type})
        error = assert_error(response, 400, "validation_error")
        assert error["message"] == "The request body is not valid JSON.", error
        assert [problem["type"] for problem in error["details"]["errors"]] == ["json_invalid"]
        assert_error(await client.post(path, content=body, headers=json_type), 401, "unauthorized")
    assert await db.fetchval("SELECT is_active FROM queues WHERE id = $1", uuid.UUID(queue)) is True
    malformed = await client.post(path, content=b'{"a": 1,, }', headers={**t.h, **json_type})
    problem = assert_error(malformed, 400, "validation_error")["details"]["errors"][0]
    assert problem["type"] == "json_invalid"
    assert "8" in json.dumps(problem), problem  # the position of the second comma


def test_refusing_stray_bodies_twice_wraps_each_route_once() -> None:
    """Building a second app on the same routes must not read (and check) each body twice."""
    from fastapi import APIRouter

    router = APIRouter()

    @router.post("/thing/{name}/enable")
    async def enable(name: str) -> dict[str, str]:
        return {"name": name}

    refuse_stray_bodies(router.routes)
    first = router.routes[0].app  # type: ignore[attr-defined]
    refuse_stray_bodies(router.routes)
    assert router.routes[0].app is first  # type: ignore[attr-defined]
