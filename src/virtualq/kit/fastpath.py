"""Fast paths for the hottest endpoints, and routes found by their path's first segments.

A FastAPI route resolves its dependencies and validates its parameters generically on every request; for
the endpoints called thousands of times a second (get, create and transition a ticket, call the next one)
that machinery was a quarter of the process's time, and finding the route among a hundred others, one
regular expression after another, a tenth (docs/performance.md).

A fast path answers the plain case of one endpoint by hand, with the same functions the route's
dependencies call (authenticate, resolve_tenant, the connection context managers of `virtualq.db`) and the
same body model. Whatever is not the plain case (a path parameter or tenant header not in canonical form, a
query string, a body that does not parse or validate, a repeated or oversized header) raises `NotPlain`
before anything with an effect has happened (authentication takes a rate-limit token), and the request goes
to the FastAPI route untouched, body included. Every error answer about the request's shape is therefore
the one FastAPI gives; errors the service raises (404, 409, ...) are the same exceptions either way.

`FAST_PATHS=false` serves everything through FastAPI (tests/test_fast_paths.py compares the two).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asyncpg.pgproto.pgproto import UUID as PgUUID
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.convertors import StringConvertor
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtualq.kit.exception_handlers import handler_for
from virtualq.kit.middleware import replay_body

Handler = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)

# The form every client library writes; anything else (braces, URNs, no hyphens) is left to the route.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A canonical UUID's text parsed by asyncpg's UUID, the type it gives for every uuid column: a subclass of
# `uuid.UUID`, equal to and hashed as the standard one, parsed in C (0.18 µs against 1.8 µs for
# `uuid.UUID(text)`, timed; a get parses two, the ticket's and the tenant's).
_parse_uuid: Callable[[str], uuid.UUID] = PgUUID


class NotPlain(Exception):
    """This request is not the plain case: the FastAPI route answers it."""


# Set on a request's scope when its fast path said NotPlain before the router saw it (FastDispatch): the
# route then goes straight to FastAPI instead of trying the fast path a second time.
_TRIED = "virtualq.fast_path_tried"


def fast_path(router: APIRouter, endpoint: Callable[..., Any]) -> Callable[[Handler], Handler]:
    """Serve the plain requests of `endpoint`'s route(s) with the decorated handler."""

    def register(handler: Handler) -> Handler:
        routes = [
            route for route in router.routes if isinstance(route, APIRoute) and route.endpoint is endpoint
        ]
        if not routes:
            raise LookupError(f"{endpoint.__name__} is not a route of this router")
        for route in routes:
            route.app = _serving(endpoint.__name__, handler, route.app)
            route.vq_fast_path = (endpoint.__name__, handler)  # type: ignore[attr-defined]
            _FastRoute(route)  # a route FastDispatch cannot match by its segments is refused here, at import
        return handler

    return register


async def _answer(name: str, handler: Handler, scope: Scope, receive: Receive, send: Send) -> Receive | None:
    """Answer the request with its fast path; if it is not the plain case, answer nothing and return what
    FastAPI's route is to receive from (the body messages read so far replayed first)."""
    state = scope["app"].state
    read: list[bytes] = []

    async def recording() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            read.append(message.get("body", b""))
        return message

    response: Response | None = None
    try:
        response = await handler(Request(scope, recording, send))
    except NotPlain:
        if "principal" in scope.get("state", {}):
            # The full route would authenticate again (a second rate-limit token): a fast path must
            # decide before it authenticates.
            raise RuntimeError(f"the fast path of {name} gave up after authenticating") from None
    finally:  # an error answer the handler raised (404, 409, ...) was answered by the fast path too
        state.metrics.fast_path(name, response is not None or sys.exc_info()[0] is not None)
    if response is None:
        return replay_body(b"".join(read), receive) if read else receive
    await response(scope, receive, send)
    return None


def _serving(name: str, handler: Handler, full: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["app"].state.settings.fast_paths or scope.get(_TRIED):
            await full(scope, receive, send)
            return
        rest = await _answer(name, handler, scope, receive, send)
        if rest is not None:
            await full(scope, rest, send)

    return app


class FastDispatch:
    """The fast paths served ahead of Starlette's exception middleware, FastAPI's exit-stack middleware and
    the router (about a tenth of a plain request's CPU): a request whose method and path fully match a fast
    path's route goes to the fast path here, and an exception it raises goes to the app's handler for it, as
    the exception middleware would send it. A request it declines (NotPlain), and every other request, goes
    down the usual stack, which answers it exactly as before. Installed innermost of the app's own
    middleware, so CORS, idempotency keys and the request context wrap it as they wrap the routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes: list[_FastRoute] = []
        self.routes_seen = -1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path") or not scope["app"].state.settings.fast_paths:
            await self.app(scope, receive, send)
            return
        router = scope["app"].router
        if self.routes_seen != len(router.routes):
            self.routes_seen = len(router.routes)
            self.routes = [_FastRoute(route) for route in router.routes if hasattr(route, "vq_fast_path")]
        segments = scope["path"].split("/")
        for fast in self.routes:
            params = fast.match(segments, scope)
            if params is not None:
                scope.update(
                    endpoint=fast.route.endpoint,  # type: ignore[attr-defined]
                    path_params={**scope.get("path_params", {}), **params},
                    route=fast.route,
                )
                await self._serve(fast.name, fast.handler, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, name: str, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            rest = await _answer(name, handler, scope, receive, sending)
        except Exception as exc:
            answer = handler_for(scope["app"].exception_handlers, exc)
            if answer is None or started:
                raise
            request = Request(scope, receive, send)
            await (await answer(request, exc))(scope, receive, send)
            return
        if rest is not None:
            scope[_TRIED] = True
            await self.app(scope, rest, send)


class _FastRoute:
    """A fast path's route, matched as its own `matches` would give Match.FULL: a path whose segments are the
    route's, each parameter a whole non-empty segment (what Starlette's `[^/]+` takes), and a method the
    route has. Found by comparing segments, without the route's regular expression and the two `matches`
    that wrap it (FastAPI's and Starlette's), which build their answer in three dictionaries. Only routes
    whose parameters are plain whole segments (`{ticket_id}`; not `{n:int}`, `{rest:path}` or `x{y}`) can
    have a fast path."""

    def __init__(self, route: BaseRoute) -> None:
        self.route = route
        self.name, self.handler = route.vq_fast_path  # type: ignore[attr-defined]
        segments = _segments(route)
        if segments is None or not all(
            "{" not in segment or (segment[0] == "{" and segment[-1] == "}") for segment in segments
        ):
            raise ValueError(f"a fast path needs whole-segment text parameters: {route}")
        self.methods: set[str] | None = getattr(route, "methods", None)
        self.size = len(segments) + 1  # `path.split("/")` starts with the empty text before the first /
        self.fixed = [(at, segment) for at, segment in enumerate(segments, 1) if "{" not in segment]
        self.params = [(at, segment[1:-1]) for at, segment in enumerate(segments, 1) if "{" in segment]

    def match(self, segments: list[str], scope: Scope) -> dict[str, str] | None:
        """The path parameters when the request fully matches this route, else None."""
        if len(segments) != self.size or segments[0]:
            return None
        for at, segment in self.fixed:
            if segments[at] != segment:
                return None
        if self.methods and scope["method"] not in self.methods:
            return None
        params = {}
        for at, name in self.params:
            if not segments[at]:
                return None
            params[name] = segments[at]
        return params


def path_uuid(request: Request, name: str) -> uuid.UUID:
    value = request.path_params[name]
    if not _CANONICAL_UUID.fullmatch(value):
        raise NotPlain
    return _parse_uuid(value)


def no_query(request: Request) -> None:
    if request.scope["query_string"]:
        raise NotPlain


def single_header(request: Request, name: str, max_length: int) -> str | None:
    """The header's value when it is absent or given once within `max_length`; else NotPlain."""
    values = request.headers.getlist(name)
    if not values:
        return None
    if len(values) > 1 or len(values[0]) > max_length:
        raise NotPlain
    return values[0]


def named_tenant(request: Request) -> uuid.UUID | None:
    """The X-Tenant-ID header, if given in canonical form (the route's own parameter otherwise)."""
    value = single_header(request, "x-tenant-id", 36)
    if value is None:
        return None
    if not _CANONICAL_UUID.fullmatch(value):
        raise NotPlain
    return _parse_uuid(value)


async def json_body(request: Request, model: type[M]) -> M:
    """The body as `model`, read exactly as FastAPI reads it (the standard library's JSON parser, then the
    model in Python mode; orjson would turn integers beyond 64 bits into floats instead of refusing them); a
    body that is empty, not JSON or not valid goes to the route, which explains what is wrong."""
    try:
        body = await request.body()
    except ClientDisconnect:  # the route reads what is left and answers as FastAPI does
        raise NotPlain from None
    try:
        return model.model_validate(json.loads(body))
    except Exception as exc:
        raise NotPlain from exc


class RouteIndex:
    """The routes that can match a path, by the path's shape, in their order in the router.

    Starlette tries every route in turn; with a hundred routes the hot ones sit sixty regular expressions
    down the list. A route whose parameters each stand for one segment can only match paths with as many
    segments as its own, and with its fixed first two and last segments where it has them. A path's shape
    is its number of segments and those three segments (each replaced by None when no route has it there,
    and the number capped, so that shapes are as few as the routes allow); the candidates of a shape are
    worked out once. Routes of other kinds (a `path` parameter, mounts) are candidates for every shape. The
    first full match among a path's candidates is the first full match of the whole list, since every route
    that could match it is a candidate.
    """

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.size = len(routes)
        self.routes = routes
        self.known: tuple[set[str], set[str], set[str]] = (set(), set(), set())
        self.longest = 0
        for route in routes:
            segments = _segments(route)
            if segments is not None:
                self.longest = max(self.longest, len(segments))
                for position, segment in zip((0, 1, 2), _ends(segments), strict=True):
                    if segment is not None and "{" not in segment:
                        self.known[position].add(segment)
        self.by_shape: dict[tuple[int, str | None, str | None, str | None], list[BaseRoute]] = {}

    def candidates(self, path: str) -> list[BaseRoute]:
        if not path.startswith("/"):  # `OPTIONS *` and other targets that are no path: no route has them
            return []
        segments = path.split("/")[1:]
        first, second, last = _ends(segments)
        known = self.known
        shape = (
            min(len(segments), self.longest + 1),  # any longer path has the shape "longer than every route"
            first if first in known[0] else None,
            second if second in known[1] else None,
            last if last in known[2] else None,
        )
        found = self.by_shape.get(shape)
        if found is None:
            found = self.by_shape[shape] = [route for route in self.routes if _may_match(route, shape)]
        return found


def _segments(route: BaseRoute) -> list[str] | None:
    """A route's path segments, when each of its parameters stands for exactly one segment."""
    if not isinstance(route, Route) or any(
        not isinstance(convertor, StringConvertor) for convertor in route.param_convertors.values()
    ):
        return None
    return route.path_format.split("/")[1:]


def _ends(segments: list[str]) -> tuple[str | None, str | None, str]:
    return (segments[0], segments[1] if len(segments) > 1 else None, segments[-1])


def _may_match(route: BaseRoute, shape: tuple[int, str | None, str | None, str | None]) -> bool:
    segments = _segments(route)
    if segments is None:
        return True
    if len(segments) != shape[0]:
        return False
    return all(
        segment is None or "{" in segment or segment == wanted
        for segment, wanted in zip(_ends(segments), shape[1:], strict=True)
    )


def index_routes(router: Router) -> None:
    """Match requests against their path's candidates only (RouteIndex); a request without a full match
    among them (404, 405, a redirect for a trailing slash) goes through the router's own loop, as do
    lifespan, websockets and apps mounted under a root path. Routes added later rebuild the index."""
    if router.middleware_stack != router.app:  # pragma: no cover - router-level middleware would be skipped
        raise RuntimeError("index_routes needs a router without middleware of its own")
    full = router.app
    index = [RouteIndex(router.routes)]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await full(scope, receive, send)
            return
        if index[0].size != len(router.routes):
            index[0] = RouteIndex(router.routes)
        for route in index[0].candidates(scope["path"]):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.setdefault("router", router)
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return
        await full(scope, receive, send)

    router.middleware_stack = app
