"""Pure ASGI middleware (not BaseHTTPMiddleware): request id, body limit, access log, metrics, and the
last-resort 500."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtualq.kit.metrics import Metrics
from virtualq.kit.responses import error_body
from virtualq.logging import get_logger

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"

access_log = get_logger("virtualq.access")
error_log = get_logger("virtualq.error")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        supplied = _header(scope, REQUEST_ID_HEADER)
        request_id = supplied if supplied and _VALID_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        status = 500
        response_started = False
        body_too_large = False
        received = 0

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                decision = state.get("rate_limit")
                if decision is not None:
                    headers.extend(decision.headers())
                message["headers"] = headers
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

        declared = _header(scope, b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._send_error(send_with_request_id, 413, request_id)
            elif "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
                # PostgreSQL text cannot hold NUL; refuse it before it reaches a query.
                await self._send_error(send_with_request_id, 400, request_id)
            else:
                await self.app(
                    scope,
                    receive_with_limit,
                    self._guard(send_with_request_id, lambda: body_too_large, request_id),
                )
        except Exception:
            error_log.exception("unhandled error", method=scope["method"], path=scope["path"])
            if response_started:
                raise
            await self._send_error(send_with_request_id, 500, request_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            duration = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], template, status, duration)
            access_log.info(
                "request",
                tenant_id=state.get("tenant_id"),
                method=scope["method"],
                route=template,
                status=status,
                duration_ms=round(duration * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()

    def _guard(self, send: Send, too_large: Any, request_id: str) -> Send:
        """Replace whatever the app answers with 413 once the streamed body went over the limit."""
        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start" and too_large():
                replaced = True
                await self._send_error(send, 413, request_id)
                return
            await send(message)

        return guarded_send

    @staticmethod
    async def _send_error(send: Send, status: int, request_id: str) -> None:
        body = error_body(status, None, None, None, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
