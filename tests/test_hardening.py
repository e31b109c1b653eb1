"""Input and response hardening (issue 8): strict content types, header limits, security headers, CORS from
CORS_ORIGINS, and production errors that reveal nothing internal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, make_settings
from tests.helpers import Api, assert_error, auth
from tests.test_ticket_flows import coffee
from virtualq.app import create_app


async def test_bodies_must_be_json(client: httpx.AsyncClient, api: Api, db: asyncpg.Connection) -> None:
    t, queue, order = await coffee(client, api)
    before = await db.fetchval("SELECT count(*) FROM queues")
    body = b'{"name": "Side"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", ""):
        headers = {**t.h, "Content-Type": content_type}
        for method in ("POST", "PATCH", "PUT"):
            path = "/v1/queues" if method == "POST" else f"/v1/queues/{queue}"
            response = await client.request(method, path, content=body, headers=headers)
            error = assert_error(response, 415, "unsupported_media_type")
            assert "application/json" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM queues") == before

    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
        response = await client.post(
            "/v1/queues", content=body, headers={**t.h, "Content-Type": content_type}
        )
        assert response.status_code == 201, (content_type, response.text)
    # Bodiless POSTs need no content type.
    ticket = await t.ticket(queue, order)
    response = await client.post(f"/v1/tickets/{ticket['id']}/unassign", headers=t.h)
    assert response.status_code == 200, response.text


async def test_oversized_headers_are_431(client: httpx.AsyncClient, api: Api) -> None:
    world = await api.world()
    headers = auth(world.tenant_admin, world.tenant_id)
    big = await client.get("/v1/queues", headers={**headers, "X-Padding": "x" * 17_000})
    assert_error(big, 431, "request_header_fields_too_large")
    many = await client.get("/v1/queues", headers={**headers, **{f"X-H{i}": "1" for i in range(120)}})
    assert_error(many, 431, "request_header_fields_too_large")
    fine = await client.get("/v1/queues", headers={**headers, "X-Padding": "x" * 8_000})
    assert fine.status_code == 200


async def test_security_headers_on_answers_and_pages(client: httpx.AsyncClient, api: Api) -> None:
    world = await api.world()
    answer = await client.get("/v1/queues", headers=auth(world.tenant_admin, world.tenant_id))
    error = await client.get("/v1/queues")
    for response in (answer, error):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in response.headers
    page = await client.get("/console/queues/00000000-0000-0000-0000-000000000000")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert len(page.headers.get_list("content-security-policy")) == 1  # one policy, not two to reconcile
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


@pytest.fixture(scope="module")
async def production(database_dsn: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(env="production", cors_origins="https://shop.example.com")
    application = create_app(settings, dsn=database_dsn)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
            yield http


async def test_production_adds_hsts_and_hides_internal_errors(
    production: httpx.AsyncClient, monkeypatch: Any
) -> None:
    response = await production.get("/v1/accounts", headers=auth(ADMIN_KEY))
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")

    from virtualq.accounts import service

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError('relation "accounts_secret" does not exist at /srv/app/secret.py line 7')

    monkeypatch.setattr(service, "list_accounts", broken)
    failed = await production.get("/v1/accounts", headers=auth(ADMIN_KEY))
    body = assert_error(failed, 500, "internal_error")
    assert body["message"] == "Internal server error."
    assert body["details"] == {}
    assert "accounts_secret" not in failed.text
    assert "secret.py" not in failed.text


async def test_cors_follows_cors_origins(production: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    preflight = {
        "Origin": "https://shop.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key, if-match",
    }
    allowed = await production.options("/v1/tickets", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "idempotency-key", "if-match"):
        assert header in allowed_headers

    foreign = await production.options("/v1/tickets", headers={**preflight, "Origin": "https://evil.example"})
    assert foreign.status_code == 400
    assert "access-control-allow-origin" not in foreign.headers

    simple = await production.get(
        "/v1/accounts", headers={**auth(ADMIN_KEY), "Origin": "https://shop.example.com"}
    )
    assert simple.headers["access-control-allow-origin"] == "https://shop.example.com"
    exposed = simple.headers["access-control-expose-headers"].lower()
    for header in ("x-request-id", "etag", "x-ratelimit-remaining", "retry-after"):
        assert header in exposed

    # A stream resuming through fetch() sends Last-Event-ID: its preflight passes.
    resuming = await production.options(
        "/v1/events/stream",
        headers={
            **preflight,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id",
        },
    )
    assert resuming.status_code == 200
    assert "last-event-id" in resuming.headers["access-control-allow-headers"].lower()
    # Answers given before the app runs, and replays from the idempotency store, are readable too.
    origin = {"Origin": "https://shop.example.com"}
    too_big = await production.post(
        "/v1/accounts", content=b"{}", headers={**auth(ADMIN_KEY), **origin, "Content-Length": "99999999"}
    )
    assert too_big.status_code == 413
    assert too_big.headers["access-control-allow-origin"] == "https://shop.example.com"
    retry = {**auth(ADMIN_KEY), **origin, "Idempotency-Key": f"cors-{uuid.uuid4()}"}
    made = await production.post("/v1/accounts", json={"name": "CORS Co."}, headers=retry)
    again = await production.post("/v1/accounts", json={"name": "CORS Co."}, headers=retry)
    assert (made.status_code, again.status_code, again.headers["idempotent-replayed"]) == (201, 201, "true")
    assert again.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "idempotent-replayed" in again.headers["access-control-expose-headers"].lower()

    # Without CORS_ORIGINS no cross-origin access is granted.
    plain = await client.get(
        "/v1/accounts", headers={**auth(ADMIN_KEY), "Origin": "https://shop.example.com"}
    )
    assert "access-control-allow-origin" not in plain.headers


@pytest.mark.parametrize(
    "value",
    [
        "notaurl",
        "shop.example.com",
        "https://shop.example.com/",
        "https://shop.example.com/app",
        "https://shop.example.com?x=1",
        "ftp://shop.example.com",
        "https://user@shop.example.com",
        "https://shop.example.com:99999",
        "https://shop.example.com, https://",
        "http://shop example.com",
        "https://shop.example.com;x",
        "https://-shop.example.com",
        "http://[v1.shop]",  # brackets hold an IPv6 address
        "https://bücher.example",  # browsers send the xn-- form, by rules the standard library lacks
    ],
)
def test_cors_origins_that_no_browser_sends_are_refused_at_start(value: str) -> None:
    """An entry a browser's Origin can never equal would leave CORS off for that site without a word."""
    from virtualq.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"^invalid configuration: CORS_ORIGINS: "):
        load_settings(cors_origins=value)


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    from virtualq.config import load_settings

    settings = load_settings(
        cors_origins=" https://Shop.Example.com , http://localhost:3000,*, https://a.example:443, "
        "http://b.example:0080, https://xn--bcher-kva.example, http://[2001:DB8:0:0::1]:8080, http://web_app:3000"
    )
    assert settings.cors_origins == [
        "https://shop.example.com",
        "http://localhost:3000",
        "*",
        "https://a.example",  # browsers leave the scheme's default port out
        "http://b.example",
        "https://xn--bcher-kva.example",
        "http://[2001:db8::1]:8080",  # and an IPv6 address compressed
        "http://web_app:3000",  # a container's name may hold an underscore
    ]
