"""Fast paths (kit/fastpath.py): the hot endpoints answer exactly as their FastAPI routes do.

Every request here is sent twice, once with fast paths on and once with FAST_PATHS off, and the two answers
are compared: error answers (bad UUIDs, bodies, headers, keys, tenants) must be identical, successful ones
the same shape. The metric shows which path answered, so a fast path that always gave up would fail too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import APIRouter
from starlette.routing import Match, Route

from tests.helpers import Api, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, coffee, ok
from virtualq.kit.fastpath import FastDispatch, RouteIndex, _FastRoute, _parse_uuid, fast_path
from virtualq.tickets.schemas import Ticket, TransitionedTicket

Send = Callable[[], Awaitable[httpx.Response]]


@pytest.fixture
async def fast_off(app: Any) -> AsyncIterator[Callable[[bool], None]]:
    """Switch the session app's fast paths; on again afterwards."""
    settings = app.state.settings

    def switch(on: bool) -> None:
        app.state.settings = settings.model_copy(update={"fast_paths": on})

    yield switch
    app.state.settings = settings


def served(app: Any, endpoint: str, path: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "virtualq_fast_path_requests_total", {"endpoint": endpoint, "path": path}
    )
    return value or 0.0


def comparable(response: httpx.Response) -> tuple[int, Any, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("request_id", None)
    return response.status_code, body, response.headers.get("etag")


async def both(
    app: Any, switch: Callable[[bool], None], endpoint: str, send: Send, way: str = "fast"
) -> httpx.Response:
    """Send with fast paths on (answered the `way` expected: "fast", or "full" when the fast path hands
    the request to FastAPI), then with them off; assert the same answer; return the first."""
    before = served(app, endpoint, way)
    switch(True)
    first = await send()
    assert served(app, endpoint, way) == before + 1, f"not answered the {way} way: {first.text}"
    switch(False)
    full = await send()
    switch(True)
    assert comparable(first) == comparable(full), (first.text, full.text)
    assert first.headers["content-type"] == full.headers["content-type"]
    return first


async def test_route_index_picks_the_route_the_router_would(app: Any) -> None:
    routes = app.router.routes
    index = RouteIndex(routes)
    paths = {"/", "/v1", "/v1/", "/v1/tickets/", "/v1//tickets", "/static/app.js", "/nowhere/at/all"}
    paths |= {"/v1/tickets//transition", "/v1/tickets/x/transition/", "/v1/tickets/x/y/transition"}
    paths |= {"/healthz/x", "/healthz", "/v1/tickets" + "/x" * 40}
    for route in routes:
        if isinstance(route, Route):
            sample = route.path_format
            for name in route.param_convertors:
                sample = sample.replace("{" + name + "}", str(uuid.uuid4()))
            paths |= {sample, sample + "/", sample.replace("/v1/", "/v2/")}
    methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}

    def first_full(candidates: list[Any], path: str, method: str) -> Any:
        scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
        return next((r for r in candidates if r.matches(scope)[0] is Match.FULL), None)

    matched = 0
    for path in paths:
        for method in methods:
            expected = first_full(routes, path, method)
            assert first_full(index.candidates(path), path, method) is expected, (method, path)
            matched += expected is not None
    assert matched > len([r for r in routes if isinstance(r, Route)]) / 2
    # The hot routes are looked for among a few candidates, not the hundred.
    assert len(index.candidates("/v1/tickets/x")) < 8 < 20 < len(routes)
    transition = index.candidates(f"/v1/tickets/{uuid.uuid4()}/transition")
    assert [route.path for route in transition] == ["/v1/tickets/{ticket_id}/transition"]


def test_a_fast_path_is_refused_on_a_route_not_matched_by_whole_segments() -> None:
    router = APIRouter()

    @router.get("/v1/things/{n:int}")
    async def typed(n: int) -> int:
        return n

    @router.get("/v1/files/{rest:path}")
    async def anything(rest: str) -> str:
        return rest

    @router.get("/v1/parts/x{y}")
    async def partial(y: str) -> str:
        return y

    async def handler(request: Any) -> Any:
        raise AssertionError("never served")

    for endpoint in (typed, anything, partial):
        with pytest.raises(ValueError, match="whole-segment"):
            fast_path(router, endpoint)(handler)


async def test_fast_routes_match_exactly_as_their_routes_do(app: Any) -> None:
    """FastDispatch compares a path's segments with its routes' instead of running each route's regular
    expression: a match, and its parameters, must be the route's own, for every method and odd path."""
    fast = [_FastRoute(route) for route in app.router.routes if hasattr(route, "vq_fast_path")]
    assert len(fast) == 4
    ticket, queue = str(uuid.uuid4()), str(uuid.uuid4())
    paths = [
        f"/v1/tickets/{ticket}",
        f"/v1/tickets/{ticket}/transition",
        f"/v1/queues/{queue}/call-next",
        "/v1/tickets",
        "/v1/tickets/",
        "/v1/tickets//transition",
        f"/v1/tickets/{ticket}/",
        f"/v1/tickets/{ticket}/transition/",
        f"/v1//{ticket}",
        f"/v2/tickets/{ticket}",
        f"v1/tickets/{ticket}",
        f"//v1/tickets/{ticket}",
        f"/v1/tickets/{ticket}/x/transition",
        "/v1/tickets/not a uuid, any text",
        "/v1/queues//call-next",
        "/v1/tickets/%2F/transition",
        "/v1/tickets/x\n",
        "",
        "/",
    ]
    matched = []
    for path in paths:
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
            for route in fast:
                match, child = route.route.matches(scope)
                expected = child["path_params"] if match is Match.FULL else None
                assert route.match(path.split("/"), scope) == expected, (method, path, route.route.path)
                if expected is not None:
                    matched.append((method, path))
    # HEAD reaches the app as a GET (the request-context middleware), so no route lists it.
    assert matched == [
        ("GET", f"/v1/tickets/{ticket}"),
        ("POST", f"/v1/tickets/{ticket}/transition"),
        ("POST", f"/v1/queues/{queue}/call-next"),
        ("POST", "/v1/tickets"),
        ("GET", "/v1/tickets/not a uuid, any text"),  # the fast path hands these to the route
        ("POST", "/v1/tickets/%2F/transition"),
        ("GET", "/v1/tickets/x\n"),
    ]


def test_a_fast_path_parses_a_canonical_uuid_as_the_standard_library_does() -> None:
    for _ in range(200):
        standard = uuid.uuid4()
        for text in (str(standard), str(standard).upper()):
            parsed = _parse_uuid(text)
            assert isinstance(parsed, uuid.UUID)
            assert parsed == standard
            assert hash(parsed) == hash(standard)
            assert str(parsed) == str(standard)
            assert {standard: "found"}[parsed] == "found"


async def test_get_ticket_answers_as_fastapi_does(
    app: Any, client: httpx.AsyncClient, api: Api, fast_off: Callable[[bool], None]
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = (await t.ticket(queue, order, custom_data={"name": "Ann"}))["id"]
    other = await Tenant.create(client, api)
    foreign = await other.ticket((await other.queue())["id"], (await other.type("o", FOOD_ORDER_FSM))["id"])
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    account_admin = t.world.account_admin

    def get(path: str, headers: dict[str, str], **params: str) -> Send:
        return lambda: client.get(path, headers=headers, params=params)

    plain = await both(app, fast_off, "get_ticket", get(f"/v1/tickets/{ticket}", t.h))
    assert plain.status_code == 200
    Ticket.model_validate(plain.json())
    assert plain.json()["position"] == 1

    for path, headers, params, way in (
        (f"/v1/tickets/{ticket.upper()}", t.h, {}, "fast"),  # canonical, in upper case
        (f"/v1/tickets/{ticket}", {**t.h, "X-Tenant-ID": t.id}, {}, "fast"),
        (f"/v1/tickets/{ticket}", auth(account_admin, t.id), {}, "fast"),
        (f"/v1/tickets/{ticket}", auth(account_admin), {"tenant_id": t.id}, "full"),  # a query string
        (f"/v1/tickets/{{{ticket}}}", t.h, {}, "full"),  # braces
        (f"/v1/tickets/{ticket.replace('-', '')}", t.h, {}, "full"),
        ("/v1/tickets/not-a-uuid", t.h, {}, "full"),
        (f"/v1/tickets/{uuid.uuid4()}", t.h, {}, "fast"),  # 404
        (f"/v1/tickets/{foreign['id']}", t.h, {}, "fast"),  # another tenant's: 404
        (f"/v1/tickets/{ticket}", auth(account_admin, other.id), {}, "fast"),  # out of scope: 403
        (f"/v1/tickets/{ticket}", {**t.h, "X-Tenant-ID": "nope"}, {}, "full"),
        (f"/v1/tickets/{ticket}", {**t.h, "X-Tenant-ID": other.id}, {}, "fast"),  # 403
        (f"/v1/tickets/{ticket}", auth(account_admin), {}, "fast"),  # no tenant named: 400
        (f"/v1/tickets/{ticket}", auth(display), {}, "fast"),  # role: 403
        (f"/v1/tickets/{ticket}", {}, {}, "fast"),  # 401
        (f"/v1/tickets/{ticket}", auth("vq_" + "x" * 40), {}, "fast"),
        (f"/v1/tickets/{ticket}", {"Authorization": "Basic abc"}, {}, "fast"),
    ):
        await both(app, fast_off, "get_ticket", get(path, headers, **params), way)

    repeated = [("X-Tenant-ID", t.id), ("X-Tenant-ID", other.id), *t.h.items()]
    send = lambda: client.get(f"/v1/tickets/{ticket}", headers=repeated)  # noqa: E731
    await both(app, fast_off, "get_ticket", send, "full")


async def test_fast_paths_answer_ahead_of_the_exception_middleware_and_the_router(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    """FastDispatch answers a plain request of a fast path, and its errors, without the rest of the stack;
    anything else goes down the stack as before."""
    t, queue, order = await coffee(client, api)
    ticket = (await t.ticket(queue, order))["id"]
    node = app.middleware_stack
    for _ in range(10):  # down the middleware chain to the dispatcher
        if isinstance(node, FastDispatch):
            break
        node = node.app
    assert isinstance(node, FastDispatch)
    inner = node.app
    passed: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await inner(scope, receive, send)

    node.app = counting
    try:
        plain = await client.get(f"/v1/tickets/{ticket}", headers=t.h)
        missing = await client.get(f"/v1/tickets/{uuid.uuid4()}", headers=t.h)
        unauthenticated = await client.get(f"/v1/tickets/{ticket}")
        assert passed == []
        with_query = await client.get(f"/v1/tickets/{ticket}", params={"tenant_id": t.id}, headers=t.h)
        other_route = await client.get(f"/v1/queues/{queue}", headers=t.h)
        assert passed == [f"/v1/tickets/{ticket}", f"/v1/queues/{queue}"]
    finally:
        node.app = inner
    assert plain.status_code == 200
    assert plain.json()["id"] == ticket
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert unauthenticated.status_code == 401
    assert with_query.status_code == 200
    assert with_query.json()["id"] == ticket
    assert other_route.status_code == 200


async def test_a_client_gone_mid_body_is_answered_as_fastapi_does(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    """A client that disconnects before its body is complete: the fast path hands the request to the route,
    whose answer (400: the body could not be read) is what FastAPI gives, not a 500 and an error log."""
    t, queue, order = await coffee(client, api)
    body = f'{{"queue_id": "{queue}", "type_definition_id": "{order}"'.encode()
    messages = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(name.lower().encode(), value.encode()) for name, value in t.h.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/tickets",
        "raw_path": b"/v1/tickets",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", b"999")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    before = served(app, "create_ticket", "full")
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400, sent
    assert served(app, "create_ticket", "full") == before + 1


async def test_transition_answers_as_fastapi_does(
    app: Any,
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    fast_off: Callable[[bool], None],
) -> None:
    t, queue, order = await coffee(client, api)
    ticket = (await t.ticket(queue, order))["id"]
    path = f"/v1/tickets/{ticket}/transition"

    def post(body: bytes, headers: dict[str, str] | list[tuple[str, str]], target: str = path) -> Send:
        base = [("Content-Type", "application/json")]
        items = list(headers.items()) if isinstance(headers, dict) else headers
        return lambda: client.post(target, content=body, headers=base + items)

    version = await db.fetchval("SELECT version FROM tickets WHERE id = $1", uuid.UUID(ticket))
    start = b'{"transition": "start_preparation"}'
    for body, headers, way in (
        (b'{"transition": "start_preparation"', t.h, "full"),  # malformed
        (b"", t.h, "full"),
        (b"[]", t.h, "full"),
        (b'{"transition": 5}', t.h, "full"),
        (b'{"transition": "start_preparation", "colour": "red"}', t.h, "full"),  # unknown field
        (b'{"transition": "start_preparation", "employee_id": "nope"}', t.h, "full"),
        (b'{"transition": "start_preparation", "notes": NaN}', t.h, "full"),
        (b'{"transition": "teleport"}', t.h, "fast"),  # no such transition: 400 invalid_transition
        (b'{"transition": "pickup"}', t.h, "fast"),  # not from this state
        (start, {**t.h, "If-Match": '"7"'}, "fast"),  # 412
        (start, {**t.h, "If-Match": "nonsense"}, "fast"),
        (start, {**t.h, "If-Match": '"' + "1" * 2000 + '"'}, "full"),
        (start, [*t.h.items(), ("If-Match", '"7"'), ("If-Match", '"1"')], "full"),
        (start, {}, "fast"),
    ):
        answer = await both(app, fast_off, "transition_ticket", post(body, headers), way)
        assert answer.status_code >= 400, answer.text
    other = f"/v1/tickets/{uuid.uuid4()}/transition"
    await both(app, fast_off, "transition_ticket", post(start, t.h, other))
    # None of those changed the ticket.
    assert await db.fetchval("SELECT version FROM tickets WHERE id = $1", uuid.UUID(ticket)) == version

    # Two real transitions: one each way, the same answer shape; then the ticket is where both left it.
    fast_before = served(app, "transition_ticket", "fast")
    moved = ok(await client.post(path, json={"transition": "start_preparation"}, headers=t.h))
    assert served(app, "transition_ticket", "fast") == fast_before + 1
    fast_off(False)
    ready = ok(await client.post(path, json={"transition": "mark_ready"}, headers=t.h))
    fast_off(True)
    assert moved.keys() == ready.keys()
    assert (moved["previous_state"], moved["current_state"]) == ("received", "in_progress")
    assert (ready["previous_state"], ready["current_state"]) == ("in_progress", "ready")
    TransitionedTicket.model_validate(moved)
    headers = {**t.h, "If-Match": f'"{ready["version"]}"'}
    picked = await both(app, fast_off, "get_ticket", lambda: client.get(f"/v1/tickets/{ticket}", headers=t.h))
    assert picked.json()["version"] == ready["version"]
    done = await client.post(path, json={"transition": "pickup"}, headers=headers)
    assert done.status_code == 200
    assert done.headers["etag"] == f'"{ready["version"] + 1}"'


async def test_create_and_call_next_answer_as_fastapi_does(
    app: Any,
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    fast_off: Callable[[bool], None],
) -> None:
    t, queue, order = await coffee(client, api)
    closed = (await t.queue("Closed"))["id"]
    ok(await client.patch(f"/v1/queues/{closed}", json={"is_active": False}, headers=t.h))

    def post(target: str, body: bytes, headers: dict[str, str] | None = None) -> Send:
        sent = {"Content-Type": "application/json", **(t.h if headers is None else headers)}
        return lambda: client.post(target, content=body, headers=sent)

    call_next = f"/v1/queues/{queue}/call-next"
    # Nobody waits yet: the same 404 queue_empty both ways.
    empty = await both(app, fast_off, "call_next", post(call_next, b"{}"))
    assert empty.status_code == 404
    for target, body, way in (
        (call_next, b"", "full"),
        (call_next, b'{"employee_id": 1}', "full"),
        (call_next, b'{"seat": 4}', "full"),
        (call_next, b'{"employee_id": "' + str(uuid.uuid4()).encode() + b'"}', "fast"),  # unknown employee
        (f"/v1/queues/{uuid.uuid4()}/call-next", b"{}", "fast"),
        ("/v1/queues/nope/call-next", b"{}", "full"),
    ):
        answer = await both(app, fast_off, "call_next", post(target, body), way)
        assert answer.status_code >= 400, answer.text

    good = f'{{"queue_id": "{queue}", "type_definition_id": "{order}"'
    for body, way in (
        (good.encode(), "full"),  # malformed
        (b"{}", "full"),
        ((good + ', "custom_data": []}').encode(), "full"),
        ((good + ', "ttl_minutes": -1}').encode(), "full"),
        ((good + ', "mood": "happy"}').encode(), "full"),
        ((good + ', "custom_data": {"n": 18446744073709551616}}').encode(), "full"),  # too big to store
        ((good + f', "tenant_id": "{uuid.uuid4()}"}}').encode(), "fast"),  # disagrees with the key
        (f'{{"queue_id": "{uuid.uuid4()}", "type_definition_id": "{order}"}}'.encode(), "fast"),  # 404
        (f'{{"queue_id": "{closed}", "type_definition_id": "{order}"}}'.encode(), "fast"),  # disabled
        (f'{{"queue_id": "{queue}", "type_definition_id": "{uuid.uuid4()}"}}'.encode(), "fast"),
    ):
        answer = await both(app, fast_off, "create_ticket", post("/v1/tickets", body), way)
        assert answer.status_code >= 400, answer.text
    await both(app, fast_off, "create_ticket", post("/v1/tickets", (good + "}").encode(), {}))
    assert await db.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(t.id)) == 0

    # Creates and calls, alternating the two paths: numbers and answers continue across them.
    answers = []
    for number, on in ((1, True), (2, False), (3, True)):
        fast_off(on)
        created = await client.post("/v1/tickets", content=(good + "}").encode(), headers=post_headers(t.h))
        answers.append(ok(created, 201))
        assert answers[-1]["number"] == number
        assert answers[-1]["position"] == number
        assert created.headers["etag"] == '"1"'
    fast_off(True)
    assert answers[0].keys() == answers[1].keys() == answers[2].keys()
    Ticket.model_validate(answers[0])
    called = []
    for on in (True, False, True):
        fast_off(on)
        called.append(ok(await client.post(call_next, json={}, headers=t.h)))
    fast_off(True)
    assert [c["number"] for c in called] == [1, 2, 3]
    assert called[0].keys() == called[1].keys()
    TransitionedTicket.model_validate(called[0])
    assert served(app, "call_next", "fast") >= 2
    assert served(app, "create_ticket", "fast") >= 2


def post_headers(headers: dict[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", **headers}


async def test_a_fast_path_that_gives_up_after_authenticating_is_a_bug() -> None:
    """Giving up hands the request to the route, which would authenticate (and take a rate-limit token)
    again: the fast path must decide before it authenticates, and fails loudly if it does not."""
    from fastapi import APIRouter, FastAPI, Request
    from starlette.responses import Response

    from virtualq.kit.fastpath import NotPlain, fast_path
    from virtualq.kit.metrics import Metrics

    router = APIRouter()

    @router.get("/thing")
    async def thing() -> dict[str, str]:
        return {"via": "route"}

    @fast_path(router, thing)
    async def _thing_fast(request: Request) -> Response:
        if request.headers.get("x-late") is not None:
            request.state.principal = object()  # what authenticate() leaves behind
        raise NotPlain

    toy = FastAPI()
    toy.router.routes.extend(router.routes)
    toy.state.settings = type("Settings", (), {"fast_paths": True})()
    toy.state.metrics = Metrics()
    transport = httpx.ASGITransport(app=toy)
    async with httpx.AsyncClient(transport=transport, base_url="http://toy") as http:
        assert (await http.get("/thing")).json() == {"via": "route"}  # gave up in time: the route answers
        with pytest.raises(RuntimeError, match="gave up after authenticating"):
            await http.get("/thing", headers={"X-Late": "1"})
