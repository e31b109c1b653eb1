"""SQL injection through every string the API takes finds nothing.

A generated corpus of classic payloads (tautologies, stacked queries, `pg_sleep`, UNION, dollar quotes,
backslashes, LIKE wildcards, comment markers, look-alike unicode quotes, jsonb operators and JSON paths, very
long strings) goes through every string query parameter, every path parameter, the headers the app reads, and
every string body field of the write endpoints, custom_data keys and values at several nesting levels and the
state names of a tenant's own state machine included.

What must hold, whatever the payload:
- never a 5xx, never a database error text in the body, and every answer well under the `pg_sleep` time;
- an accepted value reads back verbatim, through the API and in the database row itself;
- a filter matches by equality only: `%` or `' OR '1'='1` as a state returns that state's tickets, never all;
- the tables still exist, no table lost a row, read-only requests changed no count, and a second tenant (the
  "victim", in another account, with the same state names and custom data) is byte-for-byte unchanged and
  never shows up in the attacker's results.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.helpers import Api, auth

# --- the corpus ---------------------------------------------------------------------------------------------

SLEEP = 5  # seconds asked for by the pg_sleep payloads
SLOW = SLEEP / 2  # no answer may take this long

CORE = [
    # tautologies and quote breaking
    "' OR '1'='1",
    "' OR 1=1--",
    '" OR ""="',
    "') OR ('a'='a",
    "admin'--",
    "'",
    "''",
    '"',
    "`",
    ";",
    # stacked queries
    "'; DROP TABLE tickets; --",
    "'); DROP TABLE accounts; --",
    "1; DELETE FROM tenants",
    "1'; TRUNCATE api_keys CASCADE; --",
    "x'; UPDATE tickets SET tenant_id = NULL; --",
    # time-based
    f"1; SELECT pg_sleep({SLEEP})--",
    f"'; SELECT pg_sleep({SLEEP}); --",
    f"' || pg_sleep({SLEEP}) || '",
    f"1' AND (SELECT 1 FROM pg_sleep({SLEEP}))::text='1",
    f"'||(SELECT pg_sleep({SLEEP}))||'",
    # UNION
    "' UNION SELECT id, name, NULL FROM accounts --",
    "' UNION ALL SELECT key_hash FROM api_keys--",
    "1 UNION SELECT NULL,NULL,NULL",
    # PostgreSQL quoting: dollar quotes, parameters, escape strings, backslashes
    "$$; DROP TABLE tickets; $$",
    "$q$ OR 1=1 $q$",
    "$1",
    "E'\\x27' OR 1=1",
    "U&'\\0027' OR 1=1",
    "\\",
    "\\'",
    "\\\\'; --",
    # LIKE wildcards
    "%",
    "_",
    "%%",
    "a%' OR '%'='",
    "%_%",
    # comment markers
    "--",
    "/*",
    "*/",
    "/* x */ OR /**/ 1=1",
    "#",
    # look-alike quotes
    "\u2019 OR \u20181\u2019=\u20181",  # right/left single quotation marks
    "\u02bc; DROP TABLE tickets; --",  # modifier letter apostrophe
    "\uff07 OR \uff071\uff07=\uff071",  # fullwidth apostrophe
    # casts, jsonb operators and JSON paths
    "'::jsonb",
    "x'::text",
    "$.store.book[*].author",
    "$[0]",
    "a->>'b'",
    "a' ->> 'b",
    "{a,b,c}",
    "@> '{}'",
    "? 'a' ?| array['b']",
    "#>> '{a,b}'",
    "@@ '$.a == 1'",
    # look like other types
    "NULL",
    "null",
    "true",
    "0",
    "-1",
    "1e309",
    # other oddities
    "\U0001f600'\U0001f643",
    "\u202e' OR 1=1",
    "a\nb'; --",
    "a\tb",
    "<script>alert(1)</script>",
    "${7*7}",
    "{{7*7}}",
]
LONG = [
    "A" * 5000 + "' OR '1'='1",
    "'" * 2000,
    "%_" * 2500,
    "\\" * 3000,
    "\u00fc" * 4000,
]
PAYLOADS = CORE + LONG
# Names in a tenant's state machine: non-empty, at most 32 characters, not the reserved "*".
STATES = [p for p in CORE if len(p) <= 32 and p != "*"]
# Path parameters get a smaller, still varied, set: every route times every payload would be slow.
PATH_PAYLOADS = [
    *CORE[::3],
    "../../etc/passwd",  # (a bare ".." is resolved by the client itself, never reaching the server)
    "%2e%2e",
    "00000000-0000-0000-0000-00000000000'",
    LONG[0],
]
# Header values: no control characters (HTTP servers refuse them before the app sees them).
HEADER_PAYLOADS = [p for p in PAYLOADS if p.isprintable()]

assert len(set(PAYLOADS)) == len(PAYLOADS)
# Input models strip surrounding whitespace: the corpus has none, so "verbatim" means exactly equal.
assert all(p == p.strip() and "\x00" not in p for p in PAYLOADS)
assert len(STATES) > 50

LEAK_MARKERS = (
    "syntax error",
    "asyncpg",
    "traceback",
    "sqlstate",
    "psycopg",
    "unterminated",
    "does not exist",
)
EMAILS = [
    "o'reilly@example.com",
    "'or'1'='1@example.com",
    "a'--@example.com",
    "%_@example.com",
    "a$$b@example.com",
    "x/*y*/z@example.com",
    "#'{}|~@example.com",
    "a`b@example.com",
    "x';--@example.com",  # ";" is not allowed in a local part: refused
    "' OR 1=1 --@example.com",  # spaces: refused
]
UPDATE_EMAILS = [email.replace("@example.com", "@example.net") for email in EMAILS]  # still unique
PHONES = ["--1", "1--", "(0)--", "1 -- 2", "(((1)))", "1.-.1", "+--1", "1; DROP", "' OR 1=1"]
PREFIXES = ["--", "-1", "A--", "--------", "'", "%", "A_"]
TYPE_CODES = ["or_1_1", "drop_table_tickets", "pg_sleep_5", "x' OR 1=1", "a--", "a%"]


def urls(p: str) -> list[str]:
    """Webhook URLs carrying the payload in the path, the query, the fragment, or the host."""
    q = quote(p, safe="")
    return [
        f"http://127.0.0.1:9/hook/{q}",
        f"http://127.0.0.1:9/hook?q={q}",
        f"http://127.0.0.1:9/hook#{q}",
        f"http://127.0.0.1:9/{p}",
        f"http://[{p}]/",
        f"http://{p}/",
    ]


def nested(p: str, tag: str = "") -> dict[str, Any]:
    """The payload as keys and values, at the top level and three levels down, in objects and lists.
    Long payloads get fewer copies: custom_data is limited to 64 KiB."""
    if len(p) > 1000:
        return {p: p, f"{tag}level1": {p: [{"level3": p}]}}
    return {
        p: p,
        f"{tag}level1": {p: [p, {p: {"level3": p, f"{p}{tag}": [p, None, 1, True]}}]},
        f"{tag}list": [p, [p, [p]]],
        f"{tag}path": {"$.a": p, "a->b": p, "{a,b}": p, "a'->>'b": p},
    }


# --- sending ------------------------------------------------------------------------------------------------


@dataclass
class Sender:
    client: httpx.AsyncClient
    sent: int = 0

    async def __call__(
        self,
        method: str,
        url: str,
        expect: set[int],
        *,
        headers: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request; the universal assertions hold for every answer."""
        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                self.client.request(method, url, headers=headers, **kwargs), timeout=SLOW
            )
        except TimeoutError:
            raise AssertionError(f"no answer within {SLOW}s: {method} {url} {kwargs}") from None
        elapsed = time.perf_counter() - started
        self.sent += 1
        what = f"{method} {url} {kwargs} {headers} -> {response.status_code} {response.text[:500]}"
        assert response.status_code < 500, what
        assert elapsed < SLOW, (elapsed, what)
        assert response.status_code in expect, what
        lowered = response.text.lower()
        assert not any(marker in lowered for marker in LEAK_MARKERS), what
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error", "message", "details", "request_id"}, what
        return response


# --- the two tenants ----------------------------------------------------------------------------------------


def injected_fsm() -> dict[str, Any]:
    """Every short payload is a state, reached from "new" by a transition of the same name."""
    return {
        "init": "new",
        "states": ["new", "served", *STATES],
        "transitions": [
            {"name": "serve", "from": "new", "to": "served"},
            *({"name": state, "from": "new", "to": state} for state in STATES),
            {"name": "finish", "from": STATES, "to": "served"},
        ],
        "categories": {state: "in_service" for state in STATES},
    }


@dataclass
class Side:
    tenant_id: str
    account_id: str
    h: dict[str, str]  # tenant admin
    account_h: dict[str, str]  # account admin
    order_type: str = ""
    item_type: str = ""
    queue: str = ""
    other_queue: str = ""
    customer: str = ""
    employee: str = ""
    webhook: str = ""
    by_state: dict[str, str] = field(default_factory=dict)  # state -> ticket id
    served: str = ""  # a ticket in the terminal state
    item: str = ""


@dataclass
class Ctx:
    attacker: Side
    victim: Side
    platform_h: dict[str, str]


async def build_side(send: Sender, api: Api) -> Side:
    w = await api.world()
    side = Side(w.tenant_id, w.account_id, auth(w.tenant_admin), auth(w.account_admin))
    h = side.h
    fsm = injected_fsm()
    created = await send(
        "POST",
        "/v1/type-definitions",
        {201},
        headers=h,
        json={"type_code": "part", "type_name": "Part", "fsm_schema": fsm},
    )
    side.item_type = created.json()["id"]
    body = {
        "type_code": "order",
        "type_name": "Order",
        "fsm_schema": fsm,
        "item_definition_ids": [side.item_type],
    }
    side.order_type = (await send("POST", "/v1/type-definitions", {201}, headers=h, json=body)).json()["id"]
    side.queue = (await send("POST", "/v1/queues", {201}, headers=h, json={"name": "Main"})).json()["id"]
    side.other_queue = (await send("POST", "/v1/queues", {201}, headers=h, json={"name": "Other"})).json()[
        "id"
    ]
    side.customer = (await send("POST", "/v1/customers", {201}, headers=h, json={"fname": "Ann"})).json()[
        "id"
    ]
    employee = {"fname": "Bo", "lname": "Li", "email": "bo@example.com"}
    side.employee = (await send("POST", "/v1/employees", {201}, headers=h, json=employee)).json()["id"]
    hook = {"url": "http://127.0.0.1:9/hook", "description": "' OR '1'='1"}
    side.webhook = (await send("POST", "/v1/webhooks", {201}, headers=h, json=hook)).json()["id"]
    for state in STATES:
        ticket = await new_ticket(send, side, custom_data={"label": state}, customer_id=side.customer)
        moved = await send(
            "POST",
            f"/v1/tickets/{ticket}/transition",
            {200},
            headers=h,
            json={"transition": state, "employee_id": side.employee},
        )
        assert moved.json()["current_state"] == state
        side.by_state[state] = ticket
    side.served = await new_ticket(send, side)
    await send(
        "POST", f"/v1/tickets/{side.served}/transition", {200}, headers=h, json={"transition": "serve"}
    )
    item = {"item_type_definition_id": side.item_type, "external_item_name": "' OR '1'='1"}
    side.item = (await send("POST", f"/v1/tickets/{side.served}/items", {201}, headers=h, json=item)).json()[
        "id"
    ]
    return side


async def new_ticket(send: Sender, side: Side, queue: str | None = None, **fields: Any) -> str:
    body = {"queue_id": queue or side.queue, "type_definition_id": side.order_type, **fields}
    ticket_id: str = (await send("POST", "/v1/tickets", {201}, headers=side.h, json=body)).json()["id"]
    return ticket_id


@pytest.fixture(scope="module")
async def ctx(api: Api, client: httpx.AsyncClient) -> Ctx:
    send = Sender(client)
    return Ctx(await build_side(send, api), await build_side(send, api), auth(api.admin_key))


@pytest.fixture
def send(client: httpx.AsyncClient) -> Sender:
    return Sender(client)


# --- what the database looks like ---------------------------------------------------------------------------


async def tables(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [row["tablename"] for row in rows if row["tablename"] != "alembic_version"]


async def counts(db: asyncpg.Connection) -> dict[str, int]:
    names = await tables(db)
    sql = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{name}")' for name in names)
    row = await db.fetchrow(sql)
    assert row is not None
    return dict(zip(names, row, strict=True))


async def victim_rows(db: asyncpg.Connection, side: Side) -> str:
    """Every row the victim owns, in every table, as one JSON text."""
    tenant, account = uuid.UUID(side.tenant_id), uuid.UUID(side.account_id)
    owned = await db.fetch(
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND column_name = 'tenant_id' ORDER BY table_name"
    )
    parts = [
        f"'{r['table_name']}', (SELECT json_agg(x ORDER BY x::text) FROM \"{r['table_name']}\" x "
        "WHERE x.tenant_id = $1)"
        for r in owned
    ]
    parts += [
        "'account', (SELECT row_to_json(a) FROM accounts a WHERE a.id = $2)",
        "'tenant', (SELECT row_to_json(t) FROM tenants t WHERE t.id = $1)",
        "'customers', (SELECT json_agg(c ORDER BY c.id) FROM customers c WHERE c.account_id = $2)",
        "'account_keys', (SELECT json_agg(k ORDER BY k.id) FROM api_keys k WHERE k.account_id = $2)",
    ]
    text: str = await db.fetchval(f"SELECT json_build_object({', '.join(parts)})::text", tenant, account)
    assert len(text) > 10_000  # the victim really has rows to lose
    return text


EXPECTED_TABLES = {
    "accounts",
    "tenants",
    "customers",
    "employees",
    "api_keys",
    "type_definitions",
    "queues",
    "tickets",
    "ticket_history",
    "ticket_items",
    "item_history",
    "queue_day_counters",
    "queue_waiting_counts",
    "events",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
}


@pytest.fixture(autouse=True)
async def nothing_lost(ctx: Ctx, db: asyncpg.Connection) -> AsyncIterator[None]:
    """Around every test: the tables are all there, none lost a row, and the victim is untouched."""
    before_victim = await victim_rows(db, ctx.victim)
    before_counts = await counts(db)
    assert set(before_counts) >= EXPECTED_TABLES
    yield
    after_counts = await counts(db)
    assert set(after_counts) == set(before_counts)
    shrunk = {
        name: (before_counts[name], after_counts[name])
        for name in before_counts
        if after_counts[name] < before_counts[name]
    }
    assert not shrunk
    assert await victim_rows(db, ctx.victim) == before_victim


# A change emits an event, and each active webhook of the tenant gets a delivery of it.
EVENTS = {"events", "webhook_deliveries"}


def assert_counts_unchanged(
    before: dict[str, int], after: dict[str, int], allow: set[str] | None = None
) -> None:
    allowed = (allow or set()) | {"idempotency_keys"}
    changed = {name: (before[name], after[name]) for name in before if before[name] != after[name]}
    assert set(changed) <= allowed, changed


def owned_by(rows: list[dict[str, Any]], side: Side, system_too: bool = False) -> None:
    """Every row is the side's own (or, for type definitions, a system type: tenant_id null)."""
    allowed = {side.tenant_id, None} if system_too else {side.tenant_id}
    assert all(row["tenant_id"] in allowed for row in rows), rows


# --- query parameters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryCase:
    path: str  # placeholders filled from the attacker's ids
    param: str
    expect: frozenset[int]
    wrap: str = "{}"  # how the payload sits in the value


QUERY_CASES = {
    "tickets.current_state": QueryCase("/v1/tickets", "current_state", frozenset({200, 400})),
    "tickets.state_category": QueryCase("/v1/tickets", "state_category", frozenset({400})),
    # "0" and "-1" are unix timestamps to pydantic: a real, harmless filter.
    "tickets.created_after": QueryCase("/v1/tickets", "created_after", frozenset({200, 400})),
    "tickets.queue_id": QueryCase("/v1/tickets", "queue_id", frozenset({400})),
    "employee_tickets.current_state": QueryCase(
        "/v1/employees/{employee}/tickets", "current_state", frozenset({200, 400})
    ),
    "events.after": QueryCase("/v1/events", "after", frozenset({400})),
    "events.after_prefixed": QueryCase("/v1/events", "after", frozenset({200, 400}), wrap="1-1{}"),
    "events.type": QueryCase("/v1/events", "type", frozenset({400})),
    "events.type_suffixed": QueryCase("/v1/events", "type", frozenset({200, 400}), wrap="ticket.created{}"),
    "events_stream.after": QueryCase("/v1/events/stream", "after", frozenset({400})),
    "monitor.exclude": QueryCase("/v1/queues/{queue}/monitor", "exclude", frozenset({200, 400}), "label:{}"),
    "monitor.exclude_raw": QueryCase("/v1/queues/{queue}/monitor", "exclude", frozenset({400})),
    "public.token": QueryCase("/v1/public/tickets/{served}", "token", frozenset({400, 404})),
    "deliveries.status": QueryCase("/v1/webhooks/{webhook}/deliveries", "status", frozenset({400})),
    # Booleans: "true" and "0" are booleans to pydantic.
    "queues.is_active": QueryCase("/v1/queues", "is_active", frozenset({200, 400})),
    "queues.tenant_id": QueryCase("/v1/queues", "tenant_id", frozenset({400})),
    "customers.account_id": QueryCase("/v1/customers", "account_id", frozenset({400})),
    "customers.page": QueryCase("/v1/customers", "page", frozenset({400})),
    "type_definitions.include_system": QueryCase(
        "/v1/type-definitions", "include_system", frozenset({200, 400})
    ),
    "api_keys.include_revoked": QueryCase("/v1/api-keys", "include_revoked", frozenset({200, 400})),
}


def fill(template: str, side: Side) -> str:
    return template.format(
        employee=side.employee,
        queue=side.queue,
        served=side.served,
        webhook=side.webhook,
        item=side.item,
        tenant=side.tenant_id,
        account=side.account_id,
    )


@pytest.mark.parametrize("name", list(QUERY_CASES))
async def test_string_query_parameters(name: str, ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    case = QUERY_CASES[name]
    a = ctx.attacker
    path = fill(case.path, a)
    before = await counts(db)
    accepted = 0
    for payload in PAYLOADS:
        value = case.wrap.format(payload)
        response = await send("GET", path, set(case.expect), headers=a.h, params={case.param: value})
        if response.status_code != 200:
            continue
        accepted += 1
        body = response.json()
        if "data" in body:
            owned_by(body["data"], a, system_too=path == "/v1/type-definitions")
            if case.param == "current_state":
                expected = [a.by_state[payload]] if payload in a.by_state else []
                assert [row["id"] for row in body["data"]] == expected, (payload, body)
                assert all(row["current_state"] == payload for row in body["data"])
        if case.param == "exclude":
            shown = {t["id"] for group in body["groups"].values() for t in group}
            hidden = {a.by_state[payload]} if payload in a.by_state else set()
            assert shown == set(a.by_state.values()) - hidden, payload
    if name in ("tickets.current_state", "employee_tickets.current_state", "monitor.exclude"):
        assert accepted >= len(STATES)
    assert_counts_unchanged(before, await counts(db))


async def test_unknown_query_parameters_are_refused(ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    """sort, order, search and friends are not features: each is a 400 naming it (they were ignored, so a
    misspelt filter returned everything), and they change nothing, least of all the SQL."""
    a = ctx.attacker
    before = await counts(db)
    for path in (
        "/v1/tickets",
        "/v1/queues",
        "/v1/customers",
        "/v1/employees",
        "/v1/events",
        f"/v1/queues/{a.queue}/tickets",
        "/v1/webhooks",
        "/v1/type-definitions",
    ):
        await send("GET", path, {200}, headers=a.h)
        names = (
            "sort",
            "order",
            "order_by",
            "search",
            "q",
            "name",
            "filter",
            "state",
            "status",
            "fields",
            "where",
        )
        for payload in CORE:
            response = await send("GET", path, {400}, headers=a.h, params=dict.fromkeys(names, payload))
            body = response.json()
            assert body["error"] == "validation_error", body
            assert sorted(e["field"] for e in body["details"]["errors"]) == sorted(names), body
            assert {(e["location"], e["type"]) for e in body["details"]["errors"]} == {
                ("query", "extra_forbidden")
            }
    assert_counts_unchanged(before, await counts(db))


# --- path parameters ----------------------------------------------------------------------------------------


def operations(app: Any) -> dict[str, list[tuple[str, str, list[str]]]]:
    """OpenAPI operations with path parameters, grouped by the first path segment after /v1."""
    groups: dict[str, list[tuple[str, str, list[str]]]] = {}
    for path, item in app.openapi()["paths"].items():
        params = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if not params:
            continue
        group = path.split("/")[2] if path.startswith("/v1/") else path.split("/")[1]
        for method in item:
            groups.setdefault(group, []).append((method.upper(), path, params))
    return groups


PATH_GROUPS = [
    "accounts",
    "tenants",
    "customers",
    "employees",
    "api-keys",
    "type-definitions",
    "queues",
    "tickets",
    "items",
    "webhooks",
    "public",
    "pages",
]


@pytest.mark.parametrize("group", PATH_GROUPS)
async def test_path_parameters(group: str, app: Any, ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    a = ctx.attacker
    valid = {"webhook_id": a.webhook, "delivery_id": str(uuid.uuid4()), "ticket_id": a.served}
    if group == "pages":
        ops = [
            ("GET", "/t/{ticket_id}", ["ticket_id"]),
            ("GET", "/display/queues/{queue_id}", ["queue_id"]),
            ("GET", "/console/queues/{queue_id}", ["queue_id"]),
            ("GET", "/static/{name}", ["name"]),
        ]
    else:
        ops = operations(app)[group]
    assert ops
    # A tenant's key may not use the account routes or deactivate tenants, nor an account's key deactivate
    # accounts (403 before the path is read): a platform key, so that every path is read.
    headers = ctx.platform_h if group in ("accounts", "tenants") else a.h
    before = await counts(db)
    for method, template, params in ops:
        for param in params:
            for payload in PATH_PAYLOADS:
                values = {name: valid.get(name, str(uuid.uuid4())) for name in params}
                values[param] = quote(payload, safe="")
                url = template.format(**values)
                body = {} if method in ("POST", "PUT", "PATCH") else None
                if template == "/t/{ticket_id}":
                    # A customer's page takes any id (a link cut short gets the page, which says so once
                    # the API refuses the id): the same static page, nothing of the id in it. (An id with
                    # a slash in it matches no route.)
                    page = await send(method, url, {200, 404}, headers=headers, json=body)
                    if page.status_code == 200:
                        assert page.text == (await send("GET", f"/t/{a.served}", {200})).text, payload
                    continue
                await send(method, url, {400, 404, 405}, headers=headers, json=body)
    assert_counts_unchanged(before, await counts(db))


# --- headers ------------------------------------------------------------------------------------------------


HEADER_CASES = {
    "X-Tenant-ID": ("GET", "/v1/queues", {400}),
    "X-Request-ID": ("GET", "/v1/queues", {200}),
    "Authorization": ("GET", "/v1/queues", {401}),
    "Authorization-Bearer": ("GET", "/v1/queues", {401}),
    "X-API-Key": ("GET", "/v1/queues", {401}),
    "Idempotency-Key": ("POST", "/v1/tickets/count", {200, 400, 409}),
    "If-Match": ("PATCH", "/v1/tickets/{served}", {200, 400, 409, 412}),
    "Last-Event-ID": ("GET", "/v1/events/stream", {400}),
    "X-Ticket-Token": ("GET", "/v1/public/tickets/{served}", {400, 404}),
}


@pytest.mark.parametrize("header", list(HEADER_CASES))
async def test_headers(header: str, ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    a = ctx.attacker
    method, template, expect = HEADER_CASES[header]
    path = fill(template, a)
    before = await counts(db)
    baseline = (
        await send("POST", "/v1/tickets/count", {200}, headers=a.h, json={"current_state": "new"})
    ).json()
    for payload in HEADER_PAYLOADS:
        value = payload.encode()
        headers: dict[str, Any] = dict(a.h)
        if header == "Authorization-Bearer":
            headers["Authorization"] = b"Bearer " + value
        elif header in ("Authorization", "X-API-Key"):
            headers.pop("Authorization")
            headers[header] = value
        else:
            headers[header] = value
        body: Any = None
        if method == "POST":
            body = {"current_state": "new"}
        elif method == "PATCH":
            body = {"estimated_wait_minutes": 5}
        response = await send(method, path, expect, headers=headers, json=body)
        if header == "X-Request-ID":
            echoed = response.headers["x-request-id"]
            assert (echoed == payload) == (
                len(payload) <= 128 and all(ch.isascii() and (ch.isalnum() or ch in "._:-") for ch in payload)
            ), payload
        if header == "Idempotency-Key" and response.status_code == 200:
            assert response.json() == baseline
    # If-Match (when honoured) may let the update through; the ticket gains events, nothing else changes.
    assert_counts_unchanged(before, await counts(db), allow=EVENTS if header == "If-Match" else None)


# --- request bodies: creates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    path: str
    key: str  # platform | account | tenant
    table: str
    base: dict[str, Any]  # "{n}" in a string value becomes a counter (unique values)
    fields: tuple[str, ...]  # take every payload
    special: tuple[tuple[str, tuple[str, ...]], ...] = ()  # field -> its own payloads
    get: str = "{path}/{id}"


SIMPLE_FSM = {"init": "a", "states": ["a", "b"], "transitions": [{"name": "go", "from": "a", "to": "b"}]}

CREATES = {
    "accounts": Create(
        "/v1/accounts",
        "platform",
        "accounts",
        {"name": "Acme {n}"},
        ("name", "billing_address"),
        (("billing_email", tuple(EMAILS)),),
    ),
    "tenants": Create(
        "/v1/tenants",
        "account",
        "tenants",
        {"name": "Branch {n}"},
        ("name", "description", "location_name", "location_address", "timezone"),
    ),
    "customers": Create(
        "/v1/customers",
        "tenant",
        "customers",
        {"fname": "Cy {n}"},
        ("fname", "lname"),
        (("email", tuple(EMAILS)), ("phone", tuple(PHONES))),
    ),
    "employees": Create(
        "/v1/employees",
        "tenant",
        "employees",
        {"fname": "Di", "lname": "Ng", "email": "di{n}@example.com"},
        ("fname", "lname", "role"),
        (("email", tuple(EMAILS)),),
    ),
    "api_keys": Create(
        "/v1/api-keys",
        "tenant",
        "api_keys",
        {"name": "k{n}", "scope": "tenant", "role": "display", "tenant_id": "{tenant}"},
        ("name",),
    ),
    "queues": Create(
        "/v1/queues",
        "tenant",
        "queues",
        {"name": "Q{n}"},
        ("name", "description"),
        (("ticket_prefix", tuple(PREFIXES)),),
    ),
    "type_definitions": Create(
        "/v1/type-definitions",
        "tenant",
        "type_definitions",
        {"type_code": "inj_{n}", "type_name": "T", "fsm_schema": SIMPLE_FSM},
        ("type_name", "description", "doc"),
        (("type_code", tuple(TYPE_CODES)),),
    ),
    "webhooks": Create(
        "/v1/webhooks",
        "tenant",
        "webhooks",
        {"url": "http://127.0.0.1:9/hook/{n}", "is_active": False},  # no fan-out of later events
        ("description",),
        (("url", tuple(u for p in PAYLOADS for u in urls(p))),),
    ),
}


def headers_for(key: str, ctx: Ctx) -> dict[str, str]:
    return {"platform": ctx.platform_h, "account": ctx.attacker.account_h, "tenant": ctx.attacker.h}[key]


def fill_body(base: dict[str, Any], n: int, side: Side) -> dict[str, Any]:
    return {
        key: value.replace("{n}", str(n)).replace("{tenant}", side.tenant_id)
        if isinstance(value, str)
        else value
        for key, value in base.items()
    }


async def stored(db: asyncpg.Connection, table: str, row_id: str, column: str) -> Any:
    return await db.fetchval(f'SELECT "{column}" FROM "{table}" WHERE id = $1', uuid.UUID(row_id))


@pytest.mark.parametrize("resource", list(CREATES))
async def test_create_bodies(resource: str, ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    spec = CREATES[resource]
    h = headers_for(spec.key, ctx)
    before = await counts(db)
    cases = [(name, p) for name in spec.fields for p in PAYLOADS]
    cases += [(name, p) for name, values in spec.special for p in values]
    accepted = 0
    for n, (name, payload) in enumerate(cases):
        body = fill_body(spec.base, n, ctx.attacker) | {name: payload}
        response = await send("POST", spec.path, {201, 400}, headers=h, json=body)
        if response.status_code != 201:
            assert response.json()["error"] == "validation_error"
            continue
        accepted += 1
        created = response.json()
        assert created[name] == payload, (name, payload)
        got = await send("GET", spec.get.format(path=spec.path, id=created["id"]), {200}, headers=h)
        assert got.json()[name] == payload, (name, payload)
        assert await stored(db, spec.table, created["id"], name) == payload
        if name == "ticket_prefix":  # the prefix becomes part of every display code
            t = await send(
                "POST",
                "/v1/tickets",
                {201},
                headers=ctx.attacker.h,
                json={"queue_id": created["id"], "type_definition_id": ctx.attacker.order_type},
            )
            assert t.json()["display_code"] == payload + "001"
    assert accepted >= len(spec.fields) * len(CORE) // 2, accepted
    after = await counts(db)
    assert after[spec.table] == before[spec.table] + accepted
    growing = (
        {"tickets", "ticket_history", "queue_day_counters", "queue_waiting_counts"} | EVENTS
        if resource == "queues"
        else set()
    )
    assert_counts_unchanged({**before, spec.table: 0}, {**after, spec.table: 0}, allow=growing)


# --- request bodies: updates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    path: str  # placeholders filled from the attacker's ids
    key: str
    table: str
    fields: tuple[str, ...]
    special: tuple[tuple[str, tuple[str, ...]], ...] = ()


UPDATES = {
    "accounts": Update(
        "/v1/accounts/{account}",
        "account",
        "accounts",
        ("name", "billing_address"),
        (("billing_email", tuple(EMAILS)),),
    ),
    "tenants": Update(
        "/v1/tenants/{tenant}",
        "account",
        "tenants",
        ("name", "description", "location_name", "location_address", "timezone"),
    ),
    "customers": Update(
        "/v1/customers/{customer}",
        "tenant",
        "customers",
        ("fname", "lname"),
        (("email", tuple(UPDATE_EMAILS)), ("phone", tuple(PHONES))),
    ),
    "employees": Update(
        "/v1/employees/{employee}",
        "tenant",
        "employees",
        ("fname", "lname", "role"),
        (("email", tuple(UPDATE_EMAILS)),),
    ),
    "queues": Update(
        "/v1/queues/{queue}",
        "tenant",
        "queues",
        ("name", "description"),
        (("ticket_prefix", tuple(PREFIXES)),),
    ),
    "type_definitions": Update(
        "/v1/type-definitions/{item_type}", "tenant", "type_definitions", ("type_name", "description", "doc")
    ),
    "webhooks": Update(
        "/v1/webhooks/{webhook}",
        "tenant",
        "webhooks",
        ("description",),
        (("url", tuple(u for p in CORE for u in urls(p))),),
    ),
    "items": Update("/v1/items/{item}", "tenant", "ticket_items", ("external_item_id", "external_item_name")),
}


@pytest.mark.parametrize("resource", list(UPDATES))
async def test_update_bodies(resource: str, ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    spec = UPDATES[resource]
    a = ctx.attacker
    h = headers_for(spec.key, ctx)
    path = spec.path.format(
        account=a.account_id,
        tenant=a.tenant_id,
        customer=a.customer,
        employee=a.employee,
        queue=a.queue,
        item_type=a.item_type,
        webhook=a.webhook,
        item=a.item,
    )
    row_id = path.rsplit("/", 1)[1]
    before = await counts(db)
    cases = [(name, p) for name in spec.fields for p in PAYLOADS]
    cases += [(name, p) for name, values in spec.special for p in values]
    accepted = 0
    for index, (name, payload) in enumerate(cases):
        method = "PATCH" if index % 2 else "PUT"
        response = await send(method, path, {200, 400}, headers=h, json={name: payload})
        if response.status_code != 200:
            assert response.json()["error"] == "validation_error"
            continue
        accepted += 1
        assert response.json()[name] == payload
        assert (await send("GET", path, {200}, headers=h)).json()[name] == payload
        assert await stored(db, spec.table, row_id, name) == payload
    assert accepted >= len(spec.fields) * len(CORE) // 2, accepted
    assert_counts_unchanged(before, await counts(db), allow=EVENTS)


# --- state names, filters, history, monitor, stats ----------------------------------------------------------


async def test_state_names_filter_by_equality_and_stay_in_their_tenant(
    ctx: Ctx, send: Sender, db: asyncpg.Connection
) -> None:
    """The victim has the same states with a ticket in each: no filter of the attacker's ever returns it."""
    a = ctx.attacker
    before = await counts(db)
    typedef = (await send("GET", f"/v1/type-definitions/{a.order_type}", {200}, headers=a.h)).json()
    assert typedef["fsm_schema"] == injected_fsm()
    assert all(typedef["state_categories"][state] == "in_service" for state in STATES)
    for state, ticket_id in a.by_state.items():
        listed = (
            await send("GET", "/v1/tickets", {200}, headers=a.h, params={"current_state": state})
        ).json()
        assert [row["id"] for row in listed["data"]] == [ticket_id], state
        count = await send("POST", "/v1/tickets/count", {200}, headers=a.h, json={"current_state": state})
        assert count.json() == {"count": 1}, state
        mine = await send(
            "GET", f"/v1/employees/{a.employee}/tickets", {200}, headers=a.h, params={"current_state": state}
        )
        assert [row["id"] for row in mine.json()["data"]] == [ticket_id], state
        history = (await send("GET", f"/v1/tickets/{ticket_id}/history", {200}, headers=a.h)).json()
        assert (history[-1]["previous_state"], history[-1]["new_state"], history[-1]["transition"]) == (
            "new",
            state,
            state,
        )
        events = (await send("GET", "/v1/events", {200}, headers=a.h, params={"ticket_id": ticket_id})).json()
        owned_by(events["data"], a)
        assert events["data"][-1]["data"]["current_state"] == state
        assert (
            await db.fetchval("SELECT current_state FROM tickets WHERE id = $1", uuid.UUID(ticket_id))
            == state
        )
    # Counts by body filter for payloads that are not states, nor short enough to be one.
    for payload in PAYLOADS:
        if payload in a.by_state:
            continue
        response = await send(
            "POST", "/v1/tickets/count", {200, 400}, headers=a.h, json={"current_state": payload}
        )
        if response.status_code == 200:
            assert response.json() == {"count": 0}, payload
    stats = (await send("GET", f"/v1/queues/{a.queue}/stats", {200}, headers=a.h)).json()
    assert all(stats["counts_by_state"].get(state) == 1 for state in STATES), stats["counts_by_state"]
    monitor = (await send("GET", f"/v1/queues/{a.queue}/monitor", {200}, headers=a.h)).json()
    assert {t["id"]: t["state"] for t in monitor["groups"]["in_service"]} == {
        v: k for k, v in a.by_state.items()
    }
    queue_tickets = (
        await send("GET", f"/v1/queues/{a.queue}/tickets", {200}, headers=a.h, params={"limit": 100})
    ).json()
    owned_by(queue_tickets["data"], a)
    assert_counts_unchanged(before, await counts(db))


async def test_transition_names_and_notes(ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    """Unknown transition names come back verbatim in the error; notes are stored verbatim in the history;
    an injected name that is a real transition moves the ticket (or item) to exactly that state."""
    a = ctx.attacker
    for payload in PAYLOADS:
        response = await send(
            "POST", f"/v1/tickets/{a.served}/transition", {400}, headers=a.h, json={"transition": payload}
        )
        body = response.json()
        if body["error"] == "invalid_transition":
            assert body["details"]["transition"] == payload
            assert body["details"]["current_state"] == "served"
    ticket = await new_ticket(send, a, queue=a.other_queue)
    item_ids = []
    for payload in PAYLOADS:
        # Items use the same machine: a payload that names a transition moves a fresh item there.
        item = {"item_type_definition_id": a.item_type, "external_item_id": "x"}
        item_id = (await send("POST", f"/v1/tickets/{ticket}/items", {201}, headers=a.h, json=item)).json()[
            "id"
        ]
        moved = await send(
            "POST",
            f"/v1/items/{item_id}/transition",
            {200, 400},
            headers=a.h,
            json={"transition": payload, "notes": payload},
        )
        if payload in a.by_state:
            assert moved.status_code == 200, payload
            assert moved.json()["current_state"] == payload
            history = (await send("GET", f"/v1/items/{item_id}/history", {200}, headers=a.h)).json()
            assert (history[-1]["new_state"], history[-1]["transition"], history[-1]["notes"]) == (
                payload,
                payload,
                payload,
            )
            item_ids.append(item_id)
        else:
            assert moved.status_code == 400
    assert len(item_ids) == len(STATES)
    # Notes on ticket transitions, one fresh ticket each.
    for payload in PAYLOADS:
        fresh = await new_ticket(send, a, queue=a.other_queue)
        response = await send(
            "POST",
            f"/v1/tickets/{fresh}/transition",
            {200, 400},
            headers=a.h,
            json={"transition": "serve", "notes": payload},
        )
        if response.status_code == 200:
            history = (await send("GET", f"/v1/tickets/{fresh}/history", {200}, headers=a.h)).json()
            assert history[-1]["notes"] == payload
            assert (
                await db.fetchval(
                    "SELECT notes FROM ticket_history WHERE ticket_id = $1 AND transition = 'serve'",
                    uuid.UUID(fresh),
                )
                == payload
            )
        else:
            assert len(payload) > 2000


async def test_line_operation_bodies(ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    """call-next with injected transition names and notes, reorder and forward with injected reasons."""
    a = ctx.attacker
    side = Side(a.tenant_id, a.account_id, a.h, a.account_h, order_type=a.order_type)
    line = (await send("POST", "/v1/queues", {201}, headers=a.h, json={"name": "Line"})).json()["id"]
    waiting = await new_ticket(send, side, queue=line)
    for payload in PAYLOADS:
        body = {"transition": payload, "notes": payload}
        response = await send("POST", f"/v1/queues/{line}/call-next", {200, 400}, headers=a.h, json=body)
        if payload in a.by_state:
            assert response.status_code == 200, payload
            called = response.json()
            assert (called["id"], called["current_state"]) == (waiting, payload)
            history = (await send("GET", f"/v1/tickets/{waiting}/history", {200}, headers=a.h)).json()
            assert history[-1]["notes"] == payload
            waiting = await new_ticket(send, side, queue=line)
        else:
            assert response.status_code == 400, payload
            still = (await send("GET", f"/v1/tickets/{waiting}", {200}, headers=a.h)).json()
            assert still["current_state"] == "new"
    # The line is now [waiting, second]: every accepted reorder swaps them; a third ticket roams two queues.
    second = await new_ticket(send, side, queue=line)
    spares = [
        (await send("POST", "/v1/queues", {201}, headers=a.h, json={"name": name})).json()["id"]
        for name in ("Spare 1", "Spare 2")
    ]
    roamer = await new_ticket(send, side, queue=spares[0])
    target = 1
    for payload in PAYLOADS:
        moved = await send(
            "POST",
            f"/v1/tickets/{second}/reorder",
            {200, 400},
            headers=a.h,
            json={"position": target, "reason": payload},
        )
        forwarded = await send(
            "POST",
            f"/v1/tickets/{roamer}/forward",
            {200, 400},
            headers=a.h,
            json={"target_queue_id": spares[1], "reason": payload},
        )
        if moved.status_code == 400:
            assert forwarded.status_code == 400
            assert len(payload) > 500
            continue
        assert (moved.json()["position"], moved.json()["previous_position"]) == (target, 3 - target)
        assert forwarded.json()["previous_queue_id"] == spares[0]
        target = 3 - target
        spares.reverse()
        for ticket_id, kind in ((second, "ticket.reordered"), (roamer, "ticket.forwarded")):
            reason = await db.fetchval(
                "SELECT data ->> 'reason' FROM events WHERE ticket_id = $1 AND type = $2 "
                "ORDER BY tx_id DESC, id DESC",
                uuid.UUID(ticket_id),
                kind,
            )
            assert reason == payload, kind
    events = (
        await send(
            "GET",
            "/v1/events",
            {200},
            headers=a.h,
            params={"ticket_id": second, "type": "ticket.reordered", "limit": 1000},
        )
    ).json()
    reasons = [event["data"]["reason"] for event in events["data"]]
    assert reasons == [p for p in PAYLOADS if len(p) <= 500]


# --- custom_data, config and JSON Schemas -------------------------------------------------------------------


async def test_custom_data_round_trips_at_every_level(ctx: Ctx, send: Sender, db: asyncpg.Connection) -> None:
    a = ctx.attacker
    side = Side(a.tenant_id, a.account_id, a.h, a.account_h, order_type=a.order_type)
    queue = (await send("POST", "/v1/queues", {201}, headers=a.h, json={"name": "Data"})).json()["id"]
    for index, payload in enumerate(PAYLOADS):
        data = nested(payload)
        ticket = await new_ticket(send, side, queue=queue, custom_data=data)
        assert (await send("GET", f"/v1/tickets/{ticket}", {200}, headers=a.h)).json()["custom_data"] == data
        stored_data = await db.fetchval(
            "SELECT custom_data::text FROM tickets WHERE id = $1", uuid.UUID(ticket)
        )
        assert json.loads(stored_data) == data
        changed = nested(payload, tag=f"v{index}_") | {"previous": data}
        method = "PATCH" if index % 2 else "PUT"
        response = await send(
            method, f"/v1/tickets/{ticket}", {200}, headers=a.h, json={"custom_data": changed}
        )
        assert response.json()["custom_data"] == changed
        assert (await send("GET", f"/v1/tickets/{ticket}", {200}, headers=a.h)).json()[
            "custom_data"
        ] == changed
        item = {"item_type_definition_id": a.item_type, "custom_data": data, "external_item_name": "x"}
        made = (await send("POST", f"/v1/tickets/{ticket}/items", {201}, headers=a.h, json=item)).json()
        assert made["custom_data"] == data
        got = (await send("GET", f"/v1/items/{made['id']}", {200}, headers=a.h)).json()
        assert got["custom_data"] == data
    listed = (
        await send("GET", "/v1/tickets", {200}, headers=a.h, params={"queue_id": queue, "limit": 100})
    ).json()
    owned_by(listed["data"], a)
    assert len(listed["data"]) == len(PAYLOADS)


async def test_monitor_exclude_matches_custom_data_by_equality(ctx: Ctx, send: Sender) -> None:
    a = ctx.attacker
    side = Side(a.tenant_id, a.account_id, a.h, a.account_h, order_type=a.order_type)
    queue = (await send("POST", "/v1/queues", {201}, headers=a.h, json={"name": "Drive"})).json()["id"]
    channels = [p for p in PAYLOADS if len(p) <= 200 and "\n" not in p]
    by_channel = {p: await new_ticket(send, side, queue=queue, custom_data={"channel": p}) for p in channels}
    everyone = set(by_channel.values())
    for payload in PAYLOADS:
        response = await send(
            "GET",
            f"/v1/queues/{queue}/monitor",
            {200, 400},
            headers=a.h,
            params={"exclude": f"channel:{payload}", "limit": 1000},
        )
        if payload not in by_channel:
            assert response.status_code == 400, payload
            continue
        body = response.json()
        shown = {t["id"] for t in body["groups"]["waiting"]}
        assert shown == everyone - {by_channel[payload]}, payload
        assert body["counts"]["waiting"] == len(everyone) - 1


async def test_tenant_config_and_json_schemas_round_trip(
    ctx: Ctx, send: Sender, db: asyncpg.Connection
) -> None:
    a = ctx.attacker
    config = {p: [p, {p: {"level3": p}}] for p in CORE}
    response = await send(
        "PATCH", f"/v1/tenants/{a.tenant_id}", {200}, headers=a.account_h, json={"config": config}
    )
    assert response.json()["config"] == config
    got = (await send("GET", f"/v1/tenants/{a.tenant_id}", {200}, headers=a.account_h)).json()
    assert got["config"] == config
    stored_config = await db.fetchval(
        "SELECT config::text FROM tenants WHERE id = $1", uuid.UUID(a.tenant_id)
    )
    assert json.loads(stored_config) == config
    # A JSON Schema whose property names and enum values are payloads; tickets validate against it.
    properties = {p: {"type": "string", "enum": [p], "description": p} for p in CORE}
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    body = {
        "type_code": "schema_inj",
        "type_name": "Schema",
        "fsm_schema": SIMPLE_FSM,
        "custom_fields_schema": schema,
    }
    typedef = (await send("POST", "/v1/type-definitions", {201}, headers=a.h, json=body)).json()
    assert typedef["custom_fields_schema"] == schema
    got_type = (await send("GET", f"/v1/type-definitions/{typedef['id']}", {200}, headers=a.h)).json()
    assert got_type["custom_fields_schema"] == schema
    data = {p: p for p in CORE}
    made = await send(
        "POST",
        "/v1/tickets",
        {201},
        headers=a.h,
        json={"queue_id": a.other_queue, "type_definition_id": typedef["id"], "custom_data": data},
    )
    assert made.json()["custom_data"] == data
    for payload in CORE[:10]:
        await send(
            "POST",
            "/v1/tickets",
            {400},
            headers=a.h,
            json={
                "queue_id": a.other_queue,
                "type_definition_id": typedef["id"],
                "custom_data": {payload: payload + "x"},
            },
        )


async def test_custom_data_keys_with_surrounding_whitespace_are_kept(ctx: Ctx, send: Sender) -> None:
    a = ctx.attacker
    data = {" padded ": " value ", "padded": 2, "inner": {" padded ": 3}}
    made = await send(
        "POST",
        "/v1/tickets",
        {201},
        headers=a.h,
        json={"queue_id": a.other_queue, "type_definition_id": a.order_type, "custom_data": data},
    )
    assert made.json()["custom_data"] == data
