"""Every failure leaves as the one error envelope, framework-level ones included.

Unexpected exceptions are caught by RequestContextMiddleware, which logs them and answers 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from virtualq.db import CONNECTION_ERRORS, request_state
from virtualq.errors import ERROR_CODES, AppError
from virtualq.kit.responses import error_body
from virtualq.logging import get_logger

log = get_logger("virtualq.errors")
# The validation error of a body sent to a route that takes none (kit/routing.refuse_stray_bodies).
NO_BODY = "body_not_taken"
UNREADABLE_BODY = "There was an error parsing the body"
UNREADABLE_REASON = "the body could not be read as JSON: not UTF-8, nested too deeply, or a number too long"


def _respond(
    request: Request,
    status: int,
    code: str | None,
    message: str | None,
    details: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
) -> Response:
    request_id = getattr(request.state, "request_id", None)
    return Response(
        error_body(status, code, message, details, request_id),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _describe_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        kind = error.get("type", "value_error")
        field, message = ".".join(location[1:]), str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")  # pydantic's wording for our validators' messages
        if kind == "json_invalid":  # FastAPI puts the character's position where the field goes
            reason = (error.get("ctx") or {}).get("error")
            message = f"{message} at character {field}" + (f": {reason}" if reason else "")
            field = ""
        elif kind == "missing" and location == ["body"]:
            message = "A JSON body is required (send {} when there is nothing to set)."
        problem: dict[str, Any] = {
            "location": location[0] if location else "body",
            "field": field,
            "message": message,
            "type": kind,
        }
        problems.append(problem)
    return problems


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return _respond(request, exc.status_code, exc.code, exc.message, exc.details, headers=headers)


Handler = Callable[[Request, Exception], Awaitable[Response]]
Authenticate = Callable[[Request], Awaitable[object]]
CallerCheck = Callable[[Request, Any], Awaitable[object]]  # (request, what Authenticate returned)


def handler_for(handlers: dict[Any, Handler], exc: Exception) -> Handler | None:
    """The handler Starlette's exception middleware would pick: by status code for an HTTPException, else
    by the nearest class in the exception's MRO. Handlers for `Exception` and 500 belong to Starlette's
    server-error middleware, outside ours: those errors go on to it, as from the exception middleware."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers and exc.status_code != 500:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


class _CallerFirst:
    """FastAPI reads and parses a request's body before it runs the route's dependencies, so a body it
    cannot parse (not JSON: `json_invalid`; not UTF-8 or nested too deep: a 400 HTTPException) would be
    refused before the caller is. For a route that authenticates, this checks the caller first: it runs
    `authenticate`, then the checks of the caller the route's dependencies make (`checks`, by dependency:
    role, scope, tenant), so that the caller hears the 401 or 403 any request of theirs would get. What they
    raise is answered as the route would have answered it."""

    def __init__(
        self, authenticate: Authenticate | None, checks: Mapping[Callable[..., Any], CallerCheck]
    ) -> None:
        self.authenticate = authenticate
        self.checks = checks
        # id(route) -> (route, the route's checks when it depends on authenticate, else None)
        self.routes: dict[int, tuple[Any, tuple[CallerCheck, ...] | None]] = {}

    async def refusal(self, request: Request) -> Response | None:
        if self.authenticate is None or "principal" in request_state(request):  # no check, or done already
            return None
        checks = self._checks(request.scope.get("route"))
        if checks is None:
            return None
        try:
            principal = await self.authenticate(request)
            for check in checks:
                await check(request, principal)
        except Exception as refused:
            answer = handler_for(request.app.exception_handlers, refused)
            if answer is None:
                raise
            return await answer(request, refused)
        return None

    def _checks(self, route: Any) -> tuple[CallerCheck, ...] | None:
        """None when the route's dependencies, at any depth, do not include `authenticate`; else the checks
        they make, each after those it depends on (worked out once per route)."""
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            return None
        known = self.routes.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
        authenticates = False
        checks: list[CallerCheck] = []

        def visit(current: Any) -> None:
            nonlocal authenticates
            for dependency in current.dependencies:
                visit(dependency)
            authenticates = authenticates or current.call is self.authenticate
            check = self.checks.get(current.call)
            if check is not None and check not in checks:
                checks.append(check)

        visit(dependant)
        found = tuple(checks) if authenticates else None
        self.routes[id(route)] = (route, found)  # the route is kept, so its id is not reused meanwhile
        return found


def _request_validation(caller_first: _CallerFirst) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = _describe_validation_errors(exc)
        kinds = {problem["type"] for problem in problems}
        unknown_query = any(p["location"] == "query" and p["type"] == "extra_forbidden" for p in problems)
        if kinds & {"json_invalid", NO_BODY} or unknown_query:  # found before the route's dependencies ran
            refused = await caller_first.refusal(request)
            if refused is not None:
                return refused
        if kinds & {"json_invalid", NO_BODY}:
            message = (
                "The request body is not valid JSON."
                if "json_invalid" in kinds
                else "This endpoint takes no body: send none, or {}."
            )
            return _respond(request, 400, "validation_error", message, {"errors": problems})
        return _respond(
            request, 400, "validation_error", "The request does not match the schema.", {"errors": problems}
        )

    return handler


def _http_error(caller_first: _CallerFirst) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code, message = ERROR_CODES.get(exc.status_code, ("error", "Request failed."))
        details: dict[str, Any] | None = None
        if exc.status_code == 404:
            message = f"No route matches {request.method} {request.url.path}."
            if (without := _without_trailing_slash(request)) is not None:
                if request.method in ("GET", "HEAD") and not without.startswith(("/v1/", "//")):
                    # A page typed with a slash in a browser: taken there, as before.
                    query = request.url.query
                    return RedirectResponse(without + ("?" + query if query else ""), status_code=307)
                message = f"No route matches {request.method} {request.url.path}: did you mean {without}?"
                details = {"path": without}
        elif exc.status_code == 400:
            refused = await caller_first.refusal(request)  # FastAPI's "error parsing the body"
            if refused is not None:
                return refused
            code = "validation_error"
            message = str(exc.detail) if isinstance(exc.detail, str) else message
            if message == UNREADABLE_BODY:  # FastAPI's words for a body Python's JSON parser gave up on
                problem = {
                    "location": "body",
                    "field": "",
                    "message": UNREADABLE_REASON,
                    "type": "json_invalid",
                }
                return _respond(
                    request, 400, code, "The request body is not valid JSON.", {"errors": [problem]}
                )
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; the resource may have several routes.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _respond(request, exc.status_code, code, message, details, headers=headers or None)

    return handler


def _without_trailing_slash(request: Request) -> str | None:
    """The request's path without its trailing slash, when a route takes that. The router does not
    redirect to it: for the API a 307 answered before authentication, with no error body, and clients that
    follow it by GET lose a POST's body; pages are still redirected (above)."""
    path = request.url.path
    if len(path) < 2 or not path.endswith("/"):
        return None
    scope = {**request.scope, "path": path.rstrip("/") or "/"}
    for route in _leaf_routes(request.app.router.routes):
        if route.matches(scope)[0] is not Match.NONE:
            return str(scope["path"])
    return None


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(route.methods or ())
    return sorted(methods)


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Route]:
    """Routes with methods, through included routers (none of ours has a prefix)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        else:
            nested = getattr(getattr(route, "original_router", None), "routes", None)
            if nested:
                yield from _leaf_routes(nested)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable", error=type(exc).__name__)
    return _respond(
        request,
        503,
        "unavailable",
        "The database is unavailable; retry shortly.",
        None,
        headers={"Retry-After": "1"},
    )


def install_exception_handlers(
    app: FastAPI,
    authenticate: Authenticate | None = None,
    caller_checks: Mapping[Callable[..., Any], CallerCheck] | None = None,
) -> None:
    """`authenticate`: the dependency that authenticates a caller; `caller_checks`: by dependency, the checks
    of the caller it makes. A route that depends on `authenticate` refuses a caller its dependencies refuse
    before it refuses a body it cannot parse (_CallerFirst)."""
    app.add_exception_handler(AppError, _app_error)
    caller_first = _CallerFirst(authenticate, {} if caller_checks is None else caller_checks)
    app.add_exception_handler(RequestValidationError, _request_validation(caller_first))
    app.add_exception_handler(StarletteHTTPException, _http_error(caller_first))
    unavailable: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresConnectionError)
    for error_type in unavailable:
        app.add_exception_handler(error_type, _database_unavailable)
