"""Schemathesis checks every operation of the OpenAPI document the app serves (docs/testing.md).

For each operation, the requests of Schemathesis's coverage phase (boundary values, and each part of the
request broken in turn), then SCHEMATHESIS_MAX_EXAMPLES requests Hypothesis draws from the operation's
schema, valid and invalid, go to the session's app over real HTTP. Every response must pass four checks:
no 5xx, a documented status code, the documented content type, and a body that matches the documented
schema. The seed is fixed per operation (SCHEMATHESIS_SEED), so a run repeats until the code changes.

So that requests reach more than the authentication and lookups, they carry keys of a fresh tenant (its
admin, staff and display keys, its account's admin; the platform admin for /v1/accounts), and most of the
time the ids the test seeded (type definitions, queues, customer, employee, ticket, item, API key, webhook,
delivery) where the generated value is a well-formed id. Afterwards nothing the fuzzer made in the account
can reach other tests: tickets and queues lose their time limits, webhooks are switched off and pending
deliveries dropped.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY, LiveServer, make_settings
from tests.helpers import Api, auth
from tests.test_ticket_flows import DRINK_FSM, FOOD_ORDER_FSM
from virtualq.app import create_app

# Drawn requests per operation, after the coverage phase's; the file takes one to two minutes on two cores.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40"))
# Added to each operation's own seed: the same requests on every run until the schema or this changes.
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "0"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Event streams never end on their own: the client reads this long, then keeps what arrived.
STREAM_SECONDS = 0.3
REQUEST_SECONDS = 10.0
# Defects this test finds in code it may not fix; strict, so the fix makes the test fail until the mark goes.
KNOWN_DEFECTS: dict[str, str] = {}


def _documented_operations() -> list[str]:
    """Every operation the app documents, for test ids; the test itself reads the served /openapi.json."""
    document = create_app(make_settings(), dsn="postgresql://unused@localhost/unused").openapi()
    return [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "put", "post", "delete", "patch")
    ]


OPERATIONS = _documented_operations()


@dataclass
class Seeds:
    """Real ids for one test: the fuzzer swaps them into generated requests."""

    account_id: str
    tenant_id: str
    tenant_admin: str
    account_admin: str
    staff: str
    display: str
    ids: dict[str, list[str]] = field(default_factory=dict)
    ticket_token: str = ""


# Parameter and body field names -> the kind of seeded id that fits them.
ID_FIELDS = {
    "account_id": "account",
    "tenant_id": "tenant",
    "customer_id": "customer",
    "employee_id": "employee",
    "queue_id": "queue",
    "target_queue_id": "queue",
    "ticket_id": "ticket",
    "references_ticket_id": "ticket",
    "item_id": "item",
    "type_id": "type",
    "type_definition_id": "type",
    "item_type_definition_id": "item_type",
    "key_id": "key",
    "webhook_id": "webhook",
    "delivery_id": "delivery",
}
ID_LIST_FIELDS = {
    "queue_ids": "queue",
    "allowed_type_definition_ids": "type",
    "item_definition_ids": "item_type",
}


@pytest.fixture(scope="module")
async def schema(client: httpx.AsyncClient) -> schemathesis.BaseSchema:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(response.json())


def test_every_documented_operation_is_fuzzed(schema: schemathesis.BaseSchema) -> None:
    served = {result.ok().label for result in schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.fixture
async def seeds(client: httpx.AsyncClient, api: Api, db: asyncpg.Connection) -> AsyncIterator[Seeds]:
    world = await api.world()
    tenant = {**auth(world.tenant_admin), "X-Tenant-ID": world.tenant_id}

    async def post(path: str, body: dict[str, Any], headers: dict[str, str] = tenant) -> dict[str, Any]:
        response = await client.post(path, json=body, headers=headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    drink = await post(
        "/v1/type-definitions", {"type_code": "drink", "type_name": "Drink", "fsm_schema": DRINK_FSM}
    )
    order = await post(
        "/v1/type-definitions",
        {
            "type_code": "order",
            "type_name": "Order",
            "fsm_schema": FOOD_ORDER_FSM,
            "item_definition_ids": [drink["id"]],
        },
    )
    queue = await post("/v1/queues", {"name": "Counter", "ticket_prefix": "A"})
    other_queue = await post("/v1/queues", {"name": "Pickup", "ticket_prefix": "B"})
    customer = await post(
        "/v1/customers", {"account_id": world.account_id, "fname": "Ada"}, headers=auth(world.account_admin)
    )
    employee = await post("/v1/employees", {"fname": "Bo", "lname": "Barista", "email": "bo@example.com"})
    ticket = await post(
        "/v1/tickets",
        {"queue_id": queue["id"], "type_definition_id": order["id"], "customer_id": customer["id"]},
    )
    item = await post(f"/v1/tickets/{ticket['id']}/items", {"item_type_definition_id": drink["id"]})
    key = {"name": "fuzz", "scope": "tenant"}
    staff = await post("/v1/api-keys", {**key, "role": "staff", "employee_id": employee["id"]})
    display = await post("/v1/api-keys", {**key, "role": "display"})
    spare = await post("/v1/api-keys", {**key, "role": "staff"})  # the one the fuzzer may revoke
    webhook = await post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook"})
    delivery = await post(f"/v1/webhooks/{webhook['id']}/test", {})
    token = parse_qs(urlsplit(ticket["customer_page"]).query)["token"][0]
    yield Seeds(
        account_id=world.account_id,
        tenant_id=world.tenant_id,
        tenant_admin=world.tenant_admin,
        account_admin=world.account_admin,
        staff=staff["key"],
        display=display["key"],
        ids={
            "account": [world.account_id],
            "tenant": [world.tenant_id],
            "customer": [customer["id"]],
            "employee": [employee["id"]],
            "queue": [queue["id"], other_queue["id"]],
            "ticket": [ticket["id"]],
            "item": [item["id"]],
            "type": [order["id"], drink["id"]],
            "item_type": [drink["id"]],
            "key": [spare["id"]],
            "webhook": [webhook["id"]],
            "delivery": [delivery["id"]],
        },
        ticket_token=token,
    )
    # Whatever the fuzzer made in this account must not reach other tests: no time limits left to sweep, no
    # webhook left to deliver to.
    tenants = "SELECT id FROM tenants WHERE account_id = $1"
    account = uuid.UUID(world.account_id)
    await db.execute(f"UPDATE tickets SET expires_at = NULL WHERE tenant_id IN ({tenants})", account)
    await db.execute(f"UPDATE queues SET max_wait_minutes = NULL WHERE tenant_id IN ({tenants})", account)
    await db.execute(f"UPDATE webhooks SET is_active = false WHERE tenant_id IN ({tenants})", account)
    await db.execute(
        f"UPDATE webhook_deliveries SET status = 'failed' "
        f"WHERE status = 'pending' AND tenant_id IN ({tenants})",
        account,
    )


# Body fields whose valid values the schema cannot express (a state machine, an http(s) URL, a transition of
# the seeded types): a known good value now and then gets past the semantic checks to the code behind.
KNOWN_VALUES: dict[str, list[Any]] = {
    "fsm_schema": [FOOD_ORDER_FSM, DRINK_FSM],
    "url": ["http://127.0.0.1:9/hook", "https://hooks.example.invalid/virtualq"],  # nothing answers
    "transition": ["start_preparation", "cancel", "start", "complete"],
}


class Choices:
    """The fuzzer's own decisions, drawn from Hypothesis (fuzzing) or a seeded generator (coverage)."""

    def __init__(self, data: st.DataObject | None = None, rng: random.Random | None = None) -> None:
        self.data, self.rng = data, rng

    def chance(self, percent: int) -> bool:
        if self.data is not None:
            return self.data.draw(st.integers(0, 99)) < percent
        assert self.rng is not None
        return self.rng.randrange(100) < percent

    def pick(self, options: list[Any]) -> Any:
        if self.data is not None:
            return self.data.draw(st.sampled_from(options))
        assert self.rng is not None
        return self.rng.choice(options)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def _aim(case: schemathesis.Case, choices: Choices, seeds: Seeds) -> None:
    """Authenticate the case, and most of the time swap seeded ids (and known good values) in where the
    generated value is well formed: a malformed one stays, to be rejected."""

    def swap(name: str, value: Any, percent: int) -> Any:
        if name in ID_FIELDS and _is_uuid(value) and choices.chance(percent):
            return choices.pick(seeds.ids[ID_FIELDS[name]])
        well_formed_list = isinstance(value, list) and all(map(_is_uuid, value))
        if name in ID_LIST_FIELDS and well_formed_list and choices.chance(percent):
            return seeds.ids[ID_LIST_FIELDS[name]][:1]
        if name in KNOWN_VALUES and type(value) is type(KNOWN_VALUES[name][0]) and choices.chance(percent):
            return choices.pick(KNOWN_VALUES[name])
        return value

    if case.path.startswith("/v1/accounts"):
        # Only platform admins manage accounts; their account's admin may read it.
        keys = [ADMIN_KEY, seeds.account_admin]
    else:
        keys = [seeds.tenant_admin] * 4 + [seeds.account_admin, seeds.staff, seeds.staff, seeds.display]
    key = choices.pick(keys)
    if choices.chance(80):
        case.headers["Authorization"] = f"Bearer {key}"
    else:
        case.headers.pop("Authorization", None)
        case.headers["X-API-Key"] = key
    if _is_uuid(case.headers.get("X-Tenant-ID", seeds.tenant_id)) and choices.chance(85):
        case.headers["X-Tenant-ID"] = seeds.tenant_id
    for name, value in list((case.path_parameters or {}).items()):
        case.path_parameters[name] = swap(name, value, 80)
    for name, value in list((case.query or {}).items()):
        case.query[name] = swap(name, value, 60)
    if case.path.startswith("/v1/public/") and choices.chance(75):
        case.query = {**(case.query or {}), "token": seeds.ticket_token}
    if isinstance(case.body, dict):
        for name, value in list(case.body.items()):
            case.body[name] = swap(name, value, 70)


def _coverage_cases(operation: Any) -> list[schemathesis.Case]:
    """Schemathesis's coverage phase: boundary values and each way to break each part of the request.

    The generator `schemathesis run` and `schema.parametrize()` use; not public API, so this follows the
    version uv.lock pins."""
    from schemathesis.generation.drivers import CoverageGenerator
    from schemathesis.generation.feedback import FeedbackSources
    from schemathesis.generation.overrides import Override

    generator = CoverageGenerator(
        operation=operation,
        generation_modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
        generation_config=operation.schema.config.generation_for(operation=operation, phase="coverage"),
        auth_storage=None,
        override=Override(),
        feedback=FeedbackSources(),
    )
    return list(generator)


def _fuzz(operation: Any, seeds: Seeds, base_url: str) -> None:
    responses = operation.schema.raw_schema["paths"][operation.path][operation.method.lower()]["responses"]
    streams = "text/event-stream" in responses.get("200", {}).get("content", {})
    timeout = STREAM_SECONDS if streams else REQUEST_SECONDS
    seed = SEED + zlib.crc32(operation.label.encode())
    session = requests.Session()

    def send(case: schemathesis.Case, choices: Choices) -> None:
        _aim(case, choices, seeds)
        case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=timeout)

    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy, data=st.data())
    def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
        send(case, Choices(data=data))

    try:
        rng = random.Random(seed)
        for case in _coverage_cases(operation):
            send(case, Choices(rng=rng))
        fuzz()
    finally:
        session.close()


@pytest.mark.parametrize(
    "label",
    [
        pytest.param(label, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[label]))
        if label in KNOWN_DEFECTS
        else label
        for label in OPERATIONS
    ],
)
async def test_operation_conforms(
    label: str, schema: schemathesis.BaseSchema, seeds: Seeds, live_server: LiveServer
) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    # Schemathesis and Hypothesis are synchronous: they run in a thread while this loop serves the app.
    await asyncio.to_thread(_fuzz, operation, seeds, live_server.url)


# --- what the fuzzer found, pinned down -------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", [2**64, -(2**63) - 1, -152118265123652156974230459645952], ids=["2^64", "-2^63-1", "huge"]
)
async def test_integers_beyond_64_bits_in_json_fields_are_400(
    client: httpx.AsyncClient, seeds: Seeds, number: int
) -> None:
    """They used to reach the JSON codec and answer 500 (`Integer exceeds 64-bit range`)."""
    h = {**auth(seeds.tenant_admin), "X-Tenant-ID": seeds.tenant_id}
    account_admin = {**auth(seeds.account_admin), "X-Tenant-ID": seeds.tenant_id}
    ticket, queue, order = seeds.ids["ticket"][0], seeds.ids["queue"][0], seeds.ids["type"][0]
    attempts = [
        ("PATCH", f"/v1/tenants/{seeds.tenant_id}", {"config": {"n": [number]}}, account_admin),
        ("PATCH", f"/v1/tickets/{ticket}", {"custom_data": {"n": number}}, h),
        (
            "POST",
            "/v1/tickets",
            {"queue_id": queue, "type_definition_id": order, "custom_data": {"n": number}},
            h,
        ),
        (
            "POST",
            "/v1/type-definitions",
            {"type_code": "big", "type_name": "Big", "custom_fields_schema": {"maximum": number}},
            h,
        ),
    ]
    for method, path, body, headers in attempts:
        response = await client.request(method, path, json=body, headers=headers)
        body_text = response.text
        assert response.status_code == 400, (method, path, body_text)
        assert response.json()["error"] == "validation_error"
        assert "64 bits" in body_text


async def test_nan_and_infinity_in_json_fields_are_400(client: httpx.AsyncClient, seeds: Seeds) -> None:
    """Python's JSON parser reads NaN and Infinity, which are not JSON; stored, they came back as null."""
    h = {**auth(seeds.account_admin), "X-Tenant-ID": seeds.tenant_id, "Content-Type": "application/json"}
    for token in ("NaN", "Infinity", "-Infinity"):
        response = await client.patch(
            f"/v1/tenants/{seeds.tenant_id}", content=f'{{"config": {{"x": {token}}}}}', headers=h
        )
        assert response.status_code == 400, (token, response.text)
        assert "finite" in response.text
    tenant = await client.get(f"/v1/tenants/{seeds.tenant_id}", headers=h)
    assert tenant.json()["config"] == {}


async def test_an_empty_current_state_filter_is_400(client: httpx.AsyncClient, seeds: Seeds) -> None:
    h = {**auth(seeds.tenant_admin), "X-Tenant-ID": seeds.tenant_id}
    response = await client.get("/v1/tickets", params={"current_state": ""}, headers=h)
    assert response.status_code == 400, response.text
