"""Pure ASGI middleware (not BaseHTTPMiddleware): request id, body limit, access log, metrics, and the
last-resort 500."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtualq.db import DB_SCOPE
from virtualq.kit.metrics import Metrics
from virtualq.kit.responses import error_body
from virtualq.logging import close_request_context, get_logger, open_request_context

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"

access_log = get_logger("virtualq.access")
error_log = get_logger("virtualq.error")
# Both logging configurations (logging.py) drop the access log below the root logger's level: asked once
# per request here, it costs a cached lookup instead of structlog's processors refusing the line.
_access_logging = logging.getLogger("virtualq.access")
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class _RequestIds:
    """Request ids: 16 random hex digits per process, then a counter in 16 more (32 in all, as a UUID's
    hex). Unique across processes without a system call per request, which `uuid4()` makes (os.urandom);
    a forked child draws its own prefix."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


request_ids = _RequestIds()


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the customer page's link carries its token
    (b"x-frame-options", b"DENY"),
]
# The pages load only their own scripts and styles and talk only to this server.
PAGE_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return header(scope, b"transfer-encoding") is not None


SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)


def _security_headers(headers: list[tuple[bytes, bytes]], production: bool) -> None:
    present = dict(headers)  # ASGI response header names are lowercase (the spec requires it)
    if present.keys().isdisjoint(SECURITY_HEADER_NAMES):
        headers.extend(SECURITY_HEADERS)
    else:
        headers.extend(header for header in SECURITY_HEADERS if header[0] not in present)
    content_type = present.get(b"content-type", b"")
    if content_type.startswith(b"text/html") and b"content-security-policy" not in present:
        headers.append((b"content-security-policy", PAGE_POLICY))
    elif content_type.startswith(b"application/json") and b"cache-control" not in present:
        headers.append((b"cache-control", b"no-store"))  # answers may hold personal data
    if production:
        headers.append(HSTS)


async def send_error(
    send: Send,
    status: int,
    request_id: str | None,
    code: str | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Answer with the error envelope straight from ASGI middleware (outside FastAPI's handlers)."""
    body = error_body(status, code, message, details, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def headers_only(send: Send) -> Send:
    """The `send` of a HEAD served as a GET: the GET's status and headers (its Content-Length included),
    then the end of the answer; whatever body the app goes on sending is dropped. A stream stops when it
    next listens: the server reports the client gone once the answer is complete."""
    ended = False

    async def sending(message: Message) -> None:
        nonlocal ended
        if ended:
            return
        await send(message)
        if message["type"] == "http.response.start":
            ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return sending


def replay_body(body: bytes, then: Receive | None = None) -> Receive:
    """A `receive` for an app that must read a body already read: the body, then `then` (the client's own
    channel, which reports a disconnect), or with no `then` a client that stays until it has its answer."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then is not None:
            return await then()
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, production: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.production = production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        supplied = header(scope, REQUEST_ID_HEADER)
        request_id = supplied if supplied and _VALID_REQUEST_ID.fullmatch(supplied) else request_ids.next()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        log_context = open_request_context(request_id=request_id)
        DB_SCOPE.set("")  # no tenant's rows until the request's tenant is resolved

        status = 500
        response_started = False
        body_too_large = False
        replaced = False
        received = 0

        def start(message: Message) -> None:
            nonlocal status, response_started
            response_started = True
            status = message["status"]
            headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            decision = state.get("rate_limit")
            if decision is not None:
                headers.extend(decision.headers())
            _security_headers(headers, self.production)
            message["headers"] = headers

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                start(message)
            await send(message)

        async def send_from_app(message: Message) -> None:
            # As send_with_request_id, but once the streamed body went over the limit whatever the app
            # answers is replaced with 413.
            nonlocal replaced
            if message["type"] == "http.response.start":
                if body_too_large:
                    replaced = True
                    await send_error(send_with_request_id, 413, request_id)
                    return
                start(message)
            elif replaced:
                return
            await send(message)

        async def receive_with_limit() -> Message:
            nonlocal received, body_too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    body_too_large = True
                    # Fail the read itself: the endpoint never runs, so nothing is written.
                    raise StarletteHTTPException(status_code=413)
            return message

        declared = header(scope, b"content-length")
        app_scope = scope  # where the router records the matched route
        try:
            if len(scope["headers"]) > MAX_HEADERS or (
                sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES
            ):
                await send_error(send_with_request_id, 431, request_id)
            elif declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await send_error(send_with_request_id, 413, request_id)
            elif (
                scope["method"] in BODY_METHODS
                and _has_body(scope)
                and not _is_json(header(scope, b"content-type") or "")
            ):
                await send_error(send_with_request_id, 415, request_id)
            elif "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
                # PostgreSQL text cannot hold NUL; refuse it before it reaches a query.
                await send_error(send_with_request_id, 400, request_id)
            elif scope["method"] == "HEAD":
                # HEAD is GET without the body (RFC 9110 §9.3.2): every GET route answers it, with the same
                # status and headers, authenticated and rate-limited alike; logs and metrics say HEAD.
                app_scope = {**scope, "method": "GET"}
                await self.app(app_scope, receive_with_limit, headers_only(send_from_app))
            else:
                await self.app(scope, receive_with_limit, send_from_app)
        except Exception:
            error_log.exception("unhandled error", method=scope["method"], path=scope["path"])
            if response_started:
                raise
            await send_error(send_with_request_id, 500, request_id)
        finally:
            route = app_scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            duration = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], template, status, duration)
            # Probes and scrapes that succeed (every few seconds, from every orchestrator and Prometheus)
            # are routine: debug. A failing one (a 503 from /readyz) is logged like any request.
            level = logging.DEBUG if template in PROBE_ROUTES and status < 400 else logging.INFO
            if _access_logging.isEnabledFor(level):
                access_log.log(
                    level,
                    "request",
                    tenant_id=state.get("tenant_id"),
                    method=scope["method"],
                    route=template,
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                )
            close_request_context(log_context)
