"""Bad input on the foundation endpoints (accounts, tenants, customers, employees, API keys), PRODUCT §6.

Every rejected request must get the documented 4xx in the error envelope and leave the database exactly as it
was: no row added, no row changed. Also: conflicts on client-chosen ids and employee emails, pagination totals
and page boundaries, list filters, framework errors (unknown route, wrong method, body limit) and request ids.

The cases are tables: each write endpoint gets the same generic abuse (malformed JSON, non-objects, unknown
fields, wrong content type, oversize bodies) plus its own field-level cases read off the schemas.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, assert_error, auth
from virtualq.kit.metrics import Metrics
from virtualq.kit.middleware import RequestContextMiddleware

# --- the world every table case runs against ----------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    ids: dict[str, str]
    keys: dict[str, str]


@pytest.fixture(scope="module")
async def ctx(api: Api, client: httpx.AsyncClient) -> Ctx:
    """One account and tenant with a customer and an employee, plus a second account and tenant."""
    main = await api.world()
    other = await api.world()
    customer = await api.post("/v1/customers", {"fname": "Ann"}, key=main.tenant_admin)
    employee = await api.post(
        "/v1/employees", {"fname": "Bo", "lname": "Li", "email": "bo@example.com"}, key=main.tenant_admin
    )
    return Ctx(
        ids={
            "account": main.account_id,
            "tenant": main.tenant_id,
            "customer": customer["id"],
            "employee": employee["id"],
            "other_account": other.account_id,
            "other_tenant": other.tenant_id,
            "missing": str(uuid.uuid4()),  # well-formed, names nothing
        },
        keys={"platform": api.admin_key, "account": main.account_admin, "tenant": main.tenant_admin},
    )


@pytest.fixture(scope="module")
def body_limit(app: Any) -> int:
    limit: int = app.state.settings.max_body_bytes
    return limit


STATE_SQL = """
SELECT json_build_object(
    'accounts', (SELECT count(*) FROM accounts),
    'accounts_active', (SELECT count(*) FROM accounts WHERE is_active),
    'tenants', (SELECT count(*) FROM tenants),
    'tenants_active', (SELECT count(*) FROM tenants WHERE is_active),
    'customers', (SELECT count(*) FROM customers),
    'customers_active', (SELECT count(*) FROM customers WHERE is_active),
    'employees', (SELECT count(*) FROM employees),
    'employees_active', (SELECT count(*) FROM employees WHERE is_active),
    'api_keys', (SELECT count(*) FROM api_keys),
    'api_keys_live', (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL),
    'account', (SELECT row_to_json(a) FROM accounts a WHERE id = $1),
    'tenant', (SELECT row_to_json(t) FROM tenants t WHERE id = $2),
    'customer', (SELECT row_to_json(c) FROM customers c WHERE id = $3),
    'employee', (SELECT row_to_json(e) FROM employees e WHERE id = $4)
)::text
"""


async def state(db: asyncpg.Connection, ctx: Ctx) -> dict[str, Any]:
    """Row counts of every foundation table and the full rows of the world's account, tenant, customer and
    employee: a rejected write must leave all of it untouched."""
    ids = [uuid.UUID(ctx.ids[name]) for name in ("account", "tenant", "customer", "employee")]
    snapshot: dict[str, Any] = json.loads(await db.fetchval(STATE_SQL, *ids))
    assert all(snapshot[name] is not None for name in ("account", "tenant", "customer", "employee"))
    return snapshot


# --- cases --------------------------------------------------------------------------------------------------

DROP = "<drop>"  # an override that removes the key from the base body


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    key: str = "platform"
    body: Any = None  # sent as JSON (placeholders "<name>" filled in) unless raw is set
    raw: bytes | None = None  # sent verbatim
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 400
    code: str = "validation_error"
    field: str | None = None  # a field the error details must name


def fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("<") and value.endswith(">") and value[1:-1] in ids:
        return ids[value[1:-1]]
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    return value


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {key: value for key, value in merged.items() if value != DROP}


async def send(client: httpx.AsyncClient, ctx: Ctx, case: Case) -> httpx.Response:
    headers = {**(auth(ctx.keys[case.key]) if case.key != "none" else {}), **dict(case.headers)}
    headers = {name: fill(value, ctx.ids) for name, value in headers.items()}
    path = case.path.format(**ctx.ids)
    if case.raw is not None:
        headers["content-type"] = case.content_type
        return await client.request(case.method, path, content=case.raw, headers=headers)
    if case.body is None:
        return await client.request(case.method, path, headers=headers)
    return await client.request(case.method, path, json=fill(case.body, ctx.ids), headers=headers)


def fields_named(body: dict[str, Any]) -> set[str]:
    """Field names an error envelope points at: schema errors list them, service errors name one."""
    details = body["details"]
    named = {details["field"]} if "field" in details else set()
    named.update(problem["field"] for problem in details.get("errors", []))
    return named


def assert_names_field(body: dict[str, Any], field: str) -> None:
    named = fields_named(body)
    assert any(name == field or name.startswith(field + ".") for name in named), (field, body)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    key: str
    body: dict[str, Any]  # a valid body: the cases below each break one thing in it
    resource: str
    kind: str  # create | update | queues


WRITES = [
    Endpoint("accounts.create", "POST", "/v1/accounts", "platform", {"name": "Acme"}, "account", "create"),
    Endpoint(
        "tenants.create",
        "POST",
        "/v1/tenants",
        "platform",
        {"account_id": "<account>", "name": "Branch"},
        "tenant",
        "create",
    ),
    Endpoint(
        "customers.create",
        "POST",
        "/v1/customers",
        "platform",
        {"account_id": "<account>", "fname": "Cy"},
        "customer",
        "create",
    ),
    Endpoint(
        "employees.create",
        "POST",
        "/v1/employees",
        "tenant",
        {"fname": "Di", "lname": "Ng", "email": "di@example.com"},
        "employee",
        "create",
    ),
    Endpoint(
        "api_keys.create",
        "POST",
        "/v1/api-keys",
        "platform",
        {"name": "Counter", "scope": "account", "role": "staff", "account_id": "<account>"},
        "api_key",
        "create",
    ),
    *(
        Endpoint(f"{resource}s.{method.lower()}", method, path, key, body, resource, "update")
        for method in ("PATCH", "PUT")
        for resource, path, key, body in (
            ("account", "/v1/accounts/{account}", "platform", {"name": "Renamed"}),
            ("tenant", "/v1/tenants/{tenant}", "platform", {"name": "Renamed"}),
            ("customer", "/v1/customers/{customer}", "platform", {"fname": "Renamed"}),
            ("employee", "/v1/employees/{employee}", "tenant", {"fname": "Renamed"}),
        )
    ),
    Endpoint(
        "employees.queues",
        "PUT",
        "/v1/employees/{employee}/queues",
        "tenant",
        {"queue_ids": []},
        "employee",
        "queues",
    ),
    Endpoint(
        "employees.assign_queues",
        "POST",
        "/v1/employees/{employee}/assign-queues",
        "tenant",
        {"queue_ids": []},
        "employee",
        "queues",
    ),
]

MALFORMED: dict[str, bytes] = {
    "truncated": b'{"name": ',
    "trailing-comma": b'{"name": "a",}',
    "single-quotes": b"{'name': 'a'}",
    "form-encoded": b"name=a",
    "invalid-utf8": b'{"name": "\xff\xfe"}',
    "empty": b"",
    "list": b'[{"name": "a"}]',
    "empty-list": b"[]",
    "number": b"42",
    "string": b'"Acme"',
    "null": b"null",
    "true": b"true",
}

N101 = "n" * 101
BAD_COORDS: list[tuple[str, Any, str]] = [
    ("lat-91", {"latitude": 91, "longitude": 0}, "location_coordinates.latitude"),
    ("lat-below", {"latitude": -90.0001, "longitude": 0}, "location_coordinates.latitude"),
    ("lon-181", {"latitude": 0, "longitude": 181}, "location_coordinates.longitude"),
    ("lon-below", {"latitude": 0, "longitude": -180.5}, "location_coordinates.longitude"),
    ("lat-string", {"latitude": "45", "longitude": 0}, "location_coordinates.latitude"),
    ("lat-bool", {"latitude": True, "longitude": 0}, "location_coordinates.latitude"),
    ("lat-huge-int", {"latitude": 10**40, "longitude": 0}, "location_coordinates.latitude"),
    ("no-longitude", {"latitude": 10}, "location_coordinates.longitude"),
    ("list", [10, 20], "location_coordinates"),
    ("extra-key", {"latitude": 1, "longitude": 2, "altitude": 3}, "location_coordinates.altitude"),
]
BIG_CONFIG = {"blob": "x" * 16_400}  # over the 16 KiB config cap, far under the body limit

# (label, overrides of the base body, the field the error must name or None when a model rule rejects it)
FieldCase = tuple[str, dict[str, Any], str | None]

FIELD_CASES: dict[tuple[str, str], list[FieldCase]] = {
    ("account", "create"): [
        ("name-missing", {"name": DROP}, "name"),
        ("name-empty", {"name": ""}, "name"),
        ("name-blank", {"name": "   "}, "name"),
        ("name-too-long", {"name": N101}, "name"),
        ("name-int", {"name": 5}, "name"),
        ("name-null", {"name": None}, "name"),
        ("name-list", {"name": ["Acme"]}, "name"),
        ("name-bool", {"name": True}, "name"),
        ("billing-email-invalid", {"billing_email": "not-an-email"}, "billing_email"),
        ("billing-email-no-domain", {"billing_email": "a@"}, "billing_email"),
        ("billing-email-int", {"billing_email": 5}, "billing_email"),
        ("billing-address-too-long", {"billing_address": "a" * 2001}, "billing_address"),
        ("billing-address-object", {"billing_address": {"street": "x"}}, "billing_address"),
        ("is-active-not-settable", {"is_active": False}, "is_active"),
        ("id-not-settable", {"id": "<missing>"}, "id"),
    ],
    ("account", "update"): [
        ("name-null", {"name": None}, None),
        ("name-empty", {"name": ""}, "name"),
        ("name-too-long", {"name": N101}, "name"),
        ("name-int", {"name": 5}, "name"),
        ("billing-email-invalid", {"billing_email": "nope"}, "billing_email"),
        ("billing-address-too-long", {"billing_address": "a" * 2001}, "billing_address"),
        ("is-active-string", {"is_active": "yes"}, "is_active"),
        ("is-active-int", {"is_active": 1}, "is_active"),
        ("is-active-null", {"is_active": None}, None),
        ("id-not-settable", {"id": "<missing>"}, "id"),
        ("created-at-not-settable", {"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ],
    ("tenant", "create"): [
        ("name-missing", {"name": DROP}, "name"),
        ("name-empty", {"name": ""}, "name"),
        ("name-too-long", {"name": N101}, "name"),
        ("name-int", {"name": 5}, "name"),
        ("account-id-not-uuid", {"account_id": "not-a-uuid"}, "account_id"),
        ("account-id-int", {"account_id": 12345}, "account_id"),
        ("account-id-unknown", {"account_id": "<missing>"}, "account_id"),
        ("description-too-long", {"description": "d" * 2001}, "description"),
        ("location-name-too-long", {"location_name": "l" * 201}, "location_name"),
        ("location-address-too-long", {"location_address": "a" * 2001}, "location_address"),
        *((f"coords-{label}", {"location_coordinates": value}, field) for label, value, field in BAD_COORDS),
        ("timezone-unknown", {"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ("timezone-offset", {"timezone": "+02:00"}, "timezone"),
        ("timezone-empty", {"timezone": ""}, "timezone"),
        ("timezone-int", {"timezone": 2}, "timezone"),
        ("timezone-null", {"timezone": None}, "timezone"),
        ("config-string", {"config": "x"}, "config"),
        ("config-list", {"config": [1]}, "config"),
        ("config-null", {"config": None}, "config"),
        ("config-too-big", {"config": BIG_CONFIG}, "config"),
        ("is-active-not-settable", {"is_active": False}, "is_active"),
    ],
    ("tenant", "update"): [
        ("name-null", {"name": None}, None),
        ("timezone-null", {"timezone": None}, None),
        ("config-null", {"config": None}, None),
        ("is-active-null", {"is_active": None}, None),
        ("name-empty", {"name": ""}, "name"),
        ("timezone-unknown", {"timezone": "Not/AZone"}, "timezone"),
        ("coords-lat-91", {"location_coordinates": {"latitude": 91, "longitude": 0}}, "location_coordinates"),
        ("coords-half", {"location_coordinates": {"longitude": 10}}, "location_coordinates.latitude"),
        ("config-too-big", {"config": BIG_CONFIG}, "config"),
        ("is-active-string", {"is_active": "false"}, "is_active"),
        ("account-id-not-movable", {"account_id": "<other_account>"}, "account_id"),
        ("id-not-settable", {"id": "<missing>"}, "id"),
    ],
    ("customer", "create"): [
        ("id-not-uuid", {"id": "not-a-uuid"}, "id"),
        ("id-int", {"id": 7}, "id"),
        ("account-id-not-uuid", {"account_id": "nope"}, "account_id"),
        ("account-id-unknown", {"account_id": "<missing>"}, "account_id"),
        ("fname-empty", {"fname": ""}, "fname"),
        ("fname-too-long", {"fname": N101}, "fname"),
        ("fname-int", {"fname": 5}, "fname"),
        ("lname-too-long", {"lname": N101}, "lname"),
        ("email-no-domain", {"email": "ann@"}, "email"),
        ("email-no-at", {"email": "ann"}, "email"),
        ("email-int", {"email": 5}, "email"),
        ("phone-words", {"phone": "call me"}, "phone"),
        ("phone-too-short", {"phone": "12"}, "phone"),
        ("phone-too-long", {"phone": "1" * 33}, "phone"),
        ("phone-int", {"phone": 5551234}, "phone"),
        ("is-active-not-settable", {"is_active": False}, "is_active"),
        ("tenant-id-unknown-field", {"tenant_id": "<tenant>"}, "tenant_id"),
    ],
    ("customer", "update"): [
        ("is-active-null", {"is_active": None}, None),
        ("is-active-string", {"is_active": "no"}, "is_active"),
        ("fname-empty", {"fname": ""}, "fname"),
        ("fname-too-long", {"fname": N101}, "fname"),
        ("email-invalid", {"email": "bad"}, "email"),
        ("phone-invalid", {"phone": "x"}, "phone"),
        ("account-id-not-movable", {"account_id": "<other_account>"}, "account_id"),
        ("id-not-settable", {"id": "<missing>"}, "id"),
    ],
    ("employee", "create"): [
        ("fname-missing", {"fname": DROP}, "fname"),
        ("lname-missing", {"lname": DROP}, "lname"),
        ("email-missing", {"email": DROP}, "email"),
        ("fname-empty", {"fname": ""}, "fname"),
        ("fname-int", {"fname": 5}, "fname"),
        ("lname-too-long", {"lname": N101}, "lname"),
        ("email-invalid", {"email": "not-an-email"}, "email"),
        ("email-no-domain", {"email": "di@"}, "email"),
        ("email-empty", {"email": ""}, "email"),
        ("email-int", {"email": 5}, "email"),
        ("email-too-long", {"email": "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "com"}, "email"),
        ("role-empty", {"role": ""}, "role"),
        ("role-too-long", {"role": "r" * 51}, "role"),
        ("role-int", {"role": 3}, "role"),
        ("tenant-id-not-uuid", {"tenant_id": "nope"}, "tenant_id"),
        ("tenant-id-disagrees", {"tenant_id": "<other_tenant>"}, "tenant_id"),
        ("queue-ids-not-settable", {"queue_ids": []}, "queue_ids"),
        ("is-active-not-settable", {"is_active": True}, "is_active"),
    ],
    ("employee", "update"): [
        ("fname-null", {"fname": None}, None),
        ("email-null", {"email": None}, None),
        ("role-null", {"role": None}, None),
        ("is-active-null", {"is_active": None}, None),
        ("lname-empty", {"lname": ""}, "lname"),
        ("email-invalid", {"email": "bad"}, "email"),
        ("role-too-long", {"role": "r" * 51}, "role"),
        ("is-active-int", {"is_active": 0}, "is_active"),
        ("tenant-id-not-movable", {"tenant_id": "<other_tenant>"}, "tenant_id"),
        ("queue-ids-not-settable", {"queue_ids": []}, "queue_ids"),
    ],
    ("employee", "queues"): [
        ("queue-ids-missing", {"queue_ids": DROP}, "queue_ids"),
        ("queue-ids-string", {"queue_ids": "abc"}, "queue_ids"),
        ("queue-ids-null", {"queue_ids": None}, "queue_ids"),
        ("queue-id-not-uuid", {"queue_ids": ["nope"]}, "queue_ids"),
        ("queue-id-int", {"queue_ids": [1]}, "queue_ids"),
        ("queue-ids-too-many", {"queue_ids": [str(uuid.UUID(int=i + 1)) for i in range(101)]}, "queue_ids"),
        ("queue-id-unknown", {"queue_ids": ["<missing>"]}, "queue_ids"),
        ("queue-id-names-a-tenant", {"queue_ids": ["<tenant>"]}, "queue_ids"),
    ],
    ("api_key", "create"): [
        ("name-missing", {"name": DROP}, "name"),
        ("name-empty", {"name": ""}, "name"),
        ("name-too-long", {"name": N101}, "name"),
        ("name-int", {"name": 5}, "name"),
        ("scope-missing", {"scope": DROP}, "scope"),
        ("scope-unknown", {"scope": "superuser"}, "scope"),
        ("scope-wrong-case", {"scope": "ACCOUNT"}, "scope"),
        ("scope-empty", {"scope": ""}, "scope"),
        ("scope-int", {"scope": 1}, "scope"),
        ("scope-null", {"scope": None}, "scope"),
        ("role-missing", {"role": DROP}, "role"),
        ("role-unknown", {"role": "owner"}, "role"),
        ("role-wrong-case", {"role": "Admin"}, "role"),
        ("role-list", {"role": ["admin"]}, "role"),
        ("role-null", {"role": None}, "role"),
        ("platform-with-account", {"scope": "platform"}, None),
        ("account-with-tenant", {"tenant_id": "<tenant>"}, None),
        ("employee-on-account-key", {"employee_id": "<employee>"}, None),
        ("tenant-scope-without-tenant", {"scope": "tenant", "account_id": DROP}, "tenant_id"),
        ("tenant-unknown", {"scope": "tenant", "account_id": DROP, "tenant_id": "<missing>"}, "tenant_id"),
        ("account-unknown", {"account_id": "<missing>"}, "account_id"),
        ("account-id-not-uuid", {"account_id": "nope"}, "account_id"),
        (
            "account-does-not-own-tenant",
            {"scope": "tenant", "account_id": "<other_account>", "tenant_id": "<tenant>"},
            "account_id",
        ),
        (
            "employee-unknown",
            {"scope": "tenant", "account_id": DROP, "tenant_id": "<tenant>", "employee_id": "<missing>"},
            "employee_id",
        ),
        ("employee-id-not-uuid", {"employee_id": "nope"}, "employee_id"),
        ("secret-not-choosable", {"key": "vq_chosen_by_client_1234567890"}, "key"),
        ("hash-not-settable", {"key_hash": "00"}, "key_hash"),
    ],
}


def _write_cases() -> list[Any]:
    params: list[Any] = []
    for ep in WRITES:
        base = Case(ep.method, ep.path, key=ep.key)
        for label, raw in MALFORMED.items():
            params.append(pytest.param(replace(base, raw=raw), id=f"{ep.name}-json-{label}"))
        params.append(
            pytest.param(
                replace(
                    base,
                    raw=json.dumps(ep.body).encode(),
                    content_type="text/plain",
                    status=415,
                    code="unsupported_media_type",
                ),
                id=f"{ep.name}-text-plain",
            )
        )
        params.append(
            pytest.param(
                replace(base, body={**ep.body, "surprise": 1}, field="surprise"),
                id=f"{ep.name}-unknown-field",
            )
        )
        params.append(
            pytest.param(
                replace(base, body={**ep.body, "": 1}, field=""),
                id=f"{ep.name}-empty-key",
            )
        )
        for label, overrides, field in FIELD_CASES[(ep.resource, ep.kind)]:
            params.append(
                pytest.param(
                    replace(base, body=with_overrides(ep.body, overrides), field=field),
                    id=f"{ep.name}-{label}",
                )
            )
    # Tenant context errors on a tenant-scoped write.
    employee_create = Case("POST", "/v1/employees", body=WRITES[3].body)
    params += [
        pytest.param(
            replace(employee_create, headers=(("X-Tenant-ID", "nope"),), field="x-tenant-id"),
            id="employees.create-tenant-header-not-uuid",
        ),
        pytest.param(
            replace(employee_create, field="X-Tenant-ID"),
            id="employees.create-platform-key-without-tenant",
        ),
        pytest.param(
            replace(
                employee_create,
                path="/v1/employees?tenant_id={other_tenant}",
                headers=(("X-Tenant-ID", "<tenant>"),),
                field="tenant_id",
            ),
            id="employees.create-header-and-param-disagree",
        ),
    ]
    return params


WRITE_CASES = _write_cases()


async def test_every_table_case_is_unique() -> None:
    ids = [param.id for param in WRITE_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) > 300


@pytest.mark.parametrize("endpoint", WRITES, ids=[ep.name for ep in WRITES])
async def test_the_base_bodies_are_valid(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, endpoint: Endpoint
) -> None:
    """The control: each base body succeeds, so a rejection below is caused by the one thing broken."""
    body = dict(endpoint.body)
    if "email" in body:
        body["email"] = f"control-{uuid.uuid4().hex[:8]}@example.com"
    before = await state(db, ctx)
    response = await send(client, ctx, Case(endpoint.method, endpoint.path, key=endpoint.key, body=body))
    assert response.status_code == (201 if endpoint.kind == "create" else 200), response.text
    after = await state(db, ctx)
    if endpoint.kind == "create":
        table = {"api_key": "api_keys"}.get(endpoint.resource, endpoint.resource + "s")
        assert after[table] == before[table] + 1
    else:  # the snapshot sees an update (updated_at moves at least), so "unchanged" below means something
        assert after[endpoint.resource] != before[endpoint.resource]
        assert {k: v for k, v in after.items() if k != endpoint.resource} == {
            k: v for k, v in before.items() if k != endpoint.resource
        }


@pytest.mark.parametrize("case", WRITE_CASES)
async def test_bad_writes_are_rejected_and_change_nothing(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, case: Case
) -> None:
    before = await state(db, ctx)
    response = await send(client, ctx, case)
    body = assert_error(response, case.status, case.code)
    if case.field is not None:
        assert_names_field(body, case.field)
    assert await state(db, ctx) == before


@pytest.mark.parametrize("endpoint", WRITES, ids=[ep.name for ep in WRITES])
async def test_oversize_bodies_are_413_and_change_nothing(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, body_limit: int, endpoint: Endpoint
) -> None:
    """A body over MAX_BODY_BYTES is refused with 413 even though it is otherwise valid JSON for the endpoint
    (the padding is whitespace), and nothing is written."""
    valid = json.dumps(fill(endpoint.body, ctx.ids)).encode()
    raw = valid + b" " * (body_limit + 1 - len(valid))
    assert len(raw) == body_limit + 1
    before = await state(db, ctx)
    case = Case(
        endpoint.method, endpoint.path, key=endpoint.key, raw=raw, status=413, code="payload_too_large"
    )
    assert_error(await send(client, ctx, case), 413, "payload_too_large")
    # A single huge field fails the same way.
    huge = Case(
        endpoint.method, endpoint.path, key=endpoint.key, body={**endpoint.body, "pad": "x" * body_limit}
    )
    assert_error(await send(client, ctx, huge), 413, "payload_too_large")
    assert await state(db, ctx) == before


async def test_the_body_limit_is_inclusive(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, body_limit: int
) -> None:
    """Exactly MAX_BODY_BYTES is accepted; one byte more is 413."""
    name = f"Edge {uuid.uuid4().hex[:8]}"
    valid = json.dumps({"name": name}).encode()
    at_limit = valid + b" " * (body_limit - len(valid))
    headers = {**auth(api.admin_key), "content-type": "application/json"}
    response = await client.post("/v1/accounts", content=at_limit, headers=headers)
    assert response.status_code == 201, response.text
    over_name = name + " over"
    over = json.dumps({"name": over_name}).encode()
    over += b" " * (body_limit + 1 - len(over))
    assert_error(await client.post("/v1/accounts", content=over, headers=headers), 413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 1
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", over_name) == 0


async def _chunks(first: bytes, padding: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    yield first
    while padding > 0:
        size = min(chunk, padding)
        padding -= size
        yield b" " * size


async def test_a_streamed_body_under_the_limit_is_accepted(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, body_limit: int
) -> None:
    """Control for the next test: a chunked body (no Content-Length) under the limit goes through."""
    name = f"Streamed ok {uuid.uuid4().hex[:8]}"
    first = json.dumps({"name": name}).encode()
    headers = {**auth(api.admin_key), "content-type": "application/json"}
    response = await client.post(
        "/v1/accounts", content=_chunks(first, body_limit - len(first) - 10), headers=headers
    )
    assert response.status_code == 201, response.text
    assert "content-length" not in response.request.headers
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 1


STREAMED = [ep for ep in WRITES if ep.name in {"accounts.create", "customers.create", "tenants.patch"}]


@pytest.mark.parametrize("endpoint", STREAMED, ids=[ep.name for ep in STREAMED])
async def test_a_streamed_oversize_body_is_413_and_writes_nothing(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, body_limit: int, endpoint: Endpoint
) -> None:
    """A chunked body (no Content-Length) that goes over the limit is 413 and, like every 4xx, leaves no row
    behind, even when the part read before the limit is a complete, valid JSON document."""
    body = dict(endpoint.body)
    marker = f"Streamed {uuid.uuid4().hex[:8]}"
    body[next(iter(body.keys() - {"account_id"}))] = marker
    first = json.dumps(fill(body, ctx.ids)).encode()
    before = await state(db, ctx)
    headers = {**auth(ctx.keys[endpoint.key]), "content-type": "application/json"}
    response = await client.request(
        endpoint.method,
        endpoint.path.format(**ctx.ids),
        content=_chunks(first, body_limit + 1024),
        headers=headers,
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert await state(db, ctx) == before
    assert marker not in json.dumps(await state(db, ctx))


# Strings PostgreSQL cannot store: bad input, so 400, not a database error surfacing as 500.
NUL_CASES = [
    pytest.param(Case("POST", "/v1/accounts", body={"name": "Ac\u0000me"}, field="name"), id="account-name"),
    pytest.param(
        Case(
            "PATCH",
            "/v1/accounts/{account}",
            body={"billing_address": "Main St\u0000"},
            field="billing_address",
        ),
        id="account-billing-address-patch",
    ),
    pytest.param(
        Case(
            "POST", "/v1/tenants", body={"account_id": "<account>", "name": "T", "config": {"a": "x\u0000"}}
        ),
        id="tenant-config-value",
    ),
    pytest.param(
        Case("POST", "/v1/tenants", body={"account_id": "<account>", "name": "T", "config": {"a\u0000": 1}}),
        id="tenant-config-key",
    ),
    pytest.param(
        Case("POST", "/v1/customers", body={"account_id": "<account>", "lname": "\u0000"}, field="lname"),
        id="customer-lname",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/employees",
            key="tenant",
            body={"fname": "E", "lname": "F", "email": "nul@example.com", "role": "ba\u0000rista"},
            field="role",
        ),
        id="employee-role",
    ),
    pytest.param(
        Case(
            "POST",
            "/v1/api-keys",
            body={"name": "k\u0000", "scope": "account", "role": "staff", "account_id": "<account>"},
            field="name",
        ),
        id="api-key-name",
    ),
]


@pytest.mark.parametrize("case", NUL_CASES)
async def test_nul_characters_are_400_not_500(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, case: Case
) -> None:
    before = await state(db, ctx)
    body = assert_error(await send(client, ctx, case), 400, "validation_error")
    if case.field is not None:
        assert_names_field(body, case.field)
    assert await state(db, ctx) == before


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case(
                "POST", "/v1/tenants", body={"account_id": "<account>", "name": "T", "config": _nested(300)}
            ),
            id="create",
        ),
        pytest.param(Case("PATCH", "/v1/tenants/{tenant}", body={"config": _nested(300)}), id="patch"),
    ],
)
async def test_deeply_nested_tenant_config_is_400_not_500(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, case: Case
) -> None:
    """300 levels of nesting is a small (~2 KB) body well under the config size cap; it must be refused as
    bad input or stored, never crash."""
    before = await state(db, ctx)
    body = assert_error(await send(client, ctx, case), 400, "validation_error")
    assert_names_field(body, "config")
    assert await state(db, ctx) == before


async def test_json_nested_beyond_the_parser_is_400(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection
) -> None:
    """Bodies Python's JSON parser gives up on (nesting beyond its stack, not UTF-8, a 5,000-digit number)
    get the same answer as any other malformed JSON: one message, the problem in details.errors."""
    before = await state(db, ctx)
    for raw in (
        b'{"name": "x", "config": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"name": "\xff\xfe"}',
        b'{"name": "x", "config": {"n": ' + b"9" * 5_000 + b"}}",
    ):
        case = Case("POST", "/v1/tenants", raw=raw)
        body = assert_error(await send(client, ctx, case), 400, "validation_error")
        assert body["message"] == "The request body is not valid JSON.", body
        assert [problem["type"] for problem in body["details"]["errors"]] == ["json_invalid"]
    assert await state(db, ctx) == before


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b'{"latitude": NaN, "longitude": 0}', "location_coordinates.latitude", id="nan"),
        pytest.param(b'{"latitude": 0, "longitude": Infinity}', "location_coordinates.longitude", id="inf"),
        pytest.param(b'{"latitude": -Infinity, "longitude": 0}', "location_coordinates.latitude", id="-inf"),
        pytest.param(b'{"latitude": 1e400, "longitude": 0}', "location_coordinates.latitude", id="overflow"),
    ],
)
async def test_non_finite_coordinates_are_400(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, raw: bytes, field: str
) -> None:
    """Python's JSON parser accepts NaN and Infinity; they are out of range, not a database error."""
    body = b'{"account_id": "%s", "name": "T", "location_coordinates": %s}' % (
        ctx.ids["account"].encode(),
        raw,
    )
    before = await state(db, ctx)
    error = assert_error(
        await send(client, ctx, Case("POST", "/v1/tenants", raw=body)), 400, "validation_error"
    )
    assert_names_field(error, field)
    assert await state(db, ctx) == before


async def test_limits_are_exact_boundaries(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """The longest allowed values are accepted (so the too-long cases above fail on the limit, not before)."""
    account = await api.post(
        "/v1/accounts", {"name": "n" * 100, "billing_address": "a" * 2000, "billing_email": "b@example.com"}
    )
    assert len(account["name"]) == 100
    tenant = await api.post(
        "/v1/tenants",
        {
            "account_id": account["id"],
            "name": "  padded  ",  # surrounding whitespace is stripped, not counted
            "location_name": "l" * 200,
            "description": "d" * 2000,
            "location_coordinates": {"latitude": -90, "longitude": 180.0},
            "timezone": "America/Los_Angeles",
            "config": {"blob": "x" * 16_000},
        },
    )
    assert tenant["name"] == "padded"
    assert tenant["location_coordinates"] == {"latitude": -90.0, "longitude": 180.0}
    customer = await api.post(
        "/v1/customers", {"account_id": account["id"], "fname": "f" * 100, "phone": "+1 (206) 555-0100"}
    )
    assert customer["phone"] == "+1 (206) 555-0100"
    row = await db.fetchrow(
        "SELECT name, billing_address FROM accounts WHERE id = $1", uuid.UUID(account["id"])
    )
    assert row is not None
    assert (len(row["name"]), len(row["billing_address"])) == (100, 2000)


# --- bad ids in paths, queries and headers ------------------------------------------------------------------

ID_ROUTES: list[tuple[str, str, str, Any, str]] = [
    # (method, path with {id}, key, body, path parameter name)
    ("GET", "/v1/accounts/{id}", "platform", None, "account_id"),
    ("PATCH", "/v1/accounts/{id}", "platform", {"name": "X"}, "account_id"),
    ("PUT", "/v1/accounts/{id}", "platform", {"name": "X"}, "account_id"),
    ("DELETE", "/v1/accounts/{id}", "platform", None, "account_id"),
    ("GET", "/v1/accounts/{id}/tenants", "platform", None, "account_id"),
    ("GET", "/v1/tenants/{id}", "platform", None, "tenant_id"),
    ("PATCH", "/v1/tenants/{id}", "platform", {"name": "X"}, "tenant_id"),
    ("PUT", "/v1/tenants/{id}", "platform", {"name": "X"}, "tenant_id"),
    ("DELETE", "/v1/tenants/{id}", "platform", None, "tenant_id"),
    ("GET", "/v1/tenants/{id}/employees", "platform", None, "tenant_id"),
    ("GET", "/v1/customers/{id}", "platform", None, "customer_id"),
    ("PATCH", "/v1/customers/{id}", "platform", {"fname": "X"}, "customer_id"),
    ("PUT", "/v1/customers/{id}", "platform", {"fname": "X"}, "customer_id"),
    ("DELETE", "/v1/customers/{id}", "platform", None, "customer_id"),
    ("GET", "/v1/employees/{id}", "tenant", None, "employee_id"),
    ("PATCH", "/v1/employees/{id}", "tenant", {"fname": "X"}, "employee_id"),
    ("PUT", "/v1/employees/{id}", "tenant", {"fname": "X"}, "employee_id"),
    ("DELETE", "/v1/employees/{id}", "tenant", None, "employee_id"),
    ("PUT", "/v1/employees/{id}/queues", "tenant", {"queue_ids": []}, "employee_id"),
    ("POST", "/v1/employees/{id}/assign-queues", "tenant", {"queue_ids": []}, "employee_id"),
    ("GET", "/v1/api-keys/{id}", "platform", None, "key_id"),
    ("DELETE", "/v1/api-keys/{id}", "platform", None, "key_id"),
]
BAD_UUIDS = {
    "word": "not-a-uuid",
    "number": "1234",
    "bad-char": "0190c3f0-0000-7000-8000-00000000000g",
    "too-long": "0190c3f0-0000-7000-8000-0000000000001",
}


@pytest.mark.parametrize(
    ("route", "bad"),
    [
        pytest.param(route, bad, id=f"{route[0]}-{route[1]}-{label}")
        for route in ID_ROUTES
        for label, bad in BAD_UUIDS.items()
    ],
)
async def test_malformed_uuids_in_paths_are_400(
    client: httpx.AsyncClient,
    ctx: Ctx,
    db: asyncpg.Connection,
    route: tuple[str, str, str, Any, str],
    bad: str,
) -> None:
    method, path, key, body, param = route
    before = await state(db, ctx)
    response = await send(client, ctx, Case(method, path.replace("{id}", bad), key=key, body=body))
    error = assert_error(response, 400, "validation_error")
    assert {"location": "path", "field": param} in [
        {"location": problem["location"], "field": problem["field"]} for problem in error["details"]["errors"]
    ]
    assert await state(db, ctx) == before


@pytest.mark.parametrize("route", [pytest.param(route, id=f"{route[0]}-{route[1]}") for route in ID_ROUTES])
async def test_well_formed_unknown_ids_are_404(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, route: tuple[str, str, str, Any, str]
) -> None:
    method, path, key, body, _ = route
    before = await state(db, ctx)
    response = await send(client, ctx, Case(method, path.replace("{id}", "{missing}"), key=key, body=body))
    assert_error(response, 404, "not_found")
    assert await state(db, ctx) == before


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case("GET", "/v1/tenants?account_id=nope", field="account_id"), id="tenants-account-query"
        ),
        pytest.param(
            Case("GET", "/v1/customers?account_id=nope", field="account_id"), id="customers-account"
        ),
        pytest.param(
            Case("GET", "/v1/employees?tenant_id=nope", field="tenant_id"), id="employees-tenant-query"
        ),
        pytest.param(
            Case("GET", "/v1/employees", headers=(("X-Tenant-ID", "nope"),), field="x-tenant-id"),
            id="employees-tenant-header",
        ),
        pytest.param(Case("GET", "/v1/employees", field="X-Tenant-ID"), id="employees-no-tenant"),
        pytest.param(
            Case("GET", "/v1/employees?tenant_id={other_tenant}", headers=(("X-Tenant-ID", "<tenant>"),)),
            id="employees-header-and-param-disagree",
        ),
    ],
)
async def test_bad_ids_in_queries_and_headers_are_400(
    client: httpx.AsyncClient, ctx: Ctx, case: Case
) -> None:
    error = assert_error(await send(client, ctx, case), 400, "validation_error")
    if case.field is not None:
        assert_names_field(error, case.field)


async def test_unknown_query_parameters_are_400_naming_them_and_declared_ones_work(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """A misspelt filter was ignored: `?queue=` listed every ticket of the tenant, `?page=2` on the event
    log gave its first page again for ever. An API route now takes the parameters it declares (its own
    and its dependencies', `tenant_id` among them) and refuses any other with a 400 naming it and saying
    what it takes; the caller's own refusal comes first; a write refused so changes nothing. The pages
    are not API routes: links may add to their URLs."""
    from tests.test_ticket_flows import coffee

    t, queue, order = await coffee(client, api)
    await t.ticket(queue, order)
    other = await t.queue("Other")
    await t.ticket(other["id"], order)
    h = t.h
    assert len((await client.get("/v1/tickets", params={"queue_id": queue}, headers=h)).json()["data"]) == 1
    response = await client.get("/v1/tickets", params={"queue": queue}, headers=h)
    error = assert_error(response, 400, "validation_error")
    [problem] = error["details"]["errors"]
    assert (problem["location"], problem["field"], problem["type"]) == ("query", "queue", "extra_forbidden")
    assert "queue_id" in problem["message"]
    assert "state_category" in problem["message"]
    assert_error(await client.get("/v1/events", params={"page": 2}, headers=h), 400, "validation_error")
    # Declared ones, a dependency's included, pass; so do repeated ones.
    for path, params in (
        ("/v1/tickets", {"tenant_id": t.id, "limit": 5, "current_state": "received"}),
        ("/v1/events", [("type", "ticket.created"), ("type", "ticket.cancelled"), ("limit", "3")]),
        (f"/v1/queues/{queue}/tickets", {"limit": 1}),
    ):
        assert (await client.get(path, params=params, headers=h)).status_code == 200, (path, params)
    # The cache-buster browser libraries add (`_=<time>`) is no filter and no error.
    assert (await client.get("/v1/tickets", params={"_": "1764650000000"}, headers=h)).status_code == 200
    # Who may not call the route hears that first; a write with an unknown parameter does nothing.
    assert_error(await client.get("/v1/tickets", params={"queue": queue}), 401, "unauthorized")
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    assert_error(await client.get("/v1/webhooks", params={"x": 1}, headers=auth(display)), 403, "forbidden")
    tickets = await db.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(t.id))
    body = {"queue_id": queue, "type_definition_id": order}
    assert_error(
        await client.post("/v1/tickets", params={"dry_run": 1}, json=body, headers=h), 400, "validation_error"
    )
    assert await db.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(t.id)) == tickets
    # A page's URL may carry what a link adds (a QR code's campaign tag).
    page = await client.get(f"/display/queues/{queue}", params={"utm_source": "qr"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


async def test_an_unknown_queue_in_a_body_is_404_naming_the_field(
    client: httpx.AsyncClient, api: Api
) -> None:
    """A 404 to a POST on a collection reads as a wrong URL: the answer says which id of the body it was."""
    from tests.test_ticket_flows import coffee

    t, queue, order = await coffee(client, api)
    ticket = await t.ticket(queue, order)
    nowhere = str(uuid.uuid4())
    created = await client.post(
        "/v1/tickets", json={"queue_id": nowhere, "type_definition_id": order}, headers=t.h
    )
    assert assert_error(created, 404, "not_found")["details"] == {"field": "queue_id"}
    forwarded = await client.post(
        f"/v1/tickets/{ticket['id']}/forward", json={"target_queue_id": nowhere}, headers=t.h
    )
    assert assert_error(forwarded, 404, "not_found")["details"] == {"field": "target_queue_id"}


async def test_ids_in_any_standard_spelling_are_accepted(client: httpx.AsyncClient, ctx: Ctx) -> None:
    """Upper case and unhyphenated spellings are the same UUID, not bad input."""
    account = ctx.ids["account"]
    for spelling in (account.upper(), account.replace("-", "")):
        response = await send(client, ctx, Case("GET", f"/v1/accounts/{spelling}"))
        assert response.status_code == 200, response.text
        assert response.json()["id"] == account


# --- conflicts ----------------------------------------------------------------------------------------------


async def test_a_client_chosen_customer_id_that_exists_is_409(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    first, second = await api.world(), await api.world()
    chosen = str(uuid.uuid4())
    created = await api.post("/v1/customers", {"id": chosen, "fname": "Orig"}, key=first.tenant_admin)
    assert created["id"] == chosen
    assert created["account_id"] == first.account_id

    async def customers() -> int:
        count: int = await db.fetchval("SELECT count(*) FROM customers")
        return count

    before = await customers()
    again = await client.post(
        "/v1/customers", json={"id": chosen, "fname": "Dup"}, headers=auth(first.tenant_admin)
    )
    body = assert_error(again, 409, "conflict")
    assert body["details"] == {"field": "id"}
    # The id is global: another account cannot take it either, nor overwrite the owner's row.
    elsewhere = await client.post(
        "/v1/customers", json={"id": chosen.upper(), "fname": "Thief"}, headers=auth(second.tenant_admin)
    )
    assert_error(elsewhere, 409, "conflict")
    assert await customers() == before
    row = await db.fetchrow("SELECT account_id, fname FROM customers WHERE id = $1", uuid.UUID(chosen))
    assert row is not None
    assert (str(row["account_id"]), row["fname"]) == (first.account_id, "Orig")


async def test_employee_emails_are_unique_per_tenant_case_insensitively(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    first, second = await api.world(), await api.world()

    async def create(key: str, email: str) -> httpx.Response:
        return await client.post(
            "/v1/employees", json={"fname": "E", "lname": "M", "email": email}, headers=auth(key)
        )

    async def count(tenant_id: str) -> int:
        total: int = await db.fetchval(
            "SELECT count(*) FROM employees WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
        return total

    original = (await create(first.tenant_admin, "dup@example.com")).json()
    assert original["email"] == "dup@example.com"
    for spelling in ("dup@example.com", "DUP@Example.COM", "Dup@EXAMPLE.com", "  dup@example.com "):
        body = assert_error(await create(first.tenant_admin, spelling), 409, "conflict")
        assert body["details"] == {"field": "email"}
    assert await count(first.tenant_id) == 1

    # Another tenant may use the same address.
    assert (await create(second.tenant_admin, "dup@example.com")).status_code == 201
    assert await count(second.tenant_id) == 1

    # Changing another employee's email to a taken one is 409 and changes nothing.
    other = (await create(first.tenant_admin, "other@example.com")).json()
    before = await db.fetchrow("SELECT * FROM employees WHERE id = $1", uuid.UUID(other["id"]))
    patched = await client.patch(
        f"/v1/employees/{other['id']}", json={"email": "DUP@example.com"}, headers=auth(first.tenant_admin)
    )
    assert_error(patched, 409, "conflict")
    assert await db.fetchrow("SELECT * FROM employees WHERE id = $1", uuid.UUID(other["id"])) == before

    # Uniqueness is among active employees: after deactivation the address is free again...
    gone = await client.delete(f"/v1/employees/{original['id']}", headers=auth(first.tenant_admin))
    assert gone.status_code == 204
    replacement = await create(first.tenant_admin, "Dup@example.com")
    assert replacement.status_code == 201, replacement.text
    # ...and reactivating the old one would make two: 409, and it stays inactive.
    revived = await client.patch(
        f"/v1/employees/{original['id']}", json={"is_active": True}, headers=auth(first.tenant_admin)
    )
    assert_error(revived, 409, "conflict")
    assert (
        await db.fetchval("SELECT is_active FROM employees WHERE id = $1", uuid.UUID(original["id"])) is False
    )


# --- pagination and filters ---------------------------------------------------------------------------------

LISTS: list[tuple[str, str]] = [
    ("/v1/accounts", "platform"),
    ("/v1/tenants", "platform"),
    ("/v1/accounts/{account}/tenants", "platform"),
    ("/v1/customers", "platform"),
    ("/v1/employees", "tenant"),
    ("/v1/tenants/{tenant}/employees", "platform"),
    ("/v1/api-keys", "platform"),
]
BAD_PAGING: dict[str, tuple[str, str]] = {
    "limit-0": ("limit", "0"),
    "limit-101": ("limit", "101"),
    "limit-negative": ("limit", "-1"),
    "limit-word": ("limit", "ten"),
    "limit-fraction": ("limit", "2.5"),
    "limit-empty": ("limit", ""),
    "page-0": ("page", "0"),
    "page-negative": ("page", "-3"),
    "page-word": ("page", "two"),
    "page-fraction": ("page", "1.5"),
    "page-beyond-bigint": ("page", "9" * 30),
}


@pytest.mark.parametrize(
    ("path", "key", "param", "value"),
    [
        pytest.param(path, key, param, value, id=f"{path}-{label}")
        for path, key in LISTS
        for label, (param, value) in BAD_PAGING.items()
    ],
)
async def test_out_of_range_paging_is_400(
    client: httpx.AsyncClient, ctx: Ctx, path: str, key: str, param: str, value: str
) -> None:
    response = await client.get(path.format(**ctx.ids), params={param: value}, headers=auth(ctx.keys[key]))
    error = assert_error(response, 400, "validation_error")
    assert [(p["location"], p["field"]) for p in error["details"]["errors"]] == [("query", param)]


@pytest.mark.parametrize(("path", "key"), LISTS, ids=[path for path, _ in LISTS])
async def test_paging_extremes_are_accepted(client: httpx.AsyncClient, ctx: Ctx, path: str, key: str) -> None:
    headers = auth(ctx.keys[key])
    for params in ({"limit": "1"}, {"limit": "100"}, {"page": "1000000", "limit": "100"}):
        response = await client.get(path.format(**ctx.ids), params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["pagination"]["limit"] == int(params["limit"])
        assert page["pagination"]["page"] == int(params.get("page", "1"))
        assert len(page["data"]) <= int(params["limit"])
        assert page["pagination"]["total"] >= 1
    assert page["data"] == []  # page 1,000,000 is past the end, yet the total is still counted


@pytest.mark.parametrize(
    ("path", "key", "param", "value"),
    [
        pytest.param(path, key, param, value, id=f"{path}-{param}={value}")
        for path, key in LISTS
        if path != "/v1/api-keys"
        for param, value in (
            ("is_active", "maybe"),
            ("created_after", "yesterday"),
            ("created_before", "2024-13-40T00:00:00Z"),
            ("created_after", ""),
            ("created_after", "0001-01-01T00:00:00+01:00"),  # year 0 in UTC: nothing can store it
            ("created_before", "9999-12-31T23:59:59-23:59"),  # year 10000 in UTC
        )
    ]
    + [
        pytest.param(
            "/v1/api-keys", "platform", "include_revoked", "maybe", id="/v1/api-keys-include_revoked"
        )
    ],
)
async def test_bad_filters_are_400(
    client: httpx.AsyncClient, ctx: Ctx, path: str, key: str, param: str, value: str
) -> None:
    response = await client.get(path.format(**ctx.ids), params={param: value}, headers=auth(ctx.keys[key]))
    error = assert_error(response, 400, "validation_error")
    assert [(p["location"], p["field"]) for p in error["details"]["errors"]] == [("query", param)]


def _ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


async def test_customer_pagination_totals_boundaries_and_filters(client: httpx.AsyncClient, api: Api) -> None:
    account = await api.account(f"Paging {uuid.uuid4().hex[:6]}")
    account_admin = await api.key("account", "admin", account_id=account["id"])
    headers = auth(account_admin)

    async def listing(**params: Any) -> dict[str, Any]:
        response = await client.get("/v1/customers", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    empty = await listing()
    assert empty == {"data": [], "pagination": {"page": 1, "limit": 20, "total": 0, "total_pages": 0}}

    created = [await api.post("/v1/customers", {"fname": f"C{i}"}, key=account_admin) for i in range(7)]
    everyone = [c["id"] for c in created]

    first = await listing()
    assert _ids(first) == everyone
    assert first["pagination"] == {"page": 1, "limit": 20, "total": 7, "total_pages": 1}

    seen: list[str] = []
    for number, size in ((1, 3), (2, 3), (3, 1)):
        page = await listing(page=number, limit=3)
        assert page["pagination"] == {"page": number, "limit": 3, "total": 7, "total_pages": 3}
        assert len(page["data"]) == size
        seen += _ids(page)
    assert seen == everyone  # no item twice, none skipped, in creation order

    beyond = await listing(page=4, limit=3)
    assert beyond == {"data": [], "pagination": {"page": 4, "limit": 3, "total": 7, "total_pages": 3}}
    for limit, pages in ((7, 1), (6, 2), (1, 7), (100, 1)):
        assert (await listing(limit=limit))["pagination"]["total_pages"] == pages
    assert _ids(await listing(page=7, limit=1)) == everyone[6:]

    # The same list through a platform key filtered by account.
    platform = await client.get(
        "/v1/customers",
        params={"account_id": account["id"], "limit": 3, "page": 3},
        headers=auth(api.admin_key),
    )
    assert platform.status_code == 200
    assert _ids(platform.json()) == everyone[6:]
    assert platform.json()["pagination"]["total"] == 7

    # is_active
    for index in (1, 4):
        gone = await client.delete(f"/v1/customers/{everyone[index]}", headers=headers)
        assert gone.status_code == 204
    inactive = await listing(is_active="false")
    assert _ids(inactive) == [everyone[1], everyone[4]]
    assert inactive["pagination"]["total"] == 2
    active = await listing(is_active="true", limit=2, page=3)
    assert _ids(active) == [everyone[6]]
    assert active["pagination"] == {"page": 3, "limit": 2, "total": 5, "total_pages": 3}

    # created_after / created_before are exclusive bounds.
    stamps = [c["created_at"] for c in created]
    assert len(set(stamps)) == 7
    assert _ids(await listing(created_after=stamps[2])) == everyone[3:]
    assert _ids(await listing(created_before=stamps[2])) == everyone[:2]
    window = await listing(created_after=stamps[1], created_before=stamps[5])
    assert _ids(window) == everyone[2:5]
    assert window["pagination"]["total"] == 3
    both = await listing(created_after=stamps[1], created_before=stamps[5], is_active="true")
    assert _ids(both) == [everyone[2], everyone[3]]
    offset_form = stamps[2].replace("Z", "+00:00")
    assert _ids(await listing(created_after=offset_form)) == everyone[3:]
    assert (await listing(created_after=stamps[6]))["pagination"] == {
        "page": 1,
        "limit": 20,
        "total": 0,
        "total_pages": 0,
    }


async def test_account_tenants_pagination(client: httpx.AsyncClient, api: Api) -> None:
    account = await api.account(f"Tenants {uuid.uuid4().hex[:6]}")
    tenants = [await api.tenant(account["id"], name=f"T{i}") for i in range(3)]
    ids = [t["id"] for t in tenants]
    path = f"/v1/accounts/{account['id']}/tenants"
    headers = auth(api.admin_key)

    async def listing(**params: Any) -> dict[str, Any]:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page

    one, two, three = [await listing(limit=2, page=n) for n in (1, 2, 3)]
    assert (_ids(one), _ids(two), _ids(three)) == (ids[:2], ids[2:], [])
    for number, page in ((1, one), (2, two), (3, three)):
        assert page["pagination"] == {"page": number, "limit": 2, "total": 3, "total_pages": 2}

    gone = await client.delete(f"/v1/tenants/{ids[0]}", headers=headers)
    assert gone.status_code == 204
    assert _ids(await listing(is_active="false")) == ids[:1]
    assert _ids(await listing(is_active="true")) == ids[1:]
    assert _ids(await listing(created_after=tenants[0]["created_at"])) == ids[1:]

    # Another account's admin sees no such account (no existence leak); an unknown one is 404 too.
    stranger = await api.world()
    assert_error(await client.get(path, headers=auth(stranger.account_admin)), 404, "not_found")
    assert_error(await client.get(f"/v1/accounts/{uuid.uuid4()}/tenants", headers=headers), 404, "not_found")


async def test_tenant_employee_lists_agree(client: httpx.AsyncClient, api: Api) -> None:
    world = await api.world()
    for i in range(3):
        await api.post(
            "/v1/employees",
            {"fname": f"E{i}", "lname": "L", "email": f"e{i}@example.com"},
            key=world.tenant_admin,
        )
    by_header = await client.get(
        "/v1/employees", params={"limit": 2, "page": 2}, headers=auth(api.admin_key, world.tenant_id)
    )
    by_path = await client.get(
        f"/v1/tenants/{world.tenant_id}/employees",
        params={"limit": 2, "page": 2},
        headers=auth(api.admin_key),
    )
    assert by_header.status_code == by_path.status_code == 200
    assert by_header.json() == by_path.json()
    assert by_path.json()["pagination"] == {"page": 2, "limit": 2, "total": 3, "total_pages": 2}
    assert [e["fname"] for e in by_path.json()["data"]] == ["E2"]


# --- framework errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/v2/accounts"),
        ("POST", "/v1/accounts/{account}/nope"),
        ("DELETE", "/v1/customers/{customer}/extra/segments"),
        ("GET", "/nowhere"),
    ],
)
@pytest.mark.parametrize("key", ["platform", "none"])
async def test_unknown_routes_are_404_in_the_envelope(
    client: httpx.AsyncClient, ctx: Ctx, method: str, path: str, key: str
) -> None:
    response = await send(client, ctx, Case(method, path, key=key))
    body = assert_error(response, 404, "not_found")
    assert body["message"] == f"No route matches {method} {path.format(**ctx.ids)}."
    assert body["details"] == {}


@pytest.mark.parametrize(
    ("method", "path", "without"),
    [
        ("GET", "/v1/accounts/", "/v1/accounts"),
        ("POST", "/v1/accounts/", "/v1/accounts"),
        ("GET", "/v1/accounts/{account}/", "/v1/accounts/{account}"),
        ("DELETE", "/v1/customers/{customer}/", "/v1/customers/{customer}"),
    ],
)
@pytest.mark.parametrize("key", ["platform", "none"])
async def test_a_trailing_slash_is_a_404_naming_the_path_without_it(
    client: httpx.AsyncClient,
    ctx: Ctx,
    db: asyncpg.Connection,
    method: str,
    path: str,
    without: str,
    key: str,
) -> None:
    """No 307 before authentication (an empty answer, and a POST's body lost by clients that follow it):
    the envelope, saying where the route is, and nothing done."""
    accounts = await db.fetchval("SELECT count(*) FROM accounts")
    response = await send(client, ctx, Case(method, path, key=key, body={"name": "Slash"}))
    body = assert_error(response, 404, "not_found")
    expected = without.format(**ctx.ids)
    assert body["message"] == f"No route matches {method} {path.format(**ctx.ids)}: did you mean {expected}?"
    assert body["details"] == {"path": expected}
    assert await db.fetchval("SELECT count(*) FROM accounts") == accounts


async def test_a_page_asked_for_with_a_trailing_slash_is_still_taken_there(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/", params={"x": "1"})
    assert response.status_code == 307
    assert response.headers["location"] == "/docs?x=1"
    assert (await client.get("/nowhere/")).status_code == 404


async def test_the_servers_address_says_where_things_are(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200, response.text
    found = response.json()
    assert (found["api"], found["docs"], found["openapi"]) == ("/v1", "/docs", "/openapi.json")
    for path in found.values():
        if path.startswith("/") and path != "/v1":
            assert (await client.get(path)).status_code == 200, path


WRONG_METHODS: list[tuple[str, str, set[str]]] = [
    # (method, path, the methods the resource does support)
    ("DELETE", "/v1/accounts", {"GET", "POST"}),
    ("PATCH", "/v1/customers", {"GET", "POST"}),
    ("POST", "/v1/accounts/{account}", {"GET", "PATCH", "PUT", "DELETE"}),
    ("POST", "/v1/api-keys/{missing}", {"GET", "PATCH", "PUT", "DELETE"}),
    ("POST", "/v1/accounts/{account}/tenants", {"GET"}),
    ("GET", "/v1/employees/{employee}/queues", {"PUT"}),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m}-{p}" for m, p, _ in WRONG_METHODS]
)
async def test_wrong_methods_are_405_in_the_envelope(
    client: httpx.AsyncClient, ctx: Ctx, db: asyncpg.Connection, method: str, path: str, allowed: set[str]
) -> None:
    before = await state(db, ctx)
    for key in ("platform", "none"):  # routing decides before authentication
        response = await send(client, ctx, Case(method, path, key=key, body={} if method != "GET" else None))
        assert_error(response, 405, "method_not_allowed")
        offered = {m.strip() for m in response.headers["allow"].split(",")}
        assert offered
        assert method not in offered
        assert offered <= allowed
    assert await state(db, ctx) == before


@pytest.mark.parametrize(
    ("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m}-{p}" for m, p, _ in WRONG_METHODS]
)
async def test_405_allow_header_lists_every_supported_method(
    client: httpx.AsyncClient, ctx: Ctx, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 §15.5.6: a 405 MUST carry Allow with the resource's supported methods (all of them)."""
    response = await send(client, ctx, Case(method, path, body={} if method != "GET" else None))
    assert response.status_code == 405
    offered = {m.strip() for m in response.headers["allow"].split(",")}
    assert offered - {"HEAD"} == allowed


# --- request ids --------------------------------------------------------------------------------------------

GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize(
    "supplied",
    ["abc-123", "req.2024:07_A-b", "0190c3f0-0000-7000-8000-000000000001", "x" * 128, "1"],
)
async def test_a_valid_request_id_is_echoed_exactly(
    client: httpx.AsyncClient, ctx: Ctx, supplied: str
) -> None:
    headers = {**auth(ctx.keys["platform"]), "X-Request-ID": supplied}
    ok = await client.get(f"/v1/accounts/{ctx.ids['account']}", headers=headers)
    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == supplied
    bad = await client.get("/v1/accounts/not-a-uuid", headers=headers)
    assert assert_error(bad, 400, "validation_error")["request_id"] == supplied
    unknown = await client.get("/v1/nowhere", headers={"X-Request-ID": supplied})
    assert assert_error(unknown, 404, "not_found")["request_id"] == supplied


async def test_a_missing_request_id_is_generated_per_request(client: httpx.AsyncClient, ctx: Ctx) -> None:
    seen = set()
    for _ in range(3):
        response = await client.get("/v1/accounts/not-a-uuid", headers=auth(ctx.keys["platform"]))
        body = assert_error(response, 400, "validation_error")
        assert GENERATED.match(body["request_id"]), body["request_id"]
        seen.add(body["request_id"])
    assert len(seen) == 3
    ok = await client.get("/healthz")
    assert GENERATED.match(ok.headers["x-request-id"])


@pytest.mark.parametrize(
    "supplied",
    [
        pytest.param(b"x" * 129, id="too-long"),
        pytest.param(b"", id="empty"),
        pytest.param(b"has space", id="space"),
        pytest.param(b"<script>alert(1)</script>", id="markup"),
        pytest.param(b"a/b", id="slash"),
        pytest.param(b"caf\xe9", id="latin-1"),
        pytest.param(b"id;drop table", id="semicolon"),
    ],
)
async def test_an_unacceptable_request_id_is_replaced(
    client: httpx.AsyncClient, ctx: Ctx, body_limit: int, supplied: bytes
) -> None:
    """The middleware accepts 1-128 of [A-Za-z0-9._:-]; anything else is replaced by a generated id, which the
    response header and the envelope then agree on."""
    headers = {b"Authorization": f"Bearer {ctx.keys['platform']}".encode(), b"X-Request-ID": supplied}
    response = await client.get("/v1/accounts/not-a-uuid", headers=headers)
    body = assert_error(response, 400, "validation_error")
    assert GENERATED.match(body["request_id"]), body["request_id"]
    # The middleware's own 413 (answered before the app runs) carries the id too.
    big = await client.post(
        "/v1/accounts",
        content=b" " * (body_limit + 1),
        headers={**headers, b"content-type": b"application/json"},
    )
    body = assert_error(big, 413, "payload_too_large")
    assert GENERATED.match(body["request_id"])
    assert response.request.headers["x-request-id"].encode("latin-1") == supplied  # it was sent as given


async def test_request_id_on_middleware_413(client: httpx.AsyncClient, body_limit: int) -> None:
    response = await client.post(
        "/v1/accounts",
        content=b" " * (body_limit + 1),
        headers={"content-type": "application/json", "X-Request-ID": "big-body-1"},
    )
    assert assert_error(response, 413, "payload_too_large")["request_id"] == "big-body-1"


async def test_an_app_that_swallows_the_body_limit_is_still_answered_413() -> None:
    """The middleware's last word on a streamed body over the limit: even an app that catches the failed
    read and answers something else (here 200) is replaced by 413, and nothing of its answer gets out."""
    reads: list[str] = []

    async def swallowing_app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception as exc:
            reads.append(type(exc).__name__)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"swallowed", "more_body": True})
        await send({"type": "http.response.body", "body": b" twice"})

    app = RequestContextMiddleware(swallowing_app, metrics=Metrics(), max_body_bytes=1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post(
            "/anything", content=_chunks(b"{}", 4096, chunk=512), headers={"content-type": "application/json"}
        )
    assert reads == ["HTTPException"]
    assert_error(response, 413, "payload_too_large")
    assert b"swallowed" not in response.content
    assert response.headers["x-request-id"]
