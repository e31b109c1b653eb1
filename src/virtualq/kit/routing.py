"""Route conventions: the documented error responses and query-filter dependencies."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Query
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtualq.kit.exception_handlers import NO_BODY, UNREADABLE_BODY
from virtualq.kit.middleware import replay_body
from virtualq.kit.schemas import CommonFilters, Instant


class ErrorBody(BaseModel):
    error: str
    message: str
    details: dict[str, Any]
    request_id: str | None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request, schema violation or missing tenant (validation_error).",
        401: "Missing, unknown or revoked API key (unauthorized).",
        403: "The key's role or scope does not allow this (forbidden).",
        404: "No such resource in the caller's scope (not_found).",
        409: "Conflicts with existing data (conflict).",
        412: "If-Match names another version of the ticket (precondition_failed); details.etag is current.",
        413: "Request body too large (payload_too_large).",
        429: "Too many requests (rate_limited); retry after `Retry-After` seconds.",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


READ_ERRORS = error_responses(400, 401, 403, 404)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413)


async def _common_filters(
    is_active: Annotated[bool | None, Query(description="Only active (true) or deactivated (false).")] = None,
    created_after: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
    created_before: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
) -> CommonFilters:
    return CommonFilters(is_active=is_active, created_after=created_after, created_before=created_before)


CommonFilterQuery = Annotated[CommonFilters, Depends(_common_filters)]


BODYLESS_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def refuse_stray_bodies(routes: list[BaseRoute]) -> None:
    """Routes that change something but take no body (enable, unassign, a webhook test, DELETE...) never
    read one, so a malformed body was ignored and the action ran. Each now reads what was sent first: none,
    `{}` or `null` is fine; anything else is a 400 and nothing happens."""
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and route.body_field is None
            and (route.methods or set()) & BODYLESS_METHODS
            and not getattr(route, _WRAPPED, False)
        ):
            route.app = _bodyless(route.app)
            setattr(route, _WRAPPED, True)  # a second call (another app built on these routes) wraps nothing


_WRAPPED = "vq_refuses_stray_body"


def _bodyless(inner: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the route hears it as usual
                await inner(scope, replay_message(message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body.strip():
            # Refused as FastAPI refuses a body it cannot parse (kit/exception_handlers: the caller is
            # checked first, so that a caller with no right to the route hears that instead).
            try:
                sent = json.loads(body)
            except json.JSONDecodeError as exc:
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body", exc.pos),
                            "msg": "JSON decode error",
                            "ctx": {"error": exc.msg},
                        }
                    ]
                ) from None
            except (ValueError, RecursionError):  # not UTF-8, nested too deeply, a number too long
                raise HTTPException(400, UNREADABLE_BODY) from None
            if sent not in ({}, None):
                raise RequestValidationError(
                    [
                        {
                            "type": NO_BODY,
                            "loc": ("body",),
                            "msg": "This endpoint takes no body: send none, or {}.",
                        }
                    ]
                )
        await inner(scope, replay_body(body, receive), send)

    return app


def refuse_unknown_query(routes: list[BaseRoute], prefix: str = "/v1/") -> None:
    """An API route's query parameters are the ones it declares (its own and its dependencies'): any
    other is a 400 naming it, as an unknown body field is. A misspelt filter (`?queue=` for `?queue_id=`,
    `?page=2` on a cursor-paged list) used to be ignored, and the caller got everything unfiltered, or the
    first page again for ever. Only under `prefix`: the pages' URLs may carry what links add to them."""
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and route.path.startswith(prefix)
            and not getattr(route, _STRICT, False)
        ):
            accepted = frozenset(_query_names(route.dependant) | {CACHE_BUSTER})
            route.app = _known_query_only(route.app, accepted)
            setattr(route, _STRICT, True)


_STRICT = "vq_refuses_unknown_query"
# `_=<time>`, which browser libraries (jQuery's `cache: false`, EventSource polyfills) add to defeat caches.
CACHE_BUSTER = "_"


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def _known_query_only(inner: ASGIApp, accepted: frozenset[str]) -> ASGIApp:
    takes = ", ".join(sorted(accepted - {CACHE_BUSTER})) or "none"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"")
        if query:
            names = {name for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
            unknown = sorted(names - accepted)
            if unknown:
                # Answered as FastAPI answers a bad parameter (kit/exception_handlers: caller first).
                raise RequestValidationError(
                    [
                        {
                            "type": "extra_forbidden",
                            "loc": ("query", name),
                            "msg": f"Unknown query parameter; this endpoint takes: {takes}",
                        }
                        for name in unknown
                    ]
                )
        await inner(scope, receive, send)

    return app


def replay_message(message: Message) -> Receive:
    async def receive() -> Message:
        return message

    return receive
